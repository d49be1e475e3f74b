import Dispatch
import Foundation
import KVAttention
import KVCore

/// One point of `kvctl bench prefill`.
public struct PrefillBenchPoint: Codable, Sendable {
    public var context, chunk, heads, kvHeads, headDim, blockSize, threads: Int
    public var dtype: String
    public var math: String
    /// The chunk's rows as a paged batch (each row walks its own table, the cached prefix
    /// included) and as the chunk plan (the prefix read once for all rows).
    public var pagedMs, chunkPlanMs, speedup: Double
    /// Attention FLOPs of the chunk (4 × visible tokens × head dim per row and query head) / time.
    public var chunkPlanGFlops: Double
    /// max |plan − paged| / max |paged|.
    public var maxRelError: Double
    public var loadAverage: Double
}

/// Attention for one prefill chunk (`DecodePlan.causalChunk`): `chunk` new tokens after `context`
/// cached ones, as query rows; the chunk plan against the same rows run paged, on the same pages,
/// alternating, the last-level cache flushed before every call, medians.
public final class PrefillBench {
    public let layout: KVLayout
    public let heads: Int
    public let kernel: DecodeAttention
    private let arena: KVPageArena
    private let flusher: MemoryBench
    private let threads: Int

    public init(heads: Int, kvHeads: Int, headDim: Int, dtype: KVDType, blockSize: Int, tokens: Int, threads: Int,
                flusher: MemoryBench) throws {
        layout = try KVLayout(layerCount: 1, kvHeadCount: kvHeads, headDim: headDim, blockSize: blockSize, dtype: dtype)
        self.heads = heads
        self.threads = threads
        kernel = try DecodeAttention(layout: layout, queryHeads: heads, threads: threads)
        arena = KVPageArena(layout: layout, capacityBlocks: 1 + (tokens + blockSize - 1) / blockSize, prefault: false)
        self.flusher = flusher
        KernelTiming.fillRandom(arena, threads: threads, seed: 0x5EED)
    }

    /// Fails on settings `kvctl bench prefill` cannot run with, naming the option: a negative
    /// context, an empty chunk, and the decode bench's layout, thread, repeat and memory checks
    /// over the whole sequence.
    public static func validate(context: Int, chunk: Int, heads: Int, kvHeads: Int, headDim: Int, dtype: KVDType,
                                blockSize: Int, threads: Int, repeats: Int) throws(OptionError) {
        try OptionChecks.atLeast(context, 0, "--context")
        try OptionChecks.atLeast(chunk, 1, "--chunk")
        try OptionChecks.atLeast(blockSize, 1, "--block-size")
        let (total, overflow) = context.addingReportingOverflow(chunk)
        guard !overflow, total <= Int.max - blockSize else { throw OptionError("--context", "is too large: \(context) + \(chunk) tokens overflow Int") }
        try AttentionBench.validate(batches: [1], contexts: [ceilDivide(total, blockSize) * blockSize], decode: 0, heads: heads,
                                    kvHeads: kvHeads, headDim: headDim, dtype: dtype, blockSize: blockSize, threads: threads,
                                    repeats: repeats)
    }

    public func measure(context: Int, chunk: Int, repeats: Int) throws -> PrefillBenchPoint {
        let bs = layout.blockSize, total = context + chunk, d = layout.headDim
        let table = (0..<((total + bs - 1) / bs)).map { Int32(1 + $0) }
        let plan = try DecodePlan.causalChunk(table: table, blockSize: bs, tokenCount: total, newTokens: chunk)
        var rng = SystemRandomNumberGenerator()
        let query = (0..<(chunk * heads * d)).map { _ in Float.random(in: -1.7...1.7, using: &rng) }
        let scale = DecodeAttention.defaultScale(headDim: d)
        let ((pagedTimes, paged), (planTimes, planned)) = try KernelTiming.alternate(
            over: arena, query: query, repeats: repeats, flusher: flusher,
            { pages, q, out in try kernel.paged(query: q, pages: pages, batch: plan.batch, scale: scale, output: out) },
            { pages, q, out in try kernel.bifurcated(query: q, pages: pages, plan: plan, scale: scale, output: out) })
        let pagedS = median(pagedTimes), planS = median(planTimes)
        let flops = 4 * Double(plan.batch.totalTokens * heads * d)
        return PrefillBenchPoint(context: context, chunk: chunk, heads: heads, kvHeads: layout.kvHeadCount, headDim: d, blockSize: bs,
                                 threads: threads, dtype: layout.dtype.rawValue, math: kernel.effectiveMath.rawValue,
                                 pagedMs: pagedS * 1e3, chunkPlanMs: planS * 1e3, speedup: pagedS / planS,
                                 chunkPlanGFlops: flops / planS / 1e9, maxRelError: KernelTiming.relativeDifference(planned, paged), loadAverage: loadAverage())
    }
}
