/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * Helpers for the kernel reference tests: random inputs, host element conversions, device buffers that are
 * poisoned before every launch, and the relative Frobenius error ||out - ref|| / ||ref||.
 * Tests print TAP-like lines but use meson's exitcode protocol: 0 pass, 1 fail, 77 no GPU.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "kernels/kernels.h"
#include "kernels/selftest.h"

static int kt_failed, kt_count;

#define KT_CUDA(call)                                                                                        \
        do {                                                                                                 \
                cudaError_t e_ = (call);                                                                     \
                if (e_ != cudaSuccess) {                                                                     \
                        printf("not ok - %s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
                        exit(1);                                                                             \
                }                                                                                            \
        } while (0)

#define KT_OK(call)                                                                                          \
        do {                                                                                                 \
                int r_ = (call);                                                                             \
                if (r_ < 0) {                                                                                \
                        printf("not ok - %s:%d %s returned %d\n", __FILE__, __LINE__, #call, r_);            \
                        exit(1);                                                                             \
                }                                                                                            \
        } while (0)

static inline void kt_require_gpu(void) {
        if (kernels_device_count() <= 0) {
                printf("1..0 # SKIP no CUDA device\n");
                exit(77);
        }
}

static uint64_t kt_rng_state = 0x9e3779b97f4a7c15ull;

static inline void kt_seed(uint64_t s) {
        kt_rng_state = s * 0x9e3779b97f4a7c15ull + 1;
}

static inline uint32_t kt_u32(void) {
        kt_rng_state ^= kt_rng_state << 13;
        kt_rng_state ^= kt_rng_state >> 7;
        kt_rng_state ^= kt_rng_state << 17;
        return (uint32_t) (kt_rng_state >> 16);
}

/* uniform in [-1, 1) */
static inline float kt_uniform(void) {
        return (float) (kt_u32() & 0xffffff) / 8388608.0f - 1.0f;
}

static inline float kt_bf16_to_f32(uint16_t v) {
        uint32_t u = (uint32_t) v << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
}

static inline uint16_t kt_f32_to_bf16(float f) {
        uint32_t u;
        memcpy(&u, &f, 4);
        if ((u & 0x7fffffffu) > 0x7f800000u)
                return (uint16_t) ((u >> 16) | 0x40);
        u += 0x7fffu + ((u >> 16) & 1);
        return (uint16_t) (u >> 16);
}

static inline float kt_round_bf16(float f) {
        return kt_bf16_to_f32(kt_f32_to_bf16(f));
}

static inline float kt_e4m3_to_f32(uint8_t v) {
        int s = v >> 7, e = (v >> 3) & 15, m = v & 7;
        float r;
        if (e == 15 && m == 7)
                return NAN;
        if (e == 0)
                r = ldexpf((float) m / 8.0f, -6);
        else
                r = ldexpf(1.0f + (float) m / 8.0f, e - 7);
        return s ? -r : r;
}

/* a random finite e4m3 byte */
static inline uint8_t kt_rand_e4m3(void) {
        for (;;) {
                uint8_t b = (uint8_t) kt_u32();
                if ((b & 0x7f) != 0x7f)
                        return b;
        }
}

static inline void *kt_dev(size_t bytes) {
        void *p = NULL;
        KT_CUDA(cudaMalloc(&p, bytes ? bytes : 16));
        KT_CUDA(cudaMemset(p, 0xff, bytes ? bytes : 16));      /* poison: NaN in every float format */
        return p;
}

static inline void *kt_up(const void *h, size_t bytes) {
        void *p = kt_dev(bytes);
        KT_CUDA(cudaMemcpy(p, h, bytes, cudaMemcpyHostToDevice));
        return p;
}

static inline void *kt_down(const void *d, size_t bytes) {
        void *h = malloc(bytes ? bytes : 1);
        KT_CUDA(cudaDeviceSynchronize());
        KT_CUDA(cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost));
        return h;
}

struct kt_err {
        double num, den;
        int bad;                /* NaN / Inf seen */
};

static inline void kt_acc(struct kt_err *e, double out, double ref) {
        if (!isfinite(out)) {
                e->bad++;
                return;
        }
        e->num += (out - ref) * (out - ref);
        e->den += ref * ref;
}

static inline double kt_rel(const struct kt_err *e) {
        if (e->bad)
                return INFINITY;
        return e->den > 0 ? sqrt(e->num / e->den) : sqrt(e->num);
}

static inline void kt_check(const char *what, const struct kt_err *e, double tol) {
        double r = kt_rel(e);
        kt_count++;
        if (r <= tol) {
                printf("ok %d - %s: rel err %.3g (tol %.3g)\n", kt_count, what, r, tol);
        } else {
                printf("not ok %d - %s: rel err %.3g (tol %.3g, %d non-finite)\n", kt_count, what, r, tol,
                       e->bad);
                kt_failed++;
        }
}

static inline void kt_expect(const char *what, int cond) {
        kt_count++;
        printf("%s %d - %s\n", cond ? "ok" : "not ok", kt_count, what);
        if (!cond)
                kt_failed++;
}

static inline int kt_finish(void) {
        printf("1..%d\n", kt_count);
        return kt_failed ? 1 : 0;
}

/* RMSNorm reference in double: out = bf16(v * rsqrt(mean(v^2) + eps) * w) */
static inline void kt_rmsnorm(const float *v, const uint16_t *w, uint32_t n, float eps, float *out) {
        double ss = 0;
        for (uint32_t i = 0; i < n; i++)
                ss += (double) v[i] * v[i];
        double inv = 1.0 / sqrt(ss / n + eps);
        for (uint32_t i = 0; i < n; i++)
                out[i] = kt_round_bf16((float) (v[i] * inv * (w ? kt_bf16_to_f32(w[i]) : 1.0)));
}

/* MoE routing for the grouped-GEMM tests: top_k distinct experts per token into idx [tokens * top_k]; with
 * `skew` half the picks go to the first top_k + 1 experts (groups of more than 64 rows) */
static inline void kt_route(int32_t *idx, uint32_t tokens, uint32_t top_k, uint32_t experts, int skew) {
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
}
