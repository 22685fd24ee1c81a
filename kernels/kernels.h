/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * Launchers for the Gemma 4 forward-pass kernels (docs/cuda-backend.md describes the data flow).
 *
 * Conventions shared by every launcher:
 *   - pointers are device pointers; BF16 tensors are passed as uint16_t, FP8 e4m3 as uint8_t;
 *   - every launcher enqueues on `stream` and returns 0, -EINVAL for a shape the kernel cannot take, or
 *     -EIO when the launch itself failed (cudaGetLastError); nothing synchronizes;
 *   - the residual stream is FP32; every tensor handed from one op to the next that HF keeps in BF16
 *     (norm outputs, GEMM outputs, q/k/v) is rounded to BF16 here too;
 *   - per-token activation quantization: s = max(amax / 448, 1 / (448 * 512)), q = e4m3_rne_satfinite(v / s).
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KERNELS_FP8_MAX 448.0f
#define KERNELS_MAX_TOPK 16

/* ---- norms, quantization, element-wise (norm.cu) ---- */

/* q[t] = quant(bf16(RMSNorm_w(x[t]))) for t < n_rows; x FP32 [n_rows, n]. w may be NULL (weight-less). */
int kern_rmsnorm_quant(const float *x, const uint16_t *w, uint32_t n_rows, uint32_t n, float eps, uint8_t *q,
                       float *q_scale, cudaStream_t stream);
/* Same, but the rows to normalise are gathered: row r reads x[rows[r]]. Output BF16 instead of FP8 when
 * out_bf16 is non-NULL (then q / q_scale are ignored). */
int kern_rmsnorm_rows(const float *x, const int32_t *rows, const uint16_t *w, uint32_t n_rows, uint32_t n,
                      float eps, uint8_t *q, float *q_scale, uint16_t *out_bf16, cudaStream_t stream);
/* Per-row quantization of a BF16 matrix [n_rows, n]. */
int kern_quant_rows(const uint16_t *x, uint32_t n_rows, uint32_t n, uint8_t *q, float *q_scale,
                    cudaStream_t stream);
/* GeGLU then quantize: gu BF16 [n_rows, 2*n] (gate | up); a = bf16(bf16(gelu_tanh(g)) * u) -> FP8 + scale. */
int kern_geglu_quant(const uint16_t *gu, uint32_t n_rows, uint32_t n, uint8_t *q, float *q_scale,
                     cudaStream_t stream);
/* x[t] = bf16(E[ids[t]] * embed_scale) as FP32, then (when w_norm) the first layer's input norm + quant. */
int kern_embed(const uint16_t *table, const int32_t *ids, uint32_t n_rows, uint32_t n, uint32_t vocab,
               float embed_scale, float *x, const uint16_t *w_norm, float eps, uint8_t *q, float *q_scale,
               cudaStream_t stream);

/* Weight quantization (load time), compressed-tensors semantics: s_n = bf16(amax_n / 448) (2^-7 when the
 * row is zero), q = e4m3(bf16(w / s_n)). src FP32 [n_rows, n]. */
int kern_quantize_weight_rows(const float *src, uint32_t n_rows, uint32_t n, uint8_t *q, float *scale,
                              cudaStream_t stream);
/* BF16 -> FP32 widening, FP32 -> BF16 narrowing (load time). */
int kern_bf16_to_f32(const uint16_t *src, size_t n, float *dst, cudaStream_t stream);

/* ---- post-attention block (norm.cu) ----
 * One block per token t:
 *   h = x[t] + bf16(RMSNorm(o[t]; w_post_attn));  x[t] = h   (in place)
 *   dense input   = quant(RMSNorm(h; w_pre_ff))       -> q1, s1
 *   when router_scale != NULL (MoE):
 *   experts input = quant(RMSNorm(h; w_pre_ff2))      -> q2, s2
 *   router input  = bf16(bf16(RMSNorm_noweight(h) * router_scale) * n^-1/2), written over o[t]. */
int kern_post_attn(float *x, uint16_t *o, uint32_t n_rows, uint32_t n, float eps, const uint16_t *w_post_attn,
                   const uint16_t *w_pre_ff, uint8_t *q1, float *s1, const uint16_t *w_pre_ff2, uint8_t *q2,
                   float *s2, const uint16_t *router_scale, cudaStream_t stream);

/* Router over the router inputs r BF16 [n_rows, n]: logits = W_r r (FP32, into `logits` [n_rows, n_experts],
 * which is overwritten), softmax over all experts, top_k, renormalise, * per_expert_scale. */
struct kern_router {
        const uint16_t *proj;           /* BF16 [n_experts, n] */
        const uint16_t *per_expert_scale;       /* BF16 [n_experts] */
        uint32_t n_experts, top_k;
};
int kern_router(const uint16_t *r, uint32_t n_rows, uint32_t n, const struct kern_router *rt, float *logits,
                int32_t *topk_idx, float *topk_w, cudaStream_t stream);

/* ---- FFN combine (norm.cu) ----
 * One block per token t (m2 terms only when moe_y != NULL):
 *   m1 = RMSNorm(dense_y[t]; w_post_ff1)
 *   m2 = RMSNorm(sum_j topk_w[t,j] * moe_y[t*top_k + j]; w_post_ff2)
 *   x[t] = bf16((h + bf16(RMSNorm(bf16(m1 + m2); w_post_ff))) * layer_scalar)     (h = x[t] on entry)
 *   then, when w_next: quant(RMSNorm(x[t]; w_next)) -> q, s (the next layer's input). */
int kern_ffn_combine(float *x, const uint16_t *dense_y, const uint16_t *moe_y, const float *topk_w,
                     uint32_t top_k, uint32_t n_rows, uint32_t n, float eps, const uint16_t *w_post_ff1,
                     const uint16_t *w_post_ff2, const uint16_t *w_post_ff, float layer_scalar,
                     const uint16_t *w_next, uint8_t *q, float *s, cudaStream_t stream);

/* ---- FP8 GEMM (gemm.cu) ---- */

enum kern_out {
        KERN_OUT_BF16 = 0,              /* y BF16 [rows, n_out] */
        KERN_OUT_F32_SOFTCAP = 1,       /* y FP32, cap * tanh(y / cap) when cap > 0 */
};

/* A group of activation rows that share one weight matrix (one expert, or the whole batch of a dense
 * linear). Rows i in [start, start + count) of the group list read x row x_row[i] (or i when x_row is NULL)
 * and write output row y_row[i] (or i). */
struct kern_gemm_group {
        int32_t expert, start, count;
};

/* Small-M FP8 linear on tensor cores (mma.sync m16n8k32 e4m3, weights as the M side):
 * y[r, n] = s_x[xr] * (s_w[n] * sum_k W[n, k] x[xr, k]).  W FP8 [n_out, k] row-major; k % 16 == 0. */
int kern_fp8_linear_small(const uint8_t *w, const float *w_scale, uint32_t n_out, uint32_t k, const uint8_t *x,
                          const float *x_scale, uint32_t m, void *y, enum kern_out out, float softcap,
                          cudaStream_t stream);

/* Mid-M FP8 linear (gemm_midm.cu, wgmma: sm_90a), same contract as kern_fp8_linear_small for
 * 1..KERN_MID_M_MAX rows and k % 16 == 0: weights streamed once from HBM into registers, tokens staged in
 * shared memory, K split over a block cluster when the row blocks alone cannot fill the GPU. The FP8 tensor
 * cores accumulate with fewer mantissa bits than FP32 (relative error ~5e-4 at k = 2816, below a BF16
 * rounding). Tests only: kern_fp8_linear_mid_cluster != 0 forces that cluster size (1..8). */
#define KERN_MID_M_MAX 128
extern uint32_t kern_fp8_linear_mid_cluster;
int kern_fp8_linear_mid(const uint8_t *w, const float *w_scale, uint32_t n_out, uint32_t k, const uint8_t *x,
                        const float *x_scale, uint32_t m, void *y, enum kern_out out, float softcap,
                        cudaStream_t stream);

/* Grouped (MoE) variant: groups live on the device; *n_groups (device) says how many of the max_groups
 * are valid. Expert e uses w + e * n_out * k and w_scale + e * n_out. pair_rows[i] is the output row of
 * sorted entry i, x rows are pair_rows[i] / x_row_div (x_row_div = top_k reads the token's row; 1 reads
 * the pair's own row). max_rows bounds every group's count (<= 64; the token count when each token adds at
 * most one row per expert). */
int kern_fp8_linear_grouped(const uint8_t *w, const float *w_scale, uint32_t n_out, uint32_t k,
                            const uint8_t *x, const float *x_scale, uint32_t x_row_div,
                            const int32_t *pair_rows, const struct kern_gemm_group *groups,
                            const int32_t *n_groups, uint32_t max_groups, uint32_t max_rows, uint16_t *y,
                            cudaStream_t stream);
/* Which kernel the grouped GEMM runs (tests compare them): the tiled wgmma kernel whenever the shape allows
 * (k % 16 == 0, max_groups <= 2048) and more than one token, else the streaming mma.sync kernel. */
enum kern_grouped_path {
        KERN_GROUPED_AUTO = 0,
        KERN_GROUPED_MMA = 1,           /* the streaming mma.sync kernel only */
        KERN_GROUPED_TILED = 2,         /* the tiled kernel only; -EINVAL where it cannot run */
};
extern enum kern_grouped_path kern_grouped_select;

/* Sort (token, slot) pairs by expert and cut them into groups of at most 64 rows. One block.
 * pair_rows [n_pairs], groups [max_groups = kern_moe_max_groups()], n_groups [1]. */
int kern_moe_route(const int32_t *topk_idx, uint32_t n_pairs, uint32_t n_experts, int32_t *pair_rows,
                   struct kern_gemm_group *groups, int32_t *n_groups, cudaStream_t stream);
uint32_t kern_moe_max_groups(uint32_t n_pairs, uint32_t n_experts);

/* cuBLASLt: E4M3 x E4M3 -> BF16 with OUTER_VEC_32F scales on both sides (per channel, per token). */
struct kern_blas;
int kern_blas_create(struct kern_blas **ret);
void kern_blas_destroy(struct kern_blas *b);
/* What the last failing cuBLASLt call said (stage, status, shape); "" when nothing failed. */
const char *kern_blas_last_error(struct kern_blas *b);
int kern_blas_fp8_linear(struct kern_blas *b, const uint8_t *w, const float *w_scale, uint32_t n_out, uint32_t k,
                         const uint8_t *x, const float *x_scale, uint32_t m, uint16_t *y, cudaStream_t stream);
/* BF16 x BF16 -> FP32 (the BF16 LM head): y [m, n_out] = x [m, k] W^T. */
int kern_blas_bf16_linear_f32(struct kern_blas *b, const uint16_t *w, uint32_t n_out, uint32_t k,
                              const uint16_t *x, uint32_t m, float *y, cudaStream_t stream);
/* y = cap * tanh(y / cap) in place (FP32), or widening BF16 -> FP32 with the cap when src != NULL. */
int kern_softcap(const uint16_t *src, float *y, size_t n, float cap, cudaStream_t stream);

/* ---- BF16 weights (gemm_bf16.cu; backend_params.weights_bf16) ----
 * BF16 x BF16 on tensor cores (mma.sync m16n8k16, FP32 accumulation), no scales: y[r, n] = sum_k W[n, k] x[r, k].
 * Same row conventions as the FP8 launchers above; any K (rows of K % 8 != 0 take element loads). */
int kern_bf16_linear_small(const uint16_t *w, uint32_t n_out, uint32_t k, const uint16_t *x, uint32_t m, void *y,
                           enum kern_out out, float softcap, cudaStream_t stream);
/* Grouped (MoE) variant, the groups of kern_moe_route; max_rows (1..64) bounds every group's count. */
int kern_bf16_linear_grouped(const uint16_t *w, uint32_t n_out, uint32_t k, const uint16_t *x, uint32_t x_row_div,
                             const int32_t *pair_rows, const struct kern_gemm_group *groups,
                             const int32_t *n_groups, uint32_t max_groups, uint32_t max_rows, uint16_t *y,
                             cudaStream_t stream);
/* out = bf16(bf16(gelu_tanh(g)) * u) for gu BF16 [n_rows, 2*n] (gate | up): kern_geglu_quant without the FP8. */
int kern_geglu_bf16(const uint16_t *gu, uint32_t n_rows, uint32_t n, uint16_t *out, cudaStream_t stream);
/* cuBLASLt BF16 x BF16 -> BF16 (FP32 accumulation): y [m, n_out] = x [m, k] W^T; k % 8 == 0, n_out % 8 == 0. */
int kern_blas_bf16_linear(struct kern_blas *b, const uint16_t *w, uint32_t n_out, uint32_t k, const uint16_t *x,
                          uint32_t m, uint16_t *y, cudaStream_t stream);
/* ---- decode steps of few tokens (decode.cu) ---- */

/* The feed-forward block of up to 8 tokens in one launch. Routed experts: per (token, slot) pair
 * p = t * top_k + j with expert e = topk_idx[p]: g|u = FP8 gate_up(x[t]) (BF16),
 * a = quant(bf16(bf16(gelu_tanh(g)) * u)) per pair, y[p] = BF16 FP8 down(a) -- the same roundings as route +
 * grouped gate_up + geglu_quant + grouped down. w_gate_up FP8 [E][2*inter][hidden] (gate rows, then up
 * rows), s_gate_up [E][2*inter]; w_down FP8 [E][hidden][inter], s_down [E][hidden]. A token's experts must
 * be distinct (top-k). The dense MLP (when dense_w_gate_up is set) the same way on dense_x, one row per
 * token into dense_y. workspace: device memory of kern_ffn_decode_workspace() bytes, zeroed once before the
 * first launch (it holds a grid barrier that leaves itself at zero); one launch at a time per workspace.
 * With router_proj set the kernel also routes: the steps of kern_router (same bits) on router_in, writing
 * topk_idx and topk_w; otherwise topk_idx is its input. */
struct kern_ffn_decode {
        const uint8_t *w_gate_up, *w_down;
        const float *s_gate_up, *s_down;
        uint32_t n_experts, hidden, inter, n_tokens, top_k;
        const uint8_t *x;
        const float *x_scale;
        int32_t *topk_idx;              /* [n_tokens][top_k] */
        float *topk_w;                  /* [n_tokens][top_k], written when routing here */
        const uint16_t *router_in, *router_proj, *router_per_expert_scale;     /* NULL: topk_idx given */
        uint16_t *y;                    /* [n_tokens * top_k][hidden] */
        const uint8_t *dense_w_gate_up, *dense_w_down;  /* NULL: experts only */
        const float *dense_s_gate_up, *dense_s_down;
        uint32_t dense_inter;
        const uint8_t *dense_x;
        const float *dense_x_scale;
        uint16_t *dense_y;              /* [n_tokens][hidden] */
        void *workspace;
        bool pdl;                       /* programmatic dependent launch (see kern_gemv_decode) */
        uint32_t flags;                 /* KERN_FFN_DECODE_* variants */
        /* measurements only: device uint64 [16] (zero, [15] ~0) that receives per-phase times (the last
         * block's globaltimer at each mark, [15] the first start); NULL: none */
        unsigned long long *debug_times;
};
#define KERN_FFN_DECODE_NO_DOWN_PREFETCH 1u
#define KERN_FFN_DECODE_NO_ITEM_PREFETCH 2u
#define KERN_FFN_DECODE_WIDE 4u         /* one block per SM, whole items per pass */
size_t kern_ffn_decode_workspace(uint32_t top_k, uint32_t n_experts, uint32_t inter, uint32_t dense_inter);
bool kern_ffn_decode_supported(uint32_t n_tokens, uint32_t top_k, uint32_t n_experts, uint32_t hidden,
                               uint32_t inter, uint32_t dense_inter);
int kern_ffn_decode(const struct kern_ffn_decode *args, cudaStream_t stream);

/* kern_router and kern_moe_route of a decode step (up to 8 tokens) in one launch, with the same results
 * (each expert's pairs in pair order). workspace: a kern_ffn_decode workspace (its barrier area). pdl: as
 * for kern_gemv_decode (the router rows are requested into L2 before the wait). */
bool kern_route_decode_supported(uint32_t n_tokens, uint32_t n_experts, uint32_t top_k);
int kern_route_decode(const uint16_t *r, uint32_t n_rows, uint32_t n, const struct kern_router *rt, float *logits,
                      int32_t *topk_idx, float *topk_w, int32_t *pair_rows, struct kern_gemm_group *groups,
                      int32_t *n_groups, void *workspace, bool pdl, cudaStream_t stream);

/* Small-M FP8 linear for decode steps (up to 8 rows, k % 16 == 0, k <= 8192), same contract as
 * kern_fp8_linear_small; with x_bf16 set the input is BF16 [m][k] and is quantized per row inside (the
 * steps of kern_quant_rows; x and x_scale unused). pdl: launched as a programmatic dependent of the previous
 * kernel in the stream (its weight loads overlap that kernel; it waits for it before reading x). */
bool kern_gemv_decode_supported(uint32_t n_out, uint32_t k, uint32_t m);
int kern_gemv_decode(const uint8_t *w, const float *w_scale, uint32_t n_out, uint32_t k, const uint8_t *x,
                     const uint16_t *x_bf16, const float *x_scale, uint32_t m, void *y, enum kern_out out,
                     float softcap, bool pdl, cudaStream_t stream);

/* Ask L2 for up to KERN_PREFETCH_RANGES device ranges (16-byte aligned starts; a tail under 16 bytes is
 * skipped). Returns at once; nothing waits for the data. */
#define KERN_PREFETCH_RANGES 4
struct kern_prefetch {
        const void *p[KERN_PREFETCH_RANGES];
        size_t bytes[KERN_PREFETCH_RANGES];
};
int kern_l2_prefetch(const struct kern_prefetch *ranges, cudaStream_t stream);

/* ---- greedy selection (sample.cu) ---- */

/* out[r] = argmax of logits row r (FP32 [n_rows, n]) with the host sampler's greedy rule: NaN reads as -inf,
 * the lowest id wins among equal values, a row without any value above -inf gives 0. One block per row. */
int kern_argmax_rows(const float *logits, uint32_t n_rows, uint32_t n, int32_t *out, cudaStream_t stream);

/* ---- sampling (sample.cu) ----
 * The host sampler's math (daemon/server/sampler.h, steps 0-6) on the device: one block per row. Rows that
 * differ from the host only where a rounding boundary is within a relative 3e-7 (docs/cuda-backend.md). */
#define KERN_SAMPLE_MAX_TOP 20

struct kern_sample_params {             /* one per row, on the device */
        float temperature, top_p, min_p;
        float repetition_penalty, presence_penalty, frequency_penalty;
        int32_t top_k;
        uint32_t n_logprobs;            /* top-N list length, <= KERN_SAMPLE_MAX_TOP */
        uint32_t want_logprob;          /* greedy rows: compute the token's logprob (sampled rows always do) */
        uint32_t n_prompt, n_generated; /* history: hist[hist_off ...], prompt then generated tokens */
        uint32_t hist_off;
        uint64_t seed, index;           /* the draw is sampler_uniform(seed, index) */
};

/* Same layout as struct sampler_result. */
struct kern_sample_result {
        int32_t token;
        float logprob;
        uint32_t n_top;
        struct {
                int32_t token;
                float logprob;
        } top[KERN_SAMPLE_MAX_TOP];
};

/* Sample rows r < n_rows of logits (row r at logits + r * ld, width n): penalties and temperature are
 * applied IN PLACE. hist: the token histories (may be NULL when no row has any); work: n_rows * n floats of
 * scratch. One launch, no synchronisation: capturable in a graph. */
int kern_sample_rows(float *logits, size_t ld, uint32_t n_rows, uint32_t n, const struct kern_sample_params *params,
                     const int32_t *hist, float *work, struct kern_sample_result *out, cudaStream_t stream);
/* Test hook: when stamps (device, >= 9 entries) is not NULL, row 0 of every launch writes the %globaltimer (ns)
 * at the start, after the penalties, the temperature, the total mass, top_k, top_p, z, the draw and the end. */
int kern_sample_set_profile(unsigned long long *stamps);

/* ---- attention (attention.cu) ---- */

/* Where the batch's tokens and sequences are (device arrays). Token t belongs to sequence tok_seq[t] and
 * sits at position tok_pos[t]. Sequence s's new tokens start at batch row seq_row0[s] and position
 * seq_pos0[s]; its page table is tables[seq_table0[s] ...]. */
struct kern_batch {
        const int32_t *tok_seq, *tok_pos;
        const int32_t *seq_row0, *seq_pos0, *seq_ntok, *seq_table0;
        const int32_t *tables;
        uint32_t n_tokens, n_seqs;
        uint32_t max_keys;              /* bound on any query's key count: picks the split count only */
};

/* One attention layer's geometry and KV storage. Page pool layout: [n_pages][page_size][n_kv_heads][head_dim]
 * for K and for V separately; element e4m3 (kv_fp8) or BF16. */
struct kern_attn_layer {
        uint32_t n_heads, n_kv_heads, head_dim;
        bool k_eq_v;                    /* V from the raw K projection (no v rows in qkv) */
        bool kv_fp8;
        uint32_t page_size;
        uint32_t ring;                  /* sliding: pages in the ring; 0 = full layer (linear table) */
        uint32_t window;                /* 0 = unbounded */
        float rope_theta;
        uint32_t rope_pairs;            /* rotated pairs (j < rope_pairs); exponent denominator head_dim */
        float eps;
        const uint16_t *q_norm, *k_norm;        /* BF16 [head_dim] */
        void *k_pages, *v_pages;
};

/* qkv BF16 [n_tokens, (n_heads + n_kv (+ n_kv)) * d] -> q BF16 [n_tokens, n_heads, d] (normed, roped) and
 * k_new / v_new [n_tokens, n_kv, d] in the KV dtype (k normed + roped, v weight-less normed). */
int kern_qkv_post(const uint16_t *qkv, const struct kern_batch *bt, const struct kern_attn_layer *L,
                  uint16_t *q, void *k_new, void *v_new, cudaStream_t stream);
/* Attention of every new token over its sequence: old keys from the pages, this step's keys from
 * k_new / v_new. out BF16 [n_tokens, n_heads * d]. partial: FP32 scratch of kern_attention_partial_floats(). */
int kern_attention(const uint16_t *q, const void *k_new, const void *v_new, const struct kern_batch *bt,
                   const struct kern_attn_layer *L, float *partial, size_t partial_floats, uint16_t *out,
                   cudaStream_t stream);
size_t kern_attention_partial_floats(uint32_t max_tokens, uint32_t n_heads, uint32_t head_dim);
/* Batches with many tokens take a shared-memory tile kernel, the rest a split-K kernel; tests set this to
 * run the split-K kernel on every batch. */
extern bool kern_attention_force_split;
/* tests: run one path (KERN_ATT_PATH_*) when it can take the layer (0: the default choice); the path the last
 * kern_attention call took */
enum {
        KERN_ATT_PATH_AUTO,
        KERN_ATT_PATH_SPLIT,            /* CUDA cores, one block per (token, head, key split) */
        KERN_ATT_PATH_TILE,             /* CUDA cores, K/V tiles in shared memory shared by a GQA group */
        KERN_ATT_PATH_MMA_PREFILL,      /* tensor cores, 64-row query tiles, next K/V tile copied meanwhile */
        KERN_ATT_PATH_MMA_DECODE,       /* tensor cores, one token's GQA group per block, keys as the M side */
        KERN_ATT_PATH_MMA_DECODE_ROWS,  /* MMA_DECODE with query heads as the mma's M side (16-row tile) */
        KERN_ATT_PATH_MMA_PREFILL_REGS, /* MMA_PREFILL with K/V staged through registers, no copy ahead */
};
extern int kern_attention_force_path, kern_attention_last_path;
/* Copy this step's K/V into the pages (after attention, so a sliding ring never loses keys that an
 * earlier query of the same step still needs). */
int kern_kv_commit(const void *k_new, const void *v_new, const struct kern_batch *bt,
                   const struct kern_attn_layer *L, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
