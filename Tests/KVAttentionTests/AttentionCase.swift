import KVAttention
import KVCore
import KVTestSupport
import Testing

/// A decode step to test: an arena filled with random KV, block tables, random queries.
///
/// Either over explicit block tables (any ids, any sharing), or built from a sharing tree: every
/// sequence reads the level-0 prefix, sequences are split into `fanout` groups per level that
/// share that level's run, then each has its own suffix; blocks are then numbered from 1 in
/// creation order (0 is the null block).
struct AttentionCase: CustomStringConvertible {
    let layout: KVLayout
    let queryHeads: Int
    let arena: KVPageArena
    let batch: BlockTableBatch
    let query: [Float]
    let scale: Float

    /// - Parameters:
    ///   - levels: tokens of each shared level (multiples of the block size, except where every
    ///     sequence ends there); level k is shared by groups of `batch / fanout^k` sequences.
    ///   - suffix: own tokens per sequence.
    ///   - bf16Exact: every K, V and query value is a bf16 value (tiny ones 0, so fp16 holds them
    ///     exactly too) and the scale times log2(e) is 1/8, so bf16 math rounds nothing but its
    ///     probabilities: its error against the reference is then the softmax's own, at any logits.
    init(dtype: KVDType, queryHeads: Int, kvHeads: Int, headDim: Int, blockSize: Int, batch b: Int,
         levels: [Int], fanout: Int = 2, suffix: (Int) -> Int, seed: UInt64, bf16Exact: Bool = false) throws {
        func value(_ x: Float) -> Float {
            guard bf16Exact else { return x }
            let bits = x.bitPattern
            let rounded = Float(bitPattern: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) & 0xFFFF_0000)
            return abs(rounded) < 1.0 / 1024 ? 0 : rounded
        }
        var tables = [[Int32]](repeating: [], count: b)
        var tokens = [Int](repeating: 0, count: b)
        var next: Int32 = 1
        func blocks(for n: Int) -> [Int32] {
            let count = (n + blockSize - 1) / blockSize
            defer { next += Int32(count) }
            return (0..<count).map { next + Int32($0) }
        }
        var groups = 1
        for n in levels {
            let size = max(1, (b + groups - 1) / groups)
            for g in stride(from: 0, to: b, by: size) {
                let run = blocks(for: n)
                for s in g..<min(b, g + size) {
                    tables[s] += run
                    tokens[s] += n
                }
            }
            groups *= fanout
        }
        for s in 0..<b {
            let n = suffix(s)
            tables[s] += blocks(for: n)
            tokens[s] += n
        }
        try self.init(dtype: dtype, queryHeads: queryHeads, kvHeads: kvHeads, headDim: headDim, blockSize: blockSize,
                      tables: tables, tokenCounts: tokens, seed: seed, value: value,
                      scale: bf16Exact ? Float(0.125 / 1.4426950408889634) : nil)
    }

    /// Over explicit tables: random KV (each value through `value`) in every block they name, in
    /// increasing id order, in an arena sized for the largest id; then random queries. `scale`
    /// nil: the default for the head dim.
    init(dtype: KVDType, queryHeads: Int, kvHeads: Int, headDim: Int, blockSize: Int,
         tables: [[Int32]], tokenCounts: [Int], seed: UInt64, value: (Float) -> Float = { $0 }, scale: Float? = nil) throws {
        layout = try KVLayout(layerCount: 1, kvHeadCount: kvHeads, headDim: headDim, blockSize: blockSize, dtype: dtype)
        self.queryHeads = queryHeads
        batch = try BlockTableBatch(blockSize: blockSize, tables: tables, tokenCounts: tokenCounts)
        arena = KVPageArena(layout: layout, capacityBlocks: Int(batch.indices.max() ?? 0) + 1)
        var rng = SeededRandom(seed: seed)
        let elements = layout.blockBytesPerLayerPerKind / dtype.byteWidth
        for block in Set(batch.indices).sorted() {
            for kind in KVKind.allCases {
                arena.withUnsafeMutableBlockBytes(BlockID(block), layer: 0, kind: kind) { raw in
                    for i in 0..<elements { dtype.store(value(Float.random(in: -1.7...1.7, using: &rng)), raw.baseAddress!, i) }
                }
            }
        }
        query = (0..<(tables.count * queryHeads * headDim)).map { _ in value(Float.random(in: -1.7...1.7, using: &rng)) }
        self.scale = scale ?? DecodeAttention.defaultScale(headDim: headDim)
    }

    var description: String {
        "\(layout) Hq=\(queryHeads) tables=\((0..<batch.sequenceCount).map { Array(batch.table($0)) }) tokens=\(batch.tokenCounts)"
    }

    func reference() throws -> [Float] {
        try arena.withUnsafeLayerPages(layer: 0) { pages in
            try ReferenceAttention.compute(query: query, pages: pages, batch: batch, queryHeads: queryHeads, scale: scale)
        }
    }

    func paged(_ kernel: DecodeAttention) throws -> [Float] {
        try arena.withUnsafeLayerPages(layer: 0) { pages in
            try kernel.paged(query: query, pages: pages, batch: batch, scale: scale)
        }
    }

    func bifurcated(_ kernel: DecodeAttention) throws -> [Float] {
        let plan = try DecodePlan(batch: batch)
        plan.checkInvariants()
        return try bifurcated(kernel, plan: plan)
    }

    func bifurcated(_ kernel: DecodeAttention, plan: DecodePlan) throws -> [Float] {
        try arena.withUnsafeLayerPages(layer: 0) { pages in try kernel.bifurcated(query: query, pages: pages, plan: plan, scale: scale) }
    }

    /// The bifurcated kernel writing its output over the query (one buffer for both).
    func bifurcatedInPlace(_ kernel: DecodeAttention, plan: DecodePlan) throws -> [Float] {
        var buffer = query
        try arena.withUnsafeLayerPages(layer: 0) { pages in
            try buffer.withUnsafeMutableBufferPointer { (io) throws(AttentionError) in
                try kernel.bifurcated(query: UnsafeBufferPointer(io), pages: pages, plan: plan, scale: scale, output: io)
            }
        }
        return buffer
    }

    /// Multiplies the key of token `t` of the level-0 shared run (its blocks are numbered from 1),
    /// for every KV head, by `factor` (a power of two keeps bf16-exact keys exact): scores far
    /// above or below the rest.
    func scaleKeys(sharedToken t: Int, by factor: Float) {
        let block = BlockID(Int32(1 + t / layout.blockSize)), slot = t % layout.blockSize
        arena.withUnsafeMutableBlockBytes(block, layer: 0, kind: .keys) { raw in
            for h in 0..<layout.kvHeadCount {
                let first = (h * layout.blockSize + slot) * layout.headDim
                for i in first..<(first + layout.headDim) {
                    layout.dtype.store(layout.dtype.load(raw.baseAddress!, i) * factor, raw.baseAddress!, i)
                }
            }
        }
    }

    func kernel(threads: Int = 2, math: AttentionMath = .automatic, isa: KernelISA = .best) throws -> DecodeAttention {
        try DecodeAttention(layout: layout, queryHeads: queryHeads, threads: threads, math: math, isa: isa)
    }
}

/// Both kernels of `c` against its reference: the paged and the bifurcated relative error within
/// `bound`, or nil for the kernel's (`Tolerance.of`). Returns the kernel it ran.
@discardableResult
func checkAgainstReference(_ c: AttentionCase, threads: Int = 2, isa: KernelISA = .best, math: AttentionMath = .automatic,
                           tolerance bound: Float? = nil) throws -> DecodeAttention {
    let reference = try c.reference()
    let kernel = try c.kernel(threads: threads, math: math, isa: isa)
    let tolerance = bound ?? Tolerance.of(kernel)
    let paged = relativeError(try c.paged(kernel), reference)
    let bifurcated = relativeError(try c.bifurcated(kernel), reference)
    #expect(paged <= tolerance, "paged: relative error \(paged)")
    #expect(bifurcated <= tolerance, "bifurcated: relative error \(bifurcated)")
    return kernel
}

/// max |a − b| / max |b|: the error measure of the tests and benchmarks; infinite when any
/// value is not finite (`max` would otherwise pass a NaN over).
func relativeError(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count, "relativeError: \(a.count) vs \(b.count) values")
    var err: Float = 0, scale: Float = 0
    for i in a.indices {
        guard a[i].isFinite, b[i].isFinite else { return .infinity }
        err = max(err, abs(a[i] - b[i]))
        scale = max(scale, abs(b[i]))
    }
    return err / max(scale, .leastNormalMagnitude)
}
