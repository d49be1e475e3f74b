import KVCore

/// Bad input to a decode-attention call. Internal corruption traps instead (preconditions).
public enum AttentionError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Query heads must be a positive multiple of KV heads (GQA/MQA groups).
    case headsNotDivisible(queryHeads: Int, kvHeads: Int)
    /// A buffer does not hold batch × queryHeads × headDim floats.
    case shapeMismatch(what: String, expected: Int, got: Int)
    /// The pages, the block tables or the kernel disagree on the KV layout.
    case layoutMismatch(String)
    /// A block table names a block the arena does not have.
    case blockOutOfRange(block: Int32, capacity: Int)
    /// A kernel was asked for fewer than one thread.
    case invalidThreadCount(Int)
    /// The softmax scale is not a positive finite number.
    case invalidScale(Float)
    /// A query element is NaN or infinite (that row's output would be NaN).
    case nonFiniteQuery(index: Int)
    /// More query rows (sequences × query heads) than one call takes (``DecodeAttention/maxQueryRows``).
    case tooManyQueryRows(sequences: Int, queryHeads: Int, limit: Int)
    /// A call on an instance that is inside another call (shared between threads against its
    /// contract: one instance serves one call at a time). Nothing was read or written.
    case concurrentCall

    public var description: String {
        switch self {
        case .headsNotDivisible(let q, let kv): "\(q) query heads are not a positive multiple of \(kv) KV heads"
        case .shapeMismatch(let what, let e, let g): "\(what) holds \(g) floats, expected \(e)"
        case .layoutMismatch(let why): "layout mismatch: \(why)"
        case .blockOutOfRange(let b, let c): "block \(b) outside the arena (capacity \(c) blocks)"
        case .invalidThreadCount(let n): "thread count must be positive, got \(n)"
        case .invalidScale(let s): "softmax scale must be positive and finite, got \(s)"
        case .nonFiniteQuery(let i): "query element \(i) is NaN or infinite: queries must be finite"
        case .tooManyQueryRows(let b, let h, let limit): "\(b) sequences × \(h) query heads exceed the \(limit) query rows one call takes"
        case .concurrentCall: "this DecodeAttention is inside another call: an instance serves one call at a time (keep one per thread)"
        }
    }
}
