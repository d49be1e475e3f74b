/// Conversions between fp32 and the stored KV element types, for filling pages and for the
/// reference kernel. Rounding is to nearest even, as the hardware converters do.
extension KVDType {
    /// Reads element `i` of raw storage as fp32.
    @inlinable
    public func load(_ base: UnsafeRawPointer, _ i: Int) -> Float {
        switch self {
        case .float32: return base.loadUnaligned(fromByteOffset: i * 4, as: Float.self)
        case .float16: return Float(Float16(bitPattern: base.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self)))
        case .bfloat16: return Float(bitPattern: UInt32(base.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self)) << 16)
        }
    }

    /// Writes `value` as element `i` of raw storage.
    @inlinable
    public func store(_ value: Float, _ base: UnsafeMutableRawPointer, _ i: Int) {
        switch self {
        case .float32: base.storeBytes(of: value, toByteOffset: i * 4, as: Float.self)
        case .float16: base.storeBytes(of: KVDType.float16Bits(value), toByteOffset: i * 2, as: UInt16.self)
        case .bfloat16: base.storeBytes(of: KVDType.bfloat16Bits(value), toByteOffset: i * 2, as: UInt16.self)
        }
    }

    /// `value` rounded to this type and back.
    @inlinable
    public func rounded(_ value: Float) -> Float {
        switch self {
        case .float32: value
        case .float16: Float(Float16(bitPattern: KVDType.float16Bits(value)))
        case .bfloat16: Float(bitPattern: UInt32(KVDType.bfloat16Bits(value)) << 16)
        }
    }

    /// `Float16(value).bitPattern`, computed without a conversion instruction: Swift here targets
    /// baseline x86-64 (no F16C), where `Float16(value)` is a library call per element (~8-10 ns
    /// in `KVPageArena.store`'s loop); this is branch-free fp32 arithmetic the compiler can
    /// vectorise. Bit-identical, NaN payloads included (checked against `Float16(_:)` in
    /// `KVWriteTests`). After Maratyszcza's FP16 library (`fp16_ieee_from_fp32_value`): scaling by
    /// 2^112 · 2^-110 turns magnitudes of 2^16 and up into infinity, and adding a power of two
    /// placed so that exactly fp16's significand bits (normal or subnormal) stay in the sum makes
    /// the FPU's own round-to-nearest-even round it at fp16's precision.
    @inlinable
    static func float16Bits(_ value: Float) -> UInt16 {
        let w = value.bitPattern
        let shl1 = w &+ w                       // without the sign
        let sign = w & 0x8000_0000
        var base = (abs(value) * 0x1.0p+112) * 0x1.0p-110
        let bias = max(shl1 & 0xFF00_0000, 0x7100_0000)
        base = Float(bitPattern: (bias >> 1) &+ 0x0780_0000) + base
        let bits = base.bitPattern
        let nonsign = ((bits >> 13) & 0x7C00) &+ (bits & 0x0FFF)
        let nan = 0x7E00 | ((w >> 13) & 0x1FF)  // quiet, with the payload's top bits
        return UInt16(truncatingIfNeeded: (sign >> 16) | (shl1 > 0xFF00_0000 ? nan : nonsign))
    }

    @inlinable
    static func bfloat16Bits(_ value: Float) -> UInt16 {
        let u = value.bitPattern
        if value.isNaN { return UInt16(truncatingIfNeeded: u >> 16) | 0x40 }
        return UInt16(truncatingIfNeeded: (u &+ 0x7FFF &+ ((u >> 16) & 1)) >> 16)
    }
}
