import Foundation
import KVAttention
import KVCache
import KVCore

/// `kvctl demo`: the whole path end to end on a small model layout.
///
/// Requests share a system prompt; each prefills its uncached tokens with causal attention over
/// the cached prefix (`cache.stepPlan`), then forks 32 samples that decode with bifurcated
/// attention (both timed against the paged kernel on the same pages, and checked against it); the pool is small
/// enough that older requests' blocks are evicted and spilled to the store; finally the first
/// request returns and its prompt comes back from memory and the store, verified element by element.
public struct Demo {
    public struct Options: Sendable {
        public var requests = 4
        public var samples = 32
        public var systemPromptTokens = 1024
        public var userPromptTokens = 192
        public var decodeSteps = 16
        /// The pool; nil: ``neededBlocks``, just what one request needs at its peak, so each
        /// request still evicts (and spills) the blocks of the one before.
        public var capacityBlocks: Int?
        public var queryHeads = 32
        public var layout = try! KVLayout(layerCount: 2, kvHeadCount: 8, headDim: 128, blockSize: 16, dtype: .bfloat16)
        public var seed: UInt64 = 42
        public init() {}

        /// Blocks one request holds at its peak: its prompt, plus for each sample the blocks its
        /// decode tokens fill (a prompt ending mid-block counts twice: its shared last block, and
        /// each sample's copy of it, written on the first append). Nothing more, so the cached
        /// blocks of earlier requests must be evicted (and spilled) to make room: the demo's point.
        /// The defaults need 76 + 32 × 1 = 108. Saturates at `Int.max` (``validate()`` rejects that).
        public var neededBlocks: Int {
            func blocks(_ tokens: Int) -> Int { ceilDivide(tokens, layout.blockSize) }
            let (promptTokens, o1) = systemPromptTokens.addingReportingOverflow(userPromptTokens)
            let (sampleTokens, o2) = (promptTokens % layout.blockSize).addingReportingOverflow(decodeSteps)
            let (decode, o3) = samples.multipliedReportingOverflow(by: blocks(sampleTokens))
            let (total, o4) = decode.addingReportingOverflow(blocks(promptTokens))
            return o1 || o2 || o3 || o4 ? Int.max : total
        }

        /// The pool the demo runs with.
        public var poolBlocks: Int { capacityBlocks ?? neededBlocks }

        /// Steps and samples a demo may ask for (it is a demo: seconds, not hours).
        public static let samplesRange = 1...4096
        public static let decodeStepsRange = 1...65536
        public static let requestsRange = 1...1024

        /// Fails on options the demo cannot run to the end with, naming the kvctl option.
        public func validate() throws(OptionError) {
            try OptionChecks.inRange(requests, Self.requestsRange, "--requests")
            try OptionChecks.inRange(samples, Self.samplesRange, "--samples")
            try OptionChecks.inRange(decodeSteps, Self.decodeStepsRange, "--steps")
            try OptionChecks.atLeast(systemPromptTokens, 1, "systemPromptTokens")
            try OptionChecks.atLeast(userPromptTokens, 1, "userPromptTokens")
            try OptionChecks.atLeast(queryHeads, 1, "queryHeads")
            if let capacityBlocks, capacityBlocks < neededBlocks {
                throw OptionError("capacityBlocks", "must be at least \(neededBlocks) (one request at its peak), got \(capacityBlocks)")
            }
            try OptionChecks.fitsInMemory(blocks: poolBlocks, bytesPerBlock: layout.blockBytes, "--samples/--steps")
        }
    }

    public struct Report: Sendable {
        public var stats: KVCacheStats
        public var decodeSteps = 0
        public var pagedSeconds = 0.0
        public var bifurcatedSeconds = 0.0
        /// Prefill attention: the uncached prompt tokens as query rows (all requests, all layers),
        /// the step plan against the same rows paged.
        public var prefillRows = 0
        public var prefillPagedSeconds = 0.0
        public var prefillPlanSeconds = 0.0
        /// Both kernels' outputs against each other, prefill and decode.
        public var maxRelativeError: Float = 0
        /// The most blocks sharing saved at once (logical − physical blocks during a decode step).
        public var peakBlocksSaved = 0
        public var returningCachedTokens = 0
        public var returningStoreTokens = 0
        public var returningPromptTokens = 0
        public var restoredMismatches = 0
        public var speedup: Double { pagedSeconds / max(bifurcatedSeconds, 1e-12) }
    }

    public let options: Options
    public init(options: Options = Options()) { self.options = options }

    /// Runs the demo; `say` receives one line per event.
    public func run(store: (any ColdPrefixStore)?, say: (String) -> Void) throws -> Report {
        let o = options, layout = o.layout
        try o.validate()
        let cache = try KVCacheManager(layout: layout, capacityBlocks: o.poolBlocks, allocatesPages: true, coldStore: store)
        let arena = cache.arena!
        let model = FakeModel(layout: layout)
        let attention = try DecodeAttention(layout: layout, queryHeads: o.queryHeads)
        var rng = SeededRandom(seed: o.seed)
        var report = Report(stats: cache.stats)

        say("layout: \(layout), \(o.queryHeads) query heads; pool \(o.poolBlocks) blocks (\((o.poolBlocks * layout.blockBytes) >> 20) MiB of KV)")
        let system = (0..<o.systemPromptTokens).map { _ in TokenID(rng.next() % 50_000) }
        var prompts: [[TokenID]] = []
        for r in 0..<o.requests {
            let prompt = system + (0..<o.userPromptTokens).map { _ in TokenID(rng.next() % 50_000) }
            prompts.append(prompt)
            let a = try cache.admit(prompt, namespace: "demo")
            model.write(tokens: prompt[a.cachedTokenCount...], from: a.cachedTokenCount, blockTable: a.blockTable, arena: arena)
            if a.cachedTokenCount < prompt.count {
                let plan = try cache.stepPlan(for: [.from(a.cachedTokenCount, of: a.sequence)])
                let run = try attendEveryLayer(cache, attention, plan: plan, pagedFirst: r % 2 == 0, rng: &rng)
                report.prefillPagedSeconds += run.pagedSeconds
                report.prefillPlanSeconds += run.planSeconds
                report.maxRelativeError = max(report.maxRelativeError, run.error)
                report.prefillRows += plan.sequenceCount
            }
            let samples = try cache.fork(a.sequence, count: o.samples)
            try cache.release(a.sequence)
            for step in 0..<o.decodeSteps {
                for s in samples {
                    let position = try cache.tokenCount(of: s)
                    let token = TokenID(rng.next() % 50_000)
                    try cache.append([token], to: s)
                    model.write(tokens: [token], from: position, blockTable: try cache.blockTable(of: s), arena: arena)
                }
                let plan = try cache.decodePlan(for: samples)
                let stats = cache.stats
                report.peakBlocksSaved = max(report.peakBlocksSaved, stats.logicalBlocks - stats.physicalBlocks)
                let run = try attendEveryLayer(cache, attention, plan: plan, pagedFirst: step % 2 == 0, rng: &rng)
                report.pagedSeconds += run.pagedSeconds
                report.bifurcatedSeconds += run.planSeconds
                report.maxRelativeError = max(report.maxRelativeError, run.error)
                report.decodeSteps += 1
            }
            for s in samples { try cache.release(s) }
            let st = cache.stats
            say("request \(r + 1): \(prompt.count) prompt tokens, \(a.cachedTokenCount) cached (\(a.memoryHitTokens) memory, \(a.storeHitTokens) store); "
                + "\(o.samples) samples × \(o.decodeSteps) steps; evicted \(st.evictedBlocks), spilled \(st.spilledBlocks) so far")
        }

        // The first request returns: its system prompt is hot, its own part was evicted.
        let back = try cache.admit(prompts[0], namespace: "demo")
        report.returningPromptTokens = prompts[0].count
        report.returningCachedTokens = back.cachedTokenCount
        report.returningStoreTokens = back.storeHitTokens
        report.restoredMismatches = model.mismatches(tokens: prompts[0], positions: back.memoryHitTokens..<back.cachedTokenCount,
                                                     blockTable: back.blockTable, arena: arena)
        say("returning request 1: \(back.cachedTokenCount) of \(prompts[0].count) tokens cached "
            + "(\(back.memoryHitTokens) from memory, \(back.storeHitTokens) restored from the store; "
            + "\(report.restoredMismatches) restored KV elements differ from what was written)")
        try cache.release(back.sequence)
        cache.checkInvariants()
        cache.publishStats()
        report.stats = cache.stats
        return report
    }

    /// Paged and bifurcated attention over `plan` on every layer's pages, for random queries,
    /// timed, in an order the callers alternate (so neither kernel always runs on a cache the
    /// other warmed): the two kernels' seconds over all layers and their largest difference.
    private func attendEveryLayer(_ cache: KVCacheManager, _ attention: DecodeAttention, plan: DecodePlan, pagedFirst: Bool,
                                  rng: inout SeededRandom) throws -> (pagedSeconds: Double, planSeconds: Double, error: Float) {
        let layout = cache.layout, scale = DecodeAttention.defaultScale(headDim: layout.headDim)
        let query = (0..<(plan.sequenceCount * attention.queryHeads * layout.headDim)).map { _ in
            Float(Int(rng.next() % 2001) - 1000) / 1000
        }
        var total = (pagedSeconds: 0.0, planSeconds: 0.0, error: Float(0))
        for layer in 0..<layout.layerCount {
            try cache.withUnsafeLayerPages(layer: layer) { pages in
                func timed(_ call: () throws -> [Float]) throws -> ([Float], Double) {
                    let t0 = monotonicNanos()
                    let out = try call()
                    return (out, Double(monotonicNanos() - t0) / 1e9)
                }
                let paged = { try attention.paged(query: query, pages: pages, batch: plan.batch, scale: scale) }
                let planned = { try attention.bifurcated(query: query, pages: pages, plan: plan, scale: scale) }
                let (p, tp): ([Float], Double), (b, tb): ([Float], Double)
                if pagedFirst {
                    (p, tp) = try timed(paged)
                    (b, tb) = try timed(planned)
                } else {
                    (b, tb) = try timed(planned)
                    (p, tp) = try timed(paged)
                }
                total.pagedSeconds += tp
                total.planSeconds += tb
                total.error = max(total.error, maxRelativeError(b, p))
            }
        }
        return total
    }

    public static func summary(_ r: Report) -> String {
        let s = r.stats
        return renderTable(header: ["summary", "value"], rows: [
            ["prompt tokens", "\(s.queryTokens)"],
            ["hit rate (memory)", fixed(100 * Double(s.hitTokens) / Double(max(s.queryTokens, 1)), 1) + "%"],
            ["hit rate (memory + store)", fixed(100 * s.hitRate, 1) + "%"],
            ["evicted / spilled / restored blocks", "\(s.evictedBlocks) / \(s.spilledBlocks) / \(s.restoredBlocks)"],
            ["blocks saved by sharing (peak)", "\(r.peakBlocksSaved)"],
            ["prefill query rows (uncached prompt tokens)", "\(r.prefillRows)"],
            ["prefill attention, step plan / paged", fixed(r.prefillPlanSeconds * 1000, 2) + " / " + fixed(r.prefillPagedSeconds * 1000, 2)
                + " ms (" + fixed(r.prefillPagedSeconds / max(r.prefillPlanSeconds, 1e-12), 2) + "×)"],
            ["decode steps (× layers)", "\(r.decodeSteps)"],
            ["paged attention total", fixed(r.pagedSeconds * 1000, 2) + " ms"],
            ["bifurcated attention total", fixed(r.bifurcatedSeconds * 1000, 2) + " ms"],
            ["bifurcated speedup", fixed(r.speedup, 2) + "×"],
            ["max error vs paged (÷ max |output|)", String(format: "%.1e", r.maxRelativeError)],
            ["returning request restored", "\(r.returningStoreTokens) tokens, \(r.restoredMismatches) mismatches"],
        ])
    }
}

/// max |a − b| / max |b|: the error measure of the attention tests and `kvctl bench attention`
/// (docs/ATTENTION.md). An element-wise ratio would blow up on outputs near zero, where bf16
/// products are exact to an absolute, not a relative, bound.
func maxRelativeError(_ a: [Float], _ b: [Float]) -> Float {
    var worstError: Float = 0, largest: Float = 0
    for i in a.indices {
        worstError = max(worstError, abs(a[i] - b[i]))
        largest = max(largest, abs(b[i]))
    }
    return largest > 0 ? worstError / largest : worstError
}
