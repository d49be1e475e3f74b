// AVX2 + FMA + F16C helpers shared by the AVX2 paths (x86-64 CPUs without AVX-512): the
// per-function target attribute (the package is compiled for baseline x86-64) and loads that
// widen any KV dtype to fp32.
#ifndef KVK_AVX2_COMMON_H
#define KVK_AVX2_COMMON_H
#if defined(__x86_64__)
#include <immintrin.h>
#include "kvk_internal.h"

#define KVK_AVX2 __attribute__((target("avx2,fma,f16c")))
/// Forced inline where optimising (the kernels' register tiles rely on it). Unoptimised
/// builds call instead: at -O0 every inlined copy keeps its own stack slots, so the many-row
/// driver's frame grew past 4 MiB (a debug or ThreadSanitizer build overflowed a 4 MiB thread
/// stack; optimised, 14 KiB).
#if defined(__OPTIMIZE__)
#define KVK_AVX2_INLINE static inline __attribute__((always_inline)) KVK_AVX2
#else
#define KVK_AVX2_INLINE static KVK_AVX2
#endif

/// Elements i ..< i+8 of a row stored as `dtype`, as fp32.
KVK_AVX2_INLINE __m256 kvk_load8(const char *row, int32_t dtype, int32_t i) {
    if (dtype == KVK_DTYPE_F32) return _mm256_loadu_ps((const float *)row + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + i));
    if (dtype == KVK_DTYPE_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

KVK_AVX2_INLINE float kvk_hsum8(__m256 v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
}

/// Widens one row of d elements into `dst` (fp32), zero-padded to d8 = d rounded up to 8.
KVK_AVX2_INLINE void kvk_widen8(float *dst, const char *row, int32_t dtype, int32_t d, int32_t d8) {
    int32_t i = 0;
    for (; i + 8 <= d; i += 8) _mm256_storeu_ps(dst + i, kvk_load8(row, dtype, i));
    for (; i < d8; i++) dst[i] = i < d ? kvk_load_elt(row, dtype, i) : 0.f;
}

/// 2^x for x <= 0 (below -126 it returns ~1e-38 instead of 0: softmax weights that small are
/// noise). Cephes' exp2f polynomial on [-0.5, 0.5], ~1 ulp; the exponent is built in the
/// integer unit, since AVX2 has no vscalefps.
KVK_AVX2_INLINE __m256 kvk_exp2_8(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-126.f));
    const __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 f = _mm256_sub_ps(x, n);
    __m256 p = _mm256_set1_ps(KVK_EXP2_C5);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(KVK_EXP2_C4));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(KVK_EXP2_C3));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(KVK_EXP2_C2));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(KVK_EXP2_C1));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(KVK_EXP2_C0));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

#endif
#endif
