/* SPDX-License-Identifier: Apache-2.0 */
/* Greedy selection on the device: the argmax of each logits row, so a greedy step copies one int per
 * sequence to the host instead of a 1 MiB row (vocabulary 262,144). The rule is the host sampler's at
 * temperature 0 (daemon/server/sampler.h step 3): NaN reads as -inf, the lowest id wins among equal values,
 * and a row with no finite value (all -inf / NaN) gives id 0. */
#include "common.cuh"

#define ARGMAX_THREADS 1024

/* (value, id) ordering of the rule: a beats b when larger, or equal with a lower id */
static __device__ __forceinline__ bool argmax_better(float av, int32_t ai, float bv, int32_t bi) {
        return av > bv || (av == bv && ai < bi);
}

/* butterfly over the warp: every lane ends with the warp's best (value, id) */
static __device__ __forceinline__ void warp_argmax(float *best, int32_t *best_i) {
        for (int o = 16; o > 0; o >>= 1) {
                float ov = __shfl_xor_sync(0xffffffffu, *best, o);
                int32_t oi = __shfl_xor_sync(0xffffffffu, *best_i, o);
                if (argmax_better(ov, oi, *best, *best_i)) {
                        *best = ov;
                        *best_i = oi;
                }
        }
}

static __global__ void __launch_bounds__(ARGMAX_THREADS) argmax_rows_kernel(const float *logits, uint32_t n,
                                                                            int32_t *out) {
        __shared__ float sv[ARGMAX_THREADS / 32];
        __shared__ int32_t si[ARGMAX_THREADS / 32];
        const float *row = logits + (size_t) blockIdx.x * n;
        /* the sentinel id n loses every tie, so even -inf rows pick a real id (the lowest) */
        float best = -INFINITY;
        int32_t best_i = (int32_t) n;

        /* each thread walks its strided elements in increasing id order: only a strictly larger value
         * replaces, which keeps the lowest id of the thread's ties */
        if ((n & 3) == 0 && ((uintptr_t) row & 15) == 0) {
                const float4 *row4 = (const float4 *) row;
                for (uint32_t j = threadIdx.x; j < n / 4; j += blockDim.x) {
                        float4 q = row4[j];
                        float v[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
                        for (int k = 0; k < 4; k++) {
                                float x = isnan(v[k]) ? -INFINITY : v[k];
                                int32_t i = (int32_t) (4 * j + k);
                                if (argmax_better(x, i, best, best_i)) {
                                        best = x;
                                        best_i = i;
                                }
                        }
                }
        } else {
                for (uint32_t j = threadIdx.x; j < n; j += blockDim.x) {
                        float x = isnan(row[j]) ? -INFINITY : row[j];
                        if (argmax_better(x, (int32_t) j, best, best_i)) {
                                best = x;
                                best_i = (int32_t) j;
                        }
                }
        }
        warp_argmax(&best, &best_i);
        uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_warps = blockDim.x / 32;
        if (lane == 0) {
                sv[warp] = best;
                si[warp] = best_i;
        }
        __syncthreads();
        if (warp == 0) {
                best = lane < n_warps ? sv[lane] : -INFINITY;
                best_i = lane < n_warps ? si[lane] : (int32_t) n;
                warp_argmax(&best, &best_i);
                if (lane == 0)
                        out[blockIdx.x] = best_i < (int32_t) n ? best_i : 0;
        }
}

extern "C" int kern_argmax_rows(const float *logits, uint32_t n_rows, uint32_t n, int32_t *out, cudaStream_t stream) {
        if (n_rows == 0)
                return 0;
        if (n == 0 || n > INT32_MAX)
                return -EINVAL;
        argmax_rows_kernel<<<n_rows, ARGMAX_THREADS, 0, stream>>>(logits, n, out);
        return KERN_CHECK_LAUNCH();
}
