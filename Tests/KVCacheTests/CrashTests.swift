import KVCore
import Testing
@testable import KVCache

/// Internal corruption traps with a message naming the broken state (exit tests run in a child).
@Suite struct CrashTests {
    @Test func refcountUnderflowTraps() async {
        await #expect(processExitsWith: .failure) {
            var pool = BlockPool(capacity: 2)
            _ = pool.popFront()
            pool.retain(1)
            _ = pool.release(1)
            _ = pool.release(1)
        }
    }

    @Test func queuingAReferencedBlockTraps() async {
        await #expect(processExitsWith: .failure) {
            var pool = BlockPool(capacity: 2)
            pool.retain(1)
            pool.pushBack(1)
        }
    }

    /// A copy-on-write failure: a forked child writes into the shared partial block instead of
    /// copying it, so parent and child disagree on how many tokens block 2 holds.
    @Test func checkerCatchesASharedPartialBlockWrittenInPlace() async {
        await #expect(processExitsWith: .failure) {
            var s = CacheState(layout: .small(blockSize: 4), capacity: 8, arena: nil, coldStore: nil, onEvict: nil)
            let a = try! s.admit([0, 1, 2, 3, 4, 5], namespace: .default)  // block 1 full, block 2 holds 2 tokens
            let kid = try! s.fork(a.sequence, count: 1)[0]
            s.checkInvariants()  // sharing a partial block is fine while both agree on its fill
            s.blockTokens[2 * 4 + 2] = 77
            s.sequences[kid.serial]!.tokenCount = 7
            s.checkInvariants()  // traps: block 2 holds 2 tokens for the parent, 3 for the child
        }
    }

    /// Debug accessors name the bad block instead of reading outside the pool.
    @Test func debugAccessorsTrapOnABlockOutsideThePool() async {
        await #expect(processExitsWith: .failure) {
            let cache = try! KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 4)
            _ = cache.refcount(of: 5)
        }
        await #expect(processExitsWith: .failure) {
            let cache = try! KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 4)
            _ = cache.isCached(-1)
        }
    }

    @Test func evictingANonLeafTraps() async {
        await #expect(processExitsWith: .failure) {
            var index = PrefixIndex(capacity: 4)
            _ = index.insert(1, parent: PrefixIndex.rootCode(namespace: 0), hash: 1, namespace: 0)
            _ = index.insert(2, parent: 1, hash: 2, namespace: 0)
            index.removeLeaf(1)
        }
    }
}
