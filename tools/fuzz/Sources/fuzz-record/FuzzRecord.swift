// Harness: the spill record decoder (RecordView) and the restore decision (RestoreOutcome.check),
// in process, on record bytes as LMDB would hand them back.
//
// Input: byte 0 = mode. Bits 0-1: 0 raw record bytes (the request is whatever the record
// claims: key, namespace, tokens), 1-3 edits applied to a real record the store wrote (the request
// is that record's original one). Bit 2: recompute the checksum after the edits (so the fuzzer gets
// past XXH64 and reaches the checks behind it).
//
// Properties:
// - parsing never traps; a parsed view's lengths add up to the value's size and every slice is inside it;
// - a verified hit hands `fill` exactly `payloadBytes` bytes (the request's size when it needs KV);
// - without resealing, a hit on an edited real record means the edits changed nothing: the record
//   is byte-identical to what the store wrote, so the KV is the original KV;
// - with resealing, a hit round-trips: re-encoding the request (key, namespace, tokens, layout) with
//   the decoded payload and time gives the same bytes (the reserved word and padding are required zero).
import FuzzSupport
import KVCache
import KVCore
@testable import KVSpill

nonisolated(unsafe) var realBlocks: [SpilledBlock] = []

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    let dir = makeTemporaryDirectory("record")
    defer { removeTree(dir) }
    do { realBlocks = try buildRealStore(at: dir) } catch { require(false, "building the real store: \(error)") }
    if let seeds = seedDirectory {
        for (i, b) in realBlocks.enumerated() {
            writeFile("\(seeds)/raw-\(i)", [0] + b.value)
            writeFile("\(seeds)/raw-resealed-\(i)", [4] + b.value)
            writeFile("\(seeds)/edit-\(i)", [1, UInt8(i), 0, 20, 0, 1])
            writeFile("\(seeds)/edit-resealed-\(i)", [5, UInt8(i), 4, 100, 0, 4, 0, 0xAA, 0xBB, 0xCC, 0xDD])
        }
    }
    return 0
}

func reseal(_ v: inout [UInt8]) {
    guard v.count >= SpillRecord.checksummedFrom else { return }
    v.withUnsafeMutableBytes { SpillRecord.seal($0) }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    var r = ByteReader(Array(UnsafeBufferPointer(start: data, count: size)))
    let mode = r.u8()
    let resealed = mode & 4 != 0
    var value: [UInt8]
    var original: SpilledBlock?
    if mode & 3 == 0 {
        value = r.remaining
    } else {
        let block = realBlocks[Int(r.u8()) % realBlocks.count]
        original = block
        value = applyEdits(block.value, &r, maxEdits: 16)
    }
    if resealed { reseal(&value) }
    value.withUnsafeBytes { bytes in check(bytes, original: original, resealed: resealed) }
    return 0
}

func check(_ bytes: UnsafeRawBufferPointer, original: SpilledBlock?, resealed: Bool) {
    let view: RecordView
    do { view = try RecordView(bytes) } catch {
        require(!RecordView.sizeIsIntact(bytes), "sizeIsIntact disagrees with the parser")
        if let original { requireMiss(bytes, original) }
        return
    }
    require(RecordView.sizeIsIntact(bytes), "sizeIsIntact disagrees with the parser")
    let offset = SpillRecord.payloadOffset(namespaceBytes: view.namespaceBytes, tokenCount: view.tokenCount)
    require(offset + view.payloadBytes == bytes.count, "lengths do not add up")
    require(view.tokens.count == 4 * view.tokenCount && view.namespace.count == view.namespaceBytes
            && view.payload.count == view.payloadBytes && view.key.count == 32, "slice sizes")
    require(SpillRecord.fixedHeaderBytes + 4 * view.tokenCount + view.namespaceBytes <= offset, "namespace runs into the payload")

    // The request: the original block's, or whatever the record claims (raw mode).
    let key = original?.keyBytes ?? Array(view.key)
    let ns = original.map { Array($0.namespace.rawValue.utf8) } ?? Array(view.namespace)
    let tokens = original?.tokens ?? view.tokenArray
    for needed in [Optional(fuzzLayout.blockBytes), nil] {
        var filled: [UInt8]?
        let outcome = key.withUnsafeBytes { k in
            tokens.withUnsafeBufferPointer { t in
                RestoreOutcome.check(bytes, key: k, layout: fuzzLayout, namespace: ns, tokens: t, payloadBytes: needed) { filled = Array($0) }
            }
        }
        guard outcome == .hit else {
            require(filled == nil, "fill called on \(outcome)")
            continue
        }
        require(filled != nil, "a hit without fill")
        if let needed { require(filled!.count == needed, "filled \(filled!.count) bytes, needed \(needed)") }
        require(filled! == Array(view.payload), "filled bytes are not the record's payload")
        if let original, !resealed {
            require(Array(bytes) == original.value, "an edited record verified: its KV may differ from what was spilled")
            require(original.payload == nil || filled!.isEmpty || filled! == original.payload!, "hit with other KV than spilled")
        }
        // Round trip: the request re-encoded gives the same record.
        var again = [UInt8](repeating: 0, count: bytes.count)
        again.withUnsafeMutableBytes { out in
            var k = key
            let prefixKey = k.withUnsafeMutableBytes { PrefixKey(bytes: UnsafeRawBufferPointer($0)) }
            let payload = tokens.withUnsafeBufferPointer { t in
                SpillRecord.writeHeader(into: out, key: prefixKey, layout: fuzzLayout, namespace: ns, tokens: t,
                                        payloadBytes: view.payloadBytes, writtenAtMillis: view.writtenAtMillis)
            }
            payload.copyMemory(from: view.payload)
            SpillRecord.seal(out)
        }
        // Nothing masked: the decoder requires the reserved word and the padding to be zero.
        require(Array(bytes) == again, "a verified record does not round-trip (decode -> encode)")
    }
}

/// A record that does not parse must never hit.
func requireMiss(_ bytes: UnsafeRawBufferPointer, _ original: SpilledBlock) {
    let outcome = original.keyBytes.withUnsafeBytes { k in
        original.tokens.withUnsafeBufferPointer { t in
            RestoreOutcome.check(bytes, key: k, layout: fuzzLayout, namespace: Array(original.namespace.rawValue.utf8), tokens: t,
                                 payloadBytes: fuzzLayout.blockBytes) { _ in require(false, "fill called for a record that does not parse") }
        }
    }
    require(outcome != .hit, "a record that does not parse was a hit")
}
