import CKVKernels
import Dispatch
import KVCore

/// Rows from which the C kernels switch to the GEMM-shaped path.
let kvGemmMinRows = kvk_gemm_min_rows()

/// Work smaller than this (estimated single-thread seconds) runs on the calling thread: waking
/// a second thread costs more than it saves.
let singleThreadBelow = 50e-6

/// The pointers one attention call works on. Valid for the duration of the call only.
struct CallBuffers: @unchecked Sendable {
    var keys: UnsafeRawPointer
    var values: UnsafeRawPointer
    var query: UnsafePointer<Float>
    var output: UnsafeMutablePointer<Float>
    var partial: UnsafeMutablePointer<Float>?
    var lse: UnsafeMutablePointer<Float>?
    var blocks: UnsafePointer<Int32>
    var sequences: UnsafePointer<Int32>
    /// One kernel scratch buffer per worker.
    var scratch: [UnsafeMutableRawPointer]
}

/// Runs a ``WorkPlan``: kernel items longest first on up to `threads` workers (dynamic
/// scheduling, one scratch per worker); each sequence's partial results merge by log-sum-exp
/// as soon as the last item writing one of them is done, on the worker that finished it.
///
/// Merging on completion, rather than in a pass after every item: the merge of the sequences
/// finished early overlaps the items still running on other workers, the merging worker has
/// the partial it just wrote in its own cache, and the call needs no second wake-up of the
/// workers.
struct WorkRunner {
    let layout: KVLayout
    let queryHeads: Int
    let threads: Int
    let scale: Float
    let math: Int32
    let isa: KernelISA

    /// The shared state of one call's workers: the next item in `order`, and per sequence the
    /// items still to write one of its partials.
    private struct Progress {
        var next = 0
        var remaining: [Int32]
    }

    func run(_ plan: WorkPlan, pages: KVLayerPages, query: UnsafeBufferPointer<Float>,
             output: UnsafeMutableBufferPointer<Float>, workspace: Workspace) {
        guard !plan.items.isEmpty else { return }
        let workers = plan.totalCost < singleThreadBelow ? 1 : min(threads, plan.items.count)
        workspace.reserve(threads: workers, scratchBytes: plan.scratchBytes,
                          partialFloats: plan.partialFloats, lseFloats: plan.lseFloats)
        let order = plan.items.indices.sorted { plan.items[$0].cost > plan.items[$1].cost }
        let maxSequencesPerItem = plan.items.reduce(0) { max($0, Int($1.sequenceCount)) }
        plan.blocks.withUnsafeBufferPointer { blocks in
            plan.sequences.withUnsafeBufferPointer { sequences in
                let buffers = CallBuffers(
                    keys: pages.keys, values: pages.values, query: query.baseAddress!, output: output.baseAddress!,
                    partial: workspace.partial.base, lse: workspace.lse.base,
                    blocks: blocks.baseAddress!, sequences: sequences.baseAddress!, scratch: workspace.scratch)
                // A few hundred items per call: one uncontended pthread lock per item is noise,
                // and KVCore.Locked (unlike Synchronization) is visible to ThreadSanitizer. The
                // lock also orders a partial's writes before the merge that reads them.
                let progress = Locked(Progress(remaining: plan.partialWriters))
                parallel(workers) { worker in
                    var ready: [Int] = []
                    ready.reserveCapacity(maxSequencesPerItem)
                    var finished: Int? = nil
                    while true {
                        let i: Int? = progress.withLock { state in
                            if let f = finished {
                                let item = plan.items[f]
                                if item.writesPartial {
                                    for p in 0..<Int(item.sequenceCount) {
                                        let s = Int(buffers.sequences[Int(item.sequenceStart) + p])
                                        state.remaining[s] -= 1
                                        invariant(state.remaining[s] >= 0, "WorkRunner: sequence \(s) finished more partial writers than planned")
                                        if state.remaining[s] == 0 { ready.append(s) }
                                    }
                                }
                            }
                            guard state.next < order.count else { return nil }
                            defer { state.next += 1 }
                            return order[state.next]
                        }
                        for s in ready { merge(sequence: s, plan, buffers) }
                        ready.removeAll(keepingCapacity: true)
                        guard let i else { break }
                        runItem(plan.items[i], buffers, scratch: buffers.scratch[worker])
                        finished = i
                    }
                }
                progress.withLock { state in  // every partial written was merged
                    if let s = state.remaining.firstIndex(where: { $0 != 0 }) {
                        fatalError("WorkRunner: sequence \(s) left unmerged, \(state.remaining[s]) partial writers outstanding")
                    }
                }
            }
        }
    }

    private func runItem(_ item: WorkItem, _ b: CallBuffers, scratch: UnsafeMutableRawPointer) {
        let group = queryHeads / layout.kvHeadCount
        let toPartial = item.writesPartial
        var args = kvk_attend_args(
            keys: b.keys, values: b.values, dtype: layout.dtype.code, kv_heads: Int32(layout.kvHeadCount),
            block_size: Int32(layout.blockSize), head_dim: Int32(layout.headDim), head: item.head, head_count: item.headCount,
            blocks: b.blocks + Int(item.blockStart), block_count: item.blockCount, last_block_tokens: item.lastBlockTokens,
            q: b.query, seqs: b.sequences + Int(item.sequenceStart), seq_count: item.sequenceCount,
            group: Int32(group), q_head0: item.head * Int32(group), q_seq_stride: Int64(queryHeads * layout.headDim),
            scale: scale, math: math, max_isa: isa.rawValue,
            out: (toPartial ? b.partial! : b.output) + item.outOffset, out_seq_stride: Int64(item.outSequenceStride),
            lse2: toPartial ? b.lse! + item.lseOffset : nil, lse_seq_stride: Int64(item.lseSequenceStride),
            scratch: scratch)
        kvk_attend(&args)
    }

    /// out = Σ_j 2^(lse_j − M) · O_j / Σ_j 2^(lse_j − M) for every query head of sequence `s`,
    /// M = max_j lse_j: the exact softmax over the union of its segments' tokens.
    private func merge(sequence s: Int, _ plan: WorkPlan, _ b: CallBuffers) {
        let d = layout.headDim, hq = queryHeads
        let segments = Int(plan.segmentIndptr[s])..<Int(plan.segmentIndptr[s + 1])
        for qh in 0..<hq {
            var top = -Float.infinity
            for j in segments { top = max(top, b.lse![plan.segmentLse[j] + qh]) }
            let out = b.output + (s * hq + qh) * d
            out.update(repeating: 0, count: d)
            var total: Float = 0
            for j in segments {
                let w = exp2f(b.lse![plan.segmentLse[j] + qh] - top)
                total += w
                let part = b.partial! + plan.segmentOut[j] + qh * d
                for i in 0..<d { out[i] += w * part[i] }
            }
            let inv = 1 / total
            for i in 0..<d { out[i] *= inv }
        }
    }
}

/// Runs `body(0..<workers)` concurrently (inline when there is one worker).
func parallel(_ workers: Int, _ body: @Sendable (Int) -> Void) {
    if workers <= 1 {
        body(0)
    } else {
        DispatchQueue.concurrentPerform(iterations: workers, execute: body)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
