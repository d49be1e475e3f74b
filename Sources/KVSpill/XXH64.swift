/// XXH64 (Yann Collet's xxHash, 64-bit variant): the spill record checksum.
///
/// Why not SHA-256: the checksum only has to catch accidents (torn or partial writes, bit rot,
/// a bug writing the wrong bytes), not an adversary: anyone who can write the store file can
/// write a matching checksum of any kind. Identity is already carried by the SHA-256 key and the
/// exact token comparison. XXH64 catches random corruption with probability 1 − 2⁻⁶⁴ and runs at
/// memory speed, so verifying a restore costs a fraction of copying it (SHA-256 would cap restore
/// throughput near 1.5 GB/s even with SHA extensions).
enum XXH64 {
    private static let p1: UInt64 = 0x9E37_79B1_85EB_CA87
    private static let p2: UInt64 = 0xC2B2_AE3D_27D4_EB4F
    private static let p3: UInt64 = 0x1656_67B1_9E37_79F9
    private static let p4: UInt64 = 0x85EB_CA77_C2B2_AE63
    private static let p5: UInt64 = 0x27D4_EB2F_1656_67C5

    @inline(__always) private static func round(_ acc: UInt64, _ input: UInt64) -> UInt64 {
        (acc &+ input &* p2).rotated(31) &* p1
    }

    @inline(__always) private static func merge(_ acc: UInt64, _ val: UInt64) -> UInt64 {
        (acc ^ round(0, val)) &* p1 &+ p4
    }

    static func hash(_ data: UnsafeRawBufferPointer, seed: UInt64 = 0) -> UInt64 {
        let n = data.count
        guard let base = data.baseAddress else { return finish(seed &+ p5, base: nil, from: 0, to: 0) }
        var i = 0
        var h: UInt64
        if n >= 32 {
            var v1 = seed &+ p1 &+ p2, v2 = seed &+ p2, v3 = seed, v4 = seed &- p1
            let end = n - 32
            while i <= end {
                v1 = round(v1, base.loadUnaligned(fromByteOffset: i, as: UInt64.self).littleEndian)
                v2 = round(v2, base.loadUnaligned(fromByteOffset: i + 8, as: UInt64.self).littleEndian)
                v3 = round(v3, base.loadUnaligned(fromByteOffset: i + 16, as: UInt64.self).littleEndian)
                v4 = round(v4, base.loadUnaligned(fromByteOffset: i + 24, as: UInt64.self).littleEndian)
                i += 32
            }
            h = v1.rotated(1) &+ v2.rotated(7) &+ v3.rotated(12) &+ v4.rotated(18)
            h = merge(h, v1); h = merge(h, v2); h = merge(h, v3); h = merge(h, v4)
        } else {
            h = seed &+ p5
        }
        return finish(h &+ UInt64(n), base: base, from: i, to: n)
    }

    /// Folds in the last (< 32) bytes and avalanches.
    private static func finish(_ acc: UInt64, base: UnsafeRawPointer?, from start: Int, to n: Int) -> UInt64 {
        var h = acc, i = start
        if let base {
            while i + 8 <= n {
                h ^= round(0, base.loadUnaligned(fromByteOffset: i, as: UInt64.self).littleEndian)
                h = h.rotated(27) &* p1 &+ p4
                i += 8
            }
            if i + 4 <= n {
                h ^= UInt64(base.loadUnaligned(fromByteOffset: i, as: UInt32.self).littleEndian) &* p1
                h = h.rotated(23) &* p2 &+ p3
                i += 4
            }
            while i < n {
                h ^= UInt64(base.load(fromByteOffset: i, as: UInt8.self)) &* p5
                h = h.rotated(11) &* p1
                i += 1
            }
        }
        h ^= h >> 33; h = h &* p2
        h ^= h >> 29; h = h &* p3
        h ^= h >> 32
        return h
    }
}

extension UInt64 {
    @inline(__always) fileprivate func rotated(_ r: UInt64) -> UInt64 { (self << r) | (self >> (64 - r)) }
}
