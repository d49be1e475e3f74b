import Foundation
import KVCache
import KVCore

/// How to stress the cache.
public struct StressOptions: Sendable {
    public var threads: Int
    public var seconds: Double
    public var seed: UInt64
    /// Small on purpose, so threads contend for blocks and evictions happen all the time.
    public var capacityBlocks: Int
    public var layout: KVLayout
    /// Attaches a cold store, so evictions spill and hits restore (checked like memory hits).
    public var makeStore: ColdStoreFactory?

    public init(threads: Int = 4, seconds: Double = 2, seed: UInt64 = 1, capacityBlocks: Int = 256,
                layout: KVLayout = try! KVLayout(layerCount: 2, kvHeadCount: 2, headDim: 4, blockSize: 4),
                makeStore: ColdStoreFactory? = nil) {
        self.threads = threads
        self.seconds = seconds
        self.seed = seed
        self.capacityBlocks = capacityBlocks
        self.layout = layout
        self.makeStore = makeStore
    }
}

extension StressOptions {
    /// The longest run `kvctl stress` accepts (30 days): the deadline is computed in nanoseconds.
    public static let maxSeconds = 30.0 * 86_400

    /// Fails on options a run cannot start with, naming the kvctl option: positive threads, a
    /// finite positive duration, and a pool (pages and token table) that fits in memory.
    public func validate() throws(OptionError) {
        try OptionChecks.inRange(threads, 1...OptionChecks.maxThreads, "--threads")
        guard seconds.isFinite, seconds > 0, seconds <= Self.maxSeconds else {
            throw OptionError("--seconds", "must be a finite number of seconds in (0, \(Int(Self.maxSeconds))], got \(seconds)")
        }
        try OptionChecks.atLeast(capacityBlocks, 1, "--capacity-blocks")
        try OptionChecks.fitsInMemory(blocks: capacityBlocks, bytesPerBlock: layout.blockBytes + layout.blockSize * MemoryLayout<TokenID>.stride,
                                      "--capacity-blocks")
    }
}

extension StressOptions {
    /// The `kvctl stress` command line that repeats this run: every option that shapes it
    /// (`storePath`: the `--store` it ran with). The layout is not an option of kvctl.
    public func reproducingCommand(storePath: String?) -> String {
        var words = ["kvctl", "stress", "--seed", "\(seed)", "--threads", "\(threads)", "--seconds", "\(seconds)",
                     "--capacity-blocks", "\(capacityBlocks)"]
        if let storePath { words += ["--store", storePath] }
        return words.map(shellQuoted).joined(separator: " ")
    }
}

/// `word` as one shell word: unchanged when it is plain, else in single quotes.
func shellQuoted(_ word: String) -> String {
    let plain = !word.isEmpty && word.allSatisfy { $0.isLetter || $0.isNumber || "-_./=:+,".contains($0) }
    return plain ? word : "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'"
}

/// Operation counts of a stress run, summed over threads.
public struct StressCounts: Sendable, Equatable, Codable {
    public var admits = 0
    /// Admits or appends refused for lack of blocks (expected under contention, not a failure).
    public var refused = 0
    public var appends = 0
    /// Appends treated as speculative drafts, the rejected tail then truncated.
    public var truncations = 0
    public var forks = 0
    public var releases = 0
    public var lookups = 0
    /// Blocks whose pages were read back and matched the expected KV.
    public var verifiedBlocks = 0
    public var invariantChecks = 0

    public init() {}

    static func + (a: StressCounts, b: StressCounts) -> StressCounts {
        var s = a
        s.admits += b.admits; s.refused += b.refused; s.appends += b.appends; s.truncations += b.truncations; s.forks += b.forks
        s.releases += b.releases; s.lookups += b.lookups; s.verifiedBlocks += b.verifiedBlocks
        s.invariantChecks += b.invariantChecks
        return s
    }
}

/// What a stress run found. `violations` empty means it passed.
public struct StressReport: Sendable {
    public var seed: UInt64
    public var counts: StressCounts
    public var stats: KVCacheStats
    public var violations: [String]
    public var passed: Bool { violations.isEmpty }
}

/// Runs `threads` workers against one paged manager for `seconds`: random admits, appends (some truncated back, as speculative drafts), forks,
/// releases and lookups, each worker writing the KV of the tokens it computes and reading back
/// published shared pages; worker 0 also checks the manager's invariants (which trap on a broken
/// state). At the end every sequence is released and no block may remain in use.
/// Each worker's random stream is derived from `seed`, so the seed names the run.
public func stress(_ options: StressOptions) throws -> StressReport {
    try options.validate()
    let published = PublishedBlocks()
    let store = try options.makeStore?(options.layout)
    let cache = try KVCacheManager(layout: options.layout, capacityBlocks: options.capacityBlocks, allocatesPages: true,
                                   coldStore: store, onEvict: { published.evicted($0.block) })
    let shared = StressShared(cache: cache, published: published, pattern: KVPattern(layout: options.layout),
                              deadline: monotonicNanos() + UInt64(options.seconds * 1e9))
    let done = DispatchGroup()
    for t in 0..<options.threads {
        done.enter()
        let worker = StressWorker(shared: shared, seed: options.seed &+ UInt64(t) &* 0x9E37_79B9_7F4A_7C15, checksInvariants: t == 0)
        Thread {
            worker.run()
            done.leave()
        }.start()
    }
    done.wait()
    cache.checkInvariants()
    let stats = cache.stats
    if stats.usedBlocks != 0 || stats.liveSequences != 0 {
        shared.fail("leak: \(stats.usedBlocks) blocks in use and \(stats.liveSequences) live sequences after every sequence was released")
    }
    return StressReport(seed: options.seed, counts: shared.counts.withLock { $0 }, stats: stats,
                        violations: shared.violations.withLock { $0 })
}

/// What the workers share: the cache, the published-block registry, and where they report.
final class StressShared: Sendable {
    let cache: KVCacheManager
    let published: PublishedBlocks
    let pattern: KVPattern
    let deadline: UInt64
    let counts = Locked(StressCounts())
    let violations = Locked<[String]>([])

    init(cache: KVCacheManager, published: PublishedBlocks, pattern: KVPattern, deadline: UInt64) {
        self.cache = cache
        self.published = published
        self.pattern = pattern
        self.deadline = deadline
    }

    /// Records a violation; the run goes on so the report shows how widespread it is.
    func fail(_ message: String) {
        violations.withLock { $0.append(message) }
    }
}
