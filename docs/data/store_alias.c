// Probe (2026-12-01): does a load that matches an older in-flight store's address mod 4 KiB stall on this core?
// Loop: 16 zmm stores to region S, then 16 broadcast loads + dp work from region L, L = S + OFF.
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <x86intrin.h>
__attribute__((target("avx512f,avx512bf16,avx512bw"),noinline))
double run(char *buf, long off, int iters) {
    __m512 acc[16]; for (int i=0;i<16;i++) acc[i]=_mm512_setzero_ps();
    __m512bh q0 = (__m512bh)_mm512_set1_epi32(0x3f803f80);
    uint64_t t0=__rdtsc();
    for (int it=0; it<iters; it++) {
        char *S = buf + (it & 7) * 1024;         // 1 KiB store window moving around
        char *L = S + off;
        for (int tp=0; tp<16; tp++) {
            __m512bh p0 = (__m512bh)_mm512_load_si512(L + tp*64);
            for (int i=0;i<8;i++) {
                __m512bh b = (__m512bh)_mm512_set1_epi32(*(int*)(L + 2048 + tp*32 + i*4));
                acc[i] = _mm512_dpbf16_ps(acc[i], p0, b);
                acc[i+8] = _mm512_dpbf16_ps(acc[i+8], q0, b);
            }
        }
        for (int i=0;i<16;i++) _mm512_store_ps((float*)(S + i*64), acc[i]);
        for (int i=0;i<16;i++) acc[i] = _mm512_load_ps((float*)(S + 8192*2 + i*64));
    }
    uint64_t t1=__rdtsc();
    volatile float sink = acc[0][0]; (void)sink;
    return (double)(t1-t0)/iters;
}
int main(){
    char *buf = aligned_alloc(4096, 1<<20);
    for (int i=0;i<(1<<20);i++) buf[i]=0;
    long offs[] = {4096, 4096*2, 4096+1024, 4096+2048, 4096+3072, 4096+512, 12288+64, 4096+4096*3};
    for (int r=0;r<3;r++) for (int k=0;k<8;k++) {
        double best=1e18; for (int j=0;j<20;j++){ double c=run(buf, offs[k], 20000); if(c<best)best=c; }
        printf("off %6ld: %.1f cycles/iter (256 dp => %.0f%%)\n", offs[k], best, 256.0/best*100*3.6/2.6);
    }
}
