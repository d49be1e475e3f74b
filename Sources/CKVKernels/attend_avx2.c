// AVX2 + FMA + F16C few-row path (x86-64 CPUs without AVX-512): a handful of query rows against
// a run of pages of consecutive KV heads (heads inner, so a block's heads are read as one run),
// lanes along the head dim.
//
// Per chunk of up to 8 tokens of one (block, head) page: the key and value rows are widened to
// fp32 into L1 once (and the same rows of the next page in reading order prefetched into L2: a
// block's page of one head is a 4 KiB island the hardware prefetcher does not cross into); for
// each query row, one 8-lane partial dot per
// token, an 8x8 transpose-add into a vector of 8 scores, the online softmax on that vector, and
// P.V into the row's fp32 output, 16 dims at a time.
#if defined(__x86_64__)
#include "avx2_common.h"

/// Tokens per chunk: one 8-lane vector of scores.
#define KVK_A2_CHUNK 8

/// Given 8 vectors v[t], returns the vector whose lane t is the sum of v[t]'s lanes.
KVK_AVX2_INLINE __m256 kvk_transpose_add8(const __m256 *v) {
    const __m256 t0 = _mm256_hadd_ps(v[0], v[1]), t1 = _mm256_hadd_ps(v[2], v[3]);
    const __m256 t2 = _mm256_hadd_ps(v[4], v[5]), t3 = _mm256_hadd_ps(v[6], v[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);  // lane j: token j (128-bit half sums)
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

KVK_AVX2_INLINE float kvk_hmax8(__m256 v) {
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_max_ss(x, _mm_movehdup_ps(x)));
}

/// One query row against a chunk of n staged tokens (k, v: n rows of d8 floats): online-softmax
/// update of (m, l) and of the row's output o (d8 floats).
KVK_AVX2_INLINE void kvk_a2_row(const float *q, const float *k, const float *v, int32_t n, int32_t d8,
                                float *o, float *m, float *l) {
    __m256 part[KVK_A2_CHUNK];
    for (int32_t t = 0; t < KVK_A2_CHUNK; t++) {
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        if (t < n) {
            const float *kr = k + (size_t)t * d8;
            int32_t i = 0;
            for (; i + 16 <= d8; i += 16) {
                acc0 = _mm256_fmadd_ps(_mm256_load_ps(kr + i), _mm256_load_ps(q + i), acc0);
                acc1 = _mm256_fmadd_ps(_mm256_load_ps(kr + i + 8), _mm256_load_ps(q + i + 8), acc1);
            }
            if (i < d8) acc0 = _mm256_fmadd_ps(_mm256_load_ps(kr + i), _mm256_load_ps(q + i), acc0);
        }
        part[t] = _mm256_add_ps(acc0, acc1);
    }
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 valid = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane));
    const __m256 s = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), kvk_transpose_add8(part), valid);
    float mn = kvk_hmax8(s);
    if (*m > mn) mn = *m;
    const float alpha = exp2f(*m - mn);
    const __m256 e = _mm256_and_ps(kvk_exp2_8(_mm256_sub_ps(s, _mm256_set1_ps(mn))), valid);
    *l = *l * alpha + kvk_hsum8(e);
    *m = mn;
    float p[KVK_A2_CHUNK];
    _mm256_storeu_ps(p, e);
    const __m256 al = _mm256_set1_ps(alpha);
    int32_t i = 0;
    for (; i + 16 <= d8; i += 16) {
        __m256 o0 = _mm256_mul_ps(_mm256_load_ps(o + i), al), o1 = _mm256_mul_ps(_mm256_load_ps(o + i + 8), al);
        for (int32_t t = 0; t < n; t++) {
            const __m256 pb = _mm256_set1_ps(p[t]);
            o0 = _mm256_fmadd_ps(pb, _mm256_load_ps(v + (size_t)t * d8 + i), o0);
            o1 = _mm256_fmadd_ps(pb, _mm256_load_ps(v + (size_t)t * d8 + i + 8), o1);
        }
        _mm256_store_ps(o + i, o0);
        _mm256_store_ps(o + i + 8, o1);
    }
    if (i < d8) {
        __m256 o0 = _mm256_mul_ps(_mm256_load_ps(o + i), al);
        for (int32_t t = 0; t < n; t++) o0 = _mm256_fmadd_ps(_mm256_set1_ps(p[t]), _mm256_load_ps(v + (size_t)t * d8 + i), o0);
        _mm256_store_ps(o + i, o0);
    }
}

KVK_AVX2_INLINE void kvk_avx2_run(const kvk_attend_args *a, int32_t dtype) {
    const int32_t d = a->head_dim, rows = a->seq_count * a->group, d8 = kvk_round_up(d, 8), stride = kvk_round_up(d, 16);
    const int32_t heads = a->head_count, all = rows * heads;  // state row R = j * rows + r for head head + j
    const size_t row_bytes = (size_t)d * kvk_elt_bytes(dtype), head_bytes = (size_t)a->block_size * row_bytes;
    const kvk_scratch_layout sl = kvk_layout_scratch(all, d);
    char *base = (char *)a->scratch;
    float *q = (float *)(base + sl.q), *o = (float *)(base + sl.o), *m = (float *)(base + sl.m), *l = (float *)(base + sl.l);
    float *k = (float *)(base + sl.k), *v = (float *)(base + sl.v);
    const float qscale = a->scale * KVK_LOG2E;
    for (int32_t j = 0; j < heads; j++)
        for (int32_t r = 0; r < rows; r++) {
            const float *qr = kvk_q_row(a, r) + (size_t)j * a->group * d;
            const size_t R = (size_t)j * rows + r;
            for (int32_t i = 0; i < stride; i++) {
                q[R * stride + i] = i < d ? qr[i] * qscale : 0.f;
                o[R * stride + i] = 0.f;
            }
            m[R] = -INFINITY;
            l[R] = 0.f;
        }
    for (int32_t b = 0; b < a->block_count; b++) {
        // The heads of one block are adjacent in the arena: read them as one run.
        const size_t page = kvk_page_offset(a, a->blocks[b]);
        const int32_t nb = kvk_block_tokens(a, b);
        for (int32_t j = 0; j < heads; j++) {
            // The next (block, head) page in reading order, prefetched into L2 a row at a time.
            const kvk_page_ref ahead = kvk_page_ahead(a, b, j, 1, head_bytes);
            const int has_next = ahead.tokens > 0;
            const size_t next = ahead.offset;
            const size_t hpage = page + (size_t)j * head_bytes;
            for (int32_t t0 = 0; t0 < nb; t0 += KVK_A2_CHUNK) {
                const int32_t n = nb - t0 < KVK_A2_CHUNK ? nb - t0 : KVK_A2_CHUNK;
                for (int32_t t = 0; t < n; t++) {
                    const size_t at = (size_t)(t0 + t) * row_bytes;
                    kvk_widen8(k + (size_t)t * d8, (const char *)a->keys + hpage + at, dtype, d, d8);
                    kvk_widen8(v + (size_t)t * d8, (const char *)a->values + hpage + at, dtype, d, d8);
                    if (has_next)
                        for (size_t off = 0; off < row_bytes; off += 64) {
                            _mm_prefetch((const char *)a->keys + next + at + off, _MM_HINT_T1);
                            _mm_prefetch((const char *)a->values + next + at + off, _MM_HINT_T1);
                        }
                }
                for (int32_t r = 0; r < rows; r++) {
                    const size_t R = (size_t)j * rows + r;
                    kvk_a2_row(q + R * stride, k, v, n, d8, o + R * stride, m + R, l + R);
                }
            }
        }
    }
    for (int32_t j = 0; j < heads; j++)
        for (int32_t r = 0; r < rows; r++) {
            const size_t R = (size_t)j * rows + r;
            const float inv = 1.f / l[R];
            float *out = kvk_out_row(a, r) + (size_t)j * a->group * d;
            for (int32_t i = 0; i < d; i++) out[i] = o[R * stride + i] * inv;
            if (a->lse2) a->lse2[(int64_t)(r / a->group) * a->lse_seq_stride + j * a->group + r % a->group] = m[R] + log2f(l[R]);
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
