import Foundation
import KVCache
import KVCore
import XCTest
@testable import KVSpill
@testable import LMDB

final class SpillStoreTests: XCTestCase {
    func openStore(_ dir: String, limit: Int = 8 << 20, mode: SpillStoreConfiguration.WriteMode = .background(queueLimitBytes: 4 << 20),
                   layout: KVLayout = testLayout, durable: Bool = false) throws -> LMDBSpillStore {
        try LMDBSpillStore(SpillStoreConfiguration(path: dir + "/store", layout: layout, limitBytes: limit, writeMode: mode,
                                                   durable: durable, statsIntervalSeconds: 0.05))
    }

    /// Spills `count` blocks of chain `chain` (one key chain) from an arena and returns their keys and tokens.
    @discardableResult
    func spillChain(_ store: LMDBSpillStore, arena: KVPageArena, chain: Int, count: Int, namespace: Namespace = .default) -> [(PrefixKey, [TokenID])] {
        var parent = store.rootKey(namespace: namespace)
        var out: [(PrefixKey, [TokenID])] = []
        for i in 0..<count {
            let tokens = blockTokens(chain: chain, index: i)
            let key = tokens.withUnsafeBufferPointer { store.childKey(parent: parent, tokens: $0) }
            fill(arena, block: BlockID(1), tokens: tokens)
            store.spill(key, namespace, tokens, block: BlockID(1), arena: arena)
            out.append((key, tokens))
            parent = key
        }
        return out
    }

    func testSpillThenRestoreRoundTripsInBothModes() throws {
        for mode in [SpillStoreConfiguration.WriteMode.synchronous, .background(queueLimitBytes: 1 << 20)] {
            let store = try openStore(try makeTemporaryDirectory(self) + "/\(mode == .synchronous ? "sync" : "bg")", mode: mode)
            let arena = KVPageArena(layout: testLayout, capacityBlocks: 4)
            let blocks = spillChain(store, arena: arena, chain: 1, count: 20)
            store.flush()
            XCTAssertEqual(store.checkInvariants(), 20)
            for (key, tokens) in blocks {
                XCTAssertTrue(store.contains(key, tokens))
                arena.withUnsafeMutableBlockBytes(BlockID(2), layer: 0, kind: .keys) { _ = $0.initializeMemory(as: UInt8.self, repeating: 0) }
                XCTAssertTrue(store.restore(key, tokens, into: BlockID(2), arena: arena), "\(mode)")
                XCTAssertEqual(contents(arena, block: BlockID(2)), expectedPayload(tokens: tokens, layout: testLayout))
            }
            let c = store.counters
            XCTAssertEqual(c.spills, 20)
            XCTAssertEqual(c.recordsWritten, 20)
            XCTAssertEqual(c.restoreHits, 20)
            XCTAssertEqual(c.restoreMisses, 0)
            // A block evicted again after coming back is not written twice.
            store.spill(blocks[3].0, blocks[3].1, block: BlockID(1), arena: arena)
            store.flush()
            XCTAssertEqual(store.counters.spills, 20)
            store.close()
        }
    }

    func testMissesForOtherTokensOtherNamespacesAndAbsentKeys() throws {
        let store = try openStore(try makeTemporaryDirectory(self))
        let arena = KVPageArena(layout: testLayout, capacityBlocks: 4)
        let a = spillChain(store, arena: arena, chain: 1, count: 2, namespace: "tenant-a")
        store.flush()
        let (key, tokens) = a[1]
        // Same tokens and history in another namespace: another key, not found.
        let otherKey = store.key(namespace: "tenant-b", chain: [a[0].1, a[1].1])
        XCTAssertNotEqual(otherKey, key)
        XCTAssertFalse(store.contains(otherKey, tokens))
        XCTAssertFalse(store.restore(otherKey, "tenant-b", tokens, into: BlockID(2), arena: arena))
        // Same block tokens after another history: another key.
        XCTAssertNotEqual(store.key(namespace: "tenant-a", chain: [blockTokens(chain: 9, index: 0), tokens]), key)
        XCTAssertEqual(store.counters.corruptDropped, 0)
        XCTAssertEqual(store.counters.restoreMisses, 1)
        // The key's entry asked for with other tokens: never used, dropped as bad, counted.
        var wrong = tokens
        wrong[5] += 1
        XCTAssertFalse(store.contains(key, wrong))
        XCTAssertFalse(store.restore(key, "tenant-a", wrong, into: BlockID(2), arena: arena))
        store.flush()
        XCTAssertEqual(store.counters.corruptDropped, 1)
        XCTAssertFalse(store.contains(key, tokens))
        XCTAssertEqual(store.checkInvariants(), 1)
        XCTAssertEqual(try store.report().entriesPerNamespace, ["tenant-a": 1])
    }

    /// Rewrites the committed record of `key` through the store's own environment, as bit rot or
    /// a torn write would (no new checksum), keeping the stored byte count honest for truncations.
    func tamper(_ store: LMDBSpillStore, _ key: PrefixKey, _ edit: (inout [UInt8]) -> Void) throws {
        let db = store.database
        let shrunk = try db.env.withWriteTransaction { txn in
            var record = try XCTUnwrap(try txn.copyValue(for: key.byteArray, in: db.entries))
            let before = record.count
            edit(&record)
            try txn.put(record, for: key.byteArray, in: db.entries)
            try txn.put(le(UInt64(try XCTUnwrap(try db.readBytes(txn)) - (before - record.count))), for: StoreDatabase.MetaKey.bytes, in: db.meta)
            return before - record.count
        }
        store.writer.adjustCommittedBytesForTests(by: -shrunk)
    }

    func testCorruptRecordsAreMissesDroppedAndCounted() throws {
        let store = try openStore(try makeTemporaryDirectory(self), mode: .synchronous)
        let arena = KVPageArena(layout: testLayout, capacityBlocks: 4)
        let blocks = spillChain(store, arena: arena, chain: 2, count: 6)
        let payloadStart = SpillRecord.payloadOffset(namespaceBytes: 7, tokenCount: 16)
        let edits: [(String, (inout [UInt8]) -> Void)] = [
            ("payload bit flip", { $0[payloadStart + 1000] ^= 0x10 }),
            ("token changed", { $0[SpillRecord.fixedHeaderBytes + 8] ^= 1 }),
            ("key changed", { $0[SpillRecord.keyOffset + 3] ^= 1 }),
            ("truncated", { $0.removeLast(100) }),
            ("other layout", { $0[16] = 3 }),  // layer count 2 → 3
            ("bad magic", { $0[0] = 0 }),
        ]
        for ((name, edit), (key, tokens)) in zip(edits, blocks) {
            try tamper(store, key, edit)
            let before = contents(arena, block: BlockID(3))
            XCTAssertFalse(store.restore(key, tokens, into: BlockID(3), arena: arena), name)
            XCTAssertEqual(contents(arena, block: BlockID(3)), before, "\(name): nothing is copied in before verification")
        }
        store.flush()
        XCTAssertEqual(store.counters.corruptDropped, 6)
        XCTAssertEqual(store.counters.restoreHits, 0)
        XCTAssertEqual(store.checkInvariants(), 0, "every bad entry was dropped")
        XCTAssertEqual(store.storedBytes, 0)
    }

    /// A record is tied to its key: prefix A's record under prefix B's key, where B's last block
    /// has the same tokens (padding, repeated chunks after different histories), used to pass
    /// every check and restore A's KV for B. The record now carries its key (checksummed):
    /// a mismatch is a counted defect, never restored, and the entry is dropped.
    func testARecordUnderAnotherPrefixsKeyIsADefectNotAHit() throws {
        let store = try openStore(try makeTemporaryDirectory(self), mode: .synchronous)
        let arena = KVPageArena(layout: testLayout, capacityBlocks: 4)
        let a0 = blockTokens(chain: 1, index: 0), b0 = blockTokens(chain: 2, index: 0)
        let shared = blockTokens(chain: 9, index: 7)  // the same block tokens after two histories
        let keyA = store.key(chain: [a0, shared]), keyB = store.key(chain: [b0, shared])
        fill(arena, block: BlockID(1), tokens: a0 + shared)  // different KV: the context differs
        store.spill(keyA, shared, block: BlockID(1), arena: arena)
        fill(arena, block: BlockID(1), tokens: b0 + shared)
        store.spill(keyB, shared, block: BlockID(1), arena: arena)
        // A misdirected write (a bug, a restore from a mixed backup): A's whole, valid record
        // lands under B's key. Same size, so the byte accounting stays right.
        let db = store.database
        try db.env.withWriteTransaction { txn in
            let recordA = try XCTUnwrap(try txn.copyValue(for: keyA.byteArray, in: db.entries))
            try txn.put(recordA, for: keyB.byteArray, in: db.entries)
        }
        XCTAssertEqual(try store.report().unreadableEntries, 1)
        XCTAssertFalse(store.contains(keyB, shared))
        let before = contents(arena, block: BlockID(2))
        XCTAssertFalse(store.restore(keyB, shared, into: BlockID(2), arena: arena), "A's KV must not be restored for B")
        XCTAssertTrue(contents(arena, block: BlockID(2)) == before, "nothing is copied in")
        store.flush()
        XCTAssertEqual(store.counters.corruptDropped, 1)
        XCTAssertEqual(store.checkInvariants(), 1, "B's entry was dropped")
        XCTAssertTrue(store.restore(keyA, shared, into: BlockID(2), arena: arena))
        XCTAssertTrue(contents(arena, block: BlockID(2)) == expectedPayload(tokens: a0 + shared, layout: testLayout), "A's own KV")
        // B spilled again, and A's record misplaced over it again: the next spill of B (a block
        // evicted again) must rewrite it, not take the record that is not B's for B's.
        fill(arena, block: BlockID(1), tokens: b0 + shared)
        store.spill(keyB, shared, block: BlockID(1), arena: arena)
        try db.env.withWriteTransaction { txn in
            let recordA = try XCTUnwrap(try txn.copyValue(for: keyA.byteArray, in: db.entries))
            try txn.put(recordA, for: keyB.byteArray, in: db.entries)
        }
        let written = store.counters.recordsWritten
        store.spill(keyB, shared, block: BlockID(1), arena: arena)
        XCTAssertEqual(store.counters.recordsWritten, written + 1, "rewritten, not merely touched")
        XCTAssertTrue(store.restore(keyB, shared, into: BlockID(2), arena: arena))
        XCTAssertTrue(contents(arena, block: BlockID(2)) == expectedPayload(tokens: b0 + shared, layout: testLayout), "B's own KV")
        XCTAssertEqual(store.checkInvariants(), 2)
    }

    func testSizeLimitDropsLeastRecentlyUsedAndRestoresRefreshRecency() throws {
        let recordBytes = SpillRecord.payloadOffset(namespaceBytes: 7, tokenCount: 16) + testLayout.blockBytes
        let store = try openStore(try makeTemporaryDirectory(self), limit: 10 * recordBytes, mode: .synchronous)
        let arena = KVPageArena(layout: testLayout, capacityBlocks: 4)
        let first = spillChain(store, arena: arena, chain: 1, count: 10)
        XCTAssertEqual(store.storedBytes, 10 * recordBytes)
        // Use the oldest block: it becomes the most recent.
        XCTAssertTrue(store.restore(first[0].0, first[0].1, into: BlockID(2), arena: arena))
        spillChain(store, arena: arena, chain: 2, count: 5)
        store.flush()
        XCTAssertEqual(store.checkInvariants(), 10)
        XCTAssertLessThanOrEqual(store.storedBytes, 10 * recordBytes)
        XCTAssertEqual(store.counters.lruEvictions, 5)
        XCTAssertTrue(store.contains(first[0].0, first[0].1), "the restored block was refreshed")
        for (key, tokens) in first[1...5] { XCTAssertFalse(store.contains(key, tokens), "oldest untouched blocks go first") }
        for (key, tokens) in first[6...] { XCTAssertTrue(store.contains(key, tokens)) }
    }

    func testMapGrowsUpToTheLimitAndInjectedMapFullIsRetried() throws {
        let layout = try KVLayout(layerCount: 2, kvHeadCount: 8, headDim: 128, blockSize: 16)  // 128 KiB blocks
        var config = SpillStoreConfiguration(path: try makeTemporaryDirectory(self) + "/store", layout: layout, limitBytes: 64 << 20,
                                             writeMode: .background(queueLimitBytes: 16 << 20), durable: false)
        config.initialMapSizeBytes = 1 << 20
        let store = try LMDBSpillStore(config)
        let arena = KVPageArena(layout: layout, capacityBlocks: 2)
        XCTAssertEqual(try store.database.env.info().mapSize, 1 << 20)
        let blocks = spillChain(store, arena: arena, chain: 1, count: 200)  // 25 MiB
        store.flush()
        // How many steps the growth takes depends on the background writer's batch sizes (each
        // step at least doubles the map, or adds four batches' bytes): only that it grew from
        // 1 MiB to hold the 25 MiB, within the limit, is the contract.
        XCTAssertGreaterThanOrEqual(store.counters.mapGrowths, 1)
        XCTAssertEqual(store.counters.recordsWritten, 200)
        XCTAssertEqual(store.counters.recordsFailed, 0)
        XCTAssertGreaterThanOrEqual(try store.database.env.info().mapSize, 25 << 20)
        XCTAssertLessThanOrEqual(try store.database.env.info().mapSize, store.configuration.mapSizeLimit)

        store.database.env.faults.fail(.put, with: .mapFull)
        spillChain(store, arena: arena, chain: 2, count: 1)
        store.flush()
        XCTAssertEqual(store.counters.recordsFailed, 0)
        XCTAssertEqual(store.counters.recordsWritten, 201)
        XCTAssertGreaterThanOrEqual(store.counters.mapFullRetries, 2)
        XCTAssertEqual(store.checkInvariants(), 201)
        XCTAssertTrue(store.restore(blocks[150].0, blocks[150].1, into: BlockID(0), arena: arena))
        XCTAssertEqual(contents(arena, block: BlockID(0)), expectedPayload(tokens: blocks[150].1, layout: layout))
    }

    func testDiskFullAndIOErrorsAreCountedAndTheStoreKeepsWorking() throws {
        let store = try openStore(try makeTemporaryDirectory(self), mode: .synchronous)
        let arena = KVPageArena(layout: testLayout, capacityBlocks: 4)
        spillChain(store, arena: arena, chain: 1, count: 10)
        let bytesBefore = store.storedBytes
        store.database.env.faults.fail(.txnCommit, with: .noSpace)
        let next = spillChain(store, arena: arena, chain: 2, count: 1)
        XCTAssertEqual(store.counters.diskFullEvents, 1)
        XCTAssertEqual(store.counters.recordsFailed, 0, "the retry after making room commits")
        XCTAssertTrue(store.contains(next[0].0, next[0].1))
        XCTAssertLessThanOrEqual(store.storedBytes, bytesBefore, "the store shrank to what the disk held")

        store.database.env.faults.fail(.txnCommit, with: .ioError, times: 100)
        let lost = spillChain(store, arena: arena, chain: 3, count: 2)
        XCTAssertEqual(store.counters.recordsFailed, 2)
        XCTAssertFalse(store.restore(lost[0].0, lost[0].1, into: BlockID(2), arena: arena))
        store.database.env.faults.clear()
        let later = spillChain(store, arena: arena, chain: 4, count: 2)
        XCTAssertTrue(store.restore(later[1].0, later[1].1, into: BlockID(2), arena: arena))
        XCTAssertEqual(contents(arena, block: BlockID(2)), expectedPayload(tokens: later[1].1, layout: testLayout))
        store.checkInvariants()
    }

    /// One transient `ENOSPC` used to set the limit in force to 0 for the rest of the process:
    /// every later record was "too large" and the store stayed empty with the disk free again.
    /// The limit now keeps room for a record and recovers once the disk has room.
    func testATransientFullDiskDoesNotDisableTheStore() throws {
        let store = try openStore(try makeTemporaryDirectory(self), mode: .synchronous)
        let arena = KVPageArena(layout: testLayout, capacityBlocks: 4)
        spillChain(store, arena: arena, chain: 1, count: 1)
        store.database.env.faults.fail(.txnCommit, with: .noSpace)  // one ENOSPC, on a store of one record
        let during = spillChain(store, arena: arena, chain: 2, count: 1)
        store.database.env.faults.clear()
        XCTAssertEqual(store.counters.diskFullEvents, 1)
        XCTAssertEqual(store.counters.recordsFailed, 0)
        XCTAssertTrue(store.restore(during[0].0, during[0].1, into: BlockID(2), arena: arena), "the record that met the full disk was kept")
        let later = spillChain(store, arena: arena, chain: 3, count: 20)  // the disk has room again
        let c = store.counters
        XCTAssertEqual(c.recordsTooLarge, 0, "4 KiB records under an 8 MiB limit are not 'too large' (\(c))")
        XCTAssertEqual(c.recordsFailed, 0)
        XCTAssertEqual(store.writer.withStateLocked { $0.limitBytes }, 8 << 20, "the limit in force recovered")
        for (key, tokens) in later {
            XCTAssertTrue(store.restore(key, tokens, into: BlockID(2), arena: arena), "blocks spilled after the disk recovered are all kept")
            XCTAssertEqual(contents(arena, block: BlockID(2)), expectedPayload(tokens: tokens, layout: testLayout))
        }
        XCTAssertEqual(store.checkInvariants(), 21)
    }

    /// A full quota is a full disk for the store's user: LMDB passes the write's `EDQUOT` through
    /// (and `statvfs` shows the file system's free space, not the quota's). It was dropped like an
    /// I/O error — every batch, for as long as the quota stayed full — instead of making room.
    func testAnExceededDiskQuotaIsHandledLikeAFullDisk() throws {
        let store = try openStore(try makeTemporaryDirectory(self), mode: .synchronous)
        let arena = KVPageArena(layout: testLayout, capacityBlocks: 4)
        spillChain(store, arena: arena, chain: 1, count: 10)
        let bytesBefore = store.storedBytes
        store.database.env.faults.fail(.txnCommit, with: LMDBError(rawValue: EDQUOT))
        let next = spillChain(store, arena: arena, chain: 2, count: 1)
        store.database.env.faults.clear()
        XCTAssertEqual(store.counters.diskFullEvents, 1)
        XCTAssertEqual(store.counters.recordsFailed, 0, "the retry after making room commits")
        XCTAssertTrue(store.restore(next[0].0, next[0].1, into: BlockID(2), arena: arena), "the record that met the full quota was kept")
        XCTAssertTrue(contents(arena, block: BlockID(2)) == expectedPayload(tokens: next[0].1, layout: testLayout))
        XCTAssertLessThanOrEqual(store.storedBytes, bytesBefore, "the store shrank to what the quota held")
        store.checkInvariants()
    }

    /// A stored record that is bad but not yet detected used to make a later spill of the same
    /// block (good KV) a mere LRU touch: the bad copy was kept and refreshed, the next restore
    /// missed. Re-eviction now checksums the stored record and rewrites it.
    func testReSpillingOverAnUndetectedBadRecordRewritesIt() throws {
        for mode in [SpillStoreConfiguration.WriteMode.synchronous, .background(queueLimitBytes: 4 << 20)] {
            let store = try openStore(try makeTemporaryDirectory(self) + "/\(mode == .synchronous ? "sync" : "bg")", mode: mode)
            let arena = KVPageArena(layout: testLayout, capacityBlocks: 4)
            let (key, tokens) = spillChain(store, arena: arena, chain: 1, count: 1)[0]
            store.flush()
            try tamper(store, key) { $0[$0.count - 10] ^= 0x40 }  // bit rot in the payload
            fill(arena, block: BlockID(1), tokens: tokens)  // the block is recomputed and evicted again
            store.spill(key, tokens, block: BlockID(1), arena: arena)
            store.flush()
            XCTAssertEqual(store.counters.corruptDropped, 1, "\(mode)")
            XCTAssertEqual(store.counters.recordsWritten, 2, "\(mode): the good KV was written")
            XCTAssertTrue(store.restore(key, tokens, into: BlockID(2), arena: arena), "\(mode): the good KV spilled last is kept")
            XCTAssertEqual(contents(arena, block: BlockID(2)), expectedPayload(tokens: tokens, layout: testLayout))
            XCTAssertEqual(store.checkInvariants(), 1)
            // A good stored record is still not rewritten.
            store.spill(key, tokens, block: BlockID(1), arena: arena)
            store.flush()
            XCTAssertEqual(store.counters.recordsWritten, 2, "\(mode)")
            store.close()
        }
    }

    /// "After close() the store answers like an empty one": `flush()` of a non-durable store
    /// trapped (it synced a closed environment) and `report()` trapped reading its info. Now
    /// every public call is safe after close; `report()` throws `.closed`.
    func testEveryCallAfterCloseAnswersWithoutTrapping() throws {
        for mode in [SpillStoreConfiguration.WriteMode.synchronous, .background(queueLimitBytes: 1 << 20)] {
            let path = try makeTemporaryDirectory(self) + "/\(mode == .synchronous ? "sync" : "bg")"
            let store = try openStore(path, mode: mode, durable: false)
            let arena = KVPageArena(layout: testLayout, capacityBlocks: 4)
            let (key, tokens) = spillChain(store, arena: arena, chain: 1, count: 1)[0]
            store.close()
            store.flush()
            XCTAssertThrowsError(try store.report()) { XCTAssertEqual($0 as? SpillStoreError, .closed(path: path + "/store")) }
            XCTAssertFalse(store.restore(key, tokens, into: BlockID(2), arena: arena))
            XCTAssertFalse(store.contains(key, tokens))
            spillChain(store, arena: arena, chain: 2, count: 1)
            store.publish(stats: KVCacheStats())
            XCTAssertEqual(store.checkInvariants(), 0)
            XCTAssertEqual(store.counters.recordsWritten, 1)
            store.close()
            XCTAssertEqual(try SpillStoreReport.inspect(path: path + "/store").entries, 1, "\(mode): what close() committed is there")
        }
    }

    func testAFullQueueDropsSpillsInsteadOfStalling() throws {
        let store = try openStore(try makeTemporaryDirectory(self), mode: .background(queueLimitBytes: 1))
        let arena = KVPageArena(layout: testLayout, capacityBlocks: 2)
        let start = DispatchTime.now().uptimeNanoseconds
        let blocks = spillChain(store, arena: arena, chain: 1, count: 50)
        XCTAssertLessThan(DispatchTime.now().uptimeNanoseconds - start, 2_000_000_000)
        store.flush()
        XCTAssertEqual(store.counters.spillsDroppedQueueFull, 50)
        XCTAssertFalse(store.restore(blocks[0].0, blocks[0].1, into: BlockID(1), arena: arena))
    }

    func testDropWhenFullIsTheDefaultAndNeverWaits() throws {
        let config = SpillStoreConfiguration(path: "/unused", layout: testLayout)
        XCTAssertEqual(config.whenQueueFull, .dropWhenFull)
        let store = try LMDBSpillStore(SpillStoreConfiguration(path: try makeTemporaryDirectory(self) + "/store", layout: testLayout,
                                                               writeMode: .background(queueLimitBytes: 1), durable: false))
        let arena = KVPageArena(layout: testLayout, capacityBlocks: 2)
        spillChain(store, arena: arena, chain: 1, count: 20)
        store.flush()
        XCTAssertEqual(store.counters.spillsDroppedQueueFull, 20)
        XCTAssertEqual(store.counters.spillWaits, 0)
        XCTAssertEqual(store.checkInvariants(), 0)
    }

    func testWaitWhenFullLosesNoSpillWithATinyQueue() throws {
        let store = try LMDBSpillStore(SpillStoreConfiguration(path: try makeTemporaryDirectory(self) + "/store", layout: testLayout,
                                                               writeMode: .background(queueLimitBytes: 3 * testLayout.blockBytes),
                                                               durable: false, whenQueueFull: .waitWhenFull))
        let arena = KVPageArena(layout: testLayout, capacityBlocks: 4)
        // Hold the writer off for a while (as a slow disk would), so the queue fills for certain.
        let holding = DispatchSemaphore(value: 0)
        let blocker = Thread {
            store.writer.withStateLocked { _ in
                holding.signal()
                usleep(300_000)
            }
        }
        blocker.start()
        holding.wait()
        let start = DispatchTime.now().uptimeNanoseconds
        let blocks = spillChain(store, arena: arena, chain: 1, count: 200)
        XCTAssertGreaterThan(DispatchTime.now().uptimeNanoseconds - start, 100_000_000, "spills waited for the held writer")
        store.flush()
        let c = store.counters
        XCTAssertEqual(c.spillsDroppedQueueFull, 0)
        XCTAssertGreaterThan(c.spillWaits, 0, "a queue of three blocks must have made spills wait")
        XCTAssertEqual(c.recordsWritten, 200)
        XCTAssertEqual(store.checkInvariants(), 200)
        for (i, (key, tokens)) in blocks.enumerated() where i % 37 == 0 || i == 199 {
            XCTAssertTrue(store.restore(key, tokens, into: BlockID(2), arena: arena), "block \(i)")
            XCTAssertEqual(contents(arena, block: BlockID(2)), expectedPayload(tokens: tokens, layout: testLayout))
        }
    }

    /// A record larger than the whole queue waits for the queue to empty instead of waiting forever.
    func testWaitWhenFullAdmitsARecordLargerThanTheQueue() throws {
        let store = try LMDBSpillStore(SpillStoreConfiguration(path: try makeTemporaryDirectory(self) + "/store", layout: testLayout,
                                                               writeMode: .background(queueLimitBytes: 1),
                                                               durable: false, whenQueueFull: .waitWhenFull))
        let arena = KVPageArena(layout: testLayout, capacityBlocks: 4)
        let blocks = spillChain(store, arena: arena, chain: 1, count: 10)
        store.flush()
        XCTAssertEqual(store.counters.recordsWritten, 10)
        XCTAssertEqual(store.counters.spillsDroppedQueueFull, 0)
        XCTAssertTrue(store.restore(blocks[9].0, blocks[9].1, into: BlockID(2), arena: arena))
    }

    /// A key already stored with another payload size is replaced in place of the old record
    /// (the writer's insert-if-absent path falls back to remove + write), not duplicated.
    func testARecordReplacingAStoredKeyKeepsOneEntryAndTheNewBytes() throws {
        for mode in [SpillStoreConfiguration.WriteMode.synchronous, .background(queueLimitBytes: 4 << 20)] {
            let store = try openStore(try makeTemporaryDirectory(self), mode: mode)
            let arena = KVPageArena(layout: testLayout, capacityBlocks: 4)
            let tokens = blockTokens(chain: 7, index: 0)
            let key = store.key(chain: [tokens])
            store.spill(key, tokens, block: BlockID(1), arena: nil)  // tokens only
            store.flush()
            let tokensOnlyBytes = store.storedBytes
            fill(arena, block: BlockID(1), tokens: tokens)
            store.spill(key, tokens, block: BlockID(1), arena: arena)  // now with KV: not "already held"
            store.flush()
            XCTAssertEqual(store.checkInvariants(), 1, "\(mode): one entry, replaced")
            XCTAssertEqual(store.storedBytes, tokensOnlyBytes + testLayout.blockBytes, "\(mode)")
            XCTAssertTrue(store.restore(key, tokens, into: BlockID(2), arena: arena), "\(mode)")
            XCTAssertEqual(contents(arena, block: BlockID(2)), expectedPayload(tokens: tokens, layout: testLayout), "\(mode)")
            XCTAssertEqual(store.counters.recordsWritten, 2)
            store.close()
        }
    }

    func testMetadataOnlySpillsKeepTokensAndAreNotKVHits() throws {
        let store = try openStore(try makeTemporaryDirectory(self), mode: .synchronous)
        let tokens = blockTokens(chain: 1, index: 0)
        let key = store.key(chain: [tokens])
        store.spill(key, tokens, block: BlockID(1), arena: nil)
        XCTAssertTrue(store.restore(key, tokens, into: BlockID(1), arena: nil), "a metadata-only manager restores tokens")
        let arena = KVPageArena(layout: testLayout, capacityBlocks: 2)
        XCTAssertFalse(store.restore(key, tokens, into: BlockID(1), arena: arena), "no KV to give a manager with pages")
        XCTAssertEqual(store.counters.corruptDropped, 0)
        let report = try store.report()
        XCTAssertEqual(report.entries, 1)
        XCTAssertEqual(report.blocks, 0)
    }

    func testReopenRestoresEarlierWritesAndTheStatsRecord() throws {
        let dir = try makeTemporaryDirectory(self)
        let arena = KVPageArena(layout: testLayout, capacityBlocks: 4)
        var stats = KVCacheStats()
        stats.capacityBlocks = 64
        stats.spilledBlocks = 12
        let blocks: [(PrefixKey, [TokenID])]
        do {
            let store = try openStore(dir, durable: true)
            blocks = spillChain(store, arena: arena, chain: 1, count: 12)
            store.publish(stats: stats)
            store.close()
        }
        let store = try openStore(dir, durable: true)
        for (key, tokens) in blocks {
            XCTAssertTrue(store.restore(key, tokens, into: BlockID(2), arena: arena))
            XCTAssertEqual(contents(arena, block: BlockID(2)), expectedPayload(tokens: tokens, layout: testLayout))
        }
        let report = try store.report()
        XCTAssertEqual(report.cache, stats)
        XCTAssertEqual(report.entries, 12)
        XCTAssertEqual(report.blocks, 12)
        XCTAssertEqual(report.bytes, store.storedBytes)
        XCTAssertNotNil(report.cacheAgeSeconds)
        XCTAssertFalse(report.cacheRecordUnreadable)
        store.checkInvariants()
        store.close()

        // A damaged stats record is reported as such, not as "none published yet".
        do {
            let env = try Environment(path: dir + "/store", configuration: .init(maxDatabases: 8))
            let meta = try env.openDatabase("meta")
            try env.withWriteTransaction { try $0.put(Array("{\"not stats".utf8), for: StoreDatabase.MetaKey.stats, in: meta) }
            env.close()
        }
        let damaged = try SpillStoreReport.inspect(path: dir + "/store")
        XCTAssertTrue(damaged.cacheRecordUnreadable)
        XCTAssertNil(damaged.cache)
        XCTAssertEqual(damaged.entries, 12)
    }

    /// Namespaces are tenants by their bytes: two spellings of "café" (composed, decomposed)
    /// keep their records apart in the store, restore only their own, and the report counts
    /// them apart (a `[String: Int]` keyed by name merged them: String's == is canonical
    /// equivalence).
    func testCanonicallyEquivalentNamespacesStayApartInTheStoreAndItsReport() throws {
        let store = try openStore(try makeTemporaryDirectory(self), mode: .synchronous)
        let arena = KVPageArena(layout: testLayout, capacityBlocks: 3)
        let composed = Namespace("caf\u{E9}"), decomposed = Namespace("cafe\u{301}")
        let tokens = blockTokens(chain: 1, index: 0)
        fill(arena, block: BlockID(1), tokens: tokens)
        store.spill(store.key(namespace: composed, chain: [tokens]), composed, tokens, block: BlockID(1), arena: arena)
        XCTAssertFalse(store.restore(store.key(namespace: decomposed, chain: [tokens]), decomposed, tokens, into: BlockID(2), arena: arena))
        XCTAssertTrue(store.restore(store.key(namespace: composed, chain: [tokens]), composed, tokens, into: BlockID(2), arena: arena))
        store.spill(store.key(namespace: decomposed, chain: [tokens]), decomposed, tokens, block: BlockID(1), arena: arena)
        store.spill(store.key(namespace: decomposed, chain: [tokens, tokens]), decomposed, tokens, block: BlockID(1), arena: arena)
        let report = try store.report()
        XCTAssertEqual(report.entries, 3)
        XCTAssertEqual(report.entriesPerNamespace.count, 2, "\(report.entriesPerNamespace)")
        XCTAssertEqual(report.entriesPerNamespace.values.sorted(), [1, 2])
        XCTAssertEqual(report.entriesPerNamespace.keys.filter { $0.contains("[utf8 ") }.count, 1)
        store.checkInvariants()
    }

    func testConcurrentSpillsRestoresAndPublishes() throws {
        let store = try openStore(try makeTemporaryDirectory(self), limit: 1 << 20, mode: .background(queueLimitBytes: 256 << 10))
        let arenas = (0..<3).map { _ in KVPageArena(layout: testLayout, capacityBlocks: 2) }
        DispatchQueue.concurrentPerform(iterations: 3) { t in
            let arena = arenas[t]
            var parent = store.rootKey(namespace: Namespace("t\(t % 2)"))
            for i in 0..<150 {
                let tokens = blockTokens(chain: t, index: i)
                let key = tokens.withUnsafeBufferPointer { store.childKey(parent: parent, tokens: $0) }
                fill(arena, block: BlockID(0), tokens: tokens)
                store.spill(key, Namespace("t\(t % 2)"), tokens, block: BlockID(0), arena: arena)
                if i % 3 == 0, store.restore(key, Namespace("t\(t % 2)"), tokens, into: BlockID(1), arena: arena) {
                    XCTAssertEqual(contents(arena, block: BlockID(1)), expectedPayload(tokens: tokens, layout: testLayout))
                }
                _ = store.contains(key, tokens)
                var stats = KVCacheStats()
                stats.queryTokens = i
                store.publish(stats: stats)
                parent = key
            }
        }
        store.flush()
        let c = store.counters
        XCTAssertEqual(c.spills + c.spillsDroppedQueueFull, 450)
        XCTAssertEqual(c.recordsWritten + c.recordsFailed, c.spills)
        XCTAssertEqual(c.corruptDropped, 0)
        XCTAssertLessThanOrEqual(store.storedBytes, 1 << 20)
        store.checkInvariants()
    }
}
