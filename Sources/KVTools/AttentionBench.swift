import Dispatch
import Foundation
import KVAttention
import KVCore

/// One measured point of `kvctl bench attention`.
public struct AttentionBenchPoint: Codable, Sendable {
    public var batch, context, decode, heads, kvHeads, headDim, blockSize, threads: Int
    public var dtype: String
    public var math: String
    /// The kernel variant that ran (``KernelISA``'s description, e.g. "avx512+bf16").
    public var isa: String
    public var pagedMs, bifurcatedMs, speedup: Double
    /// KV bytes each kernel must read / its median time.
    public var pagedGBps, bifurcatedGBps: Double
    /// Useful FLOPs (4 · tokens · query heads · head dim, summed over sequences) / bifurcated time.
    public var bifurcatedGFlops: Double
    /// max |bifurcated − paged| / max |paged|.
    public var maxRelError: Double
    /// The read probe (``MemoryBench``, `threads` threads) timed in the same alternation as the
    /// two kernels, LLC flushed before it too: median GB/s, so a host whose bandwidth moves
    /// moves the probe and the kernels alike.
    public var readGBps: Double
    /// The machine's compute ceiling on `threads` cores for the kernel's math (``ComputePeak``).
    public var peakGFlops: Double?
    public var pagedPctOfBandwidth: Double?
    public var bifurcatedRooflineMs: Double?
    public var bifurcatedPctOfRoofline: Double?
    /// Load average (1 min) when the point was measured: other work on the machine skews timings.
    public var loadAverage: Double
    /// The CPU it ran on (``MachineInfo/cpu``).
    public var cpu: String = MachineInfo.cpu
}

/// The benchmark of issue 3: b sequences share a context of m_c tokens (the same block ids)
/// and each has m_d tokens of its own; paged and bifurcated run on the same pages in the same
/// process, alternating, with the last-level cache flushed before every timed call.
///
/// The arena is allocated and filled once for the largest point (first touch of fresh memory
/// is very slow on this kind of VM) and reused by every point.
public final class AttentionBench {
    public let layout: KVLayout
    public let heads: Int
    public let decode: Int
    public let threads: Int
    public let kernel: DecodeAttention
    private let arena: KVPageArena
    private let maxContextBlocks: Int
    private let decodeBlocks: Int
    private let flusher: MemoryBench

    public init(heads: Int, kvHeads: Int, headDim: Int, dtype: KVDType, blockSize: Int, maxBatch: Int, maxContext: Int,
                decode: Int, threads: Int, math: AttentionMath, isa: KernelISA = .best, flusher: MemoryBench) throws {
        layout = try KVLayout(layerCount: 1, kvHeadCount: kvHeads, headDim: headDim, blockSize: blockSize, dtype: dtype)
        self.heads = heads
        self.decode = decode
        self.threads = threads
        kernel = try DecodeAttention(layout: layout, queryHeads: heads, threads: threads, math: math, isa: isa)
        maxContextBlocks = (maxContext + blockSize - 1) / blockSize
        decodeBlocks = (decode + blockSize - 1) / blockSize
        arena = KVPageArena(layout: layout, capacityBlocks: 1 + maxContextBlocks + maxBatch * decodeBlocks, prefault: false)
        self.flusher = flusher
        fill()
    }

    /// Fails on settings `kvctl bench attention` cannot run with, naming the option: every
    /// context a positive multiple of the block size, positive batch, threads and repeats, a
    /// valid layout, and an arena (plus the 1 GiB bandwidth buffer) that fits in memory.
    public static func validate(batches: [Int], contexts: [Int], decode: Int, heads: Int, kvHeads: Int, headDim: Int,
                                dtype: KVDType, blockSize: Int, threads: Int, repeats: Int) throws(OptionError) {
        try OptionChecks.atLeast(blockSize, 1, "--block-size")
        try OptionChecks.atLeast(heads, 1, "--heads")
        try OptionChecks.atLeast(kvHeads, 1, "--kv-heads")
        guard heads % kvHeads == 0 else { throw OptionError("--kv-heads", "must divide --heads (\(heads)), got \(kvHeads)") }
        let layout = try OptionChecks.layout({ () throws(KVLayoutError) in
            try KVLayout(layerCount: 1, kvHeadCount: kvHeads, headDim: headDim, blockSize: blockSize, dtype: dtype)
        }, "--head-dim")
        for b in batches { try OptionChecks.atLeast(b, 1, "--batch") }
        for m in contexts where m < blockSize || m % blockSize != 0 {
            throw OptionError(contexts.count > 1 ? "--block-size" : "--context",
                              contexts.count > 1 ? "must divide the --sweep contexts \(contexts.map(String.init).joined(separator: ", ")), got \(blockSize)"
                                                 : "must be a positive multiple of the block size (\(blockSize)), got \(m)")
        }
        try OptionChecks.atLeast(decode, 0, "--decode")
        try OptionChecks.inRange(threads, 1...OptionChecks.maxThreads, "--threads")
        try OptionChecks.atLeast(repeats, 1, "--repeat")
        // Overflow-checked: 1 + context blocks + batch × decode blocks, as init allocates.
        let contextBlocks = (contexts.max() ?? 0) / blockSize
        let decodeBlocks = ceilDivide(decode, blockSize)
        let (own, o1) = (batches.max() ?? 0).multipliedReportingOverflow(by: decodeBlocks)
        let (blocks, o2) = own.addingReportingOverflow(1 + contextBlocks)
        guard !o1, !o2 else { throw OptionError("--batch", "is too large: \(batches.max() ?? 0) × \(decode) tokens overflow Int") }
        try OptionChecks.fitsInMemory(blocks: blocks, bytesPerBlock: layout.blockBytes, "--batch/--context/--decode")
    }

    /// Random values in [-1.7, 1.7] (about unit variance), generated per block on all cores.
    private func fill() { KernelTiming.fillRandom(arena, threads: threads, seed: 0x9E37_79B9) }

    /// The block tables of a point: context blocks 1…, then each sequence's own blocks.
    func batch(_ b: Int, context: Int) throws -> BlockTableBatch {
        let bs = layout.blockSize
        guard context >= bs, context % bs == 0, context / bs <= maxContextBlocks else {
            throw OptionError("--context", "must be a positive multiple of the block size (\(bs)) up to \(maxContextBlocks * bs), got \(context)")
        }
        let shared = (0..<context / bs).map { Int32(1 + $0) }
        let tables = (0..<b).map { s in shared + (0..<decodeBlocks).map { Int32(1 + maxContextBlocks + s * decodeBlocks + $0) } }
        return try BlockTableBatch(blockSize: bs, tables: tables, tokenCounts: Array(repeating: context + decode, count: b))
    }

    /// Times one point: `repeats` alternating (paged, bifurcated) pairs after one warm-up each.
    public func measure(batch b: Int, context: Int, repeats: Int) throws -> AttentionBenchPoint {
        try OptionChecks.atLeast(b, 1, "--batch")
        try OptionChecks.atLeast(repeats, 1, "--repeat")  // no timed call: medians of nothing are NaN
        let batch = try batch(b, context: context)
        let plan = try DecodePlan(batch: batch)
        let d = layout.headDim
        var rng = SystemRandomNumberGenerator()
        let query = (0..<(b * heads * d)).map { _ in Float.random(in: -1.7...1.7, using: &rng) }
        let scale = DecodeAttention.defaultScale(headDim: d)
        let kernel = self.kernel
        let flusher = self.flusher, threads = self.threads
        let runs = try KernelTiming.alternate(over: arena, query: query, repeats: repeats, flusher: flusher, [
            { pages, q, out in try kernel.paged(query: q, pages: pages, batch: batch, scale: scale, output: out) },
            { pages, q, out in try kernel.bifurcated(query: q, pages: pages, plan: plan, scale: scale, output: out) },
            { _, _, _ in flusher.readOnce(threads: threads) },
        ])
        let (pagedTimes, paged) = runs[0], (bifTimes, bif) = runs[1]
        let pagedS = median(pagedTimes), bifS = median(bifTimes)
        let rowBytes = Double(layout.kvHeadCount * d * layout.dtype.byteWidth * 2)
        let flops = 4 * Double(batch.totalTokens * heads * d)
        return AttentionBenchPoint(
            batch: b, context: context, decode: decode, heads: heads, kvHeads: layout.kvHeadCount, headDim: d,
            blockSize: layout.blockSize, threads: threads, dtype: layout.dtype.rawValue, math: kernel.effectiveMath.rawValue,
            isa: kernel.isa.description,
            pagedMs: pagedS * 1e3, bifurcatedMs: bifS * 1e3, speedup: pagedS / bifS,
            pagedGBps: Double(batch.totalTokens) * rowBytes / pagedS / 1e9,
            bifurcatedGBps: Double(plan.planTokenReads) * rowBytes / bifS / 1e9,
            bifurcatedGFlops: flops / bifS / 1e9, maxRelError: KernelTiming.relativeDifference(bif, paged),
            readGBps: Double(flusher.readBytes(threads: threads)) / median(runs[2].seconds) / 1e9, loadAverage: loadAverage())
    }

    /// Adds the machine limits to a point: % of read bandwidth (paged, against the point's
    /// alternated probe) and % of roofline (bifurcated), roofline = max(KV bytes / bandwidth,
    /// FLOPs / `peakGFlops`), where the peak is the instruction probe (``ComputePeak``) and the
    /// bandwidth max(read probe, paged GB/s): the paged kernel (software prefetch, shared blocks
    /// found in L3) can out-read the plain probe, and a roofline must not sit below what a
    /// kernel achieved.
    public func annotate(_ p: inout AttentionBenchPoint, peakGFlops: Double) {
        let readGBps = p.readGBps
        let rowBytes = Double(layout.kvHeadCount * layout.headDim * layout.dtype.byteWidth * 2)
        let bifBytes = Double(p.context + p.batch * p.decode) * rowBytes
        let flops = 4 * Double(p.batch * (p.context + p.decode) * heads * layout.headDim)
        let bandwidth = max(readGBps, p.pagedGBps)
        let roofline = max(bifBytes / (bandwidth * 1e9), flops / (peakGFlops * 1e9))
        p.peakGFlops = peakGFlops
        p.pagedPctOfBandwidth = 100 * p.pagedGBps / readGBps
        p.bifurcatedRooflineMs = roofline * 1e3
        p.bifurcatedPctOfRoofline = 100 * roofline / (p.bifurcatedMs * 1e-3)
    }
}

func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s.isEmpty ? .nan : s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

/// The 1-minute load average (0 where unavailable).
func loadAverage() -> Double {
    var avg = [Double](repeating: 0, count: 3)
    return getloadavg(&avg, 3) > 0 ? avg[0] : 0
}
