// README.md's Quick start and docs/SPILL.md's snippet, copied verbatim (but for their imports,
// here at the top, and the documents' "…" elisions) into functions whose parameters are the
// names the snippets leave free: this file compiling is the check that the documented code
// compiles, and DocSnippetCopyTests checks that the copies still match the documents. Lines
// marked `// copy only` exist here alone (they use a value the snippet leaves unused).
import KVAttention
import KVCache
import KVCore
import KVSpill

func quickStart(systemPrompt: [TokenID], userPrompt: [TokenID], otherPrompt: [TokenID], sampledToken: TokenID,
                promptKeys: [[Float]], promptValues: [[Float]], newKeys: [[Float]], newValues: [[Float]], queries: [Float]) throws {
    func reschedulePrefill(_ s: SequenceHandle, from: Int) {}  // copy only
    let layout = try KVLayout(layerCount: 32, kvHeadCount: 8, headDim: 128, blockSize: 16, dtype: .bfloat16)
    // 8192 blocks × 2 MiB (32 layers × K+V × 8 heads × 16 tokens × 128 × 2 bytes) = 16 GiB, allocated
    // and touched up front (`prefaultsPages: false` skips the touch: a fast start, page faults later)
    let cache = try KVCacheManager(layout: layout, capacityBlocks: 8192, allocatesPages: true)

    // Admit a request: the cached part of its prompt is shared, the rest gets fresh blocks.
    let request = try cache.admit(systemPrompt + userPrompt, namespace: "tenant-a")
    // Prefill: the slots of its uncached tokens (request.cachedTokenCount...; a cached position is
    // other requests' KV), then at each layer of the forward pass that layer's K and V of those tokens,
    // fp32 `[token][kvHead][headDim]`, stored converted to the layout's dtype (round to nearest even).
    let prefill = try cache.slotMapping(for: [.from(request.cachedTokenCount, of: request.sequence)])
    for layer in 0..<layout.layerCount {
        try cache.arena!.store(keys: promptKeys[layer], values: promptValues[layer], layer: layer, slots: prefill)
    }
    // Attention for those tokens, causal, over the cached prefix read once for all of them: a plan to
    // run like the decode plan below, with their queries `[token][queryHead][headDim]` (ATTENTION.md).
    let prefillPlan = prefill.slots.isEmpty ? nil : try cache.prefillPlan(for: request.sequence, newTokens: prefill.slots.count)
    _ = prefillPlan  // copy only
// A step that batches several requests' chunks with other sequences' decode tokens takes one
// plan for all of them, `cache.stepPlan(for: spans)`, over the same spans as its slot mapping,
// plus any whole-prompt hit's last position (`.last(of:)`): the mapping refuses it
// (`.positionsNotOwned`, the KV is cached) but its row still needs attention for its logits.
    // Its new blocks are matchable from admission on, so prefill them in the next step; an engine
    // that prefills in chunks or later creates the manager with `publishesBlocks: .whenComputed` and
    // reports progress with `cache.markComputed(request.sequence, computedTokens:)` (PREFIX_CACHING.md).
    // A whole-prompt hit (cachedTokenCount == prompt count; an empty mapping) leaves nothing to write: run the last
    // token's forward pass for its logits over the cached KV, without writing its (identical) K/V.

    // 32 parallel samples share every block; the partial last block is copied on first write.
    let samples = try cache.fork(request.sequence, count: 32)
    for s in samples { try cache.append([sampledToken], to: s) }
    // Map after appending: each sample's table now names its private copy of the shared partial block
    // (a mapping taken before the append would name the shared block). One slot per sample, its last
    // token, in batch order; `step.slots` is the flat `[Int32]` (block * blockSize + offset) a kernel takes.
    let step = try cache.slotMapping(for: samples)
    for layer in 0..<layout.layerCount {
        try cache.arena!.store(keys: newKeys[layer], values: newValues[layer], layer: layer, slots: step)
    }
    // (the arena copied the shared partial block already; an engine keeping KV itself, with
    // `allocatesPages: false`, copies what `append(...).copy` names, then `cache.copied(s)`: PREFIX_CACHING.md)

    // One decode step: the shared prompt is read once for all 32 samples. Pass the same plan to
    // every layer: the kernel plans its work on the first layer and reuses it for the rest.
    let plan = try cache.decodePlan(for: samples)
    let batch = try cache.blockTables(for: samples)   // what attention.paged(…) reads (as plan.batch)
    _ = batch  // copy only
    let attention = try DecodeAttention(layout: layout, queryHeads: 32)   // threads: both cores; math: below
// bf16 KV on a CPU with AVX512-BF16 multiplies in bf16 by default (`math: .automatic`, twice the
// fp32 rate): ~2e-3 relative error at unit-scale logits, more with sharper attention (ATTENTION.md,
// Tolerances); `math: .fp32` keeps fp32 products (~1e-6).
    let out = try cache.withUnsafeLayerPages(layer: 0) { pages in
        try attention.bifurcated(query: queries, pages: pages, plan: plan, scale: DecodeAttention.defaultScale(headDim: 128))
    }
    _ = out  // copy only

    for s in samples + [request.sequence] { try cache.release(s) }   // full blocks stay cached

    // A request cancelled before all its KV was written (disconnect, preemption): say how far it got,
    // so its never-written prompt blocks leave the prefix tree instead of being served as hits.
    // Requests that matched those blocks meanwhile (relying on the same prefill) come back: their
    // engines compute the tokens from `validTokens` on.
    let cancelled = try cache.admit(otherPrompt, namespace: "tenant-b")
    let orphaned = try cache.release(cancelled.sequence, computedTokens: 0)   // its prefill never ran
    for hit in orphaned { reschedulePrefill(hit.sequence, from: hit.validTokens) }
}

func quickStartSpill(layout: KVLayout, prompt: [TokenID]) throws {
    // One store per model: the label makes a store written under other weights refuse to open.
    let store = try LMDBSpillStore(SpillStoreConfiguration(path: "/var/lib/prefixkv/store", layout: layout,
                                                           limitBytes: 64 << 30, model: "llama-3.1-8b-instruct@0e9e39f"))
    let cache = try KVCacheManager(layout: layout, capacityBlocks: 8192, allocatesPages: true, coldStore: store)
    let again = try cache.admit(prompt, namespace: "tenant-a")   // again.storeHitTokens came back from LMDB
    _ = again  // copy only
    cache.publishStats()   // the last stats record for `kvctl stats` (a closed store ignores later ones)
    store.close()          // flushes queued spills and that record
}

func spillSnippet(layout: KVLayout, n: Int) throws {
    let store = try LMDBSpillStore(SpillStoreConfiguration(
        path: "/var/cache/prefixkv", layout: layout, limitBytes: 64 << 30,
        writeMode: .background(queueLimitBytes: 256 << 20),
        whenQueueFull: .dropWhenFull,    // the default; .waitWhenFull for offline runs (replay)
        model: "llama-3.1-8b-instruct@0e9e39f"))   // refuses a store written under another model
    let cache = try KVCacheManager(layout: layout, capacityBlocks: n, allocatesPages: true, coldStore: store)
    // the manager hands its stats to the store every `statsPublishInterval` (default 1 s) and
    // when it goes away: the live record `kvctl stats` shows (`cache.publishStats()` forces one)
    cache.publishStats()      // the last stats: a closed store ignores what the manager's deinit publishes
    store.close()             // commits the queue and those stats; close after the manager's last call
}
