import KVCore

/// The stress test's stand-in for a model: the KV of a token is a deterministic function of
/// (token, position), so any block holding a given prefix has exactly one correct content and a
/// reader can check shared pages without knowing who wrote them.
struct KVPattern {
    let layout: KVLayout

    /// The 16-bit element at (layer, kind, head, dim) of the KV of `token` at `position`.
    @inline(__always)
    static func element(token: TokenID, position: Int, layer: Int, kind: KVKind, head: Int, dim: Int) -> UInt16 {
        var z = UInt64(UInt32(bitPattern: token)) &* 0x9E37_79B9_7F4A_7C15
        z ^= UInt64(position) &* 0xBF58_476D_1CE4_E5B9
        z ^= UInt64(((layer * 2 + kind.rawValue) << 20) | (head << 10) | dim) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return UInt16(truncatingIfNeeded: z ^ (z >> 17))
    }

    /// Writes the KV of `tokens[range]` (positions in the sequence) into the blocks of `table`,
    /// as an engine's prefill or decode step would.
    func write(_ tokens: [TokenID], _ range: Range<Int>, table: [Int32], arena: KVPageArena) {
        for position in range {
            let block = BlockID(table[position / layout.blockSize])
            let slot = position % layout.blockSize
            for layer in 0..<layout.layerCount {
                for kind in KVKind.allCases {
                    arena.withUnsafeMutableBlockBytes(block, layer: layer, kind: kind) { bytes in
                        for head in 0..<layout.kvHeadCount {
                            for dim in 0..<layout.headDim {
                                let value = Self.element(token: tokens[position], position: position, layer: layer, kind: kind, head: head, dim: dim)
                                bytes.storeBytes(of: value, toByteOffset: offset(head: head, slot: slot, dim: dim), as: UInt16.self)
                            }
                        }
                    }
                }
            }
        }
    }

    /// Checks that block `index` of a sequence holding `tokens` carries the right KV in its first
    /// `slots` slots; returns a description of the first wrong element, nil when all are right.
    func check(_ tokens: [TokenID], blockIndex index: Int, slots: Int, table: [Int32], arena: KVPageArena) -> String? {
        let block = BlockID(table[index])
        for slot in 0..<slots {
            let position = index * layout.blockSize + slot
            for layer in 0..<layout.layerCount {
                for kind in KVKind.allCases {
                    let failure = arena.withUnsafeBlockBytes(block, layer: layer, kind: kind) { bytes -> String? in
                        for head in 0..<layout.kvHeadCount {
                            for dim in 0..<layout.headDim {
                                let want = Self.element(token: tokens[position], position: position, layer: layer, kind: kind, head: head, dim: dim)
                                let got = bytes.load(fromByteOffset: offset(head: head, slot: slot, dim: dim), as: UInt16.self)
                                if got != want { return "block \(block) position \(position) layer \(layer) \(kind) head \(head) dim \(dim): read \(got), expected \(want)" }
                            }
                        }
                        return nil
                    }
                    if let failure { return failure }
                }
            }
        }
        return nil
    }

    /// Byte offset of an element within one block of one layer's K or V arena (head-major, see
    /// `KVLayout`). The pattern fills the first 16 bits of each element whatever the dtype.
    private func offset(head: Int, slot: Int, dim: Int) -> Int {
        ((head * layout.blockSize + slot) * layout.headDim + dim) * layout.dtype.byteWidth
    }
}
