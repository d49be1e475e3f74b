import KVCore
import Testing
@testable import KVCache

/// `BlockPublication.whenComputed`: blocks become matchable only once their KV is reported
/// written, so a request never hits a prefill that is still queued, chunked or preempted.
@Suite struct PublicationTests {
    func run(_ start: Int32, _ count: Int) -> [TokenID] { (0..<Int32(count)).map { start + $0 } }

    func cache(capacity: Int = 16) throws -> KVCacheManager {
        try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: capacity, publishesBlocks: .whenComputed)
    }

    /// The reviewer's case: B admitted while A's prefill waits. Under `.atAdmission` B is told
    /// A's unwritten blocks are cached; under `.whenComputed` it gets its own, and hits only what
    /// A reported written.
    @Test func aQueuedPrefillIsNotMatched() throws {
        let eager = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 16)
        _ = try eager.admit(run(0, 9))
        #expect(try eager.admit(run(0, 9)).cachedTokenCount == 8)  // the default's contract

        let cache = try cache()
        let a = try cache.admit(run(0, 9))
        cache.checkInvariants()
        let b = try cache.admit(run(0, 9))
        #expect(b.cachedTokenCount == 0 && Set(b.blockTable).isDisjoint(with: a.blockTable))
        #expect(try cache.lookup(run(0, 9)).memoryTokens == 0)
        try cache.markComputed(a.sequence, computedTokens: 5)  // A's first chunk: one full block
        cache.checkInvariants()
        #expect(try cache.lookup(run(0, 9)).memoryTokens == 4)
        let c = try cache.admit(run(0, 9))
        #expect(c.cachedTokenCount == 4 && c.blockTable[0] == a.blockTable[0])
        try cache.markComputed(a.sequence, computedTokens: 9)
        #expect(try cache.lookup(run(0, 9)).memoryTokens == 8)
        // B wrote the same prefix into its own blocks: they stay private (the tree has A's).
        try cache.markComputed(b.sequence, computedTokens: 9)
        cache.checkInvariants()
        #expect(!cache.isCached(b.blockTable[0]) && !cache.isCached(b.blockTable[1]))
        for s in [a, b, c] { try cache.release(s.sequence) }
        cache.checkInvariants()
        #expect(try cache.lookup(run(0, 9)).memoryTokens == 8)
    }

    /// A chunked prefill cancelled halfway: what was reported stays cached, the rest was never
    /// matchable and is simply freed (no hand-over needed).
    @Test func aCancelledChunkedPrefillLeavesOnlyWhatWasWritten() throws {
        let cache = try cache()
        let a = try cache.admit(run(0, 16))
        let b = try cache.admit(run(0, 16))
        try cache.markComputed(a.sequence, computedTokens: 8)
        #expect(try cache.release(a.sequence, computedTokens: 8) == [])
        cache.checkInvariants()
        #expect(try cache.lookup(run(0, 16)).memoryTokens == 8)
        #expect(!cache.isCached(a.blockTable[2]) && !cache.isCached(a.blockTable[3]))
        // Telling less than before, or nothing new, changes nothing; bad input is a typed error.
        try cache.markComputed(b.sequence, computedTokens: 0)
        #expect(throws: KVCacheError.invalidComputedTokens(17, tokenCount: 16)) { try cache.markComputed(b.sequence, computedTokens: 17) }
        #expect(throws: KVCacheError.invalidComputedTokens(-1, tokenCount: 16)) { try cache.markComputed(b.sequence, computedTokens: -1) }
        cache.checkInvariants()
        // A plain release is the engine's word that every token's KV is written.
        try cache.release(b.sequence)
        cache.checkInvariants()
        #expect(try cache.lookup(run(0, 16)).memoryTokens == 8)  // B's first two duplicate A's: its chain stops
    }

    /// Decode: a block `append` fills joins the tree when the step that wrote it is reported.
    @Test func aDecodedBlockJoinsWhenReported() throws {
        let cache = try cache()
        let a = try cache.admit(run(0, 6))
        try cache.markComputed(a.sequence, computedTokens: 6)
        try cache.append(run(6, 2), to: a.sequence)  // fills block 2
        #expect(try cache.lookup(run(0, 8)).memoryTokens == 4)
        try cache.markComputed(a.sequence, computedTokens: 8)
        #expect(try cache.lookup(run(0, 8)).memoryTokens == 8)
        cache.checkInvariants()
    }

    /// Samples forked before the prompt's KV was reported hold the same blocks: when the parent
    /// reports them, the children's chains extend with them (checked by the invariants), and a
    /// child's own decoded block then joins under them.
    @Test func forkRelativesFollowThePublishedChain() throws {
        let cache = try cache()
        let p = try cache.admit(run(0, 10))  // 2 full blocks and a partial one
        let kids = try cache.fork(p.sequence, count: 3)
        try cache.markComputed(p.sequence, computedTokens: 10)
        cache.checkInvariants()
        #expect(try cache.lookup(run(0, 10)).memoryTokens == 8)
        let copy = try cache.append(run(10, 2), to: kids[1]).copy  // fills its private copy of block 3
        #expect(copy != nil)
        try cache.markComputed(kids[1], computedTokens: 12)
        cache.checkInvariants()
        #expect(try cache.lookup(run(0, 12)).memoryTokens == 12)
        // A child reporting what its parent already did changes nothing.
        try cache.markComputed(kids[0], computedTokens: 10)
        for s in [p.sequence] + kids { try cache.release(s) }
        cache.checkInvariants()
        #expect(cache.stats.usedBlocks == 0)
    }

    /// Under the default, `markComputed` only checks its input.
    @Test func atAdmissionMarkComputedChangesNothing() throws {
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 8)
        let a = try cache.admit(run(0, 8))
        let before = cache.stats
        try cache.markComputed(a.sequence, computedTokens: 8)
        #expect(cache.stats == before && cache.isCached(a.blockTable[1]))
        #expect(throws: KVCacheError.invalidComputedTokens(9, tokenCount: 8)) { try cache.markComputed(a.sequence, computedTokens: 9) }
        try cache.release(a.sequence)
        #expect(throws: KVCacheError.releasedSequence(a.sequence)) { try cache.markComputed(a.sequence, computedTokens: 0) }

        // Not even where a chain broke on a duplicate that has since been evicted (a review found
        // markComputed inserting the private block then).
        let small = try KVCacheManager(layout: .small(blockSize: 1), capacityBlocks: 3)
        let s1 = try small.admit([1, 2]), s2 = try small.admit([1])
        try small.append([2], to: s2.sequence)  // duplicate of s1's block: s2's chain stops
        try small.release(s1.sequence)
        _ = try small.admit([7])  // evicts the duplicate
        let b = try small.blockTable(of: s2.sequence)[1]
        try small.markComputed(s2.sequence, computedTokens: 2)
        #expect(!small.isCached(b))
        small.checkInvariants()
    }
}
