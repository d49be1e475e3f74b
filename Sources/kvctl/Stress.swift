import ArgumentParser
import Foundation
import KVTools

/// `kvctl stress`: several threads hammer one paged cache while checking shared KV, invariants
/// and, at the end, that no block leaked. Exits non-zero on any violation, naming the seed.
struct Stress: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stress",
        abstract: "Concurrent admit/append/fork/release/lookup with KV read-back and invariant checks.")

    @Option(help: "Worker threads.")
    var threads = 4

    @Option(help: "How long to run.")
    var seconds = 5.0

    @Option(help: "Seed of the random operations (default: from the clock; always printed).")
    var seed: UInt64?

    @Option(help: "Cache capacity in blocks (small, so threads contend and evict).")
    var capacityBlocks = 256

    @Option(help: "Spill evictions to an LMDB store at this path (emptied first; refused while another process writes it, or when its data.mdb is not a PrefixKV store; the store files go into the directory beside anything else there); restored KV is checked too.")
    var store: String?

    func validate() throws {
        try usageErrors { try StressOptions(threads: threads, seconds: seconds, capacityBlocks: capacityBlocks).validate() }
    }

    func run() throws {
        let seed = seed ?? UInt64(Date().timeIntervalSince1970 * 1000)
        let makeStore = store.map { SpillStores.factory(path: $0, limitBytes: 256 << 20) }
        let options = StressOptions(threads: threads, seconds: seconds, seed: seed, capacityBlocks: capacityBlocks, makeStore: makeStore)
        // Printed first: an invariant failure traps and this line is all that names the run.
        FileHandle.standardError.write(Data("kvctl stress: seed \(seed), \(threads) threads, \(seconds) s; reproduce with: \(options.reproducingCommand(storePath: store))\n".utf8))
        let report = try KVTools.stress(options)
        let c = report.counts
        print("admits \(c.admits)  refused \(c.refused)  appends \(c.appends)  truncations \(c.truncations)  forks \(c.forks)  releases \(c.releases)  lookups \(c.lookups)")
        print("verified blocks \(c.verifiedBlocks)  invariant checks \(c.invariantChecks)  evicted blocks \(report.stats.evictedBlocks)"
              + "  spilled \(report.stats.spilledBlocks)  restored \(report.stats.restoredBlocks)")
        guard report.passed else {
            for v in report.violations.prefix(20) { print("VIOLATION: \(v)") }
            print("FAILED with \(report.violations.count) violations; reproduce with: \(options.reproducingCommand(storePath: store))")
            throw ExitCode.failure
        }
        print("passed (seed \(seed), used blocks at end \(report.stats.usedBlocks))")
    }
}
