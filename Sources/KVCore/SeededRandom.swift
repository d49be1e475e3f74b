/// A small, fast, seedable generator (SplitMix64), so every simulation, benchmark, stress run and
/// randomized test can print its seed and be replayed.
package struct SeededRandom: RandomNumberGenerator, Sendable {
    package private(set) var state: UInt64
    package init(seed: UInt64) { state = seed }
    package mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// A value in `0..<n` (slightly biased for huge `n`; fine for workloads).
    package mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}
