// The compute ceiling of `kvctl bench attention`'s roofline: sixteen independent chains of the
// instruction the many-row path multiplies with (vdpbf16ps for bf16 math, vfmadd for fp32),
// no memory traffic, so the loop runs at the core's issue rate for that instruction.
#include <stdint.h>
#include "kvkernels.h"

static volatile float kvk_peak_sink;

#if defined(__x86_64__)
#include <immintrin.h>

__attribute__((target("avx512f,avx512bf16"))) static double kvk_peak_dpbf16(int64_t iterations) {
    __m512 acc[16];
    for (int i = 0; i < 16; i++) acc[i] = _mm512_set1_ps((float)i);
    __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f803f80);  // (1.0, 1.0) in bf16
    for (int64_t k = 0; k < iterations; k++) {
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) acc[i] = _mm512_dpbf16_ps(acc[i], x, x);
        __asm__ volatile("" : "+v"(x));  // keeps the operands live: no hoisting, no folding
    }
    float s = 0;
    for (int i = 0; i < 16; i++) s += _mm512_reduce_add_ps(acc[i]);
    kvk_peak_sink = s;
    return (double)iterations * 16 * 64;  // 16 lanes x 2 products x (mul + add)
}

__attribute__((target("avx512f,fma"))) static double kvk_peak_fma512(int64_t iterations) {
    __m512 acc[16];
    for (int i = 0; i < 16; i++) acc[i] = _mm512_set1_ps((float)i);
    __m512 x = _mm512_set1_ps(1.0001f), y = _mm512_set1_ps(0.9999f);
    for (int64_t k = 0; k < iterations; k++) {
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) acc[i] = _mm512_fmadd_ps(acc[i], x, y);
        __asm__ volatile("" : "+v"(x));
    }
    float s = 0;
    for (int i = 0; i < 16; i++) s += _mm512_reduce_add_ps(acc[i]);
    kvk_peak_sink = s;
    return (double)iterations * 16 * 32;
}

__attribute__((target("avx2,fma"))) static double kvk_peak_fma256(int64_t iterations) {
    __m256 acc[12];
    for (int i = 0; i < 12; i++) acc[i] = _mm256_set1_ps((float)i);
    __m256 x = _mm256_set1_ps(1.0001f), y = _mm256_set1_ps(0.9999f);
    for (int64_t k = 0; k < iterations; k++) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) acc[i] = _mm256_fmadd_ps(acc[i], x, y);
        __asm__ volatile("" : "+x"(x));
    }
    float s = 0;
    for (int i = 0; i < 12; i++) { float t[8]; _mm256_storeu_ps(t, acc[i]); for (int j = 0; j < 8; j++) s += t[j]; }
    kvk_peak_sink = s;
    return (double)iterations * 12 * 16;
}
#endif

static double kvk_peak_portable(int64_t iterations) {
    float acc[16];
    for (int i = 0; i < 16; i++) acc[i] = (float)i;
    for (int64_t k = 0; k < iterations; k++)
        for (int i = 0; i < 16; i++) acc[i] = acc[i] * 1.0001f + 0.9999f;
    float s = 0;
    for (int i = 0; i < 16; i++) s += acc[i];
    kvk_peak_sink = s;
    return (double)iterations * 16 * 2;
}

double kvk_peak_probe(int32_t bf16_math, int64_t iterations) {
    const int32_t isa = kvk_isa();
#if defined(__x86_64__)
    if (bf16_math && isa >= KVK_ISA_AVX512_BF16) return kvk_peak_dpbf16(iterations);
    if (isa >= KVK_ISA_AVX512) return kvk_peak_fma512(iterations);
    if (isa == KVK_ISA_AVX2) return kvk_peak_fma256(iterations);
#endif
    (void)bf16_math;
    (void)isa;
    return kvk_peak_portable(iterations);
}
