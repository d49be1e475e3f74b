import ArgumentParser
import Foundation
import KVCore
import KVTools

/// `kvctl bench write`: the cost of `KVPageArena.store` (writing new tokens' K/V into their
/// slots) for a decode step of every layer and a one-layer prefill, per dtype.
struct BenchWrite: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "write",
        abstract: "K/V store into slots (KVPageArena.store): a decode step over every layer, a one-layer prefill, per dtype.")

    @Option(help: "KV element types, comma separated: fp32, fp16, bf16.") var dtype = "fp32,fp16,bf16"
    @Option(help: "KV heads.") var kvHeads = 8
    @Option(help: "Head dimension.") var headDim = 128
    @Option(help: "Tokens per block.") var blockSize = 16
    @Option(help: "Layers of the decode step.") var layers = 32
    @Option(help: "Tokens of the decode step (one per sequence, each in its own block).") var decodeTokens = 64
    @Option(help: "Tokens of the one-layer prefill.") var prefillTokens = 2048
    @Option(help: "Timed calls per variant (medians reported).") var `repeat` = 21
    @Flag(help: "One JSON object per dtype.") var json = false

    private func makeBench() throws -> WriteBench {
        var bench = WriteBench()
        bench.dtypes = try dtype.split(separator: ",").map(dtypeOption)
        bench.kvHeads = kvHeads
        bench.headDim = headDim
        bench.blockSize = blockSize
        bench.layers = layers
        bench.decodeTokens = decodeTokens
        bench.prefillTokens = prefillTokens
        bench.repeats = `repeat`
        return bench
    }

    func validate() throws {
        let bench = try makeBench()
        try usageErrors { try bench.validate() }
    }

    func run() throws {
        let bench = try makeBench()
        if !json {
            print("# \(kvHeads) KV heads × \(headDim), block size \(blockSize); decode step: \(decodeTokens) tokens × \(layers) layers; "
                  + "prefill: \(prefillTokens) tokens × 1 layer; K and V from fp32 (encoded: from the dtype itself); medians of \(`repeat`)")
        }
        let points = try bench.run()
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            for p in points { print(String(decoding: try encoder.encode(p), as: UTF8.self)) }
        } else {
            print(WriteBench.table(points))
        }
    }
}
