import Foundation

/// A one-line progress bar on stderr, drawn only when stderr is a terminal so logs and pipes
/// stay clean.
struct ProgressBar {
    let enabled = isatty(STDERR_FILENO) != 0

    func show(_ done: Int, _ total: Int, _ unit: String) {
        guard enabled, total > 0 else { return }
        let width = 40
        let filled = done * width / total
        let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
        FileHandle.standardError.write(Data("\r[\(bar)] \(done)/\(total) \(unit)".utf8))
    }

    func finish() {
        guard enabled else { return }
        FileHandle.standardError.write(Data("\n".utf8))
    }
}
