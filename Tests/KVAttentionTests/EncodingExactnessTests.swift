import KVAttention
import KVCore
import Testing

/// Every kernel variant reads every stored fp16 and bf16 value exactly as `KVDType.load` does:
/// normal, subnormal, zero of either sign, infinity. A context of one token makes the output
/// the value row itself (its probability is 2^0 = 1, its row sum 1), so any conversion error
/// as an unequal value — a tolerance check would miss a flushed subnormal. (Equal as numbers:
/// a stored -0 comes out +0, the sum the output accumulates starting from +0.)
@Suite struct EncodingExactnessTests {
    /// The KV heads' query rows take each path: 1 row the few-row paths (the portable one
    /// widening values as it reads them), 4 the portable path's staged tiles, 16 the many-row paths.
    @Test(arguments: KernelISA.allCases.filter { $0 <= .best }, [1, 4, 16])
    func everyStoredValueIsReadExactly(isa: KernelISA, rowsPerKVHead: Int) throws {
        for dtype in [KVDType.float16, .bfloat16] {
            // Every bit pattern but NaNs, 128 per value row, one sequence (one block) per row.
            let patterns = (0...UInt16.max).filter { bits in
                dtype == .float16 ? !Float16(bitPattern: bits).isNaN : !Float(bitPattern: UInt32(bits) << 16).isNaN
            }
            let headDim = 128, sequences = (patterns.count + headDim - 1) / headDim
            let layout = try KVLayout(layerCount: 1, kvHeadCount: 1, headDim: headDim, blockSize: 16, dtype: dtype)
            let arena = KVPageArena(layout: layout, capacityBlocks: sequences + 1, prefault: false)
            var expected = [Float](repeating: 0, count: sequences * headDim)
            for s in 0..<sequences {
                // Zero keys (the arena's memory may hold a freed buffer's bytes): every score 0.
                arena.withUnsafeMutableBlockBytes(BlockID(Int32(s + 1)), layer: 0, kind: .keys) { bytes in
                    bytes.initializeMemory(as: UInt8.self, repeating: 0)
                }
                arena.withUnsafeMutableBlockBytes(BlockID(Int32(s + 1)), layer: 0, kind: .values) { bytes in
                    for i in 0..<headDim {
                        let bits = patterns[(s * headDim + i) % patterns.count]
                        bytes.storeBytes(of: bits, toByteOffset: 2 * i, as: UInt16.self)
                        expected[s * headDim + i] = dtype.load(bytes.baseAddress!, i)
                    }
                }
            }
            let batch = try BlockTableBatch(blockSize: 16, tables: (0..<sequences).map { [Int32($0 + 1)] },
                                            tokenCounts: Array(repeating: 1, count: sequences))
            let query = [Float](repeating: 0.5, count: sequences * rowsPerKVHead * headDim)
            let kernel = try DecodeAttention(layout: layout, queryHeads: rowsPerKVHead, threads: 1, math: .fp32, isa: isa)
            let out = try arena.withUnsafeLayerPages(layer: 0) { pages in
                try kernel.paged(query: query, pages: pages, batch: batch, scale: 0.1)
            }
            var mismatches = 0
            for s in 0..<sequences {
                for h in 0..<rowsPerKVHead {
                    for i in 0..<headDim where out[(s * rowsPerKVHead + h) * headDim + i] != expected[s * headDim + i] {
                        mismatches += 1
                    }
                }
            }
            #expect(mismatches == 0, "\(dtype) on \(isa), \(rowsPerKVHead) rows: \(mismatches) values read differently from KVDType.load")
        }
    }
}
