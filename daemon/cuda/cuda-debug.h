/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * The CUDA side of backend-debug.h (cuda-debug.c). backend-cuda.c keeps one pointer, `dbg`, that is set
 * only while a debug op runs; its forward pass then runs eagerly (no graph) and calls the hooks below at the
 * layer boundaries. With dbg NULL (always, when serving) each hook site is one untaken branch.
 */
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "backend.h"

struct backend;
struct cuda_debug;

/* What the hooks need of the backend's device state (filled by backend-cuda.c). */
struct cuda_debug_view {
        struct cuda_debug *dbg;
        float *x;                       /* FP32 residual stream [t_max, hidden] */
        cudaStream_t stream;
        uint32_t n_layers, hidden;
};

/* backend-cuda.c */
void cuda_debug_view(struct backend *b, struct cuda_debug_view *ret);
/* Layer l's first GEMM input from the residual stream, as the layer before it would have left it. */
int cuda_layer_input(struct backend *b, uint32_t l, uint32_t T);
/* One eager step (forward(); logits may be NULL when the hooks skip the head) with `d` installed. */
int cuda_debug_step(struct backend *b, struct cuda_debug *d, const struct backend_batch *batch, float *logits);

/* cuda-debug.c, called by backend-cuda.c with b->dbg set; T = the step's tokens.
 * Before layer l: 1 = run the layer, 0 = skip it, < 0 = error. */
int cuda_debug_layer_in(struct backend *b, uint32_t l, uint32_t T);
/* After layer l ran. */
int cuda_debug_layer_out(struct backend *b, uint32_t l, uint32_t T);
/* After the last layer, before the final norm and head: 1 = run the head, 0 = stop there, < 0 = error. */
int cuda_debug_head_in(struct backend *b, uint32_t T);
