import ArgumentParser
import Foundation
import KVTools

/// `kvctl bench memory`: streaming-read bandwidth with 1 and 2 (or --threads) threads over a
/// buffer far larger than the last-level cache.
struct BenchMemory: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "memory", abstract: "Streaming-read bandwidth (the ceiling of the paged kernel).")

    @Option(help: "Buffer size in MiB.") var megabytes = 1024
    @Option(help: "Most threads to measure (1 … this).") var threads = 2
    @Option(help: "Passes per measurement (best reported).") var `repeat` = 5
    @Flag(help: "One JSON object per thread count.") var json = false

    func validate() throws {
        try usageErrors { try MemoryBench.validate(megabytes: megabytes, threads: threads, repeats: `repeat`) }
    }

    func run() throws {
        let bench = MemoryBench(megabytes: megabytes)
        if !json { print("# cpu: \(MachineInfo.cpu)") }
        let cpuJSON = String(decoding: try JSONEncoder().encode(MachineInfo.cpu), as: UTF8.self)
        for t in 1...threads {
            let gbps = bench.readGBps(threads: t, repeats: `repeat`)
            if json {
                print("{\"bufferMiB\":\(megabytes),\"cpu\":\(cpuJSON),\"readGBps\":\(String(format: "%.2f", gbps)),\"threads\":\(t)}")
            } else {
                print(String(format: "read  %d thread(s)  %7.1f GB/s  (%d MiB buffer, best of %d)", t, gbps, megabytes, `repeat`))
            }
        }
    }
}
