#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import KVCache
import KVCore
import KVSpill
import LMDB

/// Opens LMDB spill stores for the commands that take `--store PATH`.
public enum SpillStores {
    /// Removes a store's files (`data.mdb`, `lock.mdb`) so the next open starts empty; a missing
    /// store is fine. Only those two files are touched, never the directory's other contents.
    public static func clear(path: String) throws(SpillStoreError) {
        for file in ["data.mdb", "lock.mdb"] {
            let full = path + "/" + file
            if unlink(full) != 0 && errno != ENOENT {
                throw SpillStoreError.lmdb(path: full, LMDBError(rawValue: errno))
            }
        }
    }

    /// A factory for `ReplayOptions.makeStore` / `StressOptions.makeStore`: every call opens the
    /// store at `path` afresh (cleared first when `fresh`), so each replay or sweep point starts
    /// empty. The previous store must be closed (released) before the next call. `whenQueueFull`
    /// `.waitWhenFull` suits offline runs (replay), where a dropped spill would understate the store.
    public static func factory(path: String, limitBytes: Int, fresh: Bool = true,
                               writeMode: SpillStoreConfiguration.WriteMode = .background(queueLimitBytes: 256 << 20),
                               durable: Bool = true,
                               whenQueueFull: SpillStoreConfiguration.QueueFullPolicy = .dropWhenFull) -> ColdStoreFactory {
        return { layout in
            if fresh { try clear(path: path) }
            return try LMDBSpillStore(SpillStoreConfiguration(path: path, layout: layout, limitBytes: limitBytes,
                                                              writeMode: writeMode, durable: durable, whenQueueFull: whenQueueFull))
        }
    }
}
