/// The shared-prefix structure of a decode batch, as a tree of levels in flat CSR arrays
/// (after FlashInfer's cascade layout), for a bifurcated/cascade attention kernel.
///
/// Every node is a run of blocks read by a set of sequences. A sequence's KV is the
/// concatenation of the nodes that contain it, one per level from level 0 down to its leaf.
/// A node with two or more sequences is a *shared context*: a kernel reads its pages once for
/// all of them. A node with one sequence is that sequence's own blocks.
///
/// ```
///   batch: s0 = [A B C x]  s1 = [A B C y z]  s2 = [A B D w]  s3 = [q]
///   level 0:  {A B}→(s0 s1 s2)                               {q}→(s3)
///   level 1:  {C}→(s0 s1)                  {D w}→(s2)
///   level 2:  {x}→(s0)  {y z}→(s1)
/// ```
///
/// Nodes of level `k` are `0..<level.nodeCount`; node `j` reads blocks
/// `blockIndices[blockIndptr[j] ..< blockIndptr[j+1]]` (all full but the last, which holds
/// `lastBlockTokenCounts[j]` tokens) for the batch positions
/// `sequenceIndices[sequenceIndptr[j] ..< sequenceIndptr[j+1]]` (ascending), and continues
/// `parentIndices[j]` of level `k-1` (-1 on level 0). Nodes without blocks are omitted, so a
/// sequence whose KV ends inside a shared node has no leaf.
public struct DecodePlan: Sendable, Equatable {
    /// One depth of the tree: its nodes as CSR arrays (see the type's description).
    public struct Level: Sendable, Equatable {
        /// Offsets into `sequenceIndices`, one per node plus one.
        public internal(set) var sequenceIndptr: [Int32] = [0]
        /// Batch positions each node serves, ascending within a node.
        public internal(set) var sequenceIndices: [Int32] = []
        /// Offsets into `blockIndices`, one per node plus one.
        public internal(set) var blockIndptr: [Int32] = [0]
        /// Block ids each node reads, in token order.
        public internal(set) var blockIndices: [Int32] = []
        /// Tokens in each node's last block (1…blockSize).
        public internal(set) var lastBlockTokenCounts: [Int32] = []
        /// The node of the previous level each node continues (-1 on level 0).
        public internal(set) var parentIndices: [Int32] = []

        /// Nodes on this level.
        @inlinable public var nodeCount: Int { lastBlockTokenCounts.count }
        /// Batch positions of the sequences node `j` serves.
        @inlinable public func sequences(ofNode j: Int) -> ArraySlice<Int32> {
            sequenceIndices[Int(sequenceIndptr[j])..<Int(sequenceIndptr[j + 1])]
        }
        /// Block ids node `j` reads.
        @inlinable public func blocks(ofNode j: Int) -> ArraySlice<Int32> {
            blockIndices[Int(blockIndptr[j])..<Int(blockIndptr[j + 1])]
        }
        /// Tokens of KV node `j` holds.
        @inlinable public func tokenCount(ofNode j: Int, blockSize: Int) -> Int {
            (Int(blockIndptr[j + 1] - blockIndptr[j]) - 1) * blockSize + Int(lastBlockTokenCounts[j])
        }
    }

    /// Tokens per block, as in the batch.
    public let blockSize: Int
    /// The batch the plan was built from (each sequence's full block table): the paged fallback.
    public let batch: BlockTableBatch
    /// The tree's levels, root level first.
    public internal(set) var levels: [Level]
    /// A permutation of batch positions in depth-first order: sequences that share a node are
    /// adjacent, for engines that want contiguous query ranges per node.
    public internal(set) var depthFirstOrder: [Int32]

    /// Sequences in the batch: for a causal plan (``causal(blockSize:sequences:)``), its query
    /// rows, each a sequence of the batch (see ``rowCount``).
    @inlinable public var sequenceCount: Int { batch.sequenceCount }

    /// Query rows: one per sequence of a decode plan, one per token of a causal plan's chunks.
    /// The output of a kernel over the plan holds `rowCount × queryHeads × headDim` values.
    @inlinable public var rowCount: Int { batch.sequenceCount }

    /// Builds the plan by grouping the batch's block tables on their common block-id prefixes.
    /// Runs in O(total blocks × depth).
    public init(batch: BlockTableBatch) throws(DecodePlanError) {
        self.blockSize = batch.blockSize
        self.batch = batch
        self.levels = []
        self.depthFirstOrder = []
        depthFirstOrder.reserveCapacity(batch.sequenceCount)
        try split(members: Array(0..<batch.sequenceCount), at: 0, level: 0, parent: -1)
    }

    /// A plan built elsewhere in this module (``causal(blockSize:sequences:)``).
    init(batch: BlockTableBatch, levels: [Level], depthFirstOrder: [Int32]) {
        self.blockSize = batch.blockSize
        self.batch = batch
        self.levels = levels
        self.depthFirstOrder = depthFirstOrder
    }

    /// Builds the plan from per-sequence block tables and token counts (see ``BlockTableBatch``).
    public init(blockSize: Int, tables: [[Int32]], tokenCounts: [Int]) throws(DecodePlanError) {
        try self.init(batch: BlockTableBatch(blockSize: blockSize, tables: tables, tokenCounts: tokenCounts))
    }

    /// Emits the nodes for `members` (batch positions whose tables agree before block `position`).
    private mutating func split(members: [Int], at position: Int, level: Int, parent: Int32) throws(DecodePlanError) {
        // Group by the block at `position`, keeping first-seen order (members are ascending).
        var groups: [Int32: [Int]] = [:]
        var order: [Int32] = []
        for s in members where batch.table(s).count > position {
            let block = batch.indices[Int(batch.indptr[s]) + position]
            if groups[block] == nil { order.append(block) }
            groups[block, default: []].append(s)
        }
        // Members whose tables end here have no further node; they still need a DFS slot.
        for s in members where batch.table(s).count == position { depthFirstOrder.append(Int32(s)) }
        for first in order {
            let group = groups[first]!
            // The longest run of blocks every member of the group shares from `position`.
            var end = position + 1
            if group.count == 1 {
                end = batch.table(group[0]).count
            } else {
                extend: while true {
                    let t0 = batch.table(group[0])
                    guard t0.count > end else { break }
                    let candidate = t0[t0.startIndex + end]
                    for s in group.dropFirst() {
                        let t = batch.table(s)
                        if t.count <= end || t[t.startIndex + end] != candidate { break extend }
                    }
                    end += 1
                }
            }
            // Tokens in the node's last block: full unless some member's table ends there.
            var last = -1
            for s in group where batch.table(s).count == end {
                let n = batch.lastBlockTokenCount(s)
                if last != -1 && last != n { throw .inconsistentSharedBlock(block: batch.table(s).last!) }
                last = n
            }
            if last == -1 { last = blockSize } else if last != blockSize && group.contains(where: { batch.table($0).count > end }) {
                throw .inconsistentSharedBlock(block: batch.indices[Int(batch.indptr[group[0]]) + end - 1])
            }
            let node = appendNode(level: level, members: group, from: position, to: end, lastTokens: last, parent: parent)
            if group.count == 1 {
                depthFirstOrder.append(Int32(group[0]))
            } else {
                try split(members: group, at: end, level: level + 1, parent: Int32(node))
            }
        }
    }

    private mutating func appendNode(level: Int, members: [Int], from: Int, to: Int, lastTokens: Int, parent: Int32) -> Int {
        if levels.count == level { levels.append(Level()) }
        let t = batch.table(members[0])
        levels[level].blockIndices.append(contentsOf: t[(t.startIndex + from)..<(t.startIndex + to)])
        levels[level].blockIndptr.append(Int32(levels[level].blockIndices.count))
        levels[level].sequenceIndices.append(contentsOf: members.lazy.map { Int32($0) })
        levels[level].sequenceIndptr.append(Int32(levels[level].sequenceIndices.count))
        levels[level].lastBlockTokenCounts.append(Int32(lastTokens))
        levels[level].parentIndices.append(parent)
        return levels[level].nodeCount - 1
    }

    // MARK: - Figures

    /// Tokens of KV a kernel reads when every shared node is read once (bifurcated/cascade).
    public var planTokenReads: Int {
        var total = 0
        for level in levels {
            for j in 0..<level.nodeCount { total += level.tokenCount(ofNode: j, blockSize: blockSize) }
        }
        return total
    }

    /// Whether any node is shared by two or more sequences.
    public var hasSharing: Bool {
        levels.contains { level in (0..<level.nodeCount).contains { level.sequenceIndptr[$0 + 1] - level.sequenceIndptr[$0] > 1 } }
    }

    // MARK: - Invariants

    /// Checks that the levels describe the batch exactly: walking each sequence's nodes level by
    /// level gives back its block table and token count, parents contain their children's
    /// sequences, and `depthFirstOrder` is a permutation. Traps naming the broken invariant.
    public func checkInvariants() {
        let b = sequenceCount
        var rebuilt = [[Int32]](repeating: [], count: b)
        var tokens = [Int](repeating: 0, count: b)
        var nodeOf = [[Int]](repeating: [Int](repeating: -1, count: levels.count), count: b)
        for (k, level) in levels.enumerated() {
            invariant(level.sequenceIndptr.count == level.nodeCount + 1 && level.blockIndptr.count == level.nodeCount + 1
                         && level.parentIndices.count == level.nodeCount, "DecodePlan: level \(k) arrays disagree on node count")
            for j in 0..<level.nodeCount {
                let blocks = level.blocks(ofNode: j)
                invariant(!blocks.isEmpty, "DecodePlan: level \(k) node \(j) has no blocks")
                let last = Int(level.lastBlockTokenCounts[j])
                invariant(last >= 1 && last <= blockSize, "DecodePlan: level \(k) node \(j) last block holds \(last) tokens")
                let seqs = level.sequences(ofNode: j)
                invariant(!seqs.isEmpty && zip(seqs, seqs.dropFirst()).allSatisfy { $0 < $1 },
                             "DecodePlan: level \(k) node \(j) sequences are empty or not ascending")
                for s in seqs {
                    let s = Int(s)
                    invariant(nodeOf[s][k] == -1, "DecodePlan: sequence \(s) appears twice on level \(k)")
                    nodeOf[s][k] = j
                    let parent = Int(level.parentIndices[j])
                    if k == 0 {
                        invariant(parent == -1, "DecodePlan: level 0 node \(j) has a parent")
                    } else {
                        invariant(nodeOf[s][k - 1] == parent, "DecodePlan: sequence \(s) on level \(k) node \(j) is not in its parent \(parent)")
                    }
                    invariant(tokens[s] % blockSize == 0, "DecodePlan: sequence \(s) continues after a partial block")
                    rebuilt[s].append(contentsOf: blocks)
                    tokens[s] += level.tokenCount(ofNode: j, blockSize: blockSize)
                }
            }
        }
        for s in 0..<b {
            invariant(rebuilt[s] == Array(batch.table(s)), "DecodePlan: nodes of sequence \(s) do not rebuild its block table")
            invariant(tokens[s] == Int(batch.tokenCounts[s]), "DecodePlan: nodes of sequence \(s) hold \(tokens[s]) tokens, batch says \(batch.tokenCounts[s])")
        }
        invariant(depthFirstOrder.sorted() == (0..<b).map { Int32($0) }, "DecodePlan: depthFirstOrder is not a permutation of the batch")
    }
}
