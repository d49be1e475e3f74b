import KVCache

/// One block's record, built in memory by `spill` (under the manager's lock) and owned by the
/// store until it is committed: the background queue and restores of not-yet-written blocks
/// both read it.
final class PendingRecord: @unchecked Sendable {
    let key: PrefixKey
    /// Header, namespace, tokens and payload, in ``SpillRecord`` layout. Written once by `spill`,
    /// sealed by whoever commits it, read-only afterwards except for the checksum bytes.
    let bytes: UnsafeMutableRawBufferPointer
    /// A later spill of the same key replaced this one before it was written (guarded by the store's lock).
    var superseded = false

    private let pool: RecordBufferPool

    init(key: PrefixKey, byteCount: Int, pool: RecordBufferPool) {
        self.key = key
        self.pool = pool
        self.bytes = pool.take(byteCount: byteCount)
    }

    deinit { pool.give(bytes) }

    var view: RecordView {
        // Built by SpillRecord.writeHeader: a malformed header here is a bug in this module.
        do { return try RecordView(UnsafeRawBufferPointer(bytes)) } catch {
            fatalError("PendingRecord \(key): own record does not parse (\(error))")
        }
    }
}

/// The stats the manager published last, with when.
struct PublishedStats: Codable, Equatable {
    var savedAtMillis: UInt64
    var stats: KVCacheStats
}

/// What one write transaction applies: new records, LRU touches of restored keys, deletions of
/// records found corrupt, and the latest published stats.
struct WriteBatch {
    var records: [PendingRecord] = []
    var touches: [PrefixKey] = []
    var deletes: [PrefixKey] = []
    var stats: PublishedStats?

    var isEmpty: Bool { records.isEmpty && touches.isEmpty && deletes.isEmpty && stats == nil }
    var recordBytes: Int { records.reduce(0) { $0 + $1.bytes.count } }

    /// Deletions, touches and records, in that order (the order a transaction applies them in),
    /// cut into batches of at most `maxOperations` each (at least one); the stats go with the
    /// first. Applying them one after another has the effect of applying `self`.
    func parts(maxOperations: Int) -> [WriteBatch] {
        let limit = max(1, maxOperations)
        guard deletes.count + touches.count + records.count > limit else { return [self] }
        var parts: [WriteBatch] = []
        var part = WriteBatch()
        part.stats = stats
        var size = 0
        func add(_ place: (inout WriteBatch) -> Void) {
            if size == limit {
                parts.append(part)
                part = WriteBatch()
                size = 0
            }
            place(&part)
            size += 1
        }
        for key in deletes { add { $0.deletes.append(key) } }
        for key in touches { add { $0.touches.append(key) } }
        for record in records { add { $0.records.append(record) } }
        parts.append(part)
        return parts
    }

    /// Two batches with half the records each; touches, deletions and stats go with the first.
    func split() -> (WriteBatch, WriteBatch) {
        let half = records.count / 2
        var first = self, second = WriteBatch()
        first.records = Array(records[..<half])
        second.records = Array(records[half...])
        return (first, second)
    }
}
