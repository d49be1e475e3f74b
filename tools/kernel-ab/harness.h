// What the kernel harnesses (ab.c, step.c) share: timing, medians, the environment, loading a
// CKVKernels build, and the data they time it on.
#ifndef KVK_HARNESS_H
#define KVK_HARNESS_H
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include "kvkernels.h"

typedef void (*attend_fn)(const kvk_attend_args *);
typedef size_t (*scratch_fn)(int32_t, int32_t, int32_t);

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}
static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static int env(const char *name, int fallback) { return getenv(name) ? atoi(getenv(name)) : fallback; }

/// A build's kvk_attend and kvk_attend_scratch_bytes; 0, or 1 (said on stderr) if it does not load.
static int load_build(const char *path, attend_fn *attend, scratch_fn *scratch_bytes) {
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    *attend = (attend_fn)dlsym(h, "kvk_attend");
    *scratch_bytes = (scratch_fn)dlsym(h, "kvk_attend_scratch_bytes");
    return 0;
}

/// K and V pages of `bytes` each (rounded up to 2 MiB pages, as KVPageArena asks for), random
/// values of unit scale (the same bits in every run: srand(1)).
static void random_kv(size_t bytes, uint16_t **k, uint16_t **v) {
    bytes = (bytes | ((1 << 21) - 1)) + 1;
    *k = aligned_alloc(1 << 21, bytes), *v = aligned_alloc(1 << 21, bytes);
    madvise(*k, bytes, MADV_HUGEPAGE);
    madvise(*v, bytes, MADV_HUGEPAGE);
    srand(1);
    for (size_t i = 0; i < bytes / 2; i++) {
        (*k)[i] = 0x3f00 + (rand() & 0xff);
        (*v)[i] = 0xbf00 + (rand() & 0x1ff);
    }
}

/// 0, 1, ..., n - 1 (block tables and sequence lists).
static int32_t *identity(int n) {
    int32_t *x = malloc(4 * (size_t)n);
    for (int i = 0; i < n; i++) x[i] = i;
    return x;
}

/// n random query values in [-1.7, 1.7].
static float *random_queries(size_t n) {
    float *q = malloc(4 * n);
    for (size_t i = 0; i < n; i++) q[i] = (rand() / (float)RAND_MAX - 0.5f) * 3.4f;
    return q;
}

/// Evicts the last-level cache by reading `bytes` of `buffer` (allocated and touched once).
static void flush_llc(const char *buffer, size_t bytes) {
    volatile char sink = 0;
    for (size_t i = 0; i < bytes; i += 64) sink += buffer[i];
}
#endif
