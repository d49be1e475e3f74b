// Portable variant: any CPU the package builds for (arm64, x86-64 without AVX2, ...). Written
// with the GCC/Clang vector extensions (4-float vectors) rather than an instruction set's
// intrinsics, so the compiler emits the target's own SIMD: NEON with fused multiply-adds on
// arm64 (a * b + c contracts to one fmla), SSE2 on baseline x86-64. Scalar C here ran at ~1-3
// GFLOP/s (a dot product's sum is a chain the compiler may not reorder), which on an arm64
// server would have made the bifurcated kernel's shared context cost seconds per layer.
//
// Lanes run along the head dim. Per block, every query row of the call attends to tiles of up
// to KVK_PORTABLE_TILE tokens: scores, online softmax in base 2, and the output rescaled and
// accumulated in one pass over the tile. fp16 / bf16 tiles are converted to fp32 once when
// several rows share them, and widened as they are read otherwise.
#include "kvk_internal.h"

typedef float kvk_f4 __attribute__((vector_size(16)));
typedef int32_t kvk_i4 __attribute__((vector_size(16)));
typedef uint32_t kvk_u4 __attribute__((vector_size(16)));
typedef uint16_t kvk_h4 __attribute__((vector_size(8)));

/// Tokens per tile: its K and V in fp32 (2 x 16 x head dim floats, 16 KiB at 128) stay in L1
/// while every row reads them. At most KVK_TILE (the scratch holds that many rows).
#define KVK_PORTABLE_TILE 16

static inline kvk_f4 kvk_ld4(const float *p) { kvk_f4 v; memcpy(&v, p, sizeof v); return v; }
static inline void kvk_st4(float *p, kvk_f4 v) { memcpy(p, &v, sizeof v); }
static inline kvk_f4 kvk_splat4(float x) { return (kvk_f4){x, x, x, x}; }
static inline float kvk_sum4(kvk_f4 v) { return (v[0] + v[1]) + (v[2] + v[3]); }

/// Four stored elements as fp32: bf16 by a shift; fp16 exactly (normal, subnormal, inf, NaN)
/// with integer operations and one subtraction of normal numbers, so neither denormal
/// arithmetic nor a flush-to-zero mode is involved.
static inline __attribute__((always_inline)) kvk_f4 kvk_widen4(const char *row, int32_t dtype, int32_t i) {
    if (dtype == KVK_DTYPE_F32) return kvk_ld4((const float *)row + i);
    kvk_h4 h;
    memcpy(&h, (const uint16_t *)row + i, sizeof h);
    const kvk_u4 u = __builtin_convertvector(h, kvk_u4);
    kvk_u4 bits;
    if (dtype == KVK_DTYPE_BF16) {
        bits = u << 16;
    } else {
        kvk_u4 o = (u & 0x7fffu) << 13;
        const kvk_u4 exp = o & 0x0f800000u;
        o += (kvk_u4){112u << 23, 112u << 23, 112u << 23, 112u << 23};
        o += (kvk_u4)(exp == 0x0f800000u) & (112u << 23);   // inf / NaN: exponent to 255
        const kvk_u4 tiny = (kvk_u4)(exp == 0u);           // zero / subnormal: 2^-14 * 0.man ...
        o += tiny & (1u << 23);
        kvk_f4 f;
        memcpy(&f, &o, sizeof f);
        const kvk_f4 magic = kvk_splat4(0x1p-14f);         // ... minus the implicit 1 (exact)
        kvk_f4 sub = f - magic;
        kvk_u4 sb, fb;
        memcpy(&sb, &sub, sizeof sb);
        memcpy(&fb, &f, sizeof fb);
        bits = ((tiny & sb) | (~tiny & fb)) | ((u & 0x8000u) << 16);
    }
    kvk_f4 f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/// 2^x for x <= 0 (scores minus their running max), lane-wise: x = n + f with n an integer and
/// f in [-0.5, 0.5], the same polynomial as the SIMD variants' exp2, 2^n built in the exponent.
/// Below -126 the result is 0 (probabilities under 2^-126 of the row's largest).
static inline kvk_f4 kvk_exp2_4(kvk_f4 x) {
    const kvk_i4 small = x < kvk_splat4(-126.f);
    x = (kvk_f4)(((kvk_i4)x & ~small) | ((kvk_i4)kvk_splat4(-126.f) & small));  // clamp (zeroed below)
    const kvk_f4 y = x - kvk_splat4(0.5f);
    kvk_i4 n = __builtin_convertvector(y, kvk_i4);              // truncates toward zero
    n -= (kvk_i4)(__builtin_convertvector(n, kvk_f4) > y) & 1;  // floor(x - 0.5)
    n += 1;                                                     // round(x), ties up
    const kvk_f4 f = x - __builtin_convertvector(n, kvk_f4);
    kvk_f4 p = kvk_splat4(KVK_EXP2_C5);
    p = p * f + kvk_splat4(KVK_EXP2_C4);
    p = p * f + kvk_splat4(KVK_EXP2_C3);
    p = p * f + kvk_splat4(KVK_EXP2_C2);
    p = p * f + kvk_splat4(KVK_EXP2_C1);
    p = p * f + kvk_splat4(KVK_EXP2_C0);
    p = p * f + kvk_splat4(1.f);
    const kvk_i4 scale = (n + 127) << 23;
    kvk_f4 s;
    memcpy(&s, &scale, sizeof s);
    return (kvk_f4)((kvk_i4)(p * s) & ~small);
}

/// Converts `n` rows of `d` stored elements (`src_stride` bytes apart) into fp32 rows `dp`
/// floats apart, zero-padded to dp.
static void kvk_stage_rows(float *dst, int32_t dp, const char *src, size_t src_stride, int32_t dtype, int32_t d, int32_t n) {
    for (int32_t t = 0; t < n; t++) {
        const char *row = src + (size_t)t * src_stride;
        float *out = dst + (size_t)t * dp;
        int32_t i = 0;
        for (; i + 4 <= d; i += 4) kvk_st4(out + i, kvk_widen4(row, dtype, i));
        for (; i < d; i++) out[i] = kvk_load_elt(row, dtype, i);
        for (; i < dp; i++) out[i] = 0.f;
    }
}

/// Loads four elements of token row t (rows `stride` bytes apart, stored as `dtype`) as fp32.
#define KVK_ROW4(base, t, stride, dtype, i) kvk_widen4((base) + (size_t)(t) * (stride), dtype, i)

/// Scores of one (scaled) query row against n key rows (`stride` bytes apart, stored as `dtype`:
/// fp32 when staged; at least dp elements, zero-padded, or dp == d), eight rows at a time so
/// eight multiply-add chains are in flight. Inlined per dtype, so the conversion is straight-line.
static inline __attribute__((always_inline)) void kvk_scores(float *s, const float *q, const char *k, size_t stride,
                                                             int32_t dtype, int32_t dp, int32_t n) {
    int32_t t = 0;
    for (; t + 8 <= n; t += 8) {
        kvk_f4 acc[8] = {{0}};
        for (int32_t i = 0; i < dp; i += 4) {
            const kvk_f4 qv = kvk_ld4(q + i);
            for (int32_t j = 0; j < 8; j++) acc[j] += qv * KVK_ROW4(k, t + j, stride, dtype, i);
        }
        for (int32_t j = 0; j < 8; j++) s[t + j] = kvk_sum4(acc[j]);
    }
    for (; t < n; t++) {
        kvk_f4 acc0 = {0}, acc1 = {0};
        int32_t i = 0;
        for (; i + 8 <= dp; i += 8) {
            acc0 += kvk_ld4(q + i) * KVK_ROW4(k, t, stride, dtype, i);
            acc1 += kvk_ld4(q + i + 4) * KVK_ROW4(k, t, stride, dtype, i + 4);
        }
        if (i < dp) acc0 += kvk_ld4(q + i) * KVK_ROW4(k, t, stride, dtype, i);
        s[t] = kvk_sum4(acc0 + acc1);
    }
}

/// o = o * alpha + sum_t p[t] v[t] over n value rows (as kvk_scores reads key rows): 32 dims at
/// a time held in eight vectors across the tile, so o is read and written once per tile.
static inline __attribute__((always_inline)) void kvk_accumulate(float *o, float alpha, const float *p, const char *v, size_t stride,
                                                                 int32_t dtype, int32_t dp, int32_t n) {
    const kvk_f4 al = kvk_splat4(alpha);
    int32_t i = 0;
    for (; i + 32 <= dp; i += 32) {
        kvk_f4 acc[8];
        for (int32_t j = 0; j < 8; j++) acc[j] = kvk_ld4(o + i + 4 * j) * al;
        for (int32_t t = 0; t < n; t++) {
            const kvk_f4 pt = kvk_splat4(p[t]);
            for (int32_t j = 0; j < 8; j++) acc[j] += pt * KVK_ROW4(v, t, stride, dtype, i + 4 * j);
        }
        for (int32_t j = 0; j < 8; j++) kvk_st4(o + i + 4 * j, acc[j]);
    }
    for (; i < dp; i += 4) {
        kvk_f4 acc = kvk_ld4(o + i) * al;
        for (int32_t t = 0; t < n; t++) acc += kvk_splat4(p[t]) * KVK_ROW4(v, t, stride, dtype, i);
        kvk_st4(o + i, acc);
    }
}

/// One row's online-softmax step over a tile of n tokens (keys k, values v as kvk_scores reads
/// them): scores, new reference max, probabilities, row sum, output rescaled and accumulated.
static inline __attribute__((always_inline)) void kvk_row_tile(float *o, float *m, float *l, float *s, float *p, const float *q,
                                                               const char *k, const char *v, size_t stride, int32_t dtype,
                                                               int32_t dp, int32_t n) {
    kvk_scores(s, q, k, stride, dtype, dp, n);
    float mx = s[0];
    for (int32_t t = 1; t < n; t++) mx = s[t] > mx ? s[t] : mx;
    const float m_new = mx > *m ? mx : *m;
    const float alpha = m_new == *m ? 1.f : exp2f(*m - m_new);
    kvk_f4 sum = {0};
    int32_t t = 0;
    for (; t + 4 <= n; t += 4) {
        const kvk_f4 e = kvk_exp2_4(kvk_ld4(s + t) - kvk_splat4(m_new));
        kvk_st4(p + t, e);
        sum += e;
    }
    float total = kvk_sum4(sum);
    for (; t < n; t++) total += (p[t] = exp2f(s[t] - m_new));
    *l = *l * alpha + total;
    kvk_accumulate(o, alpha, p, v, stride, dtype, dp, n);
    *m = m_new;
}

/// Rows from which a tile is converted to fp32 once for all rows instead of widened on every
/// read (fp16 and bf16; fp32 rows are read in place whenever the head dim allows).
#define KVK_PORTABLE_STAGE_ROWS 4

void kvk_attend_portable(const kvk_attend_args *a) {
    const int32_t d = a->head_dim, dp = kvk_round_up(d, 4), rows = a->seq_count * a->group;
    const size_t elt = kvk_elt_bytes(a->dtype), row_bytes = (size_t)d * elt;
    const float qscale = a->scale * KVK_LOG2E;
    const kvk_scratch_layout sl = kvk_layout_scratch(rows, d);
    char *base = (char *)a->scratch;
    float *q = (float *)(base + sl.q), *o = (float *)(base + sl.o), *m = (float *)(base + sl.m), *l = (float *)(base + sl.l);
    float *kt = (float *)(base + sl.k), *vt = (float *)(base + sl.v), *s = (float *)(base + sl.s), *p = (float *)(base + sl.p);
    for (int32_t r = 0; r < rows; r++) {
        const float *qr = kvk_q_row(a, r);
        for (int32_t i = 0; i < dp; i++) {
            q[(size_t)r * dp + i] = i < d ? qr[i] * qscale : 0.f;
            o[(size_t)r * dp + i] = 0.f;
        }
        m[r] = -INFINITY;
        l[r] = 0.f;
    }
    // Rows are read in place (widened per load) unless the head dim needs padding or enough rows
    // share a tile to pay for converting it once.
    const int stage = d % 4 != 0 || (a->dtype != KVK_DTYPE_F32 && rows >= KVK_PORTABLE_STAGE_ROWS);
    for (int32_t b = 0; b < a->block_count; b++) {
        const size_t page = kvk_page_offset(a, a->blocks[b]);
        const char *kp = (const char *)a->keys + page, *vp = (const char *)a->values + page;
        for (int32_t t0 = 0, tokens = kvk_block_tokens(a, b); t0 < tokens; t0 += KVK_PORTABLE_TILE) {
            const int32_t n = tokens - t0 < KVK_PORTABLE_TILE ? tokens - t0 : KVK_PORTABLE_TILE;
            const char *k = kp + (size_t)t0 * row_bytes, *v = vp + (size_t)t0 * row_bytes;
            if (stage) {
                kvk_stage_rows(kt, dp, k, row_bytes, a->dtype, d, n);
                kvk_stage_rows(vt, dp, v, row_bytes, a->dtype, d, n);
                for (int32_t r = 0; r < rows; r++)
                    kvk_row_tile(o + (size_t)r * dp, m + r, l + r, s, p, q + (size_t)r * dp, (const char *)kt, (const char *)vt,
                                 (size_t)dp * 4, KVK_DTYPE_F32, dp, n);
                continue;
            }
            for (int32_t r = 0; r < rows; r++) {
                float *orow = o + (size_t)r * dp;
                const float *qrow = q + (size_t)r * dp;
                switch (a->dtype) {  // one inlined copy per dtype
                case KVK_DTYPE_F16: kvk_row_tile(orow, m + r, l + r, s, p, qrow, k, v, row_bytes, KVK_DTYPE_F16, dp, n); break;
                case KVK_DTYPE_BF16: kvk_row_tile(orow, m + r, l + r, s, p, qrow, k, v, row_bytes, KVK_DTYPE_BF16, dp, n); break;
                default: kvk_row_tile(orow, m + r, l + r, s, p, qrow, k, v, row_bytes, KVK_DTYPE_F32, dp, n); break;
                }
            }
        }
    }
    for (int32_t r = 0; r < rows; r++) {
        float *out = kvk_out_row(a, r);
        const float inv = 1.f / l[r];
        for (int32_t i = 0; i < d; i++) out[i] = o[(size_t)r * dp + i] * inv;
        kvk_store_lse(a, r, m[r] + log2f(l[r]));
    }
}

float kvk_stream_read_portable(const void *buffer, size_t bytes) {
    const float *f = (const float *)buffer;
    kvk_f4 s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
    for (size_t i = 0, n = bytes / 4; i + 16 <= n; i += 16) {
        s0 += kvk_ld4(f + i);
        s1 += kvk_ld4(f + i + 4);
        s2 += kvk_ld4(f + i + 8);
        s3 += kvk_ld4(f + i + 12);
    }
    return kvk_sum4((s0 + s1) + (s2 + s3));
}
