extension DecodePlan {
    /// Chunk rows (tokens) per causal group: the rows whose positions fall in the same run of
    /// about this many tokens of chunk blocks share the chunk's earlier blocks as one node.
    /// Larger groups put more rows in each GEMM-shaped node but leave longer per-row leaves
    /// (each row's leaf reads up to a group's tokens); `kvctl bench prefill` measured 16, 32
    /// and 64 (docs/BENCHMARKS-attention.md).
    public static let causalGroupTokens = 32

    /// A plan for a prefill chunk: the last `newTokens` tokens of one sequence as query rows (row
    /// `i` is the token at position `tokenCount - newTokens + i`), each attending causally to
    /// everything before it and to itself: the cached prefix and the chunk's earlier tokens.
    ///
    /// Up to three levels, so that nearly all of the reading is GEMM-shaped (many rows per node):
    /// - level 0: the whole blocks before the chunk's first block, one node read by all rows (the
    ///   cached prefix is read once for the chunk, not once per token);
    /// - level 1: the chunk's blocks in groups of about ``causalGroupTokens`` tokens; the rows of
    ///   group `g > 0` share the chunk's blocks before the group as one node;
    /// - the last level: a leaf per row, from its group's first block to its own position (the
    ///   causal part: at most a group's tokens). Group 0's leaves sit on level 1.
    /// A plan without a cached prefix starts at level 1's nodes. Run it with
    /// `DecodeAttention.bifurcated`, queries laid out `[newTokens][queryHeads][headDim]`; `batch`
    /// is the same rows as a paged batch (each row's table and token count), the paged kernel's
    /// and the reference's input.
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
        let groupBlocks = max(1, causalGroupTokens / blockSize)
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
        var prefixNode: Int32 = -1
        if sharedBlocks > 0 {
            levels.append(Level())
            prefixNode = levels[0].appendNode(blocks: table[..<sharedBlocks], lastTokens: blockSize,
                                              rows: 0..<newTokens, parent: -1)
        }
        // The chunk's groups: rows `rows` read blocks `sharedBlocks..<start` as one node, if any.
        let groups = Level.causalGroups(first: first, newTokens: newTokens, blockSize: blockSize,
                                        sharedBlocks: sharedBlocks, groupBlocks: groupBlocks)
        var groupLevel = Level(), leafLevel = Level()
        for group in groups {
            var leafParent = prefixNode
            var leaves = Level()
            if group.start > sharedBlocks {
                leafParent = groupLevel.appendNode(blocks: table[sharedBlocks..<group.start], lastTokens: blockSize,
                                                   rows: group.rows, parent: prefixNode)
            }
            for i in group.rows {
                let position = first + i
                leaves.appendNode(blocks: table[group.start...(position / blockSize)], lastTokens: position % blockSize + 1,
                                  rows: i..<(i + 1), parent: leafParent)
            }
            if group.start > sharedBlocks { leafLevel.append(leaves) } else { groupLevel.append(leaves) }
        }
        levels.append(groupLevel)
        if leafLevel.nodeCount > 0 { levels.append(leafLevel) }
        return DecodePlan(batch: batch, levels: levels, depthFirstOrder: (0..<Int32(newTokens)).map { $0 })
    }
}

extension DecodePlan.Level {
    /// A causal group of a chunk: its rows and the first chunk block they do not all share.
    struct CausalGroup {
        var rows: Range<Int>
        var start: Int
    }

    /// Splits a chunk's rows into groups of `groupBlocks` chunk blocks each (the first group
    /// starting at the chunk's first block, `sharedBlocks`).
    static func causalGroups(first: Int, newTokens: Int, blockSize: Int, sharedBlocks: Int, groupBlocks: Int) -> [CausalGroup] {
        var groups: [CausalGroup] = []
        var start = sharedBlocks
        var row = 0
        while row < newTokens {
            let end = (start + groupBlocks) * blockSize - first   // first row past the group
            let rows = row..<min(newTokens, end)
            groups.append(CausalGroup(rows: rows, start: start))
            row = rows.upperBound
            start += groupBlocks
        }
        return groups
    }

    /// Appends a node reading `blocks` for the batch rows `rows`; returns its index.
    @discardableResult
    mutating func appendNode(blocks: ArraySlice<Int32>, lastTokens: Int, rows: Range<Int>, parent: Int32) -> Int32 {
        blockIndices.append(contentsOf: blocks)
        blockIndptr.append(Int32(blockIndices.count))
        sequenceIndices.append(contentsOf: rows.lazy.map { Int32($0) })
        sequenceIndptr.append(Int32(sequenceIndices.count))
        lastBlockTokenCounts.append(Int32(lastTokens))
        parentIndices.append(parent)
        return Int32(nodeCount - 1)
    }

    /// Appends `other`'s nodes after this level's (their parents unchanged).
    mutating func append(_ other: Self) {
        let blockBase = Int32(blockIndices.count), sequenceBase = Int32(sequenceIndices.count)
        blockIndices.append(contentsOf: other.blockIndices)
        blockIndptr.append(contentsOf: other.blockIndptr.dropFirst().map { $0 + blockBase })
        sequenceIndices.append(contentsOf: other.sequenceIndices)
        sequenceIndptr.append(contentsOf: other.sequenceIndptr.dropFirst().map { $0 + sequenceBase })
        lastBlockTokenCounts.append(contentsOf: other.lastBlockTokenCounts)
        parentIndices.append(contentsOf: other.parentIndices)
    }
}
