/// Per-sequence block tables for a batch, as flat CSR arrays: the layout every paged-attention
/// engine consumes.
///
/// Sequence `i` owns `indices[indptr[i] ..< indptr[i+1]]` (block ids, in token order) and holds
/// `tokenCounts[i]` tokens of KV: every block but the last is full, the last holds
/// `lastBlockTokenCount(i)` tokens (1…blockSize).
public struct BlockTableBatch: Sendable, Equatable {
    /// Tokens per block.
    public let blockSize: Int
    /// Offsets into `indices`, one per sequence plus one.
    public let indptr: [Int32]
    /// Every sequence's block ids, concatenated in batch order.
    public let indices: [Int32]
    /// Tokens of KV each sequence holds.
    public let tokenCounts: [Int32]

    /// Sequences in the batch.
    @inlinable public var sequenceCount: Int { tokenCounts.count }

    /// Builds a batch from one block table and one token count per sequence, checking that each
    /// table holds exactly enough blocks for its tokens.
    public init(blockSize: Int, tables: [[Int32]], tokenCounts: [Int]) throws(DecodePlanError) {
        // Counts and ids travel as Int32 (the kernels' CSR arrays), so larger values are refused
        // here rather than trapping when narrowed.
        guard blockSize > 0, blockSize <= Int(Int32.max) else { throw .invalidBlockSize(blockSize) }
        guard tables.count == tokenCounts.count else {
            throw .mismatchedCounts(tables: tables.count, tokenCounts: tokenCounts.count)
        }
        var indptr: [Int32] = [0]
        indptr.reserveCapacity(tables.count + 1)
        var indices: [Int32] = []
        indices.reserveCapacity(tables.reduce(0) { $0 + $1.count })
        for (i, table) in tables.enumerated() {
            try Self.check(table: table, tokenCount: tokenCounts[i], blockSize: blockSize, sequence: i)
            indices.append(contentsOf: table)
            indptr.append(Int32(indices.count))
        }
        self.init(blockSize: blockSize, indptr: indptr, indices: indices, tokenCounts: tokenCounts.map { Int32($0) })
    }

    /// Arrays already checked (``check(table:tokenCount:blockSize:sequence:)`` on every table),
    /// for builders in this module that lay them out directly.
    init(blockSize: Int, indptr: [Int32], indices: [Int32], tokenCounts: [Int32]) {
        self.blockSize = blockSize
        self.indptr = indptr
        self.indices = indices
        self.tokenCounts = tokenCounts
    }

    /// Fails unless `table` holds exactly enough blocks for `tokenCount` tokens (1...`Int32.max`)
    /// and names no negative block; `sequence` is what the error calls it.
    static func check(table: some Collection<Int32>, tokenCount n: Int, blockSize: Int, sequence i: Int) throws(DecodePlanError) {
        guard n >= 1, n <= Int(Int32.max), table.count == (n - 1) / blockSize + 1 else {
            throw .tokenCountDoesNotFitTable(sequence: i, tokens: n, blocks: table.count, blockSize: blockSize)
        }
        for b in table where b < 0 { throw .negativeBlockID(sequence: i, block: b) }
    }

    /// The block ids of sequence `i`.
    @inlinable public func table(_ i: Int) -> ArraySlice<Int32> { indices[Int(indptr[i])..<Int(indptr[i + 1])] }

    /// Tokens held in sequence `i`'s last block (1…blockSize).
    @inlinable public func lastBlockTokenCount(_ i: Int) -> Int {
        Int(tokenCounts[i]) - (Int(indptr[i + 1] - indptr[i]) - 1) * blockSize
    }

    /// Total tokens of KV across the batch (what a paged kernel reads).
    public var totalTokens: Int { tokenCounts.reduce(0) { $0 + Int($1) } }
}

/// Why a decode plan or block-table batch could not be built from the given arrays.
public enum DecodePlanError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalidBlockSize(Int)
    case mismatchedCounts(tables: Int, tokenCounts: Int)
    case tokenCountDoesNotFitTable(sequence: Int, tokens: Int, blocks: Int, blockSize: Int)
    case negativeBlockID(sequence: Int, block: Int32)
    /// Two sequences share a block id but disagree on how many tokens it holds.
    case inconsistentSharedBlock(block: Int32)
    /// A prefill chunk of `newTokens` tokens is not within the sequence's `tokenCount` (1...).
    case invalidChunk(newTokens: Int, tokenCount: Int)
    /// A causal plan's query rows, or the block ids of their tables (each row's table is held:
    /// rows × blocks), would pass `Int32.max`, the index type of the CSR arrays the kernels take.
    case planTooLarge(rows: Int, blockIDs: Int)

    public var description: String {
        switch self {
        case .invalidBlockSize(let s): "block size must be in 1...\(Int32.max), got \(s)"
        case .mismatchedCounts(let t, let c): "\(t) block tables but \(c) token counts"
        case .tokenCountDoesNotFitTable(let s, let n, let b, let bs):
            "sequence \(s): \(n) tokens do not fit exactly in \(b) blocks of \(bs) tokens"
        case .negativeBlockID(let s, let b): "sequence \(s): negative block id \(b)"
        case .inconsistentSharedBlock(let b): "block \(b) is shared by sequences that disagree on its token count"
        case .invalidChunk(let n, let total): "a prefill chunk of \(n) tokens must be 1...\(total) (the sequence's tokens)"
        case .planTooLarge(let rows, let ids):
            "a plan of \(rows) query rows holding \(ids) block ids in their tables: at most \(Int32.max) of each (split the step)"
        }
    }
}
