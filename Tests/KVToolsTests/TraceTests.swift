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

    @Test func malformedLinesNameTheirLine() {
        let good = #"{"timestamp": 0, "input_length": 3, "hash_ids": [1]}"#
        #expect(throws: TraceError.self) { try parse(good + "\n" + #"{"timestamp": 1, "input_length": 3, "hash_ids": [1,]}"#) }
        do {
            _ = try parse(good + "\n" + good + "\n" + #"{"timestamp": 1, "input_length": 3.5, "hash_ids": [1]}"#)
            Issue.record("expected an error")
        } catch {
            guard case .malformed(let line, _) = error else { Issue.record("wrong error \(error)"); return }
            #expect(line == 3)
        }
        #expect(throws: TraceError.missingField(line: 2, field: "hash_ids")) { try parse(good + "\n" + #"{"timestamp": 1, "input_length": 3}"#) }
        #expect(throws: TraceError.self) { try parse(#"{"timestamp": 1, "input_length": 3, "hash_ids": [1]} x"#) }
    }

    @Test func rejectsInconsistentRequests() {
        #expect(throws: TraceError.self) { try parse(#"{"timestamp": 0, "input_length": 1025, "hash_ids": [1, 2]}"#) }
        #expect(throws: TraceError.tokenOverflow(line: 1, hashID: 5_000_000)) { try parse(#"{"timestamp": 0, "input_length": 10, "hash_ids": [5000000]}"#) }
        #expect(throws: TraceError.self) { try parse(#"{"timestamp": 0, "input_length": 0, "hash_ids": []}"#) }
    }

    @Test func parsesLayoutSpecs() throws {
        #expect(try KVLayout(spec: "2x4x64:bf16", blockSize: 32) == KVLayout(layerCount: 2, kvHeadCount: 4, headDim: 64, blockSize: 32, dtype: .bfloat16))
        #expect(try KVLayout(spec: "1x1x8", blockSize: 16) == .small())
        #expect(throws: KVLayoutError.self) { try KVLayout(spec: "2x4:fp16", blockSize: 16) }
        #expect(throws: KVLayoutError.self) { try KVLayout(spec: "1x1x8:int8", blockSize: 16) }
    }
}
