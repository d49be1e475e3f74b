import KVAttention
import KVCore
import KVTestSupport
import Testing

/// Random batches as a serving stack's would look: a tree of shared runs (a system prompt all
/// share, documents a subset shares, ...), each sequence ending in own blocks or exactly at a
/// shared run's end, forked samples that still share a partial last block, duplicated
/// sequences, sequences in shuffled batch order, block ids scattered.
func randomSharedTables(blockSize: Int, maxSequences: Int, maxBlocksPerRun: Int, using rng: inout SeededRandom) -> ([[Int32]], [Int]) {
    var nextId: Int32 = 1
    func fresh(_ n: Int) -> [Int32] { defer { nextId += Int32(n) }; return (0..<Int32(n)).map { nextId + $0 } }
    var tables: [[Int32]] = [], counts: [Int] = []
    func grow(prefix: [Int32], depth: Int) {
        let children = Int.random(in: 1...3, using: &rng)
        for _ in 0..<children where tables.count < maxSequences {
            switch Int.random(in: 0..<10, using: &rng) {
            case 0..<3 where depth < 4:  // a run shared by a subset, which branches again
                grow(prefix: prefix + fresh(Int.random(in: 1...maxBlocksPerRun, using: &rng)), depth: depth + 1)
            case 3 where !prefix.isEmpty:  // ends exactly where the shared run ends (full last block)
                tables.append(prefix)
                counts.append(prefix.count * blockSize)
            default:  // own blocks, the last one partial; forked samples share it (before copy-on-write)
                let own = fresh(Int.random(in: (prefix.isEmpty ? 1 : 0)...maxBlocksPerRun, using: &rng))
                let last = own.isEmpty ? blockSize : Int.random(in: 1...blockSize, using: &rng)
                let samples = Int.random(in: 0..<4, using: &rng) == 0 ? Int.random(in: 2...3, using: &rng) : 1
                for _ in 0..<samples {
                    tables.append(prefix + own)
                    counts.append((prefix.count + own.count - 1) * blockSize + last)
                }
            }
        }
    }
    while tables.isEmpty { grow(prefix: fresh(Int.random(in: 0...maxBlocksPerRun, using: &rng)), depth: 0) }
    // Duplicate a sequence now and then (the same handle twice in a batch), then shuffle.
    if Int.random(in: 0..<3, using: &rng) == 0 {
        let i = Int.random(in: 0..<tables.count, using: &rng)
        tables.append(tables[i])
        counts.append(counts[i])
    }
    // Scatter the ids (within twice their number, so the arena stays small) and the batch order.
    var ids = Array(Int32(1)..<(2 * nextId))
    ids.shuffle(using: &rng)
    var order = Array(tables.indices)
    order.shuffle(using: &rng)
    return (order.map { tables[$0].map { ids[Int($0) - 1] } }, order.map { counts[$0] })
}

@Suite struct RandomBatchTests {
    /// Heads (query, KV) and head dims of the differential runs.
    static let heads: [(Int, Int)] = [(4, 4), (8, 2), (8, 1), (12, 4), (16, 16)]
    static let headDims = [64, 80, 128, 256]
    static let blockSizes = [1, 3, 16]

    /// Every random batch: the plan rebuilds the tables, and paged, bifurcated (1 and 2
    /// threads) and bifurcated in place (output over the query) all match the float64
    /// reference within the tolerance of their math.
    @Test(arguments: 0..<36)
    func bifurcatedMatchesReferenceOnRandomBatches(seed: Int) throws {
        var rng = SeededRandom(seed: UInt64(9000 + seed))
        let dtype = KVDType.allCases[seed % 3]
        let (hq, hkv) = Self.heads[Int.random(in: 0..<Self.heads.count, using: &rng)]
        let d = Self.headDims[(seed / 3) % Self.headDims.count]
        let bs = Self.blockSizes[Int.random(in: 0..<Self.blockSizes.count, using: &rng)]
        let maxBlocks = bs == 1 ? 40 : bs == 3 ? 12 : 4
        let (tables, counts) = randomSharedTables(blockSize: bs, maxSequences: 14, maxBlocksPerRun: maxBlocks, using: &rng)
        let c = try AttentionCase(dtype: dtype, queryHeads: hq, kvHeads: hkv, headDim: d, blockSize: bs,
                              tables: tables, tokenCounts: counts, seed: UInt64(seed))
        let plan = try DecodePlan(batch: c.batch)
        plan.checkInvariants()
        let reference = try c.reference()
        for threads in [1, 2] {
            for math in dtype == .bfloat16 ? [AttentionMath.automatic, .fp32] : [.automatic] {
                let kernel = try DecodeAttention(layout: c.layout, queryHeads: hq, threads: threads, math: math)
                let tolerance = Tolerance.of(kernel)
                let paged = relativeError(try c.paged(kernel), reference)
                let bifurcated = relativeError(try c.bifurcated(kernel, plan: plan), reference)
                let inPlace = relativeError(try c.bifurcatedInPlace(kernel, plan: plan), reference)
                #expect(paged <= tolerance, "paged threads=\(threads) \(math): \(paged) — \(c)")
                #expect(bifurcated <= tolerance, "bifurcated threads=\(threads) \(math): \(bifurcated) — \(c)")
                #expect(inPlace <= tolerance, "in place threads=\(threads) \(math): \(inPlace) — \(c)")
            }
        }
    }

    /// Random steps (`DecodePlan.causal`): the random batches' sequences, each with query rows
    /// for its last 1 (a decode token, half the time) to 12 tokens, some ending before the sequence
    /// does, so rows end inside shared runs and decode rows sit beside chunks (the whole-table
    /// planning of decode rows and its fallback both occur: 3 of these 16 seeds fall back).
    /// The plan's nodes must rebuild every row's table, and bifurcated over it (1 and 2 threads)
    /// must match the float64 reference over the rows' tables, i.e. causal attention.
    @Test(arguments: 0..<16)
    func stepPlansMatchTheReferenceOnRandomSteps(seed: Int) throws {
        var rng = SeededRandom(seed: UInt64(7000 + seed))
        let dtype = KVDType.allCases[seed % 3]
        let (hq, hkv) = Self.heads[Int.random(in: 0..<4, using: &rng)]
        let d = [64, 80, 128][(seed / 3) % 3]
        let bs = Self.blockSizes[Int.random(in: 0..<Self.blockSizes.count, using: &rng)]
        let maxBlocks = bs == 1 ? 40 : bs == 3 ? 12 : 4
        let (tables, counts) = randomSharedTables(blockSize: bs, maxSequences: 12, maxBlocksPerRun: maxBlocks, using: &rng)
        let sequences = zip(tables, counts).map { table, count in
            // Now and then rows that end before the sequence does (a `.range` span): inside a
            // run other rows read whole.
            let end = Int.random(in: 0..<3, using: &rng) == 0 ? Int.random(in: 1...count, using: &rng) : count
            let rows = Bool.random(using: &rng) ? 1 : Int.random(in: 1...min(end, 12), using: &rng)
            return DecodePlan.CausalRows(table: Array(table[..<((end + bs - 1) / bs)]), tokenCount: end, newTokens: rows)
        }
        let plan = try DecodePlan.causal(blockSize: bs, sequences: sequences)
        plan.checkInvariants()
        let c = try AttentionCase(dtype: dtype, queryHeads: hq, kvHeads: hkv, headDim: d, blockSize: bs,
                                  tables: (0..<plan.sequenceCount).map { Array(plan.batch.table($0)) },
                                  tokenCounts: plan.batch.tokenCounts.map { Int($0) }, seed: UInt64(seed))
        let reference = try c.reference()
        for threads in [1, 2] {
            let kernel = try DecodeAttention(layout: c.layout, queryHeads: hq, threads: threads)
            let error = relativeError(try c.bifurcated(kernel, plan: plan), reference)
            #expect(error <= Tolerance.of(kernel), "bifurcated threads=\(threads): \(error) — \(c)")
        }
    }

    /// One kernel reused across steps whose batches change in every way the planner's cache
    /// must notice: the same table ids with more tokens (a decode step appends into the partial
    /// last block), a table that gains a block, sharing broken by copy-on-write, a sequence
    /// dropped, one added. Each call must match its own reference.
    @Test(arguments: [KVDType.float16, .bfloat16])
    func reusedKernelFollowsChangingBatches(dtype: KVDType) throws {
        let bs = 16
        let steps: [([[Int32]], [Int])] = [
            ([[1, 2, 3], [1, 2, 3], [1, 2, 4]], [40, 40, 35]),
            ([[1, 2, 3], [1, 2, 3], [1, 2, 4]], [41, 41, 36]),         // same ids, more tokens
            ([[1, 2, 3], [1, 2, 5], [1, 2, 4]], [42, 42, 37]),         // copy-on-write: 3 → 5
            ([[1, 2, 3, 6], [1, 2, 5], [1, 2, 4]], [49, 43, 38]),      // a block appended
            ([[1, 2, 3, 6], [1, 2, 4]], [50, 39]),                     // a sequence released
            ([[1, 2, 3, 6], [1, 2, 4], [1, 2, 4]], [50, 39, 39]),      // a fork of the last one
            ([[1, 2, 3], [1, 2, 3], [1, 2, 4]], [40, 40, 35]),         // back to the first step
        ]
        let kernel = try DecodeAttention(layout: KVLayout(layerCount: 1, kvHeadCount: 2, headDim: 64, blockSize: bs, dtype: dtype),
                                         queryHeads: 8, threads: 2)
        for (n, (tables, counts)) in steps.enumerated() {
            let c = try AttentionCase(dtype: dtype, queryHeads: 8, kvHeads: 2, headDim: 64, blockSize: bs,
                                  tables: tables, tokenCounts: counts, seed: 77)
            let reference = try c.reference()
            let plan = try DecodePlan(batch: c.batch)
            #expect(relativeError(try c.bifurcated(kernel, plan: plan), reference) <= Tolerance.of(kernel), "step \(n)")
            #expect(relativeError(try c.paged(kernel), reference) <= Tolerance.of(kernel), "step \(n)")
        }
    }

    /// Many more random batches (up to 40 sequences, head dims 16…256, block sizes 1…32, GQA
    /// groups 1…32) without the slow reference: paged on one thread is the baseline, and paged
    /// on two threads, bifurcated on one and two, and bifurcated in place must agree with it
    /// (fp32 math tightly; bf16 math within twice its bound, both kernels erring).
    @Test(arguments: 0..<400)
    func pagedAndBifurcatedAgreeOnRandomBatches(seed: Int) throws {
        var rng = SeededRandom(seed: UInt64(50000 + seed))
        let dtype = KVDType.allCases[seed % 3]
        let allHeads = Self.heads + [(6, 1), (24, 8), (64, 4), (3, 1), (2, 2), (40, 40), (32, 1)]
        let (hq, hkv) = allHeads[Int.random(in: 0..<allHeads.count, using: &rng)]
        let d = [64, 80, 128, 256, 32, 96, 16][Int.random(in: 0..<7, using: &rng)]
        let bs = [1, 2, 3, 5, 16, 32][Int.random(in: 0..<6, using: &rng)]
        let maxBlocks = max(1, 48 / bs)
        let (tables, counts) = randomSharedTables(blockSize: bs, maxSequences: Int.random(in: 2...40, using: &rng), maxBlocksPerRun: maxBlocks, using: &rng)
        let c = try AttentionCase(dtype: dtype, queryHeads: hq, kvHeads: hkv, headDim: d, blockSize: bs,
                              tables: tables, tokenCounts: counts, seed: UInt64(seed))
        let plan = try DecodePlan(batch: c.batch)
        plan.checkInvariants()
        for math in [AttentionMath.fp32, .automatic] {
            let k1 = try DecodeAttention(layout: c.layout, queryHeads: hq, threads: 1, math: math)
            let k2 = try DecodeAttention(layout: c.layout, queryHeads: hq, threads: 2, math: math)
            let base = try c.paged(k1)
            let tol = math == .fp32 ? Tolerance.fp32Math : 2e-2
            #expect(relativeError(try c.paged(k2), base) <= tol, "paged2 \(math) \(c)")
            #expect(relativeError(try c.bifurcated(k1, plan: plan), base) <= tol, "bif1 \(math) \(c)")
            #expect(relativeError(try c.bifurcated(k2, plan: plan), base) <= tol, "bif2 \(math) \(c)")
            #expect(relativeError(try c.bifurcatedInPlace(k2, plan: plan), base) <= tol, "inplace \(math) \(c)")
        }
    }

    /// A shared node with more rows than one item takes (256): split into row pieces, each
    /// merged with the sequences' own blocks; MQA (group 32) and GQA (group 8).
    @Test(arguments: [(32, 1), (16, 2)])
    func sharedNodeSplitIntoRowPieces(queryHeads: Int, kvHeads: Int) throws {
        var tables: [[Int32]] = [], counts: [Int] = []
        for s in 0..<20 {
            tables.append([1, 2, 3] + (s % 3 == 0 ? [] : [Int32(10 + s)]))
            counts.append(s % 3 == 0 ? 48 : 48 + 1 + s % 16)
        }
        let c = try AttentionCase(dtype: .bfloat16, queryHeads: queryHeads, kvHeads: kvHeads, headDim: 64, blockSize: 16,
                              tables: tables, tokenCounts: counts, seed: 5)
        let plan = try DecodePlan(batch: c.batch)
        let reference = try c.reference()
        for threads in [1, 2] {
            let kernel = try DecodeAttention(layout: c.layout, queryHeads: queryHeads, threads: threads)
            #expect(relativeError(try c.bifurcated(kernel, plan: plan), reference) <= Tolerance.of(kernel))
            #expect(relativeError(try c.bifurcatedInPlace(kernel, plan: plan), reference) <= Tolerance.of(kernel))
        }
    }
}
