import KVAttention
import KVCore
import Testing

/// The many-row path's 8-row variant: 6–8 query rows per KV head with bf16 KV, bf16 math and a
/// head dim that is a multiple of 32 run as one 8-lane row vector (`dispatch.c`); 5 rows and
/// other head dims stay on the few-row path. Shared nodes of 6–8 rows run it in the bifurcated
/// kernel, 6–8 query heads per KV head in both kernels. Every case is checked against the
/// reference, paged and bifurcated.
@Suite struct EightRowPathTests {
    /// bf16 math against the reference (the bf16 bound, or `tolerance`); on a CPU with
    /// AVX512-BF16 the kernel must really multiply in bf16 (elsewhere it runs fp32 math, checked
    /// against the fp32 bound).
    func check(_ c: AttentionCase, tolerance: Float? = nil) throws {
        let kernel = try checkAgainstReference(c, math: .bf16, tolerance: tolerance)
        if KernelISA.best >= .avx512bf16 { #expect(kernel.effectiveMath == .bf16) }
    }

    /// MHA shared nodes of 5–8 sequences: the shared run ends in a partial 32-token tile (201
    /// tokens at block size 1, 208 at 16; 416 full tiles at 32), every own suffix inside a block.
    @Test(arguments: [5, 6, 7, 8], [1, 16, 32])
    func sharedNodeOfMHASequences(batch: Int, blockSize: Int) throws {
        let shared = blockSize == 1 ? 201 : 13 * blockSize
        try check(AttentionCase(dtype: .bfloat16, queryHeads: 4, kvHeads: 4, headDim: 128, blockSize: blockSize, batch: batch,
                                levels: [shared], suffix: { $0 * 3 + 1 }, seed: UInt64(100 + batch * 40 + blockSize)))
    }

    /// Every sequence ends inside the shared node (no own blocks): one full tile and a partial
    /// one of 5 tokens in a 32-token block.
    @Test(arguments: [6, 8])
    func sharedNodeEndingInsideABlock(batch: Int) throws {
        try check(AttentionCase(dtype: .bfloat16, queryHeads: 2, kvHeads: 2, headDim: 64, blockSize: 32, batch: batch,
                                levels: [37], suffix: { _ in 0 }, seed: UInt64(140 + batch)))
    }

    /// Head dims: 64 and 128 (constant-stride key rows), 96 and 256 (any multiple of 32), 80 (not
    /// one: the few-row path).
    @Test(arguments: [64, 96, 128, 256, 80])
    func headDims(headDim: Int) throws {
        try check(AttentionCase(dtype: .bfloat16, queryHeads: 3, kvHeads: 3, headDim: headDim, blockSize: 16, batch: 8,
                                levels: [96], suffix: { $0 + 5 }, seed: UInt64(150 + headDim)))
    }

    /// Query groups: 2 sequences × 4 query heads per KV head share a node (8 rows); 8 and 7 query
    /// heads per KV head give the paged kernel 8 and 7 rows per sequence.
    @Test(arguments: [(queryHeads: 8, kvHeads: 2, batch: 2), (queryHeads: 16, kvHeads: 2, batch: 3), (queryHeads: 7, kvHeads: 1, batch: 2)])
    func groupedQueries(shape: (queryHeads: Int, kvHeads: Int, batch: Int)) throws {
        try check(AttentionCase(dtype: .bfloat16, queryHeads: shape.queryHeads, kvHeads: shape.kvHeads, headDim: 128, blockSize: 16,
                                batch: shape.batch, levels: [160], suffix: { $0 * 9 + 17 }, seed: UInt64(160 + shape.queryHeads)))
    }

    /// 40 KV heads in one item: the C driver runs them as passes of at most 32 heads.
    @Test func moreHeadsThanOnePass() throws {
        try check(AttentionCase(dtype: .bfloat16, queryHeads: 40, kvHeads: 40, headDim: 32, blockSize: 16, batch: 8,
                                levels: [64], suffix: { $0 + 1 }, seed: 170))
    }

    /// Scores far above all before them mid-tile (keys of tokens 20, 28 and 120 times 32): the
    /// lazy max moves inside a tile, rescaling the pairs already written, l and the output.
    /// bf16-exact data, so only the probabilities' rounding remains (as in EdgeCaseTests).
    @Test func scoreSpikesMoveTheMaxMidTile() throws {
        let c = try AttentionCase(dtype: .bfloat16, queryHeads: 4, kvHeads: 4, headDim: 64, blockSize: 16, batch: 8,
                                  levels: [128], suffix: { $0 % 3 }, seed: 171, bf16Exact: true)
        for token in [20, 28, 120] { c.scaleKeys(sharedToken: token, by: 32) }
        try check(c, tolerance: 4e-3)
    }
}
