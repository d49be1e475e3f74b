import Foundation
import XCTest

/// A fresh directory under the system temp dir, removed when the test ends.
func makeTemporaryDirectory(_ test: XCTestCase, function: String = #function) throws -> String {
    let path = NSTemporaryDirectory() + "lmdbtests-\(function.prefix(while: { $0 != "(" }))-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    test.addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
    return path
}

/// This test binary run again as a child process that executes one test method in "child mode"
/// (the method checks `ProcessInfo.processInfo.environment[childModeVariable]`), so tests can
/// put a second process on an environment, or kill one mid-write, without any other binary.
final class ChildProcess {
    static let childModeVariable = "PREFIXKV_CHILD_MODE"
    let process = Process()

    /// Starts `/proc/self/exe <test>` with `environment` added; its output goes to `logPath`.
    init(test: String, environment: [String: String], logPath: String) throws {
        process.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        process.arguments = [test]
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        process.standardOutput = log
        process.standardError = log
        try process.run()
    }

    /// Waits until `path` exists (the child's way of saying it reached a point), up to `timeout` seconds.
    func waitForFile(_ path: String, timeout: TimeInterval = 30) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if FileManager.default.fileExists(atPath: path) { return true }
            if !process.isRunning { return FileManager.default.fileExists(atPath: path) }
            usleep(5_000)
        }
        return false
    }

    /// SIGKILL: no cleanup, no atexit handlers, no unlocking, exactly like a crash.
    func kill() {
        if process.isRunning { Foundation.kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }
}
