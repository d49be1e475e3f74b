// Run-time choice of the kernel variant: the CPU is probed once; each call may cap the variant.
#include <stdatomic.h>
#include "kvk_internal.h"

/// Below this many rows the few-row path (lanes along the head dim) beats the many-row path,
/// whose 16-lane row vectors would be mostly padding: measured at b = 8 (MHA, bf16, m_c 8192)
/// few-row 23.5 ms vs GEMM 25.4 ms, at b = 12 GEMM 25.4 ms vs few-row 31 ms (fp32 few-row); against
/// the bf16 few-row kernel, b = 12: GEMM 10.8 ms vs few-row 12.7-14.1 ms.
#define KVK_GEMM_MIN_ROWS 9

/// Rows from which the few-row path takes bf16 products (when the call asks for bf16 math):
/// one row from DRAM is memory-bound either way and the fp32 kernel streamed ~6 % faster
/// (1 row x 32 heads x 2048 tokens, 1.53 vs 1.61-1.64 ms); 4 rows (a GQA group) ran 6 % faster
/// on one thread in bf16 (2.11 -> 1.98 ms); paged GQA 32/8 at b = 16 / 32 15-23 % faster.
#ifndef KVK_BF16_ROWS_MIN_ROWS
#define KVK_BF16_ROWS_MIN_ROWS 2
#endif

/// From this many rows up to KVK_YMM8_ROWS, bf16 math on bf16 KV with head_dim % 32 == 0 takes
/// the many-row path's 8-row variant (one ymm row vector: 256-bit vdpbf16ps issues twice per
/// cycle on Zen 4, the 512-bit rate, where a 16-row vector would be half padding) instead of
/// the few-row path. One thread, 32 KV heads, LLC flushed (2048 tokens) / in cache (512):
/// 8 rows 3.23-3.38 -> 2.10-2.11 ms / 0.72-0.76 -> 0.51-0.55; 7 rows 2.94 -> 2.09 / 0.67 ->
/// 0.51; 6 rows 2.58-2.64 -> 2.11-2.13 / 0.58 -> 0.54; 5 rows 2.82-2.86 -> 2.59-2.73 / 0.48 ->
/// 0.47 (rows pad to 8, so 5 gains too little to switch paths for).
#define KVK_YMM8_MIN_ROWS 6

/// Rows per KV head the 8-row variant takes (when the call's math and KV allow it).
static int kvk_ymm8_rows(int32_t rows) { return rows >= KVK_YMM8_MIN_ROWS && rows <= KVK_YMM8_ROWS; }

#if defined(__x86_64__)
/// Whether a call's bf16 products can run straight on its KV rows (keys and values read in
/// place): bf16 math on bf16 KV, head dims a multiple of 32. The bf16 few-row path and the
/// 8-row variant need it.
static int kvk_bf16_in_place(const kvk_attend_args *a, int bf16) {
    return bf16 && a->dtype == KVK_DTYPE_BF16 && a->head_dim % 32 == 0;
}
#endif

static int32_t kvk_detect(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")
        && __builtin_cpu_supports("avx512dq"))
        return __builtin_cpu_supports("avx512bf16") ? KVK_ISA_AVX512_BF16 : KVK_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return KVK_ISA_AVX2;  // F16C ships with both
#endif
    return KVK_ISA_PORTABLE;
}

int32_t kvk_isa(void) {
    static _Atomic int32_t detected = -1;
    int32_t isa = atomic_load_explicit(&detected, memory_order_relaxed);
    if (isa < 0) {
        isa = kvk_detect();
        atomic_store_explicit(&detected, isa, memory_order_relaxed);
    }
    return isa;
}

int32_t kvk_gemm_min_rows(void) { return KVK_GEMM_MIN_ROWS; }

size_t kvk_attend_scratch_bytes(int32_t rows, int32_t head_dim, int32_t head_count) {
    // few-row paths (and the portable one, a head at a time): one layout over all heads' rows;
    // many-row paths: one layout per head. Sized for the path the rows take (was: the larger of
    // the two always, 2.1 MB instead of 80 KB for a paged MHA item of 32 heads).
    const size_t joint = kvk_layout_scratch(rows * head_count, head_dim).total;
    if (kvk_ymm8_rows(rows)) {  // the few-row or the 8-row layout (dtype and math decide)
        const size_t y8 = kvk_layout_scratch8(head_dim, head_count < KVK_MAX_GEMM_HEADS ? head_count : KVK_MAX_GEMM_HEADS).total;
        return joint > y8 ? joint : y8;
    }
    if (rows < KVK_GEMM_MIN_ROWS) return joint;
    const size_t per_head = kvk_layout_scratch(rows, head_dim).total * (size_t)(head_count < KVK_MAX_GEMM_HEADS ? head_count : KVK_MAX_GEMM_HEADS);
    return joint > per_head ? joint : per_head;
}

/// Runs `run` over the call's heads in passes of at most `per_pass` heads: 1 for the paths that
/// read one head at a time, KVK_MAX_GEMM_HEADS for the many-row driver (it keeps every head's
/// state of a pass at once).
static void kvk_head_passes(const kvk_attend_args *a, int32_t per_pass, void (*run)(const kvk_attend_args *, int), int arg) {
    kvk_attend_args part = *a;
    for (int32_t j = 0; j < a->head_count; j += per_pass) {
        part.head = a->head + j;
        part.head_count = a->head_count - j < per_pass ? a->head_count - j : per_pass;
        part.q_head0 = a->q_head0 + j * a->group;
        part.out = a->out + (int64_t)j * a->group * a->head_dim;
        part.lse2 = a->lse2 ? a->lse2 + (int64_t)j * a->group : NULL;
        run(&part, arg);
    }
}

static void kvk_portable_adapter(const kvk_attend_args *a, int unused) { (void)unused; kvk_attend_portable(a); }
#if defined(__x86_64__)
static void kvk_avx2_gemm_adapter(const kvk_attend_args *a, int unused) { (void)unused; kvk_attend_gemm_avx2(a); }
static void kvk_gemm8_adapter(const kvk_attend_args *a, int unused) { (void)unused; kvk_attend_gemm8_avx512(a); }
#endif

void kvk_attend(const kvk_attend_args *a) {
    const int32_t isa = kvk_isa() < a->max_isa ? kvk_isa() : a->max_isa;
#if defined(__x86_64__)
    if (isa >= KVK_ISA_AVX512) {
        const int bf16 = a->math == KVK_MATH_BF16 && isa >= KVK_ISA_AVX512_BF16;
        const int32_t rows = a->seq_count * a->group;
        const int in_place = kvk_bf16_in_place(a, bf16);
        if (in_place && kvk_ymm8_rows(rows))
            kvk_head_passes(a, KVK_MAX_GEMM_HEADS, kvk_gemm8_adapter, 0);
        else if (rows >= KVK_GEMM_MIN_ROWS)
            kvk_head_passes(a, KVK_MAX_GEMM_HEADS, kvk_attend_gemm_avx512, bf16);
        else if (in_place && rows >= KVK_BF16_ROWS_MIN_ROWS)
            kvk_attend_rows_bf16_avx512(a);
        else
            kvk_attend_rows_avx512(a);
        return;
    }
    if (isa == KVK_ISA_AVX2) {
        if (a->seq_count * a->group >= KVK_GEMM_MIN_ROWS) kvk_head_passes(a, 1, kvk_avx2_gemm_adapter, 0);
        else kvk_attend_avx2(a);
        return;
    }
#endif
    (void)isa;
    kvk_head_passes(a, 1, kvk_portable_adapter, 0);
}

float kvk_stream_read(const void *buffer, size_t bytes) {
#if defined(__x86_64__)
    const int32_t isa = kvk_isa();
    if (isa >= KVK_ISA_AVX512) return kvk_stream_read_avx512(buffer, bytes);
    if (isa == KVK_ISA_AVX2) return kvk_stream_read_avx2(buffer, bytes);
#endif
    return kvk_stream_read_portable(buffer, bytes);
}
