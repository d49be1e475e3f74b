import CLMDB
import Glibc

/// A cursor over one database, lent to the closure of ``Transaction/withCursor(_:_:)``.
///
/// Each move calls `body` with the key and value it lands on and returns `body`'s result, or
/// nil when there is nothing there (past the end, empty database, key not found). The bytes
/// are valid only inside `body`.
public struct Cursor: ~Copyable {
    let handle: OpaquePointer
    private let state: TransactionState
    private let environment: Environment

    init(handle: OpaquePointer, transaction: borrowing Transaction) {
        self.handle = handle
        self.state = transaction.state
        self.environment = transaction.environment
    }

    public typealias Visitor<R> = (_ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) throws -> R

    public func first<R>(_ body: Visitor<R>) throws -> R? { try move(MDB_FIRST, body) }
    public func last<R>(_ body: Visitor<R>) throws -> R? { try move(MDB_LAST, body) }
    public func next<R>(_ body: Visitor<R>) throws -> R? { try move(MDB_NEXT, body) }
    public func previous<R>(_ body: Visitor<R>) throws -> R? { try move(MDB_PREV, body) }
    public func current<R>(_ body: Visitor<R>) throws -> R? { try move(MDB_GET_CURRENT, body) }

    /// Moves to the first key ≥ `key`.
    public func seek<R>(atLeast key: some LMDBBytes, _ body: Visitor<R>) throws -> R? {
        try key.withLMDBBytes { k in try move(MDB_SET_RANGE, key: k, body) }
    }

    /// Moves to exactly `key`.
    public func seek<R>(exactly key: some LMDBBytes, _ body: Visitor<R>) throws -> R? {
        try key.withLMDBBytes { k in try move(MDB_SET_KEY, key: k, body) }
    }

    /// Deletes the entry the cursor is on (the cursor then sits on the next one: use ``current(_:)``).
    public func deleteCurrent() throws(LMDBError) {
        try check(call(.cursorDelete) { mdb_cursor_del(handle, 0) })
    }

    private func move<R>(_ op: MDB_cursor_op, key: UnsafeRawBufferPointer? = nil, _ body: Visitor<R>) throws -> R? {
        var k = key.map { MDB_val($0) } ?? MDB_val()
        var v = MDB_val()
        let rc = call(.cursorGet) { mdb_cursor_get(handle, &k, &v, op) }
        if rc == MDB_NOTFOUND { return nil }
        // A cursor on a deleted entry reports EINVAL for GET_CURRENT once the database is empty.
        if rc == EINVAL && op == MDB_GET_CURRENT { return nil }
        try check(rc)
        return try body(UnsafeRawBufferPointer(k), UnsafeRawBufferPointer(v))
    }

    private func call(_ operation: LMDBOperation, _ body: () -> Int32) -> Int32 {
        let rc = environment.faults.call(operation, body)
        if rc != 0 && rc != MDB_NOTFOUND && !(rc == EINVAL && operation == .cursorGet) && state.firstError == nil {
            state.firstError = LMDBError(rawValue: rc)
        }
        return rc
    }
}
