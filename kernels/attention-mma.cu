/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Tensor-core attention (flash-attention style) for head dims 256 and 512, on mma.sync m16n8k16 (FP16 inputs,
 * FP32 accumulation).
 *
 * Why FP16 operands although the model is BF16: every operand value is exactly representable in FP16 (e4m3
 * K/V; BF16 q, k, v after their RMSNorms, |x| <= sqrt(d) * max|norm weight|, far below 65504, with 8
 * significant bits of FP16's 11; probabilities rounded to BF16 first, as HF does, in [0, 1]; only magnitudes
 * below 2^-14 lose bits, as FP16 subnormals, an absolute error under 2^-25), so the products are those of a
 * BF16 kernel, and e4m3 -> FP16 is one instruction per pair where e4m3 -> BF16 takes four.
 *
 * A block owns a tile of query rows, where a row is one (token, query head) pair and the rows of one token are
 * the query heads of one GQA group: they share every key, so a K/V tile staged once in shared memory serves
 * them all. The block walks its keys in tiles of BK: K and V rows are gathered from the pages (or from this
 * step's k_new / v_new), widened to FP16 on the way, into shared memory; then
 *   S = Q K^T    warp (wr, wc) computes rows [16 wr, 16 wr + 16) x keys [wc BK/WC, (wc + 1) BK/WC), full depth;
 *   softmax      row maxima are exchanged through shared memory, so every warp of a row group rescales with
 *                the same running maximum; P = exp(S - m) rounded to BF16 (HF casts the probabilities to BF16
 *                before PV) goes to shared memory;
 *   O += P V     warp (wr, wc) owns output columns [wc D/WC, (wc + 1) D/WC) of its 16 rows over the whole key
 *                tile, so no warp holds more than D/WC FP32 accumulator columns (128 registers at D = 512).
 * Keys outside the causal / sliding-window range of every row of the tile are never visited; the tiles on
 * the range's edges are masked per element.
 *
 * K/V arrive either through registers (stage_kv) or by cp.async into raw byte stages a tile or two ahead
 * (NST > 0), with K and V then taking turns in one FP16 tile: V is widened once every warp is past S.
 *
 * Shapes of fa_kernel:
 *   prefill: 64 rows (32 tokens x 2 heads on sliding layers, 8 tokens x 8 heads on full ones), 8 warps,
 *            64-key tiles;
 *   decode:  one token per block (its GQA group as the rows, padded to 16), 4 warps splitting key tiles of 32,
 *            and the keys split over gridDim.z blocks whose partial (max, sum, unnormalised output) rows are
 *            merged afterwards (attention.cu's merge kernel); used for GQA groups above 8 and for the short
 *            sequence runs of mixed prefill batches.
 * Tokens of one block that belong to different sequences are handled one sequence at a time, the other rows
 * masked. fa_decode_km_kernel is the decode kernel for GQA groups up to 8: the same tiles with the keys as
 * the mma's M side.
 */
#include "attention.cuh"

#include <cuda_bf16.h>

static __device__ __forceinline__ uint32_t smem_u32(const void *p) {
        return (uint32_t) __cvta_generic_to_shared(p);
}

static __device__ __forceinline__ void ldsm_x4(const void *p, uint32_t r[4]) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(smem_u32(p)));
}

static __device__ __forceinline__ void ldsm_x2(const void *p, uint32_t r[2]) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                     : "=r"(r[0]), "=r"(r[1])
                     : "r"(smem_u32(p)));
}

static __device__ __forceinline__ void ldsm_x4_trans(const void *p, uint32_t r[4]) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(smem_u32(p)));
}

/* d += a b, m16n8k16, FP16 in, FP32 accumulate */
static __device__ __forceinline__ void mma_f16(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
                     "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* two adjacent n-tiles: d[0] += a (b0, b1), d[1] += a (b2, b3), as one ldmatrix.x4 loads them */
static __device__ __forceinline__ void mma_f16_x2(float d[][4], const uint32_t a[4], const uint32_t b[4]) {
        mma_f16(d[0], a, b[0], b[1]);
        mma_f16(d[1], a, b[2], b[3]);
}

static __device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
        __nv_bfloat162 b = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t *>(&b);
}

/* two e4m3 (low byte first) -> two FP16, exactly */
static __device__ __forceinline__ uint32_t e4m3x2_to_f16x2(uint32_t v) {
        __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t) (v & 0xffffu), __NV_E4M3);
        return (uint32_t) h.x | ((uint32_t) h.y << 16);
}

/* 16 e4m3 -> 16 FP16 (two 16-byte vectors) */
static __device__ __forceinline__ void e4m3x16_to_f16(uint4 in, uint4 *lo, uint4 *hi) {
        lo->x = e4m3x2_to_f16x2(in.x);
        lo->y = e4m3x2_to_f16x2(in.x >> 16);
        lo->z = e4m3x2_to_f16x2(in.y);
        lo->w = e4m3x2_to_f16x2(in.y >> 16);
        hi->x = e4m3x2_to_f16x2(in.z);
        hi->y = e4m3x2_to_f16x2(in.z >> 16);
        hi->z = e4m3x2_to_f16x2(in.w);
        hi->w = e4m3x2_to_f16x2(in.w >> 16);
}

/* two floats -> FP16x2 (low first) */
static __device__ __forceinline__ uint32_t pack_f16x2(float lo, float hi) {
        __half2 h = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t *>(&h);
}

/* two BF16 (low first) -> two FP16 */
static __device__ __forceinline__ uint32_t bf16x2_to_f16x2(uint32_t v) {
        return pack_f16x2(__uint_as_float(v << 16), __uint_as_float(v & 0xffff0000u));
}

static __device__ __forceinline__ uint4 bf16x8_to_f16(uint4 v) {
        return make_uint4(bf16x2_to_f16x2(v.x), bf16x2_to_f16x2(v.y), bf16x2_to_f16x2(v.z), bf16x2_to_f16x2(v.w));
}

template <int D, int WR, int WC, int BK, bool FP8, int NST, int QR>
struct fa_shape {
        static constexpr int ROWS = 16 * WR;
        /* Q rows held in shared memory: all ROWS, or 8 when a decode block's GQA group fits in 8 rows (rows
         * 8-15 of the mma then read rows 0-7 again and are masked: no room spent on padding rows) */
        static_assert(QR == ROWS || (QR == 8 && WR == 1), "Q rows: all, or 8 of a single row group");
        static constexpr int THREADS = 32 * WR * WC;
        static constexpr int LD = D + 8;        /* padded rows: ldmatrix rows fall in distinct bank groups */
        static constexpr int LDP = BK + 8;
        /* NST > 0: the next NST tiles' raw K/V bytes land here (cp.async) while the current one is computed */
        static constexpr size_t RAW_STAGE = (size_t) 2 * BK * D * (FP8 ? 1 : 2);
        static constexpr size_t RAW = NST * RAW_STAGE;
        /* with cp.async staging K and V take turns in one FP16 tile (V is widened once S no longer needs K) */
        static constexpr int KV_TILES = NST ? 1 : 2;
        static constexpr size_t SMEM = ((size_t) QR * LD + KV_TILES * (size_t) BK * LD + (size_t) ROWS * LDP) * 2 +
                                       (size_t) 2 * WC * ROWS * 4 + RAW;
};

static __device__ __forceinline__ void cp_async16(void *dst, const void *src) {
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(dst)), "l"(src));
}

static __device__ __forceinline__ void cp_async_commit() {
        asm volatile("cp.async.commit_group;\n" ::);
}

/* The warps of one row group (the WC warps sharing 16 query rows) exchange row maxima and probabilities
 * through shared memory; only they need to meet, so row groups run ahead of each other between tiles. */
template <int WR, int WC>
static __device__ __forceinline__ void row_group_sync(int wr) {
        if (WR == 1)
                __syncthreads();
        else
                asm volatile("bar.sync %0, %1;\n" ::"r"(1 + wr), "r"(32 * WC) : "memory");
}

/* wait until at most N of this thread's copy groups are still in flight */
template <int N>
static __device__ __forceinline__ void cp_async_wait() {
        asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* cp.async staging: thread t owns key row t / TPR of each tile and that row's chunks u * TPR + t % TPR
 * (16 bytes each; neighbouring threads read neighbouring chunks), so one page lookup and one row address
 * serve all its copies. */
template <int D, int BK, int THREADS, bool FP8>
struct raw_map {
        static constexpr int ELT = FP8 ? 1 : 2, RB = D * ELT, CH = RB / 16;
        static constexpr int TPR = THREADS / BK, CPT = CH / TPR;        /* threads per row, chunks per thread */
        static_assert(THREADS % BK == 0 && CH % TPR == 0, "a tile's rows must split evenly over the threads");
};

/* step one: the page of this thread's key row in the tile at kt (read from the page table a tile ahead, so
 * that the table's latency hides behind a tile of compute), -1 for a key of this step (k_new / v_new), -2
 * past nk */
template <int D, int BK, int THREADS, bool FP8>
static __device__ __forceinline__ int32_t lookup_page(const struct att_ctx &c, const int32_t *table, int32_t kt,
                                                      int nk, int32_t pos0) {
        const int kr = threadIdx.x / raw_map<D, BK, THREADS, FP8>::TPR;
        const int32_t j = kt + kr;
        const uint32_t pi = (uint32_t) j / c.page_size;
        return kr >= nk ? -2 : j >= pos0 ? -1 : table[c.ring ? pi % c.ring : pi];
}

/* step two: start copying the row's chunks into raw (K rows, then V rows); the caller commits */
template <int D, int BK, int THREADS, bool FP8>
static __device__ __forceinline__ void issue_raw(uint8_t *raw, const struct att_ctx &c, int32_t page, int32_t kt,
                                                 int32_t pos0, int32_t row0, uint32_t kvh) {
        using M = raw_map<D, BK, THREADS, FP8>;
        const int kr = threadIdx.x / M::TPR, w0 = threadIdx.x % M::TPR;
        const int32_t j = kt + kr;
        if (page == -2)
                return;
        const bool fresh = page == -1;
        const size_t row = fresh ? (size_t) (row0 + j - pos0) : (size_t) page * c.page_size + (uint32_t) j % c.page_size;
        const size_t off = (row * c.n_kv + kvh) * D * M::ELT;
        const uint8_t *ksrc = (fresh ? c.k_new : c.k_pages) + off, *vsrc = (fresh ? c.v_new : c.v_pages) + off;
        uint8_t *kd = raw + kr * M::RB, *vd = raw + (BK + kr) * M::RB;
#pragma unroll
        for (int u = 0; u < M::CPT; u++) {
                const int w = u * M::TPR + w0;
                cp_async16(kd + w * 16, ksrc + w * 16);
                cp_async16(vd + w * 16, vsrc + w * 16);
        }
}

/* The first NST tiles of [klo, khi) in flight, one commit group per tile (empty past the last, so that the
 * wait count stays fixed); returns the page for tile NST, read now so that it arrives during compute. */
template <int D, int BK, int THREADS, bool FP8, int NST>
static __device__ __forceinline__ int32_t copy_first_tiles(uint8_t *raw, size_t stage_bytes,
                                                           const struct att_ctx &c, const int32_t *table,
                                                           int32_t klo, int32_t khi, int n_tiles, int32_t pos0,
                                                           int32_t row0, uint32_t kvh) {
        int32_t page = -2;
#pragma unroll
        for (int p = 0; p < NST; p++) {
                if (p < n_tiles) {
                        const int32_t kp = klo + p * BK;
                        page = lookup_page<D, BK, THREADS, FP8>(c, table, kp, min(BK, khi - kp), pos0);
                        issue_raw<D, BK, THREADS, FP8>(raw + p * stage_bytes, c, page, kp, pos0, row0, kvh);
                }
                cp_async_commit();
        }
        if (NST < n_tiles)
                page = lookup_page<D, BK, THREADS, FP8>(c, table, klo + NST * BK, min(BK, khi - klo - NST * BK), pos0);
        return page;
}

/* Tile `it` (at kt) has left its stage: the stage takes tile it + NST, and the page of the tile after that
 * travels while this one is finished. One commit group either way. */
template <int D, int BK, int THREADS, bool FP8, int NST>
static __device__ __forceinline__ void copy_next_tile(uint8_t *stage, int32_t *page, const struct att_ctx &c,
                                                      const int32_t *table, int32_t kt, int it, int n_tiles,
                                                      int32_t khi, int32_t pos0, int32_t row0, uint32_t kvh) {
        if (it + NST < n_tiles) {
                issue_raw<D, BK, THREADS, FP8>(stage, c, *page, kt + NST * BK, pos0, row0, kvh);
                if (it + NST + 1 < n_tiles) {
                        const int32_t kn = kt + (NST + 1) * BK;
                        *page = lookup_page<D, BK, THREADS, FP8>(c, table, kn, min(BK, khi - kn), pos0);
                }
        }
        cp_async_commit();
}

/* step three: raw rows (K or V) -> FP16 rows of dst, rows nk..BK-1 zeroed */
template <int D, int BK, int THREADS, bool FP8>
static __device__ __forceinline__ void widen_raw(uint16_t *dst, const uint8_t *raw, int nk) {
        using M = raw_map<D, BK, THREADS, FP8>;
        constexpr int LD = D + 8;
        const int kr = threadIdx.x / M::TPR, w0 = threadIdx.x % M::TPR;
#pragma unroll
        for (int u = 0; u < M::CPT; u++) {
                const int w = u * M::TPR + w0;
                uint4 b = make_uint4(0, 0, 0, 0);
                if (kr < nk)
                        b = *reinterpret_cast<const uint4 *>(raw + kr * M::RB + w * 16);
                if (FP8) {
                        uint4 *d = reinterpret_cast<uint4 *>(dst + kr * LD + w * 16);
                        e4m3x16_to_f16(b, d, d + 1);
                } else {
                        *reinterpret_cast<uint4 *>(dst + kr * LD + w * 8) = bf16x8_to_f16(b);
                }
        }
}

/* Gather keys [kt, kt + nk) of kv head kvh into ks / vs as FP16 rows; rows nk..BK-1 are zeroed (P is 0
 * there, but 0 * garbage could be NaN). */
template <int D, int BK, int THREADS, bool FP8>
static __device__ __forceinline__ void stage_kv(uint16_t *ks, uint16_t *vs, const struct att_ctx &c,
                                                const int32_t *table, int32_t kt, int nk, int32_t pos0,
                                                int32_t row0, uint32_t kvh) {
        constexpr int LD = D + 8, ELT = FP8 ? 1 : 2, CH = D * ELT / 16;
        /* loads in flight per thread: 8 pairs in the small decode blocks, 4 where registers are tight */
        constexpr int ITERS = BK * CH / THREADS, GM = THREADS < 256 ? 8 : 4;
        constexpr int G = ITERS < GM ? ITERS : GM;
        static_assert(BK * CH % THREADS == 0 && ITERS % G == 0, "tile must split evenly over the threads");
#pragma unroll
        for (int g0 = 0; g0 < ITERS; g0 += G) {
                uint4 kb[G], vb[G];
#pragma unroll
                for (int u = 0; u < G; u++) {
                        const int i = threadIdx.x + (g0 + u) * THREADS, kr = i / CH, w = i % CH;
                        if (kr < nk) {
                                bool fresh;
                                size_t off = key_row(c, table, kt + kr, pos0, row0, kvh, &fresh) * ELT + w * 16;
                                kb[u] = *reinterpret_cast<const uint4 *>((fresh ? c.k_new : c.k_pages) + off);
                                vb[u] = *reinterpret_cast<const uint4 *>((fresh ? c.v_new : c.v_pages) + off);
                        } else {
                                kb[u] = make_uint4(0, 0, 0, 0);
                                vb[u] = make_uint4(0, 0, 0, 0);
                        }
                }
#pragma unroll
                for (int u = 0; u < G; u++) {
                        const int i = threadIdx.x + (g0 + u) * THREADS, kr = i / CH, w = i % CH;
                        if (FP8) {
                                uint4 *kd = reinterpret_cast<uint4 *>(ks + kr * LD + w * 16);
                                uint4 *vd = reinterpret_cast<uint4 *>(vs + kr * LD + w * 16);
                                e4m3x16_to_f16(kb[u], kd, kd + 1);
                                e4m3x16_to_f16(vb[u], vd, vd + 1);
                        } else {
                                *reinterpret_cast<uint4 *>(ks + kr * LD + w * 8) = bf16x8_to_f16(kb[u]);
                                *reinterpret_cast<uint4 *>(vs + kr * LD + w * 8) = bf16x8_to_f16(vb[u]);
                        }
                }
        }
}

/*
 * grid: (token groups of tpb tokens, kv heads, key splits). With gridDim.z == 1 the rows are finished into
 * out; otherwise each row writes (m, l, o[D]) for its split into partial[(row * gridDim.z + split) * (D + 2)]
 * (row = token * n_heads + head) and a chunk of at least min_chunk keys per split.
 * Mixed batches (short_seg > 0): a sequence that has fewer than short_seg tokens in a prefill-shaped block
 * (prefill_tpb tokens) would cost that block a walk over all its keys for a few rows, serially with the
 * block's other sequences; the prefill-shaped launch skips those, and a decode-shaped launch takes exactly
 * them (one block per token, the rest exit at once).
 */
template <int D, int WR, int WC, int BK>
struct fa_occupancy {
        /* blocks per SM the register budget is cut for (shared memory allows as many) */
        static constexpr int MIN_BLOCKS = WR * WC == 8 ? (D == 256 ? 2 : 1) : (D == 256 ? 4 : 2);
};

template <int D, int WR, int WC, int BK, bool FP8, int NST, int QR>
static __global__ void __launch_bounds__(32 * WR * WC, (fa_occupancy<D, WR, WC, BK>::MIN_BLOCKS))
        fa_kernel(const uint16_t *q, struct att_ctx c, uint32_t tpb, uint32_t min_chunk, uint32_t prefill_tpb,
                  uint32_t short_seg, float *partial, uint16_t *out) {
        using S = fa_shape<D, WR, WC, BK, FP8, NST, QR>;
        constexpr int ROWS = S::ROWS, THREADS = S::THREADS, LD = S::LD, LDP = S::LDP;
        constexpr int KW = BK / WC;             /* keys per warp in S */
        constexpr int NS = KW / 8;              /* S n-tiles per warp */
        constexpr int DW = D / WC;              /* output columns per warp */
        constexpr int NO = DW / 8;              /* O n-tiles per warp */
        static_assert((NS == 1 || NS % 2 == 0) && NO % 2 == 0, "n-tiles are loaded in pairs");
        extern __shared__ __align__(16) uint8_t fa_sm[];
        uint16_t *qs = reinterpret_cast<uint16_t *>(fa_sm);
        uint16_t *ks = qs + QR * LD, *vs = ks + (S::KV_TILES - 1) * BK * LD, *ps = vs + BK * LD;
        float *red_m = reinterpret_cast<float *>(ps + ROWS * LDP), *red_l = red_m + WC * ROWS;
        uint8_t *raw = reinterpret_cast<uint8_t *>(red_l + WC * ROWS);

        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wr = warp / WC, wc = warp % WC;
        const uint32_t g = c.n_heads / c.n_kv, kvh = blockIdx.y, n_split = gridDim.z, split = blockIdx.z;
        const uint32_t t_begin = blockIdx.x * tpb, t_end = min(t_begin + tpb, c.bt.n_tokens);
        const uint32_t used_rows = (t_end - t_begin) * g;

        if (tpb == 1 && short_seg) {
                /* decode-shaped companion: only tokens of short sequence runs in their prefill block */
                const uint32_t pb0 = t_begin / prefill_tpb * prefill_tpb;
                const uint32_t pb1 = min(pb0 + prefill_tpb, c.bt.n_tokens);
                const int32_t seq = c.bt.tok_seq[t_begin];
                uint32_t a = t_begin, b = t_begin + 1;
                while (a > pb0 && c.bt.tok_seq[a - 1] == seq)
                        a--;
                while (b < pb1 && c.bt.tok_seq[b] == seq)
                        b++;
                if (b - a >= short_seg)
                        return;
        }

        bool q_ready = false;

        /* this thread's two rows of the S / O fragments */
        const int ra = wr * 16 + (lane >> 2), rb = ra + 8;
        const uint32_t ta = t_begin + (uint32_t) ra / g, tb = t_begin + (uint32_t) rb / g;

        for (uint32_t t0 = t_begin; t0 < t_end;) {
                const int32_t seq = c.bt.tok_seq[t0];
                uint32_t t1 = t0 + 1;
                while (t1 < t_end && c.bt.tok_seq[t1] == seq)
                        t1++;
                if (tpb > 1 && t1 - t0 < short_seg) {
                        t0 = t1;        /* the decode-shaped companion launch takes these */
                        continue;
                }
                const int32_t pos0 = c.bt.seq_pos0[seq], row0 = c.bt.seq_row0[seq];
                const int32_t *table = c.bt.tables + c.bt.seq_table0[seq];
                const bool in_a = (uint32_t) ra < used_rows && ta >= t0 && ta < t1;
                const bool in_b = (uint32_t) rb < used_rows && tb >= t0 && tb < t1;
                const int32_t qa = in_a ? c.bt.tok_pos[ta] : -1, qb = in_b ? c.bt.tok_pos[tb] : -1;
                const int32_t la = c.window ? qa - (int32_t) c.window + 1 : 0;
                const int32_t lb = c.window ? qb - (int32_t) c.window + 1 : 0;
                const int32_t first_pos = c.bt.tok_pos[t0], last_pos = c.bt.tok_pos[t1 - 1];
                int32_t klo = c.window ? max(0, first_pos - (int32_t) c.window + 1) : 0, khi = last_pos + 1;
                if (n_split > 1) {
                        /* whole key tiles per split, and never fewer than min_chunk keys: with a loose
                         * bound on the context (decode graphs) the trailing splits simply find no keys */
                        int32_t chunk = (khi - klo + (int32_t) n_split - 1) / (int32_t) n_split;
                        chunk = max((chunk + BK - 1) / BK * BK, (int32_t) min_chunk);
                        klo = klo + (int32_t) split * chunk;
                        khi = min(khi, klo + chunk);
                }

                float o[NO][4];
#pragma unroll
                for (int n = 0; n < NO; n++)
                        o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
                float ma = -INFINITY, mb = -INFINITY, sa = 0.0f, sb = 0.0f;

                const int n_tiles = khi > klo ? (khi - klo + BK - 1) / BK : 0;
                if (n_tiles > 0 && !q_ready) {
                        /* Q tile, zero rows past the block's tokens; only blocks with keys to visit load it
                         * (under a loose context bound most decode splits have none). The first tile's
                         * barriers order it before any read. */
                        for (uint32_t i = threadIdx.x; i < (uint32_t) QR * (D / 8); i += THREADS) {
                                const uint32_t r = i / (D / 8), w = i % (D / 8);
                                uint4 v = make_uint4(0, 0, 0, 0);
                                if (r < used_rows) {
                                        const uint32_t t = t_begin + r / g, h = kvh * g + r % g;
                                        v = bf16x8_to_f16(*reinterpret_cast<const uint4 *>(
                                                q + ((size_t) t * c.n_heads + h) * D + w * 8));
                                }
                                *reinterpret_cast<uint4 *>(qs + r * LD + w * 8) = v;
                        }
                        q_ready = true;
                }
                int32_t page = -2;
                if (NST)
                        page = copy_first_tiles<D, BK, THREADS, FP8, NST>(raw, S::RAW_STAGE, c, table, klo, khi,
                                                                          n_tiles, pos0, row0, kvh);
                for (int it = 0; it < n_tiles; it++) {
                        const int32_t kt = klo + it * BK;
                        const int nk = min(BK, khi - kt);
                        uint8_t *stage = raw + (it % (NST ? NST : 1)) * S::RAW_STAGE;
                        if (NST) {
                                cp_async_wait<NST ? NST - 1 : 0>();
                                __syncthreads();
                                widen_raw<D, BK, THREADS, FP8>(ks, stage, nk);
                                __syncthreads();
                        } else {
                                __syncthreads();
                                stage_kv<D, BK, THREADS, FP8>(ks, vs, c, table, kt, nk, pos0, row0, kvh);
                                __syncthreads();
                        }

                        float s[NS][4];
#pragma unroll
                        for (int n = 0; n < NS; n++)
                                s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
                        const uint16_t *qp = qs + (wr * 16 + (lane & (QR == 8 ? 7 : 15))) * LD + (lane >> 4) * 8;
                        const uint16_t *kp = ks + (wc * KW + (lane & 7) + ((lane >> 4) << 3)) * LD +
                                             ((lane >> 3) & 1) * 8;
#pragma unroll
                        for (int kk = 0; kk < D / 16; kk++) {
                                uint32_t a[4];
                                ldsm_x4(qp + kk * 16, a);
                                if (NS == 1) {
                                        uint32_t b[2];
                                        ldsm_x2(kp + kk * 16, b);
                                        mma_f16(s[0], a, b[0], b[1]);
                                }
#pragma unroll
                                for (int np = 0; np < NS / 2; np++) {
                                        uint32_t b[4];
                                        ldsm_x4(kp + np * 16 * LD + kk * 16, b);
                                        mma_f16_x2(&s[2 * np], a, b);
                                }
                        }

                        /* mask, then this warp's row maxima */
                        float xa = -INFINITY, xb = -INFINITY;
#pragma unroll
                        for (int n = 0; n < NS; n++)
#pragma unroll
                                for (int e = 0; e < 2; e++) {
                                        const int32_t j = kt + wc * KW + n * 8 + (lane & 3) * 2 + e;
                                        if (j > qa || j < la || j >= khi)
                                                s[n][e] = -INFINITY;
                                        if (j > qb || j < lb || j >= khi)
                                                s[n][2 + e] = -INFINITY;
                                        xa = fmaxf(xa, s[n][e]);
                                        xb = fmaxf(xb, s[n][2 + e]);
                                }
                        xa = fmaxf(xa, __shfl_xor_sync(0xffffffffu, xa, 1));
                        xa = fmaxf(xa, __shfl_xor_sync(0xffffffffu, xa, 2));
                        xb = fmaxf(xb, __shfl_xor_sync(0xffffffffu, xb, 1));
                        xb = fmaxf(xb, __shfl_xor_sync(0xffffffffu, xb, 2));
                        if ((lane & 3) == 0) {
                                red_m[wc * ROWS + ra] = xa;
                                red_m[wc * ROWS + rb] = xb;
                        }
                        if (NST) {
                                /* every warp is past S: V takes K's place */
                                __syncthreads();
                                widen_raw<D, BK, THREADS, FP8>(vs, stage + BK * D * (FP8 ? 1 : 2), nk);
                        } else {
                                row_group_sync<WR, WC>(wr);
                        }
                        float na = ma, nb = mb;
#pragma unroll
                        for (int w = 0; w < WC; w++) {
                                na = fmaxf(na, red_m[w * ROWS + ra]);
                                nb = fmaxf(nb, red_m[w * ROWS + rb]);
                        }
                        /* a row without any visible key so far keeps m = -inf: exponentiate against 0 */
                        const float ca = na == -INFINITY ? 1.0f : __expf(ma - na);
                        const float cb = nb == -INFINITY ? 1.0f : __expf(mb - nb);
                        const float za = na == -INFINITY ? 0.0f : na, zb = nb == -INFINITY ? 0.0f : nb;
                        ma = na;
                        mb = nb;
                        sa *= ca;
                        sb *= cb;
                        uint16_t *pa = ps + ra * LDP + wc * KW + (lane & 3) * 2, *pb = pa + 8 * LDP;
#pragma unroll
                        for (int n = 0; n < NS; n++) {
                                uint32_t wa = pack_bf16x2(__expf(s[n][0] - za), __expf(s[n][1] - za));
                                uint32_t wb = pack_bf16x2(__expf(s[n][2] - zb), __expf(s[n][3] - zb));
                                /* the row sums add the rounded probabilities that PV multiplies */
                                sa += __uint_as_float(wa << 16) + __uint_as_float(wa & 0xffff0000u);
                                sb += __uint_as_float(wb << 16) + __uint_as_float(wb & 0xffff0000u);
                                *reinterpret_cast<uint32_t *>(pa + n * 8) = bf16x2_to_f16x2(wa);
                                *reinterpret_cast<uint32_t *>(pb + n * 8) = bf16x2_to_f16x2(wb);
                        }
#pragma unroll
                        for (int n = 0; n < NO; n++) {
                                o[n][0] *= ca;
                                o[n][1] *= ca;
                                o[n][2] *= cb;
                                o[n][3] *= cb;
                        }
                        if (NST) {
                                __syncthreads();
                                copy_next_tile<D, BK, THREADS, FP8, NST>(stage, &page, c, table, kt, it, n_tiles, khi,
                                                                         pos0, row0, kvh);
                        } else {
                                row_group_sync<WR, WC>(wr);
                        }

                        const uint16_t *pp = ps + (wr * 16 + (lane & 15)) * LDP + (lane >> 4) * 8;
                        const uint16_t *vp = vs + ((lane & 7) + ((lane >> 3) & 1) * 8) * LD + wc * DW +
                                             (lane >> 4) * 8;
#pragma unroll
                        for (int kk = 0; kk < BK / 16; kk++) {
                                uint32_t a[4];
                                ldsm_x4(pp + kk * 16, a);
#pragma unroll
                                for (int np = 0; np < NO / 2; np++) {
                                        uint32_t b[4];
                                        ldsm_x4_trans(vp + kk * 16 * LD + np * 16, b);
                                        mma_f16_x2(&o[2 * np], a, b);
                                }
                        }
                }

                /* full row sums: the quad's columns, then the warps of the row group */
                sa += __shfl_xor_sync(0xffffffffu, sa, 1);
                sa += __shfl_xor_sync(0xffffffffu, sa, 2);
                sb += __shfl_xor_sync(0xffffffffu, sb, 1);
                sb += __shfl_xor_sync(0xffffffffu, sb, 2);
                if ((lane & 3) == 0) {
                        red_l[wc * ROWS + ra] = sa;
                        red_l[wc * ROWS + rb] = sb;
                }
                __syncthreads();
                float ta_sum = 0.0f, tb_sum = 0.0f;
#pragma unroll
                for (int w = 0; w < WC; w++) {
                        ta_sum += red_l[w * ROWS + ra];
                        tb_sum += red_l[w * ROWS + rb];
                }
                const int col = wc * DW + (lane & 3) * 2;
#pragma unroll
                for (int half = 0; half < 2; half++) {
                        const bool in = half ? in_b : in_a;
                        if (!in)
                                continue;
                        const int r = half ? rb : ra;
                        const uint32_t t = t_begin + (uint32_t) r / g, h = kvh * g + (uint32_t) r % g;
                        const size_t row = (size_t) t * c.n_heads + h;
                        const float m = half ? mb : ma, l = half ? tb_sum : ta_sum;
                        if (n_split == 1) {
                                const float inv = l > 0.0f ? 1.0f / l : 0.0f;
                                uint16_t *dst = out + row * D + col;
#pragma unroll
                                for (int n = 0; n < NO; n++)
                                        *reinterpret_cast<uint32_t *>(dst + n * 8) =
                                                pack_bf16x2(o[n][2 * half] * inv, o[n][2 * half + 1] * inv);
                        } else {
                                float *pp = partial + (row * n_split + split) * (D + 2);
                                if (wc == 0 && (lane & 3) == 0) {
                                        pp[0] = m;
                                        pp[1] = l;
                                }
                                if (m == -INFINITY)
                                        continue;       /* the merge skips the output of a keyless split */
#pragma unroll
                                for (int n = 0; n < NO; n++)
                                        *reinterpret_cast<float2 *>(pp + 2 + col + n * 8) =
                                                make_float2(o[n][2 * half], o[n][2 * half + 1]);
                        }
                }
                __syncthreads();        /* red_l is rewritten by the next sequence's rows */
                t0 = t1;
        }
}

/*
 * Decode with the keys as the M side ("km"): S^T = K Q^T and O^T = V^T P^T, so the GQA group (at most 8
 * heads) is the N = 8 side of m16n8k16 and no mma row is padding, and Q^T stays in registers for the whole
 * block. One token per block, 4 warps; per tile of 32 keys warps 0 and 1 compute S^T for 16 keys each, all
 * 4 warps then own D/4 output dims of O^T. K and V take turns in one FP16 tile, NST raw tiles in flight
 * (cp.async), as in fa_kernel's decode shape; same split and partial layout.
 */
template <int D, bool FP8, int NST>
struct km_shape {
        static constexpr int BK = 32, THREADS = 128, LD = D + 8, LDP = BK + 8;
        static constexpr size_t RAW_STAGE = (size_t) 2 * BK * D * (FP8 ? 1 : 2);
        static constexpr size_t SMEM = ((size_t) 8 * LD + (size_t) BK * LD + (size_t) 8 * LDP) * 2 + 4 * 8 * 4 +
                                       NST * RAW_STAGE;
};

template <int D, bool FP8, int NST>
static __global__ void __launch_bounds__(128, D == 256 ? 4 : 2)
        fa_decode_km_kernel(const uint16_t *q, struct att_ctx c, uint32_t min_chunk, float *partial,
                            uint16_t *out) {
        using S = km_shape<D, FP8, NST>;
        constexpr int BK = S::BK, THREADS = S::THREADS, LD = S::LD, LDP = S::LDP;
        constexpr int DW = D / 4, MT = DW / 16;
        static_assert(NST > 0, "cp.async staging only");
        extern __shared__ __align__(16) uint8_t km_sm[];
        uint16_t *qs = reinterpret_cast<uint16_t *>(km_sm), *kv = qs + 8 * LD, *ps = kv + BK * LD;
        float *red_m = reinterpret_cast<float *>(ps + 8 * LDP), *red_l = red_m + 16;
        uint8_t *raw = reinterpret_cast<uint8_t *>(red_l + 16);

        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, quad = lane & 3;
        const uint32_t g = c.n_heads / c.n_kv, kvh = blockIdx.y, n_split = gridDim.z, split = blockIdx.z;
        const uint32_t t = blockIdx.x;
        const int32_t seq = c.bt.tok_seq[t], qpos = c.bt.tok_pos[t];
        const int32_t pos0 = c.bt.seq_pos0[seq], row0 = c.bt.seq_row0[seq];
        const int32_t *table = c.bt.tables + c.bt.seq_table0[seq];
        const int32_t lo = c.window ? max(0, qpos - (int32_t) c.window + 1) : 0;
        int32_t klo = lo, khi = qpos + 1;
        if (n_split > 1) {
                int32_t chunk = (khi - klo + (int32_t) n_split - 1) / (int32_t) n_split;
                chunk = max((chunk + BK - 1) / BK * BK, (int32_t) min_chunk);
                klo = klo + (int32_t) split * chunk;
                khi = min(khi, klo + chunk);
        }
        const int n_tiles = khi > klo ? (khi - klo + BK - 1) / BK : 0;
        const size_t row_base = (size_t) t * c.n_heads + kvh * g;      /* output row of head 0 of the group */
        if (n_tiles == 0) {
                /* only a split can be empty: tell the merge */
                if (threadIdx.x < g) {
                        float *pp = partial + ((row_base + threadIdx.x) * n_split + split) * (D + 2);
                        pp[0] = -INFINITY;
                        pp[1] = 0.0f;
                }
                return;
        }

        int32_t page = copy_first_tiles<D, BK, THREADS, FP8, NST>(raw, S::RAW_STAGE, c, table, klo, khi, n_tiles,
                                                                  pos0, row0, kvh);

        /* Q of the group's heads (rows past g zero), then Q^T fragments into registers */
        for (uint32_t i = threadIdx.x; i < 8 * (D / 8); i += THREADS) {
                const uint32_t r = i / (D / 8), w = i % (D / 8);
                uint4 v = make_uint4(0, 0, 0, 0);
                if (r < g)
                        v = bf16x8_to_f16(*reinterpret_cast<const uint4 *>(q + (row_base + r) * D + w * 8));
                *reinterpret_cast<uint4 *>(qs + r * LD + w * 8) = v;
        }
        __syncthreads();
        uint32_t qf[D / 16][2];
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++)
                ldsm_x2(qs + (lane & 7) * LD + kk * 16 + ((lane >> 3) & 1) * 8, qf[kk]);

        float o[MT][4];
#pragma unroll
        for (int n = 0; n < MT; n++)
                o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
        /* this thread's heads: 2 quad, 2 quad + 1 (the N columns of its fragments) */
        float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
        const int kr0 = warp * 16 + (lane >> 2);

        for (int it = 0; it < n_tiles; it++) {
                const int32_t kt = klo + it * BK;
                const int nk = min(BK, khi - kt);
                uint8_t *stage = raw + (it % NST) * S::RAW_STAGE;
                cp_async_wait<NST - 1>();
                __syncthreads();
                widen_raw<D, BK, THREADS, FP8>(kv, stage, nk);
                __syncthreads();

                float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                if (warp < 2) {
#pragma unroll
                        for (int kk = 0; kk < D / 16; kk++) {
                                uint32_t a[4];
                                ldsm_x4(kv + (warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8, a);
                                mma_f16(s, a, qf[kk][0], qf[kk][1]);
                        }
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                                const int32_t j = kt + kr0 + (e >> 1) * 8;
                                const uint32_t h = 2 * quad + (e & 1);
                                if (j >= khi || j < lo || h >= g)
                                        s[e] = -INFINITY;
                        }
                        float x0 = fmaxf(s[0], s[2]), x1 = fmaxf(s[1], s[3]);
#pragma unroll
                        for (int o_ = 4; o_ < 32; o_ <<= 1) {
                                x0 = fmaxf(x0, __shfl_xor_sync(0xffffffffu, x0, o_));
                                x1 = fmaxf(x1, __shfl_xor_sync(0xffffffffu, x1, o_));
                        }
                        if (lane < 4) {
                                red_m[warp * 8 + 2 * quad] = x0;
                                red_m[warp * 8 + 2 * quad + 1] = x1;
                        }
                }
                __syncthreads();
                /* every warp is past S: V takes K's place */
                widen_raw<D, BK, THREADS, FP8>(kv, stage + BK * D * (FP8 ? 1 : 2), nk);
                const float n0 = fmaxf(m0, fmaxf(red_m[2 * quad], red_m[8 + 2 * quad]));
                const float n1 = fmaxf(m1, fmaxf(red_m[2 * quad + 1], red_m[8 + 2 * quad + 1]));
                const float c0 = n0 == -INFINITY ? 1.0f : __expf(m0 - n0), c1 = n1 == -INFINITY ? 1.0f : __expf(m1 - n1);
                const float z0 = n0 == -INFINITY ? 0.0f : n0, z1 = n1 == -INFINITY ? 0.0f : n1;
                m0 = n0;
                m1 = n1;
                if (warp < 2) {
                        /* P rounded to BF16 (HF), stored as P[head][key] for the PV B operand */
                        const uint32_t pa = pack_bf16x2(__expf(s[0] - z0), __expf(s[1] - z1));
                        const uint32_t pb = pack_bf16x2(__expf(s[2] - z0), __expf(s[3] - z1));
                        const float p0 = __uint_as_float(pa << 16), p1 = __uint_as_float(pa & 0xffff0000u);
                        const float p2 = __uint_as_float(pb << 16), p3 = __uint_as_float(pb & 0xffff0000u);
                        const __half h0 = __float2half_rn(p0), h1 = __float2half_rn(p1);
                        const __half h2 = __float2half_rn(p2), h3 = __float2half_rn(p3);
                        ps[(2 * quad) * LDP + kr0] = *reinterpret_cast<const uint16_t *>(&h0);
                        ps[(2 * quad + 1) * LDP + kr0] = *reinterpret_cast<const uint16_t *>(&h1);
                        ps[(2 * quad) * LDP + kr0 + 8] = *reinterpret_cast<const uint16_t *>(&h2);
                        ps[(2 * quad + 1) * LDP + kr0 + 8] = *reinterpret_cast<const uint16_t *>(&h3);
                        float y0 = p0 + p2, y1 = p1 + p3;
#pragma unroll
                        for (int o_ = 4; o_ < 32; o_ <<= 1) {
                                y0 += __shfl_xor_sync(0xffffffffu, y0, o_);
                                y1 += __shfl_xor_sync(0xffffffffu, y1, o_);
                        }
                        l0 = l0 * c0 + y0;
                        l1 = l1 * c1 + y1;
                }
#pragma unroll
                for (int n = 0; n < MT; n++) {
                        o[n][0] *= c0;
                        o[n][1] *= c1;
                        o[n][2] *= c0;
                        o[n][3] *= c1;
                }
                __syncthreads();
                copy_next_tile<D, BK, THREADS, FP8, NST>(stage, &page, c, table, kt, it, n_tiles, khi, pos0, row0, kvh);

#pragma unroll
                for (int kk = 0; kk < BK / 16; kk++) {
                        uint32_t b[2];
                        ldsm_x2(ps + (lane & 7) * LDP + kk * 16 + ((lane >> 3) & 1) * 8, b);
#pragma unroll
                        for (int n = 0; n < MT; n++) {
                                uint32_t a[4];
                                ldsm_x4_trans(kv + (kk * 16 + (lane & 7) + ((lane >> 4) << 3)) * LD + warp * DW + n * 16 +
                                                      ((lane >> 3) & 1) * 8,
                                              a);
                                mma_f16(o[n], a, b[0], b[1]);
                        }
                }
        }

        /* the two S warps' row sums; every thread needs those of its two heads */
        if (warp < 2 && lane < 4) {
                red_l[warp * 8 + 2 * quad] = l0;
                red_l[warp * 8 + 2 * quad + 1] = l1;
        }
        __syncthreads();
        const float L0 = red_l[2 * quad] + red_l[8 + 2 * quad], L1 = red_l[2 * quad + 1] + red_l[8 + 2 * quad + 1];
#pragma unroll
        for (int e = 0; e < 2; e++) {
                const uint32_t h = 2 * quad + e;
                if (h >= g)
                        continue;
                const float m = e ? m1 : m0, l = e ? L1 : L0, inv = l > 0.0f ? 1.0f / l : 0.0f;
                const size_t row = row_base + h;
                if (n_split == 1) {
#pragma unroll
                        for (int n = 0; n < MT; n++) {
                                const int d0 = warp * DW + n * 16 + (lane >> 2);
                                out[row * D + d0] = f32_to_bf16_bits(o[n][e] * inv);
                                out[row * D + d0 + 8] = f32_to_bf16_bits(o[n][2 + e] * inv);
                        }
                } else {
                        float *pp = partial + (row * n_split + split) * (D + 2);
                        if (warp == 0 && lane < 4) {
                                pp[0] = m;
                                pp[1] = l;
                        }
#pragma unroll
                        for (int n = 0; n < MT; n++) {
                                const int d0 = warp * DW + n * 16 + (lane >> 2);
                                pp[2 + d0] = o[n][e];
                                pp[2 + d0 + 8] = o[n][2 + e];
                        }
                }
        }
}

template <int D, bool FP8, int NST>
static int launch_km(dim3 grid, const uint16_t *q, const struct att_ctx &c, float *partial, uint16_t *out,
                     cudaStream_t stream) {
        using S = km_shape<D, FP8, NST>;
        static bool attr_set;
        auto fn = fa_decode_km_kernel<D, FP8, NST>;
        if (!attr_set) {
                if (cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int) S::SMEM) !=
                    cudaSuccess)
                        return -EIO;
                attr_set = true;
        }
        fn<<<grid, S::THREADS, S::SMEM, stream>>>(q, c, ATT_MMA_MIN_CHUNK, partial, out);
        return KERN_CHECK_LAUNCH();
}

bool att_mma_supported(const struct kern_attn_layer *L, bool prefill) {
        const uint32_t g = L->n_heads / L->n_kv_heads;
        if (L->head_dim != 256 && L->head_dim != 512)
                return false;
        return prefill ? 64 % g == 0 : g <= 16;
}

template <int D, int WR, int WC, int BK, bool FP8, int NST, int QR = 16 * WR>
static int launch_fa(dim3 grid, const uint16_t *q, const struct att_ctx &c, uint32_t tpb, uint32_t min_chunk,
                     uint32_t prefill_tpb, uint32_t short_seg, float *partial, uint16_t *out,
                     cudaStream_t stream) {
        using S = fa_shape<D, WR, WC, BK, FP8, NST, QR>;
        static bool attr_set;
        auto fn = fa_kernel<D, WR, WC, BK, FP8, NST, QR>;
        /* the attribute is per function and per device; the daemon runs on one device */
        if (!attr_set) {
                if (cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int) S::SMEM) !=
                    cudaSuccess)
                        return -EIO;
                attr_set = true;
        }
        fn<<<grid, S::THREADS, S::SMEM, stream>>>(q, c, tpb, min_chunk, prefill_tpb, short_seg, partial, out);
        return KERN_CHECK_LAUNCH();
}

/* prefill shape: 64 rows, 8 warps (4 row groups x 2 column halves), key tiles of 64 copied with cp.async one
 * tile ahead while K and V take turns in one FP16 tile (H100, 8192 tokens, FP8: 0.77 / 6.1 ms on a sliding /
 * full layer), or staged through registers (0.83 / 6.8 ms; 32-key tiles with two FP16 tiles and a copy ahead
 * were slower still, 0.87 / 7.7 ms). With several sequences in the batch, short sequence runs go to a
 * decode-shaped launch (fa_kernel). */
template <int NST>
static int launch_prefill(dim3 grid, const uint16_t *q, const struct att_ctx &c, bool fp8, uint32_t tpb,
                          uint32_t short_seg, uint16_t *out, cudaStream_t stream) {
        if (c.d == 256)
                return fp8 ? launch_fa<256, 4, 2, 64, true, NST>(grid, q, c, tpb, 0, tpb, short_seg, NULL, out, stream)
                           : launch_fa<256, 4, 2, 64, false, 0>(grid, q, c, tpb, 0, tpb, short_seg, NULL, out, stream);
        return fp8 ? launch_fa<512, 4, 2, 64, true, NST>(grid, q, c, tpb, 0, tpb, short_seg, NULL, out, stream)
                   : launch_fa<512, 4, 2, 64, false, 0>(grid, q, c, tpb, 0, tpb, short_seg, NULL, out, stream);
}

int att_mma_prefill(const uint16_t *q, const struct att_ctx &c, bool fp8, bool copy_ahead, uint16_t *out,
                    cudaStream_t stream) {
        const uint32_t g = c.n_heads / c.n_kv, tpb = 64 / g;
        const uint32_t short_seg = c.bt.n_seqs > 1 ? (tpb / 4 > 2 ? tpb / 4 : 2) : 0;
        dim3 grid((c.bt.n_tokens + tpb - 1) / tpb, c.n_kv, 1);
        /* a BF16 raw tile is twice the bytes: it would cost d256 its second block per SM (H100: 1.21 against
         * 0.89 ms) and does not fit beside d512's tiles */
        int r = copy_ahead && fp8 ? launch_prefill<1>(grid, q, c, fp8, tpb, short_seg, out, stream)
                                  : launch_prefill<0>(grid, q, c, fp8, tpb, short_seg, out, stream);
        if (r < 0 || !short_seg)
                return r;
        /* the companion writes its rows directly (one split): a merge would run over every row */
        return att_mma_decode_rows(q, c, fp8, 1, false, tpb, short_seg, NULL, out, stream);
}

/* decode shape: one token per block, 4 warps splitting each key tile of 32 (small blocks, several per SM, so
 * that enough K/V bytes are in flight), n_split blocks per (token, kv head) taking at least ATT_MMA_MIN_CHUNK
 * keys each. NST tiles are in flight (cp.async) while one is computed; NST is what shared memory allows at
 * 4 blocks per SM (d256) or 2 (d512): 2 for FP8 with a GQA group of at most 8, else 1 (BF16 d512 with a
 * 16-row group: 0, staged through registers). km: fa_decode_km_kernel where the group has at most 8 heads. */
template <int D, bool FP8, int NST>
static int launch_decode(dim3 grid, const uint16_t *q, const struct att_ctx &c, uint32_t prefill_tpb,
                         uint32_t short_seg, float *partial, uint16_t *out, cudaStream_t stream) {
        const uint32_t mc = ATT_MMA_MIN_CHUNK;
        if (c.n_heads / c.n_kv <= 8)
                return launch_fa<D, 1, 4, 32, FP8, FP8 ? NST : NST - 1, 8>(grid, q, c, 1, mc, prefill_tpb, short_seg,
                                                                           partial, out, stream);
        return launch_fa<D, 1, 4, 32, FP8, FP8 || D == 256 ? NST - 1 : 0, 16>(grid, q, c, 1, mc, prefill_tpb,
                                                                              short_seg, partial, out, stream);
}

int att_mma_decode_rows(const uint16_t *q, const struct att_ctx &c, bool fp8, uint32_t n_split, bool km,
                        uint32_t prefill_tpb, uint32_t short_seg, float *partial, uint16_t *out,
                        cudaStream_t stream) {
        dim3 grid(c.bt.n_tokens, c.n_kv, n_split);
        const uint32_t pt = prefill_tpb, ss = short_seg;
        if (km && !short_seg && c.n_heads / c.n_kv <= 8) {
                /* BF16 raw tiles are twice the bytes: one in flight keeps the occupancy */
                if (c.d == 256)
                        return fp8 ? launch_km<256, true, 2>(grid, q, c, partial, out, stream)
                                   : launch_km<256, false, 1>(grid, q, c, partial, out, stream);
                return fp8 ? launch_km<512, true, 2>(grid, q, c, partial, out, stream)
                           : launch_km<512, false, 1>(grid, q, c, partial, out, stream);
        }
        if (c.d == 256)
                return fp8 ? launch_decode<256, true, 2>(grid, q, c, pt, ss, partial, out, stream)
                           : launch_decode<256, false, 2>(grid, q, c, pt, ss, partial, out, stream);
        return fp8 ? launch_decode<512, true, 2>(grid, q, c, pt, ss, partial, out, stream)
                   : launch_decode<512, false, 2>(grid, q, c, pt, ss, partial, out, stream);
}

int att_mma_decode(const uint16_t *q, const struct att_ctx &c, bool fp8, uint32_t n_split, bool km,
                   float *partial, uint16_t *out, cudaStream_t stream) {
        return att_mma_decode_rows(q, c, fp8, n_split, km, 1, 0, partial, out, stream);
}
