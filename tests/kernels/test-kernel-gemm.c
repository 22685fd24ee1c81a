/* SPDX-License-Identifier: Apache-2.0 */
/*
 * FP8 linear layers against a double-precision host reference on the same FP8 inputs.
 * Tolerance: the products are exact in FP32 and the sums differ only in order, so the error is the final
 * BF16 rounding (relative 2^-9 per element, ~1.5e-3 RMS after scaling): 4e-3. FP32 outputs: 1e-5.
 * The tiled (wgmma) grouped kernel lands a little higher (1.9e-3 against 1.7e-3 at k = 2816, measured on
 * H100): Hopper's FP8 tensor cores add with fewer mantissa bits than FP32 inside a K chain; still 4e-3.
 */
#include "kt.h"
#include "kernels/gemm-grouped.h"

/* e4m3 -> float for the references (the MoE shapes need billions of products) */
static float e4m3_lut[256];

static void e4m3_lut_init(void) {
        for (int i = 0; i < 256; i++)
                e4m3_lut[i] = kt_e4m3_to_f32((uint8_t) i);
}

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
                a += (double) e4m3_lut[w[i]] * e4m3_lut[x[i]];
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

/* The grouped kernels compared: the streaming mma.sync kernel and the tiled wgmma kernel's variants
 * (gemm_grouped_variant 1..3, gemm-grouped.h). */
#define N_GROUPED_KERNELS 4

static int default_variant;

static const char *kernel_name(int kernel) {
        static const char *names[N_GROUPED_KERNELS] = {"mma.sync", "tiled-w128-k128", "tiled-w256-k256 (default)",
                                                       "tiled-w256-k128"};
        return names[kernel];
}

static void kernel_select(int kernel) {
        kern_grouped_select = kernel == 0 ? KERN_GROUPED_MMA : KERN_GROUPED_TILED;
        gemm_grouped_variant = kernel == 0 ? default_variant : kernel;
}

static void kernel_select_auto(void) {
        kern_grouped_select = KERN_GROUPED_AUTO;
        gemm_grouped_variant = default_variant;
}

/* Route pairs (idx[p] = expert of pair p) and check the routing: a permutation, groups of one expert. */
static int route_and_check(const int32_t *idx, uint32_t pairs, uint32_t experts, int32_t *drows,
                           struct kern_gemm_group *dgroups, int32_t *dng, uint32_t max_groups) {
        int32_t *didx = kt_up(idx, 4 * (size_t) pairs);
        KT_OK(kern_moe_route(didx, pairs, experts, drows, dgroups, dng, 0));
        int32_t *rows = kt_down(drows, 4 * (size_t) pairs), *ng = kt_down(dng, 4);
        struct kern_gemm_group *groups = kt_down(dgroups, sizeof(struct kern_gemm_group) * max_groups);
        int perm = 1, grp = *ng >= 0 && (uint32_t) *ng <= max_groups;
        char *seen = calloc(pairs ? pairs : 1, 1);
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
        cudaFree(didx);
        free(rows), free(ng), free(groups), free(seen);
        return perm && grp && covered == pairs;
}

/* Grouped GEMM over routed pairs on both kernels against the reference. x row of pair p: p / x_row_div. */
static void check_grouped(const char *what, struct lin *L, const int32_t *idx, uint32_t pairs, uint32_t x_row_div,
                          uint32_t max_rows) {
        uint32_t max_groups = kern_moe_max_groups(pairs, L->e), n = L->n;
        int32_t *drows = kt_dev(4 * (size_t) pairs), *dng = kt_dev(4);
        struct kern_gemm_group *dgroups = kt_dev(sizeof(struct kern_gemm_group) * max_groups);
        char name[192];
        double *ref = malloc(sizeof(double) * (size_t) pairs * n);

        snprintf(name, sizeof(name), "moe_route %s: permutation, groups", what);
        kt_expect(name, route_and_check(idx, pairs, L->e, drows, dgroups, dng, max_groups));
        for (uint32_t p = 0; p < pairs; p++)
                for (uint32_t c = 0; c < n; c++)
                        ref[(size_t) p * n + c] = lin_ref(L, idx[p], p / x_row_div, c);
        for (int kernel = 0; kernel < N_GROUPED_KERNELS; kernel++) {
                struct kt_err e = {0};
                if (kernel > 0 && L->k % 16 != 0)
                        continue;
                uint16_t *dy = kt_dev(2 * (size_t) pairs * n);
                kernel_select(kernel);
                KT_OK(kern_fp8_linear_grouped(L->dw, L->dws, n, L->k, L->dx, L->dxs, x_row_div, drows, dgroups, dng,
                                              max_groups, max_rows, dy, 0));
                kernel_select_auto();
                uint16_t *y = kt_down(dy, 2 * (size_t) pairs * n);
                int shown = 0;
                for (size_t i = 0; i < (size_t) pairs * n; i++) {
                        double out = kt_bf16_to_f32(y[i]);
                        if ((!isfinite(out) || fabs(out - ref[i]) > 0.02 * fabs(ref[i]) + 0.02) && shown < 4) {
                                printf("# %s %s: pair %zu col %zu: got %g want %g\n", what, kernel_name(kernel),
                                       i / n, i % n, out, ref[i]);
                                shown++;
                        }
                        kt_acc(&e, out, ref[i]);
                }
                snprintf(name, sizeof(name), "fp8_linear_grouped %s [%s]", what, kernel_name(kernel));
                kt_check(name, &e, 4e-3);
                cudaFree(dy);
                free(y);
        }
        cudaFree(drows), cudaFree(dng), cudaFree(dgroups);
        free(ref);
}

/* tokens x top_k pairs routed to experts (skewed when `skew`), grouped GEMM over the pairs */
static void test_grouped(uint32_t tokens, uint32_t top_k, uint32_t experts, uint32_t n, uint32_t k, int per_pair,
                         int skew) {
        uint32_t pairs = tokens * top_k;
        struct lin L;
        char what[128];
        int32_t *idx = malloc(4 * pairs);

        lin_make(&L, n, k, per_pair ? pairs : tokens, experts);
        kt_route(idx, tokens, top_k, experts, skew);
        snprintf(what, sizeof(what), "tokens=%u top_k=%u experts=%u n=%u k=%u%s", tokens, top_k, experts, n, k,
                 per_pair ? " per-pair x" : "");
        check_grouped(what, &L, idx, pairs, per_pair ? 1 : top_k, tokens < 64 ? tokens : 64);
        free(idx);
        lin_free(&L);
}

/* Layout probe: identity weights (n_out = k = 256) with x[t][k] = (k % 16) + 1 for even t and 16 - k % 16
 * for odd t, so y[t][n] = x[t][n] names the K element each output read. Printed in detail on failure: the
 * pattern of wrong values points at the swizzle, the descriptor or the fragment layout. */
static void test_grouped_probe(int kernel, uint32_t tokens) {
        const uint32_t n = 256, k = 256, pairs = tokens;
        uint8_t *w = calloc((size_t) n * k, 1), *x = malloc((size_t) tokens * k);
        float *ws = malloc(sizeof(float) * n), *xs = malloc(sizeof(float) * tokens);
        int32_t *idx = calloc(pairs, sizeof(int32_t));
        char name[128];
        int bad = 0;

        for (uint32_t i = 0; i < n; i++) {
                w[(size_t) i * k + i] = 0x38;   /* e4m3 1.0 */
                ws[i] = 1.0f;
        }
        for (uint32_t t = 0; t < tokens; t++) {
                xs[t] = 1.0f;
                for (uint32_t i = 0; i < k; i++) {
                        uint32_t v = t % 2 ? 16 - i % 16 : i % 16 + 1;
                        /* e4m3 of the integer v in 1..16 */
                        int e = 0;
                        while ((v >> (e + 1)) != 0)
                                e++;
                        uint32_t mant = ((v << 3) >> e) & 7;
                        x[(size_t) t * k + i] = (uint8_t) (((e + 7) << 3) | mant);
                }
        }
        uint32_t max_groups = kern_moe_max_groups(pairs, 1);
        uint8_t *dw = kt_up(w, (size_t) n * k), *dx = kt_up(x, (size_t) tokens * k);
        float *dws = kt_up(ws, sizeof(float) * n), *dxs = kt_up(xs, sizeof(float) * tokens);
        int32_t *didx = kt_up(idx, 4 * (size_t) pairs), *drows = kt_dev(4 * (size_t) pairs), *dng = kt_dev(4);
        struct kern_gemm_group *dgroups = kt_dev(sizeof(struct kern_gemm_group) * max_groups);
        uint16_t *dy = kt_dev(2 * (size_t) pairs * n);
        KT_OK(kern_moe_route(didx, pairs, 1, drows, dgroups, dng, 0));
        kernel_select(kernel);
        KT_OK(kern_fp8_linear_grouped(dw, dws, n, k, dx, dxs, 1, drows, dgroups, dng, max_groups, 64, dy, 0));
        kernel_select_auto();
        uint16_t *y = kt_down(dy, 2 * (size_t) pairs * n);
        int32_t *rows = kt_down(drows, 4 * (size_t) pairs);
        for (uint32_t p = 0; p < pairs; p++) {
                uint32_t t = p;         /* one expert, x_row_div 1: pair p reads x row p */
                for (uint32_t c = 0; c < n; c++) {
                        float want = (float) (t % 2 ? 16 - c % 16 : c % 16 + 1);
                        float got = kt_bf16_to_f32(y[(size_t) p * n + c]);
                        if (got != want) {
                                if (bad < 24)
                                        printf("# probe %s tokens=%u: y[%u][%u] = %g, want %g\n", kernel_name(kernel),
                                               tokens, p, c, got, want);
                                bad++;
                        }
                }
        }
        snprintf(name, sizeof(name), "grouped layout probe [%s] tokens=%u: %d of %u wrong", kernel_name(kernel),
                 tokens, bad, pairs * n);
        kt_expect(name, bad == 0);
        cudaFree(dw), cudaFree(dx), cudaFree(dws), cudaFree(dxs), cudaFree(didx), cudaFree(drows), cudaFree(dng);
        cudaFree(dgroups), cudaFree(dy);
        free(w), free(x), free(ws), free(xs), free(idx), free(y), free(rows);
}

/* Ragged expert sizes given explicitly (empty experts, single rows, tile boundaries, many rows). */
static void test_grouped_counts(const uint32_t *counts, uint32_t experts, uint32_t n, uint32_t k, uint32_t x_row_div) {
        uint32_t pairs = 0;
        char what[160];
        int len;

        for (uint32_t e = 0; e < experts; e++)
                pairs += counts[e];
        int32_t *idx = malloc(4 * (size_t) pairs);
        for (uint32_t e = 0, p = 0; e < experts; e++)
                for (uint32_t i = 0; i < counts[e]; i++)
                        idx[p++] = (int32_t) e;
        for (uint32_t i = pairs; i > 1; i--) {          /* shuffle: rows of an expert land anywhere */
                uint32_t j = kt_u32() % i;
                int32_t t = idx[i - 1];
                idx[i - 1] = idx[j];
                idx[j] = t;
        }
        struct lin L;
        lin_make(&L, n, k, (pairs + x_row_div - 1) / x_row_div, experts);
        len = snprintf(what, sizeof(what), "n=%u k=%u x_row_div=%u counts", n, k, x_row_div);
        for (uint32_t e = 0; e < experts && len < (int) sizeof(what) - 8; e++)
                len += snprintf(what + len, sizeof(what) - len, "%s%u", e ? "," : " ", counts[e]);
        check_grouped(what, &L, idx, pairs, x_row_div, 64);
        free(idx);
        lin_free(&L);
}

/* ---- timings (argument --bench): RESULT lines, medians of cudaEvent-timed calls after warm-up ---- */

#define BENCH_PAT (16u << 20)
#define MOE_EXPERTS 128
#define MOE_TOPK 8
#define MOE_H 2816
#define MOE_I 704

static uint8_t *bench_pat;

/* device buffer filled with the random e4m3 pattern repeated (byte i = bench_pat[i % BENCH_PAT]) */
static void *bench_fill(size_t bytes) {
        uint8_t *d = kt_dev(bytes);
        for (size_t off = 0; off < bytes; off += BENCH_PAT)
                KT_CUDA(cudaMemcpy(d + off, bench_pat, bytes - off < BENCH_PAT ? bytes - off : BENCH_PAT,
                                   cudaMemcpyHostToDevice));
        return d;
}

static float *bench_scales(size_t n, float base, float **host) {
        float *h = malloc(sizeof(float) * n);
        for (size_t i = 0; i < n; i++)
                h[i] = (kt_uniform() + 1.5f) * base;
        float *d = kt_up(h, sizeof(float) * n);
        *host = h;
        return d;
}

static int cmp_float(const void *a, const void *b) {
        float x = *(const float *) a, y = *(const float *) b;
        return x < y ? -1 : x > y;
}

static float median(float *v, int n) {
        qsort(v, (size_t) n, sizeof(float), cmp_float);
        return n % 2 ? v[n / 2] : 0.5f * (v[n / 2 - 1] + v[n / 2]);
}

/* random distinct top-k experts per token */
static void make_routing(int32_t *idx, uint32_t tokens) {
        for (uint32_t t = 0; t < tokens; t++)
                for (uint32_t j = 0; j < MOE_TOPK; j++) {
                        int32_t ex;
                        int dup;
                        do {
                                ex = (int32_t) (kt_u32() % MOE_EXPERTS);
                                dup = 0;
                                for (uint32_t j2 = 0; j2 < j; j2++)
                                        dup |= idx[t * MOE_TOPK + j2] == ex;
                        } while (dup);
                        idx[t * MOE_TOPK + j] = ex;
                }
}

struct moe_set {
        int32_t *rows, *ng;
        struct kern_gemm_group *groups;
        int32_t *idx;                   /* host copy of the routing */
        uint32_t touched;
};

struct moe_bench {
        uint8_t *w_gu, *w_dn, *x, *act;
        float *s_gu, *s_dn, *xs, *as;
        float *h_s_gu, *h_s_dn, *h_xs, *h_as;
        uint8_t *h_x, *h_act;
};

/* one grouped call: gate_up (which = 0) or down (1) for routing set S into y */
static int moe_call(const struct moe_bench *B, const struct moe_set *S, uint32_t pairs, int which, uint16_t *y) {
        uint32_t max_groups = kern_moe_max_groups(pairs, MOE_EXPERTS), tokens = pairs / MOE_TOPK;
        uint32_t max_rows = tokens < 64 ? tokens : 64;
        if (which == 0)
                return kern_fp8_linear_grouped(B->w_gu, B->s_gu, 2 * MOE_I, MOE_H, B->x, B->xs, MOE_TOPK, S->rows,
                                               S->groups, S->ng, max_groups, max_rows, y, 0);
        return kern_fp8_linear_grouped(B->w_dn, B->s_dn, MOE_H, MOE_I, B->act, B->as, 1, S->rows, S->groups, S->ng,
                                       max_groups, max_rows, y, 0);
}

static double moe_ref(const struct moe_bench *B, const struct moe_set *S, int which, uint32_t p, uint32_t c) {
        uint32_t n = which ? MOE_H : 2 * MOE_I, k = which ? MOE_I : MOE_H, e = (uint32_t) S->idx[p];
        uint32_t xr = which ? p : p / MOE_TOPK;
        const uint8_t *x = (which ? B->h_act : B->h_x) + (size_t) xr * k;
        size_t w0 = ((size_t) e * n + c) * k;
        double a = 0;
        for (uint32_t i = 0; i < k; i++)
                a += (double) e4m3_lut[bench_pat[(w0 + i) % BENCH_PAT]] * e4m3_lut[x[i]];
        return a * (which ? B->h_s_dn : B->h_s_gu)[(size_t) e * n + c] * (which ? B->h_as : B->h_xs)[xr];
}

static void bench_moe(const char *label, uint32_t tokens, int n_sets, int reps) {
        uint32_t pairs = tokens * MOE_TOPK, max_groups = kern_moe_max_groups(pairs, MOE_EXPERTS);
        struct moe_set *sets = calloc((size_t) n_sets, sizeof(*sets));
        struct moe_bench B = {0};
        const uint32_t nmax = MOE_H, tmax = 8192;
        uint16_t *y[N_GROUPED_KERNELS];
        cudaEvent_t ev0, ev1;
        double step_ms[N_GROUPED_KERNELS] = {0};

        /* shared weights and activations: allocate once for the largest shape */
        B.w_gu = bench_fill((size_t) MOE_EXPERTS * 2 * MOE_I * MOE_H);
        B.w_dn = bench_fill((size_t) MOE_EXPERTS * MOE_H * MOE_I);
        B.s_gu = bench_scales((size_t) MOE_EXPERTS * 2 * MOE_I, 1e-3f, &B.h_s_gu);
        B.s_dn = bench_scales((size_t) MOE_EXPERTS * MOE_H, 1e-3f, &B.h_s_dn);
        B.h_x = malloc((size_t) tokens * MOE_H);
        B.h_act = malloc((size_t) pairs * MOE_I);
        for (size_t i = 0; i < (size_t) tokens * MOE_H; i++)
                B.h_x[i] = kt_rand_e4m3();
        for (size_t i = 0; i < (size_t) pairs * MOE_I; i++)
                B.h_act[i] = kt_rand_e4m3();
        B.x = kt_up(B.h_x, (size_t) tokens * MOE_H);
        B.act = kt_up(B.h_act, (size_t) pairs * MOE_I);
        B.xs = bench_scales(tokens, 1e-2f, &B.h_xs);
        B.as = bench_scales(pairs, 1e-2f, &B.h_as);
        (void) tmax;
        for (int i = 0; i < N_GROUPED_KERNELS; i++)
                y[i] = kt_dev((size_t) pairs * nmax * 2);
        for (int s = 0; s < n_sets; s++) {
                struct moe_set *S = &sets[s];
                char seen[MOE_EXPERTS] = {0};
                S->idx = malloc(4 * (size_t) pairs);
                make_routing(S->idx, tokens);
                for (uint32_t p = 0; p < pairs; p++)
                        seen[S->idx[p]] = 1;
                for (int e = 0; e < MOE_EXPERTS; e++)
                        S->touched += seen[e];
                S->rows = kt_dev(4 * (size_t) pairs);
                S->ng = kt_dev(4);
                S->groups = kt_dev(sizeof(struct kern_gemm_group) * max_groups);
                int32_t *didx = kt_up(S->idx, 4 * (size_t) pairs);
                KT_OK(kern_moe_route(didx, pairs, MOE_EXPERTS, S->rows, S->groups, S->ng, 0));
                KT_CUDA(cudaDeviceSynchronize());
                cudaFree(didx);
        }
        KT_CUDA(cudaEventCreate(&ev0));
        KT_CUDA(cudaEventCreate(&ev1));
        for (int which = 0; which < 2; which++) {
                uint32_t n = which ? MOE_H : 2 * MOE_I, k = which ? MOE_I : MOE_H;
                for (int kernel = 0; kernel < N_GROUPED_KERNELS; kernel++) {
                        float *ms = malloc(sizeof(float) * (size_t) reps);
                        kernel_select(kernel);
                        for (int r = 0; r < 3; r++)
                                KT_OK(moe_call(&B, &sets[r % n_sets], pairs, which, y[kernel]));
                        KT_CUDA(cudaDeviceSynchronize());
                        for (int r = 0; r < reps; r++) {
                                KT_CUDA(cudaEventRecord(ev0, 0));
                                KT_OK(moe_call(&B, &sets[r % n_sets], pairs, which, y[kernel]));
                                KT_CUDA(cudaEventRecord(ev1, 0));
                                KT_CUDA(cudaEventSynchronize(ev1));
                                KT_CUDA(cudaEventElapsedTime(&ms[r], ev0, ev1));
                        }
                        KT_CUDA(cudaGetLastError());
                        kernel_select_auto();
                        float med = median(ms, reps);
                        double flop = 2.0 * pairs * n * k;
                        double bytes = (double) sets[0].touched * n * k + (double) (which ? pairs : tokens) * k +
                                       (double) pairs * n * 2;
                        printf("RESULT moe_%s %s pairs=%u kernel=%s median_ms=%.4f min_ms=%.4f tflops=%.1f tbs=%.2f "
                               "touched_experts=%u\n",
                               which ? "down" : "gate_up", label, pairs, kernel_name(kernel), med, ms[0],
                               flop / med * 1e-9, bytes / med * 1e-9, sets[0].touched);
                        step_ms[kernel] += 30.0 * med;
                        free(ms);
                }
                /* the last call of each kernel ran routing set (reps - 1) % n_sets: compare the tiled kernels
                 * with the mma.sync one in full and a sample of pairs against the double reference */
                const struct moe_set *S = &sets[(reps - 1) % n_sets];
                uint16_t *ya = kt_down(y[0], (size_t) pairs * n * 2);
                uint32_t stride = pairs > 64 ? pairs / 61 : 1;
                char name[160];
                for (int kernel = 1; kernel < N_GROUPED_KERNELS; kernel++) {
                        uint16_t *yb = kt_down(y[kernel], (size_t) pairs * n * 2);
                        struct kt_err e_ab = {0}, e_ref = {0};
                        for (size_t i = 0; i < (size_t) pairs * n; i++)
                                kt_acc(&e_ab, kt_bf16_to_f32(yb[i]), kt_bf16_to_f32(ya[i]));
                        for (uint32_t p = 0; p < pairs; p += stride)
                                for (uint32_t c = 0; c < n; c++)
                                        kt_acc(&e_ref, kt_bf16_to_f32(yb[(size_t) p * n + c]),
                                               moe_ref(&B, S, which, p, c));
                        /* two BF16 roundings of the same exact sum: twice the single-kernel tolerance */
                        snprintf(name, sizeof(name), "moe %s %s: %s vs mma.sync, all %u pairs",
                                 which ? "down" : "gate_up", label, kernel_name(kernel), pairs);
                        kt_check(name, &e_ab, 8e-3);
                        snprintf(name, sizeof(name), "moe %s %s: %s vs reference, sampled pairs",
                                 which ? "down" : "gate_up", label, kernel_name(kernel));
                        kt_check(name, &e_ref, 4e-3);
                        free(yb);
                }
                free(ya);
        }
        for (int kernel = 0; kernel < N_GROUPED_KERNELS; kernel++)
                printf("RESULT moe_step30 %s pairs=%u gate_up+down x30 layers kernel=%s ms=%.2f\n", label, pairs,
                       kernel_name(kernel), step_ms[kernel]);
        cudaEventDestroy(ev0), cudaEventDestroy(ev1);
        for (int s = 0; s < n_sets; s++) {
                cudaFree(sets[s].rows), cudaFree(sets[s].ng), cudaFree(sets[s].groups);
                free(sets[s].idx);
        }
        free(sets);
        for (int i = 0; i < N_GROUPED_KERNELS; i++)
                cudaFree(y[i]);
        cudaFree(B.w_gu), cudaFree(B.w_dn), cudaFree(B.s_gu), cudaFree(B.s_dn), cudaFree(B.x), cudaFree(B.act);
        cudaFree(B.xs), cudaFree(B.as);
        free(B.h_s_gu), free(B.h_s_dn), free(B.h_xs), free(B.h_as), free(B.h_x), free(B.h_act);
}

/* dense linears at prefill size through cuBLASLt (FP8 outer-vector scales) */
static void bench_dense(struct kern_blas *b, const char *label, uint32_t n, uint32_t k, uint32_t m) {
        uint8_t *w = bench_fill((size_t) n * k), *x = bench_fill((size_t) m * k);
        float *hs1, *hs2, *ws = bench_scales(n, 1e-3f, &hs1), *xs = bench_scales(m, 1e-2f, &hs2);
        uint16_t *y = kt_dev((size_t) m * n * 2);
        cudaEvent_t ev0, ev1;
        float ms[20];

        KT_CUDA(cudaEventCreate(&ev0));
        KT_CUDA(cudaEventCreate(&ev1));
        for (int r = 0; r < 3; r++)
                KT_OK(kern_blas_fp8_linear(b, w, ws, n, k, x, xs, m, y, 0));
        for (int r = 0; r < 20; r++) {
                KT_CUDA(cudaEventRecord(ev0, 0));
                KT_OK(kern_blas_fp8_linear(b, w, ws, n, k, x, xs, m, y, 0));
                KT_CUDA(cudaEventRecord(ev1, 0));
                KT_CUDA(cudaEventSynchronize(ev1));
                KT_CUDA(cudaEventElapsedTime(&ms[r], ev0, ev1));
        }
        float med = median(ms, 20);
        printf("RESULT dense_cublaslt %s m=%u n=%u k=%u median_ms=%.4f tflops=%.1f tbs=%.2f\n", label, m, n, k, med,
               2.0 * m * n * k / med * 1e-9, ((double) n * k + (double) m * k + 2.0 * m * n) / med * 1e-9);
        cudaEventDestroy(ev0), cudaEventDestroy(ev1);
        cudaFree(w), cudaFree(x), cudaFree(ws), cudaFree(xs), cudaFree(y);
        free(hs1), free(hs2);
}

static void bench_all(void) {
        struct kern_blas *b;

        bench_pat = malloc(BENCH_PAT);
        for (size_t i = 0; i < BENCH_PAT; i++)
                bench_pat[i] = kt_rand_e4m3();
        bench_moe("single-stream", 1, 16, 48);
        bench_moe("64-streams", 64, 4, 40);
        bench_moe("prefill-8192", 8192, 1, 10);
        KT_OK(kern_blas_create(&b));
        static const struct {
                const char *name;
                uint32_t n, k;
        } dense[] = {
                {"qkv-sliding", 8192, 2816}, {"qkv-full", 9216, 2816}, {"o-sliding", 2816, 4096},
                {"o-full", 2816, 8192},      {"dense-gate_up", 4224, 2816}, {"dense-down", 2816, 2112},
        };
        for (size_t i = 0; i < sizeof(dense) / sizeof(dense[0]); i++) {
                bench_dense(b, dense[i].name, dense[i].n, dense[i].k, 8192);
                bench_dense(b, dense[i].name, dense[i].n, dense[i].k, 64);
        }
        kern_blas_destroy(b);
        free(bench_pat);
}

int main(int argc, char **argv) {
        struct kern_blas *b;

        kt_require_gpu();
        kt_seed(2);
        e4m3_lut_init();
        default_variant = gemm_grouped_variant;
        if (argc > 1 && strcmp(argv[1], "--bench") == 0) {
                bench_all();
                return kt_finish();
        }
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
        for (int kernel = 1; kernel < N_GROUPED_KERNELS; kernel++) {
                test_grouped_probe(kernel, 8);          /* small phase */
                test_grouped_probe(kernel, 200);        /* many-token phase */
        }
        test_grouped(1, 8, 128, 1408, 2816, 0, 0);
        test_grouped(1, 8, 128, 2816, 704, 1, 0);
        test_grouped(37, 8, 128, 1408, 256, 0, 0);
        test_grouped(5, 8, 128, 1408, 2816, 0, 0);     /* few tokens: narrow accumulators */
        test_grouped(12, 8, 16, 256, 704, 1, 1);
        test_grouped(300, 2, 8, 96, 128, 0, 1);        /* > 64 pairs per expert: several groups */
        test_grouped(300, 2, 8, 64, 96, 1, 1);
        test_grouped(7, 4, 16, 48, 100, 0, 0);  /* unaligned k */
        test_grouped(7, 4, 16, 100, 24, 1, 0);
        {
                static const uint32_t ragged[8] = {0, 1, 17, 600, 0, 33, 32, 129};
                static const uint32_t tiny[4] = {1, 0, 0, 2};
                test_grouped_counts(ragged, 8, 1408, 2816, 2);  /* MoE gate_up shape, x shared by pairs */
                test_grouped_counts(ragged, 8, 2816, 704, 1);   /* MoE down shape: k = 5.5 K tiles */
                test_grouped_counts(tiny, 4, 200, 48, 1);       /* n not a multiple of 128, k of 128 */
        }
        return kt_finish();
}
