import KVCore
@testable import KVCache

/// A minimal in-memory cold tier for tests: what a persistent store looks like to the manager.
/// It keeps tokens only (no KV), keyed by a chained FNV-1a digest; one instance can outlive a
/// manager to play the part of a store that survives a restart.
final class MemoryColdStore: ColdPrefixStore, @unchecked Sendable {
    let records = Locked<[PrefixKey: [TokenID]]>([:])
    /// How many spills the store has received (a spill of garbage KV is what aborting prevents).
    let spills = Locked(0)

    func rootKey(namespace: Namespace) -> PrefixKey {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in namespace.rawValue.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return PrefixKey(h, 0, 0, 0)
    }
    func childKey(parent: PrefixKey, tokens: UnsafeBufferPointer<TokenID>) -> PrefixKey {
        var h = parent.bytes.0
        for t in tokens { h = (h ^ UInt64(UInt32(bitPattern: t))) &* 0x100_0000_01b3 }
        return PrefixKey(h, parent.bytes.1 &+ 1, 0, 0)
    }
    func spill(key: PrefixKey, namespace: Namespace, tokens: UnsafeBufferPointer<TokenID>, block: BlockID, arena: KVPageArena?) {
        let t = Array(tokens)
        records.withLock { $0[key] = t }
        spills.withLock { $0 += 1 }
    }
    func restore(key: PrefixKey, namespace: Namespace, tokens: UnsafeBufferPointer<TokenID>, into block: BlockID, arena: KVPageArena?) -> Bool {
        contains(key: key, tokens: tokens)
    }
    func contains(key: PrefixKey, tokens: UnsafeBufferPointer<TokenID>) -> Bool {
        let t = Array(tokens)
        return records.withLock { $0[key] == t }
    }
    /// Drops one record picked by `rng` (a store that lost an entry: evicted, or damaged).
    func forgetRandom(using rng: inout SeededRandom) {
        records.withLock { r in
            guard !r.isEmpty else { return }
            let k = Array(r.keys)[rng.below(r.count)]
            r[k] = nil
        }
    }
    /// Whether the store holds the whole-block prefix `tokens` (a multiple of `blockSize` long).
    func holds(_ tokens: [TokenID], namespace: Namespace, blockSize: Int) -> Bool {
        var key = rootKey(namespace: namespace)
        return tokens.withUnsafeBufferPointer { p in
            for i in 0..<(tokens.count / blockSize) {
                let chunk = UnsafeBufferPointer(rebasing: p[(i * blockSize)..<((i + 1) * blockSize)])
                key = childKey(parent: key, tokens: chunk)
                guard contains(key: key, tokens: chunk) else { return false }
            }
            return true
        }
    }
    func publish(stats: KVCacheStats) {}
}
