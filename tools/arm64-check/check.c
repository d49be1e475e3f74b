// The C kernels on another architecture: built for arm64 and run under qemu-user by run.sh (or
// natively anywhere). Checks kvk_attend's portable variant — the one arm64 runs — against a
// float64 reference over fp32 / fp16 / bf16 KV, head dims with and without padding, 1 to 17
// rows (both sides of its staging threshold), block sizes 1 / 5 / 16 and partial last blocks;
// and that every fp16 and bf16 value is read exactly (a context of one token returns its value
// row). Exit status 1 on any failure. What it cannot say: how fast the variant is on real arm64
// hardware (qemu emulates; nothing here measures arm64 speed).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kvkernels.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double uniform(void) {  // xorshift64*, [-1, 1)
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    return (double)((rng_state * 0x2545F4914F6CDD1Dull) >> 11) / (double)(1ull << 52) - 1.0;
}

static float bits_to_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t f32_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/// Exact fp16 -> fp32 by arithmetic (the oracle; the kernel uses its own integer version).
static float half_value(uint16_t h) {
    const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    const float sign = (h & 0x8000) ? -1.f : 1.f;
    if (e == 0x1f) return m ? NAN : sign * INFINITY;
    if (e == 0) return sign * ldexpf((float)m, -24);
    return sign * ldexpf((float)(m | 0x400), e - 25);
}
/// fp32 -> fp16 bits, round to nearest even (normal range only: the random data stays there).
static uint16_t half_bits(float f) {
    const uint32_t u = f32_to_bits(f), sign = (u >> 16) & 0x8000;
    const int e = (int)((u >> 23) & 0xff) - 127 + 15;
    uint32_t m = u & 0x7fffff;
    if (e <= 0) return (uint16_t)sign;  // tiny: zero (not produced by the data below)
    uint32_t h = ((uint32_t)e << 10) | (m >> 13);
    const uint32_t rest = m & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

/// Stores x as `dtype` at element i of `row`; returns the stored value as fp32.
static float store_elt(void *row, int dtype, size_t i, float x) {
    if (dtype == KVK_DTYPE_F32) { ((float *)row)[i] = x; return x; }
    if (dtype == KVK_DTYPE_F16) { const uint16_t h = half_bits(x); ((uint16_t *)row)[i] = h; return half_value(h); }
    uint32_t u = f32_to_bits(x);
    u += 0x7fff + ((u >> 16) & 1);
    ((uint16_t *)row)[i] = (uint16_t)(u >> 16);
    return bits_to_f32(u & 0xffff0000u);
}

static int failures = 0;

/// One call: `rows` query rows (one sequence, `rows` query heads on KV head 0 of 2) against
/// `tokens` tokens in blocks of `bs`, against the float64 reference.
static void check_case(int dtype, int d, int rows, int bs, int tokens) {
    const int kv_heads = 2, blocks = (tokens + bs - 1) / bs, capacity = blocks + 3;
    const size_t elt = dtype == KVK_DTYPE_F32 ? 4 : 2, block_elems = (size_t)kv_heads * bs * d;
    char *k = calloc((size_t)capacity * block_elems, elt), *v = calloc((size_t)capacity * block_elems, elt);
    float *kf = malloc(sizeof(float) * (size_t)tokens * d), *vf = malloc(sizeof(float) * (size_t)tokens * d);
    int32_t *table = malloc(sizeof(int32_t) * (size_t)blocks);
    for (int b = 0; b < blocks; b++) table[b] = capacity - 1 - b;  // scattered, never block 0
    for (int t = 0; t < tokens; t++) {
        const size_t base = ((size_t)table[t / bs] * kv_heads * bs + (size_t)(t % bs)) * d;  // head 0
        for (int i = 0; i < d; i++) {
            kf[(size_t)t * d + i] = store_elt(k + base * elt, dtype, (size_t)i, (float)uniform());
            vf[(size_t)t * d + i] = store_elt(v + base * elt, dtype, (size_t)i, (float)uniform());
        }
    }
    float *q = malloc(sizeof(float) * (size_t)rows * d), *out = malloc(sizeof(float) * (size_t)rows * d), *lse = malloc(sizeof(float) * (size_t)rows);
    for (int i = 0; i < rows * d; i++) q[i] = (float)uniform();
    const int32_t seq = 0;
    const float scale = 1.f / sqrtf((float)d);
    void *scratch = aligned_alloc(64, (kvk_attend_scratch_bytes(rows, d, 1) + 63) / 64 * 64);
    kvk_attend_args a = {
        .keys = k, .values = v, .dtype = dtype, .kv_heads = kv_heads, .block_size = bs, .head_dim = d,
        .head = 0, .head_count = 1, .blocks = table, .block_count = blocks, .last_block_tokens = tokens - (blocks - 1) * bs,
        .q = q, .seqs = &seq, .seq_count = 1, .group = rows, .q_head0 = 0, .q_seq_stride = (int64_t)rows * d, .scale = scale,
        .math = KVK_MATH_F32, .max_isa = KVK_ISA_PORTABLE, .out = out, .out_seq_stride = (int64_t)rows * d, .lse2 = lse,
        .lse_seq_stride = rows, .scratch = scratch,
    };
    kvk_attend(&a);
    double worst = 0, worst_lse = 0;
    double *p = malloc(sizeof(double) * (size_t)tokens);
    for (int r = 0; r < rows; r++) {
        double mx = -INFINITY, sum = 0;
        for (int t = 0; t < tokens; t++) {
            double s = 0;
            for (int i = 0; i < d; i++) s += (double)q[r * d + i] * kf[(size_t)t * d + i];
            p[t] = s * scale;
            mx = p[t] > mx ? p[t] : mx;
        }
        for (int t = 0; t < tokens; t++) sum += (p[t] = exp(p[t] - mx));
        double norm = 0, err = 0;
        for (int i = 0; i < d; i++) {
            double o = 0;
            for (int t = 0; t < tokens; t++) o += p[t] * vf[(size_t)t * d + i];
            o /= sum;
            norm = fmax(norm, fabs(o));
            err = fmax(err, fabs(o - out[r * d + i]));
        }
        worst = fmax(worst, err / fmax(norm, 1e-30));
        const double lse2 = (mx + log(sum)) / log(2.0);
        worst_lse = fmax(worst_lse, fabs(lse2 - lse[r]) / fmax(fabs(lse2), 1.0));
    }
    if (!(worst <= 1e-5) || !(worst_lse <= 1e-5)) {
        printf("FAIL dtype %d d %d rows %d bs %d tokens %d: relative error %.2e, lse %.2e\n", dtype, d, rows, bs, tokens, worst, worst_lse);
        failures++;
    }
    free(k); free(v); free(kf); free(vf); free(table); free(q); free(out); free(lse); free(scratch); free(p);
}

/// Every non-NaN 16-bit pattern of `dtype` as one-token value rows: the output must equal it.
static void check_exact_values(int dtype, int rows) {
    const int d = 128, patterns = 65536, seqs = patterns / d;
    const size_t block_bytes = (size_t)d * 2;  // 1 KV head, block size 1
    uint16_t *v = calloc((size_t)(seqs + 1) * d, 2);
    char *k = calloc((size_t)(seqs + 1), block_bytes);
    int32_t *tables = malloc(sizeof(int32_t) * (size_t)seqs);
    float *q = malloc(sizeof(float) * (size_t)rows * d), *out = malloc(sizeof(float) * (size_t)rows * d);
    for (int i = 0; i < rows * d; i++) q[i] = 0.5f;
    void *scratch = aligned_alloc(64, (kvk_attend_scratch_bytes(rows, d, 1) + 63) / 64 * 64);
    int bad = 0;
    for (int s = 0; s < seqs; s++) {
        tables[s] = s + 1;
        for (int i = 0; i < d; i++) v[(size_t)(s + 1) * d + i] = (uint16_t)(s * d + i);
        const int32_t seq = 0;
        kvk_attend_args a = {
            .keys = k, .values = v, .dtype = dtype, .kv_heads = 1, .block_size = 1, .head_dim = d, .head = 0, .head_count = 1,
            .blocks = &tables[s], .block_count = 1, .last_block_tokens = 1, .q = q, .seqs = &seq, .seq_count = 1, .group = rows,
            .q_head0 = 0, .q_seq_stride = (int64_t)rows * d, .scale = 0.1f, .math = KVK_MATH_F32, .max_isa = KVK_ISA_PORTABLE,
            .out = out, .out_seq_stride = (int64_t)rows * d, .lse2 = NULL, .lse_seq_stride = 0, .scratch = scratch,
        };
        kvk_attend(&a);
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < d; i++) {
                const uint16_t h = (uint16_t)(s * d + i);
                const float want = dtype == KVK_DTYPE_F16 ? half_value(h) : bits_to_f32((uint32_t)h << 16);
                if (isnan(want)) continue;
                if (out[r * d + i] != want) bad++;
            }
    }
    if (bad) {
        printf("FAIL %s values read inexactly (%d rows): %d\n", dtype == KVK_DTYPE_F16 ? "fp16" : "bf16", rows, bad);
        failures++;
    }
    free(v); free(k); free(tables); free(q); free(out); free(scratch);
}

int main(void) {
    int cases = 0;
    const int dtypes[] = {KVK_DTYPE_F32, KVK_DTYPE_F16, KVK_DTYPE_BF16}, dims[] = {7, 64, 128}, row_counts[] = {1, 3, 4, 17},
              block_sizes[] = {1, 5, 16}, token_counts[] = {1, 17, 100};
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++)
            for (int c = 0; c < 4; c++)
                for (int e = 0; e < 3; e++)
                    for (int f = 0; f < 3; f++, cases++) check_case(dtypes[a], dims[b], row_counts[c], block_sizes[e], token_counts[f]);
    for (int r = 1; r <= 4; r += 3) {
        check_exact_values(KVK_DTYPE_F16, r);
        check_exact_values(KVK_DTYPE_BF16, r);
    }
    printf("%s: %d attention cases and every fp16 / bf16 value (1 and 4 rows), isa %d: %s\n",
#if defined(__aarch64__)
           "arm64",
#elif defined(__x86_64__)
           "x86-64",
#else
           "other",
#endif
           cases, kvk_isa(), failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
