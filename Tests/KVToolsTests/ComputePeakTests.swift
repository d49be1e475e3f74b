import Testing
@testable import KVTools

/// The roofline's compute peak is the best reading of the process: a probe during which another
/// tenant held a core reads low (seen: half the rate), and must not lower the ceiling a later
/// point is judged against.
@Suite struct ComputePeakTests {
    @Test func neverFallsBelowAnEarlierReading() {
        let first = ComputePeak.gflops(threads: 1, bf16Math: false, repeats: 1)
        #expect(first > 0)
        for _ in 0..<3 {
            let next = ComputePeak.gflops(threads: 1, bf16Math: false, repeats: 1)
            #expect(next >= first)
        }
    }
}
