import Metrics

/// The cache's counters and gauges in swift-metrics, so a serving stack's metrics backend
/// (Prometheus, OTel, …) picks them up. With no backend bootstrapped these are no-ops.
struct CacheMetrics: Sendable {
    let queryTokens: Counter
    let hitTokens: Counter
    let storeHitTokens: Counter
    let admissions: Counter
    let capacity: Gauge
    let used: Gauge
    let cached: Gauge
    let shared: Gauge
    let evicted: Gauge
    let spilled: Gauge
    let restored: Gauge
    let allocationsFailed: Gauge
    let dedupRatio: Gauge

    init(label: String) {
        queryTokens = Counter(label: "\(label)_query_tokens_total")
        hitTokens = Counter(label: "\(label)_hit_tokens_total")
        storeHitTokens = Counter(label: "\(label)_store_hit_tokens_total")
        admissions = Counter(label: "\(label)_admissions_total")
        capacity = Gauge(label: "\(label)_capacity_blocks")
        used = Gauge(label: "\(label)_used_blocks")
        cached = Gauge(label: "\(label)_cached_blocks")
        shared = Gauge(label: "\(label)_shared_blocks")
        evicted = Gauge(label: "\(label)_evicted_blocks")
        spilled = Gauge(label: "\(label)_spilled_blocks")
        restored = Gauge(label: "\(label)_restored_blocks")
        allocationsFailed = Gauge(label: "\(label)_allocations_failed")
        dedupRatio = Gauge(label: "\(label)_dedup_ratio")
    }

    func recordAdmission(_ a: Admission, promptTokens: Int) {
        admissions.increment()
        queryTokens.increment(by: promptTokens)
        if a.memoryHitTokens > 0 { hitTokens.increment(by: a.memoryHitTokens) }
        if a.storeHitTokens > 0 { storeHitTokens.increment(by: a.storeHitTokens) }
    }

    func update(_ s: KVCacheStats) {
        capacity.record(s.capacityBlocks)
        used.record(s.usedBlocks)
        cached.record(s.cachedBlocks)
        shared.record(s.sharedBlocks)
        evicted.record(s.evictedBlocks)
        spilled.record(s.spilledBlocks)
        restored.record(s.restoredBlocks)
        allocationsFailed.record(s.allocationsFailed)
        dedupRatio.record(s.dedupRatio)
    }
}
