import KVCore
import Testing
@testable import KVCache

/// `release(_:computedTokens:)`: a request cancelled before (or during) its prefill must not leave
/// never-written blocks in the prefix tree, where the next identical prompt would hit them and
/// eviction would spill them. Pool of 8 blocks of 4 tokens unless said otherwise.
@Suite struct CancelledRequestTests {
    /// Tokens `start ..< start + count`.
    func run(_ start: Int32, _ count: Int) -> [TokenID] { (0..<Int32(count)).map { start + $0 } }

    func cache(_ capacity: Int = 8, store: MemoryColdStore? = nil) throws -> KVCacheManager {
        try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: capacity, allocatesPages: true, coldStore: store)
    }

    @Test func cancelledBeforePrefillLeavesNothingCached() throws {
        let cache = try cache()
        let a = try cache.admit(run(0, 10))  // blocks 1, 2 full (joined the tree), 3 partial
        #expect(a.blockTable == [1, 2, 3] && cache.isCached(1) && cache.isCached(2))
        cache.checkInvariants()
        try cache.release(a.sequence, computedTokens: 0)  // the engine never wrote blocks 1, 2
        cache.checkInvariants()
        #expect(!cache.isCached(1) && !cache.isCached(2))
        #expect(cache.stats.cachedBlocks == 0 && cache.stats.usedBlocks == 0)
        #expect(cache.freeQueueOrder == [1, 2, 3, 4, 5, 6, 7, 8])  // worthless blocks reused first
        #expect(try cache.lookup(run(0, 10)).memoryTokens == 0)
        let b = try cache.admit(run(0, 10))
        cache.checkInvariants()
        #expect(b.cachedTokenCount == 0, "b would skip prefill and read never-written KV in \(b.blockTable)")
        #expect(cache.stats.evictedBlocks == 0)  // dropping is not an eviction
    }

    @Test func partlyComputedKeepsTheWrittenBlocks() throws {
        let cache = try cache()
        let a = try cache.admit(run(0, 10))
        try cache.release(a.sequence, computedTokens: 6)  // block 1 written, block 2 half
        cache.checkInvariants()
        #expect(cache.isCached(1) && !cache.isCached(2))
        #expect(cache.freeQueueOrder == [2, 3, 4, 5, 6, 7, 8, 1])
        #expect(try cache.lookup(run(0, 10)).memoryTokens == 4)
    }

    /// The last sampled token's KV is usually never computed: a block it filled must not stay.
    @Test func decodedTokenWithoutKVIsNotCached() throws {
        let cache = try cache()
        let a = try cache.admit(run(0, 7))
        try cache.append([7], to: a.sequence)  // block 2 full: joins the tree
        cache.checkInvariants()
        #expect(cache.isCached(2))
        try cache.release(a.sequence, computedTokens: 7)
        cache.checkInvariants()
        #expect(cache.isCached(1) && !cache.isCached(2))
        #expect(try cache.lookup(run(0, 8)).memoryTokens == 4)
    }

    /// What `markComputed` reported stays reported: a release telling less (a cancelled fork
    /// sample saying "0", meaning none of its own tokens) drops nothing below it — in both
    /// publication modes; `truncate` takes back what it cut off.
    @Test(arguments: [BlockPublication.atAdmission, .whenComputed])
    func aReleaseTellingLessThanMarkComputedDropsNothingBelowIt(_ publication: BlockPublication) throws {
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 16, allocatesPages: true,
                                       publishesBlocks: publication)
        let a = try cache.admit(run(0, 10))           // blocks 1, 2 full, 3 partial
        try cache.markComputed(a.sequence, computedTokens: 10)
        let kids = try cache.fork(a.sequence, count: 2)
        try cache.release(a.sequence)
        try cache.release(kids[1])
        cache.checkInvariants()
        try cache.release(kids[0], computedTokens: 0)  // the sample computed nothing of its own
        cache.checkInvariants()
        #expect(cache.isCached(1) && cache.isCached(2))
        #expect(try cache.lookup(run(0, 10)).memoryTokens == 8)

        // Less than reported, on one sequence; and a truncation below the report lowers it.
        let b = try cache.admit(run(100, 16))         // 4 new full blocks
        try cache.markComputed(b.sequence, computedTokens: 12)
        try cache.truncate(b.sequence, toTokenCount: 10)
        try cache.append([1, 2, 3, 4, 5, 6], to: b.sequence)   // tokens 10..<16 again, not yet written
        cache.checkInvariants()
        try cache.release(b.sequence, computedTokens: 4)
        cache.checkInvariants()
        // Blocks 0 and 1 of b (tokens 0..<8) were reported; the rest was cut off and rewritten.
        let kept = try cache.lookup(run(100, 10) + [1, 2, 3, 4, 5, 6])
        #expect(kept.memoryTokens == 8, "\(publication)")
    }

    /// Blocks a sequence hit were written by someone else: its cancellation never drops them.
    @Test func hitsAreNeverDropped() throws {
        let cache = try cache()
        let a = try cache.admit(run(0, 8))
        try cache.release(a.sequence)
        cache.checkInvariants()
        let b = try cache.admit(run(0, 12))  // hits 1, 2; brings 3
        #expect(b.cachedTokenCount == 8 && b.blockTable == [1, 2, 3])
        try cache.release(b.sequence, computedTokens: 0)
        cache.checkInvariants()
        #expect(cache.isCached(1) && cache.isCached(2) && !cache.isCached(3))
        #expect(try cache.lookup(run(0, 12)).memoryTokens == 8)
    }

    /// B matched A's new blocks and relies on A's prefill: cancelling A leaves them (B holds them)
    /// and tells B's engine, whose hits they were, to compute them.
    @Test func blocksAnotherLiveSequenceHoldsStay() throws {
        let cache = try cache()
        let a = try cache.admit(run(0, 8))
        let b = try cache.admit(run(0, 8))
        #expect(b.cachedTokenCount == 8 && b.blockTable == a.blockTable)
        cache.checkInvariants()
        #expect(try cache.release(a.sequence, computedTokens: 0) == [InvalidatedHit(sequence: b.sequence, validTokens: 0)])
        cache.checkInvariants()
        #expect(cache.isCached(1) && cache.isCached(2) && cache.refcount(of: 1) == 1)
        try cache.release(b.sequence)
        cache.checkInvariants()
        #expect(try cache.lookup(run(0, 8)).memoryTokens == 8)
    }

    /// The blocks B was told to compute are B's own now: cancelling B too drops them, so no later
    /// request hits KV nobody wrote.
    @Test func aHolderCancelledInTurnDropsTheUnwrittenBlocks() throws {
        let cache = try cache()
        let a = try cache.admit(run(0, 8))
        let b = try cache.admit(run(0, 8))
        #expect(try cache.release(a.sequence, computedTokens: 0) == [InvalidatedHit(sequence: b.sequence, validTokens: 0)])
        #expect(try cache.release(b.sequence, computedTokens: 0) == [])
        cache.checkInvariants()
        #expect(!cache.isCached(1) && !cache.isCached(2))
        #expect(try cache.admit(run(0, 8)).cachedTokenCount == 0)
    }

    /// A wrote its first block before it was cancelled: B keeps that one as a hit (4 valid tokens)
    /// and owns the next; A's last block, which only A held, goes at once.
    @Test func aPartlyWrittenPrefillHandsOverOnlyTheUnwrittenPart() throws {
        let cache = try cache()
        let a = try cache.admit(run(0, 12))  // 1, 2, 3
        let b = try cache.admit(run(0, 8) + run(100, 4))  // hits 1, 2; brings 4
        #expect(b.blockTable == [1, 2, 4] && b.cachedTokenCount == 8)
        #expect(try cache.release(a.sequence, computedTokens: 4) == [InvalidatedHit(sequence: b.sequence, validTokens: 4)])
        cache.checkInvariants()
        #expect(!cache.isCached(3) && cache.isCached(2))
        #expect(try cache.release(b.sequence, computedTokens: 4) == [])  // B's engine did not get further either
        cache.checkInvariants()
        #expect(cache.isCached(1) && !cache.isCached(2) && !cache.isCached(4))
        #expect(try cache.lookup(run(0, 12)).memoryTokens == 4)
    }

    /// D hit the blocks after A's cancellation, while B was to compute them: cancelling B hands
    /// them on to D in turn.
    @Test func theHandOverChains() throws {
        let cache = try cache()
        let a = try cache.admit(run(0, 8))
        let b = try cache.admit(run(0, 8))
        try cache.release(a.sequence, computedTokens: 0)
        let d = try cache.admit(run(0, 8))
        #expect(d.cachedTokenCount == 8 && d.blockTable == b.blockTable)
        #expect(try cache.release(b.sequence, computedTokens: 0) == [InvalidatedHit(sequence: d.sequence, validTokens: 0)])
        cache.checkInvariants()
        try cache.release(d.sequence)  // D's engine computed them: they stay, as written
        cache.checkInvariants()
        #expect(try cache.lookup(run(0, 8)).memoryTokens == 8)
    }

    /// An unwritten block nobody holds goes with its cached descendants, deepest first (the tree
    /// stays a tree): no match reaches them past it, and whatever they hold was computed over it.
    @Test func anUnwrittenBlockTakesItsCachedDescendantsAlong() throws {
        let cache = try cache()
        let a = try cache.admit(run(0, 12))  // 1, 2, 3
        let b = try cache.admit(run(0, 8) + run(100, 4))  // hits 1, 2; brings 4, a child of 2
        #expect(b.blockTable == [1, 2, 4])
        try cache.release(b.sequence)  // (an engine that ran B before A's prefill: B's KV is garbage too)
        cache.checkInvariants()
        #expect(try cache.release(a.sequence, computedTokens: 0) == [])
        cache.checkInvariants()
        #expect(!cache.isCached(1) && !cache.isCached(2) && !cache.isCached(3) && !cache.isCached(4))
        #expect(cache.stats.cachedBlocks == 0 && cache.stats.evictedBlocks == 0)
        #expect(try cache.lookup(run(0, 8) + run(100, 4)).memoryTokens == 0)
    }

    /// The same through the cold store, which a correct engine can reach: B's third block is
    /// restored under A's unwritten second (the store kept it, but lost the two before), B waits
    /// on A's prefill, both are cancelled. The restored block kept A's blocks in the tree, nobody
    /// holding or told to write them, and the next identical prompt hit them (found by the
    /// hand-over model, `HandOverModelTests`).
    @Test func aBlockRestoredBelowAnUnwrittenOneDoesNotKeepItCached() throws {
        let store = MemoryColdStore()
        var key = store.rootKey(namespace: .default)
        for chunk in [run(0, 4), run(4, 4), run(8, 4)] { key = chunk.withUnsafeBufferPointer { store.childKey(parent: key, tokens: $0) } }
        run(8, 4).withUnsafeBufferPointer { store.spill(key: key, namespace: .default, tokens: $0, block: BlockID(1), arena: nil) }
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 8, allocatesPages: true, coldStore: store)
        let a = try cache.admit(run(0, 8))  // brings 1, 2
        let b = try cache.admit(run(0, 12))  // hits 1, 2 (A's to write), restores 3 under 2
        #expect(b.memoryHitTokens == 8 && b.storeHitTokens == 4)
        #expect(try cache.release(b.sequence, computedTokens: 0) == [])  // B never ran (it waited on A)
        #expect(try cache.release(a.sequence, computedTokens: 0) == [])  // nor did A
        cache.checkInvariants()
        #expect(!cache.isCached(1) && !cache.isCached(2))
        let c = try cache.admit(run(0, 12))
        #expect(c.memoryHitTokens == 0, "C would skip prefill and read never-written KV in \(c.blockTable)")
    }

    /// A fork child counts its parent's hits as hits, the rest (its own appends too) as new.
    @Test func forkedChildrenDropOnlyWhatTheirFamilyBroughtIn() throws {
        let cache = try cache()
        let p = try cache.admit(run(0, 8))  // 1, 2 new
        let kid = try cache.fork(p.sequence, count: 1)[0]
        try cache.append(run(8, 4), to: kid)  // 3, new, joins the tree
        cache.checkInvariants()
        try cache.release(p.sequence, computedTokens: 0)  // kid still holds 1, 2
        cache.checkInvariants()
        #expect(cache.isCached(1) && cache.isCached(2) && cache.isCached(3))
        try cache.release(kid, computedTokens: 8)  // the prompt was computed, the appended block not
        cache.checkInvariants()
        #expect(cache.isCached(1) && cache.isCached(2) && !cache.isCached(3))
        #expect(try cache.lookup(run(0, 12)).memoryTokens == 8)
    }

    @Test func misuseGivesTypedErrorsAndChangesNothing() throws {
        let cache = try cache()
        let other = try self.cache()
        let a = try cache.admit(run(0, 10))
        let foreign = try other.admit(run(0, 10))
        let before = (cache.freeQueueOrder, cache.stats)
        #expect(throws: KVCacheError.invalidComputedTokens(-1, tokenCount: 10)) { try cache.release(a.sequence, computedTokens: -1) }
        #expect(throws: KVCacheError.invalidComputedTokens(11, tokenCount: 10)) { try cache.release(a.sequence, computedTokens: 11) }
        #expect(throws: KVCacheError.unknownSequence(foreign.sequence)) { try cache.release(foreign.sequence, computedTokens: 0) }
        cache.checkInvariants()
        #expect(cache.freeQueueOrder == before.0 && cache.stats == before.1)
        #expect(try cache.tokens(of: a.sequence) == run(0, 10))
        #expect(try other.tokens(of: foreign.sequence) == run(0, 10))
        try cache.release(a.sequence, computedTokens: 10)  // all written: the same as release(_:)
        cache.checkInvariants()
        #expect(cache.isCached(1) && cache.isCached(2))
        #expect(throws: KVCacheError.releasedSequence(a.sequence)) { try cache.release(a.sequence, computedTokens: 0) }
        #expect(cache.isCached(1) && cache.isCached(2))
        cache.checkInvariants()
    }

    /// Never-written blocks must never reach a persistent store; restored blocks are hits.
    @Test func droppedBlocksAreNeverSpilledAndRestoredOnesStay() throws {
        let store = MemoryColdStore()
        let cache = try cache(4, store: store)
        let a = try cache.admit(run(0, 16))
        try cache.release(a.sequence, computedTokens: 0)
        cache.checkInvariants()
        let b = try cache.admit(run(1000, 16))  // takes all 4 blocks: nothing to evict
        cache.checkInvariants()
        #expect(cache.stats.evictedBlocks == 0)
        try cache.release(b.sequence)
        let c = try cache.admit(run(2000, 16))  // evicts (spills) B's 4 blocks
        try cache.release(c.sequence)
        cache.checkInvariants()
        #expect(store.spills.withLock { $0 } == 4)
        #expect(!store.holds(run(0, 4), namespace: .default, blockSize: 4))
        #expect(store.holds(run(1000, 16), namespace: .default, blockSize: 4))
        #expect(try cache.lookup(run(0, 16), probeStore: true).totalTokens == 0)

        let d = try cache.admit(run(1000, 16))  // restored from the store: written KV
        #expect(d.storeHitTokens == 16)
        try cache.release(d.sequence, computedTokens: 0)
        cache.checkInvariants()
        #expect(try cache.lookup(run(1000, 16)).memoryTokens == 16)
    }
}
