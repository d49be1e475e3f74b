// AVX-512 many-row path: many query rows (all sequences of a shared node times the GQA group)
// against a run of pages, reading each page once for all of them. GEMM-shaped and
// compute-bound once there are a few dozen rows.
//
// Lanes run along the query rows, so the whole online softmax is vertical (no horizontal
// reductions): scores are S^T[token][row] and the per-row max / sum / rescale factor are
// vectors. Per tile of KVK_TILE tokens, gathered across blocks (any block size), K and V are
// staged into L1 in the operand layout where they are not already in it; then for each block of
// up to 64 rows: S^T = K.Q^T (key elements broadcast against 16-row query vectors), online
// softmax, then P.V into the output.
//
// fp32 math: staged tiles are fp32, products are FMAs, the output is accumulated transposed,
// O^T[dim][row] (value elements broadcast against probability vectors). bf16 math (vdpbf16ps,
// twice the multiply rate): queries are packed as bf16 pairs along the head dim, keys (bf16
// rows, read in place) are broadcast as pairs of dims, so each dot-product step covers two dims;
// probabilities are packed as bf16 pairs of consecutive tokens, so each P.V step covers two
// tokens. For bf16 KV with head dims that are multiples of 32 the values are read in place too:
// two tokens' rows interleave into pairs in registers and the output is accumulated as rows,
// O[row][dim] (kvk_pv_rows_bf16). Otherwise the values are staged as pairs ([token pair][dim][2])
// and broadcast against probability vectors into O^T. The row sums l use the bf16-rounded
// probabilities, the same weights P.V uses.
//
// 6 to 8 rows with bf16 math on bf16 KV take an 8-row variant (below): one ymm row vector
// instead of 16-row zmm vectors that would be half padding.
#if defined(__x86_64__)
#include "avx512_common.h"

/// Register tiles must unroll fully or their accumulators live in memory: -O2 (the package's
/// release level) stopped doing so on its own for the 16-wide tiles.
#define KVK_UNROLL _Pragma("GCC unroll 16")

/// Row-vector blocks x tokens (or x dims) of a micro-kernel's register tile, by row vectors.
#define KVK_NT(RVB) ((RVB) == 1 ? 16 : (RVB) == 4 ? 4 : 8)

typedef struct kvk_gemm_state {
    int32_t d, dpad2, rpad, kstride;
    int32_t orows;            // bf16 math, bf16 KV, d % 32 == 0: values read in place, ot holds O as rows
    const float *qt;          // fp32 math: d x rpad
    const uint32_t *qp;       // bf16 math: dpad2/2 x rpad pairs
    float *ot, *m, *l, *alpha, *s;  // ot: O^T (d x rpad), or O (rpad x d, kvk_vpos order) if orows
    float *kt, *vt;           // fp32 math tiles: KVK_TILE x d
    uint16_t *kb;             // bf16 math: KVK_TILE x dpad2
    uint32_t *vp, *pp;        // bf16 math: KVK_TILE/2 x d pairs; KVK_TILE/2 x 64 pairs
    float *p;                 // fp32 math: KVK_TILE x 64
} kvk_gemm_state;

// ---------------------------------------------------------------------------------- staging

KVK_AVX512_INLINE __m256i kvk_load16_bf16(const void *row, int32_t dtype, int32_t i, __mmask16 m) {
    if (dtype == KVK_DTYPE_BF16) return _mm256_maskz_loadu_epi16(m, (const uint16_t *)row + i);
    return (__m256i)_mm512_cvtneps_pbh(kvk_load16(row, dtype, i, m));
}

KVK_AVX512_INLINE void kvk_stage_f32(float *dst, const char *src, int32_t dtype, int32_t d) {
    for (int32_t i = 0; i < d; i += 16) {
        __mmask16 m = kvk_step_mask16(d - i);
        _mm512_mask_storeu_ps(dst + i, m, kvk_load16(src, dtype, i, m));
    }
}

/// A key row as bf16, padded with a zero to an even length.
KVK_AVX512_INLINE void kvk_stage_bf16(uint16_t *dst, const char *src, int32_t dtype, int32_t d, int32_t dpad2) {
    for (int32_t i = 0; i < d; i += 16) {
        __mmask16 m = kvk_step_mask16(d - i);
        _mm256_mask_storeu_epi16(dst + i, m, kvk_load16_bf16(src, dtype, i, m));
    }
    if (dpad2 > d) dst[d] = 0;
}

/// Two value rows interleaved as bf16 pairs (b may be NULL: zeros).
KVK_AVX512_INLINE void kvk_stage_pairs(uint32_t *dst, const char *a, const char *b, int32_t dtype, int32_t d) {
    for (int32_t i = 0; i < d; i += 16) {
        __mmask16 m = kvk_step_mask16(d - i);
        __m512i lo = _mm512_cvtepu16_epi32(kvk_load16_bf16(a, dtype, i, m));
        __m512i hi = b ? _mm512_slli_epi32(_mm512_cvtepu16_epi32(kvk_load16_bf16(b, dtype, i, m)), 16) : _mm512_setzero_si512();
        _mm512_mask_storeu_epi32(dst + i, m, _mm512_or_si512(lo, hi));
    }
}

// ---------------------------------------------------------------------------------- micro-kernels

/// S^T[t0 ..< t0+NT][r0 ..< r0+16*RVB] = K . Q^T, fp32.
KVK_AVX512_INLINE void kvk_qk_f32(const kvk_gemm_state *g, int32_t r0, int32_t t0, int32_t RVB, int32_t NT) {
    __m512 acc[4][16];
    for (int32_t rv = 0; rv < RVB; rv++)
        for (int32_t t = 0; t < NT; t++) acc[rv][t] = _mm512_setzero_ps();
    const float *k = g->kt + (size_t)t0 * g->kstride;
    for (int32_t i = 0; i < g->d; i++) {
        __m512 qv[4];
        for (int32_t rv = 0; rv < RVB; rv++) qv[rv] = _mm512_load_ps(g->qt + (size_t)i * g->rpad + r0 + rv * 16);
        for (int32_t t = 0; t < NT; t++) {
            __m512 kb = _mm512_set1_ps(k[(size_t)t * g->kstride + i]);
            for (int32_t rv = 0; rv < RVB; rv++) acc[rv][t] = _mm512_fmadd_ps(qv[rv], kb, acc[rv][t]);
        }
    }
    for (int32_t t = 0; t < NT; t++)
        for (int32_t rv = 0; rv < RVB; rv++) _mm512_store_ps(g->s + (size_t)(t0 + t) * KVK_ROW_BLOCK + rv * 16, acc[rv][t]);
}

/// The bf16 products of S^T[t0 ..< t0+NT][r0 ..< r0+16*RVB] = K . Q^T into acc (register tiles:
/// the caller's array stays in registers once this is inlined); each vdpbf16ps adds two dims'
/// products. krows: the NT key rows (bf16, dpad2 long) read in place, or NULL: the staged tile.
KVK_AVX512_INLINE void kvk_qk_bf16_products(const kvk_gemm_state *g, int32_t r0, int32_t t0, int32_t RVB, int32_t NT,
                                            const uint16_t *const *krows, const uint16_t *k0, int32_t D, __m512 acc[4][16]) {
    for (int32_t rv = 0; rv < RVB; rv++)
        KVK_UNROLL
        for (int32_t t = 0; t < NT; t++) acc[rv][t] = _mm512_setzero_ps();
    const uint16_t *k = g->kb + (size_t)t0 * g->dpad2;  // staged: one base, constant row offsets
    for (int32_t i2 = 0; i2 < g->dpad2 / 2; i2++) {
        __m512bh qv[4];
        for (int32_t rv = 0; rv < RVB; rv++) qv[rv] = (__m512bh)_mm512_load_si512(g->qp + (size_t)i2 * g->rpad + r0 + rv * 16);
        KVK_UNROLL
        for (int32_t t = 0; t < NT; t++) {
            int32_t w;
            memcpy(&w, (D ? k0 + (size_t)t * D : krows ? krows[t] : k + (size_t)t * g->dpad2) + 2 * i2, 4);
            __m512bh kb = (__m512bh)_mm512_set1_epi32(w);
            for (int32_t rv = 0; rv < RVB; rv++) acc[rv][t] = _mm512_dpbf16_ps(acc[rv][t], qv[rv], kb);
        }
    }
}

/// Same as kvk_qk_f32 with bf16 pairs, the scores stored for kvk_softmax.
KVK_AVX512_INLINE void kvk_qk_bf16(const kvk_gemm_state *g, int32_t r0, int32_t t0, int32_t RVB, int32_t NT,
                                   const uint16_t *const *krows) {
    __m512 acc[4][16];
    kvk_qk_bf16_products(g, r0, t0, RVB, NT, krows, NULL, 0, acc);
    KVK_UNROLL
    for (int32_t t = 0; t < NT; t++)
        for (int32_t rv = 0; rv < RVB; rv++) _mm512_store_ps(g->s + (size_t)(t0 + t) * KVK_ROW_BLOCK + rv * 16, acc[rv][t]);
}

/// O^T[i0 ..< i0+NI][rows] = O^T * alpha + V^T . P^T over n tokens, fp32.
KVK_AVX512_INLINE void kvk_pv_f32(const kvk_gemm_state *g, int32_t r0, int32_t i0, int32_t n, int32_t RVB, int32_t NI) {
    __m512 acc[16][4], al[4];
    for (int32_t rv = 0; rv < RVB; rv++) al[rv] = _mm512_load_ps(g->alpha + r0 + rv * 16);
    for (int32_t i = 0; i < NI; i++)
        for (int32_t rv = 0; rv < RVB; rv++)
            acc[i][rv] = _mm512_mul_ps(_mm512_load_ps(g->ot + (size_t)(i0 + i) * g->rpad + r0 + rv * 16), al[rv]);
    for (int32_t t = 0; t < n; t++) {
        __m512 pv[4];
        for (int32_t rv = 0; rv < RVB; rv++) pv[rv] = _mm512_load_ps(g->p + (size_t)t * KVK_ROW_BLOCK + rv * 16);
        for (int32_t i = 0; i < NI; i++) {
            __m512 vb = _mm512_set1_ps(g->vt[(size_t)t * g->kstride + i0 + i]);
            for (int32_t rv = 0; rv < RVB; rv++) acc[i][rv] = _mm512_fmadd_ps(pv[rv], vb, acc[i][rv]);
        }
    }
    for (int32_t i = 0; i < NI; i++)
        for (int32_t rv = 0; rv < RVB; rv++) _mm512_store_ps(g->ot + (size_t)(i0 + i) * g->rpad + r0 + rv * 16, acc[i][rv]);
}

/// Same with bf16 pairs of tokens (staged values): each vdpbf16ps adds two tokens' products.
/// rescale == 0: no row's max moved this tile (alpha is 1), so O^T is only loaded.
KVK_AVX512_INLINE void kvk_pv_bf16(const kvk_gemm_state *g, int32_t r0, int32_t i0, int32_t npairs, int32_t RVB, int32_t NI,
                                   int rescale) {
    __m512 acc[16][4], al[4];
    // Local restrict pointers: stores through g's fields would make the compiler reload the
    // fields (and rebuild each address) after every store of the epilogue.
    const size_t rpad = (size_t)g->rpad, d = (size_t)g->d;
    float *restrict ot = g->ot + (size_t)i0 * rpad + r0;
    const uint32_t *restrict pp = g->pp;
    const uint32_t *restrict vrow = g->vp + i0;
    for (int32_t rv = 0; rv < RVB; rv++) al[rv] = _mm512_load_ps(g->alpha + r0 + rv * 16);
    KVK_UNROLL
    for (int32_t i = 0; i < NI; i++)
        for (int32_t rv = 0; rv < RVB; rv++) {
            acc[i][rv] = _mm512_load_ps(ot + (size_t)i * rpad + rv * 16);
            if (rescale) acc[i][rv] = _mm512_mul_ps(acc[i][rv], al[rv]);
        }
    for (int32_t tp = 0; tp < npairs; tp++) {
        __m512bh pv[4];
        for (int32_t rv = 0; rv < RVB; rv++) pv[rv] = (__m512bh)_mm512_load_si512(pp + (size_t)tp * KVK_ROW_BLOCK + rv * 16);
        KVK_UNROLL
        for (int32_t i = 0; i < NI; i++) {
            __m512bh vb = (__m512bh)_mm512_set1_epi32((int32_t)vrow[(size_t)tp * d + i]);
            for (int32_t rv = 0; rv < RVB; rv++) acc[i][rv] = _mm512_dpbf16_ps(acc[i][rv], pv[rv], vb);
        }
    }
    KVK_UNROLL
    for (int32_t i = 0; i < NI; i++)
        for (int32_t rv = 0; rv < RVB; rv++) _mm512_store_ps(ot + (size_t)i * rpad + rv * 16, acc[i][rv]);
}

/// Rows x 32-dim chunks of kvk_pv_rows_bf16's register tile (16 accumulators). Goal GEMM item,
/// one head in cache: 4 x 2 ~2 % ahead of 8 x 1 and 2 x 4.
#ifndef KVK_PVR_ROWS
#define KVK_PVR_ROWS 4
#endif
#ifndef KVK_PVR_CHUNKS
#define KVK_PVR_CHUNKS 2
#endif

/// P.V over bf16 values read in place, the output kept as rows (lanes along the head dim): the
/// value rows of two tokens, 32 dims each, interleave into pairs in registers by in-lane word
/// unpacks (dims in kvk_vpos order, as O keeps them), and each row's probability pair is a
/// broadcast. Nothing is staged or stored but the output, where the staged pairs cost a store
/// per 64 bytes of values. Rows r0 ..< r0 + KVK_PVR_ROWS (lanes rr0 ... of the row block's
/// probability pairs), NC 32-dim chunks from dim i0, tokens 0 ..< n.
KVK_AVX512_INLINE void kvk_pv_rows_bf16(const kvk_gemm_state *g, int32_t r0, int32_t rr0, int32_t i0, int32_t n,
                                        const char *const *vrows, int rescale, int32_t NC, int32_t D) {
    enum { RG = KVK_PVR_ROWS };
    __m512 acc[RG][2 * KVK_PVR_CHUNKS];
    const size_t d = (size_t)g->d;
    float *restrict o = g->ot + (size_t)r0 * d + i0;
    const uint32_t *restrict pp = g->pp + rr0;
    KVK_UNROLL
    for (int32_t r = 0; r < RG; r++) {
        const __m512 al = _mm512_set1_ps(rescale ? g->alpha[r0 + r] : 1.f);
        for (int32_t j = 0; j < 2 * NC; j++) {
            acc[r][j] = _mm512_load_ps(o + (size_t)r * d + 16 * j);
            if (rescale) acc[r][j] = _mm512_mul_ps(acc[r][j], al);
        }
    }
    for (int32_t t = 0; t < n; t += 2) {
        // An odd last token pairs with zeros; D > 0: every pair's second row follows its first.
        const char *next = D ? vrows[t] + 2 * (size_t)D : t + 1 < n ? vrows[t + 1] : NULL;
        __m512bh v[2 * KVK_PVR_CHUNKS];
        for (int32_t c = 0; c < NC; c++) {
            const __m512i x = _mm512_loadu_si512((const uint16_t *)vrows[t] + i0 + 32 * c);
            const __m512i y = next ? _mm512_loadu_si512((const uint16_t *)next + i0 + 32 * c) : _mm512_setzero_si512();
            v[2 * c] = (__m512bh)_mm512_unpacklo_epi16(x, y);
            v[2 * c + 1] = (__m512bh)_mm512_unpackhi_epi16(x, y);
        }
        KVK_UNROLL
        for (int32_t r = 0; r < RG; r++) {
            const __m512bh pr = (__m512bh)_mm512_set1_epi32((int32_t)pp[(size_t)(t / 2) * KVK_ROW_BLOCK + r]);
            for (int32_t j = 0; j < 2 * NC; j++) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], v[j], pr);
        }
    }
    KVK_UNROLL
    for (int32_t r = 0; r < RG; r++)
        for (int32_t j = 0; j < 2 * NC; j++) _mm512_store_ps(o + (size_t)r * d + 16 * j, acc[r][j]);
}

/// Two vectors of 16 rows' values for tokens t and t+1 as one vector of bf16 pairs, lane r =
/// (even[r], odd[r]): rounded by one vcvtne2ps2bf16, interleaved by one word permute.
KVK_AVX512_INLINE __m512i kvk_bf16_pairs(__m512 even, __m512 odd) {
    const __m512i pairs = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                           23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    return _mm512_permutexvar_epi16(pairs, (__m512i)_mm512_cvtne2ps_pbh(odd, even));
}

/// The probability pairs of two score vectors given minus their reference (finite, <= a few).
KVK_AVX512_INLINE __m512i kvk_prob_pairs(__m512 x0, __m512 x1) {
    return kvk_bf16_pairs(kvk_exp2_16_bf16(x0), kvk_exp2_16_bf16(x1));
}

/// Online-softmax update of one row block from the scores of n tokens: new max, rescale
/// factor alpha, probabilities (fp32, or bf16 pairs of tokens), row sums. Returns whether any
/// row's max moved (otherwise alpha is 1 and O^T needs no rescale).
KVK_AVX512_INLINE int kvk_softmax(const kvk_gemm_state *g, int32_t r0, int32_t n, int32_t RVB, int bf16) {
    __mmask16 moved = 0;
    for (int32_t rv = 0; rv < RVB; rv++) {
        const size_t c = (size_t)rv * 16;
        __m512 mx = _mm512_set1_ps(-INFINITY);
        for (int32_t t = 0; t < n; t++) mx = _mm512_max_ps(mx, _mm512_load_ps(g->s + (size_t)t * KVK_ROW_BLOCK + c));
        __m512 mo = _mm512_load_ps(g->m + r0 + c), mn = _mm512_max_ps(mo, mx);
        moved |= _mm512_cmp_ps_mask(mn, mo, _CMP_NEQ_UQ);
        __m512 al = kvk_exp2_16(_mm512_sub_ps(mo, mn)), sum = _mm512_setzero_ps();
        if (!bf16) {
            for (int32_t t = 0; t < n; t++) {
                __m512 e = kvk_exp2_16(_mm512_sub_ps(_mm512_load_ps(g->s + (size_t)t * KVK_ROW_BLOCK + c), mn));
                _mm512_store_ps(g->p + (size_t)t * KVK_ROW_BLOCK + c, e);
                sum = _mm512_add_ps(sum, e);
            }
        } else {
            // Two tokens' probabilities become one vector of bf16 pairs; the row sums add the
            // rounded pairs with vdpbf16ps against (1, 1), in two chains. A missing odd token
            // scores -200: exp2 gives 0.
            const __m512bh ones = (__m512bh)_mm512_set1_epi32(0x3f803f80);
            __m512 sum2 = _mm512_setzero_ps();
            for (int32_t t = 0; t < n; t += 2) {
                const __m512 x0 = _mm512_sub_ps(_mm512_load_ps(g->s + (size_t)t * KVK_ROW_BLOCK + c), mn);
                const __m512 x1 = t + 1 < n ? _mm512_sub_ps(_mm512_load_ps(g->s + (size_t)(t + 1) * KVK_ROW_BLOCK + c), mn)
                                            : _mm512_set1_ps(-200.f);
                const __m512i pr = kvk_prob_pairs(x0, x1);
                _mm512_store_si512(g->pp + (size_t)(t / 2) * KVK_ROW_BLOCK + c, pr);
                if (t & 2) sum2 = _mm512_dpbf16_ps(sum2, (__m512bh)pr, ones);
                else sum = _mm512_dpbf16_ps(sum, (__m512bh)pr, ones);
            }
            sum = _mm512_add_ps(sum, sum2);
        }
        _mm512_store_ps(g->alpha + r0 + c, al);
        _mm512_store_ps(g->l + r0 + c, _mm512_fmadd_ps(_mm512_load_ps(g->l + r0 + c), al, sum));
        _mm512_store_ps(g->m + r0 + c, mn);
    }
    return moved != 0;
}

/// Lazy max of the fused softmax (kvk_qk_bf16_softmax): a row's reference m moves only when a
/// score exceeds it by more than this (log2 units), so probabilities stay below 2^KVK_LAZY_TAU
/// and after a head's first block a move is rare. l and O are kept relative to m, whatever m
/// is, so the result is the same softmax; lse = m + log2(l) too.
#define KVK_LAZY_TAU 8.f

/// The rare step of the lazy max: lanes `up` of row vector c move their reference to bmax. The
/// factor alpha = 2^(old - new) rescales l, the probability pairs this tile already wrote (pairs
/// 0 ..< tp_done) and, through the tile's alpha and *moved, the output before the tile's P.V.
/// Returns the new reference.
__attribute__((noinline, cold)) KVK_AVX512 static __m512 kvk_lazy_move(const kvk_gemm_state *g, int32_t r0, int32_t RVB, size_t c,
                                                                      int32_t tp_done, __m512 ref, __m512 bmax, __mmask16 up,
                                                                      int *moved) {
    const __m512 mn = _mm512_mask_blend_ps(up, ref, bmax), al = kvk_exp2_16(_mm512_sub_ps(ref, mn));
    if (!*moved) {
        for (int32_t rv = 0; rv < RVB; rv++) _mm512_store_ps(g->alpha + r0 + rv * 16, _mm512_set1_ps(1.f));
        *moved = 1;
    }
    _mm512_store_ps(g->alpha + r0 + c, _mm512_mul_ps(_mm512_load_ps(g->alpha + r0 + c), al));
    _mm512_store_ps(g->l + r0 + c, _mm512_mul_ps(_mm512_load_ps(g->l + r0 + c), al));
    for (int32_t tp = 0; tp < tp_done; tp++) {
        uint32_t *at = g->pp + (size_t)tp * KVK_ROW_BLOCK + c;
        const __m512i x = _mm512_load_si512(at);
        const __m512 lo = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(x, 16)), al);
        const __m512 hi = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32((int)0xFFFF0000u))), al);
        _mm512_store_si512(at, kvk_bf16_pairs(lo, hi));  // rounded again; l keeps the exact product
    }
    _mm512_store_ps(g->m + r0 + c, mn);
    return mn;
}

/// kvk_qk_bf16 with the online softmax in its epilogue, for full tiles: the scores never leave
/// the registers, each becomes a probability pair against the lazy reference right away (so the
/// exps overlap the next block's products instead of running as a pass over stored scores), and
/// the row sums are added to l. *moved: the tile's P.V must rescale the output by alpha.
KVK_AVX512_INLINE void kvk_qk_bf16_softmax(const kvk_gemm_state *g, int32_t r0, int32_t t0, int32_t RVB, int32_t NT,
                                           const uint16_t *const *krows, const uint16_t *k0, int32_t D, int *moved) {
    __m512 acc[4][16];
    kvk_qk_bf16_products(g, r0, t0, RVB, NT, krows, k0, D, acc);
    const __m512bh ones = (__m512bh)_mm512_set1_epi32(0x3f803f80);
    for (int32_t rv = 0; rv < RVB; rv++) {
        const size_t c = (size_t)rv * 16;
        __m512 ref = _mm512_load_ps(g->m + r0 + c), bmax = acc[rv][0];
        KVK_UNROLL
        for (int32_t t = 1; t < NT; t++) bmax = _mm512_max_ps(bmax, acc[rv][t]);
        const __mmask16 up = _mm512_cmp_ps_mask(bmax, _mm512_add_ps(ref, _mm512_set1_ps(KVK_LAZY_TAU)), _CMP_GT_OQ);
        if (__builtin_expect(up != 0, 0)) ref = kvk_lazy_move(g, r0, RVB, c, t0 / 2, ref, bmax, up, moved);
        __m512 sum = _mm512_setzero_ps(), sum2 = _mm512_setzero_ps();
        KVK_UNROLL
        for (int32_t t = 0; t < NT; t += 2) {
            const __m512i pr = kvk_prob_pairs(_mm512_sub_ps(acc[rv][t], ref), _mm512_sub_ps(acc[rv][t + 1], ref));
            _mm512_store_si512(g->pp + (size_t)((t0 + t) / 2) * KVK_ROW_BLOCK + c, pr);
            if (t & 2) sum2 = _mm512_dpbf16_ps(sum2, (__m512bh)pr, ones);
            else sum = _mm512_dpbf16_ps(sum, (__m512bh)pr, ones);
        }
        _mm512_store_ps(g->l + r0 + c, _mm512_add_ps(_mm512_load_ps(g->l + r0 + c), _mm512_add_ps(sum, sum2)));
    }
}

/// A (head, tile) to prefetch while a tile computes: token rows k[t] + hoff, v[t] + hoff.
typedef struct kvk_prefetch_unit { const char **k, **v; size_t hoff; int32_t n; } kvk_prefetch_unit;
/// Two levels: `far` into L2, KVK_PREFETCH_FAR units ahead, so enough DRAM misses are in flight (L1 has
/// few miss buffers; T0 prefetches of one unit alone left DRAM runs ~30% slower than in-cache);
/// `near`, the next unit, from L2 into L1.
typedef struct kvk_prefetch { kvk_prefetch_unit near, far; size_t row_bytes; } kvk_prefetch;

/// Prefetches tokens t0 ..< t1 of the far unit into L2 (clamped to its length).
KVK_AVX512_INLINE void kvk_prefetch_far(const kvk_prefetch *pf, int32_t t0, int32_t t1) {
    if (!pf) return;
    for (int32_t t = t0; t < t1 && t < pf->far.n; t++)
        for (size_t off = 0; off < pf->row_bytes; off += 64) {
            _mm_prefetch(pf->far.k[t] + pf->far.hoff + off, _MM_HINT_T1);
            _mm_prefetch(pf->far.v[t] + pf->far.hoff + off, _MM_HINT_T1);
        }
}

/// Prefetches tokens t0 ..< t1 of the near unit into L1 (clamped to its length).
KVK_AVX512_INLINE void kvk_prefetch_near(const kvk_prefetch *pf, int32_t t0, int32_t t1) {
    if (!pf) return;
    for (int32_t t = t0; t < t1 && t < pf->near.n; t++)
        for (size_t off = 0; off < pf->row_bytes; off += 64) {
            _mm_prefetch(pf->near.k[t] + pf->near.hoff + off, _MM_HINT_T0);
            _mm_prefetch(pf->near.v[t] + pf->near.hoff + off, _MM_HINT_T0);
        }
}

/// P.V of a tile over values read in place, O as rows, for `groups` groups of KVK_PVR_ROWS rows
/// from r0: (dim chunks, row group) calls, dim chunks outer so a chunk's values stay in L1 across
/// the row groups; the L2 prefetch spread over them.
KVK_AVX512_INLINE void kvk_pv_rows_tile(const kvk_gemm_state *g, int32_t r0, int32_t n, int32_t groups,
                                        const char *const *vdirect, int rescale, const kvk_prefetch *pf, int32_t D) {
    int paired = D > 0 && n % 2 == 0;
    for (int32_t t = 0; t < n && paired; t += 2) paired = vdirect[t + 1] == vdirect[t] + 2 * (size_t)D;
    if (!paired) D = 0;
    const int32_t wide = g->d / (32 * KVK_PVR_CHUNKS);
    const int32_t chunks = (g->d / 32 + KVK_PVR_CHUNKS - 1) / KVK_PVR_CHUNKS, calls = groups * chunks;
    for (int32_t k = 0; k < calls; k++) {
        const int32_t c = k / groups, rr = k % groups * KVK_PVR_ROWS, i0 = c * 32 * KVK_PVR_CHUNKS;
        kvk_prefetch_far(pf, k * KVK_TILE / calls, (k + 1) * KVK_TILE / calls);
        if (c < wide) {
            // rescale and D as literals where they can be: each call inlines a loop without the test.
            if (rescale) kvk_pv_rows_bf16(g, r0 + rr, rr, i0, n, vdirect, 1, KVK_PVR_CHUNKS, D);
            else if (D) kvk_pv_rows_bf16(g, r0 + rr, rr, i0, n, vdirect, 0, KVK_PVR_CHUNKS, D);
            else kvk_pv_rows_bf16(g, r0 + rr, rr, i0, n, vdirect, 0, KVK_PVR_CHUNKS, 0);
        } else  // d not a multiple of the tile's dims: the last chunks one at a time
            for (int32_t i = i0; i < g->d; i += 32) kvk_pv_rows_bf16(g, r0 + rr, rr, i, n, vdirect, rescale, 1, 0);
    }
}

/// One tile of n tokens for the row block starting at r0 (RVB row vectors): keys staged or
/// read in place (kdirect), values staged or read in place with O as rows (vdirect). The last
/// register tile of scores may run past n over stale rows; softmax never reads those scores.
/// The next (head, tile) `pf` is prefetched a few tokens per score block, spread over the
/// compute rather than issued in one burst that would stall on the miss buffers.
KVK_AVX512_INLINE void kvk_gemm_tile(const kvk_gemm_state *g, int32_t r0, int32_t n, int32_t RVB, int bf16,
                                     const kvk_prefetch *pf, const uint16_t *const *kdirect, const char *const *vdirect, int32_t D) {
    const int32_t NT = KVK_NT(RVB);
    int rescale = 0;
    if (bf16 && n == KVK_TILE) {  // a full tile: the softmax in the Q.K^T epilogue
        for (int32_t t0 = 0; t0 < n; t0 += NT) {
            kvk_prefetch_near(pf, t0, t0 + NT);
            int contiguous = D > 0 && kdirect;
            for (int32_t t = 1; t < NT && contiguous; t++) contiguous = kdirect[t0 + t] == kdirect[t0] + (size_t)t * D;
            if (contiguous) kvk_qk_bf16_softmax(g, r0, t0, RVB, NT, NULL, kdirect[t0], D, &rescale);
            else kvk_qk_bf16_softmax(g, r0, t0, RVB, NT, kdirect ? kdirect + t0 : NULL, NULL, 0, &rescale);
        }
    } else {
        for (int32_t t0 = 0; t0 < n; t0 += NT) {
            kvk_prefetch_near(pf, t0, t0 + NT);
            if (bf16 && kdirect) kvk_qk_bf16(g, r0, t0, RVB, NT, kdirect + t0);
            else if (bf16) kvk_qk_bf16(g, r0, t0, RVB, NT, NULL);
            else kvk_qk_f32(g, r0, t0, RVB, NT);
        }
        kvk_prefetch_near(pf, n, KVK_TILE);
        rescale = kvk_softmax(g, r0, n, RVB, bf16);
    }
    if (vdirect) {
        kvk_pv_rows_tile(g, r0, n, RVB * 16 / KVK_PVR_ROWS, vdirect, rescale, pf, D);
        return;
    }
    // The L2 prefetch is spread over the P.V blocks: a few tokens each, no burst of misses.
    const int32_t nblk = g->d / NT > 0 ? g->d / NT : 1;
    int32_t i0 = 0;
    if (nblk == 1 || g->d < NT) kvk_prefetch_far(pf, 0, KVK_TILE);
    for (; i0 + NT <= g->d; i0 += NT) {
        const int32_t b = i0 / NT;
        if (nblk > 1) kvk_prefetch_far(pf, b * KVK_TILE / nblk, (b + 1) * KVK_TILE / nblk);
        if (bf16)
            kvk_pv_bf16(g, r0, i0, (n + 1) / 2, RVB, NT, rescale);
        else
            kvk_pv_f32(g, r0, i0, n, RVB, NT);
    }
    for (; i0 < g->d; i0++) {
        if (bf16) kvk_pv_bf16(g, r0, i0, (n + 1) / 2, RVB, 1, rescale);
        else kvk_pv_f32(g, r0, i0, n, RVB, 1);
    }
}

// ---------------------------------------------------------------------------------- driver

/// Walks the run's tokens a tile at a time: rows of the next tile are prefetched into L2
/// while the current one is computed.
typedef struct kvk_cursor { int32_t block, token; } kvk_cursor;

static int32_t kvk_next_tile(const kvk_attend_args *a, kvk_cursor *c, const char **krows, const char **vrows, size_t row_bytes) {
    int32_t n = 0;
    while (n < KVK_TILE && c->block < a->block_count) {
        const size_t page = kvk_page_offset(a, a->blocks[c->block]);
        const int32_t nb = kvk_block_tokens(a, c->block);
        for (; c->token < nb && n < KVK_TILE; c->token++, n++) {
            krows[n] = (const char *)a->keys + page + (size_t)c->token * row_bytes;
            vrows[n] = (const char *)a->values + page + (size_t)c->token * row_bytes;
        }
        if (c->token == nb) { c->block++; c->token = 0; }
    }
    return n;
}

/// Head j's queries (times scale / ln 2) as bf16 pairs along the head dim in RV-row vectors
/// (RV 16 or 8; rpad a multiple of RV): qp[pair][row], padded rows and dims zero.
KVK_AVX512_INLINE void kvk_pack_query_pairs(const kvk_attend_args *a, int32_t j, int32_t rpad, int32_t RV, uint32_t *qp) {
    const int32_t d = a->head_dim, rows = a->seq_count * a->group, dfull = d / 32 * 32;
    const float qscale = a->scale * KVK_LOG2E;
    const __m512 qs = _mm512_set1_ps(qscale);
    memset(qp, 0, (size_t)(kvk_round_up(d, 2) / 2) * rpad * 4);
    for (int32_t r0 = 0; r0 < rows; r0 += RV) {
        // 32 dims of 16 rows: each row rounds to 16 pairs in one instruction, one transpose
        // turns them into 16 row vectors of one pair each (padded rows: zero); RV 8 keeps the
        // low half of each.
        for (int32_t i = 0; i < dfull; i += 32) {
            __m512 v[16];
            for (int32_t k = 0; k < 16; k++) {
                if (k >= RV || r0 + k >= rows) { v[k] = _mm512_setzero_ps(); continue; }
                const float *qr = kvk_q_row(a, r0 + k) + (size_t)j * a->group * d;
                v[k] = (__m512)_mm512_cvtne2ps_pbh(_mm512_mul_ps(_mm512_loadu_ps(qr + i + 16), qs),
                                                   _mm512_mul_ps(_mm512_loadu_ps(qr + i), qs));
            }
            kvk_transpose16(v);
            for (int32_t k = 0; k < 16; k++) {
                float *at = (float *)(qp + (size_t)(i / 2 + k) * rpad + r0);
                if (RV == 16) _mm512_store_ps(at, v[k]);
                else _mm256_store_ps(at, _mm512_castps512_ps256(v[k]));
            }
        }
    }
    for (int32_t r = 0; r < rows; r++) {  // dims past the last full 32
        const float *qr = kvk_q_row(a, r) + (size_t)j * a->group * d;
        for (int32_t i = dfull; i < d; i++)
            qp[(size_t)(i / 2) * rpad + r] |= (uint32_t)kvk_f32_to_bf16(qr[i] * qscale) << (16 * (i & 1));
    }
}

/// Per-head state of the many-row path: queries, transposed output, softmax state. Head j's
/// state lives in the j-th scratch slice; the staging buffers (k, v, s, p) of slice 0 serve all.
KVK_AVX512_INLINE void kvk_gemm_init(kvk_gemm_state *g, const kvk_attend_args *a, int32_t j, char *base,
                                     const kvk_scratch_layout *sl, int bf16) {
    const int32_t d = a->head_dim, rows = a->seq_count * a->group;
    char *own = base + (size_t)j * sl->total;
    memset(g, 0, sizeof *g);
    g->d = d;
    g->dpad2 = kvk_round_up(d, 2);
    g->rpad = kvk_round_up(rows, 16);
    g->kstride = d;
    g->orows = bf16 && a->dtype == KVK_DTYPE_BF16 && d % 32 == 0;
    g->ot = (float *)(own + sl->o);
    g->m = (float *)(own + sl->m);
    g->l = (float *)(own + sl->l);
    g->alpha = (float *)(base + sl->alpha);
    g->s = (float *)(base + sl->s);
    g->kt = (float *)(base + sl->k);
    g->vt = (float *)(base + sl->v);
    g->kb = (uint16_t *)(base + sl->k);
    g->vp = (uint32_t *)(base + sl->v);
    g->p = (float *)(base + sl->p);
    g->pp = (uint32_t *)(base + sl->p);
    const float qscale = a->scale * KVK_LOG2E;
    if (bf16) {  // query pairs along the head dim, 16-row vectors, padded rows/dims zero
        uint32_t *qp = (uint32_t *)(own + sl->q);
        kvk_pack_query_pairs(a, j, g->rpad, 16, qp);
        g->qp = qp;
    } else {
        float *qt = (float *)(own + sl->q);
        memset(qt, 0, (size_t)d * g->rpad * 4);
        for (int32_t r = 0; r < rows; r++) {
            const float *qr = kvk_q_row(a, r) + (size_t)j * a->group * d;
            for (int32_t i = 0; i < d; i++) qt[(size_t)i * g->rpad + r] = qr[i] * qscale;
        }
        g->qt = qt;
    }
    memset(g->ot, 0, (size_t)d * g->rpad * 4);
    for (int32_t r = 0; r < g->rpad; r++) { g->m[r] = -INFINITY; g->l[r] = 0.f; }
}

/// Stages one head's tile (rows of the gathered tokens, offset to head j) and runs every row block.
KVK_AVX512_INLINE void kvk_gemm_head_tile(const kvk_gemm_state *g, const char **kr, const char **vr, size_t hoff,
                                          int32_t n, int32_t rows, int32_t dtype, int bf16, const kvk_prefetch *pf, int32_t D) {
    const int32_t d = g->d;
    // bf16 keys of even length are already in the operand layout: each is read once per row
    // block, so copying them to L1 first only adds traffic. Rows past n repeat the last one.
    const uint16_t *kdirect[KVK_TILE + 16];
    const int direct = bf16 && dtype == KVK_DTYPE_BF16 && g->dpad2 == d;
    if (direct)
        for (int32_t t = 0; t < KVK_TILE + 16; t++) kdirect[t] = (const uint16_t *)(kr[t < n ? t : n - 1] + hoff);
    const char *vdirect[KVK_TILE];  // bf16 values read in place (g->orows)
    if (g->orows)
        for (int32_t t = 0; t < n; t++) vdirect[t] = vr[t] + hoff;
    if (bf16) {
        if (!direct)
            for (int32_t t = 0; t < n; t++) kvk_stage_bf16(g->kb + (size_t)t * g->dpad2, kr[t] + hoff, dtype, d, g->dpad2);
        if (!g->orows)
            for (int32_t t = 0; t < n; t += 2)
                kvk_stage_pairs(g->vp + (size_t)(t / 2) * d, vr[t] + hoff, t + 1 < n ? vr[t + 1] + hoff : NULL, dtype, d);
    } else {
        for (int32_t t = 0; t < n; t++) {
            kvk_stage_f32(g->kt + (size_t)t * d, kr[t] + hoff, dtype, d);
            kvk_stage_f32(g->vt + (size_t)t * d, vr[t] + hoff, dtype, d);
        }
    }
    for (int32_t r0 = 0; r0 < rows; r0 += KVK_ROW_BLOCK) {
        const kvk_prefetch *p = r0 == 0 ? pf : NULL;
        switch ((rows - r0 >= KVK_ROW_BLOCK ? KVK_ROW_BLOCK : rows - r0 + 15) / 16) {
        case 1: kvk_gemm_tile(g, r0, n, 1, bf16, p, direct ? kdirect : NULL, g->orows ? vdirect : NULL, D); break;
        case 2: kvk_gemm_tile(g, r0, n, 2, bf16, p, direct ? kdirect : NULL, g->orows ? vdirect : NULL, D); break;
        case 3: kvk_gemm_tile(g, r0, n, 3, bf16, p, direct ? kdirect : NULL, g->orows ? vdirect : NULL, D); break;
        default: kvk_gemm_tile(g, r0, n, 4, bf16, p, direct ? kdirect : NULL, g->orows ? vdirect : NULL, D); break;
        }
    }
}

// ---------------------------------------------------------------------------------- 8-row variant

// For 6 to 8 rows (KVK_YMM8_MIN_ROWS, dispatch.c), bf16 math, bf16 KV, head_dim % 32 == 0.
// The rows are one 8-lane ymm vector: on Zen 4 the 256-bit vdpbf16ps issues twice per cycle,
// as many multiplies as the 512-bit one, where a 16-row vector would be half padding. Q.K^T
// and its fused softmax are the 16-row ones at 8 lanes (also for partial tiles: tokens past n
// are masked in the epilogue); P.V is kvk_pv_rows_bf16 (lanes along the head dim, one
// broadcast pair per row).
// At 8 rows a (head, tile) computes in half the time of a 16-row one, so the prefetches are
// spread over the Q.K^T steps (kvk_qk8_softmax) rather than issued in bursts.

/// Tokens per register tile of the 8-row Q.K^T (one accumulator each).
#ifndef KVK_NT8
#define KVK_NT8 16
#endif

/// Per-head state of the 8-row variant in its compact layout (kvk_layout_scratch8).
KVK_AVX512_INLINE void kvk_gemm_init8(kvk_gemm_state *g, const kvk_attend_args *a, int32_t j, char *base,
                                      const kvk_scratch_layout8 *sl) {
    const int32_t d = a->head_dim;
    char *own = base + (size_t)j * sl->head;
    memset(g, 0, sizeof *g);
    g->d = d;
    g->dpad2 = d;
    g->rpad = KVK_YMM8_ROWS;
    g->kstride = d;
    g->orows = 1;
    g->ot = (float *)(own + sl->o);
    g->m = (float *)(own + sl->m);
    g->l = (float *)(own + sl->l);
    g->alpha = (float *)(base + sl->alpha);
    g->pp = (uint32_t *)(base + sl->pp);
    uint32_t *qp = (uint32_t *)(own + sl->q);
    kvk_pack_query_pairs(a, j, KVK_YMM8_ROWS, KVK_YMM8_ROWS, qp);
    g->qp = qp;
    memset(g->ot, 0, (size_t)d * KVK_YMM8_ROWS * 4);
    for (int32_t r = 0; r < KVK_YMM8_ROWS; r++) { g->m[r] = -INFINITY; g->l[r] = 0.f; }
}

/// Two vectors of 8 rows' values for tokens t and t+1 as one vector of bf16 pairs, lane r =
/// (even[r], odd[r]).
KVK_AVX512_INLINE __m256i kvk_bf16_pairs8(__m512 even_odd) {
    const __m256i pairs = _mm256_setr_epi16(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
    return _mm256_permutexvar_epi16(pairs, (__m256i)_mm512_cvtneps_pbh(even_odd));
}

KVK_AVX512_INLINE __m512 kvk_join8(__m256 lo, __m256 hi) {
    return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
}

/// kvk_lazy_move for the 8-row vector.
__attribute__((noinline, cold)) KVK_AVX512 static __m256 kvk_lazy_move8(const kvk_gemm_state *g, int32_t tp_done, __m256 ref,
                                                                       __m256 bmax, __mmask8 up, int *moved) {
    const __m256 mn = _mm256_mask_blend_ps(up, ref, bmax);
    const __m256 al = _mm512_castps512_ps256(kvk_exp2_16(_mm512_zextps256_ps512(_mm256_sub_ps(ref, mn))));
    if (!*moved) {
        _mm256_store_ps(g->alpha, _mm256_set1_ps(1.f));
        *moved = 1;
    }
    _mm256_store_ps(g->alpha, _mm256_mul_ps(_mm256_load_ps(g->alpha), al));
    _mm256_store_ps(g->l, _mm256_mul_ps(_mm256_load_ps(g->l), al));
    for (int32_t tp = 0; tp < tp_done; tp++) {
        uint32_t *at = g->pp + (size_t)tp * KVK_ROW_BLOCK;
        const __m256i x = _mm256_load_si256((const __m256i *)at);
        const __m256 lo = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_slli_epi32(x, 16)), al);
        const __m256 hi = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32((int)0xFFFF0000u))), al);
        _mm256_store_si256((__m256i *)at, kvk_bf16_pairs8(kvk_join8(lo, hi)));  // rounded again; l keeps the exact product
    }
    _mm256_store_ps(g->m, mn);
    return mn;
}

/// Scores of tokens t0 ..< t0 + KVK_NT8 for the 8 rows, and their fused online softmax against
/// the lazy max: probability pairs into pp, row sums into l. Tokens from n on (a partial tile)
/// get probability 0. *moved as in kvk_qk_bf16_softmax. The key rows are read in place: D > 0
/// (the head dim, a constant), row t at k0 + t * D (one block's rows: one base register, the
/// rows at constant displacements); D == 0, row t at krows[t] (16 pointers do not fit in the
/// general registers: the compiler spilled half of them, and reloading them took a load slot
/// per product beside the broadcast's). pf: the (head, tile) units to prefetch, spread over the
/// steps: each step one line of K and one of V of the near unit (this tile's tokens t0 ..< t0 +
/// 16) into L1 and of the far unit into L2. (Issued as kvk_gemm_tile does, in bursts of 128 per
/// register tile, they held this path at ~10 GB/s from DRAM, below the few-row path: 8 rows x
/// 32 heads x 2048 tokens, LLC flushed, 3.5 ms; spread, 2.1 ms.)
KVK_AVX512_INLINE void kvk_qk8_softmax(const kvk_gemm_state *g, int32_t t0, int32_t n, const uint16_t *const *krows,
                                       const uint16_t *k0, int32_t D, const kvk_prefetch *pf, int *moved) {
    enum { NT = KVK_NT8 };
    __m256 acc[NT];
    KVK_UNROLL
    for (int32_t t = 0; t < NT; t++) acc[t] = _mm256_setzero_ps();
    const uint32_t *restrict qp = g->qp;
    for (int32_t i2 = 0; i2 < g->dpad2 / 2; i2++) {
        const __m256bh qv = (__m256bh)_mm256_load_si256((const __m256i *)(qp + (size_t)i2 * KVK_YMM8_ROWS));
        if (pf) {  // one line of K and one of V of the near unit into L1 and of the far one into L2
            const int32_t lines = D ? D / 32 : g->d / 32, t = t0 + i2 / lines, off = i2 % lines * 64;
            if (t < pf->near.n) {
                _mm_prefetch(pf->near.k[t] + pf->near.hoff + off, _MM_HINT_T0);
                _mm_prefetch(pf->near.v[t] + pf->near.hoff + off, _MM_HINT_T0);
            }
            if (t < pf->far.n) {
                _mm_prefetch(pf->far.k[t] + pf->far.hoff + off, _MM_HINT_T1);
                _mm_prefetch(pf->far.v[t] + pf->far.hoff + off, _MM_HINT_T1);
            }
        }
        KVK_UNROLL
        for (int32_t t = 0; t < NT; t++) {
            int32_t w;
            memcpy(&w, (D ? k0 + (size_t)t * D : krows[t]) + 2 * i2, 4);
            acc[t] = _mm256_dpbf16_ps(acc[t], qv, (__m256bh)_mm256_set1_epi32(w));
        }
    }
    const int32_t nv = n - t0 < NT ? n - t0 : NT;  // >= 1
    __m256 ref = _mm256_load_ps(g->m), bmax = acc[0];
    KVK_UNROLL
    for (int32_t t = 1; t < NT; t++)
        if (t < nv) bmax = _mm256_max_ps(bmax, acc[t]);
    const __mmask8 up = _mm256_cmp_ps_mask(bmax, _mm256_add_ps(ref, _mm256_set1_ps(KVK_LAZY_TAU)), _CMP_GT_OQ);
    if (__builtin_expect(up != 0, 0)) ref = kvk_lazy_move8(g, t0 / 2, ref, bmax, up, moved);
    const __m256bh ones = (__m256bh)_mm256_set1_epi32(0x3f803f80);
    const __m512 ref2 = kvk_join8(ref, ref);
    __m256 sum = _mm256_setzero_ps(), sum2 = _mm256_setzero_ps();
    KVK_UNROLL
    for (int32_t t = 0; t < NT; t += 2) {
        if (t >= nv) break;
        // A missing odd token scores -200 below the reference: exp2 gives 0.
        __m512 x = _mm512_sub_ps(kvk_join8(acc[t], acc[t + 1]), ref2);
        if (t + 1 >= nv) x = _mm512_mask_blend_ps(0xFF00, x, _mm512_set1_ps(-200.f));
        const __m256i pr = kvk_bf16_pairs8(kvk_exp2_16_bf16(x));
        _mm256_store_si256((__m256i *)(g->pp + (size_t)((t0 + t) / 2) * KVK_ROW_BLOCK), pr);
        if (t & 2) sum2 = _mm256_dpbf16_ps(sum2, (__m256bh)pr, ones);
        else sum = _mm256_dpbf16_ps(sum, (__m256bh)pr, ones);
    }
    _mm256_store_ps(g->l, _mm256_add_ps(_mm256_load_ps(g->l), _mm256_add_ps(sum, sum2)));
}

/// One head's tile of n tokens for the 8 rows: keys and values read in place.
KVK_AVX512_INLINE void kvk_gemm_head_tile8(const kvk_gemm_state *g, const char **kr, const char **vr, size_t hoff, int32_t n,
                                           const kvk_prefetch *pf, int32_t D) {
    const uint16_t *kdirect[KVK_TILE];  // rows past n repeat the last one
    for (int32_t t = 0; t < KVK_TILE; t++) kdirect[t] = (const uint16_t *)(kr[t < n ? t : n - 1] + hoff);
    const char *vdirect[KVK_TILE];
    for (int32_t t = 0; t < n; t++) vdirect[t] = vr[t] + hoff;
    int rescale = 0, t0 = 0;
    for (; t0 < n; t0 += KVK_NT8) {
        // D: the register tile's key rows one block's consecutive rows (a full tile of
        // 16-token blocks), else the pointers.
        int contiguous = D > 0 && t0 + KVK_NT8 <= n;
        for (int32_t t = 1; t < KVK_NT8 && contiguous; t++) contiguous = kdirect[t0 + t] == kdirect[t0] + (size_t)t * D;
        if (contiguous) kvk_qk8_softmax(g, t0, n, NULL, kdirect[t0], D, pf, &rescale);
        else kvk_qk8_softmax(g, t0, n, kdirect + t0, NULL, 0, pf, &rescale);
    }
    kvk_prefetch_near(pf, t0, KVK_TILE);  // a partial tile: the rest of both units at once
    kvk_prefetch_far(pf, t0, KVK_TILE);
    kvk_pv_rows_tile(g, 0, n, KVK_YMM8_ROWS / KVK_PVR_ROWS, vdirect, rescale, NULL, D);
}

/// (head, tile) units of look-ahead of the L2 prefetch (one unit: 16 KiB of bf16 K+V); 2, 4 and
/// 8 measured within noise from DRAM, 2 a little ahead with both cores streaming.
#ifndef KVK_PREFETCH_FAR
#define KVK_PREFETCH_FAR 2
#endif

/// The unit `ahead` (< heads) after head j of this tile: a head of this tile or of the next.
static inline kvk_prefetch_unit kvk_unit_ahead(int32_t j, int32_t ahead, int32_t heads, size_t head_bytes, const char **kr,
                                               const char **vr, int32_t n, const char **kn, const char **vn, int32_t n_next) {
    const int32_t h = j + ahead;
    if (h < heads) return (kvk_prefetch_unit){kr, vr, (size_t)h * head_bytes, n};
    return (kvk_prefetch_unit){kn, vn, (size_t)(h - heads < heads ? h - heads : heads - 1) * head_bytes, n_next};
}

/// Head j's normalised output rows out of O as rows: each 32-dim chunk is in kvk_vpos order,
/// and two two-source permutes put it back in dim order.
KVK_AVX512_INLINE void kvk_gemm_output_rows(const kvk_attend_args *a, const kvk_gemm_state *g, int32_t j) {
    const int32_t d = g->d, rows = a->seq_count * a->group;
    const __m512i first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const __m512i second = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    for (int32_t r = 0; r < rows; r++) {
        const __m512 inv = _mm512_set1_ps(1.f / g->l[r]);
        const float *o = g->ot + (size_t)r * d;
        float *out = kvk_out_row(a, r) + (size_t)j * a->group * d;
        for (int32_t i = 0; i < d; i += 32) {
            const __m512 lo = _mm512_load_ps(o + i), hi = _mm512_load_ps(o + i + 16);
            _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_permutex2var_ps(lo, first, hi), inv));
            _mm512_storeu_ps(out + i + 16, _mm512_mul_ps(_mm512_permutex2var_ps(lo, second, hi), inv));
        }
    }
}

/// Head j's normalised output rows out of O^T: 16 dims x 16 rows at a time, scaled by 1 / l
/// while the rows are still lanes, then transposed (16 gathers per row cost ~4x as much).
KVK_AVX512_INLINE void kvk_gemm_output_transposed(const kvk_attend_args *a, const kvk_gemm_state *g, int32_t j) {
    const int32_t d = g->d, rows = a->seq_count * a->group;
    const size_t rpad = (size_t)g->rpad;
    for (int32_t r0 = 0; r0 < rows; r0 += 16) {
        const int32_t nr = rows - r0 < 16 ? rows - r0 : 16;
        const __m512 inv = _mm512_div_ps(_mm512_set1_ps(1.f), _mm512_loadu_ps(g->l + r0));
        for (int32_t i0 = 0; i0 < d; i0 += 16) {
            const int32_t nd = d - i0 < 16 ? d - i0 : 16;
            __m512 v[16];
            for (int32_t k = 0; k < 16; k++)
                v[k] = k < nd ? _mm512_mul_ps(_mm512_load_ps(g->ot + (size_t)(i0 + k) * rpad + r0), inv) : _mm512_setzero_ps();
            kvk_transpose16(v);
            const __mmask16 m = kvk_step_mask16(nd);
            for (int32_t k = 0; k < nr; k++) _mm512_mask_storeu_ps(kvk_out_row(a, r0 + k) + (size_t)j * a->group * d + i0, m, v[k]);
        }
    }
}

/// Tiles outer, heads inner: a block's heads are adjacent in the arena, so the run is read as
/// contiguous stretches of head_count x 4 KiB rather than one 4 KiB island per head.
KVK_AVX512_INLINE void kvk_gemm_run(const kvk_attend_args *a, int bf16, int32_t dtype, int ymm8, int32_t D) {
    const int32_t d = a->head_dim, rows = a->seq_count * a->group, heads = a->head_count;
    const size_t row_bytes = (size_t)d * kvk_elt_bytes(dtype), head_bytes = (size_t)a->block_size * row_bytes;
    char *base = (char *)a->scratch;
    kvk_gemm_state g[KVK_MAX_GEMM_HEADS];
    kvk_prefetch_row_spans(a, 0);
    if (ymm8) {
        const kvk_scratch_layout8 sl = kvk_layout_scratch8(d, heads);
        for (int32_t j = 0; j < heads; j++) kvk_gemm_init8(&g[j], a, j, base, &sl);
    } else {
        const kvk_scratch_layout sl = kvk_layout_scratch(rows, d);
        for (int32_t j = 0; j < heads; j++) kvk_gemm_init(&g[j], a, j, base, &sl, bf16);
    }

    const char *krows[2][KVK_TILE], *vrows[2][KVK_TILE];
    kvk_cursor cur = {0, 0};
    int32_t n = kvk_next_tile(a, &cur, krows[0], vrows[0], row_bytes);
    for (int32_t tile = 0; n > 0; tile++) {
        const char **kr = krows[tile & 1], **vr = vrows[tile & 1];
        const char **kn = krows[(tile + 1) & 1], **vn = vrows[(tile + 1) & 1];
        const int32_t n_next = kvk_next_tile(a, &cur, kn, vn, row_bytes);
        if (n_next == 0) kvk_prefetch_row_spans(a, 1);  // the last tile: its time covers the output's misses
        for (int32_t j = 0; j < heads; j++) {
            // While this (head, tile) computes: the next one into L1, a few further into L2.
            const int32_t far = KVK_PREFETCH_FAR < heads ? KVK_PREFETCH_FAR : heads;
            const kvk_prefetch pf = {kvk_unit_ahead(j, 1, heads, head_bytes, kr, vr, n, kn, vn, n_next),
                                     kvk_unit_ahead(j, far, heads, head_bytes, kr, vr, n, kn, vn, n_next), row_bytes};
            if (ymm8) kvk_gemm_head_tile8(&g[j], kr, vr, (size_t)j * head_bytes, n, &pf, D);
            else kvk_gemm_head_tile(&g[j], kr, vr, (size_t)j * head_bytes, n, rows, dtype, bf16, &pf, D);
        }
        n = n_next;
    }
    for (int32_t j = 0; j < heads; j++) {
        if (g[j].orows) kvk_gemm_output_rows(a, &g[j], j);
        else kvk_gemm_output_transposed(a, &g[j], j);
        if (a->lse2)
            for (int32_t r = 0; r < rows; r++)
                a->lse2[(int64_t)(r / a->group) * a->lse_seq_stride + j * a->group + r % a->group] = g[j].m[r] + log2f(g[j].l[r]);
    }
}

/// The 8-row variant (dispatch.c): 6 to 8 rows, bf16 math and KV, head_dim % 32 == 0.
/// D: the head dim as a constant for kvk_qk8_softmax's key addressing (0: any).
KVK_AVX512 void kvk_attend_gemm8_avx512(const kvk_attend_args *a) {
    switch (a->head_dim) {
    case 64: kvk_gemm_run(a, 1, KVK_DTYPE_BF16, 1, 64); break;
    case 128: kvk_gemm_run(a, 1, KVK_DTYPE_BF16, 1, 128); break;
    default: kvk_gemm_run(a, 1, KVK_DTYPE_BF16, 1, 0); break;
    }
}

KVK_AVX512 void kvk_attend_gemm_avx512(const kvk_attend_args *a, int bf16_math) {
    if (bf16_math) {
        switch (a->dtype) {
        case KVK_DTYPE_F16: kvk_gemm_run(a, 1, KVK_DTYPE_F16, 0, 0); break;
        case KVK_DTYPE_BF16:
            if (a->head_dim == 128) kvk_gemm_run(a, 1, KVK_DTYPE_BF16, 0, 128);
            else kvk_gemm_run(a, 1, KVK_DTYPE_BF16, 0, 0);
            break;
        default: kvk_gemm_run(a, 1, KVK_DTYPE_F32, 0, 0); break;
        }
    } else {
        switch (a->dtype) {
        case KVK_DTYPE_F16: kvk_gemm_run(a, 0, KVK_DTYPE_F16, 0, 0); break;
        case KVK_DTYPE_BF16: kvk_gemm_run(a, 0, KVK_DTYPE_BF16, 0, 0); break;
        default: kvk_gemm_run(a, 0, KVK_DTYPE_F32, 0, 0); break;
        }
    }
}
#endif
