import KVCache
import KVCore

/// The value stored for one spilled block: a fixed header, the prefix key it was written
/// under, the block's tokens, the namespace, then the KV payload (every layer, K then V, in
/// `KVPageArena.copyOut` order).
///
/// ```
///  0  magic "PKVS"            4   format version (u16) = 2, flags (u16, 0)
///  8  checksum: XXH64 of bytes 16..<end
/// 16  layers, kv heads, head dim, block size, dtype code      (u32 each: the layout fingerprint)
/// 36  namespace bytes (u32)  40  token count (u32)  44  reserved (u32, 0; read: must be 0)
/// 48  payload bytes (u64: 0 for a token-only record, else the layout's block bytes)
/// 56  written at (u64, Unix milliseconds)
/// 64  prefix key (32 bytes, digest order): the LMDB key the record belongs under
/// 96  tokens (Int32 LE, 4-aligned), namespace (UTF-8), zero padding to 16 (read: must be 0), payload
/// ```
///
/// All integers are little-endian. The checksum covers everything after itself, so a torn
/// write, a flipped bit in the tokens or a payload cut short all fail verification. The key
/// ties the record to its whole prefix history: the tokens name only the last block, so a
/// record that ended up under another prefix's key whose last block has the same tokens
/// would otherwise pass every check. Version 1 (no key, tokens at 64) is not read.
enum SpillRecord {
    static let magic: UInt32 = 0x5356_4B50  // "PKVS" as little-endian bytes
    static let formatVersion: UInt16 = 2
    static let keyOffset = 64
    static let keyBytes = 32
    static let fixedHeaderBytes = 96
    static let checksummedFrom = 16

    /// Bytes of the header, tokens and namespace, padded so the payload starts 16-byte aligned.
    static func payloadOffset(namespaceBytes: Int, tokenCount: Int) -> Int {
        (fixedHeaderBytes + namespaceBytes + 4 * tokenCount + 15) & ~15
    }

    /// Writes everything but the checksum into `record` (sized `payloadOffset + payloadBytes`)
    /// and returns the payload region for the caller to fill. ``seal(_:)`` then adds the checksum.
    static func writeHeader(into record: UnsafeMutableRawBufferPointer, key: PrefixKey, layout: KVLayout, namespace: [UInt8],
                            tokens: UnsafeBufferPointer<TokenID>, payloadBytes: Int, writtenAtMillis: UInt64) -> UnsafeMutableRawBufferPointer {
        let offset = payloadOffset(namespaceBytes: namespace.count, tokenCount: tokens.count)
        invariant(record.count == offset + payloadBytes, "SpillRecord: buffer of \(record.count) bytes for a record of \(offset + payloadBytes)")
        func put<T: FixedWidthInteger>(_ v: T, at o: Int) { record.storeBytes(of: v.littleEndian, toByteOffset: o, as: T.self) }
        put(magic, at: 0)
        put(formatVersion, at: 4)
        put(UInt16(0), at: 6)
        put(UInt64(0), at: 8)
        put(UInt32(layout.layerCount), at: 16)
        put(UInt32(layout.kvHeadCount), at: 20)
        put(UInt32(layout.headDim), at: 24)
        put(UInt32(layout.blockSize), at: 28)
        put(UInt32(bitPattern: layout.dtype.code), at: 32)
        put(UInt32(namespace.count), at: 36)
        put(UInt32(tokens.count), at: 40)
        put(UInt32(0), at: 44)
        put(UInt64(payloadBytes), at: 48)
        put(writtenAtMillis, at: 56)
        key.withBytes { k in (record.baseAddress! + keyOffset).copyMemory(from: k.baseAddress!, byteCount: keyBytes) }
        var at = fixedHeaderBytes
        if let t = tokens.baseAddress { (record.baseAddress! + at).copyMemory(from: t, byteCount: 4 * tokens.count) }
        at += 4 * tokens.count
        namespace.withUnsafeBytes { ns in
            if let n = ns.baseAddress { (record.baseAddress! + at).copyMemory(from: n, byteCount: ns.count) }
        }
        at += namespace.count
        (record.baseAddress! + at).initializeMemory(as: UInt8.self, repeating: 0, count: offset - at)
        return UnsafeMutableRawBufferPointer(rebasing: record[offset...])
    }

    /// Stores the checksum of a record whose other bytes are final.
    static func seal(_ record: UnsafeMutableRawBufferPointer) {
        let sum = XXH64.hash(UnsafeRawBufferPointer(rebasing: record[checksummedFrom...]))
        record.storeBytes(of: sum.littleEndian, toByteOffset: 8, as: UInt64.self)
    }
}

/// Why a stored record cannot be used.
enum RecordDefect: Error, Equatable {
    case truncated
    case badMagic
    case unsupportedVersion(UInt16)
    /// Flag bits this format does not define (none are: writers store 0). The checksum starts
    /// after them, so this check is what refuses a record damaged there.
    case unknownFlags(UInt16)
    /// The reserved word or the padding before the payload is not zero. Writers store zeros
    /// there and the checksum covers them, so a record that verifies with anything else is one
    /// this version does not understand (a later revision's, or a bug's): refused, not read as
    /// if they were zero (that could restore KV meant to be read another way).
    case reservedNotZero
    case otherLayout
    case lengthMismatch
    case checksumMismatch
}

/// A parsed view of a record's header. Valid only while the bytes it was read from are.
struct RecordView {
    let bytes: UnsafeRawBufferPointer
    let namespaceBytes: Int
    let tokenCount: Int
    let payloadBytes: Int
    let writtenAtMillis: UInt64
    let layerCount: Int, kvHeadCount: Int, headDim: Int, blockSize: Int, dtypeCode: Int32

    private static func get<T: FixedWidthInteger>(_ b: UnsafeRawBufferPointer, _ o: Int, _: T.Type) -> T {
        T(littleEndian: b.loadUnaligned(fromByteOffset: o, as: T.self))
    }

    /// Whether a stored value's size is the one its header states (magic, version and flags
    /// readable, lengths adding up, reserved bytes zero): when it is not, the size on disk may have
    /// changed after the writer counted it, and the writer recounts its bytes.
    static func sizeIsIntact(_ b: UnsafeRawBufferPointer) -> Bool { (try? RecordView(b)) != nil }

    /// Parses the header and checks the lengths add up (no checksum: see ``verifyChecksum()``).
    init(_ b: UnsafeRawBufferPointer) throws(RecordDefect) {
        guard b.count >= SpillRecord.fixedHeaderBytes else { throw .truncated }
        guard Self.get(b, 0, UInt32.self) == SpillRecord.magic else { throw .badMagic }
        let version = Self.get(b, 4, UInt16.self)
        guard version == SpillRecord.formatVersion else { throw .unsupportedVersion(version) }
        let flags = Self.get(b, 6, UInt16.self)
        guard flags == 0 else { throw .unknownFlags(flags) }
        bytes = b
        layerCount = Int(Self.get(b, 16, UInt32.self))
        kvHeadCount = Int(Self.get(b, 20, UInt32.self))
        headDim = Int(Self.get(b, 24, UInt32.self))
        blockSize = Int(Self.get(b, 28, UInt32.self))
        dtypeCode = Int32(bitPattern: Self.get(b, 32, UInt32.self))
        namespaceBytes = Int(Self.get(b, 36, UInt32.self))
        tokenCount = Int(Self.get(b, 40, UInt32.self))
        let payload = Self.get(b, 48, UInt64.self)
        writtenAtMillis = Self.get(b, 56, UInt64.self)
        guard payload <= UInt64(b.count), namespaceBytes <= b.count, tokenCount <= b.count / 4,
              SpillRecord.payloadOffset(namespaceBytes: namespaceBytes, tokenCount: tokenCount) + Int(payload) == b.count
        else { throw .lengthMismatch }
        let padding = (SpillRecord.fixedHeaderBytes + 4 * tokenCount + namespaceBytes)..<(b.count - Int(payload))
        guard Self.get(b, 44, UInt32.self) == 0, b[padding].allSatisfy({ $0 == 0 }) else { throw .reservedNotZero }
        payloadBytes = Int(payload)
    }

    /// Whether the record was written for `layout` (and holds a whole block of it, or no payload).
    func matches(_ layout: KVLayout) -> Bool {
        layerCount == layout.layerCount && kvHeadCount == layout.kvHeadCount && headDim == layout.headDim
            && blockSize == layout.blockSize && dtypeCode == layout.dtype.code
            && (payloadBytes == 0 || payloadBytes == layout.blockBytes)
    }

    func verifyChecksum() throws(RecordDefect) {
        let stored = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        guard XXH64.hash(UnsafeRawBufferPointer(rebasing: bytes[SpillRecord.checksummedFrom...])) == stored else { throw .checksumMismatch }
    }

    /// The prefix key the record was written under.
    var key: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: bytes[SpillRecord.keyOffset..<(SpillRecord.keyOffset + SpillRecord.keyBytes)])
    }

    /// Whether the record was written under `key` (the LMDB key it was found under).
    func belongs(under key: UnsafeRawBufferPointer) -> Bool { self.key.elementsEqual(key) }

    var namespace: UnsafeRawBufferPointer {
        let start = SpillRecord.fixedHeaderBytes + 4 * tokenCount
        return UnsafeRawBufferPointer(rebasing: bytes[start..<(start + namespaceBytes)])
    }

    var namespaceString: String { String(decoding: namespace, as: UTF8.self) }

    /// The tokens' bytes (4-aligned when the record is, as LMDB values and pending buffers are).
    var tokens: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: bytes[SpillRecord.fixedHeaderBytes..<(SpillRecord.fixedHeaderBytes + 4 * tokenCount)])
    }

    var tokenArray: [TokenID] { (0..<tokenCount).map { tokens.loadUnaligned(fromByteOffset: 4 * $0, as: TokenID.self) } }

    var payload: UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: bytes[(bytes.count - payloadBytes)...]) }

    /// Whether the record holds exactly `tokens` of `namespace`.
    func holds(namespace ns: [UInt8], tokens t: UnsafeBufferPointer<TokenID>) -> Bool {
        tokenCount == t.count && namespaceBytes == ns.count
            && namespace.elementsEqual(ns) && tokens.elementsEqual(UnsafeRawBufferPointer(t))
    }
}
