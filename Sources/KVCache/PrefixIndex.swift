import KVCore

/// The prefix tree, block-granular: each cached block is a node whose parent is the block before
/// it in the prefix (or its namespace's root). Children are found through a hash map keyed by
/// (parent, hash of the block's tokens); the caller then compares the tokens themselves, so a
/// hash collision can only cost a miss, never a wrong hit.
///
/// Namespace `k`'s root is the parent code `-(k + 1)`, so two namespaces never share a node.
///
/// Each parent (block or namespace root) also keeps a hint: its most recently inserted child, or
/// none once that child has left the tree (older siblings are then found through the map).
/// Prompts mostly extend a chain, so matching compares the hinted child's tokens first and hashes
/// the block only when they differ: a prefix hit then costs one token comparison per block
/// instead of a hash, a map probe and the comparison.
struct PrefixIndex {
    /// Per-block fields, allocated once for the pool. Raw storage keeps insert and eviction free
    /// of copy-on-write checks; `PrefixIndex` is never copied (it lives in the manager's lock).
    final class Storage {
        let count: Int
        let parent: UnsafeMutablePointer<Int32>
        let hash: UnsafeMutablePointer<UInt64>
        let childCount: UnsafeMutablePointer<Int32>
        let inTree: UnsafeMutablePointer<Bool>
        let namespaceIndex: UnsafeMutablePointer<Int32>
        /// The hinted child of each block (0: none).
        let lastChild: UnsafeMutablePointer<Int32>
        init(count: Int) {
            self.count = count
            parent = .filled(with: 0, count: count)
            hash = .filled(with: 0, count: count)
            childCount = .filled(with: 0, count: count)
            inTree = .filled(with: false, count: count)
            namespaceIndex = .filled(with: -1, count: count)
            lastChild = .filled(with: 0, count: count)
        }
        deinit {
            parent.deallocate()
            hash.deallocate()
            childCount.deallocate()
            inTree.deallocate()
            namespaceIndex.deallocate()
            lastChild.deallocate()
        }
    }

    private(set) var children: ChildMap
    private let storage: Storage
    /// Per block (index = block id, 0 ... capacity), read-only outside the index.
    var parent: UnsafePointer<Int32> { UnsafePointer(storage.parent) }
    var hash: UnsafePointer<UInt64> { UnsafePointer(storage.hash) }
    var childCount: UnsafePointer<Int32> { UnsafePointer(storage.childCount) }
    var inTree: UnsafePointer<Bool> { UnsafePointer(storage.inTree) }
    var namespaceIndex: UnsafePointer<Int32> { UnsafePointer(storage.namespaceIndex) }
    private(set) var nodeCount = 0
    /// The hinted child of each namespace's root (0: none).
    private(set) var rootLastChild: [Int32] = []

    init(capacity: Int) {
        children = ChildMap(maxEntries: capacity)
        storage = Storage(count: capacity + 1)
    }

    @inline(__always) static func rootCode(namespace k: Int32) -> Int32 { -(k + 1) }

    /// The candidate child of `parent` with this token hash (tokens still to be compared).
    @inline(__always) func child(of parent: Int32, hash: UInt64) -> Int32? {
        children.find(parent: parent, hash: hash)
    }

    /// The hinted child of `parent` (0: none): a child in the tree, whose tokens are still to be compared.
    @inline(__always) func hintedChild(of parent: Int32) -> Int32 {
        if parent > 0 { return storage.lastChild[Int(parent)] }
        let k = Int(-parent - 1)
        return k < rootLastChild.count ? rootLastChild[k] : 0
    }

    @inline(__always) private mutating func setHint(of parent: Int32, to block: Int32) {
        if parent > 0 { storage.lastChild[Int(parent)] = block; return }
        let k = Int(-parent - 1)
        if k >= rootLastChild.count { rootLastChild.append(contentsOf: repeatElement(0, count: k + 1 - rootLastChild.count)) }
        rootLastChild[k] = block
    }

    /// Inserts `block` under `parent`; false (nothing changed) when that slot is taken, by an
    /// equal block or by a colliding one.
    mutating func insert(_ block: Int32, parent p: Int32, hash h: UInt64, namespace k: Int32) -> Bool {
        let i = Int(block)
        invariant(!inTree[i], "PrefixIndex: block \(block) inserted twice")
        invariant(p < 0 || inTree[Int(p)], "PrefixIndex: parent \(p) of block \(block) is not in the tree")
        guard children.insert(parent: p, hash: h, block: block) else { return false }
        storage.parent[i] = p
        storage.hash[i] = h
        storage.inTree[i] = true
        storage.namespaceIndex[i] = k
        storage.childCount[i] = 0
        if p > 0 { storage.childCount[Int(p)] += 1 }
        setHint(of: p, to: block)
        nodeCount += 1
        return true
    }

    /// Removes a leaf (eviction takes leaves only).
    mutating func removeLeaf(_ block: Int32) {
        let i = Int(block)
        invariant(inTree[i], "PrefixIndex: evicting block \(block) that is not in the tree")
        invariant(childCount[i] == 0, "PrefixIndex: evicting block \(block) with \(childCount[i]) cached children (not a leaf)")
        let removed = children.remove(parent: parent[i], hash: hash[i])
        invariant(removed == block, "PrefixIndex: map slot of block \(block) holds \(String(describing: removed))")
        if parent[i] > 0 { storage.childCount[Int(parent[i])] -= 1 }
        if hintedChild(of: parent[i]) == block { setHint(of: parent[i], to: 0) }
        storage.inTree[i] = false
        storage.namespaceIndex[i] = -1
        nodeCount -= 1
    }

    /// Checks that the map and the per-block fields agree and child counts are exact.
    func checkInvariants() {
        invariant(children.count == nodeCount, "PrefixIndex: map has \(children.count) entries, nodeCount \(nodeCount)")
        children.checkInvariants()
        var counts = [Int32](repeating: 0, count: storage.count)
        children.forEach { keyParent, keyHash, block in
            let i = Int(block)
            invariant(inTree[i], "PrefixIndex: map names block \(block) that is not in the tree")
            invariant(parent[i] == keyParent && hash[i] == keyHash, "PrefixIndex: block \(block) fields disagree with its map key")
            if keyParent > 0 {
                invariant(inTree[Int(keyParent)], "PrefixIndex: block \(block) has parent \(keyParent) outside the tree")
                invariant(namespaceIndex[Int(keyParent)] == namespaceIndex[i], "PrefixIndex: block \(block) and its parent are in different namespaces")
                counts[Int(keyParent)] += 1
            } else {
                invariant(keyParent == PrefixIndex.rootCode(namespace: namespaceIndex[i]), "PrefixIndex: root block \(block) hangs under another namespace's root")
            }
        }
        for i in counts.indices where inTree[i] {
            invariant(counts[i] == childCount[i], "PrefixIndex: block \(i) childCount \(childCount[i]) but has \(counts[i]) children")
        }
        // A hint names a child of its parent in the tree, or nothing.
        func checkHint(_ hint: Int32, parent p: Int32) {
            guard hint != 0 else { return }
            invariant(hint > 0 && Int(hint) < storage.count && inTree[Int(hint)] && parent[Int(hint)] == p,
                         "PrefixIndex: the hinted child \(hint) of \(p) is not a child of it in the tree")
        }
        for i in 0..<storage.count where storage.lastChild[i] != 0 {
            invariant(inTree[i], "PrefixIndex: block \(i) outside the tree hints child \(storage.lastChild[i])")
            checkHint(storage.lastChild[i], parent: Int32(i))
        }
        for (k, hint) in rootLastChild.enumerated() { checkHint(hint, parent: PrefixIndex.rootCode(namespace: Int32(k))) }
    }
}
