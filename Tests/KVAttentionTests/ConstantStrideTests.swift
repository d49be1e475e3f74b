import KVAttention
import KVCore
import Testing

/// The many-row path's constant-stride fast paths (bf16 KV, bf16 math, head dim 128): a register
/// tile of keys whose rows sit one head dim apart is addressed from its first row, and P.V pairs
/// whose second row follows the first are read by stride. Each is taken only where the kernel
/// checks the rows really are so; elsewhere the row pointers are read. These cases put the row
/// boundaries everywhere that check can fall: block sizes 1 (no two rows adjacent), 4 (a
/// 4-key register tile is one block), 16, 32, 64; one KV head (a block's rows follow the previous
/// block's) and two (they do not); 16–64 rows per KV head (every register tile shape); shared runs
/// ending in partial tiles and odd own suffixes. Head dim 64 runs the pointer path on the same cases.
@Suite struct ConstantStrideTests {
    func check(_ c: AttentionCase) throws {
        let kernel = try checkAgainstReference(c, math: .bf16)
        if KernelISA.best >= .avx512bf16 { #expect(kernel.effectiveMath == .bf16) }
    }

    /// MHA shared nodes of 16, 32, 48 and 64 sequences (rows per KV head), one and two KV heads.
    @Test(arguments: [16, 32, 48, 64], [1, 4, 16, 32, 64])
    func sharedNodes(batch: Int, blockSize: Int) throws {
        for kvHeads in [1, 2] {
            let shared = blockSize * max(1, 80 / blockSize) + (blockSize == 1 ? 3 : 0)
            try check(AttentionCase(dtype: .bfloat16, queryHeads: kvHeads, kvHeads: kvHeads, headDim: 128, blockSize: blockSize,
                                    batch: batch, levels: [shared], suffix: { $0 % 5 * 3 + 1 },
                                    seed: UInt64(300 + batch * 10 + blockSize + kvHeads)))
        }
    }

    /// Every sequence ends inside the shared node: a full tile, then a partial one of 13 tokens
    /// (odd: the last pair's second row is zeros) or 14 (even: pairs by stride).
    @Test(arguments: [45, 46])
    func sharedNodeEndingInsideABlock(tokens: Int) throws {
        try check(AttentionCase(dtype: .bfloat16, queryHeads: 2, kvHeads: 2, headDim: 128, blockSize: 64, batch: 24,
                                levels: [tokens], suffix: { _ in 0 }, seed: UInt64(390 + tokens)))
    }

    /// Grouped queries: 16 query heads over one KV head give the paged kernel 16 rows per
    /// sequence; nested sharing gives the bifurcated one nodes of 24 and 12 rows.
    @Test(arguments: [128, 64])
    func groupedAndNested(headDim: Int) throws {
        try check(AttentionCase(dtype: .bfloat16, queryHeads: 16, kvHeads: 1, headDim: headDim, blockSize: 32, batch: 3,
                                levels: [96, 64], suffix: { $0 * 7 + 9 }, seed: UInt64(400 + headDim)))
        try check(AttentionCase(dtype: .bfloat16, queryHeads: 4, kvHeads: 2, headDim: headDim, blockSize: 16, batch: 12,
                                levels: [160, 48], fanout: 2, suffix: { $0 % 4 }, seed: UInt64(410 + headDim)))
    }
}
