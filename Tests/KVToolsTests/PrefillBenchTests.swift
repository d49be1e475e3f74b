import KVCore
import KVTools
import Testing

/// `kvctl bench prefill` at a tiny size: both kernels run on the chunk's rows and agree.
@Suite struct PrefillBenchTests {
    @Test func aTinyPointRunsBothKernelsAndTheyAgree() throws {
        let bench = try PrefillBench(heads: 4, kvHeads: 2, headDim: 64, dtype: .bfloat16, blockSize: 16, tokens: 64 + 24, threads: 2,
                                     flusher: MemoryBench(megabytes: 4))
        let p = try bench.measure(context: 64, chunk: 24, repeats: 2)
        #expect(p.context == 64 && p.chunk == 24 && p.heads == 4 && p.kvHeads == 2)
        #expect(p.maxRelError <= 1e-2, "chunk plan vs paged: \(p.maxRelError)")
        #expect(p.pagedMs > 0 && p.chunkPlanMs > 0 && p.chunkPlanGFlops > 0 && p.speedup.isFinite)
    }
}
