import Foundation
import KVCore
@testable import KVTools
import Testing

/// `kvctl bench attention` at a tiny size, and the CPU line every bench prints.
@Suite struct AttentionBenchTests {
    /// One point: both kernels run on the same pages and agree, the read probe alternated with
    /// them; the machine limits fill the percentages; the JSON object has every key issue 3 names, and the CPU.
    @Test func aTinyPointHasEveryKeyOfTheIssue() throws {
        let bench = try AttentionBench(heads: 4, kvHeads: 2, headDim: 64, dtype: .bfloat16, blockSize: 16, maxBatch: 3, maxContext: 64,
                                       decode: 5, threads: 2, math: .automatic, flusher: MemoryBench(megabytes: 4))
        var p = try bench.measure(batch: 3, context: 64, repeats: 2)
        #expect(p.batch == 3 && p.context == 64 && p.decode == 5 && p.heads == 4 && p.kvHeads == 2 && p.headDim == 64)
        #expect(p.maxRelError <= 1e-2, "bifurcated vs paged: \(p.maxRelError)")
        #expect(p.pagedMs > 0 && p.bifurcatedMs > 0 && abs(p.speedup - p.pagedMs / p.bifurcatedMs) < 1e-9)
        #expect(p.readGBps > 0 && p.bifurcatedPctOfRoofline == nil)  // the probe ran between the kernels
        bench.annotate(&p, peakGFlops: 100)
        #expect(p.pagedPctOfBandwidth == 100 * p.pagedGBps / p.readGBps)
        #expect((p.bifurcatedRooflineMs ?? 0) > 0 && (p.bifurcatedPctOfRoofline ?? 0) > 0)
        let object = try JSONSerialization.jsonObject(with: JSONEncoder().encode(p)) as? [String: Any]
        let keys = ["batch", "context", "decode", "heads", "kvHeads", "headDim", "dtype", "threads", "pagedMs", "bifurcatedMs",
                    "speedup", "pagedGBps", "bifurcatedGBps", "maxRelError", "readGBps", "pagedPctOfBandwidth", "peakGFlops",
                    "bifurcatedPctOfRoofline", "cpu"]
        for key in keys { #expect(object?[key] != nil, "JSON lacks \(key)") }
        #expect(object?["cpu"] as? String == MachineInfo.cpu)
    }

    @Test func theCPUComesFromTheFirstProcessorOfCpuinfo() {
        let cpuinfo = """
            processor\t: 0
            vendor_id\t: AuthenticAMD
            cpu family\t: 26
            model\t\t: 2
            model name\t: AMD EPYC 9B45

            processor\t: 1
            cpu family\t: 25
            model\t\t: 17
            model name\t: something else
            """
        #expect(MachineInfo.describe(cpuinfo: cpuinfo, cpus: 2) == "AMD EPYC 9B45, family 26 model 2, 2 CPUs")
        #expect(MachineInfo.describe(cpuinfo: "processor : 0\nModel : Raspberry Pi 5\n", cpus: 1) == "Raspberry Pi 5, 1 CPU")
        #expect(MachineInfo.describe(cpuinfo: nil, cpus: 4) == "unknown, 4 CPUs")
        #if os(Linux) && arch(x86_64)
        #expect(MachineInfo.cpu.contains(", family "), "\(MachineInfo.cpu)")
        #endif
    }
}
