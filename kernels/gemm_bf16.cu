/* SPDX-License-Identifier: Apache-2.0 */
/*
 * BF16-weight linear layers (backend_params.weights_bf16: a BF16 checkpoint kept in BF16 on the device).
 *
 * BF16 x BF16 with FP32 accumulation on tensor cores: mma.sync m16n8k16 with the weights as the M side (16
 * rows per warp) and up to 8 tokens as the N side, the layout of the FP8 small-M kernel in gemm.cu. A dot
 * product does not care in which order K is summed as long as both operands use the same order, so each lane
 * loads 8 contiguous BF16 (16 bytes) of its two weight rows and of its token, and the two mma's of a 32-element
 * chunk take the first and second half: no shuffles, no shared-memory staging. A block of 8 warps splits K
 * (few row tiles, decode) or rows (many tiles).
 *
 * Dense linears (M tokens) and the MoE experts (groups from kern_moe_route, read on the device: no host loop
 * over experts, no host synchronization) share the kernel. Large dense M goes to cuBLASLt BF16
 * (kern_blas_bf16_linear in gemm.cu); this kernel takes any M and any K.
 */
#include "common.cuh"

#define BW_WARPS 8
#define BW_CHUNK 32                     /* K elements per lane group step: 4 lanes x 8 BF16 */

struct bw_params {
        const uint16_t *w;
        uint32_t n_out, k;
        const uint16_t *x;
        uint32_t x_row_div;
        const int32_t *pair_rows;
        const struct kern_gemm_group *groups;
        const int32_t *n_groups;
        uint32_t m;                     /* dense only */
        void *y;
        enum kern_out out;
        float softcap;
        uint32_t rw, kw;                /* warps along rows x warps along K (rw * kw = BW_WARPS) */
};

static __device__ __forceinline__ void mma_bf16(float *c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                uint32_t b0, uint32_t b1) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* 8 BF16 of a row from element k0 (zeros past k or when !ok). Rows of a K that is not a multiple of 8 are
 * not 16-byte aligned: those take element loads (tiny test models only). */
static __device__ __forceinline__ uint4 ld8_bf16(const uint16_t *row, uint32_t k0, uint32_t k, bool aligned,
                                                 bool ok) {
        if (!ok || k0 >= k)
                return make_uint4(0, 0, 0, 0);
        if (aligned)
                return __ldg(reinterpret_cast<const uint4 *>(row + k0));
        uint32_t v[4] = {0, 0, 0, 0};
        for (uint32_t i = 0; i < 8 && k0 + i < k; i++)
                v[i / 2] |= (uint32_t) row[k0 + i] << (16 * (i % 2));
        return make_uint4(v[0], v[1], v[2], v[3]);
}

template <int NSUB>
static __global__ void __launch_bounds__(BW_WARPS * 32) bf16_mma_kernel(struct bw_params p) {
        __shared__ float red[NSUB > 0 ? BW_WARPS * NSUB * 4 * 32 : 1];
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        const int gid = lane >> 2, tig = lane & 3;
        const uint32_t rw_idx = warp / p.kw, kw_idx = warp % p.kw;
        int32_t expert = 0, start, count;

        if (p.groups) {
                if ((int) blockIdx.y >= *p.n_groups)
                        return;
                struct kern_gemm_group g = p.groups[blockIdx.y];
                expert = g.expert;
                start = g.start;
                count = g.count;
        } else {
                start = blockIdx.y * 8 * NSUB;
                count = min((int) (p.m - start), 8 * NSUB);
        }
        const uint16_t *w = p.w + (size_t) expert * p.n_out * p.k;
        const uint32_t row0 = (blockIdx.x * p.rw + rw_idx) * 16 + gid, row1 = row0 + 8;
        const bool ok0 = row0 < p.n_out, ok1 = row1 < p.n_out;
        const uint16_t *w0 = w + (size_t) (ok0 ? row0 : 0) * p.k, *w1 = w + (size_t) (ok1 ? row1 : 0) * p.k;

        const uint16_t *xp[NSUB];
#pragma unroll
        for (int s = 0; s < NSUB; s++) {
                int e = s * 8 + gid;
                xp[s] = NULL;
                if (e < count) {
                        int i = start + e;
                        int xr = p.pair_rows ? p.pair_rows[i] / (int) p.x_row_div : i;
                        xp[s] = p.x + (size_t) xr * p.k;
                }
        }
        float c[NSUB][4];
#pragma unroll
        for (int s = 0; s < NSUB; s++)
                c[s][0] = c[s][1] = c[s][2] = c[s][3] = 0.0f;

        const uint32_t n_chunks = (p.k + BW_CHUNK - 1) / BW_CHUNK;
        const bool aligned = p.k % 8 == 0;
        /* UNR chunks of weights in flight per lane before the first mma: a decode step streams weight bytes
         * and needs many outstanding loads per SM */
        constexpr int UNR = NSUB == 1 ? 4 : 2;
        for (uint32_t ch0 = kw_idx; ch0 < n_chunks; ch0 += UNR * p.kw) {
                uint4 a[UNR], b[UNR];
#pragma unroll
                for (int u = 0; u < UNR; u++) {
                        uint32_t ch = ch0 + u * p.kw;
                        uint32_t k0 = ch * BW_CHUNK + tig * 8;
                        bool cok = ch < n_chunks;
                        a[u] = ld8_bf16(w0, k0, p.k, aligned, ok0 && cok);
                        b[u] = ld8_bf16(w1, k0, p.k, aligned, ok1 && cok);
                }
#pragma unroll
                for (int u = 0; u < UNR; u++) {
                        uint32_t ch = ch0 + u * p.kw;
                        if (ch >= n_chunks)
                                break;
                        uint32_t k0 = ch * BW_CHUNK + tig * 8;
#pragma unroll
                        for (int s = 0; s < NSUB; s++) {
                                if (s * 8 >= count)
                                        break;
                                uint4 xv = ld8_bf16(xp[s], k0, p.k, aligned, xp[s] != NULL);
                                /* A: rows gid / gid+8 at k pairs {0,1} and {2,3} of this lane's 8; B the same
                                 * pairs of the token: both sides see one permutation of K */
                                mma_bf16(c[s], a[u].x, b[u].x, a[u].y, b[u].y, xv.x, xv.y);
                                mma_bf16(c[s], a[u].z, b[u].z, a[u].w, b[u].w, xv.z, xv.w);
                        }
                }
        }

        if (p.kw > 1) {
#pragma unroll
                for (int s = 0; s < NSUB; s++)
#pragma unroll
                        for (int j = 0; j < 4; j++)
                                red[((warp * NSUB + s) * 4 + j) * 32 + lane] = c[s][j];
                __syncthreads();
                if (kw_idx != 0)
                        return;
                for (uint32_t o = 1; o < p.kw; o++)
#pragma unroll
                        for (int s = 0; s < NSUB; s++)
#pragma unroll
                                for (int j = 0; j < 4; j++)
                                        c[s][j] += red[(((warp + o) * NSUB + s) * 4 + j) * 32 + lane];
        }

#pragma unroll
        for (int s = 0; s < NSUB; s++) {
#pragma unroll
                for (int j = 0; j < 4; j++) {
                        int col = s * 8 + tig * 2 + (j & 1);
                        bool hi = j >= 2;
                        if (col >= count || !(hi ? ok1 : ok0))
                                continue;
                        int i = start + col;
                        int orow = p.pair_rows ? p.pair_rows[i] : i;
                        size_t off = (size_t) orow * p.n_out + (hi ? row1 : row0);
                        float v = c[s][j];
                        if (p.out == KERN_OUT_BF16) {
                                ((uint16_t *) p.y)[off] = f32_to_bf16_bits(v);
                        } else {
                                if (p.softcap > 0.0f)
                                        v = p.softcap * tanhf(v / p.softcap);
                                ((float *) p.y)[off] = v;
                        }
                }
        }
}

/* Enough blocks for 132 SMs: many row tiles -> warps along rows; few (decode of a narrow matrix) -> the
 * block's warps split K. */
static void bw_pick_split(struct bw_params *p, uint32_t n_groups) {
        uint32_t tiles = (p->n_out + 15) / 16 * n_groups;
        if (tiles >= 8 * 132 * 2) {
                p->rw = 8;
                p->kw = 1;
        } else if (tiles >= 132 * 4) {
                p->rw = 2;
                p->kw = 4;
        } else {
                p->rw = 1;
                p->kw = 8;
        }
}

template <int NSUB>
static int bw_launch(struct bw_params *p, uint32_t grid_y, cudaStream_t stream) {
        dim3 grid((p->n_out + 16 * p->rw - 1) / (16 * p->rw), grid_y);
        bf16_mma_kernel<NSUB><<<grid, BW_WARPS * 32, 0, stream>>>(*p);
        return KERN_CHECK_LAUNCH();
}

/* accumulator width for groups of at most max_rows rows */
static int bw_launch_rows(struct bw_params *p, uint32_t max_rows, uint32_t grid_y, cudaStream_t stream) {
        if (max_rows <= 8)
                return bw_launch<1>(p, grid_y, stream);
        if (max_rows <= 16)
                return bw_launch<2>(p, grid_y, stream);
        if (max_rows <= 32)
                return bw_launch<4>(p, grid_y, stream);
        return bw_launch<8>(p, grid_y, stream);
}

static struct bw_params bw_params_of(const uint16_t *w, uint32_t n_out, uint32_t k, const uint16_t *x,
                                     uint32_t x_row_div, void *y, enum kern_out out, float softcap) {
        struct bw_params p = {};
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

extern "C" int kern_bf16_linear_small(const uint16_t *w, uint32_t n_out, uint32_t k, const uint16_t *x, uint32_t m,
                                      void *y, enum kern_out out, float softcap, cudaStream_t stream) {
        struct bw_params p = bw_params_of(w, n_out, k, x, 1, y, out, softcap);

        if (k == 0 || n_out == 0 || (out != KERN_OUT_BF16 && out != KERN_OUT_F32_SOFTCAP))
                return -EINVAL;
        if (m == 0)
                return 0;
        p.m = m;
        if (m <= 64) {
                bw_pick_split(&p, 1);
                return bw_launch_rows(&p, m, 1, stream);
        }
        bw_pick_split(&p, (m + 63) / 64);
        return bw_launch<8>(&p, (m + 63) / 64, stream);
}

extern "C" int kern_bf16_linear_grouped(const uint16_t *w, uint32_t n_out, uint32_t k, const uint16_t *x,
                                        uint32_t x_row_div, const int32_t *pair_rows,
                                        const struct kern_gemm_group *groups, const int32_t *n_groups,
                                        uint32_t max_groups, uint32_t max_rows, uint16_t *y, cudaStream_t stream) {
        struct bw_params p = bw_params_of(w, n_out, k, x, x_row_div, y, KERN_OUT_BF16, 0.0f);

        if (k == 0 || n_out == 0 || x_row_div == 0 || max_rows == 0 || max_rows > 64)
                return -EINVAL;
        if (max_groups == 0)
                return 0;
        p.pair_rows = pair_rows;
        p.groups = groups;
        p.n_groups = n_groups;
        bw_pick_split(&p, max_groups);
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
