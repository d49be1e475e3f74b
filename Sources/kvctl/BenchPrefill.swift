import ArgumentParser
import Foundation
import KVAttention
import KVCore
import KVTools

/// `kvctl bench prefill`: attention for prefill chunks over a cached prefix (causal), the step
/// plan (`DecodePlan.causal`: the prefix read once for all the chunks' rows) against the same rows
/// run paged (each walking the whole prefix) and, with `--sequences` > 1, against one chunk plan
/// per sequence.
struct BenchPrefill: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prefill",
        abstract: "Attention for a prefill chunk after a cached prefix: the chunk plan vs its rows run paged.")

    @Option(help: "Cached tokens before the chunk.") var context = 8192
    @Option(help: "Tokens in the chunk (query rows).") var chunk = 256
    @Option(help: "Sequences sharing the cached context, each with its own chunk (one step's prefills).") var sequences = 1
    @Option(help: "Query heads.") var heads = 32
    @Option(help: "KV heads (divides --heads).") var kvHeads = 8
    @Option(help: "Head dimension.") var headDim = 128
    @Option(help: "KV element type: fp32, fp16, bf16.") var dtype = "bf16"
    @Option(help: "Tokens per block.") var blockSize = 16
    @Option(help: "Threads (cores) the kernels use.") var threads = 2
    @Option(help: "Timed calls per kernel (medians reported).") var `repeat` = 5
    @Flag(help: "One JSON object.") var json = false

    func validate() throws {
        let kv = try dtypeOption(dtype)
        try usageErrors {
            try PrefillBench.validate(context: context, chunk: chunk, sequences: sequences, heads: heads, kvHeads: kvHeads, headDim: headDim, dtype: kv,
                                      blockSize: blockSize, threads: threads, repeats: `repeat`)
        }
    }

    func run() throws {
        let kv = try dtypeOption(dtype)
        let memory = MemoryBench(megabytes: 1024)
        let bench = try PrefillBench(heads: heads, kvHeads: kvHeads, headDim: headDim, dtype: kv, blockSize: blockSize,
                                     context: context, chunk: chunk, sequences: sequences, threads: threads, flusher: memory)
        let p = try bench.measure(context: context, chunk: chunk, sequences: sequences, repeats: `repeat`)
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(p), as: UTF8.self))
            return
        }
        print("# cpu: \(MachineInfo.cpu)")
        print("# \(heads) query heads, \(kvHeads) KV heads, head dim \(headDim), \(kv), block size \(blockSize), \(threads) threads, "
              + "math \(bench.kernel.effectiveMath); LLC flushed before every call; medians of \(`repeat`)")
        if let separate = p.perSequencePlansMs, let ratio = p.speedupOverPerSequence {
            print("  context  chunk  seqs | paged ms  step plan ms  speedup | per-sequence plans ms  speedup | plan GFLOP/s | build ms |   rel err  load")
            print(String(format: "%9d %6d %5d | %8.2f %13.2f %8.2f | %21.2f %8.2f | %12.0f | %8.3f | %9.2e %5.2f",
                         p.context, p.chunk, p.sequences, p.pagedMs, p.chunkPlanMs, p.speedup, separate, ratio, p.chunkPlanGFlops,
                         p.planBuildMs, p.maxRelError, p.loadAverage))
        } else {
            print("  context  chunk | paged ms  chunk plan ms  speedup | plan GFLOP/s | build ms |   rel err  load")
            print(String(format: "%9d %6d | %8.2f %14.2f %8.2f | %12.0f | %8.3f | %9.2e %5.2f",
                         p.context, p.chunk, p.pagedMs, p.chunkPlanMs, p.speedup, p.chunkPlanGFlops, p.planBuildMs, p.maxRelError,
                         p.loadAverage))
        }
    }
}
