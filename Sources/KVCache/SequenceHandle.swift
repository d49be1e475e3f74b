import KVCore

/// Names one live sequence (a request, or one sample of a fork). Handles are never reused, so a
/// released handle stays recognisably released.
public struct SequenceHandle: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The manager's serial number for the sequence.
    public var rawValue: UInt64
    /// Wraps a serial number (handles not issued by the manager are `unknownSequence` errors).
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public var description: String { "seq\(rawValue)" }
}

/// What `admit` returns: the new sequence, its block table, and how much of the prompt's KV is
/// already present (in whole blocks), from memory or restored from the cold store.
public struct Admission: Sendable, Equatable {
    /// The new sequence.
    public var sequence: SequenceHandle
    /// Block ids in token order; the engine writes the KV of tokens `cachedTokenCount...` into them.
    public var blockTable: [Int32]
    /// Prompt tokens whose KV is present: `memoryHitTokens + storeHitTokens`.
    public var cachedTokenCount: Int
    /// Prompt tokens found in memory.
    public var memoryHitTokens: Int
    /// Prompt tokens restored from the cold store (after the memory match).
    public var storeHitTokens: Int
}

/// What a side-effect-free `lookup` reports, for cache-aware schedulers.
public struct PrefixLookup: Sendable, Equatable {
    /// Prompt tokens (whole blocks) found in memory.
    public var memoryTokens: Int
    /// Further tokens (whole blocks) the cold store holds (0 unless asked to probe it).
    public var storeTokens: Int
    /// Memory and store tokens together.
    public var totalTokens: Int { memoryTokens + storeTokens }
}

/// Errors for bad input and API misuse. Internal corruption is a precondition failure instead.
public enum KVCacheError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Not enough free or evictable blocks; nothing changed.
    case insufficientBlocks(needed: Int, available: Int)
    /// The handle was released earlier.
    case releasedSequence(SequenceHandle)
    /// The handle was never issued by this manager.
    case unknownSequence(SequenceHandle)
    /// `admit` got no tokens.
    case emptyPrompt
    /// A token id below zero, at its index in the input.
    case negativeToken(index: Int, value: TokenID)
    /// A cold store or caller built for another layout.
    case layoutMismatch(expected: KVLayout, got: KVLayout)
    /// `fork` asked for fewer than one child.
    case invalidForkCount(Int)
    /// A manager asked for fewer than one block.
    case invalidCapacity(Int)
    /// Page access on a metadata-only manager.
    case noPageArena
    /// A decode plan was asked for an empty batch or a sequence without tokens.
    case invalidBatch(String)

    public var description: String {
        switch self {
        case .insufficientBlocks(let n, let a): "insufficient blocks: need \(n), \(a) free or evictable"
        case .releasedSequence(let s): "sequence \(s) was already released"
        case .unknownSequence(let s): "sequence \(s) is unknown to this manager"
        case .emptyPrompt: "the prompt is empty"
        case .negativeToken(let i, let v): "token \(i) has negative id \(v)"
        case .layoutMismatch(let e, let g): "layout mismatch: the cache holds \(e), got \(g)"
        case .invalidForkCount(let n): "fork count must be positive, got \(n)"
        case .invalidCapacity(let n): "capacity must be at least 1 block, got \(n)"
        case .noPageArena: "this manager is metadata-only: it has no page arena"
        case .invalidBatch(let why): "invalid decode batch: \(why)"
        }
    }
}
