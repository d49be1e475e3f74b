import Dispatch
import Foundation
import KVCore
import Testing
@testable import KVCache

/// A `MemoryColdStore` whose restores wait at a gate: the test holds an admission inside its
/// restore while it does other things with the manager.
final class GatedColdStore: ColdPrefixStore, @unchecked Sendable {
    let inner = MemoryColdStore()
    /// Signalled each time a restore is entered.
    let entered = DispatchSemaphore(value: 0)
    /// Each restore waits for one signal of this.
    let proceed = DispatchSemaphore(value: 0)
    let gated = Locked(false)
    let gatedSpills = Locked(false)

    func rootKey(namespace: Namespace) -> PrefixKey { inner.rootKey(namespace: namespace) }
    func childKey(parent: PrefixKey, tokens: UnsafeBufferPointer<TokenID>) -> PrefixKey { inner.childKey(parent: parent, tokens: tokens) }
    func spill(key: PrefixKey, namespace: Namespace, tokens: UnsafeBufferPointer<TokenID>, block: BlockID, arena: KVPageArena?) {
        if gatedSpills.withLock({ $0 }) {
            entered.signal()
            proceed.wait()
        }
        inner.spill(key: key, namespace: namespace, tokens: tokens, block: block, arena: arena)
    }
    func restore(key: PrefixKey, namespace: Namespace, tokens: UnsafeBufferPointer<TokenID>, into block: BlockID, arena: KVPageArena?) -> Bool {
        if gated.withLock({ $0 }) {
            entered.signal()
            proceed.wait()
        }
        return inner.restore(key: key, namespace: namespace, tokens: tokens, into: block, arena: arena)
    }
    func contains(key: PrefixKey, tokens: UnsafeBufferPointer<TokenID>) -> Bool { inner.contains(key: key, tokens: tokens) }
    func publish(stats: KVCacheStats) {}
}

/// `admit` spills what it evicts and reads the cold store outside the manager's lock: a long restore (tens of ms for an
/// 8k-token prefix) holds up no other caller, and whatever happens meanwhile leaves a consistent
/// admission.
@Suite struct RestoreOutsideTheLockTests {
    func run(_ start: Int32, _ count: Int) -> [TokenID] { (0..<Int32(count)).map { start + $0 } }

    /// The store holds `prompt`'s full blocks in namespace "t" (spilled by an earlier manager).
    func spilled(_ prompts: [[TokenID]], into store: GatedColdStore) throws {
        let first = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 4, allocatesPages: true, coldStore: store)
        for p in prompts {
            try first.release(try first.admit(p, namespace: "t").sequence)
        }
        try first.release(try first.admit(run(9000, 16), namespace: "t").sequence)  // evicts (spills) the rest
        for p in prompts { #expect(store.inner.holds(p, namespace: "t", blockSize: 4)) }
    }

    /// Starts `admit(prompt)` on another thread and returns once it is inside its first restore.
    func admitInBackground(_ cache: KVCacheManager, _ prompt: [TokenID], _ store: GatedColdStore,
                           done: DispatchGroup, result: Locked<Admission?>) {
        DispatchQueue.global().async(group: done) {
            let a = try? cache.admit(prompt, namespace: "t")
            result.withLock { $0 = a }
        }
        #expect(store.entered.wait(timeout: .now() + 30) == .success, "the admission never reached its restore")
        #expect(result.withLock { $0 } == nil)
    }

    /// While one admission sits inside its restore, other threads admit, append, map, plan and
    /// release — each call returns (with the restore still blocked), and the invariants hold.
    @Test func otherCallsGoOnDuringARestore() throws {
        let store = GatedColdStore()
        try spilled([run(0, 16)], into: store)
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 16, allocatesPages: true, coldStore: store)
        store.gated.withLock { $0 = true }
        let done = DispatchGroup(), result = Locked<Admission?>(nil)
        admitInBackground(cache, run(0, 16) + [7], store, done: done, result: result)

        // Another thread works with the manager; it must finish while the restore still waits.
        let others = DispatchSemaphore(value: 0)
        let outcome = Locked<String?>(nil)
        DispatchQueue.global().async {
            do {
                let b = try cache.admit(run(500, 3), namespace: "t")   // no full block: nothing to restore
                try cache.append([1, 2], to: b.sequence)
                _ = try cache.slotMapping(for: [b.sequence])
                _ = try cache.decodePlan(for: [b.sequence])
                cache.checkInvariants()
                // The pending admission holds its blocks already.
                if cache.stats.liveSequences != 2 { outcome.withLock { $0 = "live sequences \(cache.stats.liveSequences)" } }
                try cache.release(b.sequence)
                cache.checkInvariants()
            } catch { outcome.withLock { $0 = "\(error)" } }
            others.signal()
        }
        let finished = others.wait(timeout: .now() + 30) == .success
        #expect(finished, "calls on another thread waited for the restore (the lock was held)")
        #expect(outcome.withLock { $0 } == nil)
        store.gated.withLock { $0 = false }
        store.proceed.signal()   // lets the first restore go; the others run ungated
        done.wait()
        let a = try #require(result.withLock { $0 })
        #expect(a.cachedTokenCount == 16 && a.storeHitTokens == 16 && a.memoryHitTokens == 0)
        #expect(cache.stats.restoredBlocks == 4 && cache.stats.queryTokens == 17 + 3)
        cache.checkInvariants()
        #expect(try cache.lookup(run(0, 16), namespace: "t").memoryTokens == 16)
        try cache.release(a.sequence)
        cache.checkInvariants()
    }

    /// An admission whose allocation evicts cached blocks spills them outside the lock too: while
    /// it sits in a spill, another thread's calls go on; afterwards the store holds the blocks.
    @Test func evictionSpillsGoOnOutsideTheLock() throws {
        let store = GatedColdStore()
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 6, allocatesPages: true, coldStore: store)
        let b = try cache.admit(run(500, 1), namespace: "t")   // another request, one block
        try cache.release(try cache.admit(run(0, 16), namespace: "t").sequence)   // 4 cached blocks, 1 free
        store.gatedSpills.withLock { $0 = true }
        let done = DispatchGroup(), result = Locked<Admission?>(nil)
        DispatchQueue.global().async(group: done) {
            let a = try? cache.admit(self.run(100, 20), namespace: "t")   // 5 blocks: evicts all 4
            result.withLock { $0 = a }
        }
        #expect(store.entered.wait(timeout: .now() + 30) == .success, "the admission never spilled")
        let others = DispatchSemaphore(value: 0), outcome = Locked<String?>(nil)
        DispatchQueue.global().async {
            do {   // calls that need no block (one would evict, and spill through the gate)
                try cache.append([1], to: b.sequence)
                _ = try cache.slotMapping(for: [b.sequence])
                _ = try cache.lookup(run(0, 16), namespace: "t")
                cache.checkInvariants()
            } catch { outcome.withLock { $0 = "\(error)" } }
            others.signal()
        }
        #expect(others.wait(timeout: .now() + 30) == .success, "calls on another thread waited for the spill (the lock was held)")
        #expect(outcome.withLock { $0 } == nil)
        store.gatedSpills.withLock { $0 = false }
        store.proceed.signal()
        done.wait()
        let a = try #require(result.withLock { $0 })
        cache.checkInvariants()
        #expect(cache.stats.spilledBlocks == 4 && store.inner.spills.withLock { $0 } == 4)
        #expect(try cache.lookup(run(0, 16), namespace: "t", probeStore: true) == PrefixLookup(memoryTokens: 0, storeTokens: 16))
        try cache.release(a.sequence)
        try cache.release(b.sequence)
        cache.checkInvariants()
    }

    /// A cancelled writer's release hands over a memory hit of an admission still restoring: the
    /// release names the pending sequence, and its admission, when it returns, counts only what
    /// precedes the handed-over block (the restored blocks behind it are recomputed).
    @Test func aHandOverWhileRestoringLowersTheAdmission() throws {
        let store = GatedColdStore()
        let tail = run(100, 8)
        try spilled([run(0, 8) + tail], into: store)
        // The store lost the first two blocks' records and kept the deeper ones (a store with gaps),
        // so the writer below restores nothing and its blocks are new.
        var key = store.rootKey(namespace: "t")
        for chunk in [run(0, 4), run(4, 4)] {
            key = chunk.withUnsafeBufferPointer { store.childKey(parent: key, tokens: $0) }
            store.inner.records.withLock { $0[key] = nil }
        }
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 16, allocatesPages: true, coldStore: store)
        // A writer admits the first 8 tokens (joined the tree at admission, not yet written).
        let writer = try cache.admit(run(0, 8), namespace: "t")
        store.gated.withLock { $0 = true }
        let done = DispatchGroup(), result = Locked<Admission?>(nil)
        admitInBackground(cache, run(0, 8) + tail, store, done: done, result: result)
        // The writer is cancelled before its prefill ran: its blocks go to the pending admission.
        let handed = try cache.release(writer.sequence, computedTokens: 0)
        cache.checkInvariants()
        #expect(handed.count == 1 && handed.first?.validTokens == 0)
        store.gated.withLock { $0 = false }
        store.proceed.signal()
        done.wait()
        let a = try #require(result.withLock { $0 })
        #expect(handed.first?.sequence == a.sequence)
        #expect(a.memoryHitTokens == 8 && a.storeHitTokens == 8)
        #expect(a.cachedTokenCount == 0, "the engine must compute from the handed-over block on")
        #expect(try cache.firstOwnPosition(of: a.sequence) == 0)
        cache.checkInvariants()
        try cache.release(a.sequence, computedTokens: 0)
        cache.checkInvariants()
        #expect(try cache.lookup(run(0, 16), namespace: "t").memoryTokens == 0)
    }

    /// A second admission of a prefix being restored waits for that restore, then matches the
    /// restored blocks in memory: one copy, shared (a burst of identical prompts after a restart
    /// reads the store once). Each restoring its own would have read the store twice and held
    /// two private copies.
    @Test func aSecondAdmissionOfAPrefixBeingRestoredWaitsAndShares() throws {
        let store = GatedColdStore()
        try spilled([run(0, 8)], into: store)
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 16, allocatesPages: true, coldStore: store)
        store.gated.withLock { $0 = true }
        let done = DispatchGroup(), first = Locked<Admission?>(nil), second = Locked<Admission?>(nil)
        admitInBackground(cache, run(0, 8) + [1], store, done: done, result: first)
        DispatchQueue.global().async(group: done) {
            let b = try? cache.admit(self.run(0, 8) + [2], namespace: "t")
            second.withLock { $0 = b }
        }
        let deadline = Date().addingTimeInterval(30)
        while cache.restoreWaits == 0 && Date() < deadline { usleep(1000) }
        #expect(cache.restoreWaits == 1, "the second admission did not wait for the restore in flight")
        #expect(second.withLock { $0 } == nil)
        cache.checkInvariants()
        store.gated.withLock { $0 = false }
        store.proceed.signal()
        done.wait()
        let a = try #require(first.withLock { $0 }), b = try #require(second.withLock { $0 })
        cache.checkInvariants()
        #expect(a.storeHitTokens == 8 && a.memoryHitTokens == 0)
        #expect(b.memoryHitTokens == 8 && b.storeHitTokens == 0 && b.cachedTokenCount == 8)
        #expect(Array(a.blockTable.prefix(2)) == Array(b.blockTable.prefix(2)), "one copy, shared")
        #expect(cache.stats.restoredBlocks == 2)
        for s in [a.sequence, b.sequence] { try cache.release(s) }
        cache.checkInvariants()
    }

    /// `append` (and `fork`, `truncate`) spill what they evict after the lock too: while an append
    /// sits in the spill of the cached block its new block evicted, other threads' calls go on;
    /// when it returns, the store holds the block.
    @Test func anAppendSpillsWhatItEvictsOutsideTheLock() throws {
        let store = GatedColdStore()
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 7, allocatesPages: true, coldStore: store)
        try cache.release(try cache.admit(run(0, 8), namespace: "t").sequence)   // 2 cached blocks
        let writer = try cache.admit(run(100, 16), namespace: "t")   // 4 blocks
        let other = try cache.admit(run(500, 3), namespace: "t")      // 1 block: none free now
        store.gatedSpills.withLock { $0 = true }
        let done = DispatchGroup(), appended = Locked<AppendResult?>(nil)
        DispatchQueue.global().async(group: done) {
            let r = try? cache.append([7], to: writer.sequence)   // a fifth block: evicts the cached leaf
            appended.withLock { $0 = r }
        }
        #expect(store.entered.wait(timeout: .now() + 30) == .success, "the append never spilled")
        let others = DispatchSemaphore(value: 0), outcome = Locked<String?>(nil)
        DispatchQueue.global().async {
            do {
                try cache.append([1], to: other.sequence)   // room in its partial block: no eviction
                _ = try cache.slotMapping(for: [other.sequence])
                _ = try cache.lookup(run(0, 8), namespace: "t")
                cache.checkInvariants()
            } catch { outcome.withLock { $0 = "\(error)" } }
            others.signal()
        }
        #expect(others.wait(timeout: .now() + 30) == .success, "calls on another thread waited for the append's spill (the lock was held)")
        #expect(outcome.withLock { $0 } == nil)
        #expect(appended.withLock { $0 } == nil, "the append returned before its spill")
        store.gatedSpills.withLock { $0 = false }
        store.proceed.signal()
        done.wait()
        #expect(appended.withLock { $0 } != nil)
        cache.checkInvariants()
        #expect(cache.stats.spilledBlocks == 1 && store.inner.spills.withLock { $0 } == 1)
        #expect(try cache.lookup(run(0, 8), namespace: "t", probeStore: true) == PrefixLookup(memoryTokens: 4, storeTokens: 4))
        for s in [writer.sequence, other.sequence] { try cache.release(s) }
        cache.checkInvariants()
    }

    /// An admission wanting a block another call evicted and is still spilling waits for that
    /// spill, then restores the block: between the eviction and its spill the prefix was in
    /// neither tier, and the admission recomputed it (the store missed) before spills were
    /// registered as in flight.
    @Test func anAdmissionWaitsForTheSpillOfABlockItWants() throws {
        let store = GatedColdStore()
        // Under `.whenComputed` a block joins the tree only once reported, so a request released
        // with nothing computed frees its blocks without caching them.
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 8, allocatesPages: true,
                                       publishesBlocks: .whenComputed, coldStore: store)
        let prefix = run(0, 16)
        try cache.release(try cache.admit(prefix, namespace: "t").sequence, computedTokens: 16)   // 4 cached blocks
        let idle = try cache.admit(run(500, 12), namespace: "t")   // 3 blocks, never computed: 1 free
        store.gatedSpills.withLock { $0 = true }
        let done = DispatchGroup(), evicting = Locked<Admission?>(nil), wanting = Locked<Admission?>(nil)
        DispatchQueue.global().async(group: done) {
            let a = try? cache.admit(self.run(100, 8), namespace: "t")   // the free block and the prefix's last
            evicting.withLock { $0 = a }
        }
        #expect(store.entered.wait(timeout: .now() + 30) == .success, "the admission never spilled")
        // The evicted block's prefix is out of memory and not yet in the store.
        try cache.release(idle.sequence, computedTokens: 0)   // 3 free blocks, nothing cached
        // A probe counts the block being spilled as held (the admission below waits for it).
        #expect(try cache.lookup(prefix, namespace: "t", probeStore: true) == PrefixLookup(memoryTokens: 12, storeTokens: 4))
        #expect(try cache.lookup(run(0, 12) + [9, 9, 9, 9], namespace: "t", probeStore: true)
                == PrefixLookup(memoryTokens: 12, storeTokens: 0), "other tokens under the same parent are not the block being spilled")
        DispatchQueue.global().async(group: done) {
            let b = try? cache.admit(prefix, namespace: "t")
            wanting.withLock { $0 = b }
        }
        let deadline = Date().addingTimeInterval(30)
        while cache.spillWaits == 0 && wanting.withLock({ $0 }) == nil && Date() < deadline { usleep(1000) }
        #expect(cache.spillWaits == 1 && wanting.withLock { $0 } == nil, "the admission did not wait for the spill of its block")
        cache.checkInvariants()
        store.gatedSpills.withLock { $0 = false }
        store.proceed.signal()
        done.wait()
        let a = try #require(evicting.withLock { $0 }), b = try #require(wanting.withLock { $0 })
        cache.checkInvariants()
        #expect(cache.spillWaits == 1)
        #expect(b.memoryHitTokens == 12 && b.storeHitTokens == 4 && b.cachedTokenCount == 16)
        #expect(cache.stats.spilledBlocks == 1 && cache.stats.restoredBlocks == 1)
        try cache.release(a.sequence, computedTokens: 0)
        try cache.release(b.sequence, computedTokens: 16)
        cache.checkInvariants()
    }
}
