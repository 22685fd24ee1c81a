/* SPDX-License-Identifier: Apache-2.0 */
#include <math.h>

#include "cpu_kernels.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_X86_DISPATCH 1
#else
#define HAVE_X86_DISPATCH 0
#endif

static bool use_avx2;

float cpu_quantize_row_fp8(const float *x, uint32_t n, float *q) {
        float amax = 0.0f, s;

        for (uint32_t i = 0; i < n; i++)
                amax = fmaxf(amax, fabsf(x[i]));
        s = amax / 448.0f;
        if (!(s >= 1.0f / (448.0f * 512.0f)))
                s = 1.0f / (448.0f * 512.0f);
        for (uint32_t i = 0; i < n; i++)
                q[i] = cpu_round_fp8_e4m3(x[i] / s);
        return s;
}

/* ---- portable kernels: emulate the AVX2 lane order exactly ---- */

static inline float reduce16(const float a0[8], const float a1[8]) {
        float s[8], t[4];

        for (int i = 0; i < 8; i++)
                s[i] = a0[i] + a1[i];
        for (int i = 0; i < 4; i++)
                t[i] = s[i] + s[i + 4];
        return (t[0] + t[2]) + (t[1] + t[3]);
}

#define DEFINE_PORTABLE_DOT(NAME, WTYPE, LOADW)                                                       \
        static float NAME(const float *x, const WTYPE *w, uint32_t n) {                               \
                float a0[8] = { 0 }, a1[8] = { 0 }, tail = 0.0f;                                      \
                uint32_t i = 0;                                                                       \
                for (; i + 16 <= n; i += 16)                                                          \
                        for (int l = 0; l < 8; l++) {                                                 \
                                a0[l] = fmaf(x[i + l], LOADW(w[i + l]), a0[l]);                       \
                                a1[l] = fmaf(x[i + 8 + l], LOADW(w[i + 8 + l]), a1[l]);               \
                        }                                                                             \
                if (i + 8 <= n) {                                                                     \
                        for (int l = 0; l < 8; l++)                                                   \
                                a0[l] = fmaf(x[i + l], LOADW(w[i + l]), a0[l]);                       \
                        i += 8;                                                                       \
                }                                                                                     \
                for (; i < n; i++)                                                                    \
                        tail = fmaf(x[i], LOADW(w[i]), tail);                                         \
                return reduce16(a0, a1) + tail;                                                       \
        }

#define LOAD_F32(v) (v)
#define LOAD_BF16(v) cpu_bf16_to_f32(v)
DEFINE_PORTABLE_DOT(dot_f32_portable, float, LOAD_F32)
DEFINE_PORTABLE_DOT(dot_bf16_portable, uint16_t, LOAD_BF16)

/* ---- AVX2 + FMA kernels ---- */

#if HAVE_X86_DISPATCH
#define AVX2 __attribute__((target("avx2,fma")))

static inline AVX2 float hsum_avx2(__m256 a0, __m256 a1) {
        __m256 s = _mm256_add_ps(a0, a1);
        __m128 t = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        /* (t0 + t2) + (t1 + t3), as reduce16() */
        __m128 u = _mm_add_ps(t, _mm_movehl_ps(t, t));
        __m128 r = _mm_add_ss(u, _mm_shuffle_ps(u, u, 1));
        return _mm_cvtss_f32(r);
}

static inline AVX2 __m256 load_bf16x8(const uint16_t *w) {
        __m128i h = _mm_loadu_si128((const __m128i *) w);
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline AVX2 __m256 load_f32x8(const float *w) {
        return _mm256_loadu_ps(w);
}

/* Up to 4 activation rows against one weight row; each row's arithmetic is identical to the 1-row case. */
#define DEFINE_AVX2_DOT(NAME, WTYPE, LOADW, LOADS)                                                    \
        static AVX2 void NAME(const float *x, uint32_t ldx, uint32_t nx, const WTYPE *w, uint32_t n,  \
                              float *out) {                                                           \
                __m256 a0[4], a1[4];                                                                  \
                float tail[4];                                                                        \
                uint32_t i = 0;                                                                       \
                for (uint32_t r = 0; r < 4; r++) {                                                    \
                        a0[r] = _mm256_setzero_ps();                                                  \
                        a1[r] = _mm256_setzero_ps();                                                  \
                        tail[r] = 0.0f;                                                               \
                }                                                                                     \
                for (; i + 16 <= n; i += 16) {                                                        \
                        __m256 w0 = LOADW(w + i), w1 = LOADW(w + i + 8);                              \
                        for (uint32_t r = 0; r < nx; r++) {                                           \
                                const float *xr = x + (size_t) r * ldx + i;                           \
                                a0[r] = _mm256_fmadd_ps(_mm256_loadu_ps(xr), w0, a0[r]);              \
                                a1[r] = _mm256_fmadd_ps(_mm256_loadu_ps(xr + 8), w1, a1[r]);          \
                        }                                                                             \
                }                                                                                     \
                if (i + 8 <= n) {                                                                     \
                        __m256 w0 = LOADW(w + i);                                                     \
                        for (uint32_t r = 0; r < nx; r++)                                             \
                                a0[r] = _mm256_fmadd_ps(_mm256_loadu_ps(x + (size_t) r * ldx + i), w0, \
                                                        a0[r]);                                       \
                        i += 8;                                                                       \
                }                                                                                     \
                for (; i < n; i++)                                                                    \
                        for (uint32_t r = 0; r < nx; r++)                                             \
                                tail[r] = fmaf(x[(size_t) r * ldx + i], LOADS(w[i]), tail[r]);        \
                for (uint32_t r = 0; r < nx; r++)                                                     \
                        out[r] = hsum_avx2(a0[r], a1[r]) + tail[r];                                   \
        }

DEFINE_AVX2_DOT(dot4_f32_avx2, float, load_f32x8, LOAD_F32)
DEFINE_AVX2_DOT(dot4_bf16_avx2, uint16_t, load_bf16x8, LOAD_BF16)

/* One activation row against up to 4 consecutive weight rows (decode); per row identical to the above. */
#define DEFINE_AVX2_WDOT(NAME, WTYPE, LOADW, LOADS)                                                   \
        static AVX2 void NAME(const float *x, const WTYPE *w, uint32_t nw, uint32_t n, float *out) {  \
                __m256 a0[4], a1[4];                                                                  \
                float tail[4];                                                                        \
                uint32_t i = 0;                                                                       \
                for (uint32_t r = 0; r < 4; r++) {                                                    \
                        a0[r] = _mm256_setzero_ps();                                                  \
                        a1[r] = _mm256_setzero_ps();                                                  \
                        tail[r] = 0.0f;                                                               \
                }                                                                                     \
                for (; i + 16 <= n; i += 16) {                                                        \
                        __m256 x0 = _mm256_loadu_ps(x + i), x1 = _mm256_loadu_ps(x + i + 8);          \
                        for (uint32_t r = 0; r < nw; r++) {                                           \
                                const WTYPE *wr = w + (size_t) r * n + i;                             \
                                _mm_prefetch((const char *) (wr + 16 * (size_t) n), _MM_HINT_T0);      \
                                a0[r] = _mm256_fmadd_ps(x0, LOADW(wr), a0[r]);                        \
                                a1[r] = _mm256_fmadd_ps(x1, LOADW(wr + 8), a1[r]);                    \
                        }                                                                             \
                }                                                                                     \
                if (i + 8 <= n) {                                                                     \
                        __m256 x0 = _mm256_loadu_ps(x + i);                                           \
                        for (uint32_t r = 0; r < nw; r++)                                             \
                                a0[r] = _mm256_fmadd_ps(x0, LOADW(w + (size_t) r * n + i), a0[r]);    \
                        i += 8;                                                                       \
                }                                                                                     \
                for (; i < n; i++)                                                                    \
                        for (uint32_t r = 0; r < nw; r++)                                             \
                                tail[r] = fmaf(x[i], LOADS(w[(size_t) r * n + i]), tail[r]);          \
                for (uint32_t r = 0; r < nw; r++)                                                     \
                        out[r] = hsum_avx2(a0[r], a1[r]) + tail[r];                                   \
        }

DEFINE_AVX2_WDOT(wdot4_f32_avx2, float, load_f32x8, LOAD_F32)
DEFINE_AVX2_WDOT(wdot4_bf16_avx2, uint16_t, load_bf16x8, LOAD_BF16)
#endif

void cpu_kernels_init(void) {
#if HAVE_X86_DISPATCH
        __builtin_cpu_init();
        use_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
}

void cpu_kernels_use_simd(bool on) {
        if (!on)
                use_avx2 = false;
        else
                cpu_kernels_init();
}

const char *cpu_kernels_isa(void) {
        return use_avx2 ? "avx2" : "portable";
}

void cpu_dot_rows(const struct cpu_linear *w, uint32_t row, const float *x, uint32_t ldx, uint32_t n_x,
                  float *out) {
        uint32_t n = w->in;

#if HAVE_X86_DISPATCH
        if (use_avx2) {
                for (uint32_t r = 0; r < n_x; r += 4) {
                        uint32_t nx = n_x - r < 4 ? n_x - r : 4;
                        if (w->type == CPU_W_BF16)
                                dot4_bf16_avx2(x + (size_t) r * ldx, ldx, nx,
                                               (const uint16_t *) w->w + (size_t) row * n, n, out + r);
                        else
                                dot4_f32_avx2(x + (size_t) r * ldx, ldx, nx,
                                              (const float *) w->w + (size_t) row * n, n, out + r);
                }
                return;
        }
#endif
        for (uint32_t r = 0; r < n_x; r++) {
                if (w->type == CPU_W_BF16)
                        out[r] = dot_bf16_portable(x + (size_t) r * ldx,
                                                   (const uint16_t *) w->w + (size_t) row * n, n);
                else
                        out[r] = dot_f32_portable(x + (size_t) r * ldx, (const float *) w->w + (size_t) row * n,
                                                  n);
        }
}

void cpu_dot_wrows(const struct cpu_linear *w, uint32_t row, uint32_t n_rows, const float *x, float *out) {
        uint32_t n = w->in;

#if HAVE_X86_DISPATCH
        if (use_avx2) {
                for (uint32_t r = 0; r < n_rows; r += 4) {
                        uint32_t nw = n_rows - r < 4 ? n_rows - r : 4;
                        if (w->type == CPU_W_BF16)
                                wdot4_bf16_avx2(x, (const uint16_t *) w->w + (size_t) (row + r) * n, nw, n, out + r);
                        else
                                wdot4_f32_avx2(x, (const float *) w->w + (size_t) (row + r) * n, nw, n, out + r);
                }
                return;
        }
#endif
        for (uint32_t r = 0; r < n_rows; r++)
                cpu_dot_rows(w, row + r, x, n, 1, out + r);
}

float cpu_dot_f32(const float *a, const float *b, uint32_t n) {
#if HAVE_X86_DISPATCH
        if (use_avx2) {
                float r;
                dot4_f32_avx2(a, n, 1, b, n, &r);
                return r;
        }
#endif
        return dot_f32_portable(a, b, n);
}
