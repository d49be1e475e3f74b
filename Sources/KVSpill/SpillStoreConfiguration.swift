import KVCore

/// How an ``LMDBSpillStore`` is opened and how it writes.
public struct SpillStoreConfiguration: Sendable {
    /// Where writes happen relative to the caller of `spill`.
    public enum WriteMode: Sendable, Equatable {
        /// `spill` commits its block before it returns (one transaction, one fsync per block).
        case synchronous
        /// `spill` copies the block into a queue of at most `queueLimitBytes` and returns; one
        /// writer thread commits the queue in batches. A spill that finds the queue full is
        /// dropped (and counted): a slow disk never stalls the cache.
        case background(queueLimitBytes: Int)
    }

    /// What a background-mode `spill` does when its block does not fit in the queue.
    public enum QueueFullPolicy: Sendable, Equatable {
        /// Drop the spill and count it (`spillsDroppedQueueFull`): the caller (a serving stack,
        /// under the cache manager's lock) never waits for the disk. The default.
        case dropWhenFull
        /// Wait until the writer has committed enough of the queue, so no spill is lost: for
        /// offline work such as `kvctl replay --store`, where completeness matters more than
        /// latency. The wait is counted (`spillWaits`). Never use it where a request must not stall.
        case waitWhenFull
    }

    /// The store's directory (created if missing); LMDB keeps `data.mdb` and `lock.mdb` in it.
    public var path: String
    /// The KV layout of the blocks stored; a store written with another layout refuses to open.
    public var layout: KVLayout
    /// What produced the KV, beyond its layout: the model and weights revision, and anything
    /// else that changes K/V for the same tokens (tokenizer, RoPE scaling, quantisation), e.g.
    /// `"llama-3.1-8b-instruct@0e9e39f"`. Two models of one layout (a base model and its
    /// fine-tune) give other K/V for the same prompt, so a store written under another model
    /// refuses to open (``SpillStoreError/modelMismatch(path:stored:expected:)``) instead of
    /// serving its blocks. Default `""`: unlabelled (a store created before this field existed
    /// is unlabelled too); then one store directory must only ever serve one model.
    public var model: String
    /// The most record bytes (header + tokens + payload) the store keeps; beyond it, the least
    /// recently written or restored entries are dropped. The file is larger by LMDB's page and
    /// free-page overhead, bounded by ``mapSizeLimit``.
    public var limitBytes: Int
    /// Synchronous or background writes (default: background with a 256 MiB queue).
    public var writeMode: WriteMode
    /// What a background-mode `spill` does when the queue is full (default: drop it).
    public var whenQueueFull: QueueFullPolicy = .dropWhenFull
    /// fsync every commit (default; `MDB_NOMETASYNC`: one fsync, and an OS crash may undo at
    /// most the last commit). Off (`MDB_NOSYNC`), commits reach the disk at `flush()`, `close()`
    /// or the kernel's writeback: a process crash still loses nothing committed, but an OS crash
    /// may lose recent commits or, on a file system that reorders writes, damage the file
    /// (damaged records fail their checksum; a damaged B-tree mostly fails to open as
    /// `.notAStore`, but LMDB trusts its pages, and a reader — `kvctl stats` included — can crash
    /// on some damage: delete such a store, it is a cache).
    public var durable: Bool
    /// How often the background writer persists the stats the manager published.
    public var statsIntervalSeconds: Double
    /// The map size a new store starts with; it doubles on `MDB_MAP_FULL` up to ``mapSizeLimit``.
    /// Small by default so small stores stay small in address space and `mdb_stat` output.
    public var initialMapSizeBytes: Int = 64 << 20

    /// A configuration with the defaults above: 1 GiB limit, background writer, durable commits.
    public init(path: String, layout: KVLayout, limitBytes: Int = 1 << 30,
                writeMode: WriteMode = .background(queueLimitBytes: 256 << 20),
                durable: Bool = true, statsIntervalSeconds: Double = 1, whenQueueFull: QueueFullPolicy = .dropWhenFull,
                model: String = "") {
        self.whenQueueFull = whenQueueFull
        self.path = path
        self.layout = layout
        self.model = model
        self.limitBytes = limitBytes
        self.writeMode = writeMode
        self.durable = durable
        self.statsIntervalSeconds = statsIntervalSeconds
    }

    /// The map size the store grows to at most, which bounds the file: 3 × the limit + 32 MiB.
    ///
    /// Record bytes are not the pages they take. Keys are random SHA-256 digests, so B-tree
    /// leaves split in the middle and sit 50–70% full: small records (the 512-byte blocks of
    /// `kvctl replay`'s default layout, at most five to a 4 KiB leaf) take about 1.6–2× their
    /// bytes, and the `lru`/`access` indexes add ~100 bytes per entry. Then each transaction
    /// copies every page it touches (copy-on-write) and the pages it frees become reusable only
    /// by later transactions, so the map also needs room for about two transactions' dirty
    /// pages. Records of a KiB and more (overflow pages) take about their own size.
    /// The writer also evicts by measured B-tree pages (`mdb_stat`) when they near this
    /// ceiling, and handles `MDB_MAP_FULL` at it by evicting in small transactions.
    public var mapSizeLimit: Int { mapSizeLimitOverride ?? Self.mapSizeLimit(forLimitBytes: limitBytes)! }

    /// 3 × `limit` + 32 MiB, or nil when that overflows an `Int` (`problem` refuses such limits).
    static func mapSizeLimit(forLimitBytes limit: Int) -> Int? {
        let (tripled, o1) = limit.multipliedReportingOverflow(by: 3)
        let (map, o2) = tripled.addingReportingOverflow(32 << 20)
        return o1 || o2 ? nil : map
    }

    /// Tests set a tighter map ceiling to put the writer under map pressure at small sizes.
    var mapSizeLimitOverride: Int?

    /// A year: the writer keeps the interval in milliseconds and adds it to clock readings.
    static let maxStatsIntervalSeconds: Double = 365 * 24 * 3600

    /// What makes this configuration unusable (``SpillStoreError/invalidConfiguration(path:reason:)``),
    /// or nil: checked before anything is created on disk.
    var problem: String? {
        if limitBytes <= 0 { return "limitBytes must be positive, got \(limitBytes)" }
        if Self.mapSizeLimit(forLimitBytes: limitBytes) == nil {
            return "limitBytes \(limitBytes) is too large to size the map (3 × limit + 32 MiB)"
        }
        if initialMapSizeBytes <= 0 { return "initialMapSizeBytes must be positive, got \(initialMapSizeBytes)" }
        if case .background(let queueLimit) = writeMode, queueLimit < 0 {
            return "queueLimitBytes must not be negative, got \(queueLimit)"
        }
        if !(statsIntervalSeconds >= 0 && statsIntervalSeconds <= Self.maxStatsIntervalSeconds) {
            return "statsIntervalSeconds must be in 0...\(Int(Self.maxStatsIntervalSeconds)) (a year), got \(statsIntervalSeconds)"
        }
        return nil
    }

    /// The most record bytes one background transaction commits (it always takes one record).
    /// Small on purpose: LMDB mallocs every dirty overflow page run of a transaction and frees
    /// them at commit; past a few MiB glibc returns that memory to the kernel each time and the
    /// next batch page-faults it back in. Measured (`kvctl bench store`, 512 KiB blocks): 3–4 MiB
    /// batches spill 0.50–0.54 × plain-file speed, 64 MiB batches 0.28–0.41.
    var batchLimitBytes: Int { 4 << 20 }
}
