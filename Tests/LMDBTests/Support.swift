import Foundation
import XCTest

/// A fresh directory under the system temp dir, removed when the test ends.
func makeTemporaryDirectory(_ test: XCTestCase, function: String = #function) throws -> String {
    let path = NSTemporaryDirectory() + "lmdbtests-\(function.prefix(while: { $0 != "(" }))-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    test.addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
    return path
}
