import CKVKernels
import KVCore

/// The checks every public entry point runs before touching pages: shapes, head grouping,
/// layout agreement and block ids inside the arena (`knownMaxBlock`: the tables' largest id,
/// when a cache already knows it).
enum AttentionValidation {
    /// The most query rows (sequences × query heads) one call takes: the kernels size scratch
    /// and index rows in 32-bit arithmetic, and 2^24 rows is far beyond any decode batch.
    static let maxQueryRows = 1 << 24

    static func check(
        layout: KVLayout, queryHeads: Int, batch: BlockTableBatch, capacity: Int, knownMaxBlock: Int32? = nil,
        query: UnsafeBufferPointer<Float>, outputCount: Int, scale: Float
    ) throws(AttentionError) {
        guard queryHeads > 0, queryHeads % layout.kvHeadCount == 0 else {
            throw .headsNotDivisible(queryHeads: queryHeads, kvHeads: layout.kvHeadCount)
        }
        guard batch.blockSize == layout.blockSize else {
            throw .layoutMismatch("block tables use \(batch.blockSize)-token blocks, pages hold \(layout.blockSize)")
        }
        // Rows first, overflow-checked: sequences × heads × head dim trapped on overflow here.
        let (rows, overflow) = batch.sequenceCount.multipliedReportingOverflow(by: queryHeads)
        guard !overflow, rows <= maxQueryRows else {
            throw .tooManyQueryRows(sequences: batch.sequenceCount, queryHeads: queryHeads, limit: maxQueryRows)
        }
        let expected = rows * layout.headDim  // ≤ 2^24 × Int32.max: no overflow
        guard query.count == expected else { throw .shapeMismatch(what: "query", expected: expected, got: query.count) }
        guard outputCount == expected else { throw .shapeMismatch(what: "output", expected: expected, got: outputCount) }
        guard scale.isFinite, scale > 0 else { throw .invalidScale(scale) }
        if let base = query.baseAddress {
            let bad = kvk_first_nonfinite(base, query.count)
            if bad < query.count { throw .nonFiniteQuery(index: bad) }
        }
        // The largest id, when known (the same tables as a call already checked), settles it.
        if let knownMaxBlock, Int(knownMaxBlock) < capacity { return }
        for block in batch.indices where Int(block) >= capacity {
            throw .blockOutOfRange(block: block, capacity: capacity)
        }
    }
}
