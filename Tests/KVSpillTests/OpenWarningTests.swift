import Logging
import XCTest
@testable import KVCore
@testable import KVSpill

/// A log handler that keeps every message, to check what a store says at open.
final class CapturedLog: LogHandler, @unchecked Sendable {
    let messages = Locked<[String]>([])
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String, file: String, function: String, line: UInt) {
        messages.withLock { $0.append("\(level): \(message)") }
    }
}

/// Limits below one record are legal but turn the store off; the store says so when it opens.
final class OpenWarningTests: XCTestCase {
    func open(limit: Int, queueLimit: Int) throws -> [String] {
        let log = CapturedLog()
        let store = try LMDBSpillStore(SpillStoreConfiguration(path: try makeTemporaryDirectory(self) + "/s", layout: testLayout,
                                                               limitBytes: limit, writeMode: .background(queueLimitBytes: queueLimit)),
                                       logger: Logger(label: "test") { _ in log })
        store.close()
        return log.messages.withLock { $0 }.filter { $0.contains("below one record") }
    }

    func testLimitsBelowOneRecordAreReportedAtOpen() throws {
        let record = SpillRecord.payloadOffset(namespaceBytes: 0, tokenCount: testLayout.blockSize) + testLayout.blockBytes
        XCTAssertEqual(try open(limit: 8 << 20, queueLimit: 1 << 20), [])
        let queue = try open(limit: 8 << 20, queueLimit: record - 1)
        XCTAssertEqual(queue.count, 1)
        XCTAssertTrue(queue.first?.hasPrefix("warning: spill store: queueLimitBytes \(record - 1) is below one record") == true, "\(queue)")
        let both = try open(limit: record - 1, queueLimit: 0)
        XCTAssertEqual(both.count, 2, "\(both)")
        XCTAssertTrue(both.contains { $0.contains("limitBytes \(record - 1) is below one record") }, "\(both)")
        XCTAssertEqual(try open(limit: record, queueLimit: record), [])
    }
}
