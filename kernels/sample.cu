/* SPDX-License-Identifier: Apache-2.0 */
/* Greedy selection on the device: the argmax of each logits row, so a greedy step copies one int per
 * sequence to the host instead of a 1 MiB row (vocabulary 262,144). The rule is the host sampler's at
 * temperature 0 (daemon/server/sampler.h step 3): NaN reads as -inf, the lowest id wins among equal values,
 * and a row with no finite value (all -inf / NaN) gives id 0. */
#include "common.cuh"

#define ARGMAX_THREADS 1024

/* (value, id) ordering of the rule: a beats b when larger, or equal with a lower id */
static __device__ __forceinline__ bool argmax_better(float av, int32_t ai, float bv, int32_t bi) {
        return av > bv || (av == bv && ai < bi);
}

/* butterfly over the warp: every lane ends with the warp's best (value, id) */
static __device__ __forceinline__ void warp_argmax(float *best, int32_t *best_i) {
        for (int o = 16; o > 0; o >>= 1) {
                float ov = __shfl_xor_sync(0xffffffffu, *best, o);
                int32_t oi = __shfl_xor_sync(0xffffffffu, *best_i, o);
                if (argmax_better(ov, oi, *best, *best_i)) {
                        *best = ov;
                        *best_i = oi;
                }
        }
}

static __global__ void __launch_bounds__(ARGMAX_THREADS) argmax_rows_kernel(const float *logits, uint32_t n,
                                                                            int32_t *out) {
        __shared__ float sv[ARGMAX_THREADS / 32];
        __shared__ int32_t si[ARGMAX_THREADS / 32];
        const float *row = logits + (size_t) blockIdx.x * n;
        /* the sentinel id n loses every tie, so even -inf rows pick a real id (the lowest) */
        float best = -INFINITY;
        int32_t best_i = (int32_t) n;

        /* each thread walks its strided elements in increasing id order: only a strictly larger value
         * replaces, which keeps the lowest id of the thread's ties */
        if ((n & 3) == 0 && ((uintptr_t) row & 15) == 0) {
                const float4 *row4 = (const float4 *) row;
                for (uint32_t j = threadIdx.x; j < n / 4; j += blockDim.x) {
                        float4 q = row4[j];
                        float v[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
                        for (int k = 0; k < 4; k++) {
                                float x = isnan(v[k]) ? -INFINITY : v[k];
                                int32_t i = (int32_t) (4 * j + k);
                                if (argmax_better(x, i, best, best_i)) {
                                        best = x;
                                        best_i = i;
                                }
                        }
                }
        } else {
                for (uint32_t j = threadIdx.x; j < n; j += blockDim.x) {
                        float x = isnan(row[j]) ? -INFINITY : row[j];
                        if (argmax_better(x, (int32_t) j, best, best_i)) {
                                best = x;
                                best_i = (int32_t) j;
                        }
                }
        }
        warp_argmax(&best, &best_i);
        uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_warps = blockDim.x / 32;
        if (lane == 0) {
                sv[warp] = best;
                si[warp] = best_i;
        }
        __syncthreads();
        if (warp == 0) {
                best = lane < n_warps ? sv[lane] : -INFINITY;
                best_i = lane < n_warps ? si[lane] : (int32_t) n;
                warp_argmax(&best, &best_i);
                if (lane == 0)
                        out[blockIdx.x] = best_i < (int32_t) n ? best_i : 0;
        }
}

extern "C" int kern_argmax_rows(const float *logits, uint32_t n_rows, uint32_t n, int32_t *out, cudaStream_t stream) {
        if (n_rows == 0)
                return 0;
        if (n == 0 || n > INT32_MAX)
                return -EINVAL;
        argmax_rows_kernel<<<n_rows, ARGMAX_THREADS, 0, stream>>>(logits, n, out);
        return KERN_CHECK_LAUNCH();
}

/* ==== Full sampling on the device: sampler.h steps 0-6, one block per row ====
 *
 * Every decision of the host sampler is reproduced with the same float operations (penalties, temperature,
 * max, the ranking key (l desc, id asc), min_p's w >= min_p), and every sum it takes in double is taken here
 * EXACTLY, in 128-bit fixed point (w * 2^62 per token, truncated: a token of weight below 2^-62 is dropped,
 * at most V * 2^-62 < 2^-43 in all). Integer sums do not depend on the order of the additions, so the
 * kernel is deterministic: the same logits, parameters, seed and index always give the same token.
 *
 * Where the two can still differ (docs/cuda-backend.md, "Sampling on the GPU"):
 *   - w = expf(l - m): CUDA's expf is within 2 ulp, glibc's within 0.502 ulp, so a token's w may differ by
 *     up to 2 ulp (relative 2.4e-7): min_p decides differently only for a w within 2 ulp of min_p, and
 *     every sum (top_p mass, z, the draw's prefix sums, the log-sum-exp) may move by that relative amount;
 *   - the host adds doubles in its own order (quickselect order for top_p, ascending id for the draw), with
 *     a relative rounding error below V * 2^-53 = 2.9e-11.
 * So a token differs only when u * z (the draw) or p * mass (top_p) lies within a relative 3e-7 of a
 * boundary, or a w within 2 ulp of min_p; logprobs differ by at most ~3e-7 absolute plus one float ulp.
 * tests/kernels/test-kernel-sample.c checks exactly that.
 *
 * Phases of one row (all threads of the block take part in each; a full pass reads the row from global
 * memory with float4 loads, two in flight per thread):
 *   penalties (token history)  -> temperature + max (+ per-thread maxima)  -> total mass of w = expf(l - m)
 *   (recomputed where needed, never stored); the same pass collects every possible candidate into a list:
 *   for top_k <= 1024 the elements above a lower bound on the k-th largest logit, for top_p alone the
 *   elements with w >= (1 - p) / V  -> top_k, then top_p, by select_rank on that list (or, without a list,
 *   on the row: a level-0 histogram, then the bin holding the answer compacted), ties by id  -> z over the
 *   candidates, the draw (chunk sums, block scan, one warp scans the hit chunk)  -> logprob of the token and
 *   the top-N list (select_rank on the logprob key). Typical step (top_k and/or top_p, no logprobs): three
 *   passes over the row (temperature, total, draw) plus work on a list of a few hundred candidates.
 * No sort of the vocabulary, no host synchronisation, one launch. */

#define SAMPLE_THREADS 1024
#define SAMPLE_WARPS (SAMPLE_THREADS / 32)
#define RADIX_BINS 2048
#define PREFIX_CHUNKS 2048      /* chunks of the id-ordered prefix search: 128 ids each up to 262,144 */

typedef unsigned __int128 u128;

struct sample_shared {
        union {
                struct {
                        uint32_t cnt[RADIX_BINS];
                        unsigned long long lo[RADIX_BINS], hi[RADIX_BINS];
                } h;
                u128 chunk[PREFIX_CHUNKS];
        } u;
        u128 red[SAMPLE_WARPS];
        float redf[SAMPLE_WARPS];
        int32_t redi[SAMPLE_WARPS];
        uint32_t sel_digit;
        u128 sel_rem;
        int32_t found_chunk, found_idx;
        u128 found_base;
        uint32_t list_n;
        float tmax[SAMPLE_THREADS];     /* per-thread maxima of the tempered row (the top_k lower bound) */
        uint32_t top_n;
        int32_t top_id[KERN_SAMPLE_MAX_TOP];
        float top_lp[KERN_SAMPLE_MAX_TOP];
};

static __device__ __forceinline__ float clean_logit(float v) {
        return isnan(v) ? -INFINITY : v;
}

/* float -> uint32 with the same order (no NaN here); -0 and +0 map to one key, as they compare equal */
static __device__ __forceinline__ uint32_t order_key(float v) {
        uint32_t u = __float_as_uint(v == 0.0f ? 0.0f : v);
        return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static __device__ __forceinline__ float key_to_float(uint32_t k) {
        return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

static __device__ __forceinline__ unsigned long long weight_fx(float w) {
        return __float2ull_rz(w * 0x1p62f);
}

static __device__ __forceinline__ double fx_to_double(u128 v) {
        return ((double) (uint64_t) (v >> 64) * 0x1p64 + (double) (uint64_t) v) * 0x1p-62;
}

/* t >= 0 in fixed point, truncated (both parts are exact: s - hi * 2^64 only drops s's leading bits) */
static __device__ __forceinline__ u128 double_to_fx(double t) {
        double s = t * 0x1p62;
        double hi = floor(s * 0x1p-64);
        uint64_t lo = (uint64_t) (s - hi * 0x1p64);
        return ((u128) (uint64_t) hi << 64) | lo;
}

static __device__ __forceinline__ u128 shfl_u128(u128 v, int src) {
        uint64_t lo = __shfl_sync(0xffffffffu, (unsigned long long) (uint64_t) v, src);
        uint64_t hi = __shfl_sync(0xffffffffu, (unsigned long long) (uint64_t) (v >> 64), src);
        return ((u128) hi << 64) | lo;
}

static __device__ __forceinline__ u128 shfl_up_u128(u128 v, int d) {
        uint64_t lo = __shfl_up_sync(0xffffffffu, (unsigned long long) (uint64_t) v, d);
        uint64_t hi = __shfl_up_sync(0xffffffffu, (unsigned long long) (uint64_t) (v >> 64), d);
        return ((u128) hi << 64) | lo;
}

static __device__ __forceinline__ u128 shfl_xor_u128(u128 v, int o) {
        uint64_t lo = __shfl_xor_sync(0xffffffffu, (unsigned long long) (uint64_t) v, o);
        uint64_t hi = __shfl_xor_sync(0xffffffffu, (unsigned long long) (uint64_t) (v >> 64), o);
        return ((u128) hi << 64) | lo;
}

static __device__ __forceinline__ u128 warp_sum_u128(u128 v) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
                v += shfl_xor_u128(v, o);
        return v;
}

static __device__ __forceinline__ u128 warp_incl_scan_u128(u128 v) {
        int lane = threadIdx.x & 31;
#pragma unroll
        for (int d = 1; d < 32; d <<= 1) {
                u128 o = shfl_up_u128(v, d);
                if (lane >= d)
                        v += o;
        }
        return v;
}

static __device__ u128 block_sum_u128(u128 v, struct sample_shared *sh) {
        int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        v = warp_sum_u128(v);
        __syncthreads();
        if (lane == 0)
                sh->red[warp] = v;
        __syncthreads();
        v = lane < SAMPLE_WARPS ? sh->red[lane] : 0;
        return warp_sum_u128(v);
}

static __device__ float block_max_f(float v, struct sample_shared *sh) {
        int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        v = warp_max(v);
        __syncthreads();
        if (lane == 0)
                sh->redf[warp] = v;
        __syncthreads();
        v = lane < SAMPLE_WARPS ? sh->redf[lane] : -INFINITY;
        return warp_max(v);
}

static __device__ int32_t block_max_i(int32_t v, struct sample_shared *sh) {
        int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
                v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
        __syncthreads();
        if (lane == 0)
                sh->redi[warp] = v;
        __syncthreads();
        v = lane < SAMPLE_WARPS ? sh->redi[lane] : INT32_MIN;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
                v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
        return v;
}

static __device__ __forceinline__ bool row_vectorizable(const float *l, uint32_t n) {
        return (n & 3) == 0 && ((uintptr_t) l & 15) == 0;
}

/* f(i, l[i]) for every i < n this thread owns. A block sweep covers 4 * SAMPLE_THREADS consecutive ids with
 * float4 loads; two sweeps are loaded before either is processed, so that each thread keeps two loads in
 * flight (a single block per row is bound by memory latency, not bandwidth). */
template <class F>
static __device__ __forceinline__ void for_each_logit(const float *l, uint32_t n, F f) {
        if (row_vectorizable(l, n)) {
                const float4 *l4 = (const float4 *) l;
                const uint32_t n4 = n / 4;
                uint32_t j = threadIdx.x;
                for (; j + SAMPLE_THREADS < n4; j += 2 * SAMPLE_THREADS) {
                        float4 a = l4[j], b = l4[j + SAMPLE_THREADS];
                        uint32_t i = 4 * j, k = 4 * (j + SAMPLE_THREADS);
                        f(i, a.x);
                        f(i + 1, a.y);
                        f(i + 2, a.z);
                        f(i + 3, a.w);
                        f(k, b.x);
                        f(k + 1, b.y);
                        f(k + 2, b.z);
                        f(k + 3, b.w);
                }
                if (j < n4) {
                        float4 a = l4[j];
                        uint32_t i = 4 * j;
                        f(i, a.x);
                        f(i + 1, a.y);
                        f(i + 2, a.z);
                        f(i + 3, a.w);
                }
        } else {
                for (uint32_t i = threadIdx.x; i < n; i += SAMPLE_THREADS)
                        f(i, l[i]);
        }
}

/* The four weights of ids i0 .. i0 + 3 (0 past n) */
template <class W>
static __device__ __forceinline__ void weights4(const float *l, uint32_t n, bool vec, uint32_t i0, W weight,
                                                u128 x[4]) {
        if (vec && i0 + 3 < n) {
                float4 a = *(const float4 *) (l + i0);
                x[0] = weight(i0, a.x);
                x[1] = weight(i0 + 1, a.y);
                x[2] = weight(i0 + 2, a.z);
                x[3] = weight(i0 + 3, a.w);
        } else {
                for (int q = 0; q < 4; q++)
                        x[q] = i0 + q < n ? weight(i0 + q, l[i0 + q]) : 0;
        }
}

/* Greedy: the lowest id of the largest logit, NaN never winning; 0 when nothing is above -inf. */
static __device__ int32_t block_argmax(const float *l, uint32_t n, struct sample_shared *sh) {
        float best = -INFINITY;
        int32_t best_i = (int32_t) n;
        for_each_logit(l, n, [&](uint32_t i, float v) {
                float x = clean_logit(v);
                if (argmax_better(x, (int32_t) i, best, best_i)) {
                        best = x;
                        best_i = (int32_t) i;
                }
        });
        warp_argmax(&best, &best_i);
        int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        __syncthreads();
        if (lane == 0) {
                sh->redf[warp] = best;
                sh->redi[warp] = best_i;
        }
        __syncthreads();
        best = sh->redf[lane];
        best_i = sh->redi[lane];
        warp_argmax(&best, &best_i);
        return best_i < (int32_t) n ? best_i : 0;
}

/* The smallest id i with sum_{s <= i} weight(s, l[s]) > target, or -1 when the whole row's sum is <= target.
 * Exact (integer) sums. The row is cut into PREFIX_CHUNKS chunks of 128 * g consecutive ids; each warp sums
 * its chunks with float4 loads, a block scan finds the chunk where the prefix crosses target, one warp
 * scans that chunk four ids per lane. */
template <class W>
static __device__ int32_t find_prefix(const float *l, uint32_t n, W weight, u128 target, struct sample_shared *sh) {
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        const uint32_t g = (n + 128 * PREFIX_CHUNKS - 1) / (128 * PREFIX_CHUNKS);
        const uint32_t chunk_len = 128 * g;
        const uint32_t n_chunks = (n + chunk_len - 1) / chunk_len;
        const bool vec = row_vectorizable(l, n);
        __syncthreads();                /* sh->u may still be read by a previous phase */
        for (uint32_t c = (uint32_t) warp; c < PREFIX_CHUNKS; c += SAMPLE_WARPS) {
                u128 acc = 0;
                for (uint32_t k = 0; c < n_chunks && k < g; k++) {
                        u128 x[4];
                        weights4(l, n, vec, c * chunk_len + k * 128 + (uint32_t) lane * 4, weight, x);
                        acc += x[0] + x[1] + x[2] + x[3];
                }
                acc = warp_sum_u128(acc);
                if (lane == 0)
                        sh->u.chunk[c] = acc;
        }
        if (threadIdx.x == 0)
                sh->found_chunk = -1;
        __syncthreads();
        /* two chunks per thread */
        u128 a = sh->u.chunk[2 * threadIdx.x], b = sh->u.chunk[2 * threadIdx.x + 1];
        u128 mine = a + b;
        u128 incl = warp_incl_scan_u128(mine);
        if (lane == 31)
                sh->red[warp] = incl;
        __syncthreads();
        if (warp == 0) {
                u128 t = warp_incl_scan_u128(sh->red[lane]);
                sh->red[lane] = t - sh->red[lane];
        }
        __syncthreads();
        incl += sh->red[warp];
        u128 excl = incl - mine;
        if (excl <= target && target < excl + a) {
                sh->found_chunk = (int32_t) (2 * threadIdx.x);
                sh->found_base = excl;
        } else if (excl + a <= target && target < incl) {
                sh->found_chunk = (int32_t) (2 * threadIdx.x + 1);
                sh->found_base = excl + a;
        }
        __syncthreads();
        const int32_t c = sh->found_chunk;
        if (c >= 0 && warp == 0) {
                u128 acc = sh->found_base;
                for (uint32_t k = 0; k < g; k++) {
                        uint32_t i0 = (uint32_t) c * chunk_len + k * 128 + (uint32_t) lane * 4;
                        u128 x[4];
                        weights4(l, n, vec, i0, weight, x);
                        u128 s4 = x[0] + x[1] + x[2] + x[3];
                        u128 s = warp_incl_scan_u128(s4);
                        unsigned hit = __ballot_sync(0xffffffffu, acc + s > target);
                        if (hit) {
                                if (lane == __ffs(hit) - 1) {
                                        u128 e = acc + s - s4;
                                        int q = 0;
                                        while (q < 3 && e + x[q] <= target)
                                                e += x[q++];
                                        sh->found_idx = (int32_t) (i0 + (uint32_t) q);
                                }
                                break;
                        }
                        acc += shfl_u128(s, 31);
                }
        }
        __syncthreads();
        return c >= 0 ? sh->found_idx : -1;
}

template <bool MASS>
static __device__ __forceinline__ void hist_add(struct sample_shared *sh, uint32_t d, unsigned long long x) {
        if (MASS) {
                if (x) {
                        unsigned long long old = atomicAdd(&sh->u.h.lo[d], x);
                        if (old + x < old)
                                atomicAdd(&sh->u.h.hi[d], 1ull);
                }
        } else {
                /* lanes adding to the same bin add once: the bulk of a row falls in a few bins */
                unsigned act = __activemask();
                unsigned peers = __match_any_sync(act, d);
                if ((threadIdx.x & 31) == __ffs(peers) - 1)
                        atomicAdd(&sh->u.h.cnt[d], (uint32_t) __popc(peers));
        }
}

static __device__ __forceinline__ void hist_clear(struct sample_shared *sh, uint32_t nb) {
        __syncthreads();
        for (uint32_t b = threadIdx.x; b < nb; b += SAMPLE_THREADS) {
                sh->u.h.cnt[b] = 0;
                sh->u.h.lo[b] = 0;
                sh->u.h.hi[b] = 0;
        }
        __syncthreads();
}

/* Warp 0 walks the nb bins from the highest down to the bin where the running total reaches need; every
 * thread returns with *digit and *rem (what is left of need within that bin, >= 1). */
template <bool MASS>
static __device__ void pick_bin(struct sample_shared *sh, uint32_t nb, u128 need, uint32_t *digit, u128 *rem) {
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        __syncthreads();
        if (warp == 0) {
                const uint32_t per = nb / 32;           /* lane L owns bins nb-1-L*per down to nb-(L+1)*per */
                u128 s = 0;
                for (uint32_t q = 0; q < per; q++) {
                        uint32_t b = nb - 1 - ((uint32_t) lane * per + q);
                        s += MASS ? (((u128) sh->u.h.hi[b] << 64) | sh->u.h.lo[b]) : (u128) sh->u.h.cnt[b];
                }
                u128 incl = warp_incl_scan_u128(s);
                u128 total = shfl_u128(incl, 31);
                u128 want = need <= total ? need : total;       /* callers keep need <= total */
                u128 excl = incl - s;
                unsigned hit = __ballot_sync(0xffffffffu, want > excl && want <= incl);
                int owner = hit ? __ffs(hit) - 1 : 31;
                if (lane == owner) {
                        u128 acc = excl;
                        uint32_t d = nb - 1 - ((uint32_t) lane * per + per - 1);
                        u128 r = want - excl;
                        for (uint32_t q = 0; q < per; q++) {
                                uint32_t b = nb - 1 - ((uint32_t) lane * per + q);
                                u128 v = MASS ? (((u128) sh->u.h.hi[b] << 64) | sh->u.h.lo[b]) : (u128) sh->u.h.cnt[b];
                                if (v != 0 && acc + v >= want) {
                                        d = b;
                                        r = want - acc;
                                        break;
                                }
                                acc += v;
                        }
                        sh->sel_digit = d;
                        sh->sel_rem = r;
                }
        }
        __syncthreads();
        *digit = sh->sel_digit;
        *rem = sh->sel_rem;
}

/* Append id to the list when `want`, one atomic per warp (the lanes that call together share a slot run). */
static __device__ __forceinline__ void list_push(bool want, uint32_t id, uint32_t *list, uint32_t *count) {
        const int lane = threadIdx.x & 31;
        unsigned act = __activemask();
        unsigned m = __ballot_sync(act, want);
        if (!m)
                return;
        int leader = __ffs(m) - 1;
        uint32_t base = 0;
        if (lane == leader)
                base = atomicAdd(count, (uint32_t) __popc(m));
        base = __shfl_sync(act, base, leader);
        if (want)
                list[base + (uint32_t) __popc(m & ((1u << lane) - 1))] = id;
}

/* Selection in the ranking order (key descending, id ascending among equal keys) over the elements for which
 * kw(i, l[i], &key) is true: the id of the element where the running total first reaches need (count mode:
 * the need-th element; MASS: the running sum of the weights wf(l[i]), integer; wf runs only where a weight
 * is added, it is the costly part). Level 0 (the top 11 key bits)
 * takes a histogram over the whole row, then the elements of the bin that holds the answer are compacted
 * into `list` (V entries of scratch) and the remaining 21 bits, and the rank among equal keys (a radix
 * selection on ~id), are resolved on that list only. Integer histograms: deterministic. */
/* The rest of a selection on a list of candidate ids (all of them satisfying kw): the key levels from `level`
 * on (0: bits 31-21, 1: bits 20-10, 2: bits 9-0) under the key prefix already fixed, then the rank among the
 * elements of equal key by id. Returns the id of the element where the running total reaches need. */
template <bool MASS, class KW, class WF, class TW>
static __device__ int32_t select_on_list(const float *l, const uint32_t *list, uint32_t len, KW kw, WF wf,
                                         TW tie_weight, u128 need, uint32_t prefix, uint32_t mask, int level,
                                         struct sample_shared *sh) {
        uint32_t digit;
        if (need == 0)
                need = 1;
        for (int lv = level; lv < 3; lv++) {
                const int shift = lv == 0 ? 21 : lv == 1 ? 10 : 0;
                const uint32_t nb = lv == 2 ? 1024u : 2048u;
                hist_clear(sh, nb);
                for (uint32_t t = threadIdx.x; t < len; t += SAMPLE_THREADS) {
                        uint32_t i = list[t], k;
                        float li = l[i];
                        if (kw(i, li, &k) && (k & mask) == prefix)
                                hist_add<MASS>(sh, (k >> shift) & (nb - 1), MASS ? wf(li) : 0ull);
                }
                pick_bin<MASS>(sh, nb, need, &digit, &need);
                prefix |= digit << shift;
                mask |= (nb - 1) << shift;
        }
        const uint32_t v = prefix;
        u128 j = need;
        if (MASS) {
                /* the tied elements all weigh the same: the shortest run of them (by id) that covers need */
                u128 wt = tie_weight(v);
                j = wt ? (need + wt - 1) / wt : 1;
                if (j == 0)
                        j = 1;
        }
        /* the j-th smallest id among the list's elements of key v: descending ~id is ascending id */
        uint32_t p2 = 0, m2 = 0;
        for (int lv = 0; lv < 3; lv++) {
                const int shift = lv == 0 ? 21 : lv == 1 ? 10 : 0;
                const uint32_t nb = lv == 2 ? 1024u : 2048u;
                hist_clear(sh, nb);
                for (uint32_t t = threadIdx.x; t < len; t += SAMPLE_THREADS) {
                        uint32_t i = list[t], k, ni = ~list[t];
                        if (kw(i, l[i], &k) && k == v && (ni & m2) == p2)
                                hist_add<false>(sh, (ni >> shift) & (nb - 1), 0);
                }
                pick_bin<false>(sh, nb, j, &digit, &j);
                p2 |= digit << shift;
                m2 |= (nb - 1) << shift;
        }
        __syncthreads();                /* the list may be rewritten by the next selection */
        return (int32_t) ~p2;
}

/* Selection over the whole row: level 0 by a histogram of the row, then the elements of the bin that holds
 * the answer compacted into `list` (V entries of scratch) and the rest resolved on that list. */
template <bool MASS, class KW, class WF, class TW>
static __device__ int32_t select_rank(const float *l, uint32_t n, KW kw, WF wf, TW tie_weight, u128 need,
                                      uint32_t *list, struct sample_shared *sh) {
        uint32_t digit, prefix, mask;
        if (need == 0)
                need = 1;
        hist_clear(sh, RADIX_BINS);
        for_each_logit(l, n, [&](uint32_t i, float li) {
                uint32_t k;
                if (kw(i, li, &k))
                        hist_add<MASS>(sh, k >> 21, MASS ? wf(li) : 0ull);
        });
        pick_bin<MASS>(sh, RADIX_BINS, need, &digit, &need);
        prefix = digit << 21;
        mask = 0xffe00000u;
        if (threadIdx.x == 0)
                sh->list_n = 0;
        __syncthreads();
        for_each_logit(l, n, [&](uint32_t i, float li) {
                uint32_t k;
                bool in = kw(i, li, &k) && (k & mask) == prefix;
                list_push(in, i, list, &sh->list_n);
        });
        __syncthreads();
        return select_on_list<MASS>(l, list, sh->list_n, kw, wf, tie_weight, need, prefix, mask, 1, sh);
}

/* A lower bound on the k-th largest logit (k <= SAMPLE_THREADS) from the per-thread maxima in sh->tmax: at
 * least k threads hold an element >= the k-th largest maximum, so at least k elements are >= it. Its top 21
 * key bits (two histogram levels over 1024 values) give a float <= it. */
static __device__ float topk_lower_bound(uint32_t k, struct sample_shared *sh) {
        uint32_t digit, prefix = 0, mask = 0;
        u128 need = k;
        for (int lv = 0; lv < 2; lv++) {
                const int shift = lv == 0 ? 21 : 10;
                hist_clear(sh, RADIX_BINS);
                uint32_t key = order_key(sh->tmax[threadIdx.x]);
                if ((key & mask) == prefix)
                        hist_add<false>(sh, (key >> shift) & (RADIX_BINS - 1), 0);
                pick_bin<false>(sh, RADIX_BINS, need, &digit, &need);
                prefix |= digit << shift;
                mask |= (RADIX_BINS - 1u) << shift;
        }
        float t = key_to_float(prefix);
        return isnan(t) ? -INFINITY : t;        /* the prefix of -inf's key is no float */
}

static __device__ __forceinline__ uint64_t splitmix_bits(uint64_t seed, uint64_t index) {
        uint64_t z = seed + (index + 1) * 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
}

/* The top-N list of fill_top(): tokens ordered by (logprob desc, id asc), logprob = (float) (clean(l) - lse).
 * The N-th by select_rank on the logprob key, then the at most 20 entries gathered and sorted by one thread. */
static __device__ void top_logprobs(const float *l, uint32_t n, double lse, uint32_t n_top, uint32_t *list,
                                    struct sample_shared *sh, struct kern_sample_result *res) {
        if (n_top > n)
                n_top = n;
        if (threadIdx.x == 0)
                res->n_top = n_top;
        if (n_top == 0)
                return;
        auto lp_of = [=](float li) { return __double2float_rn((double) clean_logit(li) - lse); };
        auto kw = [=](uint32_t, float li, uint32_t *k) {
                *k = order_key(lp_of(li));
                return true;
        };
        auto no_weight = [](float) { return 0ull; };
        auto none = [](uint32_t) { return (u128) 0; };
        int32_t last = select_rank<false>(l, n, kw, no_weight, none, (u128) n_top, list, sh);
        const uint32_t v = order_key(lp_of(l[last]));
        if (threadIdx.x == 0)
                sh->top_n = 0;
        __syncthreads();
        for_each_logit(l, n, [&](uint32_t i, float li) {
                uint32_t k = order_key(lp_of(li));
                if (k > v || (k == v && (int32_t) i <= last)) {
                        uint32_t slot = atomicAdd(&sh->top_n, 1u);
                        if (slot < KERN_SAMPLE_MAX_TOP) {
                                sh->top_id[slot] = (int32_t) i;
                                sh->top_lp[slot] = lp_of(li);
                        }
                }
        });
        __syncthreads();
        if (threadIdx.x == 0) {
                uint32_t m = sh->top_n < n_top ? sh->top_n : n_top;
                for (uint32_t a = 0; a < m; a++) {
                        uint32_t best = a;
                        for (uint32_t b = a + 1; b < m; b++)
                                if (sh->top_lp[b] > sh->top_lp[best] ||
                                    (sh->top_lp[b] == sh->top_lp[best] && sh->top_id[b] < sh->top_id[best]))
                                        best = b;
                        int32_t ti = sh->top_id[a];
                        float tl = sh->top_lp[a];
                        sh->top_id[a] = sh->top_id[best];
                        sh->top_lp[a] = sh->top_lp[best];
                        sh->top_id[best] = ti;
                        sh->top_lp[best] = tl;
                        res->top[a].token = sh->top_id[a];
                        res->top[a].logprob = sh->top_lp[a];
                }
                res->n_top = m;
        }
        __syncthreads();
}

/* m and lse over clean(l) as the host's log_sum_exp: lse = m + log(sum exp(l - m)); 0 when m is -inf */
static __device__ double row_lse(const float *l, uint32_t n, float m, struct sample_shared *sh) {
        if (m == -INFINITY)
                return 0.0;
        u128 s = 0;
        for_each_logit(l, n, [&](uint32_t, float li) { s += weight_fx(expf(__fsub_rn(clean_logit(li), m))); });
        s = block_sum_u128(s, sh);
        return (double) m + log(fx_to_double(s));
}

/* Penalties (steps 1-2) in place, from the row's token history. `mark` is V words of scratch: only the
 * entries of history tokens are touched, and each is reset before use, so nothing needs clearing. The one
 * thread whose atomic sees a token first applies that token's penalty, once, with the host's float ops. */
static __device__ void apply_penalties_dev(float *l, uint32_t n, const struct kern_sample_params *p,
                                           const int32_t *hist, uint32_t *mark) {
        const uint32_t n_all = p->n_prompt + p->n_generated;
        const int32_t *gen = hist + p->n_prompt;
        if (p->repetition_penalty != 1.0f) {
                for (uint32_t i = threadIdx.x; i < n_all; i += SAMPLE_THREADS)
                        if (hist[i] >= 0 && (uint32_t) hist[i] < n)
                                mark[hist[i]] = 0;
                __syncthreads();
                for (uint32_t i = threadIdx.x; i < n_all; i += SAMPLE_THREADS) {
                        int32_t t = hist[i];
                        if (t < 0 || (uint32_t) t >= n || atomicExch(&mark[t], 1u) != 0)
                                continue;
                        float v = l[t];
                        l[t] = v > 0 ? __fdiv_rn(v, p->repetition_penalty) : __fmul_rn(v, p->repetition_penalty);
                }
                __syncthreads();
        }
        if (p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f) {
                for (uint32_t i = threadIdx.x; i < p->n_generated; i += SAMPLE_THREADS)
                        if (gen[i] >= 0 && (uint32_t) gen[i] < n)
                                mark[gen[i]] = 0;
                __syncthreads();
                for (uint32_t i = threadIdx.x; i < p->n_generated; i += SAMPLE_THREADS)
                        if (gen[i] >= 0 && (uint32_t) gen[i] < n)
                                atomicAdd(&mark[gen[i]], 1u);
                __syncthreads();
                for (uint32_t i = threadIdx.x; i < p->n_generated; i += SAMPLE_THREADS) {
                        int32_t t = gen[i];
                        if (t < 0 || (uint32_t) t >= n)
                                continue;
                        uint32_t c = atomicExch(&mark[t], 0u);
                        if (c == 0)
                                continue;
                        float pen = __fadd_rn(p->presence_penalty, __fmul_rn(p->frequency_penalty, (float) c));
                        l[t] = __fsub_rn(l[t], pen);
                }
                __syncthreads();
        }
}

/* l = clean(l) * inv_t in place; returns the block's max */
static __device__ float temper(float *l, uint32_t n, float inv_t, struct sample_shared *sh) {
        float m = -INFINITY;
        if (row_vectorizable(l, n)) {
                float4 *l4 = (float4 *) l;
                for (uint32_t j = threadIdx.x; j < n / 4; j += SAMPLE_THREADS) {
                        float4 a = l4[j];
                        a.x = __fmul_rn(clean_logit(a.x), inv_t);
                        a.y = __fmul_rn(clean_logit(a.y), inv_t);
                        a.z = __fmul_rn(clean_logit(a.z), inv_t);
                        a.w = __fmul_rn(clean_logit(a.w), inv_t);
                        l4[j] = a;
                        m = fmaxf(m, fmaxf(fmaxf(a.x, a.y), fmaxf(a.z, a.w)));
                }
        } else {
                for (uint32_t i = threadIdx.x; i < n; i += SAMPLE_THREADS) {
                        float v = __fmul_rn(clean_logit(l[i]), inv_t);
                        l[i] = v;
                        m = fmaxf(m, v);
                }
        }
        sh->tmax[threadIdx.x] = m;
        return block_max_f(m, sh);      /* its barriers also publish the stores */
}

/* Test hook (kern_sample_set_profile): block 0 stamps the %globaltimer at its phase boundaries. */
static __device__ unsigned long long *sample_prof;

static __device__ __forceinline__ void prof_stamp(int phase) {
        if (sample_prof && blockIdx.x == 0 && threadIdx.x == 0) {
                unsigned long long t;
                asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
                sample_prof[phase] = t;
        }
}

static __global__ void __launch_bounds__(SAMPLE_THREADS)
sample_rows_kernel(float *logits, size_t ld, uint32_t n, const struct kern_sample_params *params,
                   const int32_t *hist, float *work, struct kern_sample_result *out) {
        __shared__ struct sample_shared sh;
        const uint32_t row = blockIdx.x;
        const struct kern_sample_params p = params[row];
        float *l = logits + (size_t) row * ld;
        uint32_t *scratch = (uint32_t *) (work + (size_t) row * n);
        struct kern_sample_result *res = out + row;
        const uint32_t n_top = p.n_logprobs < KERN_SAMPLE_MAX_TOP ? p.n_logprobs : KERN_SAMPLE_MAX_TOP;

        prof_stamp(0);
        if (hist && p.n_prompt + p.n_generated > 0 &&
            (p.repetition_penalty != 1.0f || p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f))
                apply_penalties_dev(l, n, &p, hist + p.hist_off, scratch);

        if (p.temperature == 0.0f) {
                int32_t best = block_argmax(l, n, &sh);
                float lp = 0.0f;
                if (p.want_logprob || n_top > 0) {
                        float m = -INFINITY;
                        for_each_logit(l, n, [&](uint32_t, float li) { m = fmaxf(m, clean_logit(li)); });
                        m = block_max_f(m, &sh);
                        double lse = row_lse(l, n, m, &sh);
                        lp = __double2float_rn((double) clean_logit(l[best]) - lse);
                        top_logprobs(l, n, lse, n_top, scratch, &sh, res);
                } else if (threadIdx.x == 0) {
                        res->n_top = 0;
                }
                if (threadIdx.x == 0) {
                        res->token = best;
                        res->logprob = lp;
                }
                return;
        }

        prof_stamp(1);
        const float m = temper(l, n, __fdiv_rn(1.0f, p.temperature), &sh);
        if (m == -INFINITY) {
                /* every logit -inf: nothing to rank, the lowest id */
                top_logprobs(l, n, 0.0, n_top, scratch, &sh, res);
                if (threadIdx.x == 0) {
                        res->token = 0;
                        res->logprob = -INFINITY;
                }
                return;
        }
        prof_stamp(2);
        /* w = expf(l - m) is recomputed where needed rather than stored: the same float ops give the same
         * value every time, and every pass then reads 4 bytes a token instead of 8 */
        auto wfx = [=](float li) { return weight_fx(expf(__fsub_rn(li, m))); };
        const bool use_k = p.top_k > 0 && (uint32_t) p.top_k < n;
        const bool use_p = p.top_p < 1.0f;
        /* The pass that sums the total mass also collects every possible candidate into a list, and top_k,
         * top_p and z then run on that list instead of the row:
         *  - top_k <= 1024: the candidates are >= a lower bound taken from the per-thread maxima (a few times
         *    k elements for a peaked row);
         *  - top_p alone: tokens with w < (1 - p) / V hold less than (1 - p) <= (1 - p) * total together and
         *    rank after all heavier ones, so the nucleus lies among the others (the host's argument, with
         *    total >= 1 standing in for the total not known yet; 0.999 keeps rounding on the safe side). */
        const bool k_list = use_k && (uint32_t) p.top_k <= SAMPLE_THREADS;
        const bool p_list = use_p && !use_k;
        const float tau = k_list ? topk_lower_bound((uint32_t) p.top_k, &sh) : INFINITY;
        const float tau_w = p_list ? (float) ((1.0 - (double) p.top_p) / n * 0.999) : INFINITY;
        if (k_list || p_list) {
                if (threadIdx.x == 0)
                        sh.list_n = 0;
                __syncthreads();
        }
        u128 total = 0;
        for_each_logit(l, n, [&](uint32_t i, float li) {
                float w = expf(__fsub_rn(li, m));
                total += weight_fx(w);
                if (k_list)
                        list_push(li >= tau, i, scratch, &sh.list_n);
                else if (p_list)
                        list_push(w >= tau_w, i, scratch, &sh.list_n);
        });
        total = block_sum_u128(total, &sh);     /* its barriers also publish the list */
        const uint32_t klen = k_list || p_list ? sh.list_n : 0;
        const double lse = (double) m + log(fx_to_double(total));
        prof_stamp(3);

        /* the candidate set: ranks at or before thr (ranking (l desc, id asc)), and w >= min_p */
        bool have_thr = false;
        int32_t thr = 0;
        float l_thr = 0.0f;
        auto tie_w = [=](uint32_t key) { return (u128) wfx(key_to_float(key)); };
        if (use_k) {
                auto kw = [=](uint32_t, float li, uint32_t *k) {
                        *k = order_key(li);
                        return true;
                };
                if (k_list)
                        thr = select_on_list<false>(l, scratch, klen, kw, wfx, tie_w, (u128) (uint32_t) p.top_k, 0, 0, 0,
                                                    &sh);
                else
                        thr = select_rank<false>(l, n, kw, wfx, tie_w, (u128) (uint32_t) p.top_k, scratch, &sh);
                if (thr < 0 || (uint32_t) thr >= n)     /* cannot happen: k < n elements exist */
                        thr = 0;
                l_thr = l[thr];
                have_thr = true;
        }
        prof_stamp(4);
        auto in_k = [=](uint32_t i, float li) {
                return !have_thr || li > l_thr || (li == l_thr && (int32_t) i <= thr);
        };
        if (use_p) {
                u128 mass = total;
                if (use_k) {
                        mass = 0;
                        if (k_list) {
                                for (uint32_t t = threadIdx.x; t < klen; t += SAMPLE_THREADS) {
                                        uint32_t i = scratch[t];
                                        if (in_k(i, l[i]))
                                                mass += wfx(l[i]);
                                }
                        } else {
                                for_each_logit(l, n, [&](uint32_t i, float li) {
                                        if (in_k(i, li))
                                                mass += wfx(li);
                                });
                        }
                        mass = block_sum_u128(mass, &sh);
                }
                u128 need = double_to_fx((double) p.top_p * fx_to_double(mass));
                if (need > mass)
                        need = mass;
                auto kw = [=](uint32_t i, float li, uint32_t *k) {
                        *k = order_key(li);
                        return in_k(i, li);
                };
                int32_t t = k_list || p_list
                                    ? select_on_list<true>(l, scratch, klen, kw, wfx, tie_w, need, 0, 0, 0, &sh)
                                    : select_rank<true>(l, n, kw, wfx, tie_w, need, scratch, &sh);
                thr = t >= 0 && (uint32_t) t < n ? t : 0;
                l_thr = l[thr];
                have_thr = true;
        }
        prof_stamp(5);
        const float min_w = p.min_p > 0.0f ? p.min_p : 0.0f;
        /* w >= 0 always holds, so min_p 0 needs no expf */
        auto in_c = [=](uint32_t i, float li) {
                return (!have_thr || li > l_thr || (li == l_thr && (int32_t) i <= thr)) &&
                       (min_w == 0.0f || expf(__fsub_rn(li, m)) >= min_w);
        };

        u128 z = 0;
        int32_t last = -1;
        auto add_z = [&](uint32_t i, float li) {
                if (in_c(i, li)) {
                        float w = expf(__fsub_rn(li, m));
                        z += weight_fx(w);
                        if (w > 0.0f && (int32_t) i > last)
                                last = (int32_t) i;
                }
        };
        if (k_list || p_list)   /* the candidates are a subset of the list */
                for (uint32_t t = threadIdx.x; t < klen; t += SAMPLE_THREADS)
                        add_z(scratch[t], l[scratch[t]]);
        else
                for_each_logit(l, n, add_z);
        z = block_sum_u128(z, &sh);
        last = block_max_i(last, &sh);
        prof_stamp(6);
        const double u = (double) (splitmix_bits(p.seed, p.index) >> 11) * 0x1p-53;
        const u128 target = double_to_fx(u * fx_to_double(z));
        int32_t chosen = find_prefix(
                l, n, [=](uint32_t i, float li) { return (u128) (in_c(i, li) ? wfx(li) : 0ull); }, target, &sh);
        if (chosen < 0)
                chosen = last >= 0 ? last : 0;
        prof_stamp(7);
        top_logprobs(l, n, lse, n_top, scratch, &sh, res);
        if (threadIdx.x == 0) {
                res->token = chosen;
                res->logprob = __double2float_rn((double) l[chosen] - lse);
        }
        prof_stamp(8);
}

extern "C" int kern_sample_set_profile(unsigned long long *stamps) {
        return cudaMemcpyToSymbol(sample_prof, &stamps, sizeof(stamps)) == cudaSuccess ? 0 : -EIO;
}

extern "C" int kern_sample_rows(float *logits, size_t ld, uint32_t n_rows, uint32_t n,
                                const struct kern_sample_params *params, const int32_t *hist, float *work,
                                struct kern_sample_result *out, cudaStream_t stream) {
        if (n_rows == 0)
                return 0;
        if (n == 0 || n > INT32_MAX || ld < n || !logits || !params || !work || !out)
                return -EINVAL;
        sample_rows_kernel<<<n_rows, SAMPLE_THREADS, 0, stream>>>(logits, ld, n, params, hist, work, out);
        return KERN_CHECK_LAUNCH();
}
