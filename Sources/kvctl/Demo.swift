import ArgumentParser
import KVSpill
import KVTools

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "End-to-end demo: shared prompt, 32 samples, bifurcated decode, spill and restore.")

    @Option(help: "The LMDB store path (emptied first unless --keep-store; refused while another process writes it, or when its data.mdb is not a PrefixKV store; the store files go into the directory beside anything else there).") var store = "/tmp/prefixkv-demo.lmdb"
    @Flag(help: "Keep what the store already holds.") var keepStore = false
    @Option(help: "Requests that share the system prompt.") var requests = 4
    @Option(help: "Parallel samples per request.") var samples = 32
    @Option(help: "Decode steps per request.") var steps = 16

    private var options: KVTools.Demo.Options {
        var options = KVTools.Demo.Options()
        options.requests = requests
        options.samples = samples
        options.decodeSteps = steps
        return options
    }

    func validate() throws {
        try usageErrors { try options.validate() }
    }

    func run() throws {
        let options = self.options
        if !keepStore { try LMDBSpillStore.remove(path: store) }
        let spill = try LMDBSpillStore(SpillStoreConfiguration(path: store, layout: options.layout, limitBytes: 256 << 20))
        print("store: \(store)")
        let report = try KVTools.Demo(options: options).run(store: spill) { print($0) }
        spill.close()
        print()
        print(KVTools.Demo.summary(report))
        print()
        print("$ kvctl stats --store \(store)")
        let stats = try Stats.parse(["--store", store])
        try stats.run()
    }
}
