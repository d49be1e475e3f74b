/// The element type KV is stored in. Kernels always accumulate in fp32.
public enum KVDType: String, Sendable, Hashable, CaseIterable, Codable, CustomStringConvertible {
    case float32 = "fp32"
    case float16 = "fp16"
    case bfloat16 = "bf16"

    /// Bytes per stored element.
    @inlinable public var byteWidth: Int {
        switch self {
        case .float32: 4
        case .float16, .bfloat16: 2
        }
    }

    /// A stable small code for fingerprints and C kernels (0 fp32, 1 fp16, 2 bf16).
    @inlinable public var code: Int32 {
        switch self {
        case .float32: 0
        case .float16: 1
        case .bfloat16: 2
        }
    }

    public var description: String { rawValue }
}

/// How the values of one (block, KV head) page are ordered.
public enum KVValueOrder: String, Sendable, Hashable, CaseIterable, Codable, CustomStringConvertible {
    /// Token rows, like the keys: value (t, i) is element `t * headDim + i` of the page.
    case tokenRows = "rows"
    /// Token pairs: pair row `t / 2` holds, for every dim i, `V[t & ~1][i]` then `V[t | 1][i]`, so
    /// value (t, i) is element `(t & ~1) * headDim + 2 * i + (t & 1)`. bf16 dot-product
    /// instructions (`vdpbf16ps`) pair the reduction index, and P·V reduces over tokens: in this
    /// order the bifurcated kernel reads values in place instead of interleaving them per call
    /// (−5 to −6 % on its GEMM-shaped items). bf16 only, even block sizes, head dims a multiple of 32.
    case tokenPairs = "pairs"

    public var description: String { rawValue }
}

/// The shape of the KV a cache holds: what a block of pages contains.
///
/// Within one layer's K (or V) arena, a block is `kvHeadCount × blockSize × headDim` elements,
/// head-major ("HND"): for one KV head, a block's keys are a contiguous `blockSize × headDim`
/// row-major matrix, which is what a GEMM-shaped kernel wants to stream.
///
/// ```
/// arena(layer l, K) = [block 0][block 1]…[block capacity-1]
/// block             = [head 0: blockSize × headDim][head 1: …]…
/// ```
public struct KVLayout: Hashable, Sendable, Codable, CustomStringConvertible {
    /// Transformer layers; each has its own K and V arena.
    public var layerCount: Int
    /// KV heads per layer (query heads may be a multiple of it: GQA, MQA).
    public var kvHeadCount: Int
    /// Elements per head vector.
    public var headDim: Int
    /// Tokens per block (default 16).
    public var blockSize: Int
    /// The element type of K and V.
    public var dtype: KVDType
    /// The order of the values within a page (keys are always token rows).
    public var valueOrder: KVValueOrder

    /// A layout; every count must be positive (`KVLayoutError.invalid` names the one that is not).
    public init(layerCount: Int, kvHeadCount: Int, headDim: Int, blockSize: Int = 16, dtype: KVDType = .float16,
                valueOrder: KVValueOrder = .tokenRows) throws(KVLayoutError) {
        guard layerCount > 0 else { throw .invalid("layerCount must be positive, got \(layerCount)") }
        guard kvHeadCount > 0 else { throw .invalid("kvHeadCount must be positive, got \(kvHeadCount)") }
        guard headDim > 0 else { throw .invalid("headDim must be positive, got \(headDim)") }
        guard blockSize > 0 else { throw .invalid("blockSize must be positive, got \(blockSize)") }
        if valueOrder == .tokenPairs {
            guard dtype == .bfloat16 else { throw .invalid("token-pair values need bf16 KV, got \(dtype)") }
            guard blockSize % 2 == 0 else { throw .invalid("token-pair values need an even block size, got \(blockSize)") }
            guard headDim % 32 == 0 else { throw .invalid("token-pair values need a head dim that is a multiple of 32, got \(headDim)") }
        }
        self.layerCount = layerCount
        self.kvHeadCount = kvHeadCount
        self.headDim = headDim
        self.blockSize = blockSize
        self.dtype = dtype
        self.valueOrder = valueOrder
    }

    private enum CodingKeys: String, CodingKey { case layerCount, kvHeadCount, headDim, blockSize, dtype, valueOrder }

    /// Decodes a layout; one written before value orders existed has token rows.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        do {
            try self.init(layerCount: c.decode(Int.self, forKey: .layerCount), kvHeadCount: c.decode(Int.self, forKey: .kvHeadCount),
                          headDim: c.decode(Int.self, forKey: .headDim), blockSize: c.decode(Int.self, forKey: .blockSize),
                          dtype: c.decode(KVDType.self, forKey: .dtype),
                          valueOrder: c.decodeIfPresent(KVValueOrder.self, forKey: .valueOrder) ?? .tokenRows)
        } catch let error as KVLayoutError {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: error.description))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(layerCount, forKey: .layerCount)
        try c.encode(kvHeadCount, forKey: .kvHeadCount)
        try c.encode(headDim, forKey: .headDim)
        try c.encode(blockSize, forKey: .blockSize)
        try c.encode(dtype, forKey: .dtype)
        try c.encode(valueOrder, forKey: .valueOrder)
    }

    /// Element index, within one block of one layer's K arena, of key (head, token, dim).
    @inlinable public func keyElementIndex(head: Int, token: Int, dim: Int) -> Int {
        (head * blockSize + token) * headDim + dim
    }

    /// Element index, within one block of one layer's V arena, of value (head, token, dim): where
    /// an engine writes a token's values (see ``KVValueOrder``).
    @inlinable public func valueElementIndex(head: Int, token: Int, dim: Int) -> Int {
        switch valueOrder {
        case .tokenRows: return (head * blockSize + token) * headDim + dim
        case .tokenPairs: return (head * blockSize + (token & ~1)) * headDim + 2 * dim + (token & 1)
        }
    }

    /// A tiny layout for metadata-only use and tests: 1 layer, 1 head, head dim 8.
    public static func small(blockSize: Int = 16, dtype: KVDType = .float16) -> KVLayout {
        try! KVLayout(layerCount: 1, kvHeadCount: 1, headDim: 8, blockSize: blockSize, dtype: dtype)
    }

    /// Elements of one block for one head (`blockSize × headDim`).
    @inlinable public var headBlockElements: Int { blockSize * headDim }
    /// Bytes of one block in one layer's K (or V) arena.
    @inlinable public var blockBytesPerLayerPerKind: Int { kvHeadCount * blockSize * headDim * dtype.byteWidth }
    /// Bytes of one block across all layers, K and V: what a spill record's payload holds.
    @inlinable public var blockBytes: Int { 2 * layerCount * blockBytesPerLayerPerKind }
    /// Bytes of KV per token across all layers, K and V.
    @inlinable public var bytesPerToken: Int { 2 * layerCount * kvHeadCount * headDim * dtype.byteWidth }

    public var description: String {
        "layers=\(layerCount) kvHeads=\(kvHeadCount) headDim=\(headDim) blockSize=\(blockSize) dtype=\(dtype)"
            + (valueOrder == .tokenRows ? "" : " values=\(valueOrder)")
    }
}

/// Why a `KVLayout` was rejected (a zero or negative dimension, a size that overflows).
public enum KVLayoutError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalid(String)
    public var description: String {
        switch self { case .invalid(let why): "invalid KV layout: \(why)" }
    }
}
