/* SPDX-License-Identifier: Apache-2.0 */
/* Row-wise kernels: RMSNorm fused with per-token FP8 quantization, the post-attention block with the router,
 * the FFN combine, GeGLU, the embedding and load-time weight quantization. One block per row; rows are short
 * (hidden 2816), so each block keeps its row in shared memory and makes a few passes over it. */
#include "common.cuh"

#define ROW_THREADS 256

static size_t row_smem(uint32_t n, uint32_t rows) {
        return ((size_t) n * rows + 32) * sizeof(float);
}

static int set_smem(const void *fn, size_t bytes) {
        if (bytes > 227 * 1024)
                return -EINVAL;
        if (bytes > 48 * 1024 &&
            cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int) bytes) != cudaSuccess)
                return -EIO;
        return 0;
}

static __global__ void rmsnorm_rows_kernel(const float *x, const int32_t *rows, const uint16_t *w, uint32_t n,
                                           float eps, uint8_t *q, float *q_scale, uint16_t *out_bf16) {
        extern __shared__ float sm[];
        float *red = sm, *v = sm + 32;
        uint32_t r = blockIdx.x;
        const float *src = x + (size_t) (rows ? rows[r] : r) * n;

        for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
                v[i] = src[i];
        __syncthreads();
        block_rmsnorm(v, v, w, n, eps, red);
        if (out_bf16) {
                for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
                        out_bf16[(size_t) r * n + i] = f32_to_bf16_bits(v[i]);
                return;
        }
        block_quant(v, n, q + (size_t) r * n, q_scale + r, red);
}

extern "C" int kern_rmsnorm_rows(const float *x, const int32_t *rows, const uint16_t *w, uint32_t n_rows,
                                 uint32_t n, float eps, uint8_t *q, float *q_scale, uint16_t *out_bf16,
                                 cudaStream_t stream) {
        size_t smem = row_smem(n, 1);
        if (n_rows == 0)
                return 0;
        if (set_smem((const void *) rmsnorm_rows_kernel, smem) < 0)
                return -EINVAL;
        rmsnorm_rows_kernel<<<n_rows, ROW_THREADS, smem, stream>>>(x, rows, w, n, eps, q, q_scale, out_bf16);
        return KERN_CHECK_LAUNCH();
}

extern "C" int kern_rmsnorm_quant(const float *x, const uint16_t *w, uint32_t n_rows, uint32_t n, float eps,
                                  uint8_t *q, float *q_scale, cudaStream_t stream) {
        return kern_rmsnorm_rows(x, NULL, w, n_rows, n, eps, q, q_scale, NULL, stream);
}

static __global__ void quant_rows_kernel(const uint16_t *x, uint32_t n, uint8_t *q, float *q_scale) {
        __shared__ float red[32];
        const uint16_t *src = x + (size_t) blockIdx.x * n;
        uint8_t *dst = q + (size_t) blockIdx.x * n;
        float amax = 0.0f;

        for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
                amax = fmaxf(amax, fabsf(bf16_bits_to_f32(src[i])));
        amax = block_max(amax, red);
        float s = act_scale(amax);
        for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
                dst[i] = f32_to_e4m3(bf16_bits_to_f32(src[i]) / s);
        if (threadIdx.x == 0)
                q_scale[blockIdx.x] = s;
}

extern "C" int kern_quant_rows(const uint16_t *x, uint32_t n_rows, uint32_t n, uint8_t *q, float *q_scale,
                               cudaStream_t stream) {
        if (n_rows == 0)
                return 0;
        quant_rows_kernel<<<n_rows, ROW_THREADS, 0, stream>>>(x, n, q, q_scale);
        return KERN_CHECK_LAUNCH();
}

static __global__ void geglu_quant_kernel(const uint16_t *gu, uint32_t n, uint8_t *q, float *q_scale) {
        extern __shared__ float sm[];
        float *red = sm, *v = sm + 32;
        const uint16_t *g = gu + (size_t) blockIdx.x * 2 * n, *u = g + n;

        for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
                float a = round_bf16(gelu_tanh(bf16_bits_to_f32(g[i])));
                v[i] = round_bf16(a * bf16_bits_to_f32(u[i]));
        }
        __syncthreads();
        block_quant(v, n, q + (size_t) blockIdx.x * n, q_scale + blockIdx.x, red);
}

extern "C" int kern_geglu_quant(const uint16_t *gu, uint32_t n_rows, uint32_t n, uint8_t *q, float *q_scale,
                                cudaStream_t stream) {
        size_t smem = row_smem(n, 1);
        if (n_rows == 0)
                return 0;
        if (set_smem((const void *) geglu_quant_kernel, smem) < 0)
                return -EINVAL;
        geglu_quant_kernel<<<n_rows, ROW_THREADS, smem, stream>>>(gu, n, q, q_scale);
        return KERN_CHECK_LAUNCH();
}

static __global__ void embed_kernel(const uint16_t *table, const int32_t *ids, uint32_t n, uint32_t vocab,
                                    float embed_scale, float *x, const uint16_t *w_norm, float eps, uint8_t *q,
                                    float *q_scale) {
        extern __shared__ float sm[];
        float *red = sm, *v = sm + 32;
        uint32_t t = blockIdx.x;
        int32_t id = ids[t];
        /* ids are validated on the host; clamp anyway so a bad id can never read out of bounds */
        const uint16_t *row = table + (size_t) ((uint32_t) id < vocab ? (uint32_t) id : 0) * n;

        for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
                float e = round_bf16(bf16_bits_to_f32(row[i]) * embed_scale);
                v[i] = e;
                x[(size_t) t * n + i] = e;
        }
        __syncthreads();
        if (!w_norm)
                return;
        block_rmsnorm(v, v, w_norm, n, eps, red);
        block_quant(v, n, q + (size_t) t * n, q_scale + t, red);
}

extern "C" int kern_embed(const uint16_t *table, const int32_t *ids, uint32_t n_rows, uint32_t n,
                          uint32_t vocab, float embed_scale, float *x, const uint16_t *w_norm, float eps,
                          uint8_t *q, float *q_scale, cudaStream_t stream) {
        size_t smem = row_smem(n, 1);
        if (n_rows == 0)
                return 0;
        if (set_smem((const void *) embed_kernel, smem) < 0)
                return -EINVAL;
        embed_kernel<<<n_rows, ROW_THREADS, smem, stream>>>(table, ids, n, vocab, embed_scale, x, w_norm, eps,
                                                           q, q_scale);
        return KERN_CHECK_LAUNCH();
}

static __global__ void quantize_weight_rows_kernel(const float *src, uint32_t n, uint8_t *q, float *scale) {
        __shared__ float red[32];
        const float *row = src + (size_t) blockIdx.x * n;
        float amax = 0.0f;

        for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
                amax = fmaxf(amax, fabsf(round_bf16(row[i])));
        amax = block_max(amax, red);
        float s = round_bf16(amax / KERNELS_FP8_MAX);
        if (s == 0.0f)
                s = 0.0078125f;
        for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
                q[(size_t) blockIdx.x * n + i] = f32_to_e4m3(round_bf16(round_bf16(row[i]) / s));
        if (threadIdx.x == 0)
                scale[blockIdx.x] = s;
}

extern "C" int kern_quantize_weight_rows(const float *src, uint32_t n_rows, uint32_t n, uint8_t *q,
                                         float *scale, cudaStream_t stream) {
        if (n_rows == 0)
                return 0;
        quantize_weight_rows_kernel<<<n_rows, ROW_THREADS, 0, stream>>>(src, n, q, scale);
        return KERN_CHECK_LAUNCH();
}

static __global__ void bf16_to_f32_kernel(const uint16_t *src, size_t n, float *dst) {
        for (size_t i = blockIdx.x * (size_t) blockDim.x + threadIdx.x; i < n; i += (size_t) gridDim.x * blockDim.x)
                dst[i] = bf16_bits_to_f32(src[i]);
}

extern "C" int kern_bf16_to_f32(const uint16_t *src, size_t n, float *dst, cudaStream_t stream) {
        if (n == 0)
                return 0;
        size_t blocks = (n + 255) / 256;
        bf16_to_f32_kernel<<<(unsigned) (blocks < 65535 ? blocks : 65535), 256, 0, stream>>>(src, n, dst);
        return KERN_CHECK_LAUNCH();
}

/* ---- post-attention: residual, two FFN input norms, the router ---- */

static __global__ void post_attn_kernel(float *x, const uint16_t *o, uint32_t n, float eps,
                                        const uint16_t *w_post_attn, const uint16_t *w_pre_ff, uint8_t *q1,
                                        float *s1, const uint16_t *w_pre_ff2, uint8_t *q2, float *s2,
                                        struct kern_router rt, int32_t *topk_idx, float *topk_w) {
        extern __shared__ float sm[];
        float *red = sm, *h = sm + 32, *v = h + n, *logits = v + n;
        uint32_t t = blockIdx.x;
        float *xt = x + (size_t) t * n;

        for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
                v[i] = bf16_bits_to_f32(o[(size_t) t * n + i]);
        __syncthreads();
        block_rmsnorm(v, v, w_post_attn, n, eps, red);
        for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
                float hv = round_bf16(xt[i] + v[i]);    /* HF keeps the residual in BF16 */
                h[i] = hv;
                xt[i] = hv;
        }
        __syncthreads();
        block_rmsnorm(h, v, w_pre_ff, n, eps, red);
        block_quant(v, n, q1 + (size_t) t * n, s1 + t, red);
        if (!rt.proj)
                return;
        __syncthreads();
        block_rmsnorm(h, v, w_pre_ff2, n, eps, red);
        block_quant(v, n, q2 + (size_t) t * n, s2 + t, red);
        __syncthreads();

        /* router input */
        block_rmsnorm(h, v, NULL, n, eps, red);
        float root = rsqrtf((float) n);
        for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
                v[i] = round_bf16(round_bf16(v[i] * bf16_bits_to_f32(rt.scale[i])) * root);
        __syncthreads();
        int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
        for (uint32_t e = warp; e < rt.n_experts; e += nw) {
                const uint16_t *wr = rt.proj + (size_t) e * n;
                float acc = 0.0f;
                for (uint32_t i = lane; i < n; i += 32)
                        acc += bf16_bits_to_f32(wr[i]) * v[i];
                acc = warp_sum(acc);
                if (lane == 0)
                        logits[e] = acc;
        }
        __syncthreads();
        if (warp != 0)
                return;
        /* softmax over all experts, top-k (ties -> lower index), renormalise, per-expert scale */
        float mx = -INFINITY;
        for (uint32_t e = lane; e < rt.n_experts; e += 32)
                mx = fmaxf(mx, logits[e]);
        mx = warp_max(mx);
        float total = 0.0f;
        for (uint32_t e = lane; e < rt.n_experts; e += 32) {
                float p = __expf(logits[e] - mx);
                logits[e] = p;
                total += p;
        }
        total = warp_sum(total);
        __syncwarp();
        float picked_sum = 0.0f, picked_p[KERNELS_MAX_TOPK];
        int picked[KERNELS_MAX_TOPK];
        for (uint32_t k = 0; k < rt.top_k; k++) {
                float best = -1.0f;
                int best_e = 0x7fffffff;
                for (uint32_t e = lane; e < rt.n_experts; e += 32) {
                        float p = logits[e];
                        if (p > best) {
                                best = p;
                                best_e = (int) e;
                        }
                }
#pragma unroll
                for (int off = 16; off > 0; off >>= 1) {
                        float ob = __shfl_xor_sync(0xffffffffu, best, off);
                        int oe = __shfl_xor_sync(0xffffffffu, best_e, off);
                        if (ob > best || (ob == best && oe < best_e)) {
                                best = ob;
                                best_e = oe;
                        }
                }
                picked[k] = best_e;
                picked_p[k] = best / total;
                picked_sum += best / total;
                __syncwarp();
                if (lane == 0)
                        logits[best_e] = -2.0f;
                __syncwarp();
        }
        if (lane == 0) {
                for (uint32_t k = 0; k < rt.top_k; k++) {
                        topk_idx[t * rt.top_k + k] = picked[k];
                        topk_w[t * rt.top_k + k] = picked_p[k] / picked_sum *
                                                   bf16_bits_to_f32(rt.per_expert_scale[picked[k]]);
                }
        }
}

extern "C" int kern_post_attn(float *x, const uint16_t *o, uint32_t n_rows, uint32_t n, float eps,
                              const uint16_t *w_post_attn, const uint16_t *w_pre_ff, uint8_t *q1, float *s1,
                              const uint16_t *w_pre_ff2, uint8_t *q2, float *s2,
                              const struct kern_router *router, int32_t *topk_idx, float *topk_w,
                              cudaStream_t stream) {
        struct kern_router rt = {};
        size_t smem;

        if (router) {
                rt = *router;
                if (rt.top_k == 0 || rt.top_k > KERNELS_MAX_TOPK || rt.top_k > rt.n_experts)
                        return -EINVAL;
        }
        smem = row_smem(n, 2) + (size_t) rt.n_experts * sizeof(float);
        if (n_rows == 0)
                return 0;
        if (set_smem((const void *) post_attn_kernel, smem) < 0)
                return -EINVAL;
        post_attn_kernel<<<n_rows, ROW_THREADS, smem, stream>>>(x, o, n, eps, w_post_attn, w_pre_ff, q1, s1,
                                                               w_pre_ff2, q2, s2, rt, topk_idx, topk_w);
        return KERN_CHECK_LAUNCH();
}

/* ---- FFN combine ---- */

static __global__ void ffn_combine_kernel(float *x, const uint16_t *dense_y, const uint16_t *moe_y,
                                          const float *topk_w, uint32_t top_k, uint32_t n, float eps,
                                          const uint16_t *w_post_ff1, const uint16_t *w_post_ff2,
                                          const uint16_t *w_post_ff, float layer_scalar,
                                          const uint16_t *w_next, uint8_t *q, float *s) {
        extern __shared__ float sm[];
        float *red = sm, *m1 = sm + 32, *m2 = m1 + n;
        uint32_t t = blockIdx.x;
        float *xt = x + (size_t) t * n;

        for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
                m1[i] = bf16_bits_to_f32(dense_y[(size_t) t * n + i]);
        if (moe_y) {
                for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
                        float acc = 0.0f;
                        for (uint32_t j = 0; j < top_k; j++)
                                acc += topk_w[t * top_k + j] *
                                       bf16_bits_to_f32(moe_y[((size_t) t * top_k + j) * n + i]);
                        m2[i] = round_bf16(acc);
                }
        }
        __syncthreads();
        block_rmsnorm(m1, m1, w_post_ff1, n, eps, red);
        if (moe_y) {
                block_rmsnorm(m2, m2, w_post_ff2, n, eps, red);
                for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
                        m1[i] = round_bf16(m1[i] + m2[i]);
                __syncthreads();
        }
        block_rmsnorm(m1, m1, w_post_ff, n, eps, red);
        for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
                float y = round_bf16(round_bf16(xt[i] + m1[i]) * layer_scalar);
                xt[i] = y;
                m2[i] = y;
        }
        __syncthreads();
        if (!w_next)
                return;
        block_rmsnorm(m2, m2, w_next, n, eps, red);
        block_quant(m2, n, q + (size_t) t * n, s + t, red);
}

extern "C" int kern_ffn_combine(float *x, const uint16_t *dense_y, const uint16_t *moe_y, const float *topk_w,
                                uint32_t top_k, uint32_t n_rows, uint32_t n, float eps,
                                const uint16_t *w_post_ff1, const uint16_t *w_post_ff2,
                                const uint16_t *w_post_ff, float layer_scalar, const uint16_t *w_next,
                                uint8_t *q, float *s, cudaStream_t stream) {
        size_t smem = row_smem(n, 2);
        if (n_rows == 0)
                return 0;
        if (set_smem((const void *) ffn_combine_kernel, smem) < 0)
                return -EINVAL;
        ffn_combine_kernel<<<n_rows, ROW_THREADS, smem, stream>>>(x, dense_y, moe_y, topk_w, top_k, n, eps,
                                                                 w_post_ff1, w_post_ff2, w_post_ff,
                                                                 layer_scalar, w_next, q, s);
        return KERN_CHECK_LAUNCH();
}
