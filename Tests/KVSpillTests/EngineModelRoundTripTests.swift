import Dispatch
import Foundation
import KVCache
import KVCore
import KVTestSupport
import XCTest
@testable import KVSpill

/// the manager over a real LMDB store, with an engine model whose KV of one token
/// slot is a function of (namespace, every token up to and including it).
final class EngineModelRoundTripTests: XCTestCase {
    /// 1 layer, 1 KV head, head dim 8, fp16: 16 bytes of K and 16 of V per token slot.
    static let layout = try! KVLayout(layerCount: 1, kvHeadCount: 1, headDim: 8, blockSize: 4, dtype: .float16)

    static func slot(_ ns: Namespace, _ prefix: ArraySlice<TokenID>) -> (UInt64, UInt64) {
        var seed: UInt64 = 0x5EED
        for b in ns.rawValue.utf8 { seed = seed &* 131 &+ UInt64(b) }
        for t in prefix { seed = seed &* 31 &+ UInt64(bitPattern: Int64(t)) }
        var rng = SeededRandom(seed: seed)
        return (rng.next(), rng.next())
    }

    /// The engine writes the KV of tokens `from..<tokens.count` into the sequence's blocks.
    static func write(_ arena: KVPageArena, table: [Int32], ns: Namespace, tokens: [TokenID], from: Int) {
        for i in from..<tokens.count {
            let v = slot(ns, tokens[...i])
            for kind in KVKind.allCases {
                arena.withUnsafeMutableBlockBytes(BlockID(table[i / 4]), layer: 0, kind: kind) { b in
                    b.storeBytes(of: kind == .keys ? v.0 : v.1, toByteOffset: (i % 4) * 16, as: UInt64.self)
                    b.storeBytes(of: ~(kind == .keys ? v.0 : v.1), toByteOffset: (i % 4) * 16 + 8, as: UInt64.self)
                }
            }
        }
    }

    /// The first token whose KV is not what the engine wrote for it, or nil.
    static func firstWrong(_ arena: KVPageArena, table: [Int32], ns: Namespace, tokens: [TokenID], upTo n: Int) -> Int? {
        for i in 0..<n {
            let v = slot(ns, tokens[...i])
            for kind in KVKind.allCases {
                let ok = arena.withUnsafeBlockBytes(BlockID(table[i / 4]), layer: 0, kind: kind) { b in
                    b.load(fromByteOffset: (i % 4) * 16, as: UInt64.self) == (kind == .keys ? v.0 : v.1)
                        && b.load(fromByteOffset: (i % 4) * 16 + 8, as: UInt64.self) == ~(kind == .keys ? v.0 : v.1)
                }
                if !ok { return i }
            }
        }
        return nil
    }

    func runEngine(publication: BlockPublication, threads: Int, iterations: Int, capacity: Int, mode: SpillStoreConfiguration.WriteMode) throws {
        let layout = Self.layout
        let dir = try makeTemporaryDirectory(self)
        let cold = try LMDBSpillStore(SpillStoreConfiguration(path: dir + "/s", layout: layout, limitBytes: 1 << 20,
                                                              writeMode: mode, durable: false))
        let cache = try KVCacheManager(layout: layout, capacityBlocks: capacity, allocatesPages: true, publishesBlocks: publication,
                                       coldStore: cold, statsPublishInterval: .zero)
        let arena = cache.arena!
        let failures = Locked<[String]>([])
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            var rng = SeededRandom(seed: UInt64(7 + t))
            for _ in 0..<iterations {
                let ns: Namespace = ["a", "b", "c"][rng.below(3)]
                let chain = Int32(rng.below(3))
                let len = 1 + rng.below(14)
                let prompt: [TokenID] = (0..<len).map { chain * 1000 + Int32($0 % 7) + ($0 >= 8 ? 50 : 0) }
                var family: [(SequenceHandle, [TokenID])] = []
                defer { for (h, _) in family { try? cache.release(h) } }
                do {
                    let a = try cache.admit(prompt, namespace: ns)
                    family = [(a.sequence, prompt)]
                    if let w = Self.firstWrong(arena, table: a.blockTable, ns: ns, tokens: prompt, upTo: a.cachedTokenCount) {
                        failures.withLock { $0.append("thread \(t) ns \(ns) prompt \(prompt): hit token \(w) wrong KV, mem \(a.memoryHitTokens) store \(a.storeHitTokens) table \(a.blockTable)") }
                    }
                    Self.write(arena, table: a.blockTable, ns: ns, tokens: prompt, from: a.cachedTokenCount)
                    try cache.markComputed(a.sequence, computedTokens: prompt.count)
                    if rng.below(2) == 0 {
                        family += try cache.fork(a.sequence, count: 2).map { ($0, prompt) }
                    }
                    for _ in 0..<rng.below(6) {
                        let k = rng.below(family.count)
                        let (h, toks) = family[k]
                        let new = TokenID(rng.below(2))
                        try cache.append([new], to: h)
                        let all = toks + [new]
                        Self.write(arena, table: try cache.blockTable(of: h), ns: ns, tokens: all, from: toks.count)
                        try cache.markComputed(h, computedTokens: all.count)
                        family[k].1 = all
                    }
                    for (h, toks) in family.reversed() {
                        if let w = Self.firstWrong(arena, table: try cache.blockTable(of: h), ns: ns, tokens: toks, upTo: toks.count) {
                            failures.withLock { $0.append("thread \(t) ns \(ns) \(h) tokens \(toks): token \(w) wrong KV before release") }
                        }
                        try cache.release(h)
                        family.removeLast()
                    }
                } catch KVCacheError.insufficientBlocks {
                } catch {
                    failures.withLock { $0.append("thread \(t): \(error)") }
                }
            }
        }
        cache.checkInvariants()
        cold.flush()
        _ = cold.checkInvariants()
        XCTAssertEqual(failures.withLock { $0 }.prefix(5).joined(separator: "\n"), "")
        XCTAssertGreaterThan(cache.stats.restoredBlocks, 0)

    }

    func testConcurrentEngineWhenComputed() throws {
        try runEngine(publication: .whenComputed, threads: 3, iterations: 1500, capacity: 24, mode: .background(queueLimitBytes: 64 << 10))
    }

    func testSingleThreadAtAdmissionSync() throws {
        try runEngine(publication: .atAdmission, threads: 1, iterations: 3000, capacity: 12, mode: .synchronous)
    }

    func testSingleThreadAtAdmissionFourBlockPool() throws {
        try runEngine(publication: .atAdmission, threads: 1, iterations: 2000, capacity: 4, mode: .background(queueLimitBytes: 64 << 10))
    }
}

extension EngineModelRoundTripTests {
    /// Cancelled prefills (partly written) with a small store that evicts and a queue that drops.
    func testCancelledPrefillsNeverReachAHit() throws {
        let layout = Self.layout
        for mode in [SpillStoreConfiguration.WriteMode.synchronous, .background(queueLimitBytes: 1 << 10)] {
            let dir = try makeTemporaryDirectory(self)
            let cold = try LMDBSpillStore(SpillStoreConfiguration(path: dir + "/s", layout: layout, limitBytes: 8 << 10,
                                                                  writeMode: mode, durable: false))
            let cache = try KVCacheManager(layout: layout, capacityBlocks: 6, allocatesPages: true, coldStore: cold)
            let arena = cache.arena!
            var rng = SeededRandom(seed: 99)
            var live: [(SequenceHandle, [TokenID], Namespace, Int)] = []  // written tokens
            for step in 0..<4000 {
                if live.count < 2 && rng.below(2) == 0 {
                    let ns: Namespace = ["a", "b"][rng.below(2)]
                    let chain = Int32(rng.below(2))
                    let len = 1 + rng.below(14)
                    let prompt: [TokenID] = (0..<len).map { chain * 1000 + Int32($0 % 5) + ($0 >= 8 ? 50 : 0) }
                    guard let a = try? cache.admit(prompt, namespace: ns) else { continue }
                    if let w = Self.firstWrong(arena, table: a.blockTable, ns: ns, tokens: prompt, upTo: a.cachedTokenCount) {
                        // Under .atAdmission another live request may still owe these blocks' KV.
                        let owed = live.contains { $0.2 == ns && $0.3 < $0.1.count }
                        if !owed { XCTFail("step \(step) \(mode): hit token \(w) of \(prompt) in \(ns) has wrong KV (mem \(a.memoryHitTokens) store \(a.storeHitTokens))"); return }
                    }
                    live.append((a.sequence, prompt, ns, a.cachedTokenCount))
                } else if !live.isEmpty {
                    let k = rng.below(live.count)
                    var (h, toks, ns, written) = live[k]
                    let c = rng.below(3) == 0 ? written + rng.below(toks.count - written + 1) : toks.count
                    Self.write(arena, table: try cache.blockTable(of: h), ns: ns, tokens: Array(toks[..<c]), from: written)
                    written = c
                    let handed = try cache.release(h, computedTokens: c)
                    live.remove(at: k)
                    for hit in handed {
                        if let j = live.firstIndex(where: { $0.0 == hit.sequence }) { live[j].3 = min(live[j].3, hit.validTokens) }
                    }
                    cache.checkInvariants()
                }
            }
            for (h, _, _, w) in live { try cache.release(h, computedTokens: w) }
            cold.flush()
            _ = cold.checkInvariants()

        }
    }
}
