import Foundation
import KVTools

/// The checked-in trace slice (first 300 lines of the Mooncake conversation trace), found from
/// this file's path since the test target declares no resources.
enum Fixture {
    static var conversationPath: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/traces/conversation_trace_first300.jsonl").path
    }

    static func conversation() throws -> Trace { try Trace(contentsOf: conversationPath) }
}
