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
                let keyColumn = at + 1
                let key = try parseKey()
                skipSpace()
                try expect(UInt8(ascii: ":"))
                skipSpace()
                // A field given twice is refused (JSON leaves it undefined; a last-one-wins
                // reading silently replays another request than the file's author meant).
                func once<T>(_ seen: T?) throws(TraceError) {
                    if seen != nil { throw .malformed(line: line, reason: "duplicate field \"\(key)\" at column \(keyColumn)") }
                }
                switch key {
                case "timestamp": try once(timestamp); timestamp = try parseInteger()
                case "input_length": try once(input); input = try parseInteger()
                case "output_length": try once(output); output = try parseInteger()
                case "hash_ids": try once(ids); ids = try parseIntegerArray()
                default: try skipValue(depth: 0)
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

    /// A key, its escapes decoded (so `"input\u005flength"` is the field it spells; keys
    /// without a backslash, all of a real trace's, are taken as they are).
    private mutating func parseKey() throws(TraceError) -> String {
        try expect(UInt8(ascii: "\""))
        let start = at
        let escaped = try skipStringBody()
        let raw = UnsafeBufferPointer(rebasing: bytes[start..<(at - 1)])
        return escaped ? unescape(raw) : String(decoding: raw, as: UTF8.self)
    }

    /// Skips to just past the closing quote of a string whose opening quote was consumed,
    /// checking its escapes and that it holds no raw control character; returns whether it
    /// had escapes.
    @discardableResult
    private mutating func skipStringBody() throws(TraceError) -> Bool {
        var escaped = false
        while let c = peek {
            at += 1
            if c == UInt8(ascii: "\"") { return escaped }
            if c < 0x20 { throw fail("a control character inside a string") }
            if c >= 0x80 { try skipUTF8Tail(lead: c); continue }
            guard c == UInt8(ascii: "\\") else { continue }
            escaped = true
            guard let e = peek else { break }
            at += 1
            switch e {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"),
                 UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                continue
            case UInt8(ascii: "u"):
                for _ in 0..<4 {
                    guard let h = peek, hexValue(h) != nil else { throw fail("a \\u escape needs four hex digits") }
                    at += 1
                }
            default: throw fail("an invalid escape")
            }
        }
        throw fail("unterminated string")
    }

    /// Skips the continuation bytes of a UTF-8 sequence whose lead byte `lead` was consumed,
    /// refusing ill-formed UTF-8 (RFC 8259 §8.1: JSON text is UTF-8), as Unicode's table of
    /// well-formed sequences has it: no overlong forms, surrogates or values past U+10FFFF.
    private mutating func skipUTF8Tail(lead: UInt8) throws(TraceError) {
        let count: Int, low: UInt8, high: UInt8  // the second byte's range; later ones are 80...BF
        switch lead {
        case 0xC2...0xDF: (count, low, high) = (1, 0x80, 0xBF)
        case 0xE0: (count, low, high) = (2, 0xA0, 0xBF)
        case 0xE1...0xEC, 0xEE...0xEF: (count, low, high) = (2, 0x80, 0xBF)
        case 0xED: (count, low, high) = (2, 0x80, 0x9F)
        case 0xF0: (count, low, high) = (3, 0x90, 0xBF)
        case 0xF1...0xF3: (count, low, high) = (3, 0x80, 0xBF)
        case 0xF4: (count, low, high) = (3, 0x80, 0x8F)
        default:
            at -= 1
            throw fail("invalid UTF-8 inside a string")
        }
        for i in 0..<count {
            guard let b = peek, i == 0 ? (low...high).contains(b) : (0x80...0xBF).contains(b) else {
                throw fail("invalid UTF-8 inside a string")
            }
            at += 1
        }
    }

    /// The string a key's escaped bytes spell (already checked by `skipStringBody`), built as
    /// UTF-16 so `\\u` surrogate pairs join up.
    private func unescape(_ raw: UnsafeBufferPointer<UInt8>) -> String {
        var units: [UInt16] = []
        var i = 0
        while i < raw.count {
            guard raw[i] == UInt8(ascii: "\\") else {
                var j = i  // a run of raw UTF-8 up to the next backslash
                while j < raw.count && raw[j] != UInt8(ascii: "\\") { j += 1 }
                units.append(contentsOf: String(decoding: UnsafeBufferPointer(rebasing: raw[i..<j]), as: UTF8.self).utf16)
                i = j
                continue
            }
            let e = raw[i + 1]
            switch e {
            case UInt8(ascii: "u"):
                var v: UInt16 = 0
                for k in 0..<4 { v = v << 4 | UInt16(hexValue(raw[i + 2 + k])!) }
                units.append(v)
                i += 6
                continue
            case UInt8(ascii: "b"): units.append(0x08)
            case UInt8(ascii: "f"): units.append(0x0C)
            case UInt8(ascii: "n"): units.append(0x0A)
            case UInt8(ascii: "r"): units.append(0x0D)
            case UInt8(ascii: "t"): units.append(0x09)
            default: units.append(UInt16(e))  // \" \\ \/
            }
            i += 2
        }
        return String(decoding: units, as: UTF16.self)
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
        if digits > 1 && bytes[at - digits] == UInt8(ascii: "0") { throw fail("an integer with a leading zero") }
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

    /// Nesting a skipped value may have: deeper is refused rather than recursed into.
    static let maxSkippedDepth = 64

    /// Skips one JSON value of any type (for fields the replay does not use), checking its
    /// grammar: a malformed value in a field the replay ignores is still a malformed line.
    private mutating func skipValue(depth: Int) throws(TraceError) {
        guard let c = peek else { throw fail("expected a value") }
        switch c {
        case UInt8(ascii: "\""):
            at += 1
            try skipStringBody()
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            guard depth < Self.maxSkippedDepth else { throw fail("values nested more than \(Self.maxSkippedDepth) deep") }
            at += 1
            let object = c == UInt8(ascii: "{")
            let close = object ? UInt8(ascii: "}") : UInt8(ascii: "]")
            skipSpace()
            if peek == close { at += 1; return }
            while true {
                skipSpace()
                if object {
                    try expect(UInt8(ascii: "\""))
                    try skipStringBody()
                    skipSpace()
                    try expect(UInt8(ascii: ":"))
                    skipSpace()
                }
                try skipValue(depth: depth + 1)
                skipSpace()
                if peek == UInt8(ascii: ",") { at += 1; continue }
                try expect(close)
                return
            }
        case UInt8(ascii: "t"), UInt8(ascii: "f"), UInt8(ascii: "n"):
            for word in ["true", "false", "null"] where word.utf8.first == c {
                guard bytes.count - at >= word.utf8.count, word.utf8.elementsEqual(bytes[at..<(at + word.utf8.count)]) else {
                    throw fail("unexpected word")
                }
                at += word.utf8.count
            }
        default:
            try skipNumber()
        }
    }

    /// Skips a JSON number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
    private mutating func skipNumber() throws(TraceError) {
        func digits() -> Int {
            let start = at
            while let d = peek, d >= 0x30 && d <= 0x39 { at += 1 }
            return at - start
        }
        if peek == UInt8(ascii: "-") { at += 1 }
        let first = at
        let n = digits()
        guard n > 0 else { throw fail("unexpected character") }
        if n > 1 && bytes[first] == UInt8(ascii: "0") { throw fail("a number with a leading zero") }
        if peek == UInt8(ascii: ".") {
            at += 1
            guard digits() > 0 else { throw fail("a fraction without digits") }
        }
        if let e = peek, e == UInt8(ascii: "e") || e == UInt8(ascii: "E") {
            at += 1
            if let sign = peek, sign == UInt8(ascii: "+") || sign == UInt8(ascii: "-") { at += 1 }
            guard digits() > 0 else { throw fail("an exponent without digits") }
        }
    }
}

/// The value of a hex digit, or nil.
private func hexValue(_ c: UInt8) -> UInt8? {
    switch c {
    case 0x30...0x39: c - 0x30
    case 0x41...0x46: c - 0x41 + 10
    case 0x61...0x66: c - 0x61 + 10
    default: nil
    }
}
