import KVCore
import KVTestSupport
import Testing
@testable import KVCache

/// Prefix matching against a brute-force oracle: after every operation of a seeded random run,
/// `matchMemory` (hinted child first, then hash and probe) must find exactly the chain a scan of
/// every tree block finds by comparing tokens. Tiny pools make eviction and block reuse constant,
/// a two-letter alphabet makes siblings common, some namespaces stay unseen for a while, and the
/// block sizes include odd ones (the token comparison's tail).
@Suite struct MatchOracleTests {
    /// The longest chain from namespace `k`'s root whose blocks hold `tokens`, found by scanning.
    static func oracleMatch(_ s: CacheState, _ tokens: [TokenID], namespace k: Int32?) -> [Int32] {
        guard let k else { return [] }
        let bs = s.blockSize
        var parent = PrefixIndex.rootCode(namespace: k)
        var chain: [Int32] = []
        for i in 0..<(tokens.count / bs) {
            let chunk = Array(tokens[(i * bs)..<((i + 1) * bs)])
            let found = (1...s.pool.capacity).filter { b in
                s.index.inTree[b] && s.index.parent[b] == parent && Array(s.blockTokens[(b * bs)..<((b + 1) * bs)]) == chunk
            }
            #expect(found.count <= 1, "two siblings hold the same tokens: \(found)")
            guard let c = found.first else { break }
            chain.append(Int32(c))
            parent = Int32(c)
        }
        return chain
    }

    static func expectOracle(_ s: CacheState, _ tokens: [TokenID], _ ns: Namespace, _ context: String) {
        let k = s.namespaces[ns]
        let got = s.matchMemory(tokens, namespace: k), want = oracleMatch(s, tokens, namespace: k)
        #expect(got == want, "\(context): matched \(got), the oracle finds \(want)")
    }

    /// Two 3-token blocks with the same `hashBlockTokens` (found by a birthday search on the hash's
    /// tail lane): siblings whose map keys collide.
    static let collideX: [TokenID] = [8330, 0, 0]
    static let collideY: [TokenID] = [89085, 0, 2_116_953_692]

    @Test func collisionFixtureCollides() {
        let hx = Self.collideX.withUnsafeBufferPointer { hashBlockTokens($0) }
        let hy = Self.collideY.withUnsafeBufferPointer { hashBlockTokens($0) }
        #expect(hx == hy && Self.collideX != Self.collideY)
    }

    /// Colliding siblings in every insertion order: the first of the pair takes the map slot and
    /// is the only one that can hit (the second is never cached), and no prompt ever matches a
    /// block holding other tokens — whether the parent's hint names it or not.
    @Test func collidingSiblingsNeverGiveAWrongHit() throws {
        let x = Self.collideX, y = Self.collideY, prefix: [TokenID] = [1, 2, 3], other: [TokenID] = [4, 5, 6]
        for order in [[x, other], [other, x], [x], [other, x, y], [y, x], [x, y, other]] {
            let cache = try KVCacheManager(layout: .small(blockSize: 3), capacityBlocks: 16)
            for c in order {
                let a = try cache.admit(prefix + c)
                try cache.release(a.sequence)
                cache.checkInvariants()
            }
            let firstOfPair = order.first { $0 == x || $0 == y }
            for c in [x, y, other] {
                let matched = cache.memoryMatch(prefix + c)
                let expectHit = (c == x || c == y) ? firstOfPair == c : order.contains(c)
                #expect((matched.count == 2) == expectHit, "order \(order), prompt \(c): matched \(matched)")
                let a = try cache.admit(prefix + c)
                #expect(try cache.tokens(of: a.sequence) == prefix + c)
                #expect(a.memoryHitTokens == matched.count * 3)
                try cache.release(a.sequence)
                cache.checkInvariants()
            }
            #expect(cache.memoryMatch(y + prefix).isEmpty || firstOfPair == y)  // a colliding root block
        }
    }

    @Test(arguments: [1, 3, 4, 7, 16, 17])
    func matchingEqualsTheOracle(blockSize bs: Int) throws {
        for seed in UInt64(1)...2 {
            for useStore in [false, true] { try run(blockSize: bs, seed: seed &* 7919 &+ UInt64(bs), useStore: useStore) }
        }
    }

    func run(blockSize bs: Int, seed: UInt64, useStore: Bool) throws {
        var rng = SeededRandom(seed: seed)
        let capacity = Int.random(in: 6...20, using: &rng)
        var s = CacheState(layout: .small(blockSize: bs), capacity: capacity, arena: nil,
                           coldStore: useStore ? MemoryColdStore() : nil, onEvict: nil)
        let namespaces = (0..<6).map { Namespace("ns\($0)") }
        var live: [SequenceHandle: [TokenID]] = [:]
        let alphabet: Int32 = bs <= 2 ? 3 : 2
        func randomTokens(_ n: Int) -> [TokenID] {
            if bs == 3 && Int.random(in: 0..<4, using: &rng) == 0 {  // splice in the colliding blocks
                return (0..<((n + 2) / 3)).flatMap { _ in [Self.collideX, Self.collideY, [0, 0, 0], [1, 1, 1]].randomElement(using: &rng)! }
            }
            return (0..<n).map { _ in TokenID.random(in: 0..<alphabet, using: &rng) }
        }
        for step in 0..<800 {
            let context = "block size \(bs), seed \(seed), store \(useStore), step \(step)"
            let handles = live.keys.sorted { $0.serial < $1.serial }
            let ns = namespaces[Int.random(in: 0..<(step < 200 ? 3 : 6), using: &rng)]
            switch handles.isEmpty ? 0 : Int.random(in: 0..<12, using: &rng) {
            case 0...3:
                let prompt = randomTokens(Int.random(in: 1...(5 * bs + 2), using: &rng))
                Self.expectOracle(s, prompt, ns, context)
                let (roots, known) = (s.index.rootLastChild, s.namespaces)
                _ = try s.lookup(prompt, namespace: ns, probeStore: useStore)
                #expect(s.index.rootLastChild == roots && s.namespaces == known, "\(context): lookup changed the index")
                do {
                    let a = try s.admit(prompt, namespace: ns)
                    live[a.sequence] = prompt
                } catch { guard case .insufficientBlocks = error else { throw error } }
            case 4...5:
                let h = handles.randomElement(using: &rng)!
                let t = randomTokens(Int.random(in: 1...(2 * bs), using: &rng))
                do {
                    try s.append(t, to: h)
                    live[h]! += t
                } catch { guard case .insufficientBlocks = error else { throw error } }
            case 6:
                let h = handles.randomElement(using: &rng)!
                for c in try s.fork(h, count: Int.random(in: 1...2, using: &rng)) { live[c] = live[h] }
            case 7...8:
                let h = handles.randomElement(using: &rng)!
                try s.release(h, computedTokens: Int.random(in: 0...live[h]!.count, using: &rng))
                live[h] = nil
            default:
                let h = handles.randomElement(using: &rng)!
                try s.release(h)
                live[h] = nil
            }
            s.takeEvictedSpills()?.run()   // what the manager does after each call's critical section
            s.checkInvariants()
            for h in handles.prefix(3) where live[h] != nil {
                for n in namespaces { Self.expectOracle(s, live[h]!, n, "\(context), sequence \(h.serial)") }
            }
        }
    }
}
