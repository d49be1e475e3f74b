import CLMDB

/// B-tree statistics of one database (`MDB_stat`).
public struct Stat: Sendable, Hashable {
    public var pageSize: Int
    public var depth: Int
    public var branchPages: Int
    public var leafPages: Int
    public var overflowPages: Int
    public var entries: Int

    /// Bytes of pages the database occupies.
    public var bytes: Int { (branchPages + leafPages + overflowPages) * pageSize }

    init(_ s: MDB_stat) {
        pageSize = Int(s.ms_psize)
        depth = Int(s.ms_depth)
        branchPages = s.ms_branch_pages
        leafPages = s.ms_leaf_pages
        overflowPages = s.ms_overflow_pages
        entries = s.ms_entries
    }
}

/// Environment information (`MDB_envinfo`).
public struct Info: Sendable, Hashable {
    public var mapSize: Int
    /// The last page in use: `(lastPageNumber + 1) × pageSize` bytes of the map are used.
    public var lastPageNumber: Int
    public var lastTransactionID: Int
    public var maxReaders: Int
    public var readersUsed: Int

    init(_ i: MDB_envinfo) {
        mapSize = i.me_mapsize
        lastPageNumber = i.me_last_pgno
        lastTransactionID = i.me_last_txnid
        maxReaders = Int(i.me_maxreaders)
        readersUsed = Int(i.me_numreaders)
    }
}

/// A named (or the main) database of an environment. Cheap to copy; valid until the environment closes.
public struct Database: Sendable, Hashable {
    let dbi: MDB_dbi
    public let name: String?
}
