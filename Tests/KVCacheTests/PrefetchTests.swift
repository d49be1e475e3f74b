import KVCore
import Testing
@testable import KVCache

/// A store that answers `contains` for every record but fails the restore of one key: a record
/// lost between a scheduler's probe and the restore.
final class LosingColdStore: ColdPrefixStore, @unchecked Sendable {
    let inner: MemoryColdStore
    let lost: PrefixKey
    init(_ inner: MemoryColdStore, losing lost: PrefixKey) { self.inner = inner; self.lost = lost }
    func rootKey(namespace: Namespace) -> PrefixKey { inner.rootKey(namespace: namespace) }
    func childKey(parent: PrefixKey, tokens: UnsafeBufferPointer<TokenID>) -> PrefixKey { inner.childKey(parent: parent, tokens: tokens) }
    func spill(key: PrefixKey, namespace: Namespace, tokens: UnsafeBufferPointer<TokenID>, block: BlockID, arena: KVPageArena?) {
        inner.spill(key: key, namespace: namespace, tokens: tokens, block: block, arena: arena)
    }
    func restore(key: PrefixKey, namespace: Namespace, tokens: UnsafeBufferPointer<TokenID>, into block: BlockID, arena: KVPageArena?) -> Bool {
        key != lost && inner.restore(key: key, namespace: namespace, tokens: tokens, into: block, arena: arena)
    }
    func contains(key: PrefixKey, tokens: UnsafeBufferPointer<TokenID>) -> Bool { inner.contains(key: key, tokens: tokens) }
    func publish(stats: KVCacheStats) {}
}

/// `prefetch`: a queued request's stored prefix brought into memory before its admission.
@Suite struct PrefetchTests {
    func run(_ start: Int32, _ count: Int) -> [TokenID] { (0..<Int32(count)).map { start + $0 } }

    /// A store holding the 4 blocks of `run(0, 16)` in namespace "t" (spilled by a first manager).
    func storeHoldingAPrefix() throws -> MemoryColdStore {
        let store = MemoryColdStore()
        let first = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 4, allocatesPages: true, coldStore: store)
        try first.release(try first.admit(run(0, 16), namespace: "t").sequence)
        try first.release(try first.admit(run(1000, 16), namespace: "t").sequence)   // evicts (spills) the first
        #expect(store.holds(run(0, 16), namespace: "t", blockSize: 4))
        return store
    }

    @Test func theStoredPrefixIsCachedInMemoryAndTheAdmissionHitsIt() throws {
        let store = try storeHoldingAPrefix()
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 8, allocatesPages: true, coldStore: store)
        let prompt = run(0, 16) + [7, 8]
        #expect(try cache.prefetch(prompt, namespace: "t") == 16)
        cache.checkInvariants()
        var s = cache.stats
        #expect(s.restoredBlocks == 4 && s.cachedBlocks == 4 && s.usedBlocks == 0 && s.liveSequences == 0)
        #expect(s.queryTokens == 0 && s.hitTokens == 0 && s.storeHitTokens == 0, "a prefetch is not a request")
        #expect(try cache.lookup(prompt, namespace: "t") == PrefixLookup(memoryTokens: 16, storeTokens: 0))
        #expect(try cache.prefetch(prompt, namespace: "t") == 16)   // already in memory: only looks
        #expect(cache.stats.restoredBlocks == 4)
        let a = try cache.admit(prompt, namespace: "t")
        cache.checkInvariants()
        #expect(a.memoryHitTokens == 16 && a.storeHitTokens == 0)
        s = cache.stats
        #expect(s.queryTokens == 18 && s.hitTokens == 16 && s.storeHitTokens == 0)
        try cache.release(a.sequence)
        cache.checkInvariants()
    }

    /// The store lost the third block after the probe: the prefetch keeps the two it restored and
    /// leaves no unwritten block cached (the next admission must not hit garbage).
    @Test func aRecordLostAfterTheProbeLeavesNothingUnwritten() throws {
        let memory = try storeHoldingAPrefix()
        var key = memory.rootKey(namespace: "t")
        for i in 0..<3 { key = run(Int32(4 * i), 4).withUnsafeBufferPointer { memory.childKey(parent: key, tokens: $0) } }
        let store = LosingColdStore(memory, losing: key)
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 8, allocatesPages: true, coldStore: store)
        #expect(try cache.lookup(run(0, 16), namespace: "t", probeStore: true).storeTokens == 16)
        #expect(try cache.prefetch(run(0, 16), namespace: "t") == 8)
        cache.checkInvariants()
        #expect(cache.stats.cachedBlocks == 2 && cache.stats.usedBlocks == 0)
        #expect(try cache.lookup(run(0, 16), namespace: "t") == PrefixLookup(memoryTokens: 8, storeTokens: 0))
        let a = try cache.admit(run(0, 16), namespace: "t")
        #expect(a.memoryHitTokens == 8 && a.cachedTokenCount == 8, "blocks 3 and 4 are the engine's to compute")
        try cache.release(a.sequence, computedTokens: 8)
        cache.checkInvariants()
    }

    @Test func withoutAStoreItOnlyLooks() throws {
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 8, allocatesPages: true)
        #expect(try cache.prefetch(run(0, 16)) == 0)
        try cache.release(try cache.admit(run(0, 8)).sequence)
        let before = cache.stats
        #expect(try cache.prefetch(run(0, 16)) == 8)
        #expect(cache.stats == before)
        #expect(throws: KVCacheError.negativeToken(index: 0, value: -1)) { try cache.prefetch([-1]) }
    }
}
