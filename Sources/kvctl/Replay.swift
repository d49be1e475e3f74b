import ArgumentParser

struct Replay: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "replay")
    func run() throws { throw NotImplemented(what: "kvctl replay") }
}
