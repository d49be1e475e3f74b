import KVCore
import Metrics

/// The cache's counters and gauges in swift-metrics, so a serving stack's metrics backend
/// (Prometheus, OTel, …) picks them up. With no backend bootstrapped these are no-ops.
///
/// Every metric carries the manager's `dimensions` (e.g. `[("cache", "llama-70b")]`), so two
/// managers in one process report apart instead of overwriting each other's gauges. Cumulative
/// totals (evictions, spills, restores, failed allocations) are counters: a backend's rate()
/// needs them monotonic, and a gauge holding a running total reads as a level.
final class CacheMetrics: Sendable {
    let queryTokens: Counter
    let hitTokens: Counter
    let storeHitTokens: Counter
    let admissions: Counter
    let evicted: Counter
    let spilled: Counter
    let restored: Counter
    let allocationsFailed: Counter
    let capacity: Gauge
    let used: Gauge
    let cached: Gauge
    let shared: Gauge
    let dedupRatio: Gauge
    /// The largest totals already counted: stats snapshots may arrive out of order from
    /// concurrent calls, so each counter advances by what a snapshot adds beyond the maximum.
    private let counted = Locked(Totals())

    private struct Totals {
        var evicted = 0, spilled = 0, restored = 0, allocationsFailed = 0
        /// The version of the newest snapshot whose gauges were recorded.
        var gaugeVersion: UInt64 = 0
    }

    init(label: String, dimensions: [(String, String)] = [], factory: any MetricsFactory = MetricsSystem.factory) {
        func counter(_ name: String) -> Counter { Counter(label: "\(label)_\(name)", dimensions: dimensions, factory: factory) }
        func gauge(_ name: String) -> Gauge { Gauge(label: "\(label)_\(name)", dimensions: dimensions, factory: factory) }
        queryTokens = counter("query_tokens_total")
        hitTokens = counter("hit_tokens_total")
        storeHitTokens = counter("store_hit_tokens_total")
        admissions = counter("admissions_total")
        evicted = counter("evicted_blocks_total")
        spilled = counter("spilled_blocks_total")
        restored = counter("restored_blocks_total")
        allocationsFailed = counter("allocations_failed_total")
        capacity = gauge("capacity_blocks")
        used = gauge("used_blocks")
        cached = gauge("cached_blocks")
        shared = gauge("shared_blocks")
        dedupRatio = gauge("dedup_ratio")
    }

    func recordAdmission(_ a: Admission, promptTokens: Int) {
        admissions.increment()
        queryTokens.increment(by: promptTokens)
        if a.memoryHitTokens > 0 { hitTokens.increment(by: a.memoryHitTokens) }
        if a.storeHitTokens > 0 { storeHitTokens.increment(by: a.storeHitTokens) }
    }

    /// `version` orders snapshots (the manager numbers them under its lock): gauges are levels,
    /// so a snapshot older than one already recorded must not overwrite it (a call that lost the
    /// race to the metrics would leave a stale level until the next call). Nil: record always.
    func update(_ s: KVCacheStats, version: UInt64? = nil) {
        let added = counted.withLock { (t: inout Totals) -> Totals in
            // Under the lock, so two updates never interleave their gauge records.
            if version.map({ $0 > t.gaugeVersion }) ?? true {
                if let version { t.gaugeVersion = version }
                capacity.record(s.capacityBlocks)
                used.record(s.usedBlocks)
                cached.record(s.cachedBlocks)
                shared.record(s.sharedBlocks)
                dedupRatio.record(s.dedupRatio)
            }
            let d = Totals(evicted: max(0, s.evictedBlocks - t.evicted), spilled: max(0, s.spilledBlocks - t.spilled),
                           restored: max(0, s.restoredBlocks - t.restored),
                           allocationsFailed: max(0, s.allocationsFailed - t.allocationsFailed))
            t.evicted += d.evicted
            t.spilled += d.spilled
            t.restored += d.restored
            t.allocationsFailed += d.allocationsFailed
            return d
        }
        if added.evicted > 0 { evicted.increment(by: added.evicted) }
        if added.spilled > 0 { spilled.increment(by: added.spilled) }
        if added.restored > 0 { restored.increment(by: added.restored) }
        if added.allocationsFailed > 0 { allocationsFailed.increment(by: added.allocationsFailed) }
    }
}
