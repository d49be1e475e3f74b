import KVCore

/// Positions of one sequence whose K/V a step writes: what `KVCacheManager.slotMapping(for:)`
/// maps to slots.
///
/// ```swift
/// .last(of: s)                                   // decode: the token just appended
/// .last(4, of: s)                                // the 4 tokens just appended (speculative decode)
/// .from(admission.cachedTokenCount, of: a)       // prefill: every uncached prompt token
/// .range(512..<1024, of: s)                      // one prefill chunk
/// ```
///
/// `.last` and `.from` are resolved against the sequence's token count when the mapping is taken.
public struct SlotSpan: Sendable, Hashable, CustomStringConvertible {
    /// Which positions, `0..<tokenCount`.
    public enum Positions: Sendable, Hashable, CustomStringConvertible {
        /// Exactly these positions.
        case range(Range<Int>)
        /// From this position to the sequence's token count.
        case from(Int)
        /// The sequence's last `n` tokens.
        case last(Int)

        /// The positions for a sequence of `tokenCount` tokens, or nil when they are not in
        /// `0..<tokenCount` (a negative start or count, a start or count past it).
        public func resolved(tokenCount: Int) -> Range<Int>? {
            switch self {
            case .range(let r): r.lowerBound >= 0 && r.upperBound <= tokenCount ? r : nil
            case .from(let start): start >= 0 && start <= tokenCount ? start..<tokenCount : nil
            case .last(let n): n >= 0 && n <= tokenCount ? (tokenCount - n)..<tokenCount : nil
            }
        }

        public var description: String {
            switch self {
            case .range(let r): "\(r.lowerBound)..<\(r.upperBound)"
            case .from(let s): "\(s)..."
            case .last(let n): "last \(n)"
            }
        }
    }

    public var sequence: SequenceHandle
    public var positions: Positions

    public init(sequence: SequenceHandle, positions: Positions) {
        self.sequence = sequence
        self.positions = positions
    }

    /// Positions `positions` of `sequence`.
    public static func range(_ positions: Range<Int>, of sequence: SequenceHandle) -> SlotSpan {
        SlotSpan(sequence: sequence, positions: .range(positions))
    }

    /// Positions `start..<tokenCount` of `sequence`: a prefill from `Admission.cachedTokenCount`.
    public static func from(_ start: Int, of sequence: SequenceHandle) -> SlotSpan {
        SlotSpan(sequence: sequence, positions: .from(start))
    }

    /// The last `count` positions of `sequence`: the tokens just appended.
    public static func last(_ count: Int = 1, of sequence: SequenceHandle) -> SlotSpan {
        SlotSpan(sequence: sequence, positions: .last(count))
    }

    public var description: String { "\(sequence)[\(positions)]" }
}
