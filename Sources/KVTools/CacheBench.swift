import KVCache
import KVCore

/// `kvctl bench cache`: latency and throughput of the cache's metadata operations (no page arena),
/// for prompts of 1k–32k tokens with 0–90% of them cached.
///
/// Each round admits a prompt whose first `cachedFraction` is a prefix cached earlier and whose
/// rest is new, then appends decode tokens, forks, and releases everything. The pool is sized at
/// four prompts, so in steady state every admission also evicts cold blocks, as in a full cache.
public struct CacheBench {
    public struct Point: Sendable, Codable {
        public var operation: String
        public var promptTokens: Int
        public var cachedPercent: Int
        public var p50Micros: Double
        public var p99Micros: Double
        public var opsPerSecond: Double
        public var promptTokensPerSecond: Double
    }

    public var promptSizes = [1024, 4096, 8192, 32768]
    public var cachedPercents = [0, 50, 90]
    public var rounds = 400
    public var blockSize = 16
    public var forkCount = 8

    public init() {}

    /// Prompt sizes a point may use (token ids of the cached stem must fit `TokenID`, and the
    /// prompt is held in memory several times over).
    public static let promptTokensRange = 1...(1 << 24)
    public static let blockSizeRange = 1...(1 << 16)

    /// Fails on a setting the bench cannot run with, naming the kvctl option.
    public func validate() throws(OptionError) {
        guard !promptSizes.isEmpty else { throw OptionError("--prompts", "needs at least one prompt size") }
        for n in promptSizes { try OptionChecks.inRange(n, Self.promptTokensRange, "--prompts") }
        guard !cachedPercents.isEmpty else { throw OptionError("--cached", "needs at least one percentage") }
        for n in cachedPercents { try OptionChecks.inRange(n, 0...100, "--cached") }
        try OptionChecks.atLeast(rounds, 1, "--rounds")
        try OptionChecks.inRange(blockSize, Self.blockSizeRange, "--block-size")
        try OptionChecks.atLeast(forkCount, 1, "forkCount")
    }

    public func run() throws -> [Point] {
        try validate()
        var points: [Point] = []
        for size in promptSizes {
            for percent in cachedPercents {
                points += try measure(promptTokens: size, cachedPercent: percent)
            }
        }
        return points
    }

    func measure(promptTokens: Int, cachedPercent: Int) throws -> [Point] {
        let layout = try KVLayout(layerCount: 1, kvHeadCount: 1, headDim: 8, blockSize: blockSize)
        let blocksPerPrompt = (promptTokens + blockSize - 1) / blockSize
        let cache = try KVCacheManager(layout: layout, capacityBlocks: 4 * blocksPerPrompt + 64)
        let cachedTokens = promptTokens * cachedPercent / 100
        let stem = (0..<cachedTokens).map { TokenID($0) }
        if !stem.isEmpty { try cache.release(cache.admit(stem).sequence) }

        var admit: [Double] = [], append: [Double] = [], fork: [Double] = [], release: [Double] = []
        var prompt = stem + [TokenID](repeating: 0, count: promptTokens - cachedTokens)
        var next = TokenID(10_000_000)
        let rounds = max(20, min(self.rounds, 40_000_000 / promptTokens))
        for round in 0..<rounds {
            for i in cachedTokens..<promptTokens { prompt[i] = next; next &+= 1 }
            let t0 = monotonicNanos()
            _ = try cache.lookup(prompt)
            let a = try cache.admit(prompt)
            let t1 = monotonicNanos()
            try cache.append([next], to: a.sequence)
            let t2 = monotonicNanos()
            let kids = try cache.fork(a.sequence, count: forkCount)
            let t3 = monotonicNanos()
            for s in kids + [a.sequence] { try cache.release(s) }
            let t4 = monotonicNanos()
            invariant(a.cachedTokenCount == cachedTokens / blockSize * blockSize,
                         "CacheBench: expected \(cachedTokens / blockSize * blockSize) cached tokens, got \(a.cachedTokenCount)")
            if round >= 2 {  // the first rounds warm the pool
                admit.append(Double(t1 - t0) / 1000)
                append.append(Double(t2 - t1) / 1000)
                fork.append(Double(t3 - t2) / 1000)
                release.append(Double(t4 - t3) / 1000 / Double(forkCount + 1))
            }
        }
        func point(_ op: String, _ samples: [Double], tokens: Int) -> Point {
            let s = TimingSummary(samples)
            return Point(operation: op, promptTokens: promptTokens, cachedPercent: cachedPercent,
                         p50Micros: s.median, p99Micros: s.p99, opsPerSecond: 1e6 / s.median,
                         promptTokensPerSecond: Double(tokens) * 1e6 / s.median)
        }
        return [point("lookup+admit", admit, tokens: promptTokens), point("append(1)", append, tokens: 0),
                point("fork(\(forkCount))", fork, tokens: 0), point("release", release, tokens: 0)]
    }

    public static func table(_ points: [Point]) -> String {
        renderTable(
            header: ["operation", "prompt", "cached", "p50 µs", "p99 µs", "ops/s", "prompt tok/s"],
            rows: points.map {
                [$0.operation, "\($0.promptTokens)", "\($0.cachedPercent)%", fixed($0.p50Micros), fixed($0.p99Micros),
                 fixed($0.opsPerSecond, 0), $0.promptTokensPerSecond > 0 ? fixed($0.promptTokensPerSecond / 1e6, 1) + "M" : "-"]
            })
    }
}
