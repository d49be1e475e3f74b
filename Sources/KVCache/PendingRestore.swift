import KVCore

/// What `CacheState.beginAdmission` leaves to do: nothing, or restores from the cold store.
enum AdmissionStep: Sendable {
    case done(Admission)
    case restore(PendingRestore)
}

/// An admission's cold-store restores, run outside the manager's lock: block by block after the
/// memory hit, each into a block the new sequence holds alone (allocated, not in the tree, its
/// handle not yet returned), so no other call can read or write those pages meanwhile. Stops at
/// the first miss, since a prefix is only as long as its first gap.
struct PendingRestore: Sendable {
    let sequence: SequenceHandle
    /// Blocks of the prompt found in memory (pinned by the sequence).
    let memoryHits: Int
    /// Full blocks of the prompt: the last one a restore may reach.
    let fullBlocks: Int
    let prompt: [TokenID]
    let namespace: Namespace
    /// The key of the prefix before the first block to restore (its namespace's root when none).
    var parentKey: PrefixKey?
    /// The sequence's blocks for prompt blocks `memoryHits..<fullBlocks`, in order.
    var blocks: [Int32]
    let store: (any ColdPrefixStore)?
    let arena: KVPageArena?
    let blockSize: Int

    /// Restores from the first block on until the store misses; returns the restored blocks' keys.
    func run() -> [PrefixKey] {
        guard let store, var key = parentKey else { return [] }
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
