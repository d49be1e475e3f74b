import KVCore

/// Which blocks hold finished KV, and for what content: the stress test checks a block only once
/// its writer has published it, since the cache contract lets another request hit a block before
/// its engine has written it.
///
/// An entry names the content (a fingerprint of the block's position in its sequence and its
/// first `slots` tokens). A reader checks a block only when the entry matches its own tokens, so
/// a stale entry (a block freed without eviction, say a partial block, then reused) can only cause
/// a skipped check, never a false alarm. Evictions drop entries through the manager's `onEvict`
/// hook, which keeps the map to live blocks.
final class PublishedBlocks: Sendable {
    struct Entry: Equatable {
        var fingerprint: UInt64
        var slots: Int
    }

    private let entries = Locked<[Int32: Entry]>([:])

    /// The fingerprint of block `index` of a sequence holding `tokens`, over its first `slots` tokens.
    static func fingerprint(_ tokens: [TokenID], blockIndex index: Int, slots: Int, blockSize: Int) -> UInt64 {
        var h = UInt64(index) &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(slots)
        for t in tokens[(index * blockSize)..<(index * blockSize + slots)] {
            h = (h ^ UInt64(UInt32(bitPattern: t))) &* 0xFF51_AFD7_ED55_8CCD
            h ^= h >> 29
        }
        return h
    }

    /// Records that `block` now holds finished KV for this content.
    func publish(_ block: Int32, _ entry: Entry) { entries.withLock { $0[block] = entry } }

    /// Forgets an evicted block (called under the manager's lock: it must not call the manager).
    func evicted(_ block: BlockID) { _ = entries.withLock { $0.removeValue(forKey: block.rawValue) } }

    /// The entries of these blocks, read in one lock hold.
    func entries(of blocks: [Int32]) -> [Entry?] { entries.withLock { e in blocks.map { e[$0] } } }
}
