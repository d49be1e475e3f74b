// In-cache probe of one many-row (head, tile) loop, one thread: is the unit's L1 footprint what
// holds it below the vdpbf16ps rate? Times, alternating in one process, medians of 41:
//   full   the kernel's tile loop (stage V pairs, Q.K^T, softmax, P.V), as attend_gemm_avx512.c;
//   A + B  its two halves run apart (A: Q.K^T + softmax for every tile, keeping each tile's P;
//          B: V staging + P.V), each with only its own operands in L1;
//   NEW    P.V once per S-token super-tile over values already in token pairs (as a page layout
//          would hold them; "staged": the pairs staged per super-tile instead), with a lazy max
//          (tau 16: a row's reference moves only when a score exceeds it by more than tau).
// Build (includes the kernel source for its static helpers):
//   clang -O2 -ISources/CKVKernels/include -ISources/CKVKernels -o /tmp/phase_split docs/data/phase_split.c -lm
//   /tmp/phase_split 2048            # tokens of one head; S=64 /tmp/phase_split 2048 16 (lazy, tau 16)
// 2026-12-01 12:30 UTC: A + B = full within 1 % (0.1896 vs 0.1888 ms and alike in every run), so
// splitting the phases (e.g. across the two cores) gains nothing; the lazy max moved the
// reference on 0.02 instead of 0.67 tiles and changed no time; NEW in place 6-9 % under full,
// staged within 3 % of it. See docs/BENCHMARKS-attention.md (12:30 UTC section).
// In-cache probe: does splitting a GEMM unit's phases (QK+softmax | stage V + PV) make each faster?
#include "attend_gemm_avx512.c"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
#define D 128
#define R 32
static int TOK = 2048;
static uint16_t *K, *V; static char *scr; static uint32_t *Pall; static float *Aall; static int *moved;
static kvk_gemm_state g;
static float TAU=0.f; static int LAZY=0;
KVK_AVX512_INLINE int lazy_softmax(const kvk_gemm_state *g, int32_t r0, int32_t n, int32_t RVB) {
    __mmask16 moved = 0;
    for (int32_t rv = 0; rv < RVB; rv++) {
        const size_t c = (size_t)rv * 16;
        __m512 mx = _mm512_set1_ps(-INFINITY);
        for (int32_t t = 0; t < n; t++) mx = _mm512_max_ps(mx, _mm512_load_ps(g->s + (size_t)t * KVK_ROW_BLOCK + c));
        __m512 mo = _mm512_load_ps(g->m + r0 + c);
        __mmask16 mv = _mm512_cmp_ps_mask(mx, _mm512_add_ps(mo, _mm512_set1_ps(TAU)), _CMP_GT_OQ);
        __m512 mn = _mm512_mask_mov_ps(mo, mv, mx);
        moved |= mv;
        __m512 al = _mm512_mask_blend_ps(mv, _mm512_set1_ps(1.f), kvk_exp2_16(_mm512_sub_ps(mo, mn))), sum = _mm512_setzero_ps();
            const __m512i pairs = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                                   23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
            const __m512bh ones = (__m512bh)_mm512_set1_epi32(0x3f803f80);
            __m512 sum2 = _mm512_setzero_ps();
            for (int32_t t = 0; t < n; t += 2) {
                const __m512 x0 = _mm512_sub_ps(_mm512_load_ps(g->s + (size_t)t * KVK_ROW_BLOCK + c), mn);
                const __m512 x1 = _mm512_sub_ps(_mm512_load_ps(g->s + (size_t)(t + 1) * KVK_ROW_BLOCK + c), mn);
                const __m512i pr = _mm512_permutexvar_epi16(
                    pairs, (__m512i)_mm512_cvtne2ps_pbh(kvk_exp2_16_bf16(x1), kvk_exp2_16_bf16(x0)));
                _mm512_store_si512(g->pp + (size_t)(t / 2) * KVK_ROW_BLOCK + c, pr);
                if (t & 2) sum2 = _mm512_dpbf16_ps(sum2, (__m512bh)pr, ones);
                else sum = _mm512_dpbf16_ps(sum, (__m512bh)pr, ones);
            }
            sum = _mm512_add_ps(sum, sum2);
        _mm512_store_ps(g->alpha + r0 + c, al);
        _mm512_store_ps(g->l + r0 + c, _mm512_fmadd_ps(_mm512_load_ps(g->l + r0 + c), al, sum));
        _mm512_store_ps(g->m + r0 + c, mn);
    }
    return moved != 0;
}
#define SOFTMAX(g) (LAZY ? lazy_softmax(g,0,KVK_TILE,2) : kvk_softmax(g,0,KVK_TILE,2,1))
static long nmoved=0;

static const uint16_t *kd[KVK_TILE+16];
static void setk(int t0){ for(int t=0;t<KVK_TILE+16;t++){int tt=t<KVK_TILE?t:KVK_TILE-1; kd[t]=K+(size_t)(t0+tt)*D;} }
KVK_AVX512 static void stagev(int t0){ for(int t=0;t<KVK_TILE;t+=2) kvk_stage_pairs_bf16(g.vp+(size_t)(t/2)*D,(const char*)(V+(size_t)(t0+t)*D),(const char*)(V+(size_t)(t0+t+1)*D),D); }
KVK_AVX512 static void pv_all(int rescale){ for(int i0=0;i0<D;i0+=8){ if(rescale) kvk_pv_bf16(&g,0,i0,KVK_TILE/2,2,8,1,1); else kvk_pv_bf16(&g,0,i0,KVK_TILE/2,2,8,0,1);} }
KVK_AVX512 static void full(void){
  for(int t0=0;t0<TOK;t0+=KVK_TILE){ setk(t0); stagev(t0);
    for(int c=0;c<KVK_TILE;c+=8) kvk_qk_bf16(&g,0,c,2,8,kd+c);
    int r=SOFTMAX(&g); nmoved+=r; pv_all(r);} }
KVK_AVX512 static void phaseA(void){
  for(int t0=0,i=0;t0<TOK;t0+=KVK_TILE,i++){ setk(t0); g.pp=Pall+(size_t)i*(KVK_TILE/2)*KVK_ROW_BLOCK; g.alpha=Aall+(size_t)i*64;
    for(int c=0;c<KVK_TILE;c+=8) kvk_qk_bf16(&g,0,c,2,8,kd+c);
    moved[i]=SOFTMAX(&g);} }
KVK_AVX512 static void phaseB(void){
  for(int t0=0,i=0;t0<TOK;t0+=KVK_TILE,i++){ g.pp=Pall+(size_t)i*(KVK_TILE/2)*KVK_ROW_BLOCK; g.alpha=Aall+(size_t)i*64; stagev(t0); pv_all(moved[i]);} }

static uint32_t *Vpairs, *pbuf, *vsbuf; static int S=128;
KVK_AVX512 static void newfull(int inplace){
  int rescale=0;
  for(int st=0;st<TOK;st+=S){ int pend=0;
    for(int sub=0;sub<S;sub+=KVK_TILE){ int t0=st+sub; setk(t0);
      for(int c=0;c<KVK_TILE;c+=8) kvk_qk_bf16(&g,0,c,2,8,kd+c);
      g.pp=pbuf+(size_t)(sub/2)*KVK_ROW_BLOCK;
      int mv=lazy_softmax(&g,0,KVK_TILE,2); nmoved+=mv;
      if(mv && sub>pend){ /* flush pending with the old reference */
        g.pp=pbuf+(size_t)(pend/2)*KVK_ROW_BLOCK; g.vp=Vpairs+(size_t)((st+pend)/2)*D;
        float al[64]; memcpy(al,g.alpha,256); /* alpha of this move applies after */
        for(int i0=0;i0<D;i0+=8) kvk_pv_bf16(&g,0,i0,(sub-pend)/2,2,8,0,1);
        pend=sub; rescale=1; }
      else if(mv) rescale=1; }
    g.pp=pbuf+(size_t)(pend/2)*KVK_ROW_BLOCK;
    if(inplace) g.vp=Vpairs+(size_t)((st+pend)/2)*D;
    else { g.vp=vsbuf; for(int t=pend;t<S;t+=2) kvk_stage_pairs_bf16(vsbuf+(size_t)((t-pend)/2)*D,(const char*)(V+(size_t)(st+t)*D),(const char*)(V+(size_t)(st+t+1)*D),D); }
    for(int i0=0;i0<D;i0+=8){ if(rescale) kvk_pv_bf16(&g,0,i0,(S-pend)/2,2,8,1,1); else kvk_pv_bf16(&g,0,i0,(S-pend)/2,2,8,0,1);} rescale=0; }
}
static int cmp(const void*a,const void*b){double x=*(double*)a,y=*(double*)b;return x<y?-1:x>y;}
KVK_AVX512 int main(int argc,char**argv){ if(argc>1) TOK=atoi(argv[1]); if(argc>2){LAZY=1;TAU=atof(argv[2]);}
  K=aligned_alloc(64,(size_t)TOK*D*2); V=aligned_alloc(64,(size_t)TOK*D*2);
  for(size_t i=0;i<(size_t)TOK*D;i++){ float f=(rand()/(float)RAND_MAX-0.5f); K[i]=kvk_f32_to_bf16(f); V[i]=kvk_f32_to_bf16(f*0.7f);}
  kvk_scratch_layout sl=kvk_layout_scratch(R,D); scr=aligned_alloc(64,sl.total);
  memset(&g,0,sizeof g); g.d=D; g.dpad2=D; g.rpad=R; g.kstride=D; g.vlanes=1;
  g.ot=(float*)(scr+sl.o); g.m=(float*)(scr+sl.m); g.l=(float*)(scr+sl.l); g.alpha=(float*)(scr+sl.alpha); g.s=(float*)(scr+sl.s);
  g.kb=(uint16_t*)(scr+sl.k); g.vp=(uint32_t*)(scr+sl.v); g.pp=(uint32_t*)(scr+sl.p);
  uint32_t *qp=(uint32_t*)(scr+sl.q); for(int i=0;i<D/2*R;i++) qp[i]=kvk_f32_to_bf16((rand()/(float)RAND_MAX-0.5f)*0.3f)|((uint32_t)kvk_f32_to_bf16((rand()/(float)RAND_MAX-0.5f)*0.3f)<<16); g.qp=qp;
  uint32_t *pp0=g.pp; float *a0=g.alpha;
  Pall=aligned_alloc(64,(size_t)(TOK/KVK_TILE)*(KVK_TILE/2)*KVK_ROW_BLOCK*4); Aall=aligned_alloc(64,(size_t)(TOK/KVK_TILE)*64*4); moved=calloc(TOK/KVK_TILE,sizeof(int));
  Vpairs=aligned_alloc(64,(size_t)TOK/2*D*4); for(int t=0;t<TOK;t+=2) kvk_stage_pairs_bf16(Vpairs+(size_t)(t/2)*D,(const char*)(V+(size_t)t*D),(const char*)(V+(size_t)(t+1)*D),D);
  pbuf=aligned_alloc(64,(size_t)1024/2*KVK_ROW_BLOCK*4); vsbuf=aligned_alloc(64,(size_t)1024/2*D*4);
  if(getenv("S")) S=atoi(getenv("S")); TAU=16;
  enum{N=41}; double tf[N],ta[N],tb[N],tn[N],ts[N]; float ref[D*R], o1[D*R], o2[D*R];
  for(int rep=0;rep<N;rep++){
    for(int r=0;r<R;r++){g.m[r]=-INFINITY;g.l[r]=0;} memset(g.ot,0,D*R*4); g.pp=pp0; g.alpha=a0;
    double t=now(); full(); tf[rep]=now()-t;
    for(int r=0;r<R;r++){g.m[r]=-INFINITY;g.l[r]=0;} memset(g.ot,0,D*R*4);
    memcpy(ref,g.ot,sizeof ref);
    t=now(); phaseA(); ta[rep]=now()-t; t=now(); phaseB(); tb[rep]=now()-t; g.pp=pp0; g.alpha=a0;
    for(int r=0;r<R;r++){g.m[r]=-INFINITY;g.l[r]=0;} memset(g.ot,0,D*R*4); g.vp=(uint32_t*)(scr+sl.v);
    t=now(); newfull(1); tn[rep]=now()-t; memcpy(o1,g.ot,sizeof o1); float m1=g.m[3],l1=g.l[3];
    for(int r=0;r<R;r++){g.m[r]=-INFINITY;g.l[r]=0;} memset(g.ot,0,D*R*4);
    t=now(); newfull(0); ts[rep]=now()-t; memcpy(o2,g.ot,sizeof o2);
    g.vp=(uint32_t*)(scr+sl.v); g.pp=pp0; g.alpha=a0;
    if(rep==0){ double e=0; for(int i=0;i<D*R;i++){ double x=fabs(o1[i]-o2[i]); if(x>e)e=x;} printf("new inplace vs staged max diff %g (m %g l %g)\n",e,m1,l1);} }
  qsort(tn,N,8,cmp);qsort(ts,N,8,cmp);
  qsort(tf,N,8,cmp);qsort(ta,N,8,cmp);qsort(tb,N,8,cmp);
  double issue=(double)TOK*R*D*2/32/3.6e9; // vdpbf16ps count at 1/cycle, 3.6 GHz
  printf("lazy %d tau %.0f moved/tile %.2f tokens %d: full %.4f ms  A(QK+softmax) %.4f  B(stage+PV) %.4f  A+B %.4f  issue %.4f  (full %.0f%%, A %.0f%%, B %.0f%% of issue)  NEW S=%d inplace %.4f (%.0f%%) staged %.4f (%.0f%%)\n",LAZY,TAU,(double)nmoved/N/(TOK/KVK_TILE),TOK,tf[N/2]*1e3,ta[N/2]*1e3,tb[N/2]*1e3,(ta[N/2]+tb[N/2])*1e3,issue*1e3, issue/tf[N/2]*100, issue/2/ta[N/2]*100, issue/2/tb[N/2]*100, S, tn[N/2]*1e3, issue/tn[N/2]*100, ts[N/2]*1e3, issue/ts[N/2]*100);
}
