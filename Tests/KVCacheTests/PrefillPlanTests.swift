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

    @Test func misuseIsATypedError() throws {
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 8)
        let a = try cache.admit(run(0, 6))
        for n in [0, 7] {
            #expect(throws: KVCacheError.invalidBatch("\(DecodePlanError.invalidChunk(newTokens: n, tokenCount: 6))")) {
                try cache.prefillPlan(for: a.sequence, newTokens: n)
            }
        }
        try cache.release(a.sequence)
        #expect(throws: KVCacheError.releasedSequence(a.sequence)) { try cache.prefillPlan(for: a.sequence, newTokens: 1) }
    }
}
