import KVCore
import MetricsTestKit
import Testing
@testable import KVCache

/// The manager's swift-metrics output, read back through MetricsTestKit's factory.
@Suite struct MetricsTests {
    /// Two managers in one process report under their own dimensions, and the cumulative totals
    /// are counters whose totals equal the managers' stats.
    @Test func managersReportApartAndTotalsAreCounters() throws {
        let metrics = TestMetrics()
        let small = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 4,
                                       metricsDimensions: [("cache", "small")], metricsFactory: metrics)
        let large = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 64,
                                       metricsDimensions: [("cache", "large")], metricsFactory: metrics)
        for start in stride(from: Int32(0), to: 400, by: 100) {  // each prompt evicts the last one's blocks
            try small.release(try small.admit((start..<start + 16).map { $0 }).sequence)
            try large.release(try large.admit((start..<start + 16).map { $0 }).sequence)
        }
        #expect(throws: KVCacheError.self) { try small.admit((1000..<1020).map { $0 }) }  // 5 blocks > 4
        let smallStats = small.stats, largeStats = large.stats
        #expect(smallStats.evictedBlocks == 12 && largeStats.evictedBlocks == 0)
        #expect(smallStats.allocationsFailed == 1)
        let s = [("cache", "small")], l = [("cache", "large")]
        #expect(metrics.counterTotal(label: "prefixkv_evicted_blocks_total", dimensions: s) == 12)
        #expect(metrics.counterTotal(label: "prefixkv_evicted_blocks_total", dimensions: l) == 0)
        #expect(metrics.counterTotal(label: "prefixkv_allocations_failed_total", dimensions: s) == 1)
        #expect(metrics.counterTotal(label: "prefixkv_admissions_total", dimensions: s) == 4)
        #expect(metrics.counterTotal(label: "prefixkv_admissions_total", dimensions: l) == 4)
        #expect(metrics.counterTotal(label: "prefixkv_query_tokens_total", dimensions: l) == 64)
        #expect(try metrics.expectGauge("prefixkv_capacity_blocks", s).lastValue == 4)
        #expect(try metrics.expectGauge("prefixkv_capacity_blocks", l).lastValue == 64)
        #expect(try metrics.expectGauge("prefixkv_cached_blocks", l).lastValue == Double(largeStats.cachedBlocks))
    }

    /// Stats snapshots that arrive out of order (concurrent calls publish after the lock) never
    /// count anything twice or make a counter go back.
    @Test func outOfOrderSnapshotsCountOnce() throws {
        let metrics = TestMetrics()
        let m = CacheMetrics(label: "t", factory: metrics)
        var a = KVCacheStats(), b = KVCacheStats()
        a.evictedBlocks = 5
        b.evictedBlocks = 9
        m.update(b)
        m.update(a)  // older snapshot, late
        m.update(b)
        #expect(metrics.counterTotal(label: "t_evicted_blocks_total") == 9)
        #expect(try metrics.expectCounter("t_evicted_blocks_total").values == [9])
    }
}
