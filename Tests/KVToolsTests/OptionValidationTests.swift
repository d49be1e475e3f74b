import Foundation
import Testing
import KVCore
@testable import KVTools

/// The checks kvctl's `validate()` runs (each command hands its options to these and turns an
/// `OptionError` into a usage error, exit 64), one row per bad value the review found trapping,
/// dividing by zero, or being silently ignored. kvctl itself is an executable target the test
/// target does not depend on, so the rows call the same KVTools checks its commands call.
@Suite struct OptionValidationTests {
    struct Case: CustomTestStringConvertible, Sendable {
        var command: String
        /// The option the error must name.
        var option: String
        var check: @Sendable () throws -> Void
        var testDescription: String { "\(command) → \(option)" }
    }

    static func cache(_ edit: @Sendable @escaping (inout CacheBench) -> Void) -> @Sendable () throws -> Void {
        { var b = CacheBench(); edit(&b); try b.validate() }
    }
    static func attention(batch: Int = 16, context: Int = 8192, decode: Int = 128, heads: Int = 32, kvHeads: Int = 32,
                          blockSize: Int = 16, threads: Int = 2, repeats: Int = 7, sweep: Bool = false) -> @Sendable () throws -> Void {
        {
            try AttentionBench.validate(batches: sweep ? [1, 2, 4, 8, 16, 32, 64] : [batch], contexts: sweep ? [2048, 8192, 16384] : [context],
                                        decode: decode, heads: heads, kvHeads: kvHeads, headDim: 128, dtype: .bfloat16,
                                        blockSize: blockSize, threads: threads, repeats: repeats)
        }
    }
    static func prefill(context: Int = 8192, chunk: Int = 256, sequences: Int = 1, kvHeads: Int = 8, blockSize: Int = 16,
                        threads: Int = 2, repeats: Int = 5) -> @Sendable () throws -> Void {
        { try PrefillBench.validate(context: context, chunk: chunk, sequences: sequences, heads: 32, kvHeads: kvHeads, headDim: 128, dtype: .bfloat16,
                                    blockSize: blockSize, threads: threads, repeats: repeats) }
    }
    static func store(tokens: Int = 8192, repeats: Int = 5, rounds: Int = 3) -> @Sendable () throws -> Void {
        { try StoreBench(layout: try KVLayout(spec: "8x8x128:fp16", blockSize: 16), tokens: tokens, directory: NSTemporaryDirectory(),
                         restoreRepeats: repeats, rounds: rounds).validate() }
    }
    static func stress(threads: Int = 4, seconds: Double = 5, capacityBlocks: Int = 256) -> @Sendable () throws -> Void {
        { try StressOptions(threads: threads, seconds: seconds, capacityBlocks: capacityBlocks).validate() }
    }
    static func replay(_ edit: @Sendable @escaping (inout ReplayCommandOptions) -> Void) -> @Sendable () throws -> Void {
        { var o = ReplayCommandOptions(); edit(&o); try o.validate() }
    }
    static func demo(_ edit: @Sendable @escaping (inout Demo.Options) -> Void) -> @Sendable () throws -> Void {
        { var o = Demo.Options(); edit(&o); try o.validate() }
    }

    static let badValues: [Case] = [
        Case(command: "bench cache --prompts 0", option: "--prompts", check: cache { $0.promptSizes = [1024, 0] }),
        Case(command: "bench cache --prompts ''", option: "--prompts", check: cache { $0.promptSizes = [] }),
        Case(command: "bench cache --cached 150", option: "--cached", check: cache { $0.cachedPercents = [150] }),
        Case(command: "bench cache --cached=-10", option: "--cached", check: cache { $0.cachedPercents = [-10] }),
        Case(command: "bench cache --block-size 0", option: "--block-size", check: cache { $0.blockSize = 0 }),
        Case(command: "bench cache --rounds 0", option: "--rounds", check: cache { $0.rounds = 0 }),
        Case(command: "bench memory --threads 0", option: "--threads", check: { try MemoryBench.validate(megabytes: 1024, threads: 0, repeats: 5) }),
        Case(command: "bench memory --megabytes=-1", option: "--megabytes", check: { try MemoryBench.validate(megabytes: -1, threads: 2, repeats: 5) }),
        Case(command: "bench memory --megabytes 2^50", option: "--megabytes", check: { try MemoryBench.validate(megabytes: 1 << 50, threads: 2, repeats: 5) }),
        Case(command: "bench memory --repeat 0", option: "--repeat", check: { try MemoryBench.validate(megabytes: 1024, threads: 2, repeats: 0) }),
        Case(command: "bench attention --threads 0", option: "--threads", check: attention(threads: 0)),
        Case(command: "bench prefill --chunk 0", option: "--chunk", check: prefill(chunk: 0)),
        Case(command: "bench prefill --context=-1", option: "--context", check: prefill(context: -1)),
        Case(command: "bench prefill --kv-heads 5", option: "--kv-heads", check: prefill(kvHeads: 5)),
        Case(command: "bench prefill --block-size 0", option: "--block-size", check: prefill(blockSize: 0)),
        Case(command: "bench prefill --context \(Int.max)", option: "--context", check: prefill(context: .max)),
        Case(command: "bench prefill --repeat 0", option: "--repeat", check: prefill(repeats: 0)),
        Case(command: "bench prefill --sequences 0", option: "--sequences", check: prefill(sequences: 0)),
        Case(command: "bench prefill --sequences \(Int.max / 4)", option: "--sequences", check: prefill(sequences: .max / 4)),
        Case(command: "bench attention --context 100", option: "--context", check: attention(context: 100)),
        Case(command: "bench attention --context 0", option: "--context", check: attention(context: 0)),
        Case(command: "bench attention --batch 0", option: "--batch", check: attention(batch: 0)),
        Case(command: "bench attention --repeat 0", option: "--repeat", check: attention(repeats: 0)),
        Case(command: "bench attention --decode=-1", option: "--decode", check: attention(decode: -1)),
        Case(command: "bench attention --kv-heads 5", option: "--kv-heads", check: attention(kvHeads: 5)),
        Case(command: "bench attention --block-size 0", option: "--block-size", check: attention(blockSize: 0)),
        Case(command: "bench attention --sweep --block-size 48", option: "--block-size", check: attention(blockSize: 48, sweep: true)),
        Case(command: "bench attention --batch 2^40", option: "--batch/--context/--decode", check: attention(batch: 1 << 40)),
        Case(command: "bench store --tokens 8", option: "--tokens", check: store(tokens: 8)),
        Case(command: "bench store --tokens 2^40", option: "--tokens", check: store(tokens: 1 << 40)),
        Case(command: "bench store --repeats 0", option: "--repeats", check: store(repeats: 0)),
        Case(command: "bench store --rounds 0", option: "--rounds", check: store(rounds: 0)),
        Case(command: "stress --threads 0", option: "--threads", check: stress(threads: 0)),
        Case(command: "stress --seconds 1e12", option: "--seconds", check: stress(seconds: 1e12)),
        Case(command: "stress --seconds inf", option: "--seconds", check: stress(seconds: .infinity)),
        Case(command: "stress --seconds nan", option: "--seconds", check: stress(seconds: .nan)),
        Case(command: "stress --seconds 0", option: "--seconds", check: stress(seconds: 0)),
        Case(command: "stress --capacity-blocks 0", option: "--capacity-blocks", check: stress(capacityBlocks: 0)),
        Case(command: "stress --capacity-blocks 99999999999", option: "--capacity-blocks", check: stress(capacityBlocks: 99_999_999_999)),
        Case(command: "stress --capacity-blocks Int.max", option: "--capacity-blocks", check: stress(capacityBlocks: .max)),
        Case(command: "replay --hash-block-tokens 0", option: "--hash-block-tokens", check: replay { $0.hashBlockTokens = 0 }),
        Case(command: "replay --hash-block-tokens 2^63-1", option: "--hash-block-tokens", check: replay { $0.hashBlockTokens = .max }),
        Case(command: "replay --block-size 0", option: "--block-size", check: replay { $0.blockSize = 0 }),
        Case(command: "replay --layout 1x1", option: "--layout", check: replay { $0.layout = "1x1" }),
        Case(command: "replay --limit 0", option: "--limit", check: replay { $0.limit = 0 }),
        Case(command: "replay --capacity-blocks 0", option: "--capacity-blocks", check: replay { $0.capacityBlocks = 0 }),
        Case(command: "replay --capacity-blocks 99999999999 --store S", option: "--capacity-blocks",
             check: replay { $0.capacityBlocks = 99_999_999_999; $0.store = "/tmp/s" }),
        Case(command: "replay --store S --store-limit-bytes 0", option: "--store-limit-bytes",
             check: replay { $0.store = "/tmp/s"; $0.storeLimitBytes = 0 }),
        Case(command: "replay --store S --store-limit-bytes=-5", option: "--store-limit-bytes",
             check: replay { $0.store = "/tmp/s"; $0.storeLimitBytes = -5 }),
        Case(command: "replay --store-limit-bytes 1000000 (no --store)", option: "--store-limit-bytes", check: replay { $0.storeLimitBytes = 1_000_000 }),
        // below one block's record nothing is ever stored (a review found the table silent about it)
        Case(command: "replay --store S --store-limit-bytes 1", option: "--store-limit-bytes",
             check: replay { $0.store = "/tmp/s"; $0.storeLimitBytes = 1 }),
        // a block that fits in Int but not with its token ids (or its record header): trapped on overflow
        Case(command: "replay --layout 1x1x144115188075855871 --store S", option: "--layout",
             check: replay { $0.layout = "1x1x144115188075855871"; $0.store = "/tmp/s" }),
        Case(command: "replay --layout 1x1x144115188075855871 --store S --store-limit-bytes 100000000", option: "--layout",
             check: replay { $0.layout = "1x1x144115188075855871"; $0.store = "/tmp/s"; $0.storeLimitBytes = 100_000_000 }),
        Case(command: "replay --sweep --capacity-blocks 10", option: "--capacity-blocks", check: replay { $0.sweep = true; $0.capacityBlocks = 10 }),
        Case(command: "replay --chart c.svg (no --sweep)", option: "--chart", check: replay { $0.chart = "/tmp/c.svg" }),
        Case(command: "replay --capacities 5 (no --sweep)", option: "--capacities", check: replay { $0.capacities = [5] }),
        Case(command: "replay --sweep --chart /nonexistent/dir/c.svg", option: "--chart",
             check: replay { $0.sweep = true; $0.chart = "/nonexistent-\(UUID().uuidString)/c.svg" }),
        Case(command: "replay --sweep --chart /tmp (a directory)", option: "--chart",
             check: replay { $0.sweep = true; $0.chart = FileManager.default.temporaryDirectory.path }),
        Case(command: "demo --steps 0", option: "--steps", check: demo { $0.decodeSteps = 0 }),
        Case(command: "demo --samples 0", option: "--samples", check: demo { $0.samples = 0 }),
        Case(command: "demo --samples 100000", option: "--samples", check: demo { $0.samples = 100_000 }),
        Case(command: "demo --requests 0", option: "--requests", check: demo { $0.requests = 0 }),
        Case(command: "demo with a pool below one request's peak", option: "capacityBlocks", check: demo { $0.capacityBlocks = 100 }),
    ]

    @Test(arguments: badValues)
    func badValueIsAnOptionErrorNamingTheOption(_ row: Case) {
        do {
            try row.check()
            Issue.record("\(row.command) was accepted")
        } catch let error as OptionError {
            #expect(error.option == row.option, "\(row.command): \(error)")
        } catch {
            Issue.record("\(row.command): not an OptionError: \(error)")
        }
    }

    /// The defaults and the edges of each range pass, so the rows above fail for their value alone.
    @Test func defaultsAndRangeEdgesPass() throws {
        try Self.cache { _ in }()
        try Self.cache { $0.cachedPercents = [0, 100]; $0.promptSizes = [1]; $0.rounds = 1; $0.blockSize = 1 }()
        try MemoryBench.validate(megabytes: 1, threads: 1, repeats: 1)
        try Self.attention()()
        try Self.attention(batch: 1, context: 16, decode: 0, threads: 1, repeats: 1)()
        try Self.attention(sweep: true)()
        try Self.store()()
        try Self.store(tokens: 16, repeats: 1, rounds: 1)()
        try Self.stress()()
        try Self.stress(threads: 1, seconds: 0.001, capacityBlocks: 1)()
        try Self.replay { _ in }()
        try Self.replay { $0.store = "/tmp/s"; $0.storeLimitBytes = 1 << 20; $0.capacityBlocks = 1 }()
        try Self.replay { $0.sweep = true; $0.capacities = [1, 10]; $0.chart = FileManager.default.temporaryDirectory.path + "/c.svg" }()
        try Self.replay { $0.sweep = true; $0.chart = "relative-chart.svg" }()
        try Self.demo { _ in }()
        try Self.demo { $0.decodeSteps = 33; $0.samples = 200 }()
    }

    /// The library entry points check too: a bad value is thrown, not trapped on further in.
    @Test func entryPointsThrowInsteadOfTrapping() throws {
        var cache = CacheBench()
        cache.promptSizes = [0]
        #expect(throws: OptionError("--prompts", "must be in 1...16777216, got 0")) { try cache.run() }
        #expect(throws: OptionError.self) {
            try StoreBench(layout: .small(), tokens: 8, directory: "/nonexistent-dir", restoreRepeats: 1, rounds: 1).run()
        }
        #expect(throws: OptionError.self) {
            try StoreBench(layout: .small(), tokens: 64, directory: "/nonexistent-dir", restoreRepeats: 0, rounds: 1).run()
        }
        #expect(throws: OptionError.self) { try KVTools.stress(StressOptions(seconds: .infinity)) }
        var demo = Demo.Options()
        demo.decodeSteps = 0
        #expect(throws: OptionError.self) { try Demo(options: demo).run(store: nil) { _ in } }
    }

    /// Room for every block of the trace at a layout too large for it overflowed `Int` (a trap).
    @Test func storeRoomOverflowIsAnErrorNamingTheLayout() throws {
        let trace = try Fixture.conversation()
        let blocks = unboundedCapacity(of: trace, blockSize: 16)
        #expect(try storeRoomForEveryBlock(trace, layout: .small()) == max(64 << 20, blocks * (512 + 16 * 4 + 256)))
        #expect(try storeRoomForEveryBlock(trace.prefix(1), layout: .small()) == 64 << 20, "a small trace gets the 64 MiB floor")
        let huge = try KVLayout(layerCount: 1 << 24, kvHeadCount: 1 << 10, headDim: 1 << 14, blockSize: 16)
        #expect(throws: OptionError.self) { try storeRoomForEveryBlock(trace, layout: huge) }
    }
}
