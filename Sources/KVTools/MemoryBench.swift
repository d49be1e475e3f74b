import CKVKernels
import Dispatch
import Foundation

/// Streaming-read bandwidth of this machine: the C probe (one sequential read stream per
/// thread, loads only) over a buffer far larger than the last-level cache.
public final class MemoryBench: @unchecked Sendable {
    public let bytes: Int
    private let buffer: UnsafeMutableRawPointer

    /// Allocates and touches `megabytes` once (first touch is slow on virtual machines).
    public init(megabytes: Int = 1024) {
        bytes = megabytes << 20
        buffer = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 4096)
        buffer.initializeMemory(as: Float.self, repeating: 1, count: bytes / 4)
    }

    deinit { buffer.deallocate() }

    /// Fails on settings `kvctl bench memory` cannot run with: the buffer must fit in memory and
    /// leave every thread a slice.
    public static func validate(megabytes: Int, threads: Int, repeats: Int) throws(OptionError) {
        try OptionChecks.inRange(megabytes, 1...max(1, OptionChecks.physicalMemoryBytes >> 20), "--megabytes")
        try OptionChecks.inRange(threads, 1...OptionChecks.maxThreads, "--threads")
        try OptionChecks.atLeast(repeats, 1, "--repeat")
    }

    /// Best-of-`repeat` GB/s reading the whole buffer with `threads` threads (one slice each).
    public func readGBps(threads: Int, repeats: Int = 5) -> Double {
        var best = Double.infinity
        for _ in 0..<repeats {
            let start = DispatchTime.now().uptimeNanoseconds
            readOnce(threads: threads)
            best = min(best, Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9)
        }
        return Double(readBytes(threads: threads)) / best / 1e9
    }

    /// Bytes one ``readOnce(threads:)`` reads: a slice per thread.
    public func readBytes(threads: Int) -> Int { sliceBytes(threads: threads) * threads }

    /// Each thread's slice of the buffer, whole 512-byte steps of the probe.
    private func sliceBytes(threads: Int) -> Int { bytes / threads / 512 * 512 }

    /// Reads the buffer once with `threads` threads, one slice each (a timed call of its own:
    /// benchmarks alternate it with the kernels they compare against it).
    public func readOnce(threads: Int) {
        let slice = sliceBytes(threads: threads)
        let base = UInt(bitPattern: buffer)
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            let p = UnsafeRawPointer(bitPattern: base + UInt(t * slice))!
            blackHole(kvk_stream_read(p, slice))
        }
    }

    /// Evicts the last-level cache by streaming a slice of the buffer (for cold-cache timings).
    public func flushCaches(megabytes: Int = 96) {
        blackHole(kvk_stream_read(buffer, min(bytes, megabytes << 20) / 512 * 512))
    }
}

/// Keeps a value alive so the optimiser cannot drop the work that made it.
@inline(never) func blackHole<T>(_ value: T) { _ = value }
