import ArgumentParser

struct BenchCache: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cache")
    func run() throws { throw NotImplemented(what: "kvctl cache") }
}
