import Synchronization

/// The LMDB C calls that can fail, named so tests can make one of them fail on purpose.
enum LMDBOperation: Hashable, Sendable {
    case envOpen, envSetMapSize, envStat, envInfo, envSync, readerCheck
    case txnBegin, txnCommit, dbiOpen
    case get, put, delete, stat, drop
    case cursorOpen, cursorGet, cursorDelete
}

/// Forces chosen LMDB calls of one environment to fail with a chosen code instead of running,
/// so tests reach error paths (`ENOSPC` at commit, `MDB_MAP_FULL` on put, …) that a healthy
/// disk never takes. Every failable C call goes through ``call(_:whenInjected:_:)``.
final class FaultInjector: Sendable {
    private struct Rule { var error: LMDBError; var skip: Int; var remaining: Int }
    private let rules = Locked<[LMDBOperation: Rule]>([:])
    /// Checked without the lock so calls pay one atomic load when no fault is armed.
    private let armed = Atomic<Bool>(false)

    /// Makes the next `times` calls of `operation`, after letting `skip` through, fail with `error`.
    func fail(_ operation: LMDBOperation, with error: LMDBError, skip: Int = 0, times: Int = 1) {
        rules.withLock { $0[operation] = Rule(error: error, skip: skip, remaining: times) }
        armed.store(true, ordering: .releasing)
    }

    /// Disarms every rule.
    func clear() {
        rules.withLock { $0.removeAll() }
        armed.store(false, ordering: .releasing)
    }

    /// The code to fail `operation` with now, if a rule says so (and counts it).
    private func injected(_ operation: LMDBOperation) -> Int32? {
        guard armed.load(ordering: .acquiring) else { return nil }
        return rules.withLock { rules -> Int32? in
            guard var rule = rules[operation] else { return nil }
            defer { rules[operation] = rule.remaining > 0 ? rule : nil }
            if rule.skip > 0 { rule.skip -= 1; return nil }
            rule.remaining -= 1
            return rule.error.rawValue
        }
    }

    /// Runs one C call (returning an LMDB `int`) unless a rule fails it first; then runs
    /// `whenInjected` instead, so the caller can release what the real call would have
    /// (a failed `mdb_txn_commit` frees its transaction).
    @inline(__always)
    func call(_ operation: LMDBOperation, whenInjected: () -> Void = {}, _ body: () -> Int32) -> Int32 {
        if let code = injected(operation) {
            whenInjected()
            return code
        }
        return body()
    }
}

/// Turns an LMDB return code into `Void` or a thrown ``LMDBError``.
@inline(__always)
func check(_ code: Int32) throws(LMDBError) {
    if code != 0 { throw LMDBError(rawValue: code) }
}
