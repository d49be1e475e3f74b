import Foundation
import KVSpill

/// What `kvctl stats --store PATH` prints: the spill store and the cache's live record, as
/// `mdb_stat`-style sections of indented `Key: value` lines, or as one JSON object.
public enum StoreStats {
    /// Opens the store read-only (beside a writing process) and reports it.
    public static func report(path: String) throws(SpillStoreError) -> SpillStoreReport {
        try SpillStoreReport.inspect(path: path)
    }

    public static func text(_ r: SpillStoreReport) -> String {
        var lines = ["Spill store: \(r.path)"]
        func add(_ key: String, _ value: String) { lines.append("  \(key): \(value)") }
        add("Format version", "\(r.formatVersion)")
        add("Layout", r.layout.description)
        add("Model", r.model.isEmpty ? "(unlabelled)" : String(reflecting: r.model))
        add("Entries", "\(r.entries)")
        add("Blocks", "\(r.blocks)")
        add("Tokens", "\(r.tokens)")
        add("Bytes", "\(r.bytes) (\(mebibytes(r.bytes)))")
        add("Map size", "\(r.mapSizeBytes) (\(mebibytes(r.mapSizeBytes)))")
        add("Map used", "\(r.mapUsedBytes) (\(fixed(100 * Double(r.mapUsedBytes) / Double(max(r.mapSizeBytes, 1)), 1))%)")
        add("Page size", "\(r.pageSize)")
        add("Oldest entry age", r.oldestEntryAgeSeconds.map { "\(fixed($0, 1)) s" } ?? "-")
        add("Newest entry age", r.newestEntryAgeSeconds.map { "\(fixed($0, 1)) s" } ?? "-")
        add("Unreadable entries", "\(r.unreadableEntries)")
        lines.append("Entries per namespace:")
        if r.entriesPerNamespace.isEmpty { lines.append("  (none)") }
        for (ns, n) in r.entriesPerNamespace.sorted(by: { $0.key < $1.key }) { add(ns.isEmpty ? "\"\"" : ns, "\(n)") }
        guard let c = r.cache else {
            lines.append(r.cacheRecordUnreadable ? "Live record: unreadable (damaged)" : "Live record: none published yet")
            return lines.joined(separator: "\n")
        }
        lines.append("Live record (age \(fixed(r.cacheAgeSeconds ?? 0, 1)) s):")
        add("Capacity blocks", "\(c.capacityBlocks)")
        add("Used blocks", "\(c.usedBlocks)")
        add("Cached blocks", "\(c.cachedBlocks)")
        add("Shared blocks", "\(c.sharedBlocks)")
        add("Live sequences", "\(c.liveSequences)")
        add("Dedup ratio", fixed(c.dedupRatio, 2))
        add("Query tokens", "\(c.queryTokens)")
        add("Hit tokens", "\(c.hitTokens)")
        add("Store hit tokens", "\(c.storeHitTokens)")
        add("Hit rate", "\(fixed(100 * c.hitRate, 1))%")
        add("Evicted blocks", "\(c.evictedBlocks)")
        add("Spilled blocks", "\(c.spilledBlocks)")
        add("Restored blocks", "\(c.restoredBlocks)")
        add("Allocations failed", "\(c.allocationsFailed)")
        return lines.joined(separator: "\n")
    }

    /// `{"store": {...}, "cache": {...} | null}` with sorted keys.
    public static func json(_ r: SpillStoreReport) throws -> String {
        var store: [String: Any] = [
            "path": r.path, "formatVersion": r.formatVersion, "model": r.model, "entries": r.entries, "blocks": r.blocks, "tokens": r.tokens,
            "bytes": r.bytes, "mapSizeBytes": r.mapSizeBytes, "mapUsedBytes": r.mapUsedBytes, "pageSize": r.pageSize,
            "unreadableEntries": r.unreadableEntries, "entriesPerNamespace": r.entriesPerNamespace,
            "layout": try JSONSerialization.jsonObject(with: JSONEncoder().encode(r.layout)),
        ]
        store["oldestEntryAgeSeconds"] = r.oldestEntryAgeSeconds ?? NSNull()
        store["newestEntryAgeSeconds"] = r.newestEntryAgeSeconds ?? NSNull()
        var cache: Any = NSNull()
        if let c = r.cache, var fields = try JSONSerialization.jsonObject(with: JSONEncoder().encode(c)) as? [String: Any] {
            fields["ageSeconds"] = r.cacheAgeSeconds ?? NSNull()
            fields["hitRate"] = c.hitRate
            fields["dedupRatio"] = c.dedupRatio
            cache = fields
        }
        let data = try JSONSerialization.data(withJSONObject: ["store": store, "cache": cache], options: [.sortedKeys])
        return String(decoding: data, as: UTF8.self)
    }

    private static func mebibytes(_ bytes: Int) -> String { "\(fixed(Double(bytes) / 1_048_576, 1)) MiB" }
}
