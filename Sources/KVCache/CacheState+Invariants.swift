import KVCore

extension CacheState {
    /// Checks every structural invariant of the cache (see docs/INVARIANTS.md), trapping with a
    /// message that names the broken state. O(capacity + total table length): for tests and
    /// `kvctl stress`, not for the hot path.
    func checkInvariants() {
        pool.checkInvariants()
        index.checkInvariants()
        let capacity = pool.capacity

        // Admissions in flight: each restore belongs to a registered sequence; evicted blocks
        // wait for their spill only inside the call that evicted them.
        for (key, inFlight) in restoring {
            invariant(sequences[inFlight.sequence] != nil, "CacheState: the restore in flight for \(key) belongs to sequence \(inFlight.sequence), which is not live")
        }
        invariant(evictedSpills.isEmpty, "CacheState: \(evictedSpills.count) evicted blocks left unspilled after their call")

        // Refcounts are exactly the number of table slots naming each block.
        var refs = [Int32](repeating: 0, count: capacity + 1)
        // The tokens each block holds as seen by the first sequence naming it (and which one):
        // every holder of a shared block must agree, or one wrote into it without copying it.
        var fill = [Int](repeating: 0, count: capacity + 1)
        var filledBy = [UInt64](repeating: 0, count: capacity + 1)
        var logical = 0
        for (id, seq) in sequences {
            invariant(seq.tokenCount >= 1, "CacheState: sequence \(id) holds no tokens")
            invariant(seq.blocks.count == (seq.tokenCount + blockSize - 1) / blockSize,
                         "CacheState: sequence \(id) has \(seq.blocks.count) blocks for \(seq.tokenCount) tokens")
            logical += seq.blocks.count
            for (i, b) in seq.blocks.enumerated() {
                invariant(b > 0 && Int(b) <= capacity, "CacheState: sequence \(id) names block \(b) outside the pool")
                refs[Int(b)] += 1
                let n = min(blockSize, seq.tokenCount - i * blockSize)
                if fill[Int(b)] == 0 {
                    fill[Int(b)] = n
                    filledBy[Int(b)] = id
                } else {
                    invariant(fill[Int(b)] == n, "CacheState: block \(b) is shared but holds \(fill[Int(b)]) tokens for sequence \(filledBy[Int(b)]) and \(n) for sequence \(id) (written in place without copy-on-write)")
                }
                let inTree = index.inTree[Int(b)]
                if i < seq.treeBlocks {
                    let parent = i == 0 ? PrefixIndex.rootCode(namespace: seq.namespace) : seq.blocks[i - 1]
                    invariant(inTree && index.parent[Int(b)] == parent,
                                 "CacheState: sequence \(id) block \(i) (#\(b)) should be in the tree under \(parent)")
                } else {
                    invariant(!inTree, "CacheState: sequence \(id) block \(i) (#\(b)) is in the tree beyond its chain of \(seq.treeBlocks)")
                }
            }
            invariant(seq.treeBlocks <= seq.tokenCount / blockSize, "CacheState: sequence \(id) has a partial block in the tree")
            invariant(seq.firstNewBlock >= 0 && seq.firstNewBlock <= seq.blocks.count,
                         "CacheState: sequence \(id) has firstNewBlock \(seq.firstNewBlock) outside 0...\(seq.blocks.count)")
            invariant(seq.firstOwnPosition >= 0 && seq.firstOwnPosition <= seq.tokenCount,
                         "CacheState: sequence \(id) has firstOwnPosition \(seq.firstOwnPosition) outside 0...\(seq.tokenCount)")
            if let b = seq.copySource {
                invariant(arena == nil, "CacheState: sequence \(id) keeps copy source \(b) on a manager that copies under its lock")
                invariant(b > 0 && Int(b) <= capacity && !seq.blocks.contains(b),
                             "CacheState: sequence \(id) keeps copy source \(b), outside the pool or still in its table")
                refs[Int(b)] += 1
            }
            invariant(seq.reportedComputed >= 0 && seq.reportedComputed <= seq.tokenCount,
                         "CacheState: sequence \(id) has reportedComputed \(seq.reportedComputed) outside 0...\(seq.tokenCount)")
        }
        var pins: [Int32: Int32] = [:]
        for seq in sequences.values { if let b = seq.copySource { pins[b, default: 0] += 1 } }
        invariant(pins == copyPins, "CacheState: copyPins \(copyPins) but the sequences keep copy sources \(pins)")
        for b in 1...capacity {
            invariant(refs[b] == pool.refcount[b], "CacheState: block \(b) refcount \(pool.refcount[b]) but \(refs[b]) table slots and pending copies name it")
        }
        invariant(logical == logicalBlocks, "CacheState: logicalBlocks \(logicalBlocks) but tables hold \(logical)")

        // Tree blocks hold the tokens their hash was made from.
        var cachedFree = 0
        blockTokens.withUnsafeBufferPointer { all in
            for b in 1...capacity where index.inTree[b] {
                let h = hashBlockTokens(UnsafeBufferPointer(rebasing: all[(b * blockSize)..<((b + 1) * blockSize)]))
                invariant(h == index.hash[b], "CacheState: tree block \(b) tokens changed after it was cached")
                if pool.refcount[b] == 0 { cachedFree += 1 }
            }
        }
        invariant(cachedFree == cachedFreeBlocks, "CacheState: cachedFreeBlocks \(cachedFreeBlocks) but \(cachedFree) cached blocks are unreferenced")
        if coldStore != nil {
            for b in 1...capacity where !index.inTree[b] {
                invariant(prefixKeys[b] == nil, "CacheState: block \(b) left the tree but keeps its prefix key")
            }
        }

        // Free-queue order: worthless blocks first, then cached blocks, each after its cached children.
        var seenCached = false
        var position = [Int32: Int]()
        for (i, b) in pool.queueOrder.enumerated() {
            if index.inTree[Int(b)] {
                seenCached = true
                position[b] = i
            } else {
                invariant(!seenCached, "CacheState: uncached free block \(b) queued behind cached blocks")
            }
        }
        for (b, i) in position {
            let parent = index.parent[Int(b)]
            if parent > 0, let j = position[parent] {
                invariant(j > i, "CacheState: cached block \(b) would be evicted after its parent \(parent) (not leaf-first)")
            }
        }

        // Namespaces: each registered one is used (by live sequences and its root's children,
        // exactly counted), each retired one is in the free list only, unnamed and unused, with
        // no tree block left in it.
        var users = [Int](repeating: 0, count: namespaceNames.count)
        var treeBlocks = [Int](repeating: 0, count: namespaceNames.count)
        for seq in sequences.values { users[Int(seq.namespace)] += 1 }
        for b in 1...capacity where index.inTree[b] {
            treeBlocks[Int(index.namespaceIndex[b])] += 1
            if index.parent[b] < 0 { users[Int(index.namespaceIndex[b])] += 1 }
        }
        invariant(users == namespaceUsers, "CacheState: namespace use counts \(namespaceUsers) but \(users) sequences and root children")
        let retired = Set(freeNamespaces)
        invariant(retired.count == freeNamespaces.count, "CacheState: a namespace index is free twice: \(freeNamespaces)")
        invariant(namespaces.count + retired.count == namespaceNames.count,
                  "CacheState: \(namespaces.count) registered and \(retired.count) retired namespaces of \(namespaceNames.count)")
        for (name, k) in namespaces {
            invariant(!retired.contains(k) && namespaceNames[Int(k)] == name && users[Int(k)] > 0,
                      "CacheState: namespace \(name) at index \(k) is retired, misnamed or unused (\(users[Int(k)]) uses)")
        }
        for k in retired {
            invariant(users[Int(k)] == 0 && treeBlocks[Int(k)] == 0,
                      "CacheState: retired namespace index \(k) has \(users[Int(k)]) uses and \(treeBlocks[Int(k)]) tree blocks")
        }
    }

    /// The free queue from the next block to reuse to the last (for scenario tests).
    var freeQueueOrder: [Int32] { pool.queueOrder }
}
