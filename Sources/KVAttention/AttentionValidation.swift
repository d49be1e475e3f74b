import KVCore

/// The checks every public entry point runs before touching pages: shapes, head grouping,
/// layout agreement and block ids inside the arena (`knownMaxBlock`: the tables' largest id,
/// when a cache already knows it).
enum AttentionValidation {
    static func check(
        layout: KVLayout, queryHeads: Int, batch: BlockTableBatch, capacity: Int, knownMaxBlock: Int32? = nil,
        queryCount: Int, outputCount: Int, scale: Float
    ) throws(AttentionError) {
        guard queryHeads > 0, queryHeads % layout.kvHeadCount == 0 else {
            throw .headsNotDivisible(queryHeads: queryHeads, kvHeads: layout.kvHeadCount)
        }
        guard batch.blockSize == layout.blockSize else {
            throw .layoutMismatch("block tables use \(batch.blockSize)-token blocks, pages hold \(layout.blockSize)")
        }
        let expected = batch.sequenceCount * queryHeads * layout.headDim
        guard queryCount == expected else { throw .shapeMismatch(what: "query", expected: expected, got: queryCount) }
        guard outputCount == expected else { throw .shapeMismatch(what: "output", expected: expected, got: outputCount) }
        guard scale.isFinite else { throw .invalidScale(scale) }
        // The largest id, when known (the same tables as a call already checked), settles it.
        if let knownMaxBlock, Int(knownMaxBlock) < capacity { return }
        for block in batch.indices where Int(block) >= capacity {
            throw .blockOutOfRange(block: block, capacity: capacity)
        }
    }
}
