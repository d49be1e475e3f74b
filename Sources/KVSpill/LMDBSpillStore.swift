import KVCache
import KVCore
import LMDB
import Logging
import Synchronization

/// The LMDB spill tier: keeps the KV of blocks the cache evicts, keyed by their exact prefix,
/// and gives it back when a later request has the same prefix. See `docs/SPILL.md`.
///
/// Thread-safe. The manager calls it under its own lock, so every method here only copies bytes
/// or reads one LMDB snapshot; commits happen on the background writer (or inline in
/// ``SpillStoreConfiguration/WriteMode/synchronous`` mode). Nothing here throws after opening
/// (except ``report()``, which throws `.closed` after ``close()``): trouble is counted in
/// ``counters`` and behaves as a miss.
public final class LMDBSpillStore: ColdPrefixStore, @unchecked Sendable {
    /// How the store was opened.
    public let configuration: SpillStoreConfiguration
    /// The layout of every block stored.
    public var layout: KVLayout { configuration.layout }

    let database: StoreDatabase
    let writer: StoreWriter
    let queue: SpillQueue
    private let background: BackgroundWriter?
    private let buffers: RecordBufferPool
    private let logger: Logger
    private let isClosed = Atomic<Bool>(false)
    /// Serializes synchronous-mode commits (the background writer is a single thread already).
    /// (Holds an `Int`, not `Void`: a zero-size value shares its
    /// address with the mutex pointer, and ThreadSanitizer reported the lock's own read of that
    /// pointer as racing the access to the value.)
    private let inlineWrites = Locked<Int>(0)

    /// Opens (or creates) the store at `configuration.path`.
    public init(_ configuration: SpillStoreConfiguration, logger: Logger = Logger(label: "prefixkv.spill")) throws(SpillStoreError) {
        if let why = configuration.problem { throw .invalidConfiguration(path: configuration.path, reason: why) }
        self.configuration = configuration
        self.logger = logger
        database = try StoreDatabase.openForWriting(configuration)
        do {
            writer = try StoreWriter(store: database, limitBytes: configuration.limitBytes,
                                     mapSizeLimit: configuration.mapSizeLimit,
                                     readerCheckIntervalSeconds: configuration.statsIntervalSeconds, logger: logger)
        } catch let error as SpillStoreError {
            database.close()
            throw error
        } catch {
            database.close()
            throw .lmdb(path: configuration.path, error as? LMDBError ?? .invalid)
        }
        switch configuration.writeMode {
        case .synchronous:
            queue = SpillQueue(queueLimitBytes: .max, statsIntervalSeconds: configuration.statsIntervalSeconds)
            buffers = RecordBufferPool(retainBytes: 2 * (configuration.layout.blockBytes + 4096))
            background = nil
        case .background(let queueLimit):
            queue = SpillQueue(queueLimitBytes: queueLimit, statsIntervalSeconds: configuration.statsIntervalSeconds)
            // Idle buffers never exceed what the queue may hold anyway.
            buffers = RecordBufferPool(retainBytes: queueLimit)
            background = BackgroundWriter(queue: queue, writer: writer, batchLimitBytes: configuration.batchLimitBytes)
        }
        warnAboutLimitsBelowOneRecord()
    }

    /// Limits below one record are legal (tests use them to force drops) but in a serving process
    /// they silently turn the store off: every spill dropped (`spillsDroppedQueueFull`) or refused
    /// (`recordsTooLarge`). Say so once, at open.
    private func warnAboutLimitsBelowOneRecord() {
        let record = SpillRecord.payloadOffset(namespaceBytes: 0, tokenCount: layout.blockSize) + layout.blockBytes
        let path = configuration.path
        if case .background(let queueLimit) = configuration.writeMode, queueLimit < record {
            logger.warning("spill store: queueLimitBytes \(queueLimit) is below one record (\(record) bytes): every spill will be dropped",
                           metadata: ["path": "\(path)"])
        }
        if configuration.limitBytes < record {
            logger.warning("spill store: limitBytes \(configuration.limitBytes) is below one record (\(record) bytes): no block will be kept",
                           metadata: ["path": "\(path)"])
        }
    }

    /// Removes the store at `path` (its `data.mdb` and `lock.mdb`; the directory stays) so the
    /// next open starts empty. Refuses, removing nothing, while another process has it open for
    /// writing (`.inUse`) or when the path holds something that is not a PrefixKV store
    /// (`.notAStore`). A missing store is fine.
    public static func remove(path: String) throws(SpillStoreError) {
        try StoreDatabase.remove(path: path)
    }

    /// Commits everything queued, writes the last published stats, syncs a non-durable store,
    /// and closes the environment. Idempotent; `deinit` calls it.
    public func close() {
        guard !isClosed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        if let background {
            background.stop()
        } else {
            commitInline(force: true)
        }
        syncIfNotDurable()
        database.close()
    }

    deinit { close() }

    /// Waits until every spill so far is committed (or failed), with pending LRU updates and
    /// stats. On a store opened with `durable: false` it then fsyncs, so `flush()` is where its
    /// commits become durable (like a plain file's one `fsync` after its writes).
    public func flush() {
        guard isOpen else { return }  // close() committed and synced everything already
        if background != nil { queue.waitUntilDrained() } else { commitInline(force: true) }
        syncIfNotDurable()
    }

    private func syncIfNotDurable() {
        guard !configuration.durable else { return }
        do { try database.env.sync() } catch { logger.warning("spill store: sync failed: \(error)") }
    }

    /// What the store did since it opened.
    public var counters: SpillStoreCounters { queue.snapshot }

    /// The committed sum of record sizes (what the size limit bounds).
    public var storedBytes: Int { writer.committedBytes }

    /// After `close()` the store answers like an empty one: spills are dropped, restores and
    /// probes miss, stats are ignored, `flush()` does nothing. A manager that outlives its store
    /// (teardown order) keeps serving from memory instead of crashing. Close the store after the
    /// manager's last call. (`report()` throws `.closed`: an empty report would misstate the file.)
    /// A call racing `close()` gets `LMDBError.environmentClosed` from the environment, a miss here.
    var isOpen: Bool { !isClosed.load(ordering: .acquiring) }

    // MARK: - ColdPrefixStore

    /// SHA-256 of a fixed tag and the namespace: the root of its key chain.
    public func rootKey(namespace: Namespace) -> PrefixKey { PrefixKeys.root(namespace: namespace) }

    /// SHA-256 over the parent key and the block's tokens: one key names one exact prefix.
    public func childKey(parent: PrefixKey, tokens: UnsafeBufferPointer<TokenID>) -> PrefixKey {
        PrefixKeys.child(parent: parent, tokens: tokens)
    }

    /// Copies the block's tokens and KV (every layer, K and V) into a record and queues it for
    /// the writer (or commits it, in synchronous mode). Never blocks on the disk unless the store
    /// was opened with `.waitWhenFull`; a record that cannot be queued is dropped and counted.
    public func spill(key: PrefixKey, namespace: Namespace, tokens: UnsafeBufferPointer<TokenID>, block: BlockID, arena: KVPageArena?) {
        guard isOpen else { return }
        invariant(arena == nil || arena!.layout == layout,
                     "LMDBSpillStore.spill: arena layout \(arena!.layout) differs from the store's \(layout)")
        let ns = Array(namespace.rawValue.utf8)
        let payloadBytes = arena == nil ? 0 : layout.blockBytes
        // Blocks that come back from the store and are evicted again need no second write.
        if holds(key: key, namespace: ns, tokens: tokens, payloadBytes: payloadBytes) {
            queue.touch(key)
            return
        }
        let size = SpillRecord.payloadOffset(namespaceBytes: ns.count, tokenCount: tokens.count) + payloadBytes
        guard queue.admits(bytes: size, wait: configuration.whenQueueFull == .waitWhenFull) else { return }
        let record = PendingRecord(key: key, byteCount: size, pool: buffers)
        let payload = SpillRecord.writeHeader(into: record.bytes, key: key, layout: layout, namespace: ns, tokens: tokens,
                                              payloadBytes: payloadBytes, writtenAtMillis: nowMillis())
        arena?.copyOut(block, into: payload)
        if background != nil {
            queue.enqueue(record)
        } else {
            SpillRecord.seal(record.bytes)
            queue.count { $0.spills += 1 }
            commitInline(force: false, records: [record])
        }
    }

    /// Copies the stored KV of `key` into `block` when the record verifies: written under this key,
    /// same tokens, same layout, checksum intact. Anything else is a miss; a bad record is dropped and counted.
    /// Records still queued for the writer are restored from the queue.
    public func restore(key: PrefixKey, namespace: Namespace, tokens: UnsafeBufferPointer<TokenID>, into block: BlockID, arena: KVPageArena?) -> Bool {
        guard isOpen else { return false }
        invariant(arena == nil || arena!.layout == layout,
                     "LMDBSpillStore.restore: arena layout \(arena!.layout) differs from the store's \(layout)")
        let ns = Array(namespace.rawValue.utf8)
        let needed = arena == nil ? nil : layout.blockBytes
        // Not yet written: serve it from memory (it never left this process, so no checksum).
        if let hit = queue.withPending(key, { r -> Bool in
            let view = r.view
            guard view.holds(namespace: ns, tokens: tokens), needed == nil || view.payloadBytes == needed else { return false }
            if let arena { arena.copyIn(block, from: view.payload) }
            return true
        }) {
            queue.count { if hit { $0.restoreHits += 1 } else { $0.restoreMisses += 1 } }
            return hit
        }
        let outcome: RestoreOutcome
        do {
            outcome = try database.env.withReadTransaction { txn in
                try key.withBytes { k in
                    try txn.withValue(for: k, in: database.entries) { bytes in
                        RestoreOutcome.check(bytes, key: k, layout: layout, namespace: ns, tokens: tokens, payloadBytes: needed) { payload in
                            arena?.copyIn(block, from: payload)
                        }
                    }
                } ?? .absent
            }
        } catch {
            logger.warning("spill store: restore read failed: \(error)")
            outcome = .absent
        }
        switch outcome {
        case .hit:
            queue.touch(key)
            queue.count { $0.restoreHits += 1 }
        case .absent, .payloadMissing:
            queue.count { $0.restoreMisses += 1 }
        case .defect(let why):
            let first = queue.delete(key)
            if first { logger.warning("spill store: dropping bad entry \(key): \(why)") }
            queue.count { $0.restoreMisses += 1; if first { $0.corruptDropped += 1 } }
        }
        return outcome == .hit
    }

    /// Whether a restore of `key` with these tokens could hit (record key, tokens and layout checked; the
    /// payload's checksum is checked only by `restore`). For side-effect-free lookups.
    public func contains(key: PrefixKey, tokens: UnsafeBufferPointer<TokenID>) -> Bool {
        guard isOpen else { return false }
        if let found = queue.withPending(key, { $0.view.tokens.elementsEqual(UnsafeRawBufferPointer(tokens)) }) { return found }
        return (try? database.env.withReadTransaction { txn in
            try key.withBytes { k in
                try txn.withValue(for: k, in: database.entries) { bytes in
                    guard let view = try? RecordView(bytes) else { return false }
                    return view.matches(layout) && view.belongs(under: k) && view.tokens.elementsEqual(UnsafeRawBufferPointer(tokens))
                }
            }
        }) ?? false
    }

    /// Keeps `stats` as the live record `kvctl stats` shows; the writer persists it at most every
    /// `statsIntervalSeconds`, and at `flush()` and `close()`.
    public func publish(stats: KVCacheStats) {
        guard isOpen else { return }
        queue.publish(stats)
        if background == nil { commitInline(force: false) }
    }

    // MARK: - Writing

    /// Whether the store already has a good record of `key` for these tokens with a payload of
    /// this size. A stored record is checksummed too (one pass, only for blocks evicted again):
    /// otherwise an undetected bad copy would be kept, and refreshed, in place of the good KV.
    private func holds(key: PrefixKey, namespace ns: [UInt8], tokens: UnsafeBufferPointer<TokenID>, payloadBytes: Int) -> Bool {
        if let pending = queue.withPending(key, { r in r.view.holds(namespace: ns, tokens: tokens) && r.view.payloadBytes == payloadBytes }) {
            return pending
        }
        var corrupt = false
        let held = (try? database.env.withReadTransaction { txn in
            try key.withBytes { k in
                try txn.withValue(for: k, in: database.entries) { bytes in
                    guard let view = try? RecordView(bytes), view.matches(layout), view.payloadBytes == payloadBytes,
                          view.belongs(under: k), view.holds(namespace: ns, tokens: tokens) else { return false }
                    do { try view.verifyChecksum() } catch { corrupt = true; return false }
                    return true
                }
            }
        }) ?? false
        if corrupt {
            // The new record replaces it in the writer's transaction.
            logger.warning("spill store: replacing bad entry \(key): checksum mismatch")
            queue.count { $0.corruptDropped += 1 }
        }
        return held == true
    }

    /// Synchronous mode: commits `records` with whatever touches, deletions and stats are due.
    private func commitInline(force: Bool, records: [PendingRecord] = []) {
        inlineWrites.withLock { _ in
            guard let batch = queue.takeBatch(maxBytes: .max, force: force, adding: records) else { return }
            queue.completed(batch, writer.apply(batch))
        }
    }
}
