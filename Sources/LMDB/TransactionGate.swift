import Glibc

/// Keeps `mdb_env_set_mapsize` away from live transactions.
///
/// LMDB may only change the map size when this process has no transaction active: it remaps
/// the file, and every pointer a transaction handed out would dangle. Transactions enter and
/// leave the gate; a resize waits for the ones in flight to end and holds new ones back until
/// it is done. A resize from a thread that itself holds a transaction would wait forever, so
/// the gate remembers which threads are inside and traps on that misuse instead.
final class TransactionGate: @unchecked Sendable {
    // Heap-allocated: pthread objects must not move, and `&property` on a class gives no such promise.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let changed = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var active = 0
    private var resizing = false
    /// Open transactions per thread (`pthread_self`), to catch a resize from inside one.
    private var perThread: [UInt: Int] = [:]
    /// Threads with a write transaction begun (or beginning): LMDB's writer lock is not
    /// recursive, so a second one on the same thread would wait for itself forever.
    private var writers: Set<UInt> = []

    init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(changed, nil)
    }

    deinit {
        pthread_cond_destroy(changed)
        pthread_mutex_destroy(mutex)
        changed.deallocate()
        mutex.deallocate()
    }

    func enter() {
        pthread_mutex_lock(mutex)
        enterLocked()
        pthread_mutex_unlock(mutex)
    }

    /// Enters for a write transaction; throws ``LMDBError/nestedWriteTransaction`` (without
    /// entering) when this thread already has one.
    func enterWriting() throws(LMDBError) {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        let (inserted, _) = writers.insert(pthread_self())
        guard inserted else { throw .nestedWriteTransaction }
        enterLocked()
    }

    /// Whether the calling thread is inside a transaction of this environment.
    func callerIsInside() -> Bool {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return perThread[pthread_self()] != nil
    }

    private func enterLocked() {
        let me = pthread_self()
        // A thread already inside goes on: the resize waits for it anyway, so holding it back
        // would deadlock (e.g. `Environment.info()` called inside a transaction).
        while resizing && perThread[me] == nil { pthread_cond_wait(changed, mutex) }
        active += 1
        perThread[me, default: 0] += 1
    }

    /// Leaves after ``enter()`` (`writing` false) or ``enterWriting()`` (true).
    func leave(writing: Bool = false) {
        pthread_mutex_lock(mutex)
        active -= 1
        let me = pthread_self()
        if writing { writers.remove(me) }
        let n = perThread[me]! - 1
        perThread[me] = n == 0 ? nil : n
        if active == 0 { pthread_cond_broadcast(changed) }
        pthread_mutex_unlock(mutex)
    }

    /// Runs `body` with no transaction active in the process's use of this environment.
    func exclusive<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        pthread_mutex_lock(mutex)
        if perThread[pthread_self()] != nil {  // fatalError: its message survives -O, a precondition's does not
            fatalError("LMDB.Environment: map resize or close requested from a thread inside a transaction of the same environment")
        }
        while resizing { pthread_cond_wait(changed, mutex) }
        resizing = true
        while active > 0 { pthread_cond_wait(changed, mutex) }
        pthread_mutex_unlock(mutex)
        defer {
            pthread_mutex_lock(mutex)
            resizing = false
            pthread_cond_broadcast(changed)
            pthread_mutex_unlock(mutex)
        }
        return try body()
    }
}
