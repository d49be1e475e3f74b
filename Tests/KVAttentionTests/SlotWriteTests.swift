import KVAttention
import KVCache
import KVCore
import KVTestSupport
import Testing

/// The engine's write path end to end: admit → slot mapping → `KVPageArena.store` for every
/// layer, then fork + append (copy-on-write) → slot mapping → store, then paged and bifurcated
/// attention — against the same calls on a second manager written by hand (table arithmetic and
/// `KVDType.store` per element, README's old Quick start). The pages, so the kernels' outputs,
/// must be identical.
@Suite struct SlotWriteTests {
    /// The K (or V) element the "model" computes for token `position` of request `request`:
    /// deterministic, so both paths write the same values.
    static func kv(_ request: Int, _ position: Int, _ layer: Int, _ kind: KVKind, _ head: Int, _ i: Int) -> Float {
        var rng = SeededRandom(seed: UInt64(((((request * 4096 + position) * 8 + layer) * 2 + kind.rawValue) * 64 + head) * 256 + i))
        return Float.random(in: -1.7...1.7, using: &rng)
    }

    /// Sources `[token][kvHead][headDim]` for `positions` of `request`.
    static func source(_ layout: KVLayout, _ request: Int, _ positions: [Int], layer: Int, kind: KVKind) -> [Float] {
        positions.flatMap { p in
            (0..<layout.kvHeadCount).flatMap { h in (0..<layout.headDim).map { kv(request, p, layer, kind, h, $0) } }
        }
    }

    /// The old way: per position, the block from the table, then every element.
    static func writeByHand(_ cache: KVCacheManager, _ s: SequenceHandle, request: Int, positions: Range<Int>) throws {
        let l = cache.layout, table = try cache.blockTable(of: s)
        for p in positions {
            for layer in 0..<l.layerCount {
                for kind in KVKind.allCases {
                    cache.arena!.withUnsafeMutableBlockBytes(BlockID(table[p / l.blockSize]), layer: layer, kind: kind) { bytes in
                        for h in 0..<l.kvHeadCount {
                            let first = (h * l.blockSize + p % l.blockSize) * l.headDim
                            for i in 0..<l.headDim { l.dtype.store(kv(request, p, layer, kind, h, i), bytes.baseAddress!, first + i) }
                        }
                    }
                }
            }
        }
    }

    /// The new way: one mapping for the batch's spans, one store per layer.
    static func writeWithMapping(_ cache: KVCacheManager, _ spans: [(SlotSpan, request: Int)]) throws {
        let mapping = try cache.slotMapping(for: spans.map(\.0))
        for layer in 0..<cache.layout.layerCount {
            var keys: [Float] = [], values: [Float] = []
            for (k, (_, request)) in spans.enumerated() {
                let positions = mapping.positions[Int(mapping.indptr[k])..<Int(mapping.indptr[k + 1])].map(Int.init)
                keys += source(cache.layout, request, positions, layer: layer, kind: .keys)
                values += source(cache.layout, request, positions, layer: layer, kind: .values)
            }
            try cache.arena!.store(keys: keys, values: values, layer: layer, slots: mapping)
        }
    }

    struct Run {
        var cache: KVCacheManager
        var batch: [SequenceHandle]
        var parent: SequenceHandle
    }

    /// Two requests sharing a prefix (the second's prompt hits the first's full blocks), the first
    /// forked into samples that each append a token into the shared partial block (copy-on-write),
    /// then one more decode token each.
    static func scenario(_ layout: KVLayout, byHand: Bool) throws -> Run {
        let cache = try KVCacheManager(layout: layout, capacityBlocks: 64, allocatesPages: true)
        let shared = (0..<Int32(2 * layout.blockSize + 3)).map { $0 }
        let a = try cache.admit(shared)
        let b = try cache.admit(Array(shared.prefix(2 * layout.blockSize)) + [500, 501, 502, 503, 504])
        #expect(a.cachedTokenCount == 0 && b.cachedTokenCount == 2 * layout.blockSize)
        if byHand {
            try writeByHand(cache, a.sequence, request: 0, positions: a.cachedTokenCount..<shared.count)
            try writeByHand(cache, b.sequence, request: 1, positions: b.cachedTokenCount..<(try cache.tokenCount(of: b.sequence)))
        } else {
            try writeWithMapping(cache, [(.from(a.cachedTokenCount, of: a.sequence), 0), (.from(b.cachedTokenCount, of: b.sequence), 1)])
        }
        let samples = try cache.fork(a.sequence, count: 3)
        for step in 0..<2 {
            for (i, s) in samples.enumerated() { try cache.append([TokenID(900 + 10 * i + step)], to: s) }
            try cache.append([TokenID(950 + step)], to: b.sequence)
            let batch = samples + [b.sequence]
            let requests = [2, 3, 4, 1]
            if byHand {
                for (s, r) in zip(batch, requests) {
                    let n = try cache.tokenCount(of: s)
                    try writeByHand(cache, s, request: r, positions: (n - 1)..<n)
                }
            } else {
                let mapping = try cache.slotMapping(for: batch)   // after the appends: the copies
                for layer in 0..<layout.layerCount {
                    var keys: [Float] = [], values: [Float] = []
                    for (k, r) in requests.enumerated() {
                        keys += source(layout, r, [Int(mapping.positions[k])], layer: layer, kind: .keys)
                        values += source(layout, r, [Int(mapping.positions[k])], layer: layer, kind: .values)
                    }
                    try cache.arena!.store(keys: keys, values: values, layer: layer, slots: mapping.slots)
                }
            }
            cache.checkInvariants()
        }
        return Run(cache: cache, batch: samples + [b.sequence], parent: a.sequence)
    }

    @Test(arguments: KVDType.allCases)
    func mappedStoresGiveTheHandWrittenAttention(_ dtype: KVDType) throws {
        let layout = try KVLayout(layerCount: 2, kvHeadCount: 2, headDim: 16, blockSize: 4, dtype: dtype)
        let queryHeads = 4   // GQA: two query heads per KV head
        let byHand = try Self.scenario(layout, byHand: true), mapped = try Self.scenario(layout, byHand: false)
        // The same calls give the same blocks: the tables agree, and so must every page.
        for (x, y) in zip(byHand.batch, mapped.batch) {
            #expect(try byHand.cache.blockTable(of: x) == mapped.cache.blockTable(of: y))
        }
        for layer in 0..<layout.layerCount {
            for kind in KVKind.allCases {
                for block in 1...64 {
                    let h = byHand.cache.arena!.withUnsafeBlockBytes(BlockID(Int32(block)), layer: layer, kind: kind) { Array($0) }
                    let m = mapped.cache.arena!.withUnsafeBlockBytes(BlockID(Int32(block)), layer: layer, kind: kind) { Array($0) }
                    let same = h == m
                    #expect(same, "layer \(layer) \(kind) block \(block)")
                }
            }
        }
        var rng = SeededRandom(seed: 3)
        let query = (0..<(byHand.batch.count * queryHeads * layout.headDim)).map { _ in Float.random(in: -1...1, using: &rng) }
        let kernel = try DecodeAttention(layout: layout, queryHeads: queryHeads, threads: 1)
        let scale = DecodeAttention.defaultScale(headDim: layout.headDim)
        for layer in 0..<layout.layerCount {
            func outputs(_ run: Run) throws -> (paged: [Float], bifurcated: [Float], reference: [Float]) {
                let plan = try run.cache.decodePlan(for: run.batch)
                plan.checkInvariants()
                #expect(plan.hasSharing)
                return try run.cache.withUnsafeLayerPages(layer: layer) { pages in
                    (try kernel.paged(query: query, pages: pages, batch: plan.batch, scale: scale),
                     try kernel.bifurcated(query: query, pages: pages, plan: plan, scale: scale),
                     try ReferenceAttention.compute(query: query, pages: pages, batch: plan.batch, queryHeads: queryHeads, scale: scale))
                }
            }
            let h = try outputs(byHand), m = try outputs(mapped)
            #expect(m.paged == h.paged, "layer \(layer): paged")
            #expect(m.bifurcated == h.bifurcated, "layer \(layer): bifurcated")
            #expect(relativeError(m.bifurcated, m.reference) <= Tolerance.of(kernel))
        }
        for run in [byHand, mapped] {
            for s in run.batch + [run.parent] { try run.cache.release(s) }
            run.cache.checkInvariants()
        }
    }
}
