/// A snapshot of the cache's counters and gauges. Token counts are prompt tokens.
public struct KVCacheStats: Sendable, Equatable, Codable {
    /// Allocatable blocks (the null block excluded).
    public var capacityBlocks: Int = 0
    /// Blocks referenced by at least one live sequence.
    public var usedBlocks: Int = 0
    /// Blocks in the prefix tree with no live reference: evictable, still hit-able.
    public var cachedBlocks: Int = 0
    /// Blocks referenced by two or more live sequences.
    public var sharedBlocks: Int = 0
    /// Sum over live sequences of their block-table lengths.
    public var logicalBlocks: Int = 0
    /// Distinct blocks behind those tables (equals `usedBlocks` but for copy-on-write sources a
    /// metadata-only manager keeps until the engine has copied them: in use, in no table).
    public var physicalBlocks: Int = 0
    /// Prompt tokens admitted.
    public var queryTokens: Int = 0
    /// Prompt tokens found in memory, in whole blocks (memory only: a dashboard's total hit is
    /// `hitTokens + storeHitTokens`, as ``hitRate`` counts it and `Admission.cachedTokenCount` does).
    public var hitTokens: Int = 0
    /// Prompt tokens restored from the cold store, in whole blocks.
    public var storeHitTokens: Int = 0
    /// Cached blocks taken out of the tree to make room (each reported to the eviction hook).
    public var evictedBlocks: Int = 0
    /// Evicted blocks handed to the cold store.
    public var spilledBlocks: Int = 0
    /// Blocks whose KV came back from the cold store.
    public var restoredBlocks: Int = 0
    /// Admissions, appends and truncations (the copy of a kept partial block) refused for want of
    /// blocks. (A fork takes no block: its children share the parent's until they append.)
    public var allocationsFailed: Int = 0
    /// Sequences admitted or forked and not yet released.
    public var liveSequences: Int = 0

    /// All zeros.
    public init() {}

    /// Logical over physical blocks: how many times sharing multiplies memory (1 = no sharing).
    public var dedupRatio: Double { physicalBlocks == 0 ? 1 : Double(logicalBlocks) / Double(physicalBlocks) }
    /// Memory and store hits over query tokens. (Summed as Doubles: a stats record read back
    /// from a store file may hold any counters, and `kvctl stats` must not trap on them.)
    public var hitRate: Double { queryTokens == 0 ? 0 : (Double(hitTokens) + Double(storeHitTokens)) / Double(queryTokens) }
}
