// Shared by the kernel variants: addressing, scalar conversions, the scratch layout and the
// variant entry points that dispatch.c chooses between.
#ifndef KVK_INTERNAL_H
#define KVK_INTERNAL_H

#include <math.h>
#include <string.h>
#include "kvkernels.h"

#define KVK_LOG2E 1.44269504088896340736f

/// Tokens per tile of the many-row path (even: bf16 products pair tokens).
#ifndef KVK_TILE
#define KVK_TILE 32
#endif
/// Rows per row block of the many-row path (four 16-lane vectors).
#define KVK_ROW_BLOCK 64
/// Most KV heads one many-row call interleaves (callers split larger head ranges).
#define KVK_MAX_GEMM_HEADS 32

/// Cephes' exp2f polynomial on [-0.5, 0.5], ~1 ulp: 2^f = (((((C5 f + C4) f + C3) f + C2) f + C1) f + C0) f + 1.
/// The SIMD exp2s (AVX-512, AVX2) evaluate it lane-wise.
#define KVK_EXP2_C5 1.535336188319500e-4f
#define KVK_EXP2_C4 1.339887440266574e-3f
#define KVK_EXP2_C3 9.618437357674640e-3f
#define KVK_EXP2_C2 5.550332471162809e-2f
#define KVK_EXP2_C1 2.402264791363012e-1f
#define KVK_EXP2_C0 6.931472028550421e-1f

static inline size_t kvk_align64(size_t n) { return (n + 63) & ~(size_t)63; }
static inline int32_t kvk_round_up(int32_t n, int32_t m) { return (n + m - 1) / m * m; }

/// Address of query row r.
static inline const float *kvk_q_row(const kvk_attend_args *a, int32_t r) {
    return a->q + (int64_t)a->seqs[r / a->group] * a->q_seq_stride + (int64_t)(a->q_head0 + r % a->group) * a->head_dim;
}

/// Where row r's output goes, and its log-sum-exp (if wanted).
static inline float *kvk_out_row(const kvk_attend_args *a, int32_t r) {
    return a->out + (int64_t)(r / a->group) * a->out_seq_stride + (int64_t)(r % a->group) * a->head_dim;
}

static inline void kvk_store_lse(const kvk_attend_args *a, int32_t r, float lse2) {
    if (a->lse2) a->lse2[(int64_t)(r / a->group) * a->lse_seq_stride + r % a->group] = lse2;
}

/// Prefetches into L2 the call's query rows (`for_output` 0) or output rows (1). A sequence's
/// rows for the call's heads are adjacent (head_count x group x head_dim floats), so each
/// sequence is one contiguous span; the spans lie a sequence stride apart, in 4 KiB pages the
/// hardware prefetcher does not cross. Read row by row when cold (the many-row path's setup
/// and its final gather of the output), they cost one memory latency per row.
static inline void kvk_prefetch_row_spans(const kvk_attend_args *a, int for_output) {
    const size_t span = (size_t)a->head_count * (size_t)a->group * (size_t)a->head_dim * sizeof(float);
    for (int32_t s = 0; s < a->seq_count; s++) {
        const char *p = for_output ? (const char *)(a->out + (int64_t)s * a->out_seq_stride)
                                   : (const char *)(a->q + (int64_t)a->seqs[s] * a->q_seq_stride + (int64_t)a->q_head0 * a->head_dim);
        for (size_t off = 0; off < span; off += 64) __builtin_prefetch(p + off, 0, 2);
    }
}

static inline size_t kvk_elt_bytes(int32_t dtype) { return dtype == KVK_DTYPE_F32 ? 4 : 2; }

/// Byte offset of (block, head, token 0) in a layer arena.
static inline size_t kvk_page_offset(const kvk_attend_args *a, int32_t block) {
    return (((size_t)block * (size_t)a->kv_heads + (size_t)a->head) * (size_t)a->block_size) * (size_t)a->head_dim
        * kvk_elt_bytes(a->dtype);
}

static inline int32_t kvk_block_tokens(const kvk_attend_args *a, int32_t i) {
    return i == a->block_count - 1 ? a->last_block_tokens : a->block_size;
}

/// A (block, KV head) page of a call's run: its byte offset in a layer arena and its tokens
/// (0: past the run's end).
typedef struct kvk_page_ref { size_t offset; int32_t tokens; } kvk_page_ref;

/// The page `ahead` pages after block b, head j (head `a->head + j`) in the few-row paths'
/// reading order (blocks outer, the call's heads inner): what they prefetch while reading (b, j).
static inline kvk_page_ref kvk_page_ahead(const kvk_attend_args *a, int32_t b, int32_t j, int32_t ahead, size_t head_bytes) {
    int32_t pj = j + ahead, pb = b;
    while (pj >= a->head_count && pb < a->block_count) { pj -= a->head_count; pb++; }
    if (pb >= a->block_count) return (kvk_page_ref){0, 0};
    return (kvk_page_ref){kvk_page_offset(a, a->blocks[pb]) + (size_t)pj * head_bytes, kvk_block_tokens(a, pb)};
}

/// A (block, KV head) page as row pointers into the K and V arenas, and its tokens (NULLs and 0
/// past the run's end).
typedef struct kvk_kv_page { const char *k, *v; int32_t tokens; } kvk_kv_page;

/// kvk_page_ahead as K and V pointers: the page the few-row paths prefetch while reading (b, j).
static inline kvk_kv_page kvk_kv_page_ahead(const kvk_attend_args *a, int32_t b, int32_t j, int32_t ahead, size_t head_bytes) {
    const kvk_page_ref p = kvk_page_ahead(a, b, j, ahead, head_bytes);
    if (!p.tokens) return (kvk_kv_page){NULL, NULL, 0};
    return (kvk_kv_page){(const char *)a->keys + p.offset, (const char *)a->values + p.offset, p.tokens};
}

static inline float kvk_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/// Round-to-nearest-even to bf16, as vcvtneps2bf16 does (NaN stays NaN).
static inline uint16_t kvk_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

static inline float kvk_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        u = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        u = sign;
    } else {  // subnormal: renormalise
        int e = -1;
        do { man <<= 1; e++; } while (!(man & 0x400));
        u = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/// Element i of a row stored as `dtype`.
static inline float kvk_load_elt(const void *row, int32_t dtype, int32_t i) {
    switch (dtype) {
    case KVK_DTYPE_F16: return kvk_f16_to_f32(((const uint16_t *)row)[i]);
    case KVK_DTYPE_BF16: return kvk_bf16_to_f32(((const uint16_t *)row)[i]);
    default: return ((const float *)row)[i];
    }
}

/// The scratch of the SIMD paths, carved from one buffer (offsets in bytes, 64-aligned), with
/// rpad = rows rounded up to 16 and dpad = head_dim rounded up to 16.
/// Many-row path: q holds the queries transposed (dpad x rpad fp32, or dpad/2 x rpad x 2 bf16),
/// o the output transposed (dpad x rpad fp32), m / l / alpha the softmax state per row, k / v one
/// staged tile, s / p the scores and probabilities of a tile for one row block.
/// Few-row path: q and o hold rows x dpad, p holds 16 probabilities per row.
typedef struct kvk_scratch_layout {
    size_t q, o, m, l, alpha, k, v, s, p, total;
} kvk_scratch_layout;

static inline kvk_scratch_layout kvk_layout_scratch(int32_t rows, int32_t head_dim) {
    kvk_scratch_layout s;
    size_t rpad = (size_t)kvk_round_up(rows, 16), dpad = (size_t)kvk_round_up(head_dim, 16), at = 0;
    s.q = at; at += kvk_align64(dpad * rpad * 4);
    s.o = at; at += kvk_align64(dpad * rpad * 4);
    s.m = at; at += kvk_align64(rpad * 4);
    s.l = at; at += kvk_align64(rpad * 4);
    s.alpha = at; at += kvk_align64(rpad * 4);
    s.k = at; at += kvk_align64((size_t)KVK_TILE * dpad * 4);
    s.v = at; at += kvk_align64((size_t)KVK_TILE * dpad * 4);
    s.s = at; at += kvk_align64((size_t)KVK_TILE * KVK_ROW_BLOCK * 4);
    s.p = at; at += kvk_align64((rpad > KVK_TILE * KVK_ROW_BLOCK / 16 ? rpad * 16 : (size_t)KVK_TILE * KVK_ROW_BLOCK) * 4);
    s.total = at;
    return s;
}

/// Rows of the many-row path's 8-row variant (one 8-lane ymm row vector; from KVK_YMM8_MIN_ROWS in dispatch.c).
#define KVK_YMM8_ROWS 8

/// Scratch of the 8-row variant: per head (a slice of `head` bytes each) the query pairs
/// (dpad/2 x 8 pairs), O as rows (8 x dpad fp32), m and l; after the heads' slices the
/// shared alpha and probability pairs (KVK_TILE/2 x KVK_ROW_BLOCK, as kvk_pv_rows_bf16 reads
/// them). Compact: the 16-row layout's per-head slices are ~64 KiB apart (staging space only
/// slice 0 uses), which would put every head's state on the same cache sets (not measured).
typedef struct kvk_scratch_layout8 {
    size_t head, q, o, m, l, alpha, pp, total;
} kvk_scratch_layout8;

static inline kvk_scratch_layout8 kvk_layout_scratch8(int32_t head_dim, int32_t heads) {
    kvk_scratch_layout8 s;
    const size_t dpad = (size_t)kvk_round_up(head_dim, 16), r = KVK_YMM8_ROWS;
    size_t at = 0;
    s.q = at; at += kvk_align64(dpad / 2 * r * 4);
    s.o = at; at += kvk_align64(dpad * r * 4);
    s.m = at; at += kvk_align64(r * 4);
    s.l = at; at += kvk_align64(r * 4);
    s.head = at;
    at = s.head * (size_t)heads;
    s.alpha = at; at += kvk_align64(r * 4);
    s.pp = at; at += kvk_align64((size_t)KVK_TILE / 2 * KVK_ROW_BLOCK * 4);
    s.total = at;
    return s;
}

void kvk_attend_portable(const kvk_attend_args *a);
float kvk_stream_read_portable(const void *buffer, size_t bytes);
#if defined(__x86_64__)
void kvk_attend_avx2(const kvk_attend_args *a);
void kvk_attend_gemm_avx2(const kvk_attend_args *a);
float kvk_stream_read_avx2(const void *buffer, size_t bytes);
void kvk_attend_rows_avx512(const kvk_attend_args *a);
void kvk_attend_rows_bf16_avx512(const kvk_attend_args *a);
void kvk_attend_gemm_avx512(const kvk_attend_args *a, int bf16_math);
void kvk_attend_gemm8_avx512(const kvk_attend_args *a);
float kvk_stream_read_avx512(const void *buffer, size_t bytes);
#endif

#endif
