// Documentation checks: every kvctl command line in README.md and docs/*.md parses and
// validates (nothing runs). The lines are read from the documents at test time, so a doc edit
// and a CLI change are both checked against each other.
import Foundation
import Testing
@testable import kvctl

/// The kvctl command lines of the package's documents: in fenced or indented code, `kvctl`
/// invoked as a command (at the start of the line, as a path `…/kvctl`, or by `swift run`),
/// with lines using placeholders (`PATH`, `N`, `$b`, `[...]`) left out.
enum DocCommands {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static let subcommands: Set<String> = ["demo", "stats", "replay", "bench", "stress"]

    static func lines() -> [String] {
        let docs = root.appendingPathComponent("docs")
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: docs.path)) ?? [])
            .filter { $0.hasSuffix(".md") }.sorted().map { "docs/" + $0 }
        var found: [String] = []
        for name in ["README.md"] + names {
            guard let text = try? String(contentsOf: root.appendingPathComponent(name), encoding: .utf8) else { continue }
            var fenced = false
            for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let trimmed = line.trimmingCharacters(in: .whitespaces)
                if trimmed.hasPrefix("```") { fenced.toggle(); continue }
                guard fenced || line.hasPrefix("    ") else { continue }
                if let args = command(in: String(line)) { found.append("\(name):\(number + 1): \(args)") }
            }
        }
        return found
    }

    /// The arguments after `kvctl` when the line runs it as a command, cut at a comment, a pipe,
    /// a redirection, `;` or a two-space gap (a usage table's description); nil otherwise.
    static func command(in line: String) -> String? {
        guard let range = line.range(of: "kvctl ") else { return nil }
        let before = line[..<range.lowerBound].trimmingCharacters(in: .whitespaces)
        guard before.isEmpty || before == "$" || before.hasSuffix("/") || before.hasSuffix("swift run")
                || before.hasSuffix("swift run -c release") else { return nil }
        var args = String(line[range.upperBound...])
        for stop in ["  ", "#", "|", ">", ";", "`"] {
            if let cut = args.range(of: stop) { args = String(args[..<cut.lowerBound]) }
        }
        args = args.trimmingCharacters(in: .whitespaces)
        let words = args.split(separator: " ").map(String.init)
        guard let first = words.first, subcommands.contains(first) else { return nil }
        let placeholder = words.contains { w in
            w.contains("$") || w.contains("[") || w.contains("…") || w.contains("...")
                || (w.count <= 6 && w.allSatisfy { $0.isUppercase })
        }
        return placeholder ? nil : args
    }
}

@Suite struct DocCommandsTests {
    /// The extraction itself: it must keep finding the documents' commands (a path or format
    /// change that made it find none would pass every line vacuously).
    @Test func theDocumentsNameManyCommands() {
        let lines = DocCommands.lines()
        #expect(lines.count >= 20, "found only \(lines)")
        #expect(lines.contains { $0.hasPrefix("README.md:") && $0.hasSuffix(": demo") })
        #expect(DocCommands.command(in: "    .build/release/kvctl bench attention --batch 32 --repeat 15        # one goal point")
                == "bench attention --batch 32 --repeat 15")
        #expect(DocCommands.command(in: "cache.publishStats()   // the last stats record for `kvctl stats`") == nil)
        #expect(DocCommands.command(in: "kvctl stress --threads N --seconds S --seed X") == nil)
    }

    @Test(arguments: DocCommands.lines())
    func parses(_ entry: String) {
        let args = entry.split(separator: ":", maxSplits: 2)[2].split(separator: " ").map(String.init)
        #expect(throws: Never.self, "\(entry)") { _ = try KVCtl.parseAsRoot(args) }
    }
}

/// README.md's Swift blocks and docs/SPILL.md's are copied into QuickStartTests.swift, where
/// they must compile; this checks the copies still say what the documents say, so an edit to
/// either side that is not made to the other fails here.
@Suite struct DocSnippetCopyTests {
    static func swiftBlocks(_ name: String) throws -> [[String]] {
        let text = try String(contentsOf: DocCommands.root.appendingPathComponent(name), encoding: .utf8)
        var blocks: [[String]] = [], current: [String]? = nil
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if current == nil, trimmed == "```swift" { current = []; continue }
            if current != nil, trimmed == "```" { blocks.append(current!); current = nil; continue }
            // imports sit at the top of the copy, outside the functions that hold the rest;
            // "…" marks an elision in the documents
            if !trimmed.isEmpty, !trimmed.hasPrefix("import "), trimmed != "…", trimmed != "// …" { current?.append(trimmed) }
        }
        return blocks
    }

    @Test(arguments: ["README.md", "docs/SPILL.md"])
    func theCompiledCopyMatches(_ name: String) throws {
        let copy = try String(contentsOf: URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("QuickStartTests.swift"), encoding: .utf8)
            .split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty && !$0.hasSuffix("// copy only") }
        let blocks = try Self.swiftBlocks(name)
        #expect(!blocks.isEmpty)
        for block in blocks {
            let found = copy.indices.contains { start in
                start + block.count <= copy.count && Array(copy[start..<start + block.count]) == block
            }
            #expect(found, "\(name): the Swift block starting `\(block.first ?? "")` is not copied verbatim into QuickStartTests.swift")
        }
    }
}
