import Dispatch
import Foundation
import KVCache
import KVCore
import KVTestSupport
import XCTest
@testable import KVSpill

/// The real LMDB store, forwarded call for call, except that the first `publish` made after
/// `held.arm()` waits (``HeldCall``): a thread preempted between the manager's lock and its
/// stats hand-over, made deterministic.
final class HeldPublishStore: ColdPrefixStore, @unchecked Sendable {
    let store: LMDBSpillStore
    let held = HeldCall()
    init(_ store: LMDBSpillStore) { self.store = store }

    func rootKey(namespace: Namespace) -> PrefixKey { store.rootKey(namespace: namespace) }
    func childKey(parent: PrefixKey, tokens: UnsafeBufferPointer<TokenID>) -> PrefixKey { store.childKey(parent: parent, tokens: tokens) }
    func spill(key: PrefixKey, namespace: Namespace, tokens: UnsafeBufferPointer<TokenID>, block: BlockID, arena: KVPageArena?) {
        store.spill(key: key, namespace: namespace, tokens: tokens, block: block, arena: arena)
    }
    func restore(key: PrefixKey, namespace: Namespace, tokens: UnsafeBufferPointer<TokenID>, into block: BlockID, arena: KVPageArena?) -> Bool {
        store.restore(key: key, namespace: namespace, tokens: tokens, into: block, arena: arena)
    }
    func contains(key: PrefixKey, tokens: UnsafeBufferPointer<TokenID>) -> Bool { store.contains(key: key, tokens: tokens) }
    func publish(stats: KVCacheStats) {
        held.holdIfArmed()
        store.publish(stats: stats)
    }
    var storeLayout: KVLayout? { store.storeLayout }
}

final class StatsOrderTests: XCTestCase {
    /// Two threads mutate with a zero publish interval; the first one's hand-over runs late.
    /// The live record (`kvctl stats`) must end at the manager's state, not the older snapshot.
    func testALateStatsSnapshotDoesNotOverwriteTheLiveRecord() throws {
        let store = try LMDBSpillStore(SpillStoreConfiguration(path: try makeTemporaryDirectory(self) + "/s", layout: testLayout,
                                                               limitBytes: 8 << 20, writeMode: .background(queueLimitBytes: 1 << 20), durable: false))
        let heldStore = HeldPublishStore(store)
        let cache = try KVCacheManager(layout: testLayout, capacityBlocks: 8, allocatesPages: true, coldStore: heldStore,
                                       statsPublishInterval: .zero)
        heldStore.held.arm()
        let first = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            _ = try? cache.admit(blockTokens(chain: 1, index: 0))  // its stats hand-over is held
            first.signal()
        }
        heldStore.held.waitUntilHeld()
        _ = try cache.admit(blockTokens(chain: 2, index: 0) + blockTokens(chain: 2, index: 1))
        heldStore.held.release()
        first.wait()
        store.flush()
        XCTAssertEqual(cache.stats.usedBlocks, 3)
        XCTAssertEqual(try store.report().cache, cache.stats, "the live record went back to an older snapshot")
        withExtendedLifetime(cache) {}
    }
}
