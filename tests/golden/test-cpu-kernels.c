/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Numerics of the CPU engine that the golden tests rely on: E4M3 rounding against an exhaustive
 * nearest-value search, per-token activation quantization, bitwise agreement of every dot-product kernel
 * (SIMD and portable, 1- and 4-row forms), and the thread pool.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cpu/cpu_kernels.h"
#include "cpu/cpu_pool.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rng_u32(void) {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        return (uint32_t) (rng_state >> 11);
}

static float rng_float(float scale) {
        return ((float) rng_u32() / 4294967296.0f * 2.0f - 1.0f) * scale;
}

/* Nearest finite E4M3 value by search; ties go to the even code (even mantissa); beyond 448 saturate. */
static float fp8_reference(float x) {
        float best = 0.0f, bestd = INFINITY;
        int best_code = 0;

        if (fabsf(x) >= 448.0f)
                return copysignf(448.0f, x);
        for (int code = 0; code < 0x7f; code++) {
                float v = fp8_e4m3_to_f32((uint8_t) code);
                float d = fabsf(fabsf(x) - v);
                if (d < bestd || (d == bestd && (code & 1) == 0 && (best_code & 1) == 1)) {
                        bestd = d;
                        best = v;
                        best_code = code;
                }
        }
        return copysignf(best, x);
}

static void test_fp8_decode(void **state) {
        assert_true(fp8_e4m3_to_f32(0x7e) == 448.0f);
        assert_true(fp8_e4m3_to_f32(0xfe) == -448.0f);
        assert_true(fp8_e4m3_to_f32(0x01) == ldexpf(1.0f, -9));
        assert_true(fp8_e4m3_to_f32(0x08) == ldexpf(1.0f, -6));
        assert_true(fp8_e4m3_to_f32(0x38) == 1.0f);
        assert_true(isnan(fp8_e4m3_to_f32(0x7f)));
        assert_true(isnan(fp8_e4m3_to_f32(0xff)));
}

static void test_fp8_rounding(void **state) {
        /* every code and every midpoint between neighbours, then random values over the whole range */
        for (int code = 0; code < 0x7e; code++) {
                float a = fp8_e4m3_to_f32((uint8_t) code), b = fp8_e4m3_to_f32((uint8_t) (code + 1));
                float mid = (a + b) / 2.0f;
                assert_true(cpu_round_fp8_e4m3(a) == a);
                assert_true(cpu_round_fp8_e4m3(-a) == -a);
                assert_true(cpu_round_fp8_e4m3(mid) == fp8_reference(mid));
                assert_true(cpu_round_fp8_e4m3(nextafterf(mid, 0.0f)) == a);
                assert_true(cpu_round_fp8_e4m3(nextafterf(mid, 1000.0f)) == b);
        }
        for (int i = 0; i < 20000; i++) {
                float x = ldexpf(rng_float(1.0f), (int) (rng_u32() % 24) - 14);
                assert_true(cpu_round_fp8_e4m3(x) == fp8_reference(x));
                /* and the loader's encoder agrees */
                assert_true(cpu_round_fp8_e4m3(x) == fp8_e4m3_to_f32(f32_to_fp8_e4m3(x)));
        }
        assert_true(cpu_round_fp8_e4m3(460.0f) == 448.0f);
        assert_true(cpu_round_fp8_e4m3(-1e30f) == -448.0f);
        assert_true(cpu_round_fp8_e4m3(1e-30f) == 0.0f);
        assert_true(isnan(cpu_round_fp8_e4m3(NAN)));
}

static void test_quantize_row(void **state) {
        float x[5] = { 0.5f, -2.0f, 1.0f, 0.0f, 0.3f }, q[5], zeros[3] = { 0 }, qz[3], s;

        s = cpu_quantize_row_fp8(x, 5, q);
        assert_true(s == 2.0f / 448.0f);
        assert_true(q[1] == -448.0f);
        for (int i = 0; i < 5; i++)
                assert_true(q[i] == cpu_round_fp8_e4m3(x[i] / s));
        s = cpu_quantize_row_fp8(zeros, 3, qz);         /* floor of the scale: 1 / (448 * 512) */
        assert_true(s == 1.0f / (448.0f * 512.0f));
        for (int i = 0; i < 3; i++)
                assert_true(qz[i] == 0.0f);
}

/* Every path computes one (row, weight row) dot product in the same order: results are bitwise equal
 * (and close to the exact dot product). */
static void check_kernels(enum cpu_wtype type, uint32_t in) {
        uint32_t out = 9, nx = 6;
        struct cpu_linear w = { .type = type, .out = out, .in = in };
        float *x = malloc((size_t) nx * in * sizeof(float)), ref[9 * 6], got[9 * 6], wr[9];
        float *xp = malloc((size_t) nx * in * sizeof(float));
        size_t n = (size_t) out * in;

        w.w = malloc(n * (type == CPU_W_BF16 ? 2 : 4));
        assert_non_null(x);
        assert_non_null(xp);
        assert_non_null(w.w);
        for (size_t i = 0; i < n; i++) {
                float v = rng_float(1.0f);
                if (type == CPU_W_BF16)
                        ((uint16_t *) w.w)[i] = f32_to_bf16(v);
                else
                        ((float *) w.w)[i] = v;
        }
        for (size_t i = 0; i < (size_t) nx * in; i++)
                x[i] = rng_float(3.0f);

        cpu_prepare_rows(&w, x, in, nx, xp);
        cpu_kernels_use_simd(false);
        for (uint32_t r = 0; r < out; r++)
                for (uint32_t m = 0; m < nx; m++) {
                        double exact = 0.0;
                        cpu_dot_rows(&w, r, xp + (size_t) m * in, in, 1, &ref[r * nx + m]);
                        for (uint32_t k = 0; k < in; k++)
                                exact += (double) x[(size_t) m * in + k] *
                                         (type == CPU_W_BF16 ? bf16_to_f32(((uint16_t *) w.w)[(size_t) r * in + k])
                                                             : ((float *) w.w)[(size_t) r * in + k]);
                        assert_true(fabs(ref[r * nx + m] - exact) <= 1e-5 * (1.0 + fabs(exact)) * sqrt(in));
                }
        for (int simd = 0; simd < 2; simd++) {
                cpu_kernels_use_simd(simd);
                for (uint32_t r = 0; r < out; r++) {
                        cpu_dot_rows(&w, r, xp, in, nx, &got[r * nx]);
                        assert_memory_equal(&got[r * nx], &ref[r * nx], nx * sizeof(float));
                }
                for (uint32_t m = 0; m < nx; m++) {
                        cpu_dot_wrows(&w, 0, out, xp + (size_t) m * in, wr);
                        for (uint32_t r = 0; r < out; r++)
                                assert_memory_equal(&wr[r], &ref[r * nx + m], sizeof(float));
                }
                if (type == CPU_W_F32)
                        for (uint32_t r = 0; r < out; r++) {
                                float d = cpu_dot_f32(x, (const float *) w.w + (size_t) r * in, in);
                                assert_memory_equal(&d, &ref[r * nx], sizeof(float));
                        }
        }
        free(xp);
        free(x);
        free(w.w);
}

static void test_dot_kernels_agree(void **state) {
        for (uint32_t in = 1; in <= 70; in++) {
                check_kernels(CPU_W_BF16, in);
                check_kernels(CPU_W_F32, in);
        }
        check_kernels(CPU_W_BF16, 2816);
        check_kernels(CPU_W_F32, 704);
}

/* the softcap: close to cap * tanh(x / cap), and bitwise the same on every path and position */
static void test_softcap(void **state) {
        enum { N = 4099 };
        static float x[N], a[N], b[N];
        const float caps[] = { 30.0f, 5.0f, 1.0f };

        for (size_t c = 0; c < sizeof(caps) / sizeof(caps[0]); c++) {
                float cap = caps[c];
                for (int i = 0; i < N; i++)
                        x[i] = i < 64 ? ldexpf((float) (i - 32), -(i % 20)) : rng_float(cap * 12.0f);
                x[7] = 0.0f;
                x[8] = -0.0f;
                x[9] = 1e30f;
                x[10] = -1e30f;
                x[11] = cap * 0.5f;     /* the branch point */
                x[12] = nextafterf(cap * 0.5f, 0.0f);
                memcpy(a, x, sizeof(x));
                memcpy(b, x, sizeof(x));
                cpu_kernels_use_simd(false);
                cpu_softcap(a, N, cap);
                cpu_kernels_use_simd(true);
                cpu_softcap(b, N, cap);
                assert_memory_equal(a, b, sizeof(a));
                for (int i = 0; i < N; i++) {   /* one at a time: the scalar tail of the SIMD path */
                        float one = x[i];
                        cpu_softcap(&one, 1, cap);
                        assert_memory_equal(&one, &a[i], sizeof(float));
                }
                for (int i = 0; i < N; i++) {
                        double want = cap * tanh((double) x[i] / cap);
                        assert_true(fabs(a[i] - want) <= 4.0 * ldexp(1.0, -24) * fabs(want) + 1e-30);
                        assert_true(signbit(a[i]) == signbit(x[i]) || x[i] == 0.0f);
                }
                assert_true(a[9] == cap && a[10] == -cap);
        }
}

struct pool_ctx {
        atomic_int calls;
        atomic_int per_chunk[64];
        atomic_uint_fast64_t sum;
        int n_threads;
        atomic_int bad_tid;
};

static void pool_fn(void *vctx, uint32_t chunk, int tid) {
        struct pool_ctx *c = vctx;
        uint64_t b, e, s = 0;

        if (tid < 0 || tid >= c->n_threads)
                atomic_fetch_add(&c->bad_tid, 1);
        atomic_fetch_add(&c->calls, 1);
        atomic_fetch_add(&c->per_chunk[chunk], 1);
        cpu_pool_share(1000, chunk, 64, &b, &e);
        for (uint64_t i = b; i < e; i++)
                s += i;
        atomic_fetch_add(&c->sum, s);
}

/* every chunk runs exactly once per section, on a valid thread id, whatever the thread count */
static void test_pool(void **state) {
        for (int n = 1; n <= 4; n++) {
                struct cpu_pool *p;
                struct pool_ctx c = { .n_threads = n };

                assert_int_equal(cpu_pool_new(n, &p), 0);
                assert_int_equal(cpu_pool_size(p), n);
                for (int rep = 0; rep < 300; rep++)
                        cpu_pool_run(p, pool_fn, &c, 64);
                cpu_pool_run(p, pool_fn, &c, 0);        /* nothing to do */
                assert_int_equal(atomic_load(&c.calls), 300 * 64);
                for (int k = 0; k < 64; k++)
                        assert_int_equal(atomic_load(&c.per_chunk[k]), 300);
                assert_true(atomic_load(&c.sum) == 300ull * 999 * 1000 / 2);
                assert_int_equal(atomic_load(&c.bad_tid), 0);
                cpu_pool_free(p);
        }
        assert_int_equal(cpu_pool_new(0, &(struct cpu_pool *) { NULL }), -EINVAL);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_fp8_decode),
                cmocka_unit_test(test_fp8_rounding),
                cmocka_unit_test(test_quantize_row),
                cmocka_unit_test(test_dot_kernels_agree),
                cmocka_unit_test(test_softcap),
                cmocka_unit_test(test_pool),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
