/// A hand-written parser for one line of a Mooncake trace: an object whose fields we need are
/// integers or an integer array. It is far faster than `JSONDecoder` (no `Any`, no `Data`, no
/// key strings) and still skips any other field's value, whatever its JSON type, so a trace with
/// extra fields reads fine.
struct TraceLineParser {
    let bytes: UnsafeBufferPointer<UInt8>
    let line: Int
    var at = 0

    init(bytes: UnsafeBufferPointer<UInt8>, line: Int) {
        self.bytes = bytes
        self.line = line
    }

    /// The request on this line, or nil for a blank line.
    mutating func parseRequest() throws(TraceError) -> TraceRequest? {
        skipSpace()
        if at == bytes.count { return nil }
        try expect(UInt8(ascii: "{"))
        var timestamp: Int64?, input: Int64?, output: Int64?, ids: [Int64]?
        skipSpace()
        if peek == UInt8(ascii: "}") { at += 1 } else {
            while true {
                skipSpace()
                let key = try parseKey()
                skipSpace()
                try expect(UInt8(ascii: ":"))
                skipSpace()
                switch key {
                case "timestamp": timestamp = try parseInteger()
                case "input_length": input = try parseInteger()
                case "output_length": output = try parseInteger()
                case "hash_ids": ids = try parseIntegerArray()
                default: try skipValue()
                }
                skipSpace()
                if peek == UInt8(ascii: ",") { at += 1; continue }
                try expect(UInt8(ascii: "}"))
                break
            }
        }
        skipSpace()
        guard at == bytes.count else { throw fail("unexpected text after the object") }
        guard let timestamp else { throw .missingField(line: line, field: "timestamp") }
        guard let input else { throw .missingField(line: line, field: "input_length") }
        guard let ids else { throw .missingField(line: line, field: "hash_ids") }
        return TraceRequest(timestamp: timestamp, inputLength: Int(input), outputLength: Int(output ?? 0), hashIDs: ids, line: line)
    }

    // MARK: - Pieces

    private var peek: UInt8? { at < bytes.count ? bytes[at] : nil }

    private func fail(_ reason: String) -> TraceError {
        .malformed(line: line, reason: "\(reason) at column \(at + 1)")
    }

    private mutating func skipSpace() {
        while let c = peek, c == 0x20 || c == 0x09 || c == 0x0D || c == 0x0A { at += 1 }
    }

    private mutating func expect(_ c: UInt8) throws(TraceError) {
        guard peek == c else { throw fail("expected '\(Character(Unicode.Scalar(c)))'") }
        at += 1
    }

    /// A key: the field names we look for have no escapes, so raw bytes between quotes suffice
    /// (a key with escapes simply matches none of them and its value is skipped).
    private mutating func parseKey() throws(TraceError) -> String {
        try expect(UInt8(ascii: "\""))
        let start = at
        try skipStringBody()
        return String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<(at - 1)]), as: UTF8.self)
    }

    /// Skips to just past the closing quote of a string whose opening quote was consumed.
    private mutating func skipStringBody() throws(TraceError) {
        while let c = peek {
            at += 1
            if c == UInt8(ascii: "\\") { at += 1 } else if c == UInt8(ascii: "\"") { return }
        }
        throw fail("unterminated string")
    }

    private mutating func parseInteger() throws(TraceError) -> Int64 {
        var negative = false
        if peek == UInt8(ascii: "-") { negative = true; at += 1 }
        var value: Int64 = 0
        var digits = 0
        while let c = peek, c >= 0x30 && c <= 0x39 {
            let (m, o1) = value.multipliedReportingOverflow(by: 10)
            let (s, o2) = m.addingReportingOverflow(Int64(c - 0x30))
            guard !o1 && !o2 else { throw fail("integer out of range") }
            value = s
            digits += 1
            at += 1
        }
        guard digits > 0 else { throw fail("expected an integer") }
        if let c = peek, c == UInt8(ascii: ".") || c == UInt8(ascii: "e") || c == UInt8(ascii: "E") {
            throw fail("expected an integer, found a fraction or exponent")
        }
        return negative ? -value : value
    }

    private mutating func parseIntegerArray() throws(TraceError) -> [Int64] {
        try expect(UInt8(ascii: "["))
        var values: [Int64] = []
        skipSpace()
        if peek == UInt8(ascii: "]") { at += 1; return values }
        while true {
            skipSpace()
            values.append(try parseInteger())
            skipSpace()
            if peek == UInt8(ascii: ",") { at += 1; continue }
            try expect(UInt8(ascii: "]"))
            return values
        }
    }

    /// Skips one JSON value of any type (for fields the replay does not use).
    private mutating func skipValue() throws(TraceError) {
        guard let c = peek else { throw fail("expected a value") }
        switch c {
        case UInt8(ascii: "\""):
            at += 1
            try skipStringBody()
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            try skipContainer()
        case UInt8(ascii: "t"), UInt8(ascii: "f"), UInt8(ascii: "n"):
            while let l = peek, l >= UInt8(ascii: "a") && l <= UInt8(ascii: "z") { at += 1 }
        default:
            let start = at
            while let n = peek, n == UInt8(ascii: "-") || n == UInt8(ascii: "+") || n == UInt8(ascii: ".")
                    || n == UInt8(ascii: "e") || n == UInt8(ascii: "E") || (n >= 0x30 && n <= 0x39) { at += 1 }
            guard at > start else { throw fail("unexpected character") }
        }
    }

    /// Skips a nested object or array by bracket depth, stepping over strings.
    private mutating func skipContainer() throws(TraceError) {
        var depth = 0
        while let c = peek {
            at += 1
            switch c {
            case UInt8(ascii: "\""): try skipStringBody()
            case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1
            case UInt8(ascii: "}"), UInt8(ascii: "]"):
                depth -= 1
                if depth == 0 { return }
            default: break
            }
        }
        throw fail("unterminated object or array")
    }
}
