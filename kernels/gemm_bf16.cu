/* SPDX-License-Identifier: Apache-2.0 */
/*
 * BF16-weight linear layers (backend_params.weights_bf16: a BF16 checkpoint kept in BF16 on the device).
 *
 * BF16 x BF16 with FP32 accumulation on tensor cores: the small-M kernel of mma_small.cuh (the one the FP8
 * linears use) instantiated for mma.sync m16n8k16 BF16: weights as the M side (16 rows per warp), up to 8
 * tokens per fragment as the N side, each lane loading 8 contiguous BF16 of its two weight rows and of its
 * token; a block of 8 warps splits K (few row tiles, decode) or rows (many tiles).
 *
 * Dense linears (M tokens) and the MoE experts (groups from kern_moe_route, read on the device: no host loop
 * over experts, no host synchronization) share the kernel. Large dense M goes to cuBLASLt BF16
 * (kern_blas_bf16_linear in gemm.cu); this kernel takes any M and any K.
 */
#include "mma_small.cuh"

static struct mma_params bw_params_of(const uint16_t *w, uint32_t n_out, uint32_t k, const uint16_t *x,
                                      uint32_t x_row_div, void *y, enum kern_out out, float softcap) {
        struct mma_params p = {};
        p.w = w;
        p.n_out = n_out;
        p.k = k;
        p.x = x;
        p.x_row_div = x_row_div;
        p.y = y;
        p.out = out;
        p.softcap = softcap;
        return p;
}

/* accumulator width for groups of at most max_rows rows */
static int bw_launch_rows(struct mma_params *p, uint32_t max_rows, uint32_t grid_y, cudaStream_t stream) {
        if (max_rows <= 8)
                return mma_launch<mma_fmt_bf16, 1>(p, grid_y, stream);
        if (max_rows <= 16)
                return mma_launch<mma_fmt_bf16, 2>(p, grid_y, stream);
        if (max_rows <= 32)
                return mma_launch<mma_fmt_bf16, 4>(p, grid_y, stream);
        return mma_launch<mma_fmt_bf16, 8>(p, grid_y, stream);
}

extern "C" int kern_bf16_linear_small(const uint16_t *w, uint32_t n_out, uint32_t k, const uint16_t *x, uint32_t m,
                                      void *y, enum kern_out out, float softcap, cudaStream_t stream) {
        struct mma_params p = bw_params_of(w, n_out, k, x, 1, y, out, softcap);

        if (k == 0 || n_out == 0 || (out != KERN_OUT_BF16 && out != KERN_OUT_F32_SOFTCAP))
                return -EINVAL;
        if (m == 0)
                return 0;
        p.m = m;
        if (m <= 64) {
                mma_pick_split(&p, 1);
                return bw_launch_rows(&p, m, 1, stream);
        }
        mma_pick_split(&p, (m + 63) / 64);
        return mma_launch<mma_fmt_bf16, 8>(&p, (m + 63) / 64, stream);
}

extern "C" int kern_bf16_linear_grouped(const uint16_t *w, uint32_t n_out, uint32_t k, const uint16_t *x,
                                        uint32_t x_row_div, const int32_t *pair_rows,
                                        const struct kern_gemm_group *groups, const int32_t *n_groups,
                                        uint32_t max_groups, uint32_t max_rows, uint16_t *y, cudaStream_t stream) {
        struct mma_params p = bw_params_of(w, n_out, k, x, x_row_div, y, KERN_OUT_BF16, 0.0f);

        if (k == 0 || n_out == 0 || x_row_div == 0 || max_rows == 0 || max_rows > 64)
                return -EINVAL;
        if (max_groups == 0)
                return 0;
        p.pair_rows = pair_rows;
        p.groups = groups;
        p.n_groups = n_groups;
        mma_pick_split(&p, max_groups);
        return bw_launch_rows(&p, max_rows, max_groups, stream);
}

/* ---- GeGLU without quantization ---- */

static __global__ void geglu_bf16_kernel(const uint16_t *gu, uint32_t n_rows, uint32_t n, uint16_t *out) {
        size_t total = (size_t) n_rows * n;
        for (size_t idx = blockIdx.x * (size_t) blockDim.x + threadIdx.x; idx < total;
             idx += (size_t) gridDim.x * blockDim.x) {
                size_t r = idx / n, i = idx % n;
                const uint16_t *g = gu + r * 2 * n;
                float a = round_bf16(gelu_tanh(bf16_bits_to_f32(g[i])));
                out[idx] = f32_to_bf16_bits(a * bf16_bits_to_f32(g[n + i]));
        }
}

extern "C" int kern_geglu_bf16(const uint16_t *gu, uint32_t n_rows, uint32_t n, uint16_t *out,
                               cudaStream_t stream) {
        if (n == 0)
                return -EINVAL;
        if (n_rows == 0)
                return 0;
        size_t blocks = ((size_t) n_rows * n + 255) / 256;
        geglu_bf16_kernel<<<(unsigned) (blocks < 8192 ? blocks : 8192), 256, 0, stream>>>(gu, n_rows, n, out);
        return KERN_CHECK_LAUNCH();
}
