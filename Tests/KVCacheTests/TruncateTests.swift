import KVCore
import Testing
@testable import KVCache

/// `truncate(_:toTokenCount:)`: speculative decoding's rejected draft tokens leave the sequence;
/// the prefix tree and every other holder of its blocks keep what they had. Invariants are
/// checked after every mutation.
@Suite struct TruncateTests {
    let bs = 4

    func cache(capacity: Int = 32, pages: Bool = false, publication: BlockPublication = .atAdmission) throws -> KVCacheManager {
        try KVCacheManager(layout: .small(blockSize: bs), capacityBlocks: capacity, allocatesPages: pages, publishesBlocks: publication)
    }

    @Test func withinTheLastBlockNothingIsCopied() throws {
        let c = try cache()
        let a = try c.admit([1, 2, 3, 4, 5], namespace: "t")
        try c.append([6, 7], to: a.sequence)   // 7 tokens: 2 blocks, the second partial
        let table = try c.blockTable(of: a.sequence)
        let r = try c.truncate(a.sequence, toTokenCount: 5)
        c.checkInvariants()
        #expect(r.copy == nil)
        #expect(try c.tokens(of: a.sequence) == [1, 2, 3, 4, 5])
        #expect(try c.blockTable(of: a.sequence) == table)
        try c.append([9, 9, 9], to: a.sequence)
        c.checkInvariants()
        #expect(try c.tokens(of: a.sequence) == [1, 2, 3, 4, 5, 9, 9, 9])
    }

    /// Drafts filled a block, which joined the tree; the truncated sequence must not write into
    /// it, and the tree keeps it: the original tokens still hit in full.
    @Test func aCachedBlockMadePartialIsCopiedAndStaysCached() throws {
        let c = try cache(pages: true)
        let a = try c.admit([1, 2, 3, 4, 5, 6], namespace: "t")
        try c.append([7, 8, 10, 11, 12], to: a.sequence)   // 11 tokens: blocks 0 and 1 full (cached), block 2 partial
        let before = try c.blockTable(of: a.sequence)
        let arena = try #require(c.arena)
        arena.withUnsafeMutableBlockBytes(BlockID(before[1]), layer: 0, kind: .keys) { $0.storeBytes(of: 0xABCD_1234 as UInt32, as: UInt32.self) }
        let r = try c.truncate(a.sequence, toTokenCount: 6)   // keeps block 0 and 2 tokens of block 1
        c.checkInvariants()
        let copy = try #require(r.copy)
        #expect(copy.source == BlockID(before[1]) && copy.tokenCount == 2)
        let after = try c.blockTable(of: a.sequence)
        #expect(after == [before[0], copy.destination.rawValue])
        #expect(arena.withUnsafeBlockBytes(copy.destination, layer: 0, kind: .keys) { $0.load(as: UInt32.self) } == 0xABCD_1234)
        #expect(try c.tokens(of: a.sequence) == [1, 2, 3, 4, 5, 6])
        #expect(c.isCached(before[1]) && c.refcount(of: before[1]) == 0)
        // The dropped partial block went to the head of the free queue: the copy reused it.
        #expect(copy.destination.rawValue == before[2] && c.refcount(of: before[2]) == 1)
        // The original 8 tokens still hit in full; the truncated sequence's new tokens do not, yet.
        #expect(try c.lookup([1, 2, 3, 4, 5, 6, 7, 8, 0], namespace: "t").memoryTokens == 8)
        try c.append([20, 21], to: a.sequence)
        c.checkInvariants()
        #expect(try c.tokens(of: a.sequence) == [1, 2, 3, 4, 5, 6, 20, 21])
        // Once full, the rewritten block joins the tree beside the old one.
        #expect(try c.lookup([1, 2, 3, 4, 5, 6, 20, 21, 0], namespace: "t").memoryTokens == 8)
        #expect(try c.lookup([1, 2, 3, 4, 5, 6, 7, 8, 0], namespace: "t").memoryTokens == 8)
    }

    /// Fork siblings share a partial block; truncating one must not change what the other holds.
    @Test func aSharedPartialBlockIsCopiedForTheTruncatedSiblingOnly() throws {
        let c = try cache()
        let a = try c.admit([1, 2, 3, 4, 5, 6, 7], namespace: "t")
        let kids = try c.fork(a.sequence, count: 2)
        try c.truncate(kids[0], toTokenCount: 5)
        c.checkInvariants()
        #expect(try c.tokens(of: kids[0]) == [1, 2, 3, 4, 5])
        #expect(try c.tokens(of: kids[1]) == [1, 2, 3, 4, 5, 6, 7])
        #expect(try c.tokens(of: a.sequence) == [1, 2, 3, 4, 5, 6, 7])
        #expect(try c.blockTable(of: kids[0])[1] != c.blockTable(of: kids[1])[1])
        try c.append([30], to: kids[0])
        try c.append([40], to: kids[1])
        c.checkInvariants()
        #expect(try c.tokens(of: kids[0]) == [1, 2, 3, 4, 5, 30])
        #expect(try c.tokens(of: kids[1]) == [1, 2, 3, 4, 5, 6, 7, 40])
    }

    @Test func toABlockBoundaryKeepsTheTreeChain() throws {
        let c = try cache()
        let a = try c.admit([1, 2, 3, 4, 5, 6, 7, 8, 9], namespace: "t")
        let r = try c.truncate(a.sequence, toTokenCount: 8)
        c.checkInvariants()
        #expect(r.copy == nil)
        #expect(try c.blockTable(of: a.sequence).count == 2)
        try c.append([1, 1, 1, 1], to: a.sequence)   // the chain is intact: this block joins the tree
        c.checkInvariants()
        #expect(try c.lookup([1, 2, 3, 4, 5, 6, 7, 8, 1, 1, 1, 1, 0], namespace: "t").memoryTokens == 12)
    }

    @Test func badCountsAndReleasedHandlesAreTypedErrorsThatChangeNothing() throws {
        let c = try cache()
        let a = try c.admit([1, 2, 3, 4, 5], namespace: "t")
        let stats = c.stats
        #expect(throws: KVCacheError.invalidTruncation(0, tokenCount: 5)) { try c.truncate(a.sequence, toTokenCount: 0) }
        #expect(throws: KVCacheError.invalidTruncation(6, tokenCount: 5)) { try c.truncate(a.sequence, toTokenCount: 6) }
        #expect(try c.truncate(a.sequence, toTokenCount: 5).copy == nil)   // keeping everything is a no-op
        #expect(c.stats == stats)
        #expect(try c.tokens(of: a.sequence) == [1, 2, 3, 4, 5])
        try c.release(a.sequence)
        #expect(throws: KVCacheError.releasedSequence(a.sequence)) { try c.truncate(a.sequence, toTokenCount: 1) }
        c.checkInvariants()
    }

    /// The copy needs a block; with every block held by live sequences the call is refused and
    /// leaves the sequence as it was.
    @Test func noBlockForTheCopyIsRefusedWithoutChange() throws {
        let c = try cache(capacity: 3)
        let a = try c.admit([1, 2, 3, 4, 5, 6, 7, 8], namespace: "t")   // 2 blocks, both cached
        let other = try c.admit([9, 9], namespace: "t")                  // the third block
        let table = try c.blockTable(of: a.sequence)
        #expect(throws: KVCacheError.insufficientBlocks(needed: 1, available: 0)) { try c.truncate(a.sequence, toTokenCount: 6) }
        c.checkInvariants()
        #expect(try c.blockTable(of: a.sequence) == table && c.tokens(of: a.sequence) == [1, 2, 3, 4, 5, 6, 7, 8])
        // A free block makes room; so does a dropped block only the truncated sequence holds.
        try c.release(other.sequence)
        #expect(try c.truncate(a.sequence, toTokenCount: 6).copy != nil)
        c.checkInvariants()
        #expect(try c.tokens(of: a.sequence) == [1, 2, 3, 4, 5, 6])
        let d = try cache(capacity: 3)
        let full = try d.admit([1, 2, 3, 4, 5, 6, 7, 8, 9], namespace: "t")   // all 3 blocks, the last partial
        #expect(try d.truncate(full.sequence, toTokenCount: 6).copy != nil)
        d.checkInvariants()
        #expect(try d.tokens(of: full.sequence) == [1, 2, 3, 4, 5, 6])
    }

    /// Under `.whenComputed` a speculative step marks only the accepted tokens: the rejected drafts
    /// never become matchable, and their blocks are free again.
    @Test func rejectedDraftsNeverJoinTheTreeWhenComputed() throws {
        let c = try cache(publication: .whenComputed)
        let a = try c.admit([1, 2, 3, 4, 5, 6], namespace: "t")
        try c.markComputed(a.sequence, computedTokens: 6)
        try c.append([7, 8, 9, 10, 11, 12], to: a.sequence)   // 6 drafts: block 1 filled, block 2 full
        let used = c.stats.usedBlocks
        try c.truncate(a.sequence, toTokenCount: 7)          // one accepted
        try c.markComputed(a.sequence, computedTokens: 7)
        c.checkInvariants()
        #expect(c.stats.usedBlocks == used - 1)
        #expect(try c.lookup([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0], namespace: "t").memoryTokens == 4)
        try c.append([8], to: a.sequence)
        try c.markComputed(a.sequence, computedTokens: 8)
        c.checkInvariants()
        #expect(try c.lookup([1, 2, 3, 4, 5, 6, 7, 8, 0], namespace: "t").memoryTokens == 8)
    }
}
