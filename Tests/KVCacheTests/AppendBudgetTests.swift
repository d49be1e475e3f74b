import KVCore
import KVTestSupport
import Testing
@testable import KVCache

/// `blocksNeeded(toAppend:to:)` and `availableBlocks`: what a scheduler reads to fit a step's
/// appends into the pool before making them.
@Suite struct AppendBudgetTests {
    func run(_ start: Int32, _ count: Int) -> [TokenID] { (0..<Int32(count)).map { start + $0 } }

    @Test func countsNewBlocksAndTheCopyOfASharedPartialBlock() throws {
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 10)
        let a = try cache.admit(run(0, 6))   // two blocks, the second holds 2 tokens
        #expect(cache.availableBlocks == 8)
        #expect(try [0, 1, 2, 3, 6, 7, 10].map { try cache.blocksNeeded(toAppend: $0, to: a.sequence) } == [0, 0, 0, 1, 1, 2, 2])
        // After a fork the partial block is shared: the first write copies it.
        let children = try cache.fork(a.sequence, count: 2)
        #expect(try cache.blocksNeeded(toAppend: 1, to: children[0]) == 1)
        #expect(try cache.blocksNeeded(toAppend: 3, to: children[0]) == 2)
        #expect(try cache.blocksNeeded(toAppend: 0, to: children[0]) == 0)
        try cache.append([99], to: children[0])
        #expect(cache.availableBlocks == 7)
        // A full last block is never copied.
        let b = try cache.admit(run(50, 8))
        let bChild = try cache.fork(b.sequence, count: 1)[0]
        #expect(try cache.blocksNeeded(toAppend: 1, to: bChild) == 1)
        #expect(try cache.blocksNeeded(toAppend: 4, to: bChild) == 1)
        cache.checkInvariants()
    }

    @Test func misuseIsATypedError() throws {
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 4)
        let a = try cache.admit(run(0, 5))
        #expect(throws: KVCacheError.invalidAppendCount(-1)) { try cache.blocksNeeded(toAppend: -1, to: a.sequence) }
        // No overflow for any count: the room in the last block (3 tokens) is taken first.
        #expect(try cache.blocksNeeded(toAppend: .max, to: a.sequence) == (Int.max - 3 - 1) / 4 + 1)
        try cache.release(a.sequence)
        #expect(throws: KVCacheError.releasedSequence(a.sequence)) { try cache.blocksNeeded(toAppend: 1, to: a.sequence) }
    }

    /// Random appends, forks, truncations and releases on a small pool: whenever the count says
    /// an append fits it succeeds and takes exactly that many blocks; otherwise it is refused
    /// naming the same count, and nothing changes.
    @Test(arguments: [UInt64(11), 12, 13, 14])
    func theCountIsWhatAnAppendTakes(seed: UInt64) throws {
        var rng = SeededRandom(seed: seed)
        let blockSize = [1, 3, 4, 16][rng.below(4)]
        let cache = try KVCacheManager(layout: .small(blockSize: blockSize), capacityBlocks: 24)
        var live: [SequenceHandle] = []
        var fits = 0, refused = 0, copies = 0
        for step in 0..<600 {
            switch rng.below(12) {
            case 0, 1:
                if let a = try? cache.admit(run(Int32(rng.below(3) * 1000), 1 + rng.below(5 * blockSize))) { live.append(a.sequence) }
            case 2 where !live.isEmpty:
                live += try cache.fork(live[rng.below(live.count)], count: 1 + rng.below(2))
            case 3...4 where live.count > 1:   // (a `where` after `3, 4` would guard only the 4)
                try cache.release(live.remove(at: rng.below(live.count)))
            case 5 where !live.isEmpty:
                let s = live[rng.below(live.count)], n = try cache.tokenCount(of: s)
                if (try? cache.truncate(s, toTokenCount: 1 + rng.below(n))) != nil { try cache.copied(s) }   // the engine copied
            default:
                guard !live.isEmpty else { continue }
                let s = live[rng.below(live.count)], count = rng.below(3 * blockSize + 1)
                let need = try cache.blocksNeeded(toAppend: count, to: s), available = cache.availableBlocks
                #expect(available == cache.stats.capacityBlocks - cache.stats.usedBlocks)
                let tokens = (0..<count).map { _ in TokenID(rng.below(50)) }
                if need <= available {
                    let result = try cache.append(tokens, to: s)
                    try cache.copied(s)   // a shared source: settling frees nothing, so the count stays exact
                    #expect(cache.availableBlocks == available - need, "seed \(seed) step \(step): took \(available - cache.availableBlocks), counted \(need)")
                    fits += 1
                    if result.copy != nil { copies += 1 }
                } else {
                    #expect(throws: KVCacheError.insufficientBlocks(needed: need, available: available)) { try cache.append(tokens, to: s) }
                    #expect(cache.availableBlocks == available)
                    refused += 1
                }
            }
            cache.checkInvariants()
        }
        #expect(fits > 50 && refused > 0 && copies > 0, "seed \(seed): \(fits) fitted, \(refused) refused, \(copies) copies")
    }
}
