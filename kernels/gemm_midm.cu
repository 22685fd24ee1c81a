/* SPDX-License-Identifier: Apache-2.0 */
/*
 * FP8 linear for 9..128 activation rows on Hopper: a weight stream into wgmma.
 *
 * At these row counts a dense linear is still bound by reading its weights once from HBM. A block owns
 * MIDM_ROWS weight rows and one K slice. Each warp streams its 16 weight rows straight from global memory
 * into registers, MIDM_AHEAD stages ahead of their use, and hands them to wgmma as the A operand (64 rows per
 * warpgroup) from registers: weights never touch shared memory. The tokens of the slice are staged in shared
 * memory (cp.async ring, MIDM_AHEAD stages ahead) and read by the tensor cores as the B operand
 * (m64nNk32, N = the row count rounded up to 16, 32, 64 or 128).
 *
 * K order: each lane loads 16 contiguous bytes of a row per 64-byte chunk, which is the wgmma A fragment of
 * two k32 steps up to a permutation of K inside the chunk; the staging pass applies the same permutation to
 * the tokens, so the dot products are unchanged.
 *
 * When the row blocks alone cannot fill the GPU, K is split over the blocks of a thread-block cluster; the
 * partial sums meet in distributed shared memory, so the split costs no extra launch and no workspace.
 *
 * Measured on H100 (docs/perf-notes.md, "mid"): faster than cuBLASLt at 16 rows on every dense shape of the
 * model and on the LM head, slower from 32 rows on (the per-stage barriers and the token reorder grow with
 * the row count while one block per SM has nothing to overlap them with).
 */
#include <cooperative_groups.h>

#include "common.cuh"

namespace cg = cooperative_groups;

#define MIDM_WARPS 8
#define MIDM_ROWS (MIDM_WARPS * 16)     /* weight rows per block: two warpgroups of 64 */
#define MIDM_STEPS 4                    /* 64-byte K chunks per pipeline stage */
#define MIDM_STAGE (MIDM_STEPS * 64)
#define MIDM_AHEAD 1                    /* stages in flight beyond the one being multiplied: measured, 1 beat 2
                                         * and 3 (fewer registers, two blocks per SM at 16 rows) */
/* staged token rows are padded by 16 bytes so that the reorder pass (consecutive lanes, consecutive tokens)
 * reads distinct banks */
#define MIDM_RAW_STRIDE (MIDM_STAGE + 16)
#define MIDM_MAX_CLUSTER 8
#define MIDM_BLOCK_OVERHEAD 4           /* a block's fill and reduction, in 64-byte chunks */

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

/* Stage the tokens' bytes [kb, kb + MIDM_STAGE) of the slice (zeros at or past kend) into xs. */
template <int NT>
static __device__ __forceinline__ void midm_stage_x(const struct midm_params &p, uint8_t *xs, uint32_t kb,
                                                    uint32_t kend) {
        constexpr int CHUNKS = NT * 8 * MIDM_STEPS * 4;
        for (int i = threadIdx.x; i < CHUNKS; i += MIDM_WARPS * 32) {
                uint32_t tok = i / (MIDM_STEPS * 4), col = (i % (MIDM_STEPS * 4)) * 16;
                uint32_t k0 = kb + col;
                bool ok = tok < p.m && k0 < kend;
                const uint8_t *src = ok ? p.x + (size_t) tok * p.k + k0 : p.x;
                midm_cp16(xs + tok * MIDM_RAW_STRIDE + col, src, ok ? 16 : 0);
        }
        midm_cp_commit();
}

/* Weight registers of one stage: per 64-byte chunk, 16 bytes of row gid and of row gid + 8. */
static __device__ __forceinline__ void midm_load_w(const uint8_t *w0, const uint8_t *w1, uint32_t kb,
                                                   uint32_t kend, int tig, uint4 *lo, uint4 *hi) {
#pragma unroll
        for (int s = 0; s < MIDM_STEPS; s++) {
                uint32_t k0 = kb + s * 64 + tig * 16;
                bool ok = k0 < kend;
                lo[s] = midm_ldw(w0 + k0, ok);
                hi[s] = midm_ldw(w1 + k0, ok);
        }
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

/* The block's partial sums d (the wgmma accumulator layout) reduced over the cluster's K slices
 * and stored. Every thread of every block in the cluster calls it once, after its last use of smem. */
template <int NT>
static __device__ __forceinline__ void midm_finish(const struct midm_params &p, const float (&d)[NT * 4],
                                                   uint8_t *smem) {
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
                        red[tok * MIDM_ROWS + row] = d[4 * t + j];
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

/* Shared-memory matrix descriptor, no swizzle: core matrices of 8 rows x 16 bytes stored as 128 contiguous
 * bytes, 128 bytes between the two core matrices along K (leading), 256 between core matrices along N
 * (stride). Measured on H100 (R2): the swapped reading gives garbage. */
static __device__ __forceinline__ uint64_t midm_desc(const void *smem) {
        uint64_t a = (uint32_t) __cvta_generic_to_shared(smem);
        return ((a >> 4) & 0x3fff) | (uint64_t) (128 >> 4) << 16 | (uint64_t) (256 >> 4) << 32;
}

/* The weight registers of one stage: per 64-byte chunk, 16 bytes of row gid (lo) and of row gid + 8 (hi). */
struct midm_wregs {
        uint4 lo[MIDM_STEPS], hi[MIDM_STEPS];
};

/*
 * Per stage: token word 4 tg + q of a 64-byte chunk (tg: which lane of a quad holds it on the weight side)
 * goes to k32 instruction 2 chunk + q / 2, K half q % 2, column 4 tg: wgmma h of a chunk takes word 2 h + kc
 * of every lane's 16 weight bytes as its K half kc. One k32 token tile is [N / 8][2][8 tokens][16 bytes].
 */
template <int NT, int AHEAD>
static __global__ void __launch_bounds__(MIDM_WARPS * 32, 1) midm_kernel(struct midm_params p) {
        constexpr uint32_t N = NT * 8, RAW_BUF = N * MIDM_RAW_STRIDE, INSTR = N * 32, RING = AHEAD + 1;
        extern __shared__ __align__(16) uint8_t smem[];
        cg::cluster_group cluster = cg::this_cluster();
        const uint32_t n_ranks = cluster.num_blocks(), rank = cluster.block_rank();
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        const int gid = lane >> 2, tig = lane & 3;
        const uint32_t row_block = blockIdx.x / n_ranks;

        /* rows past n_out read the last row (always valid memory) and are never written */
        uint32_t r0 = row_block * MIDM_ROWS + warp * 16 + gid;
        const uint8_t *w0 = p.w + (size_t) min(r0, p.n_out - 1) * p.k;
        const uint8_t *w1 = p.w + (size_t) min(r0 + 8, p.n_out - 1) * p.k;
        uint32_t kbeg = rank * p.k_chunks_per_slice * 64;
        uint32_t kend = min(p.k, kbeg + p.k_chunks_per_slice * 64);
        if (kbeg > kend)
                kbeg = kend;
        const uint32_t n_stages = (kend - kbeg + MIDM_STAGE - 1) / MIDM_STAGE;
        uint8_t *tiles = smem + RING * RAW_BUF;

        float d[N / 2];
#pragma unroll
        for (int i = 0; i < N / 2; i++)
                d[i] = 0.0f;

        /* prologue: stages 0 .. AHEAD - 1 in flight (an empty commit group keeps the counting uniform) */
        struct midm_wregs wr[RING];
#pragma unroll
        for (int a = 0; a < AHEAD; a++) {
                uint32_t kb = kbeg + a * MIDM_STAGE;
                if ((uint32_t) a < n_stages) {
                        midm_stage_x<NT>(p, smem + a * RAW_BUF, kb, kend);
                        midm_load_w(w0, w1, kb, kend, tig, wr[a + 1].lo, wr[a + 1].hi);
                } else {
                        midm_cp_commit();
                }
        }
        for (uint32_t s = 0; s < n_stages; s++) {
                /* rotate: wr[0] is this stage, wr[1 ..] the ones in flight; the freed set takes s + AHEAD */
#pragma unroll
                for (int a = 0; a < AHEAD; a++)
                        wr[a] = wr[a + 1];
                uint32_t ahead = s + AHEAD;
                if (ahead < n_stages) {
                        uint32_t kb = kbeg + ahead * MIDM_STAGE;
                        midm_stage_x<NT>(p, smem + (ahead % RING) * RAW_BUF, kb, kend);
                        midm_load_w(w0, w1, kb, kend, tig, wr[AHEAD].lo, wr[AHEAD].hi);
                } else {
                        midm_cp_commit();
                }
                midm_cp_wait<AHEAD>();
                __syncthreads();
                /* reorder this stage's tokens into the k32 tiles: one (token, chunk) per item */
                const uint8_t *raw = smem + (s % RING) * RAW_BUF;
                for (uint32_t i = threadIdx.x; i < N * MIDM_STEPS; i += MIDM_WARPS * 32) {
                        uint32_t tok = i % N, ch = i / N;
                        const uint4 *src = reinterpret_cast<const uint4 *>(raw + tok * MIDM_RAW_STRIDE + ch * 64);
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
                for (int i = 0; i < MIDM_STEPS; i++) {
                        const uint32_t a0[4] = {wr[0].lo[i].x, wr[0].hi[i].x, wr[0].lo[i].y, wr[0].hi[i].y};
                        const uint32_t a1[4] = {wr[0].lo[i].z, wr[0].hi[i].z, wr[0].lo[i].w, wr[0].hi[i].w};
                        midm_wgmma(d, a0, midm_desc(tiles + (2 * i) * INSTR));
                        midm_wgmma(d, a1, midm_desc(tiles + (2 * i + 1) * INSTR));
                }
                asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
                /* the next stage's first barrier also orders these reads of tiles before its reorder */
                asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
        }
        midm_cp_wait<0>();
        __syncthreads();
        midm_finish<NT>(p, d, smem);
}

template <int NT, int AHEAD>
static size_t midm_smem(void) {
        size_t stage = (AHEAD + 1) * (size_t) NT * 8 * MIDM_RAW_STRIDE + (size_t) NT * 8 * MIDM_STAGE;
        size_t red = (size_t) NT * 8 * MIDM_ROWS * sizeof(float);
        return stage > red ? stage : red;
}

/* The K split (cluster size) for a shape: the one that minimises waves x (64-byte chunks per block + the
 * block's fixed cost), counting a wave as one block per SM. This is the rule every H100 timing in
 * docs/perf-notes.md ran with; at 64 rows it is not the best split (clusters must sit in one GPC), at 16 rows,
 * where two blocks share an SM, it is. It depends on the shape and the GPU only, never on the row count, so a
 * token's output does not change with the batch it runs in (the tests compare batched rows with single
 * steps). */
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
                uint64_t cost = waves * ((chunks + q - 1) / q + MIDM_BLOCK_OVERHEAD);
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

template <int NT, int AHEAD>
static int midm_launch(struct midm_params *p, uint32_t cluster_force, cudaStream_t stream) {
        static bool smem_ready;
        const size_t smem = midm_smem<NT, AHEAD>();

        if (!smem_ready) {
                if (cudaFuncSetAttribute(midm_kernel<NT, AHEAD>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int) smem) != cudaSuccess)
                        return -EIO;
                smem_ready = true;
        }
        return midm_launch_cfg(p, cluster_force, smem, stream, midm_kernel<NT, AHEAD>);
}

extern "C" {
uint32_t kern_fp8_linear_mid_cluster = 0;
}

extern "C" int kern_fp8_linear_mid(const uint8_t *w, const float *w_scale, uint32_t n_out, uint32_t k,
                                   const uint8_t *x, const float *x_scale, uint32_t m, void *y, enum kern_out out,
                                   float softcap, cudaStream_t stream) {
        struct midm_params p = {w, w_scale, n_out, k, m, x, x_scale, y, out, softcap, 0};
        const uint32_t q = kern_fp8_linear_mid_cluster;

        if (k == 0 || k % 16 != 0 || n_out == 0 || m > KERN_MID_M_MAX)
                return -EINVAL;
        if (m == 0)
                return 0;
        if (m <= 16)
                return midm_launch<2, MIDM_AHEAD>(&p, q, stream);
        if (m <= 32)
                return midm_launch<4, MIDM_AHEAD>(&p, q, stream);
        if (m <= 64)
                return midm_launch<8, MIDM_AHEAD>(&p, q, stream);
        return midm_launch<16, MIDM_AHEAD>(&p, q, stream);
}
