/* SPDX-License-Identifier: Apache-2.0 */
/*
 * backend-debug.h for the CUDA backend: capture the residual stream entering every layer of a normal step,
 * run one decoder layer on a given residual stream, run the final norm + head on a given one.
 *
 * All three install a `struct cuda_debug` on the backend and run one ordinary eager step through
 * cuda_debug_step(), so the layer that runs is the very code forward() runs (same kernels, same K/V
 * commit into the same pages); the hooks only swap the residual stream at the layer boundaries and skip
 * the layers (and head) that are not asked for. Copies are synchronous: speed does not matter here.
 */
#include <errno.h>
#include <string.h>

#include "backend-debug.h"
#include "cuda-debug.h"

enum cuda_debug_mode {
        DBG_CAPTURE,                    /* copy x out before every layer and before the head */
        DBG_LAYER,                      /* only `layer`, on x_in; its output to out */
        DBG_HEAD,                       /* no layer; the head on x_in */
};

struct cuda_debug {
        enum cuda_debug_mode mode;
        uint32_t layer;
        const float *x_in;              /* [T][H] host */
        float *out;                     /* CAPTURE: [n_layers + 1][T][H]; LAYER: [T][H] (host) */
};

static int copy_sync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind, cudaStream_t s) {
        if (cudaMemcpyAsync(dst, src, bytes, kind, s) != cudaSuccess || cudaStreamSynchronize(s) != cudaSuccess)
                return -EIO;
        return 0;
}

/* x := x_in, and layer l's first GEMM input from it (what the layer before would have left). */
static int load_input(struct backend *b, const struct cuda_debug_view *v, uint32_t l, uint32_t T, const float *x_in) {
        int r = copy_sync(v->x, x_in, (size_t) T * v->hidden * sizeof(float), cudaMemcpyHostToDevice, v->stream);
        return r < 0 ? r : cuda_layer_input(b, l, T);
}

int cuda_debug_layer_in(struct backend *b, uint32_t l, uint32_t T) {
        struct cuda_debug_view v;
        int r;

        cuda_debug_view(b, &v);
        switch (v.dbg->mode) {
        case DBG_CAPTURE:
                r = copy_sync(v.dbg->out + (size_t) l * T * v.hidden, v.x, (size_t) T * v.hidden * sizeof(float),
                              cudaMemcpyDeviceToHost, v.stream);
                return r < 0 ? r : 1;
        case DBG_LAYER:
                if (l != v.dbg->layer)
                        return 0;
                r = load_input(b, &v, l, T, v.dbg->x_in);
                return r < 0 ? r : 1;
        case DBG_HEAD:
                return 0;
        }
        return -EINVAL;
}

int cuda_debug_layer_out(struct backend *b, uint32_t l, uint32_t T) {
        struct cuda_debug_view v;

        cuda_debug_view(b, &v);
        if (v.dbg->mode != DBG_LAYER || l != v.dbg->layer)
                return 0;
        return copy_sync(v.dbg->out, v.x, (size_t) T * v.hidden * sizeof(float), cudaMemcpyDeviceToHost, v.stream);
}

int cuda_debug_head_in(struct backend *b, uint32_t T) {
        struct cuda_debug_view v;
        size_t bytes;
        int r;

        cuda_debug_view(b, &v);
        bytes = (size_t) T * v.hidden * sizeof(float);
        switch (v.dbg->mode) {
        case DBG_CAPTURE:
                r = copy_sync(v.dbg->out + (size_t) v.n_layers * T * v.hidden, v.x, bytes, cudaMemcpyDeviceToHost,
                              v.stream);
                return r < 0 ? r : 1;
        case DBG_LAYER:
                return 0;
        case DBG_HEAD:
                r = copy_sync(v.x, v.dbg->x_in, bytes, cudaMemcpyHostToDevice, v.stream);
                return r < 0 ? r : 1;
        }
        return -EINVAL;
}

static int debug_capture(struct backend *b, const struct backend_batch *batch, float *logits, float *x_layers) {
        struct cuda_debug d = {.mode = DBG_CAPTURE, .out = x_layers};

        if (!b || !logits || !x_layers)
                return -EINVAL;
        return cuda_debug_step(b, &d, batch, logits);
}

static int debug_run_layer(struct backend *b, const struct backend_batch *batch, uint32_t layer, const float *x_in,
                           float *y_out) {
        struct cuda_debug d = {.mode = DBG_LAYER, .layer = layer, .x_in = x_in, .out = y_out};
        struct cuda_debug_view v;

        if (!b || !x_in || !y_out)
                return -EINVAL;
        cuda_debug_view(b, &v);
        if (layer >= v.n_layers)
                return -EINVAL;
        return cuda_debug_step(b, &d, batch, NULL);
}

static int debug_head(struct backend *b, const struct backend_batch *batch, const float *x_in, float *logits) {
        struct cuda_debug d = {.mode = DBG_HEAD, .x_in = x_in};

        if (!b || !x_in || !logits)
                return -EINVAL;
        return cuda_debug_step(b, &d, batch, logits);
}

const struct backend_debug_ops backend_cuda_debug_ops = {
        .capture = debug_capture,
        .run_layer = debug_run_layer,
        .head = debug_head,
};
