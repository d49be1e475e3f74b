// AVX-512 few-row path: a handful of query rows (one sequence's GQA group, or a small shared
// node) against a run of pages, streaming KV once at memory speed.
//
// Lanes run along the head dimension. Per chunk of 16 tokens: each key row is widened to fp32
// once and dotted with every query row (one 16-lane partial per token and row), a 16x16
// transpose-add turns the partials into one vector of 16 scores per row, the online softmax
// runs on that vector, and P.V accumulates output rows 128 dims at a time (64 from 3 rows) with
// the value rows widened once per chunk. The next block of the run is prefetched a token row at a time, since
// a block's pages are one 4 KiB page per head that the hardware prefetcher does not cross into.
#if defined(__x86_64__)
#include "avx512_common.h"

/// Look-ahead of the software prefetch (into L2), in (block, head) pages of 4 KiB (bf16, d = 128)
/// per kind. One page: from DRAM, one thread, bf16 MHA, 1 page 1.77 ms vs 2 pages 2.03, 3 pages 2.15
/// (and 2.55 for the former L1 prefetch 2 pages ahead).
#ifndef KVK_PREFETCH_PAGES
#define KVK_PREFETCH_PAGES 1
#endif

/// Rows up to which P.V takes 128 dims (8 x 16) per pass rather than 64, so each value row is
/// read in one pass instead of two (16 accumulators at 2 rows). One thread, 32 heads x 4096
/// tokens, LLC flushed (Zen 5, 2026-12-03; outputs bit-identical): 1 row bf16 KV 2.55-2.61 ->
/// 2.18-2.19 ms, fp16 2.71-2.76 -> 2.28-2.33, fp32 5.04-5.07 -> 4.58-4.59; 2 rows fp32 6.51 ->
/// 5.31; in cache 1-2 rows ~5 % faster. At 3-4 rows (spilling) fp32 gained ~10 % from DRAM,
/// fp16 nothing, and lost 3-8 % in cache.
#ifndef KVK_ROWS_WIDE_PV
#define KVK_ROWS_WIDE_PV 2
#endif

/// Scores of `n` tokens for rows r0 ..< r0+RG, then the online-softmax update of those rows:
/// p[r][0..16) gets the probabilities (0 past n), alpha[r] the factor old outputs are scaled by.
KVK_AVX512_INLINE void kvk_rows_scores(const char *kp, size_t row_bytes, int32_t n, const char *pf, int32_t pf_n,
                                       int32_t dtype, int32_t RG, int32_t nv, __mmask16 tail,
                                       const float *q, int32_t qstride, float *m, float *l, float *alpha, float *p) {
    __m512 part[4][16];
    for (int32_t t = 0; t < 16; t++) {
        __m512 acc[4][2];  // two chains per row: the dot product is 2 x nv/2 dependent FMAs
        for (int32_t r = 0; r < RG; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
        if (t < n) {
            const char *kr = kp + (size_t)t * row_bytes;
            if (pf && t < pf_n) kvk_prefetch_row(pf + (size_t)t * row_bytes, row_bytes);
            for (int32_t v = 0; v < nv; v += 2) {
                __m512 k0 = kvk_load16(kr, dtype, v * 16, v == nv - 1 ? tail : 0xFFFF);
                for (int32_t r = 0; r < RG; r++)
                    acc[r][0] = _mm512_fmadd_ps(k0, _mm512_load_ps(q + (size_t)r * qstride + v * 16), acc[r][0]);
                if (v + 1 < nv) {
                    __m512 k1 = kvk_load16(kr, dtype, (v + 1) * 16, v + 1 == nv - 1 ? tail : 0xFFFF);
                    for (int32_t r = 0; r < RG; r++)
                        acc[r][1] = _mm512_fmadd_ps(k1, _mm512_load_ps(q + (size_t)r * qstride + (v + 1) * 16), acc[r][1]);
                }
            }
        }
        for (int32_t r = 0; r < RG; r++) part[r][t] = _mm512_add_ps(acc[r][0], acc[r][1]);
    }
    const __mmask16 valid = kvk_step_mask16(n);
    for (int32_t r = 0; r < RG; r++) {
        __m512 s = _mm512_mask_blend_ps(valid, _mm512_set1_ps(-INFINITY), kvk_transpose_add16(part[r]));
        float mn = _mm512_reduce_max_ps(s);
        if (m[r] > mn) mn = m[r];
        alpha[r] = exp2f(m[r] - mn);
        __m512 e = _mm512_maskz_mov_ps(valid, kvk_exp2_16(_mm512_sub_ps(s, _mm512_set1_ps(mn))));
        l[r] = l[r] * alpha[r] + _mm512_reduce_add_ps(e);
        m[r] = mn;
        _mm512_store_ps(p + (size_t)r * 16, e);
    }
}

/// o[r] = o[r] * alpha[r] + sum_t p[r][t] * V[t] for rows r0 ..< r0+RG, dims [16*v0, 16*(v0+NV)).
KVK_AVX512_INLINE void kvk_rows_pv(const char *vp, size_t row_bytes, int32_t n, const char *pf, int32_t pf_n,
                                   int32_t dtype, int32_t RG, int32_t NV, int32_t v0, int32_t nv, __mmask16 tail,
                                   float *o, int32_t ostride, const float *alpha, const float *p) {
    __m512 acc[4][8];
    for (int32_t r = 0; r < RG; r++)
        for (int32_t j = 0; j < NV; j++)
            acc[r][j] = _mm512_mul_ps(_mm512_load_ps(o + (size_t)r * ostride + (v0 + j) * 16), _mm512_set1_ps(alpha[r]));
    for (int32_t t = 0; t < n; t++) {
        const char *vr = vp + (size_t)t * row_bytes;
        if (pf && v0 == 0 && t < pf_n) kvk_prefetch_row(pf + (size_t)t * row_bytes, row_bytes);
        __m512 v[8];
        for (int32_t j = 0; j < NV; j++) v[j] = kvk_load16(vr, dtype, (v0 + j) * 16, v0 + j == nv - 1 ? tail : 0xFFFF);
        for (int32_t r = 0; r < RG; r++) {
            __m512 pr = _mm512_set1_ps(p[(size_t)r * 16 + t]);
            for (int32_t j = 0; j < NV; j++) acc[r][j] = _mm512_fmadd_ps(pr, v[j], acc[r][j]);
        }
    }
    for (int32_t r = 0; r < RG; r++)
        for (int32_t j = 0; j < NV; j++) _mm512_store_ps(o + (size_t)r * ostride + (v0 + j) * 16, acc[r][j]);
}

/// One chunk of up to 16 tokens for a group of RG rows.
KVK_AVX512_INLINE void kvk_rows_chunk(const char *kp, const char *vp, size_t row_bytes, int32_t n,
                                      const char *kpf, const char *vpf, int32_t pf_n, int32_t dtype, int32_t RG,
                                      int32_t nv, __mmask16 tail, const float *q, float *o, int32_t stride,
                                      float *m, float *l, float *alpha, float *p) {
    kvk_rows_scores(kp, row_bytes, n, kpf, pf_n, dtype, RG, nv, tail, q, stride, m, l, alpha, p);
    int32_t v0 = 0;
    if (RG <= KVK_ROWS_WIDE_PV) for (; v0 + 8 <= nv; v0 += 8) kvk_rows_pv(vp, row_bytes, n, vpf, pf_n, dtype, RG, 8, v0, nv, tail, o, stride, alpha, p);
    for (; v0 + 4 <= nv; v0 += 4) kvk_rows_pv(vp, row_bytes, n, vpf, pf_n, dtype, RG, 4, v0, nv, tail, o, stride, alpha, p);
    for (; v0 < nv; v0++) kvk_rows_pv(vp, row_bytes, n, vpf, pf_n, dtype, RG, 1, v0, nv, tail, o, stride, alpha, p);
}

/// `NV`: head_dim / 16 as a compile-time constant for the common head dims (full unrolling,
/// no masks), or 0 for any head dim.
KVK_AVX512_INLINE void kvk_rows_dtype(const kvk_attend_args *a, int32_t dtype, int32_t NV) {
    const int32_t d = a->head_dim, rows = a->seq_count * a->group, nv = NV ? NV : (d + 15) / 16, stride = nv * 16;
    const int32_t heads = a->head_count, all = rows * heads;  // state row R = j * rows + r for head head + j
    const __mmask16 tail = NV ? (__mmask16)0xFFFF : kvk_tail_mask16(d);
    const size_t row_bytes = (size_t)d * kvk_elt_bytes(dtype), head_bytes = (size_t)a->block_size * row_bytes;
    const kvk_scratch_layout sl = kvk_layout_scratch(all, d);
    char *base = (char *)a->scratch;
    float *q = (float *)(base + sl.q), *o = (float *)(base + sl.o), *m = (float *)(base + sl.m);
    float *l = (float *)(base + sl.l), *alpha = (float *)(base + sl.alpha), *p = (float *)(base + sl.p);
    const float qscale = a->scale * KVK_LOG2E;
    for (int32_t j = 0; j < heads; j++) {
        for (int32_t r = 0; r < rows; r++) {
            const float *qr = kvk_q_row(a, r) + (size_t)j * a->group * d;
            const size_t at = (size_t)(j * rows + r) * stride;
            for (int32_t i = 0; i < stride; i++) {
                q[at + i] = i < d ? qr[i] * qscale : 0.f;
                o[at + i] = 0.f;
            }
            m[j * rows + r] = -INFINITY;
            l[j * rows + r] = 0.f;
        }
    }
    for (int32_t b = 0; b < a->block_count; b++) {
        // The heads of one block are adjacent in the arena: read them as one run.
        const size_t page = kvk_page_offset(a, a->blocks[b]);
        const int32_t nb = kvk_block_tokens(a, b);
        for (int32_t j = 0; j < heads; j++) {
            const size_t hoff = (size_t)j * head_bytes;
            // Prefetch the (block, head) page KVK_PREFETCH_PAGES ahead in reading order.
            const kvk_kv_page next = kvk_kv_page_ahead(a, b, j, KVK_PREFETCH_PAGES, head_bytes);
            const char *kp = (const char *)a->keys + page + hoff, *vp = (const char *)a->values + page + hoff;
            for (int32_t t0 = 0; t0 < nb; t0 += 16) {
                const int32_t n = nb - t0 < 16 ? nb - t0 : 16;
                const size_t off = (size_t)t0 * row_bytes;
                const char *kf = next.k ? next.k + off : NULL, *vf = next.v ? next.v + off : NULL;
                const int32_t fn = next.tokens - t0;
                for (int32_t r0 = 0; r0 < rows; r0 += 4) {
                    const int32_t R0 = j * rows + r0;
                    float *qg = q + (size_t)R0 * stride, *og = o + (size_t)R0 * stride;
                    float *mg = m + R0, *lg = l + R0, *ag = alpha + R0, *pg = p + (size_t)R0 * 16;
                    const char *kf0 = r0 == 0 ? kf : NULL, *vf0 = r0 == 0 ? vf : NULL;
                    switch (rows - r0 < 4 ? rows - r0 : 4) {
                    case 1: kvk_rows_chunk(kp + off, vp + off, row_bytes, n, kf0, vf0, fn, dtype, 1, nv, tail, qg, og, stride, mg, lg, ag, pg); break;
                    case 2: kvk_rows_chunk(kp + off, vp + off, row_bytes, n, kf0, vf0, fn, dtype, 2, nv, tail, qg, og, stride, mg, lg, ag, pg); break;
                    case 3: kvk_rows_chunk(kp + off, vp + off, row_bytes, n, kf0, vf0, fn, dtype, 3, nv, tail, qg, og, stride, mg, lg, ag, pg); break;
                    default: kvk_rows_chunk(kp + off, vp + off, row_bytes, n, kf0, vf0, fn, dtype, 4, nv, tail, qg, og, stride, mg, lg, ag, pg); break;
                    }
                }
            }
        }
    }
    for (int32_t j = 0; j < heads; j++) {
        for (int32_t r = 0; r < rows; r++) {
            const int32_t R = j * rows + r;
            const float inv = 1.f / l[R];
            float *out = kvk_out_row(a, r) + (size_t)j * a->group * d;
            for (int32_t i = 0; i < d; i++) out[i] = o[(size_t)R * stride + i] * inv;
            if (a->lse2) a->lse2[(int64_t)(r / a->group) * a->lse_seq_stride + j * a->group + r % a->group] = m[R] + log2f(l[R]);
        }
    }
}

KVK_AVX512_INLINE void kvk_rows_nv(const kvk_attend_args *a, int32_t NV) {
    switch (a->dtype) {
    case KVK_DTYPE_F16: kvk_rows_dtype(a, KVK_DTYPE_F16, NV); break;
    case KVK_DTYPE_BF16: kvk_rows_dtype(a, KVK_DTYPE_BF16, NV); break;
    default: kvk_rows_dtype(a, KVK_DTYPE_F32, NV); break;
    }
}

KVK_AVX512 void kvk_attend_rows_avx512(const kvk_attend_args *a) {
    switch (a->head_dim) {
    case 64: kvk_rows_nv(a, 4); break;
    case 128: kvk_rows_nv(a, 8); break;
    default: kvk_rows_nv(a, 0); break;
    }
}
#endif
