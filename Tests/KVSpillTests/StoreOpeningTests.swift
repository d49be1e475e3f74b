import Foundation
import KVCache
import KVCore
import XCTest
@testable import KVSpill
@testable import LMDB

/// Opening a store over bad paths and files, and running out of disk, for real.
final class StoreOpeningTests: XCTestCase {
    func config(_ path: String, layout: KVLayout = testLayout, limit: Int = 8 << 20,
                mode: SpillStoreConfiguration.WriteMode = .synchronous) -> SpillStoreConfiguration {
        SpillStoreConfiguration(path: path, layout: layout, limitBytes: limit, writeMode: mode, durable: false)
    }

    /// A closed store at `path` holding one spilled block.
    func makeStoreWithOneBlock(_ path: String) throws {
        let store = try LMDBSpillStore(config(path))
        let arena = KVPageArena(layout: testLayout, capacityBlocks: 2)
        let tokens = blockTokens(chain: 1, index: 0)
        store.spill(store.key(chain: [tokens]), tokens, block: BlockID(1), arena: arena)
        store.close()
    }

    func assertOpenFails(_ config: SpillStoreConfiguration, file: StaticString = #filePath, line: UInt = #line,
                         _ check: (SpillStoreError) -> Bool) {
        XCTAssertThrowsError(try LMDBSpillStore(config), file: file, line: line) { error in
            guard let e = error as? SpillStoreError else { return XCTFail("untyped \(error)", file: file, line: line) }
            XCTAssertTrue(check(e), "unexpected \(e)", file: file, line: line)
            XCTAssertFalse(e.description.contains("\n"), "one-line description", file: file, line: line)
        }
    }

    /// `kvctl stats` on a directory whose data.mdb is not a store must leave the directory as it
    /// found it: LMDB creates `lock.mdb` when it opens an environment, and that file stayed.
    func testInspectingSomethingThatIsNotAStoreLeavesNoLockFile() throws {
        let garbage = try makeTemporaryDirectory(self) + "/garbage"
        try FileManager.default.createDirectory(atPath: garbage, withIntermediateDirectories: true)
        try Data((0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 7919) }).write(to: URL(fileURLWithPath: garbage + "/data.mdb"))
        XCTAssertThrowsError(try SpillStoreReport.inspect(path: garbage)) {
            guard case SpillStoreError.notAStore = $0 else { return XCTFail("\($0)") }
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: garbage), ["data.mdb"])

        // A real store keeps its lock file: it was there before the inspection.
        let store = try makeTemporaryDirectory(self) + "/store"
        try makeStoreWithOneBlock(store)
        _ = try SpillStoreReport.inspect(path: store)
        XCTAssertTrue(FileManager.default.fileExists(atPath: store + "/lock.mdb"))
    }

    func testGarbageTruncatedAndForeignFilesAreNotStores() throws {
        let dir = try makeTemporaryDirectory(self)
        // Garbage where the data file goes.
        let garbage = dir + "/garbage"
        try FileManager.default.createDirectory(atPath: garbage, withIntermediateDirectories: true)
        try Data((0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 7919) }).write(to: URL(fileURLWithPath: garbage + "/data.mdb"))
        assertOpenFails(config(garbage)) { if case .notAStore = $0 { true } else { false } }
        XCTAssertThrowsError(try SpillStoreReport.inspect(path: garbage)) {
            guard case SpillStoreError.notAStore = $0 else { return XCTFail("\($0)") }
        }

        // A real store cut short.
        let truncated = dir + "/truncated"
        try makeStoreWithOneBlock(truncated)
        XCTAssertEqual(truncate(truncated + "/data.mdb", 4096 + 100), 0)
        assertOpenFails(config(truncated)) { if case .notAStore = $0 { true } else { false } }

        // A plain file where the store directory goes.
        let file = dir + "/file"
        _ = FileManager.default.createFile(atPath: file, contents: Data("hello".utf8))
        assertOpenFails(config(file)) { if case .notAStore = $0 { true } else { false } }

        // An LMDB environment of something else.
        let foreign = dir + "/foreign"
        try FileManager.default.createDirectory(atPath: foreign, withIntermediateDirectories: true)
        do {
            let env = try Environment(path: foreign)
            let db = try env.openDatabase("other", create: true)
            try env.withWriteTransaction { try $0.put([1], for: "x", in: db) }
            env.close()
        }
        assertOpenFails(config(foreign)) { if case .notAStore = $0 { true } else { false } }

        XCTAssertThrowsError(try SpillStoreReport.inspect(path: dir + "/missing")) {
            XCTAssertEqual($0 as? SpillStoreError, .notFound(path: dir + "/missing"))
        }

        // None of them is ours to delete: `remove` (what kvctl's --store runs do first) refuses
        // and leaves every file as it was.
        for path in [garbage, truncated, foreign] {
            let before = try Data(contentsOf: URL(fileURLWithPath: path + "/data.mdb"))
            let files = try FileManager.default.contentsOfDirectory(atPath: path).sorted()
            XCTAssertThrowsError(try LMDBSpillStore.remove(path: path)) {
                guard case SpillStoreError.notAStore(_, let why) = $0 else { return XCTFail("\(path): \($0)") }
                XCTAssertTrue(why.hasSuffix("not removed"), why)
            }
            XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path + "/data.mdb")), before, path)
            // Not even a lock file of ours is left behind (a review found lock.mdb and writer.lock).
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: path).sorted(), files, path)
        }
        XCTAssertThrowsError(try LMDBSpillStore.remove(path: file)) { XCTAssertNotNil($0 as? SpillStoreError) }
        XCTAssertEqual(try String(contentsOfFile: file, encoding: .utf8), "hello")
    }

    /// What `remove` does delete: a store (of this or an older format), an empty data file left by
    /// a creation cut short; a missing store is no error. The directory and other files stay.
    func testRemoveDeletesOnlyStoresFiles() throws {
        let dir = try makeTemporaryDirectory(self)
        let path = dir + "/store"
        try makeStoreWithOneBlock(path)
        _ = FileManager.default.createFile(atPath: path + "/notes.txt", contents: Data("keep".utf8))
        try LMDBSpillStore.remove(path: path)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path + "/data.mdb"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: path + "/notes.txt"))
        XCTAssertEqual(try LMDBSpillStore(config(path)).storedBytes, 0)  // a new, empty store opens there

        let older = dir + "/older"
        try LMDBSpillStore(config(older)).close()
        do {
            let env = try Environment(path: older, configuration: .init(maxDatabases: 8))
            let meta = try env.openDatabase("meta")
            try env.withWriteTransaction { try $0.put(le(UInt32(1)), for: StoreDatabase.MetaKey.format, in: meta) }
            env.close()
        }
        try LMDBSpillStore.remove(path: older)
        XCTAssertFalse(FileManager.default.fileExists(atPath: older + "/data.mdb"))

        let empty = dir + "/empty"
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: empty + "/data.mdb", contents: Data())
        XCTAssertThrowsError(try SpillStoreReport.inspect(path: empty)) {  // was "Bad file descriptor"
            XCTAssertEqual($0 as? SpillStoreError, .notAStore(path: empty, reason: "an empty data.mdb"))
        }
        try LMDBSpillStore.remove(path: empty)
        XCTAssertFalse(FileManager.default.fileExists(atPath: empty + "/data.mdb"))
        try LMDBSpillStore.remove(path: dir + "/missing")
    }

    /// A data file cut short after its meta pages (an interrupted copy, a disk that filled while
    /// copying): LMDB 0.9 opens it and the first page read was SIGBUS, in the store's open and in
    /// `kvctl stats`. Both now answer `.notAStore`.
    func testADataFileCutShortAfterItsMetaPagesIsNotAStoreForOpenAndReport() throws {
        let path = try makeTemporaryDirectory(self) + "/store"
        do {
            let store = try LMDBSpillStore(config(path))
            let arena = KVPageArena(layout: testLayout, capacityBlocks: 2)
            for i in 0..<200 {  // ~1 MiB of pages
                let tokens = blockTokens(chain: 1, index: i)
                fill(arena, block: BlockID(1), tokens: tokens)
                store.spill(store.key(chain: [tokens]), tokens, block: BlockID(1), arena: arena)
            }
            store.close()
        }
        let length = (try FileManager.default.attributesOfItem(atPath: path + "/data.mdb")[.size] as? Int) ?? 0
        XCTAssertGreaterThan(length, 64 << 10)
        XCTAssertEqual(truncate(path + "/data.mdb", 4 * 4096), 0)  // both meta pages intact, the B-trees gone
        assertOpenFails(config(path)) { e in
            if case .notAStore(_, let why) = e { why.contains("shorter") } else { false }
        }
        XCTAssertThrowsError(try SpillStoreReport.inspect(path: path)) {
            guard case SpillStoreError.notAStore = $0 else { return XCTFail("\($0)") }
        }
    }

    /// A crash between the separate commits that used to create a store (one per database, then
    /// meta) left an environment with some of its databases and no format record, which never
    /// opened again. Such a directory holds nothing, so the open finishes creating the store
    /// (now one transaction); an environment with anything else in it is still refused.
    func testAStoreWhoseCreationWasCutShortOpensAsANewStore() throws {
        let path = try makeTemporaryDirectory(self) + "/store"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        do {  // what the old creation had committed when killed before its meta transaction
            let env = try Environment(path: path, configuration: .init(maxDatabases: 8))
            for name in ["entries", "lru"] { _ = try env.openDatabase(name, create: true) }
            env.close()
        }
        let store = try LMDBSpillStore(config(path))
        let arena = KVPageArena(layout: testLayout, capacityBlocks: 2)
        let tokens = blockTokens(chain: 1, index: 0)
        fill(arena, block: BlockID(1), tokens: tokens)
        store.spill(store.key(chain: [tokens]), tokens, block: BlockID(1), arena: arena)
        XCTAssertEqual(store.checkInvariants(), 1)
        store.close()
        XCTAssertEqual(try SpillStoreReport.inspect(path: path).entries, 1)
        let reopened = try LMDBSpillStore(config(path))
        XCTAssertTrue(reopened.restore(reopened.key(chain: [tokens]), tokens, into: BlockID(0), arena: arena))
        reopened.close()

        // Half-created, but with entries in it: not ours to recreate.
        let other = path + "-entries"
        try FileManager.default.createDirectory(atPath: other, withIntermediateDirectories: true)
        do {
            let env = try Environment(path: other, configuration: .init(maxDatabases: 8))
            let entries = try env.openDatabase("entries", create: true)
            try env.withWriteTransaction { try $0.put([1], for: "x", in: entries) }
            env.close()
        }
        assertOpenFails(config(other)) { if case .notAStore = $0 { true } else { false } }
    }

    /// Records of format 1 carry no prefix key, so this build does not read them: a store
    /// written by an older build is `.unsupportedFormat` for the writer and for `kvctl stats`.
    func testAStoreOfTheOlderRecordFormatIsUnsupportedForOpenAndReport() throws {
        let path = try makeTemporaryDirectory(self) + "/store"
        try LMDBSpillStore(config(path)).close()
        do {  // what an older build wrote into meta
            let env = try Environment(path: path, configuration: .init(maxDatabases: 8))
            let meta = try env.openDatabase("meta")
            try env.withWriteTransaction { try $0.put(le(UInt32(1)), for: StoreDatabase.MetaKey.format, in: meta) }
            env.close()
        }
        assertOpenFails(config(path)) { $0 == .unsupportedFormat(path: path, version: 1) }
        XCTAssertThrowsError(try SpillStoreReport.inspect(path: path)) {
            XCTAssertEqual($0 as? SpillStoreError, .unsupportedFormat(path: path, version: 1))
            XCTAssertTrue("\($0)".contains("delete it"), "the one line says what to do")
        }
        XCTAssertEqual(SpillRecord.formatVersion, 2)
    }

    func testAnotherLayoutAndASecondOpenAreRefused() throws {
        let path = try makeTemporaryDirectory(self) + "/store"
        let store = try LMDBSpillStore(config(path))
        assertOpenFails(config(path)) { $0 == .alreadyOpen(path: path) }
        store.close()
        let other = try KVLayout(layerCount: 4, kvHeadCount: 2, headDim: 16)
        assertOpenFails(config(path, layout: other)) { $0 == .layoutMismatch(path: path, stored: testLayout, expected: other) }
        XCTAssertNoThrow(try LMDBSpillStore(config(path)).close())
    }

    /// Values no store can work with are typed errors, and nothing is created on disk.
    func testInvalidConfigurationsAreTypedErrorsAndCreateNothing() throws {
        let path = try makeTemporaryDirectory(self) + "/store"
        var cases: [(SpillStoreConfiguration, String)] = [
            (config(path, limit: 0), "limitBytes must be positive"),
            (config(path, limit: -1), "limitBytes must be positive"),
            (config(path, limit: .max), "too large to size the map"),
            (config(path, mode: .background(queueLimitBytes: -1)), "queueLimitBytes"),
        ]
        var interval = config(path)
        interval.statsIntervalSeconds = .nan
        cases.append((interval, "statsIntervalSeconds"))
        var huge = config(path)
        huge.statsIntervalSeconds = 1e17  // would overflow the writer's milliseconds
        cases.append((huge, "statsIntervalSeconds"))
        var map = config(path)
        map.initialMapSizeBytes = 0
        cases.append((map, "initialMapSizeBytes"))
        for (configuration, reason) in cases {
            assertOpenFails(configuration) {
                guard case .invalidConfiguration(path, let why) = $0 else { return false }
                return why.contains(reason)
            }
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: path), "nothing created")
        XCTAssertNoThrow(try LMDBSpillStore(config(path)).close())
    }

    /// Same layout, another model: the store refuses to open rather than serve another model's
    /// K/V for the same tokens. Unlabelled stores (and stores created before the label existed,
    /// with no `model` record) open only unlabelled.
    func testAnotherModelIsRefusedAndTheLabelIsReported() throws {
        let path = try makeTemporaryDirectory(self) + "/store"
        func labelled(_ model: String, _ at: String = path) -> SpillStoreConfiguration {
            var c = config(at)
            c.model = model
            return c
        }
        let arena = KVPageArena(layout: testLayout, capacityBlocks: 2)
        let tokens = blockTokens(chain: 1, index: 0)
        do {
            let store = try LMDBSpillStore(labelled("model-a@1"))
            store.spill(store.key(chain: [tokens]), tokens, block: BlockID(1), arena: arena)
            store.close()
        }
        assertOpenFails(labelled("model-b@1")) { $0 == .modelMismatch(path: path, stored: "model-a@1", expected: "model-b@1") }
        assertOpenFails(labelled("")) { $0 == .modelMismatch(path: path, stored: "model-a@1", expected: "") }
        XCTAssertEqual(try SpillStoreReport.inspect(path: path).model, "model-a@1")
        do {  // refused opens changed nothing: the block is still there for its own model
            let store = try LMDBSpillStore(labelled("model-a@1"))
            XCTAssertTrue(store.restore(store.key(chain: [tokens]), tokens, into: BlockID(0), arena: arena))
            store.close()
        }

        let legacy = path + "-legacy"
        try LMDBSpillStore(config(legacy)).close()
        do {  // what a build before the label wrote: no model record
            let env = try Environment(path: legacy, configuration: .init(maxDatabases: 8))
            let meta = try env.openDatabase("meta")
            try env.withWriteTransaction { _ = try $0.delete(StoreDatabase.MetaKey.model, in: meta) }
            env.close()
        }
        XCTAssertEqual(try SpillStoreReport.inspect(path: legacy).model, "")
        assertOpenFails(labelled("model-a@1", legacy)) { $0 == .modelMismatch(path: legacy, stored: "", expected: "model-a@1") }
        XCTAssertNoThrow(try LMDBSpillStore(config(legacy)).close())
    }

    /// Root ignores permission bits, so as root the test makes the directory read-only with a
    /// read-only bind mount; otherwise with chmod.
    func testReadOnlyDirectoryGivesATypedErrorAndStillInspects() throws {
        let dir = try makeTemporaryDirectory(self)
        let source = dir + "/source", view = dir + "/view"
        do {
            let store = try LMDBSpillStore(config(source))
            let arena = KVPageArena(layout: testLayout, capacityBlocks: 2)
            let tokens = blockTokens(chain: 1, index: 0)
            store.spill(store.key(chain: [tokens]), tokens, block: BlockID(1), arena: arena)
            store.close()
        }
        if geteuid() == 0 {
            try FileManager.default.createDirectory(atPath: view, withIntermediateDirectories: true)
            guard run("/bin/mount", "--bind", "-o", "ro", source, view) == 0 else {
                throw XCTSkip("running as root, and a read-only bind mount is not permitted here: permissions cannot be tested")
            }
            addTeardownBlock { _ = self.run("/bin/umount", view) }
        } else {
            try FileManager.default.setAttributes([.posixPermissions: 0o555], ofItemAtPath: source)
            try FileManager.default.setAttributes([.posixPermissions: 0o444], ofItemAtPath: source + "/lock.mdb")
            addTeardownBlock { try? FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: source) }
        }
        let target = geteuid() == 0 ? view : source
        assertOpenFails(config(target)) { if case .permissionDenied = $0 { true } else { false } }
        assertOpenFails(config(target + "/new-store")) { if case .permissionDenied = $0 { true } else { false } }
        let report = try SpillStoreReport.inspect(path: target)
        XCTAssertEqual(report.entries, 1)
    }

    /// A 1 MiB tmpfs (root only) really runs out of space under the store.
    func testARealFullDiskIsCountedAndTheStoreKeepsServing() throws {
        let dir = try makeTemporaryDirectory(self) + "/tiny"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        guard geteuid() == 0, run("/bin/mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", dir) == 0 else {
            throw XCTSkip("cannot mount a tiny tmpfs (needs root): disk-full is covered through the seam in SpillStoreTests")
        }
        addTeardownBlock { _ = self.run("/bin/umount", dir) }
        let store = try LMDBSpillStore(config(dir + "/store", limit: 8 << 20))
        let arena = KVPageArena(layout: testLayout, capacityBlocks: 2)
        var parent = store.rootKey(namespace: .default)
        var spilled: [(PrefixKey, [TokenID])] = []
        for i in 0..<400 {
            let tokens = blockTokens(chain: 1, index: i)
            let key = tokens.withUnsafeBufferPointer { store.childKey(parent: parent, tokens: $0) }
            fill(arena, block: BlockID(1), tokens: tokens)
            store.spill(key, tokens, block: BlockID(1), arena: arena)
            spilled.append((key, tokens))
            parent = key
        }
        let c = store.counters
        XCTAssertGreaterThanOrEqual(c.diskFullEvents, 1, "1 MiB cannot hold 400 × 4 KiB blocks")
        XCTAssertEqual(c.spills, 400)
        var hits = 0
        for (key, tokens) in spilled where store.restore(key, tokens, into: BlockID(1), arena: arena) {
            XCTAssertEqual(contents(arena, block: BlockID(1)), expectedPayload(tokens: tokens, layout: testLayout))
            hits += 1
        }
        XCTAssertGreaterThan(hits, 0)
        XCTAssertTrue(store.contains(spilled.last!.0, spilled.last!.1), "after the disk filled, new blocks still replace old ones")
        store.checkInvariants()
        store.close()
    }

    @discardableResult
    func run(_ tool: String, _ args: String...) -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = args
        p.standardError = FileHandle.nullDevice
        do { try p.run() } catch { return -1 }
        p.waitUntilExit()
        return p.terminationStatus
    }
}
