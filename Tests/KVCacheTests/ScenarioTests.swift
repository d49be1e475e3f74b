import KVCore
import Testing
@testable import KVCache

/// Scenario tests: each walks time steps and asserts exact block ids, refcounts and free-queue order.
@Suite struct ScenarioTests {
    /// Tokens `start ..< start + count`.
    func run(_ start: Int32, _ count: Int) -> [TokenID] { (0..<Int32(count)).map { start + $0 } }

    @Test func sharingReleaseAndLeafFirstEviction() throws {
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 8)
        #expect(cache.freeQueueOrder == [1, 2, 3, 4, 5, 6, 7, 8])

        // t1: A = 10 tokens -> blocks 1, 2 full (cached at once), 3 partial.
        let a = try cache.admit(run(0, 10))
        #expect(a.blockTable == [1, 2, 3])
        #expect(a.cachedTokenCount == 0)
        #expect(cache.isCached(1) && cache.isCached(2) && !cache.isCached(3))
        cache.checkInvariants()

        // t2: B shares A's first 8 tokens, then differs: hits blocks 1, 2.
        let b = try cache.admit(run(0, 8) + run(100, 4))
        #expect(b.blockTable == [1, 2, 4])
        #expect(b.cachedTokenCount == 8 && b.memoryHitTokens == 8)
        #expect(cache.refcount(of: 1) == 2 && cache.refcount(of: 2) == 2 && cache.refcount(of: 4) == 1)
        #expect(cache.freeQueueOrder == [5, 6, 7, 8])
        cache.checkInvariants()

        // t3: releasing A frees its partial block 3 at the head (nothing to keep); 1, 2 stay pinned by B.
        try cache.release(a.sequence)
        #expect(cache.freeQueueOrder == [3, 5, 6, 7, 8])
        #expect(cache.refcount(of: 1) == 1)
        cache.checkInvariants()

        // t4: releasing B queues its cached blocks at the tail, deepest first.
        try cache.release(b.sequence)
        #expect(cache.freeQueueOrder == [3, 5, 6, 7, 8, 4, 2, 1])
        #expect(cache.stats.cachedBlocks == 3 && cache.stats.usedBlocks == 0)
        cache.checkInvariants()

        // t5: C needs 6 fresh blocks: the 5 uncached ones, then evicts the LRU leaf, block 4.
        let c = try cache.admit(run(1000, 24))
        #expect(c.blockTable == [3, 5, 6, 7, 8, 4])
        #expect(cache.freeQueueOrder == [2, 1])
        #expect(cache.stats.evictedBlocks == 1)
        #expect(try cache.lookup(run(0, 8) + run(100, 4)).memoryTokens == 8)
        cache.checkInvariants()

        // t6: D needs 3 blocks, only 2 are free or evictable: typed error, nothing changes.
        #expect(throws: KVCacheError.insufficientBlocks(needed: 3, available: 2)) { try cache.admit(run(5000, 12)) }
        #expect(cache.freeQueueOrder == [2, 1])
        #expect(cache.stats.allocationsFailed == 1)
        cache.checkInvariants()

        // t7: C leaves; its six full blocks queue deepest first behind the older 2, 1.
        try cache.release(c.sequence)
        #expect(cache.freeQueueOrder == [2, 1, 4, 8, 7, 6, 5, 3])

        // t8: a hit on 1, 2 takes them out of the queue; the third block evicts C's deepest leaf.
        let e = try cache.admit(run(0, 9))
        #expect(e.blockTable == [1, 2, 4] && e.cachedTokenCount == 8)
        #expect(cache.freeQueueOrder == [8, 7, 6, 5, 3])
        #expect(try cache.lookup(run(1000, 24)).memoryTokens == 20)
        cache.checkInvariants()
    }

    @Test func forkSharesBlocksAndCopiesThePartialBlockOnWrite() throws {
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 8, allocatesPages: true)
        let p = try cache.admit(run(0, 6))  // [1 full, 2 partial (2 tokens)]
        #expect(p.blockTable == [1, 2])
        let kids = try cache.fork(p.sequence, count: 2)
        #expect(cache.refcount(of: 1) == 3 && cache.refcount(of: 2) == 3)
        #expect(cache.stats.sharedBlocks == 2)
        #expect(abs(cache.stats.dedupRatio - 3) < 1e-9)

        // The engine writes KV into the partial block before the fork is written to.
        cache.arena!.withUnsafeMutableBlockBytes(BlockID(2), layer: 0, kind: .keys) { $0.storeBytes(of: 0xABCD, as: UInt32.self) }

        // t1: child 0 writes: block 2 is shared, so it gets a private copy (block 3).
        #expect(try cache.append([77], to: kids[0]).copy == BlockCopy(source: BlockID(2), destination: BlockID(3), tokenCount: 2))
        #expect(try cache.blockTable(of: kids[0]) == [1, 3])
        #expect(cache.refcount(of: 2) == 2 && cache.refcount(of: 3) == 1)
        #expect(try cache.tokens(of: kids[0]) == run(0, 6) + [77])
        let copied = cache.arena!.withUnsafeBlockBytes(BlockID(3), layer: 0, kind: .keys) { $0.load(as: UInt32.self) }
        #expect(copied == 0xABCD)
        cache.checkInvariants()

        // t2: child 1 writes: still shared with the parent, copy again (block 4).
        #expect(try cache.append([88, 89], to: kids[1]).copy == BlockCopy(source: BlockID(2), destination: BlockID(4), tokenCount: 2))
        #expect(try cache.blockTable(of: kids[1]) == [1, 4])
        #expect(cache.isCached(4))  // it filled: 6 + 2 = 8 tokens, joins the tree at once
        #expect(cache.refcount(of: 2) == 1)

        // t3: the parent is now the only owner of block 2: it writes in place.
        #expect(try cache.append([99], to: p.sequence).copy == nil)
        #expect(try cache.blockTable(of: p.sequence) == [1, 2])
        #expect(try cache.tokens(of: p.sequence) == run(0, 6) + [99])
        #expect(try cache.tokens(of: kids[1]) == run(0, 6) + [88, 89])
        cache.checkInvariants()

        // A new request with child 1's whole prefix hits both of its blocks.
        #expect(try cache.lookup(run(0, 6) + [88, 89, 5]).memoryTokens == 8)

        for s in [p.sequence] + kids { try cache.release(s) }
        #expect(cache.stats.usedBlocks == 0 && cache.stats.liveSequences == 0)
        cache.checkInvariants()
    }

    /// A metadata-only manager (the engine keeps the KV, e.g. in device memory under the same
    /// block ids) cannot copy a shared partial block itself: `append` must tell the engine which
    /// block to copy where, and how many slots, or the child reads a block it never wrote.
    @Test func metadataOnlyAppendReportsEveryCopyOnWrite() throws {
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 8)
        let p = try cache.admit(run(0, 7))  // [1 full, 2 partial (3 tokens)]
        let kids = try cache.fork(p.sequence, count: 2)
        let first = try cache.append([70, 71], to: kids[0])  // fills the copy and opens a block
        let copy = try #require(first.copy)
        #expect(copy.source == BlockID(2) && copy.tokenCount == 3)
        #expect(try cache.blockTable(of: kids[0]) == [1, copy.destination.rawValue, 4])
        cache.checkInvariants()
        // The second child copies too; the parent, the last holder, writes in place.
        #expect(try cache.append([80], to: kids[1]).copy?.source == BlockID(2))
        #expect(try cache.append([90], to: p.sequence).copy == nil)
        // A block boundary, or a private partial block, needs no copy.
        #expect(try cache.append([72, 73], to: kids[0]).copy == nil)
        let grandkids = try cache.fork(kids[0], count: 1)  // kids[0] has 11 tokens: block 4 holds 3
        #expect(try cache.append([74], to: grandkids[0]).copy?.tokenCount == 3)
        #expect(try cache.append([], to: kids[0]).copy == nil)
        cache.checkInvariants()
    }

    /// Tenant ids are compared by their bytes: two spellings of one string under Unicode
    /// canonical equivalence (String's ==) are two tenants, in memory as in the spill store.
    @Test func canonicallyEquivalentTenantIdsAreTwoNamespaces() throws {
        let composed = Namespace("caf\u{E9}"), decomposed = Namespace("cafe\u{301}")
        #expect(composed.rawValue == decomposed.rawValue)  // what String's equality says
        #expect(composed != decomposed && Set([composed, decomposed]).count == 2)
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 8)
        let a = try cache.admit(run(0, 8), namespace: composed)
        try cache.release(a.sequence)
        let b = try cache.admit(run(0, 8), namespace: decomposed)
        #expect(b.memoryHitTokens == 0, "tenant \(Array(decomposed.rawValue.utf8)) hit \(Array(composed.rawValue.utf8))'s blocks")
        #expect(try cache.admit(run(0, 8), namespace: composed).memoryHitTokens == 8)
        cache.checkInvariants()
    }

    /// Per-request or per-user namespaces (cache salts): a namespace nothing uses any more —
    /// no live sequence, no cached block — is forgotten and its slot reused, so a long-running
    /// manager does not keep every name it ever saw (~200 bytes each; 400,000 single-request
    /// namespaces grew one by 72 MiB). A namespace that still has cached blocks keeps them.
    @Test func unusedNamespacesAreForgotten() throws {
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 16)
        let kept = try cache.admit(run(0, 8), namespace: "kept")  // live: its namespace stays
        for i in 0..<2_000 {
            let a = try cache.admit(run(0, 5), namespace: Namespace("salt-\(i)"))
            try cache.release(a.sequence)  // its full block stays cached until evicted
            if i % 100 == 0 { cache.checkInvariants() }
        }
        cache.checkInvariants()
        #expect(cache.namespaceSlots <= 16 + 1, "\(cache.namespaceSlots) namespace slots for a pool of 16 blocks")
        #expect(try cache.lookup(run(0, 8), namespace: "kept").memoryTokens == 8)
        #expect(try cache.lookup(run(0, 4), namespace: "salt-1999").memoryTokens == 4)  // still cached
        #expect(try cache.lookup(run(0, 4), namespace: "salt-0").memoryTokens == 0)     // long gone
        try cache.release(kept.sequence)
        cache.checkInvariants()
    }

    /// A cold store keeps and restores KV through the manager's pages: a metadata-only manager
    /// would report store hits whose KV the engine never received, so it is refused.
    @Test func aColdStoreNeedsPages() throws {
        #expect(throws: KVCacheError.coldStoreNeedsPages) {
            try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 8, coldStore: MemoryColdStore())
        }
        _ = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 8, allocatesPages: true, coldStore: MemoryColdStore())
    }

    /// Matching reads a parent's newest child first (its hint); an older sibling, a sibling whose
    /// hinted brother was evicted (the hint is then empty), and a block that matches neither must
    /// still be found or missed exactly.
    @Test func siblingsMatchWhateverChildTheHintNames() throws {
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 5)
        // Three prompts share block 1 and then diverge: 2, 3 and 4 are siblings under 1.
        let prompts = [run(0, 4) + run(100, 4), run(0, 4) + run(200, 4), run(0, 4) + run(300, 4)]
        var tables: [[Int32]] = []
        for p in prompts {
            let a = try cache.admit(p)
            tables.append(a.blockTable)
            try cache.release(a.sequence)
            cache.checkInvariants()
        }
        #expect(tables == [[1, 2], [1, 3], [1, 4]])
        #expect(cache.hintedChild(of: 1) == 4)
        // The older siblings are found through the map; a fourth prompt matches only block 1.
        for p in prompts.prefix(2) {
            let a = try cache.admit(p)
            #expect(a.memoryHitTokens == 8)
            try cache.release(a.sequence)
            cache.checkInvariants()
        }
        #expect(try cache.lookup(run(0, 4) + run(400, 4)).memoryTokens == 4)
        // The least recently used leaf is now 4, the hinted child: an unrelated prompt evicts it.
        let other = try cache.admit(run(9000, 8))
        #expect(other.blockTable == [5, 4])
        #expect(cache.hintedChild(of: 1) == 0)
        cache.checkInvariants()
        #expect(try cache.lookup(prompts[0]).memoryTokens == 8)
        #expect(try cache.lookup(prompts[1]).memoryTokens == 8)
        #expect(try cache.lookup(prompts[2]).memoryTokens == 4)
        try cache.release(other.sequence)
        cache.checkInvariants()
    }

    @Test func namespacesNeverShare() throws {
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 8)
        let a = try cache.admit(run(0, 8), namespace: "tenant-a")
        let b = try cache.admit(run(0, 8), namespace: "tenant-b")
        #expect(b.cachedTokenCount == 0)
        #expect(Set(a.blockTable).isDisjoint(with: b.blockTable))
        #expect(try cache.lookup(run(0, 8), namespace: "tenant-a").memoryTokens == 8)
        #expect(try cache.lookup(run(0, 8), namespace: "tenant-c").memoryTokens == 0)
        cache.checkInvariants()
    }

    @Test func lookupHasNoSideEffects() throws {
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 4)
        let a = try cache.admit(run(0, 8))
        try cache.release(a.sequence)
        let before = (cache.freeQueueOrder, cache.stats)
        #expect(try cache.lookup(run(0, 8)).memoryTokens == 8)
        #expect(try cache.lookup(run(0, 7)).memoryTokens == 4)
        #expect(cache.freeQueueOrder == before.0 && cache.stats == before.1)
    }

    @Test func misuseGivesTypedErrors() throws {
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 4)
        #expect(throws: KVCacheError.emptyPrompt) { try cache.admit([]) }
        #expect(throws: KVCacheError.negativeToken(index: 1, value: -5)) { try cache.admit([1, -5]) }
        let a = try cache.admit([1, 2, 3])
        #expect(throws: KVCacheError.negativeToken(index: 0, value: -1)) { try cache.append([-1], to: a.sequence) }
        #expect(throws: KVCacheError.invalidForkCount(0)) { try cache.fork(a.sequence, count: 0) }
        #expect(throws: KVCacheError.invalidForkCount(1 << 20 + 1)) { try cache.fork(a.sequence, count: 1 << 20 + 1) }
        #expect(throws: KVCacheError.invalidForkCount(Int.max)) { try cache.fork(a.sequence, count: Int.max) }
        try cache.release(a.sequence)
        #expect(throws: KVCacheError.releasedSequence(a.sequence)) { try cache.release(a.sequence) }
        #expect(throws: KVCacheError.releasedSequence(a.sequence)) { try cache.append([1], to: a.sequence) }
        let bogus = SequenceHandle(manager: a.sequence.manager, serial: 999)  // never issued
        #expect(throws: KVCacheError.unknownSequence(bogus)) { try cache.blockTable(of: bogus) }
        #expect(throws: KVCacheError.noPageArena) { try cache.withUnsafeLayerPages(layer: 0) { _ in } }
        let paged = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 2, allocatesPages: true)
        #expect(throws: KVCacheError.invalidLayer(1, layerCount: 1)) { try paged.withUnsafeLayerPages(layer: 1) { _ in } }
        #expect(throws: KVCacheError.invalidLayer(-1, layerCount: 1)) { try paged.withUnsafeLayerPages(layer: -1) { _ in } }
        #expect(try paged.withUnsafeLayerPages(layer: 0) { _ in 7 } == 7)
        #expect(throws: KVCacheError.invalidCapacity(0)) { try KVCacheManager(layout: .small(), capacityBlocks: 0) }
        // Too large to size the token table (or the arena) in an Int: a typed error, not a trap.
        #expect(throws: KVCacheError.invalidCapacity(.max)) { try KVCacheManager(layout: .small(), capacityBlocks: .max) }
        #expect(throws: KVCacheError.invalidCapacity(1 << 56)) { try KVCacheManager(layout: .small(), capacityBlocks: 1 << 56, allocatesPages: true) }
        // Block ids are Int32 (0 is the null block): more blocks than that is a typed error too,
        // not a trap in the tables' allocation.
        #expect(throws: KVCacheError.invalidCapacity(1 << 40)) { try KVCacheManager(layout: .small(), capacityBlocks: 1 << 40) }
        #expect(throws: KVCacheError.invalidCapacity(Int(Int32.max))) { try KVCacheManager(layout: .small(), capacityBlocks: Int(Int32.max)) }
        // Sizes in an Int, but no machine grants a PiB: a typed error too. (Where Linux overcommits
        // without limit, `vm.overcommit_memory` = 1, the allocation would succeed and the
        // prefault touching it would not: not tried there.)
        let overcommit = (try? String(contentsOfFile: "/proc/sys/vm/overcommit_memory", encoding: .utf8)) ?? "0"
        if overcommit.trimmingCharacters(in: .whitespacesAndNewlines) != "1" {
            let layout = try KVLayout(layerCount: 64, kvHeadCount: 64, headDim: 256, blockSize: 64, dtype: .float32)
            let blocks = (1 << 50) / layout.blockBytes  // 2^21 blocks of 512 MiB
            #expect(throws: KVCacheError.pagesUnavailable(bytes: (blocks + 1) * layout.blockBytes)) {
                try KVCacheManager(layout: layout, capacityBlocks: blocks, allocatesPages: true)
            }
        }
        // Without prefaulting the arena is there at once; pages fault in as they are written.
        let lazy = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 4, allocatesPages: true, prefaultsPages: false)
        let block = BlockID(try lazy.admit([1, 2, 3, 4]).blockTable[0])
        lazy.arena!.withUnsafeMutableBlockBytes(block, layer: 0, kind: .keys) { bytes in
            for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: i) }
        }
        lazy.arena!.withUnsafeBlockBytes(block, layer: 0, kind: .keys) { bytes in
            #expect(bytes.indices.allSatisfy { bytes[$0] == UInt8(truncatingIfNeeded: $0) })
        }
        let other = KVLayout.small(blockSize: 8)
        #expect(throws: KVCacheError.layoutMismatch(expected: cache.layout, got: other)) { try cache.requireLayout(other) }
        cache.checkInvariants()
    }

    /// Serials start at 1 in every manager: a handle from another manager must be unknown here,
    /// never a name for this manager's sequence with the same serial.
    @Test func handleFromAnotherManagerIsUnknown() throws {
        let m1 = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 8)
        let m2 = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 8)
        let a = try m1.admit(run(0, 6))
        let b = try m2.admit(run(100, 6))
        #expect(a.sequence.serial == b.sequence.serial && a.sequence != b.sequence)
        #expect(throws: KVCacheError.unknownSequence(a.sequence)) { try m2.release(a.sequence) }
        #expect(throws: KVCacheError.unknownSequence(a.sequence)) { try m2.append([1], to: a.sequence) }
        #expect(throws: KVCacheError.unknownSequence(a.sequence)) { try m2.fork(a.sequence, count: 1) }
        #expect(throws: KVCacheError.unknownSequence(a.sequence)) { try m2.tokens(of: a.sequence) }
        #expect(throws: KVCacheError.unknownSequence(a.sequence)) { try m2.decodePlan(for: [a.sequence]) }
        m2.checkInvariants()
        #expect(try m2.tokens(of: b.sequence) == run(100, 6), "m2's own sequence was touched through m1's handle")
        #expect(m2.stats.liveSequences == 1)
        try m1.release(a.sequence)
        m1.checkInvariants()
        #expect(throws: KVCacheError.unknownSequence(a.sequence)) { try m2.release(a.sequence) }  // still foreign once released
        try m2.release(b.sequence)
        m2.checkInvariants()
    }

    @Test func appendFailureChangesNothing() throws {
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 3)
        let a = try cache.admit(run(0, 8))
        #expect(throws: KVCacheError.insufficientBlocks(needed: 2, available: 1)) { try cache.append(run(50, 5), to: a.sequence) }
        #expect(try cache.tokens(of: a.sequence) == run(0, 8))
        #expect(try cache.blockTable(of: a.sequence) == [1, 2])
        cache.checkInvariants()
    }

    @Test func decodePlanFromForkedSamples() throws {
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 64)
        let p = try cache.admit(run(0, 12))  // 3 full blocks: 1, 2, 3
        let kids = try cache.fork(p.sequence, count: 3)
        for (i, k) in kids.enumerated() { try cache.append(run(Int32(100 * (i + 1)), 5), to: k) }
        let plan = try cache.decodePlan(for: kids)
        plan.checkInvariants()
        #expect(plan.levels.count == 2)
        #expect(plan.levels[0].nodeCount == 1)
        #expect(Array(plan.levels[0].blocks(ofNode: 0)) == [1, 2, 3])
        #expect(Array(plan.levels[0].sequences(ofNode: 0)) == [0, 1, 2])
        #expect(plan.levels[1].nodeCount == 3)
        #expect(plan.levels[1].lastBlockTokenCounts == [1, 1, 1])
        #expect(plan.planTokenReads == 12 + 3 * 5)
    }
}
