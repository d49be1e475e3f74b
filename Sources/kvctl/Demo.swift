import ArgumentParser
import KVTools

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "End-to-end demo: shared prompt, 32 samples, bifurcated decode, spill and restore.")

    @Option(help: "The LMDB store path (cleared first unless --keep-store).") var store = "/tmp/prefixkv-demo.lmdb"
    @Flag(help: "Keep what the store already holds.") var keepStore = false
    @Option(help: "Requests that share the system prompt.") var requests = 4
    @Option(help: "Parallel samples per request.") var samples = 32
    @Option(help: "Decode steps per request.") var steps = 16

    func run() throws {
        var options = KVTools.Demo.Options()
        options.requests = requests
        options.samples = samples
        options.decodeSteps = steps
        let report = try KVTools.Demo(options: options).run(store: nil) { print($0) }
        print()
        print(KVTools.Demo.summary(report))
    }
}
