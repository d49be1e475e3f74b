// AVX-512 helpers shared by the few-row and many-row paths: per-function target attributes
// (the package is compiled for baseline x86-64), loads that widen any KV dtype to fp32, exp2.
#ifndef KVK_AVX512_COMMON_H
#define KVK_AVX512_COMMON_H
#if defined(__x86_64__)
#include <immintrin.h>
#include "kvk_internal.h"

#define KVK_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")))
/// Forced inline where optimising (the kernels' register tiles rely on it). Unoptimised
/// builds call instead: at -O0 every inlined copy keeps its own stack slots, so the many-row
/// driver's frame grew past 4 MiB (a debug or ThreadSanitizer build overflowed a 4 MiB thread
/// stack; optimised, 14 KiB).
#if defined(__OPTIMIZE__)
#define KVK_AVX512_INLINE static inline __attribute__((always_inline)) KVK_AVX512
#else
#define KVK_AVX512_INLINE static KVK_AVX512
#endif

/// Lanes of the last 16-wide vector of a row of n elements.
static inline __mmask16 kvk_tail_mask16(int32_t n) {
    int32_t r = n & 15;
    return r ? (__mmask16)((1u << r) - 1) : (__mmask16)0xFFFF;
}

/// Lanes of a 16-wide step with `remaining` elements left in the row (all 16 when at least 16).
static inline __mmask16 kvk_step_mask16(int32_t remaining) {
    return remaining >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << remaining) - 1);
}

/// Elements i ..< i+16 of a row stored as `dtype` (masked-off lanes read as 0, never fault).
KVK_AVX512_INLINE __m512 kvk_load16(const void *row, int32_t dtype, int32_t i, __mmask16 m) {
    if (dtype == KVK_DTYPE_F32) return _mm512_maskz_loadu_ps(m, (const float *)row + i);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)row + i);
    if (dtype == KVK_DTYPE_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/// 2^x for x >= -127 (smaller x clamp there: the result is then ~6e-39, i.e. 0 for softmax).
/// Cephes' exp2f polynomial on [-0.5, 0.5], ~1 ulp; vscalefps applies the exponent.
KVK_AVX512_INLINE __m512 kvk_exp2_16(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-127.f));
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(KVK_EXP2_C5);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(KVK_EXP2_C4));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(KVK_EXP2_C3));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(KVK_EXP2_C2));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(KVK_EXP2_C1));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(KVK_EXP2_C0));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
    return _mm512_scalef_ps(p, n);
}

/// 2^x to ~1e-4 relative for finite x <= 0, for probabilities that are rounded to bf16 right
/// after (whose own rounding error is 2e-3): x = floor(x) + f, a cubic in f on [0, 1), and
/// vscalefps applies 2^floor(x) itself, so n is never formed and x far below -127 gives 0 with
/// no clamp. The callers pass scores minus their running max: finite (padded rows have zero
/// queries).
KVK_AVX512_INLINE __m512 kvk_exp2_16_bf16(__m512 x) {
    __m512 f = _mm512_reduce_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 p = _mm512_set1_ps(7.790716737508774e-2f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.262331992387772e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.957771182060242e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.99927818775177e-1f));
    return _mm512_scalef_ps(p, x);
}

/// Given 16 vectors v[t], returns the vector whose lane t is the sum of v[t]'s lanes.
KVK_AVX512_INLINE __m512 kvk_transpose_add16(const __m512 *v) {
    __m512 b[8], c[4];
    for (int i = 0; i < 8; i++)  // lanes 0-1: token 2i, lanes 2-3: token 2i+1
        b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
    for (int i = 0; i < 4; i++)  // 128-bit lane j: token 4i+j
        c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xDD));
    __m512 e0 = _mm512_add_ps(_mm512_unpacklo_ps(c[0], c[1]), _mm512_unpackhi_ps(c[0], c[1]));
    __m512 e1 = _mm512_add_ps(_mm512_unpacklo_ps(c[2], c[3]), _mm512_unpackhi_ps(c[2], c[3]));
    __m512d x0 = _mm512_castps_pd(e0), x1 = _mm512_castps_pd(e1);
    __m512 r = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x0, x1)), _mm512_castpd_ps(_mm512_unpackhi_pd(x0, x1)));
    // lane 4j+k now holds token j+4k
    const __m512i back = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_permutexvar_ps(back, r);
}

/// Transposes the 16 x 16 block v[row][lane] in place: afterwards v[k] holds lane k of every
/// input row. Four stages of in-lane and 128-bit-lane shuffles (64 in all), instead of 256
/// scalar moves or 16 gathers.
KVK_AVX512_INLINE void kvk_transpose16(__m512 *v) {
    __m512 t[16], u[16];
    for (int i = 0; i < 16; i += 2) {  // per 128-bit lane L: (a, b) interleaved, columns 4L..4L+3
        t[i] = _mm512_unpacklo_ps(v[i], v[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(v[i], v[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {  // u[i + c], lane L: column 4L + c of rows i .. i+3
        const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 2]);
        const __m512d c = _mm512_castps_pd(t[i + 1]), e = _mm512_castps_pd(t[i + 3]);
        u[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
        u[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        u[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, e));
        u[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, e));
    }
    for (int c = 0; c < 4; c++) {  // column 4L + c: lane L of u[c], u[4 + c], u[8 + c], u[12 + c]
        const __m512 x = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x44), y = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xEE);
        const __m512 x2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x44), y2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xEE);
        v[c] = _mm512_shuffle_f32x4(x, x2, 0x88);
        v[4 + c] = _mm512_shuffle_f32x4(x, x2, 0xDD);
        v[8 + c] = _mm512_shuffle_f32x4(y, y2, 0x88);
        v[12 + c] = _mm512_shuffle_f32x4(y, y2, 0xDD);
    }
}

/// Slot of dim i in a row of 32-dim chunks interleaved by in-lane word unpacks (unpacklo then
/// unpackhi of two rows): each chunk holds dims {0-3, 8-11, 16-19, 24-27} then {4-7, 12-15,
/// 20-23, 28-31}. The bf16 paths' value pairs and the bf16 few-row output are in this order.
static inline int32_t kvk_vpos(int32_t i) {
    const int32_t c = i & 31;
    return (i - c) + ((c & 4) << 2) + ((c >> 3) << 2) + (c & 3);
}

/// Prefetches the `bytes` of one row into L2 (not L1: its few miss buffers are left to the
/// demand loads; T0 prefetches held the few-row path at ~8 GB/s per core from DRAM).
KVK_AVX512_INLINE void kvk_prefetch_row(const char *p, size_t bytes) {
    for (size_t off = 0; off < bytes; off += 64) _mm_prefetch(p + off, _MM_HINT_T1);
}

#endif
#endif
