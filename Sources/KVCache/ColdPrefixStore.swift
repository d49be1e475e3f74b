import KVCore

/// The name of one exact prefix (namespace + every token up to and including a block), as the
/// cold tier computes it: a chained digest, so a block's key depends on all blocks before it.
/// The manager treats it as opaque and caches it per block once computed.
public struct PrefixKey: Hashable, Sendable, CustomStringConvertible {
    /// The 256-bit digest as four words.
    public var bytes: (UInt64, UInt64, UInt64, UInt64)
    /// A key from its four words.
    public init(_ a: UInt64, _ b: UInt64, _ c: UInt64, _ d: UInt64) { bytes = (a, b, c, d) }
    public static func == (l: PrefixKey, r: PrefixKey) -> Bool {
        l.bytes.0 == r.bytes.0 && l.bytes.1 == r.bytes.1 && l.bytes.2 == r.bytes.2 && l.bytes.3 == r.bytes.3
    }
    public func hash(into h: inout Hasher) { h.combine(bytes.0); h.combine(bytes.1); h.combine(bytes.2); h.combine(bytes.3) }
    public var description: String {
        [bytes.0, bytes.1, bytes.2, bytes.3].map { let s = String($0.bigEndian, radix: 16); return String(repeating: "0", count: 16 - s.count) + s }.joined()
    }
}

/// A tier below the in-memory pool that keeps the KV of evicted prefix blocks and gives it back
/// on a later hit (the LMDB spill tier implements it).
///
/// Every call that evicts (`admit`, `append`, `truncate`) calls `spill` for the evicted blocks,
/// and `admit` calls `restore` (with the `childKey`s of the blocks it restores), outside the
/// manager's lock, so a call copying or reading a long prefix holds up no other caller;
/// `lookup`'s `contains` and the spill of a block a copy-on-write takes run under the lock. So
/// every method may run on several threads at once and beside the others: implementations must
/// be thread-safe, quick where they can be (copy bytes out, hand slow I/O to a background writer), and must never call
/// back into the manager. They never throw: a failing tier counts the failure and behaves as a
/// miss, so the cache keeps serving from memory.
public protocol ColdPrefixStore: AnyObject, Sendable {
    /// The key of a namespace's empty prefix: the root every chain starts from.
    func rootKey(namespace: Namespace) -> PrefixKey
    /// The key of `parent`'s prefix extended by one block of `tokens`.
    func childKey(parent: PrefixKey, tokens: UnsafeBufferPointer<TokenID>) -> PrefixKey

    /// A cached block was evicted from memory. Its KV is readable in `arena` at `block` until
    /// this returns (nil arena: metadata-only manager, nothing to keep but the tokens).
    func spill(key: PrefixKey, namespace: Namespace, tokens: UnsafeBufferPointer<TokenID>, block: BlockID, arena: KVPageArena?)

    /// Restores the block named by `key` into the freshly allocated `block`, when the store holds
    /// it with exactly these `tokens`, this layout, and a payload that verifies. Returns false
    /// (a miss) otherwise; `block`'s pages are then unspecified, and it stays in the sequence's
    /// table as one of the blocks the engine prefills, so the store must be done with it (no
    /// copy into it still running) when it returns.
    func restore(key: PrefixKey, namespace: Namespace, tokens: UnsafeBufferPointer<TokenID>, into block: BlockID, arena: KVPageArena?) -> Bool

    /// Whether `restore` would likely hit (no payload read or check): for side-effect-free lookups.
    func contains(key: PrefixKey, tokens: UnsafeBufferPointer<TokenID>) -> Bool

    /// Receives the manager's stats to publish (periodically and on close), for `kvctl stats`.
    func publish(stats: KVCacheStats)

    /// The layout the store's records hold, when it is bound to one; a manager refuses a store
    /// whose layout differs from its own (`KVCacheError.layoutMismatch`).
    var storeLayout: KVLayout? { get }
}
