// The shared-context half of a goal-point step, outside Swift: the b = 32 step's GEMM items
// (32 rows x 32 KV heads x 8192 tokens as 8 items: heads 9 + 9 + 9 + 5, two token halves, as
// the work planner splits them) taken from one queue by 1 and then 2 threads, LLC flushed
// before each run, for each build given (dlopen'd), alternating; medians. It tells the
// kernels' own two-thread scaling apart from the Swift runner's. Built and run by
// `HARNESS=step tools/kernel-ab/variants.sh REV NAME:FLAGS...` (or ab.sh); REPS sets the runs.
#include "harness.h"
#include <pthread.h>

enum { KVH = 32, BLOCK = 16, D = 128, TOKENS = 8192, ROWS = 32, ITEMS = 8 };

typedef struct { int head, heads, block, blocks; } item;
typedef struct { void *scratch; float *out, *lse; } worker_state;

static const uint16_t *keys, *values;
static const int32_t *table, *seqs;
static const float *query;
static item items[ITEMS];
static attend_fn attend;
static int next_item;

static void *worker(void *p) {
    worker_state *w = p;
    for (int i; (i = __atomic_fetch_add(&next_item, 1, __ATOMIC_RELAXED)) < ITEMS;) {
        const item *it = &items[i];
        kvk_attend_args a = {keys, values, KVK_DTYPE_BF16, KVH, BLOCK, D, it->head, it->heads, table + it->block, it->blocks, BLOCK,
                             query, seqs, ROWS, 1, it->head, (int64_t)KVH * D, 0.088f, 1, 3, w->out, (int64_t)KVH * D, w->lse, KVH,
                             w->scratch};
        attend(&a);
    }
    return NULL;
}

int main(int argc, char **argv) {
    const int builds = argc - 1, reps = env("REPS", 11);
    if (builds < 1 || builds > 8 || reps < 1 || reps > 64) { fprintf(stderr, "usage: REPS=1..64 step build.so... (1 to 8)\n"); return 2; }
    attend_fn fns[8];
    size_t scratch_size = 0;
    for (int v = 0; v < builds; v++) {
        scratch_fn scratch_bytes;
        if (load_build(argv[v + 1], &fns[v], &scratch_bytes)) return 1;
        const size_t s = scratch_bytes(ROWS, D, 9);
        if (s > scratch_size) scratch_size = s;
    }
    uint16_t *k, *v;
    random_kv((size_t)TOKENS * KVH * D * 2, &k, &v);
    keys = k, values = v;
    const int blocks = TOKENS / BLOCK;
    table = identity(blocks), seqs = identity(ROWS);
    query = random_queries((size_t)ROWS * KVH * D);
    const int groups[5] = {0, 9, 18, 27, 32};
    for (int g = 0, n = 0; g < 4; g++)
        for (int c = 0; c < 2; c++) items[n++] = (item){groups[g], groups[g + 1] - groups[g], c * blocks / 2, blocks / 2};
    worker_state w[2];
    for (int i = 0; i < 2; i++)
        w[i] = (worker_state){aligned_alloc(64, (scratch_size + 63) / 64 * 64), calloc((size_t)ROWS * KVH * D, 4), calloc((size_t)ROWS * KVH, 4)};
    const size_t flush_bytes = (size_t)256 << 20;
    char *flush = malloc(flush_bytes);
    memset(flush, 1, flush_bytes);
    static double times[8][2][64];
    for (int r = 0; r < reps; r++)
        for (int b = 0; b < builds; b++)
            for (int threads = 1; threads <= 2; threads++) {
                flush_llc(flush, flush_bytes);
                attend = fns[b];
                next_item = 0;
                pthread_t th[2];
                const double t0 = now();
                for (int i = 0; i < threads; i++) pthread_create(&th[i], NULL, worker, &w[i]);
                for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
                times[b][threads - 1][r] = now() - t0;
            }
    const double flops = 4.0 * ROWS * KVH * (double)TOKENS * D;
    printf("# 8 GEMM items of the b = 32 step (32 rows x 32 heads x 8192 tokens, bf16), LLC flushed, medians of %d\n", reps);
    for (int b = 0; b < builds; b++) {
        double *one = times[b][0], *two = times[b][1];
        qsort(one, reps, sizeof(double), by_value);
        qsort(two, reps, sizeof(double), by_value);
        printf("%-40s 1 thread %6.2f ms (%3.0f GFLOP/s, min %.2f)   2 threads %6.2f ms (%3.0f GFLOP/s, min %.2f)   %.2fx\n", argv[b + 1],
               one[reps / 2] * 1e3, flops / one[reps / 2] / 1e9, one[0] * 1e3, two[reps / 2] * 1e3, flops / two[reps / 2] / 1e9,
               two[0] * 1e3, one[reps / 2] / two[reps / 2]);
    }
    return 0;
}
