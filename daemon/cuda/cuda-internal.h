/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/* Device-side state of the CUDA backend (backend-cuda.c: forward; cuda-upload.c: weights). */
#include <stdbool.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "backend.h"
#include "kernels/kernels.h"

/* An FP8 linear on the device: W [n_out, k] e4m3 and one FP32 scale per output row; `experts` > 1 stacks
 * that many matrices back to back. With backend_params.weights_bf16, w holds BF16 [n_out, k] and scale is
 * unused. */
struct dev_linear {
        uint8_t *w;
        float *scale;
        uint32_t n_out, k, experts;
};

struct dev_layer {
        enum layer_type type;
        uint32_t n_kv_heads, head_dim, n_qkv;
        bool k_eq_v;
        struct dev_linear qkv, o, gate_up, down, e_gate_up, e_down;
        uint16_t *input_ln, *post_attn_ln, *pre_ff, *post_ff, *pre_ff2, *post_ff1, *post_ff2;
        uint16_t *q_norm, *k_norm;
        uint16_t *router_proj, *router_scale, *router_pes;
        float layer_scalar;
        void *k_pages, *v_pages;
        struct kern_attn_layer attn;
};

/* Load-time helper: pinned staging for host -> device copies, and a device FP32 scratch used to quantize
 * BF16/F32 checkpoint weights on the GPU. */
struct uploader {
        void *pinned;
        size_t pinned_bytes;
        float *dev_f32;
        size_t dev_f32_floats;
        cudaStream_t stream;
        uint64_t bytes_done, bytes_total;
        const struct backend_params *p;
};

int upload_init(struct uploader *u, const struct backend_params *p, cudaStream_t stream);
void upload_done(struct uploader *u);
/* Concatenate `n_parts` linears along the output dimension into one FP8 matrix (quantizing BF16/F16/F32
 * sources per row on the GPU); with weights_bf16 into one BF16 matrix (FP8 sources refused). */
int upload_linear(struct uploader *u, const struct linear_weight *const *parts, uint32_t n_parts,
                  struct dev_linear *out, uint8_t *w_dst, float *s_dst, char **reterr);
/* A 1-D tensor converted to BF16 on the device. NULL view data -> *ret = NULL. */
int upload_vector_bf16(struct uploader *u, const struct tensor_view *t, uint32_t n, uint16_t **ret,
                       char **reterr);
/* The embedding table as BF16 [vocab, hidden]. */
int upload_matrix_bf16(struct uploader *u, const struct tensor_view *t, uint64_t rows, uint64_t cols,
                       uint16_t **ret, char **reterr);
/* The same in page-locked, mapped host memory that kernels read directly (the embedding gather touches a
 * few rows per step, so the table need not take 1.4 GiB of device memory). Free with cudaFreeHost. */
int upload_matrix_bf16_host(struct uploader *u, const struct tensor_view *t, uint64_t rows, uint64_t cols,
                            uint16_t **ret, char **reterr);
/* Per-row FP8 copy of a BF16 device matrix (the tied LM head). */
int quantize_device_matrix(struct uploader *u, const uint16_t *src, uint64_t rows, uint64_t cols, uint8_t *q,
                           float *scale);
float host_tensor_f32(const struct tensor_view *t, uint64_t i);
int cuda_errorf(char **reterr, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ---- BF16 weights (cuda-bf16.c) ---- */
/* -EINVAL with a message when the checkpoint's linears cannot be kept in BF16 (an FP8 checkpoint). */
int cuda_bf16_check_model(const struct model *m, char **reterr);
/* -ENOMEM with the amounts when `need` bytes of weights do not fit the device's free memory. */
int cuda_bf16_check_memory(uint64_t need, char **reterr);
/* BF16 linear y [m, n_out] BF16 = x [m, k] W^T: the mma kernel for few rows or odd shapes, cuBLASLt beyond. */
int cuda_bf16_linear(struct kern_blas *blas, const struct dev_linear *L, const uint16_t *x, uint32_t m, uint16_t *y,
                     cudaStream_t stream);
/* BF16 LM head with the softcap, FP32 logits [m, V]. */
int cuda_bf16_head(struct kern_blas *blas, const uint16_t *w, uint32_t V, uint32_t H, const uint16_t *x, uint32_t m,
                   float *logits, float softcap, cudaStream_t stream);
/* The embedding scale bf16(sqrt(hidden)) that HF applies. */
float cuda_bf16_embed_scale(uint32_t hidden);
