// Interleave probe: can a GEMM item hide the own-block work of the b = 32 step?
//
// One thread, last-level cache flushed before each variant, variants alternating, medians.
// The goal point's GEMM item (32 rows x 9 KV heads x 4096 tokens, bf16 KV and math) and the
// own blocks of OWN sequences (1 row x 32 heads x 128 tokens each, 64 KiB of K+V per head):
//   sequential   the GEMM item, then the own items (what the runner does today)
//   interleaved  one own (sequence, head) unit every EVERY (head, tile) units of the GEMM, its
//                pages prefetched into L2 beforehand by a stream of LPS lines per P.V block,
//                inline with the GEMM's own prefetch; a unit runs once the stream is LAG units
//                past it
//   no-prefetch  the same interleaving, the own pages read from DRAM on demand
//   prefetch     the prefetch stream alone, the own units after the GEMM (the stream's cost)
// Sparse streams (to see whether a few software prefetches per page start the L2 hardware
// prefetcher on the rest): every SKIP-th P.V block issues LPS prefetches, STRIDE lines apart,
// over the first HEAD lines of each 4 KiB page (defaults 1, 1, 64: every line of every page).
// The kernel is CKVKernels with hooks.patch applied (run.sh). Outputs of the interleaved own
// units are compared with the sequential ones (same kernel: bit-identical).
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include "kvkernels.h"

typedef struct kvk_probe_pf { const char *const *pages; int32_t npages, page, line, lines_per_step, stride, skip, tick, head_lines; } kvk_probe_pf;
extern __thread void (*kvk_probe_hook)(void *);
extern __thread void *kvk_probe_ctx;
extern __thread kvk_probe_pf *kvk_probe_extra;

enum { KVH = 32, BS = 16, D = 128, PAGES_PER_UNIT = 2 * 128 / BS };

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static int by_value(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y; }
static int env(const char *n, int f) { return getenv(n) ? atoi(getenv(n)) : f; }

/// Between (head, tile) units: run the next own unit every `every` calls, once the prefetch
/// stream is `lag` units past it (or done, or absent).
typedef struct interleave { const kvk_attend_args *units; int nunits, every, lag, calls, next, run_inside; kvk_probe_pf *pf; double inside; } interleave;

static void between_units(void *ctx) {
    interleave *c = ctx;
    if (!c->run_inside || ++c->calls % c->every || c->next >= c->nunits) return;
    if (c->pf && c->pf->page < (c->next + c->lag) * PAGES_PER_UNIT && c->pf->page < c->pf->npages) return;
    const double t0 = now();
    kvk_attend(&c->units[c->next++]);
    c->inside += now() - t0;
}

int main(void) {
    const int heads = 9, tokens = 4096, rows = 32, reps = env("REPS", 21), nown = env("OWN", 4);
    const int lps = env("LPS", 8), lag = env("LAG", 2);
    const int cblocks = tokens / BS, oblocks = 128 / BS, blocks = cblocks + nown * oblocks, nunits = nown * KVH;
    const int every = env("EVERY", heads * (tokens / 32) / nunits);
    const size_t block_bytes = (size_t)KVH * BS * D * 2, head_bytes = (size_t)BS * D * 2;
    const size_t bytes = ((block_bytes * blocks) | ((1 << 21) - 1)) + 1;
    uint16_t *k = aligned_alloc(1 << 21, bytes), *v = aligned_alloc(1 << 21, bytes);
    madvise(k, bytes, MADV_HUGEPAGE);
    madvise(v, bytes, MADV_HUGEPAGE);
    srand(1);
    for (size_t i = 0; i < bytes / 2; i++) { k[i] = 0x3f00 + (rand() & 0xff); v[i] = 0xbf00 + (rand() & 0x1ff); }
    int32_t *table = malloc(4 * (size_t)blocks), *seqs = malloc(4 * (size_t)rows);
    for (int i = 0; i < blocks; i++) table[i] = i;  // context blocks, then each sequence's own blocks
    for (int i = 0; i < rows; i++) seqs[i] = i;
    const size_t qn = (size_t)rows * KVH * D;
    float *q = malloc(4 * qn), *gout = calloc(qn, 4), *glse = calloc((size_t)rows * KVH, 4);
    float *out_seq = calloc(qn, 4), *lse_seq = calloc((size_t)rows * KVH, 4), *out_int = calloc(qn, 4), *lse_int = calloc((size_t)rows * KVH, 4);
    for (size_t i = 0; i < qn; i++) q[i] = (rand() / (float)RAND_MAX - 0.5f) * 3.4f;
    void *scratch = aligned_alloc(64, (kvk_attend_scratch_bytes(rows, D, heads) + 63) / 64 * 64);
    void *oscratch = aligned_alloc(64, (kvk_attend_scratch_bytes(1, D, KVH) + 63) / 64 * 64);
    const kvk_attend_args gemm = {k, v, KVK_DTYPE_BF16, KVH, BS, D, 0, heads, table, cblocks, BS, q, seqs, rows, 1, 0,
                                  (int64_t)KVH * D, 0.088f, KVK_MATH_BF16, KVK_ISA_AVX512_BF16, gout, (int64_t)KVH * D, glse, KVH, scratch};
    kvk_attend_args *own = malloc(sizeof *own * nown), *units = malloc(sizeof *units * nunits);
    const char **pages = malloc(sizeof(char *) * nunits * PAGES_PER_UNIT);
    for (int s = 0; s < nown; s++) {
        own[s] = (kvk_attend_args){k, v, KVK_DTYPE_BF16, KVH, BS, D, 0, KVH, table + cblocks + s * oblocks, oblocks, BS, q, seqs + s, 1, 1, 0,
                                   (int64_t)KVH * D, 0.088f, KVK_MATH_BF16, KVK_ISA_AVX512_BF16, out_seq + (size_t)s * KVH * D,
                                   (int64_t)KVH * D, lse_seq + (size_t)s * KVH, KVH, oscratch};
        for (int h = 0; h < KVH; h++) {
            kvk_attend_args u = own[s];
            u.head = h, u.head_count = 1, u.q_head0 = h;
            u.out = out_int + (size_t)s * KVH * D + (size_t)h * D, u.lse2 = lse_int + (size_t)s * KVH + h;
            const int n = s * KVH + h;
            units[n] = u;
            for (int b = 0; b < oblocks; b++) {
                const size_t off = (size_t)u.blocks[b] * block_bytes + (size_t)h * head_bytes;
                pages[n * PAGES_PER_UNIT + 2 * b] = (const char *)k + off;
                pages[n * PAGES_PER_UNIT + 2 * b + 1] = (const char *)v + off;
            }
        }
    }
    const size_t flush_bytes = (size_t)128 << 20;
    char *flush = malloc(flush_bytes);
    memset(flush, 1, flush_bytes);
    enum { SEQ, INTER, NOPF, PFONLY, GEMM, OWN, VARIANTS };
    static const char *names[] = {"sequential", "interleaved", "no-prefetch", "prefetch", "GEMM item alone", "own items alone"};
    double t[VARIANTS][64], inside[64];
    const int n = reps < 64 ? reps : 64;
    for (int r = 0; r < n; r++)
        for (int m = 0; m < VARIANTS; m++) {
            volatile char sink = 0;
            for (size_t i = 0; i < flush_bytes; i += 64) sink += flush[i];
            kvk_probe_pf pf = {pages, nunits * PAGES_PER_UNIT, 0, 0, lps, env("STRIDE", 1), env("SKIP", 1), 0, env("HEAD", 64)};
            interleave c = {units, nunits, every, lag, 0, 0, m != PFONLY, m == NOPF ? NULL : &pf, 0};
            const double t0 = now();
            if (m == SEQ || m == GEMM) kvk_attend(&gemm);
            if (m == SEQ || m == OWN)
                for (int s = 0; s < nown; s++) kvk_attend(&own[s]);
            if (m == INTER || m == NOPF || m == PFONLY) {
                kvk_probe_hook = between_units, kvk_probe_ctx = &c, kvk_probe_extra = m == NOPF ? NULL : &pf;
                kvk_attend(&gemm);
                kvk_probe_hook = NULL, kvk_probe_extra = NULL;
                while (c.next < nunits) kvk_attend(&units[c.next++]);
            }
            t[m][r] = now() - t0;
            if (m == INTER) inside[r] = c.inside;
        }
    double diff = 0;
    for (size_t i = 0; i < (size_t)nown * KVH * D; i++) diff = fmax(diff, fabs((double)out_seq[i] - out_int[i]));
    printf("# %d own units (of %d sequences) into a %d-unit GEMM item: one every %d, prefetch %d lines per %d P.V block(s), stride %d, first %d lines of a page, lag %d; medians of %d\n",
           nunits, nown, heads * (tokens / 32), every, lps, env("SKIP", 1), env("STRIDE", 1), env("HEAD", 64), lag, n);
    for (int m = 0; m < VARIANTS; m++) {
        qsort(t[m], n, sizeof(double), by_value);
        printf("%-16s %.3f ms\n", names[m], t[m][n / 2] * 1e3);
    }
    qsort(inside, n, sizeof(double), by_value);
    printf("own units inside the interleaved item: %.3f ms; interleaved / sequential %.3f; max |out diff| %.1e\n", inside[n / 2] * 1e3,
           t[INTER][n / 2] / t[SEQ][n / 2], diff);
    return 0;
}
