// Which instructions take issue slots from vdpbf16ps on this core? Twelve independent zmm
// vdpbf16ps chains (register operands) with one other instruction after every four, its inputs
// loop-invariant and its output dead, so only throughput counts; then 256-bit vdpbf16ps from
// registers, and both widths with a vector load per product (as the GEMM tile's broadcasts).
// clang -O2 -o /tmp/dp_mix docs/data/dp_mix.c && /tmp/dp_mix
#include <stdio.h>
#include <time.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static float buf[1 << 14] __attribute__((aligned(64)));

#define DP(a) "vdpbf16ps %%zmm30, %%zmm31, %%zmm" #a "\n\t"
#define CLOBBERS "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", \
                 "xmm20", "xmm21", "xmm24", "xmm25", "xmm30", "xmm31"
#define ZERO "vpxord %%zmm30,%%zmm30,%%zmm30\n\tvpxord %%zmm31,%%zmm31,%%zmm31\n\tvpxord %%zmm24,%%zmm24,%%zmm24\n\tvpxord %%zmm25,%%zmm25,%%zmm25\n\t"
/// 12 dpbf16 + 3 `other` per iteration.
#define MIX(NAME, OTHER)                                                                                                       \
    static void NAME(long n) {                                                                                                 \
        const char *p = (const char *)buf;                                                                                     \
        __asm__ volatile(ZERO "1:\n\t" DP(0) DP(1) DP(2) DP(3) OTHER DP(4) DP(5) DP(6) DP(7) OTHER DP(8) DP(9) DP(10) DP(11) \
                         OTHER "dec %0\n\tjnz 1b"                                                                              \
                         : "+r"(n) : "r"(p) : CLOBBERS);                                                                       \
    }
MIX(none, "")
MIX(unpack, "vpunpcklwd %%zmm24, %%zmm25, %%zmm20\n\t")
MIX(permw, "vpermw %%zmm24, %%zmm25, %%zmm20\n\t")
MIX(permps, "vpermps %%zmm24, %%zmm25, %%zmm20\n\t")
MIX(permt2d, "vpermt2d %%zmm24, %%zmm25, %%zmm20\n\t")
MIX(shufps, "vshufps $0x88, %%zmm24, %%zmm25, %%zmm20\n\t")
MIX(ternlog, "vpternlogd $0x96, %%zmm24, %%zmm25, %%zmm20\n\t")
MIX(shift, "vpslld $3, %%zmm24, %%zmm20\n\t")
MIX(addps, "vaddps %%zmm24, %%zmm25, %%zmm20\n\t")
MIX(maxps, "vmaxps %%zmm24, %%zmm25, %%zmm20\n\t")
MIX(mulps, "vmulps %%zmm24, %%zmm25, %%zmm20\n\t")
MIX(fmaps, "vfmadd231ps %%zmm24, %%zmm25, %%zmm20\n\t")
MIX(cvt2bf, "vcvtne2ps2bf16 %%zmm24, %%zmm25, %%zmm20\n\t")
MIX(scalef, "vscalefps %%zmm24, %%zmm25, %%zmm20\n\t")
MIX(reduce, "vreduceps $1, %%zmm24, %%zmm20\n\t")
MIX(load, "vmovaps 64(%1), %%zmm21\n\t")
MIX(bcast, "vpbroadcastd 128(%1), %%zmm21\n\t")
MIX(prefetch0, "prefetcht0 256(%1)\n\t")
MIX(prefetch1, "prefetcht1 512(%1)\n\t")
MIX(store, "vmovaps %%zmm24, (%1)\n\t")

#define DPY(a) "vdpbf16ps %%ymm30, %%ymm31, %%ymm" #a "\n\t"
#define DPYM(a, off) "vdpbf16ps " #off "(%1)%{1to8%}, %%ymm31, %%ymm" #a "\n\t"
#define DPZM(a, off) "vdpbf16ps " #off "(%1)%{1to16%}, %%zmm31, %%zmm" #a "\n\t"
/// 12 products per iteration, no other instruction.
#define RUN12(NAME, A, B, C, D, E, F, G, H, I, J, K, L)                                                    \
    static void NAME(long n) {                                                                             \
        const char *p = (const char *)buf;                                                                 \
        __asm__ volatile(ZERO "1:\n\t" A B C D E F G H I J K L "dec %0\n\tjnz 1b" : "+r"(n) : "r"(p) : CLOBBERS); \
    }
RUN12(ymm, DPY(0), DPY(1), DPY(2), DPY(3), DPY(4), DPY(5), DPY(6), DPY(7), DPY(8), DPY(9), DPY(10), DPY(11))
RUN12(ymm_bcast, DPYM(0, 0), DPYM(1, 4), DPYM(2, 8), DPYM(3, 12), DPYM(4, 16), DPYM(5, 20), DPYM(6, 24), DPYM(7, 28),
      DPYM(8, 32), DPYM(9, 36), DPYM(10, 40), DPYM(11, 44))
RUN12(zmm_bcast, DPZM(0, 0), DPZM(1, 4), DPZM(2, 8), DPZM(3, 12), DPZM(4, 16), DPZM(5, 20), DPZM(6, 24), DPZM(7, 28),
      DPZM(8, 32), DPZM(9, 36), DPZM(10, 40), DPZM(11, 44))

int main(void) {
    const long n = 30000000;
    struct { const char *name; void (*f)(long); } mix[] = {
        {"none", none}, {"vpunpcklwd", unpack}, {"vpermw", permw}, {"vpermps", permps}, {"vpermt2d", permt2d},
        {"vshufps", shufps}, {"vpternlogd", ternlog}, {"vpslld", shift}, {"vaddps", addps}, {"vmaxps", maxps},
        {"vmulps", mulps}, {"vfmadd231ps", fmaps}, {"vcvtne2ps2bf16", cvt2bf}, {"vscalefps", scalef},
        {"vreduceps", reduce}, {"vmovaps load", load}, {"vpbroadcastd m32", bcast}, {"prefetcht0", prefetch0},
        {"prefetcht1", prefetch1}, {"vmovaps store", store}};
    double none_s = 0;
    printf("# 12 zmm vdpbf16ps + 3 others per iteration; cycles counted at the vdpbf16ps rate of 'none' (one per cycle)\n");
    for (size_t i = 0; i < sizeof mix / sizeof *mix; i++) {
        double t = now();
        mix[i].f(n);
        t = now() - t;
        if (i == 0) none_s = t;
        printf("%-18s %.2f G vdpbf16ps/s   each other costs %+.2f product slots\n", mix[i].name, n * 12 / t / 1e9,
               (t - none_s) / none_s * 12 / 3);
    }
    struct { const char *name; void (*f)(long); } w[] = {{"ymm, registers", ymm}, {"ymm, {1to8} operand", ymm_bcast}, {"zmm, {1to16} operand", zmm_bcast}};
    for (size_t i = 0; i < 3; i++) {
        double t = now();
        w[i].f(n);
        t = now() - t;
        printf("vdpbf16ps %-20s %.2f G/s\n", w[i].name, n * 12 / t / 1e9);
    }
    return 0;
}
