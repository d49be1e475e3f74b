import CLMDB
import Glibc
import Synchronization

/// One LMDB environment: a memory-mapped file holding named databases, shared safely between
/// threads of this process and with other processes.
///
/// Open an environment at most once per process (the initializer enforces it, see
/// ``LMDBError/alreadyOpenInProcess``) and share the instance. All access goes through scoped
/// transactions: ``withReadTransaction(_:)`` and ``withWriteTransaction(_:)``.
public final class Environment: @unchecked Sendable {
    /// Environment flags (`MDB_*` on `mdb_env_open`).
    public struct Flags: OptionSet, Sendable, Hashable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        /// The path names the data file itself (lock file beside it, `-lock` suffix), not a directory.
        public static let noSubdirectory = Flags(rawValue: UInt32(MDB_NOSUBDIR))
        /// Open read-only: no write transactions; works beside another process that writes.
        public static let readOnly = Flags(rawValue: UInt32(MDB_RDONLY))
        /// Don't fsync on commit: a process crash loses nothing, an OS crash may lose the last commits.
        public static let noSync = Flags(rawValue: UInt32(MDB_NOSYNC))
        /// Don't fsync the meta page on commit (one fsync instead of two; an OS crash may undo the last commit).
        public static let noMetaSync = Flags(rawValue: UInt32(MDB_NOMETASYNC))
        /// Write through a writable map instead of `pwrite` (faster, but stray pointer writes can corrupt the file).
        public static let writeMap = Flags(rawValue: UInt32(MDB_WRITEMAP))
        /// Tie read transactions to the transaction object, not the thread, so they may end on
        /// another thread and a thread may hold several. Set by default here.
        public static let noTLS = Flags(rawValue: UInt32(MDB_NOTLS))
        /// Don't use read-ahead on the map (helps random reads when the file is larger than RAM).
        public static let noReadAhead = Flags(rawValue: UInt32(MDB_NORDAHEAD))
        /// Don't zero malloc'd pages before writing them.
        public static let noMemoryInit = Flags(rawValue: UInt32(MDB_NOMEMINIT))
    }

    public struct Configuration: Sendable {
        /// The size of the memory map, which bounds the file (rounded to pages). Grow it later with ``Environment/setMapSize(_:)``.
        public var mapSize: Int
        /// Named databases the environment may hold.
        public var maxDatabases: Int
        /// Concurrent read transactions across all processes.
        public var maxReaders: Int
        public var flags: Flags
        /// Permissions of files LMDB creates.
        public var mode: mode_t

        public init(mapSize: Int = 64 << 20, maxDatabases: Int = 8, maxReaders: Int = 126,
                    flags: Flags = [.noTLS], mode: mode_t = 0o644) {
            self.mapSize = mapSize
            self.maxDatabases = maxDatabases
            self.maxReaders = maxReaders
            self.flags = flags
            self.mode = mode
        }
    }

    let handle: OpaquePointer
    let faults: FaultInjector
    let gate = TransactionGate()
    private let identity: OpenPaths.Identity
    private let isClosed = Atomic<Bool>(false)
    /// Serializes `mdb_dbi_open`, which LMDB forbids from two threads at once. (An `Int`, not
    /// `Void`: a zero-size value shares its address with the mutex pointer, and ThreadSanitizer
    /// reports the lock's own read of that pointer as racing the access to the value.)
    private let databaseOpening = Locked<Int>(0)

    public let path: String
    public let flags: Flags
    public var isReadOnly: Bool { flags.contains(.readOnly) }
    /// Reader slots of dead processes that `mdb_reader_check` freed when this environment opened.
    public let staleReadersCleared: Int

    /// Opens (creating if needed, unless read-only) the environment at `path`: a directory that
    /// must exist, or the data file with ``Flags/noSubdirectory``.
    public convenience init(path: String, configuration: Configuration = Configuration()) throws(LMDBError) {
        try self.init(path: path, configuration: configuration, faults: FaultInjector())
    }

    init(path: String, configuration: Configuration, faults: FaultInjector) throws(LMDBError) {
        var env: OpaquePointer?
        try check(mdb_env_create(&env))
        let handle = env!
        let c = configuration
        do throws(LMDBError) {
            try check(faults.call(.envSetMapSize) { mdb_env_set_mapsize(handle, c.mapSize) })
            try check(mdb_env_set_maxdbs(handle, MDB_dbi(c.maxDatabases)))
            try check(mdb_env_set_maxreaders(handle, UInt32(c.maxReaders)))
            let createsFile = c.flags.contains(.noSubdirectory) && !c.flags.contains(.readOnly)
            let identity = try OpenPaths.register(path: path, createFile: createsFile) { () throws(LMDBError) in
                try check(faults.call(.envOpen) { mdb_env_open(handle, path, c.flags.rawValue, c.mode) })
            }
            // Free the reader slots of processes that died inside a read transaction: they would
            // otherwise pin old pages forever and make the file grow.
            var dead: Int32 = 0
            let rc = faults.call(.readerCheck) { mdb_reader_check(handle, &dead) }
            if rc != 0 { OpenPaths.release(identity); throw LMDBError(rawValue: rc) }
            do throws(LMDBError) { try Self.checkFileLength(handle) } catch { OpenPaths.release(identity); throw error }
            self.identity = identity
            self.staleReadersCleared = Int(dead)
        } catch {
            mdb_env_close(handle)
            throw error
        }
        self.handle = handle
        self.faults = faults
        self.path = path
        self.flags = c.flags
    }

    /// Throws ``LMDBError/truncatedDataFile`` when the data file ends before the last page the
    /// meta page names. LMDB 0.9 opens such a file (it reads only the meta pages) and the first
    /// read of a missing page is SIGBUS; an interrupted copy or a disk that filled while copying
    /// leaves exactly that. A longer file is normal (the map size, freed pages).
    private static func checkFileLength(_ handle: OpaquePointer) throws(LMDBError) {
        var info = MDB_envinfo(), st = MDB_stat(), fd: Int32 = -1
        try check(mdb_env_info(handle, &info))
        try check(mdb_env_stat(handle, &st))
        try check(mdb_env_get_fd(handle, &fd))
        var file = Glibc.stat()
        guard fstat(fd, &file) == 0 else { throw LMDBError(rawValue: errno) }
        if Int(file.st_size) < (info.me_last_pgno + 1) * Int(st.ms_psize) { throw .truncatedDataFile }
    }

    /// Closes the environment (waits for transactions in flight). Idempotent; `deinit` calls it.
    /// Whether this process has the environment at `path` open (LMDB forbids a second open).
    public static func isOpenInProcess(path: String) -> Bool { OpenPaths.isOpen(path: path) }

    public func close() {
        guard !isClosed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        gate.exclusive { mdb_env_close(handle) }
        OpenPaths.release(identity)
    }

    deinit { close() }

    /// Whether ``close()`` has run (or is running).
    public var isOpen: Bool { !isClosed.load(ordering: .acquiring) }

    /// Runs `body` on the open handle, inside the gate so `close()` cannot free it meanwhile;
    /// use after close is ``LMDBError/environmentClosed``, not a trap.
    private func withHandle<R>(_ body: () throws(LMDBError) -> R) throws(LMDBError) -> R {
        gate.enter()
        defer { gate.leave() }
        guard isOpen else { throw .environmentClosed }
        return try body()
    }

    // MARK: - Map size

    /// Sets the map size (grow it after `MDB_MAP_FULL`; 0 adopts the size another process set).
    /// Waits until no transaction of this environment is active in this process, as LMDB requires;
    /// must not be called from inside one (that traps: it would wait forever).
    public func setMapSize(_ bytes: Int) throws(LMDBError) {
        try gate.exclusive { () throws(LMDBError) in
            guard isOpen else { throw .environmentClosed }
            try check(faults.call(.envSetMapSize) { mdb_env_set_mapsize(handle, bytes) })
        }
    }

    // MARK: - Inspection

    /// Statistics of the environment's main (unnamed) database.
    public func stat() throws(LMDBError) -> Stat {
        try withHandle { () throws(LMDBError) in
            var s = MDB_stat()
            try check(faults.call(.envStat) { mdb_env_stat(handle, &s) })
            return Stat(s)
        }
    }

    public func info() throws(LMDBError) -> Info {
        try withHandle { () throws(LMDBError) in
            var i = MDB_envinfo()
            try check(faults.call(.envInfo) { mdb_env_info(handle, &i) })
            return Info(i)
        }
    }

    /// Flushes to disk (needed only with ``Flags/noSync`` or ``Flags/noMetaSync``).
    public func sync(force: Bool = true) throws(LMDBError) {
        try withHandle { () throws(LMDBError) in try check(faults.call(.envSync) { mdb_env_sync(handle, force ? 1 : 0) }) }
    }

    /// Frees reader slots held by dead processes; returns how many.
    public func checkReaders() throws(LMDBError) -> Int {
        try withHandle { () throws(LMDBError) in
            var dead: Int32 = 0
            try check(faults.call(.readerCheck) { mdb_reader_check(handle, &dead) })
            return Int(dead)
        }
    }

    /// The snapshots (transaction ids) the active read transactions of every process hold, from
    /// LMDB's reader table. A reader on a snapshot older than the last commit keeps the pages
    /// freed since from reuse, so a writer at its map ceiling can run out of pages it would
    /// otherwise have had.
    public func readerSnapshots() throws(LMDBError) -> [Int] {
        try withHandle { () throws(LMDBError) in
            let found = ReaderLines()
            // One line per used slot: "pid thread txnid", txnid "-" when the slot is idle.
            let rc = mdb_reader_list(handle, { line, context in
                guard let line, let context else { return 0 }
                let fields = String(cString: line).split(whereSeparator: { $0 == " " || $0 == "\n" })
                if fields.count == 3, let id = Int(fields[2]) {
                    Unmanaged<ReaderLines>.fromOpaque(context).takeUnretainedValue().snapshots.append(id)
                }
                return 0
            }, Unmanaged.passUnretained(found).toOpaque())
            try check(rc)
            return withExtendedLifetime(found) { found.snapshots }
        }
    }

    private final class ReaderLines { var snapshots: [Int] = [] }

    // MARK: - Databases

    /// Opens the named database (nil: the main one), creating it when `create` (needs a writable
    /// environment). Handles stay valid until the environment closes: open each once and keep it.
    public func openDatabase(_ name: String?, create: Bool = false) throws(LMDBError) -> Database {
        try databaseOpening.withLock { _ throws(LMDBError) -> Database in
            let readOnly = !create
            let txn = try begin(readOnly: readOnly)
            var dbi: MDB_dbi = 0
            let flags = create ? UInt32(MDB_CREATE) : 0
            let rc: Int32 = if let name { faults.call(.dbiOpen) { mdb_dbi_open(txn.handle, name, flags, &dbi) } }
                            else { faults.call(.dbiOpen) { mdb_dbi_open(txn.handle, nil, flags, &dbi) } }
            guard rc == 0 else { txn.abort(); throw LMDBError(rawValue: rc) }
            // A handle opened in a transaction that aborts is closed again, so commit even when reading.
            try txn.commit()
            return Database(dbi: dbi, name: name)
        }
    }

    /// Opens (creating when missing) the named databases and runs `body` on them in the same
    /// write transaction: the databases and what `body` writes appear together or, after a
    /// crash or a throw, not at all. For creating a set of databases with their first records.
    public func withNewDatabases<R>(_ names: [String], _ body: (borrowing Transaction, [Database]) throws -> R) throws -> ([Database], R) {
        try databaseOpening.withLock { _ in
            try withWriteTransaction { txn in
                var dbs: [Database] = []
                for name in names {
                    var dbi: MDB_dbi = 0
                    try check(txn.call(.dbiOpen) { mdb_dbi_open(txn.handle, name, UInt32(MDB_CREATE), &dbi) })
                    dbs.append(Database(dbi: dbi, name: name))
                }
                return (dbs, try body(txn, dbs))
            }
        }
    }

    // MARK: - Transactions

    /// Runs `body` in a read-only snapshot transaction. Keep it short: while it runs, the pages
    /// it sees cannot be reused and the file grows under a steady writer.
    public func withReadTransaction<R>(_ body: (borrowing Transaction) throws -> R) throws -> R {
        let txn = try begin(readOnly: true)
        let result: Result<R, any Error> = Result { try body(txn) }
        txn.abort()
        return try result.get()
    }

    /// Runs `body` in the write transaction (LMDB allows one at a time; others wait), commits it
    /// when `body` returns and aborts it when `body` throws. The whole call runs on the calling
    /// thread, as LMDB's write lock requires. If an LMDB call inside failed but `body` caught the
    /// error and returned, the transaction is aborted and that first failure is thrown: LMDB
    /// poisons a transaction after most failures, and the first error is the informative one.
    public func withWriteTransaction<R>(_ body: (borrowing Transaction) throws -> R) throws -> R {
        // LMDB answers EACCES too (as `openDatabase(_:create: true)` gets it); checked here so
        // no write lock is taken.
        if isReadOnly { throw LMDBError.permissionDenied }
        let txn = try begin(readOnly: false)
        let result: R
        do {
            result = try body(txn)
        } catch {
            txn.abort()
            throw error
        }
        // A reserved put whose `fill` threw left bytes nobody wrote: never commit them, even
        // when the body caught the error and returned.
        if let failed = txn.state.failedFill {
            txn.abort()
            throw failed
        }
        try txn.commit()
        return result
    }

    func begin(readOnly: Bool) throws(LMDBError) -> Transaction {
        var resizedOnce = false
        while true {
            // A write transaction inside another on the same thread would wait for LMDB's
            // (non-recursive) writer lock forever: a typed error instead.
            if readOnly { gate.enter() } else { try gate.enterWriting() }
            // Checked inside the gate: `close()` marks the environment closed before it waits for
            // the gate, so a thread that got in after that must not touch the freed handle.
            guard isOpen else { gate.leave(writing: !readOnly); throw .environmentClosed }
            var txn: OpaquePointer?
            let rc = faults.call(.txnBegin) { mdb_txn_begin(handle, nil, readOnly ? UInt32(MDB_RDONLY) : 0, &txn) }
            if rc == 0 { return Transaction(handle: txn!, environment: self, readOnly: readOnly) }
            gate.leave(writing: !readOnly)
            // Another process grew the map past ours: adopt its size (0 = "as in the file"), once.
            guard rc == MDB_MAP_RESIZED, !resizedOnce else { throw LMDBError(rawValue: rc) }
            // Not from inside another transaction of this thread: the resize would wait for it
            // forever (the gate traps on that). The caller gets the typed error; a transaction
            // begun after the outer one ends adopts the new size.
            if gate.callerIsInside() { throw .mapResized }
            resizedOnce = true
            try setMapSize(0)
        }
    }
}
