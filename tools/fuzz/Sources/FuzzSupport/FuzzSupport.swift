#if canImport(Glibc)
import Glibc
#endif

/// A property a harness checks: on failure, prints what broke and aborts, so libFuzzer records
/// the input as a crash (a `fatalError` would too; this names the harness's claim).
public func require(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
                    file: StaticString = #fileID, line: UInt = #line) {
    if !condition() {
        let text = Array("FUZZ PROPERTY VIOLATED (\(file):\(line)): \(message())\n".utf8)
        _ = text.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        abort()
    }
}

/// Reads little pieces off the front of a fuzz input (zero when it runs out).
public struct ByteReader {
    public let bytes: [UInt8]
    public var at = 0
    public init(_ bytes: [UInt8]) { self.bytes = bytes }
    public var isAtEnd: Bool { at >= bytes.count }
    public var remaining: [UInt8] { at < bytes.count ? Array(bytes[at...]) : [] }
    public mutating func u8() -> UInt8 {
        defer { at += 1 }
        return at < bytes.count ? bytes[at] : 0
    }
    public mutating func u16() -> UInt16 { UInt16(u8()) | UInt16(u8()) << 8 }
    public mutating func take(_ n: Int) -> [UInt8] {
        let end = min(bytes.count, at + max(0, n))
        defer { at = end }
        return at < end ? Array(bytes[at..<end]) : []
    }
}

/// Applies edits read from `r` to `value`: each edit is an op byte and operands —
/// 0 xor a byte at an offset, 1 set a byte, 2 truncate, 3 append bytes, 4 overwrite a run,
/// 5 insert a run, 6 delete a run. Offsets are taken modulo the current length.
public func applyEdits(_ value: [UInt8], _ r: inout ByteReader, maxEdits: Int = 8) -> [UInt8] {
    var v = value
    var n = 0
    while !r.isAtEnd && n < maxEdits {
        n += 1
        let op = r.u8() % 7
        let pos = Int(r.u16())
        let at = v.isEmpty ? 0 : pos % v.count
        switch op {
        case 0: if !v.isEmpty { v[at] ^= max(1, r.u8()) }
        case 1: if !v.isEmpty { v[at] = r.u8() }
        case 2: v.removeLast(v.isEmpty ? 0 : pos % (v.count + 1))
        case 3: v += r.take(Int(r.u8() % 64))
        case 4:
            let run = r.take(Int(r.u8() % 32))
            for (i, b) in run.enumerated() where at + i < v.count { v[at + i] = b }
        case 5: v.insert(contentsOf: r.take(Int(r.u8() % 32)), at: at)
        default:
            let len = min(Int(r.u8()), v.count - at)
            if len > 0 { v.removeSubrange(at..<(at + len)) }
        }
    }
    return v
}

/// A fresh private directory under $TMPDIR (or /tmp).
public func makeTemporaryDirectory(_ tag: String) -> String {
    let base = getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
    var template = Array("\(base)/prefixkv-fuzz-\(tag)-XXXXXX".utf8CString)
    let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    require(made != nil, "mkdtemp failed: \(String(cString: strerror(errno)))")
    return String(cString: made!)
}

/// Writes `bytes` to `path` (seed corpora).
public func writeFile(_ path: String, _ bytes: [UInt8]) {
    guard let f = fopen(path, "wb") else { return }
    _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, f) }
    fclose(f)
}

/// Reads a whole file (nil when it cannot).
public func readWholeFile(_ path: String) -> [UInt8]? {
    guard let f = fopen(path, "rb") else { return nil }
    defer { fclose(f) }
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = chunk.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, f) }
        out += chunk[0..<n]
        if n < chunk.count { break }
    }
    return out
}

/// The directory to write seeds into, when `PREFIXKV_FUZZ_SEED_DIR` is set (see run.sh).
public var seedDirectory: String? { getenv("PREFIXKV_FUZZ_SEED_DIR").map { String(cString: $0) } }

/// Removes a directory tree (best effort).
public func removeTree(_ path: String) {
    _ = path.withCString { p in system("rm -rf '\(String(cString: p))'") }
}

@_silgen_name("LLVMFuzzerRunDriver")
private func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt) -> CInt

/// Hands the process to libFuzzer (its usual command line) with `testOneInput`. SwiftPM links an
/// executable target with its own `main`, so a harness's main.swift calls this instead of relying
/// on libFuzzer's `main` (which the linker then never pulls in).
public func runLibFuzzer(_ testOneInput: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt) -> Never {
    var argc = CommandLine.argc
    var argv = CommandLine.unsafeArgv
    exit(LLVMFuzzerRunDriver(&argc, &argv, testOneInput))
}
