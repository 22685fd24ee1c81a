/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/* Device helpers shared by the kernel files. */
#include <errno.h>
#include <stdint.h>

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include "kernels.h"

#define KERN_CHECK_LAUNCH() (cudaGetLastError() == cudaSuccess ? 0 : -EIO)

/* Programmatic dependent launch: a kernel lets the next one in the stream start early (that one runs only
 * its prologue -- weight loads -- until griddep_wait(), which returns once this grid has finished and its
 * writes are visible). Both are no-ops for kernels launched without the attribute. */
static __device__ __forceinline__ void griddep_launch_dependents(void) {
        asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

static __device__ __forceinline__ void griddep_wait(void) {
        asm volatile("griddepcontrol.wait;" ::: "memory");
}

static __device__ __forceinline__ float bf16_bits_to_f32(uint16_t v) {
        return __uint_as_float((uint32_t) v << 16);
}

static __device__ __forceinline__ uint16_t f32_to_bf16_bits(float v) {
        __nv_bfloat16 b = __float2bfloat16_rn(v);
        return *reinterpret_cast<uint16_t *>(&b);
}

static __device__ __forceinline__ float round_bf16(float v) {
        return __bfloat162float(__float2bfloat16_rn(v));
}

static __device__ __forceinline__ uint8_t f32_to_e4m3(float v) {
        return (uint8_t) __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
}

static __device__ __forceinline__ float e4m3_to_f32(uint8_t v) {
        __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t) v, __NV_E4M3);
        return __half2float(__half(h));
}

/* One element of a linear's output in the caller's format: BF16, or FP32 through cap * tanh(v / cap). */
static __device__ __forceinline__ void store_linear_out(void *y, size_t off, float v, enum kern_out out,
                                                        float softcap) {
        if (out == KERN_OUT_BF16) {
                ((uint16_t *) y)[off] = f32_to_bf16_bits(v);
                return;
        }
        if (softcap > 0.0f)
                v = softcap * tanhf(v / softcap);
        ((float *) y)[off] = v;
}

static __device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
                v += __shfl_xor_sync(0xffffffffu, v, o);
        return v;
}

static __device__ __forceinline__ float warp_max(float v) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
                v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
        return v;
}

/* Block-wide sum; `red` holds >= 32 floats; every thread gets the result. */
static __device__ __forceinline__ float block_sum(float v, float *red) {
        int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
        v = warp_sum(v);
        __syncthreads();
        if (lane == 0)
                red[warp] = v;
        __syncthreads();
        v = lane < nw ? red[lane] : 0.0f;
        return warp_sum(v);
}

static __device__ __forceinline__ float block_max(float v, float *red) {
        int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
        v = warp_max(v);
        __syncthreads();
        if (lane == 0)
                red[warp] = v;
        __syncthreads();
        v = lane < nw ? red[lane] : 0.0f;
        return warp_max(v);
}

static __device__ __forceinline__ float act_scale(float amax) {
        return fmaxf(amax / KERNELS_FP8_MAX, 1.0f / (KERNELS_FP8_MAX * 512.0f));
}

static __device__ __forceinline__ float gelu_tanh(float z) {
        const float k0 = 0.7978845608028654f, k1 = 0.044715f;
        return 0.5f * z * (1.0f + tanhf(k0 * (z + k1 * z * z * z)));
}

/* v (length n, in shared memory) -> RMSNorm with optional weight, rounded to BF16, stored back into dst
 * (may alias v). Returns nothing; all threads of the block must call. */
static __device__ __forceinline__ void block_rmsnorm(const float *v, float *dst, const uint16_t *w, uint32_t n,
                                                     float eps, float *red) {
        float ss = 0.0f;
        for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
                ss += v[i] * v[i];
        ss = block_sum(ss, red);
        float inv = rsqrtf(ss / (float) n + eps);
        for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
                float y = v[i] * inv;
                if (w)
                        y *= bf16_bits_to_f32(w[i]);
                dst[i] = round_bf16(y);
        }
        __syncthreads();
}

/* Quantize v (shared memory, length n) per row into q / *scale. All threads call. */
static __device__ __forceinline__ void block_quant(const float *v, uint32_t n, uint8_t *q, float *scale,
                                                   float *red) {
        float amax = 0.0f;
        for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
                amax = fmaxf(amax, fabsf(v[i]));
        amax = block_max(amax, red);
        float s = act_scale(amax);
        for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
                q[i] = f32_to_e4m3(v[i] / s);
        if (threadIdx.x == 0)
                *scale = s;
}

/* A router logit: one warp's dot product of two BF16 rows of length n, four 16-byte loads of each in flight
 * per lane; every lane gets the sum. kern_router and the fused decode FFN kernel share it (and
 * warp_router_topk) so that both choose the same experts, bit for bit. */
static __device__ __forceinline__ float warp_dot_bf16(const uint16_t *a, const uint16_t *w, uint32_t n) {
        const int lane = threadIdx.x & 31;
        float acc = 0.0f;
        if (n % 8 == 0) {
                for (uint32_t i0 = lane * 8; i0 < n; i0 += 4 * 32 * 8) {
                        uint4 av[4], wv[4];
#pragma unroll
                        for (int u = 0; u < 4; u++) {
                                uint32_t i = i0 + u * 32 * 8;
                                av[u] = i < n ? *reinterpret_cast<const uint4 *>(a + i) : make_uint4(0, 0, 0, 0);
                                wv[u] = i < n ? __ldg(reinterpret_cast<const uint4 *>(w + i)) : make_uint4(0, 0, 0, 0);
                        }
#pragma unroll
                        for (int u = 0; u < 4; u++) {
                                const uint16_t *ah = reinterpret_cast<const uint16_t *>(&av[u]);
                                const uint16_t *wh = reinterpret_cast<const uint16_t *>(&wv[u]);
#pragma unroll
                                for (int j = 0; j < 8; j++)
                                        acc += bf16_bits_to_f32(ah[j]) * bf16_bits_to_f32(wh[j]);
                        }
                }
        } else {
                for (uint32_t i = lane; i < n; i += 32)
                        acc += bf16_bits_to_f32(a[i]) * bf16_bits_to_f32(w[i]);
        }
        return warp_sum(acc);
}

/* One warp, one token: softmax over lg[0, n_experts) (overwritten with the probabilities), top_k by
 * repeated arg-max (ties to the lower index), renormalised over the chosen, times per_expert_scale. Lane 0
 * writes idx[0, top_k) and wts[0, top_k). */
static __device__ __forceinline__ void warp_router_topk(float *lg, uint32_t n_experts, uint32_t top_k,
                                                        const uint16_t *per_expert_scale, int32_t *idx,
                                                        float *wts) {
        const int lane = threadIdx.x & 31;
        float mx = -INFINITY;
        for (uint32_t e = lane; e < n_experts; e += 32)
                mx = fmaxf(mx, lg[e]);
        mx = warp_max(mx);
        float total = 0.0f;
        for (uint32_t e = lane; e < n_experts; e += 32) {
                float p = __expf(lg[e] - mx);
                lg[e] = p;
                total += p;
        }
        total = warp_sum(total);
        __syncwarp();
        float picked_sum = 0.0f, picked_p[KERNELS_MAX_TOPK];
        int picked[KERNELS_MAX_TOPK];
        for (uint32_t k = 0; k < top_k; k++) {
                float best = -1.0f;
                int best_e = 0x7fffffff;
                for (uint32_t e = lane; e < n_experts; e += 32) {
                        float p = lg[e];
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
                        lg[best_e] = -2.0f;
                __syncwarp();
        }
        if (lane == 0)
                for (uint32_t k = 0; k < top_k; k++) {
                        idx[k] = picked[k];
                        wts[k] = picked_p[k] / picked_sum * bf16_bits_to_f32(per_expert_scale[picked[k]]);
                }
}
