import ArgumentParser
import Foundation
import KVTools

/// `kvctl stats --store PATH`: what a spill store holds and the cache's last published stats.
struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats",
        abstract: "Show a spill store and the cache's live stats record (read-only; safe beside a running cache).")

    @Option(help: "The spill store directory.")
    var store: String

    @Flag(help: "Print one JSON object with keys \"store\" and \"cache\".")
    var json = false

    func run() throws {
        do {
            let report = try StoreStats.report(path: store)
            print(json ? try StoreStats.json(report) : StoreStats.text(report))
        } catch {
            // One line, non-zero exit: scripts check the status, people read the line.
            FileHandle.standardError.write(Data("kvctl stats: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}
