/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Decode-step kernels for few tokens (1..8 rows).
 *
 * The fused FFN kernel runs a decode step's whole feed-forward block in one launch: the routed experts and
 * (optionally) the dense MLP, each as gate_up (FP8, per-row scales), the GELU-tanh gate, the per-row FP8
 * requantization and the down projection. A decode step of one token reads 8 experts x 5.9 MB plus the
 * dense 17.8 MB and does almost no arithmetic, so what counts is keeping the memory system busy from the
 * first cycle to the last: the old path spent seven launches (dense gate_up, geglu, down; route, expert
 * gate_up, geglu, down) and the latency between them.
 *
 * "Units" share one weight set: an expert with the pairs (token, slot) that chose it, or the dense MLP with
 * the tokens. One persistent grid, two phases and a software grid barrier between them:
 *   phase 1: items (unit, 16 gate rows + the 16 matching up rows), 8 warps split K; h = bf16(gelu(g)) * u
 *            goes to a BF16 scratch row per column, with the item's |h| maximum per column;
 *   phase 2: items (unit, 128 output rows), each warp 16 rows over the whole inter width; the columns'
 *            activations are quantized from the scratch (scale from the phase-1 maxima) into shared memory.
 * The down weights do not depend on phase 1, so every block asks L2 for its phase-2 weights when it
 * starts: they stream in while phase 1 computes and phase 2 reads them from L2.
 *
 * The barrier needs every block resident at once: the grid is one wave (occupancy times SMs) and nothing
 * else runs on the stream meanwhile. The weighted sum over a token's experts stays in the FFN combine
 * kernel (one fixed order, so results do not depend on which block finished first).
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
/* 64-byte K chunks in flight per warp (U1: phase 1, U2: phase 2 per pass), as template parameters: the
 * wide variant loads a whole phase-1 item (hidden 2816 = 44 chunks over 8 warps) and an expert's inter (704 =
 * 11 chunks) in one pass at one block per SM; the narrow one takes two passes at two blocks per SM, so that
 * one block's loads are in flight while the other reduces. */
#define P2_ROWS (MOE_WARPS * 16)
#define BARRIER_BYTES 256
#define SMEM_MAX (200 * 1024)

/* one weight set: experts are [n][2I][H] / [n][H][I] blocks, the dense MLP a single one */
struct ffn_set {
        const uint8_t *w_gu, *w_down;
        const float *s_gu, *s_down;
        uint32_t inter, n_itiles;
        const uint8_t *x;               /* [T][H] */
        const float *x_scale;
        float *amax_part;               /* [rows][n_itiles] */
        uint16_t *h;                    /* [rows][inter] BF16 */
        uint16_t *y;                    /* [rows][H] BF16 */
};

struct moe_params {
        struct ffn_set ex, dn;          /* experts; dense MLP (dn.w_gu NULL: none) */
        uint32_t hidden, n_experts, n_tokens, top_k;
        int32_t *topk_idx;              /* [T][top_k]: input, or output when the router runs here */
        float *topk_w;                  /* [T][top_k]: output when the router runs here */
        const uint16_t *r_in, *r_proj, *r_pes;  /* router input [T][H], weights [E][H], per-expert scale */
        float *logits;                  /* [T][E] scratch */
        unsigned *barrier;              /* 2 counters, zero before the first launch, zero again after each */
        uint32_t flags;                 /* KERN_FFN_DECODE_NO_* (measurements) */
        unsigned long long *times;      /* phase marks (measurements), NULL: none */
};

/* Measurements: the time (globaltimer, ns) at which the last block reached mark m; times[15] the first
 * block's start. */
static __device__ __forceinline__ void mark(const struct moe_params &p, int m) {
        if (!p.times)
                return;
        __syncthreads();
        if (threadIdx.x == 0) {
                unsigned long long now;
                asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
                atomicMax(p.times + m, now);
                if (m == 0)
                        atomicMin(p.times + 15, now);
        }
}

struct moe_table {
        int32_t n_u;
        int32_t u_expert[MOE_MAX_PAIRS];
        int32_t u_count[MOE_MAX_PAIRS];
        int32_t u_pairs[MOE_MAX_PAIRS][MOE_MAX_TOKENS];
        int32_t idx[MOE_MAX_PAIRS];
        float w[MOE_MAX_PAIRS];         /* routing weights, when the kernel routes */
        int32_t first[MOE_MAX_PAIRS];   /* first pair with the same expert */
        int32_t rank[MOE_MAX_PAIRS];    /* unique-expert number of a first pair */
};

/* A unit as the phases see it: its weights (the set's, offset to the expert), its columns and where each
 * column's rows are. */
struct unit {
        struct ffn_set s;
        int cnt;
        const int32_t *pairs;           /* experts: column -> pair; dense: NULL (column = token) */
        uint32_t top_k;
};

static __device__ __forceinline__ struct unit unit_get(const struct moe_params &p, const struct moe_table *tb,
                                                       int u) {
        struct unit r;
        if (u < 0) {
                r.s = p.dn;
                r.cnt = (int) p.n_tokens;
                r.pairs = NULL;
        } else {
                size_t e = (size_t) tb->u_expert[u], I = p.ex.inter, H = p.hidden;
                r.s = p.ex;
                r.s.w_gu += e * 2 * I * H;
                r.s.w_down += e * H * I;
                r.s.s_gu += e * 2 * I;
                r.s.s_down += e * H;
                r.cnt = tb->u_count[u];
                r.pairs = tb->u_pairs[u];
        }
        r.top_k = p.top_k;
        return r;
}

/* the scratch / output row of a column, and its token (the x row) */
static __device__ __forceinline__ int unit_row(const struct unit &u, int col) {
        return u.pairs ? u.pairs[col] : col;
}

static __device__ __forceinline__ int unit_token(const struct unit &u, int col) {
        return u.pairs ? u.pairs[col] / (int) u.top_k : col;
}

/* Items of a phase: the dense unit's tiles first (its phase-2 items are the longest), then the experts'. */
static __device__ __forceinline__ void item_get(uint32_t item, uint32_t tiles_dense,
                                                uint32_t tiles_expert, int *ret_u, uint32_t *ret_tile) {
        if (item < tiles_dense) {
                *ret_u = -1;
                *ret_tile = item;
                return;
        }
        item -= tiles_dense;
        *ret_u = (int) (item / tiles_expert);
        *ret_tile = item % tiles_expert;
}

static __device__ __forceinline__ void mma_e4m3_16x8x32(float *c, uint32_t a0, uint32_t a1, uint32_t a2,
                                                        uint32_t a3, uint32_t b0, uint32_t b1) {
        asm volatile("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 "
                     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* c += the 16 weight rows held in a0 / a1 (chunks ch0 .. ch0 + UNR - 1, those below end) times the
 * activations in shared memory (this lane's column at xrow) */
template <int UNR>
static __device__ __forceinline__ void mma_chunks_smem(float *c, const uint4 *a0, const uint4 *a1, uint32_t ch0,
                                                       uint32_t end, const uint8_t *xrow, int tig) {
#pragma unroll
        for (int r = 0; r < UNR; r++) {
                uint32_t ch = ch0 + r;
                if (ch >= end)
                        break;
                uint4 xv = *reinterpret_cast<const uint4 *>(xrow + ch * 64 + tig * 16);
                mma_e4m3_16x8x32(c, a0[r].x, a1[r].x, a0[r].y, a1[r].y, xv.x, xv.y);
                mma_e4m3_16x8x32(c, a0[r].z, a1[r].z, a0[r].w, a1[r].w, xv.z, xv.w);
        }
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

/* A launch that may start before the previous kernel in the stream has finished (programmatic dependent
 * launch): the kernel's prologue only touches weights, and griddep_wait() guards everything else. */
template <typename... Params, typename... Args>
static int launch_pdl(bool pdl, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                      cudaStream_t stream, Args... args) {
        cudaLaunchConfig_t cfg = {};
        cudaLaunchAttribute at[1];
        cfg.gridDim = grid;
        cfg.blockDim = block;
        cfg.dynamicSmemBytes = smem;
        cfg.stream = stream;
        at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        at[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.attrs = at;
        cfg.numAttrs = pdl ? 1 : 0;
        return cudaLaunchKernelEx(&cfg, kernel, args...) == cudaSuccess ? 0 : -EIO;
}

/* Every block: the unique-expert table of the batch (deterministic, identical in all blocks), from
 * tb->idx (the top-k of every token). */
static __device__ void build_table(const struct moe_params &p, struct moe_table *tb) {
        const int P = (int) (p.n_tokens * p.top_k);
        for (int i = threadIdx.x; i < P; i += blockDim.x) {
                int32_t e = tb->idx[i];
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

static __device__ __forceinline__ void prefetch_l2(const uint8_t *base, size_t bytes) {
        for (size_t off = (size_t) threadIdx.x * 128; off < bytes; off += (size_t) blockDim.x * 128)
                asm volatile("prefetch.global.L2 [%0];" ::"l"(__cvta_generic_to_global(base + off)));
}

/* Ask L2 for a phase-1 item's gate and up rows: issued one item ahead, so the memory system keeps
 * streaming while this block reduces and writes the current item. */
static __device__ void prefetch_item1(const struct moe_params &p, const struct moe_table *tb, int uid, uint32_t it) {
        const struct unit un = unit_get(p, tb, uid);
        const uint32_t I = un.s.inter, i0 = it * P1_ROWS, rows = I - i0 < P1_ROWS ? I - i0 : P1_ROWS;
        prefetch_l2(un.s.w_gu + (size_t) i0 * p.hidden, (size_t) rows * p.hidden);
        prefetch_l2(un.s.w_gu + ((size_t) I + i0) * p.hidden, (size_t) rows * p.hidden);
}

/* One phase-1 item: 16 gate and 16 up rows of unit uid against its columns; every thread of the block. */
template <int P1_UNR>
static __device__ void phase1_item(const struct moe_params &p, const struct moe_table *tb, float *red, int uid,
                                   uint32_t it) {
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gid = lane >> 2, tig = lane & 3;
        const uint32_t H = p.hidden;
        const uint32_t n_chunks = (H + 63) / 64;
        const bool aligned = H % 16 == 0;
        {
                const struct unit un = unit_get(p, tb, uid);
                const uint32_t I = un.s.inter;
                const uint32_t i0 = it * P1_ROWS + gid, i1 = i0 + 8;
                const bool ok0 = i0 < I, ok1 = i1 < I;
                const uint8_t *g0 = un.s.w_gu + (size_t) (ok0 ? i0 : 0) * H;
                const uint8_t *g1 = un.s.w_gu + (size_t) (ok1 ? i1 : 0) * H;
                const uint8_t *u0 = g0 + (size_t) I * H, *u1 = g1 + (size_t) I * H;
                const uint8_t *xr = gid < un.cnt ? un.s.x + (size_t) unit_token(un, gid) * H : NULL;
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
                        float amax[2] = {0.0f, 0.0f};
#pragma unroll
                        for (int j = 0; j < 4; j++) {
                                int col = tig * 2 + (j & 1);
                                uint32_t i = j >= 2 ? i1 : i0;
                                if (col >= un.cnt || i >= I)
                                        continue;
                                float sx = un.s.x_scale[unit_token(un, col)];
                                /* the same roundings as gate_up -> BF16, then kern_geglu_quant */
                                float g = round_bf16(sx * (un.s.s_gu[i] * cg[j]));
                                float up = round_bf16(sx * (un.s.s_gu[I + i] * cu[j]));
                                float hv = round_bf16(round_bf16(gelu_tanh(g)) * up);
                                un.s.h[(size_t) unit_row(un, col) * I + i] = f32_to_bf16_bits(hv);
                                amax[j & 1] = fmaxf(amax[j & 1], fabsf(hv));
                        }
                        /* lanes with the same tig hold the same two columns */
#pragma unroll
                        for (int c = 0; c < 2; c++) {
                                for (int o = 4; o < 32; o <<= 1)
                                        amax[c] = fmaxf(amax[c], __shfl_xor_sync(0xffffffffu, amax[c], o));
                                int col = tig * 2 + c;
                                if (gid == 0 && col < un.cnt)
                                        un.s.amax_part[(size_t) unit_row(un, col) * un.s.n_itiles + it] =
                                                amax[c];
                        }
                }
                __syncthreads();
        }
}

/* Router logits of expert e for every token: one warp per token, kern_router's dot product. */
static __device__ void router_item(const struct moe_params &p, uint32_t e) {
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        const uint32_t n = p.hidden;
        for (uint32_t t = warp; t < p.n_tokens; t += MOE_WARPS) {
                float acc = warp_dot_bf16(p.r_in + (size_t) t * n, p.r_proj + (size_t) e * n, n);
                if (lane == 0)
                        p.logits[(size_t) t * p.n_experts + e] = acc;
        }
}

/* kern_router's top-k on a shared-memory copy of the logits, one warp per token: every block computes the
 * same choices into tb->idx; block 0 also writes them out for the FFN combine. */
static __device__ void router_topk(const struct moe_params &p, struct moe_table *tb, float *lg_all) {
        const int warp = threadIdx.x >> 5;
        const uint32_t E = p.n_experts, top_k = p.top_k;
        for (uint32_t i = threadIdx.x; i < p.n_tokens * E; i += blockDim.x)
                lg_all[i] = __ldcg(p.logits + i);
        __syncthreads();
        for (uint32_t t = warp; t < p.n_tokens; t += MOE_WARPS)
                warp_router_topk(lg_all + (size_t) t * E, E, top_k, p.r_pes, tb->idx + t * top_k,
                                 tb->w + t * top_k);
        __syncthreads();
        if (blockIdx.x == 0)
                for (uint32_t i = threadIdx.x; i < p.n_tokens * top_k; i += blockDim.x) {
                        p.topk_idx[i] = tb->idx[i];
                        p.topk_w[i] = tb->w[i];
                }
}

/* Ask L2 for this block's phase-2 weights (of the phase-2 items in [first, end) that it will take) while
 * phase 1 runs. Expert items need the table. */
static __device__ void ffn_prefetch_down(const struct moe_params &p, const struct moe_table *tb, uint32_t first,
                                         uint32_t end) {
        const uint32_t H = p.hidden, n_rtiles = (H + P2_ROWS - 1) / P2_ROWS;
        const uint32_t td = p.dn.w_gu ? n_rtiles : 0;
        uint32_t item = first / gridDim.x * gridDim.x + blockIdx.x;
        if (item < first)
                item += gridDim.x;
        for (; item < end; item += gridDim.x) {
                int uid;
                uint32_t rt;
                item_get(item, td, n_rtiles, &uid, &rt);
                const struct unit un = unit_get(p, tb, uid);
                uint32_t r0 = rt * P2_ROWS, rows = H - r0 < P2_ROWS ? H - r0 : P2_ROWS;
                const uint8_t *base = un.s.w_down + (size_t) r0 * un.s.inter;
                size_t bytes = (size_t) rows * un.s.inter;
                prefetch_l2(base, bytes);
        }
}

template <int P2_UNR>
static __device__ void ffn_phase2(const struct moe_params &p, const struct moe_table *tb, uint8_t *act,
                                  float *act_scale_s) {
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gid = lane >> 2, tig = lane & 3;
        const uint32_t H = p.hidden, n_rtiles = (H + P2_ROWS - 1) / P2_ROWS;
        const uint32_t td = p.dn.w_gu ? n_rtiles : 0, n_items = td + (uint32_t) tb->n_u * n_rtiles;

        for (uint32_t item = blockIdx.x; item < n_items; item += gridDim.x) {
                int uid;
                uint32_t rt;
                item_get(item, td, n_rtiles, &uid, &rt);
                const struct unit un = unit_get(p, tb, uid);
                const uint32_t I = un.s.inter, n_itiles = un.s.n_itiles;
                const uint32_t n_chunks = (I + 63) / 64, I_pad = n_chunks * 64;
                const bool aligned = I % 16 == 0;
                const uint32_t n0 = rt * P2_ROWS + warp * 16 + gid, n1 = n0 + 8;
                const bool ok0 = n0 < H, ok1 = n1 < H;
                const uint8_t *w0 = un.s.w_down + (size_t) (ok0 ? n0 : 0) * I;
                const uint8_t *w1 = un.s.w_down + (size_t) (ok1 ? n1 : 0) * I;
                float c[4] = {0, 0, 0, 0};
                uint4 a0[P2_UNR], a1[P2_UNR];

                /* weights first (registers), then the activations, so both latencies overlap */
#pragma unroll
                for (int r = 0; r < P2_UNR; r++) {
                        uint32_t k0 = r * 64 + tig * 16;
                        a0[r] = load16(w0, k0, I, aligned, ok0 && (uint32_t) r < n_chunks);
                        a1[r] = load16(w1, k0, I, aligned, ok1 && (uint32_t) r < n_chunks);
                }
                /* the columns' scales (one warp each), then their rows quantized by the whole block, 8
                 * values per thread and step (a serial loop here was most of this kernel's time) */
                for (int s = warp; s < MOE_MAX_TOKENS; s += MOE_WARPS) {
                        float amax = 0.0f;
                        int row = s < un.cnt ? unit_row(un, s) : -1;
                        if (row >= 0)
                                for (uint32_t t = lane; t < n_itiles; t += 32)
                                        amax = fmaxf(amax, __ldcg(un.s.amax_part + (size_t) row * n_itiles + t));
                        amax = warp_max(amax);
                        if (lane == 0)
                                act_scale_s[s] = act_scale(amax);
                }
                __syncthreads();
                const uint32_t groups = I_pad / 8;
                for (uint32_t gi = threadIdx.x; gi < MOE_MAX_TOKENS * groups; gi += blockDim.x) {
                        const int s = (int) (gi / groups);
                        const uint32_t i0 = gi % groups * 8;
                        uint32_t qw[2] = {0, 0};
                        if (s < un.cnt && i0 < I) {
                                const uint16_t *hr = un.s.h + (size_t) unit_row(un, s) * I;
                                const float sc = act_scale_s[s];
                                uint32_t hw[4];
                                if (I % 8 == 0) {
                                        uint4 v = __ldcg(reinterpret_cast<const uint4 *>(hr + i0));
                                        hw[0] = v.x, hw[1] = v.y, hw[2] = v.z, hw[3] = v.w;
                                } else {
#pragma unroll
                                        for (int j = 0; j < 4; j++) {
                                                uint32_t lo = i0 + 2 * j < I ? __ldcg(hr + i0 + 2 * j) : 0;
                                                uint32_t hi = i0 + 2 * j + 1 < I ? __ldcg(hr + i0 + 2 * j + 1) : 0;
                                                hw[j] = lo | hi << 16;
                                        }
                                }
#pragma unroll
                                for (int j = 0; j < 8; j++) {
                                        uint16_t hb = (uint16_t) (hw[j / 2] >> (16 * (j % 2)));
                                        qw[j / 4] |= (uint32_t) f32_to_e4m3(bf16_bits_to_f32(hb) / sc) << (8 * (j % 4));
                                }
                        }
                        *reinterpret_cast<uint2 *>(act + s * I_pad + i0) = make_uint2(qw[0], qw[1]);
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
                        mma_chunks_smem<P2_UNR>(c, a0, a1, ch0, n_chunks, act + gid * I_pad, tig);
                }
#pragma unroll
                for (int j = 0; j < 4; j++) {
                        int col = tig * 2 + (j & 1);
                        uint32_t n = j >= 2 ? n1 : n0;
                        if (col >= un.cnt || n >= H)
                                continue;
                        un.s.y[(size_t) unit_row(un, col) * H + n] =
                                f32_to_bf16_bits(act_scale_s[col] * (un.s.s_down[n] * c[j]));
                }
                __syncthreads();
        }
}

/* shared memory: the table, the K-split partial sums, the columns' scales, then the FP8 activations
 * (16-byte aligned: phase 2 reads them as uint4) */
#define SMEM_RED ((sizeof(struct moe_table) + 15) / 16 * 16)
#define SMEM_SCALE (SMEM_RED + MOE_WARPS * 2 * 4 * 32 * sizeof(float))
#define SMEM_ACT (SMEM_SCALE + 16 * sizeof(float))

template <int U1, int U2, int MINB>
static __global__ void __launch_bounds__(MOE_THREADS, MINB) ffn_decode_kernel(struct moe_params p) {
        extern __shared__ __align__(16) uint8_t smem[];
        struct moe_table *tb = reinterpret_cast<struct moe_table *>(smem);
        float *red = reinterpret_cast<float *>(smem + SMEM_RED);
        float *act_scale_s = reinterpret_cast<float *>(smem + SMEM_SCALE);
        uint8_t *act = smem + SMEM_ACT;

        const uint32_t td = p.dn.w_gu ? p.dn.n_itiles : 0, te = p.ex.n_itiles;
        const uint32_t n_rtiles = (p.hidden + P2_ROWS - 1) / P2_ROWS, td2 = p.dn.w_gu ? n_rtiles : 0;

        const bool down_pf = !(p.flags & KERN_FFN_DECODE_NO_DOWN_PREFETCH);
        const bool item_pf = !(p.flags & KERN_FFN_DECODE_NO_ITEM_PREFETCH);

        mark(p, 0);
        /* launched early (PDL): ask for this block's first weights, then wait for the inputs */
        if (item_pf && blockIdx.x < td)
                prefetch_item1(p, tb, -1, blockIdx.x);
        else if (item_pf && p.r_proj && blockIdx.x - td < p.n_experts)
                prefetch_l2(reinterpret_cast<const uint8_t *>(p.r_proj + (size_t) (blockIdx.x - td) * p.hidden),
                            (size_t) p.hidden * 2);
        griddep_wait();
        mark(p, 1);

        if (p.r_proj) {
                /* routing here: the dense MLP's phase 1 and the router logits first, then top-k */
                if (down_pf)
                        ffn_prefetch_down(p, tb, 0, td2);
                for (uint32_t item = blockIdx.x; item < td + p.n_experts; item += gridDim.x) {
                        if (item_pf && item + gridDim.x < td)
                                prefetch_item1(p, tb, -1, item + gridDim.x);
                        if (item < td)
                                phase1_item<U1>(p, tb, red, -1, item);
                        else
                                router_item(p, item - td);
                }
                mark(p, 2);
                grid_barrier(p.barrier);
                mark(p, 3);
                router_topk(p, tb, reinterpret_cast<float *>(act));
                build_table(p, tb);
                if (down_pf)
                        ffn_prefetch_down(p, tb, td2, td2 + (uint32_t) tb->n_u * n_rtiles);
                mark(p, 4);
                const uint32_t n1 = (uint32_t) tb->n_u * te;
                for (uint32_t item = blockIdx.x; item < n1; item += gridDim.x) {
                        if (item_pf && item + gridDim.x < n1)
                                prefetch_item1(p, tb, (int) ((item + gridDim.x) / te), (item + gridDim.x) % te);
                        phase1_item<U1>(p, tb, red, (int) (item / te), item % te);
                }
        } else {
                for (uint32_t i = threadIdx.x; i < p.n_tokens * p.top_k; i += blockDim.x)
                        tb->idx[i] = p.topk_idx[i];
                __syncthreads();
                build_table(p, tb);
                if (down_pf)
                        ffn_prefetch_down(p, tb, 0, td2 + (uint32_t) tb->n_u * n_rtiles);
                mark(p, 4);
                const uint32_t n1 = td + (uint32_t) tb->n_u * te;
                for (uint32_t item = blockIdx.x; item < n1; item += gridDim.x) {
                        int uid;
                        uint32_t it;
                        if (item_pf && item + gridDim.x < n1) {
                                item_get(item + gridDim.x, td, te, &uid, &it);
                                prefetch_item1(p, tb, uid, it);
                        }
                        item_get(item, td, te, &uid, &it);
                        phase1_item<U1>(p, tb, red, uid, it);
                }
        }
        mark(p, 5);
        grid_barrier(p.barrier);
        mark(p, 6);
        ffn_phase2<U2>(p, tb, act, act_scale_s);
        mark(p, 7);
}

/* the activation area also holds the logits of every token during the top-k */
static size_t smem_bytes(uint32_t inter, uint32_t dense_inter, uint32_t n_experts) {
        uint32_t i = inter > dense_inter ? inter : dense_inter;
        size_t act = (size_t) MOE_MAX_TOKENS * ((i + 63) / 64 * 64), lg = (size_t) MOE_MAX_TOKENS * n_experts * 4;
        return SMEM_ACT + (act > lg ? act : lg);
}

static size_t align256(size_t n) {
        return (n + 255) & ~(size_t) 255;
}

/* workspace: barrier | expert maxima | dense maxima | expert h | dense h | logits */
static void workspace_layout(uint32_t top_k, uint32_t inter, uint32_t dense_inter, size_t off[6]) {
        size_t pairs = (size_t) MOE_MAX_TOKENS * top_k;
        off[0] = 0;
        off[1] = BARRIER_BYTES;
        off[2] = off[1] + align256(pairs * ((inter + P1_ROWS - 1) / P1_ROWS) * sizeof(float));
        off[3] = off[2] + align256((size_t) MOE_MAX_TOKENS * ((dense_inter + P1_ROWS - 1) / P1_ROWS) * sizeof(float));
        off[4] = off[3] + align256(pairs * inter * sizeof(uint16_t));
        off[5] = off[4] + align256((size_t) MOE_MAX_TOKENS * dense_inter * sizeof(uint16_t));
}

extern "C" size_t kern_ffn_decode_workspace(uint32_t top_k, uint32_t n_experts, uint32_t inter,
                                            uint32_t dense_inter) {
        size_t off[6];
        workspace_layout(top_k, inter, dense_inter, off);
        return off[5] + align256((size_t) MOE_MAX_TOKENS * n_experts * sizeof(float));
}

extern "C" bool kern_ffn_decode_supported(uint32_t n_tokens, uint32_t top_k, uint32_t n_experts, uint32_t hidden,
                                          uint32_t inter, uint32_t dense_inter) {
        return n_tokens >= 1 && n_tokens <= MOE_MAX_TOKENS && top_k >= 1 && top_k <= KERNELS_MAX_TOPK &&
               n_experts >= top_k && hidden > 0 && inter > 0 &&
               smem_bytes(inter, dense_inter, n_experts) <= SMEM_MAX;
}

extern "C" int kern_ffn_decode(const struct kern_ffn_decode *a, cudaStream_t stream) {
        static int grid_max[2];         /* blocks that fit at once: the barrier needs them all resident */
        uint32_t dense_inter = a->dense_w_gate_up ? a->dense_inter : 0;
        size_t smem = smem_bytes(a->inter, dense_inter, a->n_experts);
        /* the narrow variant (two blocks per SM) where its shared memory allows */
        const int v = (a->flags & KERN_FFN_DECODE_WIDE) || smem > SMEM_MAX / 2 ? 0 : 1;
        const void *fn = v ? (const void *) ffn_decode_kernel<3, 6, 2> : (const void *) ffn_decode_kernel<6, 12, 1>;

        if (!kern_ffn_decode_supported(a->n_tokens, a->top_k, a->n_experts, a->hidden, a->inter, dense_inter) ||
            (a->dense_w_gate_up && dense_inter == 0) ||
            (a->router_proj && (!a->router_in || !a->router_per_expert_scale || !a->topk_w)))
                return -EINVAL;
        if (grid_max[v] == 0) {
                int dev = 0, sms = 0, per_sm = 0;
                int cap = v ? SMEM_MAX / 2 : SMEM_MAX;
                if (cudaGetDevice(&dev) != cudaSuccess ||
                    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
                        return -EIO;
                if (cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, cap) != cudaSuccess ||
                    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, MOE_THREADS, cap) != cudaSuccess)
                        return -EIO;
                /* sized with the largest shared memory the variant takes, so it holds for every launch */
                grid_max[v] = sms * (per_sm > 0 ? per_sm : 1);
        }
        struct moe_params p;
        uint8_t *ws = (uint8_t *) a->workspace;
        size_t off[6];
        workspace_layout(a->top_k, a->inter, dense_inter, off);
        p.ex = (struct ffn_set){a->w_gate_up, a->w_down, a->s_gate_up, a->s_down, a->inter,
                                (a->inter + P1_ROWS - 1) / P1_ROWS, a->x, a->x_scale, (float *) (ws + off[1]),
                                (uint16_t *) (ws + off[3]), a->y};
        p.dn = (struct ffn_set){a->dense_w_gate_up, a->dense_w_down, a->dense_s_gate_up, a->dense_s_down,
                                dense_inter, (dense_inter + P1_ROWS - 1) / P1_ROWS, a->dense_x, a->dense_x_scale,
                                (float *) (ws + off[2]), (uint16_t *) (ws + off[4]), a->dense_y};
        p.hidden = a->hidden;
        p.n_experts = a->n_experts;
        p.n_tokens = a->n_tokens;
        p.top_k = a->top_k;
        p.topk_idx = a->topk_idx;
        p.topk_w = a->topk_w;
        p.r_in = a->router_in;
        p.r_proj = a->router_proj;
        p.r_pes = a->router_per_expert_scale;
        p.logits = (float *) (ws + off[5]);
        p.barrier = (unsigned *) ws;
        p.flags = a->flags;
        p.times = a->debug_times;
        if (v)
                return launch_pdl(a->pdl, ffn_decode_kernel<3, 6, 2>, dim3(grid_max[v]), dim3(MOE_THREADS), smem,
                                  stream, p);
        return launch_pdl(a->pdl, ffn_decode_kernel<6, 12, 1>, dim3(grid_max[v]), dim3(MOE_THREADS), smem, stream, p);
}

/* ---- L2 prefetch of weights that the next ops will read ----
 * A decode step alternates between weight streams (the GEMMs) and stretches where DRAM idles (norms,
 * attention over a short context, top-k): a prefetch launched before such a stretch lets the next GEMM
 * find its weights in L2. Bulk prefetches are fire-and-forget, so the kernel itself takes a few us. */

/* plain L2 prefetches (one per 128-byte line, no destination, so nothing waits) spread over many blocks:
 * bulk prefetches from a few blocks ran at ~0.6 TB/s and held the launch open for ~45 us (H100, R1) */
#define PREFETCH_BLOCKS 132

static __global__ void l2_prefetch_kernel(struct kern_prefetch ranges) {
        const size_t stride = (size_t) gridDim.x * blockDim.x * 128;
        for (int r = 0; r < KERN_PREFETCH_RANGES; r++) {
                const uint8_t *base = (const uint8_t *) ranges.p[r];
                size_t n = ranges.bytes[r];
                if (!base)
                        continue;
                for (size_t off = (size_t) (blockIdx.x * blockDim.x + threadIdx.x) * 128; off < n; off += stride)
                        asm volatile("prefetch.global.L2 [%0];" ::"l"(__cvta_generic_to_global(base + off)));
        }
}

extern "C" int kern_l2_prefetch(const struct kern_prefetch *ranges, cudaStream_t stream) {
        for (int r = 0; r < KERN_PREFETCH_RANGES; r++)
                if (ranges->p[r] && ((uintptr_t) ranges->p[r] & 15) != 0)
                        return -EINVAL;
        l2_prefetch_kernel<<<PREFETCH_BLOCKS, 256, 0, stream>>>(*ranges);
        return KERN_CHECK_LAUNCH();
}

/* ---- small-M FP8 GEMV for decode steps ----
 * y[r, n] = s_x[r] * (s_w[n] * sum_k W[n, k] x[r, k]) for up to 8 rows, weights as the M side of
 * mma.sync m16n8k32 (as in gemm.cu). A block is 4 warps on one 16-row tile, each warp a contiguous quarter
 * of K with all of its chunks loaded before the first mma (12 chunks in flight per warp), so that at
 * 4 blocks per SM a qkv-sized matrix is requested in one wave and each row is read in long runs. The
 * activations sit in shared memory; a BF16 input is quantized there per row (the steps of kern_quant_rows,
 * so the attention output needs no separate launch). */

#define GEMV_WARPS_MAX 8
#define GEMV_UNR 12
#define GEMV_MAX_K 8192

/* W warps per block: 4, or 8 for a K over 4 x GEMV_UNR chunks (o_proj), so that one pass still loads it */
template <int W>
static __global__ void __launch_bounds__(W * 32, 16 / W)
gemv_decode_kernel(const uint8_t *w, const float *w_scale, uint32_t n_out, uint32_t k, const uint8_t *x,
                   const uint16_t *x_bf16, const float *x_scale, uint32_t m, void *y, int out, float softcap) {
        extern __shared__ __align__(16) uint8_t gsm[];
        const uint32_t stride = k + 16;         /* rows 16 bytes apart in banks */
        float *red = reinterpret_cast<float *>(gsm);                    /* [W][4][32] */
        float *xs_s = red + GEMV_WARPS_MAX * 4 * 32;                    /* [8] */
        uint8_t *xq = reinterpret_cast<uint8_t *>(xs_s + 8);            /* [8][stride] */
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gid = lane >> 2, tig = lane & 3;
        const uint32_t row0 = blockIdx.x * 16 + gid, row1 = row0 + 8;
        const bool ok0 = row0 < n_out, ok1 = row1 < n_out;
        const uint8_t *w0 = w + (size_t) (ok0 ? row0 : 0) * k, *w1 = w + (size_t) (ok1 ? row1 : 0) * k;
        const uint32_t n_chunks = (k + 63) / 64, per = (n_chunks + W - 1) / W;
        const uint32_t c_begin = warp * per, c_end = min(c_begin + per, n_chunks);
        float c[4] = {0, 0, 0, 0};
        uint4 a0[GEMV_UNR], a1[GEMV_UNR];

        /* the first pass of weights in flight before anything else */
#pragma unroll
        for (int r = 0; r < GEMV_UNR; r++) {
                uint32_t ch = c_begin + r;
                a0[r] = load16(w0, ch * 64 + tig * 16, k, true, ok0 && ch < c_end);
                a1[r] = load16(w1, ch * 64 + tig * 16, k, true, ok1 && ch < c_end);
        }
        /* launched early (PDL): the activations are the previous kernel's output */
        griddep_wait();
        /* activations into shared memory (zeros for rows >= m and past k) */
        if (x_bf16) {
                /* each row over the whole block: 8 BF16 per 16-byte load */
                for (uint32_t r = 0; r < 8; r++) {
                        if (r >= m) {
                                for (uint32_t i = threadIdx.x * 16; i < stride; i += blockDim.x * 16)
                                        *reinterpret_cast<uint4 *>(xq + r * stride + i) = make_uint4(0, 0, 0, 0);
                                if (threadIdx.x == 0)
                                        xs_s[r] = 0.0f;
                                continue;
                        }
                        const uint16_t *src = x_bf16 + (size_t) r * k;
                        float amax = 0.0f;
                        for (uint32_t i = threadIdx.x * 8; i < k; i += blockDim.x * 8) {
                                uint4 v = *reinterpret_cast<const uint4 *>(src + i);
                                const uint16_t *h = reinterpret_cast<const uint16_t *>(&v);
#pragma unroll
                                for (int j = 0; j < 8; j++)
                                        amax = fmaxf(amax, fabsf(bf16_bits_to_f32(h[j])));
                        }
                        amax = block_max(amax, red);
                        float sc = act_scale(amax);
                        for (uint32_t i = threadIdx.x * 8; i < stride; i += blockDim.x * 8) {
                                uint2 q = make_uint2(0, 0);
                                if (i < k) {
                                        uint4 v = *reinterpret_cast<const uint4 *>(src + i);
                                        const uint16_t *h = reinterpret_cast<const uint16_t *>(&v);
                                        uint32_t qw[2] = {0, 0};
#pragma unroll
                                        for (int j = 0; j < 8; j++)
                                                qw[j / 4] |= (uint32_t) f32_to_e4m3(bf16_bits_to_f32(h[j]) / sc)
                                                             << (8 * (j % 4));
                                        q = make_uint2(qw[0], qw[1]);
                                }
                                *reinterpret_cast<uint2 *>(xq + r * stride + i) = q;
                        }
                        if (threadIdx.x == 0)
                                xs_s[r] = sc;
                        __syncthreads();
                }
        } else {
                for (uint32_t i = threadIdx.x; i < 8 * stride / 16; i += blockDim.x) {
                        uint32_t r = i / (stride / 16), o = i % (stride / 16) * 16;
                        uint4 v = r < m && o < k ? __ldg(reinterpret_cast<const uint4 *>(x + (size_t) r * k + o))
                                                 : make_uint4(0, 0, 0, 0);
                        *reinterpret_cast<uint4 *>(xq + r * stride + o) = v;
                }
                if (threadIdx.x < 8)
                        xs_s[threadIdx.x] = threadIdx.x < m ? x_scale[threadIdx.x] : 0.0f;
        }
        __syncthreads();
        for (uint32_t ch0 = c_begin; ch0 < c_end; ch0 += GEMV_UNR) {
                if (ch0 > c_begin) {
#pragma unroll
                        for (int r = 0; r < GEMV_UNR; r++) {
                                uint32_t ch = ch0 + r;
                                a0[r] = load16(w0, ch * 64 + tig * 16, k, true, ok0 && ch < c_end);
                                a1[r] = load16(w1, ch * 64 + tig * 16, k, true, ok1 && ch < c_end);
                        }
                }
                mma_chunks_smem<GEMV_UNR>(c, a0, a1, ch0, c_end, xq + gid * stride, tig);
        }
#pragma unroll
        for (int j = 0; j < 4; j++)
                red[(warp * 4 + j) * 32 + lane] = c[j];
        __syncthreads();
        if (warp != 0)
                return;
        for (int o = 1; o < W; o++)
#pragma unroll
                for (int j = 0; j < 4; j++)
                        c[j] += red[(o * 4 + j) * 32 + lane];
        const float sw0 = ok0 ? w_scale[row0] : 0.0f, sw1 = ok1 ? w_scale[row1] : 0.0f;
#pragma unroll
        for (int j = 0; j < 4; j++) {
                uint32_t col = tig * 2 + (j & 1);
                bool hi = j >= 2;
                if (col >= m || !(hi ? ok1 : ok0))
                        continue;
                uint32_t n = hi ? row1 : row0;
                float v = xs_s[col] * ((hi ? sw1 : sw0) * c[j]);
                size_t off = (size_t) col * n_out + n;
                if (out == KERN_OUT_BF16) {
                        ((uint16_t *) y)[off] = f32_to_bf16_bits(v);
                } else {
                        if (softcap > 0.0f)
                                v = softcap * tanhf(v / softcap);
                        ((float *) y)[off] = v;
                }
        }
}

extern "C" bool kern_gemv_decode_supported(uint32_t n_out, uint32_t k, uint32_t m) {
        return m >= 1 && m <= 8 && n_out > 0 && k > 0 && k % 16 == 0 && k <= GEMV_MAX_K;
}

extern "C" int kern_gemv_decode(const uint8_t *w, const float *w_scale, uint32_t n_out, uint32_t k, const uint8_t *x,
                                const uint16_t *x_bf16, const float *x_scale, uint32_t m, void *y,
                                enum kern_out out, float softcap, bool pdl, cudaStream_t stream) {
        static bool smem_set;
        if (!kern_gemv_decode_supported(n_out, k, m) || (!x_bf16 && (!x || !x_scale)))
                return -EINVAL;
        const size_t head = (GEMV_WARPS_MAX * 4 * 32 + 8) * sizeof(float);
        size_t smem = head + (size_t) 8 * (k + 16);
        if (!smem_set) {
                if (cudaFuncSetAttribute((const void *) gemv_decode_kernel<4>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int) (head + 8 * (GEMV_MAX_K + 16))) != cudaSuccess ||
                    cudaFuncSetAttribute((const void *) gemv_decode_kernel<8>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int) (head + 8 * (GEMV_MAX_K + 16))) != cudaSuccess)
                        return -EIO;
                smem_set = true;
        }
        if ((k + 63) / 64 > 4 * GEMV_UNR)
                return launch_pdl(pdl, gemv_decode_kernel<8>, dim3((n_out + 15) / 16), dim3(8 * 32), smem, stream, w,
                                  w_scale, n_out, k, x, x_bf16, x_scale, m, y, (int) out, softcap);
        return launch_pdl(pdl, gemv_decode_kernel<4>, dim3((n_out + 15) / 16), dim3(4 * 32), smem, stream, w,
                          w_scale, n_out, k, x, x_bf16, x_scale, m, y, (int) out, softcap);
}

/* ---- routing of a decode step in one launch ----
 * kern_router's logits (one warp per token and expert over a few blocks), a grid barrier, then block 0 does
 * kern_router's top-k and kern_moe_route's grouping (each expert one group: at most 8 pairs) -- three
 * launches of the latency-bound part of a decode step in one. */

#define ROUTE_BARRIER_OFF 16    /* bytes into the workspace's barrier area (the FFN kernel uses 0..7) */

static __global__ void __launch_bounds__(256) route_decode_kernel(const uint16_t *r_in, uint32_t n_tokens, uint32_t n,
                                                                  const uint16_t *proj, const uint16_t *pes,
                                                                  uint32_t n_experts, uint32_t top_k, float *logits,
                                                                  int32_t *topk_idx, float *topk_w, int32_t *pair_rows,
                                                                  struct kern_gemm_group *groups, int32_t *n_groups,
                                                                  unsigned *barrier) {
        extern __shared__ __align__(16) uint8_t rsm[];
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
        /* launched early (PDL): this block's router rows into L2, then wait for the router input */
        for (uint32_t wi = blockIdx.x * nw + warp; lane == 0 && wi < n_experts; wi += gridDim.x * nw) {
                const uint8_t *row = (const uint8_t *) (proj + (size_t) wi * n);
                for (uint32_t off = 0; off < n * 2; off += 128)
                        asm volatile("prefetch.global.L2 [%0];" ::"l"(__cvta_generic_to_global(row + off)));
        }
        griddep_wait();
        for (uint32_t wi = blockIdx.x * nw + warp; wi < n_experts * n_tokens; wi += gridDim.x * nw) {
                uint32_t e = wi % n_experts, t = wi / n_experts;
                float acc = warp_dot_bf16(r_in + (size_t) t * n, proj + (size_t) e * n, n);
                if (lane == 0)
                        logits[(size_t) t * n_experts + e] = acc;
        }
        grid_barrier(barrier);
        if (blockIdx.x != 0)
                return;
        const uint32_t P = n_tokens * top_k;
        float *lg = reinterpret_cast<float *>(rsm);                     /* [T][E] */
        int32_t *idx = reinterpret_cast<int32_t *>(lg + n_tokens * n_experts);  /* [P] */
        float *wts = reinterpret_cast<float *>(idx + P);                /* [P] */
        int32_t *cnt = reinterpret_cast<int32_t *>(wts + P);            /* [E]: pairs, then first position */
        int32_t *gix = cnt + n_experts;                                 /* [E]: group number */
        for (uint32_t i = threadIdx.x; i < n_tokens * n_experts; i += blockDim.x)
                lg[i] = __ldcg(logits + i);
        for (uint32_t e = threadIdx.x; e < n_experts; e += blockDim.x)
                cnt[e] = 0;
        __syncthreads();
        for (uint32_t t = warp; t < n_tokens; t += nw)
                warp_router_topk(lg + (size_t) t * n_experts, n_experts, top_k, pes, idx + t * top_k,
                                 wts + t * top_k);
        __syncthreads();
        for (uint32_t i = threadIdx.x; i < P; i += blockDim.x) {
                topk_idx[i] = idx[i];
                topk_w[i] = wts[i];
                atomicAdd(&cnt[idx[i]], 1);
        }
        __syncthreads();
        /* experts in ascending order (as kern_moe_route): first positions and group numbers, one warp */
        if (warp == 0) {
                int32_t pos = 0, g = 0;
                for (uint32_t e0 = 0; e0 < n_experts; e0 += 32) {
                        uint32_t e = e0 + lane;
                        int32_t c = e < n_experts ? cnt[e] : 0, cp = c, gp = c > 0;
                        for (int o = 1; o < 32; o <<= 1) {      /* inclusive scans */
                                int32_t a = __shfl_up_sync(0xffffffffu, cp, o), b = __shfl_up_sync(0xffffffffu, gp, o);
                                if (lane >= o) {
                                        cp += a;
                                        gp += b;
                                }
                        }
                        if (e < n_experts) {
                                cnt[e] = pos + cp - c;
                                gix[e] = c > 0 ? g + gp - 1 : -1;
                                if (c > 0)
                                        groups[g + gp - 1] = (struct kern_gemm_group){(int32_t) e, pos + cp - c, c};
                        }
                        pos += __shfl_sync(0xffffffffu, cp, 31);
                        g += __shfl_sync(0xffffffffu, gp, 31);
                }
                if (lane == 0)
                        *n_groups = g;
        }
        __syncthreads();
        /* pairs of one expert in pair order (deterministic) */
        for (uint32_t i = threadIdx.x; i < P; i += blockDim.x) {
                int32_t e = idx[i], before = 0;
                for (uint32_t j = 0; j < i; j++)
                        before += idx[j] == e;
                pair_rows[cnt[e] + before] = (int32_t) i;
        }
}

extern "C" bool kern_route_decode_supported(uint32_t n_tokens, uint32_t n_experts, uint32_t top_k) {
        return n_tokens >= 1 && n_tokens <= MOE_MAX_TOKENS && top_k >= 1 && top_k <= KERNELS_MAX_TOPK &&
               top_k <= n_experts && n_experts <= 4096;
}

extern "C" int kern_route_decode(const uint16_t *r, uint32_t n_rows, uint32_t n, const struct kern_router *rt,
                                 float *logits, int32_t *topk_idx, float *topk_w, int32_t *pair_rows,
                                 struct kern_gemm_group *groups, int32_t *n_groups, void *workspace, bool pdl,
                                 cudaStream_t stream) {
        static int sms;
        if (!kern_route_decode_supported(n_rows, rt->n_experts, rt->top_k))
                return -EINVAL;
        if (sms == 0) {
                int dev = 0;
                if (cudaGetDevice(&dev) != cudaSuccess ||
                    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
                        return -EIO;
        }
        uint32_t warps = rt->n_experts * n_rows, grid = (warps + 7) / 8;
        if (grid > (uint32_t) sms)
                grid = (uint32_t) sms;  /* one small block per SM at most: all resident for the barrier */
        size_t smem = ((size_t) n_rows * rt->n_experts + 2 * (size_t) n_rows * rt->top_k + 2 * rt->n_experts) * 4;
        if (smem > 48 * 1024)
                return -EINVAL;
        return launch_pdl(pdl, route_decode_kernel, dim3(grid), dim3(256), smem, stream, r, n_rows, n, rt->proj,
                          rt->per_expert_scale, rt->n_experts, rt->top_k, logits, topk_idx, topk_w, pair_rows, groups,
                          n_groups, (unsigned *) ((uint8_t *) workspace + ROUTE_BARRIER_OFF));
}
