/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * The small-M linear kernel, for FP8 weights (gemm.cu) and BF16 weights (gemm_bf16.cu).
 *
 * Weights are the M side of mma.sync (16 rows per warp), tokens the N side (8 per fragment), so a warp streams
 * 16 weight rows with 16-byte loads and a block of MMA_WARPS warps splits K (decode) or rows (large groups).
 * A dot product does not care how K is ordered as long as both operands use the same order, so each lane
 * loads 16 contiguous bytes of its two weight rows and of its token, and the two mma's of a 64-byte chunk
 * take their halves (m16n8k32 e4m3: 32 elements = 32 bytes; m16n8k16 bf16: 16 elements = 32 bytes): no
 * shuffles, no shared-memory staging. The format F gives the element size, the mma, and whether per-row
 * weight / per-token activation scales apply (FP8) or not (BF16).
 */
#include "common.cuh"

#ifndef MMA_WARPS
#define MMA_WARPS 8
#endif

struct mma_params {
        const void *w;                  /* [experts][n_out][k] elements of the format */
        const float *w_scale;           /* scaled formats: [experts][n_out] */
        uint32_t n_out, k;
        const void *x;
        const float *x_scale;           /* scaled formats: per x row */
        uint32_t x_row_div;
        const int32_t *pair_rows;
        const struct kern_gemm_group *groups;
        const int32_t *n_groups;
        uint32_t m;                     /* dense only */
        void *y;
        enum kern_out out;
        float softcap;
        uint32_t rw, kw;                /* warps along rows x warps along K (rw * kw = MMA_WARPS) */
};

struct mma_fmt_e4m3 {
        static constexpr uint32_t bytes = 1;
        static constexpr bool scaled = true;
        static __device__ __forceinline__ void mma(float *c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                   uint32_t b0, uint32_t b1) {
                asm volatile("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 "
                             "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                             : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                             : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
        }
};

/* A: rows gid / gid+8 at k pairs {2t, 2t+1} (a0, a1) and {2t+8, 2t+9} (a2, a3); B: the same pairs of column
 * gid (b0, b1). A lane's 16 bytes are 8 BF16: elements 0-3 feed the first mma, 4-7 the second, the same on
 * both sides. */
struct mma_fmt_bf16 {
        static constexpr uint32_t bytes = 2;
        static constexpr bool scaled = false;
        static __device__ __forceinline__ void mma(float *c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                   uint32_t b0, uint32_t b1) {
                asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                             "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                             : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                             : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
        }
};

/* 16 bytes of a row at byte offset b0 (zeros past len bytes or when !ok). Rows whose length is not a
 * multiple of 16 bytes are not 16-byte aligned: those take byte loads (tiny test models only). */
static __device__ __forceinline__ uint4 mma_ldg16(const uint8_t *row, uint32_t b0, uint32_t len, bool aligned,
                                                  bool ok) {
        if (!ok || b0 >= len)
                return make_uint4(0, 0, 0, 0);
        if (aligned)
                return __ldg(reinterpret_cast<const uint4 *>(row + b0));
        uint32_t v[4] = {0, 0, 0, 0};
        for (uint32_t i = 0; i < 16 && b0 + i < len; i++)
                v[i / 4] |= (uint32_t) row[b0 + i] << (8 * (i % 4));
        return make_uint4(v[0], v[1], v[2], v[3]);
}

template <class F, int NSUB>
static __global__ void __launch_bounds__(MMA_WARPS * 32) mma_small_kernel(struct mma_params p) {
        __shared__ float red[NSUB > 0 ? MMA_WARPS * NSUB * 4 * 32 : 1];
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        const int gid = lane >> 2, tig = lane & 3;
        const uint32_t rw_idx = warp / p.kw, kw_idx = warp % p.kw;
        const uint32_t kb = p.k * F::bytes;     /* row length in bytes */
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
        const uint8_t *w = (const uint8_t *) p.w + (size_t) expert * p.n_out * kb;
        const uint32_t row0 = (blockIdx.x * p.rw + rw_idx) * 16 + gid, row1 = row0 + 8;
        const bool ok0 = row0 < p.n_out, ok1 = row1 < p.n_out;
        const uint8_t *w0 = w + (size_t) (ok0 ? row0 : 0) * kb, *w1 = w + (size_t) (ok1 ? row1 : 0) * kb;

        const uint8_t *xp[NSUB];
#pragma unroll
        for (int s = 0; s < NSUB; s++) {
                int e = s * 8 + gid;
                xp[s] = NULL;
                if (e < count) {
                        int i = start + e;
                        int xr = p.pair_rows ? p.pair_rows[i] / (int) p.x_row_div : i;
                        xp[s] = (const uint8_t *) p.x + (size_t) xr * kb;
                }
        }
        float c[NSUB][4];
#pragma unroll
        for (int s = 0; s < NSUB; s++)
                c[s][0] = c[s][1] = c[s][2] = c[s][3] = 0.0f;

        const uint32_t n_chunks = (kb + 63) / 64;
        const bool aligned = kb % 16 == 0;
        /* UNR chunks of weights in flight per lane before the first mma: the decode GEMV is a stream of
         * weight bytes and needs many outstanding loads per SM */
        constexpr int UNR = NSUB == 1 ? 4 : 2;
        for (uint32_t ch0 = kw_idx; ch0 < n_chunks; ch0 += UNR * p.kw) {
                uint4 a[UNR], b[UNR];
#pragma unroll
                for (int u = 0; u < UNR; u++) {
                        uint32_t ch = ch0 + u * p.kw;
                        uint32_t b0 = ch * 64 + tig * 16;
                        bool cok = ch < n_chunks;
                        a[u] = mma_ldg16(w0, b0, kb, aligned, ok0 && cok);
                        b[u] = mma_ldg16(w1, b0, kb, aligned, ok1 && cok);
                }
#pragma unroll
                for (int u = 0; u < UNR; u++) {
                        uint32_t ch = ch0 + u * p.kw;
                        if (ch >= n_chunks)
                                break;
                        uint32_t b0 = ch * 64 + tig * 16;
#pragma unroll
                        for (int s = 0; s < NSUB; s++) {
                                if (s * 8 >= count)
                                        break;
                                uint4 xv = mma_ldg16(xp[s], b0, kb, aligned, xp[s] != NULL);
                                F::mma(c[s], a[u].x, b[u].x, a[u].y, b[u].y, xv.x, xv.y);
                                F::mma(c[s], a[u].z, b[u].z, a[u].w, b[u].w, xv.z, xv.w);
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

        float sw0 = 1.0f, sw1 = 1.0f;
        if (F::scaled) {
                const float *ws = p.w_scale + (size_t) expert * p.n_out;
                sw0 = ok0 ? ws[row0] : 0.0f;
                sw1 = ok1 ? ws[row1] : 0.0f;
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
                        int xr = p.pair_rows ? orow / (int) p.x_row_div : i;
                        uint32_t n = hi ? row1 : row0;
                        float v = F::scaled ? p.x_scale[xr] * ((hi ? sw1 : sw0) * c[s][j]) : c[s][j];
                        size_t off = (size_t) orow * p.n_out + n;
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
static void mma_pick_split(struct mma_params *p, uint32_t n_groups) {
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

template <class F, int NSUB>
static int mma_launch(struct mma_params *p, uint32_t grid_y, cudaStream_t stream) {
        dim3 grid((p->n_out + 16 * p->rw - 1) / (16 * p->rw), grid_y);
        mma_small_kernel<F, NSUB><<<grid, MMA_WARPS * 32, 0, stream>>>(*p);
        return KERN_CHECK_LAUNCH();
}
