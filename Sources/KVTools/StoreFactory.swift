import KVCache
import KVCore
import KVSpill

/// Opens LMDB spill stores for the commands that take `--store PATH`.
public enum SpillStores {
    /// A factory for `ReplayOptions.makeStore` / `StressOptions.makeStore`: every call opens the
    /// store at `path` afresh (removed first when `fresh`: `LMDBSpillStore.remove`), so each replay or sweep point starts
    /// empty. The previous store must be closed (released) before the next call. `whenQueueFull`
    /// `.waitWhenFull` suits offline runs (replay), where a dropped spill would understate the store.
    public static func factory(path: String, limitBytes: Int, fresh: Bool = true,
                               writeMode: SpillStoreConfiguration.WriteMode = .background(queueLimitBytes: 256 << 20),
                               durable: Bool = true,
                               whenQueueFull: SpillStoreConfiguration.QueueFullPolicy = .dropWhenFull) -> ColdStoreFactory {
        return { layout in
            if fresh { try LMDBSpillStore.remove(path: path) }
            return try LMDBSpillStore(SpillStoreConfiguration(path: path, layout: layout, limitBytes: limitBytes,
                                                              writeMode: writeMode, durable: durable, whenQueueFull: whenQueueFull))
        }
    }
}
