import Dispatch
import KVAttention
import KVCore
import Testing

@Suite struct ErrorTests {
    let c: AttentionCase

    init() throws {
        c = try AttentionCase(dtype: .float16, queryHeads: 4, kvHeads: 2, headDim: 64, blockSize: 16, batch: 2,
                              levels: [16], suffix: { _ in 4 }, seed: 1)
    }

    @Test func headsNotDivisible() {
        #expect(throws: AttentionError.headsNotDivisible(queryHeads: 3, kvHeads: 2)) {
            try DecodeAttention(layout: c.layout, queryHeads: 3)
        }
    }

    @Test func invalidThreadCount() {
        #expect(throws: AttentionError.invalidThreadCount(0)) {
            try DecodeAttention(layout: c.layout, queryHeads: 4, threads: 0)
        }
    }

    /// Sizes the kernels cannot take as int32 are typed errors, not traps when narrowed.
    @Test func sizesBeyondInt32AreTypedErrors() throws {
        #expect(throws: DecodePlanError.tokenCountDoesNotFitTable(sequence: 0, tokens: Int.max, blocks: 1, blockSize: 16)) {
            try BlockTableBatch(blockSize: 16, tables: [[1]], tokenCounts: [Int.max])
        }
        #expect(throws: DecodePlanError.invalidBlockSize(1 << 33)) {
            try BlockTableBatch(blockSize: 1 << 33, tables: [[1]], tokenCounts: [1 << 32])
        }
        let wide = try KVLayout(layerCount: 1, kvHeadCount: 1, headDim: 4, blockSize: 1 << 32, dtype: .float32)
        #expect(throws: AttentionError.layoutMismatch("blockSize 4294967296 exceeds the kernels' limit of 2147483647")) {
            try DecodeAttention(layout: wide, queryHeads: 1, threads: 1)
        }
    }

    /// A thread count far beyond the machine is a cap, not an overflow in the planner, and not
    /// a scratch buffer per thread that never runs (threads: 1024 prefaulted 544 MB here).
    @Test func hugeThreadCountIsCapped() throws {
        let kernel = try DecodeAttention(layout: c.layout, queryHeads: 4, threads: .max)
        #expect(kernel.threads == min(DecodeAttention.maxThreads, DecodeAttention.defaultThreadCount))
        #expect(relativeError(try c.bifurcated(kernel), try c.reference()) <= 5e-5)
    }

    /// One instance, one call at a time: a call while another runs (the instance shared between
    /// threads against its contract) is refused with a typed error, not allowed to overwrite the
    /// other call's scratch (a review saw 37 of 40 such outputs wrong, and once an abort; without the guard this test
    /// sees most of its 20 wrong).
    @Test func aCallDuringAnotherIsRefused() throws {
        let big = try AttentionCase(dtype: .bfloat16, queryHeads: 8, kvHeads: 8, headDim: 64, blockSize: 16, batch: 16,
                                    levels: [2048], suffix: { $0 + 16 }, seed: 3)
        nonisolated(unsafe) let kernel = try big.kernel(threads: 1)
        let reference = try big.reference()
        let outcomes = Locked<[String]>([])
        DispatchQueue.concurrentPerform(iterations: 2) { _ in
            for _ in 0..<10 {
                do {
                    let out = try big.bifurcated(kernel)
                    outcomes.withLock { $0.append(relativeError(out, reference) <= Tolerance.of(kernel) ? "ok" : "wrong") }
                } catch {
                    outcomes.withLock { $0.append(error as? AttentionError == .concurrentCall ? "refused" : "other") }
                }
            }
        }
        let all = outcomes.withLock { $0 }
        #expect(!all.contains("wrong") && !all.contains("other"), "\(all)")
        #expect(all.contains("ok"))
        // Calls one after another from different threads are fine.
        #expect(relativeError(try big.bifurcated(kernel), reference) <= Tolerance.of(kernel))
    }

    @Test func queryShapeMismatch() throws {
        let kernel = try c.kernel()
        #expect(throws: AttentionError.shapeMismatch(what: "query", expected: 2 * 4 * 64, got: 5)) {
            try c.arena.withUnsafeLayerPages(layer: 0) { pages in
                try kernel.paged(query: [Float](repeating: 0, count: 5), pages: pages, batch: c.batch, scale: 1)
            }
        }
    }

    @Test func outputShapeMismatch() throws {
        let kernel = try c.kernel()
        var out = [Float](repeating: 0, count: 7)
        #expect(throws: AttentionError.shapeMismatch(what: "output", expected: 2 * 4 * 64, got: 7)) {
            try c.arena.withUnsafeLayerPages(layer: 0) { pages in
                try c.query.withUnsafeBufferPointer { q in
                    try out.withUnsafeMutableBufferPointer { o in
                        try kernel.paged(query: q, pages: pages, batch: c.batch, scale: 1, output: o)
                    }
                }
            }
        }
    }

    @Test func blockOutOfRange() throws {
        let kernel = try c.kernel()
        let batch = try BlockTableBatch(blockSize: 16, tables: [[1, 999]], tokenCounts: [20])
        #expect(throws: AttentionError.blockOutOfRange(block: 999, capacity: c.arena.capacityBlocks)) {
            try c.arena.withUnsafeLayerPages(layer: 0) { pages in
                try kernel.bifurcated(query: [Float](repeating: 0, count: 4 * 64), pages: pages,
                                      plan: DecodePlan(batch: batch), scale: 1)
            }
        }
    }

    /// A work plan cached from a call on a big arena must not let the same tables past the
    /// range check on a smaller one.
    @Test func blockOutOfRangeAfterCachedPlan() throws {
        let kernel = try c.kernel()
        let plan = try DecodePlan(batch: c.batch)
        _ = try c.bifurcated(kernel)
        _ = try c.paged(kernel)
        let small = KVPageArena(layout: c.layout, capacityBlocks: 2)
        let top = c.batch.indices.first { $0 >= 2 }!  // the first block outside, as the check reports it
        small.withUnsafeLayerPages(layer: 0) { pages in
            #expect(throws: AttentionError.blockOutOfRange(block: top, capacity: 2)) {
                try kernel.bifurcated(query: c.query, pages: pages, plan: plan, scale: c.scale)
            }
            #expect(throws: AttentionError.blockOutOfRange(block: top, capacity: 2)) {
                try kernel.paged(query: c.query, pages: pages, batch: c.batch, scale: c.scale)
            }
        }
    }

    @Test func layoutMismatch() throws {
        let other = try KVLayout(layerCount: 1, kvHeadCount: 2, headDim: 64, blockSize: 16, dtype: .bfloat16)
        let kernel = try DecodeAttention(layout: other, queryHeads: 4)
        #expect(throws: AttentionError.self) {
            try c.paged(kernel)
        }
        let batch32 = try BlockTableBatch(blockSize: 32, tables: [[1]], tokenCounts: [20])
        #expect(throws: AttentionError.self) {
            try c.arena.withUnsafeLayerPages(layer: 0) { pages in
                try c.kernel().paged(query: [Float](repeating: 0, count: 4 * 64), pages: pages, batch: batch32, scale: 1)
            }
        }
    }

    @Test func nonFiniteScale() throws {
        let kernel = try c.kernel()
        #expect(throws: AttentionError.invalidScale(.infinity)) {
            try c.arena.withUnsafeLayerPages(layer: 0) { pages in
                try kernel.paged(query: c.query, pages: pages, batch: c.batch, scale: .infinity)
            }
        }
    }

    /// From an input-fuzzing review (2026-12-01): scales that are not positive, non-finite
    /// queries and shape products that overflow were accepted (NaN or wrong output, or a trap).
    @Test func nonPositiveScalesAreRefused() throws {
        let kernel = try c.kernel()
        let plan = try DecodePlan(batch: c.batch)
        for scale: Float in [0, -0.0, -1, -c.scale, .nan, -.infinity] {
            try c.arena.withUnsafeLayerPages(layer: 0) { pages in
                #expect(throws: AttentionError.self, "\(scale)") {
                    try kernel.paged(query: c.query, pages: pages, batch: c.batch, scale: scale)
                }
                #expect(throws: AttentionError.self, "\(scale)") {
                    try kernel.bifurcated(query: c.query, pages: pages, plan: plan, scale: scale)
                }
                #expect(throws: AttentionError.self, "\(scale)") {
                    try ReferenceAttention.compute(query: c.query, pages: pages, batch: c.batch, queryHeads: 4, scale: scale)
                }
            }
        }
    }

    @Test func nonFiniteQueriesAreRefusedByIndex() throws {
        let kernel = try c.kernel()
        let plan = try DecodePlan(batch: c.batch)
        // Every position class of the checker: the first element, one inside a 64-float step,
        // the last of a step, and the tail past the last whole step.
        for index in [0, 37, 63, c.query.count - 1] {
            for value: Float in [.nan, .infinity, -.infinity] {
                var q = c.query
                q[index] = value
                try c.arena.withUnsafeLayerPages(layer: 0) { pages in
                    #expect(throws: AttentionError.nonFiniteQuery(index: index)) {
                        try kernel.paged(query: q, pages: pages, batch: c.batch, scale: c.scale)
                    }
                    #expect(throws: AttentionError.nonFiniteQuery(index: index)) {
                        try kernel.bifurcated(query: q, pages: pages, plan: plan, scale: c.scale)
                    }
                }
            }
        }
        // Large but finite queries are fine.
        var q = c.query
        q[5] = 1e30
        try c.arena.withUnsafeLayerPages(layer: 0) { pages in
            #expect(throws: Never.self) { try kernel.paged(query: q, pages: pages, batch: c.batch, scale: c.scale) }
        }
    }

    /// sequences × query heads × head dim trapped on overflow inside validation (a 4 MiB arena,
    /// queryHeads = Int32.max, head dim 2^20).
    @Test func shapeProductsBeyondTheRowLimitAreRefused() throws {
        let layout = try KVLayout(layerCount: 1, kvHeadCount: 1, headDim: 1 << 20, blockSize: 1, dtype: .float16)
        let arena = KVPageArena(layout: layout, capacityBlocks: 1)
        let kernel = try DecodeAttention(layout: layout, queryHeads: Int(Int32.max), threads: 1)
        let batch = try BlockTableBatch(blockSize: 1, tables: Array(repeating: [0], count: 4097),
                                        tokenCounts: Array(repeating: 1, count: 4097))
        #expect(throws: AttentionError.tooManyQueryRows(sequences: 4097, queryHeads: Int(Int32.max), limit: DecodeAttention.maxQueryRows)) {
            try arena.withUnsafeLayerPages(layer: 0) { pages in
                try kernel.paged(query: [Float](repeating: 0, count: 16), pages: pages, batch: batch, scale: 1)
            }
        }
    }

    /// An empty batch is no work, not an error: both kernels return an empty output.
    @Test func anEmptyBatchReturnsNothing() throws {
        let kernel = try c.kernel()
        let empty = try BlockTableBatch(blockSize: 16, tables: [], tokenCounts: [])
        let plan = try DecodePlan(batch: empty)
        let (paged, bifurcated) = try c.arena.withUnsafeLayerPages(layer: 0) { pages in
            (try kernel.paged(query: [], pages: pages, batch: empty, scale: c.scale),
             try kernel.bifurcated(query: [], pages: pages, plan: plan, scale: c.scale))
        }
        #expect(paged.isEmpty && bifurcated.isEmpty)
    }
}
