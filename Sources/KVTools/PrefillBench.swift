import Dispatch
import Foundation
import KVAttention
import KVCore

/// One point of `kvctl bench prefill`.
public struct PrefillBenchPoint: Codable, Sendable {
    public var context, chunk, heads, kvHeads, headDim, blockSize, threads: Int
    /// Sequences sharing the cached context, each with its own chunk (one step's prefills).
    public var sequences: Int
    public var dtype: String
    public var math: String
    /// The chunks' rows as a paged batch (each row walks its own table, the cached prefix
    /// included) and as one step plan (`DecodePlan.causal`: the prefix read once for all rows).
    public var pagedMs, chunkPlanMs, speedup: Double
    /// With several sequences: one chunk plan per sequence, run one after another (the prefix
    /// read once per sequence), and chunkPlanMs against it.
    public var perSequencePlansMs, speedupOverPerSequence: Double?
    /// Attention FLOPs of the chunk (4 × visible tokens × head dim per row and query head) / time.
    public var chunkPlanGFlops: Double
    /// Building the step plan (`DecodePlan.causal`), once per step for every layer: its rows'
    /// tables (each row's table is materialized: rows × blocks) and the levels.
    public var planBuildMs: Double
    /// max |plan − paged| / max |paged|.
    public var maxRelError: Double
    public var loadAverage: Double
    /// The CPU it ran on (``MachineInfo/cpu``).
    public var cpu: String = MachineInfo.cpu
}

/// Attention for prefill chunks (`DecodePlan.causal`): `sequences` sequences share `context` cached
/// tokens (its whole blocks; each has its own copy of a partial last one) and each has `chunk` new
/// tokens, as query rows; the step plan against the same rows run paged (and, for several
/// sequences, against one chunk plan per sequence), on the same pages, alternating, the
/// last-level cache flushed before every call, medians.
public final class PrefillBench {
    public let layout: KVLayout
    public let heads: Int
    public let kernel: DecodeAttention
    private let arena: KVPageArena
    private let flusher: MemoryBench
    private let threads: Int

    public init(heads: Int, kvHeads: Int, headDim: Int, dtype: KVDType, blockSize: Int, context: Int, chunk: Int, sequences: Int = 1,
                threads: Int, flusher: MemoryBench) throws {
        layout = try KVLayout(layerCount: 1, kvHeadCount: kvHeads, headDim: headDim, blockSize: blockSize, dtype: dtype)
        self.heads = heads
        self.threads = threads
        kernel = try DecodeAttention(layout: layout, queryHeads: heads, threads: threads)
        let tables = Self.tables(context: context, chunk: chunk, sequences: sequences, blockSize: blockSize)
        arena = KVPageArena(layout: layout, capacityBlocks: 1 + Int(tables.joined().max() ?? 0), prefault: false)
        self.flusher = flusher
        KernelTiming.fillRandom(arena, threads: threads, seed: 0x5EED)
    }

    /// Fails on settings `kvctl bench prefill` cannot run with, naming the option: a negative
    /// context, an empty chunk, and the decode bench's layout, thread, repeat and memory checks
    /// over every sequence's tokens.
    public static func validate(context: Int, chunk: Int, sequences: Int = 1, heads: Int, kvHeads: Int, headDim: Int, dtype: KVDType,
                                blockSize: Int, threads: Int, repeats: Int) throws(OptionError) {
        try OptionChecks.atLeast(context, 0, "--context")
        try OptionChecks.atLeast(chunk, 1, "--chunk")
        try OptionChecks.atLeast(sequences, 1, "--sequences")
        try OptionChecks.atLeast(blockSize, 1, "--block-size")
        let (total, overflow) = context.addingReportingOverflow(chunk)
        guard !overflow, total <= Int.max - blockSize else { throw OptionError("--context", "is too large: \(context) + \(chunk) tokens overflow Int") }
        let (all, overflowAll) = (ceilDivide(total, blockSize) * blockSize).multipliedReportingOverflow(by: sequences)
        guard !overflowAll else { throw OptionError("--sequences", "is too large: \(sequences) × \(total) tokens overflow Int") }
        try AttentionBench.validate(batches: [1], contexts: [all], decode: 0, heads: heads,
                                    kvHeads: kvHeads, headDim: headDim, dtype: dtype, blockSize: blockSize, threads: threads,
                                    repeats: repeats)
    }

    /// The sequences' block tables: the context's whole blocks (1…) shared, then each sequence's
    /// own blocks for the rest of the context and its chunk.
    static func tables(context: Int, chunk: Int, sequences: Int, blockSize bs: Int) -> [[Int32]] {
        let shared = context / bs, own = (context - shared * bs + chunk + bs - 1) / bs
        let prefix = (0..<shared).map { Int32(1 + $0) }
        return (0..<sequences).map { s in prefix + (0..<own).map { Int32(1 + shared + s * own + $0) } }
    }

    public func measure(context: Int, chunk: Int, sequences n: Int = 1, repeats: Int) throws -> PrefillBenchPoint {
        let bs = layout.blockSize, total = context + chunk, d = layout.headDim
        let rows = Self.tables(context: context, chunk: chunk, sequences: n, blockSize: bs).map {
            DecodePlan.CausalRows(table: $0, tokenCount: total, newTokens: chunk)
        }
        // Building the plan is per step, not per layer; timed apart (medians of `repeats`).
        var planBuilds: [Double] = []
        var plan = try DecodePlan.causal(blockSize: bs, sequences: rows)
        for _ in 0..<repeats {
            let t0 = DispatchTime.now().uptimeNanoseconds
            plan = try DecodePlan.causal(blockSize: bs, sequences: rows)
            planBuilds.append(Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9)
        }
        let perSequence = n > 1 ? try rows.map { try DecodePlan.causal(blockSize: bs, sequences: [$0]) } : []
        var rng = SystemRandomNumberGenerator()
        let query = (0..<(n * chunk * heads * d)).map { _ in Float.random(in: -1.7...1.7, using: &rng) }
        let scale = DecodeAttention.defaultScale(headDim: d), rowFloats = chunk * heads * d
        let kernel = self.kernel
        var calls: [KernelTiming.Call] = [
            { pages, q, out in try kernel.paged(query: q, pages: pages, batch: plan.batch, scale: scale, output: out) },
            { pages, q, out in try kernel.bifurcated(query: q, pages: pages, plan: plan, scale: scale, output: out) },
        ]
        if n > 1 {
            calls.append { pages, q, out in
                for (s, one) in perSequence.enumerated() {
                    let part = (s * rowFloats)..<((s + 1) * rowFloats)
                    try kernel.bifurcated(query: UnsafeBufferPointer(rebasing: q[part]), pages: pages, plan: one, scale: scale,
                                               output: UnsafeMutableBufferPointer(rebasing: out[part]))
                }
            }
        }
        let runs = try KernelTiming.alternate(over: arena, query: query, repeats: repeats, flusher: flusher, calls)
        let pagedS = median(runs[0].seconds), planS = median(runs[1].seconds)
        let separateS = n > 1 ? median(runs[2].seconds) : nil
        let flops = 4 * Double(plan.batch.totalTokens * heads * d)
        return PrefillBenchPoint(context: context, chunk: chunk, heads: heads, kvHeads: layout.kvHeadCount, headDim: d, blockSize: bs,
                                 threads: threads, sequences: n, dtype: layout.dtype.rawValue, math: kernel.effectiveMath.rawValue,
                                 pagedMs: pagedS * 1e3, chunkPlanMs: planS * 1e3, speedup: pagedS / planS,
                                 perSequencePlansMs: separateS.map { $0 * 1e3 }, speedupOverPerSequence: separateS.map { $0 / planS },
                                 chunkPlanGFlops: flops / planS / 1e9, planBuildMs: median(planBuilds) * 1e3,
                                 maxRelError: max(KernelTiming.relativeDifference(runs[1].output, runs[0].output),
                                                  n > 1 ? KernelTiming.relativeDifference(runs[2].output, runs[0].output) : 0),
                                 loadAverage: loadAverage())
    }
}
