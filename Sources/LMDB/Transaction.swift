import CLMDB

/// Flags for ``Transaction/put(_:for:in:flags:)``.
public struct PutFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// Fail with ``LMDBError/keyExist`` instead of replacing an existing value.
    public static let noOverwrite = PutFlags(rawValue: UInt32(MDB_NOOVERWRITE))
    /// The key sorts after every key in the database (fast bulk load; ``LMDBError/keyExist`` otherwise).
    public static let append = PutFlags(rawValue: UInt32(MDB_APPEND))
}

/// What a transaction remembers across its calls.
final class TransactionState {
    /// The first failure that poisons the transaction (not-found and key-exists do not).
    var firstError: LMDBError?
    /// The first error a reserved put's `fill` threw: the reserved bytes were not all written,
    /// so the transaction must not commit (``Environment/withWriteTransaction(_:)`` aborts it).
    var failedFill: (any Error)?
}

/// A transaction, lent to the closure of ``Environment/withReadTransaction(_:)`` or
/// ``Environment/withWriteTransaction(_:)``.
///
/// It is non-copyable and only ever borrowed, so it cannot be stored or outlive its closure.
/// Bytes it returns point into the memory map and are valid only inside the closure they are
/// passed to; ``copyValue(for:in:)`` makes an owned copy.
public struct Transaction: ~Copyable {
    let handle: OpaquePointer
    let environment: Environment
    let state = TransactionState()
    public let isReadOnly: Bool

    init(handle: OpaquePointer, environment: Environment, readOnly: Bool) {
        self.handle = handle
        self.environment = environment
        self.isReadOnly = readOnly
    }

    /// The transaction's id (the snapshot a read transaction sees).
    public var id: Int { mdb_txn_id(handle) }

    /// Runs one failable C call through the environment's seam; records a poisoning failure.
    func call(_ operation: LMDBOperation, _ body: () -> Int32) -> Int32 {
        let rc = environment.faults.call(operation, body)
        if rc != 0 && rc != MDB_NOTFOUND && rc != MDB_KEYEXIST && state.firstError == nil {
            state.firstError = LMDBError(rawValue: rc)
        }
        return rc
    }

    consuming func commit() throws(LMDBError) {
        defer { environment.gate.leave(writing: !isReadOnly) }
        if let first = state.firstError {
            mdb_txn_abort(handle)
            throw first
        }
        try check(environment.faults.call(.txnCommit, whenInjected: { mdb_txn_abort(handle) }) { mdb_txn_commit(handle) })
    }

    consuming func abort() {
        mdb_txn_abort(handle)
        environment.gate.leave(writing: !isReadOnly)
    }

    /// Runs a reserved put's `fill`; a throw poisons the transaction (its bytes stay unwritten).
    private func fillReserved(_ data: MDB_val, count: Int, _ fill: (UnsafeMutableRawBufferPointer) throws -> Void) throws {
        do {
            try fill(UnsafeMutableRawBufferPointer(start: data.mv_data, count: count))
        } catch {
            if state.failedFill == nil { state.failedFill = error }
            throw error
        }
    }

    // MARK: - Reading

    /// Calls `body` with the value stored under `key`, or returns nil when there is none.
    public func withValue<R>(for key: some LMDBBytes, in db: Database, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R? {
        var data = MDB_val()
        let rc = key.withLMDBBytes { k in
            var kv = MDB_val(k)
            return call(.get) { mdb_get(handle, db.dbi, &kv, &data) }
        }
        if rc == MDB_NOTFOUND { return nil }
        try check(rc)
        return try body(UnsafeRawBufferPointer(data))
    }

    /// An owned copy of the value stored under `key`.
    public func copyValue(for key: some LMDBBytes, in db: Database) throws -> [UInt8]? {
        try withValue(for: key, in: db) { Array($0) }
    }

    public func contains(_ key: some LMDBBytes, in db: Database) throws -> Bool {
        try withValue(for: key, in: db) { _ in true } ?? false
    }

    /// The database's B-tree statistics as this transaction sees them (entries, pages).
    public func stat(_ db: Database) throws(LMDBError) -> Stat {
        var s = MDB_stat()
        try check(call(.stat) { mdb_stat(handle, db.dbi, &s) })
        return Stat(s)
    }

    /// Calls `body` with a cursor over `db`, closed when `body` returns.
    public func withCursor<R>(_ db: Database, _ body: (borrowing Cursor) throws -> R) throws -> R {
        var cursor: OpaquePointer?
        try check(call(.cursorOpen) { mdb_cursor_open(handle, db.dbi, &cursor) })
        defer { mdb_cursor_close(cursor) }
        return try body(Cursor(handle: cursor!, transaction: self))
    }

    /// Visits `db`'s entries in key order, from the first key ≥ `start` (or the first key),
    /// until `body` returns false.
    public func forEach(in db: Database, from start: (some LMDBBytes)? = [UInt8]?.none,
                        _ body: (_ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) throws -> Bool) throws {
        try withCursor(db) { cursor in
            var more = if let start { try cursor.seek(atLeast: start, body) } else { try cursor.first(body) }
            while more == true { more = try cursor.next(body) }
        }
    }

    // MARK: - Writing

    /// Stores `value` under `key` (replacing an existing value unless `flags` says otherwise).
    public func put(_ value: some LMDBBytes, for key: some LMDBBytes, in db: Database, flags: PutFlags = []) throws(LMDBError) {
        let rc = key.withLMDBBytes { k in
            value.withLMDBBytes { v in
                var kv = MDB_val(k), vv = MDB_val(v)
                return call(.put) { mdb_put(handle, db.dbi, &kv, &vv, flags.rawValue) }
            }
        }
        try check(rc)
    }

    /// Reserves `count` bytes for the value under `key` and lets `fill` write them in place,
    /// saving the copy `put` makes (`MDB_RESERVE`). `fill` must write every byte.
    public func put(count: Int, for key: some LMDBBytes, in db: Database, flags: PutFlags = [],
                    fill: (UnsafeMutableRawBufferPointer) throws -> Void) throws {
        var data = MDB_val(mv_size: count, mv_data: nil)
        let rc = key.withLMDBBytes { k in
            var kv = MDB_val(k)
            return call(.put) { mdb_put(handle, db.dbi, &kv, &data, flags.rawValue | UInt32(MDB_RESERVE)) }
        }
        try check(rc)
        try fillReserved(data, count: count, fill)
    }

    /// Like ``put(count:for:in:flags:fill:)`` with ``PutFlags/noOverwrite``, but an existing key is
    /// an answer, not an error: returns false (and calls nothing) when `key` is already there.
    /// One B-tree search instead of a lookup followed by a put.
    public func putIfAbsent(count: Int, for key: some LMDBBytes, in db: Database,
                            fill: (UnsafeMutableRawBufferPointer) throws -> Void) throws -> Bool {
        var data = MDB_val(mv_size: count, mv_data: nil)
        let rc = key.withLMDBBytes { k in
            var kv = MDB_val(k)
            return call(.put) { mdb_put(handle, db.dbi, &kv, &data, UInt32(MDB_NOOVERWRITE) | UInt32(MDB_RESERVE)) }
        }
        if rc == MDB_KEYEXIST { return false }
        try check(rc)
        try fillReserved(data, count: count, fill)
        return true
    }

    /// Deletes `key`; returns whether it was there.
    @discardableResult
    public func delete(_ key: some LMDBBytes, in db: Database) throws(LMDBError) -> Bool {
        let rc = key.withLMDBBytes { k in
            var kv = MDB_val(k)
            return call(.delete) { mdb_del(handle, db.dbi, &kv, nil) }
        }
        if rc == MDB_NOTFOUND { return false }
        try check(rc)
        return true
    }

    /// Deletes every entry of `db` (the handle stays open).
    public func removeAll(in db: Database) throws(LMDBError) {
        try check(call(.drop) { mdb_drop(handle, db.dbi, 0) })
    }
}

extension MDB_val {
    /// A view of `bytes` for LMDB (which does not write through key/value pointers it is given).
    init(_ bytes: UnsafeRawBufferPointer) {
        self.init(mv_size: bytes.count, mv_data: UnsafeMutableRawPointer(mutating: bytes.baseAddress))
    }
}

extension UnsafeRawBufferPointer {
    init(_ v: MDB_val) { self.init(start: v.mv_data, count: v.mv_size) }
}
