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
}
