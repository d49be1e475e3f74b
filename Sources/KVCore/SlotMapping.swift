/// Where one token's K/V lives in the page arenas: a block and a slot within it (the token's
/// position modulo the block size). The same in every layer.
public struct KVSlot: Hashable, Sendable, CustomStringConvertible {
    public var block: BlockID
    /// The token's slot in the block, `0..<blockSize`.
    public var offset: Int

    public init(block: BlockID, offset: Int) {
        self.block = block
        self.offset = offset
    }

    /// The slot a flat slot number names: `block = flat / blockSize`, `offset = flat % blockSize`.
    @inlinable public init(flat: Int32, blockSize: Int) {
        self.block = BlockID(rawValue: Int32(Int(flat) / blockSize))
        self.offset = Int(flat) % blockSize
    }

    /// The flat slot number, `block * blockSize + offset`.
    @inlinable public func flat(blockSize: Int) -> Int { block.index * blockSize + offset }

    public var description: String { "\(block)+\(offset)" }
}

/// The slots a step writes K/V into, one per token, in the order of the spans asked for (and
/// positions in order within each): what vLLM calls the slot mapping.
///
/// Token `i` goes to flat slot `slots[i] = block * blockSize + offset`, where `block` is the
/// sequence's `table[position / blockSize]` and `offset = position % blockSize`; span `k`'s tokens
/// are `slots[indptr[k] ..< indptr[k+1]]`, at sequence positions `positions[indptr[k] ..<
/// indptr[k+1]]` (consecutive). `KVPageArena.store(keys:values:layer:slots:)` takes it, or its
/// `slots` as kernels take flat slots.
public struct SlotMapping: Sendable, Equatable {
    /// Tokens per block.
    public let blockSize: Int
    /// The flat slot of every token, `block * blockSize + offset`.
    public let slots: [Int32]
    /// Each token's position in its sequence (what rotary embeddings take).
    public let positions: [Int32]
    /// Offsets into `slots` and `positions`, one per span plus one.
    public let indptr: [Int32]

    /// Maps `positions[k]` of the sequence whose block table is `tables[k]`, for every `k`.
    /// Every position must lie in the table (`upperBound <= table.count * blockSize`), block ids
    /// must not be negative, and every slot must fit an `Int32`. (The manager's
    /// `slotMapping(for:)` checks positions against the sequence's token count first.)
    public init(blockSize: Int, tables: [[Int32]], positions: [Range<Int>]) throws(SlotMappingError) {
        guard blockSize > 0, blockSize <= Int(Int32.max) else { throw .invalidBlockSize(blockSize) }
        guard tables.count == positions.count else {
            throw .mismatchedCounts(tables: tables.count, positions: positions.count)
        }
        var total = 0
        for (k, range) in positions.enumerated() {
            guard range.lowerBound >= 0, range.upperBound <= tables[k].count * blockSize else {
                throw .positionsOutsideTable(span: k, positions: range, tableTokens: tables[k].count * blockSize)
            }
            total += range.count
        }
        guard total <= Int(Int32.max) else { throw .tooManyTokens(total) }
        var slots = [Int32](), flatPositions = [Int32](), indptr: [Int32] = [0]
        slots.reserveCapacity(total)
        flatPositions.reserveCapacity(total)
        indptr.reserveCapacity(tables.count + 1)
        for (k, range) in positions.enumerated() {
            let table = tables[k]
            guard range.upperBound <= Int(Int32.max) + 1 else { throw .positionOverflow(span: k, position: range.upperBound - 1) }
            for p in range {
                let block = table[p / blockSize]
                guard block >= 0 else { throw .negativeBlockID(span: k, block: block) }
                let (scaled, overflow) = Int(block).multipliedReportingOverflow(by: blockSize)
                let flat = scaled + p % blockSize
                guard !overflow, flat <= Int(Int32.max) else { throw .slotOverflow(span: k, block: block) }
                slots.append(Int32(flat))
                flatPositions.append(Int32(p))
            }
            indptr.append(Int32(slots.count))
        }
        self.blockSize = blockSize
        self.slots = slots
        self.positions = flatPositions
        self.indptr = indptr
    }

    /// Tokens mapped.
    @inlinable public var count: Int { slots.count }
    /// Spans mapped (sequences, in the order asked).
    @inlinable public var spanCount: Int { indptr.count - 1 }
    /// Where token `i` goes, as a block and an offset.
    @inlinable public subscript(i: Int) -> KVSlot { KVSlot(flat: slots[i], blockSize: blockSize) }
    /// The flat slots of span `k`.
    @inlinable public func slots(ofSpan k: Int) -> ArraySlice<Int32> { slots[Int(indptr[k])..<Int(indptr[k + 1])] }
    /// The typed slots, one per token.
    public var kvSlots: [KVSlot] { slots.map { KVSlot(flat: $0, blockSize: blockSize) } }
}

/// Why a slot mapping could not be built from the given tables and positions.
public enum SlotMappingError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalidBlockSize(Int)
    case mismatchedCounts(tables: Int, positions: Int)
    /// Span `span` asks for positions its table does not hold (`tableTokens` = blocks × block size).
    case positionsOutsideTable(span: Int, positions: Range<Int>, tableTokens: Int)
    case negativeBlockID(span: Int, block: Int32)
    /// A slot of `block` is above `Int32.max`.
    case slotOverflow(span: Int, block: Int32)
    /// A position above `Int32.max`.
    case positionOverflow(span: Int, position: Int)
    /// More than `Int32.max` tokens in one mapping.
    case tooManyTokens(Int)

    public var description: String {
        switch self {
        case .invalidBlockSize(let s): "block size must be in 1...\(Int32.max), got \(s)"
        case .mismatchedCounts(let t, let p): "\(t) block tables but \(p) position ranges"
        case .positionsOutsideTable(let k, let r, let n): "span \(k): positions \(r) outside its table's \(n) token slots"
        case .negativeBlockID(let k, let b): "span \(k): negative block id \(b)"
        case .slotOverflow(let k, let b): "span \(k): the slots of block \(b) do not fit in Int32"
        case .positionOverflow(let k, let p): "span \(k): position \(p) does not fit in Int32"
        case .tooManyTokens(let n): "\(n) tokens do not fit in one slot mapping (at most \(Int32.max))"
        }
    }
}
