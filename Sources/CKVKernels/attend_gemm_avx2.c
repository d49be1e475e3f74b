// AVX2 + FMA many-row path (x86-64 CPUs without AVX-512): the AVX-512 many-row path's layout in
// 8-lane vectors, fp32 math, one KV head per call.
//
// Lanes run along the query rows: scores are S^T[token][row] (key elements broadcast against
// 8-row query vectors), the online softmax is vertical, the output is accumulated transposed,
// O^T[dim][row], with value elements broadcast against probability vectors. Per tile of up to
// KVK_TILE tokens (gathered across blocks), K and V are widened to fp32 into L1 once; then every
// block of 16 rows runs Q.K^T, the softmax and P.V on it, so each page is read once per call
// however many rows there are. Register tiles: 16 rows x 4 tokens (Q.K^T) and 4 dims x 16 rows
// (P.V), 8 accumulators each: two FMA pipes x 4 cycles of latency.
#if defined(__x86_64__)
#include "avx2_common.h"

/// Rows per row block (two 8-lane vectors).
#define KVK_G2_ROWS 16

/// S^T[t0 ..< t0+4][r0 ..< r0+16] = K . Q^T over the staged tile (rows past n read stale staging
/// and are never used).
KVK_AVX2_INLINE void kvk_g2_qk(const float *qt, int32_t rpad, const float *kt, int32_t d, int32_t r0, int32_t t0, float *s) {
    __m256 acc[2][4];
    for (int32_t rv = 0; rv < 2; rv++)
        for (int32_t t = 0; t < 4; t++) acc[rv][t] = _mm256_setzero_ps();
    const float *k = kt + (size_t)t0 * d;
    for (int32_t i = 0; i < d; i++) {
        const __m256 q0 = _mm256_load_ps(qt + (size_t)i * rpad + r0), q1 = _mm256_load_ps(qt + (size_t)i * rpad + r0 + 8);
        for (int32_t t = 0; t < 4; t++) {
            const __m256 kb = _mm256_broadcast_ss(k + (size_t)t * d + i);
            acc[0][t] = _mm256_fmadd_ps(q0, kb, acc[0][t]);
            acc[1][t] = _mm256_fmadd_ps(q1, kb, acc[1][t]);
        }
    }
    for (int32_t t = 0; t < 4; t++)
        for (int32_t rv = 0; rv < 2; rv++) _mm256_store_ps(s + (size_t)(t0 + t) * KVK_G2_ROWS + rv * 8, acc[rv][t]);
}

/// O^T[i0 ..< i0+NI][r0 ..< r0+16] = O^T * alpha + V^T . P^T over n tokens.
KVK_AVX2_INLINE void kvk_g2_pv(float *ot, int32_t rpad, const float *vt, int32_t d, int32_t r0, int32_t i0, int32_t n,
                               int32_t NI, const float *p, const float *alpha) {
    __m256 acc[4][2];
    const __m256 a0 = _mm256_load_ps(alpha + r0), a1 = _mm256_load_ps(alpha + r0 + 8);
    for (int32_t i = 0; i < NI; i++) {
        acc[i][0] = _mm256_mul_ps(_mm256_load_ps(ot + (size_t)(i0 + i) * rpad + r0), a0);
        acc[i][1] = _mm256_mul_ps(_mm256_load_ps(ot + (size_t)(i0 + i) * rpad + r0 + 8), a1);
    }
    for (int32_t t = 0; t < n; t++) {
        const __m256 p0 = _mm256_load_ps(p + (size_t)t * KVK_G2_ROWS), p1 = _mm256_load_ps(p + (size_t)t * KVK_G2_ROWS + 8);
        for (int32_t i = 0; i < NI; i++) {
            const __m256 vb = _mm256_broadcast_ss(vt + (size_t)t * d + i0 + i);
            acc[i][0] = _mm256_fmadd_ps(p0, vb, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(p1, vb, acc[i][1]);
        }
    }
    for (int32_t i = 0; i < NI; i++) {
        _mm256_store_ps(ot + (size_t)(i0 + i) * rpad + r0, acc[i][0]);
        _mm256_store_ps(ot + (size_t)(i0 + i) * rpad + r0 + 8, acc[i][1]);
    }
}

/// Online-softmax update of one row block from the scores of n tokens: new max, factor alpha
/// for the old outputs and sums, probabilities p[t][row].
KVK_AVX2_INLINE void kvk_g2_softmax(const float *s, int32_t n, int32_t r0, float *m, float *l, float *alpha, float *p) {
    for (int32_t rv = 0; rv < 2; rv++) {
        const int32_t c = rv * 8;
        __m256 mx = _mm256_set1_ps(-INFINITY);
        for (int32_t t = 0; t < n; t++) mx = _mm256_max_ps(mx, _mm256_load_ps(s + (size_t)t * KVK_G2_ROWS + c));
        const __m256 mo = _mm256_load_ps(m + r0 + c), mn = _mm256_max_ps(mo, mx);
        const __m256 al = kvk_exp2_8(_mm256_sub_ps(mo, mn));
        __m256 sum = _mm256_setzero_ps();
        for (int32_t t = 0; t < n; t++) {
            const __m256 e = kvk_exp2_8(_mm256_sub_ps(_mm256_load_ps(s + (size_t)t * KVK_G2_ROWS + c), mn));
            _mm256_store_ps(p + (size_t)t * KVK_G2_ROWS + c, e);
            sum = _mm256_add_ps(sum, e);
        }
        _mm256_store_ps(alpha + r0 + c, al);
        _mm256_store_ps(l + r0 + c, _mm256_fmadd_ps(_mm256_load_ps(l + r0 + c), al, sum));
        _mm256_store_ps(m + r0 + c, mn);
    }
}

KVK_AVX2_INLINE void kvk_g2_run(const kvk_attend_args *a, int32_t dtype) {
    const int32_t d = a->head_dim, rows = a->seq_count * a->group, rpad = kvk_round_up(rows, KVK_G2_ROWS);
    const size_t row_bytes = (size_t)d * kvk_elt_bytes(dtype);
    const kvk_scratch_layout sl = kvk_layout_scratch(rows, d);
    char *base = (char *)a->scratch;
    float *qt = (float *)(base + sl.q), *ot = (float *)(base + sl.o), *m = (float *)(base + sl.m);
    float *l = (float *)(base + sl.l), *alpha = (float *)(base + sl.alpha), *kt = (float *)(base + sl.k);
    float *vt = (float *)(base + sl.v), *s = (float *)(base + sl.s), *p = (float *)(base + sl.p);
    const float qscale = a->scale * KVK_LOG2E;
    memset(qt, 0, (size_t)d * rpad * 4);
    memset(ot, 0, (size_t)d * rpad * 4);
    for (int32_t r = 0; r < rows; r++) {
        const float *qr = kvk_q_row(a, r);
        for (int32_t i = 0; i < d; i++) qt[(size_t)i * rpad + r] = qr[i] * qscale;
    }
    for (int32_t r = 0; r < rpad; r++) { m[r] = -INFINITY; l[r] = 0.f; }

    int32_t block = 0, token = 0;
    while (block < a->block_count) {
        // Gather and widen the next tile of up to KVK_TILE tokens (K and V rows of d floats).
        int32_t n = 0;
        while (n < KVK_TILE && block < a->block_count) {
            const size_t page = kvk_page_offset(a, a->blocks[block]);
            const int32_t nb = kvk_block_tokens(a, block);
            for (; token < nb && n < KVK_TILE; token++, n++) {
                kvk_widen8(kt + (size_t)n * d, (const char *)a->keys + page + (size_t)token * row_bytes, dtype, d, d);
                kvk_widen8(vt + (size_t)n * d, (const char *)a->values + page + (size_t)token * row_bytes, dtype, d, d);
            }
            if (token == nb) { block++; token = 0; }
        }
        for (int32_t r0 = 0; r0 < rpad; r0 += KVK_G2_ROWS) {
            for (int32_t t0 = 0; t0 < n; t0 += 4) kvk_g2_qk(qt, rpad, kt, d, r0, t0, s);
            kvk_g2_softmax(s, n, r0, m, l, alpha, p);
            int32_t i0 = 0;
            for (; i0 + 4 <= d; i0 += 4) kvk_g2_pv(ot, rpad, vt, d, r0, i0, n, 4, p, alpha);
            for (; i0 < d; i0++) kvk_g2_pv(ot, rpad, vt, d, r0, i0, n, 1, p, alpha);
        }
    }
    for (int32_t r = 0; r < rows; r++) {
        const float inv = 1.f / l[r];
        float *out = kvk_out_row(a, r);
        for (int32_t i = 0; i < d; i++) out[i] = ot[(size_t)i * rpad + r] * inv;
        kvk_store_lse(a, r, m[r] + log2f(l[r]));
    }
}

KVK_AVX2 void kvk_attend_gemm_avx2(const kvk_attend_args *a) {
    switch (a->dtype) {
    case KVK_DTYPE_F16: kvk_g2_run(a, KVK_DTYPE_F16); break;
    case KVK_DTYPE_BF16: kvk_g2_run(a, KVK_DTYPE_BF16); break;
    default: kvk_g2_run(a, KVK_DTYPE_F32); break;
    }
}
#endif
