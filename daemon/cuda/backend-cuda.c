/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The CUDA backend: Gemma 4 forward pass with FP8 weights (per-channel scales, per-token dynamic activation
 * scales) over a paged FP8 or BF16 KV pool. docs/cuda-backend.md describes the data flow per layer.
 *
 * Everything runs on one stream owned by the engine thread. Any CUDA failure during forward() is treated as
 * sticky: the backend marks itself lost and returns -EIO from then on.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda-internal.h"
#include "cuda-profile.h"
#include "cuda-sample.h"
#include "log.h"

#define SMALL_M_MAX 8           /* up to this many rows the mma small-M kernel; beyond, cuBLASLt (measured: at 64
                                 * rows the small-M kernel ran qkv in 58 us/layer, far above cuBLASLt's ~11-20) */
#define MID_M_MAX 16            /* up to this many rows the weight-streaming mid-M kernel (gemm_midm.cu), beyond
                                 * cuBLASLt: measured on H100 at 16 rows 1.06-1.5x faster than cuBLASLt on every
                                 * dense shape and the LM head, at 32 and more rows slower (docs/perf-notes.md) */
#define HEAD_CHUNK 256          /* logits rows per LM-head launch */
#define PROF_EVENTS 4096

enum {
        P_START, P_EMBED, P_QKV, P_QKV_POST, P_ATTN, P_KV, P_OQ, P_O, P_POST, P_ROUTER, P_DGU, P_DACT, P_DDOWN, P_ROUTE,
        P_EGU, P_EACT, P_EDOWN, P_EFUSED, P_PREFETCH, P_COMBINE, P_HNORM, P_HEAD, P_COPY, PROF_CATS
};

struct backend {
        const struct model *m;
        struct model_config cfg;
        struct backend_params p;
        struct backend_capacity cap;
        cudaStream_t stream;
        struct kern_blas *blas;
        uint32_t mid_m_max;             /* MID_M_MAX, or GEMMA4D_CUDA_MIDM_MAX (0 = cuBLASLt from 9 rows; at most
                                         * KERN_MID_M_MAX) */
        bool lost;

        struct dev_layer *layers;
        uint16_t *embed;                /* BF16 [vocab, H]; mapped host memory when embed_host */
        bool embed_host;
        uint16_t *final_norm;
        uint8_t *head_w;                /* FP8 [vocab, H] (NULL with lm_head_bf16) */
        float *head_scale;
        const uint16_t *head_bf16;      /* BF16 head (embed when tied) */
        uint16_t *head_bf16_own;
        void *weight_block;             /* one allocation for all FP8 linears */
        size_t weight_block_bytes;
        void *kv_block;
        uint32_t ring, n_full_layers, n_sliding_layers;
        uint32_t max_d, max_qkv, max_kv_row, inter, e_inter, top_k;

        /* activations, sized for max_batched_tokens */
        uint32_t t_max, p_max, max_groups;
        float *x, *att_partial, *a_scale, *s1, *s2, *topk_w, *e_scale, *logits, *router_logits;
        size_t att_partial_floats;
        uint8_t *aq, *q1, *q2, *act, *e_act;
        uint16_t *qkv, *q, *attn, *o, *gu, *dense_y, *e_gu, *e_y, *final_bf16, *head_tmp;
        void *k_new, *v_new;
        int32_t *topk_idx, *pair_rows, *n_groups;
        struct kern_gemm_group *groups;
        void *moe_ws;                   /* fused FFN of decode steps (kern_ffn_decode) */
        bool fused_moe;                 /* opt-in GEMMA4D_CUDA_FUSED_FFN=1 (slower than the separate kernels
                                         * on H100 so far: docs/perf-notes.md) */
        bool fused_dense;               /* the dense MLP inside it too; GEMMA4D_CUDA_NO_FUSED_DENSE=1 */
        bool fused_router;              /* and the router; GEMMA4D_CUDA_NO_FUSED_ROUTER=1 */
        bool decode_gemv;               /* kern_gemv_decode for qkv / o_proj of decode steps: opt-in
                                         * GEMMA4D_CUDA_DECODE_GEMV=1 (R3: 248.6 vs 252.4 tok/s without) */
        bool gemv_quant;                /* ... with the attention output's quantization inside;
                                         * GEMMA4D_CUDA_GEMV_QUANT=1 */
        bool gemv_head;                 /* ... for the LM head of decode steps; GEMMA4D_CUDA_NO_GEMV_HEAD=1 */
        bool pdl;                       /* decode kernels launched as programmatic dependents; GEMMA4D_CUDA_NO_PDL=1 */
        bool route_decode;              /* kern_route_decode for decode steps; GEMMA4D_CUDA_NO_ROUTE_DECODE=1 */
        bool parallel_dense;            /* unfused decode: dense MLP on the side stream;
                                         * GEMMA4D_CUDA_NO_PARALLEL_DENSE=1 */
        bool prefetch;                  /* decode: L2 prefetch of upcoming weights; opt-in GEMMA4D_CUDA_PREFETCH=1 */
        /* decode: work off the critical path (KV commit, the dense MLP, L2 prefetches) runs on a second
         * stream that forks from and joins back into the main one (also inside graphs);
         * GEMMA4D_CUDA_NO_SIDE_STREAM=1 */
        cudaStream_t side;
        cudaEvent_t side_fork, side_join;
        bool side_pending;              /* side work not yet joined */

        /* batch metadata: one pinned host block, one device block */
        int32_t *meta_h, *meta_d;
        size_t meta_cap;                /* int32 entries */

        /* greedy steps (forward_greedy): the argmax of each sequence's row, on the device */
        bool greedy_on;                 /* GEMMA4D_CUDA_NO_GREEDY=1 turns it off */
        int32_t *argmax_d, *argmax_h;   /* [max_num_seqs]; argmax_h page-locked */
        /* sampled steps (forward_sample, cuda-sample.c): the host sampler's math on the head's logits */
        struct cuda_sampler *sampler;   /* NULL: GEMMA4D_CUDA_NO_SAMPLE=1, or switched off after a failure */
        bool sampling;                  /* the step in progress samples (set by forward_sample) */

        /* decode graphs (all sequences one token), indexed by size: with boot graphs (the default) one per
         * bucket, captured in create(), and a step of S sequences runs the bucket's graph with padding
         * sequences after its own; otherwise one per exact S, captured on first use. With greedy on, every
         * graph ends with the argmax too (a few us), so one graph serves forward and forward_greedy. */
        bool use_graphs, boot_graphs;
        uint32_t graph_max;
        cudaGraphExec_t *graphs;        /* [graph_max + 1] */
        uint16_t *bucket_of;            /* [graph_max + 1]: boot graphs: the bucket that runs S sequences */
        struct backend_seq *pad_seqs;   /* [max_num_seqs]: a step's sequences plus its padding */
        uint32_t scratch_full, scratch_sliding; /* page ids past the pool, written by padding only */

        /* profiling (GEMMA4D_CUDA_PROFILE=1): events between ops, summed per category */
        bool prof;
        cudaEvent_t prof_ev[PROF_EVENTS];
        uint8_t prof_cat[PROF_EVENTS];
        uint32_t prof_n;
        double prof_ms[PROF_CATS];
        uint64_t prof_steps;
};

static const char *const prof_names[PROF_CATS] = {
        [P_START] = "(start)", [P_EMBED] = "embed+norm", [P_QKV] = "qkv gemm", [P_QKV_POST] = "q/k/v norm+rope",
        [P_ATTN] = "attention", [P_KV] = "kv commit", [P_OQ] = "attn quant", [P_O] = "o_proj gemm",
        [P_POST] = "post-attn norms", [P_ROUTER] = "router", [P_DGU] = "dense gate_up", [P_DACT] = "dense geglu",
        [P_DDOWN] = "dense down", [P_ROUTE] = "moe route", [P_EGU] = "moe gate_up", [P_EACT] = "moe geglu",
        [P_EDOWN] = "moe down", [P_EFUSED] = "ffn fused", [P_PREFETCH] = "l2 prefetch",
        [P_COMBINE] = "ffn combine", [P_HNORM] = "final norm", [P_HEAD] = "lm head", [P_COPY] = "logits copy",
};

static bool cuda_ok(cudaError_t e) {
        return e == cudaSuccess;
}

static void prof_mark(struct backend *b, int cat) {
        if (!b->prof || b->prof_n >= PROF_EVENTS)
                return;
        cudaEventRecord(b->prof_ev[b->prof_n], b->stream);
        b->prof_cat[b->prof_n++] = (uint8_t) cat;
}

static void prof_collect(struct backend *b) {
        if (!b->prof || b->prof_n == 0)
                return;
        cudaEventSynchronize(b->prof_ev[b->prof_n - 1]);
        for (uint32_t i = 1; i < b->prof_n; i++) {
                float ms = 0;
                cudaEventElapsedTime(&ms, b->prof_ev[i - 1], b->prof_ev[i]);
                b->prof_ms[b->prof_cat[i]] += ms;
        }
        b->prof_n = 0;
        b->prof_steps++;
}

int cuda_backend_set_profile(struct backend *b, bool on) {
        for (uint32_t i = 0; on && i < PROF_EVENTS; i++)
                if (!b->prof_ev[i] && !cuda_ok(cudaEventCreate(&b->prof_ev[i])))
                        return -EIO;
        b->prof = on;
        b->prof_n = 0;
        return 0;
}

int cuda_backend_profile(struct backend *b, char *buf, size_t size, bool reset) {
        size_t off = 0;
        double total = 0;
        if (!b->prof)
                return -ENOTSUP;
        for (int c = 1; c < PROF_CATS; c++)
                total += b->prof_ms[c];
        off += (size_t) snprintf(buf + off, size - off, "%-18s %10s %7s\n", "op", "ms/step", "share");
        for (int c = 1; c < PROF_CATS && off < size; c++)
                off += (size_t) snprintf(buf + off, size - off, "%-18s %10.4f %6.1f%%\n", prof_names[c],
                                         b->prof_steps ? b->prof_ms[c] / b->prof_steps : 0.0,
                                         total > 0 ? 100.0 * b->prof_ms[c] / total : 0.0);
        if (off < size)
                snprintf(buf + off, size - off, "%-18s %10.4f (%llu steps)\n", "total",
                         b->prof_steps ? total / b->prof_steps : 0.0, (unsigned long long) b->prof_steps);
        if (reset) {
                memset(b->prof_ms, 0, sizeof(b->prof_ms));
                b->prof_steps = 0;
        }
        return 0;
}

static int dev_alloc(void **p, size_t bytes) {
        if (bytes == 0)
                bytes = 16;
        return cuda_ok(cudaMalloc(p, bytes)) ? 0 : -ENOMEM;
}

static void backend_cuda_destroy(struct backend *b);
static int capture_boot_graphs(struct backend *b, char **reterr);
static int run_layers_bf16(struct backend *b, uint32_t T, const int32_t *d_tokens, const struct kern_batch *bt_full,
                           const struct kern_batch *bt_slide);

/* An environment switch: set and not "0" */
static bool env_flag(const char *name) {
        const char *v = getenv(name);
        return v && *v && strcmp(v, "0") != 0;
}

/* ---- geometry checks ---- */

static int check_config(const struct model *m, const struct backend_params *p, char **reterr) {
        const struct model_config *c = &m->cfg;

        if (c->hidden_size == 0 || c->n_heads == 0 || c->n_layers == 0 || c->vocab_size == 0)
                return cuda_errorf(reterr, -EINVAL, "config.json: empty geometry");
        if (c->head_dim % 2 != 0 || c->head_dim > 512 || c->global_head_dim % 2 != 0 || c->global_head_dim > 512)
                return cuda_errorf(reterr, -EINVAL,
                                   "config.json: head_dim %u / global_head_dim %u must be even, at most 512",
                                   c->head_dim, c->global_head_dim);
        if (c->enable_moe && (c->top_k_experts == 0 || c->top_k_experts > KERNELS_MAX_TOPK ||
                              c->top_k_experts > c->n_experts))
                return cuda_errorf(reterr, -EINVAL, "config.json: top_k_experts %u must be 1..%d and <= num_experts",
                                   c->top_k_experts, KERNELS_MAX_TOPK);
        if (p->page_size == 0 || p->max_num_seqs == 0 || p->max_batched_tokens == 0 || p->max_model_len == 0)
                return cuda_errorf(reterr, -EINVAL, "backend: page_size, max_num_seqs, max_batched_tokens and "
                                                    "max_model_len must be positive");
        if (p->weights_bf16)
                return cuda_bf16_check_model(m, reterr);
        return 0;
}

/* ---- weights ---- */

/* every matrix starts 256-byte aligned (16-byte vector loads); es: bytes per weight (2 with weights_bf16) */
static uint64_t linear_bytes(const struct linear_weight *lw, uint64_t es) {
        return lw->w.data ? ((uint64_t) lw->out_features * lw->in_features * es + 255) & ~(uint64_t) 255 : 0;
}

static int upload_weights(struct backend *b, struct uploader *u, char **reterr) {
        const struct model *m = b->m;
        const struct model_config *c = &m->cfg;
        uint32_t H = c->hidden_size, E = c->enable_moe ? c->n_experts : 0;
        uint64_t wbytes = 0, sfloats = 0, es = b->p.weights_bf16 ? 2 : 1;
        int r;

        /* one block for every FP8 matrix, then one for every scale */
        for (uint32_t l = 0; l < c->n_layers; l++) {
                const struct layer_weights *L = &m->layers[l];
                const struct linear_weight *lin[] = {&L->q_proj, &L->k_proj, &L->v_proj, &L->o_proj,
                                                     &L->mlp_gate, &L->mlp_up, &L->mlp_down};
                for (size_t i = 0; i < sizeof(lin) / sizeof(lin[0]); i++) {
                        wbytes += linear_bytes(lin[i], es);
                        sfloats += lin[i]->w.data ? lin[i]->out_features : 0;
                }
                if (E)
                        wbytes += 2 * 256 + (uint64_t) E * 3 * c->moe_intermediate_size * H * es;
                for (uint32_t e = 0; e < E; e++) {
                        sfloats += L->expert_gate[e].out_features + L->expert_up[e].out_features +
                                   L->expert_down[e].out_features;
                }
        }
        if (!b->p.lm_head_bf16) {
                wbytes += (uint64_t) c->vocab_size * H + 256;
                sfloats += c->vocab_size;
        }
        wbytes = (wbytes + 255) & ~(uint64_t) 255;
        b->weight_block_bytes = wbytes + sfloats * sizeof(float);
        /* BF16 weights: say how much is needed rather than fail an allocation (the table's placement as below) */
        uint64_t table = (uint64_t) c->vocab_size * H * 2;
        bool table_on_device = b->p.embedding_device || (b->p.lm_head_bf16 && !tensor_present(&m->lm_head));
        if (b->p.weights_bf16 &&
            (r = cuda_bf16_check_memory(b->weight_block_bytes + (table_on_device ? table : 0) +
                                                (tensor_present(&m->lm_head) ? table : 0),
                                        reterr)) < 0)
                return r;
        if (dev_alloc(&b->weight_block, b->weight_block_bytes) < 0)
                return cuda_errorf(reterr, -ENOMEM, "backend cuda: cannot allocate %.2f GiB for weights",
                                   b->weight_block_bytes / 1073741824.0);
        uint8_t *wp = b->weight_block;
        float *sp = (float *) ((uint8_t *) b->weight_block + wbytes);
        u->bytes_total = m->weight_bytes ? m->weight_bytes : wbytes;

#define PLACE(dl, nrows, ncols)                                                                              \
        do {                                                                                                 \
                (dl)->w = wp;                                                                                \
                (dl)->scale = sp;                                                                            \
                wp += ((uint64_t) (nrows) * (ncols) * es + 255) & ~(uint64_t) 255;                           \
                sp += (nrows);                                                                               \
        } while (0)

        for (uint32_t l = 0; l < c->n_layers; l++) {
                const struct layer_weights *L = &m->layers[l];
                struct dev_layer *D = &b->layers[l];
                D->type = L->type;
                D->n_kv_heads = L->n_kv_heads;
                D->head_dim = L->head_dim;
                D->k_eq_v = !tensor_present(&L->v_proj.w);
                const struct linear_weight *qkv[3] = {&L->q_proj, &L->k_proj, &L->v_proj};
                uint32_t nq = D->k_eq_v ? 2 : 3, rows = 0;
                for (uint32_t i = 0; i < nq; i++)
                        rows += qkv[i]->out_features;
                if (L->q_proj.out_features != c->n_heads * L->head_dim ||
                    L->k_proj.out_features != L->n_kv_heads * L->head_dim ||
                    (!D->k_eq_v && L->v_proj.out_features != L->n_kv_heads * L->head_dim))
                        return cuda_errorf(reterr, -EINVAL, "layer %u: q/k/v projection shapes do not match the "
                                                            "head geometry", l);
                PLACE(&D->qkv, rows, H);
                if ((r = upload_linear(u, qkv, nq, &D->qkv, D->qkv.w, D->qkv.scale, reterr)) < 0)
                        return r;
                D->n_qkv = rows;
                const struct linear_weight *o[1] = {&L->o_proj};
                PLACE(&D->o, H, L->o_proj.in_features);
                if ((r = upload_linear(u, o, 1, &D->o, D->o.w, D->o.scale, reterr)) < 0)
                        return r;
                const struct linear_weight *gu[2] = {&L->mlp_gate, &L->mlp_up};
                PLACE(&D->gate_up, 2 * c->intermediate_size, H);
                if ((r = upload_linear(u, gu, 2, &D->gate_up, D->gate_up.w, D->gate_up.scale, reterr)) < 0)
                        return r;
                const struct linear_weight *dn[1] = {&L->mlp_down};
                PLACE(&D->down, H, c->intermediate_size);
                if ((r = upload_linear(u, dn, 1, &D->down, D->down.w, D->down.scale, reterr)) < 0)
                        return r;
                if (E) {
                        uint32_t I = c->moe_intermediate_size;
                        uint8_t *gw = wp;
                        float *gs = sp;
                        for (uint32_t e = 0; e < E; e++) {
                                const struct linear_weight *egu[2] = {&L->expert_gate[e], &L->expert_up[e]};
                                struct dev_linear tmp;
                                if (L->expert_gate[e].out_features != I || L->expert_up[e].out_features != I ||
                                    L->expert_down[e].in_features != I || L->expert_down[e].out_features != H)
                                        return cuda_errorf(reterr, -EINVAL, "layer %u expert %u: shapes differ from "
                                                                            "moe_intermediate_size %u", l, e, I);
                                if ((r = upload_linear(u, egu, 2, &tmp, wp, sp, reterr)) < 0)
                                        return r;
                                wp += (uint64_t) 2 * I * H * es;
                                sp += 2 * I;
                        }
                        D->e_gate_up = (struct dev_linear){gw, gs, 2 * I, H, E};
                        wp = (uint8_t *) (((uintptr_t) wp + 255) & ~(uintptr_t) 255);
                        gw = wp;
                        gs = sp;
                        for (uint32_t e = 0; e < E; e++) {
                                const struct linear_weight *ed[1] = {&L->expert_down[e]};
                                struct dev_linear tmp;
                                if ((r = upload_linear(u, ed, 1, &tmp, wp, sp, reterr)) < 0)
                                        return r;
                                wp += (uint64_t) H * I * es;
                                sp += H;
                        }
                        D->e_down = (struct dev_linear){gw, gs, H, I, E};
                        wp = (uint8_t *) (((uintptr_t) wp + 255) & ~(uintptr_t) 255);
                }
                struct {
                        const struct tensor_view *t;
                        uint32_t n;
                        uint16_t **dst;
                        bool required;
                } vec[] = {
                        {&L->input_layernorm, H, &D->input_ln, true},
                        {&L->post_attention_layernorm, H, &D->post_attn_ln, true},
                        {&L->pre_feedforward_layernorm, H, &D->pre_ff, true},
                        {&L->post_feedforward_layernorm, H, &D->post_ff, true},
                        {&L->post_feedforward_layernorm_1, H, &D->post_ff1, false},
                        {&L->pre_feedforward_layernorm_2, H, &D->pre_ff2, (bool) E},
                        {&L->post_feedforward_layernorm_2, H, &D->post_ff2, (bool) E},
                        {&L->q_norm, L->head_dim, &D->q_norm, true},
                        {&L->k_norm, L->head_dim, &D->k_norm, true},
                        {&L->router_proj, E * H, &D->router_proj, (bool) E},
                        {&L->router_scale, H, &D->router_scale, (bool) E},
                        {&L->router_per_expert_scale, E, &D->router_pes, (bool) E},
                };
                for (size_t i = 0; i < sizeof(vec) / sizeof(vec[0]); i++) {
                        if (vec[i].required && !tensor_present(vec[i].t))
                                return cuda_errorf(reterr, -EINVAL, "layer %u: tensor %s missing", l,
                                                   vec[i].t->name ? vec[i].t->name : "(norm)");
                        if (vec[i].n > u->pinned_bytes / 2) {
                                if ((r = upload_matrix_bf16(u, vec[i].t, 1, vec[i].n, vec[i].dst, reterr)) < 0)
                                        return r;
                        } else if ((r = upload_vector_bf16(u, vec[i].t, vec[i].n, vec[i].dst, reterr)) < 0) {
                                return r;
                        }
                }
                D->layer_scalar = tensor_present(&L->layer_scalar) ? host_tensor_f32(&L->layer_scalar, 0) : 1.0f;
        }
#undef PLACE
        /* A tied BF16 head reads the whole table every step: that one must live on the device. */
        b->embed_host = !b->p.embedding_device && !(b->p.lm_head_bf16 && !tensor_present(&m->lm_head));
        if (b->embed_host)
                r = upload_matrix_bf16_host(u, &m->embed_tokens, c->vocab_size, H, &b->embed, reterr);
        else
                r = upload_matrix_bf16(u, &m->embed_tokens, c->vocab_size, H, &b->embed, reterr);
        if (r < 0)
                return r;
        if ((r = upload_vector_bf16(u, &m->final_norm, H, &b->final_norm, reterr)) < 0)
                return r;
        if (!b->final_norm)
                return cuda_errorf(reterr, -EINVAL, "tensor norm.weight (final norm) missing");
        b->head_bf16 = b->embed;
        if (tensor_present(&m->lm_head)) {
                if ((r = upload_matrix_bf16(u, &m->lm_head, c->vocab_size, H, &b->head_bf16_own, reterr)) < 0)
                        return r;
                b->head_bf16 = b->head_bf16_own;
        }
        if (!b->p.lm_head_bf16) {
                b->head_w = wp;
                b->head_scale = sp;
                if (quantize_device_matrix(u, b->head_bf16, c->vocab_size, H, b->head_w, b->head_scale) < 0)
                        return cuda_errorf(reterr, -EIO, "backend cuda: quantizing the LM head failed");
        }
        return 0;
}

/* ---- KV pool ---- */

static size_t page_bytes(const struct backend *b, enum layer_type type) {
        size_t elt = b->p.kv_dtype == KV_DTYPE_FP8 ? 1 : 2, total = 0;
        for (uint32_t l = 0; l < b->cfg.n_layers; l++)
                if (b->layers[l].type == type)
                        total += 2 * (size_t) b->p.page_size * b->layers[l].n_kv_heads * b->layers[l].head_dim * elt;
        return total;
}

static int alloc_kv(struct backend *b, char **reterr) {
        size_t full_pb = page_bytes(b, LAYER_FULL), slide_pb = page_bytes(b, LAYER_SLIDING);
        uint64_t n_full = b->p.n_full_pages, n_slide = b->p.n_sliding_pages;
        size_t free_b = 0, total_b = 0;

        if (n_slide == 0 && slide_pb)
                n_slide = (uint64_t) b->p.max_num_seqs * b->ring;
        if (n_full == 0 && full_pb) {
                if (!cuda_ok(cudaMemGetInfo(&free_b, &total_b)))
                        return cuda_errorf(reterr, -EIO, "backend cuda: cudaMemGetInfo failed");
                double frac = b->p.gpu_fraction > 0 && b->p.gpu_fraction <= 1 ? b->p.gpu_fraction : 0.9;
                double used = (double) (total_b - free_b), budget = frac * (double) total_b - used -
                                                                    (double) n_slide * slide_pb;
                if (budget < (double) full_pb * 2)
                        return cuda_errorf(reterr, -ENOMEM,
                                           "backend cuda: gpu_fraction %.2f leaves no room for KV pages "
                                           "(%.2f GiB used of %.2f GiB)", frac, used / 1073741824.0,
                                           total_b / 1073741824.0);
                n_full = (uint64_t) (budget / (double) full_pb);
                if (n_full > UINT32_MAX - 1)
                        n_full = UINT32_MAX - 1;
        }
        /* one page more in each space, outside the pool the engine sees: padding sequences of a bucket
         * graph write their K/V there */
        size_t bytes = (n_full + 1) * full_pb + (n_slide + 1) * slide_pb;
        if (dev_alloc(&b->kv_block, bytes) < 0)
                return cuda_errorf(reterr, -ENOMEM, "backend cuda: cannot allocate %.2f GiB of KV pages",
                                   bytes / 1073741824.0);
        uint8_t *kp = b->kv_block;
        size_t elt = b->p.kv_dtype == KV_DTYPE_FP8 ? 1 : 2;
        for (uint32_t l = 0; l < b->cfg.n_layers; l++) {
                struct dev_layer *D = &b->layers[l];
                uint64_t n = (D->type == LAYER_FULL ? n_full : n_slide) + 1;
                size_t one = (size_t) n * b->p.page_size * D->n_kv_heads * D->head_dim * elt;
                D->k_pages = kp;
                D->v_pages = kp + one;
                kp += 2 * one;
        }
        b->cap.n_full_pages = (uint32_t) n_full;
        b->cap.n_sliding_pages = (uint32_t) n_slide;
        b->scratch_full = (uint32_t) n_full;
        b->scratch_sliding = (uint32_t) n_slide;
        b->cap.kv_bytes = bytes;
        return 0;
}

/* ---- activations ---- */

static int alloc_activations(struct backend *b, char **reterr) {
        const struct model_config *c = &b->cfg;
        uint32_t T = b->t_max, H = c->hidden_size, V = c->vocab_size;
        size_t kv_elt = b->p.kv_dtype == KV_DTYPE_FP8 ? 1 : 2;
        uint32_t q_width = c->n_heads * b->max_d;
        uint32_t aq_width = H > q_width ? H : q_width;
        /* with BF16 weights the linears' inputs (aq, q1, q2, act, e_act) hold BF16 instead of FP8 */
        size_t ae = b->p.weights_bf16 ? 2 : 1;
        int r = 0;

        if (aq_width < b->inter)
                aq_width = b->inter;
        b->p_max = c->enable_moe ? T * b->top_k : 0;
        b->max_groups = c->enable_moe ? kern_moe_max_groups(b->p_max, c->n_experts) : 0;
        b->att_partial_floats = kern_attention_partial_floats(T, c->n_heads, b->max_d);
        uint32_t head_rows = T < HEAD_CHUNK ? T : HEAD_CHUNK;
        struct {
                void **p;
                size_t bytes;
        } a[] = {
                {(void **) &b->x, (size_t) T * H * 4},
                {(void **) &b->att_partial, b->att_partial_floats * 4},
                {(void **) &b->a_scale, (size_t) T * 4},
                {(void **) &b->s1, (size_t) T * 4},
                {(void **) &b->s2, (size_t) T * 4},
                {(void **) &b->topk_w, (size_t) T * KERNELS_MAX_TOPK * 4},
                {(void **) &b->router_logits, (size_t) T * (c->enable_moe ? c->n_experts : 1) * 4},
                {(void **) &b->e_scale, (size_t) b->p_max * 4},
                {(void **) &b->logits, (size_t) head_rows * V * 4},
                {(void **) &b->aq, (size_t) T * aq_width * ae},
                {(void **) &b->q1, (size_t) T * H * ae},
                {(void **) &b->q2, (size_t) T * H * ae},
                {(void **) &b->act, (size_t) T * b->inter * ae},
                {(void **) &b->e_act, (size_t) b->p_max * b->e_inter * ae},
                {(void **) &b->qkv, (size_t) T * b->max_qkv * 2},
                {(void **) &b->q, (size_t) T * q_width * 2},
                {(void **) &b->attn, (size_t) T * q_width * 2},
                {(void **) &b->o, (size_t) T * H * 2},
                {(void **) &b->gu, (size_t) T * 2 * b->inter * 2},
                {(void **) &b->dense_y, (size_t) T * H * 2},
                {(void **) &b->e_gu, (size_t) b->p_max * 2 * b->e_inter * 2},
                {(void **) &b->e_y, (size_t) b->p_max * H * 2},
                {(void **) &b->final_bf16, (size_t) head_rows * H * 2},
                {(void **) &b->head_tmp, (size_t) head_rows * V * 2},
                {&b->k_new, (size_t) T * b->max_kv_row * kv_elt},
                {&b->v_new, (size_t) T * b->max_kv_row * kv_elt},
                {(void **) &b->topk_idx, (size_t) T * KERNELS_MAX_TOPK * 4},
                {(void **) &b->pair_rows, (size_t) b->p_max * 4},
                {(void **) &b->n_groups, 16},
                {(void **) &b->groups, (size_t) b->max_groups * sizeof(struct kern_gemm_group)},
                {&b->moe_ws,
                 c->enable_moe ? kern_ffn_decode_workspace(b->top_k, c->n_experts, b->e_inter, b->inter) : 0},
        };
        for (size_t i = 0; i < sizeof(a) / sizeof(a[0]) && r == 0; i++)
                r = dev_alloc(a[i].p, a[i].bytes);
        if (r < 0)
                return cuda_errorf(reterr, r, "backend cuda: out of device memory for activations "
                                              "(max_batched_tokens %u)", T);
        /* the fused FFN kernel's grid barrier starts from zero and leaves itself there */
        if (!cuda_ok(cudaMemset(b->moe_ws, 0, c->enable_moe ? kern_ffn_decode_workspace(b->top_k, c->n_experts,
                                                                                        b->e_inter, b->inter)
                                                            : 16)))
                return cuda_errorf(reterr, -EIO, "backend cuda: cannot clear the MoE workspace");
        b->fused_moe = c->enable_moe && env_flag("GEMMA4D_CUDA_FUSED_FFN");
        b->prefetch = env_flag("GEMMA4D_CUDA_PREFETCH");
        b->fused_dense = !env_flag("GEMMA4D_CUDA_NO_FUSED_DENSE");
        b->fused_router = !env_flag("GEMMA4D_CUDA_NO_FUSED_ROUTER");
        b->decode_gemv = env_flag("GEMMA4D_CUDA_DECODE_GEMV");
        b->gemv_quant = env_flag("GEMMA4D_CUDA_GEMV_QUANT");
        b->pdl = !env_flag("GEMMA4D_CUDA_NO_PDL");
        b->route_decode = !env_flag("GEMMA4D_CUDA_NO_ROUTE_DECODE");
        b->gemv_head = !env_flag("GEMMA4D_CUDA_NO_GEMV_HEAD");
        b->parallel_dense = !env_flag("GEMMA4D_CUDA_NO_PARALLEL_DENSE");
        /* metadata: per token 4 ints, per sequence 8, page tables, logit rows */
        uint32_t pages_per_seq = (b->p.max_model_len + b->p.page_size - 1) / b->p.page_size + b->ring;
        b->meta_cap = (size_t) T * 5 + (size_t) b->p.max_num_seqs * (8 + pages_per_seq) + 64;
        if (!cuda_ok(cudaMallocHost((void **) &b->meta_h, b->meta_cap * 4)) ||
            dev_alloc((void **) &b->meta_d, b->meta_cap * 4) < 0)
                return cuda_errorf(reterr, -ENOMEM, "backend cuda: cannot allocate batch metadata");
        if (!cuda_ok(cudaMallocHost((void **) &b->argmax_h, (size_t) b->p.max_num_seqs * 4)) ||
            dev_alloc((void **) &b->argmax_d, (size_t) b->p.max_num_seqs * 4) < 0)
                return cuda_errorf(reterr, -ENOMEM, "backend cuda: cannot allocate greedy token buffers");
        return 0;
}

/* ---- create / destroy ---- */

static int backend_cuda_create(const struct model *m, const struct backend_params *p, struct backend **ret,
                               char **reterr) {
        struct backend *b;
        struct uploader u = {0};
        struct cudaDeviceProp prop;
        int n_dev = 0, r;

        if ((r = check_config(m, p, reterr)) < 0)
                return r;
        if (!cuda_ok(cudaGetDeviceCount(&n_dev)) || n_dev <= 0)
                return cuda_errorf(reterr, -ENODEV, "backend cuda: no CUDA device");
        if (p->gpu < 0 || p->gpu >= n_dev)
                return cuda_errorf(reterr, -ENODEV, "backend cuda: gpu %d does not exist (%d devices)", p->gpu, n_dev);
        if (!cuda_ok(cudaSetDevice(p->gpu)) || !cuda_ok(cudaGetDeviceProperties(&prop, p->gpu)))
                return cuda_errorf(reterr, -EIO, "backend cuda: cannot open gpu %d", p->gpu);
        if (prop.major < 9)
                return cuda_errorf(reterr, -ENODEV, "backend cuda: %s is sm_%d%d; the kernels need sm_90", prop.name,
                                   prop.major, prop.minor);
        b = calloc(1, sizeof(*b));
        if (!b)
                return -ENOMEM;
        b->m = m;
        b->cfg = m->cfg;
        b->p = *p;
        b->t_max = p->max_batched_tokens;
        b->layers = calloc(m->cfg.n_layers, sizeof(*b->layers));
        if (!b->layers) {
                free(b);
                return -ENOMEM;
        }
        b->ring = m->cfg.sliding_window ? (m->cfg.sliding_window + p->page_size - 1) / p->page_size + 1 : 0;
        b->top_k = m->cfg.enable_moe ? m->cfg.top_k_experts : 0;
        b->inter = m->cfg.intermediate_size;
        b->e_inter = m->cfg.enable_moe ? m->cfg.moe_intermediate_size : 0;
        if (!cuda_ok(cudaStreamCreateWithFlags(&b->stream, cudaStreamNonBlocking))) {
                r = cuda_errorf(reterr, -EIO, "backend cuda: cannot create a stream");
                goto fail;
        }
        if (!env_flag("GEMMA4D_CUDA_NO_SIDE_STREAM") &&
            (!cuda_ok(cudaStreamCreateWithFlags(&b->side, cudaStreamNonBlocking)) ||
             !cuda_ok(cudaEventCreateWithFlags(&b->side_fork, cudaEventDisableTiming)) ||
             !cuda_ok(cudaEventCreateWithFlags(&b->side_join, cudaEventDisableTiming)))) {
                r = cuda_errorf(reterr, -EIO, "backend cuda: cannot create the side stream");
                goto fail;
        }
        if ((r = kern_blas_create(&b->blas)) < 0) {
                r = cuda_errorf(reterr, r, "backend cuda: cuBLASLt init failed");
                goto fail;
        }
        if ((r = upload_init(&u, p, b->stream)) < 0) {
                r = cuda_errorf(reterr, r, "backend cuda: cannot allocate staging buffers");
                goto fail;
        }
        r = upload_weights(b, &u, reterr);
        upload_done(&u);
        if (r < 0)
                goto fail;
        for (uint32_t l = 0; l < m->cfg.n_layers; l++) {
                struct dev_layer *D = &b->layers[l];
                if (D->head_dim > b->max_d)
                        b->max_d = D->head_dim;
                if (D->n_qkv > b->max_qkv)
                        b->max_qkv = D->n_qkv;
                if (D->n_kv_heads * D->head_dim > b->max_kv_row)
                        b->max_kv_row = D->n_kv_heads * D->head_dim;
                if (D->type == LAYER_FULL)
                        b->n_full_layers++;
                else
                        b->n_sliding_layers++;
        }
        if ((r = alloc_activations(b, reterr)) < 0)
                goto fail;
        if (b->p.progress)
                b->p.progress(b->p.progress_userdata, "building the KV pool", 1.0);
        if ((r = alloc_kv(b, reterr)) < 0)
                goto fail;
        for (uint32_t l = 0; l < m->cfg.n_layers; l++) {
                struct dev_layer *D = &b->layers[l];
                const struct rope_params *rp = D->type == LAYER_FULL ? &m->cfg.rope_full : &m->cfg.rope_sliding;
                struct kern_attn_layer *A = &D->attn;
                A->n_heads = m->cfg.n_heads;
                A->n_kv_heads = D->n_kv_heads;
                A->head_dim = D->head_dim;
                A->k_eq_v = D->k_eq_v;
                A->kv_fp8 = p->kv_dtype == KV_DTYPE_FP8;
                A->page_size = p->page_size;
                A->ring = D->type == LAYER_FULL ? 0 : b->ring;
                A->window = D->type == LAYER_FULL ? 0 : m->cfg.sliding_window;
                A->rope_theta = (float) rp->theta;
                double prf = rp->partial_rotary_factor > 0 ? rp->partial_rotary_factor : 1.0;
                A->rope_pairs = (uint32_t) floor(prf * D->head_dim / 2.0);
                A->eps = m->cfg.rms_norm_eps;
                A->q_norm = D->q_norm;
                A->k_norm = D->k_norm;
                A->k_pages = D->k_pages;
                A->v_pages = D->v_pages;
        }
        if (!cuda_ok(cudaStreamSynchronize(b->stream)) || !cuda_ok(cudaGetLastError())) {
                r = cuda_errorf(reterr, -EIO, "backend cuda: device error during load");
                goto fail;
        }
        b->mid_m_max = MID_M_MAX;
        if (getenv("GEMMA4D_CUDA_MIDM_MAX")) {
                unsigned long v = strtoul(getenv("GEMMA4D_CUDA_MIDM_MAX"), NULL, 10);
                b->mid_m_max = v < KERN_MID_M_MAX ? (uint32_t) v : KERN_MID_M_MAX;
        }
        b->prof = getenv("GEMMA4D_CUDA_PROFILE") && strcmp(getenv("GEMMA4D_CUDA_PROFILE"), "0") != 0;
        for (uint32_t i = 0; b->prof && i < PROF_EVENTS; i++)
                if (!cuda_ok(cudaEventCreate(&b->prof_ev[i]))) {
                        r = cuda_errorf(reterr, -EIO, "backend cuda: cannot create profiling events");
                        goto fail;
                }
        b->graph_max = p->max_num_seqs < HEAD_CHUNK ? p->max_num_seqs : HEAD_CHUNK;
        if (b->graph_max > b->t_max)
                b->graph_max = b->t_max;
        b->use_graphs = !b->prof && !(getenv("GEMMA4D_CUDA_GRAPHS") && strcmp(getenv("GEMMA4D_CUDA_GRAPHS"), "0") == 0);
        b->graphs = calloc(b->graph_max + 1, sizeof(*b->graphs));
        b->bucket_of = calloc(b->graph_max + 1, sizeof(*b->bucket_of));
        b->pad_seqs = calloc(p->max_num_seqs, sizeof(*b->pad_seqs));
        b->greedy_on = !env_flag("GEMMA4D_CUDA_NO_GREEDY");
        if (!env_flag("GEMMA4D_CUDA_NO_SAMPLE") &&
            cuda_sampler_new(m->cfg.vocab_size, p->max_num_seqs, HEAD_CHUNK, &b->sampler) < 0) {
                r = cuda_errorf(reterr, -ENOMEM, "backend cuda: cannot allocate the device sampler");
                goto fail;
        }
        b->boot_graphs = b->use_graphs && !env_flag("GEMMA4D_CUDA_NO_BOOT_GRAPHS");
        if (!b->graphs || !b->bucket_of || !b->pad_seqs) {
                r = cuda_errorf(reterr, -ENOMEM, "backend cuda: cannot allocate decode graph buffers");
                goto fail;
        }
        if (b->boot_graphs && (r = capture_boot_graphs(b, reterr)) < 0)
                goto fail;
        b->cap.page_size = p->page_size;
        b->cap.n_sliding_ring = b->ring;
        uint64_t table_bytes = (uint64_t) m->cfg.vocab_size * m->cfg.hidden_size * 2;
        b->cap.weight_bytes = b->weight_block_bytes + (b->embed_host ? 0 : table_bytes) +
                              (b->head_bf16_own ? table_bytes : 0);
        b->cap.weight_host_bytes = b->embed_host ? table_bytes : 0;
        snprintf(b->cap.device, sizeof(b->cap.device), "%.127s", prop.name);
        *ret = b;
        return 0;
fail:
        backend_cuda_destroy(b);
        return r;
}

static void backend_cuda_destroy(struct backend *b) {
        if (!b)
                return;
        if (b->stream)
                cudaStreamSynchronize(b->stream);
        void *bufs[] = {b->x, b->router_logits, b->att_partial, b->a_scale, b->s1, b->s2, b->topk_w, b->e_scale, b->logits, b->aq,
                        b->q1, b->q2, b->act, b->e_act, b->qkv, b->q, b->attn, b->o, b->gu, b->dense_y, b->e_gu,
                        b->e_y, b->final_bf16, b->head_tmp, b->k_new, b->v_new, b->topk_idx, b->pair_rows,
                        b->n_groups, b->groups, b->moe_ws, b->meta_d, b->argmax_d, b->weight_block, b->kv_block,
                        b->embed_host ? NULL : b->embed, b->final_norm, b->head_bf16_own};
        for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
                if (bufs[i])
                        cudaFree(bufs[i]);
        if (b->meta_h)
                cudaFreeHost(b->meta_h);
        if (b->argmax_h)
                cudaFreeHost(b->argmax_h);
        if (b->embed_host && b->embed)
                cudaFreeHost(b->embed);
        for (uint32_t i = 0; b->graphs && i <= b->graph_max; i++)
                if (b->graphs[i])
                        cudaGraphExecDestroy(b->graphs[i]);
        cuda_sampler_free(b->sampler);
        free(b->graphs);
        free(b->bucket_of);
        free(b->pad_seqs);
        for (uint32_t i = 0; i < PROF_EVENTS; i++)
                if (b->prof_ev[i])
                        cudaEventDestroy(b->prof_ev[i]);
        if (b->layers) {
                for (uint32_t l = 0; l < b->cfg.n_layers; l++) {
                        struct dev_layer *D = &b->layers[l];
                        uint16_t *v[] = {D->input_ln, D->post_attn_ln, D->pre_ff, D->post_ff, D->pre_ff2, D->post_ff1,
                                         D->post_ff2, D->q_norm, D->k_norm, D->router_proj, D->router_scale,
                                         D->router_pes};
                        for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
                                if (v[i])
                                        cudaFree(v[i]);
                }
                free(b->layers);
        }
        kern_blas_destroy(b->blas);
        if (b->stream)
                cudaStreamDestroy(b->stream);
        if (b->side)
                cudaStreamDestroy(b->side);
        if (b->side_fork)
                cudaEventDestroy(b->side_fork);
        if (b->side_join)
                cudaEventDestroy(b->side_join);
        free(b);
}

static void backend_cuda_get_capacity(struct backend *b, struct backend_capacity *ret) {
        *ret = b->cap;
}

/* ---- forward ---- */

static int linear_on(struct backend *b, cudaStream_t st, const struct dev_linear *L, const uint8_t *x,
                     const float *xs, uint32_t m, uint16_t *y) {
        if (b->decode_gemv && kern_gemv_decode_supported(L->n_out, L->k, m))
                return kern_gemv_decode(L->w, L->scale, L->n_out, L->k, x, NULL, xs, m, y, KERN_OUT_BF16, 0.0f,
                                        b->pdl && st == b->stream, st);
        if (m <= SMALL_M_MAX || L->n_out % 8 != 0 || L->k % 16 != 0)
                return kern_fp8_linear_small(L->w, L->scale, L->n_out, L->k, x, xs, m, y, KERN_OUT_BF16, 0.0f, st);
        if (m <= b->mid_m_max) {
                int r = kern_fp8_linear_mid(L->w, L->scale, L->n_out, L->k, x, xs, m, y, KERN_OUT_BF16, 0.0f, st);
                if (r == 0)
                        return 0;
                log_error("mid-M FP8 linear n=%u k=%u m=%u failed (%d), using cuBLASLt", L->n_out, L->k, m, r);
        }
        int r = kern_blas_fp8_linear(b->blas, L->w, L->scale, L->n_out, L->k, x, xs, m, y, st);
        if (r < 0) {
                log_error("%s", kern_blas_last_error(b->blas));
                /* the tensor-core small-M kernel takes any M; slower for big batches but correct */
                return kern_fp8_linear_small(L->w, L->scale, L->n_out, L->k, x, xs, m, y, KERN_OUT_BF16, 0.0f, st);
        }
        return 0;
}

static int linear(struct backend *b, const struct dev_linear *L, const uint8_t *x, const float *xs, uint32_t m,
                  uint16_t *y) {
        return linear_on(b, b->stream, L, x, xs, m, y);
}

/* A batch the backend cannot run is refused before anything reaches the device; the log says why (the
 * engine builds batches, so any of these is an engine bug, not a client's). */
static int bad_batch(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int bad_batch(const char *fmt, ...) {
        char msg[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        log_error("backend cuda: batch refused: %s", msg);
        return -EINVAL;
}

static int validate_batch(struct backend *b, const struct backend_batch *batch, uint32_t *ret_tokens) {
        uint32_t T = 0, B = b->p.page_size;
        size_t meta = 0;

        if (!batch || batch->n_seqs == 0 || batch->n_seqs > b->p.max_num_seqs)
                return bad_batch("%u sequences (1..%u)", batch ? batch->n_seqs : 0, b->p.max_num_seqs);
        for (uint32_t s = 0; s < batch->n_seqs; s++) {
                const struct backend_seq *q = &batch->seqs[s];
                uint64_t end = (uint64_t) q->pos + q->n_tokens;
                if (q->n_tokens == 0 || !q->tokens || end > b->p.max_model_len)
                        return bad_batch("sequence %u: %u tokens at position %u (max_model_len %u)", s, q->n_tokens,
                                         q->pos, b->p.max_model_len);
                for (uint32_t i = 0; i < q->n_tokens; i++)
                        if (q->tokens[i] < 0 || (uint32_t) q->tokens[i] >= b->cfg.vocab_size)
                                return bad_batch("sequence %u: token id %d outside the vocabulary (%u)", s,
                                                 q->tokens[i], b->cfg.vocab_size);
                uint64_t need_full = (end + B - 1) / B;
                if (b->n_full_layers) {
                        if (!q->full_pages || q->n_full_pages < need_full)
                                return bad_batch("sequence %u: %u full pages for %llu positions", s,
                                                 q->n_full_pages, (unsigned long long) end);
                        for (uint64_t i = 0; i < need_full; i++)
                                if (q->full_pages[i] >= b->cap.n_full_pages)
                                        return bad_batch("sequence %u: full page id %u (pool %u)", s,
                                                         q->full_pages[i], b->cap.n_full_pages);
                }
                if (b->n_sliding_layers) {
                        uint64_t need = need_full < b->ring ? need_full : b->ring;
                        if (!q->sliding_pages || q->n_sliding_pages < need)
                                return bad_batch("sequence %u: %u sliding pages, %llu needed", s,
                                                 q->n_sliding_pages, (unsigned long long) need);
                        for (uint64_t i = 0; i < need; i++)
                                if (q->sliding_pages[i] >= b->cap.n_sliding_pages)
                                        return bad_batch("sequence %u: sliding page id %u (pool %u)", s,
                                                         q->sliding_pages[i], b->cap.n_sliding_pages);
                }
                T += q->n_tokens;
                meta += need_full + b->ring;
        }
        if (T > b->t_max)
                return bad_batch("%u tokens (max_batched_tokens %u)", T, b->t_max);
        meta += (size_t) T * 5 + (size_t) batch->n_seqs * 8;
        if (meta > b->meta_cap)
                return bad_batch("page tables too long (%zu entries, room for %zu)", meta, b->meta_cap);
        *ret_tokens = T;
        return 0;
}

#define TRY(x)                                                                                               \
        do {                                                                                                 \
                int r_ = (x);                                                                                \
                if (r_ < 0)                                                                                  \
                        return r_;                                                                           \
        } while (0)

/* The stream for work off the critical path of a decode step: the side stream, forked from the main
 * stream's current point; the main stream itself when there is no side stream. */
static cudaStream_t side_fork(struct backend *b, uint32_t T) {
        if (!b->side || T > SMALL_M_MAX)
                return b->stream;
        if (!cuda_ok(cudaEventRecord(b->side_fork, b->stream)) ||
            !cuda_ok(cudaStreamWaitEvent(b->side, b->side_fork, 0)))
                return NULL;
        b->side_pending = true;
        return b->side;
}

/* The main stream waits for everything forked so far. */
static int side_join(struct backend *b) {
        if (!b->side_pending)
                return 0;
        b->side_pending = false;
        if (!cuda_ok(cudaEventRecord(b->side_join, b->side)) ||
            !cuda_ok(cudaStreamWaitEvent(b->stream, b->side_join, 0)))
                return -EIO;
        return 0;
}

static size_t linear_size(const struct dev_linear *L) {
        return (size_t) L->n_out * L->k;
}

/* Decode steps read every weight once and have latency-bound stretches between the GEMMs (norms, top-k,
 * attention over a short context): these ask L2 for the weights of the GEMMs after such a stretch. */
static int prefetch_after_qkv(struct backend *b, const struct dev_layer *D, uint32_t T) {
        if (!b->prefetch || T > SMALL_M_MAX)
                return 0;
        struct kern_prefetch pf = {{D->o.w, D->gate_up.w, D->down.w, D->router_proj},
                                   {linear_size(&D->o), linear_size(&D->gate_up), linear_size(&D->down),
                                    D->router_proj ? (size_t) b->cfg.n_experts * b->cfg.hidden_size * 2 : 0}};
        cudaStream_t st = side_fork(b, T);
        int r = st ? kern_l2_prefetch(&pf, st) : -EIO;
        prof_mark(b, P_PREFETCH);
        return r;
}

static int prefetch_next_qkv(struct backend *b, uint32_t l, uint32_t T) {
        if (!b->prefetch || T > SMALL_M_MAX || l + 1 >= b->cfg.n_layers)
                return 0;
        const struct dev_layer *N = &b->layers[l + 1];
        struct kern_prefetch pf = {{N->qkv.w}, {linear_size(&N->qkv)}};
        cudaStream_t st = side_fork(b, T);
        int r = st ? kern_l2_prefetch(&pf, st) : -EIO;
        prof_mark(b, P_PREFETCH);
        return r;
}

static int run_layers(struct backend *b, uint32_t T, const int32_t *d_tokens, const struct kern_batch *bt_full,
                      const struct kern_batch *bt_slide) {
        if (b->p.weights_bf16)
                return run_layers_bf16(b, T, d_tokens, bt_full, bt_slide);
        const struct model_config *c = &b->cfg;
        uint32_t H = c->hidden_size, P = T * b->top_k;
        float eps = c->rms_norm_eps;
        float embed_scale = (float) sqrt((double) H);
        /* HF multiplies by the embedding scale cast to the weight dtype: BF16(sqrt(H)) */
        {
                uint32_t u;
                memcpy(&u, &embed_scale, 4);
                u += 0x7fffu + ((u >> 16) & 1);
                u &= 0xffff0000u;
                memcpy(&embed_scale, &u, 4);
        }
        TRY(kern_embed(b->embed, d_tokens, T, H, c->vocab_size, embed_scale, b->x, b->layers[0].input_ln, eps, b->aq,
                       b->a_scale, b->stream));
        prof_mark(b, P_EMBED);
        for (uint32_t l = 0; l < c->n_layers; l++) {
                struct dev_layer *D = &b->layers[l];
                const struct kern_batch *bt = D->type == LAYER_FULL ? bt_full : bt_slide;
                uint32_t qw = c->n_heads * D->head_dim;

                TRY(linear(b, &D->qkv, b->aq, b->a_scale, T, b->qkv));
                prof_mark(b, P_QKV);
                TRY(prefetch_after_qkv(b, D, T));
                /* the previous layer's KV commit (side stream) read k_new / v_new: done before they change */
                TRY(side_join(b));
                TRY(kern_qkv_post(b->qkv, bt, &D->attn, b->q, b->k_new, b->v_new, b->stream));
                prof_mark(b, P_QKV_POST);
                TRY(kern_attention(b->q, b->k_new, b->v_new, bt, &D->attn, b->att_partial, b->att_partial_floats,
                                   b->attn, b->stream));
                prof_mark(b, P_ATTN);
                {
                        cudaStream_t st = side_fork(b, T);
                        TRY(st ? kern_kv_commit(b->k_new, b->v_new, bt, &D->attn, st) : -EIO);
                        prof_mark(b, P_KV);
                }
                if (b->decode_gemv && b->gemv_quant && kern_gemv_decode_supported(D->o.n_out, D->o.k, T) &&
                    D->o.k == qw) {
                        /* the attention output is quantized inside the GEMV */
                        TRY(kern_gemv_decode(D->o.w, D->o.scale, D->o.n_out, D->o.k, NULL, b->attn, NULL, T, b->o,
                                             KERN_OUT_BF16, 0.0f, false, b->stream));
                        prof_mark(b, P_O);
                } else {
                        TRY(kern_quant_rows(b->attn, T, qw, b->aq, b->a_scale, b->stream));
                        prof_mark(b, P_OQ);
                        TRY(linear(b, &D->o, b->aq, b->a_scale, T, b->o));
                        prof_mark(b, P_O);
                }
                TRY(kern_post_attn(b->x, b->o, T, H, eps, D->post_attn_ln, D->pre_ff, b->q1, b->s1, D->pre_ff2, b->q2,
                                   b->s2, c->enable_moe ? D->router_scale : NULL, b->stream));
                prof_mark(b, P_POST);
                /* decode steps: the router, the dense MLP and the experts in one launch */
                bool fused = c->enable_moe && b->fused_moe &&
                             kern_ffn_decode_supported(T, b->top_k, c->n_experts, H, b->e_inter, b->inter);
                /* decode steps: router and grouping in one launch */
                bool route_once = c->enable_moe && !fused && b->route_decode && T <= SMALL_M_MAX &&
                                  kern_route_decode_supported(T, c->n_experts, b->top_k);
                if (c->enable_moe && !(fused && b->fused_router)) {
                        struct kern_router rt = {D->router_proj, D->router_pes, c->n_experts, b->top_k};
                        if (route_once)
                                TRY(kern_route_decode(b->o, T, H, &rt, b->router_logits, b->topk_idx, b->topk_w,
                                                      b->pair_rows, b->groups, b->n_groups, b->moe_ws, b->pdl,
                                                      b->stream));
                        else
                                TRY(kern_router(b->o, T, H, &rt, b->router_logits, b->topk_idx, b->topk_w,
                                                b->stream));
                        prof_mark(b, P_ROUTER);
                }
                if (!fused || !b->fused_dense) {
                        /* decode steps: the dense MLP beside the router and experts (same input, joined
                         * before the combine) */
                        cudaStream_t st = c->enable_moe && b->parallel_dense ? side_fork(b, T) : b->stream;
                        TRY(st ? linear_on(b, st, &D->gate_up, b->q1, b->s1, T, b->gu) : -EIO);
                        prof_mark(b, P_DGU);
                        TRY(kern_geglu_quant(b->gu, T, b->inter, b->act, b->s1, st));
                        prof_mark(b, P_DACT);
                        TRY(linear_on(b, st, &D->down, b->act, b->s1, T, b->dense_y));
                        prof_mark(b, P_DDOWN);
                }
                if (fused) {
                        struct kern_ffn_decode fa = {
                                .w_gate_up = D->e_gate_up.w, .w_down = D->e_down.w, .s_gate_up = D->e_gate_up.scale,
                                .s_down = D->e_down.scale, .n_experts = c->n_experts, .hidden = H,
                                .inter = b->e_inter, .n_tokens = T, .top_k = b->top_k, .x = b->q2, .x_scale = b->s2,
                                .topk_idx = b->topk_idx, .topk_w = b->topk_w, .y = b->e_y,
                                .dense_w_gate_up = D->gate_up.w,
                                .dense_w_down = D->down.w, .dense_s_gate_up = D->gate_up.scale,
                                .dense_s_down = D->down.scale, .dense_inter = b->inter, .dense_x = b->q1,
                                .dense_x_scale = b->s1, .dense_y = b->dense_y, .workspace = b->moe_ws,
                                .pdl = b->pdl,
                                /* R3: the L2 prefetches inside cost more than they saved */
                                .flags = KERN_FFN_DECODE_NO_DOWN_PREFETCH | KERN_FFN_DECODE_NO_ITEM_PREFETCH};
                        if (!b->fused_dense)
                                fa.dense_w_gate_up = NULL;
                        if (b->fused_router) {
                                fa.router_in = b->o;
                                fa.router_proj = D->router_proj;
                                fa.router_per_expert_scale = D->router_pes;
                        }
                        TRY(kern_ffn_decode(&fa, b->stream));
                        prof_mark(b, P_EFUSED);
                }
                if (c->enable_moe && !fused) {
                        uint32_t I = b->e_inter;
                        uint32_t maxg = kern_moe_max_groups(P, c->n_experts);
                        if (!route_once)
                                TRY(kern_moe_route(b->topk_idx, P, c->n_experts, b->pair_rows, b->groups, b->n_groups,
                                                   b->stream));
                        prof_mark(b, P_ROUTE);
                        TRY(kern_fp8_linear_grouped(D->e_gate_up.w, D->e_gate_up.scale, 2 * I, H, b->q2, b->s2,
                                                    b->top_k, b->pair_rows, b->groups, b->n_groups, maxg, T < 64 ? T : 64,
                                                    b->e_gu, b->stream));
                        prof_mark(b, P_EGU);
                        TRY(kern_geglu_quant(b->e_gu, P, I, b->e_act, b->e_scale, b->stream));
                        prof_mark(b, P_EACT);
                        TRY(kern_fp8_linear_grouped(D->e_down.w, D->e_down.scale, H, I, b->e_act, b->e_scale, 1,
                                                    b->pair_rows, b->groups, b->n_groups, maxg, T < 64 ? T : 64, b->e_y,
                                                    b->stream));
                        prof_mark(b, P_EDOWN);
                }
                TRY(side_join(b));
                TRY(prefetch_next_qkv(b, l, T));
                const uint16_t *next = l + 1 < c->n_layers ? b->layers[l + 1].input_ln : NULL;
                TRY(kern_ffn_combine(b->x, b->dense_y, c->enable_moe ? b->e_y : NULL, b->topk_w, b->top_k, T, H, eps,
                                     D->post_ff1, D->post_ff2, D->post_ff, D->layer_scalar, next, b->aq, b->a_scale,
                                     b->stream));
                prof_mark(b, P_COMBINE);
        }
        return side_join(b);
}

/* Final norm + LM head + softcap for n_rows gathered rows into dst (host memory). When `capture` is set the
 * rows fit one chunk and stay in b->logits: the caller copies them out after the graph ran (straight into
 * its buffer, which is fastest when that buffer is page-locked). With `argmax` nothing is copied: each
 * chunk's rows are reduced to their greedy token in b->argmax_d, which the caller copies out. */
static int lm_head(struct backend *b, const int32_t *d_rows, uint32_t n_rows, float *dst, bool capture,
                   bool argmax) {
        const struct model_config *c = &b->cfg;
        uint32_t H = c->hidden_size, V = c->vocab_size;
        float cap = c->final_logit_softcapping;

        for (uint32_t r0 = 0; r0 < n_rows; r0 += HEAD_CHUNK) {
                uint32_t nr = n_rows - r0 < HEAD_CHUNK ? n_rows - r0 : HEAD_CHUNK;
                if (b->head_w) {
                        TRY(kern_rmsnorm_rows(b->x, d_rows + r0, b->final_norm, nr, H, c->rms_norm_eps, b->aq,
                                              b->a_scale, NULL, b->stream));
                        prof_mark(b, P_HNORM);
                        /* the decode GEMV streams the 738 MB head at 2.5 TB/s vs 2.0 (H100, R1) */
                        if ((b->gemv_head || b->decode_gemv) && kern_gemv_decode_supported(V, H, nr)) {
                                TRY(kern_gemv_decode(b->head_w, b->head_scale, V, H, b->aq, NULL, b->a_scale, nr,
                                                     b->logits, KERN_OUT_F32_SOFTCAP, cap, b->pdl, b->stream));
                        } else if (nr <= SMALL_M_MAX || H % 16 != 0) {
                                TRY(kern_fp8_linear_small(b->head_w, b->head_scale, V, H, b->aq, b->a_scale, nr,
                                                          b->logits, KERN_OUT_F32_SOFTCAP, cap, b->stream));
                        } else if (nr <= b->mid_m_max) {
                                TRY(kern_fp8_linear_mid(b->head_w, b->head_scale, V, H, b->aq, b->a_scale, nr,
                                                        b->logits, KERN_OUT_F32_SOFTCAP, cap, b->stream));
                        } else {
                                TRY(kern_blas_fp8_linear(b->blas, b->head_w, b->head_scale, V, H, b->aq, b->a_scale,
                                                         nr, b->head_tmp, b->stream));
                                TRY(kern_softcap(b->head_tmp, b->logits, (size_t) nr * V, cap, b->stream));
                        }
                } else {
                        TRY(kern_rmsnorm_rows(b->x, d_rows + r0, b->final_norm, nr, H, c->rms_norm_eps, NULL, NULL,
                                              b->final_bf16, b->stream));
                        prof_mark(b, P_HNORM);
                        TRY(cuda_bf16_head(b->blas, b->head_bf16, V, H, b->final_bf16, nr, b->logits, cap,
                                           b->stream));
                }
                prof_mark(b, P_HEAD);
                if (argmax) {
                        TRY(kern_argmax_rows(b->logits, nr, V, b->argmax_d + r0, b->stream));
                        prof_mark(b, P_COPY);
                        continue;
                }
                if (b->sampling && !capture) {
                        TRY(cuda_sampler_enqueue(b->sampler, b->logits, r0, nr, b->stream));
                        prof_mark(b, P_COPY);
                        continue;
                }
                if (capture)
                        return 0;
                if (!cuda_ok(cudaMemcpyAsync(dst + (size_t) r0 * V, b->logits, (size_t) nr * V * 4,
                                             cudaMemcpyDeviceToHost, b->stream)) ||
                    !cuda_ok(cudaStreamSynchronize(b->stream)))
                        return -EIO;
                prof_mark(b, P_COPY);
        }
        return 0;
}

/* ---- BF16 weights (cuda.weights bf16; docs/cuda-backend.md "BF16 weights") ----
 * run_layers with BF16 x BF16 linears on BF16 activations (cuda-bf16.c picks the kernels). The buffers that
 * hold FP8 activations in run_layers (aq, q1, q2, act, e_act) hold BF16 here, allocated twice as large; where
 * run_layers gets a linear's input quantized from a fused kernel, this loop writes bf16(RMSNorm(x)) with one
 * more row kernel. A separate loop, so that FP8-only paths of run_layers never see BF16 weights. */

static int norm_bf16(struct backend *b, const uint16_t *w, uint32_t T, uint8_t *dst) {
        return kern_rmsnorm_rows(b->x, NULL, w, T, b->cfg.hidden_size, b->cfg.rms_norm_eps, NULL, NULL,
                                 (uint16_t *) (void *) dst, b->stream);
}

static int run_layers_bf16(struct backend *b, uint32_t T, const int32_t *d_tokens, const struct kern_batch *bt_full,
                           const struct kern_batch *bt_slide) {
        const struct model_config *c = &b->cfg;
        uint32_t H = c->hidden_size, P = T * b->top_k, I = b->e_inter;
        const uint16_t *in = (const uint16_t *) (void *) b->aq, *in1 = (const uint16_t *) (void *) b->q1,
                       *in2 = (const uint16_t *) (void *) b->q2;
        uint16_t *act = (uint16_t *) (void *) b->act, *e_act = (uint16_t *) (void *) b->e_act;
        cudaStream_t st = b->stream;

        TRY(kern_embed(b->embed, d_tokens, T, H, c->vocab_size, cuda_bf16_embed_scale(H), b->x, NULL,
                       c->rms_norm_eps, NULL, NULL, st));
        TRY(norm_bf16(b, b->layers[0].input_ln, T, b->aq));
        prof_mark(b, P_EMBED);
        for (uint32_t l = 0; l < c->n_layers; l++) {
                struct dev_layer *D = &b->layers[l];
                const struct kern_batch *bt = D->type == LAYER_FULL ? bt_full : bt_slide;

                TRY(cuda_bf16_linear(b->blas, &D->qkv, in, T, b->qkv, st));
                prof_mark(b, P_QKV);
                TRY(kern_qkv_post(b->qkv, bt, &D->attn, b->q, b->k_new, b->v_new, st));
                prof_mark(b, P_QKV_POST);
                TRY(kern_attention(b->q, b->k_new, b->v_new, bt, &D->attn, b->att_partial, b->att_partial_floats,
                                   b->attn, st));
                prof_mark(b, P_ATTN);
                TRY(kern_kv_commit(b->k_new, b->v_new, bt, &D->attn, st));
                prof_mark(b, P_KV);
                TRY(cuda_bf16_linear(b->blas, &D->o, b->attn, T, b->o, st));
                prof_mark(b, P_O);
                /* residual and router input as in run_layers; its FP8 copies of the FFN inputs go unused */
                TRY(kern_post_attn(b->x, b->o, T, H, c->rms_norm_eps, D->post_attn_ln, D->pre_ff, b->q1, b->s1,
                                   D->pre_ff2, b->q2, b->s2, c->enable_moe ? D->router_scale : NULL, st));
                TRY(norm_bf16(b, D->pre_ff, T, b->q1));
                if (c->enable_moe)
                        TRY(norm_bf16(b, D->pre_ff2, T, b->q2));
                prof_mark(b, P_POST);
                if (c->enable_moe) {
                        struct kern_router rt = {D->router_proj, D->router_pes, c->n_experts, b->top_k};
                        TRY(kern_router(b->o, T, H, &rt, b->router_logits, b->topk_idx, b->topk_w, st));
                        prof_mark(b, P_ROUTER);
                }
                TRY(cuda_bf16_linear(b->blas, &D->gate_up, in1, T, b->gu, st));
                prof_mark(b, P_DGU);
                TRY(kern_geglu_bf16(b->gu, T, b->inter, act, st));
                prof_mark(b, P_DACT);
                TRY(cuda_bf16_linear(b->blas, &D->down, act, T, b->dense_y, st));
                prof_mark(b, P_DDOWN);
                if (c->enable_moe) {
                        uint32_t maxg = kern_moe_max_groups(P, c->n_experts), max_rows = T < 64 ? T : 64;
                        TRY(kern_moe_route(b->topk_idx, P, c->n_experts, b->pair_rows, b->groups, b->n_groups, st));
                        prof_mark(b, P_ROUTE);
                        TRY(kern_bf16_linear_grouped((const uint16_t *) (void *) D->e_gate_up.w, 2 * I, H, in2,
                                                     b->top_k, b->pair_rows, b->groups, b->n_groups, maxg, max_rows,
                                                     b->e_gu, st));
                        prof_mark(b, P_EGU);
                        TRY(kern_geglu_bf16(b->e_gu, P, I, e_act, st));
                        prof_mark(b, P_EACT);
                        TRY(kern_bf16_linear_grouped((const uint16_t *) (void *) D->e_down.w, H, I, e_act, 1,
                                                     b->pair_rows, b->groups, b->n_groups, maxg, max_rows, b->e_y,
                                                     st));
                        prof_mark(b, P_EDOWN);
                }
                TRY(kern_ffn_combine(b->x, b->dense_y, c->enable_moe ? b->e_y : NULL, b->topk_w, b->top_k, T, H,
                                     c->rms_norm_eps, D->post_ff1, D->post_ff2, D->post_ff, D->layer_scalar, NULL,
                                     NULL, NULL, st));
                if (l + 1 < c->n_layers)
                        TRY(norm_bf16(b, b->layers[l + 1].input_ln, T, b->aq));
                prof_mark(b, P_COMBINE);
        }
        return 0;
}

/* The device work of one step: metadata upload, layers, head. */
static int enqueue_step(struct backend *b, uint32_t T, uint32_t n_rows, size_t n_meta, const int32_t *off,
                        uint32_t max_full, uint32_t max_win, float *dst, bool capture, bool argmax) {
        int32_t *d = b->meta_d;
        uint32_t S = (uint32_t) off[7];
        if (!cuda_ok(cudaMemcpyAsync(b->meta_d, b->meta_h, n_meta * 4, cudaMemcpyHostToDevice, b->stream)))
                return -EIO;
        struct kern_batch bt_full = {d + off[1], d + off[2], d + off[4], d + off[5], d + off[6], d + off[8],
                                     d + off[10], T, S, max_full};
        struct kern_batch bt_slide = bt_full;
        bt_slide.seq_table0 = d + off[9];
        bt_slide.max_keys = max_win;
        TRY(run_layers(b, T, d + off[0], &bt_full, &bt_slide));
        return lm_head(b, d + off[3], n_rows, dst, capture, argmax);
}

/* The greedy tokens of a step (enqueued on the stream) to the caller, through the page-locked buffer. */
static int fetch_tokens(struct backend *b, uint32_t S, int32_t *ret_tokens) {
        if (!cuda_ok(cudaMemcpyAsync(b->argmax_h, b->argmax_d, (size_t) S * 4, cudaMemcpyDeviceToHost, b->stream)) ||
            !cuda_ok(cudaStreamSynchronize(b->stream)))
                return -EIO;
        memcpy(ret_tokens, b->argmax_h, (size_t) S * 4);
        return 0;
}

/* Metadata layout: tokens | tok_seq | tok_pos | rows | seq_row0 | seq_pos0 | seq_ntok | tab0_full | tab0_slide |
 * tables. The offsets depend on T and S only, so a decode graph keeps seeing the right places. */
static void meta_offsets(uint32_t T, uint32_t S, int32_t off[11]) {
        off[0] = 0;                     /* tokens */
        off[1] = (int32_t) T;           /* tok_seq */
        off[2] = 2 * (int32_t) T;       /* tok_pos */
        off[3] = 3 * (int32_t) T;       /* rows */
        off[4] = 4 * (int32_t) T;       /* seq_row0 */
        off[5] = off[4] + (int32_t) S;  /* seq_pos0 */
        off[6] = off[5] + (int32_t) S;  /* seq_ntok */
        off[7] = (int32_t) S;           /* (count, not an offset) */
        off[8] = off[6] + (int32_t) S;  /* tab0_full */
        off[9] = off[8] + (int32_t) S;  /* tab0_slide */
        off[10] = off[9] + (int32_t) S; /* tables */
}

/* Capture the decode graph of T one-token sequences into b->graphs[T]: shape bounds instead of a step's
 * lengths, and the metadata copy at its largest size, so that any later step of T sequences fits. */
static int capture_graph(struct backend *b, uint32_t T) {
        int32_t off[11];
        uint32_t full_bound = b->p.max_model_len;
        uint32_t win_bound = b->cfg.sliding_window && b->cfg.sliding_window < full_bound ? b->cfg.sliding_window
                                                                                          : full_bound;
        cudaGraph_t g = NULL;
        cudaGraphExec_t ex = NULL;

        meta_offsets(T, T, off);
        if (!cuda_ok(cudaStreamBeginCapture(b->stream, cudaStreamCaptureModeRelaxed))) {
                cudaGetLastError();
                return -EIO;
        }
        int r = enqueue_step(b, T, T, b->meta_cap, off, full_bound, win_bound, NULL, true, b->greedy_on);
        cudaError_t ce = cudaStreamEndCapture(b->stream, &g);
        if (r < 0 || ce != cudaSuccess || !cuda_ok(cudaGraphInstantiate(&ex, g, 0))) {
                if (g)
                        cudaGraphDestroy(g);
                cudaGetLastError();
                return r < 0 ? r : -EIO;
        }
        cudaGraphDestroy(g);
        b->graphs[T] = ex;
        return 0;
}

/* Decode batch sizes that get a graph at boot: every size up to 8 (padding a small batch would read more
 * experts' weights), then buckets; graph_max itself closes the list. */
static const uint16_t graph_buckets[] = {1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128,
                                         160, 192, 224, 256};

static int capture_boot_graphs(struct backend *b, char **reterr) {
        uint16_t sizes[sizeof(graph_buckets) / sizeof(graph_buckets[0]) + 1];
        uint32_t K = 0;
        char phase[64];

        for (size_t i = 0; i < sizeof(graph_buckets) / sizeof(graph_buckets[0]); i++)
                if (graph_buckets[i] <= b->graph_max)
                        sizes[K++] = graph_buckets[i];
        if (K == 0 || sizes[K - 1] != b->graph_max)
                sizes[K++] = (uint16_t) b->graph_max;
        for (uint32_t k = 0, S = 1; k < K; k++)
                for (; S <= sizes[k]; S++)
                        b->bucket_of[S] = sizes[k];
        for (uint32_t k = 0; k < K; k++) {
                if (b->p.progress) {
                        snprintf(phase, sizeof(phase), "capturing graphs %u/%u", k + 1, K);
                        b->p.progress(b->p.progress_userdata, phase, 1.0);
                }
                int r = capture_graph(b, sizes[k]);
                if (r == 0 && !cuda_ok(cudaGraphUpload(b->graphs[sizes[k]], b->stream)))
                        r = -EIO;
                if (r < 0) {
                        /* not fatal: the daemon serves eagerly, like GEMMA4D_CUDA_GRAPHS=0 */
                        log_warning("backend cuda: capturing the decode graph for %u sequences failed (%s); "
                                    "running without graphs", sizes[k], cudaGetErrorString(cudaGetLastError()));
                        b->use_graphs = b->boot_graphs = false;
                        break;
                }
        }
        if (!cuda_ok(cudaStreamSynchronize(b->stream)) || !cuda_ok(cudaGetLastError()))
                return cuda_errorf(reterr, -EIO, "backend cuda: device error while capturing decode graphs");
        log_info("backend cuda: %u decode graphs captured (batch sizes up to %u)%s", b->use_graphs ? K : 0,
                 b->graph_max, b->greedy_on ? ", greedy argmax included" : "");
        return 0;
}

/* A decode step of S sequences on a bucket graph of G > S: the step's sequences, then G - S padding
 * sequences (token 0 at position 0 in the scratch pages, which no real sequence uses). Their rows come
 * after every real row, and nothing reads them. */
static const struct backend_seq *pad_batch(struct backend *b, const struct backend_batch *batch, uint32_t G) {
        memcpy(b->pad_seqs, batch->seqs, sizeof(*batch->seqs) * batch->n_seqs);
        static const int32_t pad_token = 0;
        for (uint32_t s = batch->n_seqs; s < G; s++)
                b->pad_seqs[s] = (struct backend_seq){.tokens = &pad_token, .n_tokens = 1, .pos = 0,
                                                      .full_pages = &b->scratch_full, .n_full_pages = 1,
                                                      .sliding_pages = &b->scratch_sliding,
                                                      .n_sliding_pages = 1};
        return b->pad_seqs;
}

/* One step: logits to the host (forward), or with ret_tokens each sequence's greedy token (forward_greedy). */
static int cuda_step(struct backend *b, const struct backend_batch *batch, float *logits, int32_t *ret_tokens) {
        uint32_t T = 0, S, n_rows, max_pos = 0, max_win = 0, real_rows, real_seqs;
        bool decode = true, argmax = ret_tokens != NULL, sampling = b->sampling;
        const struct backend_seq *seqs = batch ? batch->seqs : NULL;
        int r;

        if (b->lost)
                return -EIO;
        if ((r = validate_batch(b, batch, &T)) < 0)
                return r;
        S = real_seqs = batch->n_seqs;
        n_rows = real_rows = backend_rows_for(batch);
        if (argmax && n_rows != S)
                return bad_batch("forward_greedy with all_logits sequences");
        if (sampling && n_rows != S)
                return bad_batch("forward_sample with all_logits sequences");
        for (uint32_t s = 0; s < S; s++)
                decode &= seqs[s].n_tokens == 1;
        bool use_graph = decode && b->use_graphs && !b->prof && T <= b->graph_max && (!argmax || b->greedy_on);
        /* pad only onto a graph that exists: an eager step never sees padding (its rows would be copied) */
        if (use_graph && b->boot_graphs && b->bucket_of[S] > S && b->graphs[b->bucket_of[S]]) {
                uint32_t G = b->bucket_of[S];
                seqs = pad_batch(b, batch, G);
                T = S = n_rows = G;
        }

        int32_t *h = b->meta_h;
        int32_t off[11];
        meta_offsets(T, S, off);
        int32_t *tokens = h + off[0], *tok_seq = h + off[1], *tok_pos = h + off[2], *rows = h + off[3];
        int32_t *seq_row0 = h + off[4], *seq_pos0 = h + off[5], *seq_ntok = h + off[6];
        int32_t *tab0_full = h + off[8], *tab0_slide = h + off[9], *tab = h + off[10];
        uint32_t t = 0, nr = 0, ntab = 0;
        for (uint32_t s = 0; s < S; s++) {
                const struct backend_seq *q = &seqs[s];
                seq_row0[s] = (int32_t) t;
                seq_pos0[s] = (int32_t) q->pos;
                seq_ntok[s] = (int32_t) q->n_tokens;
                for (uint32_t i = 0; i < q->n_tokens; i++, t++) {
                        tokens[t] = q->tokens[i];
                        tok_seq[t] = (int32_t) s;
                        tok_pos[t] = (int32_t) (q->pos + i);
                        if (q->all_logits || i + 1 == q->n_tokens)
                                rows[nr++] = (int32_t) t;
                }
                uint32_t end = q->pos + q->n_tokens;
                if (end > max_pos)
                        max_pos = end;
                uint32_t win = b->cfg.sliding_window && end > b->cfg.sliding_window ? b->cfg.sliding_window : end;
                if (win > max_win)
                        max_win = win;
                uint32_t nf = (end + b->p.page_size - 1) / b->p.page_size;
                tab0_full[s] = (int32_t) ntab;
                for (uint32_t i = 0; b->n_full_layers && i < nf; i++)
                        tab[ntab++] = (int32_t) q->full_pages[i];
                tab0_slide[s] = (int32_t) ntab;
                uint32_t ns = nf < b->ring ? nf : b->ring;
                for (uint32_t i = 0; b->n_sliding_layers && i < ns; i++)
                        tab[ntab++] = (int32_t) q->sliding_pages[i];
        }
        size_t n_meta = (size_t) off[10] + ntab;
        if (n_meta > b->meta_cap || nr != n_rows)
                return -EINVAL;

        if (use_graph) {
                if (!b->graphs[T] && capture_graph(b, T) < 0) {
                        log_warning("backend cuda: decode graph capture for %u sequences failed; running without "
                                    "graphs", T);
                        b->use_graphs = b->boot_graphs = false;
                        goto eager;
                }
                if (!cuda_ok(cudaGraphLaunch(b->graphs[T], b->stream)))
                        goto lost;
                if (argmax) {
                        if (fetch_tokens(b, real_seqs, ret_tokens) < 0)
                                goto lost;
                        return 0;
                }
                if (sampling) {         /* the graph left the rows in b->logits; the caller fetches */
                        if (cuda_sampler_enqueue(b->sampler, b->logits, 0, real_seqs, b->stream) < 0)
                                goto lost;
                        return 0;
                }
                if (!cuda_ok(cudaMemcpyAsync(logits, b->logits, (size_t) real_rows * b->cfg.vocab_size * sizeof(float),
                                             cudaMemcpyDeviceToHost, b->stream)) ||
                    !cuda_ok(cudaStreamSynchronize(b->stream)))
                        goto lost;
                return 0;
        }
eager:
        prof_mark(b, P_START);
        r = enqueue_step(b, T, n_rows, n_meta, off, max_pos, max_win, logits, false, argmax);
        if (r == -EINVAL)
                return r;
        if (r < 0)
                goto lost;
        if (argmax && fetch_tokens(b, S, ret_tokens) < 0)
                goto lost;
        prof_collect(b);
        return 0;
lost:
        log_error("backend cuda: device error during forward: %s", cudaGetErrorString(cudaGetLastError()));
        b->lost = true;
        return -EIO;
}

static int backend_cuda_forward(struct backend *b, const struct backend_batch *batch, float *logits) {
        return cuda_step(b, batch, logits, NULL);
}

static int backend_cuda_forward_greedy(struct backend *b, const struct backend_batch *batch, int32_t *ret_tokens) {
        if (!b->greedy_on)
                return -EOPNOTSUPP;
        return cuda_step(b, batch, NULL, ret_tokens);
}

static int backend_cuda_forward_sample(struct backend *b, const struct backend_batch *batch,
                                       const struct backend_sample *samples, struct sampler_result *ret) {
        if (!b->sampler)
                return -EOPNOTSUPP;
        if (b->lost)
                return -EIO;
        if (!batch || !samples || !ret || batch->n_seqs > b->p.max_num_seqs)
                return -EINVAL;
        int r = cuda_sampler_stage(b->sampler, samples, batch->n_seqs, b->stream);
        if (r == -ENOMEM) {
                /* nothing ran: the engine samples on the host from now on */
                log_warning("backend cuda: no memory for sampling on the device; sampling on the host");
                b->sampler = cuda_sampler_free(b->sampler);
                return -EOPNOTSUPP;
        }
        if (r == -EIO)
                goto lost;
        if (r < 0)
                return r;
        b->sampling = true;
        r = cuda_step(b, batch, NULL, NULL);
        b->sampling = false;
        if (r < 0)
                return r;
        if (cuda_sampler_fetch(b->sampler, batch->n_seqs, b->stream, ret) < 0)
                goto lost;
        return 0;
lost:
        log_error("backend cuda: device error while sampling: %s", cudaGetErrorString(cudaGetLastError()));
        b->lost = true;
        return -EIO;
}

/* Page-locked host memory for the engine's logits buffer: the device-to-host copy then runs at PCIe speed
 * straight into it (a pageable destination goes through a staging buffer, in pieces).
 * GEMMA4D_CUDA_NO_PINNED_LOGITS=1 declines, and the engine uses malloc. */
static void *backend_cuda_host_alloc(struct backend *b, size_t bytes) {
        void *p = NULL;
        if (env_flag("GEMMA4D_CUDA_NO_PINNED_LOGITS"))
                return NULL;
        if (!cuda_ok(cudaHostAlloc(&p, bytes ? bytes : 16, cudaHostAllocPortable))) {
                cudaGetLastError();
                log_warning("backend cuda: cannot page-lock %.1f MiB for logits; using pageable memory",
                            bytes / 1048576.0);
                return NULL;
        }
        (void) b;
        return p;
}

static void backend_cuda_host_free(struct backend *b, void *p) {
        (void) b;
        if (p)
                cudaFreeHost(p);
}

const struct backend_ops backend_cuda_ops = {
        .name = "cuda",
        .create = backend_cuda_create,
        .destroy = backend_cuda_destroy,
        .get_capacity = backend_cuda_get_capacity,
        .forward = backend_cuda_forward,
        .forward_greedy = backend_cuda_forward_greedy,
        .forward_sample = backend_cuda_forward_sample,
        .host_alloc = backend_cuda_host_alloc,
        .host_free = backend_cuda_host_free,
};
