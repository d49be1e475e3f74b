import KVCore
import Testing
@testable import KVCache

/// The manager over a cold tier (`MemoryColdStore`): what lookups promise is what admissions get,
/// across a restart too.
@Suite struct ColdStoreTests {
    /// Tokens `start ..< start + count`.
    func run(_ start: Int32, _ count: Int) -> [TokenID] { (0..<Int32(count)).map { start + $0 } }

    /// A store that holds all 4 blocks of `run(0, 16)` in namespace "t", left by a first manager
    /// that spilled them (as a persistent store is found after a restart).
    func storeFromAnEarlierRun() throws -> MemoryColdStore {
        let store = MemoryColdStore()
        let first = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 4, allocatesPages: true, coldStore: store)
        let a = try first.admit(run(0, 16), namespace: "t")
        first.checkInvariants()
        try first.release(a.sequence)
        first.checkInvariants()
        let b = try first.admit(run(1000, 16), namespace: "t")  // evicts (spills) all of A's blocks
        first.checkInvariants()
        try first.release(b.sequence)
        first.checkInvariants()
        #expect(first.stats.spilledBlocks == 4)
        return store
    }

    /// A restarted manager has never seen namespace "t": its lookup must still report the store's
    /// blocks, since admit restores them.
    @Test func lookupProbesTheStoreForANamespaceNotSeenYet() throws {
        let store = try storeFromAnEarlierRun()
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 4, allocatesPages: true, coldStore: store)
        let probe = try cache.lookup(run(0, 16), namespace: "t", probeStore: true)
        #expect(probe == PrefixLookup(memoryTokens: 0, storeTokens: 16))
        #expect(try cache.lookup(run(0, 16), namespace: "t") == PrefixLookup(memoryTokens: 0, storeTokens: 0))
        #expect(try cache.lookup(run(0, 16), namespace: "other", probeStore: true) == PrefixLookup(memoryTokens: 0, storeTokens: 0))
        cache.checkInvariants()
        let admitted = try cache.admit(run(0, 16), namespace: "t")
        cache.checkInvariants()
        #expect(admitted.storeHitTokens == probe.storeTokens)
        #expect(admitted.cachedTokenCount == probe.totalTokens)
    }

    /// A refused admission of an unseen namespace must change nothing, not even which namespaces
    /// the manager knows (that once changed what a later lookup reported).
    @Test func refusedAdmitOfAnUnseenNamespaceChangesNoLookup() throws {
        let store = try storeFromAnEarlierRun()
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 4, allocatesPages: true, coldStore: store)
        let before = try cache.lookup(run(0, 16), namespace: "t", probeStore: true)
        let statsBefore = cache.stats
        #expect(throws: KVCacheError.insufficientBlocks(needed: 5, available: 4)) { try cache.admit(run(5000, 20), namespace: "t") }
        cache.checkInvariants()
        let after = try cache.lookup(run(0, 16), namespace: "t", probeStore: true)
        #expect(before == after && after.storeTokens == 16)
        var expected = statsBefore
        expected.allocationsFailed += 1  // the one thing a refused call records
        #expect(cache.stats == expected)
        #expect(cache.freeQueueOrder == [1, 2, 3, 4])
    }
}
