import KVCore

/// A fast 64-bit hash of one block's tokens, used only to find candidate children in the prefix
/// index. Matching always compares the tokens themselves: a hash is never trusted alone.
@inlinable
func hashBlockTokens(_ tokens: UnsafeBufferPointer<TokenID>) -> UInt64 {
    var h: UInt64 = 0x9E37_79B9_7F4A_7C15 ^ UInt64(truncatingIfNeeded: tokens.count)
    var i = 0
    let n = tokens.count
    while i &+ 1 < n {
        let w = UInt64(UInt32(bitPattern: tokens[i])) | (UInt64(UInt32(bitPattern: tokens[i &+ 1])) << 32)
        h = (h ^ w) &* 0xFF51_AFD7_ED55_8CCD
        h ^= h >> 29
        i &+= 2
    }
    if i < n {
        h = (h ^ UInt64(UInt32(bitPattern: tokens[i]))) &* 0xC4CE_B9FE_1A85_EC53
    }
    h ^= h >> 32
    h &*= 0xD6E8_FEB8_6659_FD93
    h ^= h >> 32
    return h
}
