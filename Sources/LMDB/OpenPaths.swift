import Glibc
import Synchronization

/// The process-wide set of environments open right now, by file identity.
///
/// LMDB's documentation: "Do not have open an LMDB database twice in the same process at the
/// same time." Its locks are POSIX `fcntl` locks, which belong to the process, so closing a
/// second handle would silently release the first one's locks. Identity is the device and inode
/// of the environment directory (or of the data file with `noSubdirectory`), so two spellings
/// of one path, or a symlink, still count as the same environment.
enum OpenPaths {
    struct Identity: Hashable { var device: UInt64; var inode: UInt64 }

    private static let open = Mutex<Set<Identity>>([])

    /// Runs `body` (which opens the environment) while holding the registry, after recording
    /// `path`'s identity; throws ``LMDBError/alreadyOpenInProcess`` when it is already open.
    /// The identity stays registered when `body` succeeds, until ``release(_:)``.
    static func register<R>(path: String, isFile: Bool, _ body: () throws(LMDBError) -> R) throws(LMDBError) -> (R, Identity) {
        if isFile {
            // LMDB would create the data file; create it first so it has an identity to register.
            let fd = Glibc.open(path, O_RDONLY | O_CREAT, 0o644)
            if fd < 0 && errno != EACCES && errno != EROFS { throw LMDBError(rawValue: errno) }
            if fd >= 0 { Glibc.close(fd) }
        }
        var s = stat()
        guard fstatat(AT_FDCWD, path, &s, 0) == 0 else { throw LMDBError(rawValue: errno) }
        let id = Identity(device: UInt64(s.st_dev), inode: UInt64(s.st_ino))
        return try open.withLock { (set: inout Set<Identity>) throws(LMDBError) -> (R, Identity) in
            guard !set.contains(id) else { throw .alreadyOpenInProcess }
            let result = try body()
            set.insert(id)
            return (result, id)
        }
    }

    static func release(_ id: Identity) {
        _ = open.withLock { $0.remove(id) }
    }
}
