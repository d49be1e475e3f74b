import KVCore
import Testing
@testable import KVCache

/// `prefillPlan(for:newTokens:)`: the chunk plan of a sequence's last tokens, from its table.
@Suite struct PrefillPlanTests {
    func run(_ start: Int32, _ count: Int) -> [TokenID] { (0..<Int32(count)).map { start + $0 } }

    @Test func theChunkAfterACachedPrefixReadsThePrefixOnceForAllItsRows() throws {
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 32)
        try cache.release(try cache.admit(run(0, 16)).sequence)
        let a = try cache.admit(run(0, 16) + run(100, 6))   // 16 cached tokens, 6 to prefill
        #expect(a.cachedTokenCount == 16)
        let plan = try cache.prefillPlan(for: a.sequence, newTokens: 22 - a.cachedTokenCount)
        plan.checkInvariants()
        #expect(plan == (try DecodePlan.causalChunk(table: a.blockTable, blockSize: 4, tokenCount: 22, newTokens: 6)))
        #expect(plan.levels.count == 2 && Array(plan.levels[0].blocks(ofNode: 0)) == Array(a.blockTable.prefix(4)))
        #expect(plan.batch.tokenCounts == [17, 18, 19, 20, 21, 22])
        #expect((0..<6).allSatisfy { plan.batch.table($0).count == (17 + $0 + 3) / 4 })
        // After appending, the next chunk is the appended tokens.
        try cache.append(run(200, 3), to: a.sequence)
        #expect(try cache.prefillPlan(for: a.sequence, newTokens: 3).batch.tokenCounts == [23, 24, 25])
        try cache.release(a.sequence)
    }

    /// A step mixing two requests' prefill chunks over a prefix they share and a decode token:
    /// the plan is `DecodePlan.causal` over the spans' positions, in span order (the rows
    /// `slotMapping` gives the same spans), and the shared prefix is one node for every row.
    @Test func aStepPlanMixesChunksAndDecodesOverASharedPrefix() throws {
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 64)
        try cache.release(try cache.admit(run(0, 16)).sequence)
        let a = try cache.admit(run(0, 16) + run(100, 10)), b = try cache.admit(run(0, 16) + run(200, 7))
        let c = try cache.admit(run(0, 16) + run(300, 5))
        try cache.append([900], to: c.sequence)
        #expect(a.cachedTokenCount == 16 && b.cachedTokenCount == 16 && c.cachedTokenCount == 16)
        let spans: [SlotSpan] = [.from(16, of: a.sequence), .range(16..<20, of: b.sequence), .last(of: c.sequence),
                                 .last(0, of: a.sequence)]
        let plan = try cache.stepPlan(for: spans)
        plan.checkInvariants()
        let tableA = try cache.blockTable(of: a.sequence), tableB = try cache.blockTable(of: b.sequence)
        let tableC = try cache.blockTable(of: c.sequence)
        #expect(plan == (try DecodePlan.causal(blockSize: 4, sequences: [
            .init(table: tableA, tokenCount: 26, newTokens: 10),
            .init(table: Array(tableB.prefix(5)), tokenCount: 20, newTokens: 4),   // a chunk before b's last tokens
            .init(table: tableC, tokenCount: 22, newTokens: 1),
        ])))
        #expect(plan.batch.tokenCounts == (17...26).map { Int32($0) } + [17, 18, 19, 20, 22])
        #expect(Array(plan.levels[0].blocks(ofNode: 0)) == Array(tableA.prefix(4)))
        #expect(plan.levels[0].sequences(ofNode: 0).count == 15)
        #expect(try cache.slotMapping(for: spans).slots.count == plan.rowCount && plan.rowCount == 15)
        for h in [a, b, c] { try cache.release(h.sequence) }
    }

    /// Decode tokens only: the step plan is the decode plan, forked samples' shared partial
    /// block one node read once.
    @Test func aStepOfDecodeTokensIsPlannedAsTheDecodePlan() throws {
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 64)
        let a = try cache.admit(run(0, 10))
        let samples = try cache.fork(a.sequence, count: 3)
        let other = try cache.admit(run(0, 8) + run(500, 3))
        #expect(other.cachedTokenCount == 8)
        let batch = samples + [a.sequence, other.sequence]
        let plan = try cache.stepPlan(for: batch.map { .last(of: $0) })
        plan.checkInvariants()
        #expect(plan == (try cache.decodePlan(for: batch)))
        // Level 1: the partial block the parent and its samples share, once for four rows; the
        // other request's own block.
        #expect(plan.levels.count == 2 && plan.levels[1].nodeCount == 2 && plan.levels[1].sequences(ofNode: 0).count == 4)
        #expect(plan.levels[1].lastBlockTokenCounts[0] == 2)
        for h in batch { try cache.release(h) }
    }

    @Test func aStepPlanRefusesWhatSlotMappingRefuses() throws {
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 8)
        let a = try cache.admit(run(0, 6))
        #expect(throws: KVCacheError.positionsOutOfRange(a.sequence, positions: .range(4..<7), tokenCount: 6)) {
            try cache.stepPlan(for: [.range(4..<7, of: a.sequence)])
        }
        #expect(try cache.stepPlan(for: []).sequenceCount == 0)
        try cache.release(a.sequence)
        #expect(throws: KVCacheError.releasedSequence(a.sequence)) { try cache.stepPlan(for: [.last(of: a.sequence)]) }
    }

    /// A step whose rows' tables would pass Int32.max block ids comes back as the plan's own
    /// typed error, so an engine can split the step instead of parsing a message: 65,536 rows
    /// of a one-token-block sequence hold 65,536 × 65,537 / 2 ids.
    @Test func aStepTooLargeForInt32IsTheTypedPlanError() throws {
        let cache = try KVCacheManager(layout: .small(blockSize: 1), capacityBlocks: 70_000)
        let a = try cache.admit(run(0, 65_536))
        #expect(throws: KVCacheError.invalidPlan(.planTooLarge(rows: 65_536, blockIDs: 65_536 * 65_537 / 2))) {
            try cache.stepPlan(for: [.from(0, of: a.sequence)])
        }
        // A smaller piece of the same step plans.
        #expect(try cache.stepPlan(for: [.range(0..<1_024, of: a.sequence)]).rowCount == 1_024)
        try cache.release(a.sequence)
        cache.checkInvariants()
    }

    @Test func misuseIsATypedError() throws {
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 8)
        let a = try cache.admit(run(0, 6))
        for n in [0, 7] {
            #expect(throws: KVCacheError.invalidPlan(.invalidChunk(newTokens: n, tokenCount: 6))) {
                try cache.prefillPlan(for: a.sequence, newTokens: n)
            }
        }
        try cache.release(a.sequence)
        #expect(throws: KVCacheError.releasedSequence(a.sequence)) { try cache.prefillPlan(for: a.sequence, newTokens: 1) }
    }
}
