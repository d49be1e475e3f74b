import KVCore
import KVTestSupport
import Testing
@testable import KVCache

/// A reference model of what the cache must report, written independently of its data structures:
/// the set of cached prefixes (as token arrays) and each live sequence's tokens.
struct ReferenceModel {
    let blockSize: Int
    /// Every whole-block prefix that joined the tree, per namespace (unbounded capacity: never evicted).
    var cached: [String: Set<[TokenID]>] = [:]
    /// Every whole-block prefix any sequence ever filled (what a hit may name, whatever was evicted).
    var everFilled: [String: Set<[TokenID]>] = [:]
    /// Per live sequence: its tokens, and how many of its leading full blocks joined the tree
    /// through its own chain (a block joins only right after them).
    var sequences: [SequenceHandle: (namespace: String, tokens: [TokenID], treeBlocks: Int)] = [:]

    func hitBlocks(_ tokens: [TokenID], _ ns: String, in sets: [String: Set<[TokenID]>]? = nil) -> Int {
        let set = (sets ?? cached)[ns, default: []]
        var n = 0
        while (n + 1) * blockSize <= tokens.count, set.contains(Array(tokens[0..<((n + 1) * blockSize)])) { n += 1 }
        return n
    }

    /// A block filled: it joins the tree unless the sequence's chain broke, and an existing equal
    /// prefix (another block) breaks the chain.
    /// Admission: the first `hit` blocks are the cached nodes themselves; later full blocks join.
    mutating func admitted(_ h: SequenceHandle, _ ns: String, _ prompt: [TokenID], hit: Int) {
        sequences[h] = (ns, Array(prompt.prefix(hit * blockSize)), hit)
        for t in prompt.dropFirst(hit * blockSize) { appended(h, t) }
    }

    mutating func appended(_ h: SequenceHandle, _ t: TokenID) {
        sequences[h]!.tokens.append(t)
        if sequences[h]!.tokens.count % blockSize == 0 { blockFilled(h) }
    }

    /// Speculative decoding's rejection: the sequence keeps `count` tokens; what joined the tree stays.
    mutating func truncated(_ h: SequenceHandle, to count: Int) {
        sequences[h]!.tokens.removeSubrange(count...)
        sequences[h]!.treeBlocks = min(sequences[h]!.treeBlocks, count / blockSize)
    }

    mutating func blockFilled(_ h: SequenceHandle) {
        var s = sequences[h]!
        let prefix = Array(s.tokens)
        everFilled[s.namespace, default: []].insert(prefix)
        if s.treeBlocks == s.tokens.count / blockSize - 1 && !cached[s.namespace, default: []].contains(prefix) {
            cached[s.namespace, default: []].insert(prefix)
            s.treeBlocks += 1
        }
        sequences[h] = s
    }
}

@Suite struct ModelTests {
    /// Thousands of random operations with room for everything: hits must equal the model's
    /// exactly, tokens must read back, invariants must hold after every step.
    @Test(arguments: [UInt64(1), 2, 3])
    func unboundedMatchesReferenceModel(seed: UInt64) throws {
        var rng = SeededRandom(seed: seed)
        let bs = 4
        let cache = try KVCacheManager(layout: .small(blockSize: bs), capacityBlocks: 3_000)
        var model = ReferenceModel(blockSize: bs)
        let namespaces = ["a", "b"]
        let stems: [[TokenID]] = (0..<4).map { _ in (0..<12).map { _ in TokenID.random(in: 0..<3, using: &rng) } }
        for step in 0..<3000 {
            let live = Array(model.sequences.keys).sorted { $0.serial < $1.serial }
            let op = live.isEmpty ? 0 : Int.random(in: 0..<10, using: &rng)
            switch op {
            case 0...3:
                let ns = namespaces.randomElement(using: &rng)!
                let stem = stems.randomElement(using: &rng)!
                let prompt = Array(stem.prefix(Int.random(in: 0...12, using: &rng)))
                    + (0..<Int.random(in: 1...9, using: &rng)).map { _ in TokenID.random(in: 0..<3, using: &rng) }
                let expected = model.hitBlocks(prompt, ns)
                #expect(try cache.lookup(prompt, namespace: Namespace(ns)).memoryTokens == expected * bs, "seed \(seed) step \(step)")
                let a = try cache.admit(prompt, namespace: Namespace(ns))
                #expect(a.cachedTokenCount == expected * bs, "seed \(seed) step \(step)")
                model.admitted(a.sequence, ns, prompt, hit: expected)
            case 4...5:
                let h = live.randomElement(using: &rng)!
                let tokens = (0..<Int.random(in: 1...6, using: &rng)).map { _ in TokenID.random(in: 0..<3, using: &rng) }
                try cache.append(tokens, to: h)
                for t in tokens { model.appended(h, t) }
            case 6:
                let h = live.randomElement(using: &rng)!
                for child in try cache.fork(h, count: Int.random(in: 1...3, using: &rng)) { model.sequences[child] = model.sequences[h] }
            case 7 where Int.random(in: 0..<2, using: &rng) == 0:
                // Speculative decoding: drafts appended, then all but the accepted ones dropped.
                let h = live.randomElement(using: &rng)!
                let count = model.sequences[h]!.tokens.count
                let keep = Int.random(in: max(1, count - 7)...count, using: &rng)
                try cache.truncate(h, toTokenCount: keep)
                model.truncated(h, to: keep)
            default:
                let h = live.randomElement(using: &rng)!
                try cache.release(h)
                model.sequences[h] = nil
                #expect(throws: KVCacheError.releasedSequence(h)) { try cache.release(h) }
            }
            cache.checkInvariants()
            if step % 50 == 0 {
                for (h, s) in model.sequences { #expect(try cache.tokens(of: h) == s.tokens, "seed \(seed) step \(step)") }
            }
        }
        #expect(cache.stats.liveSequences == model.sequences.count)
        for h in model.sequences.keys { try cache.release(h) }
        #expect(cache.stats.usedBlocks == 0)
        cache.checkInvariants()
    }

    /// Random operations under memory pressure: eviction may only forget prefixes (a hit is always
    /// a prefix the model cached), a failed call changes nothing, no block leaks.
    @Test(arguments: [UInt64(11), 12, 13])
    func boundedNeverLiesAndNeverLeaks(seed: UInt64) throws {
        var rng = SeededRandom(seed: seed)
        let bs = 4, capacity = 24
        let cache = try KVCacheManager(layout: .small(blockSize: bs), capacityBlocks: capacity)
        var model = ReferenceModel(blockSize: bs)
        var failures = 0
        for step in 0..<4000 {
            let live = Array(model.sequences.keys).sorted { $0.serial < $1.serial }
            var held = Set<Int32>()
            for h in live { held.formUnion(try cache.blockTable(of: h)) }
            #expect(cache.stats.usedBlocks == held.count)
            let queueBefore = cache.freeQueueOrder
            let usedBefore = cache.stats.usedBlocks
            let op = live.isEmpty ? 0 : Int.random(in: 0..<10, using: &rng)
            switch op {
            case 0...3:
                let prompt = (0..<Int.random(in: 1...20, using: &rng)).map { _ in TokenID.random(in: 0..<2, using: &rng) }
                let hit = try cache.lookup(prompt).memoryTokens / bs
                #expect(hit <= model.hitBlocks(prompt, "default", in: model.everFilled), "seed \(seed) step \(step): hit on a prefix never cached")
                let matched = cache.memoryMatch(prompt)
                #expect(matched.count == hit, "seed \(seed) step \(step)")
                let needed = (prompt.count + bs - 1) / bs - hit
                // The exact admission bound: `free` blocks are in the free queue (free or evictable);
                // pinning a hit nobody holds takes it out of the queue, so it is no longer there to
                // allocate. Admission succeeds iff needed + unheldHits <= free.
                let free = capacity - held.count
                let unheldHits = matched.filter { !held.contains($0) }.count
                do {
                    let a = try cache.admit(prompt)
                    #expect(a.cachedTokenCount == hit * bs)
                    #expect(Array(a.blockTable.prefix(hit)) == matched, "seed \(seed) step \(step)")
                    #expect(needed + unheldHits <= free, "seed \(seed) step \(step): admitted beyond the free blocks")
                    model.admitted(a.sequence, "default", prompt, hit: hit)
                } catch {
                    guard case .insufficientBlocks = error else { throw error }
                    failures += 1
                    #expect(needed + unheldHits > free, "seed \(seed) step \(step): refused though \(needed) + \(unheldHits) unheld hits fit in \(free)")
                    #expect(error == .insufficientBlocks(needed: needed, available: free - unheldHits), "seed \(seed) step \(step)")
                    #expect(cache.freeQueueOrder == queueBefore)
                }
            case 4...5:
                let h = live.randomElement(using: &rng)!
                let tokens = (0..<Int.random(in: 1...6, using: &rng)).map { _ in TokenID.random(in: 0..<2, using: &rng) }
                do {
                    try cache.append(tokens, to: h)
                    try cache.copied(h)   // an engine keeping the KV copies at once (the manager is metadata-only)
                    for t in tokens { model.appended(h, t) }
                } catch {
                    guard case .insufficientBlocks = error else { throw error }
                    failures += 1
                    #expect(cache.freeQueueOrder == queueBefore && cache.stats.usedBlocks == usedBefore)
                    let tokensAfter = try cache.tokens(of: h)
                    #expect(tokensAfter == model.sequences[h]!.tokens)
                }
            case 6:
                let h = live.randomElement(using: &rng)!
                for child in try cache.fork(h, count: Int.random(in: 1...2, using: &rng)) { model.sequences[child] = model.sequences[h] }
            case 7 where Int.random(in: 0..<2, using: &rng) == 0:
                // Rejected drafts dropped; the copy of a cached or shared partial block may not fit.
                let h = live.randomElement(using: &rng)!
                let count = model.sequences[h]!.tokens.count
                let keep = Int.random(in: max(1, count - 7)...count, using: &rng)
                do {
                    try cache.truncate(h, toTokenCount: keep)
                    try cache.copied(h)
                    model.truncated(h, to: keep)
                } catch {
                    guard case .insufficientBlocks = error else { throw error }
                    failures += 1
                    #expect(cache.freeQueueOrder == queueBefore && cache.stats.usedBlocks == usedBefore)
                    #expect(try cache.tokens(of: h) == model.sequences[h]!.tokens)
                }
            default:
                let h = live.randomElement(using: &rng)!
                // Some requests end before all their KV was written (cancelled, preempted): their
                // unwritten blocks leave the tree, which may only make later hits shorter.
                if Bool.random(using: &rng) {
                    try cache.release(h, computedTokens: Int.random(in: 0...model.sequences[h]!.tokens.count, using: &rng))
                } else {
                    try cache.release(h)
                }
                model.sequences[h] = nil
            }
            cache.checkInvariants()
            for (h, s) in model.sequences { #expect(try cache.tokens(of: h) == s.tokens, "seed \(seed) step \(step)") }
        }
        #expect(failures > 0, "the run never hit memory pressure; raise the load")
        #expect(cache.stats.evictedBlocks > 0)
        for h in model.sequences.keys { try cache.release(h) }
        #expect(cache.stats.usedBlocks == 0)
        cache.checkInvariants()
    }
}

/// Random families of forked and appended sequences, some of them cancelled part-way, with and
/// without a cold store.
@Suite struct FuzzTests {
    /// Decode plans for random batches of forked/appended sequences always build and check.
    @Test(arguments: [UInt64(21), 22, 23, 24])
    func decodePlansOfRandomFamilies(seed: UInt64) throws {
        var rng = SeededRandom(seed: seed)
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 4000)
        var live: [SequenceHandle] = []
        var plans = 0
        for _ in 0..<400 {
            let op = live.isEmpty ? 0 : Int.random(in: 0..<10, using: &rng)
            switch op {
            case 0...1:
                let p = (0..<Int.random(in: 1...14, using: &rng)).map { _ in TokenID.random(in: 0..<2, using: &rng) }
                live.append(try cache.admit(p).sequence)
            case 2...4:
                let h = live.randomElement(using: &rng)!
                try cache.append((0..<Int.random(in: 1...5, using: &rng)).map { _ in TokenID.random(in: 0..<2, using: &rng) }, to: h)
            case 5...6:
                live += try cache.fork(live.randomElement(using: &rng)!, count: Int.random(in: 1...3, using: &rng))
            case 7:
                try cache.release(live.remove(at: Int.random(in: 0..<live.count, using: &rng)))
            default:
                let batch = (0..<Int.random(in: 1...8, using: &rng)).map { _ in live.randomElement(using: &rng)! }
                let plan = try cache.decodePlan(for: batch)
                plan.checkInvariants()
                #expect(plan.batch.totalTokens == batch.reduce(0) { $0 + (try! cache.tokenCount(of: $1)) })
                plans += 1
            }
            cache.checkInvariants()
        }
        #expect(plans > 0)
    }

    /// Under memory pressure with a cold store, two namespaces and cancelled requests: what
    /// `lookup(probeStore:)` predicts is exactly what `admit` gets, tokens read back, no leak.
    @Test(arguments: [UInt64(31), 32, 33, 34])
    func boundedWithColdStore(seed: UInt64) throws {
        var rng = SeededRandom(seed: seed)
        let store = MemoryColdStore()
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 16, allocatesPages: true, coldStore: store)
        var live: [SequenceHandle: [TokenID]] = [:]
        for step in 0..<3000 {
            let keys = live.keys.sorted { $0.serial < $1.serial }
            let op = keys.isEmpty ? 0 : Int.random(in: 0..<11, using: &rng)
            let ns: Namespace = Bool.random(using: &rng) ? "a" : "b"
            switch op {
            case 0...3:
                let p = (0..<Int.random(in: 1...20, using: &rng)).map { _ in TokenID.random(in: 0..<2, using: &rng) }
                let predicted = try cache.lookup(p, namespace: ns, probeStore: true)
                do {
                    let a = try cache.admit(p, namespace: ns)
                    #expect(a.memoryHitTokens == predicted.memoryTokens, "step \(step)")
                    #expect(a.cachedTokenCount == predicted.totalTokens, "step \(step)")
                    live[a.sequence] = p
                } catch { guard case .insufficientBlocks = error else { throw error } }
            case 4...5:
                let h = keys.randomElement(using: &rng)!
                let t = (0..<Int.random(in: 1...6, using: &rng)).map { _ in TokenID.random(in: 0..<2, using: &rng) }
                do { try cache.append(t, to: h); live[h]! += t } catch { guard case .insufficientBlocks = error else { throw error } }
            case 6:
                let h = keys.randomElement(using: &rng)!
                for c in try cache.fork(h, count: Int.random(in: 1...2, using: &rng)) { live[c] = live[h] }
            case 7:
                let h = keys.randomElement(using: &rng)!
                try cache.release(h, computedTokens: Int.random(in: 0...live[h]!.count, using: &rng))
                live[h] = nil
            default:
                let h = keys.randomElement(using: &rng)!
                try cache.release(h)
                live[h] = nil
            }
            cache.checkInvariants()
            for (h, t) in live { #expect(try cache.tokens(of: h) == t, "step \(step)") }
        }
        for h in live.keys { try cache.release(h) }
        #expect(cache.stats.usedBlocks == 0)
        #expect(cache.stats.spilledBlocks > 0 && cache.stats.restoredBlocks > 0)
        cache.checkInvariants()
    }
}
