import Foundation
import Glibc
import KVCache
import KVCore
import Logging
import LMDB

/// The one code path that writes the store: applies a ``WriteBatch`` in a transaction, keeps the
/// store under its size limit by dropping least recently used entries, and handles a full map
/// or a full disk by growing, evicting and retrying. It never throws: a batch it cannot commit
/// is dropped and counted, and the store keeps serving what it holds.
final class StoreWriter: Sendable {
    struct State {
        /// Committed sum of record sizes (mirrors meta `bytes`).
        var bytes: Int
        var nextSequence: UInt64
        /// The size limit in force: the configured one, lowered after the disk filled up.
        var limitBytes: Int
        var mapSize: Int
    }

    let store: StoreDatabase
    let mapSizeLimit: Int
    private let logger: Logger
    private let state: Locked<State>

    init(store: StoreDatabase, limitBytes: Int, mapSizeLimit: Int, logger: Logger) throws {
        self.store = store
        self.mapSizeLimit = mapSizeLimit
        self.logger = logger
        let (bytes, next) = try store.env.withReadTransaction { txn in (try store.readBytes(txn), try store.nextSequence(txn)) }
        state = Locked(State(bytes: bytes, nextSequence: next, limitBytes: limitBytes, mapSize: try store.env.info().mapSize))
    }

    var committedBytes: Int { state.withLock { $0.bytes } }

    /// For tests that edit records behind the writer's back (to simulate corruption).
    func adjustCommittedBytesForTests(by delta: Int) { state.withLock { $0.bytes += delta } }

    /// Runs `body` with writes held off (for the invariant checker).
    func withStateLocked<R>(_ body: (State) -> R) -> R { state.withLock { body($0) } }

    /// Commits `batch` (retrying after a full map or disk) and returns what happened.
    func apply(_ batch: WriteBatch) -> SpillStoreCounters {
        var delta = SpillStoreCounters()
        guard !batch.isEmpty else { return delta }
        state.withLock { state in
            for attempt in 1...6 {
                var next = state
                var done = SpillStoreCounters()
                do {
                    try store.env.withWriteTransaction { txn in try write(batch, txn, &next, &done) }
                    state = next
                    delta.add(done)
                    delta.commits += 1
                    return
                } catch LMDBError.mapFull {
                    delta.mapFullRetries += 1
                    if state.mapSize < mapSizeLimit {
                        let grown = min(mapSizeLimit, max(state.mapSize * 2, state.mapSize + 2 * batch.recordBytes))
                        do {
                            try store.env.setMapSize(grown)
                            state.mapSize = grown
                            delta.mapGrowths += 1
                        } catch {
                            logger.warning("spill store: growing the map to \(grown) bytes failed: \(error)")
                        }
                    } else {
                        // At the ceiling: free pages in a transaction of their own (LMDB reuses
                        // pages freed by earlier transactions only), then retry.
                        evictSeparately(&state, freeing: max(batch.recordBytes, state.limitBytes / 16), &delta)
                    }
                } catch let error as LMDBError where error == .noSpace || (error == .ioError && diskIsFull(needing: batch.recordBytes)) {
                    // LMDB 0.9 reports a short write (what a full disk gives) as EIO, hence the free-space check.
                    delta.diskFullEvents += 1
                    // The disk holds what is committed and no more: keep the store that size from now on.
                    state.limitBytes = max(0, min(state.limitBytes, state.bytes - batch.recordBytes))
                    logger.warning("spill store: disk full, limiting the store to \(state.limitBytes) bytes")
                    evictSeparately(&state, freeing: 0, &delta)
                } catch {
                    logger.error("spill store: dropping a batch of \(batch.records.count) records: \(error)")
                    break
                }
                if attempt == 6 { logger.error("spill store: dropping a batch of \(batch.records.count) records after \(attempt) attempts") }
            }
            delta.recordsFailed += batch.records.count
        }
        return delta
    }

    /// Whether the store's file system has less than `bytes` (plus a few pages) available.
    private func diskIsFull(needing bytes: Int) -> Bool {
        var fs = statvfs()
        guard statvfs(store.path, &fs) == 0 else { return false }
        return Int(fs.f_bavail) * Int(fs.f_frsize) < bytes + (64 << 10)
    }

    /// Removes least recently used entries in a committed transaction of its own until `freeing`
    /// bytes are gone and the store is under its limit.
    private func evictSeparately(_ state: inout State, freeing: Int, _ delta: inout SpillStoreCounters) {
        var next = state
        var d = SpillStoreCounters()
        do {
            try store.env.withWriteTransaction { txn in
                try evict(txn, &next, until: min(next.limitBytes, next.bytes - freeing), &d)
                try txn.put(le(UInt64(next.bytes)), for: StoreDatabase.MetaKey.bytes, in: store.meta)
            }
            state = next
            delta.lruEvictions += d.lruEvictions
            delta.commits += 1
        } catch {
            logger.warning("spill store: evicting to make room failed: \(error)")
        }
    }

    /// The body of a batch's transaction.
    private func write(_ batch: WriteBatch, _ txn: borrowing Transaction, _ s: inout State, _ delta: inout SpillStoreCounters) throws {
        for key in batch.deletes { try remove(key, txn, &s) }
        for key in batch.touches {
            try key.withBytes { k in
                guard let oldSequence = try txn.copyValue(for: k, in: store.access) else { return }  // evicted meanwhile
                try txn.delete(oldSequence, in: store.lru)
                try link(k, txn, &s)
            }
        }
        var written = 0, tooLarge = 0
        let fitting = batch.records.filter { r in
            let fits = r.bytes.count <= s.limitBytes
            if !fits { tooLarge += 1 }
            return fits
        }
        for r in fitting { try remove(r.key, txn, &s) }
        try evict(txn, &s, until: s.limitBytes - fitting.reduce(0) { $0 + $1.bytes.count }, &delta)
        for r in fitting {
            try r.key.withBytes { k in
                try txn.put(count: r.bytes.count, for: k, in: store.entries) { $0.copyMemory(from: UnsafeRawBufferPointer(r.bytes)) }
                try link(k, txn, &s)
            }
            s.bytes += r.bytes.count
            written += 1
        }
        if let stats = batch.stats {
            try txn.put(Array(try JSONEncoder().encode(stats)), for: StoreDatabase.MetaKey.stats, in: store.meta)
        }
        try txn.put(le(UInt64(s.bytes)), for: StoreDatabase.MetaKey.bytes, in: store.meta)
        delta.recordsWritten += written
        delta.recordsTooLarge += tooLarge
    }

    /// Gives `key` the next access sequence (newest in the LRU order).
    private func link(_ key: UnsafeRawBufferPointer, _ txn: borrowing Transaction, _ s: inout State) throws {
        let seq = s.nextSequence
        s.nextSequence += 1
        try txn.put(key, for: be(seq), in: store.lru, flags: .append)
        try txn.put(be(seq), for: key, in: store.access)
    }

    /// Deletes `key`'s entry, its LRU link and its bytes, if it is there.
    private func remove(_ key: PrefixKey, _ txn: borrowing Transaction, _ s: inout State) throws {
        try key.withBytes { k in
            guard let size = try txn.withValue(for: k, in: store.entries, { $0.count }) else { return }
            try txn.delete(k, in: store.entries)
            if let seq = try txn.copyValue(for: k, in: store.access) {
                try txn.delete(seq, in: store.lru)
                try txn.delete(k, in: store.access)
            }
            s.bytes -= size
            precondition(s.bytes >= 0, "StoreWriter: stored byte count went negative removing \(key)")
        }
    }

    /// Drops least recently used entries until the store holds at most `target` bytes.
    private func evict(_ txn: borrowing Transaction, _ s: inout State, until target: Int, _ delta: inout SpillStoreCounters) throws {
        while s.bytes > max(0, target) {
            guard let oldest = try txn.withCursor(store.lru, { c in try c.first { _, v in PrefixKey(bytes: v) } }) else { return }
            let before = s.bytes
            try remove(oldest, txn, &s)
            precondition(s.bytes < before, "StoreWriter: the LRU index names \(oldest), which has no entry")
            delta.lruEvictions += 1
        }
    }
}
