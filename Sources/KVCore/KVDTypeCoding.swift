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
        case .float16: base.storeBytes(of: Float16(value).bitPattern, toByteOffset: i * 2, as: UInt16.self)
        case .bfloat16: base.storeBytes(of: KVDType.bfloat16Bits(value), toByteOffset: i * 2, as: UInt16.self)
        }
    }

    /// `value` rounded to this type and back.
    @inlinable
    public func rounded(_ value: Float) -> Float {
        switch self {
        case .float32: value
        case .float16: Float(Float16(value))
        case .bfloat16: Float(bitPattern: UInt32(KVDType.bfloat16Bits(value)) << 16)
        }
    }

    @inlinable
    static func bfloat16Bits(_ value: Float) -> UInt16 {
        let u = value.bitPattern
        if value.isNaN { return UInt16(truncatingIfNeeded: u >> 16) | 0x40 }
        return UInt16(truncatingIfNeeded: (u &+ 0x7FFF &+ ((u >> 16) & 1)) >> 16)
    }
}
