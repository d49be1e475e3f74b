import KVCore

/// What a stored record means for one restore request.
enum RestoreOutcome: Equatable {
    /// Verified and copied out.
    case hit
    /// No record under the key.
    case absent
    /// A good record without the KV the request needs (written by a metadata-only manager).
    case payloadMissing
    /// The record must not be used and should be dropped: it does not parse, has another
    /// layout, was written under another key, holds other tokens or namespace than its key
    /// promises, or fails its checksum.
    case defect(String)

    /// Checks `bytes`, found under `key`, against the request, in order of cost, and only after
    /// everything verifies hands the payload to `fill`. `payloadBytes` nil: the caller needs no
    /// KV (no arena).
    static func check(_ bytes: UnsafeRawBufferPointer, key: UnsafeRawBufferPointer, layout: KVLayout, namespace: [UInt8],
                      tokens: UnsafeBufferPointer<TokenID>, payloadBytes needed: Int?,
                      fill: (UnsafeRawBufferPointer) -> Void) -> RestoreOutcome {
        let view: RecordView
        do { view = try RecordView(bytes) } catch { return .defect("\(error)") }
        guard view.matches(layout) else { return .defect("written for another layout") }
        // The tokens name only the last block; the key names the whole prefix history.
        guard view.belongs(under: key) else { return .defect("written under another prefix key") }
        guard view.holds(namespace: namespace, tokens: tokens) else { return .defect("holds other tokens or another namespace than its key") }
        if let needed, view.payloadBytes != needed { return .payloadMissing }
        do { try view.verifyChecksum() } catch { return .defect("checksum mismatch") }
        fill(view.payload)
        return .hit
    }
}
