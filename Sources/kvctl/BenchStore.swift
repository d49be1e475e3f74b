import ArgumentParser
import Foundation
import KVCore
import KVTools

/// `kvctl bench store`: spill and restore throughput of the LMDB spill tier and the latency of
/// restoring a long prefix, against a plain file of the same bytes.
struct BenchStore: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "store",
        abstract: "Spill/restore throughput and 8k-prefix restore latency vs a plain file (build with -c release).")

    @Option(help: "KV layout LAYERSxKVHEADSxHEADDIM:DTYPE (default: 8 of Llama-3-8B's 32 layers, 32 KiB/token).")
    var layout = "8x8x128:fp16"

    @Option(help: "Tokens per block.")
    var blockSize = 16

    @Option(help: "Prefix length in tokens.")
    var tokens = 8192

    @Option(help: "An existing directory in which a fresh subdirectory is made for the store and the plain file; only that subdirectory is removed afterwards.")
    var dir = NSTemporaryDirectory()

    @Option(help: "Times the whole prefix is restored (and the plain file read).")
    var repeats = 5

    @Option(help: "Rounds of the write paths, interleaved (medians reported).")
    var rounds = 3

    @Flag(help: "Print one JSON object instead of a table.")
    var json = false

    func validate() throws {
        try usageErrors { try makeBench().validate() }
    }

    private func makeBench() throws -> StoreBench {
        try OptionChecks.atLeast(blockSize, 1, "--block-size")
        let kvLayout = try OptionChecks.layout({ () throws(KVLayoutError) in try KVLayout(spec: layout, blockSize: blockSize) }, "--layout")
        return StoreBench(layout: kvLayout, tokens: tokens, directory: dir, restoreRepeats: repeats, rounds: rounds)
    }

    func run() throws {
        var bench = try makeBench()
        let interrupt = RemoveOnInterrupt()
        bench.onWorkDirectory = { interrupt.path = $0 }
        let result = try bench.run()
        interrupt.path = nil
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(result), as: UTF8.self))
        } else {
            print(StoreBench.table(result))
        }
    }
}

/// Removes a directory when the process is interrupted (SIGINT, SIGTERM) before it was done with
/// it, then exits as the signal would have (128 + signal).
final class RemoveOnInterrupt: @unchecked Sendable {
    private let lock = NSLock()
    private var current: String?
    private var sources: [DispatchSourceSignal] = []

    var path: String? {
        get { lock.withLock { current } }
        set { lock.withLock { current = newValue } }
    }

    init() {
        for signo in [SIGINT, SIGTERM] {
            signal(signo, SIG_IGN)  // the dispatch source receives it instead
            let source = DispatchSource.makeSignalSource(signal: signo, queue: .global())
            source.setEventHandler { [self] in
                if let path { try? FileManager.default.removeItem(atPath: path) }
                exit(128 + signo)
            }
            source.resume()
            sources.append(source)
        }
    }
}
