/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The mid-M FP8 linear (kernels/gemm_midm.cu) against a double-precision host reference on the same FP8
 * inputs, then timed against cuBLASLt on the Gemma 4 26B-A4B dense shapes.
 *
 * Tolerance: e4m3 x e4m3 products are exact in FP32 and the sums differ from the reference only in order
 * (and in how the K split adds its partials), so the error is the final BF16 rounding (relative 2^-9 per
 * element, ~1.5e-3 RMS after scaling): 4e-3, as for the other FP8 linears. FP32 + softcap outputs: 2e-3,
 * because Hopper's FP8 tensor cores accumulate with fewer mantissa bits than FP32 (measured 3e-4..6e-4
 * relative on H100 for k = 2112..2816; the cuBLASLt head path rounds to BF16 first, ~1.5e-3).
 * Large shapes check a sample of output rows (first and last 64, the rest strided) against the host
 * reference so the test stays within seconds; every token of a sampled row is checked.
 *
 * Timing: cudaEvent around batches of 10 launches that cycle through enough weight copies to exceed L2
 * (decode reads each layer's weights once, cold), 3 warm-up batches, median of 11. "GB/s" counts weights +
 * activations + outputs once. The LM head shape times cuBLASLt plus the softcap pass it needs (the backend's
 * path) against the fused FP32 softcap output of the mid-M kernel.
 * Usage: test-kernel-midm [--no-bench]. Exit 77 without a GPU.
 */
#include <errno.h>

#include "kt.h"

#define BENCH_BATCH 10
#define BENCH_REPS 11
#define BENCH_MIN_BYTES (160u << 20)
#define SAMPLE_ROWS 256

static float e4m3_lut[256];

struct mcase {
        uint32_t n, k, m;
        uint8_t *w, *x;
        float *ws, *xs;
        uint8_t *dw, *dx;
        float *dws, *dxs;
};

/* Random finite e4m3 bytes, eight per step of a 64-bit xorshift: the LM head alone is 738 MB. */
static void fill_e4m3(uint8_t *p, size_t n) {
        uint64_t st = ((uint64_t) kt_u32() << 32 | kt_u32()) | 1;
        for (size_t i = 0; i < n; i += 8) {
                st ^= st << 13;
                st ^= st >> 7;
                st ^= st << 17;
                for (size_t j = 0; j < 8 && i + j < n; j++) {
                        uint8_t b = (uint8_t) (st >> (8 * j));
                        p[i + j] = (b & 0x7f) == 0x7f ? 0 : b;  /* no NaN */
                }
        }
}

static void case_make(struct mcase *C, uint32_t n, uint32_t k, uint32_t m) {
        C->n = n, C->k = k, C->m = m;
        C->w = malloc((size_t) n * k);
        C->x = malloc((size_t) m * k);
        C->ws = malloc(sizeof(float) * n);
        C->xs = malloc(sizeof(float) * m);
        fill_e4m3(C->w, (size_t) n * k);
        fill_e4m3(C->x, (size_t) m * k);
        for (uint32_t i = 0; i < n; i++)
                C->ws[i] = (kt_uniform() + 1.5f) * 1e-3f;
        for (uint32_t i = 0; i < m; i++)
                C->xs[i] = (kt_uniform() + 1.5f) * 1e-2f;
        C->dw = kt_up(C->w, (size_t) n * k);
        C->dx = kt_up(C->x, (size_t) m * k);
        C->dws = kt_up(C->ws, sizeof(float) * n);
        C->dxs = kt_up(C->xs, sizeof(float) * m);
}

static void case_free(struct mcase *C) {
        cudaFree(C->dw), cudaFree(C->dx), cudaFree(C->dws), cudaFree(C->dxs);
        free(C->w), free(C->x), free(C->ws), free(C->xs);
}

/* Output rows checked: all of them for small n, else the first and last 64 and a stride in between. */
static uint32_t sample_rows(uint32_t n, uint32_t *rows) {
        uint32_t c = 0;
        if (n <= SAMPLE_ROWS) {
                for (uint32_t i = 0; i < n; i++)
                        rows[c++] = i;
                return c;
        }
        for (uint32_t i = 0; i < 64; i++)
                rows[c++] = i;
        uint32_t stride = (n - 128) / (SAMPLE_ROWS - 128) + 1;
        for (uint32_t i = 64 + 37 % stride; i < n - 64 && c < SAMPLE_ROWS - 64; i += stride)
                rows[c++] = i;
        for (uint32_t i = n - 64; i < n; i++)
                rows[c++] = i;
        return c;
}

/* Check the kernel's output y against the reference on the sampled rows; prints the first mismatches. */
static void case_check(const struct mcase *C, const void *y, int f32_cap, float cap, const char *name) {
        uint32_t *rows = malloc(sizeof(uint32_t) * SAMPLE_ROWS);
        uint32_t nr = sample_rows(C->n, rows);
        double *xf = malloc(sizeof(double) * C->k);
        struct kt_err e = {0};
        double tol = f32_cap ? 2e-3 : 4e-3, max_abs = 0;
        int shown = 0;

        for (uint32_t t = 0; t < C->m; t++) {
                const uint8_t *xr = C->x + (size_t) t * C->k;
                for (uint32_t i = 0; i < C->k; i++)
                        xf[i] = e4m3_lut[xr[i]];
                for (uint32_t ri = 0; ri < nr; ri++) {
                        uint32_t r = rows[ri];
                        const uint8_t *wr = C->w + (size_t) r * C->k;
                        double a = 0;
                        for (uint32_t i = 0; i < C->k; i++)
                                a += xf[i] * e4m3_lut[wr[i]];
                        double ref = a * C->ws[r] * C->xs[t];
                        size_t off = (size_t) t * C->n + r;
                        double out;
                        if (f32_cap) {
                                ref = cap * tanh(ref / cap);
                                out = ((const float *) y)[off];
                        } else {
                                out = kt_bf16_to_f32(((const uint16_t *) y)[off]);
                        }
                        kt_acc(&e, out, ref);
                        double d = fabs(out - ref);
                        if (d > max_abs || !isfinite(out))
                                max_abs = isfinite(out) ? d : INFINITY;
                        /* a BF16 output is off by more than a few ulps only when something is wrong */
                        if ((!isfinite(out) || d > 1e-2 * fabs(ref) + 1e-3) && shown < 5) {
                                printf("# %s: token %u row %u got %.6g want %.6g\n", name, t, r, out, ref);
                                shown++;
                        }
                }
        }
        printf("# %s: %u of %u rows checked, max abs err %.3g\n", name, nr, C->n, max_abs);
        kt_check(name, &e, tol);
        free(rows);
        free(xf);
}

/* Run the kernel on the first m token rows of C (made for at least m) and check it. */
static void run_mid(const struct mcase *C, uint32_t m, int f32_cap, uint32_t cluster) {
        struct mcase V = *C;
        char name[128];
        const float cap = 30.0f;

        V.m = m;
        size_t out_bytes = (size_t) m * C->n * (f32_cap ? 4 : 2);
        void *dy = kt_dev(out_bytes);
        snprintf(name, sizeof(name), "fp8_linear_mid n=%u k=%u m=%u%s cluster=%s%u", C->n, C->k, m,
                 f32_cap ? " f32+softcap" : "", cluster ? "" : "auto", cluster);
        printf("# running %s\n", name);
        fflush(stdout);
        kern_fp8_linear_mid_cluster = cluster;
        int r = kern_fp8_linear_mid(C->dw, C->dws, C->n, C->k, C->dx, C->dxs, m, dy,
                                    f32_cap ? KERN_OUT_F32_SOFTCAP : KERN_OUT_BF16, f32_cap ? cap : 0.0f, 0);
        kern_fp8_linear_mid_cluster = 0;
        if (r < 0) {
                printf("# %s: launch returned %d (%s)\n", name, r, cudaGetErrorString(cudaGetLastError()));
                kt_expect(name, 0);
                cudaFree(dy);
                return;
        }
        void *y = kt_down(dy, out_bytes);
        case_check(&V, y, f32_cap, cap, name);
        cudaFree(dy);
        free(y);
}

static void test_mid(uint32_t n, uint32_t k, uint32_t m, int f32_cap, uint32_t cluster) {
        struct mcase C;

        case_make(&C, n, k, m);
        run_mid(&C, m, f32_cap, cluster);
        case_free(&C);
}

/* A token's output must not depend on how many other tokens share the launch (the backend's batching
 * invariants compare batched rows with single steps at 1e-3): bitwise equal rows for every row count. */
static void test_batch_invariance(uint32_t n, uint32_t k) {
        static const uint32_t ms[] = {9, 16, 17, 33, 64, 65, 100};
        struct mcase C;
        char name[128];

        case_make(&C, n, k, KERN_MID_M_MAX);
        uint16_t *dy = kt_dev(2 * (size_t) KERN_MID_M_MAX * n);
        KT_OK(kern_fp8_linear_mid(C.dw, C.dws, n, k, C.dx, C.dxs, KERN_MID_M_MAX, dy, KERN_OUT_BF16, 0.0f, 0));
        uint16_t *full = kt_down(dy, 2 * (size_t) KERN_MID_M_MAX * n);
        for (size_t i = 0; i < sizeof(ms) / sizeof(ms[0]); i++) {
                KT_CUDA(cudaMemset(dy, 0xff, 2 * (size_t) KERN_MID_M_MAX * n));
                KT_OK(kern_fp8_linear_mid(C.dw, C.dws, n, k, C.dx, C.dxs, ms[i], dy, KERN_OUT_BF16, 0.0f, 0));
                uint16_t *y = kt_down(dy, 2 * (size_t) ms[i] * n);
                size_t diff = 0;
                for (size_t j = 0; j < (size_t) ms[i] * n; j++)
                        diff += y[j] != full[j];
                snprintf(name, sizeof(name), "fp8_linear_mid n=%u k=%u: %u rows = first %u of %u (%zu differ)", n,
                         k, ms[i], ms[i], KERN_MID_M_MAX, diff);
                kt_expect(name, diff == 0);
                free(y);
        }
        free(full);
        cudaFree(dy);
        case_free(&C);
}

static void test_bad_args(void) {
        uint8_t *d = kt_dev(4096);
        kt_expect("fp8_linear_mid rejects k % 16 != 0",
                  kern_fp8_linear_mid(d, (float *) d, 16, 40, d, (float *) d, 9, d, KERN_OUT_BF16, 0, 0) ==
                          -EINVAL);
        kt_expect("fp8_linear_mid rejects m > KERN_MID_M_MAX",
                  kern_fp8_linear_mid(d, (float *) d, 16, 64, d, (float *) d, KERN_MID_M_MAX + 1, d,
                                      KERN_OUT_BF16, 0, 0) == -EINVAL);
        kt_expect("fp8_linear_mid m = 0 is a no-op",
                  kern_fp8_linear_mid(d, (float *) d, 16, 64, d, (float *) d, 0, d, KERN_OUT_BF16, 0, 0) == 0);
        cudaFree(d);
}

/* ---- timing ---- */

static int cmp_float(const void *a, const void *b) {
        float x = *(const float *) a, y = *(const float *) b;
        return (x > y) - (x < y);
}

struct bench {
        uint32_t n, k, m;
        int head;                       /* LM head: FP32 + softcap output */
        uint8_t **w;                    /* weight copies */
        uint32_t copies;
        float *ws, *xs, *yf;
        uint8_t *x;
        uint16_t *y;
        struct kern_blas *blas;
};

static int bench_run(struct bench *B, int which, uint32_t i) {
        uint8_t *w = B->w[i % B->copies];
        if (which == 0)
                return kern_fp8_linear_mid(w, B->ws, B->n, B->k, B->x, B->xs, B->m, B->head ? (void *) B->yf : B->y,
                                           B->head ? KERN_OUT_F32_SOFTCAP : KERN_OUT_BF16, B->head ? 30.0f : 0.0f,
                                           0);
        int r = kern_blas_fp8_linear(B->blas, w, B->ws, B->n, B->k, B->x, B->xs, B->m, B->y, 0);
        if (r == 0 && B->head)
                r = kern_softcap(B->y, B->yf, (size_t) B->m * B->n, 30.0f, 0);
        return r;
}

/* median microseconds per launch, or -1 when the path failed */
static double bench_time(struct bench *B, int which) {
        cudaEvent_t a, b;
        float t[BENCH_REPS];
        uint32_t i = 0;

        KT_CUDA(cudaEventCreate(&a));
        KT_CUDA(cudaEventCreate(&b));
        for (int rep = -3; rep < BENCH_REPS; rep++) {
                KT_CUDA(cudaEventRecord(a, 0));
                for (int j = 0; j < BENCH_BATCH; j++)
                        if (bench_run(B, which, i++) < 0)
                                return -1;
                KT_CUDA(cudaEventRecord(b, 0));
                KT_CUDA(cudaEventSynchronize(b));
                if (rep >= 0) {
                        KT_CUDA(cudaEventElapsedTime(&t[rep], a, b));
                        t[rep] *= 1000.0f / BENCH_BATCH;
                }
        }
        cudaEventDestroy(a);
        cudaEventDestroy(b);
        qsort(t, BENCH_REPS, sizeof(float), cmp_float);
        return t[BENCH_REPS / 2];
}

static void bench_shape(struct kern_blas *blas, const char *name, uint32_t n, uint32_t k, int head) {
        static const uint32_t ms[] = {16, 32, 64, 128};
        struct bench B = {.n = n, .k = k, .head = head, .blas = blas};
        size_t wbytes = (size_t) n * k;

        B.copies = (uint32_t) ((BENCH_MIN_BYTES + wbytes - 1) / wbytes);
        B.w = calloc(B.copies, sizeof(*B.w));
        for (uint32_t c = 0; c < B.copies; c++) {
                KT_CUDA(cudaMalloc((void **) &B.w[c], wbytes));
                KT_CUDA(cudaMemset(B.w[c], 0x30 + c, wbytes));  /* finite e4m3 values; timing only */
        }
        KT_CUDA(cudaMalloc((void **) &B.ws, 4 * (size_t) n));
        KT_CUDA(cudaMemset(B.ws, 0, 4 * (size_t) n));
        KT_CUDA(cudaMalloc((void **) &B.x, (size_t) KERN_MID_M_MAX * k));
        KT_CUDA(cudaMemset(B.x, 0x38, (size_t) KERN_MID_M_MAX * k));
        KT_CUDA(cudaMalloc((void **) &B.xs, 4 * KERN_MID_M_MAX));
        KT_CUDA(cudaMemset(B.xs, 0, 4 * KERN_MID_M_MAX));
        KT_CUDA(cudaMalloc((void **) &B.y, 2 * (size_t) KERN_MID_M_MAX * n));
        if (head)
                KT_CUDA(cudaMalloc((void **) &B.yf, 4 * (size_t) KERN_MID_M_MAX * n));
        for (size_t mi = 0; mi < sizeof(ms) / sizeof(ms[0]); mi++) {
                B.m = ms[mi];
                double bytes = (double) wbytes + (double) B.m * k + (double) B.m * n * (head ? 4 : 2);
                double tm = bench_time(&B, 0), tb = bench_time(&B, 1);
                printf("RESULT midm shape=%s n=%u k=%u m=%u mid_us=%.2f mid_GBps=%.0f blas_us=%.2f blas_GBps=%.0f "
                       "speedup=%.2f\n",
                       name, n, k, B.m, tm, tm > 0 ? bytes / tm * 1e-3 : 0, tb, tb > 0 ? bytes / tb * 1e-3 : 0,
                       tm > 0 && tb > 0 ? tb / tm : 0);
                /* every K split up to 64 rows: shows whether the launcher's choice is the fastest */
                if (B.m > 64)
                        continue;
                printf("RESULT midm-split shape=%s m=%u", name, B.m);
                for (uint32_t q = 1; q <= 8; q++) {
                        kern_fp8_linear_mid_cluster = q;
                        printf(" kc%u=%.2f", q, bench_time(&B, 0));
                }
                kern_fp8_linear_mid_cluster = 0;
                printf(" (us)\n");
        }
        for (uint32_t c = 0; c < B.copies; c++)
                cudaFree(B.w[c]);
        free(B.w);
        cudaFree(B.ws), cudaFree(B.x), cudaFree(B.xs), cudaFree(B.y), cudaFree(B.yf);
}

int main(int argc, char **argv) {
        static const uint32_t ms[] = {9, 16, 33, 64, 100, 128};
        static const struct {
                const char *name;
                uint32_t n, k;
                int head;
        } shapes[] = {
                {"qkv_sliding", 8192, 2816, 0}, {"qkv_full", 9216, 2816, 0},    {"o_sliding", 2816, 4096, 0},
                {"o_full", 2816, 8192, 0},      {"dense_gate_up", 4224, 2816, 0}, {"dense_down", 2816, 2112, 0},
                {"lm_head", 262144, 2816, 1},
        };
        int bench = 1;
        struct kern_blas *blas;

        for (int i = 1; i < argc; i++)
                if (strcmp(argv[i], "--no-bench") == 0)
                        bench = 0;
        kt_require_gpu();
        for (int i = 0; i < 256; i++)
                e4m3_lut[i] = kt_e4m3_to_f32((uint8_t) i);
        kt_seed(7);
        test_bad_args();
        for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
                struct mcase C;
                case_make(&C, shapes[s].n, shapes[s].k, KERN_MID_M_MAX);
                for (size_t mi = 0; mi < sizeof(ms) / sizeof(ms[0]); mi++)
                        run_mid(&C, ms[mi], shapes[s].head, 0);
                case_free(&C);
        }
        /* odd shapes: n not a multiple of the 128-row block or of 16, k not a multiple of 64 or below it */
        test_mid(1000, 2816, 100, 0, 0);
        test_mid(1000, 2816, 37, 1, 0);
        test_mid(24, 80, 9, 0, 0);
        test_mid(200, 48, 128, 0, 0);
        test_mid(136, 2112, 64, 1, 0);
        test_mid(300, 1040, 20, 0, 0);
        test_mid(8, 16, 12, 0, 0);
        /* every K split the cluster can take, including more ranks than 64-byte chunks */
        {
                struct mcase C;
                case_make(&C, 2816, 2112, 128);
                for (uint32_t q = 1; q <= 8; q++)
                        run_mid(&C, q == 3 ? 128 : 33, 0, q);
                case_free(&C);
        }
        test_mid(520, 320, 70, 0, 8);
        test_mid(130, 2816, 128, 1, 3);
        test_batch_invariance(2816, 2112);
        test_batch_invariance(4224, 2816);
        test_mid(130, 2816, 128, 1, 3);
        if (bench) {
                KT_OK(kern_blas_create(&blas));
                for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
                        bench_shape(blas, shapes[s].name, shapes[s].n, shapes[s].k, shapes[s].head);
                kern_blas_destroy(blas);
        }
        return kt_finish();
}
