import Foundation
import KVCore

/// A command option with a value the tool cannot run with; `description` names the option and
/// what it allows. kvctl turns it into a usage error (exit 64) before anything runs, and the
/// library entry points throw it instead of trapping further in.
public struct OptionError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The option as typed on the command line, e.g. `--cached`.
    public var option: String
    public var reason: String

    public init(_ option: String, _ reason: String) {
        self.option = option
        self.reason = reason
    }

    public var description: String { "\(option) \(reason)" }
}

/// The checks the commands share.
public enum OptionChecks {
    /// Most threads any command starts (far more than the machines it runs on have cores).
    public static let maxThreads = 1024

    /// Fails unless `value` is in `range`, naming the range.
    public static func inRange<T: Comparable>(_ value: T, _ range: ClosedRange<T>, _ option: String) throws(OptionError) {
        guard range.contains(value) else { throw OptionError(option, "must be in \(range.lowerBound)...\(range.upperBound), got \(value)") }
    }

    /// Fails unless `value ≥ minimum`.
    public static func atLeast(_ value: Int, _ minimum: Int, _ option: String) throws(OptionError) {
        guard value >= minimum else { throw OptionError(option, "must be at least \(minimum), got \(value)") }
    }

    /// The machine's physical memory in bytes: no run can allocate more.
    public static var physicalMemoryBytes: Int { Int(clamping: ProcessInfo.processInfo.physicalMemory) }

    /// Bytes of `blocks` blocks of `bytesPerBlock`, or an error naming `option` when the product
    /// overflows, the block ids would not fit `BlockID`, or the total exceeds physical memory
    /// (an arena that large aborts on allocation instead of failing).
    @discardableResult
    public static func fitsInMemory(blocks: Int, bytesPerBlock: Int, _ option: String) throws(OptionError) -> Int {
        guard blocks < Int(Int32.max) else {
            throw OptionError(option, "is too large: \(blocks) blocks, block ids (Int32) allow fewer than \(Int32.max)")
        }
        let (bytes, overflow) = blocks.multipliedReportingOverflow(by: bytesPerBlock)
        guard !overflow else { throw OptionError(option, "is too large: \(blocks) blocks of \(bytesPerBlock) bytes overflow Int") }
        let memory = physicalMemoryBytes
        guard bytes <= memory else {
            throw OptionError(option, "is too large: \(blocks) blocks of \(bytesPerBlock) bytes need \(bytes >> 20) MiB, "
                                  + "more than this machine's \(memory >> 20) MiB of memory")
        }
        return bytes
    }

    /// Fails unless `layout` can be built, naming the option the error is about.
    public static func layout(_ make: () throws(KVLayoutError) -> KVLayout, _ option: String) throws(OptionError) -> KVLayout {
        do { return try make() } catch { throw OptionError(option, "is invalid: \(error)") }
    }
}

/// The options of `kvctl replay`, checked together (several only make sense with others).
public struct ReplayCommandOptions: Sendable {
    public var hashBlockTokens = 512
    public var blockSize = 16
    public var capacityBlocks: Int?
    public var layout = "1x1x8:fp16"
    public var limit: Int?
    public var sweep = false
    public var capacities: [Int]?
    public var chart: String?
    public var store: String?
    public var storeLimitBytes: Int?

    public init() {}

    /// Fails on a value out of range or an option that would be silently ignored, naming it.
    /// Nothing is run or written; the chart's directory is only checked to be writable, so a
    /// bad path fails now rather than after the whole sweep.
    public func validate() throws(OptionError) {
        try OptionChecks.inRange(hashBlockTokens, Trace.hashBlockTokensRange, "--hash-block-tokens")
        try OptionChecks.atLeast(blockSize, 1, "--block-size")
        let kvLayout = try OptionChecks.layout({ () throws(KVLayoutError) in try KVLayout(spec: layout, blockSize: blockSize) }, "--layout")
        if let limit { try OptionChecks.atLeast(limit, 1, "--limit") }
        if chart != nil && !sweep { throw OptionError("--chart", "needs --sweep") }
        if capacities != nil && !sweep { throw OptionError("--capacities", "needs --sweep; use --capacity-blocks for one run") }
        if capacityBlocks != nil && sweep { throw OptionError("--capacity-blocks", "is not used by --sweep; use --capacities") }
        if storeLimitBytes != nil && store == nil { throw OptionError("--store-limit-bytes", "needs --store") }
        // Per block: its token ids (and with a store, its pages) must fit in memory. Checked
        // before anything adds to a block's bytes: a layout whose block fits in `Int` may not
        // with its token ids (`--layout 1x1x144115188075855871 --store S` trapped here).
        let perBlock = try bytesPerBlock(kvLayout, withPages: store != nil)
        if let storeLimitBytes {
            // A replay with a store spills whole blocks: a limit below one record keeps nothing,
            // and only the JSON's recordsTooLarge would say so.
            let oneRecord = try smallestRecordBytes(kvLayout)
            guard storeLimitBytes >= oneRecord else {
                throw OptionError("--store-limit-bytes", "must hold at least one block's record (\(oneRecord) bytes for this layout), got \(storeLimitBytes)")
            }
        }
        if let capacityBlocks {
            try OptionChecks.atLeast(capacityBlocks, 1, "--capacity-blocks")
            try OptionChecks.fitsInMemory(blocks: capacityBlocks, bytesPerBlock: perBlock, "--capacity-blocks")
        }
        if let capacities {
            guard !capacities.isEmpty else { throw OptionError("--capacities", "needs at least one capacity") }
            for c in capacities {
                try OptionChecks.atLeast(c, 1, "--capacities")
                try OptionChecks.fitsInMemory(blocks: c, bytesPerBlock: perBlock, "--capacities")
            }
        }
        if let chart { try checkWritable(chart) }
    }

    /// The chart file must be creatable: its directory exists and is writable, and it is not a directory.
    private func checkWritable(_ path: String) throws(OptionError) {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) {
            guard !isDirectory.boolValue else { throw OptionError("--chart", "\(path) is a directory; give a file name") }
            guard FileManager.default.isWritableFile(atPath: path) else { throw OptionError("--chart", "\(path) is not writable") }
            return
        }
        let parent = (path as NSString).deletingLastPathComponent
        let directory = parent.isEmpty ? "." : parent
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw OptionError("--chart", "cannot write \(path): directory \(directory) does not exist")
        }
        guard FileManager.default.isWritableFile(atPath: directory) else {
            throw OptionError("--chart", "cannot write \(path): directory \(directory) is not writable")
        }
    }
}

/// A lower bound on one spilled block's record: its KV, its token ids and the fixed header (96
/// bytes; the namespace and padding add a little more): ``bytesPerBlock(_:withPages:)`` with
/// pages, plus the header. `Int.max` when the header overflows it.
func smallestRecordBytes(_ layout: KVLayout) throws(OptionError) -> Int {
    let (record, overflow) = try bytesPerBlock(layout, withPages: true).addingReportingOverflow(96)
    return overflow ? .max : record
}

/// Bytes one block takes in memory: its token ids, and its pages when `withPages`; an error
/// naming --layout when that overflows `Int`.
func bytesPerBlock(_ layout: KVLayout, withPages: Bool) throws(OptionError) -> Int {
    let (tokens, o1) = layout.blockSize.multipliedReportingOverflow(by: MemoryLayout<TokenID>.stride)
    let (total, o2) = tokens.addingReportingOverflow(withPages ? layout.blockBytes : 0)
    guard !o1, !o2 else {
        throw OptionError("--layout", "\(layout) is too large: a block's bytes and its token ids overflow Int")
    }
    return total
}

/// Fails unless the trace's unbounded capacity (every distinct block) fits in memory: token ids
/// per block, and pages too when a store is used (the manager then allocates them).
/// `blocks`: the trace's ``unboundedCapacity(of:blockSize:)``, when the caller has it already.
public func checkUnboundedCapacity(_ trace: Trace, layout: KVLayout, withPages: Bool, blocks: Int? = nil) throws(OptionError) {
    let perBlock = try bytesPerBlock(layout, withPages: withPages)
    try OptionChecks.fitsInMemory(blocks: blocks ?? unboundedCapacity(of: trace, blockSize: layout.blockSize), bytesPerBlock: perBlock,
                                  "the trace's unbounded capacity (give --capacity-blocks)")
}

/// A store limit with room for every distinct block of `trace` (payload, token ids and record
/// header), at least 64 MiB; an error naming --layout when that overflows `Int`. `blocks`: the
/// trace's ``unboundedCapacity(of:blockSize:)``, when the caller has it already.
public func storeRoomForEveryBlock(_ trace: Trace, layout: KVLayout, blocks: Int? = nil) throws(OptionError) -> Int {
    let (perRecord, o1) = layout.blockBytes.addingReportingOverflow(layout.blockSize * MemoryLayout<TokenID>.stride + 256)
    let blocks = blocks ?? unboundedCapacity(of: trace, blockSize: layout.blockSize)
    let (total, o2) = perRecord.multipliedReportingOverflow(by: blocks)
    guard !o1, !o2 else {
        throw OptionError("--layout", "\(layout) is too large: \(blocks) blocks of it overflow a store size; give --store-limit-bytes")
    }
    return max(64 << 20, total)
}
