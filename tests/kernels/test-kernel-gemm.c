/* SPDX-License-Identifier: Apache-2.0 */
/*
 * FP8 linear layers against a double-precision host reference on the same FP8 inputs.
 * Tolerance: the products are exact in FP32 and the sums differ only in order, so the error is the final
 * BF16 rounding (relative 2^-9 per element, ~1.5e-3 RMS after scaling): 4e-3. FP32 outputs: 1e-5.
 */
#include "kt.h"

struct lin {
        uint32_t n, k, m, e;
        uint8_t *w, *x;
        float *ws, *xs;
        uint8_t *dw, *dx;
        float *dws, *dxs;
};

static void lin_make(struct lin *L, uint32_t n, uint32_t k, uint32_t m, uint32_t experts) {
        L->n = n, L->k = k, L->m = m, L->e = experts;
        size_t wn = (size_t) experts * n * k, xn = (size_t) m * k;
        L->w = malloc(wn);
        L->x = malloc(xn);
        L->ws = malloc(sizeof(float) * experts * n);
        L->xs = malloc(sizeof(float) * m);
        for (size_t i = 0; i < wn; i++)
                L->w[i] = kt_rand_e4m3();
        for (size_t i = 0; i < xn; i++)
                L->x[i] = kt_rand_e4m3();
        for (size_t i = 0; i < (size_t) experts * n; i++)
                L->ws[i] = (kt_uniform() + 1.5f) * 1e-3f;
        for (uint32_t i = 0; i < m; i++)
                L->xs[i] = (kt_uniform() + 1.5f) * 1e-2f;
        L->dw = kt_up(L->w, wn);
        L->dx = kt_up(L->x, xn);
        L->dws = kt_up(L->ws, sizeof(float) * experts * n);
        L->dxs = kt_up(L->xs, sizeof(float) * m);
}

static void lin_free(struct lin *L) {
        cudaFree(L->dw), cudaFree(L->dx), cudaFree(L->dws), cudaFree(L->dxs);
        free(L->w), free(L->x), free(L->ws), free(L->xs);
}

static double lin_ref(const struct lin *L, uint32_t e, uint32_t xrow, uint32_t n) {
        const uint8_t *w = L->w + ((size_t) e * L->n + n) * L->k, *x = L->x + (size_t) xrow * L->k;
        double a = 0;
        for (uint32_t i = 0; i < L->k; i++)
                a += (double) kt_e4m3_to_f32(w[i]) * kt_e4m3_to_f32(x[i]);
        return a * L->ws[(size_t) e * L->n + n] * L->xs[xrow];
}

static void test_small(uint32_t n, uint32_t k, uint32_t m, int f32_cap) {
        struct lin L;
        struct kt_err e = {0};
        char name[96];
        float cap = 30.0f;

        lin_make(&L, n, k, m, 1);
        size_t out_bytes = (size_t) m * n * (f32_cap ? 4 : 2);
        void *dy = kt_dev(out_bytes);
        KT_OK(kern_fp8_linear_small(L.dw, L.dws, n, k, L.dx, L.dxs, m, dy,
                                    f32_cap ? KERN_OUT_F32_SOFTCAP : KERN_OUT_BF16, f32_cap ? cap : 0.0f, 0));
        void *y = kt_down(dy, out_bytes);
        for (uint32_t r = 0; r < m; r++)
                for (uint32_t c = 0; c < n; c++) {
                        double ref = lin_ref(&L, 0, r, c);
                        size_t off = (size_t) r * n + c;
                        if (f32_cap)
                                kt_acc(&e, ((float *) y)[off], cap * tanh(ref / cap));
                        else
                                kt_acc(&e, kt_bf16_to_f32(((uint16_t *) y)[off]), ref);
                }
        snprintf(name, sizeof(name), "fp8_linear_small n=%u k=%u m=%u%s", n, k, m, f32_cap ? " f32+softcap" : "");
        kt_check(name, &e, f32_cap ? 1e-5 : 4e-3);
        cudaFree(dy);
        free(y);
        lin_free(&L);
}

static void test_blas(struct kern_blas *b, uint32_t n, uint32_t k, uint32_t m) {
        struct lin L;
        struct kt_err e = {0};
        char name[96];

        lin_make(&L, n, k, m, 1);
        uint16_t *dy = kt_dev((size_t) m * n * 2);
        if (kern_blas_fp8_linear(b, L.dw, L.dws, n, k, L.dx, L.dxs, m, dy, 0) < 0) {
                snprintf(name, sizeof(name), "cublasLt fp8 n=%u k=%u m=%u: %s", n, k, m, kern_blas_last_error(b));
                kt_expect(name, 0);
                cudaFree(dy);
                lin_free(&L);
                return;
        }
        uint16_t *y = kt_down(dy, (size_t) m * n * 2);
        for (uint32_t r = 0; r < m; r++)
                for (uint32_t c = 0; c < n; c++)
                        kt_acc(&e, kt_bf16_to_f32(y[(size_t) r * n + c]), lin_ref(&L, 0, r, c));
        snprintf(name, sizeof(name), "cublasLt fp8 outer-vec n=%u k=%u m=%u", n, k, m);
        kt_check(name, &e, 4e-3);
        cudaFree(dy);
        free(y);
        lin_free(&L);
}

static void test_blas_bf16(struct kern_blas *b, uint32_t n, uint32_t k, uint32_t m) {
        uint16_t *w = malloc(2 * (size_t) n * k), *x = malloc(2 * (size_t) m * k);
        struct kt_err e = {0};
        for (size_t i = 0; i < (size_t) n * k; i++)
                w[i] = kt_f32_to_bf16(kt_uniform());
        for (size_t i = 0; i < (size_t) m * k; i++)
                x[i] = kt_f32_to_bf16(kt_uniform());
        uint16_t *dw = kt_up(w, 2 * (size_t) n * k), *dx = kt_up(x, 2 * (size_t) m * k);
        float *dy = kt_dev(4 * (size_t) m * n);
        KT_OK(kern_blas_bf16_linear_f32(b, dw, n, k, dx, m, dy, 0));
        KT_OK(kern_softcap(NULL, dy, (size_t) m * n, 30.0f, 0));
        float *y = kt_down(dy, 4 * (size_t) m * n);
        for (uint32_t r = 0; r < m; r++)
                for (uint32_t c = 0; c < n; c++) {
                        double a = 0;
                        for (uint32_t i = 0; i < k; i++)
                                a += (double) kt_bf16_to_f32(w[(size_t) c * k + i]) *
                                     kt_bf16_to_f32(x[(size_t) r * k + i]);
                        kt_acc(&e, y[(size_t) r * n + c], 30.0 * tanh(a / 30.0));
                }
        kt_check("cublasLt bf16 -> f32 + softcap", &e, 1e-5);
        cudaFree(dw), cudaFree(dx), cudaFree(dy);
        free(w), free(x), free(y);
}

/* tokens x top_k pairs routed to experts (skewed when `skew`), grouped GEMM over the pairs */
static void test_grouped(uint32_t tokens, uint32_t top_k, uint32_t experts, uint32_t n, uint32_t k, int per_pair,
                         int skew) {
        uint32_t pairs = tokens * top_k;
        struct lin L;
        struct kt_err e = {0};
        char name[128];
        int32_t *idx = malloc(4 * pairs);

        lin_make(&L, n, k, per_pair ? pairs : tokens, experts);
        for (uint32_t t = 0; t < tokens; t++)
                for (uint32_t j = 0; j < top_k; j++) {
                        int32_t ex;
                        int dup;
                        do {
                                ex = (int32_t) (kt_u32() % (skew && (kt_u32() & 1) ? top_k + 1 : experts));
                                dup = 0;
                                for (uint32_t j2 = 0; j2 < j; j2++)
                                        dup |= idx[t * top_k + j2] == ex;
                        } while (dup);
                        idx[t * top_k + j] = ex;
                }
        uint32_t max_groups = kern_moe_max_groups(pairs, experts);
        int32_t *didx = kt_up(idx, 4 * pairs), *drows = kt_dev(4 * pairs), *dng = kt_dev(4);
        struct kern_gemm_group *dgroups = kt_dev(sizeof(struct kern_gemm_group) * max_groups);
        uint16_t *dy = kt_dev(2 * (size_t) pairs * n);
        KT_OK(kern_moe_route(didx, pairs, experts, drows, dgroups, dng, 0));
        KT_OK(kern_fp8_linear_grouped(L.dw, L.dws, n, k, L.dx, L.dxs, per_pair ? 1 : top_k, drows, dgroups, dng,
                                      max_groups, tokens < 64 ? tokens : 64, dy, 0));
        uint16_t *y = kt_down(dy, 2 * (size_t) pairs * n);
        int32_t *rows = kt_down(drows, 4 * pairs), *ng = kt_down(dng, 4);
        struct kern_gemm_group *groups = kt_down(dgroups, sizeof(struct kern_gemm_group) * max_groups);
        int perm = 1, grp = *ng >= 1 && (uint32_t) *ng <= max_groups;
        char *seen = calloc(pairs, 1);
        for (uint32_t i = 0; i < pairs; i++) {
                if (rows[i] < 0 || (uint32_t) rows[i] >= pairs || seen[rows[i]])
                        perm = 0;
                else
                        seen[rows[i]] = 1;
        }
        uint32_t covered = 0;
        for (int32_t g = 0; grp && g < *ng; g++) {
                if (groups[g].count < 1 || groups[g].count > 64)
                        grp = 0;
                for (int32_t i = groups[g].start; perm && grp && i < groups[g].start + groups[g].count; i++)
                        grp &= idx[rows[i]] == groups[g].expert;
                covered += groups[g].count;
        }
        snprintf(name, sizeof(name), "moe_route tokens=%u top_k=%u experts=%u: permutation, groups", tokens,
                 top_k, experts);
        kt_expect(name, perm && grp && covered == pairs);
        for (uint32_t p = 0; p < pairs; p++)
                for (uint32_t c = 0; c < n; c++)
                        kt_acc(&e, kt_bf16_to_f32(y[(size_t) p * n + c]),
                               lin_ref(&L, idx[p], per_pair ? p : p / top_k, c));
        snprintf(name, sizeof(name), "fp8_linear_grouped tokens=%u top_k=%u experts=%u n=%u k=%u%s", tokens,
                 top_k, experts, n, k, per_pair ? " per-pair x" : "");
        kt_check(name, &e, 4e-3);
        cudaFree(didx), cudaFree(drows), cudaFree(dng), cudaFree(dgroups), cudaFree(dy);
        free(idx), free(y), free(rows), free(ng), free(groups), free(seen);
        lin_free(&L);
}

int main(void) {
        struct kern_blas *b;

        kt_require_gpu();
        kt_seed(2);
        test_small(4096, 2816, 1, 0);
        test_small(2816, 4096, 5, 0);
        test_small(1408, 2816, 13, 0);
        test_small(2816, 704, 29, 0);
        test_small(1000, 2112, 64, 0);
        test_small(520, 2816, 150, 0);
        test_small(100, 48, 3, 0);              /* n not a multiple of 16, k not of 64 */
        test_small(3000, 256, 3, 1);
        test_small(200, 100, 3, 0);             /* k not a multiple of 16: unaligned rows */
        test_small(512, 100, 40, 1);
        test_small(320, 100, 8, 0);             /* tiny-b shapes */
        test_small(100, 160, 8, 0);
        test_small(160, 100, 33, 0);
        test_small(1024, 100, 33, 1);
        KT_OK(kern_blas_create(&b));
        test_blas(b, 4096, 2816, 1);
        test_blas(b, 2816, 4096, 37);
        test_blas(b, 1024, 2816, 300);
        test_blas(b, 2816, 704, 129);
        test_blas_bf16(b, 1000, 256, 7);
        kern_blas_destroy(b);
        test_grouped(1, 8, 128, 1408, 2816, 0, 0);
        test_grouped(1, 8, 128, 2816, 704, 1, 0);
        test_grouped(37, 8, 128, 1408, 256, 0, 0);
        test_grouped(5, 8, 128, 1408, 2816, 0, 0);     /* few tokens: narrow accumulators */
        test_grouped(12, 8, 16, 256, 704, 1, 1);
        test_grouped(300, 2, 8, 96, 128, 0, 1);        /* > 64 pairs per expert: several groups */
        test_grouped(300, 2, 8, 64, 96, 1, 1);
        test_grouped(7, 4, 16, 48, 100, 0, 0);  /* unaligned k */
        test_grouped(7, 4, 16, 100, 24, 1, 0);
        return kt_finish();
}
