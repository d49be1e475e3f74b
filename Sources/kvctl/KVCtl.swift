import ArgumentParser
import Foundation
import Logging
import KVCore
import KVTools

/// `kvctl`: inspect a PrefixKV store, replay traces, benchmark, stress, and demo the cache.
@main
struct KVCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvctl",
        abstract: "Inspect, drive and benchmark a PrefixKV cache.",
        discussion: "Diagnostics are quiet by default; set PREFIXKV_LOG_LEVEL=warning (or info, debug, trace) to see them on stderr.",
        subcommands: [Demo.self, Stats.self, Replay.self, Bench.self, Stress.self])

    static func main() {
        bootstrapLogging()
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            exit(withError: error)
        }
    }

    /// The library logs through swift-log; kvctl shows only errors unless asked for more.
    static func bootstrapLogging() {
        let name = ProcessInfo.processInfo.environment["PREFIXKV_LOG_LEVEL"] ?? "error"
        let level = Logger.Level(rawValue: name.lowercased()) ?? .error
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmarks: each prints a table, or JSON with --json.",
        subcommands: [BenchCache.self, BenchAttention.self, BenchPrefill.self, BenchMemory.self, BenchStore.self, BenchWrite.self])
}

/// Thrown by commands whose implementation has not landed yet.
struct NotImplemented: Error, CustomStringConvertible {
    var what: String
    var description: String { "\(what) is not implemented yet" }
}

/// Runs KVTools' checks of a command's options from `validate()`: their `OptionError` (naming the
/// option and what it allows) becomes a usage error, exit 64 with the usage, before anything runs.
func usageErrors(_ check: () throws -> Void) throws {
    do { try check() } catch let error as OptionError { throw ValidationError(error.description) }
}

/// A `--dtype` value: one of fp32, fp16, bf16, else a usage error that lists them.
func dtypeOption(_ name: some StringProtocol) throws -> KVDType {
    guard let dtype = KVDType(rawValue: String(name)) else {
        throw ValidationError("unknown --dtype \(name): one of \(KVDType.allCases.map(\.rawValue).joined(separator: ", "))")
    }
    return dtype
}
