import ArgumentParser

struct BenchMemory: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "memory")
    func run() throws { throw NotImplemented(what: "kvctl memory") }
}
