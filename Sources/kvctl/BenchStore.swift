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
        let result = try makeBench().run()
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(result), as: UTF8.self))
        } else {
            print(StoreBench.table(result))
        }
    }
}
