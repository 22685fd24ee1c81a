/* SPDX-License-Identifier: Apache-2.0 */
/*
 * BF16 weights (cuda.weights: bf16, backend_params.weights_bf16): a BF16 checkpoint's linears stay BF16 on the
 * device and run BF16 x BF16 with FP32 accumulation; the activations that feed them stay BF16 (nothing is
 * quantized to FP8). backend-cuda.c switches at its linear dispatch points; the choices live here.
 */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "cuda-internal.h"

/* beyond this many rows cuBLASLt; up to it the mma kernel, which streams the weights once for all rows
 * (decode, short prefill chunks) */
#define BF16_SMALL_M_MAX 8

static int check_linear(const struct linear_weight *lw, char **reterr) {
        if (!tensor_present(&lw->w) || lw->w.dtype != TENSOR_DTYPE_F8_E4M3)
                return 0;
        return cuda_errorf(reterr, -EINVAL,
                           "backend cuda: cuda.weights bf16 needs a BF16 checkpoint, but %s is %s (an FP8 "
                           "checkpoint: its BF16 weights are gone); use cuda.weights fp8",
                           lw->w.name ? lw->w.name : "a linear weight", tensor_dtype_name(lw->w.dtype));
}

int cuda_bf16_check_model(const struct model *m, char **reterr) {
        const struct model_config *c = &m->cfg;
        int r;

        for (uint32_t l = 0; l < c->n_layers; l++) {
                const struct layer_weights *L = &m->layers[l];
                const struct linear_weight *lin[] = {&L->q_proj, &L->k_proj, &L->v_proj, &L->o_proj,
                                                     &L->mlp_gate, &L->mlp_up, &L->mlp_down};
                for (size_t i = 0; i < sizeof(lin) / sizeof(lin[0]); i++)
                        if ((r = check_linear(lin[i], reterr)) < 0)
                                return r;
                for (uint32_t e = 0; c->enable_moe && e < c->n_experts; e++)
                        if ((r = check_linear(&L->expert_gate[e], reterr)) < 0 ||
                            (r = check_linear(&L->expert_up[e], reterr)) < 0 ||
                            (r = check_linear(&L->expert_down[e], reterr)) < 0)
                                return r;
        }
        return 0;
}

int cuda_bf16_check_memory(uint64_t need, char **reterr) {
        size_t free_b = 0, total_b = 0;

        if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess)
                return cuda_errorf(reterr, -EIO, "backend cuda: cudaMemGetInfo failed");
        /* the KV pool and activations come after the weights: ask for a little room beyond them */
        if ((double) need + (double) (1u << 30) > (double) free_b)
                return cuda_errorf(reterr, -ENOMEM,
                                   "backend cuda: BF16 weights need %.2f GiB of device memory (plus about 1 GiB "
                                   "for activations and KV), but only %.2f GiB of %.2f GiB are free; use "
                                   "cuda.weights fp8 (half the weight memory)",
                                   need / 1073741824.0, free_b / 1073741824.0, total_b / 1073741824.0);
        return 0;
}

int cuda_bf16_linear(struct kern_blas *blas, const struct dev_linear *L, const uint16_t *x, uint32_t m, uint16_t *y,
                     cudaStream_t stream) {
        const uint16_t *w = (const uint16_t *) (const void *) L->w;

        if (m > BF16_SMALL_M_MAX && L->n_out % 8 == 0 && L->k % 8 == 0 &&
            kern_blas_bf16_linear(blas, w, L->n_out, L->k, x, m, y, stream) == 0)
                return 0;
        /* the mma kernel takes any shape; slower than cuBLASLt for big batches but correct */
        return kern_bf16_linear_small(w, L->n_out, L->k, x, m, y, KERN_OUT_BF16, 0.0f, stream);
}

int cuda_bf16_head(struct kern_blas *blas, const uint16_t *w, uint32_t V, uint32_t H, const uint16_t *x, uint32_t m,
                   float *logits, float softcap, cudaStream_t stream) {
        /* cuBLASLt for every row count where it can (the head of lm_head_bf16 before weights_bf16 existed) */
        if (H % 8 == 0 && V % 4 == 0 &&
            kern_blas_bf16_linear_f32(blas, w, V, H, x, m, logits, stream) == 0)
                return kern_softcap(NULL, logits, (size_t) m * V, softcap, stream);
        return kern_bf16_linear_small(w, V, H, x, m, logits, KERN_OUT_F32_SOFTCAP, softcap, stream);
}

float cuda_bf16_embed_scale(uint32_t hidden) {
        /* HF multiplies by sqrt(H) cast to the weight dtype: round to nearest even BF16 */
        float f = (float) sqrt((double) hidden);
        uint32_t u;
        memcpy(&u, &f, 4);
        u = (u + 0x7fffu + ((u >> 16) & 1)) & 0xffff0000u;
        memcpy(&f, &u, 4);
        return f;
}
