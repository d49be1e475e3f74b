import ArgumentParser

/// `kvctl`: inspect a PrefixKV store, replay traces, benchmark, stress, and demo the cache.
@main
struct KVCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvctl",
        abstract: "Inspect, drive and benchmark a PrefixKV cache.",
        subcommands: [Demo.self, Stats.self, Replay.self, Bench.self, Stress.self])
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmarks: each prints a table, or JSON with --json.",
        subcommands: [BenchCache.self, BenchAttention.self, BenchMemory.self, BenchStore.self])
}

/// Thrown by commands whose implementation has not landed yet.
struct NotImplemented: Error, CustomStringConvertible {
    var what: String
    var description: String { "\(what) is not implemented yet" }
}
