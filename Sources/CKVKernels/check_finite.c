// The query check of every attention call: the first NaN or infinity in a float buffer. A
// non-finite query makes that row's output NaN in every kernel, so calls refuse it up front
// (AttentionError.nonFiniteQuery). An exponent of all ones is NaN or infinity.
#include "kvk_internal.h"
#if defined(__x86_64__)
#include "avx512_common.h"
#endif

static size_t kvk_first_nonfinite_portable(const float *x, size_t n) {
    const uint32_t *u = (const uint32_t *)x;
    for (size_t i = 0; i < n; i++)
        if ((u[i] & 0x7f800000u) == 0x7f800000u) return i;
    return n;
}

#if defined(__x86_64__)
/// 64 floats per step; the scalar pass finds the exact index in the step that has one.
KVK_AVX512 static size_t kvk_first_nonfinite_avx512(const float *x, size_t n) {
    const __m512i exp = _mm512_set1_epi32(0x7f800000);
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __mmask16 m = 0;
        for (int k = 0; k < 4; k++) {
            const __m512i v = _mm512_and_si512(_mm512_loadu_si512(x + i + 16 * k), exp);
            m |= _mm512_cmpeq_epi32_mask(v, exp);
        }
        if (m) return i + kvk_first_nonfinite_portable(x + i, 64);
    }
    return i + kvk_first_nonfinite_portable(x + i, n - i);
}
#endif

size_t kvk_first_nonfinite(const float *x, size_t n) {
#if defined(__x86_64__)
    if (kvk_isa() >= KVK_ISA_AVX512) return kvk_first_nonfinite_avx512(x, n);
#endif
    return kvk_first_nonfinite_portable(x, n);
}
