import Foundation
import KVCache
import KVCore
import KVSpill
import KVTools
import Testing

/// `kvctl stats` on a real store: the model label appears in text and JSON.
@Suite struct StoreStatsTests {
    @Test(arguments: ["llama-3.1-8b@0e9e39f", ""])
    func theModelLabelIsReported(model: String) throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("prefixkv-stats-test-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let layout = try KVLayout(layerCount: 1, kvHeadCount: 1, headDim: 8, blockSize: 4, dtype: .float16)
        try LMDBSpillStore(SpillStoreConfiguration(path: dir, layout: layout, limitBytes: 1 << 20, model: model)).close()
        let report = try StoreStats.report(path: dir)
        #expect(report.model == model)
        let text = StoreStats.text(report)
        #expect(text.contains(model.isEmpty ? "  Model: (unlabelled)" : "  Model: \"\(model)\""))
        let json = try #require(try JSONSerialization.jsonObject(with: Data(StoreStats.json(report).utf8)) as? [String: Any])
        #expect((json["store"] as? [String: Any])?["model"] as? String == model)
    }

    /// The live record is JSON read from disk, written by whichever process: counters at the top
    /// of `Int` (a damaged or foreign record) must render, not trap. `hitRate` summed hit and
    /// store-hit tokens in `Int`, and `fixed` converted a finite Double past `Int.max` to `Int`;
    /// both trapped `kvctl stats`, text and JSON (found reviewing the decoders for tools/fuzz).
    @Test func aStatsRecordWithHugeCountersRendersWithoutTrapping() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("prefixkv-stats-test-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let layout = try KVLayout(layerCount: 1, kvHeadCount: 1, headDim: 8, blockSize: 4, dtype: .float16)
        let store = try LMDBSpillStore(SpillStoreConfiguration(path: dir, layout: layout, limitBytes: 1 << 20, writeMode: .synchronous))
        var stats = KVCacheStats()
        stats.queryTokens = 1
        stats.hitTokens = .max
        stats.storeHitTokens = .max
        stats.logicalBlocks = .max
        stats.physicalBlocks = 1
        store.publish(stats: stats)
        store.close()
        let report = try StoreStats.report(path: dir)
        #expect(report.cache == stats)
        #expect(report.cache?.hitRate == 2 * Double(Int.max))
        let text = StoreStats.text(report)
        #expect(text.contains("Hit rate: 1.8446744073709552e+21%"))
        #expect(text.contains("Dedup ratio: 9.223372036854776e+18"))
        let json = try #require(try JSONSerialization.jsonObject(with: Data(StoreStats.json(report).utf8)) as? [String: Any])
        #expect((json["cache"] as? [String: Any])?["hitRate"] as? Double == 2 * Double(Int.max))
    }

    @Test func fixedRendersEveryFiniteDouble() {
        #expect(fixed(12.345, 1) == "12.3")
        #expect(fixed(9.3e18, 0) == "9.3e+18")
        #expect(fixed(-1e300, 2) == "-1e+300")
        #expect(fixed(Double.greatestFiniteMagnitude) == "\(Double.greatestFiniteMagnitude)")
    }
}
