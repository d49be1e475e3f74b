@testable import KVCore
import KVTestSupport
import Testing

/// `KVPageArena.store`: the batched K/V write against the per-element `KVDType.store` loop it
/// replaces, and its typed errors.
@Suite struct KVWriteTests {
    /// The hand-written path (README's old Quick start): per token, per KV head, per element.
    static func storeByElement(_ arena: KVPageArena, keys: [Float], values: [Float], layer: Int, slots: [Int32]) {
        let l = arena.layout
        for (t, slot) in slots.enumerated() {
            let block = BlockID(slot / Int32(l.blockSize)), offset = Int(slot) % l.blockSize
            for (kind, source) in [(KVKind.keys, keys), (.values, values)] {
                arena.withUnsafeMutableBlockBytes(block, layer: layer, kind: kind) { bytes in
                    for h in 0..<l.kvHeadCount {
                        let first = (h * l.blockSize + offset) * l.headDim
                        for i in 0..<l.headDim { l.dtype.store(source[(t * l.kvHeadCount + h) * l.headDim + i], bytes.baseAddress!, first + i) }
                    }
                }
            }
        }
    }

    /// Every byte of every block, layer and kind.
    static func snapshot(_ arena: KVPageArena) -> [UInt8] {
        var all: [UInt8] = []
        for layer in 0..<arena.layout.layerCount {
            for kind in KVKind.allCases {
                for b in 0..<arena.capacityBlocks {
                    arena.withUnsafeBlockBytes(BlockID(Int32(b)), layer: layer, kind: kind) { all += $0 }
                }
            }
        }
        return all
    }

    /// Whether two arenas hold the same bytes (a `Bool`, so a failure does not print megabytes).
    static func sameBytes(_ a: KVPageArena, _ b: KVPageArena) -> Bool { snapshot(a) == snapshot(b) }

    /// An arena whose every byte is random (so a write to the wrong place, or a missed one, shows).
    static func noisyArena(_ layout: KVLayout, capacity: Int, seed: UInt64) -> KVPageArena {
        let arena = KVPageArena(layout: layout, capacityBlocks: capacity)
        var rng = SeededRandom(seed: seed)
        for layer in 0..<layout.layerCount {
            for kind in KVKind.allCases {
                for b in 0..<capacity {
                    arena.withUnsafeMutableBlockBytes(BlockID(Int32(b)), layer: layer, kind: kind) { bytes in
                        for i in bytes.indices { bytes[i] = UInt8.random(in: 0...255, using: &rng) }
                    }
                }
            }
        }
        return arena
    }

    /// Source values: half ordinary magnitudes, half arbitrary bit patterns (subnormals, huge
    /// values that overflow fp16, infinities, NaNs with payloads, values halfway between two
    /// fp16/bf16 values), so every rounding case of the conversion is exercised.
    static func values(_ n: Int, using rng: inout SeededRandom) -> [Float] {
        (0..<n).map { i in
            switch i % 4 {
            case 0: Float(bitPattern: UInt32.random(in: 0...UInt32.max, using: &rng))
            case 1: Float.random(in: -3...3, using: &rng)
            // exactly halfway between two bf16 values / two fp16 normals: ties go to even
            case 2: Float(bitPattern: (UInt32.random(in: 0...UInt32.max, using: &rng) & 0xFFFF_0000) | 0x8000)
            default: Float(bitPattern: (UInt32.random(in: 0x3800_0000...0x4780_0000, using: &rng) & 0xFFFF_E000) | 0x1000)
            }
        }
    }

    struct Shape: CustomStringConvertible, Sendable {
        var dtype: KVDType, blockSize: Int, kvHeads: Int, headDim: Int
        var description: String { "\(dtype) bs=\(blockSize) kvHeads=\(kvHeads) d=\(headDim)" }
    }

    static let shapes: [Shape] = KVDType.allCases.flatMap { dtype in
        [Shape(dtype: dtype, blockSize: 1, kvHeads: 1, headDim: 8), Shape(dtype: dtype, blockSize: 16, kvHeads: 4, headDim: 12),
         Shape(dtype: dtype, blockSize: 7, kvHeads: 2, headDim: 5), Shape(dtype: dtype, blockSize: 16, kvHeads: 8, headDim: 128)]
    }

    /// Random distinct slots (null block excluded) covering some blocks partially, written in
    /// random order, on the middle layer of three: bit-identical to the element loop, everything
    /// else untouched. Then the same from the dtype's own encoding (`keyBytes:`).
    @Test(arguments: shapes)
    func storeMatchesTheElementLoop(_ shape: Shape) throws {
        let layout = try KVLayout(layerCount: 3, kvHeadCount: shape.kvHeads, headDim: shape.headDim, blockSize: shape.blockSize, dtype: shape.dtype)
        let capacity = max(6, 48 / shape.blockSize + 2)
        var rng = SeededRandom(seed: UInt64(shape.blockSize * 1000 + shape.kvHeads * 10 + Int(shape.dtype.code)))
        let all = (layout.blockSize..<(capacity * layout.blockSize)).map { Int32($0) }.shuffled(using: &rng)
        for tokens in [1, 3, min(all.count, 37)] {
            let slots = Array(all.prefix(tokens))
            let n = tokens * layout.kvHeadCount * layout.headDim
            let keys = Self.values(n, using: &rng), values = Self.values(n, using: &rng)
            let seed = UInt64.random(in: 0...UInt64.max, using: &rng)
            let expected = Self.noisyArena(layout, capacity: capacity, seed: seed)
            Self.storeByElement(expected, keys: keys, values: values, layer: 1, slots: slots)
            let fp32 = Self.noisyArena(layout, capacity: capacity, seed: seed)
            try fp32.store(keys: keys, values: values, layer: 1, slots: slots)
            #expect(Self.sameBytes(fp32, expected), "fp32 source, \(tokens) tokens")

            // The same values already encoded in the dtype: copied as they are.
            let width = layout.dtype.byteWidth
            var keyBytes = [UInt8](repeating: 0, count: n * width), valueBytes = keyBytes
            keyBytes.withUnsafeMutableBytes { for i in 0..<n { layout.dtype.store(keys[i], $0.baseAddress!, i) } }
            valueBytes.withUnsafeMutableBytes { for i in 0..<n { layout.dtype.store(values[i], $0.baseAddress!, i) } }
            let encoded = Self.noisyArena(layout, capacity: capacity, seed: seed)
            try keyBytes.withUnsafeBytes { k in
                try valueBytes.withUnsafeBytes { v in
                    try slots.withUnsafeBufferPointer { s in try encoded.store(keyBytes: k, valueBytes: v, layer: 1, slots: s) }
                }
            }
            #expect(Self.sameBytes(encoded, expected), "encoded source, \(tokens) tokens")
        }
    }

    /// A whole block filled token by token in one call, and a slot mapping as the slots.
    @Test(arguments: KVDType.allCases)
    func fullAndPartialBlocksThroughASlotMapping(_ dtype: KVDType) throws {
        let layout = try KVLayout(layerCount: 1, kvHeadCount: 2, headDim: 4, blockSize: 4, dtype: dtype)
        // Table [3, 1, 2]: positions 2..<11 cover the end of block 3, all of 1 and 3 slots of 2.
        let mapping = try SlotMapping(blockSize: 4, tables: [[3, 1, 2]], positions: [2..<11])
        #expect(mapping.slots == [14, 15, 4, 5, 6, 7, 8, 9, 10])
        #expect(mapping.positions == Array(2..<11))
        var rng = SeededRandom(seed: 9)
        let n = mapping.count * 8
        let keys = Self.values(n, using: &rng), values = Self.values(n, using: &rng)
        let expected = Self.noisyArena(layout, capacity: 4, seed: 1), got = Self.noisyArena(layout, capacity: 4, seed: 1)
        Self.storeByElement(expected, keys: keys, values: values, layer: 0, slots: mapping.slots)
        try got.store(keys: keys, values: values, layer: 0, slots: mapping)
        #expect(Self.sameBytes(got, expected))
        // Nothing to write is no error.
        try got.store(keys: [], values: [], layer: 0, slots: [])
        #expect(Self.sameBytes(got, expected))
    }

    /// `load` reads back by slot what `store` wrote, as `KVDType.load` widens each stored element,
    /// for every dtype, across blocks, heads and layers, in any slot order; and its typed errors.
    @Test(arguments: [KVDType.float32, .float16, .bfloat16])
    func loadReadsBackWhatStoreWrote(_ dtype: KVDType) throws {
        let layout = try KVLayout(layerCount: 2, kvHeadCount: 3, headDim: 5, blockSize: 4, dtype: dtype)
        let arena = Self.noisyArena(layout, capacity: 6, seed: 11)
        var rng = SeededRandom(seed: 12)
        let slots: [Int32] = [23, 4, 9, 10, 17, 5]   // blocks 1–5, out of order, two in one block
        let n = slots.count * layout.kvHeadCount * layout.headDim
        for layer in 0..<2 {
            let keys = (0..<n).map { _ in Float.random(in: -4...4, using: &rng) }, values = (0..<n).map { _ in Float.random(in: -4...4, using: &rng) }
            try arena.store(keys: keys, values: values, layer: layer, slots: slots)
            let back = try arena.load(layer: layer, slots: slots)
            #expect(back.keys == keys.map { dtype.rounded($0) } && back.values == values.map { dtype.rounded($0) }, "layer \(layer)")
            #expect(try arena.load(layer: layer, slots: Array(slots.reversed())).keys.count == n)
        }
        #expect(try arena.load(layer: 0, slots: []).keys.isEmpty)
        #expect(throws: KVSlotError.nullBlockSlot(index: 1, slot: 2)) { try arena.load(layer: 0, slots: [4, 2]) }
        #expect(throws: KVSlotError.slotOutOfRange(index: 0, slot: 24, slotCount: 24)) { try arena.load(layer: 0, slots: [24]) }
        #expect(throws: KVSlotError.invalidLayer(2, layerCount: 2)) { try arena.load(layer: 2, slots: [4]) }
        var small = [Float](repeating: 0, count: 14), right = [Float](repeating: 0, count: 15)
        #expect(throws: KVSlotError.bufferSize(.keys, count: 14, expected: 15)) {
            try small.withUnsafeMutableBufferPointer { k in
                try right.withUnsafeMutableBufferPointer { v in
                    try [Int32(4)].withUnsafeBufferPointer { s in try arena.load(keys: k, values: v, layer: 0, slots: s) }
                }
            }
        }
        let mapping = try SlotMapping(blockSize: 2, tables: [[2]], positions: [0..<1])
        #expect(throws: KVSlotError.blockSizeMismatch(mapping: 2, layout: 4)) { try arena.load(layer: 0, slots: mapping) }
    }

    /// Bad input is a typed error, checked before anything is written: a call whose last slot
    /// (or source) is bad leaves every byte as it was.
    @Test func misuseIsATypedErrorAndWritesNothing() throws {
        let layout = try KVLayout(layerCount: 2, kvHeadCount: 2, headDim: 4, blockSize: 4, dtype: .bfloat16)
        let arena = Self.noisyArena(layout, capacity: 3, seed: 5)   // slots 4..<12 usable
        let before = Self.snapshot(arena)
        let row = [Float](repeating: 1.5, count: 8)
        func attempt(_ keys: [Float], _ values: [Float], layer: Int = 0, _ slots: [Int32]) -> KVSlotError? {
            do { try arena.store(keys: keys, values: values, layer: layer, slots: slots); return nil } catch { return error }
        }
        #expect(attempt(row + row, row + row, [4, 12]) == .slotOutOfRange(index: 1, slot: 12, slotCount: 12))
        #expect(attempt(row + row, row + row, [5, -1]) == .slotOutOfRange(index: 1, slot: -1, slotCount: 12))
        #expect(attempt(row + row, row + row, [11, 3]) == .nullBlockSlot(index: 1, slot: 3))
        #expect(attempt(row, row, [0]) == .nullBlockSlot(index: 0, slot: 0))
        #expect(attempt(row, row, layer: 2, [4]) == .invalidLayer(2, layerCount: 2))
        #expect(attempt(row, row, layer: -1, [4]) == .invalidLayer(-1, layerCount: 2))
        #expect(attempt(row, row, [4, 5]) == .bufferSize(.keys, count: 8, expected: 16))
        #expect(attempt(row + row, row, [4, 5]) == .bufferSize(.values, count: 8, expected: 16))
        #expect(attempt(row + [1], row, [4]) == .bufferSize(.keys, count: 9, expected: 8))
        let mapping = try SlotMapping(blockSize: 2, tables: [[2]], positions: [0..<1])
        #expect(throws: KVSlotError.blockSizeMismatch(mapping: 2, layout: 4)) { try arena.store(keys: row, values: row, layer: 0, slots: mapping) }
        // The encoded form counts bytes.
        let bytes = [UInt8](repeating: 0, count: 16)
        #expect(throws: KVSlotError.bufferSize(.values, count: 15, expected: 16)) {
            try bytes.withUnsafeBytes { k in
                try bytes.dropLast().withUnsafeBytes { v in
                    try [Int32(4)].withUnsafeBufferPointer { s in try arena.store(keyBytes: k, valueBytes: UnsafeRawBufferPointer(v), layer: 0, slots: s) }
                }
            }
        }
        let after = Self.snapshot(arena)
        #expect(after == before, "a refused store wrote")
    }

    /// The store's fp16 conversion (fp32 arithmetic, no F16C) against `Float16(_:)`: every sign,
    /// exponent and top mantissa bits, each with the low 16 bits at every rounding boundary
    /// (below, at and above halfway for normals and subnormals, NaN payloads), plus random
    /// patterns. (All 2^32 patterns were compared once in a release build: no difference.)
    @Test func float16BitsIsFloat16() {
        let lows: [UInt32] = [0, 1, 0x0FFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x2001, 0x3000, 0x7FFF, 0x8000, 0x8001, 0xBFFF, 0xC000, 0xFFFE, 0xFFFF]
        var mismatches = 0
        for high in UInt32(0)...0xFFFF {
            for low in lows {
                let x = Float(bitPattern: high << 16 | low)
                if KVDType.float16Bits(x) != Float16(x).bitPattern { mismatches += 1 }
            }
        }
        var rng = SeededRandom(seed: 16)
        for _ in 0..<1_000_000 {
            let x = Float(bitPattern: UInt32.random(in: 0...UInt32.max, using: &rng))
            if KVDType.float16Bits(x) != Float16(x).bitPattern { mismatches += 1 }
        }
        #expect(mismatches == 0)
    }

    /// The mapping's arithmetic, its typed form, and its errors.
    @Test func slotMappingArithmeticAndErrors() throws {
        let m = try SlotMapping(blockSize: 16, tables: [[5, 9], [7], [2, 3, 4]], positions: [15..<17, 0..<0, 40..<41])
        #expect(m.slots == [95, 144, 72] as [Int32])   // 5·16+15, 9·16+0, 4·16+8
        #expect(m.positions == [15, 16, 40] as [Int32])
        #expect(m.indptr == [0, 2, 2, 3] as [Int32])
        #expect(m.spanCount == 3 && m.count == 3)
        #expect(Array(m.slots(ofSpan: 0)) == [95, 144] && m.slots(ofSpan: 1).isEmpty)
        #expect(m[1] == KVSlot(block: BlockID(9), offset: 0) && m.kvSlots.map { $0.flat(blockSize: 16) } == m.slots.map(Int.init))
        #expect(KVSlot(flat: 95, blockSize: 16) == KVSlot(block: BlockID(5), offset: 15))
        #expect(throws: SlotMappingError.positionsOutsideTable(span: 0, positions: 0..<33, tableTokens: 32)) {
            try SlotMapping(blockSize: 16, tables: [[1, 2]], positions: [0..<33])
        }
        #expect(throws: SlotMappingError.mismatchedCounts(tables: 1, positions: 2)) { try SlotMapping(blockSize: 16, tables: [[1]], positions: [0..<1, 0..<1]) }
        #expect(throws: SlotMappingError.negativeBlockID(span: 0, block: -3)) { try SlotMapping(blockSize: 4, tables: [[-3]], positions: [1..<2]) }
        #expect(throws: SlotMappingError.slotOverflow(span: 0, block: Int32.max / 2)) { try SlotMapping(blockSize: 4, tables: [[Int32.max / 2]], positions: [0..<1]) }
        #expect(throws: SlotMappingError.invalidBlockSize(0)) { try SlotMapping(blockSize: 0, tables: [], positions: []) }
    }
}
