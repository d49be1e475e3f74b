import Foundation
import KVAttention
import KVCore
import Testing

/// A case of Fixtures/attention (made by make_golden.py, an independent numpy implementation).
struct GoldenCase {
    struct Meta: Decodable {
        var dtype: String
        var queryHeads, kvHeads, headDim, blockSize, capacityBlocks: Int
        var tables: [[Int32]]
        var tokenCounts: [Int]
        var scale: Float
    }

    static let directory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/attention")

    let meta: Meta
    let layout: KVLayout
    let arena: KVPageArena
    let batch: BlockTableBatch
    let query: [Float]
    let expected: [Float]

    init(_ name: String) throws {
        let meta = try JSONDecoder().decode(Meta.self, from: Data(contentsOf: Self.directory.appendingPathComponent(name + ".json")))
        let data = try Data(contentsOf: Self.directory.appendingPathComponent(name + ".bin"))
        guard let dtype = KVDType(rawValue: meta.dtype) else { throw GoldenError.unknownDType(meta.dtype) }
        let layout = try KVLayout(layerCount: 1, kvHeadCount: meta.kvHeads, headDim: meta.headDim, blockSize: meta.blockSize, dtype: dtype)
        let batch = try BlockTableBatch(blockSize: meta.blockSize, tables: meta.tables, tokenCounts: meta.tokenCounts)
        let arena = KVPageArena(layout: layout, capacityBlocks: meta.capacityBlocks)
        let blockBytes = layout.blockBytesPerLayerPerKind, arenaBytes = blockBytes * meta.capacityBlocks
        let floats = batch.sequenceCount * meta.queryHeads * meta.headDim
        guard data.count == 2 * arenaBytes + 2 * floats * 4 else {
            throw GoldenError.size(expected: 2 * arenaBytes + 2 * floats * 4, got: data.count)
        }
        var query = [Float](repeating: 0, count: floats), expected = query
        data.withUnsafeBytes { raw in
            for kind in KVKind.allCases {
                for block in 0..<meta.capacityBlocks {
                    arena.withUnsafeMutableBlockBytes(BlockID(Int32(block)), layer: 0, kind: kind) { dst in
                        dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[(kind.rawValue * arenaBytes + block * blockBytes)...].prefix(blockBytes)))
                    }
                }
            }
            for i in 0..<floats {
                query[i] = raw.loadUnaligned(fromByteOffset: 2 * arenaBytes + i * 4, as: Float.self)
                expected[i] = raw.loadUnaligned(fromByteOffset: 2 * arenaBytes + (floats + i) * 4, as: Float.self)
            }
        }
        (self.meta, self.layout, self.arena, self.batch, self.query, self.expected) = (meta, layout, arena, batch, query, expected)
    }

    enum GoldenError: Error {
        case unknownDType(String)
        case size(expected: Int, got: Int)
    }
}

@Suite struct GoldenFixtureTests {
    @Test(arguments: ["mha_fp32", "gqa_fp16_nested", "mqa_bf16"])
    func kernelsMatchNumpy(name: String) throws {
        let g = try GoldenCase(name)
        let plan = try DecodePlan(batch: g.batch)
        plan.checkInvariants()
        try g.arena.withUnsafeLayerPages(layer: 0) { pages in
            let reference = try ReferenceAttention.compute(query: g.query, pages: pages, batch: g.batch,
                                                           queryHeads: g.meta.queryHeads, scale: g.meta.scale)
            #expect(relativeError(reference, g.expected) <= 1e-6)
            for math in [AttentionMath.automatic, .fp32] {
                let kernel = try DecodeAttention(layout: g.layout, queryHeads: g.meta.queryHeads, math: math)
                let paged = try kernel.paged(query: g.query, pages: pages, batch: g.batch, scale: g.meta.scale)
                let bifurcated = try kernel.bifurcated(query: g.query, pages: pages, plan: plan, scale: g.meta.scale)
                #expect(relativeError(paged, g.expected) <= Tolerance.of(kernel), "paged, \(math) math")
                #expect(relativeError(bifurcated, g.expected) <= Tolerance.of(kernel), "bifurcated, \(math) math")
            }
        }
    }
}
