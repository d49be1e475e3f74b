import KVAttention
import KVCore

/// A stand-in for a model's KV projections: the K and V of a token are a fixed function of
/// (token, position, layer, head, dim), so equal prefixes give equal KV (as with a real model) and
/// anyone can check what a page should hold — after sharing, copy-on-write, spill and restore.
public struct FakeModel: Sendable {
    public let layout: KVLayout

    public init(layout: KVLayout) { self.layout = layout }

    /// The value stored at one element, in [-1, 1), before rounding to the layout's dtype.
    @inlinable
    public func value(token: TokenID, position: Int, layer: Int, kind: KVKind, head: Int, dim: Int) -> Float {
        var h = UInt64(UInt32(bitPattern: token)) &* 0x9E37_79B9_7F4A_7C15
        h ^= UInt64(position) &* 0xC2B2_AE3D_27D4_EB4F
        h ^= UInt64(((layer * 2 + kind.rawValue) * 4096 + head) * 4096 + dim) &* 0x1656_67B1_9E37_79F9
        h ^= h >> 29
        h &*= 0xBF58_476D_1CE4_E5B9
        h ^= h >> 32
        return Float(h & 0xFFFF) / 32768 - 1
    }

    /// Writes the K and V of `tokens` at positions `start...` into the sequence's blocks.
    public func write(tokens: ArraySlice<TokenID>, from start: Int, blockTable: [Int32], arena: KVPageArena) {
        let bs = layout.blockSize, d = layout.headDim
        for (offset, token) in tokens.enumerated() {
            let position = start + offset
            let block = BlockID(blockTable[position / bs])
            let slot = position % bs
            for layer in 0..<layout.layerCount {
                for kind in KVKind.allCases {
                    arena.withUnsafeMutableBlockBytes(block, layer: layer, kind: kind) { bytes in
                        for head in 0..<layout.kvHeadCount {
                            let row = (head * bs + slot) * d
                            for i in 0..<d {
                                layout.dtype.store(value(token: token, position: position, layer: layer, kind: kind, head: head, dim: i),
                                                   bytes.baseAddress!, row + i)
                            }
                        }
                    }
                }
            }
        }
    }

    /// Counts elements of positions `range` that differ from what `write` stores there.
    public func mismatches(tokens: [TokenID], positions range: Range<Int>, blockTable: [Int32], arena: KVPageArena) -> Int {
        let bs = layout.blockSize, d = layout.headDim
        var bad = 0
        for position in range {
            let block = BlockID(blockTable[position / bs])
            let slot = position % bs
            for layer in 0..<layout.layerCount {
                for kind in KVKind.allCases {
                    arena.withUnsafeBlockBytes(block, layer: layer, kind: kind) { bytes in
                        for head in 0..<layout.kvHeadCount {
                            let row = (head * bs + slot) * d
                            for i in 0..<d {
                                let expected = layout.dtype.rounded(value(token: tokens[position], position: position, layer: layer, kind: kind, head: head, dim: i))
                                if layout.dtype.load(bytes.baseAddress!, row + i) != expected { bad += 1 }
                            }
                        }
                    }
                }
            }
        }
        return bad
    }
}
