import KVAttention
import KVCore
import Testing

/// A shape of the randomized grid: heads, head dim, block size, batch and sharing tree.
struct GridShape: Sendable, CustomTestStringConvertible {
    var queryHeads: Int
    var kvHeads: Int
    var headDim: Int
    var blockSize: Int
    var batch: Int
    var levels: [Int]
    var suffixes: [Int]

    var testDescription: String {
        "Hq=\(queryHeads) Hkv=\(kvHeads) d=\(headDim) bs=\(blockSize) b=\(batch) levels=\(levels) suffixes=\(suffixes)"
    }

    func makeCase(_ dtype: KVDType, seed: UInt64) throws -> AttentionCase {
        try AttentionCase(dtype: dtype, queryHeads: queryHeads, kvHeads: kvHeads, headDim: headDim, blockSize: blockSize,
                          batch: batch, levels: levels, suffix: { suffixes[$0 % suffixes.count] }, seed: seed)
    }
}

let gridShapes: [GridShape] = [
    // MHA, GQA, MQA over a shared context plus ragged suffixes
    GridShape(queryHeads: 4, kvHeads: 4, headDim: 64, blockSize: 16, batch: 6, levels: [48], suffixes: [1, 17, 33]),
    GridShape(queryHeads: 8, kvHeads: 2, headDim: 128, blockSize: 16, batch: 5, levels: [64, 32], suffixes: [5, 0, 16]),
    GridShape(queryHeads: 16, kvHeads: 1, headDim: 64, blockSize: 32, batch: 4, levels: [96], suffixes: [31, 2]),
    // many rows per KV head: the GEMM-shaped path with several row vectors and row blocks
    GridShape(queryHeads: 8, kvHeads: 1, headDim: 128, blockSize: 16, batch: 12, levels: [80], suffixes: [3, 9]),
    // nested sharing, 3 levels, block size 1
    GridShape(queryHeads: 4, kvHeads: 2, headDim: 64, blockSize: 1, batch: 8, levels: [40, 12, 5], suffixes: [0, 3]),
    // a head dim that is not a multiple of 16 (generic path), odd token counts
    GridShape(queryHeads: 6, kvHeads: 3, headDim: 80, blockSize: 16, batch: 9, levels: [32, 16], suffixes: [7, 1]),
    GridShape(queryHeads: 2, kvHeads: 1, headDim: 40, blockSize: 8, batch: 3, levels: [24], suffixes: [3]),
]

@Suite struct ReferenceGridTests {
    @Test(arguments: KVDType.allCases, gridShapes)
    func pagedMatchesReference(dtype: KVDType, shape: GridShape) throws {
        let c = try shape.makeCase(dtype, seed: 11)
        let reference = try c.reference()
        let kernel = try c.kernel()
        let error = relativeError(try c.paged(kernel), reference)
        #expect(error <= Tolerance.of(kernel), "paged: relative error \(error)")
    }

    @Test(arguments: KVDType.allCases, gridShapes)
    func bifurcatedMatchesReference(dtype: KVDType, shape: GridShape) throws {
        let c = try shape.makeCase(dtype, seed: 12)
        let reference = try c.reference()
        let kernel = try c.kernel()
        let error = relativeError(try c.bifurcated(kernel), reference)
        #expect(error <= Tolerance.of(kernel), "bifurcated: relative error \(error)")
    }

    /// With fp32 math every dtype must match the reference tightly, on every path.
    @Test(arguments: KVDType.allCases, gridShapes)
    func fp32MathIsTight(dtype: KVDType, shape: GridShape) throws {
        let c = try shape.makeCase(dtype, seed: 13)
        let reference = try c.reference()
        let kernel = try c.kernel(math: .fp32)
        #expect(relativeError(try c.paged(kernel), reference) <= Tolerance.fp32Math)
        #expect(relativeError(try c.bifurcated(kernel), reference) <= Tolerance.fp32Math)
    }
}

/// The bf16 products of few-row calls (bf16 KV, head dims that are multiples of 32, 2…8 rows per
/// KV head: the few-row path up to 5 rows, the many-row path's 8-row variant from 6, see
/// `EightRowPathTests`): within the bf16 bound, and really taken — the result differs from fp32
/// math, which it would equal exactly if the call fell back to the fp32 few-row kernel.
@Suite struct FewRowBF16Tests {
    /// Shapes, and whether the paged kernel takes the path (its rows are the GQA group).
    static let shapes: [(GridShape, pagedTakesIt: Bool)] = [
        // paged rows = the GQA group (2, 4, 8); odd tails; block sizes 16, 1 and 32
        (GridShape(queryHeads: 4, kvHeads: 2, headDim: 128, blockSize: 16, batch: 3, levels: [32], suffixes: [1, 15, 6]), true),
        (GridShape(queryHeads: 8, kvHeads: 2, headDim: 64, blockSize: 1, batch: 2, levels: [7], suffixes: [3, 0]), true),
        (GridShape(queryHeads: 8, kvHeads: 1, headDim: 96, blockSize: 32, batch: 2, levels: [64], suffixes: [33, 1]), true),
        // MHA: shared nodes of 2…6 rows take it; one row (paged, own blocks) stays on fp32
        (GridShape(queryHeads: 2, kvHeads: 2, headDim: 128, blockSize: 16, batch: 6, levels: [48, 16], suffixes: [5, 2]), false),
    ]

    @Test(arguments: shapes)
    func matchesReferenceAndIsTaken(shape: GridShape, pagedTakesIt: Bool) throws {
        let c = try shape.makeCase(.bfloat16, seed: 21)
        let reference = try c.reference()
        let bf16 = try c.kernel(math: .bf16), fp32 = try c.kernel(math: .fp32)
        let paged = try c.paged(bf16), bifurcated = try c.bifurcated(bf16)
        #expect(relativeError(paged, reference) <= Tolerance.bf16Math)
        #expect(relativeError(bifurcated, reference) <= Tolerance.bf16Math)
        guard bf16.effectiveMath == .bf16 else { return }  // no AVX512-BF16: fp32 either way
        #expect((paged != (try c.paged(fp32))) == pagedTakesIt, "paged: few-row kernel in the wrong math")
        #expect(bifurcated != (try c.bifurcated(fp32)), "bifurcated ran only the fp32 few-row kernel")
    }
}

/// The AVX2 variants (few-row and many-row, fp32 math), which machines without AVX-512 run,
/// on the whole grid and on head dims with 8- and 4-element tails.
@Suite struct AVX2VariantTests {
    static let shapes = gridShapes + [
        GridShape(queryHeads: 12, kvHeads: 2, headDim: 18, blockSize: 4, batch: 5, levels: [20, 8], suffixes: [3, 0, 5]),
        GridShape(queryHeads: 4, kvHeads: 4, headDim: 36, blockSize: 16, batch: 11, levels: [32], suffixes: [2, 9]),
    ]

    @Test(.enabled(if: KernelISA.best >= .avx2), arguments: KVDType.allCases, shapes)
    func matchesReference(dtype: KVDType, shape: GridShape) throws {
        let c = try shape.makeCase(dtype, seed: 31)
        let reference = try c.reference()
        let kernel = try c.kernel(isa: .avx2)
        #expect(relativeError(try c.paged(kernel), reference) <= Tolerance.fp32Math)
        #expect(relativeError(try c.bifurcated(kernel), reference) <= Tolerance.fp32Math)
    }
}

/// The portable variant (what arm64 and x86-64 CPUs without AVX2 run: 4-lane vectors of the
/// compiler's choosing) on the whole grid, head dims that are not a multiple of 4 (padded), and
/// row counts on both sides of its staging threshold (4 rows per call).
@Suite struct PortableVariantTests {
    static let shapes = gridShapes + [
        GridShape(queryHeads: 12, kvHeads: 2, headDim: 18, blockSize: 4, batch: 5, levels: [20, 8], suffixes: [3, 0, 5]),
        GridShape(queryHeads: 4, kvHeads: 4, headDim: 36, blockSize: 16, batch: 11, levels: [32], suffixes: [2, 9]),
        GridShape(queryHeads: 3, kvHeads: 1, headDim: 7, blockSize: 5, batch: 3, levels: [10], suffixes: [1, 17]),
        GridShape(queryHeads: 2, kvHeads: 2, headDim: 40, blockSize: 32, batch: 2, levels: [64], suffixes: [33, 0]),
    ]

    @Test(arguments: KVDType.allCases, shapes)
    func matchesReference(dtype: KVDType, shape: GridShape) throws {
        let c = try shape.makeCase(dtype, seed: 37)
        let reference = try c.reference()
        let kernel = try c.kernel(isa: .portable)
        #expect(relativeError(try c.paged(kernel), reference) <= Tolerance.fp32Math)
        #expect(relativeError(try c.bifurcated(kernel), reference) <= Tolerance.fp32Math)
    }
}
