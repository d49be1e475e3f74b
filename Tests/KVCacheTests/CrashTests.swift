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

    @Test func evictingANonLeafTraps() async {
        await #expect(processExitsWith: .failure) {
            var index = PrefixIndex(capacity: 4)
            _ = index.insert(1, parent: PrefixIndex.rootCode(namespace: 0), hash: 1, namespace: 0)
            _ = index.insert(2, parent: 1, hash: 2, namespace: 0)
            index.removeLeaf(1)
        }
    }
}
