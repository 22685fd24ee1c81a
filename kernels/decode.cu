/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Decode-step kernels for few tokens (1..8 rows).
 *
 * The fused MoE kernel runs a batch's routed experts in one launch: gate_up (FP8, per-row scales), the
 * GELU-tanh gate, the per-pair FP8 requantization and the down projection. A decode step of one token
 * reads 8 experts x 5.9 MB and does almost no arithmetic, so what counts is keeping the memory system
 * busy from the first cycle to the last: the old path spent four launches (route, gate_up, geglu+quant,
 * down) and the latency between them.
 *
 * One persistent grid, two phases and a software grid barrier between them:
 *   phase 1: items (expert, 16 gate rows + the 16 matching up rows), 8 warps split K; h = bf16(gelu(g)) * u
 *            goes to a BF16 scratch row per (token, slot) pair, with the item's |h| maximum per pair;
 *   phase 2: items (expert, 128 output rows), each warp 16 rows over the whole inter width; the pairs'
 *            activations are quantized from the scratch (scale from the phase-1 maxima) into shared memory.
 * The down weights do not depend on phase 1, so every block asks L2 for its phase-2 weights when it
 * starts: they stream in while phase 1 computes and phase 2 reads them from L2.
 *
 * The barrier needs every block resident at once: the grid is at most one wave (occupancy times SMs) and
 * nothing else runs on the stream meanwhile. The weighted sum over a token's experts stays in the FFN
 * combine kernel (one fixed order, so results do not depend on which block finished first).
 *
 * Unique experts: every block derives the same table from topk_idx (at most 8 x 16 pairs): experts in
 * order of first use, each with the pairs that chose it. A token's experts are distinct (top-k), so an
 * expert has at most one pair per token: 8 columns, the N side of one mma.sync m16n8k32.
 */
#include "common.cuh"

#define MOE_WARPS 8
#define MOE_THREADS (MOE_WARPS * 32)
#define MOE_MAX_TOKENS 8
#define MOE_MAX_PAIRS (MOE_MAX_TOKENS * KERNELS_MAX_TOPK)
#define P1_ROWS 16              /* inter positions per phase-1 item (16 gate + 16 up rows) */
#define P1_UNR 6                /* 64-byte K chunks in flight per warp: 44 chunks of hidden 2816 in one pass */
#define P2_ROWS (MOE_WARPS * 16)
#define P2_UNR 12               /* chunks per pass: inter 704 = 11 chunks, one pass */
#define BARRIER_BYTES 256

struct moe_params {
        const uint8_t *w_gu;            /* [E][2I][H]: gate rows then up rows */
        const float *s_gu;              /* [E][2I] */
        const uint8_t *w_down;          /* [E][H][I] */
        const float *s_down;            /* [E][H] */
        uint32_t hidden, inter, n_experts;
        const uint8_t *x;               /* [T][H] */
        const float *x_scale;           /* [T] */
        uint32_t n_tokens, top_k;
        const int32_t *topk_idx;        /* [T][top_k] */
        unsigned *barrier;              /* 2 counters, zero before the first launch, zero again after each */
        float *amax_part;               /* [pairs][n_itiles] */
        uint16_t *h;                    /* [pairs][I] BF16 */
        uint16_t *y;                    /* [pairs][H] BF16 */
};

struct moe_table {
        int32_t n_u;
        int32_t u_expert[MOE_MAX_PAIRS];
        int32_t u_count[MOE_MAX_PAIRS];
        int32_t u_pairs[MOE_MAX_PAIRS][MOE_MAX_TOKENS];
        int32_t idx[MOE_MAX_PAIRS];
        int32_t first[MOE_MAX_PAIRS];   /* first pair with the same expert */
        int32_t rank[MOE_MAX_PAIRS];    /* unique-expert number of a first pair */
};

static __device__ __forceinline__ void mma_e4m3_16x8x32(float *c, uint32_t a0, uint32_t a1, uint32_t a2,
                                                        uint32_t a3, uint32_t b0, uint32_t b1) {
        asm volatile("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 "
                     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* 16 bytes of a row from byte k0 on; zeros past k or when !ok. Unaligned rows (K % 16 != 0, the tiny test
 * models) take byte loads. */
static __device__ __forceinline__ uint4 load16(const uint8_t *row, uint32_t k0, uint32_t k, bool aligned,
                                               bool ok) {
        if (!ok || k0 >= k)
                return make_uint4(0, 0, 0, 0);
        if (aligned && k0 + 16 <= k)
                return __ldg(reinterpret_cast<const uint4 *>(row + k0));
        uint32_t v[4] = {0, 0, 0, 0};
        for (uint32_t i = 0; i < 16 && k0 + i < k; i++)
                v[i / 4] |= (uint32_t) row[k0 + i] << (8 * (i % 4));
        return make_uint4(v[0], v[1], v[2], v[3]);
}

/* Every block: the unique-expert table of the batch (deterministic, identical in all blocks). */
static __device__ void build_table(const struct moe_params &p, struct moe_table *tb) {
        const int P = (int) (p.n_tokens * p.top_k);
        for (int i = threadIdx.x; i < P; i += blockDim.x) {
                int32_t e = p.topk_idx[i];
                tb->idx[i] = e >= 0 && (uint32_t) e < p.n_experts ? e : 0;
        }
        __syncthreads();
        for (int i = threadIdx.x; i < P; i += blockDim.x) {
                int f = i;
                for (int j = 0; j < i; j++)
                        if (tb->idx[j] == tb->idx[i]) {
                                f = j;
                                break;
                        }
                tb->first[i] = f;
        }
        __syncthreads();
        for (int i = threadIdx.x; i < P; i += blockDim.x) {
                int r = 0;
                for (int j = 0; j < i; j++)
                        r += tb->first[j] == j;
                tb->rank[i] = r;
        }
        __syncthreads();
        for (int i = threadIdx.x; i < P; i += blockDim.x) {
                int f = tb->first[i], u = tb->rank[f], slot = 0, count = 0;
                for (int j = f; j < P; j++)
                        if (tb->first[j] == f) {
                                slot += j < i;
                                count++;
                        }
                if (slot < MOE_MAX_TOKENS)
                        tb->u_pairs[u][slot] = i;
                if (f == i) {
                        tb->u_expert[u] = tb->idx[i];
                        tb->u_count[u] = count < MOE_MAX_TOKENS ? count : MOE_MAX_TOKENS;
                }
                if (i == P - 1)
                        tb->n_u = tb->rank[i] + (f == i);
        }
        __syncthreads();
}

/* All blocks of the grid meet here. bar[0] counts arrivals, bar[1] is the generation; the last block to
 * arrive resets the count, so the next launch finds it at zero. */
static __device__ void grid_barrier(unsigned *bar) {
        __syncthreads();
        if (threadIdx.x == 0) {
                volatile unsigned *gen = bar + 1;
                unsigned g = *gen;
                __threadfence();
                if (atomicAdd(bar, 1u) == gridDim.x - 1) {
                        atomicExch(bar, 0u);
                        __threadfence();
                        atomicAdd(bar + 1, 1u);
                } else {
                        while (*gen == g)
                                __nanosleep(64);
                }
                __threadfence();
        }
        __syncthreads();
}

static __device__ void moe_phase1(const struct moe_params &p, const struct moe_table *tb, float *red) {
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gid = lane >> 2, tig = lane & 3;
        const uint32_t H = p.hidden, I = p.inter;
        const uint32_t n_itiles = (I + P1_ROWS - 1) / P1_ROWS, n_items = (uint32_t) tb->n_u * n_itiles;
        const uint32_t n_chunks = (H + 63) / 64;
        const bool aligned = H % 16 == 0;

        for (uint32_t item = blockIdx.x; item < n_items; item += gridDim.x) {
                const int u = (int) (item / n_itiles), it = (int) (item % n_itiles);
                const int e = tb->u_expert[u], cnt = tb->u_count[u];
                const uint32_t i0 = it * P1_ROWS + gid, i1 = i0 + 8;
                const bool ok0 = i0 < I, ok1 = i1 < I;
                const uint8_t *we = p.w_gu + (size_t) e * 2 * I * H;
                const uint8_t *g0 = we + (size_t) (ok0 ? i0 : 0) * H, *g1 = we + (size_t) (ok1 ? i1 : 0) * H;
                const uint8_t *u0 = g0 + (size_t) I * H, *u1 = g1 + (size_t) I * H;
                const uint8_t *xr = gid < cnt ? p.x + (size_t) (tb->u_pairs[u][gid] / (int) p.top_k) * H : NULL;
                float cg[4] = {0, 0, 0, 0}, cu[4] = {0, 0, 0, 0};

                for (uint32_t ch0 = warp; ch0 < n_chunks; ch0 += P1_UNR * MOE_WARPS) {
                        uint4 a0[P1_UNR], a1[P1_UNR], b0[P1_UNR], b1[P1_UNR], xv[P1_UNR];
#pragma unroll
                        for (int r = 0; r < P1_UNR; r++) {
                                uint32_t ch = ch0 + r * MOE_WARPS, k0 = ch * 64 + tig * 16;
                                bool cok = ch < n_chunks;
                                a0[r] = load16(g0, k0, H, aligned, ok0 && cok);
                                a1[r] = load16(g1, k0, H, aligned, ok1 && cok);
                                b0[r] = load16(u0, k0, H, aligned, ok0 && cok);
                                b1[r] = load16(u1, k0, H, aligned, ok1 && cok);
                                xv[r] = load16(xr, k0, H, aligned, xr != NULL && cok);
                        }
#pragma unroll
                        for (int r = 0; r < P1_UNR; r++) {
                                mma_e4m3_16x8x32(cg, a0[r].x, a1[r].x, a0[r].y, a1[r].y, xv[r].x, xv[r].y);
                                mma_e4m3_16x8x32(cg, a0[r].z, a1[r].z, a0[r].w, a1[r].w, xv[r].z, xv[r].w);
                                mma_e4m3_16x8x32(cu, b0[r].x, b1[r].x, b0[r].y, b1[r].y, xv[r].x, xv[r].y);
                                mma_e4m3_16x8x32(cu, b0[r].z, b1[r].z, b0[r].w, b1[r].w, xv[r].z, xv[r].w);
                        }
                }
#pragma unroll
                for (int j = 0; j < 4; j++) {
                        red[((warp * 2 + 0) * 4 + j) * 32 + lane] = cg[j];
                        red[((warp * 2 + 1) * 4 + j) * 32 + lane] = cu[j];
                }
                __syncthreads();
                if (warp == 0) {
                        for (int w = 1; w < MOE_WARPS; w++)
#pragma unroll
                                for (int j = 0; j < 4; j++) {
                                        cg[j] += red[((w * 2 + 0) * 4 + j) * 32 + lane];
                                        cu[j] += red[((w * 2 + 1) * 4 + j) * 32 + lane];
                                }
                        const float *sg = p.s_gu + (size_t) e * 2 * I;
                        float amax[2] = {0.0f, 0.0f};
#pragma unroll
                        for (int j = 0; j < 4; j++) {
                                int col = tig * 2 + (j & 1);
                                uint32_t i = j >= 2 ? i1 : i0;
                                if (col >= cnt || i >= I)
                                        continue;
                                int pair = tb->u_pairs[u][col];
                                float sx = p.x_scale[pair / (int) p.top_k];
                                /* the same roundings as gate_up -> BF16, then kern_geglu_quant */
                                float g = round_bf16(sx * (sg[i] * cg[j]));
                                float up = round_bf16(sx * (sg[I + i] * cu[j]));
                                float hv = round_bf16(round_bf16(gelu_tanh(g)) * up);
                                p.h[(size_t) pair * I + i] = f32_to_bf16_bits(hv);
                                amax[j & 1] = fmaxf(amax[j & 1], fabsf(hv));
                        }
                        /* lanes with the same tig hold the same two columns */
#pragma unroll
                        for (int c = 0; c < 2; c++) {
                                for (int o = 4; o < 32; o <<= 1)
                                        amax[c] = fmaxf(amax[c], __shfl_xor_sync(0xffffffffu, amax[c], o));
                                int col = tig * 2 + c;
                                if (gid == 0 && col < cnt)
                                        p.amax_part[(size_t) tb->u_pairs[u][col] * n_itiles + it] = amax[c];
                        }
                }
                __syncthreads();
        }
}

/* Ask L2 for this block's phase-2 weights (the items it will take) while phase 1 runs. */
static __device__ void moe_prefetch_down(const struct moe_params &p, const struct moe_table *tb) {
        const uint32_t H = p.hidden, I = p.inter;
        const uint32_t n_rtiles = (H + P2_ROWS - 1) / P2_ROWS, n_items = (uint32_t) tb->n_u * n_rtiles;
        for (uint32_t item = blockIdx.x; item < n_items; item += gridDim.x) {
                const int u = (int) (item / n_rtiles), rt = (int) (item % n_rtiles);
                uint32_t r0 = rt * P2_ROWS, rows = H - r0 < P2_ROWS ? H - r0 : P2_ROWS;
                const uint8_t *base = p.w_down + ((size_t) tb->u_expert[u] * H + r0) * I;
                size_t bytes = (size_t) rows * I;
                for (size_t off = (size_t) threadIdx.x * 128; off < bytes; off += (size_t) blockDim.x * 128)
                        asm volatile("prefetch.global.L2 [%0];" ::"l"(base + off));
        }
}

static __device__ void moe_phase2(const struct moe_params &p, const struct moe_table *tb, uint8_t *act,
                                  float *act_scale_s) {
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gid = lane >> 2, tig = lane & 3;
        const uint32_t H = p.hidden, I = p.inter;
        const uint32_t n_itiles = (I + P1_ROWS - 1) / P1_ROWS;
        const uint32_t n_rtiles = (H + P2_ROWS - 1) / P2_ROWS, n_items = (uint32_t) tb->n_u * n_rtiles;
        const uint32_t n_chunks = (I + 63) / 64, I_pad = n_chunks * 64;
        const bool aligned = I % 16 == 0;

        for (uint32_t item = blockIdx.x; item < n_items; item += gridDim.x) {
                const int u = (int) (item / n_rtiles), rt = (int) (item % n_rtiles);
                const int e = tb->u_expert[u], cnt = tb->u_count[u];
                const uint32_t n0 = rt * P2_ROWS + warp * 16 + gid, n1 = n0 + 8;
                const bool ok0 = n0 < H, ok1 = n1 < H;
                const uint8_t *we = p.w_down + (size_t) e * H * I;
                const uint8_t *w0 = we + (size_t) (ok0 ? n0 : 0) * I, *w1 = we + (size_t) (ok1 ? n1 : 0) * I;
                float c[4] = {0, 0, 0, 0};
                uint4 a0[P2_UNR], a1[P2_UNR];

                /* weights first (registers), then the activations, so both latencies overlap */
#pragma unroll
                for (int r = 0; r < P2_UNR; r++) {
                        uint32_t k0 = r * 64 + tig * 16;
                        a0[r] = load16(w0, k0, I, aligned, ok0 && (uint32_t) r < n_chunks);
                        a1[r] = load16(w1, k0, I, aligned, ok1 && (uint32_t) r < n_chunks);
                }
                for (int s = warp; s < MOE_MAX_TOKENS; s += MOE_WARPS) {
                        float amax = 0.0f;
                        int pair = s < cnt ? tb->u_pairs[u][s] : -1;
                        if (pair >= 0)
                                for (uint32_t t = lane; t < n_itiles; t += 32)
                                        amax = fmaxf(amax, __ldcg(p.amax_part + (size_t) pair * n_itiles + t));
                        amax = warp_max(amax);
                        float sc = act_scale(amax);
                        if (lane == 0)
                                act_scale_s[s] = sc;
                        for (uint32_t i = lane; i < I_pad; i += 32) {
                                float v = pair >= 0 && i < I ? bf16_bits_to_f32(__ldcg(p.h + (size_t) pair * I + i))
                                                             : 0.0f;
                                act[s * I_pad + i] = f32_to_e4m3(v / sc);
                        }
                }
                __syncthreads();
                for (uint32_t ch0 = 0; ch0 < n_chunks; ch0 += P2_UNR) {
                        if (ch0 > 0) {
#pragma unroll
                                for (int r = 0; r < P2_UNR; r++) {
                                        uint32_t ch = ch0 + r, k0 = ch * 64 + tig * 16;
                                        a0[r] = load16(w0, k0, I, aligned, ok0 && ch < n_chunks);
                                        a1[r] = load16(w1, k0, I, aligned, ok1 && ch < n_chunks);
                                }
                        }
#pragma unroll
                        for (int r = 0; r < P2_UNR; r++) {
                                uint32_t ch = ch0 + r;
                                if (ch >= n_chunks)
                                        break;
                                uint4 xv = *reinterpret_cast<const uint4 *>(act + gid * I_pad + ch * 64 + tig * 16);
                                mma_e4m3_16x8x32(c, a0[r].x, a1[r].x, a0[r].y, a1[r].y, xv.x, xv.y);
                                mma_e4m3_16x8x32(c, a0[r].z, a1[r].z, a0[r].w, a1[r].w, xv.z, xv.w);
                        }
                }
                const float *sd = p.s_down + (size_t) e * H;
#pragma unroll
                for (int j = 0; j < 4; j++) {
                        int col = tig * 2 + (j & 1);
                        uint32_t n = j >= 2 ? n1 : n0;
                        if (col >= cnt || n >= H)
                                continue;
                        int pair = tb->u_pairs[u][col];
                        p.y[(size_t) pair * H + n] = f32_to_bf16_bits(act_scale_s[col] * (sd[n] * c[j]));
                }
                __syncthreads();
        }
}

/* shared memory: the table, the K-split partial sums, the pairs' scales, then the FP8 activations (16-byte
 * aligned: phase 2 reads them as uint4) */
#define SMEM_RED ((sizeof(struct moe_table) + 15) / 16 * 16)
#define SMEM_SCALE (SMEM_RED + MOE_WARPS * 2 * 4 * 32 * sizeof(float))
#define SMEM_ACT (SMEM_SCALE + 16 * sizeof(float))

static __global__ void __launch_bounds__(MOE_THREADS, 1) moe_decode_kernel(struct moe_params p) {
        extern __shared__ __align__(16) uint8_t smem[];
        struct moe_table *tb = reinterpret_cast<struct moe_table *>(smem);
        float *red = reinterpret_cast<float *>(smem + SMEM_RED);
        float *act_scale_s = reinterpret_cast<float *>(smem + SMEM_SCALE);
        uint8_t *act = smem + SMEM_ACT;

        build_table(p, tb);
        moe_prefetch_down(p, tb);
        moe_phase1(p, tb, red);
        grid_barrier(p.barrier);
        moe_phase2(p, tb, act, act_scale_s);
}

static size_t moe_smem_bytes(uint32_t inter) {
        size_t i_pad = (inter + 63) / 64 * 64;
        return SMEM_ACT + MOE_MAX_TOKENS * i_pad;
}

extern "C" size_t kern_moe_decode_workspace(uint32_t top_k, uint32_t inter) {
        size_t pairs = (size_t) MOE_MAX_TOKENS * top_k, n_itiles = (inter + P1_ROWS - 1) / P1_ROWS;
        size_t amax = (pairs * n_itiles * sizeof(float) + 255) & ~(size_t) 255;
        return BARRIER_BYTES + amax + pairs * inter * sizeof(uint16_t);
}

extern "C" bool kern_moe_decode_supported(uint32_t n_tokens, uint32_t top_k, uint32_t hidden, uint32_t inter) {
        return n_tokens >= 1 && n_tokens <= MOE_MAX_TOKENS && top_k >= 1 && top_k <= KERNELS_MAX_TOPK &&
               hidden > 0 && inter > 0 && inter <= P2_UNR * 64 * 8 && moe_smem_bytes(inter) <= 200 * 1024;
}

extern "C" int kern_moe_decode(const uint8_t *w_gate_up, const float *s_gate_up, const uint8_t *w_down,
                               const float *s_down, uint32_t n_experts, uint32_t hidden, uint32_t inter,
                               const uint8_t *x, const float *x_scale, uint32_t n_tokens, const int32_t *topk_idx,
                               uint32_t top_k, void *workspace, uint16_t *y, cudaStream_t stream) {
        static int grid_max;            /* blocks that fit at once: the barrier needs them all resident */
        size_t smem = moe_smem_bytes(inter);

        if (!kern_moe_decode_supported(n_tokens, top_k, hidden, inter) || n_experts == 0)
                return -EINVAL;
        if (grid_max == 0) {
                int dev = 0, sms = 0, per_sm = 0;
                if (cudaGetDevice(&dev) != cudaSuccess ||
                    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
                        return -EIO;
                if (cudaFuncSetAttribute((const void *) moe_decode_kernel,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024) != cudaSuccess ||
                    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, moe_decode_kernel, MOE_THREADS,
                                                                  200 * 1024) != cudaSuccess)
                        return -EIO;
                /* sized with the largest shared memory any shape asks for, so it holds for every launch */
                grid_max = sms * (per_sm > 0 ? per_sm : 1);
        }
        struct moe_params p;
        uint8_t *ws = (uint8_t *) workspace;
        size_t pairs = (size_t) MOE_MAX_TOKENS * top_k, n_itiles = (inter + P1_ROWS - 1) / P1_ROWS;
        p.w_gu = w_gate_up;
        p.s_gu = s_gate_up;
        p.w_down = w_down;
        p.s_down = s_down;
        p.hidden = hidden;
        p.inter = inter;
        p.n_experts = n_experts;
        p.x = x;
        p.x_scale = x_scale;
        p.n_tokens = n_tokens;
        p.top_k = top_k;
        p.topk_idx = topk_idx;
        p.barrier = (unsigned *) ws;
        p.amax_part = (float *) (ws + BARRIER_BYTES);
        p.h = (uint16_t *) (ws + BARRIER_BYTES + ((pairs * n_itiles * sizeof(float) + 255) & ~(size_t) 255));
        p.y = y;
        moe_decode_kernel<<<grid_max, MOE_THREADS, smem, stream>>>(p);
        return KERN_CHECK_LAUNCH();
}

/* ---- L2 prefetch of weights that the next ops will read ----
 * A decode step alternates between weight streams (the GEMMs) and stretches where DRAM idles (norms,
 * attention over a short context, top-k): a prefetch launched before such a stretch lets the next GEMM
 * find its weights in L2. Bulk prefetches are fire-and-forget, so the kernel itself takes a few us. */

#define PREFETCH_PIECE (32u << 10)

static __global__ void l2_prefetch_kernel(struct kern_prefetch ranges) {
        for (int r = 0; r < KERN_PREFETCH_RANGES; r++) {
                const uint8_t *base = (const uint8_t *) ranges.p[r];
                size_t n = ranges.bytes[r] & ~(size_t) 15;
                if (!base || n == 0)
                        continue;
                for (size_t off = (size_t) (blockIdx.x * blockDim.x + threadIdx.x) * PREFETCH_PIECE; off < n;
                     off += (size_t) gridDim.x * blockDim.x * PREFETCH_PIECE) {
                        uint32_t len = (uint32_t) (n - off < PREFETCH_PIECE ? n - off : PREFETCH_PIECE);
                        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(base + off), "r"(len)
                                     : "memory");
                }
        }
}

extern "C" int kern_l2_prefetch(const struct kern_prefetch *ranges, cudaStream_t stream) {
        for (int r = 0; r < KERN_PREFETCH_RANGES; r++)
                if (ranges->p[r] && ((uintptr_t) ranges->p[r] & 15) != 0)
                        return -EINVAL;
        l2_prefetch_kernel<<<4, 128, 0, stream>>>(*ranges);
        return KERN_CHECK_LAUNCH();
}
