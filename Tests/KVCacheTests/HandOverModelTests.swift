import Foundation
import KVCore
import Testing
@testable import KVCache

/// An engine model for `release(_:computedTokens:)` and its hand-over of unwritten hits: it tracks,
/// per physical block, how many tokens' KV an engine really wrote (causally, each sequence only
/// from its first new block on, honouring every `InvalidatedHit`), and checks after every random
/// step that no admission hits a block nobody wrote or will write, that no unreferenced cached
/// block is unwritten, that no sequence waits on a block nobody owns, and that the cold store
/// never takes or gives back garbage. Written by a reviewer (2026-12-01), who found with it the
/// hole the store-restored descendants left (`CancelledRequestTests`).
final class HandOverWrites: @unchecked Sendable {
    var written: [Int]            // per physical block: tokens whose KV is validly written
    let bs: Int
    var garbageSpills = 0
    var garbageRestores = 0
    init(capacity: Int, bs: Int) { written = Array(repeating: 0, count: capacity + 1); self.bs = bs }
}

/// A cold store that remembers whether what it was given was valid KV, and may lose records.
final class HandOverStore: ColdPrefixStore, @unchecked Sendable {
    let inner = MemoryColdStore()
    var valid: [PrefixKey: Bool] = [:]
    let model: HandOverWrites
    var rng: SeededRandom
    var dropSpillPercent: Int
    init(model: HandOverWrites, seed: UInt64, dropSpillPercent: Int) {
        self.model = model; rng = SeededRandom(seed: seed); self.dropSpillPercent = dropSpillPercent
    }
    func rootKey(namespace: Namespace) -> PrefixKey { inner.rootKey(namespace: namespace) }
    func childKey(parent: PrefixKey, tokens: UnsafeBufferPointer<TokenID>) -> PrefixKey { inner.childKey(parent: parent, tokens: tokens) }
    func spill(key: PrefixKey, namespace: Namespace, tokens: UnsafeBufferPointer<TokenID>, block: BlockID, arena: KVPageArena?) {
        let ok = model.written[Int(block.rawValue)] == model.bs
        if !ok { model.garbageSpills += 1 }
        if rng.below(100) < dropSpillPercent { return }  // queue full / store at its limit: record lost
        inner.spill(key: key, namespace: namespace, tokens: tokens, block: block, arena: arena)
        valid[key] = ok
    }
    func restore(key: PrefixKey, namespace: Namespace, tokens: UnsafeBufferPointer<TokenID>, into block: BlockID, arena: KVPageArena?) -> Bool {
        guard inner.contains(key: key, tokens: tokens) else { return false }
        let ok = valid[key] ?? false
        if !ok { model.garbageRestores += 1 }
        model.written[Int(block.rawValue)] = ok ? model.bs : 0
        return true
    }
    func contains(key: PrefixKey, tokens: UnsafeBufferPointer<TokenID>) -> Bool { inner.contains(key: key, tokens: tokens) }
    func publish(stats: KVCacheStats) {}
    func forgetRandom() { inner.forgetRandom(using: &rng) }
}

/// Tokens of block `j` of an `n`-token sequence (only the last block may be partial).
func blockTokenCount(_ j: Int, of n: Int, blockSize bs: Int) -> Int { min(bs, n - j * bs) }

/// The first block of a sequence's `table` whose KV is not wholly written (`table.count` when
/// all are), by an engine model's per-block `written` token counts: the engine writes causally,
/// so it is the one written next.
func firstUnwrittenBlock(_ table: [Int32], tokenCount n: Int, written: [Int], blockSize bs: Int) -> Int {
    var j = 0
    while j < table.count && written[Int(table[j])] >= blockTokenCount(j, of: n, blockSize: bs) { j += 1 }
    return j
}

/// The sequence's tokens whose KV is written, counted from the first: its wholly written blocks
/// and what the first unwritten one holds.
func writtenTokens(_ table: [Int32], tokenCount n: Int, written: [Int], blockSize bs: Int) -> Int {
    let j = firstUnwrittenBlock(table, tokenCount: n, written: written, blockSize: bs)
    guard j < table.count else { return n }
    return j * bs + min(written[Int(table[j])], blockTokenCount(j, of: n, blockSize: bs))
}

struct HandOverViolations: CustomStringConvertible {
    var hitOverUnowned = 0      // an admission's hit block is unwritten and no live sequence owns it
    var unwrittenInTree = 0     // a cached block with refcount 0 whose KV was never written
    var stuck = 0               // a live sequence waits for a hit block nobody will write
    var hitUnwritten = 0        // `.whenComputed`: an admission's hit block is not written yet
    var ownPositionMismatch = 0 // `firstOwnPosition(of:)` is not where the model's writes start
    var first: String?
    var total: Int { hitOverUnowned + unwrittenInTree + stuck + hitUnwritten + ownPositionMismatch }
    var description: String {
        "hitOverUnowned=\(hitOverUnowned) unwrittenInTree=\(unwrittenInTree) stuck=\(stuck) hitUnwritten=\(hitUnwritten) ownPositionMismatch=\(ownPositionMismatch) first=\(first ?? "-")"
    }
}

func runHandOverModel(seed: UInt64, steps: Int, useStore: Bool, dropSpillPercent: Int, forgetPercent: Int,
                      underReport: Bool, ignoreInvalidated: Bool = false, prefilledStore: Bool = false, onePrompt: Bool = false,
                      publication: BlockPublication = .atAdmission) throws -> (HandOverViolations, [String: Int]) {
    var rng = SeededRandom(seed: seed)
    let slowEngine = seed % 3 == 0   // the engine rarely gets to write: cancellations come first
    let admitPct = slowEngine ? 45 : 30
    let bs = 1 + rng.below(5)
    let capacity = onePrompt ? 4 + rng.below(6) : 4 + rng.below(20)
    let model = HandOverWrites(capacity: capacity, bs: bs)
    let store = useStore ? HandOverStore(model: model, seed: seed ^ 0xabc, dropSpillPercent: dropSpillPercent) : nil
    let cache = try KVCacheManager(layout: .small(blockSize: bs), capacityBlocks: capacity, allocatesPages: useStore,
                                   publishesBlocks: publication, coldStore: store)
    var v = HandOverViolations()
    var counts: [String: Int] = [:]
    var firstNew: [SequenceHandle: Int] = [:]   // the model's view: positions >= this are the sequence's to write
    let namespaces: [Namespace] = ["a", "b"]
    let bases: [[TokenID]] = (0..<(onePrompt ? 1 : 3)).map { _ in (0..<(bs * 5)).map { _ in TokenID(rng.below(3)) } }

    func table(_ s: SequenceHandle) -> [Int32] { try! cache.blockTable(of: s) }
    func count(_ s: SequenceHandle) -> Int { try! cache.tokenCount(of: s) }
    func need(_ j: Int, _ n: Int) -> Int { blockTokenCount(j, of: n, blockSize: bs) }
    func owned(_ b: Int32, at j: Int, except: SequenceHandle? = nil) -> Bool {
        for (t, f) in firstNew where t != except && j >= f {
            let tt = table(t)
            if j < tt.count && tt[j] == b { return true }
        }
        return false
    }
    func note(_ what: String, _ step: Int) { if v.first == nil { v.first = "seed \(seed) step \(step): \(what)" } }
    func contiguous(_ s: SequenceHandle) -> Int { writtenTokens(table(s), tokenCount: count(s), written: model.written, blockSize: bs) }
    func apply(_ inv: [InvalidatedHit], _ step: Int) {
        if ignoreInvalidated { return }
        for h in inv {
            counts["invalidated", default: 0] += 1
            precondition(h.validTokens % bs == 0)
            precondition(h.validTokens / bs <= firstNew[h.sequence]!, "validTokens beyond the old hit count")
            firstNew[h.sequence] = h.validTokens / bs
        }
    }

    // A store left by an earlier run that lost some records (queue full, size limit).
    if let store, prefilledStore {
        for base in bases {
            for ns in namespaces {
                var key = store.rootKey(namespace: ns)
                for d in 0..<(base.count / bs) {
                    let chunk = Array(base[(d * bs)..<((d + 1) * bs)])
                    key = chunk.withUnsafeBufferPointer { store.childKey(parent: key, tokens: $0) }
                    if rng.below(2) == 0 {
                        chunk.withUnsafeBufferPointer { store.inner.spill(key: key, namespace: ns, tokens: $0, block: BlockID(0), arena: nil) }
                        store.valid[key] = true
                    }
                }
            }
        }
    }
    for step in 0..<steps {
        let live = Array(firstNew.keys).sorted { $0.serial < $1.serial }
        // The positions the manager lets a sequence map for writing start where the model's do.
        // (An engine ignoring the hand-over disagrees by design; that test checks the other counts.)
        for s in live where try !ignoreInvalidated && cache.firstOwnPosition(of: s) != firstNew[s]! * bs {
            v.ownPositionMismatch += 1
            note("sequence \(s.serial) may write from \(try cache.firstOwnPosition(of: s)), the model says \(firstNew[s]! * bs)", step)
        }
        let op = rng.below(100)
        if op < admitPct || live.isEmpty {
            let base = bases[rng.below(bases.count)]
            var prompt = Array(base[0..<(1 + rng.below(base.count))])
            for _ in 0..<rng.below(bs + 1) { prompt.append(TokenID(rng.below(3))) }
            let ns = namespaces[onePrompt ? 0 : rng.below(2)]
            guard let a = try? cache.admit(prompt, namespace: ns) else { continue }
            counts["admit", default: 0] += 1
            let hits = a.cachedTokenCount / bs
            if a.storeHitTokens > 0 { counts["storeHit", default: 0] += 1 }
            if a.storeHitTokens > 0, a.memoryHitTokens > 0, model.written[Int(a.blockTable[a.memoryHitTokens / bs - 1])] < bs {
                counts["storeUnderUnwritten", default: 0] += 1
            }
            for j in 0..<a.blockTable.count where j >= hits { model.written[Int(a.blockTable[j])] = 0 }
            for j in 0..<hits where model.written[Int(a.blockTable[j])] < bs && !owned(a.blockTable[j], at: j) {
                v.hitOverUnowned += 1; note("admission hit over unwritten unowned block \(a.blockTable[j]) at \(j)", step)
            }
            if publication == .whenComputed {
                for j in 0..<hits where model.written[Int(a.blockTable[j])] < bs {
                    v.hitUnwritten += 1; note("admission hit over unwritten block \(a.blockTable[j]) at \(j)", step)
                }
            }
            firstNew[a.sequence] = hits
        } else {
            let s = live[rng.below(live.count)]
            let t = table(s), n = count(s)
            if op < 60 {
                // Engine computes the next block (causal: everything before it is written).
                let j = firstUnwrittenBlock(t, tokenCount: n, written: model.written, blockSize: bs)
                if j == t.count { continue }
                if j < firstNew[s]! {
                    if !owned(t[j], at: j, except: s) { v.stuck += 1; note("sequence \(s.serial) waits on block \(t[j]) at \(j), owned by nobody", step) }
                    continue
                }
                model.written[Int(t[j])] = max(model.written[Int(t[j])], need(j, n))
                counts["write", default: 0] += 1
                if publication == .whenComputed {  // the engine reports its progress (maybe less)
                    let c = contiguous(s)
                    try cache.markComputed(s, computedTokens: underReport && rng.below(4) == 0 ? rng.below(c + 1) : c)
                }
            } else if op < 70 {  // cancel
                let c = contiguous(s)
                let reported = underReport && rng.below(4) == 0 ? rng.below(c + 1) : c
                firstNew[s] = nil
                apply(try cache.release(s, computedTokens: reported), step)
                counts["cancel", default: 0] += 1
            } else if op < 78 {
                guard contiguous(s) == n else { continue }
                firstNew[s] = nil
                try cache.release(s)
                counts["release", default: 0] += 1
            } else if op < 86 {
                guard let kids = try? cache.fork(s, count: 1 + rng.below(2)) else { continue }
                for k in kids { firstNew[k] = firstNew[s]! }
                counts["fork", default: 0] += 1
            } else {
                // Decode or a prefill chunk: tokens appended, KV computed later by "write".
                let add = (0..<(1 + rng.below(bs + 1))).map { _ in TokenID(rng.below(3)) }
                let fill = n % bs
                guard (try? cache.append(add, to: s)) != nil else { continue }
                let t2 = table(s)
                if fill != 0 && t2[t.count - 1] != t[t.count - 1] {  // copy-on-write: KV of `fill` tokens copied
                    model.written[Int(t2[t.count - 1])] = min(model.written[Int(t[t.count - 1])], fill)
                }
                for j in t.count..<t2.count { model.written[Int(t2[j])] = 0 }
                counts["append", default: 0] += 1
            }
        }
        if let store, forgetPercent > 0, rng.below(100) < forgetPercent { store.forgetRandom() }
        cache.checkInvariants()
        // Every cached unreferenced block must hold written KV (nobody is left to write it).
        for b in 1...capacity where cache.isCached(Int32(b)) && cache.refcount(of: Int32(b)) == 0 && model.written[b] < bs {
            v.unwrittenInTree += 1; note("unreferenced cached block \(b) never written", step)
        }
    }
    counts["garbageSpills"] = model.garbageSpills
    counts["garbageRestores"] = model.garbageRestores
    return (v, counts)
}

@Suite struct HandOverModelTests {
    /// `seeds` runs of 300 random steps; every one must keep the model's guarantees.
    func sweep(_ name: String, seeds: Range<Int>, useStore: Bool, drop: Int = 0, forget: Int = 0, prefilled: Bool = false,
               onePrompt: Bool = false, publication: BlockPublication = .atAdmission) throws {
        var bad = 0, firstBad: String?
        var totals: [String: Int] = [:]
        for i in seeds {
            let (v, c) = try runHandOverModel(seed: UInt64(i), steps: 300, useStore: useStore, dropSpillPercent: drop,
                                              forgetPercent: forget, underReport: i % 2 == 1, prefilledStore: prefilled,
                                              onePrompt: onePrompt, publication: publication)
            for (k, n) in c { totals[k, default: 0] += n }
            if i % 2 == 0 { totals["invalidatedWhenReportsAgree", default: 0] += c["invalidated", default: 0] }
            if v.total > 0 || c["garbageSpills"]! > 0 || c["garbageRestores"]! > 0 {
                bad += 1
                if firstBad == nil { firstBad = "\(v) garbageSpills=\(c["garbageSpills"]!) garbageRestores=\(c["garbageRestores"]!)" }
            }
        }
        #expect(bad == 0, "\(name): \(firstBad ?? "")")
        if publication == .atAdmission {
            #expect(totals["invalidated", default: 0] > 0 && totals["cancel", default: 0] > 0, "\(name) exercised no hand-over: \(totals)")
        } else {
            // Nobody can match an unwritten block, so nothing is handed over — unless the engine
            // reported more with `markComputed` than it then tells `release` (odd seeds do).
            #expect(totals["invalidatedWhenReportsAgree", default: 0] == 0 && totals["cancel", default: 0] > 0, "\(name): \(totals)")
            #expect(totals["storeHit", default: 0] > 0 || !useStore, "\(name) restored nothing: \(totals)")
        }
    }

    @Test func noStore() throws { try sweep("no store", seeds: 0..<150, useStore: false) }
    @Test func losslessStore() throws { try sweep("lossless store", seeds: 1000..<1150, useStore: true) }
    @Test func lossyStore() throws { try sweep("lossy store", seeds: 2000..<2150, useStore: true, drop: 20, forget: 5) }
    /// A store an earlier run left with records missing: children restored under unwritten
    /// blocks (one prompt, small pools, so it happens often enough).
    @Test func storeWithGaps() throws {
        try sweep("store with gaps", seeds: 3000..<4500, useStore: true, drop: 50, forget: 20, prefilled: true, onePrompt: true)
    }

    /// `.whenComputed`: blocks join the tree only as the engine reports them written (sometimes
    /// less than it wrote), so no admission may hit an unwritten block at all.
    @Test func whenComputedNoStore() throws { try sweep("when computed", seeds: 5000..<5150, useStore: false, publication: .whenComputed) }
    @Test func whenComputedLossyStore() throws {
        try sweep("when computed, lossy store", seeds: 6000..<6300, useStore: true, drop: 30, forget: 10, prefilled: true,
                  publication: .whenComputed)
    }

    /// The model catches an engine that ignores `InvalidatedHit` (it is not vacuous).
    @Test func anEngineIgnoringTheHandOverIsCaught() throws {
        var caught = 0
        for seed in 0..<100 {
            let (v, _) = try runHandOverModel(seed: UInt64(seed), steps: 300, useStore: false, dropSpillPercent: 0,
                                              forgetPercent: 0, underReport: false, ignoreInvalidated: true)
            if v.total > 0 { caught += 1 }
        }
        #expect(caught > 0)
    }
}
