import Synchronization

/// Reuses record buffers. Spill records are large (a block's KV across all layers: 512 KiB to
/// 2 MiB for common models) and all the same size for one layout; a fresh allocation of that
/// size is a fresh `mmap`, and every page of it faults on first touch inside `spill`, under the
/// manager's lock. Keeping freed buffers (up to `retainBytes`) makes the copy a plain memcpy.
final class RecordBufferPool: Sendable {
    /// Idle buffers by size, as addresses (raw pointers are not `Sendable`; the pool owns them).
    private let free = Mutex<(buffers: [Int: [UInt]], bytes: Int)>(([:], 0))
    let retainBytes: Int

    init(retainBytes: Int) { self.retainBytes = retainBytes }

    func take(byteCount: Int) -> UnsafeMutableRawBufferPointer {
        let reused = free.withLock { state -> UInt? in
            guard let address = state.buffers[byteCount]?.popLast() else { return nil }
            state.bytes -= byteCount
            return address
        }
        if let reused { return UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(bitPattern: reused), count: byteCount) }
        return UnsafeMutableRawBufferPointer.allocate(byteCount: byteCount, alignment: 64)
    }

    func give(_ buffer: UnsafeMutableRawBufferPointer) {
        let address = UInt(bitPattern: buffer.baseAddress), count = buffer.count
        let kept = free.withLock { state -> Bool in
            guard state.bytes + count <= retainBytes else { return false }
            state.buffers[count, default: []].append(address)
            state.bytes += count
            return true
        }
        if !kept { buffer.deallocate() }
    }

    deinit {
        free.withLock { state in
            for list in state.buffers.values { for a in list { UnsafeMutableRawPointer(bitPattern: a)?.deallocate() } }
        }
    }
}
