import Foundation
import XCTest
@testable import LMDB

final class EnvironmentTests: XCTestCase {
    func open(_ dir: String, mapSize: Int = 16 << 20, flags: Environment.Flags = [.noTLS]) throws -> Environment {
        try Environment(path: dir, configuration: .init(mapSize: mapSize, maxDatabases: 4, flags: flags))
    }

    func testRoundTripAcrossNamedDatabasesAndReopen() throws {
        let dir = try makeTemporaryDirectory(self)
        do {
            let env = try open(dir)
            let a = try env.openDatabase("a", create: true)
            let b = try env.openDatabase("b", create: true)
            try env.withWriteTransaction { txn in
                try txn.put([1, 2, 3], for: "k", in: a)
                try txn.put([9], for: "k", in: b)
                try txn.put(Array(repeating: 7, count: 100_000), for: "big", in: a)
            }
            try env.withReadTransaction { txn in
                XCTAssertEqual(try txn.copyValue(for: "k", in: a), [1, 2, 3])
                XCTAssertEqual(try txn.copyValue(for: "k", in: b), [9])
                XCTAssertEqual(try txn.withValue(for: "big", in: a) { $0.count }, 100_000)
                XCTAssertEqual(try txn.stat(a).entries, 2)
                XCTAssertEqual(try txn.stat(b).entries, 1)
                XCTAssertTrue(txn.isReadOnly)
            }
            env.close()
        }
        let env = try open(dir)
        let a = try env.openDatabase("a")
        try env.withReadTransaction { txn in
            XCTAssertEqual(try txn.copyValue(for: "k", in: a), [1, 2, 3])
        }
        XCTAssertGreaterThan(try env.info().lastTransactionID, 0)
    }

    /// The reader table names the snapshot a live read transaction holds, older than the last
    /// commit once a write commits after it began; idle slots are not listed.
    func testReaderSnapshotsNameTheSnapshotsLiveReadersHold() throws {
        let env = try open(try makeTemporaryDirectory(self))
        let db = try env.openDatabase("a", create: true)
        try env.withWriteTransaction { txn in try txn.put([1], for: "k", in: db) }
        XCTAssertEqual(try env.readerSnapshots(), [])
        let reading = DispatchSemaphore(value: 0), done = DispatchSemaphore(value: 0), finished = DispatchSemaphore(value: 0)
        let snapshot = try env.info().lastTransactionID
        Thread {
            try? env.withReadTransaction { _ in
                reading.signal()
                done.wait()
            }
            finished.signal()
        }.start()
        reading.wait()
        try env.withWriteTransaction { txn in try txn.put([2], for: "k", in: db) }
        XCTAssertEqual(try env.readerSnapshots(), [snapshot])
        XCTAssertLessThan(snapshot, try env.info().lastTransactionID)
        done.signal()
        finished.wait()
        XCTAssertEqual(try env.readerSnapshots(), [])
        env.close()
    }

    func testThrowingBodyRollsBack() throws {
        struct Boom: Error {}
        let env = try open(try makeTemporaryDirectory(self))
        let db = try env.openDatabase("d", create: true)
        try env.withWriteTransaction { try $0.put([1], for: "kept", in: db) }
        XCTAssertThrowsError(try env.withWriteTransaction { txn in
            try txn.put([2], for: "lost", in: db)
            try txn.delete("kept", in: db)
            throw Boom()
        }) { XCTAssertTrue($0 is Boom) }
        try env.withReadTransaction { txn in
            XCTAssertNil(try txn.copyValue(for: "lost", in: db))
            XCTAssertEqual(try txn.copyValue(for: "kept", in: db), [1])
        }
    }

    func testNotFound() throws {
        let env = try open(try makeTemporaryDirectory(self))
        let db = try env.openDatabase("d", create: true)
        try env.withWriteTransaction { txn in
            XCTAssertNil(try txn.copyValue(for: "absent", in: db))
            XCTAssertFalse(try txn.delete("absent", in: db))
            XCTAssertFalse(try txn.contains("absent", in: db))
            try txn.put([1], for: "x", in: db, flags: .noOverwrite)
            XCTAssertThrowsError(try txn.put([2], for: "x", in: db, flags: .noOverwrite)) {
                XCTAssertEqual($0 as? LMDBError, .keyExist)
            }
        }
        // Not-found and key-exists do not poison the transaction: the put above committed.
        try env.withReadTransaction { XCTAssertEqual(try $0.copyValue(for: "x", in: db), [1]) }
        XCTAssertThrowsError(try env.openDatabase("never-created")) {
            guard case LMDBError.notFound = $0 else { return XCTFail("\($0)") }
        }
    }

    func testCursorsMoveSeekAndDelete() throws {
        let env = try open(try makeTemporaryDirectory(self))
        let db = try env.openDatabase("d", create: true)
        try env.withWriteTransaction { txn in
            for i: UInt8 in [10, 20, 30, 40] { try txn.put([i, i], for: [i], in: db) }
        }
        try env.withReadTransaction { txn in
            try txn.withCursor(db) { c in
                XCTAssertEqual(try c.first { k, _ in k[0] }, 10)
                XCTAssertEqual(try c.next { k, v in Array(v) + [k[0]] }, [20, 20, 20])
                XCTAssertEqual(try c.last { k, _ in k[0] }, 40)
                XCTAssertEqual(try c.previous { k, _ in k[0] }, 30)
                XCTAssertEqual(try c.seek(atLeast: [25]) { k, _ in k[0] }, 30)
                XCTAssertNil(try c.seek(exactly: [25]) { k, _ in k[0] })
                XCTAssertEqual(try c.seek(exactly: [20]) { k, _ in k[0] }, 20)
                XCTAssertNil(try c.seek(atLeast: [41]) { k, _ in k[0] })
                _ = try c.last { _, _ in () }
                XCTAssertNil(try c.next { k, _ in k[0] })
            }
            var seen: [UInt8] = []
            try txn.forEach(in: db, from: [15]) { k, _ in seen.append(k[0]); return k[0] < 30 }
            XCTAssertEqual(seen, [20, 30])
        }
        try env.withWriteTransaction { txn in
            try txn.withCursor(db) { c in
                _ = try c.seek(exactly: [20]) { _, _ in () }
                try c.deleteCurrent()
                XCTAssertEqual(try c.current { k, _ in k[0] }, 30)
            }
        }
        var all: [UInt8] = []
        try env.withReadTransaction { try $0.forEach(in: db) { k, _ in all.append(k[0]); return true } }
        XCTAssertEqual(all, [10, 30, 40])
    }

    func testReservedPutWritesInPlace() throws {
        let env = try open(try makeTemporaryDirectory(self))
        let db = try env.openDatabase("d", create: true)
        try env.withWriteTransaction { txn in
            try txn.put(count: 5000, for: "r", in: db) { buf in
                for i in 0..<buf.count { buf[i] = UInt8(truncatingIfNeeded: i) }
            }
        }
        try env.withReadTransaction { txn in
            XCTAssertEqual(try txn.copyValue(for: "r", in: db), (0..<5000).map { UInt8(truncatingIfNeeded: $0) })
        }
    }

    func testMapFullIsTypedThenGrowingTheMapSucceeds() throws {
        let env = try open(try makeTemporaryDirectory(self), mapSize: 256 << 10)
        let db = try env.openDatabase("d", create: true)
        let value = [UInt8](repeating: 0xAB, count: 64 << 10)
        var stored = 0
        var hitMapFull = false
        while stored < 16 {
            do {
                try env.withWriteTransaction { try $0.put(value, for: [UInt8(stored)], in: db) }
                stored += 1
            } catch LMDBError.mapFull {
                hitMapFull = true
                break
            }
        }
        XCTAssertTrue(hitMapFull, "a 256 KiB map must fill before 16 × 64 KiB")
        XCTAssertLessThan(stored, 4)
        // The failed transaction was aborted; grow the map (no transaction active) and retry.
        try env.setMapSize(4 << 20)
        try env.withWriteTransaction { try $0.put(value, for: [UInt8(stored)], in: db) }
        XCTAssertEqual(try env.info().mapSize, 4 << 20)
        try env.withReadTransaction { XCTAssertEqual(try $0.stat(db).entries, stored + 1) }
    }

    func testFirstErrorWinsWhenTheBodySwallowsIt() throws {
        let env = try open(try makeTemporaryDirectory(self))
        let db = try env.openDatabase("d", create: true)
        env.faults.fail(.put, with: .noSpace)
        XCTAssertThrowsError(try env.withWriteTransaction { txn in
            _ = try? txn.put([1], for: "a", in: db)   // swallowed
            try txn.put([2], for: "b", in: db)         // would succeed
        }) { XCTAssertEqual($0 as? LMDBError, .noSpace) }
        try env.withReadTransaction { XCTAssertEqual(try $0.stat(db).entries, 0) }
    }

    func testFailedCommitIsTypedAndLeavesNothingBehind() throws {
        let env = try open(try makeTemporaryDirectory(self))
        let db = try env.openDatabase("d", create: true)
        env.faults.fail(.txnCommit, with: .noSpace)
        XCTAssertThrowsError(try env.withWriteTransaction { try $0.put([1], for: "a", in: db) }) {
            guard case LMDBError.noSpace = $0 else { return XCTFail("\($0)") }
            XCTAssertEqual("\($0)", "No space left on device")
        }
        try env.withReadTransaction { XCTAssertNil(try $0.copyValue(for: "a", in: db)) }
        try env.withWriteTransaction { try $0.put([1], for: "a", in: db) }
        try env.withReadTransaction { XCTAssertEqual(try $0.copyValue(for: "a", in: db), [1]) }
    }

    func testOpeningTheSameEnvironmentTwiceInOneProcessIsRefused() throws {
        let dir = try makeTemporaryDirectory(self)
        let link = dir + "-link"
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: dir)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: link) }
        let env = try open(dir)
        for path in [dir, dir + "/", link] {
            XCTAssertThrowsError(try Environment(path: path)) {
                XCTAssertEqual($0 as? LMDBError, .alreadyOpenInProcess, path)
            }
            XCTAssertThrowsError(try Environment(path: path, configuration: .init(flags: [.readOnly]))) {
                XCTAssertEqual($0 as? LMDBError, .alreadyOpenInProcess, path)
            }
        }
        env.close()
        XCTAssertNoThrow(try open(dir))
    }

    func testGarbageAndWrongKindsOfPathGiveTypedErrors() throws {
        let dir = try makeTemporaryDirectory(self)
        var rng = SystemRandomNumberGenerator()
        let garbage = Data((0..<65536).map { _ in UInt8.random(in: 0...255, using: &rng) })
        try garbage.write(to: URL(fileURLWithPath: dir + "/data.mdb"))
        XCTAssertThrowsError(try open(dir)) { XCTAssertEqual($0 as? LMDBError, .invalid) }

        // A real environment cut short after its first page.
        let truncated = dir + "/t"
        try FileManager.default.createDirectory(atPath: truncated, withIntermediateDirectories: false)
        do {
            let env = try open(truncated)
            let db = try env.openDatabase("d", create: true)
            try env.withWriteTransaction { try $0.put([UInt8](repeating: 1, count: 50_000), for: "x", in: db) }
        }
        XCTAssertEqual(truncate(truncated + "/data.mdb", 100), 0)
        XCTAssertThrowsError(try open(truncated)) { XCTAssertEqual($0 as? LMDBError, .invalid) }

        XCTAssertThrowsError(try open(dir + "/missing")) { XCTAssertEqual($0 as? LMDBError, .noSuchFileOrDirectory) }
        let file = dir + "/plain-file"
        _ = FileManager.default.createFile(atPath: file, contents: Data([1, 2, 3]))
        XCTAssertThrowsError(try open(file)) { XCTAssertEqual($0 as? LMDBError, .notDirectory) }
        // Refused opens leave nothing registered: the same path fails the same way again.
        XCTAssertThrowsError(try open(dir)) { XCTAssertEqual($0 as? LMDBError, .invalid) }
    }

    /// LMDB 0.9 opens a data file that ends after its meta pages (it reads only those) and the
    /// first page read past the end is SIGBUS; the open compares the length and refuses it.
    func testADataFileCutShortAfterItsMetaPagesIsRefusedAtOpen() throws {
        let dir = try makeTemporaryDirectory(self)
        do {
            let env = try open(dir)
            let db = try env.openDatabase("d", create: true)
            try env.withWriteTransaction { txn in
                for i in 0..<2000 { try txn.put([UInt8](repeating: UInt8(i & 0xFF), count: 200), for: "key\(i)", in: db) }
            }
            env.close()
        }
        let length = (try FileManager.default.attributesOfItem(atPath: dir + "/data.mdb")[.size] as? Int) ?? 0
        XCTAssertGreaterThan(length, 64 << 10)
        XCTAssertEqual(truncate(dir + "/data.mdb", 4 * 4096), 0)  // both meta pages intact, the B-tree gone
        XCTAssertThrowsError(try open(dir)) { XCTAssertEqual($0 as? LMDBError, .truncatedDataFile) }
        XCTAssertThrowsError(try open(dir, flags: [.noTLS, .readOnly])) { XCTAssertEqual($0 as? LMDBError, .truncatedDataFile) }
        // A file longer than its last page (the map size, freed pages) is normal.
        let longer = dir + "/longer"
        try FileManager.default.createDirectory(atPath: longer, withIntermediateDirectories: false)
        do {
            let env = try open(longer)
            let db = try env.openDatabase("d", create: true)
            try env.withWriteTransaction { try $0.put([7], for: "k", in: db) }
            env.close()
        }
        XCTAssertEqual(truncate(longer + "/data.mdb", 1 << 20), 0)
        let env = try open(longer)
        let db = try env.openDatabase("d")
        XCTAssertEqual(try env.withReadTransaction { try $0.copyValue(for: "k", in: db) }, [7])
    }

    /// After `close()` every call answers `.environmentClosed` instead of trapping, including a
    /// transaction that was waiting to begin while `close()` waited for a reader to finish (it
    /// would otherwise call `mdb_txn_begin` on the freed environment).
    func testUseAfterCloseIsATypedErrorEvenForATransactionWaitingOnClose() throws {
        let env = try open(try makeTemporaryDirectory(self))
        let db = try env.openDatabase("d", create: true)
        try env.withWriteTransaction { try $0.put([1], for: "k", in: db) }
        let readerIn = DispatchSemaphore(value: 0), done = DispatchGroup()
        DispatchQueue.global().async(group: done) {
            try? env.withReadTransaction { _ in
                readerIn.signal()
                usleep(200_000)  // close() waits for this reader meanwhile
            }
        }
        readerIn.wait()
        DispatchQueue.global().async(group: done) { env.close() }
        while env.isOpen { usleep(1_000) }  // close() has begun: marked closed, waiting for the gate
        let late = Locked<(any Error)?>(nil)
        DispatchQueue.global().async(group: done) {
            do { _ = try env.withReadTransaction { try $0.copyValue(for: "k", in: db) } } catch { late.withLock { $0 = error } }
        }
        done.wait()
        XCTAssertEqual(late.withLock { $0 } as? LMDBError, .environmentClosed)
        XCTAssertFalse(env.isOpen)
        XCTAssertThrowsError(try env.info()) { XCTAssertEqual($0 as? LMDBError, .environmentClosed) }
        XCTAssertThrowsError(try env.stat()) { XCTAssertEqual($0 as? LMDBError, .environmentClosed) }
        XCTAssertThrowsError(try env.sync()) { XCTAssertEqual($0 as? LMDBError, .environmentClosed) }
        XCTAssertThrowsError(try env.checkReaders()) { XCTAssertEqual($0 as? LMDBError, .environmentClosed) }
        XCTAssertThrowsError(try env.setMapSize(32 << 20)) { XCTAssertEqual($0 as? LMDBError, .environmentClosed) }
        XCTAssertThrowsError(try env.openDatabase("d")) { XCTAssertEqual($0 as? LMDBError, .environmentClosed) }
        XCTAssertThrowsError(try env.withWriteTransaction { try $0.put([2], for: "k", in: db) }) {
            XCTAssertEqual($0 as? LMDBError, .environmentClosed)
        }
    }

    /// The databases created with their first records in one transaction: all or nothing.
    func testNewDatabasesAndTheirFirstRecordsCommitTogether() throws {
        struct Boom: Error {}
        let env = try open(try makeTemporaryDirectory(self))
        XCTAssertThrowsError(try env.withNewDatabases(["a", "b"]) { txn, dbs in
            try txn.put([1], for: "k", in: dbs[1])
            throw Boom()
        })
        XCTAssertThrowsError(try env.openDatabase("a")) { XCTAssertEqual($0 as? LMDBError, .notFound, "rolled back with the body") }
        let (dbs, _) = try env.withNewDatabases(["a", "b"]) { txn, dbs in try txn.put([1], for: "k", in: dbs[1]) }
        XCTAssertEqual(try env.withReadTransaction { try $0.copyValue(for: "k", in: dbs[1]) }, [1])
        XCTAssertEqual(try env.openDatabase("a"), dbs[0])
    }

    func testResizeWaitsForReadersOnOtherThreads() throws {
        let env = try open(try makeTemporaryDirectory(self), mapSize: 1 << 20)
        let db = try env.openDatabase("d", create: true)
        try env.withWriteTransaction { try $0.put([42], for: "k", in: db) }
        let readers = DispatchGroup()
        for _ in 0..<2 {
            DispatchQueue.global().async(group: readers) {
                for _ in 0..<200 {
                    let v = try? env.withReadTransaction { try $0.copyValue(for: "k", in: db) }
                    XCTAssertEqual(v, [42])
                }
            }
        }
        for step in 1...20 { try env.setMapSize((1 << 20) + step * 65536) }
        readers.wait()
        XCTAssertEqual(try env.info().mapSize, (1 << 20) + 20 * 65536)
    }

    /// LMDB.md promises `.permissionDenied` for a write in a read-only environment (as
    /// `openDatabase(_:create: true)` gets it); `withWriteTransaction` trapped with `fatalError`.
    func testAWriteTransactionOnAReadOnlyEnvironmentIsATypedError() throws {
        let dir = try makeTemporaryDirectory(self)
        do {
            let env = try open(dir)
            let db = try env.openDatabase("d", create: true)
            try env.withWriteTransaction { try $0.put([1], for: "k", in: db) }
            env.close()
        }
        let env = try open(dir, flags: [.noTLS, .readOnly])
        let db = try env.openDatabase("d")
        XCTAssertThrowsError(try env.withWriteTransaction { try $0.put([2], for: "k", in: db) }) {
            XCTAssertEqual($0 as? LMDBError, .permissionDenied)
        }
        XCTAssertEqual(try env.withReadTransaction { try $0.copyValue(for: "k", in: db) }, [1])
    }

    /// A write transaction begun inside another on the same thread (directly, or through
    /// `openDatabase(_:create: true)`) waited forever on LMDB's non-recursive writer lock,
    /// holding the environment's gate, so `close()` and every resize hung behind it too.
    func testANestedWriteTransactionIsATypedErrorNotADeadlock() throws {
        let env = try open(try makeTemporaryDirectory(self))
        let db = try env.openDatabase("d", create: true)
        let outcome = Locked<[String]>([])
        let done = DispatchSemaphore(value: 0)
        Thread {
            do {
                try env.withWriteTransaction { txn in
                    try txn.put([1], for: "a", in: db)
                    do { try env.withWriteTransaction { try $0.put([2], for: "b", in: db) } } catch {
                        outcome.withLock { $0.append("inner: \(error as? LMDBError == .nestedWriteTransaction)") }
                    }
                    do { _ = try env.openDatabase("e", create: true) } catch {
                        outcome.withLock { $0.append("openDatabase: \(error as? LMDBError == .nestedWriteTransaction)") }
                    }
                }
                outcome.withLock { $0.append("outer committed") }
            } catch { outcome.withLock { $0.append("outer: \(error)") } }
            done.signal()
        }.start()
        guard done.wait(timeout: .now() + 10) == .success else {
            _ = Unmanaged.passRetained(env)  // the hung thread is still inside it: closing would hang too
            return XCTFail("a nested write transaction deadlocked")
        }
        XCTAssertEqual(outcome.withLock { $0 }, ["inner: true", "openDatabase: true", "outer committed"])
        XCTAssertEqual(try env.withReadTransaction { try $0.copyValue(for: "a", in: db) }, [1])
        try env.withWriteTransaction { try $0.put([3], for: "c", in: db) }  // the thread's writer slot was released
        XCTAssertEqual(try env.withReadTransaction { try $0.copyValue(for: "c", in: db) }, [3])
    }

    /// A reserved put whose `fill` threw left its bytes unwritten; when the body caught the error
    /// and returned, the transaction committed them (whatever the page held) as the value.
    func testAReservedPutWhoseFillThrowsIsNeverCommitted() throws {
        struct Boom: Error {}
        let env = try open(try makeTemporaryDirectory(self))
        let db = try env.openDatabase("d", create: true)
        try env.withWriteTransaction { try $0.put([7], for: "old", in: db) }
        for absent in [false, true] {
            XCTAssertThrowsError(try env.withWriteTransaction { txn in
                try txn.put([8], for: "other", in: db)
                do {
                    if absent { _ = try txn.putIfAbsent(count: 16, for: "k", in: db) { _ in throw Boom() } }
                    else { try txn.put(count: 16, for: "old", in: db) { _ in throw Boom() } }
                } catch {}  // swallowed
            }) { XCTAssertTrue($0 is Boom, "\($0)") }
            try env.withReadTransaction { txn in
                XCTAssertNil(try txn.copyValue(for: "k", in: db))
                XCTAssertNil(try txn.copyValue(for: "other", in: db), "nothing of the transaction was committed")
                XCTAssertEqual(try txn.copyValue(for: "old", in: db), [7])
            }
        }
    }

    func testErrorNamesAndDescriptions() {
        XCTAssertEqual(LMDBError.mapFull.rawValue, -30792)
        XCTAssertTrue("\(LMDBError.mapFull)".contains("MDB_MAP_FULL"))
        XCTAssertTrue(LMDBError.mapFull.isLMDBCode)
        XCTAssertFalse(LMDBError.noSpace.isLMDBCode)
        XCTAssertTrue(LMDBError.mapResized ~= LMDBError(rawValue: -30785))
        XCTAssertFalse(LMDBError.alreadyOpenInProcess.isLMDBCode)
        XCTAssertFalse(LMDBError.environmentClosed.isLMDBCode)
        XCTAssertTrue("\(LMDBError.truncatedDataFile)".contains("shorter"))
    }
}
