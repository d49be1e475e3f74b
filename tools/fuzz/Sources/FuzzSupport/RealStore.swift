import KVCache
import KVCore
import KVSpill
import LMDB

/// The layout every harness uses: 2 layers × 1 KV head × head dim 8 × 4-token blocks, fp16
/// (256 bytes of KV per block: small records, so mutations reach every field often).
public let fuzzLayout = try! KVLayout(layerCount: 2, kvHeadCount: 1, headDim: 8, blockSize: 4, dtype: .float16)

/// One block the harness spilled: what a restore of it must give back.
public struct SpilledBlock: Sendable {
    public var key: PrefixKey
    public var namespace: Namespace
    public var tokens: [TokenID]
    /// nil: spilled without an arena (a token-only record).
    public var payload: [UInt8]?
    /// The LMDB value the store wrote for it.
    public var value: [UInt8] = []
    public var keyBytes: [UInt8] { withUnsafeBytes(of: key.bytes) { Array($0) } }

    public init(key: PrefixKey, namespace: Namespace, tokens: [TokenID], payload: [UInt8]?) {
        self.key = key
        self.namespace = namespace
        self.tokens = tokens
        self.payload = payload
    }
}

/// The KV a block holds in the harnesses: derived from its tokens alone.
public func payloadFor(_ tokens: [TokenID], layout: KVLayout = fuzzLayout) -> [UInt8] {
    var x = tokens.reduce(UInt64(0x9E37_79B9_7F4A_7C15)) { ($0 ^ UInt64(UInt32(bitPattern: $1))) &* 0x100_0000_01B3 }
    return (0..<layout.blockBytes).map { _ in
        x ^= x << 13; x ^= x >> 7; x ^= x << 17
        return UInt8(truncatingIfNeeded: x)
    }
}

/// The configuration the harnesses open their stores with (synchronous: every spill is
/// committed before `spill` returns; not durable: no fsync per commit).
public func fuzzConfiguration(_ path: String) -> SpillStoreConfiguration {
    SpillStoreConfiguration(path: path, layout: fuzzLayout, limitBytes: 1 << 20, writeMode: .synchronous,
                            durable: false, statsIntervalSeconds: 0, model: "fuzz-model")
}

/// Creates a real store at `path` through the public API (three chained blocks of "default",
/// one block of a non-ASCII namespace, one token-only block), publishes stats, closes it, and
/// returns each block with the exact LMDB value the store wrote for it.
public func buildRealStore(at path: String) throws -> [SpilledBlock] {
    let store = try LMDBSpillStore(fuzzConfiguration(path))
    let arena = KVPageArena(layout: fuzzLayout, capacityBlocks: 8)
    var blocks: [SpilledBlock] = []
    func spill(_ ns: Namespace, parent: PrefixKey?, tokens: [TokenID], withKV: Bool) -> PrefixKey {
        let key = tokens.withUnsafeBufferPointer { store.childKey(parent: parent ?? store.rootKey(namespace: ns), tokens: $0) }
        let block = BlockID(Int32(blocks.count + 1))
        let payload = withKV ? payloadFor(tokens) : nil
        payload?.withUnsafeBytes { arena.copyIn(block, from: $0) }
        tokens.withUnsafeBufferPointer { store.spill(key: key, namespace: ns, tokens: $0, block: block, arena: withKV ? arena : nil) }
        blocks.append(SpilledBlock(key: key, namespace: ns, tokens: tokens, payload: payload))
        return key
    }
    var parent: PrefixKey? = nil
    for i in 0..<3 { parent = spill("default", parent: parent, tokens: (0..<4).map { TokenID(100 * i + $0) }, withKV: true) }
    _ = spill("tenant-ü", parent: nil, tokens: [7, 7, 7, 7], withKV: true)
    _ = spill("meta-only", parent: nil, tokens: [1, 2, 3, 4], withKV: false)
    var stats = KVCacheStats()
    stats.capacityBlocks = 8; stats.queryTokens = 40; stats.hitTokens = 12; stats.storeHitTokens = 4
    stats.logicalBlocks = 6; stats.physicalBlocks = 3
    store.publish(stats: stats)
    store.close()
    let env = try Environment(path: path, configuration: .init(mapSize: 0, maxDatabases: 8, flags: [.noTLS, .readOnly]))
    defer { env.close() }
    let entries = try env.openDatabase("entries")
    try env.withReadTransaction { txn in
        for i in blocks.indices {
            blocks[i].value = try txn.copyValue(for: blocks[i].keyBytes, in: entries) ?? []
        }
    }
    return blocks
}
