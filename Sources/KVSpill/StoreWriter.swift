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
        /// The size limit in force: the configured one, lowered after the disk filled up (never
        /// below one record) and raised again as the disk has room (see `recoverLimit`).
        var limitBytes: Int
        var mapSize: Int
        /// When `mdb_reader_check` last ran (see `reapDeadReaders`).
        var lastReaderCheckMillis: UInt64 = 0
        /// A snapshot a reader held longer than ``StoreWriter/readerWaitMillis`` at the ceiling:
        /// not waited for again (see `waitForOldReaders`).
        var longReaderSnapshot: Int?
        /// Times the writer waited at the ceiling for readers on old snapshots to end (for tests).
        var readerWaits = 0
    }

    let store: StoreDatabase
    let mapSizeLimit: Int
    /// LMDB's page size (the OS page size: 4 KiB here, 16 or 64 KiB on some arm64 systems).
    let pageSize: Int
    /// Where growth stops: ``mapSizeLimit`` less a reserve (1/64 of it, 256 KiB to 16 MiB) that
    /// only a transaction freeing pages may use. At the ceiling the pages the last transaction
    /// freed are not reusable until another commits (LMDB keeps the previous snapshot intact),
    /// so a map with no reusable page left could not even delete one entry to make room.
    let softMapLimit: Int
    /// The configured size limit, which the limit in force returns to after a full disk.
    let configuredLimitBytes: Int
    /// The least the limit in force drops to after a full disk: one record with a long namespace.
    /// (At 0 every later record would be "too large" and the store empty for good.)
    let minimumLimitBytes: Int
    private let readerCheckIntervalMillis: UInt64
    /// The most records, touches and deletions one transaction applies: each may copy a few
    /// B-tree pages, and a transaction's copies must fit beside the trees at the ceiling.
    /// A batch of thousands of small records in a tight map (a 4 MiB batch is 6,000 records of
    /// 690 bytes) needed more copy room than the map had: its `MDB_MAP_FULL` handling then
    /// evicted in rounds at every level of its splitting and nearly emptied the store
    /// (a CI run of MapSizingTests kept 189 entries; with this cut, 15 runs kept 2,300–3,400). So the copies a
    /// transaction may make (the estimate `evictForMapRoom` uses) stay within an eighth of
    /// ``softMapLimit``: 30 operations in a 6 MiB map, 1,600 in the default map of a 64 MiB store.
    let operationsPerTransaction: Int
    /// The map size the environment had when opened (LMDB keeps a larger one an earlier run set).
    let openedMapSize: Int
    private let logger: Logger
    private let state: Locked<State>

    init(store: StoreDatabase, limitBytes: Int, mapSizeLimit: Int, readerCheckIntervalSeconds: Double, logger: Logger) throws {
        self.store = store
        self.mapSizeLimit = mapSizeLimit
        pageSize = try store.env.stat().pageSize
        softMapLimit = mapSizeLimit - min(16 << 20, max(256 << 10, mapSizeLimit / 64), mapSizeLimit / 4) / pageSize * pageSize
        operationsPerTransaction = max(1, (softMapLimit / 8 - Self.fixedCopyPages * pageSize) / (Self.copyPagesPerOperation * pageSize))
        self.logger = logger
        configuredLimitBytes = limitBytes
        minimumLimitBytes = min(limitBytes, SpillRecord.payloadOffset(namespaceBytes: 256, tokenCount: store.layout.blockSize)
                                                + store.layout.blockBytes)
        readerCheckIntervalMillis = UInt64(max(0, readerCheckIntervalSeconds) * 1000)
        // Meta `bytes` is data read from disk: a wrong but readable count, trusted, evicted good
        // entries for room that was there (too high) or let the store outgrow its limit (too low).
        // So it is checked against a recount at open: one cursor walk over `entries` reading only
        // sizes (a large record's size is in its leaf node; its overflow pages are not read): a few
        // ms at 10k entries (docs/SPILL.md). A mismatch is logged and the count written back.
        let (stated, bytes, next) = try store.env.withReadTransaction { txn in
            (try store.readBytes(txn), try store.countBytes(txn), try store.nextSequence(txn))
        }
        if stated != bytes {
            let what = stated.map { "\($0) bytes" } ?? "unreadable"
            logger.warning("spill store: the stored byte count (\(what)) disagrees with the entries; recounted \(bytes) bytes",
                           metadata: ["path": "\(store.path)"])
            do {
                try store.env.withWriteTransaction { txn in try txn.put(le(UInt64(bytes)), for: StoreDatabase.MetaKey.bytes, in: store.meta) }
            } catch {
                logger.warning("spill store: writing the recounted byte count failed (the next commit writes it): \(error)",
                               metadata: ["path": "\(store.path)"])
            }
        }
        let mapSize = try store.env.info().mapSize
        openedMapSize = mapSize
        state = Locked(State(bytes: bytes, nextSequence: next, limitBytes: limitBytes, mapSize: mapSize))
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
            if nowMillis() >= state.lastReaderCheckMillis + readerCheckIntervalMillis { reapDeadReaders(&state, &delta) }
            for part in batch.parts(maxOperations: operationsPerTransaction) { commit(part, &state, &delta) }
        }
        return delta
    }

    /// Frees the reader slots of processes that died inside a read transaction (a `kvctl stats`
    /// killed mid-read): such a slot pins its snapshot, so pages freed since are never reused and
    /// the file runs into the map ceiling. LMDB checks only when asked (the environment asks at
    /// open), so the writer asks once per stats interval and on `MDB_MAP_FULL`. Returns how many.
    @discardableResult
    private func reapDeadReaders(_ state: inout State, _ delta: inout SpillStoreCounters) -> Int {
        state.lastReaderCheckMillis = nowMillis()
        do {
            let freed = try store.env.checkReaders()
            if freed > 0 {
                delta.staleReadersCleared += freed
                logger.warning("spill store: freed \(freed) reader slot(s) left by dead processes (they pinned old pages)")
            }
            return freed
        } catch {
            logger.warning("spill store: checking for dead readers failed: \(error)")
            return 0
        }
    }

    /// After a full disk, raises the limit in force back toward the configured one as the file
    /// system has room again: to the bytes stored plus half the free space (the other half for
    /// B-tree pages and copy-on-write), checked after each commit while lowered.
    private func recoverLimit(_ state: inout State) {
        guard state.limitBytes < configuredLimitBytes, let free = freeBytes() else { return }
        let raised = min(configuredLimitBytes, state.bytes + free / 2)
        guard raised > state.limitBytes else { return }
        state.limitBytes = raised
        logger.notice("spill store: the disk has room again, limiting the store to \(raised) bytes")
    }

    /// Commits `batch`, handling a full map and a full disk:
    ///
    /// - `MDB_MAP_FULL` below ``softMapLimit``: grow the map and retry.
    /// - `MDB_MAP_FULL` at the ceiling: evict least recently used entries in small transactions
    ///   of their own (pages a transaction frees are reusable only by later ones; when not even
    ///   one entry can be deleted, the eviction opens the map's reserve), retry; when that does
    ///   not help, split the batch in halves and commit each (a smaller transaction needs fewer
    ///   copy-on-write pages). A record is dropped only when it fails alone on an empty store,
    ///   that is, when no eviction could make room.
    /// - Full disk: lower the limit in force to what the disk held, evict, retry.
    private func commit(_ batch: WriteBatch, _ state: inout State, _ delta: inout SpillStoreCounters) {
        var evictionRounds = 0, diskRounds = 0, readersReaped = false, readerWaits = 0
        while true {
            var next = state
            var done = SpillStoreCounters()
            do {
                try store.env.withWriteTransaction { txn in try write(batch, txn, &next, &done) }
                state = next
                delta.add(done)
                delta.commits += 1
                recoverLimit(&state)
                closeReserve(&state)
                return
            } catch LMDBError.mapFull {
                delta.mapFullRetries += 1
                // A dead process's reader slot may be what keeps freed pages from reuse.
                if !readersReaped {
                    readersReaped = true
                    if reapDeadReaders(&state, &delta) > 0 { continue }
                }
                if state.mapSize < softMapLimit {
                    let grown = min(softMapLimit, max(state.mapSize * 2, state.mapSize + 4 * batch.recordBytes))
                    do {
                        try store.env.setMapSize(grown)
                        state.mapSize = grown
                        delta.mapGrowths += 1
                        continue
                    } catch {
                        logger.warning("spill store: growing the map to \(grown) bytes failed: \(error)")
                    }
                }
                // A live reader on an old snapshot keeps the pages freed since from reuse: no
                // eviction makes room until it ends, so wait for it first.
                if readerWaits < 3 && waitForOldReaders(&state) {
                    readerWaits += 1
                    continue
                }
                // At the ceiling: free pages in transactions of their own, then retry.
                if evictionRounds < 3 && state.bytes > 0 {
                    evictionRounds += 1
                    let goal = max(2 * batch.recordBytes, state.bytes / 32) << (evictionRounds - 1)
                    if evictSeparately(&state, freeing: goal, &delta) > 0 { continue }
                }
                if batch.records.count > 1 {
                    let (first, second) = batch.split()
                    commit(first, &state, &delta)
                    commit(second, &state, &delta)
                    return
                }
                if state.bytes > 0 && evictSeparately(&state, freeing: state.bytes, &delta) > 0 {
                    evictionRounds = 3
                    continue  // one last try on an empty store
                }
                logger.error("spill store: the map (\(state.mapSize) bytes) has no room for \(batch.records.count) record(s) even with the store empty; dropping them")
            } catch let error as LMDBError where error == .noSpace || error == .diskQuotaExceeded
                                                  || (error == .ioError && diskIsFull(needing: batch.recordBytes)) {
                // LMDB 0.9 reports a short write (what a full disk gives) as EIO, hence the free-space check.
                // A full quota (EDQUOT) is a full disk for this user (statvfs does not show quotas).
                delta.diskFullEvents += 1
                diskRounds += 1
                // The disk holds what is committed and no more: keep the store that size until
                // the disk has room again (`recoverLimit`), but room for a record at least.
                let largest = batch.records.map(\.bytes.count).max() ?? 0
                state.limitBytes = max(minimumLimitBytes, largest, min(state.limitBytes, state.bytes - batch.recordBytes))
                logger.warning("spill store: disk full, limiting the store to \(state.limitBytes) bytes")
                _ = evictSeparately(&state, freeing: 0, &delta)
                if diskRounds < 6 { continue }
                logger.error("spill store: dropping a batch of \(batch.records.count) records: the disk stays full")
            } catch {
                logger.error("spill store: dropping a batch of \(batch.records.count) records: \(error)")
            }
            delta.recordsFailed += batch.records.count
            return
        }
    }

    /// `waitForOldReaders` as the writer runs it at the ceiling, for tests (under the state lock).
    func waitForOldReadersForTests() -> Bool { state.withLock { waitForOldReaders(&$0) } }

    /// How long the writer waits at the map ceiling for a reader on an old snapshot to end.
    static let readerWaitMillis: UInt64 = 200

    /// At the map ceiling, waits (up to ``readerWaitMillis``) for the readers on snapshots older
    /// than the last commit to end; true when they did (a retry may now reuse the pages they
    /// pinned). Such a reader is usually short: `spill`'s check for a record already stored, or a
    /// restore, descheduled mid-read on a loaded machine. Without the wait the writer evicted in
    /// rounds, split the batch, emptied the store and dropped the record (a tight-map test under
    /// CPU load dropped 12 records that way). A reader that stays longer (a `kvctl stats` paused
    /// in a debugger) is given up on, once per snapshot, and eviction goes on as before.
    private func waitForOldReaders(_ state: inout State) -> Bool {
        guard let last = try? store.env.info().lastTransactionID,
              let oldest = (try? store.env.readerSnapshots())?.min(), oldest < last, oldest != state.longReaderSnapshot
        else { return false }
        let deadline = nowMillis() + Self.readerWaitMillis
        repeat {
            usleep(200)
            guard let snapshots = try? store.env.readerSnapshots() else { return false }
            if !snapshots.contains(where: { $0 <= oldest }) {
                state.readerWaits += 1
                return true
            }
        } while nowMillis() < deadline
        state.longReaderSnapshot = oldest
        logger.notice("spill store: a reader has held snapshot \(oldest) for \(Self.readerWaitMillis) ms at the map ceiling; evicting without waiting for it")
        return false
    }

    /// Whether the store's file system has less than `bytes` (plus a few pages) available.
    private func diskIsFull(needing bytes: Int) -> Bool {
        guard let free = freeBytes() else { return false }
        return free < bytes + (64 << 10)
    }

    /// Bytes available to this process on the store's file system (nil if `statvfs` fails).
    private func freeBytes() -> Int? {
        var fs = statvfs()
        guard statvfs(store.path, &fs) == 0 else { return nil }
        return Int(fs.f_bavail) * Int(fs.f_frsize)
    }

    /// Removes least recently used entries in committed transactions of their own, at most
    /// `chunk` entries each (fewer after a `MDB_MAP_FULL`: a delete copies pages too), until
    /// `freeing` bytes are gone and the store is under its limit. Returns the bytes freed.
    @discardableResult
    private func evictSeparately(_ state: inout State, freeing: Int, _ delta: inout SpillStoreCounters) -> Int {
        let target = max(0, min(state.limitBytes, state.bytes - freeing))
        let before = state.bytes
        var chunk = 1024
        while state.bytes > target {
            var next = state
            var d = SpillStoreCounters()
            do {
                try store.env.withWriteTransaction { txn in
                    try evict(txn, &next, until: target, maxEntries: chunk, &d)
                    try txn.put(le(UInt64(next.bytes)), for: StoreDatabase.MetaKey.bytes, in: store.meta)
                }
                if next.bytes == state.bytes { break }  // nothing left to evict
                state = next
                delta.lruEvictions += d.lruEvictions
                delta.commits += 1
            } catch LMDBError.mapFull {
                delta.mapFullRetries += 1
                if chunk > 1 {
                    chunk /= 4
                } else if !openReserve(&state, &delta) {
                    logger.warning("spill store: evicting to make room failed: the map is full and its reserve used")
                    break
                }
            } catch {
                logger.warning("spill store: evicting to make room failed: \(error)")
                break
            }
        }
        return before - state.bytes
    }

    /// Grows the map into its reserve (up to ``mapSizeLimit``) so an eviction that cannot get a
    /// single copy-on-write page at the ceiling can run; `closeReserve` gives back what it did
    /// not use. Returns false when the reserve is already open or used up.
    private func openReserve(_ state: inout State, _ delta: inout SpillStoreCounters) -> Bool {
        guard state.mapSize < mapSizeLimit else { return false }
        do {
            try store.env.setMapSize(mapSizeLimit)
        } catch {
            logger.warning("spill store: opening the map's reserve failed: \(error)")
            return false
        }
        logger.notice("spill store: the map is full with no reusable page: evicting in its reserve (\(mapSizeLimit - state.mapSize) bytes)")
        state.mapSize = mapSizeLimit
        delta.mapGrowths += 1
        return true
    }

    /// After a commit, shrinks a map grown into its reserve back to ``softMapLimit``, or to the
    /// pages now in use if the reserve's eviction took some (LMDB never shrinks below those).
    private func closeReserve(_ state: inout State) {
        guard state.mapSize > softMapLimit, let info = try? store.env.info() else { return }
        let used = (info.lastPageNumber + 1) * pageSize
        let target = max(softMapLimit, used)
        guard target < state.mapSize else { return }
        do {
            try store.env.setMapSize(target)
            state.mapSize = target
        } catch {
            logger.warning("spill store: closing the map's reserve failed: \(error)")
        }
    }

    /// The body of a batch's transaction.
    private func write(_ batch: WriteBatch, _ txn: borrowing Transaction, _ s: inout State, _ delta: inout SpillStoreCounters) throws {
        for key in batch.deletes { try remove(key, txn, &s) }
        for key in batch.touches {
            try key.withBytes { k in
                let sequence = try txn.copyValue(for: k, in: store.access)
                // No access record: evicted meanwhile, unless the entry is there (damage: relinked).
                guard try sequence != nil || txn.contains(k, in: store.entries) else { return }
                try unlink(k, sequence: sequence, txn)
                try link(k, txn, &s)
            }
        }
        var written = 0, tooLarge = 0
        let fitting = batch.records.filter { r in
            let fits = r.bytes.count <= s.limitBytes
            if !fits { tooLarge += 1 }
            return fits
        }
        // Room for every incoming record (a key already stored, rare, is counted twice here and
        // replaced below: at worst a little more eviction).
        try evict(txn, &s, until: s.limitBytes - fitting.reduce(0) { $0 + $1.bytes.count }, &delta)
        try evictForMapRoom(txn, &s, incoming: fitting, operations: batch.touches.count + batch.deletes.count, &delta)
        for r in fitting {
            try r.key.withBytes { k in
                let fill = { (dst: UnsafeMutableRawBufferPointer) in dst.copyMemory(from: UnsafeRawBufferPointer(r.bytes)) }
                // One search for the common case (a new key); a stored key is removed, then written.
                if try !txn.putIfAbsent(count: r.bytes.count, for: k, in: store.entries, fill: fill) {
                    try remove(r.key, txn, &s)
                    try txn.put(count: r.bytes.count, for: k, in: store.entries, fill: fill)
                }
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

    /// The map bytes the store's B-trees occupy as `txn` sees them (pages of all four
    /// databases, plus the two meta pages and the main database's page).
    func treeBytes(_ txn: borrowing Transaction) throws -> Int {
        var pages = 3
        for db in [store.entries, store.lru, store.access, store.meta] {
            let st = try txn.stat(db)
            pages += st.branchPages + st.leafPages + st.overflowPages
        }
        return pages * pageSize
    }

    /// Evicts by measured map use, beside the byte limit: the B-trees now, plus what the incoming
    /// records will take (a small record may get a half-empty leaf page to itself), plus twice
    /// the pages this transaction may copy on write (the copies, and the previous transaction's
    /// freed pages LMDB cannot reuse yet), must fit in ``softMapLimit``. Random SHA-256 keys
    /// leave leaves 50–70% full, so with small records the B-trees outgrow the record bytes
    /// by 2× and more; this keeps `MDB_MAP_FULL` an exception rather than the steady state.
    private func evictForMapRoom(_ txn: borrowing Transaction, _ s: inout State, incoming: [PendingRecord], operations: Int,
                                 _ delta: inout SpillStoreCounters) throws {
        let page = pageSize
        let incomingBytes = incoming.reduce(0) { total, r in
            let node = r.bytes.count + 48
            // Inline nodes (under ~2 KiB) may sit on a half-empty leaf; larger ones take an overflow run.
            return total + (node < page / 2 ? 2 * node : (node + page - 1) / page * page) + 256
        }
        // Deleting random keys empties pages slowly (LMDB merges a leaf only under 25% full),
        // so evicting until the pages drop at once would nearly empty the store. Instead each
        // batch over the mark evicts at most twice as many entries as it adds: the store then
        // shrinks steadily while new records fill the holes instead of splitting leaves, and
        // the `MDB_MAP_FULL` handling in `commit` remains the hard backstop.
        let cap = 2 * incoming.count + 64
        var removed = 0
        while removed < cap && s.bytes > 0 {
            let tree = try treeBytes(txn)
            let copied = min(tree, Self.copyPagesPerOperation * page * (incoming.count + operations) + Self.fixedCopyPages * page)
            guard tree + incomingBytes + 2 * copied > softMapLimit else { return }
            let before = delta.lruEvictions
            try evict(txn, &s, until: 0, maxEntries: min(64, cap - removed), &delta)
            guard delta.lruEvictions > before else { return }
            removed += delta.lruEvictions - before
            delta.mapRoomEvictions += delta.lruEvictions - before
        }
    }

    /// Pages one write may copy on write (a leaf and its branch path in `entries`, `lru` and
    /// `access`), and the pages any transaction may copy besides (meta, freelist, roots).
    static let copyPagesPerOperation = 4
    static let fixedCopyPages = 64

    /// Gives `key` the next access sequence (newest in the LRU order).
    private func link(_ key: UnsafeRawBufferPointer, _ txn: borrowing Transaction, _ s: inout State) throws {
        let seq = s.nextSequence
        s.nextSequence += 1
        try txn.put(key, for: be(seq), in: store.lru, flags: .append)
        try txn.put(be(seq), for: key, in: store.access)
    }

    /// Deletes `key`'s `lru` slot and `access` record (`sequence`, its `access` value, read by the
    /// caller). The slot deleted is the one the value names, and only if it names `key` back.
    /// Anything else is damage on disk: a value that is no 8-byte sequence (handed to LMDB as a
    /// key, it failed the whole batch: MDB_BAD_VALSIZE), or one naming no slot or another key's
    /// (deleting that slot left the other entry out of the LRU order). Then `key`'s slots are
    /// found by walking `lru`, so the indexes agree again after this transaction (the checker
    /// holds) instead of the key sitting in the LRU order twice until eviction met its old slot.
    private func unlink(_ key: UnsafeRawBufferPointer, sequence: [UInt8]?, _ txn: borrowing Transaction) throws {
        let unlinked = try txn.withCursor(store.lru) { lru -> Bool in
            guard let sequence, sequence.count == 8, try lru.seek(exactly: sequence, { _, v in v.elementsEqual(key) }) == true
            else { return false }
            try lru.deleteCurrent()
            return true
        }
        if sequence != nil { try txn.delete(key, in: store.access) }
        guard !unlinked else { return }
        let dropped = try dropSlots(naming: key, txn)
        let what = sequence.map { "\($0.count) bytes" } ?? "missing"
        logger.warning("spill store: the access record of \(PrefixKey(bytes: key)) names no slot of it (\(what)); dropped its \(dropped) slot(s)",
                       metadata: ["path": "\(store.path)"])
    }

    /// Deletes every `lru` slot naming `key` (one cursor walk over `lru`: only after damage).
    private func dropSlots(naming key: UnsafeRawBufferPointer, _ txn: borrowing Transaction) throws -> Int {
        try txn.withCursor(store.lru) { lru in
            var dropped = 0
            var names = try lru.first { _, v in v.elementsEqual(key) }
            while let match = names {
                if match {
                    try lru.deleteCurrent()  // the cursor now sits on the next slot
                    dropped += 1
                    names = try lru.current { _, v in v.elementsEqual(key) }
                } else {
                    names = try lru.next { _, v in v.elementsEqual(key) }
                }
            }
            return dropped
        }
    }

    /// Deletes `key`'s entry, its LRU link and its bytes, if it is there.
    private func remove(_ key: PrefixKey, _ txn: borrowing Transaction, _ s: inout State) throws {
        try key.withBytes { k in
            guard let (size, intact) = try txn.withValue(for: k, in: store.entries, { ($0.count, RecordView.sizeIsIntact($0)) })
            else { return }
            try txn.delete(k, in: store.entries)
            try unlink(k, sequence: try txn.copyValue(for: k, in: store.access), txn)
            s.bytes -= size
            if !intact || s.bytes < 0 { try recount(txn, &s, after: "removing \(key)") }
        }
    }

    /// An entry whose size disagrees with its own header (or the count going negative) means
    /// a size on disk changed since it was counted: a damaged page (bit rot, or a torn write
    /// after a crash without fsync). Sizes are data read from disk, so this is repaired, not
    /// trapped: the count becomes the entries' real sum (committed with the transaction).
    private func recount(_ txn: borrowing Transaction, _ s: inout State, after what: String) throws {
        let counted = try store.countBytes(txn)
        if counted != s.bytes {
            logger.warning("spill store: byte count \(s.bytes) after \(what) (a damaged entry size); recounted \(counted) bytes",
                           metadata: ["path": "\(store.path)"])
        }
        s.bytes = counted
    }

    /// Drops least recently used entries until the store holds at most `target` bytes (or
    /// `maxEntries` are gone). One cursor walks `lru` from its oldest slot; each entry costs one
    /// search in `entries` (seek, then delete at the cursor) and one in `access`.
    private func evict(_ txn: borrowing Transaction, _ s: inout State, until target: Int, maxEntries: Int = .max,
                       _ delta: inout SpillStoreCounters) throws {
        guard s.bytes > max(0, target) else { return }
        try txn.withCursor(store.lru) { lru in
            try txn.withCursor(store.entries) { entries in
                var removed = 0
                // An entry gone without its slot (damage on disk) most likely left its bytes
                // counted: counting on with them evicted good entries, the newest included, to
                // make room that was there. The first such slot recounts (one walk per call).
                var recounted = false
                func recountOnce(_ what: String) throws {
                    guard !recounted else { return }
                    recounted = true
                    try recount(txn, &s, after: what)
                }
                while s.bytes > max(0, target) && removed < maxEntries {
                    // A slot whose value is not a key, or names no entry, is damage on disk
                    // (transactions keep the indexes in step): dropped, and the walk goes on.
                    guard let slot = try lru.first({ _, v in v.count == PrefixKey.byteCount ? PrefixKey(bytes: v) : nil }) else {
                        // No slot left while bytes remain: the count is off (damaged sizes).
                        if s.bytes > 0 { try recount(txn, &s, after: "with no entry left to evict") }
                        return
                    }
                    try lru.deleteCurrent()
                    guard let oldest = slot else {
                        logger.warning("spill store: dropped an LRU slot that names no key", metadata: ["path": "\(store.path)"])
                        try recountOnce("dropping an LRU slot that names no key")
                        continue
                    }
                    let found = try oldest.withBytes { k -> (Int, Bool)? in
                        guard let found = try entries.seek(exactly: k, { _, v in (v.count, RecordView.sizeIsIntact(v)) }) else { return nil }
                        try entries.deleteCurrent()
                        try txn.delete(k, in: store.access)
                        return found
                    }
                    guard let (size, intact) = found else {
                        _ = try oldest.withBytes { k in try txn.delete(k, in: store.access) }  // any link left with it
                        logger.warning("spill store: dropped an LRU slot naming \(oldest), which has no entry",
                                       metadata: ["path": "\(store.path)"])
                        try recountOnce("dropping an LRU slot with no entry")
                        continue
                    }
                    s.bytes -= size
                    if !intact || s.bytes < 0 { try recount(txn, &s, after: "evicting \(oldest)") }
                    removed += 1
                    delta.lruEvictions += 1
                }
            }
        }
    }
}
