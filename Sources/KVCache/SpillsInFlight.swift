import Dispatch
import KVCore

/// A block a call evicted, to be spilled by that call after the manager's lock is released. The
/// block went to the calling sequence (allocated to it), and the call spills before it returns, so
/// its pages still hold the evicted KV: nothing writes them before the caller has the block.
struct DeferredSpill: Sendable {
    let key: PrefixKey
    let namespace: Namespace
    let tokens: [TokenID]
    let block: BlockID

    /// Hands the block's KV (still in its pages) to `store`.
    func write(to store: any ColdPrefixStore, arena: KVPageArena?) {
        tokens.withUnsafeBufferPointer { store.spill(key: key, namespace: namespace, tokens: $0, block: block, arena: arena) }
    }
}

/// The spills one call runs after the lock: registered (under the manager's lock, with the
/// evictions) before the lock is released, so an admission that misses the evicted prefix in
/// memory finds it here and waits for the spill instead of missing it in the store.
final class SpillBatch: @unchecked Sendable {
    let spills: [DeferredSpill]
    let done = DispatchGroup()
    private let store: any ColdPrefixStore
    private let arena: KVPageArena?
    private let registry: SpillsInFlight

    fileprivate init(_ spills: [DeferredSpill], store: any ColdPrefixStore, arena: KVPageArena?, registry: SpillsInFlight) {
        self.spills = spills
        self.store = store
        self.arena = arena
        self.registry = registry
        done.enter()
    }

    /// Spills the blocks (call once, after the manager's lock is released), then lets admissions
    /// waiting on them go on.
    func run() {
        for s in spills { s.write(to: store, arena: arena) }
        registry.finish(self)
        done.leave()
    }
}

/// The spills running outside the manager's lock, by prefix key (see ``SpillBatch``). Its own lock,
/// not the manager's: admissions consult it while restoring, outside the manager's lock.
final class SpillsInFlight: Sendable {
    private let batches = Locked<[PrefixKey: SpillBatch]>([:])
    /// Restores that waited (or wait) for a spill (for tests).
    private let waitCount = Locked(0)

    /// Registers `spills` (call under the manager's lock, in the critical section that evicted them).
    func begin(_ spills: [DeferredSpill], store: any ColdPrefixStore, arena: KVPageArena?) -> SpillBatch {
        let batch = SpillBatch(spills, store: store, arena: arena, registry: self)
        batches.withLock { map in for s in spills { map[s.key] = batch } }
        return batch
    }

    fileprivate func finish(_ batch: SpillBatch) {
        batches.withLock { map in
            // A later eviction of the same prefix (restored and evicted again meanwhile) keeps its entry.
            for s in batch.spills where map[s.key] === batch { map[s.key] = nil }
        }
    }

    /// Whether a spill of `key` holding `tokens` is in flight (token-exact, as the store checks).
    func isSpilling(_ key: PrefixKey, tokens: UnsafeBufferPointer<TokenID>) -> Bool {
        guard let batch = batches.withLock({ $0[key] }) else { return false }
        return batch.spills.contains { $0.key == key && $0.tokens.elementsEqual(tokens) }
    }

    /// Waits until no spill of `key` is in flight. Returns whether it waited.
    @discardableResult
    func waitUntilSpilled(_ key: PrefixKey) -> Bool {
        var waited = false
        while let batch = batches.withLock({ $0[key] }) {
            if !waited { waitCount.withLock { $0 += 1 } }
            waited = true
            batch.done.wait()
        }
        return waited
    }

    /// Prefix keys whose spill is in flight (for tests).
    var count: Int { batches.withLock { $0.count } }
    /// Restores that waited (or wait now) for a spill in flight (for tests).
    var waits: Int { waitCount.withLock { $0 } }
}
