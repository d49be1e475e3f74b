// AVX-512 few-row path in bf16 math: a handful of query rows against a run of bf16 pages, with
// vdpbf16ps doing the products and no widening of K or V.
//
// The fp32 few-row path widens every K and V element to fp32 (two instructions per 16) and
// multiplies with FMAs: ~700 cycles per 16-token page of one head and row from L2, which a GQA
// group's rows multiply. Here the widening is gone and each instruction multiplies two
// elements: S = K.q pairs dims (a key row's 32 bf16 against the query's, in place), P.V pairs
// tokens (two value rows interleaved in registers by in-lane unpacks, which leaves the output
// dims of each 32-dim chunk in kvk_vpos order, as in the many-row path's O rows; the output
// is un-permuted once at the end). Queries and probabilities are rounded to bf16, as in the
// many-row path's bf16 math; the row sums use the rounded probabilities, the weights P.V uses.
//
// For bf16 KV and head dims that are multiples of 32, from 2 rows per KV head (dispatch.c checks
// all three). From L2/L3 it is ~20 % faster than the fp32 path at one row (1 row x 32 heads x
// 128 tokens, in L3: 0.050 -> 0.040 ms); from DRAM one row is memory-bound either way.
#if defined(__x86_64__)
#include "avx512_common.h"

/// Look-ahead of the L2 prefetch in (block, head) pages. One row, 32 heads x 2048 tokens, one
/// thread from DRAM: 1 page 1.65 ms, 2 pages 1.72, 3-6 pages 1.86-1.88.
#ifndef KVK_RB_PREFETCH_PAGES
#define KVK_RB_PREFETCH_PAGES 1
#endif

/// Rows per register group (the chunk loop's accumulators: rows x 2 x chunks per dims block).
#define KVK_RB_GROUP 4

/// Rows up to which P.V takes 128 dims per pass (4 x 32-dim chunks) rather than 64, so a value
/// row is read in one pass instead of two. At 3-4 rows its 24-32 accumulators spill, but the
/// few-row path streams from DRAM: 4 rows x 32 heads x 4096 tokens, one thread, LLC flushed
/// (Zen 5, 2026-12-03): 3.40-3.43 -> 2.98-3.01 ms, 3 rows 3.56 -> 3.28-3.33 ms; in cache (4
/// heads x 2048 tokens) 4 rows 0.143 -> 0.150 ms, 3 rows 0.135 -> 0.132 ms. It was 2.
#ifndef KVK_RB_WIDE_ROWS
#define KVK_RB_WIDE_ROWS 4
#endif

/// Scores of n tokens for RG rows, then their online-softmax update: pp[r][0..8) gets the
/// probabilities as bf16 pairs of consecutive tokens (0 past n), alpha[r] the old outputs' factor.
KVK_AVX512_INLINE void kvk_rb_scores(const char *kp, size_t row_bytes, int32_t n, const char *pf, int32_t pf_n,
                                     int32_t RG, int32_t NC, const __m512bh *q, int32_t qstride,
                                     float *m, float *l, float *alpha, uint32_t *pp) {
    __m512 part[KVK_RB_GROUP][16];
    for (int32_t t = 0; t < 16; t++) {
        __m512 acc[KVK_RB_GROUP];
        for (int32_t r = 0; r < RG; r++) acc[r] = _mm512_setzero_ps();
        if (t < n) {
            const char *kr = kp + (size_t)t * row_bytes;
            if (pf && t < pf_n) kvk_prefetch_row(pf + (size_t)t * row_bytes, row_bytes);
            for (int32_t c = 0; c < NC; c++) {
                const __m512bh k = (__m512bh)_mm512_loadu_si512(kr + (size_t)c * 64);
                for (int32_t r = 0; r < RG; r++) acc[r] = _mm512_dpbf16_ps(acc[r], k, q[(size_t)r * qstride + c]);
            }
        }
        for (int32_t r = 0; r < RG; r++) part[r][t] = acc[r];
    }
    const __mmask16 valid = kvk_step_mask16(n);
    for (int32_t r = 0; r < RG; r++) {
        const __m512 s = _mm512_mask_blend_ps(valid, _mm512_set1_ps(-INFINITY), kvk_transpose_add16(part[r]));
        float mn = _mm512_reduce_max_ps(s);
        if (m[r] > mn) mn = m[r];
        alpha[r] = exp2f(m[r] - mn);
        const __m512 e = _mm512_maskz_mov_ps(valid, kvk_exp2_16(_mm512_sub_ps(s, _mm512_set1_ps(mn))));
        const __m256bh eb = _mm512_cvtneps_pbh(e);  // 16 bf16: pairs (0,1), (2,3), … as 8 dwords
        _mm256_storeu_si256((__m256i *)(pp + (size_t)r * 8), (__m256i)eb);
        l[r] = l[r] * alpha[r] + _mm512_reduce_add_ps(_mm512_cvtpbh_ps(eb));
        m[r] = mn;
    }
}

/// o[r] = o[r] * alpha[r] + sum_t p[r][t] V[t] for RG rows, 32-dim chunks [c0, c0 + CB), over
/// n tokens taken in pairs (a missing odd token's value row reads as zeros: its slot in the
/// page may hold anything, and 0 x NaN is NaN).
KVK_AVX512_INLINE void kvk_rb_pv(const char *vp, size_t row_bytes, int32_t n, const char *pf, int32_t pf_n,
                                 int32_t RG, int32_t CB, int32_t c0, float *o, int32_t ostride,
                                 const float *alpha, const uint32_t *pp) {
    __m512 acc[KVK_RB_GROUP][8];
    for (int32_t r = 0; r < RG; r++) {
        const __m512 al = _mm512_set1_ps(alpha[r]);
        for (int32_t j = 0; j < 2 * CB; j++)
            acc[r][j] = _mm512_mul_ps(_mm512_load_ps(o + (size_t)r * ostride + (size_t)(c0 * 2 + j) * 16), al);
    }
    for (int32_t t = 0; t < n; t += 2) {
        const char *va = vp + (size_t)t * row_bytes, *vb = va + row_bytes;
        const int pair = t + 1 < n;
        if (pf && c0 == 0) {
            if (t < pf_n) kvk_prefetch_row(pf + (size_t)t * row_bytes, row_bytes);
            if (t + 1 < pf_n) kvk_prefetch_row(pf + (size_t)(t + 1) * row_bytes, row_bytes);
        }
        __m512bh lo[4], hi[4];
        for (int32_t c = 0; c < CB; c++) {
            const __m512i x = _mm512_loadu_si512(va + (size_t)(c0 + c) * 64);
            const __m512i y = pair ? _mm512_loadu_si512(vb + (size_t)(c0 + c) * 64) : _mm512_setzero_si512();
            lo[c] = (__m512bh)_mm512_unpacklo_epi16(x, y);
            hi[c] = (__m512bh)_mm512_unpackhi_epi16(x, y);
        }
        for (int32_t r = 0; r < RG; r++) {
            const __m512bh pr = (__m512bh)_mm512_set1_epi32((int32_t)pp[(size_t)r * 8 + t / 2]);
            for (int32_t c = 0; c < CB; c++) {
                acc[r][2 * c] = _mm512_dpbf16_ps(acc[r][2 * c], lo[c], pr);
                acc[r][2 * c + 1] = _mm512_dpbf16_ps(acc[r][2 * c + 1], hi[c], pr);
            }
        }
    }
    for (int32_t r = 0; r < RG; r++)
        for (int32_t j = 0; j < 2 * CB; j++) _mm512_store_ps(o + (size_t)r * ostride + (size_t)(c0 * 2 + j) * 16, acc[r][j]);
}

/// One chunk of up to 16 tokens for a group of RG rows; NC = head_dim / 32.
KVK_AVX512_INLINE void kvk_rb_chunk(const char *kp, const char *vp, size_t row_bytes, int32_t n, const char *kpf,
                                    const char *vpf, int32_t pf_n, int32_t RG, int32_t NC, const __m512bh *q,
                                    float *o, int32_t stride, float *m, float *l, float *alpha, uint32_t *pp) {
    kvk_rb_scores(kp, row_bytes, n, kpf, pf_n, RG, NC, q, NC, m, l, alpha, pp);
    // Up to KVK_RB_WIDE_ROWS rows, dims blocks of 128 (head dim 128: each value row read in one
    // pass), more rows 64.
    const int32_t CB = RG <= KVK_RB_WIDE_ROWS ? (NC < 4 ? NC : 4) : (NC < 2 ? NC : 2);
    for (int32_t c0 = 0; c0 < NC; c0 += CB)
        kvk_rb_pv(vp, row_bytes, n, vpf, pf_n, RG, NC - c0 < CB ? NC - c0 : CB, c0, o, stride, alpha, pp);
}

KVK_AVX512_INLINE void kvk_rb_run(const kvk_attend_args *a, int32_t NC) {
    const int32_t d = a->head_dim, rows = a->seq_count * a->group;
    const int32_t heads = a->head_count, all = rows * heads;  // state row R = j * rows + r for head head + j
    const size_t row_bytes = (size_t)d * 2, head_bytes = (size_t)a->block_size * row_bytes;
    const kvk_scratch_layout sl = kvk_layout_scratch(all, d);
    char *base = (char *)a->scratch;
    __m512bh *q = (__m512bh *)(base + sl.q);  // row R: NC vectors of 32 bf16
    float *o = (float *)(base + sl.o), *m = (float *)(base + sl.m), *l = (float *)(base + sl.l);
    float *alpha = (float *)(base + sl.alpha);
    uint32_t *pp = (uint32_t *)(base + sl.p);  // row R: 8 probability pairs
    const __m512 qscale = _mm512_set1_ps(a->scale * KVK_LOG2E);
    for (int32_t j = 0; j < heads; j++)
        for (int32_t r = 0; r < rows; r++) {
            const float *qr = kvk_q_row(a, r) + (size_t)j * a->group * d;
            const int32_t R = j * rows + r;
            for (int32_t c = 0; c < NC; c++)
                q[(size_t)R * NC + c] = _mm512_cvtne2ps_pbh(_mm512_mul_ps(_mm512_loadu_ps(qr + c * 32 + 16), qscale),
                                                            _mm512_mul_ps(_mm512_loadu_ps(qr + c * 32), qscale));
            memset(o + (size_t)R * d, 0, (size_t)d * 4);
            m[R] = -INFINITY;
            l[R] = 0.f;
        }
    for (int32_t b = 0; b < a->block_count; b++) {
        const size_t page = kvk_page_offset(a, a->blocks[b]);
        const int32_t nb = kvk_block_tokens(a, b);
        for (int32_t j = 0; j < heads; j++) {
            const size_t hoff = (size_t)j * head_bytes;
            // Prefetch the (block, head) page KVK_RB_PREFETCH_PAGES ahead in reading order into L2.
            const kvk_kv_page next = kvk_kv_page_ahead(a, b, j, KVK_RB_PREFETCH_PAGES, head_bytes);
            const char *kp = (const char *)a->keys + page + hoff, *vp = (const char *)a->values + page + hoff;
            for (int32_t t0 = 0; t0 < nb; t0 += 16) {
                const int32_t n = nb - t0 < 16 ? nb - t0 : 16;
                const size_t off = (size_t)t0 * row_bytes;
                const char *kf = next.k ? next.k + off : NULL, *vf = next.v ? next.v + off : NULL;
                const int32_t fn = next.tokens - t0;
                for (int32_t r0 = 0; r0 < rows; r0 += KVK_RB_GROUP) {
                    const int32_t R0 = j * rows + r0;
                    const __m512bh *qg = q + (size_t)R0 * NC;
                    float *og = o + (size_t)R0 * d, *mg = m + R0, *lg = l + R0, *ag = alpha + R0;
                    uint32_t *pg = pp + (size_t)R0 * 8;
                    const char *kf0 = r0 == 0 ? kf : NULL, *vf0 = r0 == 0 ? vf : NULL;
                    switch (rows - r0 < KVK_RB_GROUP ? rows - r0 : KVK_RB_GROUP) {
                    case 1: kvk_rb_chunk(kp + off, vp + off, row_bytes, n, kf0, vf0, fn, 1, NC, qg, og, d, mg, lg, ag, pg); break;
                    case 2: kvk_rb_chunk(kp + off, vp + off, row_bytes, n, kf0, vf0, fn, 2, NC, qg, og, d, mg, lg, ag, pg); break;
                    case 3: kvk_rb_chunk(kp + off, vp + off, row_bytes, n, kf0, vf0, fn, 3, NC, qg, og, d, mg, lg, ag, pg); break;
                    default: kvk_rb_chunk(kp + off, vp + off, row_bytes, n, kf0, vf0, fn, 4, NC, qg, og, d, mg, lg, ag, pg); break;
                    }
                }
            }
        }
    }
    for (int32_t j = 0; j < heads; j++)
        for (int32_t r = 0; r < rows; r++) {
            const int32_t R = j * rows + r;
            const float inv = 1.f / l[R], *orow = o + (size_t)R * d;
            float *out = kvk_out_row(a, r) + (size_t)j * a->group * d;
            for (int32_t i = 0; i < d; i++) out[i] = orow[kvk_vpos(i)] * inv;
            if (a->lse2) a->lse2[(int64_t)(r / a->group) * a->lse_seq_stride + j * a->group + r % a->group] = m[R] + log2f(l[R]);
        }
}

KVK_AVX512 void kvk_attend_rows_bf16_avx512(const kvk_attend_args *a) {
    switch (a->head_dim) {
    case 64: kvk_rb_run(a, 2); break;
    case 128: kvk_rb_run(a, 4); break;
    default: kvk_rb_run(a, a->head_dim / 32); break;
    }
}
#endif
