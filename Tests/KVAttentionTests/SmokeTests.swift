import KVAttention
import KVCore
import Testing

@Test func smoke() throws {
    for dtype in KVDType.allCases {
        for (hq, hkv) in [(4, 4), (8, 2), (16, 1), (32, 1)] {
            let c = try AttentionCase(dtype: dtype, queryHeads: hq, kvHeads: hkv, headDim: 64, blockSize: 16, batch: 5,
                                      levels: [64, 32], suffix: { $0 * 7 + 1 }, seed: 1)
            let ref = try c.reference()
            for isa in KernelISA.allCases where isa <= .best {
                let k = try c.kernel(isa: isa)
                let ep = relativeError(try c.paged(k), ref), eb = relativeError(try c.bifurcated(k), ref)
                print(dtype, hq, hkv, isa, ep, eb)
            }
        }
    }
}
