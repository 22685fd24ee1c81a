/* SPDX-License-Identifier: Apache-2.0 */
/*
 * BF16-weight linears (kernels/gemm_bf16.cu, kern_blas_bf16_linear) against a double-precision host
 * reference on the same BF16 inputs, then timings on the 26B-A4B shapes.
 * Tolerance: BF16 x BF16 products are exact in FP32 and the sums differ from the reference only in order and
 * FP32 rounding, so the error is the final BF16 rounding (relative 2^-9 per element, ~1.5e-3 RMS): 4e-3.
 * FP32 outputs (the LM head with softcap): 1e-5. GeGLU: tanhf vs tanh can move a product across a BF16
 * rounding boundary, one BF16 ulp on a few elements: 4e-3.
 */
#include "kt.h"

struct blin {
        uint32_t n, k, m, e;
        uint16_t *w, *x;
        uint16_t *dw, *dx;
};

static void blin_make(struct blin *L, uint32_t n, uint32_t k, uint32_t m, uint32_t experts) {
        L->n = n, L->k = k, L->m = m, L->e = experts;
        size_t wn = (size_t) experts * n * k, xn = (size_t) m * k;
        L->w = malloc(2 * wn);
        L->x = malloc(2 * (xn ? xn : 1));
        /* weights like a trained matrix (|w| ~ 0.05), activations ~ 1 */
        for (size_t i = 0; i < wn; i++)
                L->w[i] = kt_f32_to_bf16(kt_uniform() * 0.05f);
        for (size_t i = 0; i < xn; i++)
                L->x[i] = kt_f32_to_bf16(kt_uniform() * 2.0f);
        L->dw = kt_up(L->w, 2 * wn);
        L->dx = kt_up(L->x, 2 * (xn ? xn : 1));
}

static void blin_free(struct blin *L) {
        cudaFree(L->dw), cudaFree(L->dx);
        free(L->w), free(L->x);
}

static double blin_ref(const struct blin *L, uint32_t e, uint32_t xrow, uint32_t n) {
        const uint16_t *w = L->w + ((size_t) e * L->n + n) * L->k, *x = L->x + (size_t) xrow * L->k;
        double a = 0;
        for (uint32_t i = 0; i < L->k; i++)
                a += (double) kt_bf16_to_f32(w[i]) * kt_bf16_to_f32(x[i]);
        return a;
}

/* first mismatch, for a failure to be readable without another run */
static void report_first(const char *what, const void *y, int f32, uint32_t m, uint32_t n,
                         double (*ref)(const void *, uint32_t, uint32_t), const void *ctx) {
        for (uint32_t r = 0; r < m; r++)
                for (uint32_t c = 0; c < n; c++) {
                        double want = ref(ctx, r, c);
                        double got = f32 ? ((const float *) y)[(size_t) r * n + c]
                                         : kt_bf16_to_f32(((const uint16_t *) y)[(size_t) r * n + c]);
                        if (!(fabs(got - want) <= 1e-2 * fabs(want) + 1e-2)) {
                                printf("# %s: first mismatch row %u col %u: got %.6g want %.6g\n", what, r, c, got,
                                       want);
                                return;
                        }
                }
}

struct dense_ctx {
        const struct blin *L;
        float cap;
};

static double dense_ref(const void *ctx, uint32_t r, uint32_t c) {
        const struct dense_ctx *d = ctx;
        double v = blin_ref(d->L, 0, r, c);
        return d->cap > 0 ? d->cap * tanh(v / d->cap) : v;
}

static void test_small(uint32_t n, uint32_t k, uint32_t m, int f32_cap) {
        struct blin L;
        struct kt_err e = {0};
        char name[96];
        float cap = 30.0f;

        blin_make(&L, n, k, m, 1);
        size_t out_bytes = (size_t) m * n * (f32_cap ? 4 : 2);
        void *dy = kt_dev(out_bytes);
        KT_OK(kern_bf16_linear_small(L.dw, n, k, L.dx, m, dy, f32_cap ? KERN_OUT_F32_SOFTCAP : KERN_OUT_BF16,
                                     f32_cap ? cap : 0.0f, 0));
        void *y = kt_down(dy, out_bytes);
        struct dense_ctx ctx = {&L, f32_cap ? cap : 0.0f};
        for (uint32_t r = 0; r < m; r++)
                for (uint32_t c = 0; c < n; c++) {
                        size_t off = (size_t) r * n + c;
                        double got = f32_cap ? ((float *) y)[off] : kt_bf16_to_f32(((uint16_t *) y)[off]);
                        kt_acc(&e, got, dense_ref(&ctx, r, c));
                }
        snprintf(name, sizeof(name), "bf16_linear_small n=%u k=%u m=%u%s", n, k, m, f32_cap ? " f32+softcap" : "");
        if (kt_rel(&e) > (f32_cap ? 1e-5 : 4e-3))
                report_first(name, y, f32_cap, m, n, dense_ref, &ctx);
        kt_check(name, &e, f32_cap ? 1e-5 : 4e-3);
        cudaFree(dy);
        free(y);
        blin_free(&L);
}

static void test_blas(struct kern_blas *b, uint32_t n, uint32_t k, uint32_t m) {
        struct blin L;
        struct kt_err e = {0};
        char name[96];

        blin_make(&L, n, k, m, 1);
        uint16_t *dy = kt_dev((size_t) m * n * 2);
        int r = kern_blas_bf16_linear(b, L.dw, n, k, L.dx, m, dy, 0);
        if (r < 0)
                printf("# %s\n", kern_blas_last_error(b));
        uint16_t *y = kt_down(dy, (size_t) m * n * 2);
        for (uint32_t i = 0; i < m; i++)
                for (uint32_t c = 0; c < n; c++)
                        kt_acc(&e, r < 0 ? NAN : kt_bf16_to_f32(y[(size_t) i * n + c]), blin_ref(&L, 0, i, c));
        snprintf(name, sizeof(name), "blas_bf16_linear (bf16 out) n=%u k=%u m=%u", n, k, m);
        kt_check(name, &e, 4e-3);
        cudaFree(dy);
        free(y);
        blin_free(&L);
}

/* tokens x top_k pairs routed to experts (skewed when `skew`), grouped GEMM over the pairs */
static void test_grouped(uint32_t tokens, uint32_t top_k, uint32_t experts, uint32_t n, uint32_t k, int per_pair,
                         int skew) {
        uint32_t pairs = tokens * top_k;
        struct blin L;
        struct kt_err e = {0};
        char name[128];
        int32_t *idx = malloc(4 * pairs);

        blin_make(&L, n, k, per_pair ? pairs : tokens, experts);
        kt_route(idx, tokens, top_k, experts, skew);
        uint32_t max_groups = kern_moe_max_groups(pairs, experts);
        int32_t *didx = kt_up(idx, 4 * pairs), *drows = kt_dev(4 * pairs), *dng = kt_dev(4);
        struct kern_gemm_group *dgroups = kt_dev(sizeof(struct kern_gemm_group) * max_groups);
        uint16_t *dy = kt_dev(2 * (size_t) pairs * n);
        KT_OK(kern_moe_route(didx, pairs, experts, drows, dgroups, dng, 0));
        KT_OK(kern_bf16_linear_grouped(L.dw, n, k, L.dx, per_pair ? 1 : top_k, drows, dgroups, dng, max_groups,
                                       tokens < 64 ? tokens : 64, dy, 0));
        uint16_t *y = kt_down(dy, 2 * (size_t) pairs * n);
        uint32_t shown = 0;
        for (uint32_t p = 0; p < pairs; p++)
                for (uint32_t c = 0; c < n; c++) {
                        double want = blin_ref(&L, idx[p], per_pair ? p : p / top_k, c);
                        double got = kt_bf16_to_f32(y[(size_t) p * n + c]);
                        kt_acc(&e, got, want);
                        if (!(fabs(got - want) <= 1e-2 * fabs(want) + 1e-2) && shown++ < 3)
                                printf("# grouped mismatch pair %u (expert %d) col %u: got %.6g want %.6g\n", p,
                                       idx[p], c, got, want);
                }
        snprintf(name, sizeof(name), "bf16_linear_grouped tokens=%u top_k=%u experts=%u n=%u k=%u%s", tokens,
                 top_k, experts, n, k, per_pair ? " per-pair x" : "");
        kt_check(name, &e, 4e-3);
        cudaFree(didx), cudaFree(drows), cudaFree(dng), cudaFree(dgroups), cudaFree(dy);
        free(idx), free(y);
        blin_free(&L);
}

static void test_geglu(uint32_t rows, uint32_t n) {
        size_t total = (size_t) rows * 2 * n;
        uint16_t *gu = malloc(2 * total);
        struct kt_err e = {0};
        char name[96];

        for (size_t i = 0; i < total; i++)
                gu[i] = kt_f32_to_bf16(kt_uniform() * 4.0f);
        uint16_t *dgu = kt_up(gu, 2 * total), *dout = kt_dev((size_t) rows * n * 2);
        KT_OK(kern_geglu_bf16(dgu, rows, n, dout, 0));
        uint16_t *out = kt_down(dout, (size_t) rows * n * 2);
        for (uint32_t r = 0; r < rows; r++)
                for (uint32_t i = 0; i < n; i++) {
                        double g = kt_bf16_to_f32(gu[(size_t) r * 2 * n + i]);
                        double u = kt_bf16_to_f32(gu[(size_t) r * 2 * n + n + i]);
                        double a = kt_round_bf16((float) (0.5 * g * (1.0 + tanh(0.7978845608028654 *
                                                                                  (g + 0.044715 * g * g * g)))));
                        kt_acc(&e, kt_bf16_to_f32(out[(size_t) r * n + i]), kt_round_bf16((float) (a * u)));
                }
        snprintf(name, sizeof(name), "geglu_bf16 rows=%u n=%u", rows, n);
        kt_check(name, &e, 4e-3);
        cudaFree(dgu), cudaFree(dout);
        free(gu), free(out);
}

static int cmp_float(const void *a, const void *b) {
        float x = *(const float *) a, y = *(const float *) b;
        return (x > y) - (x < y);
}

#define REPEATS 20

/* median of REPEATS timed launches after 3 warm-ups; which: 0 mma dense, 1 cuBLASLt, 2 grouped */
static void time_one(const char *what, int which, struct kern_blas *b, uint32_t n, uint32_t k, uint32_t m,
                     uint32_t tokens, uint32_t top_k, uint32_t experts) {
        cudaEvent_t e0, e1;
        float ms[REPEATS];
        uint32_t rows = which == 2 ? tokens : m;
        uint16_t *dw = kt_dev((size_t) (which == 2 ? experts : 1) * n * k * 2), *dx = kt_dev((size_t) rows * k * 2);
        uint32_t out_rows = which == 2 ? tokens * top_k : m;
        uint16_t *dy = kt_dev((size_t) out_rows * n * 2);
        int32_t *didx = NULL, *drows = NULL, *dng = NULL;
        struct kern_gemm_group *dgroups = NULL;
        uint32_t max_groups = 0, touched = 1;

        KT_CUDA(cudaMemset(dw, 0, (size_t) (which == 2 ? experts : 1) * n * k * 2));
        KT_CUDA(cudaMemset(dx, 0, (size_t) rows * k * 2));
        if (which == 2) {
                uint32_t pairs = tokens * top_k;
                int32_t *idx = malloc(4 * pairs);
                char *used = calloc(experts, 1);
                touched = 0;
                for (uint32_t t = 0; t < tokens; t++)
                        for (uint32_t j = 0; j < top_k; j++) {
                                idx[t * top_k + j] = (int32_t) ((t * 37 + j * 16 + (t * j) % 5) % experts);
                                for (uint32_t j2 = 0; j2 < j; j2++)
                                        if (idx[t * top_k + j2] == idx[t * top_k + j])
                                                idx[t * top_k + j] = (idx[t * top_k + j] + 1) % (int32_t) experts;
                        }
                for (uint32_t i = 0; i < pairs; i++)
                        touched += !used[idx[i]], used[idx[i]] = 1;
                max_groups = kern_moe_max_groups(pairs, experts);
                didx = kt_up(idx, 4 * pairs);
                drows = kt_dev(4 * pairs);
                dng = kt_dev(4);
                dgroups = kt_dev(sizeof(*dgroups) * max_groups);
                KT_OK(kern_moe_route(didx, pairs, experts, drows, dgroups, dng, 0));
                free(idx);
                free(used);
        }
        KT_CUDA(cudaEventCreate(&e0));
        KT_CUDA(cudaEventCreate(&e1));
        for (int i = -3; i < REPEATS; i++) {
                KT_CUDA(cudaEventRecord(e0, 0));
                if (which == 0)
                        KT_OK(kern_bf16_linear_small(dw, n, k, dx, m, dy, KERN_OUT_BF16, 0.0f, 0));
                else if (which == 1)
                        KT_OK(kern_blas_bf16_linear(b, dw, n, k, dx, m, dy, 0));
                else
                        KT_OK(kern_bf16_linear_grouped(dw, n, k, dx, top_k, drows, dgroups, dng, max_groups,
                                                       tokens < 64 ? tokens : 64, dy, 0));
                KT_CUDA(cudaEventRecord(e1, 0));
                KT_CUDA(cudaEventSynchronize(e1));
                if (i >= 0)
                        KT_CUDA(cudaEventElapsedTime(&ms[i], e0, e1));
        }
        qsort(ms, REPEATS, sizeof(float), cmp_float);
        double us = ms[REPEATS / 2] * 1000.0, bytes = (double) touched * n * k * 2;
        printf("RESULT bf16-gemm %-28s n=%u k=%u %s=%u: %.1f us, %.0f GB/s of weights\n", what, n, k,
               which == 2 ? "tokens" : "m", which == 2 ? tokens : m, us, bytes / us / 1e3);
        cudaEventDestroy(e0), cudaEventDestroy(e1);
        cudaFree(dw), cudaFree(dx), cudaFree(dy);
        if (which == 2)
                cudaFree(didx), cudaFree(drows), cudaFree(dng), cudaFree(dgroups);
}

/* dense shapes (n, k, m, FP32+softcap output): the 26B-A4B linears at decode and prefill row counts, then
 * tails: n not a multiple of 16, k not of 32 or not of 8 (unaligned rows), the tiny fixtures' widths */
static const uint32_t small_shapes[][4] = {
        {4096, 2816, 1, 0}, {2816, 4096, 5, 0}, {1408, 2816, 13, 0}, {2816, 704, 29, 0}, {1000, 2112, 64, 0},
        {520, 2816, 150, 0}, {100, 48, 3, 0}, {3000, 256, 3, 1}, {200, 100, 3, 0}, {512, 100, 40, 1},
        {320, 100, 8, 0}, {100, 160, 8, 0}, {160, 100, 33, 0}, {1024, 100, 33, 1}, {96, 64, 1, 0},
};
static const uint32_t blas_shapes[][3] = {{4096, 2816, 9}, {2816, 4096, 37}, {1024, 2816, 300}, {2816, 704, 129},
                                          {192, 64, 40}};
/* grouped (tokens, top_k, experts, n, k, per-pair x, skewed routing): decode and prefill of the real experts,
 * groups of more than 64 rows, unaligned k */
static const uint32_t grouped_shapes[][7] = {
        {1, 8, 128, 1408, 2816, 0, 0}, {1, 8, 128, 2816, 704, 1, 0}, {37, 8, 128, 1408, 256, 0, 0},
        {5, 8, 128, 1408, 2816, 0, 0}, {12, 8, 16, 256, 704, 1, 1},  {300, 2, 8, 96, 128, 0, 1},
        {300, 2, 8, 64, 96, 1, 1},     {7, 4, 16, 48, 100, 0, 0},    {7, 4, 16, 100, 24, 1, 0},
};

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

int main(void) {
        struct kern_blas *b;

        kt_require_gpu();
        kt_seed(3);
        for (size_t i = 0; i < N_OF(small_shapes); i++)
                test_small(small_shapes[i][0], small_shapes[i][1], small_shapes[i][2], (int) small_shapes[i][3]);
        KT_OK(kern_blas_create(&b));
        for (size_t i = 0; i < N_OF(blas_shapes); i++)
                test_blas(b, blas_shapes[i][0], blas_shapes[i][1], blas_shapes[i][2]);
        for (size_t i = 0; i < N_OF(grouped_shapes); i++) {
                const uint32_t *g = grouped_shapes[i];
                test_grouped(g[0], g[1], g[2], g[3], g[4], (int) g[5], (int) g[6]);
        }
        test_geglu(1, 2112);
        test_geglu(37, 704);
        test_geglu(5, 24);

        /* 26B-A4B shapes: sliding qkv, o_proj, dense gate|up and down at one row; qkv at 8 rows through both
         * kernels and through cuBLASLt at 1 and 256; the experts' gate|up at 1, 8, 64, 256 tokens */
        static const struct {
                const char *what;
                int which;
                uint32_t n, k, m, tokens;
        } timed[] = {
                {"mma qkv", 0, 8192, 2816, 1, 0},
                {"mma o_proj", 0, 2816, 4096, 1, 0},
                {"mma dense gate_up", 0, 4224, 2816, 1, 0},
                {"mma dense down", 0, 2816, 2112, 1, 0},
                {"mma qkv", 0, 8192, 2816, 8, 0},
                {"cublaslt qkv", 1, 8192, 2816, 8, 0},
                {"cublaslt qkv", 1, 8192, 2816, 1, 0},
                {"cublaslt qkv", 1, 8192, 2816, 256, 0},
                {"grouped experts gate_up", 2, 1408, 2816, 0, 1},
                {"grouped experts gate_up", 2, 1408, 2816, 0, 8},
                {"grouped experts gate_up", 2, 1408, 2816, 0, 64},
                {"grouped experts gate_up", 2, 1408, 2816, 0, 256},
        };
        for (size_t i = 0; i < N_OF(timed); i++)
                time_one(timed[i].what, timed[i].which, b, timed[i].n, timed[i].k, timed[i].m, timed[i].tokens, 8,
                         128);
        kern_blas_destroy(b);
        return kt_finish();
}
