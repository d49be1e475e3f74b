// Do the integer dot-product instructions run beside vdpbf16ps (a second multiply pipe to use)?
// Twelve independent zmm chains of one instruction, then twelve of vdpbf16ps interleaved with
// twelve of another; "G instr/s" counts both kinds. If the other ran on other pipes the mixed
// rows would reach ~2x the single rows.
// clang -O2 -o /tmp/mul_pipes docs/data/mul_pipes.c && /tmp/mul_pipes
// 2026-12-01 12:30 UTC, this VM (two rounds): every row 3.4-3.65 G instr/s, the mixed rows too:
// vpdpwssd (int16 pairs), vpmaddwd and vpdpbusd (int8 quads) share the vdpbf16ps / FMA pipes.
#include <stdio.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
#define DP(a) "vdpbf16ps %%zmm30, %%zmm31, %%zmm" #a "\n\t"
#define WS(a) "vpdpwssd %%zmm28, %%zmm29, %%zmm" #a "\n\t"
#define BS(a) "vpdpbusd %%zmm28, %%zmm29, %%zmm" #a "\n\t"
#define MW(a) "vpmaddwd %%zmm28, %%zmm29, %%zmm" #a "\n\t"
#define FM(a) "vfmadd231ps %%zmm30, %%zmm31, %%zmm" #a "\n\t"
#define CL "xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10","xmm11","xmm12","xmm13","xmm14","xmm15","xmm16","xmm17","xmm18","xmm19","xmm20","xmm21","xmm22","xmm23","xmm28","xmm29","xmm30","xmm31"
#define Z "vpxord %%zmm30,%%zmm30,%%zmm30\n\tvpxord %%zmm31,%%zmm31,%%zmm31\n\tvpxord %%zmm28,%%zmm28,%%zmm28\n\tvpxord %%zmm29,%%zmm29,%%zmm29\n\t"
#define K(NAME, BODY) static void NAME(long n){ __asm__ volatile(Z "1:\n\t" BODY "dec %0\n\tjnz 1b" : "+r"(n) :: CL); }
K(dp12, DP(0)DP(1)DP(2)DP(3)DP(4)DP(5)DP(6)DP(7)DP(8)DP(9)DP(10)DP(11))
K(ws12, WS(0)WS(1)WS(2)WS(3)WS(4)WS(5)WS(6)WS(7)WS(8)WS(9)WS(10)WS(11))
K(bs12, BS(0)BS(1)BS(2)BS(3)BS(4)BS(5)BS(6)BS(7)BS(8)BS(9)BS(10)BS(11))
K(dp12ws12, DP(0)WS(12)DP(1)WS(13)DP(2)WS(14)DP(3)WS(15)DP(4)WS(16)DP(5)WS(17)DP(6)WS(18)DP(7)WS(19)DP(8)WS(20)DP(9)WS(21)DP(10)WS(22)DP(11)WS(23))
K(dp12mw12, DP(0)MW(12)DP(1)MW(13)DP(2)MW(14)DP(3)MW(15)DP(4)MW(16)DP(5)MW(17)DP(6)MW(18)DP(7)MW(19)DP(8)MW(20)DP(9)MW(21)DP(10)MW(22)DP(11)MW(23))
K(dp12bs12, DP(0)BS(12)DP(1)BS(13)DP(2)BS(14)DP(3)BS(15)DP(4)BS(16)DP(5)BS(17)DP(6)BS(18)DP(7)BS(19)DP(8)BS(20)DP(9)BS(21)DP(10)BS(22)DP(11)BS(23))
K(fm12, FM(0)FM(1)FM(2)FM(3)FM(4)FM(5)FM(6)FM(7)FM(8)FM(9)FM(10)FM(11))
int main(void){ const long n=20000000;
 struct {const char*name; void(*f)(long); int ins;} t[]={{"dp12",dp12,12},{"ws12",ws12,12},{"bs12",bs12,12},{"fm12",fm12,12},{"dp12+ws12",dp12ws12,24},{"dp12+maddwd12",dp12mw12,24},{"dp12+dpbusd12",dp12bs12,24}};
 for(int r=0;r<2;r++) for(unsigned i=0;i<sizeof t/sizeof*t;i++){ double s=now(); t[i].f(n); s=now()-s; printf("%-16s %.2f G instr/s  (%.2f ns/iter)\n",t[i].name,n*(double)t[i].ins/s/1e9, s/n*1e9);} }
