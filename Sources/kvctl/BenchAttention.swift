import ArgumentParser

struct BenchAttention: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "attention")
    func run() throws { throw NotImplemented(what: "kvctl attention") }
}
