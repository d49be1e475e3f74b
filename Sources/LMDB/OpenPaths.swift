import Glibc

/// The process-wide set of environments open right now, by file identity.
///
/// LMDB's documentation: "Do not have open an LMDB database twice in the same process at the
/// same time." Its locks are POSIX `fcntl` locks, which belong to the process, so closing a
/// second handle would silently release the first one's locks. Identity is the device and inode
/// of the environment directory (or of the data file with `noSubdirectory`), so two spellings
/// of one path, or a symlink, still count as the same environment.
enum OpenPaths {
    struct Identity: Hashable { var device: UInt64; var inode: UInt64 }

    private static let open = Locked<Set<Identity>>([])

    /// Runs `open` (which opens the environment at `path`) while holding the registry, unless
    /// `path` is already open (``LMDBError/alreadyOpenInProcess``), and registers it when `open`
    /// succeeds, until ``release(_:)``. `createFile`: the path names a data file that LMDB would
    /// create; create it first so it has an identity.
    static func register(path: String, createFile: Bool, _ open: () throws(LMDBError) -> Void) throws(LMDBError) -> Identity {
        if createFile {
            let fd = Glibc.open(path, O_RDONLY | O_CREAT, 0o644)
            if fd < 0 && errno != EACCES && errno != EROFS { throw LMDBError(rawValue: errno) }
            if fd >= 0 { Glibc.close(fd) }
        }
        guard let id = identity(of: path) else { throw LMDBError(rawValue: errno) }
        return try Self.open.withLock { (set: inout Set<Identity>) throws(LMDBError) -> Identity in
            guard !set.contains(id) else { throw .alreadyOpenInProcess }
            try open()
            set.insert(id)
            return id
        }
    }

    /// Whether the environment at `path` (a directory, or a data file) is open in this process.
    static func isOpen(path: String) -> Bool {
        guard let id = identity(of: path) else { return false }
        return open.withLock { $0.contains(id) }
    }

    /// The file identity of `path`, or nil (with `errno` set) when it cannot be stat'ed.
    private static func identity(of path: String) -> Identity? {
        var s = stat()
        guard fstatat(AT_FDCWD, path, &s, 0) == 0 else { return nil }
        return Identity(device: UInt64(s.st_dev), inode: UInt64(s.st_ino))
    }

    static func release(_ id: Identity) {
        _ = open.withLock { $0.remove(id) }
    }
}
