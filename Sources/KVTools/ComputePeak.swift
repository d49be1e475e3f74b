import CKVKernels
import Dispatch
import KVCore

/// The compute ceiling of the attention roofline, measured, not assumed: the instruction the
/// many-row kernel multiplies with (vdpbf16ps for bf16 math, else the widest FMA) issued at full
/// rate on `threads` threads at once, with no memory traffic (`kvk_peak_probe`).
public enum ComputePeak {
    /// The best rate measured so far in this process, per (threads, math). The ceiling of the
    /// machine does not drop: a lower reading means another tenant held a core during the probe
    /// (seen here: 235 instead of 467 GFLOP/s, which put a point at "127 % of its roofline").
    private static let bestSeen = Locked([String: Double]())

    /// GFLOP/s of `threads` threads running the probe at the same time: each thread times its own
    /// ~17 ms call (so a thread that starts late does not count as idle time) and the rates add
    /// up; the best of `repeats` rounds, or of every earlier call in this process for the same
    /// threads and math if that was higher.
    public static func gflops(threads: Int, bf16Math: Bool, repeats: Int = 5) -> Double {
        let measured = probe(threads: threads, bf16Math: bf16Math, repeats: repeats)
        return bestSeen.withLock { best in
            let key = "\(threads)-\(bf16Math)"
            let value = max(best[key] ?? 0, measured)
            best[key] = value
            return value
        }
    }

    private static func probe(threads: Int, bf16Math: Bool, repeats: Int) -> Double {
        let mode: Int32 = bf16Math ? 1 : 0
        let iterations: Int64 = 4_000_000
        let flopsPerCall = kvk_peak_probe(mode, 1) * Double(iterations)  // one iteration reports its FLOPs
        var best = 0.0
        for _ in 0..<repeats {
            let rates = Locked([Double](repeating: 0, count: threads))
            DispatchQueue.concurrentPerform(iterations: threads) { t in
                let start = DispatchTime.now().uptimeNanoseconds
                _ = kvk_peak_probe(mode, iterations)
                let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
                rates.withLock { $0[t] = flopsPerCall / seconds / 1e9 }
            }
            best = max(best, rates.withLock { $0.reduce(0, +) })
        }
        return best
    }
}
