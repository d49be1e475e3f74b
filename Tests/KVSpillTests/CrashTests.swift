import Foundation
import KVCache
import KVCore
import KVTestSupport
import XCTest
@testable import KVSpill

/// A second process writing the store: killed with SIGKILL mid-spill, or read beside.
final class CrashTests: XCTestCase {
    /// 4 layers × 8 KV heads × 128 × fp16: 256 KiB blocks, so a kill lands inside big commits.
    static let layout = try! KVLayout(layerCount: 4, kvHeadCount: 8, headDim: 128, blockSize: 16)

    static func configuration(_ dir: String) -> SpillStoreConfiguration {
        SpillStoreConfiguration(path: dir + "/store", layout: layout, limitBytes: 24 << 20,
                                writeMode: .background(queueLimitBytes: 8 << 20), durable: true, statsIntervalSeconds: 0.02)
    }

    /// Child mode: spills chains of 40 blocks forever (the store's limit makes it evict as it
    /// goes), publishing stats; creates `ready` once the first blocks are committed.
    func testChildSpiller() throws {
        guard let dir = ChildProcess.childDirectory else { throw XCTSkip("child mode only") }
        let store = try LMDBSpillStore(Self.configuration(dir))
        let arena = KVPageArena(layout: Self.layout, capacityBlocks: 2)
        var stats = KVCacheStats()
        for chain in 0... {
            var parent = store.rootKey(namespace: Namespace("ns\(chain % 3)"))
            for i in 0..<40 {
                let tokens = blockTokens(chain: chain, index: i)
                let key = tokens.withUnsafeBufferPointer { store.childKey(parent: parent, tokens: $0) }
                fill(arena, block: BlockID(1), tokens: tokens)
                store.spill(key, Namespace("ns\(chain % 3)"), tokens, block: BlockID(1), arena: arena)
                parent = key
                stats.spilledBlocks += 1
                store.publish(stats: stats)
            }
            if chain == 0 {
                store.flush()
                _ = FileManager.default.createFile(atPath: dir + "/ready", contents: nil)
            }
        }
    }

    /// Child mode: what `kvctl stats` does (read-only open, one read transaction), then waits
    /// inside the transaction to be killed.
    func testChildStatsReader() throws {
        guard let dir = ChildProcess.childDirectory, dir.hasSuffix("/statsreader") else { throw XCTSkip("child mode only") }
        let db = try StoreDatabase.openReadOnly(path: dir + "/store")
        try db.env.withReadTransaction { txn in
            _ = try txn.stat(db.entries)
            _ = FileManager.default.createFile(atPath: dir + "/ready", contents: nil)
            while true { sleep(1) }
        }
    }

    /// A `kvctl stats` killed inside its read transaction leaves a reader slot that pins its
    /// snapshot: no page freed afterwards is reused, the file runs into the map ceiling, and the
    /// writer used to drop every batch with `MDB_MAP_FULL`, since LMDB reaps dead readers only
    /// when asked (at open). The writer now reaps them on `MDB_MAP_FULL` and periodically.
    func testAStatsReaderKilledMidReadDoesNotStarveTheWriter() throws {
        let dir = try makeTemporaryDirectory(self) + "/statsreader"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var config = SpillStoreConfiguration(path: dir + "/store", layout: testLayout, limitBytes: 1 << 20,
                                             writeMode: .background(queueLimitBytes: 4 << 20), durable: false,
                                             statsIntervalSeconds: 3600)  // only MAP_FULL can trigger the reaping here
        config.mapSizeLimitOverride = 8 << 20
        let store = try LMDBSpillStore(config)
        defer { store.close() }
        let arena = KVPageArena(layout: testLayout, capacityBlocks: 4)
        func spill(chain: Int) -> (PrefixKey, [TokenID]) {
            var parent = store.rootKey(namespace: .default), last: (PrefixKey, [TokenID])?
            for i in 0..<50 {
                let tokens = blockTokens(chain: chain, index: i)
                let key = tokens.withUnsafeBufferPointer { store.childKey(parent: parent, tokens: $0) }
                fill(arena, block: BlockID(1), tokens: tokens)
                store.spill(key, tokens, block: BlockID(1), arena: arena)
                parent = key
                last = (key, tokens)
            }
            store.flush()
            return last!
        }
        _ = spill(chain: 1)
        try killStatsReaderMidRead(dir)
        // ~12 MiB of records through a 1 MiB store in an 8 MiB map: impossible without page reuse.
        var last = spill(chain: 2)
        for chain in 3..<60 { last = spill(chain: chain) }
        let c = store.counters
        XCTAssertEqual(c.recordsFailed, 0, "records dropped: \(c)")
        XCTAssertEqual(c.staleReadersCleared, 1, "the writer reaped the dead reader's slot (\(c))")
        XCTAssertEqual(try store.database.env.checkReaders(), 0)
        XCTAssertGreaterThan(store.storedBytes, 512 << 10, "a 1 MiB store keeps about its limit")
        XCTAssertTrue(store.restore(last.0, last.1, into: BlockID(2), arena: arena))
        store.checkInvariants()
    }

    /// Runs `testChildStatsReader` on `dir` and SIGKILLs it inside its read transaction.
    func killStatsReaderMidRead(_ dir: String) throws {
        let child = try ChildProcess(test: "KVSpillTests.CrashTests/testChildStatsReader", directory: dir, logPath: dir + "/../child.log")
        XCTAssertTrue(child.waitForFile(dir + "/ready"), "child reader never started")
        child.kill()
    }

    /// Without map pressure the writer still reaps a dead reader within a stats interval (its
    /// pinned snapshot would otherwise make the file grow until the map fills).
    func testAStatsReaderKilledMidReadIsReapedWithinAStatsInterval() throws {
        let dir = try makeTemporaryDirectory(self) + "/statsreader"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let store = try LMDBSpillStore(SpillStoreConfiguration(path: dir + "/store", layout: testLayout, limitBytes: 8 << 20,
                                                               writeMode: .background(queueLimitBytes: 4 << 20), durable: false,
                                                               statsIntervalSeconds: 0.05))
        defer { store.close() }
        let arena = KVPageArena(layout: testLayout, capacityBlocks: 2)
        func spill(_ chain: Int) {
            let tokens = blockTokens(chain: chain, index: 0)
            fill(arena, block: BlockID(1), tokens: tokens)
            store.spill(store.key(chain: [tokens]), tokens, block: BlockID(1), arena: arena)
            store.flush()
        }
        spill(1)
        try killStatsReaderMidRead(dir)
        usleep(100_000)  // past the interval
        spill(2)
        XCTAssertEqual(store.counters.staleReadersCleared, 1, "\(store.counters)")
        XCTAssertEqual(store.counters.mapFullRetries, 0, "reaped on the interval, not on MDB_MAP_FULL")
        XCTAssertEqual(try store.database.env.checkReaders(), 0)
    }

    func startSpiller(_ dir: String) throws -> ChildProcess {
        let child = try ChildProcess(test: "KVSpillTests.CrashTests/testChildSpiller", directory: dir, logPath: dir + "/child.log")
        guard child.waitForFile(dir + "/ready") else {
            child.kill()
            throw XCTSkip("the child spiller did not start: \((try? String(contentsOfFile: dir + "/child.log", encoding: .utf8)) ?? "")")
        }
        return child
    }

    /// One writer process per store. A second writer used to open beside the first, which then
    /// trapped on its stale byte count ("stored byte count went negative"); `kvctl demo --store`
    /// deleted the files under a running writer. Both are refused now, and both work once the
    /// writer is gone — even killed, since the kernel drops its lock.
    func testASecondWriterAndRemovalAreRefusedWhileAnotherProcessWrites() throws {
        let dir = try makeTemporaryDirectory(self)
        let path = dir + "/store"
        let child = try startSpiller(dir)
        XCTAssertThrowsError(try LMDBSpillStore(Self.configuration(dir))) {
            XCTAssertEqual($0 as? SpillStoreError, .inUse(path: path))
        }
        XCTAssertThrowsError(try LMDBSpillStore.remove(path: path)) {
            XCTAssertEqual($0 as? SpillStoreError, .inUse(path: path))
        }
        XCTAssertTrue(child.process.isRunning, "the writer keeps going")
        XCTAssertNoThrow(try SpillStoreReport.inspect(path: path), "readers are welcome beside it")
        child.kill()
        let store = try LMDBSpillStore(Self.configuration(dir))
        XCTAssertGreaterThan(store.storedBytes, 0)
        store.close()
        try LMDBSpillStore.remove(path: path)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path + "/data.mdb"))
    }

    /// Child mode: opens a writer on `store` again and again (a spill and a flush each time)
    /// while the parent removes the store in a loop, and counts the opens during which a file it
    /// held was unlinked under it (found by a review: the writer took its lock after opening
    /// LMDB, and `remove` skipped the lock when `data.mdb` was missing).
    func testChildReopener() throws {
        guard let dir = ChildProcess.childDirectory, dir.hasSuffix("/reopen") else { throw XCTSkip("child mode only") }
        let config = SpillStoreConfiguration(path: dir + "/store", layout: testLayout, limitBytes: 8 << 20,
                                             writeMode: .background(queueLimitBytes: 4 << 20), durable: false)
        let arena = KVPageArena(layout: testLayout, capacityBlocks: 2)
        var opened = 0, unlinkedUnderUs = 0
        _ = FileManager.default.createFile(atPath: dir + "/ready", contents: nil)
        let deadline = Date().addingTimeInterval(30)
        while opened < 200 && Date() < deadline {
            guard let store = try? LMDBSpillStore(config) else { continue }
            opened += 1
            let tokens = blockTokens(chain: opened, index: 0)
            fill(arena, block: BlockID(1), tokens: tokens)
            store.spill(store.key(chain: [tokens]), tokens, block: BlockID(1), arena: arena)
            store.flush()
            let open = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
            if open.contains(where: { fd in
                let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/" + fd)) ?? ""
                return target.hasPrefix(dir) && target.hasSuffix("(deleted)")
            }) { unlinkedUnderUs += 1 }
            store.close()
        }
        try "opened=\(opened) unlinkedUnderUs=\(unlinkedUnderUs)".write(toFile: dir + "/result", atomically: true, encoding: .utf8)
    }

    func testRemoveNeverUnlinksFilesAWriterHolds() throws {
        let dir = try makeTemporaryDirectory(self) + "/reopen"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let child = try ChildProcess(test: "KVSpillTests.CrashTests/testChildReopener", directory: dir, logPath: dir + "/../child.log")
        XCTAssertTrue(child.waitForFile(dir + "/ready"))
        var removed = 0
        while !FileManager.default.fileExists(atPath: dir + "/result") && child.process.isRunning {
            if (try? LMDBSpillStore.remove(path: dir + "/store")) != nil { removed += 1 }
            usleep(UInt32.random(in: 0..<300))
        }
        child.process.waitUntilExit()
        let result = (try? String(contentsOfFile: dir + "/result", encoding: .utf8)) ?? "no result"
        XCTAssertTrue(result.hasSuffix("unlinkedUnderUs=0") && !result.hasPrefix("opened=0 "), result)
        XCTAssertGreaterThan(removed, 0, "the race was not run: \(result)")
    }

    func testAStoreKilledMidSpillOpensRestoresOnlyCorrectBlocksAndKeepsWorking() throws {
        let dir = try makeTemporaryDirectory(self)
        let child = try startSpiller(dir)
        usleep(UInt32.random(in: 150_000...400_000))
        child.kill()
        XCTAssertEqual(child.process.terminationReason, .uncaughtSignal)

        let store = try LMDBSpillStore(Self.configuration(dir))
        let entries = store.checkInvariants()
        XCTAssertGreaterThan(entries, 0)
        // Every committed entry: recompute its key from its tokens' chain, restore it through the
        // protocol, and compare the KV with what the child wrote.
        var records: [(PrefixKey, [TokenID], Namespace)] = []
        try store.database.env.withReadTransaction { txn in
            try txn.forEach(in: store.database.entries) { k, v in
                let view = try RecordView(v)
                records.append((PrefixKey(bytes: k), view.tokenArray, Namespace(view.namespaceString)))
                return true
            }
        }
        let arena = KVPageArena(layout: Self.layout, capacityBlocks: 2)
        for (key, tokens, namespace) in records {
            let chain = Int(tokens[0]) / 100_000, index = (Int(tokens[0]) % 100_000) / 16
            XCTAssertEqual(namespace, Namespace("ns\(chain % 3)"))
            XCTAssertEqual(key, store.key(namespace: namespace, chain: (0...index).map { blockTokens(chain: chain, index: $0) }))
            XCTAssertTrue(store.restore(key, namespace, tokens, into: BlockID(1), arena: arena))
            XCTAssertEqual(contents(arena, block: BlockID(1)), expectedPayload(tokens: tokens, layout: Self.layout))
        }
        XCTAssertEqual(store.counters.restoreHits, records.count)
        XCTAssertEqual(store.counters.corruptDropped, 0)
        XCTAssertGreaterThan(try store.report().cache?.spilledBlocks ?? 0, 0, "the child's published stats survived")

        // And it keeps working.
        let tokens = blockTokens(chain: 999, index: 0)
        let key = store.key(namespace: "after", chain: [tokens])
        fill(arena, block: BlockID(0), tokens: tokens)
        store.spill(key, "after", tokens, block: BlockID(0), arena: arena)
        store.flush()
        XCTAssertTrue(store.restore(key, "after", tokens, into: BlockID(1), arena: arena))
        XCTAssertEqual(contents(arena, block: BlockID(1)), expectedPayload(tokens: tokens, layout: Self.layout))
        store.checkInvariants()
    }

    /// What `kvctl stats` does: open read-only while another process writes.
    func testReadOnlyReportWhileAnotherProcessSpills() throws {
        let dir = try makeTemporaryDirectory(self)
        let child = try startSpiller(dir)
        defer { child.kill() }
        var last = try SpillStoreReport.inspect(path: dir + "/store")
        XCTAssertGreaterThan(last.entries, 0)
        XCTAssertEqual(last.layout, Self.layout)
        let deadline = Date().addingTimeInterval(10)
        var sawGrowth = false
        while Date() < deadline && !sawGrowth {
            usleep(50_000)
            let now = try SpillStoreReport.inspect(path: dir + "/store")
            XCTAssertLessThanOrEqual(now.bytes, 24 << 20)
            XCTAssertEqual(now.unreadableEntries, 0)
            sawGrowth = (now.cache?.spilledBlocks ?? 0) > (last.cache?.spilledBlocks ?? 0)
            last = now
        }
        XCTAssertTrue(sawGrowth, "the live stats record advances while the writer runs")
        XCTAssertEqual(Set(last.entriesPerNamespace.keys).isSubset(of: ["ns0", "ns1", "ns2"]), true)

        // The kvctl binary itself, when `swift build` has built it next to this test bundle.
        let kvctl = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
            .deletingLastPathComponent().appendingPathComponent("kvctl").path
        guard FileManager.default.isExecutableFile(atPath: kvctl) else {
            throw XCTSkip("\(kvctl) not built: run `swift build` before `swift test` to test the CLI too")
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: kvctl)
        p.arguments = ["stats", "--store", dir + "/store", "--json"]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let storeSection = try XCTUnwrap(json["store"] as? [String: Any])
        let cacheSection = try XCTUnwrap(json["cache"] as? [String: Any])
        for k in ["entries", "bytes", "mapSizeBytes"] { XCTAssertNotNil(storeSection[k], k) }
        for k in ["capacityBlocks", "usedBlocks", "cachedBlocks", "sharedBlocks", "queryTokens", "hitTokens", "storeHitTokens",
                  "evictedBlocks", "spilledBlocks", "restoredBlocks"] { XCTAssertNotNil(cacheSection[k], k) }
    }
}
