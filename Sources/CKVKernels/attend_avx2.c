// AVX2 + FMA + F16C variant (x86-64 CPUs without AVX-512): every query row against each token
// in turn, 8 dims per FMA, online softmax per token. Keys and values are widened once per token
// and stay in L1 while all rows use them, so the KV is still read once per call.
#if defined(__x86_64__)
#include <immintrin.h>
#include "kvk_internal.h"

#define KVK_AVX2 __attribute__((target("avx2,fma,f16c")))
#define KVK_AVX2_INLINE static inline __attribute__((always_inline)) KVK_AVX2

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

/// Widens one row (d8 = d rounded up to 8, tail zero) into `dst`.
KVK_AVX2_INLINE void kvk_widen8(float *dst, const char *row, int32_t dtype, int32_t d, int32_t d8) {
    int32_t i = 0;
    for (; i + 8 <= d; i += 8) _mm256_store_ps(dst + i, kvk_load8(row, dtype, i));
    for (; i < d8; i++) dst[i] = i < d ? kvk_load_elt(row, dtype, i) : 0.f;
}

KVK_AVX2_INLINE void kvk_avx2_run(const kvk_attend_args *a, int32_t dtype) {
    const int32_t d = a->head_dim, rows = a->seq_count * a->group, d8 = kvk_round_up(d, 8), stride = kvk_round_up(d, 16);
    const size_t row_bytes = (size_t)d * kvk_elt_bytes(dtype);
    const kvk_scratch_layout sl = kvk_layout_scratch(rows, d);
    char *base = (char *)a->scratch;
    float *q = (float *)(base + sl.q), *o = (float *)(base + sl.o), *m = (float *)(base + sl.m), *l = (float *)(base + sl.l);
    float *k = (float *)(base + sl.k), *v = (float *)(base + sl.v);
    const float qscale = a->scale * KVK_LOG2E;
    for (int32_t r = 0; r < rows; r++) {
        const float *qr = kvk_q_row(a, r);
        for (int32_t i = 0; i < stride; i++) {
            q[(size_t)r * stride + i] = i < d ? qr[i] * qscale : 0.f;
            o[(size_t)r * stride + i] = 0.f;
        }
        m[r] = -INFINITY;
        l[r] = 0.f;
    }
    for (int32_t b = 0; b < a->block_count; b++) {
        const size_t page = kvk_page_offset(a, a->blocks[b]);
        for (int32_t t = 0, nb = kvk_block_tokens(a, b); t < nb; t++) {
            kvk_widen8(k, (const char *)a->keys + page + (size_t)t * row_bytes, dtype, d, d8);
            kvk_widen8(v, (const char *)a->values + page + (size_t)t * row_bytes, dtype, d, d8);
            for (int32_t r = 0; r < rows; r++) {
                const float *qr = q + (size_t)r * stride;
                float *orow = o + (size_t)r * stride;
                __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
                int32_t i = 0;
                for (; i + 16 <= d8; i += 16) {
                    acc0 = _mm256_fmadd_ps(_mm256_load_ps(k + i), _mm256_load_ps(qr + i), acc0);
                    acc1 = _mm256_fmadd_ps(_mm256_load_ps(k + i + 8), _mm256_load_ps(qr + i + 8), acc1);
                }
                if (i < d8) acc0 = _mm256_fmadd_ps(_mm256_load_ps(k + i), _mm256_load_ps(qr + i), acc0);
                const float s = kvk_hsum8(_mm256_add_ps(acc0, acc1));
                const float mn = s > m[r] ? s : m[r], alpha = exp2f(m[r] - mn), p = exp2f(s - mn);
                l[r] = l[r] * alpha + p;
                m[r] = mn;
                const __m256 va = _mm256_set1_ps(alpha), vp = _mm256_set1_ps(p);
                for (i = 0; i < d8; i += 8)
                    _mm256_store_ps(orow + i, _mm256_fmadd_ps(vp, _mm256_load_ps(v + i), _mm256_mul_ps(va, _mm256_load_ps(orow + i))));
            }
        }
    }
    for (int32_t r = 0; r < rows; r++) {
        const float inv = 1.f / l[r];
        float *out = kvk_out_row(a, r);
        for (int32_t i = 0; i < d; i++) out[i] = o[(size_t)r * stride + i] * inv;
        kvk_store_lse(a, r, m[r] + log2f(l[r]));
    }
}

KVK_AVX2 void kvk_attend_avx2(const kvk_attend_args *a) {
    switch (a->dtype) {
    case KVK_DTYPE_F16: kvk_avx2_run(a, KVK_DTYPE_F16); break;
    case KVK_DTYPE_BF16: kvk_avx2_run(a, KVK_DTYPE_BF16); break;
    default: kvk_avx2_run(a, KVK_DTYPE_F32); break;
    }
}

KVK_AVX2 float kvk_stream_read_avx2(const void *buffer, size_t bytes) {
    const float *f = (const float *)buffer;
    const size_t q = bytes / 16;  // floats per stream
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i + 8 <= q; i += 8) {
        s0 = _mm256_add_ps(s0, _mm256_load_ps(f + i));
        s1 = _mm256_add_ps(s1, _mm256_load_ps(f + q + i));
        s2 = _mm256_add_ps(s2, _mm256_load_ps(f + 2 * q + i));
        s3 = _mm256_add_ps(s3, _mm256_load_ps(f + 3 * q + i));
    }
    return kvk_hsum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}
#endif
