#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import KVCore
import LMDB

/// One writer process per store: an exclusive `flock` on `writer.lock` in the store's directory,
/// held while the store is open for writing (and while its files are removed).
///
/// LMDB lets several processes write one environment, but a writer keeps the store's byte count
/// and LRU sequence in memory: a second writer process made them stale, and the first one's
/// next eviction trapped on a byte count gone negative. Readers (`kvctl stats`) take no lock.
/// The kernel drops the lock when its process dies, so a crashed writer never blocks the next.
final class WriterLock: @unchecked Sendable {
    private let fd: Locked<Int32>

    /// Takes the lock, or throws `.inUse` when another process (or another open in this one)
    /// holds it.
    init(storePath path: String) throws(SpillStoreError) {
        let file = open(path + "/writer.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard file >= 0 else { throw SpillStoreError(opening: path, LMDBError(rawValue: errno)) }
        if flock(file, LOCK_EX | LOCK_NB) != 0 {
            let error = errno
            close(file)
            if error == EWOULDBLOCK { throw .inUse(path: path) }
            throw SpillStoreError(opening: path, LMDBError(rawValue: error))
        }
        fd = Locked(file)
    }

    /// Releases the lock (closing the file drops it). Idempotent.
    func release() {
        fd.withLock { file in
            if file >= 0 { close(file) }
            file = -1
        }
    }

    deinit { release() }
}
