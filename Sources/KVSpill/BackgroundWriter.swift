import Foundation

/// The one thread that commits spilled records in batches, so `spill` (called under the cache
/// manager's lock) only copies bytes. The thread holds the queue and the writer, never the
/// store, so a store dropped without `close()` still stops it from `deinit`.
final class BackgroundWriter: Sendable {
    private let queue: SpillQueue
    private let exited = DispatchSemaphore(value: 0)

    init(queue: SpillQueue, writer: StoreWriter, batchLimitBytes: Int) {
        self.queue = queue
        let thread = Thread { [queue, writer, exited] in
            while let batch = queue.waitForBatch(maxBytes: batchLimitBytes) {
                // The checksum pass over the payload happens here, off the caller's path.
                for r in batch.records { SpillRecord.seal(r.bytes) }
                queue.completed(batch, writer.apply(batch))
            }
            exited.signal()
        }
        thread.name = "prefixkv-spill-writer"
        thread.start()
    }

    /// Commits what is queued, then ends the thread and waits for it.
    func stop() {
        queue.requestStop()
        exited.wait()
    }
}
