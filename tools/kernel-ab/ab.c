// A/B harness for the C kernels: loads two (or more) builds of CKVKernels as shared objects and
// times kvk_attend on the same data in one process, alternating builds call by call, medians.
// The default item is the goal point's GEMM-shaped item: 32 rows (b = 32, MHA) x 9 KV heads x
// 4096 tokens (half the shared context), bf16 KV and math, last-level cache flushed before each
// call. Environment: HEADS, TOKENS, SEQS (rows), REPS, HOT=1 (no flush), ISA, DTYPE, MATH. Built and run by ab.sh.
// The builds must share kvk_attend_args' layout.
#include "harness.h"
#include <math.h>

int main(int argc, char **argv) {
    const int builds = argc - 1;
    if (builds < 1 || builds > 8) { fprintf(stderr, "usage: ab build.so... (1 to 8)\n"); return 2; }
    const int heads = env("HEADS", 9), tokens = env("TOKENS", 4096), rows = env("SEQS", 32), reps = env("REPS", 15);
    const int isa = env("ISA", 3);  // highest kernel variant: 1 AVX2, 2 AVX-512, 3 AVX-512 + BF16
    // KVK_DTYPE_* (0 fp32, 1 fp16, 2 bf16: the same random bits read as that type), KVK_MATH_* (0 fp32, 1 bf16)
    const int dtype = env("DTYPE", 2), math = env("MATH", 1);
    const int cold = !getenv("HOT"), kv_heads = 32, block = 16, d = 128, blocks = tokens / block;
    attend_fn attend[8];
    scratch_fn scratch_bytes[8];
    for (int v = 0; v < builds; v++)
        if (load_build(argv[v + 1], &attend[v], &scratch_bytes[v])) return 1;
    uint16_t *k, *vv;
    random_kv((size_t)kv_heads * block * d * (dtype == 0 ? 4 : 2) * blocks, &k, &vv);
    int32_t *table = identity(blocks), *seqs = identity(rows);
    float *q = random_queries((size_t)rows * kv_heads * d);
    float *out[8], *lse[8];
    for (int v = 0; v < builds; v++) {
        out[v] = calloc((size_t)rows * kv_heads * d, 4);
        lse[v] = calloc((size_t)rows * kv_heads, 4);
    }
    // The largest scratch any build asks for (a build whose layout grew would otherwise write
    // past the first build's size into the next head's slice, and time and compute garbage).
    size_t scratch_size = 0;
    for (int v = 0; v < builds; v++)
        if (scratch_bytes[v](rows, d, heads) > scratch_size) scratch_size = scratch_bytes[v](rows, d, heads);
    void *scratch = aligned_alloc(64, (scratch_size + 63) / 64 * 64);
    const size_t flush_bytes = (size_t)128 << 20;
    char *flush = malloc(flush_bytes);
    memset(flush, 1, flush_bytes);
    double t[8][64];
    for (int r = 0; r < reps && r < 64; r++)
        for (int v = 0; v < builds; v++) {
            kvk_attend_args a = {k, vv, dtype, kv_heads, block, d, 0, heads, table, blocks, block, q, seqs, rows, 1, 0,
                                 (int64_t)kv_heads * d, 0.088f, math, isa, out[v], (int64_t)kv_heads * d, lse[v], kv_heads, scratch};
            if (cold) flush_llc(flush, flush_bytes);
            const double t0 = now();
            attend[v](&a);
            t[v][r] = now() - t0;
        }
    const double flops = 4.0 * rows * heads * (double)tokens * d;
    const int n = reps < 64 ? reps : 64;
    static const char *dtypes[] = {"fp32", "fp16", "bf16"};
    printf("# %d rows x %d heads x %d tokens, d %d, %s KV, %s math, isa <= %d, %s, medians of %d alternating calls\n", rows, heads,
           tokens, d, dtypes[dtype], math ? "bf16" : "fp32", isa, cold ? "LLC flushed" : "hot", n);
    for (int v = 0; v < builds; v++) {
        double diff = 0;  // over every row's output (the heads not computed stay 0 in every build)
        for (size_t i = 0; i < (size_t)rows * kv_heads * d; i++) diff = fmax(diff, fabs((double)out[v][i] - out[0][i]));
        qsort(t[v], n, sizeof(double), by_value);
        printf("%-40s %.3f ms  %6.1f GFLOP/s  (min %.3f)  max |out - first build's| %.1e\n", argv[v + 1], t[v][n / 2] * 1e3,
               flops / t[v][n / 2] / 1e9, t[v][0] * 1e3, diff);
    }
    return 0;
}
