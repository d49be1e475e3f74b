import KVCore

/// `kvctl bench write`: what writing new tokens' K/V into their slots costs
/// (`KVPageArena.store`), per dtype, from fp32 and from the dtype's own encoding, beside the
/// per-element `KVDType.store` loop it replaces.
///
/// - decode step: `decodeTokens` tokens, each in a block of its own (one per sequence), every
///   layer of a `layers`-layer arena: one store per layer.
/// - prefill: `prefillTokens` consecutive slots (whole blocks) of one layer: one store.
public struct WriteBench: Sendable {
    public var kvHeads = 8
    public var headDim = 128
    public var blockSize = 16
    public var layers = 32
    public var decodeTokens = 64
    public var prefillTokens = 2048
    public var dtypes: [KVDType] = KVDType.allCases
    public var repeats = 21

    public init() {}

    /// One dtype's figures: medians over `repeats` calls, in milliseconds.
    public struct Point: Sendable, Codable, Equatable {
        public var dtype: String
        public var kvHeads: Int, headDim: Int, blockSize: Int, layers: Int
        public var decodeTokens: Int, prefillTokens: Int
        /// A decode step, every layer, from fp32 / from the dtype's encoding.
        public var decodeStepMs: Double, decodeStepEncodedMs: Double
        /// A prefill of one layer, from fp32 / from the dtype's encoding / by the element loop.
        public var prefillMs: Double, prefillEncodedMs: Double, prefillElementLoopMs: Double
        /// Nanoseconds per element written (K and V) by the fp32 store, decode and prefill.
        public var decodeNsPerElement: Double, prefillNsPerElement: Double
        /// Bytes written per second by the fp32 prefill store, GB/s.
        public var prefillGBps: Double
    }

    public func validate() throws(OptionError) {
        try OptionChecks.inRange(kvHeads, 1...1024, "--kv-heads")
        try OptionChecks.inRange(headDim, 1...4096, "--head-dim")
        try OptionChecks.inRange(blockSize, 1...4096, "--block-size")
        try OptionChecks.inRange(layers, 1...1024, "--layers")
        try OptionChecks.inRange(decodeTokens, 1...65536, "--decode-tokens")
        try OptionChecks.inRange(prefillTokens, 1...1_048_576, "--prefill-tokens")
        try OptionChecks.inRange(repeats, 1...10_000, "--repeat")
        guard !dtypes.isEmpty else { throw OptionError("--dtype", "names no dtype") }
        for dtype in dtypes {
            let layout = try OptionChecks.layout({ () throws(KVLayoutError) in
                try KVLayout(layerCount: layers, kvHeadCount: kvHeads, headDim: headDim, blockSize: blockSize, dtype: dtype)
            }, "--layers/--kv-heads/--head-dim/--block-size")
            // The decode arena (all layers) and the prefill one (one layer) exist at once.
            let decodeBytes = try OptionChecks.fitsInMemory(blocks: decodeTokens + 1, bytesPerBlock: layout.blockBytes, "--decode-tokens")
            let prefillBlocks = (prefillTokens + blockSize - 1) / blockSize + 1
            let prefillBytes = try OptionChecks.fitsInMemory(blocks: prefillBlocks, bytesPerBlock: 2 * layout.blockBytesPerLayerPerKind, "--prefill-tokens")
            guard decodeBytes <= OptionChecks.physicalMemoryBytes - prefillBytes else {
                throw OptionError("--decode-tokens", "and --prefill-tokens together need more than this machine's memory")
            }
        }
    }

    public func run() throws -> [Point] {
        try validate()
        return try dtypes.map { dtype throws in try measure(dtype) }
    }

    private func measure(_ dtype: KVDType) throws -> Point {
        let decodeLayout = try KVLayout(layerCount: layers, kvHeadCount: kvHeads, headDim: headDim, blockSize: blockSize, dtype: dtype)
        let prefillLayout = try KVLayout(layerCount: 1, kvHeadCount: kvHeads, headDim: headDim, blockSize: blockSize, dtype: dtype)
        let row = kvHeads * headDim
        var rng = SeededRandom(seed: 42)

        // Decode: token i in block i + 1, at slot i % blockSize (sequences at various lengths).
        let decodeArena = KVPageArena(layout: decodeLayout, capacityBlocks: decodeTokens + 1)
        let decodeSlots = (0..<decodeTokens).map { Int32(($0 + 1) * blockSize + $0 % blockSize) }
        let decodeKeys = (0..<(decodeTokens * row)).map { _ in Float.random(in: -2...2, using: &rng) }
        let decodeValues = (0..<(decodeTokens * row)).map { _ in Float.random(in: -2...2, using: &rng) }
        let decodeKeyBytes = encode(decodeKeys, dtype), decodeValueBytes = encode(decodeValues, dtype)

        // Prefill: consecutive slots from block 1 on.
        let prefillArena = KVPageArena(layout: prefillLayout, capacityBlocks: (prefillTokens + blockSize - 1) / blockSize + 1)
        let prefillSlots = (0..<prefillTokens).map { Int32(blockSize + $0) }
        let prefillKeys = (0..<(prefillTokens * row)).map { _ in Float.random(in: -2...2, using: &rng) }
        let prefillValues = (0..<(prefillTokens * row)).map { _ in Float.random(in: -2...2, using: &rng) }
        let prefillKeyBytes = encode(prefillKeys, dtype), prefillValueBytes = encode(prefillValues, dtype)

        var decode: [Double] = [], decodeEncoded: [Double] = [], prefill: [Double] = [], prefillEncoded: [Double] = [], loop: [Double] = []
        // Warm-up, then the variants alternate so a noisy minute hits them alike.
        for r in -1..<repeats {
            let t0 = monotonicNanos()
            for layer in 0..<layers { try decodeArena.store(keys: decodeKeys, values: decodeValues, layer: layer, slots: decodeSlots) }
            let t1 = monotonicNanos()
            for layer in 0..<layers { try storeEncoded(decodeArena, decodeKeyBytes, decodeValueBytes, layer, decodeSlots) }
            let t2 = monotonicNanos()
            try prefillArena.store(keys: prefillKeys, values: prefillValues, layer: 0, slots: prefillSlots)
            let t3 = monotonicNanos()
            try storeEncoded(prefillArena, prefillKeyBytes, prefillValueBytes, 0, prefillSlots)
            let t4 = monotonicNanos()
            Self.elementLoop(prefillArena, prefillKeys, prefillValues, prefillSlots)
            let t5 = monotonicNanos()
            guard r >= 0 else { continue }
            decode.append(Double(t1 - t0) / 1e6)
            decodeEncoded.append(Double(t2 - t1) / 1e6)
            prefill.append(Double(t3 - t2) / 1e6)
            prefillEncoded.append(Double(t4 - t3) / 1e6)
            loop.append(Double(t5 - t4) / 1e6)
        }
        let decodeElements = Double(2 * decodeTokens * row * layers), prefillElements = Double(2 * prefillTokens * row)
        let d = TimingSummary(decode).median, p = TimingSummary(prefill).median
        return Point(dtype: dtype.rawValue, kvHeads: kvHeads, headDim: headDim, blockSize: blockSize, layers: layers,
                     decodeTokens: decodeTokens, prefillTokens: prefillTokens,
                     decodeStepMs: d, decodeStepEncodedMs: TimingSummary(decodeEncoded).median,
                     prefillMs: p, prefillEncodedMs: TimingSummary(prefillEncoded).median,
                     prefillElementLoopMs: TimingSummary(loop).median,
                     decodeNsPerElement: d * 1e6 / decodeElements, prefillNsPerElement: p * 1e6 / prefillElements,
                     prefillGBps: prefillElements * Double(dtype.byteWidth) / (p * 1e6))
    }

    private func encode(_ values: [Float], _ dtype: KVDType) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: values.count * dtype.byteWidth)
        bytes.withUnsafeMutableBytes { for i in values.indices { dtype.store(values[i], $0.baseAddress!, i) } }
        return bytes
    }

    private func storeEncoded(_ arena: KVPageArena, _ keys: [UInt8], _ values: [UInt8], _ layer: Int, _ slots: [Int32]) throws {
        try keys.withUnsafeBytes { k in
            try values.withUnsafeBytes { v in
                try slots.withUnsafeBufferPointer { s in try arena.store(keyBytes: k, valueBytes: v, layer: layer, slots: s) }
            }
        }
    }

    /// The hand-written path the store replaces: per token the block's bytes, per element
    /// `KVDType.store` (a switch on the dtype per element).
    static func elementLoop(_ arena: KVPageArena, _ keys: [Float], _ values: [Float], _ slots: [Int32]) {
        let l = arena.layout
        for (t, slot) in slots.enumerated() {
            for (kind, source) in [(KVKind.keys, keys), (.values, values)] {
                arena.withUnsafeMutableBlockBytes(BlockID(slot / Int32(l.blockSize)), layer: 0, kind: kind) { bytes in
                    for h in 0..<l.kvHeadCount {
                        let first = (h * l.blockSize + Int(slot) % l.blockSize) * l.headDim
                        for i in 0..<l.headDim { l.dtype.store(source[(t * l.kvHeadCount + h) * l.headDim + i], bytes.baseAddress!, first + i) }
                    }
                }
            }
        }
    }

    public static func table(_ points: [Point]) -> String {
        renderTable(
            header: ["dtype", "decode step ms", "ns/elem", "encoded ms", "prefill ms", "ns/elem", "GB/s", "encoded ms", "element loop ms"],
            rows: points.map { p in
                [p.dtype, fixed(p.decodeStepMs, 3), fixed(p.decodeNsPerElement, 2), fixed(p.decodeStepEncodedMs, 3),
                 fixed(p.prefillMs, 3), fixed(p.prefillNsPerElement, 2), fixed(p.prefillGBps, 1), fixed(p.prefillEncodedMs, 3),
                 fixed(p.prefillElementLoopMs, 3)]
            })
    }
}
