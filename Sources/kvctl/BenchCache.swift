import ArgumentParser
import Foundation
import KVTools

struct BenchCache: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cache",
        abstract: "Admit/append/fork/release latency and throughput, metadata only.")

    @Option(help: "Prompt sizes in tokens, comma separated.") var prompts = "1024,4096,8192,32768"
    @Option(help: "Cached percentages of the prompt, comma separated.") var cached = "0,50,90"
    @Option(help: "Rounds per point: at least 20, and at most 40M tokens / prompt size (fewer for long prompts).") var rounds = 400
    @Option(help: "Tokens per block.") var blockSize = 16
    @Flag(help: "Print one JSON object per point.") var json = false

    func validate() throws {
        try usageErrors { try makeBench().validate() }
    }

    private func makeBench() throws -> CacheBench {
        var bench = CacheBench()
        bench.promptSizes = try parseList(prompts, "--prompts")
        bench.cachedPercents = try parseList(cached, "--cached")
        bench.rounds = rounds
        bench.blockSize = blockSize
        return bench
    }

    func run() throws {
        let points = try makeBench().run()
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            for p in points { print(String(decoding: try encoder.encode(p), as: UTF8.self)) }
        } else {
            print(CacheBench.table(points))
        }
    }
}

/// Parses "1,2,3" into integers, or fails with a usage error naming the option and the bad item.
func parseList(_ text: String, _ option: String) throws -> [Int] {
    try text.split(separator: ",").map {
        guard let n = Int($0.trimmingCharacters(in: .whitespaces)) else { throw ValidationError("\(option): not a number: '\($0)'") }
        return n
    }
}
