import Dispatch
import KVCore

/// What the attention benchmarks share: KV pages filled with random values, two kernels timed
/// alternating on the same data, and the difference of their outputs.
enum KernelTiming {
    /// Random values in [-1.7, 1.7] (about unit variance) in every block of `arena` but the null
    /// block, generated per block on `threads` cores (first touch of fresh memory is slow on this
    /// kind of VM, so the fill is also the prefault).
    static func fillRandom(_ arena: KVPageArena, threads: Int, seed: UInt64) {
        let layout = arena.layout
        let elements = layout.blockBytesPerLayerPerKind / layout.dtype.byteWidth
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            var state = seed &+ UInt64(t)
            for block in stride(from: 1 + t, to: arena.capacityBlocks, by: threads) {
                for kind in KVKind.allCases {
                    arena.withUnsafeMutableBlockBytes(BlockID(Int32(block)), layer: 0, kind: kind) { raw in
                        for i in 0..<elements {
                            state = state &* 6364136223846793005 &+ 1442695040888963407
                            let x = Float(Int32(truncatingIfNeeded: state >> 32)) * (1.7 / 2147483648)
                            layout.dtype.store(x, raw.baseAddress!, i)
                        }
                    }
                }
            }
        }
    }

    /// One attention kernel call: the arena's layer-0 pages, the query, and the call's output.
    typealias Call = (KVLayerPages, UnsafeBufferPointer<Float>, UnsafeMutableBufferPointer<Float>) throws -> Void

    /// `repeats` calls of each kernel on `query` over `arena`'s layer 0, called in turn in every
    /// round, the last-level cache flushed before every call, after one untimed warm-up round;
    /// returns each kernel's seconds per call and its output.
    static func alternate(over arena: KVPageArena, query: [Float], repeats: Int, flusher: MemoryBench,
                          _ calls: [Call]) throws -> [(seconds: [Double], output: [Float])] {
        var seconds = [[Double]](repeating: [], count: calls.count)
        var outputs = [[Float]](repeating: [Float](repeating: 0, count: query.count), count: calls.count)
        try arena.withUnsafeLayerPages(layer: 0) { pages in
            try query.withUnsafeBufferPointer { q in
                for rep in 0...repeats {
                    for (k, call) in calls.enumerated() {
                        flusher.flushCaches()
                        let t0 = DispatchTime.now().uptimeNanoseconds
                        try outputs[k].withUnsafeMutableBufferPointer { out in try call(pages, q, out) }
                        let t1 = DispatchTime.now().uptimeNanoseconds
                        if rep > 0 { seconds[k].append(Double(t1 - t0) * 1e-9) }
                    }
                }
            }
        }
        return zip(seconds, outputs).map { ($0, $1) }
    }

    /// max |a − b| / max |b|; infinite when a value is not finite (`max` would pass a NaN over).
    static func relativeDifference(_ a: [Float], _ b: [Float]) -> Double {
        var err: Float = 0, top: Float = 0
        for i in b.indices {
            guard a[i].isFinite, b[i].isFinite else { return .infinity }
            err = max(err, abs(a[i] - b[i]))
            top = max(top, abs(b[i]))
        }
        return Double(err / max(top, .leastNormalMagnitude))
    }
}
