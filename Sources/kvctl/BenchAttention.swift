import ArgumentParser
import Foundation
import KVAttention
import KVCore
import KVTools

/// `kvctl bench attention`: paged vs bifurcated decode attention on one shared-context batch
/// (or the --sweep grid), with the machine's read bandwidth and the compute peak of its
/// multiply instruction (``ComputePeak``) measured in the same run.
struct BenchAttention: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attention",
        abstract: "Paged vs bifurcated decode attention: b sequences sharing a context of m_c tokens, m_d own tokens each.")

    @Option(help: "Sequences in the batch (b).") var batch = 16
    @Option(help: "Shared context tokens (m_c), a multiple of the block size.") var context = 8192
    @Option(help: "Own tokens per sequence (m_d).") var decode = 128
    @Option(help: "Query heads.") var heads = 32
    @Option(help: "KV heads (divides --heads).") var kvHeads = 32
    @Option(help: "Head dimension.") var headDim = 128
    @Option(help: "KV element type: fp32, fp16, bf16.") var dtype = "bf16"
    @Option(help: "Tokens per block.") var blockSize = 16
    @Option(help: "Threads (cores) the kernels use.") var threads = 2
    @Option(help: "Timed calls per kernel per point (medians reported).") var `repeat` = 7
    @Option(help: "Math of the products: auto, fp32, bf16 (bf16: the GEMM-shaped path, and the few-row path from 2 rows per KV head for bf16 KV).")
    var math = "auto"
    @Option(help: "Highest kernel variant to run: portable, avx2, avx512, avx512bf16 (default: the best this CPU has).")
    var isa: String?
    @Flag(help: "Sweep b over 1…64 and m_c over 2048, 8192, 16384.") var sweep = false
    @Flag(help: "One JSON object per point, one per line.") var json = false

    private var batches: [Int] { sweep ? [1, 2, 4, 8, 16, 32, 64] : [batch] }
    private var contexts: [Int] { sweep ? [2048, 8192, 16384] : [context] }
    private static let isaNames: [String: KernelISA] = ["portable": .portable, "avx2": .avx2, "avx512": .avx512, "avx512bf16": .avx512bf16]

    func validate() throws {
        let kv = try dtypeOption(dtype)
        guard AttentionMath(rawValue: math) != nil else { throw ValidationError("unknown --math \(math): one of auto, fp32, bf16") }
        if let isa, Self.isaNames[isa] == nil {
            throw ValidationError("unknown --isa \(isa): one of \(Self.isaNames.keys.sorted().joined(separator: ", "))")
        }
        try usageErrors {
            try AttentionBench.validate(batches: batches, contexts: contexts, decode: decode, heads: heads, kvHeads: kvHeads,
                                        headDim: headDim, dtype: kv, blockSize: blockSize, threads: threads, repeats: `repeat`)
        }
    }

    func run() throws {
        let kv = try dtypeOption(dtype)
        guard let mathChoice = AttentionMath(rawValue: math) else { throw ValidationError("unknown --math \(math)") }
        guard let isaChoice = isa.map({ Self.isaNames[$0] }) ?? .best else { throw ValidationError("unknown --isa \(isa ?? "")") }
        let memory = MemoryBench(megabytes: 1024)
        let bandwidth = memory.readGBps(threads: threads)
        let bench = try AttentionBench(heads: heads, kvHeads: kvHeads, headDim: headDim, dtype: kv, blockSize: blockSize,
                                       maxBatch: batches.max()!, maxContext: contexts.max()!, decode: decode,
                                       threads: threads, math: mathChoice, isa: isaChoice, flusher: memory)
        if !json {
            print("# cpu: \(MachineInfo.cpu)")
            print("# \(heads) query heads, \(kvHeads) KV heads, head dim \(headDim), \(kv), block size \(blockSize), "
                  + "\(threads) threads, GEMM math \(bench.kernel.effectiveMath), kernels \(bench.kernel.isa)")
            print(String(format: "# streaming read %.1f GB/s before the run (%d threads); each point times the read probe "
                         + "alternated with both kernels (its median is read GB/s, %%BW uses that); LLC flushed before every call; medians of %d",
                         bandwidth, threads, `repeat`))
            print(String(format: "# compute peak %.0f GFLOP/s (%d threads at once issuing the %@ instruction of the GEMM math, re-measured around each point, best of the run); "
                         + "roofline = max(KV bytes / max(read, paged GB/s), FLOPs / peak)",
                         ComputePeak.gflops(threads: threads, bf16Math: bench.kernel.effectiveMath == .bf16), threads,
                         bench.kernel.effectiveMath == .bf16 ? "vdpbf16ps" : "FMA"))
            print("    b    m_c  m_d | paged ms    bif ms  speedup | read GB/s paged GB/s  %BW |  bif GB/s  GFLOP/s    peak  roof ms  %roof |   rel err  load")
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        for m in contexts {
            for b in batches {
                // The peak is probed before and after the point and is the best of the process
                // (ComputePeak): a core taken by another tenant for one probe does not count.
                _ = ComputePeak.gflops(threads: threads, bf16Math: bench.kernel.effectiveMath == .bf16)
                var p = try bench.measure(batch: b, context: m, repeats: `repeat`)
                let peak = ComputePeak.gflops(threads: threads, bf16Math: bench.kernel.effectiveMath == .bf16)
                bench.annotate(&p, peakGFlops: peak)
                if json {
                    print(String(decoding: try encoder.encode(p), as: UTF8.self))
                } else {
                    print(String(format: "%5d %6d %4d | %8.3f %9.3f %8.2f | %9.1f %10.1f %4.0f | %9.1f %8.0f %7.0f %8.3f %6.0f | %9.2e %5.2f",
                                 b, m, decode, p.pagedMs, p.bifurcatedMs, p.speedup, p.readGBps, p.pagedGBps, p.pagedPctOfBandwidth ?? 0,
                                 p.bifurcatedGBps, p.bifurcatedGFlops, p.peakGFlops ?? 0,
                                 p.bifurcatedRooflineMs ?? 0, p.bifurcatedPctOfRoofline ?? 0,
                                 p.maxRelError, p.loadAverage))
                }
            }
        }
    }
}
