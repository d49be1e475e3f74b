import ArgumentParser

struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "stats")
    func run() throws { throw NotImplemented(what: "kvctl stats") }
}
