import Foundation

/// This test binary run again as a child process that executes one test method in "child mode"
/// (the method reads ``ChildProcess/childDirectory`` and skips itself when it is nil), so tests
/// can put a second process on an LMDB environment or a spill store, or kill one with SIGKILL in
/// the middle of a write, without any other binary.
public final class ChildProcess {
    /// The environment variable that carries the child's working directory.
    public static let variable = "PREFIXKV_CHILD_DIRECTORY"
    /// In a child: the directory the parent gave it. Nil in an ordinary test run.
    public static var childDirectory: String? { ProcessInfo.processInfo.environment[variable] }
    /// The running child.
    public let process = Process()

    /// Starts `/proc/self/exe <test>` in child mode on `directory`; its output goes to `logPath`.
    public init(test: String, directory: String, logPath: String) throws {
        process.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        process.arguments = [test]
        process.environment = ProcessInfo.processInfo.environment.merging([Self.variable: directory]) { $1 }
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        process.standardOutput = log
        process.standardError = log
        try process.run()
    }

    /// Waits until `path` exists (the child's way of saying it reached a point), up to `timeout`
    /// seconds or until the child exits.
    public func waitForFile(_ path: String, timeout: TimeInterval = 30) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if FileManager.default.fileExists(atPath: path) { return true }
            if !process.isRunning { break }
            usleep(5_000)
        }
        return FileManager.default.fileExists(atPath: path)
    }

    /// SIGKILL: no cleanup, no atexit handlers, no unlocking, no flushing, exactly like a crash.
    public func kill() {
        if process.isRunning { Foundation.kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }
}
