import Dispatch
import KVCore

/// What `CacheState.beginAdmission` leaves to do: nothing, restores from the cold store, or
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

/// An admission's cold-store work, run outside the manager's lock: the restores, block by block
/// after the memory hit, into blocks the new sequence holds alone (allocated, not in the tree, its
/// handle not yet returned), so no other call reads or writes those pages meanwhile. (The blocks
/// its allocation evicted were spilled before, by `KVCacheManager.mutate`.) Restores stop at the
/// first miss, since a prefix is only as long as its first gap. A block of the prompt that another
/// call evicted and is still spilling is waited for (`SpillsInFlight`), then restored.
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
    /// The sequence's blocks for prompt blocks `memoryHits..<fullBlocks`, in order.
    var blocks: [Int32]
    /// The store key of the first block to restore (each later key chains from it), and what
    /// admissions of the same prefix wait on. Nil: nothing to restore.
    var inFlight: (key: PrefixKey, restore: RestoreInFlight)?
    let store: (any ColdPrefixStore)?
    let spillsInFlight: SpillsInFlight
    let arena: KVPageArena?
    let blockSize: Int

    /// Restores from the first block on until the store misses; returns the restored blocks' keys.
    func run() -> [PrefixKey] {
        guard let store, var key = inFlight?.key else { return [] }
        var keys: [PrefixKey] = []
        prompt.withUnsafeBufferPointer { p in
            for (j, block) in blocks.enumerated() {
                let i = memoryHits + j
                let tokens = UnsafeBufferPointer(rebasing: p[(i * blockSize)..<((i + 1) * blockSize)])
                if j > 0 { key = store.childKey(parent: key, tokens: tokens) }
                spillsInFlight.waitUntilSpilled(key)
                guard store.restore(key: key, namespace: namespace, tokens: tokens, into: BlockID(block), arena: arena) else { return }
                keys.append(key)
            }
        }
        return keys
    }
}
