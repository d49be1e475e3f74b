extension DecodePlan {
    /// Chunk rows (tokens) per causal group: the rows whose positions fall in the same run of
    /// about this many tokens of chunk blocks share the chunk's earlier blocks as one node.
    /// Larger groups put more rows in each GEMM-shaped node but leave longer per-row leaves
    /// (each row's leaf reads up to a group's tokens); `kvctl bench prefill` measured 32, 64
    /// and 128, and 32 was as fast as either or faster (docs/BENCHMARKS-attention.md).
    public static let causalGroupTokens = 32

    /// One sequence's query rows in a ``causal(blockSize:sequences:)`` plan: its last
    /// `newTokens` tokens, each attending to the sequence's tokens up to and including itself.
    public struct CausalRows: Sendable, Equatable {
        /// The sequence's block table for its first `tokenCount` tokens.
        public var table: [Int32]
        public var tokenCount: Int
        /// Query rows: positions `tokenCount - newTokens ..< tokenCount` (1...tokenCount).
        public var newTokens: Int

        public init(table: [Int32], tokenCount: Int, newTokens: Int) {
            self.table = table
            self.tokenCount = tokenCount
            self.newTokens = newTokens
        }
    }

    /// A plan for a prefill chunk: the last `newTokens` tokens of one sequence as query rows.
    /// The one-sequence case of ``causal(blockSize:sequences:)``.
    ///
    /// `table` is the sequence's block table after the chunk was appended (`tokenCount` tokens).
    public static func causalChunk(table: [Int32], blockSize: Int, tokenCount: Int, newTokens: Int) throws(DecodePlanError) -> DecodePlan {
        try causal(blockSize: blockSize, sequences: [CausalRows(table: table, tokenCount: tokenCount, newTokens: newTokens)])
    }

    /// A plan for one forward step of several sequences, each with query rows for its last
    /// tokens: prefill chunks and decode tokens (`newTokens` 1) alike. Row `o_s + i` is sequence
    /// `s`'s token at position `tokenCount - newTokens + i`, `o_s` the rows of the sequences before
    /// it; each row attends causally to its sequence's tokens up to and including itself.
    ///
    /// The levels, so that nearly all of the reading is GEMM-shaped (many rows per node):
    /// - first, the sequences' cached prefixes (each one's whole blocks before its rows' first
    ///   block; a decode token's whole table), grouped on common block ids as ``init(batch:)``
    ///   groups a decode batch: a prefix two requests share is read once for both chunks' rows
    ///   and for decode rows beside them, and a step of decode tokens only is planned exactly as
    ///   ``init(batch:)`` plans it;
    /// - under a sequence's deepest prefix node: its chunk's blocks in groups of about
    ///   ``causalGroupTokens`` tokens; the rows of group `g > 0` share the chunk's blocks before
    ///   the group as one node;
    /// - last, a leaf per row, from its group's first block to its own position (the causal part:
    ///   at most a group's tokens). Group 0's leaves sit one level up, under the prefix.
    ///
    /// Run it with `DecodeAttention.bifurcated`, queries laid out `[rows][queryHeads][headDim]`;
    /// `batch` is the same rows as a paged batch (each row's table and token count), the paged
    /// kernel's and the reference's input. So the plan's "sequences" are rows: its
    /// `sequenceCount`, batch positions and `depthFirstOrder` count query rows. `batch` holds
    /// every row's table, ~newTokens² / (2 · blockSize) block ids for a chunk of a fresh prompt
    /// (84 MB for 8192 rows after 32768 tokens at block size 16): split very long chunks.
    ///
    /// Throws, before building anything: as ``BlockTableBatch`` does for a table that does not
    /// fit its token count (or a count above `Int32.max`) or names a negative block (`sequence`
    /// naming the entry of `sequences`); `.invalidChunk` for `newTokens` outside
    /// `1...tokenCount`; `.planTooLarge` when the rows or their tables' block ids would pass
    /// `Int32.max`. No sequences: an empty plan.
    public static func causal(blockSize: Int, sequences: [CausalRows]) throws(DecodePlanError) -> DecodePlan {
        guard blockSize >= 1 && blockSize <= Int(Int32.max) else { throw .invalidBlockSize(blockSize) }
        // Checked before anything is built: the rows' tables hold Σ (position / blockSize + 1)
        // block ids, quadratic in a chunk's length.
        var totalRows = 0, totalIDs = 0
        for (s, rows) in sequences.enumerated() {
            try BlockTableBatch.check(table: rows.table, tokenCount: rows.tokenCount, blockSize: blockSize, sequence: s)
            guard rows.newTokens >= 1 && rows.newTokens <= rows.tokenCount else {
                throw .invalidChunk(newTokens: rows.newTokens, tokenCount: rows.tokenCount)
            }
            let ids = rowTableIDs(upTo: rows.tokenCount, blockSize: blockSize) - rowTableIDs(upTo: rows.tokenCount - rows.newTokens, blockSize: blockSize)
            // Each term is below 2^62 (tokenCount <= Int32.max) and the totals below Int32.max
            // until they throw: no overflow.
            totalRows += rows.newTokens
            totalIDs += ids
            if totalRows > Int(Int32.max) || totalIDs > Int(Int32.max) { throw .planTooLarge(rows: totalRows, blockIDs: totalIDs) }
        }
        // The rows' batch, laid out in place: each row's table is a prefix of its sequence's
        // (checked above), so neither a per-row array nor a second check is needed.
        var indptr: [Int32] = [0], indices: [Int32] = [], counts: [Int32] = [], firstRows: [Int] = []
        indptr.reserveCapacity(totalRows + 1)
        indices.reserveCapacity(totalIDs)
        counts.reserveCapacity(totalRows)
        for rows in sequences {
            firstRows.append(counts.count)
            for position in (rows.tokenCount - rows.newTokens)..<rows.tokenCount {
                indices.append(contentsOf: rows.table[...(position / blockSize)])
                indptr.append(Int32(indices.count))
                counts.append(Int32(position + 1))
            }
        }
        let batch = BlockTableBatch(blockSize: blockSize, indptr: indptr, indices: indices, tokenCounts: counts)
        func rowRange(_ s: Int) -> Range<Int> { firstRows[s]..<(firstRows[s] + sequences[s].newTokens) }
        func sharedBlocks(_ s: Int) -> Int { (sequences[s].tokenCount - sequences[s].newTokens) / blockSize }

        // The prefixes, as a decode plan over the sequences that have one; each member then
        // stands for its rows. A decode token (one row) goes in whole, as `init(batch:)` plans a
        // decode batch: its last block joins its prefix node instead of being a second one, and
        // a partial block forked samples still share is read once. Where tables disagree on a
        // shared block's tokens (a `.range` row ending inside a block that another row reads
        // further), the decode rows ending inside that block are planned as chunks instead.
        var whole = sequences.map { $0.newTokens == 1 }
        func partialEnd(_ s: Int) -> Int32? { sequences[s].tokenCount % blockSize == 0 ? nil : sequences[s].table.last }
        var withPrefix: [Int] = [], prefixes: DecodePlan
        while true {
            withPrefix = sequences.indices.filter { whole[$0] || sharedBlocks($0) > 0 }
            let prefixTables = withPrefix.map { whole[$0] ? sequences[$0].table : Array(sequences[$0].table[..<sharedBlocks($0)]) }
            let prefixCounts = withPrefix.map { whole[$0] ? sequences[$0].tokenCount : sharedBlocks($0) * blockSize }
            do {
                prefixes = try DecodePlan(blockSize: blockSize, tables: prefixTables, tokenCounts: prefixCounts)
                break
            } catch .inconsistentSharedBlock(let block) {
                // Only decode rows can end inside a block (the other members' prefixes are whole
                // blocks): those ending partway into `block` take whole-block prefixes and leaves.
                let culprits = sequences.indices.filter { whole[$0] && partialEnd($0) == block }
                precondition(!culprits.isEmpty, "DecodePlan.causal: block \(block) reported inconsistent, but no decode row ends inside it")
                for s in culprits { whole[s] = false }
            }
        }
        var levels: [Level] = []
        var under = [(level: Int, node: Int32)](repeating: (-1, -1), count: sequences.count)
        for (k, level) in prefixes.levels.enumerated() {
            var rows = level
            rows.sequenceIndices = []
            rows.sequenceIndptr = [0]
            for j in 0..<level.nodeCount {
                for member in level.sequences(ofNode: j) {
                    let s = withPrefix[Int(member)]
                    rows.sequenceIndices.append(contentsOf: rowRange(s).lazy.map { Int32($0) })
                    under[s] = (k, Int32(j))
                }
                rows.sequenceIndptr.append(Int32(rows.sequenceIndices.count))
            }
            levels.append(rows)
        }
        func appendNode(level k: Int, blocks: ArraySlice<Int32>, lastTokens: Int, rows: Range<Int>, parent: Int32) -> Int32 {
            while levels.count <= k { levels.append(Level()) }
            return levels[k].appendNode(blocks: blocks, lastTokens: lastTokens, rows: rows, parent: parent)
        }

        // Each sequence's chunk: its causal groups' shared nodes, then a leaf per row.
        for (s, rows) in sequences.enumerated() where !whole[s] {
            let first = rows.tokenCount - rows.newTokens, shared = sharedBlocks(s), base = firstRows[s]
            let groups = Level.causalGroups(first: first, newTokens: rows.newTokens, blockSize: blockSize, sharedBlocks: shared,
                                            groupBlocks: max(1, causalGroupTokens / blockSize))
            for group in groups {
                var leafLevel = under[s].level + 1, leafParent = under[s].node
                if group.start > shared {
                    leafParent = appendNode(level: leafLevel, blocks: rows.table[shared..<group.start], lastTokens: blockSize,
                                            rows: (base + group.rows.lowerBound)..<(base + group.rows.upperBound), parent: leafParent)
                    leafLevel += 1
                }
                for i in group.rows {
                    let position = first + i
                    _ = appendNode(level: leafLevel, blocks: rows.table[group.start...(position / blockSize)],
                                   lastTokens: position % blockSize + 1, rows: (base + i)..<(base + i + 1), parent: leafParent)
                }
            }
        }
        // Rows of a sequence are adjacent; sequences sharing a prefix node adjacent as in the
        // prefixes' own order.
        var order = prefixes.depthFirstOrder.flatMap { rowRange(withPrefix[Int($0)]).map { Int32($0) } }
        for s in sequences.indices where !whole[s] && sharedBlocks(s) == 0 { order.append(contentsOf: rowRange(s).map { Int32($0) }) }
        return DecodePlan(batch: batch, levels: levels, depthFirstOrder: order)
    }
}

/// Σ over positions `0..<tokens` of `position / blockSize + 1`: the block ids a causal plan's
/// rows for those positions hold in their tables: blockSize · q(q+1)/2 + r · (q+1) for
/// tokens = q · blockSize + r. At most ~tokens²/2 ≤ 2^61 for tokens ≤ Int32.max.
private func rowTableIDs(upTo tokens: Int, blockSize: Int) -> Int {
    let q = tokens / blockSize, r = tokens % blockSize
    return blockSize * (q * (q + 1) / 2) + r * (q + 1)
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
}
