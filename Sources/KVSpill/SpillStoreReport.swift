import Foundation
import KVCache
import KVCore
import LMDB

/// What a spill store holds, for `kvctl stats`: read from one snapshot, beside a live writer.
public struct SpillStoreReport: Sendable, Codable, Equatable {
    /// The store's directory.
    public var path: String
    /// The record format version the store was created with.
    public var formatVersion: Int
    /// The layout the store holds.
    public var layout: KVLayout
    /// The model the store was created under (`""`: unlabelled).
    public var model: String
    /// Records stored.
    public var entries: Int
    /// Records with a KV payload (the others hold tokens only: spilled with no arena).
    public var blocks: Int
    /// Sum of record sizes (what the size limit bounds).
    public var bytes: Int
    /// Tokens over all records.
    public var tokens: Int
    /// LMDB's current map size (the file's upper bound until the map grows again).
    public var mapSizeBytes: Int
    /// Bytes of the map in use: up to the last page written.
    public var mapUsedBytes: Int
    /// LMDB's page size.
    public var pageSize: Int
    /// Age of the oldest readable record, by the time it was written (nil when none).
    public var oldestEntryAgeSeconds: Double?
    /// Age of the newest readable record, by the time it was written (nil when none).
    public var newestEntryAgeSeconds: Double?
    /// Records per namespace name.
    public var entriesPerNamespace: [String: Int]
    /// Records that do not parse, are of another layout, or lie under another record's key.
    public var unreadableEntries: Int
    /// The stats the manager published last, and how old they are.
    public var cache: KVCacheStats?
    /// Seconds since that record was published.
    public var cacheAgeSeconds: Double?
    /// A stats record is there but does not decode (`cache` is then nil).
    public var cacheRecordUnreadable = false

    /// Opens the store at `path` read-only (works while another process writes it) and reports it.
    public static func inspect(path: String) throws(SpillStoreError) -> SpillStoreReport {
        let db = try StoreDatabase.openReadOnly(path: path)
        defer { db.close() }
        return try db.report()
    }
}

extension LMDBSpillStore {
    /// The report of this open store (committed state; ``flush()`` first to include queued spills).
    /// Throws ``SpillStoreError/closed(path:)`` after ``close()``.
    public func report() throws(SpillStoreError) -> SpillStoreReport {
        guard isOpen else { throw .closed(path: configuration.path) }
        do { return try database.report() } catch .lmdb(_, .environmentClosed) { throw .closed(path: configuration.path) }
    }
}

extension StoreDatabase {
    /// Counts per namespace, keyed by name. Two namespaces whose names are one `String` under
    /// Unicode canonical equivalence ("café" composed and decomposed) but differ in bytes are two
    /// tenants: the later one (in byte order) gets its UTF-8 bytes appended to its key, so the
    /// report never merges them.
    static func namesByBytes(_ counts: [[UInt8]: Int]) -> [String: Int] {
        var out: [String: Int] = [:]
        for (bytes, n) in counts.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) {
            var name = String(decoding: bytes, as: UTF8.self)
            if out[name] != nil { name += " [utf8 " + bytes.map { String($0, radix: 16) }.joined(separator: " ") + "]" }
            out[name] = n
        }
        return out
    }

    func report() throws(SpillStoreError) -> SpillStoreReport {
        let now = nowMillis()
        func age(_ ms: UInt64) -> Double { Double(now > ms ? now - ms : 0) / 1000 }
        do {
            let info = try env.info()
            let pageSize = try env.stat().pageSize
            var r = SpillStoreReport(path: path, formatVersion: Int(SpillRecord.formatVersion), layout: layout, model: model, entries: 0, blocks: 0,
                                     bytes: 0, tokens: 0, mapSizeBytes: info.mapSize, mapUsedBytes: (info.lastPageNumber + 1) * pageSize,
                                     pageSize: pageSize, entriesPerNamespace: [:], unreadableEntries: 0)
            var oldest = UInt64.max, newest = UInt64.min
            var perNamespace: [[UInt8]: Int] = [:]  // by bytes, as the store keys them
            try env.withReadTransaction { txn in
                try txn.forEach(in: entries) { key, value in
                    r.entries += 1
                    r.bytes += value.count
                    guard let view = try? RecordView(value), view.matches(layout), view.belongs(under: key) else {
                        r.unreadableEntries += 1
                        return true
                    }
                    if view.payloadBytes > 0 { r.blocks += 1 }
                    r.tokens += view.tokenCount
                    perNamespace[Array(view.namespace), default: 0] += 1
                    oldest = min(oldest, view.writtenAtMillis)
                    newest = max(newest, view.writtenAtMillis)
                    return true
                }
            }
            r.entriesPerNamespace = Self.namesByBytes(perNamespace)
            if r.entries > r.unreadableEntries {
                r.oldestEntryAgeSeconds = age(oldest)
                r.newestEntryAgeSeconds = age(newest)
            }
            switch try storedStats() {
            case .success(let published):
                r.cache = published.stats
                r.cacheAgeSeconds = age(published.savedAtMillis)
            case .failure: r.cacheRecordUnreadable = true
            case nil: break
            }
            return r
        } catch {
            throw .lmdb(path: path, error as? LMDBError ?? .invalid)
        }
    }
}
