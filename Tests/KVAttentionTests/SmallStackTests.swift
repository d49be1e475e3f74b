import Foundation
import KVAttention
import KVCore
import Testing

/// The kernels run on an embedder's threads, whose stacks may be small (512 KiB here; 4 MiB in
/// the concurrent engine tests). In unoptimised builds (`swift test`, ThreadSanitizer) the C
/// kernels once forced every helper inline, and at -O0 each inlined copy keeps its own stack
/// slots: the many-row driver's frame grew to 4.3 MB and overflowed a 4 MiB thread
/// (`avx512_common.h`). Every kernel variant runs here, on one 512 KiB thread.
@Suite struct SmallStackTests {
    /// Runs `body` on a new thread with `stackSize` bytes of stack and returns what it returned.
    func onThread<T: Sendable>(stackSize: Int, _ body: @escaping @Sendable () throws -> T) throws -> T {
        let box = ResultBox<T>(), done = DispatchSemaphore(value: 0)
        let thread = Thread {
            box.result = Result { try body() }
            done.signal()
        }
        thread.stackSize = stackSize
        thread.start()
        done.wait()
        return try box.result!.get()
    }

    /// A thread's result, written before it signals `done`.
    final class ResultBox<T>: @unchecked Sendable {
        var result: Result<T, any Error>?
    }

    /// (relative error of paged, of bifurcated, their bound) for one case on one thread.
    static func errors(dtype: KVDType, queryHeads: Int, kvHeads: Int, batch: Int, math: AttentionMath, isa: KernelISA) throws
        -> (paged: Float, bifurcated: Float, bound: Float) {
        let c = try AttentionCase(dtype: dtype, queryHeads: queryHeads, kvHeads: kvHeads, headDim: 128, blockSize: 16, batch: batch,
                                  levels: [80], suffix: { $0 % 3 + 1 }, seed: UInt64(500 + batch))
        let kernel = try c.kernel(threads: 1, math: math, isa: isa)
        let reference = try c.reference()
        return (relativeError(try c.paged(kernel), reference), relativeError(try c.bifurcated(kernel), reference), Tolerance.of(kernel))
    }

    /// Shared nodes of 64, 8 and 2 rows (many-row path, its 8-row variant, the few-row path),
    /// bf16 and fp32 math, every ISA this CPU has.
    @Test(arguments: [KernelISA.portable, .avx2, .avx512, .avx512bf16])
    func everyPathRunsOnASmallStack(isa: KernelISA) throws {
        guard isa <= KernelISA.best else { return }
        for (dtype, math) in [(KVDType.bfloat16, AttentionMath.bf16), (.float32, .fp32)] {
            for batch in [64, 8, 2] {
                let e = try onThread(stackSize: 512 << 10) {
                    try Self.errors(dtype: dtype, queryHeads: 2, kvHeads: 2, batch: batch, math: math, isa: isa)
                }
                #expect(e.paged <= e.bound && e.bifurcated <= e.bound, "\(isa) \(dtype) \(math) b = \(batch): \(e)")
            }
        }
    }
}
