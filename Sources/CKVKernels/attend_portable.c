// Portable variant: one query row at a time, token by token, online softmax in base 2.
// Used on CPUs without AVX2 and on other architectures; also the model the SIMD variants follow.
#include "kvk_internal.h"

void kvk_attend_portable(const kvk_attend_args *a) {
    const int32_t d = a->head_dim, rows = a->seq_count * a->group;
    const size_t elt = kvk_elt_bytes(a->dtype), row_bytes = (size_t)d * elt;
    const float qscale = a->scale * KVK_LOG2E;
    float *q = (float *)a->scratch;  // one scaled query row
    for (int32_t r = 0; r < rows; r++) {
        const float *qr = kvk_q_row(a, r);
        for (int32_t i = 0; i < d; i++) q[i] = qr[i] * qscale;
        float *o = kvk_out_row(a, r);
        for (int32_t i = 0; i < d; i++) o[i] = 0.f;
        float m = -INFINITY, l = 0.f;
        for (int32_t b = 0; b < a->block_count; b++) {
            const size_t page = kvk_page_offset(a, a->blocks[b]);
            const char *kp = (const char *)a->keys + page, *vp = (const char *)a->values + page;
            for (int32_t t = 0, n = kvk_block_tokens(a, b); t < n; t++) {
                const void *kr = kp + (size_t)t * row_bytes, *vr = vp + (size_t)t * row_bytes;
                float s = 0.f;
                for (int32_t i = 0; i < d; i++) s += q[i] * kvk_load_elt(kr, a->dtype, i);
                const float m_new = s > m ? s : m, alpha = exp2f(m - m_new), p = exp2f(s - m_new);
                l = l * alpha + p;
                for (int32_t i = 0; i < d; i++) o[i] = o[i] * alpha + p * kvk_load_elt(vr, a->dtype, i);
                m = m_new;
            }
        }
        for (int32_t i = 0; i < d; i++) o[i] /= l;
        kvk_store_lse(a, r, m + log2f(l));
    }
}

float kvk_stream_read_portable(const void *buffer, size_t bytes) {
    const float *f = (const float *)buffer;
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
    for (size_t i = 0, n = bytes / 4; i + 4 <= n; i += 4) {
        s0 += f[i]; s1 += f[i + 1]; s2 += f[i + 2]; s3 += f[i + 3];
    }
    return (s0 + s1) + (s2 + s3);
}
