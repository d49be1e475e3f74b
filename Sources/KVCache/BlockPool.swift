import KVCore

/// Refcounts and the free queue of a fixed set of blocks. Block 0 is the reserved null block
/// (never allocated); blocks `1...capacity` are allocatable.
///
/// The free queue is an index-linked doubly linked list over the blocks with refcount 0, so
/// allocate, free and "touch" (take a cached block out of the queue on a hit) are O(1). Its order
/// is the eviction order: the head is reused first. Blocks holding nothing worth keeping go to the
/// head; cached blocks go to the tail when their last reference goes, so the head side holds the
/// least recently used (see `CacheState.release`).
struct BlockPool {
    /// Fixed-size per-block arrays, allocated once. Raw storage keeps the hot paths free of
    /// copy-on-write uniqueness checks; `BlockPool` is never copied (it lives in the manager's lock).
    final class Storage {
        let refcount: UnsafeMutablePointer<Int32>
        let prev: UnsafeMutablePointer<Int32>
        let next: UnsafeMutablePointer<Int32>
        let queued: UnsafeMutablePointer<Bool>
        init(count: Int) {
            refcount = .filled(with: 0, count: count)
            prev = .filled(with: -1, count: count)
            next = .filled(with: -1, count: count)
            queued = .filled(with: false, count: count)
        }
        deinit {
            refcount.deallocate()
            prev.deallocate()
            next.deallocate()
            queued.deallocate()
        }
    }

    let capacity: Int
    private let storage: Storage
    /// Per-block refcount (index = block id); read-only outside the pool.
    var refcount: UnsafePointer<Int32> { UnsafePointer(storage.refcount) }
    /// Whether each block is in the free queue; read-only outside the pool.
    var queued: UnsafePointer<Bool> { UnsafePointer(storage.queued) }
    private var prev: UnsafeMutablePointer<Int32> { storage.prev }
    private var next: UnsafeMutablePointer<Int32> { storage.next }
    private(set) var head: Int32 = -1
    private(set) var tail: Int32 = -1
    /// Blocks in the free queue.
    private(set) var freeCount = 0
    /// Blocks with refcount > 0.
    private(set) var usedCount = 0
    /// Blocks with refcount > 1.
    private(set) var sharedCount = 0

    init(capacity: Int) {
        invariant(capacity >= 1, "BlockPool: capacity must be at least 1, got \(capacity)")
        self.capacity = capacity
        storage = Storage(count: capacity + 1)
        for b in 1...capacity { pushBack(Int32(b)) }
    }

    // MARK: - Free queue

    mutating func pushBack(_ b: Int32) {
        let i = Int(b)
        invariant(i > 0 && !queued[i] && refcount[i] == 0,
                     "BlockPool: block \(b) queued twice or while referenced (refcount \(refcount[i]))")
        prev[i] = tail
        next[i] = -1
        if tail >= 0 { next[Int(tail)] = b } else { head = b }
        tail = b
        storage.queued[i] = true
        freeCount += 1
    }

    mutating func pushFront(_ b: Int32) {
        let i = Int(b)
        invariant(i > 0 && !queued[i] && refcount[i] == 0,
                     "BlockPool: block \(b) queued twice or while referenced (refcount \(refcount[i]))")
        next[i] = head
        prev[i] = -1
        if head >= 0 { prev[Int(head)] = b } else { tail = b }
        head = b
        storage.queued[i] = true
        freeCount += 1
    }

    mutating func remove(_ b: Int32) {
        let i = Int(b)
        invariant(queued[i], "BlockPool: block \(b) removed from the free queue but is not in it")
        let p = prev[i], n = next[i]
        if p >= 0 { next[Int(p)] = n } else { head = n }
        if n >= 0 { prev[Int(n)] = p } else { tail = p }
        prev[i] = -1
        next[i] = -1
        storage.queued[i] = false
        freeCount -= 1
    }

    /// Takes the head of the free queue (the next block to reuse), or nil when the queue is empty.
    mutating func popFront() -> Int32? {
        guard head >= 0 else { return nil }
        let b = head
        remove(b)
        return b
    }

    /// The free queue from head (reused first) to tail.
    var queueOrder: [Int32] {
        var out: [Int32] = []
        var b = head
        while b >= 0 { out.append(b); b = next[Int(b)] }
        return out
    }

    // MARK: - Refcounts

    /// Adds `n` references (a fork adds one per child at once), taking the block out of the free
    /// queue on its first one.
    mutating func retain(_ b: Int32, times n: Int32 = 1) {
        let i = Int(b)
        invariant(i > 0 && i <= capacity, "BlockPool: retain of block \(b) outside 1...\(capacity)")
        invariant(n >= 1 && refcount[i] <= Int32.max - n, "BlockPool: refcount of block \(b) (\(refcount[i])) overflows by \(n) references")
        switch refcount[i] {
        case 0:
            if queued[i] { remove(b) }
            usedCount += 1
            if n > 1 { sharedCount += 1 }
        case 1:
            sharedCount += 1
        default: break
        }
        storage.refcount[i] += n
    }

    /// Drops a reference; returns true when it was the last one (the caller queues the block).
    mutating func release(_ b: Int32) -> Bool {
        let i = Int(b)
        invariant(i > 0 && i <= capacity, "BlockPool: release of block \(b) outside 1...\(capacity)")
        invariant(refcount[i] > 0, "BlockPool: refcount underflow on block \(b)")
        invariant(!queued[i], "BlockPool: block \(b) is both free (queued) and referenced")
        storage.refcount[i] -= 1
        switch refcount[i] {
        case 0: usedCount -= 1; return true
        case 1: sharedCount -= 1
        default: break
        }
        return false
    }

    /// Checks links, membership, counts: every block is queued exactly when its refcount is 0.
    func checkInvariants() {
        invariant(refcount[0] == 0 && !queued[0], "BlockPool: the null block is referenced or queued")
        var seen = 0
        var b = head
        var last: Int32 = -1
        while b >= 0 {
            let i = Int(b)
            invariant(queued[i], "BlockPool: block \(b) linked in the free queue but not marked queued")
            invariant(prev[i] == last, "BlockPool: free-queue back link of block \(b) is \(prev[i]), expected \(last)")
            invariant(refcount[i] == 0, "BlockPool: block \(b) is both free and referenced (refcount \(refcount[i]))")
            seen += 1
            invariant(seen <= capacity, "BlockPool: free queue has a cycle")
            last = b
            b = next[i]
        }
        invariant(tail == last, "BlockPool: free-queue tail is \(tail), last linked block is \(last)")
        invariant(seen == freeCount, "BlockPool: freeCount \(freeCount) but \(seen) blocks queued")
        var used = 0, shared = 0
        for i in 1...capacity {
            invariant(refcount[i] >= 0, "BlockPool: negative refcount on block \(i)")
            invariant((refcount[i] == 0) == queued[i], "BlockPool: block \(i) refcount \(refcount[i]) but queued=\(queued[i])")
            if refcount[i] > 0 { used += 1 }
            if refcount[i] > 1 { shared += 1 }
        }
        invariant(used == usedCount, "BlockPool: usedCount \(usedCount) but \(used) blocks referenced")
        invariant(shared == sharedCount, "BlockPool: sharedCount \(sharedCount) but \(shared) blocks shared")
    }
}
