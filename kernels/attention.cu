/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Attention over the paged KV pool.
 *
 * qkv_post: per-head RMSNorm (q_norm / k_norm / weight-less v_norm), half-split RoPE on q and k, K/V of this
 * step into a contiguous scratch in the KV dtype.
 * attention: one block per (token, query head, key split); each lane owns head_dim/32 coordinates of q and of
 * the running output, each warp walks its share of the keys with an online softmax; split partials are
 * merged by a second kernel when a split was needed. Keys of this step come from the scratch, older keys
 * from the pages, so prefill chunks of any length are correct on the sliding ring.
 * kv_commit: scratch -> pages after attention.
 */
#include "attention.cuh"

#define ATT_WARPS 4

/* tests: force the split (decode) kernel for every batch, to check both paths on the same inputs */
extern "C" {
bool kern_attention_force_split = false;
int kern_attention_force_path = KERN_ATT_PATH_AUTO, kern_attention_last_path = KERN_ATT_PATH_AUTO;
}


template <bool FP8>
static __device__ __forceinline__ void store_kv(void *base, size_t idx, float v) {
        if (FP8)
                ((uint8_t *) base)[idx] = f32_to_e4m3(v);
        else
                ((uint16_t *) base)[idx] = f32_to_bf16_bits(v);
}

template <bool FP8>
static __global__ void qkv_post_kernel(const uint16_t *qkv, const int32_t *tok_pos, uint32_t n_heads,
                                       uint32_t n_kv, uint32_t d, bool k_eq_v, float theta, uint32_t rope_pairs,
                                       float eps, const uint16_t *q_norm, const uint16_t *k_norm, uint16_t *q,
                                       void *k_new, void *v_new) {
        __shared__ float red[32];
        const uint32_t t = blockIdx.x, hh = blockIdx.y, half = d / 2, j = threadIdx.x;
        const uint32_t row_len = (n_heads + n_kv * (k_eq_v ? 1 : 2)) * d;
        const uint16_t *row = qkv + (size_t) t * row_len;
        const uint16_t *src, *w;
        bool rope;
        int kind;       /* 0 q, 1 k, 2 v */
        uint32_t head;

        if (hh < n_heads) {
                kind = 0;
                head = hh;
                src = row + (size_t) head * d;
                w = q_norm;
        } else if (hh < n_heads + n_kv) {
                kind = 1;
                head = hh - n_heads;
                src = row + (size_t) (n_heads + head) * d;
                w = k_norm;
        } else {
                kind = 2;
                head = hh - n_heads - n_kv;
                src = row + (size_t) (n_heads + (k_eq_v ? 0 : n_kv) + head) * d;
                w = NULL;
        }
        rope = kind != 2;
        float x0 = 0.0f, x1 = 0.0f;
        if (j < half) {
                x0 = bf16_bits_to_f32(src[j]);
                x1 = bf16_bits_to_f32(src[j + half]);
        }
        float ss = block_sum(x0 * x0 + x1 * x1, red);
        if (j >= half)
                return;
        float inv = rsqrtf(ss / (float) d + eps);
        float y0 = x0 * inv, y1 = x1 * inv;
        if (w) {
                y0 *= bf16_bits_to_f32(w[j]);
                y1 *= bf16_bits_to_f32(w[j + half]);
        }
        y0 = round_bf16(y0);
        y1 = round_bf16(y1);
        if (rope && j < rope_pairs) {
                /* HF: inv_freq in FP32, angle = inv_freq * pos in FP32, cos/sin rounded to BF16 */
                float inv_freq = 1.0f / powf(theta, (float) (2 * j) / (float) d);
                float ang = inv_freq * (float) tok_pos[t];
                float c = round_bf16(cosf(ang)), s = round_bf16(sinf(ang));
                float r0 = round_bf16(round_bf16(y0 * c) - round_bf16(y1 * s));
                float r1 = round_bf16(round_bf16(y1 * c) + round_bf16(y0 * s));
                y0 = r0;
                y1 = r1;
        }
        if (kind == 0) {
                uint16_t *dst = q + ((size_t) t * n_heads + head) * d;
                dst[j] = f32_to_bf16_bits(y0);
                dst[j + half] = f32_to_bf16_bits(y1);
        } else {
                void *base = kind == 1 ? k_new : v_new;
                size_t off = ((size_t) t * n_kv + head) * d;
                store_kv<FP8>(base, off + j, y0);
                store_kv<FP8>(base, off + j + half, y1);
        }
}

static int check_layer(const struct kern_attn_layer *L) {
        if (L->head_dim % 2 != 0 || L->head_dim > 512 || L->head_dim == 0 || L->n_kv_heads == 0 ||
            L->n_heads % L->n_kv_heads != 0 || L->page_size == 0)
                return -EINVAL;
        return 0;
}

extern "C" int kern_qkv_post(const uint16_t *qkv, const struct kern_batch *bt, const struct kern_attn_layer *L,
                             uint16_t *q, void *k_new, void *v_new, cudaStream_t stream) {
        if (check_layer(L) < 0)
                return -EINVAL;
        if (bt->n_tokens == 0)
                return 0;
        dim3 grid(bt->n_tokens, L->n_heads + 2 * L->n_kv_heads);
        uint32_t threads = L->head_dim / 2 < 32 ? 32 : L->head_dim / 2;
        if (L->kv_fp8)
                qkv_post_kernel<true><<<grid, threads, 0, stream>>>(
                        qkv, bt->tok_pos, L->n_heads, L->n_kv_heads, L->head_dim, L->k_eq_v, L->rope_theta,
                        L->rope_pairs, L->eps, L->q_norm, L->k_norm, q, k_new, v_new);
        else
                qkv_post_kernel<false><<<grid, threads, 0, stream>>>(
                        qkv, bt->tok_pos, L->n_heads, L->n_kv_heads, L->head_dim, L->k_eq_v, L->rope_theta,
                        L->rope_pairs, L->eps, L->q_norm, L->k_norm, q, k_new, v_new);
        return KERN_CHECK_LAUNCH();
}

/* Load DPL consecutive KV elements as floats. VEC: head_dim % 32 == 0, so every lane's slice is whole and
 * aligned; otherwise `valid` elements are loaded one by one and the rest read as zero. */
template <int DPL, bool FP8, bool VEC>
static __device__ __forceinline__ void load_kv(const uint8_t *base, size_t elem, float *out, int valid) {
        if (!VEC) {
#pragma unroll
                for (int i = 0; i < DPL; i++)
                        out[i] = i >= valid ? 0.0f
                                 : FP8     ? e4m3_to_f32(base[elem + i])
                                           : bf16_bits_to_f32(reinterpret_cast<const uint16_t *>(base)[elem + i]);
                return;
        }
        if (FP8) {
                const uint8_t *p = base + elem;
                uint8_t b[DPL];
                if (DPL == 16) {
                        *reinterpret_cast<uint4 *>(b) = *reinterpret_cast<const uint4 *>(p);
                } else if (DPL == 8) {
                        *reinterpret_cast<uint2 *>(b) = *reinterpret_cast<const uint2 *>(p);
                } else if (DPL == 4) {
                        *reinterpret_cast<uint32_t *>(b) = *reinterpret_cast<const uint32_t *>(p);
                } else {
#pragma unroll
                        for (int i = 0; i < DPL; i++)
                                b[i] = p[i];
                }
#pragma unroll
                for (int i = 0; i < DPL; i++)
                        out[i] = e4m3_to_f32(b[i]);
        } else {
                const uint16_t *p = reinterpret_cast<const uint16_t *>(base) + elem;
                uint16_t b[DPL];
                if (DPL % 8 == 0) {
#pragma unroll
                        for (int i = 0; i < DPL; i += 8)
                                *reinterpret_cast<uint4 *>(b + i) = *reinterpret_cast<const uint4 *>(p + i);
                } else if (DPL == 4) {
                        *reinterpret_cast<uint2 *>(b) = *reinterpret_cast<const uint2 *>(p);
                } else {
#pragma unroll
                        for (int i = 0; i < DPL; i++)
                                b[i] = p[i];
                }
#pragma unroll
                for (int i = 0; i < DPL; i++)
                        out[i] = bf16_bits_to_f32(b[i]);
        }
}

template <int DPL, bool FP8, bool VEC>
static __global__ void __launch_bounds__(ATT_WARPS * 32)
        attention_kernel(const uint16_t *q, struct att_ctx c, float *partial, uint16_t *out) {
        __shared__ float wm[ATT_WARPS], wl[ATT_WARPS];
        __shared__ float wacc[ATT_WARPS][DPL * 32];
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        const uint32_t t = blockIdx.x / c.n_heads, h = blockIdx.x % c.n_heads, split = blockIdx.y;
        const uint32_t kvh = h / (c.n_heads / c.n_kv);
        const int32_t seq = c.bt.tok_seq[t], qpos = c.bt.tok_pos[t];
        const int32_t pos0 = c.bt.seq_pos0[seq], row0 = c.bt.seq_row0[seq];
        const int32_t *table = c.bt.tables + c.bt.seq_table0[seq];
        const int32_t lo = c.window ? max(0, qpos - (int32_t) c.window + 1) : 0;
        /* this query's keys split evenly over the grid's splits (so the launch shape never depends on the
         * step's context lengths: decode graphs replay it as captured) */
        const int32_t chunk = (qpos - lo + (int32_t) gridDim.y) / (int32_t) gridDim.y;
        const int32_t kb = lo + (int32_t) split * chunk, ke = min(qpos + 1, kb + chunk);

        const int valid = VEC ? DPL : max(0, min(DPL, (int) c.d - lane * DPL));
        float qv[DPL], acc[DPL];
        {
                const uint16_t *qp = q + ((size_t) t * c.n_heads + h) * c.d + lane * DPL;
#pragma unroll
                for (int i = 0; i < DPL; i++) {
                        qv[i] = i < valid ? bf16_bits_to_f32(qp[i]) : 0.0f;
                        acc[i] = 0.0f;
                }
        }
        float m = -INFINITY, l = 0.0f;
        for (int32_t j = kb + warp; j < ke; j += ATT_WARPS) {
                bool fresh;
                size_t off = key_row(c, table, j, pos0, row0, kvh, &fresh) + lane * DPL;
                float kv[DPL];
                load_kv<DPL, FP8, VEC>(fresh ? c.k_new : c.k_pages, off, kv, valid);
                float s = 0.0f;
#pragma unroll
                for (int i = 0; i < DPL; i++)
                        s += qv[i] * kv[i];
                s = warp_sum(s);
                load_kv<DPL, FP8, VEC>(fresh ? c.v_new : c.v_pages, off, kv, valid);
                float mn = fmaxf(m, s);
                float corr = __expf(m - mn), p = __expf(s - mn);
                l = l * corr + p;
#pragma unroll
                for (int i = 0; i < DPL; i++)
                        acc[i] = acc[i] * corr + p * kv[i];
                m = mn;
        }
        if (lane == 0) {
                wm[warp] = m;
                wl[warp] = l;
        }
#pragma unroll
        for (int i = 0; i < DPL; i++)
                wacc[warp][lane * DPL + i] = acc[i];
        __syncthreads();
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < ATT_WARPS; w++)
                M = fmaxf(M, wm[w]);
        float L = 0.0f, f[ATT_WARPS];
#pragma unroll
        for (int w = 0; w < ATT_WARPS; w++) {
                f[w] = M == -INFINITY ? 0.0f : __expf(wm[w] - M);
                L += f[w] * wl[w];
        }
        if (gridDim.y == 1) {
                uint16_t *o = out + ((size_t) t * c.n_heads + h) * c.d;
                for (uint32_t i = threadIdx.x; i < c.d; i += blockDim.x) {
                        float v = 0.0f;
#pragma unroll
                        for (int w = 0; w < ATT_WARPS; w++)
                                v += f[w] * wacc[w][i];
                        o[i] = f32_to_bf16_bits(L > 0.0f ? v / L : 0.0f);
                }
                return;
        }
        float *pp = partial + ((size_t) blockIdx.x * gridDim.y + split) * (c.d + 2);
        if (threadIdx.x == 0) {
                pp[0] = M;
                pp[1] = L;
        }
        for (uint32_t i = threadIdx.x; i < c.d; i += blockDim.x) {
                float v = 0.0f;
#pragma unroll
                for (int w = 0; w < ATT_WARPS; w++)
                        v += f[w] * wacc[w][i];
                pp[2 + i] = v;
        }
}

/* One block per row: the splits' weights exp(m_s - M) go to shared memory once, so that each output element
 * reads only the splits that found keys (with a loose context bound most splits of a decode graph are
 * empty). Sums run over s in order: the result does not depend on the block size. */
static __global__ void attention_merge_kernel(const float *partial, uint32_t n_split, uint32_t d, uint16_t *out) {
        extern __shared__ float merge_w[];      /* [n_split] weights, then [n_split] weighted row sums */
        __shared__ float red[32];
        const float *pp = partial + (size_t) blockIdx.x * n_split * (d + 2);
        float M = -INFINITY;
        for (uint32_t s = threadIdx.x; s < n_split; s += blockDim.x)
                M = fmaxf(M, pp[s * (d + 2)]);
        M = block_max(M, red);
        for (uint32_t s = threadIdx.x; s < n_split; s += blockDim.x) {
                float ms = pp[s * (d + 2)], w = ms == -INFINITY ? 0.0f : __expf(ms - M);
                merge_w[s] = w;
                merge_w[n_split + s] = w == 0.0f ? 0.0f : w * pp[s * (d + 2) + 1];
        }
        __syncthreads();
        float L = 0.0f;
        for (uint32_t s = 0; s < n_split; s++)
                L += merge_w[n_split + s];
        for (uint32_t i = threadIdx.x; i < d; i += blockDim.x) {
                float v = 0.0f;
                for (uint32_t s = 0; s < n_split; s++)
                        if (merge_w[s] != 0.0f)
                                v += merge_w[s] * pp[s * (d + 2) + 2 + i];
                out[(size_t) blockIdx.x * d + i] = f32_to_bf16_bits(L > 0.0f ? v / L : 0.0f);
        }
}

extern "C" size_t kern_attention_partial_floats(uint32_t max_tokens, uint32_t n_heads, uint32_t head_dim) {
        size_t entries = (size_t) max_tokens * n_heads * 4;
        if (entries < 65536)
                entries = 65536;
        return entries * (head_dim + 2);
}

template <int DPL>
static void launch_att(bool fp8, dim3 grid, const uint16_t *q, const struct att_ctx &c, float *partial,
                       uint16_t *out, cudaStream_t stream) {
        bool vec = c.d % 32 == 0;
        if (fp8 && vec)
                attention_kernel<DPL, true, true><<<grid, ATT_WARPS * 32, 0, stream>>>(q, c, partial, out);
        else if (fp8)
                attention_kernel<DPL, true, false><<<grid, ATT_WARPS * 32, 0, stream>>>(q, c, partial, out);
        else if (vec)
                attention_kernel<DPL, false, true><<<grid, ATT_WARPS * 32, 0, stream>>>(q, c, partial, out);
        else
                attention_kernel<DPL, false, false><<<grid, ATT_WARPS * 32, 0, stream>>>(q, c, partial, out);
}

static struct att_ctx make_ctx(const struct kern_batch *bt, const struct kern_attn_layer *L, const void *k_new,
                               const void *v_new) {
        struct att_ctx c;
        c.bt = *bt;
        c.n_heads = L->n_heads;
        c.n_kv = L->n_kv_heads;
        c.d = L->head_dim;
        c.page_size = L->page_size;
        c.ring = L->ring;
        c.window = L->window;
        c.k_pages = (const uint8_t *) L->k_pages;
        c.v_pages = (const uint8_t *) L->v_pages;
        c.k_new = (const uint8_t *) k_new;
        c.v_new = (const uint8_t *) v_new;
        return c;
}

/*
 * Prefill: one block per (group of QT consecutive tokens, kv head) with one warp per (token, query head) pair
 * of the GQA group (16 pairs). Tiles of TILE_KEYS keys are staged in shared memory once and read by all 16
 * warps, so K/V come from L2 once per 16 pairs instead of once per pair. Tokens of one block that belong to
 * different sequences are handled one sequence at a time.
 */
#define TILE_KEYS 16
#define TILE_PAIRS 16

template <int DPL, bool FP8, bool VEC>
static __global__ void __launch_bounds__(TILE_PAIRS * 32)
        attention_tile_kernel(const uint16_t *q, struct att_ctx c, uint32_t qt, uint16_t *out) {
        extern __shared__ __align__(16) uint8_t tile_sm[];
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        const uint32_t g = c.n_heads / c.n_kv, kvh = blockIdx.y;
        const uint32_t elt = FP8 ? 1 : 2, row_bytes = c.d * elt;
        uint8_t *ks = tile_sm, *vs = tile_sm + (size_t) TILE_KEYS * row_bytes;
        const uint32_t t_begin = blockIdx.x * qt, t_end = min(t_begin + qt, c.bt.n_tokens);
        const int valid = VEC ? DPL : max(0, min(DPL, (int) c.d - lane * DPL));

        for (uint32_t t0 = t_begin; t0 < t_end;) {
                const int32_t seq = c.bt.tok_seq[t0];
                uint32_t t1 = t0 + 1;
                while (t1 < t_end && c.bt.tok_seq[t1] == seq)
                        t1++;
                const int32_t pos0 = c.bt.seq_pos0[seq], row0 = c.bt.seq_row0[seq];
                const int32_t *table = c.bt.tables + c.bt.seq_table0[seq];
                /* this warp's pair */
                const uint32_t tq = t0 + warp / g, h = kvh * g + warp % g;
                const bool active = (uint32_t) warp < qt * g && tq < t1;
                const int32_t qpos = active ? c.bt.tok_pos[tq] : 0;
                const int32_t qlo = c.window ? max(0, qpos - (int32_t) c.window + 1) : 0;
                const int32_t first_pos = c.bt.tok_pos[t0], last_pos = c.bt.tok_pos[t1 - 1];
                const int32_t klo = c.window ? max(0, first_pos - (int32_t) c.window + 1) : 0;

                float qv[DPL], acc[DPL];
#pragma unroll
                for (int i = 0; i < DPL; i++) {
                        qv[i] = active && i < valid ? bf16_bits_to_f32(q[((size_t) tq * c.n_heads + h) * c.d +
                                                                          lane * DPL + i])
                                                    : 0.0f;
                        acc[i] = 0.0f;
                }
                float m = -INFINITY, l = 0.0f;
                for (int32_t kt = klo; kt <= last_pos; kt += TILE_KEYS) {
                        const int32_t nk = min(TILE_KEYS, last_pos - kt + 1);
                        __syncthreads();
                        /* stage the tile: rows of K and V, 4 bytes per thread-step (row_bytes % 4 == 0 when
                         * d % 4 == 0; byte steps otherwise) */
                        if (row_bytes % 4 == 0) {
                                const uint32_t words = row_bytes / 4;
                                for (uint32_t i = threadIdx.x; i < (uint32_t) nk * words; i += blockDim.x) {
                                        uint32_t kr = i / words, w = i % words;
                                        bool fresh;
                                        size_t off = key_row(c, table, kt + (int32_t) kr, pos0, row0, kvh, &fresh) * elt;
                                        const uint8_t *kb = (fresh ? c.k_new : c.k_pages) + off;
                                        const uint8_t *vb = (fresh ? c.v_new : c.v_pages) + off;
                                        reinterpret_cast<uint32_t *>(ks + (size_t) kr * row_bytes)[w] =
                                                reinterpret_cast<const uint32_t *>(kb)[w];
                                        reinterpret_cast<uint32_t *>(vs + (size_t) kr * row_bytes)[w] =
                                                reinterpret_cast<const uint32_t *>(vb)[w];
                                }
                        } else {
                                for (uint32_t i = threadIdx.x; i < (uint32_t) nk * row_bytes; i += blockDim.x) {
                                        uint32_t kr = i / row_bytes, w = i % row_bytes;
                                        bool fresh;
                                        size_t off = key_row(c, table, kt + (int32_t) kr, pos0, row0, kvh, &fresh) * elt;
                                        ks[(size_t) kr * row_bytes + w] = ((fresh ? c.k_new : c.k_pages) + off)[w];
                                        vs[(size_t) kr * row_bytes + w] = ((fresh ? c.v_new : c.v_pages) + off)[w];
                                }
                        }
                        __syncthreads();
                        if (!active)
                                continue;
                        const int32_t jb = max(kt, qlo), je = min(kt + nk - 1, qpos);
                        for (int32_t j = jb; j <= je; j++) {
                                const uint32_t kr = (uint32_t) (j - kt);
                                float kv[DPL];
                                load_kv<DPL, FP8, VEC>(ks, (size_t) kr * c.d + lane * DPL, kv, valid);
                                float sc = 0.0f;
#pragma unroll
                                for (int i = 0; i < DPL; i++)
                                        sc += qv[i] * kv[i];
                                sc = warp_sum(sc);
                                load_kv<DPL, FP8, VEC>(vs, (size_t) kr * c.d + lane * DPL, kv, valid);
                                float mn = fmaxf(m, sc);
                                float corr = __expf(m - mn), p = __expf(sc - mn);
                                l = l * corr + p;
#pragma unroll
                                for (int i = 0; i < DPL; i++)
                                        acc[i] = acc[i] * corr + p * kv[i];
                                m = mn;
                        }
                }
                if (active) {
                        uint16_t *o = out + ((size_t) tq * c.n_heads + h) * c.d + lane * DPL;
#pragma unroll
                        for (int i = 0; i < DPL; i++)
                                if (i < valid)
                                        o[i] = f32_to_bf16_bits(l > 0.0f ? acc[i] / l : 0.0f);
                }
                t0 = t1;
        }
}

template <int DPL>
static int launch_tile(bool fp8, uint32_t n_tokens, const uint16_t *q, const struct att_ctx &c, uint16_t *out,
                       cudaStream_t stream) {
        uint32_t g = c.n_heads / c.n_kv, qt = TILE_PAIRS / g;
        size_t smem = (size_t) 2 * TILE_KEYS * c.d * (fp8 ? 1 : 2);
        dim3 grid((n_tokens + qt - 1) / qt, c.n_kv);
        bool vec = c.d % 32 == 0;
        const void *fn = fp8 ? (vec ? (const void *) attention_tile_kernel<DPL, true, true>
                                    : (const void *) attention_tile_kernel<DPL, true, false>)
                             : (vec ? (const void *) attention_tile_kernel<DPL, false, true>
                                    : (const void *) attention_tile_kernel<DPL, false, false>);
        if (smem > 48 * 1024 &&
            cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int) smem) != cudaSuccess)
                return -EIO;
        if (fp8 && vec)
                attention_tile_kernel<DPL, true, true><<<grid, TILE_PAIRS * 32, smem, stream>>>(q, c, qt, out);
        else if (fp8)
                attention_tile_kernel<DPL, true, false><<<grid, TILE_PAIRS * 32, smem, stream>>>(q, c, qt, out);
        else if (vec)
                attention_tile_kernel<DPL, false, true><<<grid, TILE_PAIRS * 32, smem, stream>>>(q, c, qt, out);
        else
                attention_tile_kernel<DPL, false, false><<<grid, TILE_PAIRS * 32, smem, stream>>>(q, c, qt, out);
        return KERN_CHECK_LAUNCH();
}

/* multiprocessors of the current device (read once: the daemon drives one device) */
static int sm_count(void) {
        static int n;
        int dev;
        if (n <= 0 && (cudaGetDevice(&dev) != cudaSuccess ||
                       cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0))
                n = 132;
        return n;
}

/* want, at most `most` (each split needs keys), at most what the partial scratch holds, at least 1 */
static uint32_t clamp_split(uint32_t want, uint32_t most, size_t cap) {
        if (want > most)
                want = most;
        if (want > cap)
                want = cap ? (uint32_t) cap : 1;
        return want < 1 ? 1 : want;
}

static int merge_splits(const float *partial, uint32_t n_split, uint32_t rows, uint32_t d, uint16_t *out,
                        cudaStream_t stream) {
        if (n_split <= 1)
                return 0;
        attention_merge_kernel<<<rows, 128, 2 * n_split * sizeof(float), stream>>>(partial, n_split, d, out);
        return KERN_CHECK_LAUNCH();
}

/* Which kernel takes a batch. Prefill-like batches (several queries per sequence) go to a tile kernel that
 * reads each K/V tile once per GQA group of query rows; decode batches (one query per sequence) would leave
 * most of its rows empty and go to a per-(token, kv head, key split) kernel. Head dims 256 and 512 run on
 * tensor cores (on H100 the decode kernel beat the CUDA-core split-K kernel from 1 to 64 streams), other
 * head dims on the CUDA-core kernels. Tests may force a path; a forced path that cannot take the layer falls
 * back. */
static int pick_path(const struct kern_batch *bt, const struct kern_attn_layer *L) {
        uint32_t group = L->n_heads / L->n_kv_heads;
        bool tile_ok = group <= TILE_PAIRS;
        uint32_t qt = tile_ok ? TILE_PAIRS / group : 1;
        bool prefill_like = bt->n_tokens >= 2 * qt && bt->n_tokens >= qt * bt->n_seqs;
        int path = kern_attention_force_split ? KERN_ATT_PATH_SPLIT : kern_attention_force_path;

        switch (path) {
        case KERN_ATT_PATH_SPLIT:
                return path;
        case KERN_ATT_PATH_TILE:
                if (tile_ok)
                        return path;
                break;
        case KERN_ATT_PATH_MMA_PREFILL:
        case KERN_ATT_PATH_MMA_PREFILL_REGS:
                if (att_mma_supported(L, true))
                        return path;
                break;
        case KERN_ATT_PATH_MMA_DECODE:
        case KERN_ATT_PATH_MMA_DECODE_ROWS:
                if (att_mma_supported(L, false))
                        return path;
                break;
        default:
                break;
        }
        if (prefill_like && att_mma_supported(L, true))
                return KERN_ATT_PATH_MMA_PREFILL;
        if (prefill_like && tile_ok)
                return KERN_ATT_PATH_TILE;
        if (att_mma_supported(L, false))
                return KERN_ATT_PATH_MMA_DECODE;
        return KERN_ATT_PATH_SPLIT;
}

extern "C" int kern_attention(const uint16_t *q, const void *k_new, const void *v_new, const struct kern_batch *bt,
                              const struct kern_attn_layer *L, float *partial, size_t partial_floats,
                              uint16_t *out, cudaStream_t stream) {
        if (check_layer(L) < 0)
                return -EINVAL;
        if (bt->n_tokens == 0)
                return 0;
        struct att_ctx c = make_ctx(bt, L, k_new, v_new);
        uint32_t keys = bt->max_keys ? bt->max_keys : 1;
        uint32_t rows = bt->n_tokens * L->n_heads;
        uint32_t dpl = (L->head_dim + 31) / 32;
        dpl = dpl <= 1 ? 1 : dpl <= 2 ? 2 : dpl <= 4 ? 4 : dpl <= 8 ? 8 : 16;
        int path = pick_path(bt, L);
        kern_attention_last_path = path;
        if (path == KERN_ATT_PATH_MMA_PREFILL || path == KERN_ATT_PATH_MMA_PREFILL_REGS)
                return att_mma_prefill(q, c, L->kv_fp8, path != KERN_ATT_PATH_MMA_PREFILL_REGS, out, stream);
        if (path == KERN_ATT_PATH_TILE) {
                switch (dpl) {
                case 1: return launch_tile<1>(L->kv_fp8, bt->n_tokens, q, c, out, stream);
                case 2: return launch_tile<2>(L->kv_fp8, bt->n_tokens, q, c, out, stream);
                case 4: return launch_tile<4>(L->kv_fp8, bt->n_tokens, q, c, out, stream);
                case 8: return launch_tile<8>(L->kv_fp8, bt->n_tokens, q, c, out, stream);
                default: return launch_tile<16>(L->kv_fp8, bt->n_tokens, q, c, out, stream);
                }
        }
        size_t cap = partial_floats / ((size_t) rows * (L->head_dim + 2));
        if (path == KERN_ATT_PATH_MMA_DECODE || path == KERN_ATT_PATH_MMA_DECODE_ROWS) {
                /* as many splits as keep every block resident at once (one wave: a second wave of short
                 * blocks costs more than longer blocks), each split taking at least ATT_MMA_MIN_CHUNK keys */
                uint32_t units = bt->n_tokens * L->n_kv_heads;
                uint32_t slots = (uint32_t) sm_count() * (L->head_dim <= 256 ? 4 : 2);
                uint32_t most = (keys + ATT_MMA_MIN_CHUNK - 1) / ATT_MMA_MIN_CHUNK;
                uint32_t n_split = clamp_split(slots / units, most < ATT_MMA_MAX_SPLIT ? most : ATT_MMA_MAX_SPLIT,
                                               cap);
                if (att_mma_decode(q, c, L->kv_fp8, n_split, path != KERN_ATT_PATH_MMA_DECODE_ROWS, partial, out,
                                   stream) < 0)
                        return -EIO;
                return merge_splits(partial, n_split, rows, L->head_dim, out, stream);
        }
        uint32_t n_split = (264 + rows - 1) / rows, by_len = (keys + 1023) / 1024;
        n_split = clamp_split(n_split > by_len ? n_split : by_len, (keys + 63) / 64, cap);
        dim3 grid(rows, n_split);

        switch (dpl) {
        case 1: launch_att<1>(L->kv_fp8, grid, q, c, partial, out, stream); break;
        case 2: launch_att<2>(L->kv_fp8, grid, q, c, partial, out, stream); break;
        case 4: launch_att<4>(L->kv_fp8, grid, q, c, partial, out, stream); break;
        case 8: launch_att<8>(L->kv_fp8, grid, q, c, partial, out, stream); break;
        case 16: launch_att<16>(L->kv_fp8, grid, q, c, partial, out, stream); break;
        default: return -EINVAL;
        }
        if (KERN_CHECK_LAUNCH() < 0)
                return -EIO;
        return merge_splits(partial, n_split, rows, L->head_dim, out, stream);
}

static __global__ void kv_commit_kernel(const uint8_t *k_new, const uint8_t *v_new, struct att_ctx c,
                                        uint32_t elt) {
        const uint32_t t = blockIdx.x, kvh = blockIdx.y;
        const int32_t seq = c.bt.tok_seq[t], p = c.bt.tok_pos[t];
        const int32_t pos0 = c.bt.seq_pos0[seq], ntok = c.bt.seq_ntok[seq];
        const int32_t *table = c.bt.tables + c.bt.seq_table0[seq];

        /* on the ring, an earlier position of this step is overwritten by a later one: keep the last */
        if (c.ring && p < pos0 + ntok - (int32_t) (c.ring * c.page_size))
                return;
        uint32_t pi = (uint32_t) p / c.page_size;
        int32_t page = table[c.ring ? pi % c.ring : pi];
        size_t dst = ((((size_t) page * c.page_size + (uint32_t) p % c.page_size) * c.n_kv + kvh) * c.d) * elt;
        size_t src = (((size_t) t * c.n_kv + kvh) * c.d) * elt;
        size_t bytes = (size_t) c.d * elt;
        uint8_t *kd = (uint8_t *) c.k_pages + dst, *vd = (uint8_t *) c.v_pages + dst;
        if (bytes % 16 != 0) {
                for (size_t i = threadIdx.x; i < bytes; i += blockDim.x) {
                        kd[i] = k_new[src + i];
                        vd[i] = v_new[src + i];
                }
                return;
        }
        for (size_t i = threadIdx.x * 16; i < bytes; i += blockDim.x * 16) {
                *reinterpret_cast<uint4 *>(kd + i) = *reinterpret_cast<const uint4 *>(k_new + src + i);
                *reinterpret_cast<uint4 *>(vd + i) = *reinterpret_cast<const uint4 *>(v_new + src + i);
        }
}

extern "C" int kern_kv_commit(const void *k_new, const void *v_new, const struct kern_batch *bt,
                              const struct kern_attn_layer *L, cudaStream_t stream) {
        if (check_layer(L) < 0)
                return -EINVAL;
        if (bt->n_tokens == 0)
                return 0;
        struct att_ctx c = make_ctx(bt, L, k_new, v_new);
        dim3 grid(bt->n_tokens, L->n_kv_heads);
        kv_commit_kernel<<<grid, 32, 0, stream>>>((const uint8_t *) k_new, (const uint8_t *) v_new, c,
                                                  L->kv_fp8 ? 1 : 2);
        return KERN_CHECK_LAUNCH();
}
