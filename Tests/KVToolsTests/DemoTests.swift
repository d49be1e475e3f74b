import Foundation
import KVCore
import KVSpill
import KVTools
import Testing

/// The demo end to end at a small size, on a real LMDB store in a temporary directory.
@Suite struct DemoTests {
    @Test func demoSpillsAndRestoresTheReturningRequestExactly() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("prefixkv-demo-test-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var options = Demo.Options()
        options.requests = 3
        options.samples = 4
        options.decodeSteps = 16
        options.systemPromptTokens = 64
        options.userPromptTokens = 64
        options.capacityBlocks = 20
        options.queryHeads = 4
        options.layout = try KVLayout(layerCount: 2, kvHeadCount: 2, headDim: 16, blockSize: 16, dtype: .float16)
        let store = try LMDBSpillStore(SpillStoreConfiguration(path: dir, layout: options.layout, limitBytes: 16 << 20))
        var lines: [String] = []
        let report = try Demo(options: options).run(store: store) { lines.append($0) }
        store.close()

        #expect(report.stats.spilledBlocks > 0)
        #expect(report.returningStoreTokens == 64, "the returning request's own blocks come back from the store")
        #expect(report.returningCachedTokens == 128)
        #expect(report.restoredMismatches == 0)
        #expect(report.maxRelativeError < 1e-2, "within the bf16-math bound of docs/ATTENTION.md")
        // Prefill attention ran over every request's uncached tokens: at least the user prompts
        // (the first request's system prompt too), per layer.
        #expect(report.prefillRows >= options.requests * options.userPromptTokens && report.prefillRows <= options.requests * 128)
        #expect(report.prefillPlanSeconds > 0 && report.prefillPagedSeconds > 0)
        #expect(Demo.summary(report).contains("prefill attention, step plan / paged"))
        #expect(report.stats.usedBlocks == 0)
        #expect(lines.count == options.requests + 2)
        let inspected = try SpillStoreReport.inspect(path: dir)
        #expect(inspected.entries > 0)
        #expect(inspected.cache?.storeHitTokens == 64)
    }

    /// The pool was fixed at 140 blocks, so `kvctl demo --steps 33` or `--samples 200` failed
    /// midway with "insufficient blocks"; it is now sized from the options (one request's peak)
    /// and so still small enough that each request evicts and spills the one before.
    @Test(arguments: [(samples: 4, steps: 50), (samples: 50, steps: 3), (samples: 3, steps: 200)])
    func poolIsSizedForMoreStepsAndSamples(samples: Int, steps: Int) throws {
        #expect(Demo.Options().neededBlocks == 108)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("prefixkv-demo-test-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var options = Demo.Options()
        options.requests = 3
        options.samples = samples
        options.decodeSteps = steps
        options.systemPromptTokens = 64
        options.userPromptTokens = 64
        options.queryHeads = 4
        options.layout = try KVLayout(layerCount: 2, kvHeadCount: 2, headDim: 16, blockSize: 16, dtype: .float16)
        #expect(options.poolBlocks > 20, "more than the fixed pool of the test above")
        let store = try LMDBSpillStore(SpillStoreConfiguration(path: dir, layout: options.layout, limitBytes: 16 << 20))
        let report = try Demo(options: options).run(store: store) { _ in }
        store.close()
        #expect(report.decodeSteps == options.requests * steps)
        #expect(report.stats.spilledBlocks > 0, "the sized pool still spills")
        #expect(report.returningStoreTokens == 64)
        #expect(report.restoredMismatches == 0)
        #expect(report.stats.usedBlocks == 0)
    }
}
