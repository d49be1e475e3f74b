// The streaming-read probe behind `kvctl bench memory`: one sequential read stream per thread,
// eight independent accumulators, no stores (the STREAM-like "read" kernel of
// /work/shared/peers/membw.c, which beats multi-stream variants on this machine).
#if defined(__x86_64__)
#include "avx512_common.h"

KVK_AVX512 float kvk_stream_read_avx512(const void *buffer, size_t bytes) {
    const float *f = (const float *)buffer;
    const size_t n = bytes / 4;
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0, s6 = s0, s7 = s0;
    for (size_t i = 0; i + 128 <= n; i += 128) {
        s0 = _mm512_add_ps(s0, _mm512_load_ps(f + i));
        s1 = _mm512_add_ps(s1, _mm512_load_ps(f + i + 16));
        s2 = _mm512_add_ps(s2, _mm512_load_ps(f + i + 32));
        s3 = _mm512_add_ps(s3, _mm512_load_ps(f + i + 48));
        s4 = _mm512_add_ps(s4, _mm512_load_ps(f + i + 64));
        s5 = _mm512_add_ps(s5, _mm512_load_ps(f + i + 80));
        s6 = _mm512_add_ps(s6, _mm512_load_ps(f + i + 96));
        s7 = _mm512_add_ps(s7, _mm512_load_ps(f + i + 112));
    }
    s0 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)),
                       _mm512_add_ps(_mm512_add_ps(s4, s5), _mm512_add_ps(s6, s7)));
    return _mm512_reduce_add_ps(s0);
}
#endif
