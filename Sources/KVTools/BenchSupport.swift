#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Monotonic nanoseconds, for benchmark timing.
@inline(__always) public func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Order statistics of a set of timings.
public struct TimingSummary: Sendable, Codable, Equatable {
    public var count: Int
    public var median: Double
    public var p99: Double
    public var mean: Double

    public init(_ samples: [Double]) {
        precondition(!samples.isEmpty, "TimingSummary: no samples")
        let sorted = samples.sorted()
        count = sorted.count
        median = sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
        p99 = sorted[min(sorted.count - 1, Int((Double(sorted.count) * 0.99).rounded(.up)) - 1)]
        mean = sorted.reduce(0, +) / Double(sorted.count)
    }
}

/// Renders rows as a left-aligned text table with a header rule.
public func renderTable(header: [String], rows: [[String]]) -> String {
    var widths = header.map(\.count)
    for row in rows { for (i, cell) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], cell.count) } }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { i, c in c + String(repeating: " ", count: widths[i] - c.count) }.joined(separator: "  ")
    }
    return ([line(header), widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ")] + rows.map(line)).joined(separator: "\n")
}

/// Formats a number with a fixed count of decimals (no Foundation needed).
public func fixed(_ x: Double, _ decimals: Int = 2) -> String {
    guard x.isFinite else { return "\(x)" }
    var scale = 1.0
    for _ in 0..<decimals { scale *= 10 }
    // Past Int's range (`kvctl stats` renders counters read from a store file): Swift's own form.
    guard (abs(x) * scale).rounded() < 0x1p63 else { return "\(x)" }
    let r = (abs(x) * scale).rounded() / scale
    var s = String(Int(r))
    if decimals > 0 {
        let frac = Int(((r - r.rounded(.down)) * scale).rounded())
        let f = String(frac)
        s += "." + String(repeating: "0", count: decimals - f.count) + f
    }
    return (x < 0 && r != 0 ? "-" : "") + s
}
