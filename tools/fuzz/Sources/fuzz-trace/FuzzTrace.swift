// Harness: the Mooncake trace reader behind `kvctl replay` (Trace(jsonl:) and TraceLineParser).
//
// Input: JSONL bytes, as a trace file holds them.
//
// Properties:
// - it returns or throws a TraceError, never traps (typed throws make "typed" automatic);
// - an error about the content names a line that exists, and a malformed-JSON error names a
//   column inside that line (1 ... length + 1);
// - every accepted line is JSON that Foundation's JSONSerialization also reads, with the same
//   timestamp, input_length, output_length and hash_ids (differential);
// - every accepted request re-serializes to a canonical line that parses back to the same request;
// - an accepted request is within the documented limits, and its prompt (PromptTokens) has
//   exactly input_length tokens, token i of id h being h * 512 + i, all non-negative.
import Foundation
import FuzzSupport
@testable import KVToolsSubset

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    // Seeds: lines of the real traces (a sample) and a few multi-line files.
    guard let seeds = seedDirectory, let traces = getenv("PREFIXKV_TRACE_DIR").map({ String(cString: $0) }) else { return 0 }
    var n = 0
    for name in ["conversation_trace.jsonl", "synthetic_trace.jsonl"] {
        guard let bytes = readWholeFile("\(traces)/\(name)") else { continue }
        let lines = bytes.split(separator: UInt8(ascii: "\n"))
        for (i, line) in lines.enumerated() where i % 97 == 0 {
            writeFile("\(seeds)/line-\(n)", Array(line)); n += 1
        }
        writeFile("\(seeds)/head-\(name)", Array(lines.prefix(5).joined(separator: [UInt8(ascii: "\n")])))
    }
    let extra = [
        #"{"timestamp": 1, "input_length": 3, "hash_ids": [2], "extra": {"a": [true, false, null, -1.5e3, "\u00e9\ud83d\ude00"]}}"#,
        "\u{FEFF}" + #"{"input\u005flength":1,"timestamp":0,"hash_ids":[0]}"# + "\r\n\n",
        #"{"timestamp": 0, "input_length": 1, "output_length": 0, "hash_ids": [4194303]}"#,
    ]
    for (i, e) in extra.enumerated() { writeFile("\(seeds)/extra-\(i)", Array(e.utf8)) }
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    // The lines as Trace splits them (a UTF-8 BOM is dropped first).
    let body = bytes.starts(with: [0xEF, 0xBB, 0xBF]) ? Array(bytes[3...]) : bytes
    var lines = body.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).map(Array.init)
    if body.last == UInt8(ascii: "\n") { lines.removeLast() }
    if body.isEmpty { lines = [] }
    let trace: Trace
    do {
        trace = try Trace(jsonl: bytes)
    } catch {
        guard let line = error.line else { require(false, "a content error without a line: \(error)"); return 0 }
        require(line >= 1 && line <= lines.count, "error names line \(line) of \(lines.count): \(error)")
        if case .malformed(_, let reason) = error {
            let column = reason.split(separator: " ").last.flatMap { Int($0) }
            require(reason.contains("column"), "malformed without a column: \(reason)")
            require(column != nil && column! >= 1 && column! <= lines[line - 1].count + 1,
                    "column out of the line (\(lines[line - 1].count) bytes): \(reason)")
        }
        return 0
    }
    let nonBlank = lines.enumerated().filter { !$0.element.allSatisfy { [0x20, 0x09, 0x0D, 0x0A].contains($0) } }
    require(trace.requests.count == nonBlank.count, "\(trace.requests.count) requests from \(nonBlank.count) non-blank lines")
    var prompt = PromptTokens(hashBlockTokens: 512)
    for request in trace.requests {
        let line = lines[request.line - 1]
        // Differential: Foundation reads the same line the same way.
        let object = try? JSONSerialization.jsonObject(with: Data(line), options: [.fragmentsAllowed])
        let dict = object as? [String: Any]
        // Foundation refuses a \u escape of an unpaired surrogate (RFC 8259 §8.2: the grammar allows
        // it, the meaning is undefined); the trace reader skips such a string in a field it ignores.
        if dict == nil && hasSurrogateEscape(line) { continue }
        require(dict != nil, "accepted line \(request.line) is not a JSON object to Foundation: \(String(decoding: line, as: UTF8.self))")
        func int(_ key: String) -> Int64? { (dict![key] as? NSNumber).map { $0.int64Value } }
        require(int("timestamp") == request.timestamp && int("input_length") == Int64(request.inputLength)
                && (int("output_length") ?? 0) == Int64(request.outputLength),
                "Foundation reads other numbers on line \(request.line)")
        let ids = (dict!["hash_ids"] as? [NSNumber])?.map { $0.int64Value }
        require(ids == request.hashIDs, "Foundation reads other hash_ids on line \(request.line)")
        // Round trip through a canonical line.
        let canonical = "{\"timestamp\": \(request.timestamp), \"input_length\": \(request.inputLength), \"output_length\": \(request.outputLength), \"hash_ids\": [\(request.hashIDs.map(String.init).joined(separator: ", "))]}"
        let again = try? Trace(jsonl: Array(canonical.utf8))
        require(again?.requests.count == 1, "canonical line does not parse: \(canonical)")
        var back = again!.requests[0]
        back.line = request.line
        require(back == request, "canonical line parses to another request")
        // Limits, and the prompt the replay builds.
        require(request.inputLength >= 1 && request.inputLength <= Trace.maxPromptTokens && request.timestamp >= 0
                && request.outputLength >= 0, "an accepted request outside the limits")
        prompt.fill(request)
        require(prompt.tokens.count == request.inputLength, "prompt of \(prompt.tokens.count) tokens, input_length \(request.inputLength)")
        for (i, t) in prompt.tokens.enumerated() where i % 509 == 0 || i == prompt.tokens.count - 1 {
            require(t >= 0 && Int64(t) == request.hashIDs[i / 512] * 512 + Int64(i % 512), "token \(i) is \(t)")
        }
    }
    // Timestamp order, stable.
    for (a, b) in zip(trace.requests, trace.requests.dropFirst()) {
        require(a.timestamp < b.timestamp || (a.timestamp == b.timestamp && a.line < b.line), "requests out of order")
    }
    return 0
}

/// Whether `line` has a `\uD800`–`\uDFFF` escape (a surrogate, paired or not).
func hasSurrogateEscape(_ line: [UInt8]) -> Bool {
    guard line.count >= 4 else { return false }
    for i in 0..<(line.count - 3) where line[i] == UInt8(ascii: "\\") && line[i + 1] == UInt8(ascii: "u")
        && (line[i + 2] | 0x20) == UInt8(ascii: "d") {
        let c = line[i + 3] | 0x20
        if (UInt8(ascii: "8")...UInt8(ascii: "9")).contains(c) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(c) { return true }
    }
    return false
}
