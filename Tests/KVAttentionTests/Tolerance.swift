import KVAttention

/// Error bounds of the fast kernels against the Float64 reference, as max |err| / max |ref|
/// (see docs/ATTENTION.md). The reference reads the same stored (rounded) KV, so the KV dtype
/// itself adds no error; what differs is the kernels' arithmetic:
/// - fp32 products (every dtype with `.fp32` math; with bf16 math, the few-row path at one row
///   per KV head or for KV not stored as bf16): fp32 accumulation and a ~1-ulp exp2, observed
///   ≤ 1e-6; bound 5e-5.
/// - bf16 products (`.bf16` math on the many-row path, and on the few-row path for bf16 KV from
///   2 rows): queries and probabilities (and KV not stored as bf16) rounded to 8-bit mantissas,
///   observed ~2e-3; bound 1e-2. Calls are checked against the bound of their kernel's math
///   (``DecodeAttention/effectiveMath``), whichever path each item takes.
enum Tolerance {
    static let fp32Math: Float = 5e-5
    static let bf16Math: Float = 1e-2

    static func of(_ kernel: DecodeAttention) -> Float {
        kernel.effectiveMath == .bf16 ? bf16Math : fp32Math
    }
}
