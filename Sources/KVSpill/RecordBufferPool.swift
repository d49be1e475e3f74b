import KVCore

/// Reuses record buffers. Spill records are large (a block's KV across all layers: 512 KiB to
/// 2 MiB for common models) and all the same size for one layout; a fresh allocation of that
/// size is a fresh `mmap`, and every page of it faults on first touch inside `spill`, under the
/// manager's lock. Keeping freed buffers (up to `retainBytes`) makes the copy a plain memcpy.
final class RecordBufferPool: Sendable {
    private let free = Locked<(buffers: [Int: [UnsafeMutableRawBufferPointer]], bytes: Int)>(([:], 0))
    let retainBytes: Int

    init(retainBytes: Int) { self.retainBytes = retainBytes }

    func take(byteCount: Int) -> UnsafeMutableRawBufferPointer {
        let reused = free.withLock { state -> UnsafeMutableRawBufferPointer? in
            guard let buffer = state.buffers[byteCount]?.popLast() else { return nil }
            state.bytes -= byteCount
            return buffer
        }
        return reused ?? UnsafeMutableRawBufferPointer.allocate(byteCount: byteCount, alignment: 64)
    }

    func give(_ buffer: UnsafeMutableRawBufferPointer) {
        let kept = free.withLock { state -> Bool in
            guard state.bytes + buffer.count <= retainBytes else { return false }
            state.buffers[buffer.count, default: []].append(buffer)
            state.bytes += buffer.count
            return true
        }
        if !kept { buffer.deallocate() }
    }

    deinit {
        free.withLock { state in for list in state.buffers.values { for b in list { b.deallocate() } } }
    }
}
