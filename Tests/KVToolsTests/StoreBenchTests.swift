import Foundation
import Testing
import KVCore
import KVTools

@Suite struct StoreBenchTests {
    /// `kvctl bench store --dir D` used to remove all of D afterwards (`--dir .` would have wiped
    /// the working directory): it now works in a fresh subdirectory and removes only that.
    @Test func benchKeepsWhatItsDirectoryAlreadyHeld() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("prefixkv-bench-test-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir + "/sub", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "keep me".write(toFile: dir + "/notes.txt", atomically: true, encoding: .utf8)
        try "me too".write(toFile: dir + "/sub/more.txt", atomically: true, encoding: .utf8)
        let layout = try KVLayout(layerCount: 1, kvHeadCount: 1, headDim: 8, blockSize: 16)
        let result = try StoreBench(layout: layout, tokens: 64, directory: dir, restoreRepeats: 1, rounds: 1).run()
        #expect(result.blocks == 4)
        #expect(try String(contentsOfFile: dir + "/notes.txt", encoding: .utf8) == "keep me")
        #expect(try String(contentsOfFile: dir + "/sub/more.txt", encoding: .utf8) == "me too")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).sorted() == ["notes.txt", "sub"],
                "the bench's own subdirectory is removed")
    }

    /// A --dir that does not exist, or is a file, is a usage error naming --dir; nothing is created
    /// (it used to create the missing path, and leave its parents behind).
    @Test func aMissingOrFileDirIsAUsageError() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("prefixkv-bench-new-\(UUID().uuidString)").path
        let layout = try KVLayout(layerCount: 1, kvHeadCount: 1, headDim: 8, blockSize: 16)
        #expect(throws: OptionError("--dir", "must be an existing directory, got \(dir)/x")) {
            _ = try StoreBench(layout: layout, tokens: 32, directory: dir + "/x", restoreRepeats: 1, rounds: 1).run()
        }
        #expect(!FileManager.default.fileExists(atPath: dir))
        let file = dir + ".file"
        _ = FileManager.default.createFile(atPath: file, contents: Data("x".utf8))
        defer { try? FileManager.default.removeItem(atPath: file) }
        #expect(throws: OptionError("--dir", "must be an existing directory, got \(file)")) {
            _ = try StoreBench(layout: layout, tokens: 32, directory: file, restoreRepeats: 1, rounds: 1).run()
        }
    }
}
