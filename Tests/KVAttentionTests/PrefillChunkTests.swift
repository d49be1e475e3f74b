import Foundation
import KVAttention
import KVCore
import Testing

/// Attention for a prefill chunk (`DecodePlan.causalChunk`): the chunk's tokens as query rows over
/// the cached prefix and the chunk up to each row (causal). Checked against a dense causal
/// attention written here from the K/V read back by slot (the oracle shares no code with the
/// kernels or the reference), and against the reference on the plan's batch.
@Suite struct PrefillChunkTests {
    /// Query rows of one step (`DecodePlan.causal`): each sequence's last `newTokens` tokens.
    struct Chunk {
        let c: AttentionCase
        let plan: DecodePlan
        let sequences: [DecodePlan.CausalRows]

        /// One sequence of `tokenCount` tokens in blocks 1…; its last `newTokens` are the chunk.
        init(dtype: KVDType, queryHeads: Int, kvHeads: Int, headDim: Int, blockSize: Int, tokenCount: Int, newTokens: Int,
             seed: UInt64) throws {
            let table = (0..<((tokenCount + blockSize - 1) / blockSize)).map { Int32(1 + $0) }
            try self.init(dtype: dtype, queryHeads: queryHeads, kvHeads: kvHeads, headDim: headDim, blockSize: blockSize,
                          sequences: [.init(table: table, tokenCount: tokenCount, newTokens: newTokens)], seed: seed)
            #expect(plan == (try DecodePlan.causalChunk(table: table, blockSize: blockSize, tokenCount: tokenCount, newTokens: newTokens)))
        }

        init(dtype: KVDType, queryHeads: Int, kvHeads: Int, headDim: Int, blockSize: Int, sequences: [DecodePlan.CausalRows],
             seed: UInt64) throws {
            let plan = try DecodePlan.causal(blockSize: blockSize, sequences: sequences)
            plan.checkInvariants()
            self.plan = plan
            self.sequences = sequences
            c = try AttentionCase(dtype: dtype, queryHeads: queryHeads, kvHeads: kvHeads, headDim: headDim, blockSize: blockSize,
                                  tables: (0..<plan.sequenceCount).map { Array(plan.batch.table($0)) },
                                  tokenCounts: plan.batch.tokenCounts.map { Int($0) }, seed: seed)
        }

        /// Dense causal attention in Double: each sequence's row i (position first + i) over its
        /// positions 0…first + i.
        func oracle() throws -> [Float] {
            let layout = c.layout, d = layout.headDim, hkv = layout.kvHeadCount, hq = c.queryHeads, group = hq / hkv
            let bs = layout.blockSize
            var out = [Float](repeating: 0, count: c.query.count)
            var row = 0
            for sequence in sequences {
                let first = sequence.tokenCount - sequence.newTokens
                let slots = (0..<sequence.tokenCount).map { p in sequence.table[p / bs] * Int32(bs) + Int32(p % bs) }
                let (keys, values) = try c.arena.load(layer: 0, slots: slots)
                for i in 0..<sequence.newTokens {
                    let visible = first + i + 1
                    for h in 0..<hq {
                        let kv = h / group, q = ((row + i) * hq + h) * d
                        var scores = [Double](repeating: 0, count: visible)
                        for t in 0..<visible {
                            var dot = 0.0
                            for j in 0..<d { dot += Double(c.query[q + j]) * Double(keys[(t * hkv + kv) * d + j]) }
                            scores[t] = dot * Double(c.scale)
                        }
                        let top = scores.max()!
                        let weights = scores.map { exp($0 - top) }
                        let sum = weights.reduce(0, +)
                        for j in 0..<d {
                            var acc = 0.0
                            for t in 0..<visible { acc += weights[t] * Double(values[(t * hkv + kv) * d + j]) }
                            out[q + j] = Float(acc / sum)
                        }
                    }
                }
                row += sequence.newTokens
            }
            return out
        }

        /// Each chunk row's last node is its own leaf, and it reads no more than one causal
        /// group's blocks: the rest of the chunk before it is read through shared (GEMM-shaped)
        /// nodes. (A decode token's row is planned as a decode batch's: not checked here.)
        func expectLeavesWithinAGroup() {
            let bs = plan.blockSize, groupBlocks = max(1, DecodePlan.causalGroupTokens / bs)
            let decodeRows = Set(sequences.indices.filter { sequences[$0].newTokens == 1 }.map { s in
                sequences[..<s].reduce(0) { $0 + $1.newTokens }
            })
            var last = [(level: Int, node: Int)?](repeating: nil, count: plan.sequenceCount)
            for (k, level) in plan.levels.enumerated() {
                for j in 0..<level.nodeCount {
                    for s in level.sequences(ofNode: j) { last[Int(s)] = (k, j) }
                }
            }
            for s in 0..<plan.sequenceCount where !decodeRows.contains(s) {
                guard let (k, j) = last[s] else {
                    Issue.record("row \(s) is in no node")
                    continue
                }
                #expect(plan.levels[k].sequences(ofNode: j) == [Int32(s)], "row \(s) ends in a shared node")
                #expect(plan.levels[k].blocks(ofNode: j).count <= groupBlocks, "row \(s)'s leaf reads more than a group")
            }
        }

        func check(threads: Int = 2) throws {
            let kernel = try c.kernel(threads: threads)
            let tolerance = Tolerance.of(kernel)
            let oracle = try oracle()
            #expect(relativeError(try c.reference(), oracle) <= Tolerance.fp32Math, "the reference on the plan's batch is causal attention")
            let bifurcated = relativeError(try c.bifurcated(kernel, plan: plan), oracle)
            let paged = relativeError(try c.paged(kernel), oracle)
            #expect(bifurcated <= tolerance, "bifurcated over the chunk plan: relative error \(bifurcated)")
            #expect(paged <= tolerance, "paged over the chunk's rows: relative error \(paged)")
        }
    }

    /// A cached prefix of whole blocks, then a chunk spanning several blocks: one shared node and a
    /// leaf per row. Every dtype; GQA.
    @Test(arguments: KVDType.allCases)
    func chunkAfterAWholeBlockPrefix(dtype: KVDType) throws {
        let chunk = try Chunk(dtype: dtype, queryHeads: 8, kvHeads: 2, headDim: 64, blockSize: 16, tokenCount: 96 + 40,
                              newTokens: 40, seed: 11)
        // Groups of 32 tokens (two blocks): rows 0..<32 (blocks 7-8 of the table) have leaves on
        // level 1; rows 32..<40 share blocks 7-8 as one level-1 node and have leaves on level 2.
        let levels = chunk.plan.levels
        #expect(levels.count == 3 && levels[0].nodeCount == 1 && levels[1].nodeCount == 33 && levels[2].nodeCount == 8)
        #expect(Array(levels[0].blocks(ofNode: 0)) == Array(1...6))
        #expect(Array(levels[1].blocks(ofNode: 32)) == [7, 8] && Array(levels[1].sequences(ofNode: 32)) == Array(32..<40))
        chunk.expectLeavesWithinAGroup()
        try chunk.check()
    }

    /// The chunk starts inside a block (the prefix's last block partial), shorter than a block,
    /// with no cached prefix at all, or of one token; block sizes 1, 16 and 32; MHA and MQA;
    /// head dim 128.
    @Test(arguments: [
        (tokenCount: 70, newTokens: 25, blockSize: 16), (tokenCount: 40, newTokens: 5, blockSize: 16),
        (tokenCount: 33, newTokens: 33, blockSize: 16), (tokenCount: 50, newTokens: 1, blockSize: 32),
        (tokenCount: 20, newTokens: 7, blockSize: 1), (tokenCount: 64, newTokens: 64, blockSize: 32),
        (tokenCount: 150, newTokens: 100, blockSize: 1), (tokenCount: 200, newTokens: 90, blockSize: 16),
        (tokenCount: 100, newTokens: 100, blockSize: 16), (tokenCount: 130, newTokens: 97, blockSize: 64),
    ])
    func chunkShapes(shape: (tokenCount: Int, newTokens: Int, blockSize: Int)) throws {
        for (hq, hkv) in [(4, 4), (8, 1)] {
            let chunk = try Chunk(dtype: .bfloat16, queryHeads: hq, kvHeads: hkv, headDim: 128, blockSize: shape.blockSize,
                                  tokenCount: shape.tokenCount, newTokens: shape.newTokens, seed: UInt64(shape.tokenCount * 31 + hq))
            let first = shape.tokenCount - shape.newTokens, shared = first / shape.blockSize
            let groupTokens = max(1, DecodePlan.causalGroupTokens / shape.blockSize) * shape.blockSize
            let groups = (shape.tokenCount - shared * shape.blockSize + groupTokens - 1) / groupTokens
            // A one-token chunk is a decode token: its whole table is one node.
            #expect(chunk.plan.levels.count == (shape.newTokens == 1 ? 1 : (shared > 0 ? 1 : 0) + (groups > 1 ? 2 : 1)))
            chunk.expectLeavesWithinAGroup()
            try chunk.check()
        }
    }

    /// A long chunk over a longer prefix, on one thread and on two (the shared node's GEMM items
    /// split across threads, many leaves).
    @Test(arguments: [1, 2])
    func longChunk(threads: Int) throws {
        try Chunk(dtype: .float16, queryHeads: 8, kvHeads: 2, headDim: 64, blockSize: 16, tokenCount: 384 + 72,
                  newTokens: 72, seed: 12).check(threads: threads)
    }

    /// One step of several sequences: two prefill chunks and three decode tokens over a cached
    /// prefix (blocks 1-6) they all share, one of them nested deeper (blocks 7-8 shared with a
    /// decode sequence), a chunk starting inside a block, and a decode sequence and a chunk with
    /// nothing shared. The shared prefix is one node holding every row that reads it.
    static let mixedStep: [DecodePlan.CausalRows] = {
        let prefix = Array(Int32(1)...6), deeper = prefix + [7, 8]
        return [
            .init(table: prefix + [10, 11, 12], tokenCount: 96 + 40, newTokens: 40),          // chunk after the prefix
            .init(table: deeper + [20, 21], tokenCount: 128 + 20, newTokens: 1),              // decode, nested prefix
            .init(table: deeper + [22, 23, 24], tokenCount: 128 + 37, newTokens: 45),         // chunk from inside block 8
            .init(table: prefix + [30], tokenCount: 96 + 5, newTokens: 1),                    // decode
            .init(table: [40, 41, 42], tokenCount: 40, newTokens: 1),                         // decode, alone
            .init(table: prefix + [50, 51], tokenCount: 96 + 17, newTokens: 1),               // decode
            .init(table: [60, 61, 62, 63], tokenCount: 64, newTokens: 64),                    // chunk, no prefix
        ]
    }()

    @Test(arguments: KVDType.allCases)
    func severalSequencesInOneStep(dtype: KVDType) throws {
        let step = try Chunk(dtype: dtype, queryHeads: 8, kvHeads: 2, headDim: 64, blockSize: 16, sequences: Self.mixedStep, seed: 21)
        let plan = step.plan
        #expect(plan.sequenceCount == 40 + 1 + 45 + 1 + 1 + 1 + 64)
        // Level 0: the shared prefix (every row but the lone decode's and the unshared chunk's),
        // then the unshared sequences' own first nodes.
        let sharedRows = Array(0..<41) + Array(41..<86) + [86, 88]
        #expect(Array(plan.levels[0].blocks(ofNode: 0)) == Array(1...6))
        #expect(plan.levels[0].sequences(ofNode: 0) == ArraySlice(sharedRows.map { Int32($0) }))
        // Under it, block 7 for the nested decode (row 40) and the chunk starting inside block 8
        // (rows 41..<86, whose cached prefix is blocks 1-7: block 8 is partly its chunk).
        #expect(Array(plan.levels[1].blocks(ofNode: 0)) == [7])
        #expect(plan.levels[1].sequences(ofNode: 0) == ArraySlice((40..<86).map { Int32($0) }))
        step.expectLeavesWithinAGroup()
        try step.check()
        try step.check(threads: 1)
    }

    /// A decode row ending inside block 6, which the other rows read whole (as a `.range` row
    /// before a sequence's end can): the decode rows cannot go into the prefix plan whole, so
    /// every sequence's prefix is its whole blocks and the decode rows get leaves.
    @Test func aRowEndingInsideABlockOthersReadWholeFallsBackToWholeBlockPrefixes() throws {
        let sequences = Self.mixedStep + [.init(table: Array(1...6), tokenCount: 90, newTokens: 1)]
        let step = try Chunk(dtype: .bfloat16, queryHeads: 8, kvHeads: 2, headDim: 64, blockSize: 16, sequences: sequences, seed: 22)
        #expect(Array(step.plan.levels[0].blocks(ofNode: 0)) == Array(1...5))   // the last row's prefix: 5 whole blocks
        step.expectLeavesWithinAGroup()
        try step.check()
    }

    @Test func anEmptyStepIsAnEmptyPlan() throws {
        let plan = try DecodePlan.causal(blockSize: 16, sequences: [])
        plan.checkInvariants()
        #expect(plan.sequenceCount == 0 && plan.levels.isEmpty)
    }

    @Test func badSequencesAreTypedErrorsNamingTheirEntry() throws {
        let good = DecodePlan.CausalRows(table: [1, 2], tokenCount: 20, newTokens: 4)
        #expect(throws: DecodePlanError.tokenCountDoesNotFitTable(sequence: 1, tokens: 40, blocks: 2, blockSize: 16)) {
            try DecodePlan.causal(blockSize: 16, sequences: [good, .init(table: [3, 4], tokenCount: 40, newTokens: 1)])
        }
        #expect(throws: DecodePlanError.negativeBlockID(sequence: 2, block: -3)) {
            try DecodePlan.causal(blockSize: 16, sequences: [good, good, .init(table: [1, -3], tokenCount: 20, newTokens: 1)])
        }
        #expect(throws: DecodePlanError.invalidChunk(newTokens: 0, tokenCount: 20)) {
            try DecodePlan.causal(blockSize: 16, sequences: [.init(table: [1, 2], tokenCount: 20, newTokens: 0)])
        }
        // Counts past Int32 are refused per entry (Int.max trapped in the table-size check once).
        #expect(throws: DecodePlanError.tokenCountDoesNotFitTable(sequence: 0, tokens: .max, blocks: 1, blockSize: 16)) {
            try DecodePlan.causal(blockSize: 16, sequences: [.init(table: [1], tokenCount: .max, newTokens: 1)])
        }
        let big = Int(Int32.max)
        #expect(throws: DecodePlanError.tokenCountDoesNotFitTable(sequence: 1, tokens: big + 1, blocks: 2, blockSize: big)) {
            try DecodePlan.causal(blockSize: big, sequences: [.init(table: [1], tokenCount: 5, newTokens: 5),
                                                                .init(table: [2, 3], tokenCount: big + 1, newTokens: 1)])
        }
    }

    /// A step whose rows' tables would pass Int32 indices is a typed error before anything is
    /// built (the rows' tables grow with the square of a chunk: it used to allocate them first,
    /// then trap narrowing the count).
    @Test func aStepTooLargeForInt32IndicesIsRefusedBeforeBuilding() throws {
        let bs = 1 << 20, n = Int(Int32.max)
        let table = (0..<((n - 1) / bs + 1)).map { Int32($0) }
        do {
            _ = try DecodePlan.causal(blockSize: bs, sequences: [.init(table: table, tokenCount: n, newTokens: 1 << 24)])
            Issue.record("a plan of 2^24 rows over 2^31 tokens was built")
        } catch {
            guard case .planTooLarge(let rows, let ids) = error else { Issue.record("\(error)"); return }
            #expect(rows == 1 << 24 && ids > Int(Int32.max))
        }
        do {
            let rows = DecodePlan.CausalRows(table: table, tokenCount: n, newTokens: n)
            _ = try DecodePlan.causal(blockSize: bs, sequences: [rows, rows])
            Issue.record("a plan of 2^32 rows was built")
        } catch {
            guard case .planTooLarge = error else { Issue.record("\(error)"); return }
        }
    }

    /// A decode row ending inside a block the other rows read whole falls back alone: forked
    /// samples sharing a partial block still read it as one node.
    @Test func onlyTheDecodeRowsEndingInsideTheReportedBlockFallBack() throws {
        let prefix = Array(Int32(1)...6)
        let sequences: [DecodePlan.CausalRows] = [
            .init(table: prefix + [70], tokenCount: 96 + 5, newTokens: 1),   // three forked samples,
            .init(table: prefix + [70], tokenCount: 96 + 5, newTokens: 1),   // their partial block 70
            .init(table: prefix + [70], tokenCount: 96 + 5, newTokens: 1),   // shared at 5 tokens
            .init(table: prefix + [80, 81], tokenCount: 96 + 20, newTokens: 20),
            .init(table: [1, 2, 3], tokenCount: 40, newTokens: 1),            // ends inside block 3
        ]
        let step = try Chunk(dtype: .float16, queryHeads: 8, kvHeads: 2, headDim: 64, blockSize: 16, sequences: sequences, seed: 23)
        let sharedPartial = step.plan.levels.flatMap { level in
            (0..<level.nodeCount).filter { Array(level.blocks(ofNode: $0)) == [70] }.map { Array(level.sequences(ofNode: $0)) }
        }
        #expect(sharedPartial == [[0, 1, 2]])
        try step.check()
    }

    @Test func invalidChunksAreTypedErrors() throws {
        let table: [Int32] = [1, 2, 3]
        #expect(throws: DecodePlanError.invalidChunk(newTokens: 0, tokenCount: 40)) {
            try DecodePlan.causalChunk(table: table, blockSize: 16, tokenCount: 40, newTokens: 0)
        }
        #expect(throws: DecodePlanError.invalidChunk(newTokens: 41, tokenCount: 40)) {
            try DecodePlan.causalChunk(table: table, blockSize: 16, tokenCount: 40, newTokens: 41)
        }
        #expect(throws: DecodePlanError.tokenCountDoesNotFitTable(sequence: 0, tokens: 60, blocks: 3, blockSize: 16)) {
            try DecodePlan.causalChunk(table: table, blockSize: 16, tokenCount: 60, newTokens: 4)
        }
        #expect(throws: DecodePlanError.invalidBlockSize(0)) {
            try DecodePlan.causalChunk(table: table, blockSize: 0, tokenCount: 40, newTokens: 4)
        }
    }
}
