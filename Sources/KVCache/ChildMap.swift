import KVCore

/// The prefix index's child map: (parent, token hash) → block, as an open-addressing hash table
/// with linear probing and backward-shift deletion (no tombstones).
///
/// Sized once for the pool (at most one entry per block, load ≤ 1/2), so it never rehashes. The
/// token hash is already well mixed; the parent is folded in with one multiply. A general
/// `Dictionary` costs about 4× more per probe here, and prefix matching probes once per block.
struct ChildMap {
    /// Slot arrays, allocated once (raw storage: no copy-on-write checks on the probe path).
    final class Storage {
        let parents: UnsafeMutablePointer<Int32>
        let hashes: UnsafeMutablePointer<UInt64>
        /// The block stored in a slot, or 0 for an empty slot (block 0 is the null block, never cached).
        let blocks: UnsafeMutablePointer<Int32>
        let size: Int
        init(size: Int) {
            self.size = size
            parents = .filled(with: 0, count: size)
            hashes = .filled(with: 0, count: size)
            blocks = .filled(with: 0, count: size)
        }
        deinit {
            parents.deallocate()
            hashes.deallocate()
            blocks.deallocate()
        }
    }

    private let storage: Storage
    private var parents: UnsafeMutablePointer<Int32> { storage.parents }
    private var hashes: UnsafeMutablePointer<UInt64> { storage.hashes }
    private var blocks: UnsafeMutablePointer<Int32> { storage.blocks }
    private let mask: Int
    private(set) var count = 0

    init(maxEntries: Int) {
        var size = 16
        while size < 2 * maxEntries { size <<= 1 }
        storage = Storage(size: size)
        mask = size - 1
    }

    @inline(__always) private func home(_ parent: Int32, _ hash: UInt64) -> Int {
        let mixed = (hash ^ (UInt64(UInt32(bitPattern: parent)) &* 0x9E37_79B9_7F4A_7C15))
        return Int(truncatingIfNeeded: (mixed ^ (mixed >> 31))) & mask
    }

    @inline(__always) func find(parent: Int32, hash: UInt64) -> Int32? {
        var i = home(parent, hash)
        while true {
            let b = blocks[i]
            if b == 0 { return nil }
            if hashes[i] == hash && parents[i] == parent { return b }
            i = (i &+ 1) & mask
        }
    }

    /// Inserts, or returns false when the key is present.
    mutating func insert(parent: Int32, hash: UInt64, block: Int32) -> Bool {
        invariant(block > 0, "ChildMap: block \(block) cannot be stored (0 marks an empty slot)")
        var i = home(parent, hash)
        while blocks[i] != 0 {
            if hashes[i] == hash && parents[i] == parent { return false }
            i = (i &+ 1) & mask
        }
        invariant(count + 1 <= (mask + 1) / 2, "ChildMap: more entries than it was sized for")
        parents[i] = parent
        hashes[i] = hash
        blocks[i] = block
        count += 1
        return true
    }

    /// Removes the key and returns its block, shifting later probe-chain entries back.
    mutating func remove(parent: Int32, hash: UInt64) -> Int32? {
        var i = home(parent, hash)
        while true {
            if blocks[i] == 0 { return nil }
            if hashes[i] == hash && parents[i] == parent { break }
            i = (i &+ 1) & mask
        }
        let removed = blocks[i]
        var hole = i
        var j = (i + 1) & mask
        while blocks[j] != 0 {
            let h = home(parents[j], hashes[j])
            // Move j into the hole unless its home lies cyclically in (hole, j].
            let stays = hole <= j ? (h > hole && h <= j) : (h > hole || h <= j)
            if !stays {
                parents[hole] = parents[j]
                hashes[hole] = hashes[j]
                blocks[hole] = blocks[j]
                hole = j
            }
            j = (j + 1) & mask
        }
        blocks[hole] = 0
        count -= 1
        return removed
    }

    /// Every entry, for invariant checks.
    func forEach(_ body: (Int32, UInt64, Int32) -> Void) {
        for i in 0..<storage.size where blocks[i] != 0 { body(parents[i], hashes[i], blocks[i]) }
    }

    /// Every entry is reachable from its home slot without crossing an empty slot.
    func checkInvariants() {
        var n = 0
        for i in 0..<storage.size where blocks[i] != 0 {
            n += 1
            invariant(find(parent: parents[i], hash: hashes[i]) == blocks[i], "ChildMap: entry for block \(blocks[i]) is unreachable from its home slot")
        }
        invariant(n == count, "ChildMap: count \(count) but \(n) slots filled")
    }
}
