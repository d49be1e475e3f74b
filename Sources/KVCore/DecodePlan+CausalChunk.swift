extension DecodePlan {
    /// A plan for a prefill chunk: the last `newTokens` tokens of one sequence as query rows (row
    /// `i` is the token at position `tokenCount - newTokens + i`), each attending causally to
    /// everything before it and to itself: the cached prefix and the chunk's earlier tokens.
    ///
    /// Two levels: the whole blocks before the chunk's first block are one shared node read by all
    /// rows (GEMM-shaped: the cached prefix is read once for the chunk), and each row has a leaf
    /// from the chunk's first block to its own position. So the chunk's own KV is read once per
    /// row (about `newTokens² / 2` tokens, from cache for chunks of a few hundred tokens), which
    /// the cached prefix, usually far longer, is not. Run it with `DecodeAttention.bifurcated`,
    /// queries laid out `[newTokens][queryHeads][headDim]`; `batch` is the same rows as a paged
    /// batch (each row's table and token count), the paged kernel's and the reference's input.
    ///
    /// `table` is the sequence's block table after the chunk was appended (`tokenCount` tokens).
    public static func causalChunk(table: [Int32], blockSize: Int, tokenCount: Int, newTokens: Int) throws(DecodePlanError) -> DecodePlan {
        guard blockSize >= 1 && blockSize <= Int(Int32.max) else { throw .invalidBlockSize(blockSize) }
        guard tokenCount >= 1, table.count == (tokenCount + blockSize - 1) / blockSize else {
            throw .tokenCountDoesNotFitTable(sequence: 0, tokens: tokenCount, blocks: table.count, blockSize: blockSize)
        }
        guard newTokens >= 1 && newTokens <= tokenCount else { throw .invalidChunk(newTokens: newTokens, tokenCount: tokenCount) }
        let first = tokenCount - newTokens
        let sharedBlocks = first / blockSize   // whole blocks before the chunk's first block
        var tables: [[Int32]] = [], counts: [Int] = []
        tables.reserveCapacity(newTokens)
        counts.reserveCapacity(newTokens)
        for i in 0..<newTokens {
            let position = first + i
            tables.append(Array(table[...(position / blockSize)]))
            counts.append(position + 1)
        }
        let batch = try BlockTableBatch(blockSize: blockSize, tables: tables, tokenCounts: counts)
        var levels: [Level] = []
        if sharedBlocks > 0 {
            var shared = Level()
            shared.blockIndices = Array(table[..<sharedBlocks])
            shared.blockIndptr = [0, Int32(sharedBlocks)]
            shared.sequenceIndices = (0..<Int32(newTokens)).map { $0 }
            shared.sequenceIndptr = [0, Int32(newTokens)]
            shared.lastBlockTokenCounts = [Int32(blockSize)]
            shared.parentIndices = [-1]
            levels.append(shared)
        }
        var leaves = Level()
        for i in 0..<newTokens {
            let position = first + i
            leaves.blockIndices.append(contentsOf: table[sharedBlocks...(position / blockSize)])
            leaves.blockIndptr.append(Int32(leaves.blockIndices.count))
            leaves.sequenceIndices.append(Int32(i))
            leaves.sequenceIndptr.append(Int32(i + 1))
            leaves.lastBlockTokenCounts.append(Int32(position % blockSize + 1))
            leaves.parentIndices.append(sharedBlocks > 0 ? 0 : -1)
        }
        levels.append(leaves)
        return DecodePlan(batch: batch, levels: levels, depthFirstOrder: (0..<Int32(newTokens)).map { $0 })
    }
}
