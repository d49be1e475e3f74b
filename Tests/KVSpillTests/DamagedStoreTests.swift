import Foundation
import KVCache
import KVCore
import XCTest
@testable import KVSpill
@testable import LMDB

/// A store damaged on disk (bit rot, a torn page after a crash without fsync) is input, not an
/// internal error: the writer repairs its bookkeeping or the open fails with a typed error, and
/// no damaged record is restored. Found by a fuzzing review (2026-12-01): each of these trapped
/// the process (a byte count gone negative on the background writer, an overflow at open) or
/// restored a record damaged outside its checksum.
final class DamagedStoreTests: XCTestCase {
    private func config(_ dir: String, limit: Int = 8 << 20) -> SpillStoreConfiguration {
        SpillStoreConfiguration(path: dir + "/store", layout: testLayout, limitBytes: limit, writeMode: .synchronous,
                                durable: false, statsIntervalSeconds: 0.05)
    }

    /// Spills blocks 0 ..< count of chain 1 (each block's KV from its tokens) and returns their keys.
    private func spillChain(_ store: LMDBSpillStore, _ arena: KVPageArena, count: Int) -> [(PrefixKey, [TokenID])] {
        var chain: [[TokenID]] = []
        return (0..<count).map { i in
            let tokens = blockTokens(chain: 1, index: i)
            chain.append(tokens)
            let key = store.key(chain: chain)
            fill(arena, block: BlockID(1), tokens: tokens)
            store.spill(key, tokens, block: BlockID(1), arena: arena)
            return (key, tokens)
        }
    }

    /// Rewrites `key`'s stored value behind the writer's back (its byte count not adjusted), as
    /// damage on disk would.
    private func damage(_ store: LMDBSpillStore, _ key: PrefixKey, _ edit: (inout [UInt8]) -> Void) throws {
        let db = store.database
        try db.env.withWriteTransaction { txn in
            var value = try XCTUnwrap(try txn.copyValue(for: key.byteArray, in: db.entries))
            edit(&value)
            try txn.put(value, for: key.byteArray, in: db.entries)
        }
    }

    /// The sum of the entries' sizes, read straight from LMDB.
    private func entryBytes(_ store: LMDBSpillStore) throws -> Int {
        try store.database.env.withReadTransaction { txn in try store.database.countBytes(txn) }
    }

    /// Each key's `lru` slots (sequences, oldest first) and its `access` value, read straight from LMDB.
    private func links(_ store: LMDBSpillStore) throws -> (slots: [[UInt8]: [[UInt8]]], access: [[UInt8]: [UInt8]]) {
        let db = store.database
        return try db.env.withReadTransaction { txn in
            var slots: [[UInt8]: [[UInt8]]] = [:], access: [[UInt8]: [UInt8]] = [:]
            try txn.forEach(in: db.lru) { seq, key in
                slots[Array(key), default: []].append(Array(seq))
                return true
            }
            try txn.forEach(in: db.access) { key, seq in
                access[Array(key)] = Array(seq)
                return true
            }
            return (slots, access)
        }
    }

    /// One bit of a record's size in its leaf node of `data.mdb` (the record now reads 64 KiB
    /// longer): refused on restore, and dropping it repairs the byte count instead of trapping.
    func testAnEntrySizeDamagedInDataMdbIsRecounted() throws {
        let dir = try makeTemporaryDirectory(self)
        let arena = KVPageArena(layout: testLayout, capacityBlocks: 4)
        var store: LMDBSpillStore? = try LMDBSpillStore(config(dir))
        let blocks = spillChain(store!, arena, count: 3)
        let (key, tokens) = blocks[1]
        store!.close()
        store = nil
        // The leaf node of `key` in `entries`: [size: u32][flags: u16][key size: u16 = 32][key].
        let path = dir + "/store/data.mdb"
        var file = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let k = key.byteArray
        var patched = 0
        for i in 8..<(file.count - 32) where file[i - 2] == 32 && file[i - 1] == 0 && Array(file[i..<(i + 32)]) == k {
            let size = Int(file[i - 8]) | Int(file[i - 7]) << 8 | Int(file[i - 6]) << 16 | Int(file[i - 5]) << 24
            if size > 1000 { file[i - 6] ^= 0x01; patched += 1 }
        }
        XCTAssertGreaterThanOrEqual(patched, 1)  // the live leaf, and any older copy LMDB keeps
        try Data(file).write(to: URL(fileURLWithPath: path))

        let reopened = try LMDBSpillStore(config(dir))
        XCTAssertEqual(try reopened.report().unreadableEntries, 1)
        XCTAssertFalse(reopened.restore(key, tokens, into: BlockID(2), arena: arena))
        reopened.flush()  // the writer drops the entry: the count would go negative
        XCTAssertEqual(reopened.counters.corruptDropped, 1)
        XCTAssertEqual(reopened.storedBytes, try entryBytes(reopened))
        XCTAssertGreaterThan(reopened.checkInvariants(), 0)
        // The undamaged blocks still restore their own KV.
        for (i, (other, otherTokens)) in blocks.enumerated() where i != 1 {
            XCTAssertTrue(reopened.restore(other, otherTokens, into: BlockID(2), arena: arena))
            XCTAssertEqual(contents(arena, block: BlockID(2)), expectedPayload(tokens: otherTokens, layout: testLayout))
        }
        reopened.close()
    }

    /// A record that grew behind the writer's back (the byte count not adjusted): dropped on
    /// restore with the count repaired; later spills and evictions keep it right.
    func testARecordThatGrewIsDroppedAndRecounted() throws {
        let dir = try makeTemporaryDirectory(self)
        let store = try LMDBSpillStore(config(dir))
        let arena = KVPageArena(layout: testLayout, capacityBlocks: 4)
        let (key, tokens) = spillChain(store, arena, count: 1)[0]
        try damage(store, key) { record in
            record += [UInt8](repeating: 0, count: 16)
        }
        XCTAssertFalse(store.restore(key, tokens, into: BlockID(2), arena: arena))
        store.flush()
        XCTAssertEqual(store.storedBytes, try entryBytes(store))
        _ = spillChain(store, arena, count: 2)
        XCTAssertEqual(store.storedBytes, try entryBytes(store))
        XCTAssertGreaterThan(store.checkInvariants(), 0)
        store.close()
    }

    /// A record that shrank behind the writer's back: spilling its block again replaces it
    /// (its header no longer adds up), and the count is recounted rather than left too high.
    func testARecordThatShrankIsReplacedAndRecounted() throws {
        let dir = try makeTemporaryDirectory(self)
        let store = try LMDBSpillStore(config(dir))
        let arena = KVPageArena(layout: testLayout, capacityBlocks: 4)
        let (key, tokens) = spillChain(store, arena, count: 1)[0]
        try damage(store, key) { value in
            value = Array(value.prefix(100))
        }
        _ = spillChain(store, arena, count: 3)  // block 0 again, then two more
        XCTAssertEqual(store.storedBytes, try entryBytes(store))
        XCTAssertEqual(store.checkInvariants(), 3)
        XCTAssertTrue(store.restore(key, tokens, into: BlockID(2), arena: arena))
        XCTAssertEqual(contents(arena, block: BlockID(2)), expectedPayload(tokens: tokens, layout: testLayout))
        store.close()
    }

    /// A damaged-size entry that LRU eviction reaches (no restore ever saw it): recounted.
    func testADamagedEntryReachedByEvictionIsRecounted() throws {
        let dir = try makeTemporaryDirectory(self)
        let record = testRecordBytes
        let store = try LMDBSpillStore(config(dir, limit: 3 * record))
        let arena = KVPageArena(layout: testLayout, capacityBlocks: 4)
        let (key, _) = spillChain(store, arena, count: 1)[0]
        try damage(store, key) { value in
            value += [UInt8](repeating: 0, count: 16)
        }
        _ = spillChain(store, arena, count: 6)  // block 0 is the oldest: evicted first
        XCTAssertEqual(store.storedBytes, try entryBytes(store))
        XCTAssertEqual(store.checkInvariants(), 3)
        store.close()
    }

    /// Flag bits (bytes 6 ..< 8, before the checksummed range) must be zero: a record damaged
    /// there is refused and dropped, not restored.
    func testARecordWithFlagBitsIsRefused() throws {
        let dir = try makeTemporaryDirectory(self)
        let store = try LMDBSpillStore(config(dir))
        let arena = KVPageArena(layout: testLayout, capacityBlocks: 4)
        let (key, tokens) = spillChain(store, arena, count: 1)[0]
        try damage(store, key) { record in
            record[6] = 0xff
            record[7] = 0xff
        }
        XCTAssertFalse(store.restore(key, tokens, into: BlockID(2), arena: arena))
        store.flush()
        XCTAssertEqual(store.counters.corruptDropped, 1)
        XCTAssertEqual(store.checkInvariants(), 0)
        store.close()
    }

    /// An unreadable stored byte count (top bit set, or not 8 bytes) is recounted at open.
    func testAnUnreadableByteCountIsRecountedAtOpen() throws {
        for damaged in [le(UInt64(1) << 63), [UInt8](repeating: 7, count: 3)] {
            let dir = try makeTemporaryDirectory(self, function: "\(#function)-\(damaged.count)")
            let arena = KVPageArena(layout: testLayout, capacityBlocks: 4)
            let written: Int
            do {
                let store = try LMDBSpillStore(config(dir))
                _ = spillChain(store, arena, count: 2)
                written = store.storedBytes
                try store.database.env.withWriteTransaction { txn in
                    try txn.put(damaged, for: StoreDatabase.MetaKey.bytes, in: store.database.meta)
                }
                store.close()
            }
            let reopened = try LMDBSpillStore(config(dir))
            XCTAssertEqual(reopened.storedBytes, written, "\(damaged)")
            _ = spillChain(reopened, arena, count: 3)  // spills go on from the recount
            XCTAssertEqual(reopened.checkInvariants(), 3)
            reopened.close()
        }
    }

    /// An unreadable newest LRU sequence cannot be continued: the open is `.damaged`, and
    /// `remove(path:)` clears the store so the next open starts empty.
    func testAnUnreadableLRUSequenceIsATypedErrorAndTheStoreRemovable() throws {
        for damagedKey in [be(UInt64.max), [UInt8](repeating: 0xff, count: 9)] {
            let dir = try makeTemporaryDirectory(self, function: "\(#function)-\(damagedKey.count)")
            let arena = KVPageArena(layout: testLayout, capacityBlocks: 4)
            do {
                let store = try LMDBSpillStore(config(dir))
                let (key, _) = spillChain(store, arena, count: 1)[0]
                try store.database.env.withWriteTransaction { txn in
                    try txn.put(key.byteArray, for: damagedKey, in: store.database.lru)
                }
                store.close()
            }
            XCTAssertThrowsError(try LMDBSpillStore(config(dir))) { error in
                guard case .damaged(_, let why)? = error as? SpillStoreError else { return XCTFail("\(error)") }
                XCTAssertTrue(why.contains("LRU"), why)
            }
            try LMDBSpillStore.remove(path: dir + "/store")
            let fresh = try LMDBSpillStore(config(dir))
            XCTAssertEqual(fresh.checkInvariants(), 0)
            fresh.close()
        }
    }

    /// LRU slots that name no key, or a key with no entry, are dropped as eviction walks past
    /// them; the real entries behind them are evicted as usual.
    func testEvictionWalksPastDamagedLRUSlots() throws {
        let dir = try makeTemporaryDirectory(self)
        let record = testRecordBytes
        do {  // two damaged slots, older than any the store will write after reopening
            let empty = try LMDBSpillStore(config(dir, limit: 3 * record))
            let db = empty.database
            try db.env.withWriteTransaction { txn in
                try txn.put([UInt8](repeating: 1, count: 5), for: be(UInt64(0)), in: db.lru)
                try txn.put([UInt8](repeating: 2, count: 32), for: be(UInt64(1)), in: db.lru)
            }
            empty.close()
        }
        let store = try LMDBSpillStore(config(dir, limit: 3 * record))
        let arena = KVPageArena(layout: testLayout, capacityBlocks: 4)
        let blocks = spillChain(store, arena, count: 5)  // over the limit: evicts from the oldest slot
        XCTAssertEqual(store.storedBytes, try entryBytes(store))
        XCTAssertEqual(store.checkInvariants(), 3)
        let (last, lastTokens) = blocks[4]
        XCTAssertTrue(store.restore(last, lastTokens, into: BlockID(2), arena: arena))
        store.close()
    }

    /// An `access` value that is no sequence (empty, or longer than LMDB takes as a key) is
    /// damage too: touching or replacing that key looked its `lru` slot up by it, LMDB refused the
    /// key (MDB_BAD_VALSIZE) and the writer dropped the whole batch, so every restore of that
    /// prefix cost the spills committed with its touch. Found by tools/fuzz (harness `store`).
    func testADamagedAccessValueCostsNoOtherSpill() throws {
        let dir = try makeTemporaryDirectory(self)
        let store = try LMDBSpillStore(config(dir))
        let arena = KVPageArena(layout: testLayout, capacityBlocks: 4)
        let blocks = spillChain(store, arena, count: 2)
        let db = store.database
        try db.env.withWriteTransaction { txn in
            try txn.put([UInt8](), for: blocks[0].0.byteArray, in: db.access)
            try txn.put([UInt8](repeating: 7, count: 600), for: blocks[1].0.byteArray, in: db.access)
        }
        // Both entries are intact: they restore (and queue LRU touches).
        for (key, tokens) in blocks {
            XCTAssertTrue(store.restore(key, tokens, into: BlockID(2), arena: arena))
                XCTAssertTrue(contents(arena, block: BlockID(2)) == expectedPayload(tokens: tokens, layout: testLayout))
        }
        // The next commits carry those touches, and a replacement of block 1's record (a
        // token-only spill of a key stored with KV): nothing is dropped.
        let fresh = blockTokens(chain: 2, index: 0)
        let freshKey = store.key(chain: [fresh])
        fill(arena, block: BlockID(1), tokens: fresh)
        store.spill(freshKey, fresh, block: BlockID(1), arena: arena)
        store.spill(blocks[1].0, blocks[1].1, block: BlockID(1), arena: nil)
        store.flush()
        XCTAssertEqual(store.counters.recordsFailed, 0)
        XCTAssertTrue(store.restore(freshKey, fresh, into: BlockID(3), arena: arena))
        XCTAssertTrue(contents(arena, block: BlockID(3)) == expectedPayload(tokens: fresh, layout: testLayout))
        XCTAssertTrue(store.restore(blocks[1].0, blocks[1].1, into: BlockID(3), arena: nil))
        XCTAssertEqual(store.storedBytes, try entryBytes(store))
        store.close()
    }

    /// Entries gone from `entries` with their `lru` slots and byte count left behind (damage on
    /// disk): the writer counted on with their bytes and evicted good entries to make room that
    /// was there, down to the newest but one. Eviction now recounts at the first slot that names
    /// no entry. Found by tools/fuzz (harness `store`).
    func testEntriesLostWithoutTheirSlotsDoNotEvictGoodOnes() throws {
        let dir = try makeTemporaryDirectory(self)
        let record = testRecordBytes
        let store = try LMDBSpillStore(config(dir, limit: 4 * record))
        let arena = KVPageArena(layout: testLayout, capacityBlocks: 4)
        let old = spillChain(store, arena, count: 4)
        let db = store.database
        try db.env.withWriteTransaction { txn in
            for (key, _) in old.prefix(2) { try txn.delete(key.byteArray, in: db.entries) }
        }
        let fresh = (0..<3).map { blockTokens(chain: 3, index: $0) }
        for tokens in fresh {
            fill(arena, block: BlockID(1), tokens: tokens)
            store.spill(store.key(chain: [tokens]), tokens, block: BlockID(1), arena: arena)
        }
        store.flush()
        for tokens in fresh {
            XCTAssertTrue(store.restore(store.key(chain: [tokens]), tokens, into: BlockID(2), arena: arena))
            XCTAssertTrue(contents(arena, block: BlockID(2)) == expectedPayload(tokens: tokens, layout: testLayout))
        }
        XCTAssertEqual(store.storedBytes, try entryBytes(store))
        XCTAssertEqual(store.storedBytes, 4 * record)
        XCTAssertEqual(store.checkInvariants(), 4)
        store.close()
    }

    /// The `access` repair leaves the indexes agreeing: a key whose `access` value is no sequence
    /// (empty, over-long) or names another key's slot is relinked when touched or replaced, and
    /// its old slot goes with it. It stayed until eviction met it (the key in the LRU order
    /// twice, the checker trapping meanwhile), and a value naming another key's slot deleted
    /// that key's slot instead, leaving that entry out of the LRU order.
    func testADamagedAccessValueIsRelinkedWithItsOldSlotDropped() throws {
        let dir = try makeTemporaryDirectory(self)
        let store = try LMDBSpillStore(config(dir))
        let arena = KVPageArena(layout: testLayout, capacityBlocks: 4)
        let blocks = spillChain(store, arena, count: 4)
        let db = store.database
        try db.env.withWriteTransaction { txn in
            try txn.put([UInt8](), for: blocks[0].0.byteArray, in: db.access)
            try txn.put([UInt8](repeating: 7, count: 600), for: blocks[1].0.byteArray, in: db.access)
            let slotOf3 = try XCTUnwrap(try txn.copyValue(for: blocks[3].0.byteArray, in: db.access))
            try txn.put(slotOf3, for: blocks[2].0.byteArray, in: db.access)
        }
        // Touches of blocks 0 and 2 (restores), a replacement of block 1 (a token-only spill).
        for (key, tokens) in [blocks[0], blocks[2]] {
            XCTAssertTrue(store.restore(key, tokens, into: BlockID(2), arena: arena))
        }
        store.spill(blocks[1].0, blocks[1].1, block: BlockID(1), arena: nil)
        store.flush()
        XCTAssertEqual(store.counters.recordsFailed, 0)
        let (slots, access) = try links(store)
        for (i, (key, _)) in blocks.enumerated() {
            XCTAssertEqual(slots[key.byteArray]?.count, 1, "block \(i): one LRU slot")
            XCTAssertEqual(slots[key.byteArray]?.first, access[key.byteArray], "block \(i): its access value names its slot")
        }
        XCTAssertEqual(slots.values.reduce(0) { $0 + $1.count }, 4)
        XCTAssertEqual(store.checkInvariants(), 4)
        for (key, tokens) in [blocks[0], blocks[2], blocks[3]] {
            XCTAssertTrue(store.restore(key, tokens, into: BlockID(2), arena: arena))
            XCTAssertTrue(contents(arena, block: BlockID(2)) == expectedPayload(tokens: tokens, layout: testLayout))
        }
        store.close()
    }

    /// A wrong but readable meta `bytes` is verified at open (a recount over `entries`) and
    /// written back. Trusted, a count too high evicted good entries for room that was there, and
    /// one too low let the store outgrow its limit, until something recounted.
    func testAWrongByteCountIsRecountedAtOpen() throws {
        let record = testRecordBytes
        // (stated count, limit in records): two records are stored.
        for (stated, limit) in [(4 * record, 4), (0, 3)] {
            let dir = try makeTemporaryDirectory(self, function: "\(#function)-\(stated)")
            let arena = KVPageArena(layout: testLayout, capacityBlocks: 4)
            do {
                let store = try LMDBSpillStore(config(dir, limit: limit * record))
                _ = spillChain(store, arena, count: 2)
                try store.database.env.withWriteTransaction { txn in
                    try txn.put(le(UInt64(stated)), for: StoreDatabase.MetaKey.bytes, in: store.database.meta)
                }
                store.close()
            }
            let reopened = try LMDBSpillStore(config(dir, limit: limit * record))
            XCTAssertEqual(reopened.storedBytes, 2 * record, "stated \(stated)")
            XCTAssertEqual(try reopened.database.env.withReadTransaction { txn in try reopened.database.readBytes(txn) }, 2 * record,
                           "stated \(stated): the recount is written back at open")
            let blocks = spillChain(reopened, arena, count: 4)  // blocks 0 and 1 again (touched), two new
            XCTAssertEqual(reopened.storedBytes, try entryBytes(reopened), "stated \(stated)")
            XCTAssertEqual(reopened.storedBytes, min(4, limit) * record, "stated \(stated)")
            // Only what the limit needs is evicted: the oldest, block 0, when the limit is 3.
            for (i, (key, tokens)) in blocks.enumerated() {
                XCTAssertEqual(reopened.restore(key, tokens, into: BlockID(2), arena: arena), i >= 4 - limit, "stated \(stated), block \(i)")
            }
            XCTAssertEqual(reopened.checkInvariants(), min(4, limit))
            reopened.close()
        }
    }

    /// The reserved word (bytes 44 ..< 48) and the zero padding before the payload must be zero:
    /// the writer stores zeros there, so anything else, even under a checksum that verifies
    /// (resealed here), is a record this version does not understand: a miss and dropped, never
    /// restored. Read before, such a record restored as if the bytes were zero.
    func testARecordWithNonzeroReservedBytesIsRefused() throws {
        let tokensEnd = SpillRecord.fixedHeaderBytes + 4 * 16 + Namespace.default.rawValue.utf8.count
        let payloadStart = SpillRecord.payloadOffset(namespaceBytes: Namespace.default.rawValue.utf8.count, tokenCount: 16)
        XCTAssertLessThan(tokensEnd, payloadStart)  // the default namespace leaves padding
        for at in [44, 47, tokensEnd, payloadStart - 1] {
            let dir = try makeTemporaryDirectory(self, function: "\(#function)-\(at)")
            let store = try LMDBSpillStore(config(dir))
            let arena = KVPageArena(layout: testLayout, capacityBlocks: 4)
            let (key, tokens) = spillChain(store, arena, count: 1)[0]
            try damage(store, key) { record in
                record[at] = 1
                record.withUnsafeMutableBytes { SpillRecord.seal($0) }
            }
            XCTAssertFalse(store.contains(key, tokens), "byte \(at)")
            XCTAssertFalse(store.restore(key, tokens, into: BlockID(2), arena: arena), "byte \(at)")
            store.flush()
            XCTAssertEqual(store.counters.corruptDropped, 1, "byte \(at)")
            XCTAssertEqual(store.checkInvariants(), 0, "byte \(at)")
            _ = spillChain(store, arena, count: 1)  // spilled again: a good record
            XCTAssertTrue(store.restore(key, tokens, into: BlockID(2), arena: arena), "byte \(at)")
            XCTAssertTrue(contents(arena, block: BlockID(2)) == expectedPayload(tokens: tokens, layout: testLayout))
            store.close()
        }
    }
}
