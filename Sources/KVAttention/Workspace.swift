/// Buffers reused across calls: per-thread kernel scratch and the partial results.
///
/// Allocated on first need and grown only, each page touched once at allocation: first-touch
/// page faults cost as much as the kernels on some virtual machines, so no call allocates on
/// its hot path once the workspace has seen its largest shape.
final class Workspace {
    private(set) var scratch: [UnsafeMutableRawPointer] = []
    private(set) var scratchBytes = 0
    private(set) var partial = RawFloats()
    private(set) var lse = RawFloats()

    /// A grow-only, 64-byte aligned float buffer.
    struct RawFloats {
        private(set) var base: UnsafeMutablePointer<Float>?
        private(set) var capacity = 0

        mutating func reserve(_ count: Int) {
            guard count > capacity else { return }
            base?.deallocate()
            let raw = UnsafeMutableRawPointer.allocate(byteCount: count * 4, alignment: 64)
            raw.initializeMemory(as: UInt8.self, repeating: 0, count: count * 4)
            base = raw.bindMemory(to: Float.self, capacity: count)
            capacity = count
        }

        func release() { base?.deallocate() }
    }

    func reserve(threads: Int, scratchBytes bytes: Int, partialFloats: Int, lseFloats: Int) {
        if bytes > scratchBytes || scratch.count < threads {
            for p in scratch { p.deallocate() }
            scratchBytes = max(bytes, scratchBytes)
            scratch = (0..<threads).map { _ in
                let p = UnsafeMutableRawPointer.allocate(byteCount: scratchBytes, alignment: 64)
                p.initializeMemory(as: UInt8.self, repeating: 0, count: scratchBytes)
                return p
            }
        }
        partial.reserve(partialFloats)
        lse.reserve(lseFloats)
    }

    deinit {
        for p in scratch { p.deallocate() }
        partial.release()
        lse.release()
    }
}
