import KVCore
import Logging
import Metrics

/// The KV-cache manager: a paged block pool with a token-exact, per-namespace prefix tree.
/// Safe to call from several threads at once (one lock around the cache state).
///
/// ```swift
/// let cache = try KVCacheManager(layout: .small(), capacityBlocks: 1024)
/// let a = try cache.admit(systemPrompt + question, namespace: "tenant-a")
/// // compute KV for tokens a.cachedTokenCount..< into a.blockTable, then decode:
/// let samples = try cache.fork(a.sequence, count: 4)
/// for s in samples { try cache.append([nextToken], to: s) }
/// let plan = try cache.decodePlan(for: samples)   // shared context read once per step
/// for s in samples + [a.sequence] { try cache.release(s) }
/// ```
///
/// Requests with the same namespace share the KV of every whole block of their common prefix.
/// By default (`BlockPublication.atAdmission`) prompt blocks join the tree at admission, so the
/// engine must write the KV of a sequence's uncached prompt tokens before another request that
/// matched those blocks reads them — right when admitted prompts are prefilled in the next step.
/// An engine that admits prompts it prefills later or in chunks uses `.whenComputed` and reports
/// progress with `markComputed`: blocks are then matchable only once written.
public final class KVCacheManager: Sendable {
    /// The KV layout every block holds.
    public let layout: KVLayout
    /// Allocatable blocks (the null block excluded).
    public let capacityBlocks: Int
    /// The page arena, or nil for a metadata-only manager (simulation, trace replay).
    public let arena: KVPageArena?
    private let state: Locked<CacheState>
    private let metrics: CacheMetrics
    private let logger: Logger
    private let statsPublisher: StatsPublisher?

    /// Creates a manager over `capacityBlocks` allocatable blocks (plus the null block 0).
    /// - Parameters:
    ///   - allocatesPages: allocate the page arenas now (false: metadata only).
    ///   - prefaultsPages: touch every arena page now (the default), so first-touch page faults
    ///     (slow on virtual machines) stay off the serving path; false starts at once and faults
    ///     pages in as blocks are first written.
    ///   - publishesBlocks: when new full blocks become matchable by other requests: at admission
    ///     (the default) or once the engine reports their KV written (`markComputed`, release).
    ///   - coldStore: a tier that keeps evicted blocks (the LMDB spill tier); its layout must match,
    ///     and the manager must allocate pages (`.coldStoreNeedsPages` otherwise).
    ///   - onEvict: called, under the manager's lock, for every cached block evicted from memory.
    ///   - statsPublishInterval: how often a mutation hands the stats to `coldStore` (for its live
    ///     record, `kvctl stats`); the manager also publishes when it is deinitialised.
    ///   - metricsDimensions: added to every `prefixkv_*` metric, e.g. `[("cache", "llama-70b")]`,
    ///     so several managers in one process report apart.
    ///   - metricsFactory: where the metrics go (default: the bootstrapped `MetricsSystem`).
    public init(layout: KVLayout, capacityBlocks: Int, allocatesPages: Bool = false, prefaultsPages: Bool = true,
                publishesBlocks: BlockPublication = .atAdmission, coldStore: (any ColdPrefixStore)? = nil, onEvict: (@Sendable (EvictedBlock) -> Void)? = nil,
                statsPublishInterval: Duration = .seconds(1),
                metricsDimensions: [(String, String)] = [], metricsFactory: (any MetricsFactory)? = nil,
                logger: Logger = Logger(label: "prefixkv.cache")) throws(KVCacheError) {
        // Block ids are Int32 and block 0 is the null block.
        guard capacityBlocks >= 1, capacityBlocks < Int(Int32.max) else { throw .invalidCapacity(capacityBlocks) }
        // The layout is valid by construction (`KVLayout` validates in its inits, decoding
        // included); what is left is a capacity too large to size the token table or the arena
        // in an `Int`, which would otherwise trap inside this throwing init.
        let slots = capacityBlocks.addingReportingOverflow(1)
        let tokenBytes = slots.partialValue.multipliedReportingOverflow(by: layout.blockSize * MemoryLayout<TokenID>.stride)
        let pageBytes = slots.overflow ? nil : KVPageArena.byteCount(layout: layout, capacityBlocks: slots.partialValue)
        guard !slots.overflow, !tokenBytes.overflow, !(allocatesPages && pageBytes == nil) else {
            throw .invalidCapacity(capacityBlocks)
        }
        if coldStore != nil && !allocatesPages { throw .coldStoreNeedsPages }
        if let storeLayout = coldStore?.storeLayout, storeLayout != layout {
            throw .layoutMismatch(expected: layout, got: storeLayout)
        }
        self.layout = layout
        self.capacityBlocks = capacityBlocks
        if allocatesPages {
            guard let arena = KVPageArena.allocate(layout: layout, capacityBlocks: capacityBlocks + 1, prefault: prefaultsPages) else {
                throw .pagesUnavailable(bytes: pageBytes!)
            }
            self.arena = arena
        } else {
            self.arena = nil
        }
        self.state = Locked(CacheState(layout: layout, capacity: capacityBlocks, arena: arena, coldStore: coldStore,
                                       onEvict: onEvict, publication: publishesBlocks))
        self.metrics = CacheMetrics(label: "prefixkv", dimensions: metricsDimensions, factory: metricsFactory ?? MetricsSystem.factory)
        self.logger = logger
        self.statsPublisher = coldStore.map { StatsPublisher(store: $0, interval: statsPublishInterval) }
        logger.debug("cache created", metadata: ["layout": "\(layout)", "capacityBlocks": "\(capacityBlocks)", "pages": "\(allocatesPages)"])
    }

    // MARK: - Requests

    /// Reports how much of `tokens` is cached (whole blocks), without pinning or touching anything.
    /// With `probeStore`, also how many further blocks the cold store holds (a block another
    /// call evicted and is still spilling counts as held: `admit` waits for its spill).
    public func lookup(_ tokens: [TokenID], namespace: Namespace = .default, probeStore: Bool = false) throws(KVCacheError) -> PrefixLookup {
        try state.withLock { (s: inout CacheState) throws(KVCacheError) in try s.lookup(tokens, namespace: namespace, probeStore: probeStore) }
    }

    /// Admits a prompt: pins its cached prefix (memory, then the cold store), allocates blocks for
    /// the rest, and returns the new sequence. All-or-nothing: throws `.insufficientBlocks` and
    /// changes nothing when too few blocks are free or evictable.
    ///
    /// With a cold store, the blocks its allocation evicted are spilled and the blocks found in the
    /// store restored outside the manager's lock (a long prefix takes tens of milliseconds), so
    /// other threads' calls go on meanwhile; the sequence exists from the start (it holds its
    /// blocks) but its handle is returned only once that is done.
    public func admit(_ prompt: [TokenID], namespace: Namespace = .default) throws(KVCacheError) -> Admission {
        let admission = try admit(prompt, namespace: namespace, isQuery: true)
        metrics.recordAdmission(admission, promptTokens: prompt.count)
        return admission
    }

    /// `admit`, also for a prefetch (`isQuery: false`: not a request, so not in the hit counters).
    private func admit(_ prompt: [TokenID], namespace: Namespace, isQuery: Bool) throws(KVCacheError) -> Admission {
        var result: Admission?
        while result == nil {
            let first = try mutate(completes: { if case .done = $0 { true } else { false } }) { (s: inout CacheState) throws(KVCacheError) in
                try s.beginAdmission(prompt, namespace: namespace, isQuery: isQuery)
            }
            switch first {
            case .done(let done):
                result = done
            case .pending(let pending):
                let keys = pending.run()
                result = try mutate { (s: inout CacheState) throws(KVCacheError) in s.finishAdmission(pending, restoredKeys: keys) }
            case .wait(let inFlight):
                inFlight.finished.wait()   // another admission is restoring this prefix: match it after
            }
        }
        return result!
    }

    /// Brings the prompt's prefix that the cold store holds into memory ahead of its admission — for
    /// a scheduler warming a queued request (as SGLang's HiCache prefetches), so the later `admit`
    /// is a memory hit. Restores only the blocks the store holds after the memory hit (a probing
    /// `lookup`), each into a block of its own taken from the free queue like any admission's,
    /// and leaves them cached and unreferenced (evictable). Outside the lock like `admit`'s
    /// restores. Returns the prompt's tokens in memory afterwards (whole blocks). A record the
    /// store lost between the probe and the restore leaves nothing unwritten behind (the
    /// blocks from it on are released as never written). Not a request: the query and hit
    /// counters leave it out (restored blocks count). Throws as `admit` does; with no cold
    /// store, or nothing in it, it only looks up.
    @discardableResult
    public func prefetch(_ prompt: [TokenID], namespace: Namespace = .default) throws(KVCacheError) -> Int {
        let probe = try lookup(prompt, namespace: namespace, probeStore: true)
        guard probe.storeTokens > 0 else { return probe.memoryTokens }
        let warm = try admit(Array(prompt[..<probe.totalTokens]), namespace: namespace, isQuery: false)
        try release(warm.sequence, computedTokens: warm.cachedTokenCount)
        return warm.cachedTokenCount
    }

    /// Appends decoded tokens (or prompt tokens not known at admission). Appended tokens match
    /// nothing cached — admit the whole prompt to share its cached prefix, and prefill it in chunks
    /// from there. Under `.atAdmission` a block joins the prefix tree the moment it is full (under
    /// `.whenComputed`, once reported), unless an identical block is cached already: that one stays
    /// in the tree, this one and the sequence's later blocks stay private;
    /// a partial last block still shared after a fork is copied first (copy-on-write), and the
    /// result says so: an engine that keeps the KV itself (metadata-only manager) must copy it too.
    @discardableResult
    public func append(_ tokens: [TokenID], to sequence: SequenceHandle) throws(KVCacheError) -> AppendResult {
        try mutate { (s: inout CacheState) throws(KVCacheError) in AppendResult(copy: try s.append(tokens, to: sequence)) }
    }

    /// Blocks an `append` of `count` tokens to `sequence` would take now: one per `blockSize`
    /// tokens past the room in its last block, plus one when that block is partial and still
    /// shared after a fork (the copy-on-write). For a scheduler that fits a step's appends into
    /// ``availableBlocks`` before making them: summed over forked siblings that share a partial
    /// block it counts a copy for each, one more than they take (the last to append holds the
    /// block alone). Advice only once other calls run in between; `append` itself stays
    /// all-or-nothing (`.insufficientBlocks`). Throws `.invalidAppendCount` for a negative count,
    /// and `.releasedSequence` / `.unknownSequence`.
    public func blocksNeeded(toAppend count: Int, to sequence: SequenceHandle) throws(KVCacheError) -> Int {
        try state.withLock { (s: inout CacheState) throws(KVCacheError) in try s.blocksNeeded(toAppend: count, to: sequence) }
    }

    /// Blocks that admissions, appends and copies can take now: free ones and cached ones no
    /// live sequence holds (evicted on demand, least recently used first). Equals
    /// `stats.capacityBlocks - stats.usedBlocks`, without building the whole snapshot.
    public var availableBlocks: Int { state.withLock { $0.availableBlocks } }

    /// Keeps the sequence's first `count` tokens and drops the rest: the draft tokens a speculative
    /// decoding step rejected (append the drafts, map and write their K/V, verify, then truncate to
    /// the accepted count). `count` is 1...tokenCount(of:), else `.invalidTruncation` and nothing
    /// changes. The dropped blocks lose this sequence's reference: those in the prefix tree stay
    /// cached (their K/V was written for their tokens), the rest are free. When the new last block
    /// is partial and cached or shared, the sequence gets a private copy of its kept tokens —
    /// returned like an append's copy-on-write, for an engine that keeps the KV itself; with no
    /// block free for it, `.insufficientBlocks` and nothing changes. Under `.whenComputed`, mark
    /// only the accepted tokens computed and rejected drafts never join the tree.
    @discardableResult
    public func truncate(_ sequence: SequenceHandle, toTokenCount count: Int) throws(KVCacheError) -> AppendResult {
        try mutate { (s: inout CacheState) throws(KVCacheError) in AppendResult(copy: try s.truncate(sequence, toTokenCount: count)) }
    }

    /// Tells a metadata-only manager that the engine has made the copy-on-write the sequence's
    /// last `append` or `truncate` returned (`AppendResult.copy`): its source block may be freed
    /// and reused from now on. Until then the source stays referenced, so no other thread's call
    /// can hand it out and overwrite it before the engine has read it; the sequence's next
    /// `append`, `truncate` or release does this too (not `markComputed`, which speculative
    /// decoding calls right after its truncation), so calling it only frees the block sooner. A no-op with a page arena (the manager copies under its lock) or with no copy
    /// pending. Throws `.releasedSequence` / `.unknownSequence`.
    public func copied(_ sequence: SequenceHandle) throws(KVCacheError) {
        try mutate { (s: inout CacheState) throws(KVCacheError) in
            _ = try s.live(sequence)
            s.settleCopy(of: sequence)
        }
    }

    /// Reports that the KV of the sequence's first `computedTokens` tokens (hits included) is
    /// written — after a prefill chunk, or a decode step. Under `.whenComputed` their full blocks
    /// join the prefix tree now, where later requests can match them; under `.atAdmission` they
    /// did at admission and this records the report (`release(_:computedTokens:)` never drops what
    /// was reported; telling less than before changes nothing). An engine whose forward pass writes every
    /// layer's KV before that layer's attention reads it may report tokens when it schedules them
    /// into a step: requests scheduled after them read them in the same pass or later.
    /// Throws `.invalidComputedTokens` (nothing changed) unless `0 <= computedTokens <= tokenCount(of:)`.
    public func markComputed(_ sequence: SequenceHandle, computedTokens: Int) throws(KVCacheError) {
        try mutate { (s: inout CacheState) throws(KVCacheError) in try s.markComputed(sequence, computedTokens: computedTokens) }
    }

    /// Forks `count` children (parallel sampling, beam search; 1...2^20) that share every block of
    /// `sequence`.
    public func fork(_ sequence: SequenceHandle, count: Int) throws(KVCacheError) -> [SequenceHandle] {
        try mutate { (s: inout CacheState) throws(KVCacheError) in try s.fork(sequence, count: count) }
    }

    /// Releases a sequence: its full blocks stay cached (evictable), the rest are free at once.
    /// Every token's KV must have been written; otherwise use `release(_:computedTokens:)`. Under
    /// `.whenComputed` this is the engine's word that they were: every full block is published,
    /// so a request cancelled mid-prefill, or one whose last sampled token's KV was never computed,
    /// released this way would offer unwritten KV to later requests.
    public func release(_ sequence: SequenceHandle) throws(KVCacheError) {
        try mutate { (s: inout CacheState) throws(KVCacheError) in _ = try s.release(sequence) }
    }

    /// Releases a sequence whose engine wrote the KV of only its first `computedTokens` tokens
    /// (hits included): a request cancelled before or during its prefill (client disconnect,
    /// preemption), or one whose last sampled token's KV was never computed.
    ///
    /// Its prompt blocks joined the prefix tree at admission; those it brought in as new (not
    /// hits) and did not wholly write leave the tree, so the next identical prompt recomputes them
    /// instead of reading garbage, and eviction never spills them (nor the cached blocks below
    /// them, which no match reaches past them). A block another live sequence still holds stays:
    /// a request that matched it relies on the same prefill. Such blocks become that sequence's
    /// own (returned as ``InvalidatedHit``s, each with the tokens of that sequence still valid),
    /// and its engine must compute them or cancel it too. Tokens `markComputed` reported earlier
    /// (for a fork child, its parent's report) count as computed whatever this says.
    /// Throws `.invalidComputedTokens` (nothing changed) unless `0 <= computedTokens <= tokenCount(of:)`.
    @discardableResult
    public func release(_ sequence: SequenceHandle, computedTokens: Int) throws(KVCacheError) -> [InvalidatedHit] {
        try mutate { (s: inout CacheState) throws(KVCacheError) in try s.release(sequence, computedTokens: computedTokens) }
    }

    // MARK: - Block tables

    /// The sequence's block table (block ids in token order) as kernels take it.
    public func blockTable(of sequence: SequenceHandle) throws(KVCacheError) -> [Int32] {
        try state.withLock { (s: inout CacheState) throws(KVCacheError) in try s.live(sequence).blocks }
    }

    /// How many tokens of the sequence hold KV (prompt plus appended).
    public func tokenCount(of sequence: SequenceHandle) throws(KVCacheError) -> Int {
        try state.withLock { (s: inout CacheState) throws(KVCacheError) in try s.live(sequence).tokenCount }
    }

    /// The first position whose KV this sequence may write (`slotMapping(for:)` maps no position
    /// below it): the admission's `cachedTokenCount` (a fork child inherits its parent's), lowered
    /// by `truncate` to the kept count and by a cancelled writer's `InvalidatedHit` to its
    /// `validTokens`. Below it is KV the sequence found cached: other requests'.
    public func firstOwnPosition(of sequence: SequenceHandle) throws(KVCacheError) -> Int {
        try state.withLock { (s: inout CacheState) throws(KVCacheError) in try s.live(sequence).firstOwnPosition }
    }

    /// The batch's block tables in CSR form, for a paged kernel.
    public func blockTables(for batch: [SequenceHandle]) throws(KVCacheError) -> BlockTableBatch {
        guard !batch.isEmpty else { throw .invalidBatch("the batch is empty") }
        let (tables, counts) = try state.withLock { (s: inout CacheState) throws(KVCacheError) -> ([[Int32]], [Int]) in
            var tables: [[Int32]] = [], counts: [Int] = []
            for h in batch {
                let seq = try s.live(h)
                tables.append(seq.blocks)
                counts.append(seq.tokenCount)
            }
            return (tables, counts)
        }
        do { return try BlockTableBatch(blockSize: layout.blockSize, tables: tables, tokenCounts: counts) }
        catch { throw .invalidPlan(error) }
    }

    /// The shared-prefix decode plan for a batch: which blocks are shared by which sequences.
    public func decodePlan(for batch: [SequenceHandle]) throws(KVCacheError) -> DecodePlan {
        let tables = try blockTables(for: batch)
        do { return try DecodePlan(batch: tables) } catch { throw .invalidPlan(error) }
    }

    /// The plan for attending a prefill chunk: the sequence's last `newTokens` tokens (appended,
    /// their K/V written) as query rows, each over the cached prefix and the chunk up to itself
    /// (causal). See `DecodePlan.causalChunk`; run it with `DecodeAttention.bifurcated`. Throws
    /// `.invalidPlan(.invalidChunk)` for a chunk outside `1...tokenCount`, and as `blockTable(of:)` does.
    /// It is `stepPlan(for: [.last(newTokens, of: sequence)])`, the general form's one-span case
    /// (several sequences' chunks and decode tokens), with the chunk's count checked first.
    public func prefillPlan(for sequence: SequenceHandle, newTokens: Int) throws(KVCacheError) -> DecodePlan {
        let count = try tokenCount(of: sequence)
        guard newTokens >= 1 && newTokens <= count else { throw .invalidPlan(.invalidChunk(newTokens: newTokens, tokenCount: count)) }
        return try stepPlan(for: [.last(newTokens, of: sequence)])
    }

    /// The attention plan for one forward step over `spans`: each span's positions are query
    /// rows (in span order, then position order: the rows `slotMapping(for:)` gives the same
    /// spans), each attending causally to its sequence's tokens up to and including itself.
    /// Prefill chunks and decode tokens mix freely (`.range(512..<1024, of: a)`, `.last(of: b)`);
    /// a cached prefix that several spans' sequences share is read once for all their rows. See
    /// `DecodePlan.causal(blockSize:sequences:)`; run it with `DecodeAttention.bifurcated`,
    /// queries laid out `[rows][queryHeads][headDim]`. Take it after the step's `append`s and K/V
    /// writes. Throws `.positionsOutOfRange`, `.releasedSequence` or `.unknownSequence` as
    /// `slotMapping(for:)` does, and `.invalidPlan(.planTooLarge)` for a step too large for `Int32`
    /// indices (split it); empty spans add no rows. Unlike `slotMapping`, positions
    /// below `firstOwnPosition(of:)` are accepted: attention only reads the cached KV there. The
    /// plan's `rowCount` (= its `sequenceCount`) is the spans' positions in all.
    public func stepPlan(for spans: [SlotSpan]) throws(KVCacheError) -> DecodePlan {
        let blockSize = layout.blockSize
        let rows = try state.withLock { (s: inout CacheState) throws(KVCacheError) -> [DecodePlan.CausalRows] in
            var rows: [DecodePlan.CausalRows] = []
            rows.reserveCapacity(spans.count)
            for span in spans {
                let seq = try s.live(span.sequence)
                guard let r = span.positions.resolved(tokenCount: seq.tokenCount) else {
                    throw .positionsOutOfRange(span.sequence, positions: span.positions, tokenCount: seq.tokenCount)
                }
                guard !r.isEmpty else { continue }
                let blocks = (r.upperBound + blockSize - 1) / blockSize
                rows.append(DecodePlan.CausalRows(table: Array(seq.blocks[..<blocks]), tokenCount: r.upperBound, newTokens: r.count))
            }
            return rows
        }
        do { return try .causal(blockSize: blockSize, sequences: rows) } catch { throw .invalidPlan(error) }
    }

    // MARK: - Slot mapping

    /// The slots to write this step's new K/V into: for each span, in order, the flat slot
    /// (`block * blockSize + offset`) of each of its positions, as kernels take them
    /// (`SlotMapping.slots`, `[Int32]`), with each token's position and the spans' offsets.
    /// Hand it to `arena.store(keys:values:layer:slots:)` for every layer.
    ///
    /// Take it **after** the step's `append`s: an append into a partial last block still shared
    /// after a fork gives the sequence a private copy and changes its table, so a mapping taken
    /// before would name the shared block and the write would land in its siblings' KV. It stays
    /// valid until the sequences' next `append`, `fork`, `truncate` or release (a released sequence's blocks
    /// go to other requests). Positions below `firstOwnPosition(of:)` (`Admission.cachedTokenCount`)
    /// are hits, other requests' KV: mapping them is `.positionsNotOwned`, so a misplaced span
    /// cannot overwrite cached KV. All spans are resolved under one lock, so a batch sees one state.
    /// Throws `.positionsOutOfRange` (positions outside `0..<tokenCount`), `.releasedSequence` or
    /// `.unknownSequence`, `.slotsExceedInt32` for a pool too large for `Int32` slots, and
    /// `.invalidSlotMapping(.tooManyTokens)` for more than `Int32.max` tokens at once. An empty list, or empty spans,
    /// map no tokens.
    public func slotMapping(for spans: [SlotSpan]) throws(KVCacheError) -> SlotMapping {
        try requireInt32Slots()
        let (tables, ranges) = try state.withLock { (s: inout CacheState) throws(KVCacheError) -> ([[Int32]], [Range<Int>]) in
            var tables: [[Int32]] = [], ranges: [Range<Int>] = []
            tables.reserveCapacity(spans.count)
            ranges.reserveCapacity(spans.count)
            for span in spans {
                let seq = try s.live(span.sequence)
                guard let r = span.positions.resolved(tokenCount: seq.tokenCount) else {
                    throw .positionsOutOfRange(span.sequence, positions: span.positions, tokenCount: seq.tokenCount)
                }
                guard r.isEmpty || r.lowerBound >= seq.firstOwnPosition else {
                    throw .positionsNotOwned(span.sequence, positions: span.positions, firstOwnPosition: seq.firstOwnPosition)
                }
                tables.append(seq.blocks)   // a reference to the state's array, not a copy
                ranges.append(r)
            }
            return (tables, ranges)
        }
        do { return try SlotMapping(blockSize: layout.blockSize, tables: tables, positions: ranges) }
        catch { throw .invalidSlotMapping(error) }   // more than Int32.max tokens at once
    }

    /// The decode step's slot mapping: the last token of each sequence (the one `append` just
    /// added), in batch order. See `slotMapping(for: [SlotSpan])`. (Disfavoured so that an empty
    /// literal, `slotMapping(for: [])`, picks the span form instead of being ambiguous.)
    @_disfavoredOverload
    public func slotMapping(for batch: [SequenceHandle]) throws(KVCacheError) -> SlotMapping {
        try slotMapping(for: batch.map { SlotSpan.last(1, of: $0) })
    }

    private func requireInt32Slots() throws(KVCacheError) {
        guard Self.flatSlotsFitInt32(capacityBlocks: capacityBlocks, blockSize: layout.blockSize) else {
            throw .slotsExceedInt32(capacityBlocks: capacityBlocks, blockSize: layout.blockSize)
        }
    }

    /// Whether every flat slot of a pool of blocks `0...capacityBlocks` fits an `Int32`.
    static func flatSlotsFitInt32(capacityBlocks: Int, blockSize: Int) -> Bool {
        let (slots, overflow) = (capacityBlocks + 1).multipliedReportingOverflow(by: blockSize)
        return !overflow && slots - 1 <= Int(Int32.max)
    }

    // MARK: - Pages

    /// Read access to one layer's K and V pages for a kernel. Pointers must not escape `body`.
    /// A layer outside `0..<layout.layerCount` is `.invalidLayer` (bad input, not a trap).
    public func withUnsafeLayerPages<R>(layer: Int, _ body: (KVLayerPages) throws -> R) throws -> R {
        guard let arena else { throw KVCacheError.noPageArena }
        guard layer >= 0 && layer < layout.layerCount else { throw KVCacheError.invalidLayer(layer, layerCount: layout.layerCount) }
        return try arena.withUnsafeLayerPages(layer: layer, body)
    }

    /// Checks that an engine's layout is the one this cache holds.
    public func requireLayout(_ other: KVLayout) throws(KVCacheError) {
        guard other == layout else { throw .layoutMismatch(expected: layout, got: other) }
    }

    // MARK: - Stats and checks

    /// A consistent snapshot of the counters and gauges.
    public var stats: KVCacheStats { state.withLock { $0.stats } }

    /// Hands the current stats to the cold store to publish now (for `kvctl stats`); mutations
    /// already do so every `statsPublishInterval`.
    public func publishStats() {
        guard let statsPublisher else { return }
        let (stats, version) = state.withLock { ($0.stats, $0.statsVersion) }
        statsPublisher.publishNow(stats, version: version)
    }

    deinit { publishStats() }

    /// Checks every invariant (see docs/INVARIANTS.md); traps naming the broken state.
    public func checkInvariants() { state.withLock { $0.checkInvariants() } }

    /// The tokens a sequence's blocks hold, read back from the blocks (for tests and debugging).
    public func tokens(of sequence: SequenceHandle) throws(KVCacheError) -> [TokenID] {
        try state.withLock { (s: inout CacheState) throws(KVCacheError) -> [TokenID] in
            let seq = try s.live(sequence)
            return (0..<seq.tokenCount).map { s.blockTokens[Int(seq.blocks[$0 / s.blockSize]) * s.blockSize + $0 % s.blockSize] }
        }
    }

    /// Namespace slots the manager holds (registered and retired), for tests: bounded by the
    /// namespaces in use at once, not by every namespace ever seen.
    var namespaceSlots: Int { state.withLock { $0.namespaceNames.count } }

    /// The free queue, next block to reuse first (for tests and debugging).
    public var freeQueueOrder: [Int32] { state.withLock { $0.freeQueueOrder } }

    /// Admissions that waited for another admission's restore of their prefix (for tests).
    var restoreWaits: Int { state.withLock { $0.restoreWaits } }
    /// Restores that waited for another call's spill of their block (for tests).
    var spillWaits: Int { state.withLock { $0.spillsInFlight }.waits }

    /// The block tables naming a block (for tests and debugging): 2 or more means shared. The
    /// reference a metadata-only manager keeps on a copy-on-write's source until the engine has
    /// copied it (`copied(_:)`) is not counted: it keeps the block from reuse, it does not share
    /// it. Traps on a block outside `0...capacityBlocks` (a caller bug; never a read out of bounds).
    public func refcount(of block: Int32) -> Int {
        requireBlockInPool(block, "refcount(of:)")
        return state.withLock { Int($0.tableHolders(block)) }
    }

    /// The prefix index's hinted child of `block` (0: none), for tests. Traps on a block outside
    /// `0...capacityBlocks` (a negative code names a namespace root).
    func hintedChild(of block: Int32) -> Int32 {
        if block >= 0 { requireBlockInPool(block, "hintedChild(of:)") }
        return state.withLock { $0.index.hintedChild(of: block) }
    }

    /// The cached blocks `tokens` matches in memory, in prefix order: what `admit` would pin (for
    /// tests that check admission bounds against held and unheld hits).
    func memoryMatch(_ tokens: [TokenID], namespace: Namespace = .default) -> [Int32] {
        state.withLock { s in s.matchMemory(tokens, namespace: s.namespaces[namespace]) }
    }

    /// Whether a block is a node of the prefix tree (for tests and debugging). Traps on a block
    /// outside `0...capacityBlocks`.
    public func isCached(_ block: Int32) -> Bool {
        requireBlockInPool(block, "isCached(_:)")
        return state.withLock { $0.index.inTree[Int(block)] }
    }

    private func requireBlockInPool(_ block: Int32, _ caller: String) {
        invariant(block >= 0 && Int(block) <= capacityBlocks,
                     "KVCacheManager.\(caller): block \(block) outside the pool 0...\(capacityBlocks)")
    }

    /// Runs `body` under the lock, then hands the stats after it to the metrics and (when it
    /// succeeded) the stats publisher. A call that throws changes nothing but may count (a
    /// refused allocation): its stats still reach the metrics, so `allocations_failed_total`
    /// moves when the refusal happens. A result `completes` calls a first part only (an
    /// admission whose restores are still to run) reports nothing: its half-counted stats are
    /// nobody's to see; the second part reports. The blocks the call evicted are spilled after
    /// the lock, before this returns (`SpillBatch`).
    @discardableResult
    private func mutate<R>(completes: (R) -> Bool = { _ in true },
                           _ body: (inout CacheState) throws(KVCacheError) -> R) throws(KVCacheError) -> R {
        let (outcome, stats, version, spills) = state.withLock { (s: inout CacheState) -> (Result<R, KVCacheError>, KVCacheStats, UInt64, SpillBatch?) in
            s.statsVersion += 1
            let outcome: Result<R, KVCacheError>
            do throws(KVCacheError) { outcome = .success(try body(&s)) } catch { outcome = .failure(error) }
            return (outcome, s.stats, s.statsVersion, s.takeEvictedSpills())
        }
        // The blocks the call evicted went to the caller's sequence, which has not seen them yet.
        spills?.run()
        if case .success(let r) = outcome, !completes(r) { return r }
        metrics.update(stats, version: version)
        let r = try outcome.get()
        statsPublisher?.mutated(stats, version: version)
        return r
    }
}

extension ColdPrefixStore {
    /// Stores that hold any layout need not say.
    public var storeLayout: KVLayout? { nil }
}
