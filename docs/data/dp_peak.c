// Throughput probe of one core: 16 independent chains of vdpbf16ps (zmm) and of vfmadd (zmm).
// clang -O2 -o /tmp/dp_peak docs/data/dp_peak.c && /tmp/dp_peak   (run two at once for both cores)
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
__attribute__((target("avx512f,avx512bf16"))) float run(long n) {
    __m512 a[16]; for (int i=0;i<16;i++) a[i]=_mm512_set1_ps(i);
    __m512bh x=(__m512bh)_mm512_set1_epi32(0x3f803f80), y=(__m512bh)_mm512_set1_epi32(0x3f803f80);
    for (long k=0;k<n;k++){
        #pragma GCC unroll 16
        for (int i=0;i<16;i++) a[i]=_mm512_dpbf16_ps(a[i],x,y);
        __asm__ volatile("" : "+v"(x));
    }
    float s=0; for(int i=0;i<16;i++) s+=_mm512_reduce_add_ps(a[i]); return s;
}
__attribute__((target("avx512f,fma"))) float runf(long n) {
    __m512 a[16]; for (int i=0;i<16;i++) a[i]=_mm512_set1_ps(i);
    __m512 x=_mm512_set1_ps(1.0001f), y=_mm512_set1_ps(0.9999f);
    for (long k=0;k<n;k++){
        #pragma GCC unroll 16
        for (int i=0;i<16;i++) a[i]=_mm512_fmadd_ps(a[i],x,y);
        __asm__ volatile("" : "+v"(x));
    }
    float s=0; for(int i=0;i<16;i++) s+=_mm512_reduce_add_ps(a[i]); return s;
}
double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(){ long n=60000000; double t=now(); float s=run(n); double dt=now()-t;
 printf("dpbf16 zmm: %.1f GFLOP/s (%.2f Ginstr/s) %f\n", n*16*64/dt/1e9, n*16/dt/1e9, s);
 t=now(); s=runf(n); dt=now()-t; printf("fma zmm: %.1f GFLOP/s (%.2f Ginstr/s) %f\n", n*16*32/dt/1e9, n*16/dt/1e9, s);}
