import Foundation

/// The CPU a benchmark ran on, printed in its header and kept in its JSON: figures from two
/// hosts do not compare. (This project's VM moved from a Zen 4 to a Zen 5 core mid-project,
/// which doubled the bf16 multiply rate and halved the attention kernel's roofline.)
public enum MachineInfo {
    /// E.g. "AMD EPYC, family 26 model 2, 2 CPUs": `/proc/cpuinfo`'s model name, family and
    /// model of the first processor, and the CPUs this process may use; the model name alone
    /// (or "unknown") where there is no `/proc/cpuinfo`.
    public static let cpu: String = describe(cpuinfo: try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
                                             cpus: ProcessInfo.processInfo.activeProcessorCount)

    /// The description of `cpu` from the text of a `/proc/cpuinfo` (nil: not readable).
    static func describe(cpuinfo: String?, cpus: Int) -> String {
        var fields: [String: String] = [:]
        for line in (cpuinfo ?? "").split(separator: "\n", omittingEmptySubsequences: false) {
            if line.isEmpty && !fields.isEmpty { break }  // the first processor's block only
            let parts = line.split(separator: ":", maxSplits: 1)
            guard parts.count == 2 else { continue }
            let key = parts[0].trimmingCharacters(in: .whitespaces), value = parts[1].trimmingCharacters(in: .whitespaces)
            if fields[key] == nil { fields[key] = value }
        }
        var text = fields["model name"] ?? fields["Model"] ?? "unknown"
        if let family = fields["cpu family"], let model = fields["model"] { text += ", family \(family) model \(model)" }
        return text + ", \(cpus) CPU\(cpus == 1 ? "" : "s")"
    }
}
