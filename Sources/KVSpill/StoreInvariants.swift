import KVCache
import KVCore
import LMDB

extension StoreWriter {
    /// Checks, on the committed state and with writes held off, that the three databases agree:
    /// every entry has exactly one `access` sequence whose `lru` slot names it back, nothing
    /// else is in `lru` or `access`, the record sizes add up to meta `bytes` and to the
    /// writer's count and stay within the limit, and the map is within
    /// ``mapSizeLimit``, with every page in use inside it. Traps naming the broken invariant;
    /// returns the entry count.
    @discardableResult
    func checkInvariants() -> Int {
        let db = store
        return withStateLocked { state in
            do {
                return try db.env.withReadTransaction { txn in
                    let entries = try txn.stat(db.entries).entries
                    let lru = try txn.stat(db.lru).entries, access = try txn.stat(db.access).entries
                    invariant(lru == entries, "spill store: lru has \(lru) entries, entries has \(entries)")
                    invariant(access == entries, "spill store: access has \(access) entries, entries has \(entries)")
                    var bytes = 0
                    try txn.forEach(in: db.entries) { key, value in
                        bytes += value.count
                        let seq = try txn.copyValue(for: key, in: db.access)
                        invariant(seq != nil, "spill store: entry \(PrefixKey(bytes: key)) has no access sequence")
                        invariant(seq!.count == 8, "spill store: the access value of entry \(PrefixKey(bytes: key)) is no sequence (\(seq!.count) bytes)")
                        let back = try txn.withValue(for: seq!, in: db.lru) { $0.elementsEqual(key) }
                        invariant(back == true, "spill store: the lru slot of entry \(PrefixKey(bytes: key)) does not name it")
                        return true
                    }
                    try txn.forEach(in: db.lru) { seq, key in
                        let linked = try txn.withValue(for: key, in: db.access) { $0.elementsEqual(seq) }
                        invariant(linked == true, "spill store: lru slot for \(PrefixKey(bytes: key)) is not its access sequence")
                        return true
                    }
                    let metaBytes = try db.readBytes(txn)
                    invariant(metaBytes == bytes, "spill store: meta bytes \(metaBytes.map(String.init) ?? "unreadable"), records add up to \(bytes)")
                    invariant(state.bytes == bytes, "spill store: writer counts \(state.bytes) bytes, records add up to \(bytes)")
                    invariant(bytes <= state.limitBytes, "spill store: \(bytes) bytes stored over the limit of \(state.limitBytes)")
                    let info = try db.env.info()
                    // (A store reopened with a smaller limit keeps the map it had: LMDB never shrinks one.)
                    invariant(info.mapSize <= max(mapSizeLimit, openedMapSize),
                                 "spill store: the map (\(info.mapSize) bytes) outgrew its ceiling \(mapSizeLimit)")
                    let used = (info.lastPageNumber + 1) * (try txn.stat(db.entries).pageSize)
                    invariant(used <= info.mapSize, "spill store: \(used) bytes of pages in use beyond the map of \(info.mapSize)")
                    return entries
                }
            } catch {
                fatalError("spill store: invariant check could not read the store: \(error)")
            }
        }
    }
}

extension LMDBSpillStore {
    /// Traps naming the first broken invariant of the committed store (see `StoreWriter.checkInvariants`).
    /// Returns the number of committed entries. Call after ``flush()`` to include queued spills.
    /// A closed store has nothing open to check and returns 0 (it answers like an empty one).
    @discardableResult
    public func checkInvariants() -> Int { isOpen ? writer.checkInvariants() : 0 }
}
