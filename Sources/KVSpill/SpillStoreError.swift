import KVCore
import LMDB

/// Why a spill store could not be opened (or inspected).
public enum SpillStoreError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The path holds something that is not a PrefixKV spill store (not LMDB, truncated, garbage,
    /// a plain file, or an LMDB environment of something else).
    case notAStore(path: String, reason: String)
    /// The store was written in another record format version (version 1 records carry no key).
    case unsupportedFormat(path: String, version: Int)
    /// The store holds blocks of another KV layout.
    case layoutMismatch(path: String, stored: KVLayout, expected: KVLayout)
    /// The store holds blocks of another model (``SpillStoreConfiguration/model``): the same
    /// tokens under another model have other K/V.
    case modelMismatch(path: String, stored: String, expected: String)
    /// A configuration value no store can work with (a size limit of 0, a negative queue, …);
    /// nothing was created.
    case invalidConfiguration(path: String, reason: String)
    /// The path (or the file system) is not writable, or not readable.
    case permissionDenied(path: String, LMDBError)
    /// The path does not exist (read-only opens do not create it).
    case notFound(path: String)
    /// This process already has the store open (LMDB forbids a second open per process).
    case alreadyOpen(path: String)
    /// Another process has the store open for writing: a store takes one writer process at a
    /// time (readers, such as `kvctl stats`, are fine beside it).
    case inUse(path: String)
    /// A PrefixKV store whose bookkeeping is damaged beyond what the writer repairs by itself
    /// (an unreadable LRU index): ``LMDBSpillStore/remove(path:)`` clears it; it is a cache.
    case damaged(path: String, reason: String)
    /// Any other failure from LMDB or the system.
    case lmdb(path: String, LMDBError)
    /// The store was closed (``LMDBSpillStore/report()`` after ``LMDBSpillStore/close()``).
    case closed(path: String)

    public var description: String {
        switch self {
        case .notAStore(let p, let why): "\(p) is not a PrefixKV spill store: \(why)"
        case .unsupportedFormat(let p, let v):
            "\(p): unsupported spill store format version \(v) (this build reads \(SpillRecord.formatVersion); the store is a cache: delete it to start afresh)"
        case .layoutMismatch(let p, let s, let e):
            "\(p) holds blocks of layout \(s), expected \(e) (one store per layout: give this one its own directory, or clear the old store with LMDBSpillStore.remove(path:); it is a cache)"
        case .modelMismatch(let p, let s, let e):
            "\(p) holds KV of model \(String(reflecting: s)), expected \(String(reflecting: e)) (one store per model: the same tokens under another model have other K/V; give this model its own directory, or clear the old store with LMDBSpillStore.remove(path:))"
        case .invalidConfiguration(let p, let why): "\(p): invalid spill store configuration: \(why)"
        case .permissionDenied(let p, let e): "\(p): \(e)"
        case .notFound(let p): "\(p): no such store"
        case .alreadyOpen(let p): "\(p) is already open in this process (LMDB allows one handle per process: share the open LMDBSpillStore, or close() it first)"
        case .inUse(let p): "\(p) is open for writing in another process (one writer process per store; kvctl stats reads beside it)"
        case .damaged(let p, let why): "\(p): a damaged spill store (\(why)); it is a cache: remove it to start afresh"
        case .lmdb(let p, let e): "\(p): \(e)"
        case .closed(let p): "\(p): the store is closed"
        }
    }

    /// Classifies a failure to open the LMDB environment at `path`.
    init(opening path: String, _ error: LMDBError) {
        switch error {
        case .invalid, .versionMismatch, .corrupted, .pageNotFound, .notDirectory, .incompatible, .truncatedDataFile:
            self = .notAStore(path: path, reason: error.description)
        case .permissionDenied, .readOnlyFileSystem: self = .permissionDenied(path: path, error)
        case .noSuchFileOrDirectory: self = .notFound(path: path)
        case .alreadyOpenInProcess: self = .alreadyOpen(path: path)
        default: self = .lmdb(path: path, error)
        }
    }
}
