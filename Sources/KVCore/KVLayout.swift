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
    // Read-only, and decoding goes through the validating init: every `KVLayout` in existence has
    // positive counts and sizes that fit in an `Int`, so the cache and kernels can divide by and
    // multiply them without checking again (a zero `blockSize` once reached the manager and
    // trapped on its first admit).

    /// Transformer layers; each has its own K and V arena.
    public let layerCount: Int
    /// KV heads per layer (query heads may be a multiple of it: GQA, MQA).
    public let kvHeadCount: Int
    /// Elements per head vector.
    public let headDim: Int
    /// Tokens per block (default 16).
    public let blockSize: Int
    /// The element type of K and V.
    public let dtype: KVDType

    /// A layout; every count must be positive and a block's bytes across all layers must fit in
    /// an `Int` (`KVLayoutError.invalid` names what is wrong).
    public init(layerCount: Int, kvHeadCount: Int, headDim: Int, blockSize: Int = 16, dtype: KVDType = .float16) throws(KVLayoutError) {
        guard layerCount > 0 else { throw .invalid("layerCount must be positive, got \(layerCount)") }
        guard kvHeadCount > 0 else { throw .invalid("kvHeadCount must be positive, got \(kvHeadCount)") }
        guard headDim > 0 else { throw .invalid("headDim must be positive, got \(headDim)") }
        guard blockSize > 0 else { throw .invalid("blockSize must be positive, got \(blockSize)") }
        var bytes = 2 * dtype.byteWidth
        for n in [layerCount, kvHeadCount, headDim, blockSize] {
            let (product, overflow) = bytes.multipliedReportingOverflow(by: n)
            guard !overflow else { throw .invalid("a block's bytes overflow Int (layers=\(layerCount) kvHeads=\(kvHeadCount) headDim=\(headDim) blockSize=\(blockSize))") }
            bytes = product
        }
        self.layerCount = layerCount
        self.kvHeadCount = kvHeadCount
        self.headDim = headDim
        self.blockSize = blockSize
        self.dtype = dtype
    }

    /// Decodes through the validating init: a stored or received layout with a zero, negative or
    /// overflowing dimension is a `DecodingError.dataCorrupted` whose underlying error is the
    /// `KVLayoutError`.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        do {
            try self.init(layerCount: c.decode(Int.self, forKey: .layerCount), kvHeadCount: c.decode(Int.self, forKey: .kvHeadCount),
                          headDim: c.decode(Int.self, forKey: .headDim), blockSize: c.decode(Int.self, forKey: .blockSize),
                          dtype: c.decode(KVDType.self, forKey: .dtype))
        } catch let error as KVLayoutError {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: error.description, underlyingError: error))
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
    }
}

/// Why a `KVLayout` was rejected (a zero or negative dimension, a size that overflows).
public enum KVLayoutError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalid(String)
    public var description: String {
        switch self { case .invalid(let why): "invalid KV layout: \(why)" }
    }
}
