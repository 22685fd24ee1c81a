/* SPDX-License-Identifier: Apache-2.0 */
/* Row-wise kernels: RMSNorm fused with per-token FP8 quantization, the post-attention block with the router,
 * the FFN combine, GeGLU, the embedding and load-time weight quantization. One block per row; rows are short
 * (hidden 2816), so each block keeps its row in shared memory and makes a few passes over it. */
#include "common.cuh"

#define ROW_THREADS 256
/* long rows (hidden 2816): a whole 1024-thread block per row, so each thread walks only a few elements and
 * a decode step (one row) is not latency-bound on one SM */
#define row_threads(n) ((n) >= 2048 ? 1024 : ROW_THREADS)

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

static __global__ void __launch_bounds__(1024) rmsnorm_rows_kernel(const float *x, const int32_t *rows, const uint16_t *w, uint32_t n,
                                           float eps, uint8_t *q, float *q_scale, uint16_t *out_bf16) {
        griddep_launch_dependents();    /* a PDL-launched decode kernel next may load its weights now */
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
        rmsnorm_rows_kernel<<<n_rows, row_threads(n), smem, stream>>>(x, rows, w, n, eps, q, q_scale, out_bf16);
        return KERN_CHECK_LAUNCH();
}

extern "C" int kern_rmsnorm_quant(const float *x, const uint16_t *w, uint32_t n_rows, uint32_t n, float eps,
                                  uint8_t *q, float *q_scale, cudaStream_t stream) {
        return kern_rmsnorm_rows(x, NULL, w, n_rows, n, eps, q, q_scale, NULL, stream);
}

static __global__ void __launch_bounds__(1024) quant_rows_kernel(const uint16_t *x, uint32_t n, uint8_t *q, float *q_scale) {
        griddep_launch_dependents();    /* a PDL-launched decode kernel next may load its weights now */
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
        quant_rows_kernel<<<n_rows, row_threads(n), 0, stream>>>(x, n, q, q_scale);
        return KERN_CHECK_LAUNCH();
}

static __global__ void __launch_bounds__(1024) geglu_quant_kernel(const uint16_t *gu, uint32_t n, uint8_t *q, float *q_scale) {
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
        geglu_quant_kernel<<<n_rows, row_threads(n), smem, stream>>>(gu, n, q, q_scale);
        return KERN_CHECK_LAUNCH();
}

static __global__ void __launch_bounds__(1024) embed_kernel(const uint16_t *table, const int32_t *ids, uint32_t n, uint32_t vocab,
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
        embed_kernel<<<n_rows, row_threads(n), smem, stream>>>(table, ids, n, vocab, embed_scale, x, w_norm, eps,
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

static __global__ void __launch_bounds__(1024) post_attn_kernel(float *x, uint16_t *o, uint32_t n, float eps,
                                        const uint16_t *w_post_attn, const uint16_t *w_pre_ff, uint8_t *q1,
                                        float *s1, const uint16_t *w_pre_ff2, uint8_t *q2, float *s2,
                                        const uint16_t *router_scale) {
        griddep_launch_dependents();    /* a PDL-launched decode kernel next may load its weights now */
        extern __shared__ float sm[];
        float *red = sm, *h = sm + 32, *v = h + n;
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
        if (!router_scale)
                return;
        __syncthreads();
        block_rmsnorm(h, v, w_pre_ff2, n, eps, red);
        block_quant(v, n, q2 + (size_t) t * n, s2 + t, red);
        __syncthreads();

        /* router input: r = bf16(bf16(RMSNorm_noweight(h) * router_scale) * n^-1/2), written over o[t] (this
         * block read its row of o into shared memory above) */
        block_rmsnorm(h, v, NULL, n, eps, red);
        float root = rsqrtf((float) n);
        uint16_t *rt_out = (uint16_t *) o + (size_t) t * n;
        for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
                rt_out[i] = f32_to_bf16_bits(round_bf16(v[i] * bf16_bits_to_f32(router_scale[i])) * root);
}

extern "C" int kern_post_attn(float *x, uint16_t *o, uint32_t n_rows, uint32_t n, float eps,
                              const uint16_t *w_post_attn, const uint16_t *w_pre_ff, uint8_t *q1, float *s1,
                              const uint16_t *w_pre_ff2, uint8_t *q2, float *s2, const uint16_t *router_scale,
                              cudaStream_t stream) {
        size_t smem = row_smem(n, 2);
        if (n_rows == 0)
                return 0;
        if (set_smem((const void *) post_attn_kernel, smem) < 0)
                return -EINVAL;
        post_attn_kernel<<<n_rows, row_threads(n), smem, stream>>>(x, o, n, eps, w_post_attn, w_pre_ff, q1, s1,
                                                                  w_pre_ff2, q2, s2, router_scale);
        return KERN_CHECK_LAUNCH();
}

/* ---- router: logits over many blocks, then softmax / top-k per token ---- */

#define ROUTER_WARPS 8

static __global__ void router_logits_kernel(const uint16_t *r, const uint16_t *proj, uint32_t n,
                                            uint32_t n_experts, float *logits) {
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        const uint32_t t = blockIdx.y, e = blockIdx.x * ROUTER_WARPS + warp;
        if (e >= n_experts)
                return;
        float acc = warp_dot_bf16(r + (size_t) t * n, proj + (size_t) e * n, n);
        if (lane == 0)
                logits[(size_t) t * n_experts + e] = acc;
}

/* one warp per token: softmax over all experts, top-k (ties -> lower index), renormalise, per-expert scale */
static __global__ void router_topk_kernel(float *logits, uint32_t n_rows, uint32_t n_experts, uint32_t top_k,
                                          const uint16_t *per_expert_scale, int32_t *topk_idx, float *topk_w) {
        const uint32_t t = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
        if (t >= n_rows)
                return;
        warp_router_topk(logits + (size_t) t * n_experts, n_experts, top_k, per_expert_scale,
                         topk_idx + (size_t) t * top_k, topk_w + (size_t) t * top_k);
}

extern "C" int kern_router(const uint16_t *r, uint32_t n_rows, uint32_t n, const struct kern_router *rt,
                           float *logits, int32_t *topk_idx, float *topk_w, cudaStream_t stream) {
        if (rt->top_k == 0 || rt->top_k > KERNELS_MAX_TOPK || rt->top_k > rt->n_experts)
                return -EINVAL;
        if (n_rows == 0)
                return 0;
        dim3 grid((rt->n_experts + ROUTER_WARPS - 1) / ROUTER_WARPS, n_rows);
        router_logits_kernel<<<grid, ROUTER_WARPS * 32, 0, stream>>>(r, rt->proj, n, rt->n_experts, logits);
        if (KERN_CHECK_LAUNCH() < 0)
                return -EIO;
        router_topk_kernel<<<(n_rows + 7) / 8, 256, 0, stream>>>(logits, n_rows, rt->n_experts, rt->top_k,
                                                                rt->per_expert_scale, topk_idx, topk_w);
        return KERN_CHECK_LAUNCH();
}

/* ---- FFN combine ---- */

static __global__ void __launch_bounds__(1024) ffn_combine_kernel(float *x, const uint16_t *dense_y, const uint16_t *moe_y,
                                          const float *topk_w, uint32_t top_k, uint32_t n, float eps,
                                          const uint16_t *w_post_ff1, const uint16_t *w_post_ff2,
                                          const uint16_t *w_post_ff, float layer_scalar,
                                          const uint16_t *w_next, uint8_t *q, float *s) {
        griddep_launch_dependents();    /* a PDL-launched decode kernel next may load its weights now */
        extern __shared__ float sm[];
        float *red = sm, *m1 = sm + 32, *m2 = m1 + n;
        uint32_t t = blockIdx.x;
        float *xt = x + (size_t) t * n;

        for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
                m1[i] = bf16_bits_to_f32(dense_y[(size_t) t * n + i]);
        if (moe_y) {
                const uint16_t *yt = moe_y + (size_t) t * top_k * n;
                const float *wt = topk_w + (size_t) t * top_k;
                for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
                        /* eight expert rows' loads issued before their sum (independent addresses) */
                        float acc = 0.0f;
                        for (uint32_t j0 = 0; j0 < top_k; j0 += 8) {
                                uint16_t yv[8];
#pragma unroll
                                for (int j = 0; j < 8; j++)
                                        yv[j] = j0 + j < top_k ? yt[(size_t) (j0 + j) * n + i] : 0;
#pragma unroll
                                for (int j = 0; j < 8; j++)
                                        if (j0 + j < top_k)
                                                acc += wt[j0 + j] * bf16_bits_to_f32(yv[j]);
                        }
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
        ffn_combine_kernel<<<n_rows, row_threads(n), smem, stream>>>(x, dense_y, moe_y, topk_w, top_k, n, eps,
                                                                 w_post_ff1, w_post_ff2, w_post_ff,
                                                                 layer_scalar, w_next, q, s);
        return KERN_CHECK_LAUNCH();
}
