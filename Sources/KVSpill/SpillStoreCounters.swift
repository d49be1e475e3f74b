/// What the spill store did since it opened (the manager's `KVCacheStats` count blocks; these
/// count the store's own work and troubles).
public struct SpillStoreCounters: Sendable, Equatable, Codable {
    /// `spill` calls accepted (copied and queued, or written synchronously).
    public var spills = 0
    /// Spills dropped because the background queue was full.
    public var spillsDroppedQueueFull = 0
    /// Spills that waited for room in the queue (``SpillStoreConfiguration/QueueFullPolicy/waitWhenFull``).
    public var spillWaits = 0
    /// Records committed to LMDB. In background mode, accepted spills still queued are not
    /// counted until the writer commits them (`flush()` or `close()` waits for that), so
    /// `spills - recordsWritten` may be in flight, not lost.
    public var recordsWritten = 0
    /// Records lost because their batch could not be committed (I/O error, disk full after retries).
    public var recordsFailed = 0
    /// Records larger than the whole store limit, never written.
    public var recordsTooLarge = 0
    /// Restores that copied verified KV into a block.
    public var restoreHits = 0
    /// Restores that found nothing usable (absent, other tokens, or bad and dropped).
    public var restoreMisses = 0
    /// Stored records that failed verification (checksum, layout, lengths, tokens) on restore and
    /// were dropped, or failed their checksum when the block was spilled again and were rewritten.
    public var corruptDropped = 0
    /// Entries dropped to stay under the size limit (least recently used first).
    public var lruEvictions = 0
    /// `MDB_MAP_FULL` results handled (grow or evict, then retry).
    public var mapFullRetries = 0
    /// Times the map grew: doubling up to ``SpillStoreConfiguration/mapSizeLimit`` less a small
    /// reserve, or into that reserve when an eviction at the ceiling could not get a single page.
    public var mapGrowths = 0
    /// Entries evicted (included in ``lruEvictions``) because the B-trees neared
    /// ``SpillStoreConfiguration/mapSizeLimit`` (measured pages) while the record bytes were
    /// still under the limit.
    public var mapRoomEvictions = 0
    /// Commits that failed with `ENOSPC`; the store then lowers its limit to what the disk held
    /// (at least one record) until the disk has room again.
    public var diskFullEvents = 0
    /// Write transactions committed.
    public var commits = 0
    /// Reader slots of dead processes (a `kvctl stats` killed inside its read) freed by the
    /// writer; each pinned old pages, so the file grew instead of reusing them.
    public var staleReadersCleared = 0

    public init() {}

    mutating func add(_ o: SpillStoreCounters) {
        spills += o.spills; spillsDroppedQueueFull += o.spillsDroppedQueueFull; spillWaits += o.spillWaits
        recordsWritten += o.recordsWritten; recordsFailed += o.recordsFailed; recordsTooLarge += o.recordsTooLarge
        restoreHits += o.restoreHits; restoreMisses += o.restoreMisses; corruptDropped += o.corruptDropped
        lruEvictions += o.lruEvictions; mapFullRetries += o.mapFullRetries; mapGrowths += o.mapGrowths
        mapRoomEvictions += o.mapRoomEvictions
        diskFullEvents += o.diskFullEvents; commits += o.commits; staleReadersCleared += o.staleReadersCleared
    }
}
