/// Counts the distinct full token blocks of a trace exactly, without materialising tokens: the
/// capacity at which a replay never evicts ("unbounded").
///
/// A block of `blockSize` tokens ending at token `e` is fixed by `e` and the hash ids up to the
/// one holding token `e - 1` (tokens are a function of the ids). So a trie over id sequences,
/// recording at each node the furthest prompt end seen through it, gives the count: a node at
/// depth `k` owns the blocks ending in `(k·H, reach]`.
public func uniqueFullBlocks(of trace: Trace, blockSize: Int) -> Int {
    struct Edge: Hashable { var parent: Int32; var id: Int64 }
    let h = trace.hashBlockTokens
    var children: [Edge: Int32] = [:]
    var reach: [Int] = []
    var depth: [Int] = []
    for r in trace.requests {
        var node: Int32 = -1
        for k in 0..<hashIDsCovering(r.inputLength, hashBlockTokens: h) {
            let edge = Edge(parent: node, id: r.hashIDs[k])
            if let child = children[edge] {
                node = child
            } else {
                node = Int32(reach.count)
                children[edge] = node
                reach.append(0)
                depth.append(k)
            }
            reach[Int(node)] = max(reach[Int(node)], min(r.inputLength, (k + 1) * h))
        }
    }
    var total = 0
    for n in reach.indices { total += reach[n] / blockSize - depth[n] * h / blockSize }
    return total
}
