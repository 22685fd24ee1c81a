/* SPDX-License-Identifier: Apache-2.0 */
/*
 * FP8 linear for 9..128 activation rows: a weight stream.
 *
 * At these row counts a dense linear is still bound by reading its weights once from HBM, but the tokens are
 * too many to re-read from L2 per warp (what the small-M kernel does). So a block owns MIDM_ROWS weight rows
 * and one K slice, stages the activations of that slice in shared memory (cp.async, double-buffered), and each
 * warp streams its 16 weight rows straight from global memory into registers, one stage ahead of the mma's:
 * the weights never touch shared memory, and every staged activation byte feeds MIDM_WARPS warps.
 *
 * Weights are the M side of mma.sync m16n8k32 (e4m3 x e4m3 -> f32), tokens the N side (8 per tile). A dot
 * product does not care how K is ordered as long as both operands use the same order, so each lane loads 16
 * contiguous bytes of a weight row and of a token row and the two mma's of a 64-byte chunk take their halves
 * (the same trick as gemm.cu's small-M kernel).
 *
 * When the row blocks alone cannot fill the GPU, K is split over the blocks of a thread-block cluster; the
 * partial sums meet in distributed shared memory, so the split costs no extra launch and no workspace.
 */
#include <cooperative_groups.h>

#include "common.cuh"

namespace cg = cooperative_groups;

#define MIDM_WARPS 8
#define MIDM_ROWS (MIDM_WARPS * 16)     /* weight rows per block */
/* A pipeline stage is STEPS 64-byte chunks of K. Shared row stride of a staged token: 16-byte accesses of
 * 8 lanes (two tokens x four 16-byte columns) hit distinct banks when consecutive tokens are 64 bytes apart
 * modulo 128. */
#define MIDM_XSTRIDE(STEPS) ((STEPS) * 64 + 64)
#define MIDM_MAX_CLUSTER 8

struct midm_params {
        const uint8_t *w;
        const float *w_scale;
        uint32_t n_out, k, m;
        const uint8_t *x;
        const float *x_scale;
        void *y;
        enum kern_out out;
        float softcap;
        uint32_t k_chunks_per_slice;    /* 64-byte chunks of K per cluster rank */
};

/* Streaming weight load: read once, so keep it out of L1. volatile keeps it ahead of the mma's it overlaps. */
static __device__ __forceinline__ uint4 midm_ldw(const uint8_t *p, bool ok) {
        uint4 v = make_uint4(0, 0, 0, 0);
        if (ok)
                asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                             : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                             : "l"(p));
        return v;
}

/* 16 bytes global -> shared; src_bytes 0 fills zeros (tokens past m, K past the slice). */
static __device__ __forceinline__ void midm_cp16(void *smem, const void *gmem, uint32_t src_bytes) {
        uint32_t s = (uint32_t) __cvta_generic_to_shared(smem);
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
}

static __device__ __forceinline__ void midm_cp_commit(void) {
        asm volatile("cp.async.commit_group;\n" ::);
}

template <int N>
static __device__ __forceinline__ void midm_cp_wait(void) {
        asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* Stage the tokens' bytes [kb, kb + STEPS * 64) of the slice (zeros at or past kend) into xs. */
template <int NT, int STEPS, int STRIDE>
static __device__ __forceinline__ void midm_stage_x(const struct midm_params &p, uint8_t *xs, uint32_t kb,
                                                    uint32_t kend) {
        constexpr int CHUNKS = NT * 8 * STEPS * 4;
        for (int i = threadIdx.x; i < CHUNKS; i += MIDM_WARPS * 32) {
                uint32_t tok = i / (STEPS * 4), col = (i % (STEPS * 4)) * 16;
                uint32_t k0 = kb + col;
                bool ok = tok < p.m && k0 < kend;
                const uint8_t *src = ok ? p.x + (size_t) tok * p.k + k0 : p.x;
                midm_cp16(xs + tok * STRIDE + col, src, ok ? 16 : 0);
        }
        midm_cp_commit();
}

/* Weight registers of one stage: per 64-byte chunk, 16 bytes of row gid and of row gid + 8. */
template <int STEPS>
static __device__ __forceinline__ void midm_load_w(const uint8_t *w0, const uint8_t *w1, uint32_t kb,
                                                   uint32_t kend, int tig, uint4 *lo, uint4 *hi) {
#pragma unroll
        for (int s = 0; s < STEPS; s++) {
                uint32_t k0 = kb + s * 64 + tig * 16;
                bool ok = k0 < kend;
                lo[s] = midm_ldw(w0 + k0, ok);
                hi[s] = midm_ldw(w1 + k0, ok);
        }
}

/* Two e4m3 values (low byte first) to an f16x2 register: exact, every e4m3 value is an f16 value. */
static __device__ __forceinline__ uint32_t midm_f16x2(uint32_t two) {
        __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t) (two & 0xffffu), __NV_E4M3);
        return (uint32_t) h.x | (uint32_t) h.y << 16;
}

/* Two e4m3 values to f16x2 scaled by 2^-8, with integer ops only: e4m3 is f16 with a 4-bit exponent whose
 * bias is 8 less, so its magnitude bits shifted into f16's exponent/mantissa fields read as value * 2^-8
 * (subnormals included); the sign moves to bit 15. The epilogue multiplies the 2^-16 back in. */
static __device__ __forceinline__ uint32_t midm_f16x2_bits(uint32_t two) {
        uint32_t x = __byte_perm(two, 0, 0x4140);       /* 0x00 b1 00 b0 */
        return ((x << 7) & 0x3f803f80u) | ((x << 8) & 0x80008000u);
}

/* 16 e4m3 bytes to 8 f16x2 registers, in byte order (BITS: scaled by 2^-8, see midm_f16x2_bits). */
template <bool BITS>
static __device__ __forceinline__ void midm_widen16(uint4 v, uint32_t *h) {
        const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
                h[2 * i] = BITS ? midm_f16x2_bits(w[i]) : midm_f16x2(w[i]);
                h[2 * i + 1] = BITS ? midm_f16x2_bits(w[i] >> 16) : midm_f16x2(w[i] >> 16);
        }
}

static __device__ __forceinline__ void midm_mma_f16(float *c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                    uint32_t b0, uint32_t b1) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* Shared layout per (NT, STEPS, F16): two staging buffers of raw e4m3 tokens, plus (F16) one buffer of the
 * current stage widened to f16. */
template <int NT, int STEPS, bool F16>
struct midm_layout {
        static constexpr uint32_t STAGE = STEPS * 64;
        /* e4m3 path: the mma's read the staging buffers, padded against bank conflicts (see MIDM_XSTRIDE);
         * f16 path: the conversion pass reads them linearly, no padding */
        static constexpr uint32_t RAW_STRIDE = F16 ? STAGE : MIDM_XSTRIDE(STEPS);
        static constexpr uint32_t RAW_BUF = NT * 8 * RAW_STRIDE;
        /* f16 rows: a lane reads 32 bytes at tig * 32 of two tokens per phase; an odd number of 16-byte
         * units per row puts the two tokens on opposite bank halves */
        static constexpr uint32_t H_STRIDE = STAGE * 2 + 16;
        static constexpr uint32_t H_OFF = 2 * RAW_BUF;
        static constexpr uint32_t BYTES = H_OFF + (F16 ? NT * 8 * H_STRIDE : 0);
};

/* The block's partial sums c (the mma accumulator layout, times unscale) reduced over the cluster's K slices
 * and stored. Every thread of every block in the cluster calls it once, after its last use of smem. */
template <int NT>
static __device__ __forceinline__ void midm_finish(const struct midm_params &p, float (&c)[NT][4], uint8_t *smem,
                                                   float unscale) {
        cg::cluster_group cluster = cg::this_cluster();
        const uint32_t n_ranks = cluster.num_blocks(), rank = cluster.block_rank();
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        const int gid = lane >> 2, tig = lane & 3;
        const uint32_t row_block = blockIdx.x / n_ranks;

        /* Partial sums to shared memory as [token][row] (the staging buffers are free now), so that the
         * reduction over the cluster and the output stores walk consecutive rows. */
        float *red = reinterpret_cast<float *>(smem);
#pragma unroll
        for (int t = 0; t < NT; t++) {
#pragma unroll
                for (int j = 0; j < 4; j++) {
                        int tok = t * 8 + tig * 2 + (j & 1);
                        int row = warp * 16 + gid + (j >= 2 ? 8 : 0);
                        red[tok * MIDM_ROWS + row] = c[t][j] * unscale;
                }
        }
        cluster.sync();

        const uint32_t total = p.m * MIDM_ROWS;
        for (uint32_t e = rank * MIDM_WARPS * 32 + threadIdx.x; e < total; e += n_ranks * MIDM_WARPS * 32) {
                uint32_t tok = e / MIDM_ROWS, n = row_block * MIDM_ROWS + e % MIDM_ROWS;
                if (n >= p.n_out)
                        continue;
                float acc = 0.0f;
                for (uint32_t q = 0; q < n_ranks; q++)
                        acc += cluster.map_shared_rank(red, q)[e];
                store_linear_out(p.y, (size_t) tok * p.n_out + n, p.x_scale[tok] * (p.w_scale[n] * acc), p.out,
                                 p.softcap);
        }
        /* peers read this block's partials: stay resident until every block is done */
        cluster.sync();
}

template <int NT, int STEPS, bool F16, bool BITS>
static __global__ void __launch_bounds__(MIDM_WARPS * 32) midm_kernel(struct midm_params p) {
        extern __shared__ __align__(16) uint8_t smem[];
        cg::cluster_group cluster = cg::this_cluster();
        const uint32_t n_ranks = cluster.num_blocks(), rank = cluster.block_rank();
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        const int gid = lane >> 2, tig = lane & 3;
        const uint32_t row_block = blockIdx.x / n_ranks;
        const uint32_t n_tiles = (p.m + 7) / 8;         /* token tiles that hold real tokens */

        /* rows past n_out read the last row (always valid memory) and are never written */
        uint32_t r0 = row_block * MIDM_ROWS + warp * 16 + gid;
        const uint8_t *w0 = p.w + (size_t) min(r0, p.n_out - 1) * p.k;
        const uint8_t *w1 = p.w + (size_t) min(r0 + 8, p.n_out - 1) * p.k;

        uint32_t kbeg = rank * p.k_chunks_per_slice * 64;
        uint32_t kend = min(p.k, kbeg + p.k_chunks_per_slice * 64);
        if (kbeg > kend)
                kbeg = kend;
        using L = midm_layout<NT, STEPS, F16>;
        constexpr uint32_t STAGE = L::STAGE, XSTRIDE = L::RAW_STRIDE, XBUF = L::RAW_BUF;
        const uint32_t n_stages = (kend - kbeg + STAGE - 1) / STAGE;
        float c[NT][4];
#pragma unroll
        for (int t = 0; t < NT; t++)
                c[t][0] = c[t][1] = c[t][2] = c[t][3] = 0.0f;

        uint4 lo[STEPS], hi[STEPS], nlo[STEPS], nhi[STEPS];
        if (n_stages > 0) {
                midm_stage_x<NT, STEPS, XSTRIDE>(p, smem, kbeg, kend);
                midm_load_w<STEPS>(w0, w1, kbeg, kend, tig, nlo, nhi);
        }
        for (uint32_t s = 0; s < n_stages; s++) {
#pragma unroll
                for (int i = 0; i < STEPS; i++) {
                        lo[i] = nlo[i];
                        hi[i] = nhi[i];
                }
                if (s + 1 < n_stages) {
                        uint32_t kb = kbeg + (s + 1) * STAGE;
                        midm_stage_x<NT, STEPS, XSTRIDE>(p, smem + ((s + 1) & 1) * XBUF, kb, kend);
                        midm_load_w<STEPS>(w0, w1, kb, kend, tig, nlo, nhi);
                        midm_cp_wait<1>();
                } else {
                        midm_cp_wait<0>();
                }
                __syncthreads();
                if (F16) {
                        /* widen this stage's tokens once for all warps */
                        const uint8_t *raw = smem + (s & 1) * XBUF;
                        for (uint32_t i = threadIdx.x; i < n_tiles * 8 * STEPS * 4; i += MIDM_WARPS * 32) {
                                uint32_t tok = i / (STEPS * 4), col = (i % (STEPS * 4)) * 16;
                                uint32_t h[8];
                                midm_widen16<BITS>(*reinterpret_cast<const uint4 *>(raw + tok * STAGE + col), h);
                                uint4 *dst = reinterpret_cast<uint4 *>(smem + L::H_OFF + tok * L::H_STRIDE + col * 2);
                                dst[0] = make_uint4(h[0], h[1], h[2], h[3]);
                                dst[1] = make_uint4(h[4], h[5], h[6], h[7]);
                        }
                        __syncthreads();
                        const uint8_t *xs = smem + L::H_OFF + gid * L::H_STRIDE + tig * 32;
#pragma unroll
                        for (int i = 0; i < STEPS; i++) {
                                /* K order inside a 64-byte chunk is the lane's byte order: f16 pair 2j + {0, 1}
                                 * of the lane's 16 bytes feeds k16 step j, the same in A and in B */
                                uint32_t al[8], ah[8];
                                midm_widen16<BITS>(lo[i], al);
                                midm_widen16<BITS>(hi[i], ah);
#pragma unroll
                                for (int t = 0; t < NT; t++) {
                                        if ((uint32_t) t >= n_tiles)
                                                break;
                                        const uint4 *bp = reinterpret_cast<const uint4 *>(
                                                xs + t * 8 * L::H_STRIDE + i * 128);
                                        uint4 b0 = bp[0], b1 = bp[1];
                                        uint32_t b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
                                        for (int j = 0; j < 4; j++)
                                                midm_mma_f16(c[t], al[2 * j], ah[2 * j], al[2 * j + 1], ah[2 * j + 1],
                                                             b[2 * j], b[2 * j + 1]);
                                }
                        }
                } else {
                        const uint8_t *xs = smem + (s & 1) * XBUF + gid * XSTRIDE + tig * 16;
#pragma unroll
                        for (int i = 0; i < STEPS; i++) {
#pragma unroll
                                for (int t = 0; t < NT; t++) {
                                        if ((uint32_t) t >= n_tiles)
                                                break;
                                        uint4 b = *reinterpret_cast<const uint4 *>(xs + t * 8 * XSTRIDE + i * 64);
                                        mma_e4m3_m16n8k32(c[t], lo[i].x, hi[i].x, lo[i].y, hi[i].y, b.x, b.y);
                                        mma_e4m3_m16n8k32(c[t], lo[i].z, hi[i].z, lo[i].w, hi[i].w, b.z, b.w);
                                }
                        }
                }
                __syncthreads();
        }

        midm_finish<NT>(p, c, smem, BITS ? 65536.0f : 1.0f);
}

/* wgmma m64nNk32 e4m3, A (64 weight rows) from registers, B (N tokens) from shared memory, D += A B. */
static __device__ __forceinline__ void midm_wgmma(float (&d)[8], const uint32_t *a, uint64_t desc) {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n16k32.f32.e4m3.e4m3 "
                     "{%0,%1,%2,%3,%4,%5,%6,%7}, {%8,%9,%10,%11}, %12, p, 1, 1;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
                       "+f"(d[6]), "+f"(d[7])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc));
}

static __device__ __forceinline__ void midm_wgmma(float (&d)[16], const uint32_t *a, uint64_t desc) {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n32k32.f32.e4m3.e4m3 "
                     "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, {%16,%17,%18,%19}, %20, p, 1, 1;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
                       "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
                       "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc));
}

static __device__ __forceinline__ void midm_wgmma(float (&d)[32], const uint32_t *a, uint64_t desc) {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 "
                     "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, {%32,%33,%34,%35}, %36, p, 1, 1;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
                       "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
                       "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
                       "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                       "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
                       "+f"(d[30]), "+f"(d[31])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc));
}

static __device__ __forceinline__ void midm_wgmma(float (&d)[64], const uint32_t *a, uint64_t desc) {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
                     "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, {%64,%65,%66,%67}, %68, p, 1, 1;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
                       "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
                       "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
                       "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                       "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
                       "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),
                       "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
                       "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
                       "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),
                       "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),
                       "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc));
}

template <int NT, int STEPS, bool F16>
static size_t midm_smem(void) {
        size_t stage = midm_layout<NT, STEPS, F16>::BYTES, red = (size_t) NT * 8 * MIDM_ROWS * sizeof(float);
        return stage > red ? stage : red;
}

/* The K split (cluster size) for a shape: the one that minimises waves x 64-byte chunks per block, where a
 * wave is one block per SM. It depends on the shape and the GPU only, never on the row count, so a token's
 * output does not change with the batch it runs in (the tests compare batched rows with single steps). */
static uint32_t midm_pick_cluster(uint32_t row_blocks, uint32_t chunks) {
        static int n_sm;
        uint32_t best = 1;
        uint64_t best_cost = UINT64_MAX;

        if (n_sm <= 0) {
                int dev = 0;
                if (cudaGetDevice(&dev) != cudaSuccess ||
                    cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n_sm <= 0)
                        n_sm = 132;
        }
        for (uint32_t q = 1; q <= MIDM_MAX_CLUSTER && q <= chunks; q++) {
                uint64_t waves = ((uint64_t) row_blocks * q + n_sm - 1) / n_sm;
                uint64_t cost = waves * ((chunks + q - 1) / q);
                if (cost < best_cost) {
                        best_cost = cost;
                        best = q;
                }
        }
        return best;
}

typedef void (*midm_kernel_fn)(struct midm_params);

/* Grid of row blocks x K split, one cluster per row block. */
static int midm_launch_cfg(struct midm_params *p, uint32_t cluster_force, size_t smem, cudaStream_t stream,
                           midm_kernel_fn fn) {
        const uint32_t row_blocks = (p->n_out + MIDM_ROWS - 1) / MIDM_ROWS;
        const uint32_t chunks = (p->k + 63) / 64;
        cudaLaunchConfig_t cfg = {};
        cudaLaunchAttribute attr[1];

        uint32_t best = cluster_force >= 1 && cluster_force <= MIDM_MAX_CLUSTER ? cluster_force
                                                                               : midm_pick_cluster(row_blocks, chunks);
        p->k_chunks_per_slice = (chunks + best - 1) / best;

        cfg.gridDim = dim3(row_blocks * best);
        cfg.blockDim = dim3(MIDM_WARPS * 32);
        cfg.dynamicSmemBytes = smem;
        cfg.stream = stream;
        attr[0].id = cudaLaunchAttributeClusterDimension;
        attr[0].val.clusterDim.x = best;
        attr[0].val.clusterDim.y = 1;
        attr[0].val.clusterDim.z = 1;
        cfg.attrs = attr;
        cfg.numAttrs = 1;
        if (cudaLaunchKernelEx(&cfg, fn, *p) != cudaSuccess)
                return -EIO;
        return KERN_CHECK_LAUNCH();
}

template <int NT, int STEPS, bool F16, bool BITS>
static int midm_launch(struct midm_params *p, uint32_t cluster_force, cudaStream_t stream) {
        static bool smem_ready;
        const size_t smem = midm_smem<NT, STEPS, F16>();

        if (!smem_ready) {
                if (cudaFuncSetAttribute(midm_kernel<NT, STEPS, F16, BITS>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int) smem) != cudaSuccess)
                        return -EIO;
                smem_ready = true;
        }
        return midm_launch_cfg(p, cluster_force, smem, stream, midm_kernel<NT, STEPS, F16, BITS>);
}

/* Shared-memory matrix descriptor, no swizzle: core matrices of 8 rows x 16 bytes stored as 128 contiguous
 * bytes; lbo = bytes between core matrices along K, sbo = along N. */
static __device__ __forceinline__ uint64_t midm_desc(const void *smem, uint32_t lbo, uint32_t sbo) {
        uint64_t a = (uint32_t) __cvta_generic_to_shared(smem);
        return ((a >> 4) & 0x3fff) | (uint64_t) ((lbo >> 4) & 0x3fff) << 16 | (uint64_t) ((sbo >> 4) & 0x3fff) << 32;
}

/*
 * Hopper path: the same weight stream (each lane holds 16 contiguous bytes of rows gid and gid + 8 per
 * 64-byte chunk, which is the wgmma register fragment of A up to a K order), tokens as the B operand of
 * wgmma m64nNk32 read by the tensor cores straight from shared memory. The lane's K order is undone on the
 * token side: per 64-byte chunk, wgmma h (0, 1) takes 4-byte word 2h + kc of every lane's 16 bytes as its
 * K half kc, so the staging pass writes token word 4 tg + q of a chunk to core matrix (2 chunk + q / 2, q % 2)
 * at column 4 tg. Per k32 instruction the token tile is [N / 8 core rows][2 K halves][8 tokens][16 bytes].
 */
template <int NT, bool SWAP>
static __global__ void __launch_bounds__(MIDM_WARPS * 32) midm_wg_kernel(struct midm_params p) {
        constexpr int STEPS = 4, N = NT * 8;
        constexpr uint32_t STAGE = STEPS * 64, RAW_STRIDE = STAGE + 16, RAW_BUF = N * RAW_STRIDE;
        constexpr uint32_t INSTR = N * 32;                      /* bytes of one k32 token tile */
        extern __shared__ __align__(16) uint8_t smem[];
        cg::cluster_group cluster = cg::this_cluster();
        const uint32_t n_ranks = cluster.num_blocks(), rank = cluster.block_rank();
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        const int gid = lane >> 2, tig = lane & 3;
        const uint32_t row_block = blockIdx.x / n_ranks;

        uint32_t r0 = row_block * MIDM_ROWS + warp * 16 + gid;
        const uint8_t *w0 = p.w + (size_t) min(r0, p.n_out - 1) * p.k;
        const uint8_t *w1 = p.w + (size_t) min(r0 + 8, p.n_out - 1) * p.k;
        uint32_t kbeg = rank * p.k_chunks_per_slice * 64;
        uint32_t kend = min(p.k, kbeg + p.k_chunks_per_slice * 64);
        if (kbeg > kend)
                kbeg = kend;
        const uint32_t n_stages = (kend - kbeg + STAGE - 1) / STAGE;
        uint8_t *tiles = smem + 2 * RAW_BUF;
        /* SWAP: the other reading of which descriptor offset walks K (see midm_desc) */
        const uint32_t lbo = SWAP ? 256 : 128, sbo = SWAP ? 128 : 256;

        float d[N / 2];
#pragma unroll
        for (int i = 0; i < N / 2; i++)
                d[i] = 0.0f;

        uint4 lo[STEPS], hi[STEPS], nlo[STEPS], nhi[STEPS];
        if (n_stages > 0) {
                midm_stage_x<NT, STEPS, RAW_STRIDE>(p, smem, kbeg, kend);
                midm_load_w<STEPS>(w0, w1, kbeg, kend, tig, nlo, nhi);
        }
        for (uint32_t s = 0; s < n_stages; s++) {
#pragma unroll
                for (int i = 0; i < STEPS; i++) {
                        lo[i] = nlo[i];
                        hi[i] = nhi[i];
                }
                if (s + 1 < n_stages) {
                        uint32_t kb = kbeg + (s + 1) * STAGE;
                        midm_stage_x<NT, STEPS, RAW_STRIDE>(p, smem + ((s + 1) & 1) * RAW_BUF, kb, kend);
                        midm_load_w<STEPS>(w0, w1, kb, kend, tig, nlo, nhi);
                        midm_cp_wait<1>();
                } else {
                        midm_cp_wait<0>();
                }
                __syncthreads();
                /* reorder this stage's tokens into the core-matrix tiles: one (token, chunk) per item */
                const uint8_t *raw = smem + (s & 1) * RAW_BUF;
                for (uint32_t i = threadIdx.x; i < N * STEPS; i += MIDM_WARPS * 32) {
                        uint32_t tok = i % N, ch = i / N;
                        const uint4 *src = reinterpret_cast<const uint4 *>(raw + tok * RAW_STRIDE + ch * 64);
                        uint4 v0 = src[0], v1 = src[1], v2 = src[2], v3 = src[3];
                        uint8_t *dst = tiles + (tok / 8) * 256 + (tok % 8) * 16;
                        *reinterpret_cast<uint4 *>(dst + (2 * ch) * INSTR) = make_uint4(v0.x, v1.x, v2.x, v3.x);
                        *reinterpret_cast<uint4 *>(dst + (2 * ch) * INSTR + 128) = make_uint4(v0.y, v1.y, v2.y, v3.y);
                        *reinterpret_cast<uint4 *>(dst + (2 * ch + 1) * INSTR) = make_uint4(v0.z, v1.z, v2.z, v3.z);
                        *reinterpret_cast<uint4 *>(dst + (2 * ch + 1) * INSTR + 128) =
                                make_uint4(v0.w, v1.w, v2.w, v3.w);
                }
                /* ordinary stores read next by the tensor cores (async proxy) */
                asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
                __syncthreads();
                asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
                for (int i = 0; i < STEPS; i++) {
                        const uint32_t a0[4] = {lo[i].x, hi[i].x, lo[i].y, hi[i].y};
                        const uint32_t a1[4] = {lo[i].z, hi[i].z, lo[i].w, hi[i].w};
                        midm_wgmma(d, a0, midm_desc(tiles + (2 * i) * INSTR, lbo, sbo));
                        midm_wgmma(d, a1, midm_desc(tiles + (2 * i + 1) * INSTR, lbo, sbo));
                }
                asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
                asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
                __syncthreads();
        }

        float c[NT][4];
#pragma unroll
        for (int t = 0; t < NT; t++)
#pragma unroll
                for (int j = 0; j < 4; j++)
                        c[t][j] = d[4 * t + j];
        midm_finish<NT>(p, c, smem, 1.0f);
}

template <int NT, bool SWAP>
static int midm_wg_launch(struct midm_params *p, uint32_t cluster_force, cudaStream_t stream) {
        static bool smem_ready;
        constexpr uint32_t N = NT * 8, STAGE = 256;
        size_t smem = 2 * (size_t) N * (STAGE + 16) + (size_t) N * STAGE, red = (size_t) N * MIDM_ROWS * 4;
        if (red > smem)
                smem = red;
        if (!smem_ready) {
                if (cudaFuncSetAttribute(midm_wg_kernel<NT, SWAP>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int) smem) != cudaSuccess)
                        return -EIO;
                smem_ready = true;
        }
        return midm_launch_cfg(p, cluster_force, smem, stream, midm_wg_kernel<NT, SWAP>);
}

extern "C" {
uint32_t kern_fp8_linear_mid_cluster = 0;
uint32_t kern_fp8_linear_mid_steps = 0;
bool kern_fp8_linear_mid_e4m3_mma = false;
bool kern_fp8_linear_mid_widen_bits = false;
uint32_t kern_fp8_linear_mid_wgmma = 0;
}

template <int NT>
static int midm_launch_nt(struct midm_params *p, cudaStream_t stream) {
        if (kern_fp8_linear_mid_wgmma == 1)
                return midm_wg_launch<NT, false>(p, kern_fp8_linear_mid_cluster, stream);
        if (kern_fp8_linear_mid_wgmma == 2)
                return midm_wg_launch<NT, true>(p, kern_fp8_linear_mid_cluster, stream);
        if (kern_fp8_linear_mid_e4m3_mma)
                return midm_launch<NT, 4, false, false>(p, kern_fp8_linear_mid_cluster, stream);
        if (kern_fp8_linear_mid_widen_bits)
                return midm_launch<NT, 4, true, true>(p, kern_fp8_linear_mid_cluster, stream);
        if (kern_fp8_linear_mid_steps == 8)
                return midm_launch<NT, 8, true, false>(p, kern_fp8_linear_mid_cluster, stream);
        return midm_launch<NT, 4, true, false>(p, kern_fp8_linear_mid_cluster, stream);
}

extern "C" int kern_fp8_linear_mid(const uint8_t *w, const float *w_scale, uint32_t n_out, uint32_t k,
                                   const uint8_t *x, const float *x_scale, uint32_t m, void *y, enum kern_out out,
                                   float softcap, cudaStream_t stream) {
        struct midm_params p = {w, w_scale, n_out, k, m, x, x_scale, y, out, softcap, 0};

        if (k == 0 || k % 16 != 0 || n_out == 0 || m > KERN_MID_M_MAX)
                return -EINVAL;
        if (m == 0)
                return 0;
        if (m <= 16)
                return midm_launch_nt<2>(&p, stream);
        if (m <= 32)
                return midm_launch_nt<4>(&p, stream);
        if (m <= 64)
                return midm_launch_nt<8>(&p, stream);
        return midm_launch_nt<16>(&p, stream);
}
