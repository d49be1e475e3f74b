import ArgumentParser

struct Stress: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "stress")
    func run() throws { throw NotImplemented(what: "kvctl stress") }
}
