import CKVKernels
import KVCore

/// The arithmetic of the kernels' products. bf16 math applies to the GEMM-shaped (many-row)
/// path, and to the few-row path for bf16 KV (head dims a multiple of 32) from 2 rows per KV
/// head (a GQA group, a small shared node); one row per KV head (MHA paged decode, own blocks)
/// always multiplies in fp32: it is memory-bound either way.
public enum AttentionMath: String, Sendable, CaseIterable, CustomStringConvertible {
    /// bf16 products (vdpbf16ps) for bf16 KV when the CPU has AVX512-BF16, fp32 otherwise.
    case automatic = "auto"
    /// fp32 products: KV widened to fp32, FMAs.
    case fp32
    /// bf16 products: queries and probabilities rounded to bf16 (and KV too, if not stored as
    /// bf16), sums in fp32. Twice the multiply rate of fp32 FMAs; see docs/ATTENTION.md for the error.
    case bf16

    public var description: String { rawValue }

    /// The C kernels' math code for KV stored as `dtype` on this CPU.
    func kernelCode(for dtype: KVDType, isa: KernelISA) -> Int32 {
        let bf16Available = isa == .avx512bf16
        switch self {
        case .fp32: return Int32(KVK_MATH_F32)
        case .bf16: return bf16Available ? Int32(KVK_MATH_BF16) : Int32(KVK_MATH_F32)
        case .automatic: return dtype == .bfloat16 && bf16Available ? Int32(KVK_MATH_BF16) : Int32(KVK_MATH_F32)
        }
    }
}

/// The instruction-set variant the kernels run (for reports and tests).
public enum KernelISA: Int32, Sendable, CaseIterable, Comparable, CustomStringConvertible {
    /// Scalar C, any CPU (arm64 too).
    case portable = 0
    /// AVX2 + FMA + F16C.
    case avx2 = 1
    /// AVX-512 F/BW/VL/DQ: the few-row and many-row paths in fp32 math.
    case avx512 = 2
    /// AVX-512 with BF16 dot products (`vdpbf16ps`) for bf16 math.
    case avx512bf16 = 3

    public static func < (a: KernelISA, b: KernelISA) -> Bool { a.rawValue < b.rawValue }

    /// The best variant this CPU supports.
    public static var best: KernelISA { KernelISA(rawValue: kvk_isa())! }

    public var description: String {
        switch self {
        case .portable: "portable"
        case .avx2: "avx2+fma+f16c"
        case .avx512: "avx512"
        case .avx512bf16: "avx512+bf16"
        }
    }
}
