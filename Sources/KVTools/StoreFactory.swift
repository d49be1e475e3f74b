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
    /// Empties the store at `path` (`LMDBSpillStore.remove`): refused while another process
    /// writes it, or when the path holds something that is not a PrefixKV store.
    public static func clear(path: String) throws(SpillStoreError) {
        try LMDBSpillStore.remove(path: path)
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
