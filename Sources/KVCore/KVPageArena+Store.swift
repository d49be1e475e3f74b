// Writing new tokens' K and V into their slots: what an engine does for every new token of every
// sequence on every layer (vLLM's reshape_and_cache); and reading them back by slot (`load`: KV
// handed to another node or tier, checks).

/// Why ``KVPageArena``'s `store` or `load` refused. Everything is checked before anything is
/// written or read: a refused store leaves the arena as it was.
public enum KVSlotError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A layer outside `0..<layerCount`.
    case invalidLayer(Int, layerCount: Int)
    /// Token `index`'s slot is negative or past the arena (`slotCount` = capacity × block size).
    case slotOutOfRange(index: Int, slot: Int32, slotCount: Int)
    /// Token `index`'s slot is in the reserved null block (block 0, slots `0..<blockSize`).
    case nullBlockSlot(index: Int, slot: Int32)
    /// The keys' or values' buffer (the source of a store, the destination of a load) holds
    /// `count` elements (bytes, for the `keyBytes:` form); the slots need `expected` (tokens ×
    /// kvHeadCount × headDim, times the element width).
    case bufferSize(KVKind, count: Int, expected: Int)
    /// A slot mapping built for another block size.
    case blockSizeMismatch(mapping: Int, layout: Int)

    public var description: String {
        switch self {
        case .invalidLayer(let l, let n): "layer \(l) outside 0..<\(n)"
        case .slotOutOfRange(let i, let s, let n): "token \(i): slot \(s) outside the arena's 0..<\(n)"
        case .nullBlockSlot(let i, let s): "token \(i): slot \(s) is in the reserved null block 0"
        case .bufferSize(let kind, let c, let e): "\(kind == .keys ? "keys" : "values"): a buffer of \(c), the slots need \(e)"
        case .blockSizeMismatch(let m, let l): "the slot mapping is for blocks of \(m) tokens, the arena's are \(l)"
        }
    }
}

extension KVPageArena {
    /// Writes the K and V of `slots.count` tokens of one layer into their slots, converting fp32
    /// to the layout's dtype (rounding to nearest even, bit for bit what ``KVDType/store(_:_:_:)``
    /// writes).
    ///
    /// `keys` and `values` are `[token][kvHead][headDim]` (the order a projection produces), token
    /// `i` going to flat slot `slots[i]` (`block * blockSize + offset`; see ``SlotMapping``).
    /// Throws ``KVSlotError`` — a layer out of range, a slot outside the arena or in the null
    /// block, a source of the wrong size — before writing anything. Two tokens with one slot:
    /// the later one's K/V stays.
    ///
    /// The arena does no locking: write only slots of blocks the calling sequence owns (the slot
    /// mapping taken after this step's `append`s; see docs/PREFIX_CACHING.md).
    public func store(keys: UnsafeBufferPointer<Float>, values: UnsafeBufferPointer<Float>, layer: Int,
                      slots: UnsafeBufferPointer<Int32>) throws(KVSlotError) {
        let rows = try checkSlotAccess(keyCount: keys.count, valueCount: values.count, elementWidth: 1, layer: layer, slots: slots)
        guard rows > 0 else { return }
        for kind in KVKind.allCases {
            let source = (kind == .keys ? keys : values).baseAddress!
            let arena = base + offset(layer: layer, kind: kind, block: 0)
            switch layout.dtype {
            case .float32:
                forEachRow(source, arena, slots) { src, dst, n in
                    dst.copyMemory(from: src, byteCount: n * 4)
                }
            case .float16:
                forEachRow(source, arena, slots) { src, dst, n in
                    // = Float16(x).bitPattern, without a library call per element
                    for i in 0..<n { dst.storeBytes(of: KVDType.float16Bits(src[i]), toByteOffset: 2 * i, as: UInt16.self) }
                }
            case .bfloat16:
                forEachRow(source, arena, slots) { src, dst, n in
                    for i in 0..<n { dst.storeBytes(of: KVDType.bfloat16Bits(src[i]), toByteOffset: 2 * i, as: UInt16.self) }
                }
            }
        }
    }

    /// Writes K and V already in the layout's dtype (`keyBytes` and `valueBytes`: elements of
    /// `layout.dtype`, `[token][kvHead][headDim]`; fp16 and bf16 as their 16-bit patterns):
    /// copies, no conversion. Otherwise as the fp32 `store(keys:values:layer:slots:)`; the sizes
    /// are checked in bytes.
    public func store(keyBytes: UnsafeRawBufferPointer, valueBytes: UnsafeRawBufferPointer, layer: Int,
                      slots: UnsafeBufferPointer<Int32>) throws(KVSlotError) {
        let width = layout.dtype.byteWidth
        let rows = try checkSlotAccess(keyCount: keyBytes.count, valueCount: valueBytes.count, elementWidth: width, layer: layer, slots: slots)
        guard rows > 0 else { return }
        for kind in KVKind.allCases {
            let source = (kind == .keys ? keyBytes : valueBytes).baseAddress!
            let arena = base + offset(layer: layer, kind: kind, block: 0)
            // One row (a token's head) is headDim contiguous elements in the source and in the block.
            forEachRow(source.assumingMemoryBound(to: UInt8.self), arena, slots, flatElementWidth: width) { src, dst, n in
                dst.copyMemory(from: src, byteCount: n * width)
            }
        }
    }

    /// The fp32 `store(keys:values:layer:slots:)` from arrays.
    public func store(keys: [Float], values: [Float], layer: Int, slots: [Int32]) throws(KVSlotError) {
        try keys.withUnsafeBufferPointer { (k) throws(KVSlotError) in
            try values.withUnsafeBufferPointer { (v) throws(KVSlotError) in
                try slots.withUnsafeBufferPointer { (s) throws(KVSlotError) in try store(keys: k, values: v, layer: layer, slots: s) }
            }
        }
    }

    /// The fp32 `store(keys:values:layer:slots:)` into a slot mapping's slots (its block size must
    /// be the layout's, else `.blockSizeMismatch`).
    public func store(keys: [Float], values: [Float], layer: Int, slots mapping: SlotMapping) throws(KVSlotError) {
        guard mapping.blockSize == layout.blockSize else { throw .blockSizeMismatch(mapping: mapping.blockSize, layout: layout.blockSize) }
        try store(keys: keys, values: values, layer: layer, slots: mapping.slots)
    }

    /// Reads the K and V of `slots.count` tokens of one layer into `keys` and `values` as fp32
    /// `[token][kvHead][headDim]`: the inverse of `store(keys:values:layer:slots:)` (each element
    /// widened exactly from the layout's dtype). For KV leaving the arena — another node (a prefill
    /// node handing a sequence to a decode node), another tier — and for checks. Throws
    /// ``KVSlotError`` (a layer out of range, a slot outside the arena or in the null block, a
    /// buffer of the wrong size) before reading anything.
    public func load(keys: UnsafeMutableBufferPointer<Float>, values: UnsafeMutableBufferPointer<Float>, layer: Int,
                     slots: UnsafeBufferPointer<Int32>) throws(KVSlotError) {
        let rows = try checkSlotAccess(keyCount: keys.count, valueCount: values.count, elementWidth: 1, layer: layer, slots: slots)
        guard rows > 0 else { return }
        let dtype = layout.dtype
        for kind in KVKind.allCases {
            let destination = (kind == .keys ? keys : values).baseAddress!
            let arena = base + offset(layer: layer, kind: kind, block: 0)
            forEachRow(destination, arena, slots) { dst, src, n in
                for i in 0..<n { dst[i] = dtype.load(src, i) }
            }
        }
    }

    /// `load(keys:values:layer:slots:)` into new arrays.
    public func load(layer: Int, slots: [Int32]) throws(KVSlotError) -> (keys: [Float], values: [Float]) {
        let count = slots.count * layout.kvHeadCount * layout.headDim
        var keys = [Float](repeating: 0, count: count), values = [Float](repeating: 0, count: count)
        try keys.withUnsafeMutableBufferPointer { (k) throws(KVSlotError) in
            try values.withUnsafeMutableBufferPointer { (v) throws(KVSlotError) in
                try slots.withUnsafeBufferPointer { (s) throws(KVSlotError) in try load(keys: k, values: v, layer: layer, slots: s) }
            }
        }
        return (keys, values)
    }

    /// `load(layer:slots:)` of a slot mapping's slots (its block size must be the layout's, else
    /// `.blockSizeMismatch`).
    public func load(layer: Int, slots mapping: SlotMapping) throws(KVSlotError) -> (keys: [Float], values: [Float]) {
        guard mapping.blockSize == layout.blockSize else { throw .blockSizeMismatch(mapping: mapping.blockSize, layout: layout.blockSize) }
        return try load(layer: layer, slots: mapping.slots)
    }

    /// Checks a write (or load) of `slots.count` tokens whose buffers hold `keyCount` and
    /// `valueCount` elements (`elementWidth` 1) or bytes (`elementWidth` the dtype's); returns the
    /// rows (tokens × kvHeadCount).
    private func checkSlotAccess(keyCount: Int, valueCount: Int, elementWidth: Int, layer: Int,
                                 slots: UnsafeBufferPointer<Int32>) throws(KVSlotError) -> Int {
        guard layer >= 0 && layer < layout.layerCount else { throw .invalidLayer(layer, layerCount: layout.layerCount) }
        let rowElements = layout.kvHeadCount * layout.headDim
        let (units, o1) = slots.count.multipliedReportingOverflow(by: rowElements)
        let (expected, o2) = units.multipliedReportingOverflow(by: elementWidth)
        let need = o1 || o2 ? Int.max : expected
        guard keyCount == need else { throw .bufferSize(.keys, count: keyCount, expected: need) }
        guard valueCount == need else { throw .bufferSize(.values, count: valueCount, expected: need) }
        let blockSize = layout.blockSize
        let slotCount = capacityBlocks * blockSize   // fits: capacity × blockStride does, and blockStride ≥ blockSize
        for (i, slot) in slots.enumerated() {
            guard slot >= 0, Int(slot) < slotCount else { throw .slotOutOfRange(index: i, slot: slot, slotCount: slotCount) }
            guard Int(slot) >= blockSize else { throw .nullBlockSlot(index: i, slot: slot) }
        }
        return slots.count * layout.kvHeadCount
    }

    /// For every token `t` and KV head `h`, calls `row` with row `(t, h)` of the token-major
    /// buffer `flat` (headDim elements from `flat + (t * kvHeadCount + h) * headDim`, times
    /// `flatElementWidth` for a byte buffer) and the same row's place in the layer's arena `arena`:
    /// the walk `store` writes along and `load` reads along. Inlined into each dtype's loop, so
    /// `row` is a direct, specialised body.
    @inline(__always)
    private func forEachRow<Flat: Strideable>(_ flat: Flat, _ arena: UnsafeMutableRawPointer, _ slots: UnsafeBufferPointer<Int32>,
                                              flatElementWidth: Int = 1,
                                              _ row: (Flat, UnsafeMutableRawPointer, Int) -> Void) where Flat.Stride == Int {
        let blockSize = layout.blockSize, headDim = layout.headDim, heads = layout.kvHeadCount
        let width = layout.dtype.byteWidth
        let rowBytes = headDim * width
        let flatRow = headDim * flatElementWidth
        let headStride = blockSize * rowBytes
        var src = flat
        for slot in slots {
            let slotIndex = Int(slot)
            let block = slotIndex / blockSize, offset = slotIndex - block * blockSize
            var dst = arena + block * blockStride + offset * rowBytes
            for _ in 0..<heads {
                row(src, dst, headDim)
                src = src.advanced(by: flatRow)
                dst += headStride
            }
        }
    }
}
