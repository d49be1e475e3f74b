import ArgumentParser

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "demo")
    func run() throws { throw NotImplemented(what: "kvctl demo") }
}
