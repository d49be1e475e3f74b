import Foundation
import Testing
import KVCore
import KVTools

@Suite struct TraceTests {
    private func parse(_ text: String, hashBlockTokens: Int = 512) throws(TraceError) -> Trace {
        try Trace(jsonl: Array(text.utf8), hashBlockTokens: hashBlockTokens)
    }

    @Test func readsTheFixtureInTimestampOrder() throws {
        let trace = try Fixture.conversation()
        #expect(trace.requests.count == 300)
        #expect(trace.requests[0] == TraceRequest(timestamp: 0, inputLength: 6758, outputLength: 500, hashIDs: Array(0...13), line: 1))
        #expect(zip(trace.requests, trace.requests.dropFirst()).allSatisfy { $0.timestamp <= $1.timestamp })
    }

    @Test func sortIsStableAndBlankLinesAreSkipped() throws {
        let trace = try parse("""
            {"timestamp": 5, "input_length": 3, "output_length": 1, "hash_ids": [1]}

            {"timestamp": 2, "input_length": 3, "output_length": 1, "hash_ids": [2]}
            {"timestamp": 5, "input_length": 3, "output_length": 1, "hash_ids": [3]}
            """)
        #expect(trace.requests.map(\.hashIDs) == [[2], [1], [3]])
        #expect(trace.requests.map(\.line) == [3, 1, 4])
    }

    @Test func skipsUnknownFieldsOfAnyType() throws {
        let trace = try parse(#"{"meta": {"a": [1, {"b": "x\"}"}], "c": null}, "timestamp": 7, "tag": "q", "input_length": 600, "hash_ids": [4, 9], "f": -1.5e3, "ok": true}"#)
        #expect(trace.requests == [TraceRequest(timestamp: 7, inputLength: 600, outputLength: 0, hashIDs: [4, 9], line: 1)])
    }

    /// The line a parse error names (nil when it parsed or the error names no line).
    private func errorLine(_ text: String, hashBlockTokens: Int = 512) -> Int? {
        do {
            _ = try parse(text, hashBlockTokens: hashBlockTokens)
            Issue.record("expected a TraceError for \(text)")
            return nil
        } catch {
            return error.line
        }
    }

    @Test func malformedLinesNameTheirLine() {
        let good = #"{"timestamp": 0, "input_length": 3, "hash_ids": [1]}"#
        #expect(errorLine(good + "\n" + #"{"timestamp": 1, "input_length": 3, "hash_ids": [1,]}"#) == 2)
        #expect(errorLine(good + "\n" + good + "\n" + #"{"timestamp": 1, "input_length": 3.5, "hash_ids": [1]}"#) == 3)
        #expect(throws: TraceError.missingField(line: 2, field: "hash_ids")) { try parse(good + "\n" + #"{"timestamp": 1, "input_length": 3}"#) }
        #expect(errorLine(#"{"timestamp": 1, "input_length": 3, "hash_ids": [1]} x"#) == 1)
        #expect(errorLine(good + "\n\n" + #"{"timestamp": 99999999999999999999, "input_length": 3, "hash_ids": [1]}"#) == 3)
    }

    /// An input_length near Int.max overflowed `inputLength + hashBlockTokens - 1` (a trap); it is
    /// now an inconsistent line, as any length the hash ids cannot cover.
    @Test func hugeInputLengthIsAnErrorNamingItsLine() {
        let good = #"{"timestamp": 0, "input_length": 3, "hash_ids": [1]}"#
        let huge = #"{"timestamp": 0, "input_length": 9223372036854775807, "hash_ids": [1]}"#
        #expect(errorLine(good + "\n" + huge) == 2)
        #expect(throws: TraceError.inconsistent(line: 1, reason: "1 hash ids cannot cover input_length 9223372036854775807 at 512 tokens per id")) {
            try parse(huge)
        }
        #expect(errorLine(huge, hashBlockTokens: Int(Int32.max)) == 1)
    }

    /// Tokens per hash id is a setting: out of range it is reported as such, not as a JSON error
    /// on "line 0" (0) or as an overflowing hash id (2^32).
    @Test func hashBlockTokensOutOfRangeIsNamed() {
        for bad in [0, -512, Int(Int32.max) + 1, 4_294_967_296, Int.max] {
            #expect(throws: TraceError.invalidHashBlockTokens(bad)) { try parse(#"{"timestamp": 0, "input_length": 3, "hash_ids": [0]}"#, hashBlockTokens: bad) }
        }
        #expect(TraceError.invalidHashBlockTokens(0).description == "tokens per hash id must be in 1...2147483647, got 0")
    }

    /// A missing file is named once ("cannot read trace X: cannot read trace X: …" before); a
    /// directory is called one.
    @Test func unreadableTracesSayWhy() throws {
        let missing = "/nonexistent-\(UInt64.random(in: 0...UInt64.max)).jsonl"
        do {
            _ = try Trace(contentsOf: missing)
            Issue.record("expected an error")
        } catch {
            #expect(error.description == "cannot read trace \(missing): No such file or directory")
        }
        let dir = FileManager.default.temporaryDirectory.path
        do {
            _ = try Trace(contentsOf: dir)
            Issue.record("expected an error")
        } catch {
            #expect(error == .unreadable(path: dir, reason: "it is a directory, not a trace file"))
        }
    }

    @Test func rejectsInconsistentRequests() {
        #expect(throws: TraceError.self) { try parse(#"{"timestamp": 0, "input_length": 1025, "hash_ids": [1, 2]}"#) }
        #expect(throws: TraceError.tokenOverflow(line: 1, hashID: 5_000_000)) { try parse(#"{"timestamp": 0, "input_length": 10, "hash_ids": [5000000]}"#) }
        #expect(throws: TraceError.self) { try parse(#"{"timestamp": 0, "input_length": 0, "hash_ids": []}"#) }
    }

    /// Hash id h stands for tokens h·H … h·H + H − 1, so the largest id whose tokens all fit a
    /// non-negative Int32 is 2^31 / H − 1: 4,194,303 at H = 512 (its last token is Int32.max).
    /// The check used `Int32.max / H` as the first bad id, which refuses that id ("gives token
    /// ids beyond Int32", though none is) whenever H divides 2^31: every power of two.
    @Test func theLargestHashIDWhoseTokensFitIsAccepted() throws {
        let top = #"{"timestamp": 0, "input_length": 512, "hash_ids": [4194303]}"#
        let trace = try parse(top + "\n" + top)
        #expect(trace.requests.map(\.hashIDs) == [[4194303], [4194303]])
        // Its tokens reach Int32.max and the cache takes them: the second request hits all 512.
        let result = try replay(trace)
        #expect(result.hitTokens == 512 && result.rejectedRequests == 0)
        #expect(throws: TraceError.tokenOverflow(line: 1, hashID: 4_194_304)) {
            try parse(#"{"timestamp": 0, "input_length": 512, "hash_ids": [4194304]}"#)
        }
        // H = 2^30: id 1 is tokens 2^30 … 2^31 − 1, id 2 overflows.
        #expect(throws: Never.self) { try parse(#"{"timestamp": 0, "input_length": 1, "hash_ids": [1]}"#, hashBlockTokens: 1 << 30) }
        #expect(throws: TraceError.tokenOverflow(line: 1, hashID: 2)) {
            try parse(#"{"timestamp": 0, "input_length": 1, "hash_ids": [2]}"#, hashBlockTokens: 1 << 30)
        }
        // H = 3 does not divide 2^31: 715,827,882 · 3 + 2 = 2^31 overflows, one less fits.
        #expect(throws: Never.self) { try parse(#"{"timestamp": 0, "input_length": 3, "hash_ids": [715827881]}"#, hashBlockTokens: 3) }
        #expect(throws: TraceError.tokenOverflow(line: 1, hashID: 715_827_882)) {
            try parse(#"{"timestamp": 0, "input_length": 3, "hash_ids": [715827882]}"#, hashBlockTokens: 3)
        }
    }

    /// A trace fuzzing review (2026-12-01): a 67-byte line asked for a 25 GB prompt and the replay
    /// aborted on the allocation; fields given twice were read last-one-wins; negative timestamps
    /// and output lengths, leading zeros and malformed values in ignored fields were accepted.
    @Test func promptsOverTheLimitAreRefusedByLine() {
        let good = #"{"timestamp": 0, "input_length": 3, "hash_ids": [0]}"#
        let huge = #"{"timestamp": 0, "input_length": 6442450941, "hash_ids": [0,0,0]}"#
        #expect(errorLine(good + "\n" + huge, hashBlockTokens: Int(Int32.max)) == 2)
        let atLimit = #"{"timestamp": 0, "input_length": \#(Trace.maxPromptTokens), "hash_ids": [0]}"#
        #expect(throws: Never.self) { try parse(atLimit, hashBlockTokens: Trace.maxPromptTokens) }
        let over = #"{"timestamp": 0, "input_length": \#(Trace.maxPromptTokens + 1), "hash_ids": [0, 0]}"#
        #expect(throws: TraceError.inconsistent(line: 1, reason: "input_length 16777217 is over the 16777216 tokens a replayed prompt may have")) {
            try parse(over, hashBlockTokens: Trace.maxPromptTokens)
        }
    }

    @Test func duplicateFieldsAreRefused() {
        for text in [#"{"timestamp": 0, "timestamp": 5, "input_length": 3, "hash_ids": [1]}"#,
                     #"{"timestamp": 0, "input_length": 600, "input_length": 3, "hash_ids": [1, 2]}"#,
                     #"{"timestamp": 0, "input_length": 3, "hash_ids": [1], "hash_ids": [9]}"#,
                     #"{"timestamp": 0, "input_length": 3, "output_length": 1, "output_length": 2, "hash_ids": [1]}"#,
                     #"{"timestamp": 0, "input\u005flength": 600, "input_length": 3, "hash_ids": [1, 2]}"#] {
            #expect(throws: TraceError.self, "\(text)") { try parse(text) }
        }
        // An escaped key is the field it spells.
        #expect((try? parse(#"{"time\u0073tamp": 4, "input_length": 3, "hash_ids": [1]}"#))?.requests.first?.timestamp == 4)
    }

    @Test func negativeTimestampsAndOutputLengthsAreRefused() {
        #expect(throws: TraceError.inconsistent(line: 1, reason: "timestamp must not be negative, got -5")) {
            try parse(#"{"timestamp": -5, "input_length": 3, "hash_ids": [1]}"#)
        }
        #expect(throws: TraceError.inconsistent(line: 1, reason: "output_length must not be negative, got -7")) {
            try parse(#"{"timestamp": 0, "input_length": 3, "output_length": -7, "hash_ids": [1]}"#)
        }
    }

    @Test func malformedValuesInIgnoredFieldsAreRefused() {
        let deep = #"{"timestamp": 0, "input_length": 3, "hash_ids": [1], "deep": "# + String(repeating: "[", count: 100)
            + String(repeating: "]", count: 100) + "}"
        for text in [#"{"timestamp": 007, "input_length": 3, "hash_ids": [1]}"#,
                     #"{"timestamp": 0, "input_length": 3, "hash_ids": [01, 2]}"#,
                     #"{"timestamp": 0, "input_length": 3, "hash_ids": [1], "x": nonsense}"#,
                     #"{"timestamp": 0, "input_length": 3, "hash_ids": [1], "y": ---e.}"#,
                     #"{"timestamp": 0, "input_length": 3, "hash_ids": [1], "z": [}}"#,
                     #"{"timestamp": 0, "input_length": 3, "hash_ids": [1], "w": {"a" 1}}"#,
                     #"{"timestamp": 0, "input_length": 3, "hash_ids": [1], "v": 1.}"#,
                     #"{"timestamp": 0, "input_length": 3, "hash_ids": [1], "u": "\q"}"#,
                     #"{"timestamp": 0, "input_length": 3, "hash_ids": [1], "t": tru}"#,
                     "{\"timestamp\": 0, \"input_length\": 3, \"hash_ids\": [1], \"s\": \"a\tb\"}",
                     deep] {
            #expect(throws: TraceError.self, "\(text)") { try parse(text) }
        }
        // Well-formed values of every kind still pass.
        #expect((try? parse(#"{"n": -0.5e-3, "m": 0, "a": [true, false, null, {"k": "\u00e9\n"}], "timestamp": 1, "input_length": 3, "hash_ids": [1]}"#)) != nil)
    }

    /// README: "A line that is not strict JSON ... is an error naming its line". JSON text is
    /// UTF-8 (RFC 8259 §8.1), but bytes inside strings were never checked: a Latin-1 field, a
    /// lone continuation byte, an overlong or surrogate sequence, or a string cut mid-character
    /// parsed as if valid. Well-formed UTF-8 of every length still passes.
    @Test func invalidUTF8InsideAStringIsAnErrorNamingItsLine() throws {
        let good = #"{"timestamp": 0, "input_length": 3, "hash_ids": [1]}"#
        func line(_ note: [UInt8]) -> [UInt8] {
            Array(#"{"timestamp": 0, "input_length": 3, "hash_ids": [1], "note": ""#.utf8) + note + Array(#""}"#.utf8)
        }
        for bad: [UInt8] in [[0x63, 0x61, 0x66, 0xE9], [0x80], [0xC0, 0xAF], [0xC3], [0xE0, 0x80, 0xAF], [0xED, 0xA0, 0x80],
                             [0xF4, 0x90, 0x80, 0x80], [0xF5, 0x80, 0x80, 0x80], [0xFF], [0xE2, 0x98]] {
            do {
                _ = try Trace(jsonl: Array(good.utf8) + [0x0A] + line(bad))
                Issue.record("accepted invalid UTF-8 \(bad)")
            } catch {
                #expect(error.line == 2, "\(bad)")
            }
        }
        // A bad byte in a key is refused as well.
        #expect(throws: TraceError.self) { try Trace(jsonl: Array(#"{"timestamp": 0, "input_length": 3, "hash_ids": [1], ""#.utf8) + [0xFF] + Array(#"": 1}"#.utf8)) }
        let fine = try Trace(jsonl: line(Array("é☃😀\u{10FFFF}\u{FFFD}".utf8)))
        #expect(fine.requests.count == 1)
    }

    @Test func aByteOrderMarkIsSkipped() throws {
        let trace = try Trace(jsonl: [0xEF, 0xBB, 0xBF] + Array(#"{"timestamp": 0, "input_length": 3, "hash_ids": [1]}"#.utf8))
        #expect(trace.requests.count == 1)
    }

    @Test func parsesLayoutSpecs() throws {
        #expect(try KVLayout(spec: "2x4x64:bf16", blockSize: 32) == KVLayout(layerCount: 2, kvHeadCount: 4, headDim: 64, blockSize: 32, dtype: .bfloat16))
        #expect(try KVLayout(spec: "1x1x8", blockSize: 16) == .small())
        #expect(throws: KVLayoutError.self) { try KVLayout(spec: "2x4:fp16", blockSize: 16) }
        #expect(throws: KVLayoutError.self) { try KVLayout(spec: "1x1x8:int8", blockSize: 16) }
    }
}
