import KVAttention
import KVCore
import Foundation
import Testing

/// Values stored in token pairs (``KVValueOrder/tokenPairs``): every kernel variant against the
/// reference, and the same logical values in either order giving identical outputs.
@Suite struct ValueOrderTests {
    /// Grid shapes a token-pair layout accepts (bf16, even block size, head dim a multiple of 32),
    /// plus odd tails (suffixes of odd length end in a half pair).
    static let shapes: [GridShape] = gridShapes.filter { $0.blockSize % 2 == 0 && $0.headDim % 32 == 0 } + [
        GridShape(queryHeads: 8, kvHeads: 2, headDim: 64, blockSize: 2, batch: 3, levels: [6], suffixes: [1, 3, 0]),
        GridShape(queryHeads: 32, kvHeads: 32, headDim: 128, blockSize: 16, batch: 33, levels: [48], suffixes: [5, 16]),
        // a GEMM-shaped run ending in a half pair: every sequence ends in the shared 37 tokens
        GridShape(queryHeads: 8, kvHeads: 1, headDim: 64, blockSize: 16, batch: 12, levels: [37], suffixes: [0]),
    ]

    @Test(arguments: KernelISA.allCases.filter { $0 <= .best }, shapes)
    func matchesReference(isa: KernelISA, shape: GridShape) throws {
        let c = try shape.makeCase(.bfloat16, seed: 41, valueOrder: .tokenPairs)
        let reference = try c.reference()
        for math in [AttentionMath.automatic, .fp32] {
            let kernel = try c.kernel(math: math, isa: isa)
            #expect(relativeError(try c.paged(kernel), reference) <= Tolerance.of(kernel), "paged, \(math)")
            #expect(relativeError(try c.bifurcated(kernel), reference) <= Tolerance.of(kernel), "bifurcated, \(math)")
        }
    }

    /// Token pairs change where values live, not the arithmetic: the same values give bit-identical outputs.
    @Test(arguments: shapes)
    func sameValuesSameOutput(shape: GridShape) throws {
        let rows = try shape.makeCase(.bfloat16, seed: 42)
        let pairs = try shape.makeCase(.bfloat16, seed: 42, valueOrder: .tokenPairs)
        let l = rows.layout
        for block in 1..<rows.arena.capacityBlocks {
            rows.arena.withUnsafeBlockBytes(BlockID(Int32(block)), layer: 0, kind: .values) { src in
                pairs.arena.withUnsafeMutableBlockBytes(BlockID(Int32(block)), layer: 0, kind: .values) { dst in
                    for h in 0..<l.kvHeadCount {
                        for t in 0..<l.blockSize {
                            for i in 0..<l.headDim {
                                let value = src.load(fromByteOffset: 2 * l.valueElementIndex(head: h, token: t, dim: i), as: UInt16.self)
                                dst.storeBytes(of: value, toByteOffset: 2 * pairs.layout.valueElementIndex(head: h, token: t, dim: i),
                                               as: UInt16.self)
                            }
                        }
                    }
                }
            }
            rows.arena.withUnsafeBlockBytes(BlockID(Int32(block)), layer: 0, kind: .keys) { src in
                pairs.arena.withUnsafeMutableBlockBytes(BlockID(Int32(block)), layer: 0, kind: .keys) { dst in
                    dst.copyMemory(from: src)
                }
            }
        }
        for math in [AttentionMath.automatic, .fp32] {
            let a = try rows.kernel(math: math), b = try pairs.kernel(math: math)
            #expect(try rows.paged(a) == (try pairs.paged(b)), "paged, \(math)")
            #expect(try rows.bifurcated(a) == (try pairs.bifurcated(b)), "bifurcated, \(math)")
        }
    }

    /// Slots past a run's last token may hold anything (here NaN): a half pair must not read its
    /// missing partner into the sums (0 × NaN is NaN).
    @Test(arguments: KernelISA.allCases.filter { $0 <= .best })
    func halfPairIgnoresTheEmptySlot(isa: KernelISA) throws {
        let shape = GridShape(queryHeads: 8, kvHeads: 1, headDim: 64, blockSize: 16, batch: 12, levels: [37], suffixes: [0])
        let c = try shape.makeCase(.bfloat16, seed: 43, valueOrder: .tokenPairs)
        let l = c.layout, last = c.batch.table(0).last!, used = c.batch.lastBlockTokenCount(0)
        for kind in KVKind.allCases {
            c.arena.withUnsafeMutableBlockBytes(BlockID(last), layer: 0, kind: kind) { raw in
                for t in used..<l.blockSize {
                    for i in 0..<l.headDim {
                        let at = kind == .keys ? l.keyElementIndex(head: 0, token: t, dim: i) : l.valueElementIndex(head: 0, token: t, dim: i)
                        raw.storeBytes(of: UInt16(0x7fc1), toByteOffset: 2 * at, as: UInt16.self)
                    }
                }
            }
        }
        let reference = try c.reference()
        for math in [AttentionMath.automatic, .fp32] {
            let kernel = try c.kernel(math: math, isa: isa)
            #expect(relativeError(try c.paged(kernel), reference) <= Tolerance.of(kernel), "paged, \(math)")
            #expect(relativeError(try c.bifurcated(kernel), reference) <= Tolerance.of(kernel), "bifurcated, \(math)")
        }
    }

    @Test func layoutRules() throws {
        #expect(throws: KVLayoutError.self) { try KVLayout(layerCount: 1, kvHeadCount: 1, headDim: 64, dtype: .float16, valueOrder: .tokenPairs) }
        #expect(throws: KVLayoutError.self) { try KVLayout(layerCount: 1, kvHeadCount: 1, headDim: 64, blockSize: 15, dtype: .bfloat16, valueOrder: .tokenPairs) }
        #expect(throws: KVLayoutError.self) { try KVLayout(layerCount: 1, kvHeadCount: 1, headDim: 48, dtype: .bfloat16, valueOrder: .tokenPairs) }
        let l = try KVLayout(layerCount: 1, kvHeadCount: 2, headDim: 64, blockSize: 4, dtype: .bfloat16, valueOrder: .tokenPairs)
        #expect(l.valueElementIndex(head: 1, token: 2, dim: 5) == (4 + 2) * 64 + 10)
        #expect(l.valueElementIndex(head: 1, token: 3, dim: 5) == (4 + 2) * 64 + 11)
        #expect(l.keyElementIndex(head: 1, token: 3, dim: 5) == (4 + 3) * 64 + 5)
        // Every element of a block is addressed exactly once.
        var seen = Set<Int>()
        for h in 0..<2 { for t in 0..<4 { for i in 0..<64 { seen.insert(l.valueElementIndex(head: h, token: t, dim: i)) } } }
        #expect(seen == Set(0..<(2 * 4 * 64)))
    }

    @Test func layoutCoding() throws {
        let l = try KVLayout(layerCount: 2, kvHeadCount: 2, headDim: 64, blockSize: 4, dtype: .bfloat16, valueOrder: .tokenPairs)
        #expect(try JSONDecoder().decode(KVLayout.self, from: JSONEncoder().encode(l)) == l)
        // A layout recorded before value orders existed reads as token rows.
        let old = #"{"layerCount":1,"kvHeadCount":2,"headDim":64,"blockSize":16,"dtype":"bf16"}"#
        #expect(try JSONDecoder().decode(KVLayout.self, from: Data(old.utf8)).valueOrder == .tokenRows)
        let bad = #"{"layerCount":1,"kvHeadCount":2,"headDim":64,"blockSize":15,"dtype":"bf16","valueOrder":"pairs"}"#
        #expect(throws: DecodingError.self) { try JSONDecoder().decode(KVLayout.self, from: Data(bad.utf8)) }
    }
}
