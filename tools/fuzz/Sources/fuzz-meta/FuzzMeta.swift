// Harness: the JSON meta records a store keeps and `kvctl stats` renders — `stats` (the live
// KVCacheStats record, PublishedStats) and `layout` (KVLayout) — decoded exactly as
// StoreDatabase does (JSONDecoder), then rendered by StoreStats.text and StoreStats.json.
//
// Input: byte 0 bit 0 selects the record (0 stats, 1 layout); the rest is the record's bytes.
//
// Properties: decoding throws or gives a value that re-encodes and decodes to itself; a decoded
// layout is valid (positive dimensions, block bytes that fit an Int); rendering a report holding
// the decoded record never traps.
import Foundation
import FuzzSupport
import KVCache
import KVCore
@testable import KVSpill
import KVToolsSubset
import LMDB

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    guard let seeds = seedDirectory else { return 0 }
    // The records a real store holds.
    let dir = makeTemporaryDirectory("meta")
    defer { removeTree(dir) }
    do {
        _ = try buildRealStore(at: dir)
        let env = try Environment(path: dir, configuration: .init(mapSize: 0, maxDatabases: 8, flags: [.noTLS, .readOnly]))
        defer { env.close() }
        let meta = try env.openDatabase("meta")
        try env.withReadTransaction { txn in
            if let s = try txn.copyValue(for: "stats", in: meta) { writeFile("\(seeds)/stats", [0] + s) }
            if let l = try txn.copyValue(for: "layout", in: meta) { writeFile("\(seeds)/layout", [1] + l) }
        }
    } catch { require(false, "building the real store: \(error)") }
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let json = Data(UnsafeBufferPointer(start: data + 1, count: size - 1))
    var report = SpillStoreReport(path: "/fuzz", formatVersion: 2, layout: fuzzLayout, model: "fuzz", entries: 0, blocks: 0, bytes: 0,
                                  tokens: 0, mapSizeBytes: 1 << 20, mapUsedBytes: 4096, pageSize: 4096, entriesPerNamespace: [:],
                                  unreadableEntries: 0)
    if data[0] & 1 == 0 {
        guard let published = try? JSONDecoder().decode(PublishedStats.self, from: json) else { return 0 }
        let again = try? JSONDecoder().decode(PublishedStats.self, from: JSONEncoder().encode(published))
        require(again == published, "stats record does not round-trip")
        let now = nowMillis()
        report.cache = published.stats
        report.cacheAgeSeconds = Double(now > published.savedAtMillis ? now - published.savedAtMillis : 0) / 1000
    } else {
        guard let layout = try? JSONDecoder().decode(KVLayout.self, from: json) else { return 0 }
        require(layout.layerCount > 0 && layout.kvHeadCount > 0 && layout.headDim > 0 && layout.blockSize > 0
                && layout.blockBytes > 0 && layout.bytesPerToken > 0, "an invalid layout decoded: \(layout)")
        let again = try? JSONDecoder().decode(KVLayout.self, from: JSONEncoder().encode(layout))
        require(again == layout, "layout record does not round-trip")
        report.layout = layout
    }
    _ = StoreStats.text(report)
    _ = try? StoreStats.json(report)
    return 0
}
