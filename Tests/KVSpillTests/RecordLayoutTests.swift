import KVCore
import XCTest
@testable import KVSpill

/// A spill record's layout fingerprint tells token-row values from token-pair values: a block
/// written in one order is never read back as the other.
final class RecordLayoutTests: XCTestCase {
    func testValueOrderIsPartOfTheFingerprint() throws {
        let rows = try KVLayout(layerCount: 1, kvHeadCount: 1, headDim: 32, blockSize: 2, dtype: .bfloat16)
        let pairs = try KVLayout(layerCount: 1, kvHeadCount: 1, headDim: 32, blockSize: 2, dtype: .bfloat16, valueOrder: .tokenPairs)
        let tokens: [TokenID] = [7, 9]
        for (written, other) in [(rows, pairs), (pairs, rows)] {
            let size = SpillRecord.payloadOffset(namespaceBytes: 1, tokenCount: 2) + written.blockBytes
            let record = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
            defer { record.deallocate() }
            record.initializeMemory(as: UInt8.self, repeating: 0)
            _ = tokens.withUnsafeBufferPointer { t in
                SpillRecord.writeHeader(into: record, layout: written, namespace: [1], tokens: t,
                                        payloadBytes: written.blockBytes, writtenAtMillis: 0)
            }
            SpillRecord.seal(record)
            let view = try RecordView(UnsafeRawBufferPointer(record))
            XCTAssertTrue(view.matches(written), "\(written)")
            XCTAssertFalse(view.matches(other), "\(written) read as \(other)")
        }
        // Records of token-row layouts keep the plain dtype code (existing stores read unchanged).
        XCTAssertEqual(RecordView.dtypeField(rows), KVDType.bfloat16.code)
    }
}
