import KVCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Decode attention for one layer and one step: paged (every sequence reads its own block
/// table) and bifurcated / cascade (shared prefixes read once for all their sequences).
///
/// Queries are fp32 `[batch][queryHeads][headDim]`, outputs the same; query head `q` attends
/// with KV head `q / (queryHeads / kvHeadCount)` (MHA, GQA, MQA). KV is read in the pages'
/// dtype and accumulated in fp32.
///
/// An instance owns reusable scratch and partial buffers, so it serves one call at a time
/// (it is not `Sendable`; a call while another runs is `AttentionError.concurrentCall`); keep one
/// per engine thread. Both kernels use up to `threads` cores (at most the online cores).
/// It also keeps the work plan of its last paged and last bifurcated call and reuses it while
/// calls bring equal block tables, so pass one batch / plan to every layer of a decode step.
public final class DecodeAttention {
    /// The layout of the pages every call reads.
    public let layout: KVLayout
    /// Query heads per sequence: a multiple of `layout.kvHeadCount`.
    public let queryHeads: Int
    /// The most query rows (sequences × query heads) one call takes; more is
    /// ``AttentionError/tooManyQueryRows(sequences:queryHeads:limit:)``.
    public static let maxQueryRows = AttentionValidation.maxQueryRows
    /// Most threads a call uses (small calls stay on the caller's thread); a larger request at
    /// init is capped at ``maxThreads``.
    public let threads: Int
    /// Which multiply the kernels use (see ``AttentionMath`` for which paths take bf16).
    public let math: AttentionMath
    /// The kernel variant in use: the best the CPU has, or a lower one asked for at init.
    public let isa: KernelISA
    private let workspace = Workspace()
    /// The last paged and the last bifurcated call's work plans, reused while calls bring the
    /// same block tables: every layer of a decode step runs on one batch, so an engine plans
    /// once per step, not once per layer.
    private var lastPaged: CachedWork<BlockTableBatch>?
    private var lastCascade: CachedWork<DecodePlan>?

    private struct CachedWork<Key: Equatable> {
        let key: Key
        let work: WorkPlan
        /// Largest block id the tables name: a later call's range check is one comparison.
        let maxBlock: Int32
    }

    /// The most threads an instance uses, however many it is given (also never more than the
    /// online cores: more workers would only queue, each with its own scratch).
    public static let maxThreads = 1024

    /// Cores available to this process.
    public static var defaultThreadCount: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }

    /// The usual softmax scale, 1/√headDim.
    public static func defaultScale(headDim: Int) -> Float { 1 / Float(headDim).squareRoot() }

    /// Kernels for `layout` with `queryHeads` query heads (throws `headsNotDivisible` unless they
    /// are a multiple of the KV heads, `invalidThreadCount` unless `threads > 0`, `layoutMismatch`
    /// when `kvHeadCount`, `headDim`, `blockSize` or `queryHeads` exceeds `Int32.max`; more than
    /// ``maxThreads`` threads are capped). `isa` caps the
    /// kernel variant (tests use it to run the AVX2 and portable variants on an AVX-512 CPU).
    public init(layout: KVLayout, queryHeads: Int, threads: Int = DecodeAttention.defaultThreadCount,
                math: AttentionMath = .automatic, isa: KernelISA = .best) throws(AttentionError) {
        guard queryHeads > 0, queryHeads % layout.kvHeadCount == 0 else {
            throw .headsNotDivisible(queryHeads: queryHeads, kvHeads: layout.kvHeadCount)
        }
        guard threads > 0 else { throw .invalidThreadCount(threads) }
        // The C kernels take these as int32_t: refuse what would not narrow.
        for (name, value) in [("kvHeadCount", layout.kvHeadCount), ("headDim", layout.headDim),
                              ("blockSize", layout.blockSize), ("queryHeads", queryHeads)] where value > Int(Int32.max) {
            throw .layoutMismatch("\(name) \(value) exceeds the kernels' limit of \(Int32.max)")
        }
        self.layout = layout
        self.queryHeads = queryHeads
        // More workers than cores would only queue (and each has its own scratch).
        self.threads = min(threads, Self.maxThreads, Self.defaultThreadCount)
        self.math = math
        self.isa = min(isa, KernelISA.best)
    }

    /// The math code the GEMM-shaped path uses for this layout on this CPU.
    public var effectiveMath: AttentionMath { math.kernelCode(for: layout.dtype, isa: isa) == 1 ? .bf16 : .fp32 }

    // MARK: - Paged

    /// Paged decode attention: each sequence walks its own block table; a KV head's query
    /// group is processed together, so every block is read once per sequence.
    public func paged(query: UnsafeBufferPointer<Float>, pages: KVLayerPages, batch: BlockTableBatch,
                      scale: Float, output: UnsafeMutableBufferPointer<Float>) throws(AttentionError) {
        try enterCall()
        defer { leaveCall() }
        try runPaged(query: query, pages: pages, batch: batch, scale: scale, output: output)
    }

    private func runPaged(query: UnsafeBufferPointer<Float>, pages: KVLayerPages, batch: BlockTableBatch,
                          scale: Float, output: UnsafeMutableBufferPointer<Float>) throws(AttentionError) {
        let work = try workPlan(batch, cache: &lastPaged, batch: batch, pages: pages, query: query,
                                outputCount: output.count, scale: scale) { $0.pagedPlan(batch) }
        runner(scale: scale).run(work, pages: pages, query: query, output: output, workspace: workspace)
    }

    // MARK: - Bifurcated

    /// Bifurcated (cascade) decode attention over a ``DecodePlan``: every node's pages are read
    /// once for all its sequences (shared nodes with many query rows run GEMM-shaped), each
    /// sequence's partial results merge exactly by log-sum-exp. A plan without sharing runs the
    /// paged kernel.
    public func bifurcated(query: UnsafeBufferPointer<Float>, pages: KVLayerPages, plan: DecodePlan,
                           scale: Float, output: UnsafeMutableBufferPointer<Float>) throws(AttentionError) {
        try enterCall()
        defer { leaveCall() }
        guard plan.hasSharing else {
            return try runPaged(query: query, pages: pages, batch: plan.batch, scale: scale, output: output)
        }
        let work = try workPlan(plan, cache: &lastCascade, batch: plan.batch, pages: pages, query: query,
                                outputCount: output.count, scale: scale) { $0.cascadePlan(plan) }
        runner(scale: scale).run(work, pages: pages, query: query, output: output, workspace: workspace)
    }

    // MARK: - One call at a time

    /// Set while a call runs: a second call meanwhile (the instance shared between threads
    /// against its contract) would overwrite the first one's scratch and partials, so it is
    /// refused instead of corrupting both outputs.
    private let inCall = Locked(false)

    private func enterCall() throws(AttentionError) {
        let busy = inCall.withLock { (running: inout Bool) -> Bool in
            if running { return true }
            running = true
            return false
        }
        if busy { throw .concurrentCall }
    }

    private func leaveCall() { inCall.withLock { $0 = false } }

    // MARK: - Array conveniences

    /// ``paged(query:pages:batch:scale:output:)`` into a new array.
    public func paged(query: [Float], pages: KVLayerPages, batch: BlockTableBatch, scale: Float) throws(AttentionError) -> [Float] {
        var output = [Float](repeating: 0, count: query.count)
        try query.withUnsafeBufferPointer { (q) throws(AttentionError) in
            try output.withUnsafeMutableBufferPointer { (o) throws(AttentionError) in
                try paged(query: q, pages: pages, batch: batch, scale: scale, output: o)
            }
        }
        return output
    }

    /// ``bifurcated(query:pages:plan:scale:output:)`` into a new array.
    public func bifurcated(query: [Float], pages: KVLayerPages, plan: DecodePlan, scale: Float) throws(AttentionError) -> [Float] {
        var output = [Float](repeating: 0, count: query.count)
        try query.withUnsafeBufferPointer { (q) throws(AttentionError) in
            try output.withUnsafeMutableBufferPointer { (o) throws(AttentionError) in
                try bifurcated(query: q, pages: pages, plan: plan, scale: scale, output: o)
            }
        }
        return output
    }

    // MARK: - Internals

    private var planner: WorkPlanner {
        WorkPlanner(layout: layout, queryHeads: queryHeads, threads: threads,
                    model: CostModel(layout: layout, bf16Math: effectiveMath == .bf16))
    }

    private func runner(scale: Float) -> WorkRunner {
        WorkRunner(layout: layout, queryHeads: queryHeads, threads: threads, scale: scale,
                   math: math.kernelCode(for: layout.dtype, isa: isa), isa: isa)
    }

    /// Validates the call, then returns the work plan: the cached one when the block tables
    /// equal the last call's (arrays passed on unchanged compare by identity, so the check
    /// costs next to nothing), else a new one from `build`.
    private func workPlan<Key: Equatable>(_ key: Key, cache: inout CachedWork<Key>?, batch: BlockTableBatch,
                                          pages: KVLayerPages, query: UnsafeBufferPointer<Float>, outputCount: Int, scale: Float,
                                          build: (WorkPlanner) -> WorkPlan) throws(AttentionError) -> WorkPlan {
        let p = pages.layout
        guard p.kvHeadCount == layout.kvHeadCount, p.headDim == layout.headDim, p.blockSize == layout.blockSize,
              p.dtype == layout.dtype else {
            throw .layoutMismatch("pages hold \(p), kernel built for \(layout)")
        }
        let cached = cache.flatMap { $0.key == key ? $0 : nil }
        try AttentionValidation.check(layout: layout, queryHeads: queryHeads, batch: batch, capacity: pages.capacityBlocks,
                                      knownMaxBlock: cached?.maxBlock,
                                      query: query, outputCount: outputCount, scale: scale)
        if let cached { return cached.work }
        let work = build(planner)
        cache = CachedWork(key: key, work: work, maxBlock: batch.indices.max() ?? -1)
        return work
    }
}
