/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Decode kernels (decode.cu) against a C reference, and against the multi-launch path they replace.
 *
 * kern_moe_decode: weights and activations are row-quantized normals (like the checkpoint). The reference
 * follows the kernel's roundings (BF16 gate/up, BF16 GELU and product, per-pair FP8 requant) with exact
 * sums, so the differences are summation order in FP32 plus the rare BF16 / e4m3 rounding that flips
 * because of it; a flipped e4m3 code moves one element by 2^-4 relative. Tolerance 1e-2 relative
 * Frobenius against the reference and against the old path; two launches on the same inputs must agree
 * bit for bit (the grid barrier resets itself, the sum order is fixed).
 *
 * With a GPU the test also times the fused kernel against the old path on the full-size shape (128 experts,
 * hidden 2816, inter 704, top-8), each launch on another expert set so that L2 does not hold the weights.
 */
#include <errno.h>
#include <stdbool.h>
#include <time.h>

#include "kt.h"

static float e4m3_table[127];   /* non-negative finite codes 0x00..0x7e */
static float e4m3_dec[256];

static void e4m3_init(void) {
        for (int c = 0; c < 127; c++)
                e4m3_table[c] = kt_e4m3_to_f32((uint8_t) c);
        for (int c = 0; c < 256; c++)
                e4m3_dec[c] = kt_e4m3_to_f32((uint8_t) c);
}

/* round to nearest e4m3, ties to the even code, saturating (the device's satfinite conversion) */
static uint8_t e4m3_enc(float v) {
        uint8_t sign = v < 0 ? 0x80 : 0;
        float a = fabsf(v);
        int lo = 0, hi = 126;
        if (a >= e4m3_table[126])
                return sign | 126;
        while (hi - lo > 1) {
                int mid = (lo + hi) / 2;
                if (e4m3_table[mid] <= a)
                        lo = mid;
                else
                        hi = mid;
        }
        float dl = a - e4m3_table[lo], dh = e4m3_table[hi] - a;
        int c = dl < dh ? lo : dh < dl ? hi : (lo % 2 == 0 ? lo : hi);
        return sign | (uint8_t) c;
}

/* approximately N(0, 1): Irwin-Hall with four uniforms (cheap; the shape only has to be bell-like) */
static float normal(void) {
        return (kt_uniform() + kt_uniform() + kt_uniform() + kt_uniform()) * 0.8660254f;
}

/* n rows of k: N(0, sd^2) quantized per row (scale = amax / 448) */
static void quant_rows(uint8_t *q, float *s, uint32_t rows, uint32_t k, float sd) {
        float *v = malloc(sizeof(float) * k);
        for (uint32_t r = 0; r < rows; r++) {
                float amax = 0;
                for (uint32_t i = 0; i < k; i++) {
                        v[i] = normal() * sd;
                        amax = fmaxf(amax, fabsf(v[i]));
                }
                s[r] = amax > 0 ? amax / 448.0f : 1.0f;
                for (uint32_t i = 0; i < k; i++)
                        q[(size_t) r * k + i] = e4m3_enc(v[i] / s[r]);
        }
        free(v);
}

static float gelu_tanh_ref(float z) {
        return 0.5f * z * (1.0f + tanhf(0.7978845608028654f * (z + 0.044715f * z * z * z)));
}

struct moe_case {
        uint32_t T, top_k, E, H, I;
        uint8_t *wgu, *wd, *x;
        float *sgu, *sd, *xs;
        int32_t *idx;
        /* device */
        uint8_t *dwgu, *dwd, *dx;
        float *dsgu, *dsd, *dxs;
        int32_t *didx;
};

static void moe_make(struct moe_case *C, uint32_t T, uint32_t top_k, uint32_t E, uint32_t H, uint32_t I) {
        *C = (struct moe_case){.T = T, .top_k = top_k, .E = E, .H = H, .I = I};
        size_t ngu = (size_t) E * 2 * I * H, nd = (size_t) E * H * I;
        C->wgu = malloc(ngu), C->wd = malloc(nd), C->x = malloc((size_t) T * H);
        C->sgu = malloc(sizeof(float) * E * 2 * I), C->sd = malloc(sizeof(float) * E * H);
        C->xs = malloc(sizeof(float) * T), C->idx = malloc(sizeof(int32_t) * T * top_k);
        quant_rows(C->wgu, C->sgu, E * 2 * I, H, 1.0f / sqrtf((float) H));
        quant_rows(C->wd, C->sd, E * H, I, 1.0f / sqrtf((float) I));
        quant_rows(C->x, C->xs, T, H, 1.5f);
        for (uint32_t t = 0; t < T; t++)
                for (uint32_t j = 0; j < top_k; j++) {
                        int32_t e;
                        bool dup;
                        do {
                                e = (int32_t) (kt_u32() % E);
                                dup = false;
                                for (uint32_t j2 = 0; j2 < j; j2++)
                                        dup |= C->idx[t * top_k + j2] == e;
                        } while (dup);
                        C->idx[t * top_k + j] = e;
                }
        C->dwgu = kt_up(C->wgu, ngu), C->dwd = kt_up(C->wd, nd), C->dx = kt_up(C->x, (size_t) T * H);
        C->dsgu = kt_up(C->sgu, sizeof(float) * E * 2 * I), C->dsd = kt_up(C->sd, sizeof(float) * E * H);
        C->dxs = kt_up(C->xs, sizeof(float) * T), C->didx = kt_up(C->idx, sizeof(int32_t) * T * top_k);
}

static void moe_free(struct moe_case *C) {
        cudaFree(C->dwgu), cudaFree(C->dwd), cudaFree(C->dx), cudaFree(C->dsgu), cudaFree(C->dsd);
        cudaFree(C->dxs), cudaFree(C->didx);
        free(C->wgu), free(C->wd), free(C->x), free(C->sgu), free(C->sd), free(C->xs), free(C->idx);
}

/* y [pairs][H] as floats */
static void moe_ref(const struct moe_case *C, float *y) {
        uint32_t H = C->H, I = C->I;
        float *h = malloc(sizeof(float) * I);
        uint8_t *q = malloc(I);
        for (uint32_t p = 0; p < C->T * C->top_k; p++) {
                uint32_t t = p / C->top_k, e = (uint32_t) C->idx[p];
                const uint8_t *xr = C->x + (size_t) t * H;
                float amax = 0;
                for (uint32_t i = 0; i < I; i++) {
                        const uint8_t *g = C->wgu + ((size_t) e * 2 * I + i) * H, *u = g + (size_t) I * H;
                        double ag = 0, au = 0;
                        for (uint32_t k = 0; k < H; k++) {
                                double xv = e4m3_dec[xr[k]];
                                ag += e4m3_dec[g[k]] * xv;
                                au += e4m3_dec[u[k]] * xv;
                        }
                        float gv = kt_round_bf16(C->xs[t] * (C->sgu[(size_t) e * 2 * I + i] * (float) ag));
                        float uv = kt_round_bf16(C->xs[t] * (C->sgu[(size_t) e * 2 * I + I + i] * (float) au));
                        h[i] = kt_round_bf16(kt_round_bf16(gelu_tanh_ref(gv)) * uv);
                        amax = fmaxf(amax, fabsf(h[i]));
                }
                float s = fmaxf(amax / 448.0f, 1.0f / (448.0f * 512.0f));
                for (uint32_t i = 0; i < I; i++)
                        q[i] = e4m3_enc(h[i] / s);
                for (uint32_t n = 0; n < H; n++) {
                        const uint8_t *w = C->wd + ((size_t) e * H + n) * I;
                        double a = 0;
                        for (uint32_t i = 0; i < I; i++)
                                a += (double) e4m3_dec[w[i]] * e4m3_dec[q[i]];
                        y[(size_t) p * H + n] = kt_round_bf16(s * (C->sd[(size_t) e * H + n] * (float) a));
                }
        }
        free(h), free(q);
}

/* the path the fused kernel replaces: route, grouped gate_up, geglu + quant, grouped down */
struct old_path {
        uint32_t pairs, maxg;
        int32_t *rows, *ng;
        struct kern_gemm_group *groups;
        uint16_t *gu;
        uint8_t *act;
        float *act_s;
};

static void old_make(struct old_path *o, uint32_t T, uint32_t top_k, uint32_t E, uint32_t I) {
        o->pairs = T * top_k;
        o->maxg = kern_moe_max_groups(o->pairs, E);
        o->rows = kt_dev(4 * o->pairs), o->ng = kt_dev(4);
        o->groups = kt_dev(sizeof(struct kern_gemm_group) * o->maxg);
        o->gu = kt_dev((size_t) o->pairs * 2 * I * 2), o->act = kt_dev((size_t) o->pairs * I);
        o->act_s = kt_dev(4 * o->pairs);
}

static void old_free(struct old_path *o) {
        cudaFree(o->rows), cudaFree(o->ng), cudaFree(o->groups), cudaFree(o->gu), cudaFree(o->act);
        cudaFree(o->act_s);
}

static void old_run(struct old_path *o, const uint8_t *wgu, const float *sgu, const uint8_t *wd, const float *sd,
                    uint32_t T, uint32_t top_k, uint32_t E, uint32_t H, uint32_t I, const uint8_t *x,
                    const float *xs, const int32_t *idx, uint16_t *y) {
        KT_OK(kern_moe_route(idx, o->pairs, E, o->rows, o->groups, o->ng, 0));
        KT_OK(kern_fp8_linear_grouped(wgu, sgu, 2 * I, H, x, xs, top_k, o->rows, o->groups, o->ng, o->maxg,
                                      T < 64 ? T : 64, o->gu, 0));
        KT_OK(kern_geglu_quant(o->gu, o->pairs, I, o->act, o->act_s, 0));
        KT_OK(kern_fp8_linear_grouped(wd, sd, H, I, o->act, o->act_s, 1, o->rows, o->groups, o->ng, o->maxg,
                                      T < 64 ? T : 64, y, 0));
}

static void test_moe(uint32_t T, uint32_t top_k, uint32_t E, uint32_t H, uint32_t I) {
        struct moe_case C;
        struct old_path o;
        char name[160];
        uint32_t P = T * top_k;
        size_t ny = (size_t) P * H;

        kt_expect("kern_moe_decode_supported", kern_moe_decode_supported(T, top_k, H, I));
        moe_make(&C, T, top_k, E, H, I);
        size_t wsb = kern_moe_decode_workspace(top_k, I);
        void *ws = kt_dev(wsb);
        KT_CUDA(cudaMemset(ws, 0, wsb));
        uint16_t *dy = kt_dev(ny * 2), *dy2 = kt_dev(ny * 2), *dyo = kt_dev(ny * 2);
        KT_OK(kern_moe_decode(C.dwgu, C.dsgu, C.dwd, C.dsd, E, H, I, C.dx, C.dxs, T, C.didx, top_k, ws, dy, 0));
        KT_OK(kern_moe_decode(C.dwgu, C.dsgu, C.dwd, C.dsd, E, H, I, C.dx, C.dxs, T, C.didx, top_k, ws, dy2, 0));
        old_make(&o, T, top_k, E, I);
        old_run(&o, C.dwgu, C.dsgu, C.dwd, C.dsd, T, top_k, E, H, I, C.dx, C.dxs, C.didx, dyo);
        uint16_t *y = kt_down(dy, ny * 2), *y2 = kt_down(dy2, ny * 2), *yo = kt_down(dyo, ny * 2);
        unsigned *bar = kt_down(ws, 8);
        float *ref = malloc(sizeof(float) * ny);
        moe_ref(&C, ref);

        struct kt_err er = {0}, eo = {0}, eor = {0};
        double maxd = 0;
        size_t first_bad = (size_t) -1;
        for (size_t i = 0; i < ny; i++) {
                float v = kt_bf16_to_f32(y[i]), vo = kt_bf16_to_f32(yo[i]);
                kt_acc(&er, v, ref[i]);
                kt_acc(&eo, v, vo);
                kt_acc(&eor, vo, ref[i]);
                double d = fabs((double) v - ref[i]);
                if (!(d <= maxd)) {
                        maxd = d;
                        if (first_bad == (size_t) -1 && !(d <= 0.05 * fabs(ref[i]) + 1e-3))
                                first_bad = i;
                }
        }
        snprintf(name, sizeof(name), "moe_decode T=%u top_k=%u E=%u H=%u I=%u vs reference (max abs %.3g)", T,
                 top_k, E, H, I, maxd);
        kt_check(name, &er, 1e-2);
        if (kt_rel(&er) > 1e-2 && first_bad != (size_t) -1)
                printf("# first large difference: pair %zu row %zu: got %g want %g (old path %g)\n",
                       first_bad / H, first_bad % H, kt_bf16_to_f32(y[first_bad]), ref[first_bad],
                       kt_bf16_to_f32(yo[first_bad]));
        snprintf(name, sizeof(name), "moe_decode T=%u top_k=%u E=%u H=%u I=%u vs the old path (old vs ref %.3g)", T,
                 top_k, E, H, I, kt_rel(&eor));
        kt_check(name, &eo, 1e-2);
        snprintf(name, sizeof(name), "moe_decode T=%u: a second launch gives the same bits, barrier back at 0", T);
        kt_expect(name, memcmp(y, y2, ny * 2) == 0 && bar[0] == 0 && bar[1] == 2);
        if (bar[0] != 0 || bar[1] != 2)
                printf("# barrier words after two launches: %u %u (want 0 2)\n", bar[0], bar[1]);
        cudaFree(ws), cudaFree(dy), cudaFree(dy2), cudaFree(dyo);
        free(y), free(y2), free(yo), free(bar), free(ref);
        old_free(&o);
        moe_free(&C);
}

static int cmp_float(const void *a, const void *b) {
        float x = *(const float *) a, y = *(const float *) b;
        return x < y ? -1 : x > y;
}

/* Full-size timing: weights filled with a constant code (values do not matter for time), each launch on
 * its own expert set (128 / top_k sets cycle) so that consecutive launches do not find them in L2. */
static void bench_moe(uint32_t T) {
        const uint32_t E = 128, H = 2816, I = 704, top_k = 8, sets = 16, reps = 10, batches = 9;
        size_t ngu = (size_t) E * 2 * I * H, nd = (size_t) E * H * I;
        uint8_t *wgu = kt_dev(ngu), *wd = kt_dev(nd), *x = kt_dev((size_t) T * H);
        float *sgu = kt_dev(4 * E * 2 * I), *sd = kt_dev(4 * E * H), *xs = kt_dev(4 * T);
        KT_CUDA(cudaMemset(wgu, 0x30, ngu));
        KT_CUDA(cudaMemset(wd, 0x30, nd));
        KT_CUDA(cudaMemset(x, 0x30, (size_t) T * H));
        KT_CUDA(cudaMemset(sgu, 0, 4 * E * 2 * I));
        KT_CUDA(cudaMemset(sd, 0, 4 * E * H));
        KT_CUDA(cudaMemset(xs, 0, 4 * T));
        int32_t *idx = malloc(sizeof(int32_t) * sets * T * top_k);
        uint32_t uniq_total = 0;
        for (uint32_t s = 0; s < sets; s++) {
                char used[128] = {0};
                for (uint32_t t = 0; t < T; t++)
                        for (uint32_t j = 0; j < top_k; j++) {
                                /* token 0 takes set s; later tokens draw distinct experts at random */
                                int32_t e;
                                bool dup;
                                do {
                                        e = t == 0 ? (int32_t) ((s * top_k + j) % E) : (int32_t) (kt_u32() % E);
                                        dup = false;
                                        for (uint32_t j2 = 0; j2 < j; j2++)
                                                dup |= idx[(s * T + t) * top_k + j2] == e;
                                } while (dup);
                                idx[(s * T + t) * top_k + j] = e;
                                uniq_total += !used[e];
                                used[e] = 1;
                        }
        }
        int32_t *didx = kt_up(idx, sizeof(int32_t) * sets * T * top_k);
        size_t wsb = kern_moe_decode_workspace(top_k, I);
        void *ws = kt_dev(wsb);
        KT_CUDA(cudaMemset(ws, 0, wsb));
        uint16_t *y = kt_dev((size_t) T * top_k * H * 2);
        struct old_path o;
        old_make(&o, T, top_k, E, I);
        cudaEvent_t e0, e1;
        KT_CUDA(cudaEventCreate(&e0));
        KT_CUDA(cudaEventCreate(&e1));
        double bytes_per = (double) uniq_total / sets * (3.0 * I * H);
        for (int path = 0; path < 2; path++) {
                float t[16];
                for (uint32_t b = 0; b <= batches; b++) {
                        KT_CUDA(cudaEventRecord(e0, 0));
                        for (uint32_t r = 0; r < reps; r++) {
                                const int32_t *ix = didx + (size_t) ((b * reps + r) % sets) * T * top_k;
                                if (path == 0)
                                        KT_OK(kern_moe_decode(wgu, sgu, wd, sd, E, H, I, x, xs, T, ix, top_k, ws, y, 0));
                                else
                                        old_run(&o, wgu, sgu, wd, sd, T, top_k, E, H, I, x, xs, ix, y);
                        }
                        KT_CUDA(cudaEventRecord(e1, 0));
                        KT_CUDA(cudaEventSynchronize(e1));
                        float ms;
                        KT_CUDA(cudaEventElapsedTime(&ms, e0, e1));
                        if (b > 0)
                                t[b - 1] = ms * 1e3f / reps;
                }
                qsort(t, batches, sizeof(float), cmp_float);
                float us = t[batches / 2];
                printf("# bench moe %s T=%u: %.2f us/layer (median of %u x %u launches; min %.2f), "
                       "%.2f MB of experts -> %.2f TB/s\n", path == 0 ? "fused" : "old  ", T, us, batches, reps,
                       t[0], bytes_per / 1e6, bytes_per / (us * 1e-6) / 1e12);
                printf("RESULT moe_%s_T%u_us %.2f\n", path == 0 ? "fused" : "old", T, us);
        }
        cudaEventDestroy(e0), cudaEventDestroy(e1);
        old_free(&o);
        cudaFree(wgu), cudaFree(wd), cudaFree(x), cudaFree(sgu), cudaFree(sd), cudaFree(xs), cudaFree(didx);
        cudaFree(ws), cudaFree(y);
        free(idx);
}

/* the prefetch changes no data and refuses unaligned starts */
static void test_prefetch(void) {
        size_t n = 48u << 20;
        uint8_t *h = malloc(n), *d;
        for (size_t i = 0; i < n; i++)
                h[i] = (uint8_t) (i * 131 + (i >> 13));
        d = kt_up(h, n);
        struct kern_prefetch pf = {{d, d + (1 << 20), NULL, d + 4096}, {n, 5000, 0, 1000}};
        KT_OK(kern_l2_prefetch(&pf, 0));
        KT_CUDA(cudaDeviceSynchronize());
        uint8_t *back = kt_down(d, n);
        kt_expect("l2_prefetch: data unchanged, no launch error", memcmp(h, back, n) == 0);
        struct kern_prefetch bad = {{d + 3}, {100}};
        kt_expect("l2_prefetch: unaligned start refused", kern_l2_prefetch(&bad, 0) == -EINVAL);
        cudaFree(d);
        free(h), free(back);
}

/* The small-M FP8 GEMV (gemm.cu) on the decode shapes, weights rotating through > 2 x L2, with and without
 * an L2 prefetch of the weights launched one GEMV ahead: the baseline for the decode GEMMs. */
static void bench_gemv(const char *name, uint32_t n, uint32_t k, uint32_t m, int f32) {
        size_t wb = (size_t) n * k, copies = (wb >= (120u << 20) ? 1 : (120u << 20) / wb + 1);
        const uint32_t reps = 12, batches = 7;
        uint8_t *w = kt_dev(wb * copies), *x = kt_dev((size_t) m * k);
        float *ws = kt_dev(4 * (size_t) n), *xs = kt_dev(4 * m);
        void *y = kt_dev((size_t) m * n * 4);
        KT_CUDA(cudaMemset(w, 0x30, wb * copies));
        KT_CUDA(cudaMemset(x, 0x30, (size_t) m * k));
        KT_CUDA(cudaMemset(ws, 0, 4 * (size_t) n));
        KT_CUDA(cudaMemset(xs, 0, 4 * m));
        cudaEvent_t e0, e1;
        KT_CUDA(cudaEventCreate(&e0));
        KT_CUDA(cudaEventCreate(&e1));
        for (int pf = 0; pf < 2; pf++) {
                float t[16];
                for (uint32_t b = 0; b <= batches; b++) {
                        float total = 0;
                        for (uint32_t r = 0; r < reps; r++) {
                                size_t i = (size_t) (b * reps + r) % copies;
                                if (pf) {
                                        struct kern_prefetch p = {{w + i * wb}, {wb}};
                                        KT_OK(kern_l2_prefetch(&p, 0));
                                        /* a stretch without DRAM traffic, as the row kernels give */
                                        KT_CUDA(cudaStreamSynchronize(0));
                                        struct timespec ts = {0, 30000};
                                        nanosleep(&ts, NULL);
                                }
                                KT_CUDA(cudaEventRecord(e0, 0));
                                KT_OK(kern_fp8_linear_small(w + i * wb, ws, n, k, x, xs, m, y,
                                                            f32 ? KERN_OUT_F32_SOFTCAP : KERN_OUT_BF16, 30.0f, 0));
                                KT_CUDA(cudaEventRecord(e1, 0));
                                KT_CUDA(cudaEventSynchronize(e1));
                                float ms;
                                KT_CUDA(cudaEventElapsedTime(&ms, e0, e1));
                                total += ms;
                        }
                        if (b > 0)
                                t[b - 1] = total * 1e3f / reps;
                }
                qsort(t, batches, sizeof(float), cmp_float);
                float us = t[batches / 2];
                printf("# bench gemv %s n=%u k=%u m=%u%s: %.2f us (%.2f TB/s)\n", name, n, k, m,
                       pf ? " after L2 prefetch" : "", us, wb / (us * 1e-6) / 1e12);
                printf("RESULT gemv_%s_m%u%s_us %.2f\n", name, m, pf ? "_prefetched" : "", us);
        }
        cudaEventDestroy(e0), cudaEventDestroy(e1);
        cudaFree(w), cudaFree(x), cudaFree(ws), cudaFree(xs), cudaFree(y);
}

int main(int argc, char **argv) {
        kt_require_gpu();
        kt_seed(7);
        e4m3_init();
        test_moe(1, 8, 16, 2816, 704);          /* the 26B-A4B shape, one token */
        test_moe(8, 8, 16, 2816, 704);          /* 64 pairs on 16 experts: shared experts, full columns */
        test_moe(3, 8, 64, 512, 704);
        test_moe(5, 4, 16, 100, 24);            /* tiny-b: unaligned hidden */
        test_moe(7, 2, 8, 64, 32);              /* tiny-a */
        test_moe(2, 3, 4, 256, 16);             /* tiny-c */
        test_moe(8, 3, 12, 144, 40);            /* tiny-d */
        test_moe(4, 16, 32, 192, 800);          /* top_k 16, inter over one pass of phase 2 */
        test_prefetch();
        if (argc < 2 || strcmp(argv[1], "--no-bench") != 0) {
                bench_gemv("qkv", 8192, 2816, 1, 0);
                bench_gemv("o", 2816, 4096, 1, 0);
                bench_gemv("dense_gate_up", 4224, 2816, 1, 0);
                bench_gemv("dense_down", 2816, 2112, 1, 0);
                bench_gemv("lm_head", 262144, 2816, 1, 1);
                bench_moe(1);
                bench_moe(4);
                bench_moe(8);
        }
        return kt_finish();
}
