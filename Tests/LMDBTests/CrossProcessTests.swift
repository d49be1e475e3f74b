import Foundation
import KVTestSupport
import XCTest
@testable import LMDB

/// Two processes on one environment: this test binary re-runs itself as the second one.
final class CrossProcessTests: XCTestCase {
    /// Child mode: writes one new entry per transaction forever (until killed), announcing
    /// the first commit with a `ready` file.
    func testChildWriter() throws {
        guard let dir = ChildProcess.childDirectory, dir.hasSuffix("/writer") else { throw XCTSkip("child mode only") }
        let env = try Environment(path: dir, configuration: .init(mapSize: 64 << 20))
        let db = try env.openDatabase("d", create: true)
        var n: UInt32 = 0
        while true {
            let key = withUnsafeBytes(of: n.bigEndian) { Array($0) }
            try env.withWriteTransaction { try $0.put(key, for: key, in: db) }
            if n == 0 { _ = FileManager.default.createFile(atPath: dir + "/ready", contents: nil) }
            n += 1
            if n % 64 == 0 { usleep(1000) }
        }
    }

    /// Child mode: holds a read transaction open until killed (to leave a stale reader slot).
    func testChildReader() throws {
        guard let dir = ChildProcess.childDirectory, dir.hasSuffix("/reader") else { throw XCTSkip("child mode only") }
        let env = try Environment(path: dir)
        try env.withReadTransaction { _ in
            _ = FileManager.default.createFile(atPath: dir + "/ready", contents: nil)
            while true { sleep(1) }
        }
    }

    /// Child mode: once `go` exists, opens the environment, grows its map past the parent's and
    /// fills it, then announces `grown`. Exits by itself after 30 s (the parent may have crashed).
    func testChildGrower() throws {
        guard let dir = ChildProcess.childDirectory, dir.hasSuffix("/grower") else { throw XCTSkip("child mode only") }
        while !FileManager.default.fileExists(atPath: dir + "/go") { usleep(5_000) }
        let env = try Environment(path: dir, configuration: .init(mapSize: 1 << 20))
        let db = try env.openDatabase("d", create: true)
        try env.setMapSize(16 << 20)
        try env.withWriteTransaction { txn in
            for i in 0..<64 { try txn.put([UInt8](repeating: 1, count: 64 << 10), for: "big\(i)", in: db) }
        }
        _ = FileManager.default.createFile(atPath: dir + "/grown", contents: nil)
        sleep(30)
    }

    /// With `MDB_NOTLS` a thread may hold several read transactions. A second one begun after
    /// another process grew the map gets `MDB_MAP_RESIZED`; adopting the new size needs every
    /// transaction of the process ended, so the retry trapped (`fatalError` in the gate) on the
    /// thread's own outer transaction. It is now the typed `.mapResized`, and a transaction begun
    /// after the outer one ends adopts the new size.
    func testANestedReadAfterAnotherProcessGrewTheMapIsATypedError() throws {
        let dir = try makeTemporaryDirectory(self) + "/grower"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let env = try Environment(path: dir, configuration: .init(mapSize: 1 << 20))
        let db = try env.openDatabase("d", create: true)
        try env.withWriteTransaction { try $0.put([1], for: "k", in: db) }
        let child = try ChildProcess(test: "LMDBTests.CrossProcessTests/testChildGrower", directory: dir, logPath: dir + "/../child.log")
        defer { child.kill() }
        try env.withReadTransaction { outer in
            _ = FileManager.default.createFile(atPath: dir + "/go", contents: nil)
            XCTAssertTrue(child.waitForFile(dir + "/grown"), "the child never grew the map")
            XCTAssertThrowsError(try env.withReadTransaction { try $0.copyValue(for: "big0", in: db) }) {
                XCTAssertEqual($0 as? LMDBError, .mapResized)
            }
            XCTAssertEqual(try outer.copyValue(for: "k", in: db), [1], "the outer snapshot is unharmed")
        }
        XCTAssertEqual(try env.withReadTransaction { try $0.withValue(for: "big63", in: db) { $0.count } }, 64 << 10)
    }

    func testReadOnlyOpenWhileAnotherProcessWrites() throws {
        let dir = try makeTemporaryDirectory(self) + "/writer"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let child = try ChildProcess(test: "LMDBTests.CrossProcessTests/testChildWriter",
                                     directory: dir, logPath: dir + "/../child.log")
        defer { child.kill() }
        XCTAssertTrue(child.waitForFile(dir + "/ready"), "child writer never committed")

        let env = try Environment(path: dir, configuration: .init(flags: [.readOnly, .noTLS]))
        XCTAssertTrue(env.isReadOnly)
        let db = try env.openDatabase("d")
        func snapshot() throws -> (entries: Int, keysAreDense: Bool) {
            try env.withReadTransaction { txn in
                var expected: UInt32 = 0, dense = true
                try txn.forEach(in: db) { k, v in
                    dense = dense && k.loadUnaligned(as: UInt32.self).bigEndian == expected && Array(k) == Array(v)
                    expected += 1
                    return true
                }
                let entries = try txn.stat(db).entries
                return (entries, dense && Int(expected) == entries)
            }
        }
        let first = try snapshot()
        XCTAssertGreaterThan(first.entries, 0)
        XCTAssertTrue(first.keysAreDense, "a snapshot holds exactly the committed prefix of the writer's keys")
        var later = first
        let deadline = Date().addingTimeInterval(10)
        while later.entries <= first.entries && Date() < deadline { usleep(10_000); later = try snapshot() }
        XCTAssertGreaterThan(later.entries, first.entries, "the read-only handle sees the writer's new commits")
        XCTAssertTrue(later.keysAreDense)
        XCTAssertThrowsError(try env.openDatabase("new", create: true)) {
            XCTAssertEqual($0 as? LMDBError, .permissionDenied)
        }
    }

    /// While this process keeps the environment open, a reader killed inside its transaction
    /// leaves its slot behind (pinning pages); `mdb_reader_check` frees it. (When no process has
    /// the environment open, the next open resets the whole reader table by itself.)
    func testReaderSlotOfAKilledProcessIsFreedByReaderCheck() throws {
        let dir = try makeTemporaryDirectory(self) + "/reader"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let env = try Environment(path: dir)
        XCTAssertEqual(env.staleReadersCleared, 0)
        let child = try ChildProcess(test: "LMDBTests.CrossProcessTests/testChildReader",
                                     directory: dir, logPath: dir + "/../child.log")
        XCTAssertTrue(child.waitForFile(dir + "/ready"), "child reader never started")
        child.kill()
        XCTAssertEqual(try env.checkReaders(), 1)
        XCTAssertEqual(try env.checkReaders(), 0)
    }
}
