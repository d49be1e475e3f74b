import Foundation
import KVAttention
import KVCache
import KVCore
import KVSpill
import Testing

/// A toy serving engine over `KVCacheManager`: many seeded random schedules of admissions with
/// shared system prompts in two namespaces, chunked prefill, decode steps mixing sequences,
/// speculative drafts truncated back, forks for parallel sampling, cancellations, preemption by
/// truncate, small pools (eviction) and optionally the LMDB spill tier.
///
/// Every step: the new tokens' fake K/V — a function of (namespace, layer, the token's whole
/// prefix), so correct sharing gives identical KV and wrong sharing gives different KV — are
/// written through `slotMapping(for:)`; `stepPlan(for:)` is built over the step's query rows and
/// run with `DecodeAttention.bifurcated` and with the paged kernel over `plan.batch`; each row is
/// compared with a dense causal attention over that sequence's own token history (computed from
/// the engine's model, never read from the arena). The manager's invariants are checked after
/// every mutation.
@Suite struct EngineLoopTests {
    // MARK: - Fake model

    static func mix(_ a: UInt64, _ b: UInt64) -> UInt64 {
        var s = SeededRandom(seed: a ^ (b &* 0x9E37_79B9_7F4A_7C15))
        return s.next()
    }

    static func namespaceSeed(_ ns: Namespace) -> UInt64 {
        ns.rawValue.utf8.reduce(0xCBF2_9CE4_8422_2325) { ($0 ^ UInt64($1)) &* 0x100_0000_01B3 }
    }

    /// One request (or fork sample) as the engine sees it.
    struct Request {
        var handle: SequenceHandle
        var namespace: Namespace
        var tokens: [TokenID]
        /// hashes[p]: the prefix 0...p in its namespace (what the KV of position p depends on).
        var hashes: [UInt64]
        /// Tokens whose KV is written (by this request or found cached).
        var computed: Int
        var target: Int
        var decoding: Bool

        mutating func push(_ t: TokenID) {
            let previous = hashes.last ?? EngineLoopTests.namespaceSeed(namespace)
            tokens.append(t)
            hashes.append(EngineLoopTests.mix(previous, UInt64(UInt32(bitPattern: t)) &+ UInt64(tokens.count) << 32))
        }
        mutating func drop(to count: Int) {
            tokens.removeSubrange(count...)
            hashes.removeSubrange(count...)
        }
    }

    struct Config: CustomStringConvertible {
        var seed: UInt64
        var blockSize: Int
        var dtype: KVDType
        var capacity: Int
        var publication: BlockPublication
        var store: Bool
        /// A metadata-only manager (`allocatesPages: false`): the engine keeps the K/V in an arena
        /// of its own and copies every block an append's or truncation's copy-on-write names.
        var engineKeepsKV = false
        var steps: Int
        var kvHeads = 2
        var queryHeads = 4
        var headDim = 16
        /// Query rows a step may hold (prefill chunks included): above 256 a shared node's rows
        /// are split into several kernel items.
        var budget = 48
        /// Longest user part of a prompt, in blocks.
        var userBlocks = 2
        var description: String {
            "seed \(seed) bs \(blockSize) \(dtype) cap \(capacity) \(publication) store \(store) engineKV \(engineKeepsKV) heads \(queryHeads)/\(kvHeads)x\(headDim) budget \(budget)"
        }
    }

    final class Engine {
        let config: Config
        let layout: KVLayout
        let cache: KVCacheManager
        let attention: DecodeAttention
        /// Where the K/V lives: the manager's arena, or the engine's own (`engineKeepsKV`).
        let arena: KVPageArena
        let queryHeads: Int
        let tolerance: Float
        var rng: SeededRandom
        var live: [SequenceHandle: Request] = [:]
        var order: [SequenceHandle] = []   // admission order, for deterministic iteration
        var systemPrompts: [[TokenID]] = []
        var pastPrompts: [(Int, [TokenID])] = []
        var kvMemo: [UInt64: [Float]] = [:]
        let storeObject: LMDBSpillStore?
        let storePath: String?
        // figures
        var stepsRun = 0, rowsChecked = 0, admissions = 0, rejected = 0, hitTokens = 0, storeHitTokens = 0
        var forks = 0, cows = 0, cancels = 0, invalidated = 0, truncations = 0, preemptions = 0, specSteps = 0
        var wholeHits = 0, worst: Float = 0, unwrittenAppends = 0

        init(_ config: Config) throws {
            self.config = config
            rng = SeededRandom(seed: config.seed)
            queryHeads = config.queryHeads
            layout = try KVLayout(layerCount: 2, kvHeadCount: config.kvHeads, headDim: config.headDim, blockSize: config.blockSize, dtype: config.dtype)
            if config.store {
                let path = NSTemporaryDirectory() + "engine-loop-\(config.seed)-\(UUID().uuidString.prefix(8))"
                storePath = path
                let mode: SpillStoreConfiguration.WriteMode = config.seed % 2 == 0 ? .synchronous : .background(queueLimitBytes: 1 << 20)
                storeObject = try LMDBSpillStore(SpillStoreConfiguration(path: path, layout: layout, limitBytes: 4 << 20,
                                                                         writeMode: mode, durable: false, model: "toy"))
            } else {
                storeObject = nil
                storePath = nil
            }
            cache = try KVCacheManager(layout: layout, capacityBlocks: config.capacity, allocatesPages: !config.engineKeepsKV, prefaultsPages: false,
                                       publishesBlocks: config.publication, coldStore: storeObject)
            // Block ids run 1...capacity (0 is the null block), so the engine's arena has one more.
            arena = config.engineKeepsKV ? KVPageArena(layout: layout, capacityBlocks: config.capacity + 1, prefault: false) : cache.arena!
            attention = try DecodeAttention(layout: layout, queryHeads: queryHeads, threads: 2,
                                            math: config.dtype == .bfloat16 ? .automatic : .fp32)
            tolerance = attention.effectiveMath == .bf16 ? 1e-2 : 5e-5
            // The same token sequences serve as system prompts in both namespaces (KV differs by
            // namespace, so sharing across namespaces would show).
            for _ in 0..<3 {
                let length = rng.int(1...(4 * config.blockSize + 3))
                systemPrompts.append((0..<length).map { _ in TokenID(rng.int(0...40)) })
            }
        }

        deinit {
            storeObject?.close()
            if let storePath { try? FileManager.default.removeItem(atPath: storePath) }
        }

        func kv(_ hash: UInt64, layer: Int, kind: Int) -> [Float] {
            let key = Self.kvKey(hash, layer: layer, kind: kind)
            if let v = kvMemo[key] { return v }
            var g = SeededRandom(seed: key)
            let v = (0..<(layout.kvHeadCount * layout.headDim)).map { _ in layout.dtype.rounded(g.unit()) }
            kvMemo[key] = v
            return v
        }
        static func kvKey(_ hash: UInt64, layer: Int, kind: Int) -> UInt64 { mix(hash, UInt64(layer * 2 + kind) &+ 0x1234) }

        func check() { cache.checkInvariants() }

        /// An engine keeping the K/V itself makes the copy-on-write the manager names (the
        /// manager's arena made it already otherwise).
        func applied(_ result: AppendResult) -> AppendResult {
            if config.engineKeepsKV, let c = result.copy { arena.copyBlock(from: c.source, to: c.destination) }
            return result
        }

        /// nil when the pool is short of blocks (nothing changed); other errors propagate.
        func orNil<T>(_ body: () throws(KVCacheError) -> T) throws(KVCacheError) -> T? {
            do { return try body() } catch {
                if case .insufficientBlocks = error { return nil }
                throw error
            }
        }

        var namespaces: [Namespace] { ["tenant-a", "tenant-b"] }

        // MARK: events

        func admitSome() throws {
            var burst: (Int, [TokenID])? = nil
            for _ in 0..<rng.int(0...3) where live.count < 8 {
                var nsIndex = rng.int(0...1)
                var prompt: [TokenID]
                if let (i, p) = burst, rng.chance(0.6) {
                    // the same new prompt again in the same step: a hit on blocks not yet prefilled
                    nsIndex = i
                    prompt = p
                } else if !pastPrompts.isEmpty && rng.chance(0.25) {
                    let (i, p) = pastPrompts[rng.int(0...(pastPrompts.count - 1))]
                    if i != nsIndex && rng.chance(0.5) { continue }
                    prompt = p
                } else {
                    prompt = systemPrompts[rng.int(0...(systemPrompts.count - 1))]
                    let user = rng.chance(0.2) ? 0 : rng.int(1...(config.userBlocks * config.blockSize + 5))
                    prompt += (0..<user).map { _ in TokenID(rng.int(0...40)) }
                    if rng.chance(0.3) {   // a whole number of blocks: a later identical prompt is a whole hit
                        let whole = max(1, prompt.count / config.blockSize) * config.blockSize
                        while prompt.count < whole { prompt.append(TokenID(rng.int(0...40))) }
                        prompt = Array(prompt.prefix(whole))
                    }
                }
                let ns = namespaces[nsIndex]
                if config.store && rng.chance(0.2) {
                    _ = try orNil({ () throws(KVCacheError) in try cache.prefetch(prompt, namespace: ns) })
                    check()
                }
                let looked = try cache.lookup(prompt, namespace: ns, probeStore: config.store)
                guard let admission = try orNil({ () throws(KVCacheError) in try cache.admit(prompt, namespace: ns) }) else {
                    rejected += 1
                    check()
                    continue
                }
                check()
                admissions += 1
                #expect(admission.memoryHitTokens == looked.memoryTokens && admission.storeHitTokens == looked.storeTokens,
                        "\(config): lookup \(looked) vs admission \(admission.memoryHitTokens)+\(admission.storeHitTokens)")
                hitTokens += admission.cachedTokenCount
                storeHitTokens += admission.storeHitTokens
                if admission.cachedTokenCount == prompt.count { wholeHits += 1 }
                #expect(admission.cachedTokenCount % config.blockSize == 0 || admission.cachedTokenCount == prompt.count,
                        "\(config): hits are whole blocks")
                #expect(try cache.firstOwnPosition(of: admission.sequence) == admission.cachedTokenCount)
                var r = Request(handle: admission.sequence, namespace: ns, tokens: [], hashes: [], computed: admission.cachedTokenCount,
                                target: prompt.count + rng.int(1...(3 * config.blockSize)), decoding: false)
                for t in prompt { r.push(t) }
                live[r.handle] = r
                order.append(r.handle)
                pastPrompts.append((nsIndex, prompt))
                burst = (nsIndex, prompt)
            }
        }

        func remove(_ h: SequenceHandle) {
            live[h] = nil
            order.removeAll { $0 == h }
        }

        func handle(invalidated hits: [InvalidatedHit]) {
            for hit in hits {
                invalidated += 1
                guard var r = live[hit.sequence] else {
                    Issue.record("\(config): an InvalidatedHit names \(hit.sequence), not live")
                    continue
                }
                if config.publication == .whenComputed {
                    Issue.record("\(config): an InvalidatedHit under .whenComputed (every hit should be written KV): \(hit)")
                }
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
                    // sampled and appended, then cancelled before the forward pass wrote its KV
                    let t = TokenID(rng.int(0...40))
                    if try orNil({ () throws(KVCacheError) in try applied(cache.append([t], to: h)) }) != nil {
                        check()
                        computed = r.tokens.count
                        unwrittenAppends += 1
                    }
                }
                let hits = try cache.release(h, computedTokens: computed)
                check()
                remove(h)
                handle(invalidated: hits)
            }
        }

        func preemptSome() throws {
            for h in order where rng.chance(0.04) {
                guard var r = live[h], r.decoding, r.tokens.count >= 2 else { continue }
                let keep = rng.int(1...(r.tokens.count - 1))
                guard try orNil({ () throws(KVCacheError) in try applied(cache.truncate(h, toTokenCount: keep)) }) != nil else { check(); continue }
                check()
                truncations += 1
                #expect(try cache.tokenCount(of: h) == keep)
                #expect(try cache.tokens(of: h) == Array(r.tokens.prefix(keep)), "\(config): tokens after truncate")
                r.computed = keep
                if rng.chance(0.5) {
                    // preemption: recompute the dropped tokens (appended again, prefilled from `keep`)
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
                    // a rollback: continue decoding from `keep`
                    r.drop(to: keep)
                }
                live[h] = r
            }
        }

        func forkSome() throws {
            for h in order where rng.chance(0.08) && live.count < 10 {
                guard let r = live[h], r.decoding else { continue }
                let n = rng.int(1...3)
                let children = try cache.fork(h, count: n)
                check()
                forks += 1
                for c in children {
                    var child = r
                    child.handle = c
                    child.target = r.tokens.count + rng.int(1...(2 * config.blockSize))
                    live[c] = child
                    order.append(c)
                    #expect(try cache.firstOwnPosition(of: c) == (try cache.firstOwnPosition(of: h)))
                }
            }
        }

        // MARK: one step

        struct Row {
            var sequence: SequenceHandle
            var position: Int
        }

        func step() throws {
            try admitSome()
            try cancelSome()
            try preemptSome()
            try forkSome()

            var writeSpans: [SlotSpan] = [], rowSpans: [SlotSpan] = [], rows: [Row] = []
            var wrote: [SequenceHandle: Int] = [:]
            var drafts: [SequenceHandle: Int] = [:]
            var budget = config.budget
            var scheduled = order.shuffledDeterministically(&rng)
            scheduled = scheduled.filter { live[$0] != nil }
            for h in scheduled {
                guard var r = live[h] else { continue }
                if r.decoding {
                    guard budget > 0 else { continue }
                    let d = rng.chance(0.15) ? rng.int(2...4) : 1
                    let new = (0..<d).map { _ in TokenID(rng.int(0...40)) }
                    guard let result = try orNil({ () throws(KVCacheError) in try applied(cache.append(new, to: h)) }) else {
                        // preempt: drop the request (its KV is all written)
                        check()
                        preemptions += 1
                        try cache.release(h)
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
                    rowSpans.append(.last(d, of: h))
                    rows += (start..<r.tokens.count).map { Row(sequence: h, position: $0) }
                    wrote[h] = d
                    if d > 1 { drafts[h] = d; specSteps += 1 }
                    budget -= d
                } else {
                    let remaining = r.tokens.count - r.computed
                    if remaining == 0 {
                        // a whole-prompt hit (or an invalidated hit already recomputed): the last
                        // token's row only, for its logits; nothing to write.
                        rowSpans.append(.range((r.tokens.count - 1)..<r.tokens.count, of: h))
                        rows.append(Row(sequence: h, position: r.tokens.count - 1))
                        wrote[h] = 0
                        continue
                    }
                    let c: Int
                    if config.publication == .atAdmission {
                        c = remaining   // blocks are matchable from admission: prefill all at once
                    } else {
                        guard budget > 0 else { continue }
                        c = min(remaining, rng.int(1...max(3 * config.blockSize + 1, config.budget / 2)), max(1, budget))
                    }
                    if c >= 2 && rng.chance(0.15) {
                        // one chunk as two adjacent spans of the same sequence
                        let cut = r.computed + rng.int(1...(c - 1))
                        let spans: [SlotSpan] = [.range(r.computed..<cut, of: h), .range(cut..<(r.computed + c), of: h)]
                        writeSpans += spans
                        rowSpans += spans
                    } else {
                        let span: SlotSpan = r.computed + c == r.tokens.count && rng.chance(0.5)
                            ? .from(r.computed, of: h) : .range(r.computed..<(r.computed + c), of: h)
                        writeSpans.append(span)
                        rowSpans.append(span)
                    }
                    rows += (r.computed..<(r.computed + c)).map { Row(sequence: h, position: $0) }
                    wrote[h] = c
                    budget -= c
                }
            }
            guard !rows.isEmpty else { return }

            // Write the new tokens' K/V through the slot mapping, every layer.
            let mapping = try cache.slotMapping(for: writeSpans)
            var expectedPositions: [Int32] = []
            var writeHashes: [UInt64] = []
            for span in writeSpans {
                let r = live[span.sequence]!
                let range = span.positions.resolved(tokenCount: r.tokens.count)!
                expectedPositions += range.map { Int32($0) }
                writeHashes += range.map { r.hashes[$0] }
            }
            #expect(mapping.positions == expectedPositions, "\(config): mapping positions")
            for layer in 0..<layout.layerCount {
                let keys = writeHashes.flatMap { kv($0, layer: layer, kind: 0) }
                let values = writeHashes.flatMap { kv($0, layer: layer, kind: 1) }
                try arena.store(keys: keys, values: values, layer: layer, slots: mapping)
            }

            // One plan for the step.
            let plan = try cache.stepPlan(for: rowSpans)
            plan.checkInvariants()
            #expect(plan.rowCount == rows.count, "\(config): plan rows")
            for (i, row) in rows.enumerated() {
                let table = try cache.blockTable(of: row.sequence)
                let want = Array(table[...(row.position / layout.blockSize)])
                #expect(Array(plan.batch.table(i)) == want && Int(plan.batch.tokenCounts[i]) == row.position + 1,
                        "\(config): plan row \(i) table")
            }
            // A step of decode tokens only is planned as decodePlan(for:) plans it; one chunk that
            // ends the sequence as prefillPlan(for:newTokens:) does.
            let handles = rowSpans.map(\.sequence)
            if rowSpans.allSatisfy({ $0.positions == .last(1) }) && Set(handles).count == handles.count {
                #expect(plan == (try cache.decodePlan(for: handles)), "\(config): decode-only step plan != decodePlan")
                #expect(try cache.slotMapping(for: handles) == mapping, "\(config): decode mapping")
            }
            if handles.count == 1, let h = handles.first, rows.last!.position == live[h]!.tokens.count - 1 {
                let pp = try cache.prefillPlan(for: h, newTokens: rows.count)
                #expect(plan == pp, "\(config): one-chunk step plan != prefillPlan for \(rowSpans): \(plan.levels.count) vs \(pp.levels.count) levels")
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
                    Issue.record("""
                        \(config) step \(stepsRun) layer \(layer): bifurcated \(eb) paged \(ep) > \(tolerance); \
                        worst rows \(bad.map { "\($0.0)=\(rows[$0.0].sequence)@\(rows[$0.0].position) err \($0.1)" })
                        """)
                    throw StopSchedule()
                }
            }
            rowsChecked += rows.count
            stepsRun += 1

            // The step ran: report progress; reject drafts; finish requests.
            // In admission order, not the dictionaries' (seeded per process): a seed replays its schedule.
            for h in order {
                guard let n = wrote[h], var r = live[h] else { continue }
                r.computed += n
                if !r.decoding && r.computed == r.tokens.count { r.decoding = true }
                live[h] = r
                try cache.markComputed(h, computedTokens: r.computed)
                check()
            }
            for h in order {
                guard let n = drafts[h], var r = live[h] else { continue }
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

        /// Every live sequence's written positions hold exactly its model's K/V.
        func checkArena() throws {
            let bs = layout.blockSize
            for h in order {
                guard let r = live[h], r.computed > 0 else { continue }
                let table = try cache.blockTable(of: h)
                #expect(try cache.tokens(of: h) == r.tokens, "\(config): tokens of \(h)")
                let slots = (0..<r.computed).map { table[$0 / bs] * Int32(bs) + Int32($0 % bs) }
                for layer in 0..<layout.layerCount {
                    let (k, v) = try arena.load(layer: layer, slots: slots)
                    let width = layout.kvHeadCount * layout.headDim
                    for p in 0..<r.computed {
                        let wantK = kv(r.hashes[p], layer: layer, kind: 0), wantV = kv(r.hashes[p], layer: layer, kind: 1)
                        if Array(k[(p * width)..<((p + 1) * width)]) != wantK || Array(v[(p * width)..<((p + 1) * width)]) != wantV {
                            Issue.record("\(config) step \(stepsRun): \(h) position \(p) (block \(table[p / bs])) holds other KV than its own (computed \(r.computed), firstOwn \(try cache.firstOwnPosition(of: h)))")
                            throw StopSchedule()
                        }
                    }
                }
            }
        }

        struct StopSchedule: Error {}

        func denseOracle(rows: [Row], query: [Float], layer: Int, scale: Float) -> [Float] {
            EngineLoopTests.denseOracle(histories: rows.map { live[$0.sequence]!.hashes[...$0.position] }, query: query,
                                        layer: layer, scale: scale, layout: layout, queryHeads: queryHeads, kv: kv)
        }

        func worstRows(_ a: [Float], _ b: [Float], rows: [Row]) -> [(Int, Float)] {
            EngineLoopTests.worstRows(a, b, rowWidth: queryHeads * layout.headDim, tolerance: tolerance)
        }

        func run() throws {
            for _ in 0..<config.steps {
                do { try step() } catch is StopSchedule { return }
            }
            // Drain: release everything; the cache must end with no block referenced.
            for h in order {
                guard let r = live[h] else { continue }
                _ = try cache.release(h, computedTokens: r.computed)
                check()
            }
            live = [:]
            order = []
            #expect(cache.stats.usedBlocks == 0, "\(config): blocks still referenced after releasing everything")
        }
    }

    static func configs(count: Int, store: Bool, base: UInt64, engineKeepsKV: Bool = false) -> [Config] {
        var g = SeededRandom(seed: base)
        return (0..<count).map { i in
            let bs = [1, 2, 4, 8, 16][g.int(0...4)]
            let dtype = [KVDType.float32, .float16, .bfloat16][g.int(0...2)]
            let pub: BlockPublication = g.chance(0.5) ? .atAdmission : .whenComputed
            // small pools: a few requests' worth, so admissions evict cached prefixes
            let perRequest = (6 * bs + 3) / bs + 1
            let cap = g.int((2 * perRequest)...(5 * perRequest))
            var c = Config(seed: base &+ UInt64(i), blockSize: bs, dtype: dtype, capacity: cap, publication: pub, store: store, steps: 60)
            c.engineKeepsKV = engineKeepsKV
            let shape = g.int(0...3)
            if shape == 1 { c.kvHeads = 1; c.queryHeads = 8; c.headDim = 64 }        // MQA, wider heads
            if shape == 2 { c.kvHeads = 2; c.queryHeads = 2; c.headDim = 32 }        // MHA
            if g.chance(0.2) {                                                         // long chunks: > 256 rows a step
                c.budget = 320
                c.userBlocks = max(2, 300 / bs)
                c.capacity = 3 * (c.userBlocks + 6) + 8
                c.steps = 25
                c.kvHeads = 2; c.queryHeads = 4; c.headDim = 16                       // keep the dense oracle cheap
            }
            return c
        }
    }

    /// A float64 causal attention per query row over that row's history (the hashes of the
    /// positions it attends, its own last), K/V from the engine's model `kv`, never the arena.
    static func denseOracle(histories: [ArraySlice<UInt64>], query: [Float], layer: Int, scale: Float, layout: KVLayout,
                            queryHeads hq: Int, kv: (UInt64, Int, Int) -> [Float]) -> [Float] {
        let d = layout.headDim, group = hq / layout.kvHeadCount
        var out = [Float](repeating: 0, count: query.count)
        for (i, history) in histories.enumerated() {
            let keys = history.map { kv($0, layer, 0) }
            let values = history.map { kv($0, layer, 1) }
            for h in 0..<hq {
                let kvh = h / group, q = (i * hq + h) * d
                var scores = [Double](repeating: 0, count: keys.count)
                for t in 0..<keys.count {
                    var dot = 0.0
                    for j in 0..<d { dot += Double(query[q + j]) * Double(keys[t][kvh * d + j]) }
                    scores[t] = dot * Double(scale)
                }
                let top = scores.max()!
                let w = scores.map { exp($0 - top) }
                let sum = w.reduce(0, +)
                for j in 0..<d {
                    var acc = 0.0
                    for t in 0..<keys.count { acc += w[t] * Double(values[t][kvh * d + j]) }
                    out[q + j] = Float(acc / sum)
                }
            }
        }
        return out
    }

    /// Up to six rows whose largest difference passes `tolerance`, with that difference.
    static func worstRows(_ a: [Float], _ b: [Float], rowWidth per: Int, tolerance: Float) -> [(Int, Float)] {
        (0..<(a.count / per)).map { i in
            (i, (0..<per).map { abs(a[i * per + $0] - b[i * per + $0]) }.max()!)
        }.filter { $0.1 > tolerance }.prefix(6).map { $0 }
    }

    /// What a set of schedules exercised, summed, so a test can show that it reached each feature.
    struct Totals: CustomStringConvertible {
        var schedules = 0, steps = 0, rows = 0, admissions = 0, refused = 0, wholeHits = 0, hitTokens = 0, storeHitTokens = 0
        var forks = 0, copies = 0, cancels = 0, invalidated = 0, unwrittenAppends = 0, truncations = 0, preemptions = 0
        var speculativeSteps = 0
        var worst: Float = 0

        mutating func add(_ e: Engine) {
            schedules += 1; steps += e.stepsRun; rows += e.rowsChecked; admissions += e.admissions; refused += e.rejected
            wholeHits += e.wholeHits; hitTokens += e.hitTokens; storeHitTokens += e.storeHitTokens; forks += e.forks
            copies += e.cows; cancels += e.cancels; invalidated += e.invalidated; unwrittenAppends += e.unwrittenAppends
            truncations += e.truncations; preemptions += e.preemptions; speculativeSteps += e.specSteps
            worst = max(worst, e.worst)
        }

        var description: String {
            """
            \(schedules) schedules, \(steps) steps, \(rows) rows checked; \(admissions) admissions (\(refused) refused, \(wholeHits) \
            whole-prompt hits), \(hitTokens) hit tokens (\(storeHitTokens) from the store), \(forks) forks, \(copies) copy-on-writes, \
            \(cancels) cancels (\(invalidated) invalidated hits, \(unwrittenAppends) after an unwritten append), \(truncations) \
            truncations, \(preemptions) preemptions, \(speculativeSteps) speculative appends; worst error \(worst)
            """
        }
    }

    static func runAll(_ configs: [Config]) throws -> Totals {
        var totals = Totals()
        for config in configs {
            let e = try Engine(config)
            try e.run()
            totals.add(e)
        }
        print("EngineLoopTests: \(totals)")
        return totals
    }

    /// `ENGINE_LOOP_SCALE=k` runs k times as many schedules; `ENGINE_LOOP_BASE=n` shifts the seeds.
    static var scale: Int { Int(ProcessInfo.processInfo.environment["ENGINE_LOOP_SCALE"] ?? "") ?? 1 }
    static var baseOffset: UInt64 { UInt64(ProcessInfo.processInfo.environment["ENGINE_LOOP_BASE"] ?? "") ?? 0 }

    @Test func randomSchedulesInMemory() throws {
        let t = try Self.runAll(Self.configs(count: 12 * Self.scale, store: false, base: 1000 + Self.baseOffset))
        // The schedules reached what they are for (each is checked row by row above).
        #expect(t.rows > 1000 && t.hitTokens > 0 && t.wholeHits > 0 && t.forks > 0 && t.copies > 0, "\(t)")
        #expect(t.cancels > 0 && t.truncations > 0 && t.speculativeSteps > 0 && t.refused + t.preemptions > 0, "\(t)")
    }

    /// A metadata-only manager: the engine's own arena, kept right only by copying what
    /// `AppendResult.copy` names (appends after forks, truncations into shared blocks).
    @Test func randomSchedulesWithTheEngineKeepingTheKV() throws {
        let t = try Self.runAll(Self.configs(count: 6 * Self.scale, store: false, base: 900_000 + Self.baseOffset, engineKeepsKV: true))
        #expect(t.rows > 500 && t.copies > 0 && t.forks > 0 && t.truncations > 0, "\(t)")
    }

    @Test func randomSchedulesWithTheSpillStore() throws {
        let t = try Self.runAll(Self.configs(count: 6 * Self.scale, store: true, base: 500_000 + Self.baseOffset))
        #expect(t.rows > 500 && t.storeHitTokens > 0 && t.forks > 0, "\(t)")
    }
}

extension Array {
    func shuffledDeterministically(_ rng: inout SeededRandom) -> [Element] {
        var a = self
        guard a.count > 1 else { return a }
        for i in stride(from: a.count - 1, to: 0, by: -1) {
            let j = Int(rng.next() % UInt64(i + 1))
            a.swapAt(i, j)
        }
        return a
    }
}

extension SeededRandom {
    /// A value in `r`.
    mutating func int(_ r: ClosedRange<Int>) -> Int { r.lowerBound + below(r.count) }
    /// True with probability `p`.
    mutating func chance(_ p: Double) -> Bool { Double(next() % 1_000_000) / 1_000_000 < p }
    /// A value in [-1, 1).
    mutating func unit() -> Float { Float(Double(next() >> 11) / Double(1 << 53)) * 2 - 1 }
}
