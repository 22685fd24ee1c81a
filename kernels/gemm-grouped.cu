/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Grouped (MoE) FP8 GEMM on Hopper tensor cores: wgmma m64nNk32 e4m3 with both operands in shared memory.
 *
 * The weights are the M side (two warpgroups x MW m64 blocks: 128 or 256 output channels per tile), the
 * tokens of one expert the N side (128 for experts with many rows, 32 or 16 for the few-row decode case).
 * Both operands are K-major in global memory, which is the only layout wgmma takes for FP8, so a K step is
 * one (or two) 128-byte rows per matrix row and the shared-memory tiles use the 128-byte swizzle without any
 * transposition.
 *
 * Every thread loads with cp.async (the token rows are gathered through pair_rows, which a tiled TMA copy
 * cannot do) into an S-stage ring; the loads run S-2 steps ahead so that the stage being refilled is the one
 * whose wgmma group the previous iteration's wait retired. A CTA walks its tiles as one flat sequence of K
 * steps, so the pipeline never drains between tiles: the decode case reads every touched expert's weights
 * once as a continuous stream.
 *
 * No host loop and no host sync: every CTA rebuilds the tile schedule from the device-side group list
 * (runs of groups of one expert with contiguous rows form a segment; segments above the few-token tile are
 * cut into 128-token tiles, the others take one few-token tile), then takes tiles round-robin (persistent
 * grid): many-token tiles first, then few-token ones. Scales are applied in the epilogue,
 * y = s_x * (s_w * acc), as in the mma.sync kernel; the many-token epilogue stages the tile through shared
 * memory so that outputs leave as 16-byte rows.
 *
 * Numerics: FP8 wgmma accumulates a K chain with fewer mantissa bits than FP32 (measured rel. error 1.9e-3
 * against 1.7e-3 for the mma.sync kernel at k = 2816, both dominated by the BF16 output rounding).
 */
#include "common.cuh"
#include "gemm-grouped.h"

#define GT_THREADS 256                  /* two consumer warpgroups */
#define GT_BK 128                       /* K bytes of one swizzle row; a pipeline step takes NA of them */
#define GT_BIG_TOK 128
#define GT_SMALL_TOK 32

/* Weight rows per tile: two warpgroups x MW m64 blocks. The big (many-token) phase takes MW = 1 or 2, the
 * few-token phase MW = 1. */
#define GT_WROWS(mw) (128 * (mw))
#define GT_STAGE_BYTES(mw, bt, na) ((na) * (GT_WROWS(mw) + (bt)) * GT_BK)
#define GT_BIG_STAGES(mw) ((mw) == 1 ? 5 : 4)
#define GT_MAX(a, b) ((a) > (b) ? (a) : (b))

struct gt_tile {
        int32_t expert, start, count;
};

/* One kernel configuration: the many-token phase's tile width (MW), the few-token phase's K rows per step
 * (NA) and ring depth (S). Shared memory: the ring (sized for the larger phase), then the tile list. */
template <int BIG_MW, int SMALL_NA, int SMALL_S>
struct gt_cfg {
        static constexpr int pipe = GT_MAX(GT_BIG_STAGES(BIG_MW) * GT_STAGE_BYTES(BIG_MW, GT_BIG_TOK, 1),
                                           SMALL_S * GT_STAGE_BYTES(1, GT_SMALL_TOK, SMALL_NA));
        static constexpr int smem = 1024 + pipe + GEMM_GROUPED_TILED_MAX_GROUPS * (int) sizeof(struct gt_tile);
};

struct gt_params {
        const uint8_t *w;
        const float *w_scale;
        uint32_t n_out, k;
        const uint8_t *x;
        const float *x_scale;
        uint32_t x_row_div;
        const int32_t *pair_rows;
        const struct kern_gemm_group *groups;
        const int32_t *n_groups;
        uint32_t max_groups;
        uint16_t *y;
};

static __device__ __forceinline__ void cp_async16(uint32_t dst, const void *src, bool ok) {
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(ok ? 16 : 0));
}

static __device__ __forceinline__ void cp_async_commit(void) {
        asm volatile("cp.async.commit_group;\n" ::);
}

template <int N>
static __device__ __forceinline__ void cp_async_wait(void) {
        asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* cp.async writes through the generic proxy, wgmma reads through the async proxy */
static __device__ __forceinline__ void fence_proxy_async(void) {
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

static __device__ __forceinline__ void wgmma_fence(void) {
        asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

static __device__ __forceinline__ void wgmma_commit(void) {
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

template <int N>
static __device__ __forceinline__ void wgmma_wait(void) {
        asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

/* Shared-memory matrix descriptor: K-major, 128-byte swizzle, 8-row atoms 1024 bytes apart (SBO); the
 * leading offset is unused when a wgmma's K (32 bytes) stays inside one swizzle row. The atoms are
 * 1024-byte aligned, so stepping K by 32 bytes is a plain start-address offset. */
static __device__ __forceinline__ uint64_t smem_desc(uint32_t addr) {
        return (uint64_t) ((addr & 0x3ffff) >> 4) | (uint64_t) 1 << 16 | (uint64_t) (1024 >> 4) << 32 |
               (uint64_t) 1 << 62;
}

/* keeps the compiler from moving accumulator accesses across the asynchronous wgmma window */
template <int N>
static __device__ __forceinline__ void fence_acc(float *d) {
#pragma unroll
        for (int i = 0; i < N / 2; i++)
                asm volatile("" : "+f"(d[i])::"memory");
}

template <int N>
static __device__ __forceinline__ void wgmma_e4m3(float *d, uint64_t da, uint64_t db, uint32_t acc);

template <> __device__ __forceinline__ void wgmma_e4m3<32>(float *d, uint64_t da, uint64_t db, uint32_t acc) {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n32k32.f32.e4m3.e4m3 {"
                     "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
                     "}, %16, %17, p, 1, 1;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                       "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
                     : "l"(da), "l"(db), "r"(acc));
}

template <> __device__ __forceinline__ void wgmma_e4m3<128>(float *d, uint64_t da, uint64_t db, uint32_t acc) {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 {"
                     "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                     "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
                     "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
                     "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
                     "}, %64, %65, p, 1, 1;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                       "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                       "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                       "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
                       "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
                       "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
                       "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
                       "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                     : "l"(da), "l"(db), "r"(acc));
}

/* Exclusive prefix sum over the block (GT_THREADS threads); *total gets the sum. tmp: 9 ints. */
static __device__ int block_excl_scan(int v, int *tmp, int *total) {
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        int x = v;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
                int y = __shfl_up_sync(0xffffffffu, x, o);
                if (lane >= o)
                        x += y;
        }
        if (lane == 31)
                tmp[warp] = x;
        __syncthreads();
        if (threadIdx.x == 0) {
                int s = 0;
                for (int w = 0; w < GT_THREADS / 32; w++) {
                        int t = tmp[w];
                        tmp[w] = s;
                        s += t;
                }
                tmp[GT_THREADS / 32] = s;
        }
        __syncthreads();
        int r = x - v + tmp[warp];
        *total = tmp[GT_THREADS / 32];
        __syncthreads();
        return r;
}

/* A segment starts where the expert changes or the rows stop being contiguous. */
static __device__ __forceinline__ bool seg_first(const int32_t *gex, const int32_t *gst, const int32_t *gcn, int g) {
        return g == 0 || gex[g] != gex[g - 1] || gst[g] != gst[g - 1] + gcn[g - 1];
}

/* Rows of the segment starting at group g; 0 when g does not start one. */
static __device__ int seg_rows(const int32_t *gex, const int32_t *gst, const int32_t *gcn, int ng, int g) {
        if (!seg_first(gex, gst, gcn, g))
                return 0;
        int rows = gcn[g];
        for (int h = g + 1; h < ng && !seg_first(gex, gst, gcn, h); h++)
                rows += gcn[h];
        return rows;
}

/* Tile list: big tiles (<= GT_BIG_TOK tokens) first, then small ones (<= small_tok). With group counts
 * <= 64 a segment of G groups yields at most G tiles, so the list never exceeds max_groups entries. */
static __device__ void gt_schedule(const struct gt_params &p, int32_t *stage, struct gt_tile *list, int *tmp,
                                   int small_tok, int &n_big, int &n_small) {
        int ng = *p.n_groups;
        ng = ng < 0 ? 0 : ng > (int) p.max_groups ? (int) p.max_groups : ng;
        int32_t *gex = stage, *gst = stage + GEMM_GROUPED_TILED_MAX_GROUPS, *gcn = gst + GEMM_GROUPED_TILED_MAX_GROUPS;

        for (int g = threadIdx.x; g < ng; g += GT_THREADS) {
                struct kern_gemm_group gr = p.groups[g];
                gex[g] = gr.expert;
                gst[g] = gr.start;
                gcn[g] = gr.count < 0 ? 0 : gr.count > 64 ? 64 : gr.count;
        }
        __syncthreads();
        const int chunk = (ng + GT_THREADS - 1) / GT_THREADS;
        const int g0 = threadIdx.x * chunk, g1 = min(g0 + chunk, ng);
        int packed = 0;
        for (int g = g0; g < g1; g++) {
                const int rows = seg_rows(gex, gst, gcn, ng, g);
                if (rows > small_tok)
                        packed += ((rows + GT_BIG_TOK - 1) / GT_BIG_TOK) << 16;
                else if (rows > 0)
                        packed += 1;
        }
        int total, off = block_excl_scan(packed, tmp, &total);
        const int nb = total >> 16, ns = total & 0xffff;
        int ob = off >> 16, os = nb + (off & 0xffff);
        for (int g = g0; g < g1; g++) {
                const int rows = seg_rows(gex, gst, gcn, ng, g);
                if (rows > small_tok) {
                        for (int r = 0; r < rows; r += GT_BIG_TOK)
                                list[ob++] = {gex[g], gst[g] + r, min(GT_BIG_TOK, rows - r)};
                } else if (rows > 0) {
                        list[os++] = {gex[g], gst[g], rows};
                }
        }
        n_big = nb;
        n_small = ns;
        __syncthreads();
}

/* The wgmmas of one K step: NM m64 blocks per warpgroup (block m of warpgroup wg holds tile rows
 * [(2 m + wg) 64, +64)), four k32 slices of each of the NA 128-byte K rows. */
template <int BT, int MW, int NA, int NM>
static __device__ __forceinline__ void gt_issue(float (&acc)[MW][BT / 2], uint32_t st, int wg, int a_bytes, int kk) {
        wgmma_fence();
#pragma unroll
        for (int a = 0; a < NA; a++)
#pragma unroll
                for (int q = 0; q < GT_BK / 32; q++)
#pragma unroll
                        for (int m = 0; m < NM; m++)
                                wgmma_e4m3<BT>(acc[m], smem_desc(st + (a * GT_WROWS(MW) + (m * 2 + wg) * 64) * GT_BK + q * 32),
                                               smem_desc(st + a_bytes + a * BT * GT_BK + q * 32),
                                               (uint32_t) (kk | a | q));
}

/* Per-tile token data for the epilogue, written once per tile from registers loaded a K step earlier. */
struct gt_meta {
        int32_t orow[GT_BIG_TOK];
        float xs[GT_BIG_TOK];
};

/* One phase: the CTA's tiles first, first + gridDim.x, ... of n_mtiles x (n_out / (128 MW)) tiles of BT
 * tokens. Warpgroup wg owns the m64 blocks m 2 + wg (m < MW) of the tile's weight rows.
 *
 * Nothing on the way waits for a dependent global load: the B rows of the next tile (pair_rows) are read
 * while the current one starts, the epilogue's output rows and token scales while the tile's K loop runs.
 * STAGED: the accumulators go through shared memory so that each token's outputs leave as 16-byte stores
 * (the fragment layout would scatter 2-byte stores over four tokens per instruction). The staging reuses
 * the two ring stages that no load is in flight for at that point: stage j % S (just consumed) and
 * (j - 1) % S (consumed one step earlier; the loads run S - 2 steps ahead). */
template <int BT, int S, int MW, bool STAGED, int NA>
static __device__ void gt_phase(const struct gt_params &p, uint8_t *smem, uint32_t sbase, const struct gt_tile *list,
                                int n_mtiles, int first, struct gt_meta *meta) {
        constexpr int D = S - 2;
        constexpr int WROWS = GT_WROWS(MW);
        constexpr int A_BYTES = NA * WROWS * GT_BK;    /* NA sub-tiles of WROWS x 128 bytes, then B's */
        constexpr int STAGE = GT_STAGE_BYTES(MW, BT, NA);
        constexpr int BCH = BT * (GT_BK / 16) / GT_THREADS;
        static_assert(BCH >= 1, "every thread loads B chunks");
        constexpr int ACH = WROWS * (GT_BK / 16) / GT_THREADS;
        constexpr int WCH = 64 * MW;                    /* output channels per warpgroup */
        constexpr int PITCH = WCH + 8;                  /* staging row (BF16), padded against bank conflicts */
        static_assert(!STAGED || BT * PITCH * 2 <= STAGE, "staging must fit one ring stage");
        const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wg = warp >> 2;
        const int ntn = (int) ((p.n_out + WROWS - 1) / WROWS);
        const int tiles = n_mtiles * ntn, G = gridDim.x;

        if (first >= tiles)
                return;
        const int kt = (int) ((p.k + NA * GT_BK - 1) / (NA * GT_BK));
        const int my_tiles = (tiles - 1 - first) / G + 1;
        const int total = my_tiles * kt;
        const int lrow = tid >> 3, lc = tid & 7;
        const uint32_t swz = (uint32_t) ((lc ^ (lrow & 7)) << 4);
        const uint8_t *asrc[ACH], *bsrc[BCH];
        bool aok[ACH], bok[BCH];
        int32_t nxt_pr[BCH];                            /* pair rows of the next tile's B rows, -1 past count */

        auto tile_of = [&](int lt) -> struct gt_tile {
                const int t = first + lt * G, mt = t / ntn;
                return list[mt];
        };
        auto fetch_rows = [&](int lt) {
                if (lt >= my_tiles)
                        return;
                const struct gt_tile e = tile_of(lt);
#pragma unroll
                for (int i = 0; i < BCH; i++) {
                        const int r = lrow + 32 * i;
                        nxt_pr[i] = r < e.count ? (p.pair_rows ? p.pair_rows[e.start + r] : e.start + r) : -1;
                }
        };
        auto load = [&](int s) {
                const int lt = s / kt, kk = s - lt * kt;
                if (kk == 0) {
                        const int t = first + lt * G, mt = t / ntn, nt = t - mt * ntn;
                        const struct gt_tile e = list[mt];
#pragma unroll
                        for (int i = 0; i < ACH; i++) {
                                uint32_t n = (uint32_t) (nt * WROWS + lrow + 32 * i);
                                aok[i] = n < p.n_out;
                                asrc[i] = p.w + ((size_t) e.expert * p.n_out + (aok[i] ? n : 0)) * p.k + lc * 16;
                        }
#pragma unroll
                        for (int i = 0; i < BCH; i++) {
                                const int pr = nxt_pr[i];
                                bok[i] = pr >= 0;
                                const int xr = !bok[i] ? 0 : p.pair_rows ? pr / (int) p.x_row_div : pr;
                                bsrc[i] = p.x + (size_t) xr * p.k + lc * 16;
                        }
                        fetch_rows(lt + 1);
                }
                const uint32_t st = sbase + (uint32_t) (s % S) * STAGE;
#pragma unroll
                for (int a = 0; a < NA; a++) {
                        const uint32_t k0 = (uint32_t) (kk * NA + a) * GT_BK;
                        const bool kok = k0 + lc * 16 < p.k;
                        const size_t koff = kok ? k0 : 0;
#pragma unroll
                        for (int i = 0; i < ACH; i++)
                                cp_async16(st + (a * WROWS + lrow + 32 * i) * GT_BK + swz, asrc[i] + koff,
                                           aok[i] && kok);
#pragma unroll
                        for (int i = 0; i < BCH; i++)
                                cp_async16(st + A_BYTES + (a * BT + lrow + 32 * i) * GT_BK + swz, bsrc[i] + koff,
                                           bok[i] && kok);
                }
        };

        float acc[MW][BT / 2];
#pragma unroll
        for (int m = 0; m < MW; m++)
#pragma unroll
                for (int i = 0; i < BT / 2; i++)
                        acc[m][i] = 0.0f;
        int32_t ep_orow = 0;                            /* token tid of the tile being computed */
        float ep_xs = 0.0f;
        uint32_t nr[MW][2];                             /* this thread's output channels and their scales */
        float wsc[MW][2];

        fetch_rows(0);
#pragma unroll 1
        for (int s = 0; s < D; s++) {
                if (s < total)
                        load(s);
                cp_async_commit();
        }
#pragma unroll 1
        for (int j = 0; j < total; j++) {
                cp_async_wait<D - 1>();
                fence_proxy_async();
                __syncthreads();
                if (j + D < total)
                        load(j + D);
                cp_async_commit();
                const int lt = j / kt, kk = j - lt * kt;
                const uint32_t st = sbase + (uint32_t) (j % S) * STAGE;
#pragma unroll
                for (int m = 0; m < MW; m++)
                        fence_acc<BT>(acc[m]);
                /* block m of both warpgroups covers rows [m 128, (m + 1) 128) of the tile: a second block
                 * wholly past n_out (gate_up: 1408 = 5.5 x 256) is skipped by both, with a condition that does
                 * not depend on the thread; each branch issues back to back */
                const int t = first + lt * G, mt = t / ntn, nt = t - mt * ntn;
                if (MW == 1 || (uint32_t) (nt * WROWS + 128) < p.n_out)
                        gt_issue<BT, MW, NA, MW>(acc, st, wg, A_BYTES, kk);
                else
                        gt_issue<BT, MW, NA, 1>(acc, st, wg, A_BYTES, kk);
                wgmma_commit();
#pragma unroll
                for (int m = 0; m < MW; m++)
                        fence_acc<BT>(acc[m]);

                const struct gt_tile e = list[mt];
                /* the epilogue's data: channel scales and token rows now, token scales one step later (they
                 * depend on the rows) */
                if (kk == 0) {
                        const float *ws = p.w_scale + (size_t) e.expert * p.n_out;
#pragma unroll
                        for (int m = 0; m < MW; m++)
#pragma unroll
                                for (int h = 0; h < 2; h++) {
                                        nr[m][h] = (uint32_t) (nt * WROWS + (m * 2 + wg) * 64 + (warp & 3) * 16 +
                                                               (lane >> 2) + 8 * h);
                                        wsc[m][h] = nr[m][h] < p.n_out ? ws[nr[m][h]] : 0.0f;
                                }
                        if (tid < e.count)
                                ep_orow = p.pair_rows ? p.pair_rows[e.start + tid] : e.start + tid;
                }
                if (kk == (kt > 1 ? 1 : 0) && tid < e.count)
                        ep_xs = p.x_scale[p.pair_rows ? ep_orow / (int) p.x_row_div : e.start + tid];
                if (kk != kt - 1) {
                        wgmma_wait<1>();
                        continue;
                }
                wgmma_wait<0>();
#pragma unroll
                for (int m = 0; m < MW; m++)
                        fence_acc<BT>(acc[m]);

                /* epilogue: accumulator (row = weight channel, column = token) of m64nBT. The barrier after
                 * the token data also means both warpgroups' wgmmas are done with the stages reused below. */
                if (tid < BT) {
                        meta->orow[tid] = ep_orow;
                        meta->xs[tid] = ep_xs;
                }
                __syncthreads();
                if (STAGED && p.n_out % 8 == 0) {
                        uint16_t *rows = reinterpret_cast<uint16_t *>(smem + ((j + (wg ? S - 1 : 0)) % S) * STAGE);
#pragma unroll
                        for (int jj = 0; jj < BT / 8; jj++)
#pragma unroll
                                for (int c = 0; c < 2; c++) {
                                        const int tok = jj * 8 + (lane & 3) * 2 + c;
                                        const float xs = meta->xs[tok];
#pragma unroll
                                        for (int m = 0; m < MW; m++)
#pragma unroll
                                                for (int h = 0; h < 2; h++)
                                                        rows[tok * PITCH + m * 64 + (warp & 3) * 16 + (lane >> 2) +
                                                             8 * h] = f32_to_bf16_bits(
                                                                xs * (wsc[m][h] * acc[m][jj * 4 + 2 * h + c]));
                                }
                        /* only this warpgroup reads its staging back */
                        asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg) : "memory");
                        constexpr int CH = WCH * 2 / 16;        /* 16-byte chunks per token and warpgroup */
                        for (int q = tid & 127; q < e.count * CH; q += 128) {
                                const int tok = q / CH, ch = q - tok * CH;
                                const uint32_t n = (uint32_t) (nt * WROWS + ((ch >> 3) * 2 + wg) * 64 + (ch & 7) * 8);
                                if (n < p.n_out)
                                        *reinterpret_cast<uint4 *>(p.y + (size_t) meta->orow[tok] * p.n_out + n) =
                                                *reinterpret_cast<const uint4 *>(&rows[tok * PITCH + ch * 8]);
                        }
                        continue;
                }
#pragma unroll
                for (int jj = 0; jj < BT / 8; jj++) {
#pragma unroll
                        for (int c = 0; c < 2; c++) {
                                const int tok = jj * 8 + (lane & 3) * 2 + c;
                                if (tok >= e.count)
                                        continue;
                                const float xs = meta->xs[tok];
                                uint16_t *yr = p.y + (size_t) meta->orow[tok] * p.n_out;
#pragma unroll
                                for (int m = 0; m < MW; m++)
#pragma unroll
                                        for (int h = 0; h < 2; h++)
                                                if (nr[m][h] < p.n_out)
                                                        yr[nr[m][h]] = f32_to_bf16_bits(
                                                                xs * (wsc[m][h] * acc[m][jj * 4 + 2 * h + c]));
                        }
                }
        }
        cp_async_wait<0>();
        __syncthreads();
}

template <int BIG_MW, int SMALL_NA, int SMALL_S>
static __global__ void __launch_bounds__(GT_THREADS, 1) grouped_tiled_kernel(const struct gt_params p) {
        using cfg = gt_cfg<BIG_MW, SMALL_NA, SMALL_S>;
        extern __shared__ uint8_t gt_smem[];
        __shared__ int scan_tmp[GT_THREADS / 32 + 1];
        __shared__ struct gt_meta meta;
        const uint32_t raw = (uint32_t) __cvta_generic_to_shared(gt_smem);
        const uint32_t pad = (1024 - (raw & 1023)) & 1023;
        uint8_t *base = gt_smem + pad;
        struct gt_tile *list = reinterpret_cast<struct gt_tile *>(base + cfg::pipe);
        int nb, ns;

        /* every thread gets the same totals from the scan */
        gt_schedule(p, reinterpret_cast<int32_t *>(base), list, scan_tmp, GT_SMALL_TOK, nb, ns);
        const int G = gridDim.x;
        const int ntn = (int) ((p.n_out + GT_WROWS(BIG_MW) - 1) / GT_WROWS(BIG_MW));
        gt_phase<GT_BIG_TOK, GT_BIG_STAGES(BIG_MW), BIG_MW, true, 1>(p, base, raw + pad, list, nb,
                                                                              blockIdx.x, &meta);
        /* the small tiles continue the round-robin where the big ones stopped */
        const int big_tiles = nb * ntn;
        const int first_small = ((int) blockIdx.x - big_tiles % G + G) % G;
        gt_phase<GT_SMALL_TOK, SMALL_S, 1, false, SMALL_NA>(p, base, raw + pad, list + nb, ns, first_small,
                                                               &meta);
}

int gemm_grouped_variant = 2;

template <int BIG_MW, int SMALL_NA, int SMALL_S>
static int launch_tiled(const struct gt_params *p, int sms, cudaStream_t stream) {
        using cfg = gt_cfg<BIG_MW, SMALL_NA, SMALL_S>;
        static bool smem_set;

        if (!smem_set) {
                if (cudaFuncSetAttribute(grouped_tiled_kernel<BIG_MW, SMALL_NA, SMALL_S>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, cfg::smem) != cudaSuccess)
                        return -EIO;
                smem_set = true;
        }
        uint64_t tiles = (uint64_t) p->max_groups * ((p->n_out + GT_WROWS(1) - 1) / GT_WROWS(1));
        unsigned grid = tiles < (uint64_t) sms ? (unsigned) tiles : (unsigned) sms;
        grouped_tiled_kernel<BIG_MW, SMALL_NA, SMALL_S>
                <<<grid, GT_THREADS, cfg::smem, stream>>>(*p);
        return KERN_CHECK_LAUNCH();
}

int gemm_grouped_tiled(const uint8_t *w, const float *w_scale, uint32_t n_out, uint32_t k, const uint8_t *x,
                       const float *x_scale, uint32_t x_row_div, const int32_t *pair_rows,
                       const struct kern_gemm_group *groups, const int32_t *n_groups, uint32_t max_groups, uint16_t *y,
                       cudaStream_t stream) {
        static int sms;
        const struct gt_params p = {w, w_scale, n_out, k, x, x_scale, x_row_div, pair_rows, groups, n_groups,
                                    max_groups, y};

        if (k == 0 || k % 16 != 0 || n_out == 0 || x_row_div == 0 || max_groups > GEMM_GROUPED_TILED_MAX_GROUPS)
                return -EINVAL;
        if (max_groups == 0)
                return 0;
        if (!sms) {
                int dev = 0;
                if (cudaGetDevice(&dev) != cudaSuccess ||
                    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0) {
                        sms = 0;
                        return -EIO;
                }
        }
        switch (gemm_grouped_variant) {
        case 1:
                return launch_tiled<1, 1, 8>(&p, sms, stream);
        case 3:
                return launch_tiled<2, 1, 8>(&p, sms, stream);
        default:
                return launch_tiled<2, 2, 5>(&p, sms, stream);
        }
}
