import KVCore

/// A fast 64-bit hash of one block's tokens, used only to find candidate children in the prefix
/// index. Matching always compares the tokens themselves: a hash is never trusted alone.
///
/// Four independent multiply-xorshift lanes take 8 tokens per round, so the dependency chain is a
/// quarter of a single-lane hash (every block that joins the tree is hashed, and every prompt block
/// that is not its parent's hinted child).
@inlinable
func hashBlockTokens(_ tokens: UnsafeBufferPointer<TokenID>) -> UInt64 {
    let n = tokens.count
    var a: UInt64 = 0x9E37_79B9_7F4A_7C15 ^ UInt64(truncatingIfNeeded: n)
    var b: UInt64 = 0xC2B2_AE3D_27D4_EB4F
    var c: UInt64 = 0x1656_67B1_9E37_79F9
    var d: UInt64 = 0x85EB_CA77_C2B2_AE63
    let raw = UnsafeRawPointer(tokens.baseAddress!)
    @inline(__always) func word(_ i: Int) -> UInt64 { raw.loadUnaligned(fromByteOffset: i &* 8, as: UInt64.self) }
    @inline(__always) func mix(_ h: UInt64, _ w: UInt64) -> UInt64 {
        let x = (h ^ w) &* 0xFF51_AFD7_ED55_8CCD
        return x ^ (x >> 29)
    }
    var i = 0
    while i &+ 8 <= n {
        let w = i >> 1
        a = mix(a, word(w))
        b = mix(b, word(w &+ 1))
        c = mix(c, word(w &+ 2))
        d = mix(d, word(w &+ 3))
        i &+= 8
    }
    while i < n {
        a = mix(a, UInt64(UInt32(bitPattern: tokens[i])) | 0x1_0000_0000)
        i &+= 1
    }
    var h = a ^ (b &* 0xC4CE_B9FE_1A85_EC53) ^ (c &* 0xD6E8_FEB8_6659_FD93) ^ (d &* 0x9E37_79B9_7F4A_7C15)
    h ^= h >> 32
    h &*= 0xD6E8_FEB8_6659_FD93
    h ^= h >> 32
    return h
}

/// Whether `count` tokens at `a` and `b` are equal: eight bytes at a time with no early exit, so
/// the loop vectorises (a block is 16 tokens by default) and no library call is made.
@inlinable
func tokensEqual(_ a: UnsafePointer<TokenID>, _ b: UnsafePointer<TokenID>, count: Int) -> Bool {
    let x = UnsafeRawPointer(a), y = UnsafeRawPointer(b)
    let words = count >> 1
    var diff: UInt64 = 0
    var w = 0
    while w < words {
        diff |= x.loadUnaligned(fromByteOffset: w &* 8, as: UInt64.self) ^ y.loadUnaligned(fromByteOffset: w &* 8, as: UInt64.self)
        w &+= 1
    }
    if count & 1 != 0 { diff |= UInt64(UInt32(bitPattern: a[count &- 1] ^ b[count &- 1])) }
    return diff == 0
}
