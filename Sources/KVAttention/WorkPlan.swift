import CKVKernels
import KVCore

/// One call of the C kernel: some query rows against a run of blocks of consecutive KV heads.
struct WorkItem {
    var head: Int32
    var headCount: Int32
    /// Range in ``WorkPlan/blocks``.
    var blockStart: Int32
    var blockCount: Int32
    var lastBlockTokens: Int32
    /// Range in ``WorkPlan/sequences`` (batch positions; rows are sequences × group).
    var sequenceStart: Int32
    var sequenceCount: Int32
    /// Destination: the caller's output (`lseOffset < 0`) or the partial buffers.
    var outOffset: Int
    var outSequenceStride: Int
    var lseOffset: Int
    var lseSequenceStride: Int
    /// Estimated seconds on one thread (for splitting and longest-first scheduling).
    var cost: Double

    var writesPartial: Bool { lseOffset >= 0 }
}

/// The work of one attention call: kernel items, the flat block / sequence arrays they index,
/// and for every sequence with several partial results the (output, lse) offsets to merge.
///
/// A *segment* is one partial result for all query heads of one sequence: `queryHeads × headDim`
/// floats of normalised output plus `queryHeads` base-2 log-sum-exps. A sequence whose KV is
/// read by exactly one item (per KV head) gets no segment: that item writes the output directly.
struct WorkPlan {
    var items: [WorkItem] = []
    var blocks: [Int32] = []
    var sequences: [Int32] = []
    /// Per sequence, its segments in `segmentOut` / `segmentLse` (CSR; empty: written directly).
    var segmentIndptr: [Int32] = []
    var segmentOut: [Int] = []
    var segmentLse: [Int] = []
    /// Per sequence, how many items write one of its partial results (0: none, or written
    /// directly). The runner merges a sequence as soon as the last of them is done.
    var partialWriters: [Int32] = []
    var partialFloats = 0
    var lseFloats = 0
    /// Largest kernel scratch an item needs (sizes the per-thread scratch).
    var scratchBytes = 0

    var totalCost: Double { items.reduce(0) { $0 + $1.cost } }

    /// Checks that `partialWriters` counts, per sequence, the items that write one of its
    /// partials, and that a sequence has merge segments exactly when it has such writers.
    /// Traps naming the broken invariant. Run by the planner in debug builds (every test call).
    func checkInvariants() {
        var writers = [Int32](repeating: 0, count: partialWriters.count)
        for item in items where item.writesPartial {
            for p in 0..<Int(item.sequenceCount) { writers[Int(sequences[Int(item.sequenceStart) + p])] += 1 }
        }
        for s in writers.indices {
            invariant(writers[s] == partialWriters[s],
                         "WorkPlan: sequence \(s) has \(writers[s]) partial-writing items, partialWriters says \(partialWriters[s])")
            let segments = segmentIndptr[s + 1] - segmentIndptr[s]
            invariant((segments > 0) == (writers[s] > 0),
                         "WorkPlan: sequence \(s) has \(segments) merge segments and \(writers[s]) partial-writing items")
        }
    }
}

/// Rough per-thread machine model used only to split and order work (not to report speed).
struct CostModel {
    let bytesPerToken: Double      // K + V of one head
    let headDim: Double
    let flopsPerSecond: Double     // one thread, many-row path
    static let bytesPerSecond = 40e9
    static let itemOverhead = 1e-6

    init(layout: KVLayout, bf16Math: Bool) {
        bytesPerToken = Double(2 * layout.headDim * layout.dtype.byteWidth)
        headDim = Double(layout.headDim)
        flopsPerSecond = bf16Math ? 400e9 : 200e9
    }

    func cost(tokens: Int, rows: Int) -> Double {
        let paddedRows = rows < Int(kvGemmMinRows) ? 1 : (rows + 15) / 16 * 16
        return Double(tokens) * bytesPerToken / CostModel.bytesPerSecond
            + 4 * Double(paddedRows * tokens) * headDim / flopsPerSecond + CostModel.itemOverhead
    }
}

/// Most rows one kernel call takes: more are split over several calls (each re-reading the KV
/// run from cache), so per-call scratch stays inside L2.
let maxRowsPerItem = 256
/// Shortest run (tokens) worth its own item when splitting a run across threads.
let minTokensPerChunk = 512
/// Scratch a many-row item may use for its heads' state (about L2 of one core).
let gemmScratchBudget = 768 << 10

/// Builds work plans: one run of blocks per node (or sequence), split into chunks when there are
/// too few items to keep every thread busy, and into row pieces when a shared node has more rows
/// than ``maxRowsPerItem``.
///
/// Items take several consecutive KV heads: a block's heads are adjacent in the arena, so the
/// item streams each block as one contiguous run (one head alone is a 4 KiB island every
/// `kvHeads × 4 KiB`, which DRAM serves at a third of the streaming rate). Few-row runs take all
/// heads; many-row runs as many as keep the per-head state within ``gemmScratchBudget``.
struct WorkPlanner {
    let layout: KVLayout
    let queryHeads: Int
    let threads: Int
    let model: CostModel

    var group: Int { queryHeads / layout.kvHeadCount }

    /// A run of blocks read by a list of sequences (a DecodePlan node, or one sequence's table).
    struct Run {
        var blockStart: Int   // in WorkPlan.blocks
        var blockCount: Int
        var lastBlockTokens: Int
        var sequenceStart: Int  // in WorkPlan.sequences
        var sequenceCount: Int
        var tokens: Int
    }

    /// Paged: every sequence's whole table is one run.
    func pagedPlan(_ batch: BlockTableBatch) -> WorkPlan {
        var plan = WorkPlan()
        plan.blocks = batch.indices
        plan.sequences = (0..<Int32(batch.sequenceCount)).map { $0 }
        let runs = (0..<batch.sequenceCount).map { s in
            Run(blockStart: Int(batch.indptr[s]), blockCount: Int(batch.indptr[s + 1] - batch.indptr[s]),
                lastBlockTokens: batch.lastBlockTokenCount(s), sequenceStart: s, sequenceCount: 1,
                tokens: Int(batch.tokenCounts[s]))
        }
        emit(runs: runs, sequenceCount: batch.sequenceCount, into: &plan)
        return plan
    }

    /// Bifurcated: every node of every level is one run, read once for all its sequences.
    func cascadePlan(_ decodePlan: DecodePlan) -> WorkPlan {
        var plan = WorkPlan()
        var runs: [Run] = []
        for level in decodePlan.levels {
            let blockBase = plan.blocks.count, sequenceBase = plan.sequences.count
            plan.blocks.append(contentsOf: level.blockIndices)
            plan.sequences.append(contentsOf: level.sequenceIndices)
            for j in 0..<level.nodeCount {
                runs.append(Run(
                    blockStart: blockBase + Int(level.blockIndptr[j]),
                    blockCount: Int(level.blockIndptr[j + 1] - level.blockIndptr[j]),
                    lastBlockTokens: Int(level.lastBlockTokenCounts[j]),
                    sequenceStart: sequenceBase + Int(level.sequenceIndptr[j]),
                    sequenceCount: Int(level.sequenceIndptr[j + 1] - level.sequenceIndptr[j]),
                    tokens: level.tokenCount(ofNode: j, blockSize: decodePlan.blockSize)))
            }
        }
        emit(runs: runs, sequenceCount: decodePlan.sequenceCount, into: &plan)
        return plan
    }

    /// KV heads per item for a run with `rows` query rows per head.
    private func headsPerItem(rows: Int) -> Int {
        if rows < Int(kvGemmMinRows) { return layout.kvHeadCount }
        let perHead = kvk_attend_scratch_bytes(Int32(rows), Int32(layout.headDim), 1)
        return max(1, min(layout.kvHeadCount, gemmScratchBudget / perHead))
    }

    /// Chunks per run: enough items for `threads` workers (about four each), never chunks
    /// shorter than ``minTokensPerChunk`` tokens.
    private func chunkCounts(_ runs: [Run]) -> [Int] {
        let perHead = runs.map { model.cost(tokens: $0.tokens, rows: min($0.sequenceCount * group, maxRowsPerItem)) }
        let total = zip(runs, perHead).reduce(0) { $0 + $1.1 * Double(layout.kvHeadCount * max(1, $1.0.sequenceCount * group / maxRowsPerItem)) }
        guard threads > 1 else { return runs.map { _ in 1 } }
        let target = total / Double(threads * 4)
        return zip(runs, perHead).map { run, cost in
            let byTokens = max(1, min(run.blockCount, run.tokens / minTokensPerChunk))
            let itemCost = cost * Double(headsPerItem(rows: run.sequenceCount * group))
            return max(1, min(byTokens, Int((itemCost / target).rounded(.up))))
        }
    }

    private func emit(runs: [Run], sequenceCount: Int, into plan: inout WorkPlan) {
        let chunks = chunkCounts(runs)
        let hq = queryHeads, d = layout.headDim, hkv = layout.kvHeadCount, g = group
        // Partial results per sequence: one per chunk of every run that reads it.
        var partialCount = [Int](repeating: 0, count: sequenceCount)
        for (run, c) in zip(runs, chunks) {
            for p in 0..<run.sequenceCount { partialCount[Int(plan.sequences[run.sequenceStart + p])] += c }
        }
        var segments = [[(out: Int, lse: Int)]](repeating: [], count: sequenceCount)
        plan.partialWriters = [Int32](repeating: 0, count: sequenceCount)
        let seqsPerItem = max(1, maxRowsPerItem / g)
        for (run, c) in zip(runs, chunks) {
            let direct = run.sequenceCount == 1 && c == 1 && partialCount[Int(plan.sequences[run.sequenceStart])] == 1
            for chunk in 0..<c {
                let firstBlock = run.blockCount * chunk / c, endBlock = run.blockCount * (chunk + 1) / c
                let isLast = endBlock == run.blockCount
                let tokens = (endBlock - firstBlock - 1) * layout.blockSize + (isLast ? run.lastBlockTokens : layout.blockSize)
                var outBase = 0, lseBase = -1
                if !direct {
                    outBase = plan.partialFloats
                    lseBase = plan.lseFloats
                    plan.partialFloats += run.sequenceCount * hq * d
                    plan.lseFloats += run.sequenceCount * hq
                    for p in 0..<run.sequenceCount {
                        segments[Int(plan.sequences[run.sequenceStart + p])].append((outBase + p * hq * d, lseBase + p * hq))
                    }
                }
                for p0 in stride(from: 0, to: run.sequenceCount, by: seqsPerItem) {
                    let n = min(seqsPerItem, run.sequenceCount - p0)
                    let heads = headsPerItem(rows: n * g)
                    let cost = model.cost(tokens: tokens, rows: n * g) * Double(heads)
                    for head in stride(from: 0, to: hkv, by: heads) {
                        let headCount = min(heads, hkv - head)
                        plan.scratchBytes = max(plan.scratchBytes, kvk_attend_scratch_bytes(Int32(n * g), Int32(d), Int32(headCount)))
                        let outOffset = direct
                            ? (Int(plan.sequences[run.sequenceStart]) * hq + head * g) * d
                            : outBase + (p0 * hq + head * g) * d
                        plan.items.append(WorkItem(
                            head: Int32(head), headCount: Int32(headCount), blockStart: Int32(run.blockStart + firstBlock),
                            blockCount: Int32(endBlock - firstBlock),
                            lastBlockTokens: Int32(isLast ? run.lastBlockTokens : layout.blockSize),
                            sequenceStart: Int32(run.sequenceStart + p0), sequenceCount: Int32(n),
                            outOffset: outOffset, outSequenceStride: hq * d,
                            lseOffset: direct ? -1 : lseBase + p0 * hq + head * g, lseSequenceStride: hq,
                            cost: cost))
                        if !direct {
                            for p in p0..<p0 + n { plan.partialWriters[Int(plan.sequences[run.sequenceStart + p])] += 1 }
                        }
                    }
                }
            }
        }
        plan.segmentIndptr = [0]
        for list in segments {
            for (o, l) in list {
                plan.segmentOut.append(o)
                plan.segmentLse.append(l)
            }
            plan.segmentIndptr.append(Int32(plan.segmentOut.count))
        }
        assert({ plan.checkInvariants(); return true }())
    }
}
