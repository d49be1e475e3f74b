import KVCore
import Synchronization

/// Names one live sequence (a request, or one sample of a fork). Handles are never reused, so a
/// released handle stays recognisably released.
///
/// A handle carries the id of the manager that issued it: serials start at 1 in every manager,
/// so without it a handle from another manager would name (and could release) an unrelated
/// sequence here. A foreign handle is an `unknownSequence` error instead. Two words: cheap to
/// hash, copy and send.
public struct SequenceHandle: Hashable, Sendable, CustomStringConvertible {
    /// The process-unique id of the manager that issued the handle.
    public let manager: UInt64
    /// The manager's serial number for the sequence (from 1, in issue order).
    public let serial: UInt64
    /// Only a manager issues handles (tests forge unknown ones through `@testable`).
    init(manager: UInt64, serial: UInt64) {
        self.manager = manager
        self.serial = serial
    }
    public var description: String { "seq\(serial)@cache\(manager)" }

    /// The next manager id: a process-wide counter, so no two managers (or `CacheState`s) of one
    /// process ever share an id.
    private static let nextManager = Atomic<UInt64>(1)

    /// Draws a fresh manager id.
    static func newManagerID() -> UInt64 {
        nextManager.wrappingAdd(1, ordering: .relaxed).oldValue
    }
}

/// A live sequence whose hits included blocks another sequence brought in and was released from
/// without writing (`release(_:computedTokens:)`): its KV is valid for its first `validTokens`
/// tokens only. Its engine must compute the tokens from `validTokens` on (into the same blocks,
/// which are now its own: a later `release(_:computedTokens:)` of it may drop them), or release it
/// with `computedTokens` ≤ `validTokens`.
///
/// The cancelled sequence's own fork children are not reported: they brought the same blocks in
/// with it (they count its hits as theirs and the rest as new), so they own them already, and
/// their engine — the same request's — cancels them or writes them.
public struct InvalidatedHit: Sendable, Equatable {
    public var sequence: SequenceHandle
    public var validTokens: Int

    public init(sequence: SequenceHandle, validTokens: Int) {
        self.sequence = sequence
        self.validTokens = validTokens
    }
}

/// What `admit` returns: the new sequence, its block table, and how much of the prompt's KV is
/// already present (in whole blocks), from memory or restored from the cold store.
public struct Admission: Sendable, Equatable {
    /// The new sequence.
    public var sequence: SequenceHandle
    /// Block ids in token order; the engine writes the KV of tokens `cachedTokenCount...` into them.
    public var blockTable: [Int32]
    /// Prompt tokens whose KV is present: `memoryHitTokens + storeHitTokens` — less only when a
    /// cancelled writer handed a memory hit over while this admission read the cold store (its
    /// `InvalidatedHit` names this sequence; it counts only up to the handed-over block). Under
    /// `BlockPublication.atAdmission` a memory hit may name blocks another request brought in at
    /// its admission and is still to prefill; under `.whenComputed` every hit is written KV.
    public var cachedTokenCount: Int
    /// Prompt tokens found in memory.
    public var memoryHitTokens: Int
    /// Prompt tokens restored from the cold store (after the memory match).
    public var storeHitTokens: Int
}

/// A copy-on-write `append` made: the sequence appended into a partial last block it shared with
/// fork siblings (or their parent), so it took a private copy, `destination`, in its table.
/// A manager with a page arena has already copied every layer's K and V; an engine that keeps the
/// KV itself (a metadata-only manager) copies the first `tokenCount` token slots of every layer's
/// K and V from `source` to `destination` before writing the appended tokens, and before any
/// other sequence's KV is written (its other holders may release `source`, and a new sequence may
/// then be given it): in the engine's next step, ahead of its forward pass.
public struct BlockCopy: Sendable, Equatable {
    public var source: BlockID
    public var destination: BlockID
    /// The slots filled before the append: what the copy must carry.
    public var tokenCount: Int

    public init(source: BlockID, destination: BlockID, tokenCount: Int) {
        self.source = source
        self.destination = destination
        self.tokenCount = tokenCount
    }
}

/// What `append` returns.
public struct AppendResult: Sendable, Equatable {
    /// The copy-on-write this append made, if any: at most one, since only a sequence's last
    /// block can be both partial and shared.
    public var copy: BlockCopy?

    public init(copy: BlockCopy?) { self.copy = copy }
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
    /// The handle was never issued by this manager (a forged handle, or one from another manager).
    case unknownSequence(SequenceHandle)
    /// `admit` got no tokens.
    case emptyPrompt
    /// A token id below zero, at its index in the input.
    case negativeToken(index: Int, value: TokenID)
    /// A cold store or caller built for another layout.
    case layoutMismatch(expected: KVLayout, got: KVLayout)
    /// `fork` asked for fewer than one child, or for more than 2^20 at once.
    case invalidForkCount(Int)
    /// A manager asked for fewer than one block, or for more than its tables or arena can size.
    case invalidCapacity(Int)
    /// The system would not allocate the page arena (`allocatesPages`) of this many bytes.
    case pagesUnavailable(bytes: Int)
    /// Page access on a metadata-only manager.
    case noPageArena
    /// A cold store given to a metadata-only manager: the store keeps and restores blocks' KV
    /// through the manager's page arena, so without one its hits would report tokens as cached
    /// whose KV the engine never received.
    case coldStoreNeedsPages
    /// `blockTables(for:)` or `decodePlan(for:)` was asked for an empty batch.
    case invalidBatch(String)
    /// The sequences' tables cannot form the plan asked for (`blockTables`, `decodePlan`,
    /// `prefillPlan`, `stepPlan`): the plan's own typed error, e.g. `.planTooLarge` for a step to
    /// split, `.invalidChunk` for a prefill chunk outside the sequence.
    case invalidPlan(DecodePlanError)
    /// `slotMapping(for:)` cannot map the spans, e.g. `.tooManyTokens` for a step past `Int32.max`.
    case invalidSlotMapping(SlotMappingError)
    /// Page access asked for a layer outside `0..<layerCount`.
    case invalidLayer(Int, layerCount: Int)
    /// `release(_:computedTokens:)` was told more tokens than the sequence holds, or fewer than 0.
    case invalidComputedTokens(Int, tokenCount: Int)
    /// `blocksNeeded(toAppend:to:)` was asked about a negative number of tokens.
    case invalidAppendCount(Int)
    /// `truncate(_:toTokenCount:)` was asked to keep fewer than 1 token or more than the sequence holds.
    case invalidTruncation(Int, tokenCount: Int)
    /// `slotMapping(for:)` asked for positions outside the sequence's `0..<tokenCount`.
    case positionsOutOfRange(SequenceHandle, positions: SlotSpan.Positions, tokenCount: Int)
    /// `slotMapping(for:)` asked for positions below the sequence's `firstOwnPosition(of:)`: their
    /// KV is a prefix hit, cached for other requests, and a write there would change theirs.
    case positionsNotOwned(SequenceHandle, positions: SlotSpan.Positions, firstOwnPosition: Int)
    /// `slotMapping(for:)` on a pool whose flat slots (`block × blockSize + offset`) do not all fit
    /// in an `Int32`: `(capacityBlocks + 1) × blockSize` is above 2^31.
    case slotsExceedInt32(capacityBlocks: Int, blockSize: Int)

    public var description: String {
        switch self {
        case .insufficientBlocks(let n, let a): "insufficient blocks: need \(n), \(a) free or evictable"
        case .releasedSequence(let s): "sequence \(s) was already released"
        case .unknownSequence(let s): "sequence \(s) is unknown to this manager"
        case .emptyPrompt: "the prompt is empty"
        case .negativeToken(let i, let v): "token \(i) has negative id \(v)"
        case .layoutMismatch(let e, let g): "layout mismatch: the cache holds \(e), got \(g)"
        case .invalidForkCount(let n): "fork count must be in 1...\(CacheState.maxForkCount), got \(n)"
        case .invalidCapacity(let n): "capacity must be at least 1 block and small enough to size in memory, got \(n)"
        case .pagesUnavailable(let bytes): "cannot allocate the page arena: \(bytes) bytes"
        case .noPageArena: "this manager is metadata-only: it has no page arena"
        case .coldStoreNeedsPages: "a cold store needs a manager with a page arena (allocatesPages: true): it keeps and restores KV through it"
        case .invalidBatch(let why): "invalid decode batch: \(why)"
        case .invalidPlan(let e): "invalid attention plan: \(e)"
        case .invalidSlotMapping(let e): "invalid slot mapping: \(e)"
        case .invalidLayer(let l, let n): "layer \(l) outside 0..<\(n)"
        case .invalidComputedTokens(let c, let n): "computed tokens must be in 0...\(n) (the sequence's tokens), got \(c)"
        case .invalidAppendCount(let n): "an append takes 0 or more tokens, got \(n)"
        case .invalidTruncation(let c, let n): "a truncated sequence keeps 1...\(n) tokens (it holds \(n)), got \(c)"
        case .positionsOutOfRange(let s, let p, let n): "positions \(p) of sequence \(s) outside its 0..<\(n) tokens"
        case .positionsNotOwned(let s, let p, let f): "positions \(p) of sequence \(s) are a prefix hit (other requests' KV): it writes from position \(f) on"
        case .slotsExceedInt32(let c, let b): "the flat slots of \(c + 1) blocks of \(b) tokens do not fit in Int32"
        }
    }
}
