#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One request of a Mooncake trace: when it arrived, how long its prompt is, and the chained ids
/// of its prompt's hash blocks (an id stands for the whole prefix up to and including its block).
public struct TraceRequest: Sendable, Equatable {
    /// Arrival time in milliseconds from the start of the trace.
    public var timestamp: Int64
    public var inputLength: Int
    public var outputLength: Int
    public var hashIDs: [Int64]
    /// The 1-based line of the file the request came from (for error messages).
    public var line: Int

    public init(timestamp: Int64, inputLength: Int, outputLength: Int, hashIDs: [Int64], line: Int) {
        self.timestamp = timestamp
        self.inputLength = inputLength
        self.outputLength = outputLength
        self.hashIDs = hashIDs
        self.line = line
    }
}

/// Why a trace could not be read. Every content error names the 1-based line.
public enum TraceError: Error, Equatable, Sendable, CustomStringConvertible {
    case unreadable(path: String, reason: String)
    case malformed(line: Int, reason: String)
    case missingField(line: Int, field: String)
    /// The request's fields disagree (too few hash ids for its input length, empty prompt).
    case inconsistent(line: Int, reason: String)
    /// A token id `hash * hashBlockTokens + i` would not fit a non-negative `TokenID`.
    case tokenOverflow(line: Int, hashID: Int64)
    /// Tokens per hash id outside `Trace.hashBlockTokensRange` (a setting, not a line of the file).
    case invalidHashBlockTokens(Int)

    /// The 1-based line the error is about (nil: the file or a setting, not a line).
    public var line: Int? {
        switch self {
        case .malformed(let l, _), .missingField(let l, _), .inconsistent(let l, _), .tokenOverflow(let l, _): l
        case .unreadable, .invalidHashBlockTokens: nil
        }
    }

    public var description: String {
        switch self {
        case .unreadable(let p, let r): "cannot read trace \(p): \(r)"
        case .malformed(let l, let r): "trace line \(l): malformed JSON: \(r)"
        case .missingField(let l, let f): "trace line \(l): missing field \"\(f)\""
        case .inconsistent(let l, let r): "trace line \(l): \(r)"
        case .tokenOverflow(let l, let h): "trace line \(l): hash id \(h) gives token ids beyond Int32"
        case .invalidHashBlockTokens(let n):
            "tokens per hash id must be in \(Trace.hashBlockTokensRange.lowerBound)...\(Trace.hashBlockTokensRange.upperBound), got \(n)"
        }
    }
}

/// A parsed trace, requests in timestamp order (stable: equal timestamps keep file order), plus
/// the granularity its hash ids were computed at.
public struct Trace: Sendable {
    public var requests: [TraceRequest]
    /// Tokens per hash block (512 for the Mooncake traces).
    public var hashBlockTokens: Int

    /// The tokens per hash id a trace may use: token ids are `Int32`, so a larger block could
    /// not hold even hash id 0's tokens.
    public static let hashBlockTokensRange = 1...Int(Int32.max)

    /// Parses JSONL bytes; blank lines are skipped.
    public init(jsonl bytes: [UInt8], hashBlockTokens: Int = 512) throws(TraceError) {
        guard Self.hashBlockTokensRange.contains(hashBlockTokens) else { throw .invalidHashBlockTokens(hashBlockTokens) }
        self.hashBlockTokens = hashBlockTokens
        var parsed: [TraceRequest] = []
        try bytes.withUnsafeBufferPointer { (buffer: UnsafeBufferPointer<UInt8>) throws(TraceError) in
            // A UTF-8 byte order mark some editors write is not part of the first line's JSON.
            var start = buffer.starts(with: [0xEF, 0xBB, 0xBF]) ? 3 : 0
            var line = 0
            while start < buffer.count {
                line += 1
                var end = start
                while end < buffer.count && buffer[end] != UInt8(ascii: "\n") { end += 1 }
                var parser = TraceLineParser(bytes: UnsafeBufferPointer(rebasing: buffer[start..<end]), line: line)
                if let request = try parser.parseRequest() {
                    try Self.validate(request, hashBlockTokens: hashBlockTokens)
                    parsed.append(request)
                }
                start = end + 1
            }
        }
        // Sorting (timestamp, file position) pairs makes the order stable whatever sort is used.
        requests = parsed.enumerated()
            .sorted { ($0.element.timestamp, $0.offset) < ($1.element.timestamp, $1.offset) }
            .map(\.element)
    }

    /// Reads and parses a JSONL file.
    public init(contentsOf path: String, hashBlockTokens: Int = 512) throws(TraceError) {
        let bytes: [UInt8]
        bytes = try readFile(path)
        try self.init(jsonl: bytes, hashBlockTokens: hashBlockTokens)
    }

    /// The first `limit` requests (in timestamp order).
    public func prefix(_ limit: Int) -> Trace {
        var t = self
        t.requests = Array(requests.prefix(limit))
        return t
    }

    /// Total prompt tokens.
    public var promptTokens: Int { requests.reduce(0) { $0 + $1.inputLength } }

    /// The longest prompt a trace line may ask for. A replay builds each prompt's token ids (4
    /// bytes each), so an unchecked `input_length` let a 67-byte line ask for 25 GB and abort
    /// the process; 2^24 tokens (64 MiB of ids) is beyond any model's context today.
    public static let maxPromptTokens = 1 << 24

    static func validate(_ r: TraceRequest, hashBlockTokens: Int) throws(TraceError) {
        guard r.inputLength > 0 else { throw .inconsistent(line: r.line, reason: "input_length must be positive, got \(r.inputLength)") }
        guard r.timestamp >= 0 else { throw .inconsistent(line: r.line, reason: "timestamp must not be negative, got \(r.timestamp)") }
        guard r.outputLength >= 0 else { throw .inconsistent(line: r.line, reason: "output_length must not be negative, got \(r.outputLength)") }
        // Rounded up without `inputLength + hashBlockTokens - 1`, which overflows for a huge length.
        let needed = hashIDsCovering(r.inputLength, hashBlockTokens: hashBlockTokens)
        guard r.hashIDs.count >= needed else {
            throw .inconsistent(line: r.line, reason: "\(r.hashIDs.count) hash ids cannot cover input_length \(r.inputLength) at \(hashBlockTokens) tokens per id")
        }
        guard r.inputLength <= maxPromptTokens else {
            throw .inconsistent(line: r.line, reason: "input_length \(r.inputLength) is over the \(maxPromptTokens) tokens a replayed prompt may have")
        }
        // Id h is tokens h·H … h·H + H − 1, all ≤ Int32.max exactly when h < 2^31 / H
        // (`Int32.max / H` refused the largest fitting id whenever H divides 2^31).
        let limit = (Int64(Int32.max) + 1) / Int64(hashBlockTokens)
        for h in r.hashIDs.prefix(needed) where h < 0 || h >= limit { throw .tokenOverflow(line: r.line, hashID: h) }
    }
}

/// The hash ids that hold `inputLength` tokens.
func hashIDsCovering(_ inputLength: Int, hashBlockTokens: Int) -> Int {
    ceilDivide(inputLength, hashBlockTokens)
}

/// ⌈n / d⌉ for n ≥ 0 and d > 0, without the overflow of `(n + d - 1) / d` near `Int.max`: the
/// blocks (or hash ids) that hold n tokens, for counts that come straight from a user or a file.
func ceilDivide(_ n: Int, _ d: Int) -> Int {
    n / d + (n % d == 0 ? 0 : 1)
}

/// Reads a whole file with the C library (Foundation's `Data(contentsOf:)` is not needed for this).
private func readFile(_ path: String) throws(TraceError) -> [UInt8] {
    guard let f = fopen(path, "rb") else { throw .unreadable(path: path, reason: String(cString: strerror(errno))) }
    defer { fclose(f) }
    // fopen succeeds on a directory on Linux and the first read fails with EISDIR: say so up front.
    var info = stat()
    if fstat(fileno(f), &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR {
        throw .unreadable(path: path, reason: "it is a directory, not a trace file")
    }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1 << 20)
    while true {
        let n = chunk.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, f) }
        if n > 0 { bytes.append(contentsOf: chunk[0..<n]) }
        if n < chunk.count { break }
    }
    guard ferror(f) == 0 else { throw .unreadable(path: path, reason: "read error: \(String(cString: strerror(errno)))") }
    return bytes
}
