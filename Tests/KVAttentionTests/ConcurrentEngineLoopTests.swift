import Dispatch
import Foundation
import KVAttention
import KVCache
import KVCore
import KVSpill
import Testing

/// Several toy engines (`EngineLoopTests`' model) on their own threads over ONE `KVCacheManager`
/// and its arena: the same system prompts in the same two namespaces, so threads hit each other's
/// cached blocks and evict each other's; tight pools; in some schedules the LMDB spill tier
/// (synchronous and background writes), so one thread's evictions spill while another's
/// admissions restore.
///
/// Each thread owns its requests (and their fork children) and its own `DecodeAttention`; it writes
/// its new tokens' K/V through `slotMapping(for:)` into the shared arena, runs both kernels over
/// its `stepPlan(for:)`, checks every row against a dense float64 oracle over that sequence's own
/// history (the fake model: KV = f(namespace, layer, the token's whole prefix)), and reads every
/// position of every live sequence it owns back from the arena after each step.
///
/// Why each check is sound under concurrency:
/// - A thread writes only slots `slotMapping` gives it: positions at or above its sequence's
///   `firstOwnPosition`, in blocks no other live sequence holds (private, or copied on write).
///   Blocks it holds cannot be evicted, reused or restored into by anyone else, so every position
///   below its `computed` keeps the KV it wrote or found — if the manager is right.
/// - Free-running schedules use `.whenComputed` and report progress with `markComputed` only
///   after the K/V is written: another thread can match a block only once it is written, and the
///   manager's lock orders the writes before the other thread's admission (and so its reads).
///   Every hit, memory or store (the store only ever gets blocks evicted from the tree, i.e.
///   written), is then exact; an `InvalidatedHit` would be a bug in this mode and fails.
/// - `.atAdmission` makes blocks matchable before they are written (documented), so those
///   schedules run in lockstep: phase 1 admissions, cancellations, preemptions and forks (a
///   cancellation's `InvalidatedHit`s go to a board every thread reads); barrier; phase 2 every
///   thread applies the invalidations naming its sequences, appends and writes all its pending
///   prompt K/V (the contract: admitted prompts are prefilled in the next step); barrier;
///   phase 3 attention, checks, progress, releases; barrier. A block matched in phase 1 is written
///   by its owner in phase 2, before anyone's phase 3 reads.
/// - Nothing checks `lookup` against `admit` (another thread may change the cache in between),
///   nor pool-wide counts until every thread has joined.
///
/// Failures are collected (swift-testing's `Issue.record` needs the test's task) and recorded
/// after the threads join. `CONCURRENT_ENGINE_SCALE=k` runs k times as many schedules (and
/// `CONCURRENT_ENGINE_STEPS=n` n steps each); `CONCURRENT_ENGINE_BASE=n` shifts the seeds.
@Suite struct ConcurrentEngineLoopTests {
    typealias Request = EngineLoopTests.Request

    enum StoreMode: CustomStringConvertible {
        case none, synchronous, background
        var description: String { self == .none ? "none" : self == .synchronous ? "sync" : "background" }
    }

    struct Config: CustomStringConvertible {
        var seed: UInt64
        var threads: Int
        var blockSize: Int
        var dtype: KVDType
        var capacity: Int
        var publication: BlockPublication
        var store: StoreMode
        var steps: Int
        var kvHeads = 2
        var queryHeads = 4
        var headDim = 16
        var budget = 40
        var userBlocks = 2
        var storeLimitBytes = 4 << 20
        /// A metadata-only manager: the threads keep the K/V in one engine arena of their own and
        /// copy what `AppendResult.copy` names, after the call (as the API says an engine does).
        var engineKeepsKV = false
        var description: String {
            "seed \(seed) threads \(threads) bs \(blockSize) \(dtype) cap \(capacity) \(publication) store \(store) engineKV \(engineKeepsKV) heads \(queryHeads)/\(kvHeads)x\(headDim) budget \(budget)"
        }
        var lockstep: Bool { publication == .atAdmission }
    }

    /// A reusable barrier that a failing thread breaks (so the others stop instead of waiting).
    final class Barrier: @unchecked Sendable {
        let count: Int
        private let condition = NSCondition()
        private var waiting = 0, generation = 0
        private(set) var broken = false
        init(_ count: Int) { self.count = count }
        /// False once broken.
        func wait() -> Bool {
            condition.lock()
            defer { condition.unlock() }
            if broken { return false }
            let g = generation
            waiting += 1
            if waiting == count {
                waiting = 0
                generation += 1
                condition.broadcast()
                return true
            }
            while g == generation && !broken { condition.wait() }
            return !broken
        }
        func breakIt() {
            condition.lock()
            broken = true
            condition.broadcast()
            condition.unlock()
        }
    }

    /// What the threads share: the manager, its arena and store, the prompts, failures.
    final class Shared: @unchecked Sendable {
        let config: Config
        let layout: KVLayout
        let cache: KVCacheManager
        let arena: KVPageArena
        let storeObject: LMDBSpillStore?
        let storePath: String?
        let systemPrompts: [[TokenID]]
        /// Prompts any thread admitted (namespace index, tokens): whole hits across threads.
        let pastPrompts = Locked<[(Int, [TokenID])]>([])
        let failures = Locked<[String]>([])
        let barrier: Barrier
        /// Lockstep: the `InvalidatedHit`s cancellations returned this step.
        let board = Locked<[InvalidatedHit]>([])
        let stop = Locked(false)

        init(_ config: Config) throws {
            self.config = config
            layout = try KVLayout(layerCount: 2, kvHeadCount: config.kvHeads, headDim: config.headDim, blockSize: config.blockSize, dtype: config.dtype)
            if config.store != .none {
                let path = NSTemporaryDirectory() + "concurrent-engine-\(config.seed)-\(UUID().uuidString.prefix(8))"
                storePath = path
                let mode: SpillStoreConfiguration.WriteMode = config.store == .synchronous ? .synchronous : .background(queueLimitBytes: 1 << 20)
                storeObject = try LMDBSpillStore(SpillStoreConfiguration(path: path, layout: layout, limitBytes: config.storeLimitBytes,
                                                                         writeMode: mode, durable: false, model: "toy"))
            } else {
                storeObject = nil
                storePath = nil
            }
            cache = try KVCacheManager(layout: layout, capacityBlocks: config.capacity, allocatesPages: !config.engineKeepsKV, prefaultsPages: false,
                                       publishesBlocks: config.publication, coldStore: storeObject)
            arena = config.engineKeepsKV ? KVPageArena(layout: layout, capacityBlocks: config.capacity + 1, prefault: false) : cache.arena!
            var rng = SeededRandom(seed: config.seed &* 31 &+ 7)
            systemPrompts = (0..<3).map { _ in
                (0..<rng.int(1...(4 * config.blockSize + 3))).map { _ in TokenID(rng.int(0...40)) }
            }
            barrier = Barrier(config.threads)
        }

        deinit {
            storeObject?.close()
            if let storePath { try? FileManager.default.removeItem(atPath: storePath) }
        }

        func fail(_ message: String) {
            failures.withLock { $0.append(message) }
            stop.withLock { $0 = true }
            barrier.breakIt()
        }
        var stopped: Bool { stop.withLock { $0 } }
    }

    struct StopSchedule: Error {}

    final class Worker: @unchecked Sendable {   // used by its own thread only
        let shared: Shared
        let index: Int
        let config: Config
        var layout: KVLayout { shared.layout }
        var cache: KVCacheManager { shared.cache }
        var arena: KVPageArena { shared.arena }
        let attention: DecodeAttention
        let queryHeads: Int
        let tolerance: Float
        var rng: SeededRandom
        var live: [SequenceHandle: Request] = [:]
        var order: [SequenceHandle] = []
        /// Lockstep: sequences admitted in this phase 1, whose hits another thread may still hand over.
        var admittedThisPhase: Set<SequenceHandle> = []
        var kvMemo: [UInt64: [Float]] = [:]
        // figures
        var stepsRun = 0, rowsChecked = 0, admissions = 0, rejected = 0, hitTokens = 0, storeHitTokens = 0, wholeHits = 0
        var forks = 0, cows = 0, cancels = 0, invalidated = 0, truncations = 0, preemptions = 0, specSteps = 0, prefetches = 0
        var worst: Float = 0
        /// Copy-on-writes whose source left the tree before this (metadata-only) engine copied it.
        var lostCopySources: [String] = []
        var stepLabel: String {
            "\(config) thread \(index) step \(stepsRun)" + (lostCopySources.isEmpty ? "" : " [copy sources evicted before the copy: \(lostCopySources.suffix(4))]")
        }

        init(shared: Shared, index: Int) throws {
            self.shared = shared
            self.index = index
            config = shared.config
            rng = SeededRandom(seed: EngineLoopTests.mix(config.seed, UInt64(index) &+ 0xABCD))
            queryHeads = config.queryHeads
            attention = try DecodeAttention(layout: shared.layout, queryHeads: queryHeads, threads: 1 + index % 2,
                                            math: config.dtype == .bfloat16 ? .automatic : .fp32)
            tolerance = attention.effectiveMath == .bf16 ? 1e-2 : 5e-5
        }

        func fail(_ message: String) throws -> Never {
            shared.fail(message)
            throw StopSchedule()
        }
        func expect(_ condition: @autoclosure () throws -> Bool, _ message: @autoclosure () -> String) throws {
            if try !condition() { try fail("\(stepLabel): \(message())") }
        }

        func kv(_ hash: UInt64, layer: Int, kind: Int) -> [Float] {
            let key = EngineLoopTests.Engine.kvKey(hash, layer: layer, kind: kind)
            if let v = kvMemo[key] { return v }
            var g = SeededRandom(seed: key)
            let v = (0..<(layout.kvHeadCount * layout.headDim)).map { _ in layout.dtype.rounded(g.unit()) }
            kvMemo[key] = v
            return v
        }

        func check() { cache.checkInvariants() }

        /// An engine keeping the K/V itself makes the copy-on-write the manager names.
        /// It copies right after the call, before its next one; its thread may be descheduled in
        /// between (modelled by a short sleep), while other threads' calls go on.
        func applied(_ result: AppendResult) -> AppendResult {
            if config.engineKeepsKV, let c = result.copy {
                if rng.chance(0.5) { usleep(UInt32(rng.int(0...2000))) }
                arena.copyBlock(from: c.source, to: c.destination)
                // Diagnosis: a source that is neither cached nor held by this thread's sequences
                // any more was evicted (and maybe written by another thread) before the copy.
                let held = order.contains { h in (try? cache.blockTable(of: h))?.contains(c.source.rawValue) ?? false }
                if !cache.isCached(c.source.rawValue) && !held {
                    lostCopySources.append("\(c.source)->\(c.destination) at step \(stepsRun) (refcount now \(cache.refcount(of: c.source.rawValue)))")
                }
            }
            return result
        }

        func orNil<T>(_ body: () throws(KVCacheError) -> T) throws(KVCacheError) -> T? {
            do { return try body() } catch {
                if case .insufficientBlocks = error { return nil }
                throw error
            }
        }

        let namespaces: [Namespace] = ["tenant-a", "tenant-b"]

        // MARK: events

        func admitSome() throws {
            var burst: (Int, [TokenID])? = nil
            for _ in 0..<rng.int(0...3) where live.count < 6 {
                var nsIndex = rng.int(0...1)
                var prompt: [TokenID]
                let past = shared.pastPrompts.withLock { p in p.isEmpty ? nil : p[Int(UInt64(truncatingIfNeeded: rng.next()) % UInt64(p.count))] }
                if let (i, p) = burst, rng.chance(0.5) {
                    nsIndex = i
                    prompt = p
                } else if let (i, p) = past, rng.chance(0.35) {
                    // another thread's (or this one's) earlier prompt: a whole hit if still cached
                    nsIndex = i
                    prompt = p
                } else {
                    prompt = shared.systemPrompts[rng.int(0...(shared.systemPrompts.count - 1))]
                    let user = rng.chance(0.2) ? 0 : rng.int(1...(config.userBlocks * config.blockSize + 5))
                    prompt += (0..<user).map { _ in TokenID(rng.int(0...40)) }
                    if rng.chance(0.3) {
                        let whole = max(1, prompt.count / config.blockSize) * config.blockSize
                        while prompt.count < whole { prompt.append(TokenID(rng.int(0...40))) }
                        prompt = Array(prompt.prefix(whole))
                    }
                }
                let ns = namespaces[nsIndex]
                if config.store != .none && rng.chance(0.2) {
                    _ = try orNil({ () throws(KVCacheError) in try cache.prefetch(prompt, namespace: ns) })
                    prefetches += 1
                    check()
                }
                // Another thread may change the cache between a lookup and an admission: run it, compare nothing.
                if rng.chance(0.3) { _ = try cache.lookup(prompt, namespace: ns, probeStore: config.store != .none) }
                guard let admission = try orNil({ () throws(KVCacheError) in try cache.admit(prompt, namespace: ns) }) else {
                    rejected += 1
                    check()
                    continue
                }
                check()
                admissions += 1
                hitTokens += admission.cachedTokenCount
                storeHitTokens += admission.storeHitTokens
                if admission.cachedTokenCount == prompt.count { wholeHits += 1 }
                try expect(admission.cachedTokenCount % config.blockSize == 0 || admission.cachedTokenCount == prompt.count, "hits are whole blocks")
                try expect(admission.memoryHitTokens + admission.storeHitTokens == admission.cachedTokenCount || config.lockstep,
                           "admission \(admission.memoryHitTokens)+\(admission.storeHitTokens) != cached \(admission.cachedTokenCount)")
                if !config.lockstep {
                    // Under .whenComputed nobody hands this sequence's hits over.
                    try expect(try cache.firstOwnPosition(of: admission.sequence) == admission.cachedTokenCount, "firstOwnPosition after admit")
                }
                let table = try cache.blockTable(of: admission.sequence)
                try expect(table == admission.blockTable, "block table after admit")
                var r = Request(handle: admission.sequence, namespace: ns, tokens: [], hashes: [], computed: admission.cachedTokenCount,
                                target: prompt.count + rng.int(1...(3 * config.blockSize)), decoding: false)
                for t in prompt { r.push(t) }
                live[r.handle] = r
                order.append(r.handle)
                admittedThisPhase.insert(r.handle)
                shared.pastPrompts.withLock { p in
                    p.append((nsIndex, prompt))
                    if p.count > 64 { p.removeFirst(p.count - 64) }
                }
                burst = (nsIndex, prompt)
                // The hit's K/V, read back now: exact under .whenComputed (written before it was
                // matchable); in lockstep it may still be another thread's to write this step.
                if !config.lockstep { try checkArena(only: r.handle) }
            }
        }

        func remove(_ h: SequenceHandle) {
            live[h] = nil
            order.removeAll { $0 == h }
        }

        func handle(invalidated hits: [InvalidatedHit]) throws {
            guard !hits.isEmpty else { return }
            if !config.lockstep { try fail("\(stepLabel): an InvalidatedHit under .whenComputed: \(hits)") }
            shared.board.withLock { $0 += hits }
        }

        /// Lockstep phase 2: the hand-overs naming this thread's sequences.
        func applyBoard() {
            let hits = shared.board.withLock { $0 }
            for hit in hits {
                guard var r = live[hit.sequence] else { continue }
                invalidated += 1
                r.computed = min(r.computed, hit.validTokens)
                if r.computed < r.tokens.count { r.decoding = false }
                live[hit.sequence] = r
            }
        }

        func cancelSome() throws {
            for h in order where rng.chance(0.05) || (live[h].map { !$0.decoding && $0.computed < $0.tokens.count } ?? false && rng.chance(0.1)) {
                guard let r = live[h] else { continue }
                cancels += 1
                var computed = r.computed
                if r.decoding && rng.chance(0.5) {
                    let t = TokenID(rng.int(0...40))
                    if try orNil({ () throws(KVCacheError) in try applied(cache.append([t], to: h)) }) != nil {
                        check()
                        computed = r.tokens.count
                    }
                }
                // Lockstep: a hit admitted this phase may have been handed over (unwritten) by
                // another thread's cancellation this thread learns of only in phase 2; telling
                // fewer tokens is always safe (hits are never dropped), telling stale ones is not.
                if config.lockstep && admittedThisPhase.contains(h) { computed = 0 }
                let hits = try cache.release(h, computedTokens: computed)
                check()
                remove(h)
                try handle(invalidated: hits)
            }
        }

        func preemptSome() throws {
            for h in order where rng.chance(0.04) {
                guard var r = live[h], r.decoding, r.tokens.count >= 2 else { continue }
                let keep = rng.int(1...(r.tokens.count - 1))
                guard try orNil({ () throws(KVCacheError) in try applied(cache.truncate(h, toTokenCount: keep)) }) != nil else { check(); continue }
                check()
                truncations += 1
                try expect(try cache.tokenCount(of: h) == keep, "tokenCount after truncate")
                try expect(try cache.tokens(of: h) == Array(r.tokens.prefix(keep)), "tokens after truncate")
                r.computed = keep
                if rng.chance(0.5) {
                    let again = Array(r.tokens[keep...])
                    if try orNil({ () throws(KVCacheError) in try applied(cache.append(again, to: h)) }) == nil {
                        check()
                        r.drop(to: keep)
                        live[h] = r
                        continue
                    }
                    check()
                    r.decoding = false
                } else {
                    r.drop(to: keep)
                }
                live[h] = r
            }
        }

        func forkSome() throws {
            for h in order where rng.chance(0.08) && live.count < 8 {
                guard let r = live[h], r.decoding else { continue }
                let children = try cache.fork(h, count: rng.int(1...3))
                check()
                forks += 1
                for c in children {
                    var child = r
                    child.handle = c
                    child.target = r.tokens.count + rng.int(1...(2 * config.blockSize))
                    live[c] = child
                    order.append(c)
                    try expect(try cache.firstOwnPosition(of: c) == (try cache.firstOwnPosition(of: h)), "fork child's firstOwnPosition")
                }
            }
        }

        // MARK: one step

        struct Row {
            var sequence: SequenceHandle
            var position: Int
        }

        /// What phase 2 leaves to phase 3.
        struct Scheduled {
            var rowSpans: [SlotSpan] = []
            var rows: [Row] = []
            var wrote: [SequenceHandle: Int] = [:]
            var drafts: [SequenceHandle: Int] = [:]
        }

        func events() throws {
            admittedThisPhase = []
            try admitSome()
            try cancelSome()
            try preemptSome()
            try forkSome()
        }

        /// Appends, maps and writes this step's K/V.
        func scheduleAndWrite() throws -> Scheduled {
            var s = Scheduled()
            var writeSpans: [SlotSpan] = []
            var budget = config.budget
            for h in order.shuffledDeterministically(&rng) {
                guard var r = live[h] else { continue }
                if r.decoding {
                    guard budget > 0 else { continue }
                    let d = rng.chance(0.15) ? rng.int(2...4) : 1
                    let new = (0..<d).map { _ in TokenID(rng.int(0...40)) }
                    guard let result = try orNil({ () throws(KVCacheError) in try applied(cache.append(new, to: h)) }) else {
                        check()
                        preemptions += 1
                        try cache.release(h)   // all its KV is written
                        check()
                        remove(h)
                        continue
                    }
                    check()
                    if result.copy != nil { cows += 1 }
                    let start = r.tokens.count
                    for t in new { r.push(t) }
                    live[h] = r
                    writeSpans.append(.last(d, of: h))
                    s.rowSpans.append(.last(d, of: h))
                    s.rows += (start..<r.tokens.count).map { Row(sequence: h, position: $0) }
                    s.wrote[h] = d
                    if d > 1 { s.drafts[h] = d; specSteps += 1 }
                    budget -= d
                } else {
                    let remaining = r.tokens.count - r.computed
                    if remaining == 0 {
                        s.rowSpans.append(.range((r.tokens.count - 1)..<r.tokens.count, of: h))
                        s.rows.append(Row(sequence: h, position: r.tokens.count - 1))
                        s.wrote[h] = 0
                        continue
                    }
                    let c: Int
                    if config.lockstep {
                        c = remaining   // matchable since admission: prefilled in the next step, whole
                    } else {
                        guard budget > 0 else { continue }
                        c = min(remaining, rng.int(1...max(3 * config.blockSize + 1, config.budget / 2)), max(1, budget))
                    }
                    if c >= 2 && rng.chance(0.15) {
                        let cut = r.computed + rng.int(1...(c - 1))
                        let spans: [SlotSpan] = [.range(r.computed..<cut, of: h), .range(cut..<(r.computed + c), of: h)]
                        writeSpans += spans
                        s.rowSpans += spans
                    } else {
                        let span: SlotSpan = r.computed + c == r.tokens.count && rng.chance(0.5)
                            ? .from(r.computed, of: h) : .range(r.computed..<(r.computed + c), of: h)
                        writeSpans.append(span)
                        s.rowSpans.append(span)
                    }
                    s.rows += (r.computed..<(r.computed + c)).map { Row(sequence: h, position: $0) }
                    s.wrote[h] = c
                    budget -= c
                }
            }
            guard !s.rows.isEmpty else { return s }
            let mapping = try cache.slotMapping(for: writeSpans)
            var expectedPositions: [Int32] = []
            var writeHashes: [UInt64] = []
            for span in writeSpans {
                let r = live[span.sequence]!
                let range = span.positions.resolved(tokenCount: r.tokens.count)!
                expectedPositions += range.map { Int32($0) }
                writeHashes += range.map { r.hashes[$0] }
            }
            try expect(mapping.positions == expectedPositions, "mapping positions")
            // Under .whenComputed every slot is in a block only this sequence holds, outside the
            // tree (published blocks are written ones). Under .atAdmission a prompt block joined
            // the tree at admission, and other threads may hold it already (the documented
            // hazard): then only a cached block may be shared.
            for (i, slot) in mapping.slots.enumerated() {
                let block = slot / Int32(layout.blockSize)
                let rc = cache.refcount(of: block), cached = cache.isCached(block)
                if config.lockstep ? (rc > 1 && !cached) : (rc != 1 || cached) {
                    try fail("\(stepLabel): mapping slot \(i) (position \(mapping.positions[i])) is in block \(block) with refcount \(rc), cached \(cache.isCached(block))")
                }
            }
            for layer in 0..<layout.layerCount {
                let keys = writeHashes.flatMap { kv($0, layer: layer, kind: 0) }
                let values = writeHashes.flatMap { kv($0, layer: layer, kind: 1) }
                try arena.store(keys: keys, values: values, layer: layer, slots: mapping)
            }
            return s
        }

        /// Attention over the step, against the oracle; progress, drafts, finished requests.
        func attendAndFinish(_ s: Scheduled) throws {
            guard !s.rows.isEmpty else { try checkArena(); return }
            let rows = s.rows
            let plan = try cache.stepPlan(for: s.rowSpans)
            plan.checkInvariants()
            try expect(plan.rowCount == rows.count, "plan rows")
            for (i, row) in rows.enumerated() {
                let table = try cache.blockTable(of: row.sequence)
                let want = Array(table[...(row.position / layout.blockSize)])
                try expect(Array(plan.batch.table(i)) == want && Int(plan.batch.tokenCounts[i]) == row.position + 1, "plan row \(i) table")
            }
            let d = layout.headDim, hq = queryHeads
            let query = (0..<(rows.count * hq * d)).map { _ in rng.unit() }
            let scale = DecodeAttention.defaultScale(headDim: d)
            for layer in 0..<layout.layerCount {
                let (bif, paged) = try arena.withUnsafeLayerPages(layer: layer) { pages in
                    (try attention.bifurcated(query: query, pages: pages, plan: plan, scale: scale),
                     try attention.paged(query: query, pages: pages, batch: plan.batch, scale: scale))
                }
                let oracle = denseOracle(rows: rows, query: query, layer: layer, scale: scale)
                let eb = relativeError(bif, oracle), ep = relativeError(paged, oracle)
                worst = max(worst, eb, ep)
                if eb > tolerance || ep > tolerance {
                    let bad = worstRows(bif, oracle, rows: rows)
                    try fail("""
                        \(stepLabel) layer \(layer): bifurcated \(eb) paged \(ep) > \(tolerance); \
                        worst rows \(bad.map { "\($0.0)=\(rows[$0.0].sequence)@\(rows[$0.0].position) err \($0.1)" })
                        """)
                }
            }
            rowsChecked += rows.count
            stepsRun += 1
            for h in order {
                guard let n = s.wrote[h], var r = live[h] else { continue }
                r.computed += n
                if !r.decoding && r.computed == r.tokens.count { r.decoding = true }
                live[h] = r
                try cache.markComputed(h, computedTokens: r.computed)
                check()
            }
            for h in order {
                guard let n = s.drafts[h], var r = live[h] else { continue }
                let accepted = rng.int(1...n)
                guard accepted < n else { continue }
                let count = r.tokens.count - (n - accepted)
                guard try orNil({ () throws(KVCacheError) in try applied(cache.truncate(h, toTokenCount: count)) }) != nil else { check(); continue }
                check()
                truncations += 1
                r.drop(to: count)
                r.computed = count
                live[h] = r
            }
            for h in order {
                guard let r = live[h], r.decoding, r.tokens.count >= r.target else { continue }
                try cache.release(h)
                check()
                remove(h)
            }
            try checkArena()
        }

        /// Every written position of this thread's live sequences (or of one) holds exactly its
        /// model's K/V: blocks it holds are nobody else's to write.
        func checkArena(only: SequenceHandle? = nil) throws {
            let bs = layout.blockSize
            for h in only.map({ [$0] }) ?? order {
                guard let r = live[h], r.computed > 0 else { continue }
                let table = try cache.blockTable(of: h)
                try expect(try cache.tokens(of: h) == r.tokens, "tokens of \(h)")
                let slots = (0..<r.computed).map { table[$0 / bs] * Int32(bs) + Int32($0 % bs) }
                for layer in 0..<layout.layerCount {
                    let (k, v) = try arena.load(layer: layer, slots: slots)
                    let width = layout.kvHeadCount * layout.headDim
                    for p in 0..<r.computed {
                        let wantK = kv(r.hashes[p], layer: layer, kind: 0), wantV = kv(r.hashes[p], layer: layer, kind: 1)
                        if Array(k[(p * width)..<((p + 1) * width)]) != wantK || Array(v[(p * width)..<((p + 1) * width)]) != wantV {
                            let b = table[p / bs]
                            try fail("""
                                \(stepLabel): \(h) position \(p) of \(r.tokens.count) (block \(b), refcount \(cache.refcount(of: b)), \
                                cached \(cache.isCached(b))) holds other KV than its own (computed \(r.computed), \
                                firstOwn \(try cache.firstOwnPosition(of: h)), layer \(layer))
                                """)
                        }
                    }
                }
            }
        }

        func denseOracle(rows: [Row], query: [Float], layer: Int, scale: Float) -> [Float] {
            EngineLoopTests.denseOracle(histories: rows.map { live[$0.sequence]!.hashes[...$0.position] }, query: query,
                                        layer: layer, scale: scale, layout: layout, queryHeads: queryHeads, kv: kv)
        }

        func worstRows(_ a: [Float], _ b: [Float], rows: [Row]) -> [(Int, Float)] {
            EngineLoopTests.worstRows(a, b, rowWidth: queryHeads * layout.headDim, tolerance: tolerance)
        }

        /// Free-running (`.whenComputed`): one step after another, no coordination.
        func runFree() throws {
            for _ in 0..<config.steps {
                if shared.stopped { return }
                try events()
                try attendAndFinish(try scheduleAndWrite())
            }
        }

        /// Lockstep (`.atAdmission`): the phases of the suite's comment, barriers between.
        func runLockstep() throws {
            for _ in 0..<config.steps {
                try events()
                guard shared.barrier.wait() else { throw StopSchedule() }
                applyBoard()
                let s = try scheduleAndWrite()
                guard shared.barrier.wait() else { throw StopSchedule() }
                if index == 0 { shared.board.withLock { $0 = [] } }   // everyone applied it before the barrier
                try attendAndFinish(s)
                guard shared.barrier.wait() else { throw StopSchedule() }
            }
        }

        func drain() throws {
            for h in order {
                guard let r = live[h] else { continue }
                let hits = try cache.release(h, computedTokens: r.computed)
                check()
                if !hits.isEmpty { try fail("\(stepLabel): drain release of a fully computed sequence handed over \(hits)") }
            }
            live = [:]
            order = []
        }

        func run() {
            do {
                if config.lockstep { try runLockstep() } else { try runFree() }
                try drain()
            } catch is StopSchedule {
                return
            } catch {
                shared.fail("\(stepLabel): \(error)")
            }
        }
    }

    struct Totals: CustomStringConvertible {
        var schedules = 0, steps = 0, rows = 0, admissions = 0, refused = 0, wholeHits = 0, hitTokens = 0, storeHitTokens = 0
        var forks = 0, copies = 0, cancels = 0, invalidated = 0, truncations = 0, preemptions = 0, specSteps = 0, prefetches = 0
        var spilled = 0, restored = 0, storeRestoreHits = 0, storeRestoreMisses = 0
        var worst: Float = 0
        var failures: [String] = []
        var description: String {
            """
            \(schedules) schedules, \(steps) thread-steps, \(rows) rows checked; \(admissions) admissions (\(refused) refused, \
            \(wholeHits) whole hits), \(hitTokens) hit tokens (\(storeHitTokens) from the store), \(prefetches) prefetches, \
            \(forks) forks, \(copies) copy-on-writes, \(cancels) cancels (\(invalidated) invalidated), \(truncations) truncations, \
            \(preemptions) preemptions, \(specSteps) speculative appends; spilled \(spilled), restored \(restored) blocks, \
            store restores \(storeRestoreHits) hits / \(storeRestoreMisses) misses; worst error \(worst)
            """
        }
    }

    static func run(_ config: Config, into totals: inout Totals) throws {
        let shared = try Shared(config)
        let workers = try (0..<config.threads).map { try Worker(shared: shared, index: $0) }
        let done = DispatchGroup()
        var threads: [Thread] = []
        for w in workers {
            done.enter()
            let t = Thread { w.run(); done.leave() }
            t.stackSize = 4 << 20
            threads.append(t)
        }
        for t in threads { t.start() }
        done.wait()
        let failures = shared.failures.withLock { $0 }
        if failures.isEmpty {
            shared.cache.checkInvariants()
            let stats = shared.cache.stats
            if stats.usedBlocks != 0 || stats.liveSequences != 0 {
                totals.failures.append("\(config): \(stats.usedBlocks) blocks, \(stats.liveSequences) sequences left after every thread released its own")
            }
            if let store = shared.storeObject {
                store.flush()
                _ = store.checkInvariants()
            }
        }
        totals.failures += failures
        totals.schedules += 1
        let stats = shared.cache.stats
        totals.spilled += stats.spilledBlocks
        totals.restored += stats.restoredBlocks
        if let store = shared.storeObject {
            let c = store.counters
            totals.storeRestoreHits += c.restoreHits
            totals.storeRestoreMisses += c.restoreMisses
        }
        for w in workers {
            totals.steps += w.stepsRun; totals.rows += w.rowsChecked; totals.admissions += w.admissions; totals.refused += w.rejected
            totals.wholeHits += w.wholeHits; totals.hitTokens += w.hitTokens; totals.storeHitTokens += w.storeHitTokens
            totals.forks += w.forks; totals.copies += w.cows; totals.cancels += w.cancels; totals.invalidated += w.invalidated
            totals.truncations += w.truncations; totals.preemptions += w.preemptions; totals.specSteps += w.specSteps
            totals.prefetches += w.prefetches; totals.worst = max(totals.worst, w.worst)
        }
    }

    static var scale: Int { Int(ProcessInfo.processInfo.environment["CONCURRENT_ENGINE_SCALE"] ?? "") ?? 1 }
    static var steps: Int? { Int(ProcessInfo.processInfo.environment["CONCURRENT_ENGINE_STEPS"] ?? "") }
    static var baseOffset: UInt64 { UInt64(ProcessInfo.processInfo.environment["CONCURRENT_ENGINE_BASE"] ?? "") ?? 0 }

    static func configs(count: Int, base: UInt64, publication: BlockPublication?, store: [StoreMode], engineKeepsKV: Bool = false) -> [Config] {
        var g = SeededRandom(seed: base)
        return (0..<count).map { i in
            let bs = [1, 2, 4, 8, 16][g.int(0...4)]
            let dtype = [KVDType.float32, .float16, .bfloat16][g.int(0...2)]
            let threads = g.int(2...4)
            let pub = publication ?? (g.chance(0.5) ? .atAdmission : .whenComputed)
            // Tight: a couple of requests per thread.
            let perRequest = (6 * bs + 3) / bs + 1
            let cap = g.int((threads * perRequest + perRequest)...(threads * 2 * perRequest + 2 * perRequest))
            let storeMode = store[g.int(0...(store.count - 1))]
            var c = Config(seed: base &+ UInt64(i), threads: threads, blockSize: bs, dtype: dtype, capacity: cap, publication: pub,
                           store: storeMode, steps: steps ?? 40)
            let shape = g.int(0...3)
            if shape == 1 { c.kvHeads = 1; c.queryHeads = 8; c.headDim = 32 }
            if shape == 2 { c.kvHeads = 2; c.queryHeads = 2; c.headDim = 32 }
            if g.chance(0.15) { c.storeLimitBytes = 16 << 10 }   // a store that evicts too
            if storeMode == .none && engineKeepsKV && g.chance(0.5) {
                c.engineKeepsKV = true
                c.capacity = threads * perRequest + perRequest   // the tightest: copy sources get reused
            }
            return c
        }
    }

    static func runAll(_ configs: [Config], label: String) throws -> Totals {
        var totals = Totals()
        let start = Date()
        for c in configs {
            try run(c, into: &totals)
            if !totals.failures.isEmpty { break }
        }
        print("ConcurrentEngineLoopTests \(label): \(totals) in \(String(format: "%.1f", Date().timeIntervalSince(start))) s")
        for f in totals.failures.prefix(10) { print("FAILURE: \(f)"); Issue.record(Comment(rawValue: f)) }
        return totals
    }

    @Test func sharedManagerInMemory() throws {
        let t = try Self.runAll(Self.configs(count: 4 * Self.scale, base: 7_000 + Self.baseOffset, publication: nil, store: [.none], engineKeepsKV: true),
                                label: "memory")
        #expect(t.rows > 300 && t.hitTokens > 0 && t.forks > 0, "\(t)")
    }

    @Test func sharedManagerWithTheSpillStore() throws {
        let t = try Self.runAll(Self.configs(count: 4 * Self.scale, base: 70_000 + Self.baseOffset, publication: .whenComputed,
                                             store: [.synchronous, .background]), label: "store whenComputed")
        #expect(t.rows > 300 && t.spilled > 0, "\(t)")
    }

    @Test func sharedManagerWithTheSpillStoreInLockstep() throws {
        let t = try Self.runAll(Self.configs(count: 3 * Self.scale, base: 700_000 + Self.baseOffset, publication: .atAdmission,
                                             store: [.synchronous, .background]), label: "store atAdmission lockstep")
        #expect(t.rows > 200 && t.spilled > 0, "\(t)")
    }
}

/// What the concurrent engine loop found, fixed: each failed before its fix.
@Suite struct ConcurrentManagerFixTests {
    /// A cold store that claims to hold every block (`contains`) but whose restores miss (a record
    /// lost between `prefetch`'s probe and its restore: evicted by the store's LRU, or a spill
    /// dropped from a full background queue), and whose first `publish(stats:)` is a gate: the
    /// window after `prefetch`'s admission finished and before it releases its warm sequence.
    final class LosingStore: ColdPrefixStore, @unchecked Sendable {
        let inWindow = DispatchSemaphore(value: 0), proceed = DispatchSemaphore(value: 0)
        let gated = Locked(false)
        func rootKey(namespace: Namespace) -> PrefixKey { PrefixKey(EngineLoopTests.namespaceSeed(namespace), 0, 0, 0) }
        func childKey(parent: PrefixKey, tokens: UnsafeBufferPointer<TokenID>) -> PrefixKey {
            PrefixKey(tokens.reduce(parent.bytes.0) { EngineLoopTests.mix($0, UInt64(UInt32(bitPattern: $1))) }, 0, 0, 0)
        }
        func spill(key: PrefixKey, namespace: Namespace, tokens: UnsafeBufferPointer<TokenID>, block: BlockID, arena: KVPageArena?) {}
        func restore(key: PrefixKey, namespace: Namespace, tokens: UnsafeBufferPointer<TokenID>, into block: BlockID, arena: KVPageArena?) -> Bool { false }
        func contains(key: PrefixKey, tokens: UnsafeBufferPointer<TokenID>) -> Bool { true }
        func publish(stats: KVCacheStats) {
            guard gated.withLock({ g in defer { g = true }; return !g }) else { return }
            inWindow.signal()
            proceed.wait()
        }
    }

    /// Under `.atAdmission`, `prefetch` admits the stored part of a prompt and releases it. When
    /// the store misses after its probe said it held the blocks (a record its LRU evicted, or a
    /// spill a full background queue dropped), those blocks were published unwritten like any
    /// admission's, another thread's admission could hit them in the window before the release,
    /// and the release's hand-over to that sequence reached no engine (`prefetch` discarded the
    /// `InvalidatedHit`s): its engine skipped the prefill and attended over KV nobody wrote. Now
    /// a prefetch publishes only what it restored. (Found by the concurrent engine review.)
    @Test func aPrefetchThatMissesPublishesNothingAnotherThreadCouldHit() throws {
        let layout = try KVLayout(layerCount: 1, kvHeadCount: 1, headDim: 8, blockSize: 4, dtype: .float32)
        let store = LosingStore()
        let cache = try KVCacheManager(layout: layout, capacityBlocks: 16, allocatesPages: true, prefaultsPages: false,
                                       publishesBlocks: .atAdmission, coldStore: store, statsPublishInterval: .seconds(3600))
        let prompt: [TokenID] = [1, 2, 3, 4, 5, 6, 7, 8]   // two whole blocks
        let prefetched = Locked<Int?>(nil)
        let t = Thread { prefetched.withLock { $0 = try? cache.prefetch(prompt, namespace: "ns") } }
        t.start()
        #expect(store.inWindow.wait(timeout: .now() + 10) == .success, "prefetch never reached its stats publish")
        // Another engine thread admits the same prompt plus a question while prefetch is between
        // its admission and its release: nothing unwritten to hit.
        let a = try cache.admit(prompt + [9], namespace: "ns")
        #expect(a.memoryHitTokens == 0, "a hit \(a.memoryHitTokens) tokens of blocks the prefetch never restored")
        store.proceed.signal()
        while prefetched.withLock({ $0 }) == nil { usleep(1000) }
        #expect(prefetched.withLock { $0 } == 0)
        // What a's Admission says is cached is what the manager still says it holds.
        #expect(try cache.firstOwnPosition(of: a.sequence) == a.cachedTokenCount)
        cache.checkInvariants()
        try cache.release(a.sequence, computedTokens: 0)
        cache.checkInvariants()
    }

    /// A metadata-only manager (the engine keeps the K/V and copies what `AppendResult.copy`
    /// names, after the call). `truncate` into a cached block only this sequence holds copies it;
    /// it used to drop the sequence's reference to the source in the same call, so another engine
    /// thread's next call could evict it and write its own K/V there before the first engine had
    /// copied it. Now the source stays referenced until the engine says it copied (`copied(_:)`)
    /// or the sequence's next call. The calls are made in one thread here, in the order two engine
    /// threads can make them. (Found by the concurrent engine review.)
    @Test func aCopySourceStaysUntilTheEngineHasCopiedIt() throws {
        let layout = try KVLayout(layerCount: 1, kvHeadCount: 1, headDim: 4, blockSize: 4, dtype: .float32)
        let cache = try KVCacheManager(layout: layout, capacityBlocks: 3, allocatesPages: false, publishesBlocks: .whenComputed)
        let arena = KVPageArena(layout: layout, capacityBlocks: 4, prefault: false)   // the engine's
        func write(_ h: SequenceHandle, _ range: Range<Int>, value: Float) throws {
            let m = try cache.slotMapping(for: [.range(range, of: h)])
            let kv = [Float](repeating: value, count: range.count * 4)
            try arena.store(keys: kv, values: kv, layer: 0, slots: m)
        }
        // Thread A: an 8-token prompt, written and reported; a speculative rollback to 6 tokens.
        let a = try cache.admit([1, 2, 3, 4, 5, 6, 7, 8], namespace: "x").sequence
        try write(a, 0..<8, value: 1)
        try cache.markComputed(a, computedTokens: 8)
        let copy = try #require(try cache.truncate(a, toTokenCount: 6).copy)
        cache.checkInvariants()
        // Thread B, before A's engine copied: the only other block is the copy's source, still held.
        #expect(cache.availableBlocks == 0)
        #expect(throws: KVCacheError.insufficientBlocks(needed: 1, available: 0)) { try cache.admit([9, 9, 9, 9], namespace: "y") }
        // Thread A's engine copies as told, and says so; the source is cached and evictable again.
        arena.copyBlock(from: copy.source, to: copy.destination)
        try cache.copied(a)
        #expect(cache.availableBlocks == 1 && cache.isCached(copy.source.rawValue))
        cache.checkInvariants()
        // Thread B now gets it, and A's positions 4 and 5 keep A's K/V.
        let b = try cache.admit([9, 9, 9, 9], namespace: "y").sequence
        #expect(try cache.blockTable(of: b) == [Int32(copy.source.index)])
        try write(b, 0..<4, value: 2)
        let table = try cache.blockTable(of: a)
        let (k, _) = try arena.load(layer: 0, slots: [table[1] * 4, table[1] * 4 + 1])
        #expect(k.allSatisfy { $0 == 1 }, "A's positions 4 and 5: \(k)")
        cache.checkInvariants()
    }

    /// Without `copied(_:)`, the sequence's next append lets the source go (its engine has copied
    /// by then), not its `markComputed` (a speculative step reports the accepted count right
    /// after truncating, before the copy); a fork child does not inherit the parent's pending
    /// copy; the pending copy makes nothing shared in the stats. (The review of the fix.)
    @Test func theNextCallLetsACopySourceGo() throws {
        let layout = try KVLayout(layerCount: 1, kvHeadCount: 1, headDim: 4, blockSize: 4, dtype: .float32)
        let cache = try KVCacheManager(layout: layout, capacityBlocks: 4, allocatesPages: false, publishesBlocks: .whenComputed)
        let a = try cache.admit([1, 2, 3, 4, 5, 6, 7, 8], namespace: "x").sequence
        try cache.markComputed(a, computedTokens: 8)
        #expect(try cache.truncate(a, toTokenCount: 6).copy != nil)
        #expect(cache.availableBlocks == 1)   // 4 blocks: a's two, and the source it still holds
        let child = try cache.fork(a, count: 1)[0]
        try cache.release(child)
        #expect(cache.availableBlocks == 1)   // the child's release let nothing go
        #expect(cache.stats.sharedBlocks == 0 && cache.stats.physicalBlocks == 2 && cache.stats.usedBlocks == 3)
        cache.checkInvariants()
        try cache.markComputed(a, computedTokens: 6)
        #expect(cache.availableBlocks == 1)   // still held: the engine may not have copied yet
        try cache.append([7], to: a)
        #expect(cache.availableBlocks == 2)   // the source, cached and evictable
        cache.checkInvariants()
        #expect(throws: KVCacheError.releasedSequence(child)) { try cache.copied(child) }
        try cache.release(a)
        #expect(cache.stats.usedBlocks == 0)
        cache.checkInvariants()
    }
}
