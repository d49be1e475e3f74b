import KVCore
import KVTools
import Testing

/// `kvctl bench prefill` at a tiny size: both kernels run on the chunk's rows and agree.
@Suite struct PrefillBenchTests {
    @Test func aTinyPointRunsBothKernelsAndTheyAgree() throws {
        let bench = try PrefillBench(heads: 4, kvHeads: 2, headDim: 64, dtype: .bfloat16, blockSize: 16, context: 64, chunk: 24, threads: 2,
                                     flusher: MemoryBench(megabytes: 4))
        let p = try bench.measure(context: 64, chunk: 24, repeats: 2)
        #expect(p.context == 64 && p.chunk == 24 && p.heads == 4 && p.kvHeads == 2)
        #expect(p.maxRelError <= 1e-2, "chunk plan vs paged: \(p.maxRelError)")
        #expect(p.pagedMs > 0 && p.chunkPlanMs > 0 && p.chunkPlanGFlops > 0 && p.speedup.isFinite && p.planBuildMs > 0)
        #expect(p.perSequencePlansMs == nil && p.sequences == 1)
    }

    /// Three sequences sharing the context, a chunk each (the context's partial block copied per
    /// sequence): the step plan, paged, and one plan per sequence all agree.
    @Test func severalSequencesRunAllThreeWaysAndTheyAgree() throws {
        let bench = try PrefillBench(heads: 4, kvHeads: 2, headDim: 64, dtype: .bfloat16, blockSize: 16, context: 70, chunk: 20,
                                     sequences: 3, threads: 2, flusher: MemoryBench(megabytes: 4))
        let p = try bench.measure(context: 70, chunk: 20, sequences: 3, repeats: 2)
        #expect(p.sequences == 3 && p.maxRelError <= 1e-2, "step plan / per-sequence plans vs paged: \(p.maxRelError)")
        #expect((p.perSequencePlansMs ?? 0) > 0 && (p.speedupOverPerSequence ?? .nan).isFinite)
    }
}
