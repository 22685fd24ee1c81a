/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * Numerics of the CPU reference engine: FP8 E4M3 rounding of activations and the dot-product kernels every
 * linear layer goes through (element conversions of whole tensors are model.h's).
 *
 * Determinism: a dot product of one activation row with one weight row is always evaluated in the same
 * order (16 interleaved FMA lanes in two 8-wide accumulators, a fixed reduction tree, then a sequential
 * tail), whatever the batch size, thread count or instruction set. The scalar fallback emulates the AVX2
 * lane order with fmaf(), so results are bitwise identical on every x86-64 machine, and batching,
 * chunking and paging can be tested for exact equality.
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "model/model.h"

/* bf16_to_f32() of model.h, inlined for the embedding and kernel loops. */
static inline float cpu_bf16_to_f32(uint16_t v) {
        uint32_t u = (uint32_t) v << 16;
        float f;
        memcpy(&f, &u, sizeof(f));
        return f;
}

/* Round to the nearest E4M3 value (ties to even), saturating to +-448; returns the value as float. */
static inline float cpu_round_fp8_e4m3(float v) {
        uint32_t u;
        float a = fabsf(v), up, down, r;
        int e;

        if (isnan(v))
                return v;
        if (a >= 448.0f)
                return copysignf(448.0f, v);
        memcpy(&u, &a, sizeof(u));
        e = (int) (u >> 23) - 127;              /* binade of a (denormal floats give -127) */
        if (e < -6)
                e = -6;                         /* E4M3 subnormals share the quantum 2^-9 */
        /* a * 2^(3-e) < 16, so adding and removing 2^23 rounds to an integer, ties to even. */
        u = (uint32_t) (127 + 3 - e) << 23;
        memcpy(&up, &u, sizeof(up));
        u = (uint32_t) (127 - 3 + e) << 23;
        memcpy(&down, &u, sizeof(down));
        r = a * up;
        r = (r + 8388608.0f) - 8388608.0f;
        r *= down;
        if (r > 448.0f)
                r = 448.0f;
        return copysignf(r, v);
}

/* Quantize one activation row per token as FP8_DYNAMIC does: s = max(amax/448, 1/(448*512)),
 * q = e4m3_rne_sat(x / s). Writes the E4M3 values (as floats) to q and returns s. */
float cpu_quantize_row_fp8(const float *x, uint32_t n, float *q);

enum cpu_wtype {
        CPU_W_F32 = 0,
        CPU_W_BF16 = 1,         /* also holds FP8 E4M3 weights, which BF16 represents exactly */
};

/* A linear layer y = W x, W [out][in] in host memory (owned). FP8 checkpoints keep the E4M3 values in
 * BF16 storage plus a per-row scale; their inputs are quantized per token (W8A8 emulation). */
struct cpu_linear {
        enum cpu_wtype type;
        void *w;
        float *scale;           /* per output row; non-NULL exactly for FP8 weights */
        uint32_t out, in;
};

/* Select the instruction set once (AVX2+FMA when present). Results do not depend on it. */
void cpu_kernels_init(void);
const char *cpu_kernels_isa(void);
/* Tests: force the portable kernels (false) or go back to the best available (true). */
void cpu_kernels_use_simd(bool on);

/* Lay out n_x activation rows (stride ldx) as the kernels for w expect them, n_x * w->in floats at xp. */
void cpu_prepare_rows(const struct cpu_linear *w, const float *x, uint32_t ldx, uint32_t n_x, float *xp);
/* dot(x, W[row]) for n_x prepared rows of x (stride ldx floats) against one weight row: out[i] for row i. */
void cpu_dot_rows(const struct cpu_linear *w, uint32_t row, const float *x, uint32_t ldx, uint32_t n_x,
                  float *out);
/* dot(x, W[row + i]) for n_rows consecutive weight rows and one prepared activation row: out[i]. */
void cpu_dot_wrows(const struct cpu_linear *w, uint32_t row, uint32_t n_rows, const float *x, float *out);
/* v[i] = cap * tanh(v[i] / cap), bitwise the same on every path and at every position. */
void cpu_softcap(float *v, uint32_t n, float cap);
/* Plain float dot product (unprepared vectors), same evaluation order as F32 weights in cpu_dot_rows. */
float cpu_dot_f32(const float *a, const float *b, uint32_t n);
