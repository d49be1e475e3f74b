// Innermost loops of PrefixKV's decode attention and its machine probes.
//
// One call of kvk_attend computes, for one KV head and one run of pages, the attention of a set of
// query rows: a *partial* result (normalised output + base-2 log-sum-exp per row) that the Swift
// layer merges with the partials of other runs. Planning, threading and merging live in Swift.
//
// Every entry point dispatches once, at first use, to the best variant the CPU supports
// (AVX-512 + AVX512-BF16, AVX2 + FMA + F16C, portable C). The package is built without
// machine flags; the SIMD variants carry per-function `target` attributes instead.
#ifndef KVKERNELS_H
#define KVKERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Element types of stored KV (same codes as KVCore's KVDType.code).
enum { KVK_DTYPE_F32 = 0, KVK_DTYPE_F16 = 1, KVK_DTYPE_BF16 = 2 };

/// Arithmetic of the products. F32: products in fp32 (FMA). BF16: queries, keys, probabilities
/// and values rounded to bf16, products summed in fp32 by vdpbf16ps; taken by the many-row path,
/// and by the few-row path for bf16 KV with head_dim % 32 == 0 from 2 rows on (dispatch.c).
enum { KVK_MATH_F32 = 0, KVK_MATH_BF16 = 1 };

/// Instruction-set variants, in increasing order.
enum { KVK_ISA_PORTABLE = 0, KVK_ISA_AVX2 = 1, KVK_ISA_AVX512 = 2, KVK_ISA_AVX512_BF16 = 3 };

/// One unit of attention work: `rows` query rows against the pages of `head_count` consecutive
/// KV heads starting at `head`.
///
/// For KV head head + j, row r (0 <= r < seq_count * group) is query head
/// `q_head0 + j * group + r % group` of sequence `seqs[r / group]`, i.e. the fp32 vector at
/// `q + seqs[r / group] * q_seq_stride + (q_head0 + j * group + r % group) * head_dim`. The KV is
/// blocks[0..block_count), every block full but the last, which holds `last_block_tokens` tokens.
/// Several heads per call let the few-row path read each block's heads as one contiguous run
/// (head-major pages put one head's rows of a block in a 4 KiB island otherwise).
typedef struct kvk_attend_args {
    const void *keys;            ///< the layer's K arena (block 0)
    const void *values;          ///< the layer's V arena (block 0)
    int32_t dtype;               ///< KVK_DTYPE_*
    int32_t kv_heads;
    int32_t block_size;
    int32_t head_dim;
    int32_t head;                ///< first KV head read
    int32_t head_count;          ///< consecutive KV heads read (>= 1)
    const int32_t *blocks;
    int32_t block_count;         ///< >= 1
    int32_t last_block_tokens;   ///< 1 ... block_size
    const float *q;
    const int32_t *seqs;
    int32_t seq_count;           ///< >= 1
    int32_t group;               ///< query heads per KV head
    int32_t q_head0;
    int64_t q_seq_stride;        ///< floats between two sequences' queries (query heads * head_dim)
    float scale;                 ///< softmax scale applied to q.k
    int32_t math;                ///< KVK_MATH_* (see above for where bf16 applies)
    int32_t max_isa;             ///< highest KVK_ISA_* variant to use (tests compare variants)
    /// Normalised output of row r of head head + j: head_dim floats at
    /// out + (r / group) * out_seq_stride + (j * group + r % group) * head_dim.
    float *out;
    int64_t out_seq_stride;
    /// Log-sum-exp of row r's scaled scores for head head + j, in base 2
    /// (log2 sum_t 2^(log2(e) * scale * q.k_t)), at lse2[(r / group) * lse_seq_stride + j * group + r % group];
    /// lse2 may be NULL.
    float *lse2;
    int64_t lse_seq_stride;
    void *scratch;               ///< kvk_attend_scratch_bytes(rows, head_dim, head_count), 64-byte aligned
} kvk_attend_args;

/// Scratch bytes one kvk_attend call needs for `rows` query rows of `head_count` heads.
size_t kvk_attend_scratch_bytes(int32_t rows, int32_t head_dim, int32_t head_count);

/// Computes one unit of attention work (see kvk_attend_args). Thread-safe; no allocation.
void kvk_attend(const kvk_attend_args *args);

/// The best variant this CPU supports (kvk_attend uses min(this, args->max_isa)).
int32_t kvk_isa(void);

/// Row count from which kvk_attend uses the many-row (GEMM-shaped) path on AVX-512.
int32_t kvk_gemm_min_rows(void);

/// Streams `bytes` (a multiple of 512, 64-byte aligned) of `buffer` through the core, reading
/// only; returns a checksum so the reads cannot be elided.
float kvk_stream_read(const void *buffer, size_t bytes);

/// Index of the first NaN or infinity among x[0 ..< n], or n when all are finite.
size_t kvk_first_nonfinite(const float *x, size_t n);

/// Runs `iterations` rounds of sixteen independent chains of the instruction the many-row path
/// multiplies with (vdpbf16ps when `bf16_math` and the CPU has it, else the widest FMA) and
/// returns the FLOPs done: the per-core compute ceiling of the bench's roofline.
double kvk_peak_probe(int32_t bf16_math, int64_t iterations);

#ifdef __cplusplus
}
#endif
#endif
