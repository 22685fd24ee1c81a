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

        /* Partial sums to shared memory as [token][row] (the staging buffers are free now), so that the
         * reduction over the cluster and the output stores walk consecutive rows. */
        float *red = reinterpret_cast<float *>(smem);
        const float unscale = BITS ? 65536.0f : 1.0f;
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

template <int NT, int STEPS, bool F16, bool BITS>
static int midm_launch(struct midm_params *p, uint32_t cluster_force, cudaStream_t stream) {
        static bool smem_ready;
        const size_t smem = midm_smem<NT, STEPS, F16>();
        const uint32_t row_blocks = (p->n_out + MIDM_ROWS - 1) / MIDM_ROWS;
        const uint32_t chunks = (p->k + 63) / 64;
        cudaLaunchConfig_t cfg = {};
        cudaLaunchAttribute attr[1];

        if (!smem_ready) {
                if (cudaFuncSetAttribute(midm_kernel<NT, STEPS, F16, BITS>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int) smem) !=
                    cudaSuccess)
                        return -EIO;
                smem_ready = true;
        }
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
        if (cudaLaunchKernelEx(&cfg, midm_kernel<NT, STEPS, F16, BITS>, *p) != cudaSuccess)
                return -EIO;
        return KERN_CHECK_LAUNCH();
}

extern "C" {
uint32_t kern_fp8_linear_mid_cluster = 0;
uint32_t kern_fp8_linear_mid_steps = 0;
bool kern_fp8_linear_mid_e4m3_mma = false;
bool kern_fp8_linear_mid_widen_bits = false;
}

template <int NT>
static int midm_launch_nt(struct midm_params *p, cudaStream_t stream) {
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
