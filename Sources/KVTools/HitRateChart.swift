#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Draws a sweep as a plain, hand-written SVG line chart: hit rate (0–100 %) against cache
/// capacity on a log axis, one curve for memory only and one for memory + store when the sweep
/// has store results. No dependencies, so kvctl can write it anywhere.
public struct HitRateChart {
    public var points: [SweepPoint]
    public var title: String

    public init(points: [SweepPoint], title: String) {
        self.points = points.sorted { $0.capacityBlocks < $1.capacityBlocks }
        self.title = title
    }

    static let width = 720.0, height = 440.0
    static let left = 80.0, right = 30.0, top = 50.0, bottom = 70.0

    public func svg() -> String {
        let w = Self.width, h = Self.height
        var out = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(w))" height="\(Int(h))" viewBox="0 0 \(Int(w)) \(Int(h))" font-family="sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>
        <text x="\(fmt(w / 2))" y="24" text-anchor="middle" font-size="15">\(escape(title))</text>

        """
        out += axes()
        out += curve(points.map { ($0.capacityBlocks, $0.memoryOnly.hitRate) }, color: "#1f77b4")
        let stored = points.compactMap { p in p.withStore.map { (p.capacityBlocks, $0.hitRate) } }
        if !stored.isEmpty { out += curve(stored, color: "#d62728", dashed: true) }
        out += legend(hasStore: !stored.isEmpty)
        out += "</svg>\n"
        return out
    }

    // MARK: - Geometry

    private var logRange: (Double, Double) {
        let lo = log10(Double(max(1, points.first?.capacityBlocks ?? 1)))
        let hi = log10(Double(max(1, points.last?.capacityBlocks ?? 10)))
        return hi - lo < 1e-9 ? (lo - 0.5, hi + 0.5) : (lo, hi)
    }

    private func x(_ capacity: Int) -> Double {
        let (lo, hi) = logRange
        let plotWidth = Self.width - Self.left - Self.right
        return Self.left + (log10(Double(max(1, capacity))) - lo) / (hi - lo) * plotWidth
    }

    private func y(_ rate: Double) -> Double {
        Self.top + (1 - min(max(rate, 0), 1)) * (Self.height - Self.top - Self.bottom)
    }

    // MARK: - Parts

    private func axes() -> String {
        let x0 = Self.left, x1 = Self.width - Self.right, y0 = Self.height - Self.bottom, y1 = Self.top
        var s = "<g stroke=\"black\" fill=\"none\"><line x1=\"\(fmt(x0))\" y1=\"\(fmt(y0))\" x2=\"\(fmt(x1))\" y2=\"\(fmt(y0))\"/>"
        s += "<line x1=\"\(fmt(x0))\" y1=\"\(fmt(y0))\" x2=\"\(fmt(x0))\" y2=\"\(fmt(y1))\"/></g>\n"
        for pct in stride(from: 0, through: 100, by: 20) {
            let yy = y(Double(pct) / 100)
            s += "<line x1=\"\(fmt(x0))\" y1=\"\(fmt(yy))\" x2=\"\(fmt(x1))\" y2=\"\(fmt(yy))\" stroke=\"#ddd\"/>"
            s += "<text x=\"\(fmt(x0 - 8))\" y=\"\(fmt(yy + 4))\" text-anchor=\"end\">\(pct)%</text>\n"
        }
        for p in points {
            let xx = x(p.capacityBlocks)
            s += "<line x1=\"\(fmt(xx))\" y1=\"\(fmt(y0))\" x2=\"\(fmt(xx))\" y2=\"\(fmt(y0 + 5))\" stroke=\"black\"/>"
            s += "<text x=\"\(fmt(xx))\" y=\"\(fmt(y0 + 18))\" text-anchor=\"middle\">\(abbreviate(p.capacityBlocks))</text>\n"
        }
        s += "<text x=\"\(fmt((x0 + x1) / 2))\" y=\"\(fmt(Self.height - 22))\" text-anchor=\"middle\">cache capacity (blocks, log scale)</text>\n"
        s += "<text transform=\"translate(22 \(fmt((y0 + y1) / 2))) rotate(-90)\" text-anchor=\"middle\">prompt tokens hit</text>\n"
        return s
    }

    private func curve(_ data: [(Int, Double)], color: String, dashed: Bool = false) -> String {
        let path = data.map { "\(fmt(x($0.0))),\(fmt(y($0.1)))" }.joined(separator: " ")
        var s = "<polyline points=\"\(path)\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\"\(dashed ? " stroke-dasharray=\"6 4\"" : "")/>\n"
        for (c, r) in data { s += "<circle cx=\"\(fmt(x(c)))\" cy=\"\(fmt(y(r)))\" r=\"3.5\" fill=\"\(color)\"/>\n" }
        return s
    }

    private func legend(hasStore: Bool) -> String {
        let lx = Self.left + 16, ly = Self.top + 14
        var s = "<g><line x1=\"\(fmt(lx))\" y1=\"\(fmt(ly))\" x2=\"\(fmt(lx + 24))\" y2=\"\(fmt(ly))\" stroke=\"#1f77b4\" stroke-width=\"2\"/>"
        s += "<text x=\"\(fmt(lx + 30))\" y=\"\(fmt(ly + 4))\">memory only</text>"
        if hasStore {
            s += "<line x1=\"\(fmt(lx))\" y1=\"\(fmt(ly + 18))\" x2=\"\(fmt(lx + 24))\" y2=\"\(fmt(ly + 18))\" stroke=\"#d62728\" stroke-width=\"2\" stroke-dasharray=\"6 4\"/>"
            s += "<text x=\"\(fmt(lx + 30))\" y=\"\(fmt(ly + 22))\">memory + store</text>"
        }
        return s + "</g>\n"
    }
}

/// One decimal place: SVG coordinates need no more.
private func fmt(_ v: Double) -> String {
    let tenths = Int((v * 10).rounded())
    let sign = tenths < 0 ? "-" : ""
    return "\(sign)\(abs(tenths) / 10).\(abs(tenths) % 10)"
}

/// 1234567 -> "1.2M", for tick labels.
func abbreviate(_ n: Int) -> String {
    switch n {
    case 1_000_000...: return "\(fmt(Double(n) / 1e6))M"
    case 10_000...: return "\(n / 1000)K"
    default: return "\(n)"
    }
}

private func escape(_ s: String) -> String {
    var out = ""
    for c in s {
        switch c {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        default: out.append(c)
        }
    }
    return out
}
