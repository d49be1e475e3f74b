import Foundation
import KVCache
import KVCore
import LMDB

/// The spill store's LMDB environment and its four databases:
///
/// - `entries`: prefix key (32 bytes) → record (``SpillRecord``)
/// - `lru`: access sequence (u64 big-endian, so keys sort by age) → prefix key
/// - `access`: prefix key → its current access sequence (to find its `lru` entry)
/// - `meta`: `format`, `layout` (JSON), `model` (UTF-8; absent in stores created before it: ""),
///   `bytes` (sum of record sizes), `stats` (JSON)
///
/// `lru` and `access` are written in the same transactions as `entries`, so they agree after
/// any crash; ``checkInvariants()`` verifies it.
final class StoreDatabase: @unchecked Sendable {
    let env: Environment
    let entries: Database, lru: Database, access: Database, meta: Database
    let path: String
    let layout: KVLayout
    /// The model identity the store was created under (``SpillStoreConfiguration/model``).
    let model: String
    /// Held while open for writing: one writer process per store.
    private var writerLock: WriterLock?

    enum MetaKey {
        static let format = "format", layout = "layout", model = "model", bytes = "bytes", stats = "stats"
    }

    private init(env: Environment, path: String, layout: KVLayout, model: String, dbs: [Database]) {
        self.env = env
        self.path = path
        self.layout = layout
        self.model = model
        (entries, lru, access, meta) = (dbs[0], dbs[1], dbs[2], dbs[3])
    }

    /// Opens the store for writing (creating the directory and the databases when new) and checks
    /// its format, layout and model.
    static func openForWriting(_ config: SpillStoreConfiguration) throws(SpillStoreError) -> StoreDatabase {
        let path = config.path
        if mkdir(path, 0o755) != 0 && errno != EEXIST {
            let error = LMDBError(rawValue: errno)
            // A missing parent is fine to create; anything else (no permission, read-only file
            // system) is the answer.
            if errno != ENOENT { throw SpillStoreError(opening: path, error) }
            do { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) } catch {
                throw SpillStoreError(opening: path, .noSuchFileOrDirectory)
            }
        }
        // The writer lock first, before LMDB creates or opens any file: a `remove` in another
        // process takes the same lock, so it can never unlink files a writer has open.
        let lock: WriterLock
        do { lock = try WriterLock(storePath: path) } catch .inUse where Environment.isOpenInProcess(path: path) {
            throw .alreadyOpen(path: path)  // this process's own writer holds it
        }
        let env: Environment
        do {
            env = try Environment(path: path, configuration: .init(
                mapSize: min(config.mapSizeLimit, config.initialMapSizeBytes), maxDatabases: 8,
                flags: config.durable ? [.noTLS, .noMetaSync] : [.noTLS, .noSync]))
        } catch {
            lock.release()
            throw SpillStoreError(opening: path, error)
        }
        do throws(SpillStoreError) {
            let store = try openOrCreate(env, config)
            store.writerLock = lock
            return store
        } catch {
            env.close()  // idempotent: a refused store closed it already
            lock.release()
            throw error
        }
    }

    /// Creates the databases in an empty environment, or opens and checks an existing store.
    private static func openOrCreate(_ env: Environment, _ config: SpillStoreConfiguration) throws(SpillStoreError) -> StoreDatabase {
        let path = config.path
        do {
            if try isNewOrHalfCreated(env) {
                // One transaction: a crash leaves either no store or a whole one.
                let layoutJSON = try JSONEncoder().encode(config.layout)
                let (dbs, _) = try env.withNewDatabases(names) { txn, dbs in
                    try txn.put(le(UInt32(SpillRecord.formatVersion)), for: MetaKey.format, in: dbs[3])
                    try txn.put(Array(layoutJSON), for: MetaKey.layout, in: dbs[3])
                    try txn.put(Array(config.model.utf8), for: MetaKey.model, in: dbs[3])
                    try txn.put(le(UInt64(0)), for: MetaKey.bytes, in: dbs[3])
                }
                return StoreDatabase(env: env, path: path, layout: config.layout, model: config.model, dbs: dbs)
            }
            let store = try openExisting(env: env, path: path)
            guard store.layout == config.layout else {
                store.close()
                throw SpillStoreError.layoutMismatch(path: path, stored: store.layout, expected: config.layout)
            }
            guard store.model == config.model else {
                store.close()
                throw SpillStoreError.modelMismatch(path: path, stored: store.model, expected: config.model)
            }
            return store
        } catch let error as SpillStoreError {
            throw error
        } catch {
            throw SpillStoreError.lmdb(path: path, error as? LMDBError ?? .invalid)
        }
    }

    static let names = ["entries", "lru", "access", "meta"]

    /// Whether the environment is empty, or holds only a store creation cut short by a crash
    /// (stores before one-transaction creation committed each database separately, then meta):
    /// nothing but some of the store's databases, no format record, no entries. Either way it
    /// holds nothing to lose, so it is (re)created. Anything else is opened and validated.
    private static func isNewOrHalfCreated(_ env: Environment) throws -> Bool {
        let main = try env.openDatabase(nil)
        var present: Set<String> = []
        try env.withReadTransaction { txn in
            try txn.forEach(in: main) { key, _ in
                present.insert(String(decoding: key, as: UTF8.self))
                return true
            }
        }
        guard present.isSubset(of: names) else { return false }
        if present.contains("meta") {
            let meta = try env.openDatabase("meta")
            if try env.withReadTransaction({ txn in try txn.contains(MetaKey.format, in: meta) }) { return false }
        }
        if present.contains("entries") {
            let entries = try env.openDatabase("entries")
            if try env.withReadTransaction({ txn in try txn.stat(entries).entries }) > 0 { return false }
        }
        return true
    }

    /// Opens an existing store read-only (beside a process that writes it), for inspection.
    static func openReadOnly(path: String) throws(SpillStoreError) -> StoreDatabase {
        // Check first: LMDB would create `lock.mdb` in any directory it is pointed at. stat, not
        // fileExists: a directory we may not search is a permission problem, not a missing store.
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw errno == ENOENT ? .notFound(path: path) : SpillStoreError(opening: path, LMDBError(rawValue: errno))
        }
        guard info.st_mode & S_IFMT == S_IFDIR else { throw .notAStore(path: path, reason: "not a directory") }
        guard stat(path + "/data.mdb", &info) == 0 else {
            throw errno == ENOENT ? .notAStore(path: path, reason: "no data.mdb")
                                  : SpillStoreError(opening: path + "/data.mdb", LMDBError(rawValue: errno))
        }
        guard info.st_size > 0 else { throw .notAStore(path: path, reason: "an empty data.mdb") }
        // LMDB creates lock.mdb on open: when the directory turns out not to be a store, the
        // inspection takes back the lock file it made (one that was there belongs to someone).
        let lockPath = path + "/lock.mdb"
        let madeLockFile = stat(lockPath, &info) != 0 && errno == ENOENT
        func notAStoreAfterAll(_ error: SpillStoreError) -> SpillStoreError {
            switch error {
            case .notAStore, .unsupportedFormat: if madeLockFile { unlink(lockPath) }
            default: break
            }
            return error
        }
        let env: Environment
        do {
            env = try Environment(path: path, configuration: .init(mapSize: 0, maxDatabases: 8, flags: [.noTLS, .readOnly]))
        } catch .permissionDenied where isReadable(path + "/data.mdb") {
            // Readers register in lock.mdb, so they must be able to create or write it.
            throw .permissionDenied(path: path + "/lock.mdb (a reader must be able to create or write it)", .permissionDenied)
        } catch { throw notAStoreAfterAll(SpillStoreError(opening: path, error)) }
        do {
            return try openExisting(env: env, path: path)
        } catch let error as SpillStoreError {
            env.close()
            throw notAStoreAfterAll(error)
        } catch {
            env.close()
            throw SpillStoreError.lmdb(path: path, error as? LMDBError ?? .invalid)
        }
    }

    /// Opens the four databases of an environment that must already be a store, and reads its
    /// layout and model.
    private static func openExisting(env: Environment, path: String) throws -> StoreDatabase {
        let dbs = try names.map { name throws(SpillStoreError) in try openNamed(name, env: env, path: path) }
        let (format, layoutJSON, modelBytes) = try env.withReadTransaction { txn in
            (try txn.copyValue(for: MetaKey.format, in: dbs[3]), try txn.copyValue(for: MetaKey.layout, in: dbs[3]),
             try txn.copyValue(for: MetaKey.model, in: dbs[3]))
        }
        guard let format, format.count == 4 else { throw SpillStoreError.notAStore(path: path, reason: "no format record") }
        let version = Int(format.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) })
        guard version == Int(SpillRecord.formatVersion) else { throw SpillStoreError.unsupportedFormat(path: path, version: version) }
        guard let layoutJSON, let layout = try? JSONDecoder().decode(KVLayout.self, from: Data(layoutJSON)) else {
            throw SpillStoreError.notAStore(path: path, reason: "no readable layout record")
        }
        let model = modelBytes.map { String(decoding: $0, as: UTF8.self) } ?? ""
        return StoreDatabase(env: env, path: path, layout: layout, model: model, dbs: dbs)
    }

    /// Opens one of the store's databases; its absence means the environment is not a store.
    /// (A helper rather than a `do`/`catch` in a loop: Swift 6.3 hangs compiling that with typed throws.)
    private static func openNamed(_ name: String, env: Environment, path: String) throws(SpillStoreError) -> Database {
        do { return try env.openDatabase(name) } catch {
            if error == .notFound || error == .incompatible {
                throw .notAStore(path: path, reason: "an LMDB environment without a '\(name)' database")
            }
            throw .lmdb(path: path, error)
        }
    }

    func close() {
        env.close()
        writerLock?.release()
    }

    /// Removes the store's files (`data.mdb`, `lock.mdb`; the directory and anything else in it
    /// stay) so the next open starts empty. Refuses, changing nothing, when another process has
    /// the store open for writing (`.inUse`), or when the path holds an LMDB environment or file
    /// that is not a PrefixKV store (`.notAStore`: not ours to delete). A missing store is fine,
    /// and so is an empty `data.mdb` (a creation cut short).
    static func remove(path: String) throws(SpillStoreError) {
        let data = path + "/data.mdb", lockFile = path + "/lock.mdb"
        var info = stat()
        let hasData = stat(data, &info) == 0
        if !hasData && errno != ENOENT { throw SpillStoreError(opening: path, LMDBError(rawValue: errno)) }
        let hadLockFile = exists(lockFile)
        guard hasData || hadLockFile else { return }  // nothing of a store here
        if hasData && info.st_size > 0 {
            // Ours to delete? (A read-only open, beside any writer.) Refused: leave no lock.mdb
            // of our own behind in somebody else's directory.
            do { try openReadOnly(path: path).close() } catch .unsupportedFormat {
                // ours, of another format version
            } catch {
                if !hadLockFile { unlink(lockFile) }
                if case .notAStore(let p, let why) = error { throw .notAStore(path: p, reason: why + "; not removed") }
                throw error
            }
        }
        // Writers take this lock before opening anything, so holding it, no writer has the
        // files open or can open them until they are gone.
        let lock = try WriterLock(storePath: path)
        defer { lock.release() }
        for file in [data, lockFile] where unlink(file) != 0 && errno != ENOENT {
            throw .lmdb(path: file, LMDBError(rawValue: errno))
        }
    }

    // MARK: - Small reads

    /// The committed sum of record sizes as the meta record states it: 0 when absent, nil when
    /// the record is damaged (not 8 bytes, or beyond `Int`) — stored bytes are data read from
    /// disk, and a damaged store is an input to handle, not a reason to trap.
    func readBytes(_ txn: borrowing Transaction) throws -> Int? {
        try txn.withValue(for: MetaKey.bytes, in: meta) { v -> Int? in
            guard v.count == 8 else { return nil }
            let n = UInt64(littleEndian: v.loadUnaligned(as: UInt64.self))
            return n <= UInt64(Int.max) ? Int(n) : nil
        } ?? 0
    }

    /// The sum of the entries' value sizes: what the meta record should state. A writer recounts
    /// when a damaged store's sizes stop adding up (one cursor walk over `entries`).
    func countBytes(_ txn: borrowing Transaction) throws -> Int {
        var total = 0
        try txn.forEach(in: entries) { _, value in
            total += value.count
            return true
        }
        return total
    }

    /// The next access sequence: one past the newest in `lru`. A damaged newest key (not 8 bytes,
    /// or the last sequence there is) is `.damaged`: the writer cannot number new accesses.
    func nextSequence(_ txn: borrowing Transaction) throws -> UInt64 {
        let newest = try txn.withCursor(lru) { c in
            try c.last { k, _ -> UInt64? in k.count == 8 ? UInt64(bigEndian: k.loadUnaligned(as: UInt64.self)) : nil }
        }
        guard let newest else { return 0 }
        guard let newest, newest < .max else { throw SpillStoreError.damaged(path: path, reason: "the newest LRU sequence is unreadable") }
        return newest + 1
    }

    /// The stats record: nil when none was published yet; a record that does not decode is
    /// `.failure` (a damaged store is not one with nothing published).
    func storedStats() throws -> Result<PublishedStats, any Error>? {
        let json = try env.withReadTransaction { txn in try txn.copyValue(for: MetaKey.stats, in: meta) }
        return json.map { bytes in Result { try JSONDecoder().decode(PublishedStats.self, from: Data(bytes)) } }
    }
}

func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
func be<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.bigEndian) { Array($0) } }

func nowMillis() -> UInt64 { UInt64(Date().timeIntervalSince1970 * 1000) }

/// Whether this process may read `path` (outside `StoreDatabase`, whose `access` database would
/// shadow the system call).
private func isReadable(_ path: String) -> Bool { access(path, R_OK) == 0 }

/// Whether `path` exists (see `isReadable`).
private func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }
