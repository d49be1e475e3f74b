import Testing
import KVCore
@testable import KVTools

/// `kvctl bench write` on a tiny shape: one point per dtype asked for, with the figures its
/// table and JSON print all finite and positive, and bad options refused by name.
@Suite struct WriteBenchTests {
    @Test func aSmallRunReportsEveryDtype() throws {
        var bench = WriteBench()
        bench.kvHeads = 2
        bench.headDim = 16
        bench.blockSize = 4
        bench.layers = 3
        bench.decodeTokens = 5
        bench.prefillTokens = 9   // a partial last block
        bench.repeats = 3
        let points = try bench.run()
        #expect(points.map(\.dtype) == KVDType.allCases.map(\.rawValue))
        for p in points {
            let figures = [p.decodeStepMs, p.decodeStepEncodedMs, p.prefillMs, p.prefillEncodedMs, p.prefillElementLoopMs,
                           p.decodeNsPerElement, p.prefillNsPerElement, p.prefillGBps]
            #expect(figures.allSatisfy { $0.isFinite && $0 > 0 }, "\(p)")
            #expect(p.layers == 3 && p.decodeTokens == 5 && p.prefillTokens == 9)
        }
        #expect(WriteBench.table(points).contains("bf16"))
    }

    @Test(arguments: ["--layers", "--decode-tokens", "--head-dim", "--dtype"])
    func badOptionsAreRefusedByName(option: String) {
        var bench = WriteBench()
        switch option {
        case "--layers": bench.layers = 0
        case "--decode-tokens": bench.decodeTokens = -1
        case "--head-dim": bench.headDim = 5000
        default: bench.dtypes = []
        }
        #expect { try bench.validate() } throws: { error in (error as? OptionError)?.option == option }
    }
}
