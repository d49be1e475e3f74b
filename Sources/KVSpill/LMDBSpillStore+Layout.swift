import KVCache
import KVCore

extension LMDBSpillStore {
    /// A spill store holds records of one layout; the manager checks it at creation.
    public var storeLayout: KVLayout? { layout }
}
