#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import KVCache
import KVCore
import KVSpill

/// Makes a fresh, empty cold store for a replay (each sweep point needs its own).
public typealias ColdStoreFactory = @Sendable (KVLayout) throws -> any ColdPrefixStore

/// How to replay a trace.
public struct ReplayOptions: Sendable {
    /// KV shape; its block size is the cache's. Pages are allocated only when a store is attached,
    /// so spill and restore move real bytes while a plain replay stays metadata-only.
    public var layout: KVLayout
    /// nil: unbounded (every distinct block of the trace fits, nothing is evicted).
    public var capacityBlocks: Int?
    /// Attaches a cold store (the LMDB spill tier, or any other) below memory.
    public var makeStore: ColdStoreFactory?

    public init(layout: KVLayout = .small(), capacityBlocks: Int? = nil, makeStore: ColdStoreFactory? = nil) {
        self.layout = layout
        self.capacityBlocks = capacityBlocks
        self.makeStore = makeStore
    }
}

/// What a replay measured. Hits are prompt tokens found cached, in whole blocks.
public struct ReplayResult: Sendable, Equatable, Codable {
    public var requests = 0
    /// Requests the cache could not admit (a prompt needing more blocks than the capacity).
    public var rejectedRequests = 0
    public var capacityBlocks = 0
    /// Prompt tokens of every request, rejected ones included (they count as misses, so a
    /// small capacity cannot look better by refusing long prompts).
    public var promptTokens = 0
    public var hitTokens = 0
    public var storeHitTokens = 0
    /// Memory and store hits over all prompt tokens.
    public var hitRate = 0.0
    public var evictedBlocks = 0
    public var spilledBlocks = 0
    public var restoredBlocks = 0
    /// Wall time of the replay loop (trace parsing excluded).
    public var seconds = 0.0
    public var tokensPerSecond = 0.0
    /// Where the loop's time went: building prompts, `admit`, `release`.
    public var materializeSeconds = 0.0
    public var admitSeconds = 0.0
    public var releaseSeconds = 0.0
    /// With an LMDB store: the time after the loop until every queued spill was committed
    /// (`flush()`), which `seconds` does not include. Work the replay caused, so wall time is
    /// `seconds + storeFlushSeconds`.
    public var storeFlushSeconds = 0.0
    /// The store's own counters (LMDB spill tier only): drops, waits, evictions, map handling.
    public var storeCounters: SpillStoreCounters?

    public init() {}
}

/// Replays a trace against a fresh cache: for each request in timestamp order, admit its prompt
/// and release it at once (the trace gives no decode overlap worth modelling for prefix reuse).
/// `progress` receives (requests done, total) about a hundred times.
public func replay(_ trace: Trace, options: ReplayOptions = ReplayOptions(),
                   progress: ((Int, Int) -> Void)? = nil) throws -> ReplayResult {
    let capacity = options.capacityBlocks ?? unboundedCapacity(of: trace, blockSize: options.layout.blockSize)
    let store = try options.makeStore?(options.layout)
    let cache = try KVCacheManager(layout: options.layout, capacityBlocks: capacity,
                                   allocatesPages: store != nil, coldStore: store)
    var prompt = PromptTokens(hashBlockTokens: trace.hashBlockTokens)
    var result = ReplayResult()
    result.capacityBlocks = capacity
    let total = trace.requests.count
    let step = max(1, total / 100)
    var materialize: UInt64 = 0, admit: UInt64 = 0, release: UInt64 = 0
    let start = monotonicNanos()
    for (n, request) in trace.requests.enumerated() {
        let t0 = monotonicNanos()
        prompt.fill(request)
        let t1 = monotonicNanos()
        materialize += t1 - t0
        if let admission = try admitUnlessFull(cache, prompt.tokens) {
            let t2 = monotonicNanos()
            try cache.release(admission.sequence)
            admit += t2 - t1
            release += monotonicNanos() - t2
        } else {
            result.rejectedRequests += 1
        }
        if let progress, (n + 1) % step == 0 || n + 1 == total { progress(n + 1, total) }
    }
    let elapsed = Double(monotonicNanos() - start) / 1e9
    if let lmdb = store as? LMDBSpillStore {
        let t = monotonicNanos()
        lmdb.flush()
        result.storeFlushSeconds = Double(monotonicNanos() - t) / 1e9
        result.storeCounters = lmdb.counters
    }
    let stats = cache.stats
    result.requests = total
    result.promptTokens = trace.promptTokens
    result.hitTokens = stats.hitTokens
    result.storeHitTokens = stats.storeHitTokens
    result.hitRate = result.promptTokens == 0 ? 0 : Double(stats.hitTokens + stats.storeHitTokens) / Double(result.promptTokens)
    result.evictedBlocks = stats.evictedBlocks
    result.spilledBlocks = stats.spilledBlocks
    result.restoredBlocks = stats.restoredBlocks
    result.seconds = elapsed
    result.tokensPerSecond = elapsed > 0 ? Double(result.promptTokens) / elapsed : 0
    result.materializeSeconds = Double(materialize) / 1e9
    result.admitSeconds = Double(admit) / 1e9
    result.releaseSeconds = Double(release) / 1e9
    return result
}

/// Admits a prompt, or returns nil when the cache cannot hold it (any other error is a bug).
private func admitUnlessFull(_ cache: KVCacheManager, _ prompt: [TokenID]) throws(KVCacheError) -> Admission? {
    do {
        return try cache.admit(prompt)
    } catch {
        guard case .insufficientBlocks = error else { throw error }
        return nil
    }
}

/// The capacity at which replaying `trace` never evicts: every distinct full block, plus one for
/// the partial last block of the single live request.
public func unboundedCapacity(of trace: Trace, blockSize: Int) -> Int {
    uniqueFullBlocks(of: trace, blockSize: blockSize) + 1
}
