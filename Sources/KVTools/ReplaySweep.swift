import KVCore

/// One capacity of a sweep: the memory-only replay and, when a store factory was given, the
/// replay with the store below memory.
public struct SweepPoint: Sendable, Equatable, Codable {
    public var capacityBlocks: Int
    /// Capacity over the unbounded capacity (1 = nothing ever evicted).
    public var fraction: Double
    public var memoryOnly: ReplayResult
    public var withStore: ReplayResult?
}

/// The capacity fractions a sweep uses by default (of the unbounded capacity).
public let defaultSweepFractions: [Double] = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]

/// Replays `trace` once per capacity (twice with a store: without and with it), fresh cache each
/// time, to draw hit rate against capacity. `capacities` nil: the default fractions of the
/// unbounded capacity. `progress` receives (point, points) as each point finishes.
public func sweep(_ trace: Trace, layout: KVLayout, capacities: [Int]? = nil, makeStore: ColdStoreFactory? = nil,
                  progress: ((Int, Int) -> Void)? = nil) throws -> [SweepPoint] {
    let unbounded = unboundedCapacity(of: trace, blockSize: layout.blockSize)
    let list = capacities ?? defaultSweepFractions.map { max(1, Int((Double(unbounded) * $0).rounded(.up))) }
    var points: [SweepPoint] = []
    for (i, capacity) in list.enumerated() {
        let memory = try replay(trace, options: ReplayOptions(layout: layout, capacityBlocks: capacity))
        let stored = try makeStore.map { try replay(trace, options: ReplayOptions(layout: layout, capacityBlocks: capacity, makeStore: $0)) }
        points.append(SweepPoint(capacityBlocks: capacity, fraction: Double(capacity) / Double(unbounded),
                                 memoryOnly: memory, withStore: stored))
        progress?(i + 1, list.count)
    }
    return points
}
