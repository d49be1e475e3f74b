// The 8-row variant's correctness check (2026-12-01): kvk_attend of two CKVKernels builds, e.g.
// 17138e2 (6-8 rows on the few-row path) and 524e40c (the 8-row variant), on 768 cases, against
// each other and an fp64 reference; prints the worst errors. Build each .so as
// tools/kernel-ab/variants.sh does (clang -O2 -fPIC -shared ... Sources/CKVKernels/*.c), then:
//   clang -O2 -ISources/CKVKernels/include docs/data/eight_row_check.c -o /tmp/check -ldl -lm
//   /tmp/check old.so new.so
// Correctness check of the KVK_YMM8 build against HEAD's build and an fp64 reference.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kvkernels.h"
typedef void (*attend_fn)(const kvk_attend_args *);
typedef size_t (*scratch_fn)(int32_t, int32_t, int32_t);
static float bf(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
int main(int argc, char **argv) {
    attend_fn at[2]; scratch_fn sc[2];
    for (int v = 0; v < 2; v++) {
        void *h = dlopen(argv[v + 1], RTLD_NOW | RTLD_LOCAL);
        if (!h) { fprintf(stderr, "%s\n", dlerror()); return 1; }
        at[v] = (attend_fn)dlsym(h, "kvk_attend"); sc[v] = (scratch_fn)dlsym(h, "kvk_attend_scratch_bytes");
    }
    const int dims[] = {128, 64, 256, 96};
    const int toks[] = {37, 2000, 1, 15, 17, 31, 33, 64, 500};
    const int shapes[][2] = {{5, 1}, {6, 1}, {7, 1}, {8, 1}, {2, 4}, {3, 2}, {1, 8}, {1, 5}};
    const int headsv[] = {1, 3, 32, 33};
    double worst_ab = 0, worst_ref_y = 0, worst_ref_b = 0, worst_lse = 0;
    srand(7);
    int cases = 0;
    for (int di = 0; di < 4; di++) for (int ti = 0; ti < 9; ti++) for (int si = 0; si < 8; si++) for (int hi = 0; hi < 4; hi++) {
        const int d = dims[di], tokens = toks[ti], seqs = shapes[si][0], group = shapes[si][1], heads = headsv[hi];
        if (d != 128 && hi > 1 && ti != 0) continue;  // keep it quick
        const int kvh = heads + 2, head0 = 1, block = 16, blocks = (tokens + block - 1) / block, nblk = blocks + 3;
        const int rows = seqs * group, qheads = kvh * group;
        size_t nkv = (size_t)nblk * kvh * block * d;
        uint16_t *k = malloc(nkv * 2), *v = malloc(nkv * 2);
        // scores of varied scale: key magnitudes vary per token so the max moves now and then
        for (size_t i = 0; i < nkv; i++) { k[i] = (rand() & 1 ? 0x3f00 : 0xbf00) + (rand() & 0x1ff); v[i] = 0xbf00 + (rand() & 0x1ff); }
        for (size_t row = 0; row < nkv / d; row++)  // some rows with doubled, quadrupled keys: the max moves mid-tile
            if (rand() % 13 == 0) { const int bump = rand() % 2 ? 0x80 : 0x100; for (int i = 0; i < d; i++) k[row * d + i] += bump; }
        int32_t *table = malloc(4 * blocks), *sq = malloc(4 * seqs);
        for (int i = 0; i < blocks; i++) table[i] = (i * 5 + 2) % nblk;  // scattered
        for (int i = 0; i < blocks; i++) for (int j = 0; j < i; j++) if (table[i] == table[j]) table[i] = (table[i] + 1) % nblk;
        for (int i = 0; i < seqs; i++) sq[i] = seqs - 1 - i;
        const int qstride = qheads * d;
        float *q = malloc(4 * (size_t)seqs * qstride);
        for (size_t i = 0; i < (size_t)seqs * qstride; i++) q[i] = (rand() / (float)RAND_MAX - 0.5f) * 3.f;
        float *out[2], *lse[2];
        const int last = tokens - (blocks - 1) * block;
        for (int b = 0; b < 2; b++) {
            out[b] = calloc((size_t)seqs * qstride, 4); lse[b] = calloc((size_t)seqs * qheads, 4);
            size_t sb = sc[b](rows, d, heads);
            void *scratch = aligned_alloc(64, (sb + 63) / 64 * 64);
            memset(scratch, 0xff, (sb + 63) / 64 * 64);  // NaN garbage
            kvk_attend_args a = {k, v, 2, kvh, block, d, head0, heads, table, blocks, last, q, sq, seqs, group, head0 * group,
                                 qstride, 0.125f, 1, 3, out[b] + head0 * group * d, qstride, lse[b] + head0 * group, qheads, scratch};
            at[b](&a);
            free(scratch);
        }
        // fp64 reference, every row
        for (int j = 0; j < heads; j++) for (int s = 0; s < seqs; s++) for (int g = 0; g < group; g++) {
            const int qh = (head0 + j) * group + g;
            const float *qr = q + (size_t)sq[s] * qstride + (size_t)qh * d;
            double *sc2 = malloc(8 * tokens), mx = -1e300, l = 0;
            for (int t = 0; t < tokens; t++) {
                const uint16_t *kr = k + (((size_t)table[t / block] * kvh + head0 + j) * block + t % block) * d;
                double x = 0;
                for (int i = 0; i < d; i++) x += (double)qr[i] * bf(kr[i]);
                sc2[t] = x * 0.125; if (sc2[t] > mx) mx = sc2[t];
            }
            for (int t = 0; t < tokens; t++) l += exp(sc2[t] - mx);
            double lse_ref = (mx + log(l)) / log(2.);
            for (int i = 0; i < d; i++) {
                double o = 0;
                for (int t = 0; t < tokens; t++) {
                    const uint16_t *vr = v + (((size_t)table[t / block] * kvh + head0 + j) * block + t % block) * d;
                    o += exp(sc2[t] - mx) * bf(vr[i]);
                }
                o /= l;
                const size_t idx = (size_t)s * qstride + (size_t)qh * d + i;
                const double sc_ = 1.0 / (fabs(o) + 0.5); double e0 = fabs(out[0][idx] - o) * sc_, e1 = fabs(out[1][idx] - o) * sc_, eab = fabs(out[0][idx] - out[1][idx]) * sc_;
                if (!(e1 <= worst_ref_y)) worst_ref_y = isnan(e1) ? INFINITY : e1;
                if (e0 > worst_ref_b) worst_ref_b = e0;
                if (!(eab <= worst_ab)) { worst_ab = isnan(eab) ? INFINITY : eab; }
                if (!(e1 < e0 + 0.01 || e1 < 0.02)) { printf("BAD d %d tokens %d seqs %d group %d heads %d: head %d row %d dim %d ref %g ymm %g base %g\n", d, tokens, seqs, group, heads, j, s * group + g, i, o, out[1][idx], out[0][idx]); return 1; }
            }
            const size_t li = (size_t)s * qheads + qh;
            double el = fabs(lse[1][li] - lse_ref), el0 = fabs(lse[0][li] - lse_ref);
            if (!(el <= worst_lse)) worst_lse = isnan(el) ? INFINITY : el;
            if (!(el < el0 + 0.01)) { printf("BAD lse d %d tokens %d seqs %d group %d heads %d: %g vs %g\n", d, tokens, seqs, group, heads, lse[1][li], lse_ref); return 1; }
            free(sc2);
        }
        // outputs of heads outside the call must stay 0
        for (int s = 0; s < seqs; s++) for (int i = 0; i < head0 * group * d; i++) if (out[1][(size_t)s * qstride + i] != 0) { printf("BAD: wrote outside\n"); return 1; }
        cases++;
        free(k); free(v); free(table); free(sq); free(q);
        for (int b = 0; b < 2; b++) { free(out[b]); free(lse[b]); }
    }
    printf("%d cases (errors relative to |ref| + 0.5): max |ymm - base| %.2e, max |ymm - fp64 ref| %.2e, max |base - fp64 ref| %.2e, max |lse2 ymm - ref| %.2e\n",
           cases, worst_ab, worst_ref_y, worst_ref_b, worst_lse);
    return 0;
}
