import Dispatch
import KVCore
import KVTestSupport
import Testing
@testable import KVCache

/// `KVCacheManager.slotMapping(for:)`: the flat slots of a step's new tokens.
@Suite struct SlotMappingTests {
    func run(_ start: Int32, _ count: Int) -> [TokenID] { (0..<Int32(count)).map { start + $0 } }

    /// What the mapping must say: `table[p / blockSize] * blockSize + p % blockSize` for each
    /// position, read from `blockTable(of:)` and `tokenCount(of:)` at the same moment.
    func expectedSlots(_ cache: KVCacheManager, _ s: SequenceHandle, _ positions: Range<Int>) throws -> [Int32] {
        let table = try cache.blockTable(of: s), bs = cache.layout.blockSize
        #expect(positions.upperBound <= (try cache.tokenCount(of: s)))
        return positions.map { table[$0 / bs] * Int32(bs) + Int32($0 % bs) }
    }

    @Test func prefillAndDecodeSlotsFollowTheBlockTables() throws {
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 16)
        let a = try cache.admit(run(0, 10))               // blocks 1 2 3, 3 partial
        let b = try cache.admit(run(0, 8) + run(100, 5))  // hits 1 2, then 4 5
        #expect(b.cachedTokenCount == 8)
        let prefill = try cache.slotMapping(for: [.from(a.cachedTokenCount, of: a.sequence), .from(b.cachedTokenCount, of: b.sequence)])
        #expect(prefill.slots == (try expectedSlots(cache, a.sequence, 0..<10)) + (try expectedSlots(cache, b.sequence, 8..<13)))
        #expect(prefill.slots == [4, 5, 6, 7, 8, 9, 10, 11, 12, 13] + [16, 17, 18, 19, 20])
        #expect(prefill.positions.map(Int.init) == Array(0..<10) + Array(8..<13))
        #expect(prefill.indptr == [0, 10, 15] && prefill.blockSize == 4)
        #expect(prefill[10] == KVSlot(block: BlockID(4), offset: 0))

        // A chunk, and the last tokens.
        let chunk = try cache.slotMapping(for: [.range(3..<6, of: a.sequence), .last(2, of: b.sequence)])
        #expect(chunk.slots == (try expectedSlots(cache, a.sequence, 3..<6)) + (try expectedSlots(cache, b.sequence, 11..<13)))
        #expect(chunk.slots == [7, 8, 9, 19, 20] && chunk.positions == [3, 4, 5, 11, 12])

        // Decode: append one token each, then the last token of each, in batch order.
        try cache.append([7], to: a.sequence)
        try cache.append([8], to: b.sequence)
        let decode = try cache.slotMapping(for: [b.sequence, a.sequence])
        #expect(decode.slots == (try expectedSlots(cache, b.sequence, 13..<14)) + (try expectedSlots(cache, a.sequence, 10..<11)))
        #expect(decode.slots == [21, 14] && decode.positions == [13, 10])
        // A whole-prompt hit leaves nothing to write: an empty span; no spans is no tokens.
        let c = try cache.admit(run(0, 8))
        #expect(c.cachedTokenCount == 8)
        let none = try cache.slotMapping(for: [.from(c.cachedTokenCount, of: c.sequence)])
        #expect(none.count == 0 && none.indptr == [0, 0])
        #expect(try cache.slotMapping(for: [SlotSpan]()).count == 0)
        #expect(try cache.slotMapping(for: []).count == 0)   // an empty literal is not ambiguous
        cache.checkInvariants()
        for s in [a.sequence, b.sequence, c.sequence] { try cache.release(s) }
        cache.checkInvariants()
    }

    /// After a fork the children share the partial last block; the slot mapping taken after
    /// `append` names each child's private copy (never the shared block), and equals the
    /// table arithmetic every time. Taken before the append it names the shared block — which is
    /// why the order is append, then map.
    @Test func afterForkAndAppendTheSlotsAreTheCopies() throws {
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 16, allocatesPages: true)
        let p = try cache.admit(run(0, 6))   // [1 full, 2 partial (2 tokens)]
        let kids = try cache.fork(p.sequence, count: 3)
        #expect(try cache.slotMapping(for: kids).slots == [9, 9, 9])   // block 2 slot 1, shared: not to write
        var written: Set<Int32> = []
        for (i, kid) in kids.enumerated() {
            let copy = try cache.append([TokenID(50 + i)], to: kid).copy
            let mapping = try cache.slotMapping(for: [kid])
            #expect(mapping.slots == (try expectedSlots(cache, kid, 6..<7)))
            #expect(mapping.positions == [6])
            let block = mapping[0].block
            #expect(mapping[0].offset == 2)
            // A private copy each: the parent still holds block 2.
            #expect(copy?.destination == block && block != BlockID(2), "child \(i)")
            #expect(cache.refcount(of: block.rawValue) == 1)
            #expect(written.insert(mapping.slots[0]).inserted)
            cache.checkInvariants()
        }
        // The parent is now the last holder of block 2: it appends in place.
        #expect(try cache.append([99], to: p.sequence).copy == nil)
        #expect(try cache.slotMapping(for: [p.sequence]).slots == [10])
        // Whole batch at once after a decode step: each sample's own slot.
        for kid in kids { try cache.append([1], to: kid) }
        let step = try cache.slotMapping(for: kids + [p.sequence])
        var expected: [Int32] = []
        for s in kids + [p.sequence] { expected += try expectedSlots(cache, s, (try cache.tokenCount(of: s) - 1)..<(try cache.tokenCount(of: s))) }
        #expect(step.slots == expected && Set(step.slots).count == 4)
        cache.checkInvariants()
        for s in kids + [p.sequence] { try cache.release(s) }
        cache.checkInvariants()
    }

    @Test func misuseIsATypedError() throws {
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 8)
        let a = try cache.admit(run(0, 5))
        func error(_ spans: [SlotSpan]) -> KVCacheError? {
            do { _ = try cache.slotMapping(for: spans); return nil } catch { return error }
        }
        for positions: SlotSpan.Positions in [.range(0..<6), .range(5..<6), .from(6), .from(-1), .last(6), .last(-1)] {
            #expect(error([.range(0..<1, of: a.sequence), SlotSpan(sequence: a.sequence, positions: positions)])
                    == .positionsOutOfRange(a.sequence, positions: positions, tokenCount: 5), "\(positions)")
        }
        #expect(error([.last(5, of: a.sequence), .from(5, of: a.sequence), .range(4..<5, of: a.sequence)]) == nil)
        let other = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 8)
        let foreign = try other.admit(run(0, 5)).sequence
        #expect(error([.last(of: foreign)]) == .unknownSequence(foreign))
        try cache.release(a.sequence)
        #expect(error([.last(of: a.sequence)]) == .releasedSequence(a.sequence))
        #expect(throws: KVCacheError.releasedSequence(a.sequence)) { try cache.slotMapping(for: [a.sequence]) }
        cache.checkInvariants()
        #expect(cache.stats.usedBlocks == 0)
    }

    /// Positions below `firstOwnPosition(of:)` are prefix hits, other requests' KV: mapping them
    /// for writing is refused (a prefill restarted from 0, a decode `.last` on a whole-prompt hit
    /// before the append). The boundary follows the sequence: inherited by fork children, lowered
    /// by `truncate` (the kept positions after it live in a private copy) and by a cancelled
    /// writer's hand-over.
    @Test func hitPositionsAreNotMappedForWriting() throws {
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 32, allocatesPages: true)
        func refused(_ spans: [SlotSpan]) -> Bool {
            do { _ = try cache.slotMapping(for: spans); return false } catch {
                guard case .positionsNotOwned = error else { Issue.record("unexpected \(error)"); return false }
                return true
            }
        }
        let a = try cache.admit(run(0, 8) + run(50, 2))       // blocks 1 2 (full), 3
        #expect(try cache.firstOwnPosition(of: a.sequence) == 0)
        let b = try cache.admit(run(0, 8) + run(100, 3))      // hits 1 2, then its own block
        #expect(try cache.firstOwnPosition(of: b.sequence) == b.cachedTokenCount && b.cachedTokenCount == 8)
        #expect(throws: KVCacheError.positionsNotOwned(b.sequence, positions: .from(0), firstOwnPosition: 8)) {
            try cache.slotMapping(for: [.from(0, of: a.sequence), .from(0, of: b.sequence)])
        }
        #expect(refused([.range(7..<9, of: b.sequence)]))
        #expect(!refused([.range(8..<9, of: b.sequence), .from(8, of: b.sequence), .last(3, of: b.sequence), .range(3..<3, of: b.sequence)]))
        cache.checkInvariants()

        // A whole-prompt hit: nothing to write until the first append opens a block of its own.
        let c = try cache.admit(run(0, 8))
        #expect(try cache.firstOwnPosition(of: c.sequence) == 8)
        #expect(refused([.last(of: c.sequence)]))
        #expect(throws: KVCacheError.positionsNotOwned(c.sequence, positions: .last(1), firstOwnPosition: 8)) {
            try cache.slotMapping(for: [c.sequence])
        }
        try cache.append([7], to: c.sequence)
        #expect(try cache.slotMapping(for: [c.sequence]).slots == (try expectedSlots(cache, c.sequence, 8..<9)))

        // A fork child inherits the boundary: it may write what its parent may (a prefill not yet
        // run is theirs together), not the hits.
        let kid = try cache.fork(b.sequence, count: 1)[0]
        #expect(try cache.firstOwnPosition(of: kid) == 8)
        #expect(refused([.from(4, of: kid)]) && !refused([.from(8, of: kid)]))
        cache.checkInvariants()

        // Truncated into its hits: the kept partial block is a private copy, written from the new end.
        let aBlock2 = try cache.blockTable(of: a.sequence)[1]
        try cache.truncate(b.sequence, toTokenCount: 6)
        #expect(try cache.firstOwnPosition(of: b.sequence) == 6)
        try cache.append([1, 2], to: b.sequence)
        let rewrite = try cache.slotMapping(for: [.from(6, of: b.sequence)])
        #expect(rewrite.slots == (try expectedSlots(cache, b.sequence, 6..<8)))
        #expect(rewrite[0].block.rawValue != aBlock2 && cache.refcount(of: rewrite[0].block.rawValue) == 1)
        #expect(refused([.from(5, of: b.sequence)]))
        cache.checkInvariants()

        // A cancelled writer hands its unwritten blocks to the request that hit them.
        let w = try cache.admit(run(200, 8))
        let h = try cache.admit(run(200, 8) + [1])
        #expect(try cache.firstOwnPosition(of: h.sequence) == 8)
        #expect(try cache.release(w.sequence, computedTokens: 0) == [InvalidatedHit(sequence: h.sequence, validTokens: 0)])
        #expect(try cache.firstOwnPosition(of: h.sequence) == 0)
        #expect(try cache.slotMapping(for: [.from(0, of: h.sequence)]).count == 9)
        cache.checkInvariants()
        for s in [a.sequence, b.sequence, c.sequence, kid, h.sequence] { try cache.release(s) }
        #expect(throws: KVCacheError.releasedSequence(h.sequence)) { try cache.firstOwnPosition(of: h.sequence) }
        cache.checkInvariants()
    }

    /// Pools whose flat slots would not fit an Int32 are refused up front (deterministically,
    /// not only when a high block is handed out).
    @Test func int32SlotBound() throws {
        #expect(KVCacheManager.flatSlotsFitInt32(capacityBlocks: (1 << 27) - 1, blockSize: 16))
        #expect(!KVCacheManager.flatSlotsFitInt32(capacityBlocks: 1 << 27, blockSize: 16))
        #expect(!KVCacheManager.flatSlotsFitInt32(capacityBlocks: Int(Int32.max) - 1, blockSize: Int(Int32.max)))
    }

    /// Threads admit, fork, append, map and write their slots at once: every live sequence's
    /// mapping is its own table arithmetic, and no two live sequences' new tokens share a slot
    /// (each thread's marks survive the others' writes).
    @Test func concurrentMappingsNameDisjointSlots() throws {
        let layout = try KVLayout(layerCount: 1, kvHeadCount: 1, headDim: 1, blockSize: 4, dtype: .float32)
        let cache = try KVCacheManager(layout: layout, capacityBlocks: 512, allocatesPages: true)
        let arena = cache.arena!
        DispatchQueue.concurrentPerform(iterations: 4) { t in
            var rng = SeededRandom(seed: UInt64(700 + t))
            for round in 0..<150 {
                do {
                    let shared = Int.random(in: 0..<3, using: &rng) == 0
                    let prompt = (shared ? run(0, 8) : []) + run(Int32(10_000 * (t + 1) + round * 50), Int.random(in: 1...9, using: &rng))
                    let a = try cache.admit(prompt)
                    let kids = try cache.fork(a.sequence, count: 2)
                    var mine: [(SequenceHandle, Int32, Float)] = []
                    let prefill = try cache.slotMapping(for: [.from(a.cachedTokenCount, of: a.sequence)])
                    let mark = Float(t * 100_000 + round * 10)
                    try arena.store(keys: [Float](repeating: mark, count: prefill.count), values: [Float](repeating: -mark, count: prefill.count),
                                    layer: 0, slots: prefill)
                    for (i, kid) in kids.enumerated() {
                        try cache.append([TokenID(i)], to: kid)
                        let m = try cache.slotMapping(for: [kid])
                        #expect(m.slots == (try expectedSlots(cache, kid, (prompt.count)..<(prompt.count + 1))))
                        let value = mark + Float(i + 1)
                        try arena.store(keys: [value], values: [-value], layer: 0, slots: m)
                        mine.append((kid, m.slots[0], value))
                    }
                    for (_, slot, value) in mine {
                        let block = BlockID(slot / 4)
                        let (k, v) = arena.withUnsafeBlockBytes(block, layer: 0, kind: .keys) { kb in
                            arena.withUnsafeBlockBytes(block, layer: 0, kind: .values) { vb in
                                (kb.load(fromByteOffset: Int(slot % 4) * 4, as: Float.self), vb.load(fromByteOffset: Int(slot % 4) * 4, as: Float.self))
                            }
                        }
                        #expect(k == value && v == -value, "thread \(t) round \(round): slot \(slot) overwritten")
                    }
                    for s in kids + [a.sequence] { try cache.release(s) }
                } catch {
                    Issue.record("thread \(t): \(error)")
                }
            }
        }
        cache.checkInvariants()
        #expect(cache.stats.usedBlocks == 0)
    }
}
