import Foundation
import KVCore
import KVTestSupport
import Testing

@Suite struct DecodePlanTests {
    /// The example of DecodePlan's doc comment: nested sharing over three levels.
    @Test func nestedSharing() throws {
        // A=1 B=2 C=3 D=4 x=5 y=6 z=7 w=8 q=9; block size 4, last blocks partial.
        let plan = try DecodePlan(blockSize: 4,
                                  tables: [[1, 2, 3, 5], [1, 2, 3, 6, 7], [1, 2, 4, 8], [9]],
                                  tokenCounts: [14, 18, 13, 2])
        plan.checkInvariants()
        #expect(plan.levels.count == 3)
        let l0 = plan.levels[0], l1 = plan.levels[1], l2 = plan.levels[2]
        #expect(l0.nodeCount == 2)
        #expect(Array(l0.blocks(ofNode: 0)) == [1, 2] && Array(l0.sequences(ofNode: 0)) == [0, 1, 2])
        #expect(Array(l0.blocks(ofNode: 1)) == [9] && Array(l0.sequences(ofNode: 1)) == [3])
        #expect(l0.lastBlockTokenCounts == [4, 2])
        #expect(Array(l1.blocks(ofNode: 0)) == [3] && Array(l1.sequences(ofNode: 0)) == [0, 1])
        #expect(Array(l1.blocks(ofNode: 1)) == [4, 8] && Array(l1.sequences(ofNode: 1)) == [2])
        #expect(l1.parentIndices == [0, 0])
        #expect(Array(l2.blocks(ofNode: 0)) == [5] && Array(l2.blocks(ofNode: 1)) == [6, 7])
        #expect(l2.lastBlockTokenCounts == [2, 2])
        #expect(plan.depthFirstOrder == [0, 1, 2, 3])
        #expect(plan.hasSharing)
        #expect(plan.planTokenReads == 8 + 2 + 4 + 5 + 2 + 6)
        #expect(plan.batch.totalTokens == 14 + 18 + 13 + 2)
    }

    @Test func singletonsHaveNoSharing() throws {
        let plan = try DecodePlan(blockSize: 16, tables: [[1], [2], [3]], tokenCounts: [5, 16, 1])
        plan.checkInvariants()
        #expect(!plan.hasSharing)
        #expect(plan.levels.count == 1 && plan.levels[0].nodeCount == 3)
    }

    @Test func forkBeforeCopyOnWriteSharesThePartialBlock() throws {
        // Two samples right after a fork: same blocks, same partial last block, no leaves.
        let plan = try DecodePlan(blockSize: 4, tables: [[1, 2], [1, 2]], tokenCounts: [6, 6])
        plan.checkInvariants()
        #expect(plan.levels.count == 1 && plan.levels[0].lastBlockTokenCounts == [2])
        #expect(plan.planTokenReads == 6)
    }

    @Test func badBatchesAreTypedErrors() {
        #expect(throws: DecodePlanError.tokenCountDoesNotFitTable(sequence: 0, tokens: 9, blocks: 2, blockSize: 4)) {
            try BlockTableBatch(blockSize: 4, tables: [[1, 2]], tokenCounts: [9])
        }
        #expect(throws: DecodePlanError.mismatchedCounts(tables: 1, tokenCounts: 2)) {
            try BlockTableBatch(blockSize: 4, tables: [[1]], tokenCounts: [1, 2])
        }
        #expect(throws: DecodePlanError.negativeBlockID(sequence: 0, block: -3)) {
            try BlockTableBatch(blockSize: 4, tables: [[-3]], tokenCounts: [1])
        }
        // Block 2 is the partial end of sequence 0 but a full middle block of sequence 1.
        #expect(throws: DecodePlanError.inconsistentSharedBlock(block: 2)) {
            try DecodePlan(blockSize: 4, tables: [[1, 2], [1, 2, 3]], tokenCounts: [6, 9])
        }
        #expect(throws: DecodePlanError.invalidBlockSize(0)) { try BlockTableBatch(blockSize: 0, tables: [], tokenCounts: []) }
    }

    /// Random batches of forked families: the plan always rebuilds every table exactly.
    @Test(arguments: [UInt64(5), 6, 7, 8])
    func randomBatchesRebuildTheirTables(seed: UInt64) throws {
        var rng = SeededRandom(seed: seed)
        var next: Int32 = 1
        func fresh(_ n: Int) -> [Int32] { defer { next += Int32(n) }; return (0..<Int32(n)).map { next + $0 } }
        var tables: [[Int32]] = [], counts: [Int] = []
        for _ in 0..<Int.random(in: 1...4, using: &rng) {
            let system = fresh(Int.random(in: 0...3, using: &rng))
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                let doc = system + fresh(Int.random(in: 0...2, using: &rng))
                for _ in 0..<Int.random(in: 1...4, using: &rng) {
                    let own = fresh(Int.random(in: doc.isEmpty ? 1...3 : 0...3, using: &rng))
                    let table = doc + own
                    let partial = own.isEmpty ? 8 : Int.random(in: 1...8, using: &rng)
                    tables.append(table)
                    counts.append((table.count - 1) * 8 + partial)
                }
            }
        }
        let plan = try DecodePlan(blockSize: 8, tables: tables, tokenCounts: counts)
        plan.checkInvariants()
        #expect(plan.planTokenReads <= plan.batch.totalTokens)
    }
}

@Suite struct LayoutAndArenaTests {
    @Test func layoutRejectsNonsense() {
        #expect(throws: KVLayoutError.self) { try KVLayout(layerCount: 0, kvHeadCount: 1, headDim: 8) }
        #expect(throws: KVLayoutError.self) { try KVLayout(layerCount: 1, kvHeadCount: 1, headDim: 8, blockSize: 0) }
        #expect(throws: KVLayoutError.invalid("blockSize must be positive, got -4")) { try KVLayout(layerCount: 1, kvHeadCount: 1, headDim: 8, blockSize: -4) }
        #expect(throws: KVLayoutError.invalid("kvHeadCount must be positive, got -1")) { try KVLayout(layerCount: 1, kvHeadCount: -1, headDim: 8) }
        // Sizes that overflow Int would trap later in `blockBytes` or the arena.
        #expect(throws: KVLayoutError.self) { try KVLayout(layerCount: 1 << 40, kvHeadCount: 1 << 20, headDim: 128, blockSize: 16) }
    }

    /// Decoding (a store's layout record, a config file) goes through the validating init: a
    /// layout with a zero or negative dimension never reaches a manager or kernel.
    @Test func decodingValidatesTheLayout() throws {
        let good = try KVLayout(layerCount: 2, kvHeadCount: 4, headDim: 64, blockSize: 8, dtype: .bfloat16)
        #expect(try JSONDecoder().decode(KVLayout.self, from: JSONEncoder().encode(good)) == good)
        for (field, value) in [("blockSize", 0), ("blockSize", -16), ("layerCount", 0), ("headDim", -1)] {
            var fields: [String: Any] = ["layerCount": 2, "kvHeadCount": 4, "headDim": 64, "blockSize": 8, "dtype": "bf16"]
            fields[field] = value
            let json = try JSONSerialization.data(withJSONObject: fields)
            do {
                _ = try JSONDecoder().decode(KVLayout.self, from: json)
                Issue.record("decoded a layout with \(field) = \(value)")
            } catch let DecodingError.dataCorrupted(context) {
                #expect(context.underlyingError is KVLayoutError, "\(field) = \(value): \(context)")
            }
        }
        #expect(throws: DecodingError.self) { try JSONDecoder().decode(KVLayout.self, from: Data(#"{"layerCount":2}"#.utf8)) }
    }

    @Test func copyOutAndInRoundTripEveryLayer() throws {
        let layout = try KVLayout(layerCount: 3, kvHeadCount: 2, headDim: 4, blockSize: 2, dtype: .bfloat16)
        let arena = KVPageArena(layout: layout, capacityBlocks: 4)
        for layer in 0..<3 {
            for kind in KVKind.allCases {
                arena.withUnsafeMutableBlockBytes(BlockID(1), layer: layer, kind: kind) { bytes in
                    for i in 0..<bytes.count { bytes[i] = UInt8(truncatingIfNeeded: layer * 31 + kind.rawValue * 7 + i) }
                }
            }
        }
        var payload = [UInt8](repeating: 0, count: layout.blockBytes)
        payload.withUnsafeMutableBytes { arena.copyOut(BlockID(1), into: $0) }
        payload.withUnsafeBytes { arena.copyIn(BlockID(3), from: $0) }
        arena.copyBlock(from: BlockID(1), to: BlockID(2))
        for layer in 0..<3 {
            for kind in KVKind.allCases {
                let a = arena.withUnsafeBlockBytes(BlockID(1), layer: layer, kind: kind) { Array($0) }
                #expect(a == arena.withUnsafeBlockBytes(BlockID(3), layer: layer, kind: kind) { Array($0) })
                #expect(a == arena.withUnsafeBlockBytes(BlockID(2), layer: layer, kind: kind) { Array($0) })
            }
        }
        #expect(layout.blockBytes == 3 * 2 * 2 * 2 * 4 * 2)
    }
}
