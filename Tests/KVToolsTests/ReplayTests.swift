import Testing
import KVCore
import KVTools

/// The reference for hit tokens, computed apart from the cache: materialise each prompt by the
/// traces' rule, and walk a trie of whole token blocks (keyed by parent node and the block's
/// tokens themselves); a request's hit is its longest block-aligned prefix already in the trie.
private struct PrefixOracle {
    struct Key: Hashable { var parent: Int; var tokens: [Int32] }
    var trie: [Key: Int] = [:]

    mutating func hitTokens(of request: TraceRequest, hashBlockTokens h: Int, blockSize: Int) -> Int {
        var tokens: [Int32] = []
        for id in request.hashIDs { for i in 0..<h { tokens.append(Int32(id) * Int32(h) + Int32(i)) } }
        tokens = Array(tokens.prefix(request.inputLength))
        var node = -1, hit = 0, stillHitting = true
        for b in 0..<(tokens.count / blockSize) {
            let key = Key(parent: node, tokens: Array(tokens[(b * blockSize)..<((b + 1) * blockSize)]))
            if let next = trie[key] {
                node = next
                if stillHitting { hit += blockSize }
            } else {
                stillHitting = false
                node = trie.count
                trie[key] = node
            }
        }
        return hit
    }
}

@Suite struct ReplayTests {
    private func check(_ trace: Trace, blockSize: Int) throws {
        var oracle = PrefixOracle()
        let expected = trace.requests.reduce(0) { $0 + oracle.hitTokens(of: $1, hashBlockTokens: trace.hashBlockTokens, blockSize: blockSize) }
        let result = try replay(trace, options: ReplayOptions(layout: .small(blockSize: blockSize)))
        #expect(expected > 0)
        #expect(result.hitTokens == expected)
        #expect(result.promptTokens == trace.promptTokens)
        #expect(result.requests == trace.requests.count && result.rejectedRequests == 0)
        #expect(result.evictedBlocks == 0)
        // The unbounded capacity is exact: every distinct full block, plus the live partial one.
        #expect(result.capacityBlocks == oracle.trie.count + 1)
        #expect(result.hitRate == Double(expected) / Double(trace.promptTokens))
    }

    @Test func unboundedHitsEqualTheLongestEarlierPrefix() throws {
        try check(try Fixture.conversation(), blockSize: 16)
    }

    /// Blocks that straddle hash blocks (48 does not divide 512) still count exactly.
    @Test func unboundedHitsAtABlockSizeThatStraddlesHashBlocks() throws {
        try check(try Fixture.conversation().prefix(120), blockSize: 48)
    }

    @Test func boundedCapacityEvictsAndHitsLess() throws {
        let trace = try Fixture.conversation().prefix(150)
        let unbounded = try replay(trace)
        let small = try replay(trace, options: ReplayOptions(capacityBlocks: unbounded.capacityBlocks / 10))
        #expect(small.evictedBlocks > 0)
        #expect(small.hitTokens < unbounded.hitTokens)
    }

    @Test func sweepDrawsAChart() throws {
        let trace = try Fixture.conversation().prefix(80)
        let unbounded = try replay(trace)
        let points = try sweep(trace, layout: .small(), capacities: [unbounded.capacityBlocks / 20, unbounded.capacityBlocks / 4, unbounded.capacityBlocks])
        #expect(points.count == 3)
        #expect(points[2].memoryOnly.hitTokens == unbounded.hitTokens)
        #expect(points[0].memoryOnly.hitTokens < points[2].memoryOnly.hitTokens)
        #expect(points[0].memoryOnly.hitRate < points[2].memoryOnly.hitRate)
        #expect(points.allSatisfy { $0.withStore == nil })
        let svg = HitRateChart(points: points, title: "test <chart>").svg()
        #expect(svg.hasPrefix("<svg") && svg.hasSuffix("</svg>\n"))
        #expect(svg.contains("test &lt;chart&gt;"))
        #expect(svg.contains("<polyline") && svg.contains("memory only") && !svg.contains("memory + store"))
        #expect(svg.components(separatedBy: "<circle").count - 1 == 3)
    }

    /// A trace small enough to replay by hand (4 tokens per hash id, blocks of 2; token j of id
    /// h is 4h + j), written with CRLF line endings, a blank line, an ignored unicode field and
    /// out-of-order timestamps. In timestamp order:
    ///
    ///     request (ids, input)   tokens                    hit  why
    ///     [1,2] 8                4 5 6 7 8 9 10 11          0   cold; caches 4 blocks
    ///     [1,2] 8                the same                   8   every block, the whole prompt
    ///     [1,3] 6                4 5 6 7 12 13              4   (4 5)(6 7); caches (12 13)
    ///     [1,3] 5                4 5 6 7 12                 4   (4 5)(6 7); 12 is a partial block
    ///     [2] 3                  8 9 10                     0   (8 9) at the root is new; cached
    ///     [7,7] 8                28 29 30 31 28 29 30 31    0   a repeating chain: 4 new blocks
    ///     [7] 4                  28 29 30 31                4   its first two blocks
    ///     [5,2] 8                20 21 22 23 8 9 10 11      0   id 2 under another parent: no hit; 4 new
    ///
    /// 50 prompt tokens, 20 hit (40 %); 14 distinct full blocks, so the unbounded capacity is 15.
    @Test func aHandMadeTraceHitsWhatItsTableSays() throws {
        let lines = [
            #"{"timestamp": 30, "input_length": 5, "output_length": 1, "hash_ids": [1, 3]}"#,
            #"{"timestamp": 0, "input_length": 8, "output_length": 1, "hash_ids": [1, 2], "note": "héllo ☃ \ud83d\ude00"}"#,
            #"{"timestamp": 10, "input_length": 8, "output_length": 1, "hash_ids": [1, 2]}"#,
            "",
            #"{"timestamp": 20, "input_length": 6, "output_length": 1, "hash_ids": [1, 3, 99]}"#,
            #"{"timestamp": 40, "input_length": 3, "output_length": 1, "hash_ids": [2]}"#,
            #"{"timestamp": 50, "input_length": 8, "output_length": 1, "hash_ids": [7, 7]}"#,
            #"{"timestamp": 60, "input_length": 4, "output_length": 1, "hash_ids": [7]}"#,
            #"{"timestamp": 70, "input_length": 8, "output_length": 1, "hash_ids": [5, 2]}"#,
        ]
        let trace = try Trace(jsonl: Array((lines.joined(separator: "\r\n") + "\r\n").utf8), hashBlockTokens: 4)
        #expect(trace.requests.map(\.line) == [2, 3, 5, 1, 6, 7, 8, 9])
        #expect(trace.promptTokens == 50)
        #expect(uniqueFullBlocks(of: trace, blockSize: 2) == 14)
        let result = try replay(trace, options: ReplayOptions(layout: .small(blockSize: 2)))
        #expect(result.requests == 8 && result.rejectedRequests == 0)
        #expect(result.capacityBlocks == 15)
        #expect(result.promptTokens == 50)
        #expect(result.hitTokens == 20 && result.storeHitTokens == 0)
        #expect(result.hitRate == 0.4)
        #expect(result.evictedBlocks == 0)
        // The reference oracle agrees, request by request.
        var oracle = PrefixOracle()
        #expect(trace.requests.map { oracle.hitTokens(of: $0, hashBlockTokens: 4, blockSize: 2) } == [0, 8, 4, 4, 0, 0, 4, 0])
    }
}
