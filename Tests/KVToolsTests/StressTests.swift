import Testing
import KVCore
@testable import KVTools

@Suite struct StressTests {
    @Test func shortConcurrentRunPasses() throws {
        let report = try stress(StressOptions(threads: 3, seconds: 2, seed: 20_250_101, capacityBlocks: 96))
        #expect(report.passed, "seed \(report.seed): \(report.violations.prefix(5))")
        #expect(report.stats.usedBlocks == 0 && report.stats.liveSequences == 0)
        #expect(report.counts.admits > 0 && report.counts.appends > 0 && report.counts.forks > 0 && report.counts.lookups > 0)
        #expect(report.counts.verifiedBlocks > 0)
        #expect(report.counts.invariantChecks > 0)
        #expect(report.stats.evictedBlocks > 0)
        #expect(report.stats.hitTokens > 0)
    }

    /// The read-back would catch a wrong page: one flipped byte fails the check.
    @Test func patternCheckCatchesACorruptedPage() throws {
        let layout = try KVLayout(layerCount: 2, kvHeadCount: 2, headDim: 4, blockSize: 4)
        let arena = KVPageArena(layout: layout, capacityBlocks: 4)
        let pattern = KVPattern(layout: layout)
        let tokens: [TokenID] = [5, 6, 7, 8, 9, 10]
        let table: [Int32] = [2, 3]
        pattern.write(tokens, 0..<tokens.count, table: table, arena: arena)
        #expect(pattern.check(tokens, blockIndex: 0, slots: 4, table: table, arena: arena) == nil)
        #expect(pattern.check(tokens, blockIndex: 1, slots: 2, table: table, arena: arena) == nil)
        #expect(pattern.check([5, 6, 7, 99], blockIndex: 0, slots: 4, table: table, arena: arena) != nil)
        arena.withUnsafeMutableBlockBytes(BlockID(3), layer: 1, kind: .values) { $0[3] ^= 0x40 }
        #expect(pattern.check(tokens, blockIndex: 1, slots: 2, table: table, arena: arena) != nil)
    }
}
