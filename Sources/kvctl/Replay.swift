import ArgumentParser
import Foundation
import KVCore
import KVTools

/// `kvctl replay TRACE`: replays a Mooncake trace (admit each prompt, release it, in timestamp
/// order) and reports how many prompt tokens the cache would have reused.
struct Replay: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "Replay a Mooncake request trace and report prefix-cache hit rates.")

    @Argument(help: "A Mooncake JSONL trace.")
    var trace: String

    @Option(help: "Tokens per hash id in the trace.")
    var hashBlockTokens = 512

    @Option(help: "Tokens per cache block.")
    var blockSize = 16

    @Option(help: "Cache capacity in blocks (default: unbounded, every distinct block of the trace).")
    var capacityBlocks: Int?

    @Option(help: "KV layout LAYERSxKVHEADSxHEADDIM:DTYPE (pages are allocated only with a store).")
    var layout = "1x1x8:fp16"

    @Option(help: "Replay only the first N requests (in timestamp order).")
    var limit: Int?

    @Flag(help: "Replay at several capacities and report hit rate against capacity.")
    var sweep = false

    @Option(help: "Sweep capacities in blocks, comma-separated (default: 1,2,5,10,20,50,100% of unbounded).")
    var capacities: String?

    @Option(help: "With --sweep: write the hit-rate chart as SVG to this file.")
    var chart: String?

    @Option(help: "Spill evicted blocks to an LMDB store at this path (emptied first; refused while another process writes it, or when its data.mdb is not a PrefixKV store; the store files go into the directory beside anything else there) and restore from it. The store's writer runs in wait-when-full mode: when its queue is full, the replay waits for the disk instead of dropping spills (a serving stack drops; an offline replay must not).")
    var store: String?

    @Option(help: "With --store: the store's size limit in bytes (default: room for every distinct block of the trace).")
    var storeLimitBytes: Int?

    @Flag(help: "Print one JSON object instead of a table.")
    var json = false

    func run() throws {
        var parsed = try Trace(contentsOf: trace, hashBlockTokens: hashBlockTokens)
        if let limit { parsed = parsed.prefix(limit) }
        let kvLayout = try KVLayout(spec: layout, blockSize: blockSize)
        // Every distinct block of the trace: one walk over it, shared by the memory check, the
        // default store limit and the default capacity.
        let unbounded = sweep || capacityBlocks == nil || (store != nil && storeLimitBytes == nil)
            ? unboundedCapacity(of: parsed, blockSize: kvLayout.blockSize) : nil
        if sweep || capacityBlocks == nil {
            try usageErrors { try checkUnboundedCapacity(parsed, layout: kvLayout, withPages: store != nil, blocks: unbounded) }
        }
        let bar = ProgressBar()
        let makeStore = try store.map { path in
            SpillStores.factory(path: path, limitBytes: try storeLimitBytes ?? storeRoomForEveryBlock(parsed, layout: kvLayout, blocks: unbounded),
                                durable: false, whenQueueFull: .waitWhenFull)
        }
        if sweep {
            let list = try capacities.map(parseCapacities)
            let points = try KVTools.sweep(parsed, layout: kvLayout, capacities: list, makeStore: makeStore, progress: { bar.show($0, $1, "capacities") })
            bar.finish()
            // The results first: a chart that cannot be written must not cost the sweep's output.
            if json { try printJSON(points) } else { printSweepTable(points) }
            if let chart {
                let title = "Prefix-cache hit rate: \((trace as NSString).lastPathComponent), block \(blockSize)"
                do {
                    try HitRateChart(points: points, title: title).svg().write(toFile: chart, atomically: true, encoding: .utf8)
                } catch {
                    FileHandle.standardError.write(Data("kvctl replay: cannot write the chart to \(chart): \(error.localizedDescription)\n".utf8))
                    throw ExitCode.failure
                }
            }
        } else {
            let options = ReplayOptions(layout: kvLayout, capacityBlocks: capacityBlocks ?? unbounded, makeStore: makeStore)
            let result = try KVTools.replay(parsed, options: options, progress: { bar.show($0, $1, "requests") })
            bar.finish()
            if json { try printJSON(result) } else { printTable(result) }
        }
    }

    func validate() throws {
        var options = ReplayCommandOptions()
        options.hashBlockTokens = hashBlockTokens
        options.blockSize = blockSize
        options.capacityBlocks = capacityBlocks
        options.layout = layout
        options.limit = limit
        options.sweep = sweep
        options.capacities = try capacities.map(parseCapacities)
        options.chart = chart
        options.store = store
        options.storeLimitBytes = storeLimitBytes
        try usageErrors { try options.validate() }
    }

    private func parseCapacities(_ text: String) throws -> [Int] {
        try text.split(separator: ",", omittingEmptySubsequences: false).map {
            guard let n = Int($0.trimmingCharacters(in: .whitespaces)), n > 0 else {
                throw ValidationError("--capacities: \"\($0)\" is not a positive block count")
            }
            return n
        }
    }

    private func printJSON<T: Encodable>(_ value: T) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        print(String(decoding: try encoder.encode(value), as: UTF8.self))
    }

    private func printTable(_ r: ReplayResult) {
        var rows: [(String, String)] = [
            ("requests", "\(r.requests) (\(r.rejectedRequests) rejected)"),
            ("capacity blocks", "\(r.capacityBlocks)"),
            ("prompt tokens", "\(r.promptTokens)"),
            ("hit tokens (memory)", "\(r.hitTokens)"),
            ("hit tokens (store)", "\(r.storeHitTokens)"),
            ("hit rate", String(format: "%.2f%%", r.hitRate * 100)),
            ("evicted / spilled / restored blocks", "\(r.evictedBlocks) / \(r.spilledBlocks) / \(r.restoredBlocks)"),
            ("seconds", String(format: "%.3f (prompts %.3f, admit %.3f, release %.3f)", r.seconds, r.materializeSeconds, r.admitSeconds, r.releaseSeconds)),
            ("prompt tokens / s", String(format: "%.1fM", r.tokensPerSecond / 1e6)),
        ]
        if let c = r.storeCounters {
            rows.append(("store flush after the loop", String(format: "%.3f s", r.storeFlushSeconds)))
            rows.append(("store records written / failed", "\(c.recordsWritten) / \(c.recordsFailed)"))
            rows.append(("store spills dropped / waited", "\(c.spillsDroppedQueueFull) / \(c.spillWaits)"))
            rows.append(("store LRU evictions (by pages)", "\(c.lruEvictions) (\(c.mapRoomEvictions))"))
        }
        let width = rows.map(\.0.count).max() ?? 0
        for (k, v) in rows { print(k.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + v) }
    }

    private func printSweepTable(_ points: [SweepPoint]) {
        let store = points.contains { $0.withStore != nil }
        print("capacity  fraction  hit rate" + (store ? "  +store" : "") + "  evicted")
        for p in points {
            var line = String(format: "%8d  %7.1f%%  %7.2f%%", p.capacityBlocks, p.fraction * 100, p.memoryOnly.hitRate * 100)
            if let s = p.withStore { line += String(format: "  %6.2f%%", s.hitRate * 100) }
            print(line + "  \(p.memoryOnly.evictedBlocks)")
        }
    }
}
