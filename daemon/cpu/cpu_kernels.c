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

/* ---- final-logit softcap: cap * tanh(x / cap) ----
 * tanh from +, -, *, / and exact bit operations only, so the scalar and AVX2 versions below give
 * identical bits: |t| < 0.5 a Taylor polynomial to t^15 (truncation < 1e-8 relative); otherwise
 * 1 - 2 / (exp(2|t|) + 1) with exp by Cody-Waite reduction and a degree-7 polynomial (about 2 ulp, like
 * libm's 1). |t| is clamped to 10, where tanh is 1 in float. */
#define TANH_SMALL 0.5f
#define TANH_CLAMP 10.0f
#define LN2_HI 0.693145751953125f
#define LN2_LO 1.428606765330187045e-06f
#define LOG2E 1.44269504088896341f
#define ROUND_MAGIC 12582912.0f         /* 1.5 * 2^23: adding and removing it rounds to an integer */

static const float tanh_c[7] = { -1.0f / 3.0f, 2.0f / 15.0f, -17.0f / 315.0f, 62.0f / 2835.0f,
                                 -1382.0f / 155925.0f, 21844.0f / 6081075.0f, -929569.0f / 638512875.0f };
static const float exp_c[6] = { 1.0f / 2.0f, 1.0f / 6.0f, 1.0f / 24.0f, 1.0f / 120.0f, 1.0f / 720.0f,
                                1.0f / 5040.0f };

/* noinline: compiled once, for the base ISA, whoever calls it */
static __attribute__((noinline)) float softcap_scalar(float x, float cap) {
        float t = x / cap, a = fabsf(t), z, p, y, k, r, e, big;
        uint32_t u;
        int ki;

        if (a < TANH_SMALL) {
                z = t * t;
                p = tanh_c[6];
                for (int i = 5; i >= 0; i--)
                        p = tanh_c[i] + z * p;
                return cap * (t + t * (z * p));
        }
        if (a > TANH_CLAMP)
                a = TANH_CLAMP;
        y = a + a;
        k = (y * LOG2E + ROUND_MAGIC) - ROUND_MAGIC;
        r = (y - k * LN2_HI) - k * LN2_LO;
        p = exp_c[5];
        for (int i = 4; i >= 0; i--)
                p = exp_c[i] + r * p;
        p = 1.0f + r * (1.0f + r * p);
        ki = (int) k;
        u = (uint32_t) (ki + 127) << 23;
        memcpy(&e, &u, sizeof(e));
        e = p * e;
        big = 1.0f - 2.0f / (e + 1.0f);
        return cap * copysignf(big, t);
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

/* BF16 weights, "pair order": in each block of 16, lane l of a0 takes element 2l and lane l of a1 element
 * 2l+1, so the SIMD kernel splits a 32-bit word of two BF16 values with a shift and a mask instead of a
 * shuffle. x comes prepared by cpu_prepare_rows(): per block, the 8 even elements then the 8 odd ones. */
static float dot_bf16_portable(const float *xp, const uint16_t *w, uint32_t n) {
        float a0[8] = { 0 }, a1[8] = { 0 }, tail = 0.0f;
        uint32_t i = 0;

        for (; i + 16 <= n; i += 16)
                for (int l = 0; l < 8; l++) {
                        a0[l] = fmaf(xp[i + l], cpu_bf16_to_f32(w[i + 2 * l]), a0[l]);
                        a1[l] = fmaf(xp[i + 8 + l], cpu_bf16_to_f32(w[i + 2 * l + 1]), a1[l]);
                }
        for (; i < n; i++)
                tail = fmaf(xp[i], cpu_bf16_to_f32(w[i]), tail);
        return reduce16(a0, a1) + tail;
}

void cpu_prepare_rows(const struct cpu_linear *w, const float *x, uint32_t ldx, uint32_t n_x, float *xp) {
        uint32_t n = w->in;

        for (uint32_t r = 0; r < n_x; r++) {
                const float *xr = x + (size_t) r * ldx;
                float *dst = xp + (size_t) r * n;
                uint32_t i = 0;

                if (w->type == CPU_W_BF16)
                        for (; i + 16 <= n; i += 16)
                                for (int l = 0; l < 8; l++) {
                                        dst[i + l] = xr[i + 2 * l];
                                        dst[i + 8 + l] = xr[i + 2 * l + 1];
                                }
                memcpy(dst + i, xr + i, (n - i) * sizeof(float));
        }
}

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

/* Loaders of one block of 16 weights as the two accumulators' operands (see the portable kernels). */
static inline AVX2 void load16_f32(const float *w, __m256 *lo, __m256 *hi) {
        *lo = _mm256_loadu_ps(w);
        *hi = _mm256_loadu_ps(w + 8);
}

/* BF16 in pair order: even elements are the low halves of 32-bit words, odd ones the high halves. */
static inline AVX2 void load16_bf16(const uint16_t *w, __m256 *even, __m256 *odd) {
        __m256i v = _mm256_loadu_si256((const __m256i *) w);
        *even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
        *odd = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int) 0xffff0000u)));
}

/* F32 weights also take a block of 8 into the first accumulator; BF16 weights leave it to the tail. */
#define STEP8_F32(w, x, ldx, nrow, a0, i, n)                                                           \
        if (i + 8 <= n) {                                                                             \
                for (uint32_t r = 0; r < (nrow); r++)                                                 \
                        a0[r] = _mm256_fmadd_ps(_mm256_loadu_ps(x(r) + i), _mm256_loadu_ps(w(r) + i),    \
                                                a0[r]);                                               \
                i += 8;                                                                               \
        }
#define STEP8_NONE(w, x, ldx, nrow, a0, i, n)

/*
 * KERNEL_4X: up to 4 activation rows (stride ldx) against one weight row (prefill).
 * KERNEL_W4: one activation row against up to 4 consecutive weight rows (decode), prefetching the rows
 * 16 ahead. Per (activation row, weight row) both evaluate exactly the portable kernel's order.
 */
#define DEFINE_AVX2_KERNELS(SUFFIX, WTYPE, LOAD16, STEP8, LOADS)                                      \
        static AVX2 void dot4x_##SUFFIX(const float *xp, uint32_t ldx, uint32_t nx, const WTYPE *w,   \
                                        uint32_t n, float *out) {                                     \
                __m256 a0[4], a1[4];                                                                  \
                float tail[4] = { 0 };                                                                \
                uint32_t i = 0;                                                                       \
                for (uint32_t r = 0; r < 4; r++)                                                      \
                        a0[r] = a1[r] = _mm256_setzero_ps();                                          \
                for (; i + 16 <= n; i += 16) {                                                        \
                        __m256 lo, hi;                                                                \
                        _mm_prefetch((const char *) (w + i + 16 * (size_t) n), _MM_HINT_T0);          \
                        LOAD16(w + i, &lo, &hi);                                                      \
                        for (uint32_t r = 0; r < nx; r++) {                                           \
                                const float *xr = xp + (size_t) r * ldx + i;                          \
                                a0[r] = _mm256_fmadd_ps(_mm256_loadu_ps(xr), lo, a0[r]);              \
                                a1[r] = _mm256_fmadd_ps(_mm256_loadu_ps(xr + 8), hi, a1[r]);          \
                        }                                                                             \
                }                                                                                     \
                STEP8(ROW_W0, ROW_X, ldx, nx, a0, i, n)                                               \
                for (; i < n; i++)                                                                    \
                        for (uint32_t r = 0; r < nx; r++)                                             \
                                tail[r] = fmaf(xp[(size_t) r * ldx + i], LOADS(w[i]), tail[r]);       \
                for (uint32_t r = 0; r < nx; r++)                                                     \
                        out[r] = hsum_avx2(a0[r], a1[r]) + tail[r];                                   \
        }                                                                                             \
        static AVX2 void dotw4_##SUFFIX(const float *xp, const WTYPE *w, uint32_t nw, uint32_t n,     \
                                        float *out) {                                                 \
                __m256 a0[4], a1[4];                                                                  \
                float tail[4] = { 0 };                                                                \
                uint32_t i = 0;                                                                       \
                for (uint32_t r = 0; r < 4; r++)                                                      \
                        a0[r] = a1[r] = _mm256_setzero_ps();                                          \
                for (; i + 16 <= n; i += 16) {                                                        \
                        __m256 x0 = _mm256_loadu_ps(xp + i), x1 = _mm256_loadu_ps(xp + i + 8);        \
                        for (uint32_t r = 0; r < nw; r++) {                                           \
                                const WTYPE *wr = w + (size_t) r * n + i;                             \
                                __m256 lo, hi;                                                        \
                                _mm_prefetch((const char *) (wr + 16 * (size_t) n), _MM_HINT_T0);     \
                                LOAD16(wr, &lo, &hi);                                                 \
                                a0[r] = _mm256_fmadd_ps(x0, lo, a0[r]);                               \
                                a1[r] = _mm256_fmadd_ps(x1, hi, a1[r]);                               \
                        }                                                                             \
                }                                                                                     \
                STEP8(ROW_WR, ROW_X0, 0, nw, a0, i, n)                                                \
                for (; i < n; i++)                                                                    \
                        for (uint32_t r = 0; r < nw; r++)                                             \
                                tail[r] = fmaf(xp[i], LOADS(w[(size_t) r * n + i]), tail[r]);         \
                for (uint32_t r = 0; r < nw; r++)                                                     \
                        out[r] = hsum_avx2(a0[r], a1[r]) + tail[r];                                   \
        }

/* row accessors for STEP8: 4x reads activation row r and the one weight row; w4 the reverse */
#define ROW_X(r) (xp + (size_t) (r) * ldx)
#define ROW_W0(r) ((const float *) w)
#define ROW_X0(r) (xp)
#define ROW_WR(r) ((const float *) w + (size_t) (r) * n)

DEFINE_AVX2_KERNELS(f32, float, load16_f32, STEP8_F32, LOAD_F32)
DEFINE_AVX2_KERNELS(bf16, uint16_t, load16_bf16, STEP8_NONE, LOAD_BF16)
#endif

#if HAVE_X86_DISPATCH
static AVX2 void softcap_avx2(float *v, uint32_t n, float cap) {
        const __m256 capv = _mm256_set1_ps(cap), sign = _mm256_set1_ps(-0.0f);
        uint32_t i = 0;

        for (; i + 8 <= n; i += 8) {
                __m256 t = _mm256_div_ps(_mm256_loadu_ps(v + i), capv);
                __m256 a = _mm256_andnot_ps(sign, t), z = _mm256_mul_ps(t, t), p, y, k, r, e, big, small;
                __m256i ki;

                p = _mm256_set1_ps(tanh_c[6]);
                for (int j = 5; j >= 0; j--)
                        p = _mm256_add_ps(_mm256_set1_ps(tanh_c[j]), _mm256_mul_ps(z, p));
                small = _mm256_add_ps(t, _mm256_mul_ps(t, _mm256_mul_ps(z, p)));

                a = _mm256_min_ps(a, _mm256_set1_ps(TANH_CLAMP));
                y = _mm256_add_ps(a, a);
                k = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(y, _mm256_set1_ps(LOG2E)),
                                                _mm256_set1_ps(ROUND_MAGIC)),
                                  _mm256_set1_ps(ROUND_MAGIC));
                r = _mm256_sub_ps(_mm256_sub_ps(y, _mm256_mul_ps(k, _mm256_set1_ps(LN2_HI))),
                                  _mm256_mul_ps(k, _mm256_set1_ps(LN2_LO)));
                p = _mm256_set1_ps(exp_c[5]);
                for (int j = 4; j >= 0; j--)
                        p = _mm256_add_ps(_mm256_set1_ps(exp_c[j]), _mm256_mul_ps(r, p));
                p = _mm256_add_ps(_mm256_set1_ps(1.0f),
                                  _mm256_mul_ps(r, _mm256_add_ps(_mm256_set1_ps(1.0f), _mm256_mul_ps(r, p))));
                ki = _mm256_cvttps_epi32(k);
                e = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(ki, _mm256_set1_epi32(127)), 23));
                e = _mm256_mul_ps(p, e);
                big = _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, _mm256_set1_ps(1.0f)));
                big = _mm256_sub_ps(_mm256_set1_ps(1.0f), big);
                big = _mm256_or_ps(big, _mm256_and_ps(sign, t));
                /* |t| < 0.5: polynomial; else the exp form (a was clamped, t was not) */
                t = _mm256_blendv_ps(big, small,
                                     _mm256_cmp_ps(_mm256_andnot_ps(sign, t), _mm256_set1_ps(TANH_SMALL),
                                                   _CMP_LT_OQ));
                _mm256_storeu_ps(v + i, _mm256_mul_ps(capv, t));
        }
        for (; i < n; i++)
                v[i] = softcap_scalar(v[i], cap);
}
#endif

void cpu_softcap(float *v, uint32_t n, float cap) {
#if HAVE_X86_DISPATCH
        if (use_avx2) {
                softcap_avx2(v, n, cap);
                return;
        }
#endif
        for (uint32_t i = 0; i < n; i++)
                v[i] = softcap_scalar(v[i], cap);
}

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
                                dot4x_bf16(x + (size_t) r * ldx, ldx, nx,
                                               (const uint16_t *) w->w + (size_t) row * n, n, out + r);
                        else
                                dot4x_f32(x + (size_t) r * ldx, ldx, nx,
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
                        out[r] = dot_f32_portable(x + (size_t) r * ldx,
                                                  (const float *) w->w + (size_t) row * n, n);
        }
}

void cpu_dot_wrows(const struct cpu_linear *w, uint32_t row, uint32_t n_rows, const float *x, float *out) {
        uint32_t n = w->in;

#if HAVE_X86_DISPATCH
        if (use_avx2) {
                for (uint32_t r = 0; r < n_rows; r += 4) {
                        uint32_t nw = n_rows - r < 4 ? n_rows - r : 4;
                        if (w->type == CPU_W_BF16)
                                dotw4_bf16(x, (const uint16_t *) w->w + (size_t) (row + r) * n, nw, n,
                                                out + r);
                        else
                                dotw4_f32(x, (const float *) w->w + (size_t) (row + r) * n, nw, n,
                                               out + r);
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
                dot4x_f32(a, n, 1, b, n, &r);
                return r;
        }
#endif
        return dot_f32_portable(a, b, n);
}
