/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * Debug entry points of the compute backends, for comparing two engines layer by layer (teacher forcing:
 * both engines get the same input at every layer, so an error in one layer cannot feed the next).
 * Not part of the serving interface: the engine never calls these, and they cost the serving path nothing
 * (the CUDA backend checks one pointer per layer; the CPU backend one per layer as well).
 *
 * Residual-stream rows are float32 [n_tokens][hidden], tokens in batch order: every token of seqs[0],
 * then of seqs[1], and so on. Every call takes a batch exactly as backend_ops.forward does (tokens,
 * positions, page tables) and validates it the same way; the batch must fit one step
 * (n_tokens <= max_batched_tokens, else -E2BIG), so that the rows of one call are the rows of one step.
 *
 * Users: tests/kernels/test-cuda-layers.c (CUDA against the CPU engine) and tests/golden/test-cpu-layers.c
 * (the CPU hooks against the CPU forward). The method and the measured errors: docs/cuda-backend.md,
 * "Layer-by-layer comparison with the CPU engine".
 */
#include <stdint.h>
#include <string.h>

#include "build-config.h"
#include "backend.h"

struct backend_debug_ops {
        /* forward() (same logits, same K/V written into the pages) that also copies out the residual
         * stream entering every decoder layer and the one entering the final norm:
         * x_layers [n_layers + 1][n_tokens][hidden]. logits as forward(). */
        int (*capture)(struct backend *b, const struct backend_batch *batch, float *logits, float *x_layers);
        /* Decoder layer `layer` alone on x_in [n_tokens][hidden] in place of the embedding and the layers
         * before it; y_out [n_tokens][hidden] is the residual stream it leaves. The layer writes the K/V of the
         * batch's positions into its own pages and reads earlier positions from them, as in forward(); the
         * pages of every other layer are left alone. So running a prompt's steps in order through one layer
         * leaves that layer's pages as a forward over the same inputs would. */
        int (*run_layer)(struct backend *b, const struct backend_batch *batch, uint32_t layer, const float *x_in,
                         float *y_out);
        /* Final norm, LM head and softcap on x_in [n_tokens][hidden] (the residual stream after the last
         * layer): logits rows as forward() writes them (backend_rows_for). No page is touched. */
        int (*head)(struct backend *b, const struct backend_batch *batch, const float *x_in, float *logits);
};

extern const struct backend_debug_ops backend_cpu_debug_ops;
#if HAVE_CUDA
extern const struct backend_debug_ops backend_cuda_debug_ops;
#endif

/* The debug ops of a backend by name ("cpu", "cuda"); NULL when unknown or not built. */
static inline const struct backend_debug_ops *backend_debug_find(const char *name) {
        if (name && strcmp(name, "cpu") == 0)
                return &backend_cpu_debug_ops;
#if HAVE_CUDA
        if (name && strcmp(name, "cuda") == 0)
                return &backend_cuda_debug_ops;
#endif
        return NULL;
}
