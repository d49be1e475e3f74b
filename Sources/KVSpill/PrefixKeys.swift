import Crypto
import KVCache
import KVCore

#if !_endian(little)
#error("PrefixKV hashes tokens and writes spill records as little-endian memory images")
#endif

/// The chained prefix digests the spill tier names blocks by:
/// `root = SHA-256("prefixkv-root" ‖ namespace)`, `child = SHA-256(parent ‖ tokens)`, tokens as
/// little-endian `Int32`. A key therefore names one exact prefix of one namespace: the same
/// block of tokens after a different history, or in another namespace, has another key.
enum PrefixKeys {
    static func root(namespace: Namespace) -> PrefixKey {
        var h = SHA256()
        h.update(data: Array("prefixkv-root".utf8))
        h.update(data: Array(namespace.rawValue.utf8))
        return PrefixKey(digest: h.finalize())
    }

    static func child(parent: PrefixKey, tokens: UnsafeBufferPointer<TokenID>) -> PrefixKey {
        var h = SHA256()
        parent.withBytes { h.update(bufferPointer: $0) }
        h.update(bufferPointer: UnsafeRawBufferPointer(tokens))
        return PrefixKey(digest: h.finalize())
    }
}

extension PrefixKey {
    /// Bytes of a key (the LMDB key of a block's entry).
    static let byteCount = 32

    /// The 32 digest bytes, in digest order (so `description` prints the digest's hex).
    init(digest: SHA256.Digest) {
        self = digest.withUnsafeBytes { PrefixKey(bytes: $0) }
    }

    init(bytes: UnsafeRawBufferPointer) {
        invariant(bytes.count == Self.byteCount, "PrefixKey: \(bytes.count) bytes, a key has \(Self.byteCount)")
        self.init(bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self), bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self),
                  bytes.loadUnaligned(fromByteOffset: 16, as: UInt64.self), bytes.loadUnaligned(fromByteOffset: 24, as: UInt64.self))
    }

    /// Lends the 32 key bytes (the LMDB key of the block's entry).
    func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        var words = bytes
        return try withUnsafeBytes(of: &words) { try body($0) }
    }

    var byteArray: [UInt8] { withBytes { Array($0) } }
}
