import Foundation
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
}
