import Foundation
import KVCore
import Testing
@testable import KVCache

/// A randomized engine model (written by a reviewer of `BlockPublication` and namespace
/// retirement, 2026-12-01): many namespaces on a small pool (retirement and index reuse happen
/// constantly), both publication modes, `markComputed` (honest, under-reported or random in
/// "chaos" runs), forks, appends with copy-on-write, cancellations, lookups, and a lossy cold
/// store that checks the namespace and identity of every block it is given or gives back.
/// After every step: the invariants, every hit block holds the admitting namespace's prefix,
/// under `.whenComputed` no hit is unwritten, `lookup` agrees with the `admit` after it, and
/// `AppendResult.copy` matches the table's change. It caught both planted bugs it was tried
/// on (a retired namespace's root key kept; the fork relatives' chain bump dropped).
final class NSPubModel: @unchecked Sendable {
    var written: [Int]
    /// What each physical block holds: namespace bytes and the whole prefix up to its end.
    var identity: [(ns: [UInt8], prefix: [TokenID])?]
    let bs: Int
    var problems: [String] = []
    init(capacity: Int, bs: Int) {
        written = Array(repeating: 0, count: capacity + 1)
        identity = Array(repeating: nil, count: capacity + 1)
        self.bs = bs
    }
}

final class NSPubStore: ColdPrefixStore, @unchecked Sendable {
    let inner = MemoryColdStore()
    var stored: [PrefixKey: (ns: [UInt8], prefix: [TokenID]?, valid: Bool)] = [:]
    let model: NSPubModel
    var rng: SeededRandom
    var chaos = false
    init(model: NSPubModel, seed: UInt64) { self.model = model; rng = SeededRandom(seed: seed) }
    func rootKey(namespace: Namespace) -> PrefixKey { inner.rootKey(namespace: namespace) }
    func childKey(parent: PrefixKey, tokens: UnsafeBufferPointer<TokenID>) -> PrefixKey { inner.childKey(parent: parent, tokens: tokens) }
    func spill(key: PrefixKey, namespace: Namespace, tokens: UnsafeBufferPointer<TokenID>, block: BlockID, arena: KVPageArena?) {
        let b = Int(block.rawValue)
        let id = model.identity[b]
        if let id, id.ns != Array(namespace.rawValue.utf8) {
            model.problems.append("spill of block \(b) under namespace \(namespace) but it holds \(String(decoding: id.ns, as: UTF8.self))'s KV")
        }
        if let id, Array(id.prefix.suffix(model.bs)) != Array(tokens) {
            model.problems.append("spill of block \(b): tokens \(Array(tokens)) but block holds \(id.prefix.suffix(model.bs))")
        }
        if model.written[b] < model.bs && !chaos { model.problems.append("spill of unwritten block \(b)") }
        if rng.below(100) < 15 { return }
        inner.spill(key: key, namespace: namespace, tokens: tokens, block: block, arena: arena)
        stored[key] = (Array(namespace.rawValue.utf8), id?.prefix, model.written[b] == model.bs)
    }
    var lastRestore: (ns: [UInt8], prefix: [TokenID]?)?
    func restore(key: PrefixKey, namespace: Namespace, tokens: UnsafeBufferPointer<TokenID>, into block: BlockID, arena: KVPageArena?) -> Bool {
        guard inner.contains(key: key, tokens: tokens), let s = stored[key] else { return false }
        if s.ns != Array(namespace.rawValue.utf8) {
            model.problems.append("restore under \(namespace) of a record spilled under \(String(decoding: s.ns, as: UTF8.self))")
        }
        model.written[Int(block.rawValue)] = s.valid ? model.bs : 0
        model.identity[Int(block.rawValue)] = s.prefix.map { (s.ns, $0) }
        return true
    }
    func contains(key: PrefixKey, tokens: UnsafeBufferPointer<TokenID>) -> Bool {
        return inner.contains(key: key, tokens: tokens) && stored[key] != nil
    }
    func publish(stats: KVCacheStats) {}
    func forgetRandom() { inner.forgetRandom(using: &rng) }
}

struct NSPubConfig {
    var publication: BlockPublication
    var useStore: Bool
    var chaos: Bool        // markComputed / release with random values: structural checks only
    var nsCount: Int
}

func runNamespacePublicationModel(seed: UInt64, steps: Int, _ cfg: NSPubConfig) throws -> [String] {
    var rng = SeededRandom(seed: seed)
    let bs = 1 + rng.below(4)
    let capacity = 3 + rng.below(14)
    let model = NSPubModel(capacity: capacity, bs: bs)
    let store = cfg.useStore ? NSPubStore(model: model, seed: seed ^ 0x5eed) : nil
    store?.chaos = cfg.chaos
    let evicted = Locked<[(Int32, Namespace)]>([])
    let cache = try KVCacheManager(layout: .small(blockSize: bs), capacityBlocks: capacity, allocatesPages: cfg.useStore,
                                   publishesBlocks: cfg.publication, coldStore: store,
                                   onEvict: { e in
                                       evicted.withLock { $0.append((e.block.rawValue, e.namespace)) }
                                       if let id = model.identity[Int(e.block.rawValue)], id.ns != Array(e.namespace.rawValue.utf8) {
                                           model.problems.append("evicted block \(e.block) reported in namespace '\(e.namespace)' but holds '\(String(decoding: id.ns, as: UTF8.self))'")
                                       }
                                   })
    var problems: [String] = []
    func note(_ s: String, _ step: Int) { problems.append("seed \(seed) step \(step): \(s)") }
    // Names that differ only by Unicode normalisation must stay apart.
    let allNames: [String] = ["a", "b", "caf\u{e9}", "cafe\u{301}", "", "x", "y", "z", "w", "v", "u", "t"]
    let names = Array(allNames.prefix(cfg.nsCount))
    var live: [SequenceHandle: (ns: String, firstNew: Int)] = [:]
    let bases: [[TokenID]] = (0..<2).map { _ in (0..<(bs * 5)).map { _ in TokenID(rng.below(2)) } }

    func table(_ s: SequenceHandle) -> [Int32] { try! cache.blockTable(of: s) }
    func count(_ s: SequenceHandle) -> Int { try! cache.tokenCount(of: s) }
    func need(_ j: Int, _ n: Int) -> Int { blockTokenCount(j, of: n, blockSize: bs) }
    func contiguous(_ s: SequenceHandle) -> Int { writtenTokens(table(s), tokenCount: count(s), written: model.written, blockSize: bs) }
    func setIdentity(_ s: SequenceHandle) {
        // Full blocks a sequence holds get its (namespace, prefix) identity when it writes them.
        let t = table(s), toks = try! cache.tokens(of: s)
        let ns = Array(live[s]!.ns.utf8)
        for j in 0..<(toks.count / bs) where model.written[Int(t[j])] == bs && model.identity[Int(t[j])] == nil {
            model.identity[Int(t[j])] = (ns, Array(toks[0..<((j + 1) * bs)]))
        }
    }

    for step in 0..<steps {
        let handles = Array(live.keys).sorted { $0.serial < $1.serial }
        let op = rng.below(100)
        evicted.withLock { $0.removeAll() }
        if op < 30 || handles.isEmpty {
            let base = bases[rng.below(bases.count)]
            var prompt = Array(base[0..<(1 + rng.below(base.count))])
            for _ in 0..<rng.below(bs + 1) { prompt.append(TokenID(rng.below(2))) }
            let ns = names[rng.below(names.count)]
            let look = try cache.lookup(prompt, namespace: Namespace(ns), probeStore: true)
            guard let a = try? cache.admit(prompt, namespace: Namespace(ns)) else { continue }
            if look.memoryTokens != a.memoryHitTokens {
                note("lookup said \(look.memoryTokens) memory tokens, admit hit \(a.memoryHitTokens)", step)
            }
            if !cfg.chaos && look.storeTokens != a.storeHitTokens && model.problems.isEmpty {
                // lookup probes `contains`; restore may still stop on a colliding insert (rare)
                note("lookup said \(look.storeTokens) store tokens, admit restored \(a.storeHitTokens)", step)
            }
            let hits = a.cachedTokenCount / bs
            for j in 0..<hits {
                let b = Int(a.blockTable[j])
                if let id = model.identity[b] {
                    if id.ns != Array(ns.utf8) || id.prefix != Array(prompt[0..<((j + 1) * bs)]) {
                        note("admit in \(ns) hit block \(b) at \(j) holding \(String(decoding: id.ns, as: UTF8.self)):\(id.prefix)", step)
                    }
                } else if !cfg.chaos && cfg.publication == .whenComputed {
                    note("admit in \(ns) hit block \(b) at \(j) with no identity (never written)", step)
                }
                if cfg.publication == .whenComputed && !cfg.chaos && model.written[b] < bs {
                    note("whenComputed: admit hit unwritten block \(b) at \(j)", step)
                }
            }
            for j in hits..<a.blockTable.count {
                model.written[Int(a.blockTable[j])] = 0
                model.identity[Int(a.blockTable[j])] = nil
            }
            live[a.sequence] = (ns, hits)
        } else {
            let s = handles[rng.below(handles.count)]
            let t = table(s), n = count(s)
            if op < 55 {
                // engine writes the next block (causally)
                let j = firstUnwrittenBlock(t, tokenCount: n, written: model.written, blockSize: bs)
                if j < t.count && j >= live[s]!.firstNew {
                    model.written[Int(t[j])] = max(model.written[Int(t[j])], need(j, n))
                    setIdentity(s)
                }
                if cfg.chaos {
                    try cache.markComputed(s, computedTokens: rng.below(n + 1))
                } else if cfg.publication == .whenComputed || rng.below(3) == 0 {
                    try cache.markComputed(s, computedTokens: contiguous(s))
                }
            } else if op < 65 {
                let c = cfg.chaos ? rng.below(n + 1) : contiguous(s)
                live[s] = nil
                for h in try cache.release(s, computedTokens: c) {
                    live[h.sequence]!.firstNew = min(live[h.sequence]!.firstNew, h.validTokens / bs)
                }
            } else if op < 73 {
                if !cfg.chaos && contiguous(s) != n { continue }
                live[s] = nil
                try cache.release(s)
            } else if op < 82 {
                guard let kids = try? cache.fork(s, count: 1 + rng.below(2)) else { continue }
                for k in kids { live[k] = live[s] }
            } else {
                let add = (0..<(1 + rng.below(bs + 1))).map { _ in TokenID(rng.below(2)) }
                let fill = n % bs
                guard let r = try? cache.append(add, to: s) else { continue }
                let t2 = table(s)
                let copied = fill != 0 && t2[t.count - 1] != t[t.count - 1]
                if copied != (r.copy != nil) { note("append copy \(String(describing: r.copy)) but table \(t) -> \(t2)", step) }
                if let c = r.copy {
                    if c.source.rawValue != t[t.count - 1] || c.destination.rawValue != t2[t.count - 1] || c.tokenCount != fill {
                        note("append copy \(c) but table \(t) -> \(t2), fill \(fill)", step)
                    }
                    model.written[Int(c.destination.rawValue)] = min(model.written[Int(c.source.rawValue)], fill)
                    model.identity[Int(c.destination.rawValue)] = nil
                }
                for j in t.count..<t2.count { model.written[Int(t2[j])] = 0; model.identity[Int(t2[j])] = nil }
            }
        }
        if let store, rng.below(100) < 5 { store.forgetRandom() }
        cache.checkInvariants()
        if cache.namespaceSlots > names.count { note("\(cache.namespaceSlots) namespace slots for \(names.count) names", step) }
        if !cfg.chaos {
            for b in 1...capacity where cache.isCached(Int32(b)) && cache.refcount(of: Int32(b)) == 0 && model.written[b] < bs {
                note("unreferenced cached block \(b) never written", step)
            }
        }
        if !model.problems.isEmpty { for p in model.problems { note(p, step) }; model.problems.removeAll() }
        if problems.count > 5 { break }
    }
    for s in live.keys.sorted(by: { $0.serial < $1.serial }) { try cache.release(s) }
    cache.checkInvariants()
    return problems
}

@Suite struct NamespacePublicationModelTests {
    func sweep(_ cfg: NSPubConfig, seeds: Range<Int>, steps: Int = 400) throws {
        var bad = 0
        var first: [String] = []
        for i in seeds {
            let p = try runNamespacePublicationModel(seed: UInt64(i), steps: steps, cfg)
            if !p.isEmpty { bad += 1; if first.isEmpty { first = p } }
        }
        #expect(bad == 0, "\(bad) bad seeds; first: \(first.prefix(5).joined(separator: "\n"))")
    }
    static let seedCount = 150

    @Test func whenComputedNoStore() throws { try sweep(NSPubConfig(publication: .whenComputed, useStore: false, chaos: false, nsCount: 6), seeds: 0..<Self.seedCount) }
    @Test func whenComputedStore() throws { try sweep(NSPubConfig(publication: .whenComputed, useStore: true, chaos: false, nsCount: 6), seeds: 10000..<(10000 + Self.seedCount)) }
    @Test func atAdmissionStore() throws { try sweep(NSPubConfig(publication: .atAdmission, useStore: true, chaos: false, nsCount: 6), seeds: 20000..<(20000 + Self.seedCount)) }
    @Test func chaosWhenComputed() throws { try sweep(NSPubConfig(publication: .whenComputed, useStore: true, chaos: true, nsCount: 8), seeds: 30000..<(30000 + Self.seedCount)) }
    @Test func chaosAtAdmission() throws { try sweep(NSPubConfig(publication: .atAdmission, useStore: true, chaos: true, nsCount: 8), seeds: 40000..<(40000 + Self.seedCount)) }
    @Test func manyNamespaces() throws { try sweep(NSPubConfig(publication: .whenComputed, useStore: true, chaos: false, nsCount: 12), seeds: 50000..<(50000 + Self.seedCount)) }
}
