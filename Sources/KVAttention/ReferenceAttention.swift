import KVCore

/// Dense decode attention written for clarity, in Float64: the oracle the tests compare the
/// fast kernels with. Slow; not for serving.
public enum ReferenceAttention {
    /// Attention of `query` (`[batch][queryHeads][headDim]`) over each sequence's pages;
    /// returns `[batch][queryHeads][headDim]`. Query head `q` reads KV head `q / (queryHeads / kvHeads)`.
    public static func compute(
        query: [Float], pages: KVLayerPages, batch: BlockTableBatch, queryHeads: Int, scale: Float
    ) throws(AttentionError) -> [Float] {
        let layout = pages.layout
        try query.withUnsafeBufferPointer { (q) throws(AttentionError) in
            try AttentionValidation.check(layout: layout, queryHeads: queryHeads, batch: batch, capacity: pages.capacityBlocks,
                                          query: q, outputCount: query.count, scale: scale)
        }
        let d = layout.headDim, hq = queryHeads, group = hq / layout.kvHeadCount
        let elt = layout.dtype.byteWidth
        var output = [Float](repeating: 0, count: query.count)
        for s in 0..<batch.sequenceCount {
            // The sequence's token rows for one KV head, in order, as (keys, values) row pointers.
            func rows(head: Int) -> [(UnsafeRawPointer, UnsafeRawPointer)] {
                var result: [(UnsafeRawPointer, UnsafeRawPointer)] = []
                let table = batch.table(s)
                for (n, block) in table.enumerated() {
                    let tokens = n == table.count - 1 ? batch.lastBlockTokenCount(s) : layout.blockSize
                    for t in 0..<tokens {
                        let element = ((Int(block) * layout.kvHeadCount + head) * layout.blockSize + t) * d
                        result.append((pages.keys + element * elt, pages.values + element * elt))
                    }
                }
                return result
            }
            for head in 0..<layout.kvHeadCount {
                let kv = rows(head: head)
                for qh in head * group..<(head + 1) * group {
                    let q = (s * hq + qh) * d
                    let scores = kv.map { (k, _) in
                        (0..<d).reduce(0.0) { $0 + Double(query[q + $1]) * Double(layout.dtype.load(k, $1)) } * Double(scale)
                    }
                    let top = scores.max()!
                    let weights = scores.map { _exp($0 - top) }
                    let total = weights.reduce(0, +)
                    for i in 0..<d {
                        var acc = 0.0
                        for (t, (_, v)) in kv.enumerated() { acc += weights[t] * Double(layout.dtype.load(v, i)) }
                        output[q + i] = Float(acc / total)
                    }
                }
            }
        }
        return output
    }
}

#if canImport(Glibc)
import Glibc
@inline(__always) private func _exp(_ x: Double) -> Double { Glibc.exp(x) }
#elseif canImport(Darwin)
import Darwin
@inline(__always) private func _exp(_ x: Double) -> Double { Darwin.exp(x) }
#endif
