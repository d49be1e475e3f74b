// Harness: the spill store end to end, on a real LMDB environment whose stored bytes are damaged.
//
// Setup (once): a real store is written through the public API (buildRealStore) and its
// data.mdb kept as the pristine image. Each input: the image is copied to a work directory, the
// input's operations damage it through plain LMDB puts and deletes (an entry's record edited,
// resealed, replaced, swapped with another key's or deleted; an `lru` or `access` value edited;
// a `meta` record — format, layout, model, bytes, stats — edited or deleted), and then:
//
// 1. `SpillStoreReport.inspect` (kvctl stats) and its text and JSON renderings;
// 2. the store is opened for writing (a typed SpillStoreError is an acceptable answer) and every
//    spilled block is restored through the public `restore`: a hit must give exactly the KV that
//    was spilled; a block whose entry the input did not touch must hit;
// 3. new blocks are spilled with a limit that forces LRU eviction over the damaged indexes, the
//    store reports, flushes, and a hit on a new block must give exactly its KV;
// 4. after close, `inspect` again.
// Nothing may trap; every failure must be a typed error or a miss.
import FuzzSupport
import Glibc
import KVCache
import KVCore
@testable import KVSpill
import KVToolsSubset
import LMDB

nonisolated(unsafe) var blocks: [SpilledBlock] = []
nonisolated(unsafe) var pristine: [UInt8] = []
nonisolated(unsafe) var workDir = ""
nonisolated(unsafe) var arena: KVPageArena!

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    let base = makeTemporaryDirectory("store")
    do { blocks = try buildRealStore(at: base + "/pristine") } catch { require(false, "building the real store: \(error)") }
    pristine = readWholeFile(base + "/pristine/data.mdb") ?? []
    require(!pristine.isEmpty, "no pristine data.mdb")
    workDir = base + "/work"
    mkdir(workDir, 0o755)
    arena = KVPageArena(layout: fuzzLayout, capacityBlocks: 16)
    if let seeds = seedDirectory {
        // One seed per kind of damage, on each entry.
        for op in 0..<8 {
            for i in 0..<blocks.count { writeFile("\(seeds)/op\(op)-\(i)", [UInt8(op), UInt8(i), 0, UInt8(40 + i), 0, 0x5A]) }
        }
        writeFile("\(seeds)/meta-stats", [6, 4, 1, 30, 0, 0x39])
        writeFile("\(seeds)/meta-bytes", [6, 3, 1, 0, 0, 0xFF])
    }
    return 0
}

let metaKeys = ["format", "layout", "model", "bytes", "stats"]

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    var r = ByteReader(Array(UnsafeBufferPointer(start: data, count: size)))
    unlink(workDir + "/lock.mdb")
    writeFile(workDir + "/data.mdb", pristine)
    var touched = Set<Int>()  // entries whose value the input changed or removed
    // Entries whose edits were resealed (checksum recomputed): a forgery the checksum is not
    // meant to catch (docs/SPILL.md), so a hit must give the KV the forged record holds.
    var forged: [Int: [UInt8]] = [:]
    do {
        let env = try Environment(path: workDir, configuration: .init(mapSize: 64 << 20, maxDatabases: 8, flags: [.noTLS, .noSync]))
        defer { env.close() }
        let entries = try env.openDatabase("entries"), lru = try env.openDatabase("lru")
        let access = try env.openDatabase("access"), meta = try env.openDatabase("meta")
        try env.withWriteTransaction { txn in
            var ops = 0
            while !r.isAtEnd && ops < 3 {
                ops += 1
                let op = r.u8() % 8
                let i = Int(r.u8()) % blocks.count
                let key = blocks[i].keyBytes
                debug("op \(op) on block \(i)")
                switch op {
                case 0, 1:  // an entry's record edited (1: and resealed)
                    var v = applyEdits(try txn.copyValue(for: key, in: entries) ?? [], &r, maxEdits: 4)
                    if op == 1 && v.count >= 16 { v.withUnsafeMutableBytes { SpillRecord.seal($0) } }
                    try txn.put(v, for: key, in: entries)
                    touched.insert(i)
                    // Edits to a forged record may leave it verifying: its KV is then the forged one.
                    if op == 1 || forged[i] != nil { forged[i] = v }
                case 2:  // replaced by raw bytes
                    try txn.put(r.take(Int(r.u16() % 1024)), for: key, in: entries)
                    touched.insert(i)
                    forged[i] = nil
                case 3:  // another key's record under this key
                    let j = Int(r.u8()) % blocks.count
                    try txn.put(blocks[j].value, for: key, in: entries)
                    if j != i { touched.insert(i) }
                    forged[i] = nil
                case 4:  // an lru slot's value (a prefix key) edited
                    guard let seq = try txn.copyValue(for: key, in: access) else { break }
                    let v = applyEdits(try txn.copyValue(for: seq, in: lru) ?? [], &r, maxEdits: 4)
                    try txn.put(v, for: seq, in: lru)
                case 5:  // an access value (an lru sequence) edited
                    try txn.put(applyEdits(try txn.copyValue(for: key, in: access) ?? [], &r, maxEdits: 4), for: key, in: access)
                case 6:  // a meta record edited or deleted
                    let name = metaKeys[i % metaKeys.count]
                    if r.u8() & 1 == 0 {
                        try txn.delete(name, in: meta)
                    } else {
                        try txn.put(applyEdits(try txn.copyValue(for: name, in: meta) ?? [], &r, maxEdits: 4), for: name, in: meta)
                    }
                default:  // deleted from entries, lru or access
                    switch r.u8() % 3 {
                    case 0: try txn.delete(key, in: entries); touched.insert(i); forged[i] = nil
                    case 1: if let seq = try txn.copyValue(for: key, in: access) { try txn.delete(seq, in: lru) }
                    default: try txn.delete(key, in: access)
                    }
                }
            }
        }
    } catch {
        return 0  // LMDB refused the damage itself (a key or value it does not take): nothing to test
    }

    inspect()
    var config = fuzzConfiguration(workDir)
    config.limitBytes = 2048  // the five records take ~1.7 KB: new spills evict
    let store: LMDBSpillStore
    do { store = try LMDBSpillStore(config) } catch {
        return 0  // a typed refusal (damaged, not a store, unsupported format, …)
    }
    for (i, b) in blocks.enumerated() {
        // A forged record that verifies gives the KV it holds (its last blockBytes bytes).
        let hit = restore(store, b, into: BlockID(Int32(i + 1)), expecting: forged[i].map { Array($0.suffix(fuzzLayout.blockBytes)) })
        require(hit || touched.contains(i), "block \(i) was not damaged but did not restore")
        if hit && !touched.contains(i) {
            require(b.tokens.withUnsafeBufferPointer { store.contains(key: b.key, tokens: $0) }, "restored block \(i) but contains says no")
        }
    }
    // New blocks, spilled over the damaged indexes (eviction walks `lru` and `access`).
    var fresh: [SpilledBlock] = []
    var parent = blocks[2].key
    for n in 0..<3 {
        let tokens = (0..<4).map { TokenID(1000 + 10 * n + $0) }
        let key = tokens.withUnsafeBufferPointer { store.childKey(parent: parent, tokens: $0) }
        let block = BlockID(Int32(8 + n))
        let payload = payloadFor(tokens)
        payload.withUnsafeBytes { arena.copyIn(block, from: $0) }
        tokens.withUnsafeBufferPointer { store.spill(key: key, namespace: "default", tokens: $0, block: block, arena: arena) }
        debug("spilled \(tokens) as \(key); counters \(store.counters)")
        fresh.append(SpilledBlock(key: key, namespace: "default", tokens: tokens, payload: payload))
        parent = key
    }
    if let report = try? store.report() { checkReport(report) }
    store.flush()
    for (i, b) in (fresh + blocks).enumerated() {
        let hit = restore(store, b, into: BlockID(Int32(12 + i % 4)),
                          expecting: i >= fresh.count ? forged[i - fresh.count].map { Array($0.suffix(fuzzLayout.blockBytes)) } : nil)
        // The writer repairs what it finds damaged and keeps working: the three new blocks (1.2 KB,
        // the newest, under the 2 KB limit) are all stored, whatever the old ones' state.
        require(hit || i >= fresh.count, "new block \(i) was not stored after the damage (counters: \(store.counters))")
    }
    store.close()
    inspect()
    return 0
}

/// Restores `b` into `block`; a hit must give exactly the KV spilled (or `expecting`, for a forged
/// record). Returns whether it hit.
func restore(_ store: LMDBSpillStore, _ b: SpilledBlock, into block: BlockID, expecting: [UInt8]? = nil) -> Bool {
    let poison = [UInt8](repeating: 0xE5, count: fuzzLayout.blockBytes)
    poison.withUnsafeBytes { arena.copyIn(block, from: $0) }
    let withKV = b.payload != nil
    let hit = b.tokens.withUnsafeBufferPointer {
        store.restore(key: b.key, namespace: b.namespace, tokens: $0, into: block, arena: withKV ? arena : nil)
    }
    debug("restore \(b.namespace) \(b.tokens) -> \(hit)")
    if hit && withKV {
        var got = [UInt8](repeating: 0, count: fuzzLayout.blockBytes)
        got.withUnsafeMutableBytes { arena.copyOut(block, into: $0) }
        require(got == (expecting ?? b.payload!), "restore hit with other KV than was spilled (\(b.namespace), tokens \(b.tokens))")
    }
    return hit
}

func checkReport(_ r: SpillStoreReport) {
    require(r.entries >= 0 && r.unreadableEntries >= 0 && r.unreadableEntries <= r.entries, "report counts: \(r)")
    require(r.blocks <= r.entries - r.unreadableEntries, "report: more blocks than readable entries")
    require(r.entriesPerNamespace.values.reduce(0, +) == r.entries - r.unreadableEntries, "report: namespaces do not add up")
    _ = StoreStats.text(r)
    _ = try? StoreStats.json(r)
}

/// `kvctl stats` on the work directory: a report or a typed error, never a trap.
func inspect() {
    do { checkReport(try SpillStoreReport.inspect(path: workDir)) } catch {
        _ = error.description
    }
}

/// With PREFIXKV_FUZZ_DEBUG set (replaying one input), narrates what the harness does.
func debug(_ line: @autoclosure () -> String) {
    guard getenv("PREFIXKV_FUZZ_DEBUG") != nil else { return }
    let text = Array((line() + "\n").utf8)
    _ = text.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}
