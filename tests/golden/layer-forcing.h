/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * Teacher forcing through the debug ops of backend-debug.h: a prompt cut into steps runs through one
 * engine, which records the residual stream entering every layer; then each layer of another (or the same)
 * engine runs alone on those recorded inputs, step after step, so its pages fill as a forward over the same
 * inputs would fill them, and its outputs compare with the recorded inputs of the next layer.
 * Used by tests/golden/test-cpu-layers.c and tests/kernels/test-cuda-layers.c.
 */
#include <stdbool.h>
#include <stdint.h>

#include "backend.h"
#include "backend-debug.h"

/* One sequence's worth of an engine: the backend, its debug ops, scrambled page tables. */
struct lf_engine {
        const struct backend_ops *ops;
        const struct backend_debug_ops *dbg;
        struct backend *be;
        struct backend_capacity cap;
        uint32_t *full, *sliding;
        uint32_t n_full, n_sliding;
        uint32_t n_layers, hidden, vocab;
};

struct lf_params {
        enum kv_dtype kv_dtype;
        uint32_t page_size;
        uint32_t max_len;               /* also the most tokens of one step */
        bool lm_head_bf16;              /* CUDA: BF16 head instead of the FP8 copy of the tied embedding */
        bool weights_bf16;              /* CUDA: keep a BF16 checkpoint's weights BF16 (no FP8 anywhere) */
        bool cpu_kv_round;              /* CPU: round K/V to kv_dtype as the GPU stores them */
};

int lf_open(struct lf_engine *e, const char *backend, const struct model *m, const struct lf_params *p,
            char **reterr);
void lf_close(struct lf_engine *e);

/* A prompt cut into steps: step i holds positions [step_end[i-1], step_end[i]) (step_end[-1] = 0). */
struct lf_plan {
        const int32_t *tokens;
        const uint32_t *step_end;
        uint32_t n_steps;
};

static inline uint32_t lf_plan_tokens(const struct lf_plan *p) {
        return p->n_steps ? p->step_end[p->n_steps - 1] : 0;
}

/* Every step through capture(): x [n_layers + 1][n_tokens][hidden] in position order, logits of every
 * token [n_tokens][vocab]. */
int lf_capture(struct lf_engine *e, const struct lf_plan *p, float *x, float *logits);
/* Every step through forward(): logits of every token [n_tokens][vocab]. */
int lf_forward(struct lf_engine *e, const struct lf_plan *p, float *logits);
/* Layer `layer` alone, step after step, on x_in [n_tokens][hidden]: its outputs y [n_tokens][hidden]. */
int lf_layer(struct lf_engine *e, const struct lf_plan *p, uint32_t layer, const float *x_in, float *y);
/* Final norm + head, step after step, on x_in [n_tokens][hidden]: logits [n_tokens][vocab]. */
int lf_head(struct lf_engine *e, const struct lf_plan *p, const float *x_in, float *logits);

/* got against want, rows x n: largest absolute difference, ||got - want|| / ||want|| over everything,
 * and the worst row's relative error (a token whose router picked other experts shows up there). */
struct lf_err {
        double max_abs, rel, worst_row_rel;
        uint32_t worst_row;
};
void lf_compare(const float *got, const float *want, uint32_t rows, uint32_t n, struct lf_err *ret);

/* A TAP line "ok N - what: <fmt with a, b>" (or "not ok"), counted in lf_tests / lf_failures. */
extern int lf_tests, lf_failures;
void lf_check(const char *what, bool ok, const char *fmt, double a, double b);
