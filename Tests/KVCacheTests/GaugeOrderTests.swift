import Dispatch
import Foundation
import KVCore
import KVTestSupport
import Metrics
import MetricsTestKit
import Testing
@testable import KVCache

/// A metrics factory that records into `TestMetrics` but holds the first `used_blocks` gauge
/// record made after `held.arm()` (``HeldCall``): a thread preempted between the manager's lock
/// and its metrics update, made deterministic.
final class HoldingMetrics: MetricsFactory, @unchecked Sendable {
    let inner = TestMetrics()
    let held = HeldCall()

    final class Holding: RecorderHandler, @unchecked Sendable {
        let inner: RecorderHandler
        let owner: HoldingMetrics
        init(_ inner: RecorderHandler, _ owner: HoldingMetrics) { self.inner = inner; self.owner = owner }
        func record(_ value: Int64) {
            owner.held.holdIfArmed()
            inner.record(value)
        }
        func record(_ value: Double) { inner.record(value) }
    }

    func makeCounter(label: String, dimensions: [(String, String)]) -> CounterHandler { inner.makeCounter(label: label, dimensions: dimensions) }
    func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> FloatingPointCounterHandler {
        inner.makeFloatingPointCounter(label: label, dimensions: dimensions)
    }
    func makeMeter(label: String, dimensions: [(String, String)]) -> MeterHandler { inner.makeMeter(label: label, dimensions: dimensions) }
    func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> RecorderHandler {
        let r = inner.makeRecorder(label: label, dimensions: dimensions, aggregate: aggregate)
        return label == "prefixkv_used_blocks" ? Holding(r, self) : r
    }
    func makeTimer(label: String, dimensions: [(String, String)]) -> TimerHandler { inner.makeTimer(label: label, dimensions: dimensions) }
    func destroyCounter(_ handler: CounterHandler) { inner.destroyCounter(handler) }
    func destroyMeter(_ handler: MeterHandler) { inner.destroyMeter(handler) }
    func destroyFloatingPointCounter(_ handler: FloatingPointCounterHandler) { inner.destroyFloatingPointCounter(handler) }
    func destroyRecorder(_ handler: RecorderHandler) { inner.destroyRecorder(handler) }
    func destroyTimer(_ handler: TimerHandler) { inner.destroyTimer(handler) }
}

@Suite struct GaugeOrderTests {
    /// Two threads mutate; the first one's metrics update runs late (after the second call has
    /// returned). The gauges must still end at the manager's current state, not at the older
    /// snapshot: an idle server's dashboard otherwise shows a stale level until the next call.
    @Test func aLateSnapshotDoesNotRollTheGaugesBack() throws {
        let metrics = HoldingMetrics()
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 16, metricsFactory: metrics)
        metrics.held.arm()
        let first = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            _ = try? cache.admit([1, 2, 3, 4])  // 1 block used; its gauge update is held
            first.signal()
        }
        metrics.held.waitUntilHeld()
        _ = try cache.admit([9, 9, 9, 9, 9])  // 3 blocks used now; its update runs at once
        metrics.held.release()
        first.wait()
        let used = cache.stats.usedBlocks
        #expect(used == 3)
        #expect(try metrics.inner.expectGauge("prefixkv_used_blocks").lastValue == Double(used),
                "the used-blocks gauge went back to an older snapshot's value")
    }
}
