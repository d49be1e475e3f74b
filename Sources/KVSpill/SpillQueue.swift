import Foundation
import KVCache
import KVCore

/// The state the store's callers and its background writer share, behind one lock: records
/// spilled but not yet committed (readable by restores meanwhile), LRU touches and deletions
/// waiting for the next transaction, the latest published stats, and the counters.
///
/// Callers only copy bytes and append under the lock; every LMDB write happens outside it.
final class SpillQueue: @unchecked Sendable {
    private let lock = NSCondition()
    private var pending: [PrefixKey: PendingRecord] = [:]
    /// Records waiting for the writer, oldest first, from `head` on (a head index rather than
    /// `removeFirst`, which shifts the whole array: with hundreds of thousands of small records
    /// queued, that memmove was half the replay's time).
    private var queue: [PendingRecord] = []
    private var head = 0
    /// Bytes of the records in `pending` (queued or being written).
    private var pendingBytes = 0
    private var touches: [PrefixKey] = []
    private var deletes: Set<PrefixKey> = []
    private var stats: PublishedStats?
    private var statsDirty = false
    private var lastStatsWriteMillis: UInt64 = 0
    private var lastHousekeepingMillis: UInt64 = 0
    private var counters = SpillStoreCounters()
    private var batchesInFlight = 0
    private var stopRequested = false
    /// Callers waiting in ``waitUntilDrained()``: while any, the writer takes touches, deletions
    /// and stats at once instead of on their interval.
    private var flushWaiters = 0

    let queueLimitBytes: Int
    let statsIntervalMillis: UInt64

    init(queueLimitBytes: Int, statsIntervalSeconds: Double) {
        self.queueLimitBytes = queueLimitBytes
        self.statsIntervalMillis = UInt64(statsIntervalSeconds * 1000)
    }

    private func locked<R>(_ body: () throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }

    // MARK: - Callers

    /// Whether a record of `bytes` fits in the queue now; counts the drop when it does not.
    /// (Checked before the record is built, so concurrent spillers may overshoot the limit by a
    /// record each; the manager calls `spill` under its lock, one at a time.)
    ///
    /// With `wait`, blocks instead until the writer has made room (a record larger than the
    /// whole queue waits for the queue to empty) and returns true; false only after a stop.
    func admits(bytes: Int, wait: Bool = false) -> Bool {
        locked {
            if pendingBytes + bytes <= queueLimitBytes { return true }
            guard wait else {
                counters.spillsDroppedQueueFull += 1
                return false
            }
            counters.spillWaits += 1
            while pendingBytes + bytes > queueLimitBytes && pendingBytes > 0 && !stopRequested { lock.wait() }
            if stopRequested {
                counters.spillsDroppedQueueFull += 1
                return false
            }
            return true
        }
    }

    /// Queues `record` for the writer, replacing a not-yet-written record of the same key.
    func enqueue(_ record: PendingRecord) {
        locked {
            if let old = pending[record.key] {
                old.superseded = true
                pendingBytes -= old.bytes.count
            }
            pending[record.key] = record
            pendingBytes += record.bytes.count
            queue.append(record)
            counters.spills += 1
            lock.broadcast()
        }
    }

    /// Calls `body` with the not-yet-written record of `key`, under the lock (so the writer cannot
    /// free it meanwhile); nil when there is none.
    func withPending<R>(_ key: PrefixKey, _ body: (PendingRecord) -> R) -> R? {
        locked { pending[key].map(body) }
    }

    /// LRU touches and deletions wait for the next records batch or the periodic wake-up (no
    /// signal): a commit (and fsync) per restored block would compete with the restores.
    func touch(_ key: PrefixKey) { locked { touches.append(key) } }

    /// Queues `key`'s entry for deletion; false when it already is (so a bad entry asked for
    /// again before the writer runs is counted once).
    func delete(_ key: PrefixKey) -> Bool { locked { deletes.insert(key).inserted } }

    func publish(_ s: KVCacheStats) {
        locked {
            stats = PublishedStats(savedAtMillis: nowMillis(), stats: s)
            statsDirty = true
        }
    }

    func count(_ update: (inout SpillStoreCounters) -> Void) { locked { update(&counters) } }
    var snapshot: SpillStoreCounters { locked { counters } }

    // MARK: - Writers

    /// Everything due for the next transaction, at most `maxBytes` of records (at least one):
    /// queued records, touches and deletions (with records, or once per interval), and the stats
    /// when dirty and due; `force` takes everything regardless of intervals.
    /// `adding` joins records that never went through the queue (synchronous mode).
    /// Nil when nothing is due. The caller must hand the batch back to ``completed(_:_:)``.
    func takeBatch(maxBytes: Int, force: Bool, adding extra: [PendingRecord] = []) -> WriteBatch? {
        locked { takeLocked(maxBytes: maxBytes, force: force, adding: extra) }
    }

    private func takeLocked(maxBytes: Int, force: Bool, adding extra: [PendingRecord] = []) -> WriteBatch? {
        var batch = WriteBatch()
        batch.records = extra
        var bytes = 0
        while head < queue.count, batch.records.isEmpty || bytes + queue[head].bytes.count <= maxBytes {
            // (Synchronous mode never queues, so `extra` and the queue never mix.)
            let r = queue[head]
            head += 1
            if r.superseded { continue }
            batch.records.append(r)
            bytes += r.bytes.count
        }
        if head == queue.count {
            queue.removeAll(keepingCapacity: true)
            head = 0
        } else if head >= 4096 && head * 2 >= queue.count {
            queue.removeFirst(head)  // amortized: at most once per `head` records taken
            head = 0
        }
        let now = nowMillis()
        // Touches and deletions ride along with records, or go alone once per interval.
        if !batch.records.isEmpty || force || now >= lastHousekeepingMillis + statsIntervalMillis {
            batch.touches = touches
            batch.deletes = Array(deletes)
            touches.removeAll()
            deletes.removeAll()
            lastHousekeepingMillis = now
        }
        if statsDirty && (force || now >= lastStatsWriteMillis + statsIntervalMillis) {
            batch.stats = stats
            statsDirty = false
            lastStatsWriteMillis = now
        }
        if batch.isEmpty { return nil }
        batchesInFlight += 1
        return batch
    }

    /// Records the outcome of a batch from ``takeBatch(maxBytes:force:)`` and releases its records.
    func completed(_ batch: WriteBatch, _ delta: SpillStoreCounters) {
        locked {
            counters.add(delta)
            for r in batch.records where pending[r.key] === r {
                pending[r.key] = nil
                pendingBytes -= r.bytes.count
            }
            invariant(pendingBytes >= 0, "SpillQueue: pending byte count went negative")
            batchesInFlight -= 1
            lock.broadcast()
        }
    }

    // MARK: - Background writer loop

    /// Blocks until a batch is due and returns it (waking at least once per stats interval, so
    /// stats and touches go out on time); nil once a stop was requested and nothing is left.
    func waitForBatch(maxBytes: Int) -> WriteBatch? {
        locked {
            while true {
                if let batch = takeLocked(maxBytes: maxBytes, force: stopRequested || flushWaiters > 0) { return batch }
                if stopRequested { return nil }
                _ = lock.wait(until: Date(timeIntervalSinceNow: Double(max(statsIntervalMillis, 10)) / 1000))
            }
        }
    }

    /// Waits until every record queued so far, and every touch, deletion and published stats record, is committed (or failed).
    func waitUntilDrained() {
        locked {
            flushWaiters += 1
            lock.broadcast()
            while !(queue[head...].allSatisfy(\.superseded) && touches.isEmpty && deletes.isEmpty && !statsDirty && batchesInFlight == 0) {
                lock.wait()
            }
            flushWaiters -= 1
        }
    }

    func requestStop() { locked { stopRequested = true; lock.broadcast() } }
}
