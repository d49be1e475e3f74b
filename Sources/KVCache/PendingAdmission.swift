import Dispatch
import KVCore

/// What `CacheState.beginAdmission` leaves to do: nothing, cold-store work (spills, restores), or
/// — when another admission is restoring the same prefix — wait for it and begin again.
enum AdmissionStep: Sendable {
    case done(Admission)
    case pending(PendingAdmission)
    case wait(RestoreInFlight)
}

/// A restore in flight, keyed by the prefix key of its first block: an admission of the same
/// prefix waits for it and then matches the restored blocks in memory, so a burst of identical
/// prompts after a restart shares one copy (each restoring its own would read the store and hold
/// the blocks once per request). The group is entered when the restore is registered and left when
/// its admission finishes, both under the manager's lock.
final class RestoreInFlight: @unchecked Sendable {
    let finished = DispatchGroup()
    /// The serial of the admitting sequence (registered, its handle not yet returned).
    let sequence: UInt64
    init(sequence: UInt64) {
        self.sequence = sequence
        finished.enter()
    }
}

/// A block evicted by an admission, to be spilled by that admission outside the manager's lock.
/// The block is one of the admitting sequence's own now, so its pages keep the evicted KV until
/// the admission's restores or its engine write them.
struct DeferredSpill: Sendable {
    let key: PrefixKey
    let namespace: Namespace
    let tokens: [TokenID]
    let block: BlockID
}

/// An admission's cold-store work, run outside the manager's lock: first the spills of the blocks
/// its allocation evicted, then the restores, block by block after the memory hit. Every block
/// involved is one the new sequence holds alone (allocated, not in the tree, its handle not yet
/// returned), so no other call reads or writes those pages meanwhile. Restores stop at the first
/// miss, since a prefix is only as long as its first gap. (Between the eviction and its spill a
/// concurrent admission of the evicted prefix misses it in memory and in the store: it recomputes.)
struct PendingAdmission: Sendable {
    let sequence: SequenceHandle
    /// Blocks of the prompt found in memory (pinned by the sequence).
    let memoryHits: Int
    /// Full blocks of the prompt: the last one a restore may reach.
    let fullBlocks: Int
    let prompt: [TokenID]
    /// False for a prefetch: not counted as a query (see `CacheState.beginAdmission`).
    let isQuery: Bool
    let namespace: Namespace
    /// Blocks the admission evicted, to spill before anything writes them.
    let spills: [DeferredSpill]
    /// The key of the prefix before the first block to restore (its namespace's root when none).
    var parentKey: PrefixKey?
    /// The sequence's blocks for prompt blocks `memoryHits..<fullBlocks`, in order.
    var blocks: [Int32]
    /// The key of the first block to restore, and what admissions of the same prefix wait on.
    var inFlight: (key: PrefixKey, restore: RestoreInFlight)?
    let store: (any ColdPrefixStore)?
    let arena: KVPageArena?
    let blockSize: Int

    /// Spills the evicted blocks, then restores from the first block on until the store misses;
    /// returns the restored blocks' keys.
    func run() -> [PrefixKey] {
        guard let store else { return [] }
        for s in spills {
            s.tokens.withUnsafeBufferPointer { store.spill(key: s.key, namespace: s.namespace, tokens: $0, block: s.block, arena: arena) }
        }
        guard var key = parentKey else { return [] }
        var keys: [PrefixKey] = []
        prompt.withUnsafeBufferPointer { p in
            for (j, block) in blocks.enumerated() {
                let i = memoryHits + j
                let tokens = UnsafeBufferPointer(rebasing: p[(i * blockSize)..<((i + 1) * blockSize)])
                key = store.childKey(parent: key, tokens: tokens)
                guard store.restore(key: key, namespace: namespace, tokens: tokens, into: BlockID(block), arena: arena) else { return }
                keys.append(key)
            }
        }
        return keys
    }
}
