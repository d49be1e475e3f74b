import CLMDB
import Glibc

/// An error LMDB (or the system underneath it) reported, modeled on swift-system's `Errno`:
/// a raw `Int32` code with Swift names, described by `mdb_strerror`.
///
/// LMDB returns its own codes (`MDB_MAP_FULL`, …) and plain `errno` values (`ENOENT`, `ENOSPC`,
/// …) through the same `int`, so one type covers both. Match it like `Errno`:
///
/// ```swift
/// do { try txn.put(value, for: key, in: db) }
/// catch LMDBError.mapFull { /* abort, grow, retry */ }
/// ```
public struct LMDBError: Error, RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }
    @usableFromInline init(_ code: Int32) { self.rawValue = code }

    public var description: String {
        if self == .alreadyOpenInProcess {
            return "The environment is already open in this process (LMDB forbids opening it twice)"
        }
        if self == .environmentClosed { return "The environment is closed" }
        if self == .nestedWriteTransaction {
            return "A write transaction was begun inside another write transaction of the same environment on the same thread"
        }
        if self == .truncatedDataFile {
            return "The data file is shorter than the pages its meta page records (truncated copy, or the disk filled while copying)"
        }
        return String(cString: mdb_strerror(rawValue))
    }

    /// Whether the code is one of LMDB's own (as opposed to an `errno` value).
    public var isLMDBCode: Bool { rawValue >= MDB_KEYEXIST && rawValue <= MDB_LAST_ERRCODE }

    /// Lets `catch LMDBError.mapFull` match any thrown error.
    public static func ~= (lhs: LMDBError, rhs: any Error) -> Bool {
        (rhs as? LMDBError) == lhs
    }

    // MARK: - LMDB codes

    /// Key/data pair already exists. The corresponding LMDB code is `MDB_KEYEXIST`.
    public static var keyExist: LMDBError { LMDBError(MDB_KEYEXIST) }
    /// Key/data pair not found (EOF). The corresponding LMDB code is `MDB_NOTFOUND`.
    public static var notFound: LMDBError { LMDBError(MDB_NOTFOUND) }
    /// Requested page not found: usually corruption. The corresponding LMDB code is `MDB_PAGE_NOTFOUND`.
    public static var pageNotFound: LMDBError { LMDBError(MDB_PAGE_NOTFOUND) }
    /// Located page was the wrong type. The corresponding LMDB code is `MDB_CORRUPTED`.
    public static var corrupted: LMDBError { LMDBError(MDB_CORRUPTED) }
    /// Update of the meta page failed or the environment had a fatal error. The corresponding LMDB code is `MDB_PANIC`.
    public static var panic: LMDBError { LMDBError(MDB_PANIC) }
    /// The file was written by an incompatible LMDB version. The corresponding LMDB code is `MDB_VERSION_MISMATCH`.
    public static var versionMismatch: LMDBError { LMDBError(MDB_VERSION_MISMATCH) }
    /// The file is not a valid LMDB file. The corresponding LMDB code is `MDB_INVALID`.
    public static var invalid: LMDBError { LMDBError(MDB_INVALID) }
    /// The environment's map size is reached. The corresponding LMDB code is `MDB_MAP_FULL`.
    public static var mapFull: LMDBError { LMDBError(MDB_MAP_FULL) }
    /// The environment's maximum number of named databases is reached. The corresponding LMDB code is `MDB_DBS_FULL`.
    public static var databasesFull: LMDBError { LMDBError(MDB_DBS_FULL) }
    /// The environment's reader table is full. The corresponding LMDB code is `MDB_READERS_FULL`.
    public static var readersFull: LMDBError { LMDBError(MDB_READERS_FULL) }
    /// The transaction has too many dirty pages. The corresponding LMDB code is `MDB_TXN_FULL`.
    public static var txnFull: LMDBError { LMDBError(MDB_TXN_FULL) }
    /// Internal: cursor stack too deep. The corresponding LMDB code is `MDB_CURSOR_FULL`.
    public static var cursorFull: LMDBError { LMDBError(MDB_CURSOR_FULL) }
    /// Internal: page has not enough space. The corresponding LMDB code is `MDB_PAGE_FULL`.
    public static var pageFull: LMDBError { LMDBError(MDB_PAGE_FULL) }
    /// Another process grew the map beyond this process's map size. The corresponding LMDB code is `MDB_MAP_RESIZED`.
    public static var mapResized: LMDBError { LMDBError(MDB_MAP_RESIZED) }
    /// The operation and the database are incompatible. The corresponding LMDB code is `MDB_INCOMPATIBLE`.
    public static var incompatible: LMDBError { LMDBError(MDB_INCOMPATIBLE) }
    /// Invalid reuse of a reader lock-table slot. The corresponding LMDB code is `MDB_BAD_RSLOT`.
    public static var badReaderSlot: LMDBError { LMDBError(MDB_BAD_RSLOT) }
    /// The transaction must abort, has a child, or is invalid. The corresponding LMDB code is `MDB_BAD_TXN`.
    public static var badTxn: LMDBError { LMDBError(MDB_BAD_TXN) }
    /// Unsupported size of key, database name or data. The corresponding LMDB code is `MDB_BAD_VALSIZE`.
    public static var badValueSize: LMDBError { LMDBError(MDB_BAD_VALSIZE) }
    /// The database handle changed unexpectedly. The corresponding LMDB code is `MDB_BAD_DBI`.
    public static var badDBI: LMDBError { LMDBError(MDB_BAD_DBI) }

    // MARK: - errno values LMDB passes through

    /// No such file or directory. The corresponding C error is `ENOENT`.
    public static var noSuchFileOrDirectory: LMDBError { LMDBError(ENOENT) }
    /// Permission denied (also: a write in a read-only transaction). The corresponding C error is `EACCES`.
    public static var permissionDenied: LMDBError { LMDBError(EACCES) }
    /// No space left on device. The corresponding C error is `ENOSPC`.
    public static var noSpace: LMDBError { LMDBError(ENOSPC) }
    /// Input/output error. The corresponding C error is `EIO`.
    public static var ioError: LMDBError { LMDBError(EIO) }
    /// Disk quota exceeded: a full disk for this user (LMDB passes a write's `errno` through).
    /// The corresponding C error is `EDQUOT`.
    public static var diskQuotaExceeded: LMDBError { LMDBError(EDQUOT) }
    /// Out of memory. The corresponding C error is `ENOMEM`.
    public static var noMemory: LMDBError { LMDBError(ENOMEM) }
    /// Invalid argument. The corresponding C error is `EINVAL`.
    public static var invalidArgument: LMDBError { LMDBError(EINVAL) }
    /// Resource temporarily unavailable (a lock is held). The corresponding C error is `EAGAIN`.
    public static var resourceTemporarilyUnavailable: LMDBError { LMDBError(EAGAIN) }
    /// Not a directory (the path of a sub-directory environment is a file). The corresponding C error is `ENOTDIR`.
    public static var notDirectory: LMDBError { LMDBError(ENOTDIR) }
    /// Read-only file system. The corresponding C error is `EROFS`.
    public static var readOnlyFileSystem: LMDBError { LMDBError(EROFS) }
    /// Device or resource busy. The corresponding C error is `EBUSY`.
    public static var busy: LMDBError { LMDBError(EBUSY) }

    // MARK: - This wrapper's own

    /// The path is already open in this process. LMDB's POSIX locks are per process: a second
    /// handle would share them, and closing it would silently drop the first handle's locks.
    /// A code below LMDB's range (`MDB_KEYEXIST` is -30799), never returned by LMDB or errno.
    public static var alreadyOpenInProcess: LMDBError { LMDBError(-30900) }
    /// The environment was closed: every call afterwards answers this instead of touching freed memory.
    public static var environmentClosed: LMDBError { LMDBError(-30901) }
    /// The data file ends before the last page its meta page names (LMDB 0.9 does not check, and
    /// reading a page past the end of a mapped file is SIGBUS). Checked at open.
    public static var truncatedDataFile: LMDBError { LMDBError(-30902) }
    /// A write transaction was begun on a thread that already has one on this environment (a
    /// nested ``Environment/withWriteTransaction(_:)``, or `openDatabase(_:create: true)` inside
    /// one). LMDB's writer lock is not recursive: the inner `mdb_txn_begin` would wait forever.
    public static var nestedWriteTransaction: LMDBError { LMDBError(-30903) }
}
