import ArgumentParser

struct BenchStore: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "store")
    func run() throws { throw NotImplemented(what: "kvctl store") }
}
