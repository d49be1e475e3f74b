import Dispatch
import Foundation
import KVCache
import KVCore
import KVSpill

/// `kvctl bench store`: how fast the spill tier writes and reads a long prefix's KV, against a
/// plain file holding the same bytes, measured in the same run on the same disk.
///
/// - plain write: each block copied out of the arena into a buffer and `write`n to one file,
///   then `fsync` (what any durable spill must at least do);
/// - plain read: the file read back block by block into the arena (page cache warm, as for the
///   store: both were just written);
/// - spill, synchronous: every `spill` commits its block (one transaction + fsync per block);
/// - spill, background: `spill` copies into the queue; the writer commits batches; timed from
///   the first `spill` to `flush()` returning (the caller's own time is reported too);
/// - restore: the whole prefix restored block by block through `ColdPrefixStore.restore`
///   (read transaction, header and token checks, XXH64 over the payload, copy into the arena).
public struct StoreBench: Sendable {
    public var layout: KVLayout
    public var tokens: Int
    /// Where the bench creates a fresh subdirectory of its own (`prefixkv-bench-store.XXXXXX`)
    /// for the store and the plain file; only that subdirectory is removed afterwards.
    public var directory: String
    public var restoreRepeats: Int
    public var rounds: Int
    /// Told the bench's own working directory as soon as it exists (`kvctl` removes it when
    /// interrupted: a run leaves up to a few GiB there).
    public var onWorkDirectory: (@Sendable (String) -> Void)?

    public init(layout: KVLayout, tokens: Int = 8192, directory: String, restoreRepeats: Int = 5, rounds: Int = 3) {
        self.layout = layout
        self.tokens = tokens
        self.directory = directory
        self.restoreRepeats = restoreRepeats
        self.rounds = rounds
    }

    public struct Result: Sendable, Codable, Equatable {
        public var layout: String
        public var tokens: Int
        public var blocks: Int
        public var blockBytes: Int
        public var totalBytes: Int
        /// Rounds of the write paths (medians reported).
        public var rounds: Int
        public var plainWriteGBps: Double
        public var plainReadGBps: Double
        public var spillSyncGBps: Double
        public var spillBackgroundGBps: Double
        /// Background mode with `durable: false`: no fsync per commit, one in `flush()`.
        public var spillBackgroundSyncAtFlushGBps: Double
        /// Bytes over the time the callers of `spill` spent in it (background mode).
        public var spillBackgroundCallerGBps: Double
        public var spillCallP99Micros: Double
        public var restoreGBps: Double
        /// Restoring the whole prefix, median and worst of the repeats.
        public var restoreLatencyMillisMedian: Double
        public var restoreLatencyMillisMax: Double
        public var plainReadLatencyMillisMedian: Double
        /// Background spill (fsync per commit) over plain write (goal ≥ 0.5) and restore over
        /// plain read (goal ≥ 0.7).
        public var spillRatio: Double
        public var restoreRatio: Double
        /// Through a `KVCacheManager`: `admit` of the whole prefix from the store (median of the
        /// repeats), and, meanwhile, another thread's decode calls on its own sequence (`append`
        /// + `slotMapping`, back to back): their count and their slowest call — the time the
        /// admission kept others waiting — median over the repeats.
        public var admitRestoreMillisMedian: Double
        public var callsDuringAdmit: Int
        public var slowestCallDuringAdmitMillis: Double
    }

    /// Fails on a setting the bench cannot run with, naming the kvctl option: at least one block
    /// of tokens, token ids within `TokenID`, one round and one restore (without a restore the
    /// restore blocks are never written and the final comparison would report corruption), and
    /// an arena (the prefix twice) that fits in memory.
    public func validate() throws(OptionError) {
        guard tokens >= layout.blockSize, tokens <= Int(Int32.max) else {
            throw OptionError("--tokens", "must be in \(layout.blockSize)...\(Int32.max) (at least one block of \(layout.blockSize)), got \(tokens)")
        }
        try OptionChecks.atLeast(restoreRepeats, 1, "--repeats")
        try OptionChecks.atLeast(rounds, 1, "--rounds")
        try OptionChecks.fitsInMemory(blocks: 2 * (tokens / layout.blockSize) + 1, bytesPerBlock: layout.blockBytes, "--tokens")
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw OptionError("--dir", "must be an existing directory, got \(directory)")
        }
    }

    /// A check of the bench's own run that failed: the store lost or changed a block.
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    public func run() throws -> Result {
        try validate()
        let blocks = tokens / layout.blockSize
        let bytes = blocks * layout.blockBytes
        // Everything goes into a fresh directory of our own under `directory` (an existing one),
        // and only that is removed afterwards: `directory` may be `.` or a home directory.
        let work = try makeUniqueDirectory(under: directory)
        onWorkDirectory?(work)
        defer { try? FileManager.default.removeItem(atPath: work) }
        // Blocks 1...blocks hold the prefix; blocks+1... receive restores.
        let arena = KVPageArena(layout: layout, capacityBlocks: 2 * blocks + 1)
        fillRandom(arena)
        let prefix = (0..<blocks).map { i in (0..<layout.blockSize).map { TokenID(i * layout.blockSize + $0) } }

        // Write paths, interleaved round by round so a slow moment of a shared disk hits all of
        // them alike; each figure is the median over the rounds.
        var writeSeconds: [Double] = [], syncSeconds: [Double] = [], backgroundSeconds: [Double] = [], deferredSeconds: [Double] = []
        var readSeconds: [Double] = [], callNanos: [Double] = []
        var keys: [PrefixKey] = []
        var store: LMDBSpillStore!
        for _ in 0..<rounds {
            writeSeconds.append(try plainWrite(arena, blocks: blocks, path: work + "/plain.bin"))

            try? FileManager.default.removeItem(atPath: work + "/sync")
            let syncStore = try openStore(work + "/sync", mode: .synchronous, bytes: bytes)
            keys = chainKeys(syncStore, prefix)
            var t0 = monotonicNanos()
            for i in 0..<blocks { spill(syncStore, keys[i], prefix[i], block: BlockID(Int32(i + 1)), arena) }
            syncSeconds.append(seconds(since: t0))
            syncStore.close()

            // Background, without a per-commit fsync: one fsync in flush(), as the plain file does.
            try? FileManager.default.removeItem(atPath: work + "/deferred")
            let deferred = try openStore(work + "/deferred", mode: .background(queueLimitBytes: 2 * bytes), bytes: bytes, durable: false)
            t0 = monotonicNanos()
            for i in 0..<blocks { spill(deferred, keys[i], prefix[i], block: BlockID(Int32(i + 1)), arena) }
            deferred.flush()
            deferredSeconds.append(seconds(since: t0))
            deferred.close()

            store?.close()
            try? FileManager.default.removeItem(atPath: work + "/background")
            store = try openStore(work + "/background", mode: .background(queueLimitBytes: 2 * bytes), bytes: bytes)
            callNanos.removeAll()
            t0 = monotonicNanos()
            for i in 0..<blocks {
                let c0 = monotonicNanos()
                spill(store, keys[i], prefix[i], block: BlockID(Int32(i + 1)), arena)
                callNanos.append(Double(monotonicNanos() - c0))
            }
            store.flush()
            backgroundSeconds.append(seconds(since: t0))
            guard store.counters.recordsWritten == blocks else {
                throw Failure(description: "StoreBench: \(store.counters) — not every block was written")
            }
        }

        // Restores of the whole prefix.
        // Reads: the plain file and the store, alternately, from the page cache.
        var restoreSeconds: [Double] = []
        for _ in 0..<restoreRepeats {
            readSeconds.append(try plainRead(arena, blocks: blocks, path: work + "/plain.bin"))
            let t0 = monotonicNanos()
            for i in 0..<blocks {
                let hit = prefix[i].withUnsafeBufferPointer {
                    store.restore(key: keys[i], namespace: .default, tokens: $0, into: BlockID(Int32(blocks + 1 + i)), arena: arena)
                }
                guard hit else { throw Failure(description: "StoreBench: block \(i) did not restore") }
            }
            restoreSeconds.append(seconds(since: t0))
        }
        store.close()
        for i in [0, blocks / 2, blocks - 1] { try checkSame(arena, BlockID(Int32(i + 1)), BlockID(Int32(blocks + 1 + i))) }
        let (admitSeconds, calls, slowest) = try admitBesideDecode(storePath: work + "/background", prefix: prefix, bytes: bytes)

        let gb = Double(bytes) / 1e9
        let restore = TimingSummary(restoreSeconds), plainRead = TimingSummary(readSeconds)
        let write = TimingSummary(writeSeconds).median, background = TimingSummary(backgroundSeconds).median
        return Result(
            layout: layout.description, tokens: blocks * layout.blockSize, blocks: blocks, blockBytes: layout.blockBytes, totalBytes: bytes,
            rounds: rounds, plainWriteGBps: gb / write, plainReadGBps: gb / plainRead.median,
            spillSyncGBps: gb / TimingSummary(syncSeconds).median, spillBackgroundGBps: gb / background,
            spillBackgroundSyncAtFlushGBps: gb / TimingSummary(deferredSeconds).median,
            spillBackgroundCallerGBps: gb / (callNanos.reduce(0, +) / 1e9),
            spillCallP99Micros: TimingSummary(callNanos).p99 / 1000,
            restoreGBps: gb / restore.median,
            restoreLatencyMillisMedian: restore.median * 1000, restoreLatencyMillisMax: restoreSeconds.max()! * 1000,
            plainReadLatencyMillisMedian: plainRead.median * 1000,
            spillRatio: write / background, restoreRatio: plainRead.median / restore.median,
            admitRestoreMillisMedian: TimingSummary(admitSeconds).median * 1000,
            callsDuringAdmit: Int(TimingSummary(calls.map(Double.init)).median),
            slowestCallDuringAdmitMillis: TimingSummary(slowest).median * 1000)
    }

    /// A manager over the store that holds the prefix: each repeat admits it (restoring every
    /// block) while another thread runs decode calls on a sequence of its own, timing each call.
    /// Between repeats a filler prompt evicts the prefix from memory again.
    private func admitBesideDecode(storePath: String, prefix: [[TokenID]], bytes: Int) throws -> ([Double], [Int], [Double]) {
        let blocks = prefix.count
        // Room for the prefix and the filler's spills: at the bench's limit the filler's would
        // evict the prefix's least recently touched (deepest) blocks.
        let store = try openStore(storePath, mode: .background(queueLimitBytes: 2 * bytes), bytes: 2 * bytes)
        defer { store.close() }
        let cache = try KVCacheManager(layout: layout, capacityBlocks: blocks + 1, allocatesPages: true, coldStore: store)  // the prefix or the filler, and the decoder's block
        let tokens = prefix.flatMap { $0 }
        let filler = tokens.map { $0 + TokenID(tokens.count) }
        let decoder = try cache.admit([TokenID(Int32.max - 1)], namespace: "bench-decode")
        var admitSeconds: [Double] = [], counts: [Int] = [], slowest: [Double] = []
        for _ in 0..<restoreRepeats {
            try cache.release(try cache.admit(filler).sequence)   // evicts (re-spills) the prefix
            store.flush()
            let running = Locked(true)
            let calls = Locked<[Double]>([])
            let group = DispatchGroup()
            let started = DispatchSemaphore(value: 0)
            DispatchQueue.global().async(group: group) {
                var mine: [Double] = []
                started.signal()
                while running.withLock({ $0 }) {
                    let c0 = monotonicNanos()
                    do {
                        try cache.append([1], to: decoder.sequence)
                        _ = try cache.slotMapping(for: [decoder.sequence])
                        try cache.truncate(decoder.sequence, toTokenCount: 1)   // stays one block long
                    } catch { break }
                    mine.append(Double(monotonicNanos() - c0) / 1e9)
                }
                calls.withLock { $0 = mine }
            }
            started.wait()
            let t0 = monotonicNanos()
            let a = try cache.admit(tokens)
            admitSeconds.append(seconds(since: t0))
            running.withLock { $0 = false }
            group.wait()
            guard a.storeHitTokens == tokens.count else {
                throw Failure(description: "StoreBench: the admission restored \(a.storeHitTokens) of \(tokens.count) tokens (\(a.memoryHitTokens) in memory)")
            }
            try cache.release(a.sequence)
            let mine = calls.withLock { $0 }
            counts.append(mine.count)
            slowest.append(mine.max() ?? 0)
        }
        try cache.release(decoder.sequence)
        return (admitSeconds, counts, slowest)
    }

    // MARK: - Pieces

    private func openStore(_ path: String, mode: SpillStoreConfiguration.WriteMode, bytes: Int, durable: Bool = true) throws -> LMDBSpillStore {
        var config = SpillStoreConfiguration(path: path, layout: layout, limitBytes: 2 * bytes, writeMode: mode, durable: durable)
        // Start at the final size: the bench measures writing, not the first map growths.
        config.initialMapSizeBytes = config.mapSizeLimit
        return try LMDBSpillStore(config)
    }

    private func chainKeys(_ store: LMDBSpillStore, _ prefix: [[TokenID]]) -> [PrefixKey] {
        var parent = store.rootKey(namespace: .default)
        return prefix.map { tokens in
            parent = tokens.withUnsafeBufferPointer { store.childKey(parent: parent, tokens: $0) }
            return parent
        }
    }

    private func spill(_ store: LMDBSpillStore, _ key: PrefixKey, _ tokens: [TokenID], block: BlockID, _ arena: KVPageArena) {
        tokens.withUnsafeBufferPointer { store.spill(key: key, namespace: .default, tokens: $0, block: block, arena: arena) }
    }


    /// Writes the prefix's blocks to a new file, block by block through one buffer, then fsyncs.
    private func plainWrite(_ arena: KVPageArena, blocks: Int, path: String) throws -> Double {
        unlink(path)
        let fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0o644)
        guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        defer { close(fd) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: layout.blockBytes, alignment: 64)
        defer { buffer.deallocate() }
        let t0 = monotonicNanos()
        for i in 0..<blocks {
            arena.copyOut(BlockID(Int32(i + 1)), into: buffer)
            guard write(fd, buffer.baseAddress, buffer.count) == buffer.count else { throw POSIXError(.EIO) }
        }
        guard fsync(fd) == 0 else { throw POSIXError(.EIO) }
        return seconds(since: t0)
    }

    /// Reads the file back block by block into the arena's restore blocks.
    private func plainRead(_ arena: KVPageArena, blocks: Int, path: String) throws -> Double {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        defer { close(fd) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: layout.blockBytes, alignment: 64)
        defer { buffer.deallocate() }
        let t0 = monotonicNanos()
        for i in 0..<blocks {
            guard pread(fd, buffer.baseAddress, buffer.count, off_t(i * buffer.count)) == buffer.count else { throw POSIXError(.EIO) }
            arena.copyIn(BlockID(Int32(blocks + 1 + i)), from: UnsafeRawBufferPointer(buffer))
        }
        return seconds(since: t0)
    }

    private func fillRandom(_ arena: KVPageArena) {
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        for block in 1..<arena.capacityBlocks {
            for layer in 0..<layout.layerCount {
                for kind in KVKind.allCases {
                    arena.withUnsafeMutableBlockBytes(BlockID(Int32(block)), layer: layer, kind: kind) { b in
                        let words = b.bindMemory(to: UInt64.self)
                        for j in words.indices { state = state &* 6364136223846793005 &+ 1442695040888963407; words[j] = state }
                    }
                }
            }
        }
    }

    private func checkSame(_ arena: KVPageArena, _ a: BlockID, _ b: BlockID) throws {
        let n = layout.blockBytes
        var x = [UInt8](repeating: 0, count: n), y = [UInt8](repeating: 1, count: n)
        x.withUnsafeMutableBytes { arena.copyOut(a, into: $0) }
        y.withUnsafeMutableBytes { arena.copyOut(b, into: $0) }
        guard x == y else { throw Failure(description: "StoreBench: restored block \(b) differs from spilled block \(a)") }
    }

    /// Creates `parent/prefixkv-bench-store.XXXXXX` with `mkdtemp` (a new name every run, so it
    /// can never be a directory that was there before).
    private func makeUniqueDirectory(under parent: String) throws -> String {
        var template = Array((parent + "/prefixkv-bench-store.XXXXXX").utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        guard made != nil else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        return String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private func seconds(since t0: UInt64) -> Double { Double(monotonicNanos() - t0) / 1e9 }

    public static func table(_ r: Result) -> String {
        let rows: [[String]] = [
            ["plain file write + fsync", fixed(r.plainWriteGBps, 3), "", "1.00"],
            ["spill, synchronous (commit + fsync per block)", fixed(r.spillSyncGBps, 3), "", fixed(r.spillSyncGBps / r.plainWriteGBps, 2)],
            ["spill, background, fsync per commit (first spill → flush)", fixed(r.spillBackgroundGBps, 3), "", fixed(r.spillRatio, 2)],
            ["spill, background, one fsync at flush (durable: false)", fixed(r.spillBackgroundSyncAtFlushGBps, 3), "",
             fixed(r.spillBackgroundSyncAtFlushGBps / r.plainWriteGBps, 2)],
            ["spill, background (caller's time in spill)", fixed(r.spillBackgroundCallerGBps, 3), "p99 call \(fixed(r.spillCallP99Micros, 0)) µs", ""],
            ["plain file read", fixed(r.plainReadGBps, 3), "\(fixed(r.plainReadLatencyMillisMedian, 1)) ms", "1.00"],
            ["restore (verified)", fixed(r.restoreGBps, 3),
             "\(fixed(r.restoreLatencyMillisMedian, 1)) ms (max \(fixed(r.restoreLatencyMillisMax, 1)))", fixed(r.restoreRatio, 2)],
            ["admit through the manager, restoring the prefix", fixed(Double(r.totalBytes) / 1e6 / r.admitRestoreMillisMedian, 3),
             "\(fixed(r.admitRestoreMillisMedian, 1)) ms", ""],
            ["another thread's decode calls meanwhile", "", "\(r.callsDuringAdmit) calls, slowest \(fixed(r.slowestCallDuringAdmitMillis, 2)) ms", ""],
        ]
        let head = "median of \(r.rounds) interleaved rounds; \(r.tokens)-token prefix, \(r.blocks) blocks of \(r.blockBytes / 1024) KiB (\(r.layout)), \(fixed(Double(r.totalBytes) / 1_048_576, 0)) MiB"
        let goals = "goals: spill ≥ 0.50 × plain write: \(r.spillRatio >= 0.5 ? "met" : "NOT met"); restore ≥ 0.70 × plain read: \(r.restoreRatio >= 0.7 ? "met" : "NOT met")"
        return head + "\n" + renderTable(header: ["path", "GB/s", "latency (whole prefix)", "× plain"], rows: rows) + "\n" + goals
    }
}
