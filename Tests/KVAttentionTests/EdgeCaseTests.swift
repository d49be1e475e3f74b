import KVAttention
import KVCore
import Testing

@Suite struct EdgeCaseTests {
    @Test(arguments: KVDType.allCases)
    func contextOfOneToken(dtype: KVDType) throws {
        try checkAgainstReference(AttentionCase(dtype: dtype, queryHeads: 4, kvHeads: 2, headDim: 64, blockSize: 16, batch: 3,
                                levels: [], suffix: { _ in 1 }, seed: 1))
    }

    /// Every sequence ends inside the shared node: no own blocks, the shared last block partial.
    @Test(arguments: KVDType.allCases)
    func emptySuffixesAndPartialSharedBlock(dtype: KVDType) throws {
        try checkAgainstReference(AttentionCase(dtype: dtype, queryHeads: 8, kvHeads: 8, headDim: 64, blockSize: 16, batch: 4,
                                levels: [37], suffix: { _ in 0 }, seed: 2))
    }

    @Test(arguments: [1, 16, 32])
    func singleSequence(blockSize: Int) throws {
        try checkAgainstReference(AttentionCase(dtype: .float16, queryHeads: 8, kvHeads: 2, headDim: 128, blockSize: blockSize, batch: 1,
                                levels: [], suffix: { _ in 70 }, seed: 3))
    }

    @Test(arguments: [1, 16, 32])
    func blockSizes(blockSize: Int) throws {
        try checkAgainstReference(AttentionCase(dtype: .bfloat16, queryHeads: 8, kvHeads: 8, headDim: 64, blockSize: blockSize, batch: 6,
                                levels: [2 * 32, 32], suffix: { $0 + 1 }, seed: 4))
    }

    /// Three levels of sharing (fan-out 2 per level), several KV heads, both GEMM and few-row nodes.
    @Test(arguments: KVDType.allCases)
    func nestedSharingThreeLevels(dtype: KVDType) throws {
        let c = try AttentionCase(dtype: dtype, queryHeads: 8, kvHeads: 2, headDim: 64, blockSize: 16, batch: 16,
                                  levels: [64, 32, 16], suffix: { ($0 * 5) % 19 }, seed: 5)
        let plan = try DecodePlan(batch: c.batch)
        #expect(plan.levels.count == 4)
        try checkAgainstReference(c)
    }

    /// Scores that jump far above everything before them in the middle of a full tile, so the
    /// many-row path's lazy max (its reference moves only past 2^8) moves mid-tile: the pairs the
    /// tile already wrote, l and the output are rescaled — twice in one tile (tokens 20 and 28)
    /// and once late in a later tile (token 120). Keys of those tokens times 32 put some rows'
    /// scores tens of log2 units above the rest. bf16-exact data, so bf16 math rounds only its
    /// probabilities and the bound is tighter than the bf16 one (at such logits, rounding the
    /// queries alone costs 2–5 %). bf16 KV (values in place) and fp16 KV (staged values).
    @Test(arguments: [KVDType.bfloat16, .float16])
    func scoreSpikesMoveTheMaxMidTile(dtype: KVDType) throws {
        let c = try AttentionCase(dtype: dtype, queryHeads: 4, kvHeads: 4, headDim: 64, blockSize: 16, batch: 12,
                                  levels: [128], suffix: { $0 % 3 }, seed: 12, bf16Exact: true)
        for token in [20, 28, 120] { c.scaleKeys(sharedToken: token, by: 32) }
        try checkSoftmaxOnly(c)
    }

    /// Scores that rise through the run (keys doubled every 64 tokens, 4 times): the reference
    /// moves in many tiles and blocks.
    @Test func risingScoresMoveTheMaxOften() throws {
        let c = try AttentionCase(dtype: .bfloat16, queryHeads: 2, kvHeads: 2, headDim: 128, blockSize: 16, batch: 16,
                                  levels: [256], suffix: { _ in 5 }, seed: 13, bf16Exact: true)
        for token in 0..<256 { c.scaleKeys(sharedToken: token, by: Float(1 << (token / 64))) }
        try checkSoftmaxOnly(c)
    }

    /// bf16 math on bf16-exact data against the reference: only the probabilities' rounding
    /// (2^-9 relative each, averaging over tokens) separates them.
    func checkSoftmaxOnly(_ c: AttentionCase) throws {
        try checkAgainstReference(c, math: .bf16, tolerance: 4e-3)
    }

    /// Many KV heads in one GEMM-shaped item: with head dim 16 an item takes ~34 heads, more
    /// than the C driver interleaves at once (KVK_MAX_GEMM_HEADS = 32), so it splits the range.
    @Test(arguments: [AttentionMath.fp32, .automatic])
    func manyHeadsPerGemmItem(math: AttentionMath) throws {
        try checkAgainstReference(AttentionCase(dtype: .bfloat16, queryHeads: 48, kvHeads: 48, headDim: 16, blockSize: 16, batch: 9,
                                levels: [80], suffix: { $0 + 2 }, seed: 8), math: math)
    }

    @Test(arguments: KernelISA.allCases.filter { $0 <= .best })
    func everyVariantMatches(isa: KernelISA) throws {
        try checkAgainstReference(AttentionCase(dtype: .float16, queryHeads: 16, kvHeads: 4, headDim: 80, blockSize: 16, batch: 5,
                                levels: [48], suffix: { $0 * 3 + 1 }, seed: 6), isa: isa)
    }

    @Test(arguments: [1, 2, 3])
    func threadCounts(threads: Int) throws {
        try checkAgainstReference(AttentionCase(dtype: .float32, queryHeads: 4, kvHeads: 1, headDim: 64, blockSize: 16, batch: 7,
                                levels: [128], suffix: { $0 }, seed: 7), threads: threads)
    }

    /// Big enough for several workers: nested levels split into chunks, every sequence with
    /// several partials, each merged by whichever worker finishes its last one. The result must
    /// not depend on that worker: repeated calls give bit-identical outputs.
    @Test(arguments: [2, 3])
    func mergesOnCompletionDeterministically(threads: Int) throws {
        let c = try AttentionCase(dtype: .bfloat16, queryHeads: 8, kvHeads: 8, headDim: 64, blockSize: 16, batch: 12,
                                  levels: [1024, 256], suffix: { $0 * 7 + 3 }, seed: 10)
        let kernel = try c.kernel(threads: threads)
        let first = try c.bifurcated(kernel)
        #expect(relativeError(first, try c.reference()) <= Tolerance.of(kernel))
        for _ in 0..<3 { #expect(try c.bifurcated(kernel) == first) }
    }

    /// One kernel reused across calls caches its last work plan per kind: calls alternating
    /// between two batches (same shape, different tables and sharing) each match their own
    /// reference, and a repeated batch gives the same bits as its first call.
    @Test func cachedPlansFollowTheirTables() throws {
        let a = try AttentionCase(dtype: .float16, queryHeads: 8, kvHeads: 2, headDim: 64, blockSize: 16, batch: 6,
                                  levels: [160], suffix: { $0 + 1 }, seed: 11)
        let b = try AttentionCase(dtype: .float16, queryHeads: 8, kvHeads: 2, headDim: 64, blockSize: 16, batch: 6,
                                  levels: [48, 32], suffix: { 40 - $0 }, seed: 12)
        let kernel = try a.kernel()
        let tolerance = Tolerance.of(kernel)
        let (refA, refB) = (try a.reference(), try b.reference())
        let (firstA, firstPagedA) = (try a.bifurcated(kernel), try a.paged(kernel))
        for _ in 0..<2 {
            #expect(relativeError(try b.bifurcated(kernel), refB) <= tolerance)
            #expect(relativeError(try b.paged(kernel), refB) <= tolerance)
            #expect(try a.bifurcated(kernel) == firstA)
            #expect(try a.paged(kernel) == firstPagedA)
        }
        #expect(relativeError(firstA, refA) <= tolerance)
    }

    /// Long runs are split across threads into chunks and merged back (MQA, b = 1).
    @Test func chunkedLongSequence() throws {
        try checkAgainstReference(AttentionCase(dtype: .bfloat16, queryHeads: 4, kvHeads: 1, headDim: 64, blockSize: 16, batch: 1,
                                levels: [], suffix: { _ in 3000 }, seed: 8))
    }

    /// A plan without sharing takes the paged path and gives bit-identical results.
    @Test func planOfSingletonsEqualsPaged() throws {
        let c = try AttentionCase(dtype: .float16, queryHeads: 8, kvHeads: 4, headDim: 64, blockSize: 16, batch: 4,
                                  levels: [], suffix: { $0 * 20 + 5 }, seed: 9)
        let kernel = try c.kernel()
        let paged = try c.paged(kernel), bifurcated = try c.bifurcated(kernel)
        #expect(bifurcated == paged)
    }

    /// Scores far apart (huge logits) must not overflow the online softmax or the merge.
    @Test func largeLogitsStayFinite() throws {
        let c = try AttentionCase(dtype: .float32, queryHeads: 4, kvHeads: 4, headDim: 64, blockSize: 16, batch: 3,
                                  levels: [64], suffix: { $0 + 1 }, seed: 10)
        let kernel = try c.kernel()
        let loud = c.query.map { $0 * 40 }
        let reference = try c.arena.withUnsafeLayerPages(layer: 0) { pages in
            try ReferenceAttention.compute(query: loud, pages: pages, batch: c.batch, queryHeads: 4, scale: c.scale)
        }
        let plan = try DecodePlan(batch: c.batch)
        let out = try c.arena.withUnsafeLayerPages(layer: 0) { pages in
            try kernel.bifurcated(query: loud, pages: pages, plan: plan, scale: c.scale)
        }
        let finite = out.allSatisfy { $0.isFinite }
        #expect(finite)
        #expect(relativeError(out, reference) <= 1e-4)
    }
}
