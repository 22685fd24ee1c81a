/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The CPU reference engine: the Gemma 4 text forward pass of ../shared/spec/gemma4-text-model.md in
 * float32, behind the backend interface of backend.h. It is the oracle for the CUDA backend, so every
 * choice here favours exactness and determinism; see docs/cpu-backend.md.
 *
 * Weights are converted once at create: BF16 stays BF16 (exact in float), FP8 E4M3 values are stored as
 * BF16 (exact) with their per-row scales, F16/F32 become F32. KV lives in host memory as float32, in the
 * page layout of backend.h (full pages and a sliding ring).
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "backend-debug.h"
#include "cpu/cpu_kernels.h"
#include "cpu/cpu_pool.h"

#define DEFAULT_MAX_BATCHED_TOKENS 512
#define DEFAULT_MAX_NUM_SEQS 8
#define DEFAULT_MAX_MODEL_LEN 4096
#define DEFAULT_PAGE_SIZE 16
#define GEMM_MBLOCK 32                  /* activation rows per GEMM block */

struct cpu_layer {
        bool full;
        uint32_t n_kv, hd;
        uint32_t kv_index;              /* index among the layers of its kind */
        float *ln_in, *ln_post_attn, *ln_pre_ff, *ln_post_ff;
        float *ln_pre_ff2, *ln_post_ff1, *ln_post_ff2;
        float *q_norm, *k_norm;
        struct cpu_linear q, k, v, o;
        bool has_v;
        struct cpu_linear gate, up, down;
        struct cpu_linear router;       /* float, never quantized */
        float *router_scale, *per_expert_scale;
        struct cpu_linear *eg, *eu, *ed;
        float layer_scalar;
        const float *inv_freq;          /* [hd/2], 0 for pairs that pass through */
};

/* One sequence's slice of an internal step (a sequence may be split across steps). */
struct step_seq {
        const int32_t *tokens;
        uint32_t n, pos, tok0;          /* tok0: first row in the step's token arrays */
        const uint32_t *full_pages, *sliding_pages;
        int logits;                     /* 0 none, 1 last token, 2 every token */
        uint32_t out_row;               /* first logits row written */
};

struct gemm_job {
        const float *x;                 /* [m][in] (FP8: already quantized) */
        const float *xscale;            /* [m] per-token scales (FP8), else NULL */
        uint32_t m;
        const struct cpu_linear *w;
        float *y;                       /* [m][out] */
        float softcap;                  /* > 0: y = softcap * tanh(y / softcap) */
};

struct backend {
        const struct model *m;          /* during create() only: everything is copied, the model may go */
        struct model_config cfg;
        struct cpu_pool *pool;
        uint32_t n_threads;
        float embed_scale;
        struct cpu_linear embed;        /* [vocab][hidden]; also the tied LM head */
        struct cpu_linear lm_head;      /* aliases embed when tied */
        bool lm_head_owned;
        float *final_norm;
        struct cpu_layer *layers;
        float *inv_freq_sliding, *inv_freq_full;
        uint32_t n_full_layers, n_sliding_layers;
        /* geometry of the two page spaces */
        uint32_t page_size, n_sliding_ring, n_full_pages, n_sliding_pages;
        uint32_t full_row, sliding_row; /* floats per position per layer (n_kv * hd) */
        float *kv_full_k, *kv_full_v, *kv_sliding_k, *kv_sliding_v;
        uint64_t kv_bytes, weight_bytes;
        bool kv_round;                  /* round K/V to kv_dtype (GPU emulation) */
        enum kv_dtype kv_dtype;
        uint32_t max_num_seqs, max_batched_tokens, max_model_len;
        uint32_t max_q, max_kv;         /* widest q / kv row over all layers */
        uint32_t max_in;                /* widest linear input */
        float *xprep;                   /* [n_threads][GEMM_MBLOCK][max_in] prepared activations */
        /* step workspace, sized for max_batched_tokens */
        float *x, *a, *aq, *ascale, *q, *k, *v, *attn, *h, *t1, *t2, *t3, *m1, *m2;
        float *router_logits;
        int32_t *topk_idx;
        float *topk_w;
        float *pair_z, *pair_scale, *pair_g, *pair_u, *pair_d, *pair_dscale;
        uint32_t *pair_token, *expert_count, *expert_start;
        float *pair_weight;
        float *scores;                  /* [n_threads][max_model_len] */
        float *logit_rows;              /* [max rows][hidden] normalized final states */
        struct step_seq *steps;
        struct gemm_job *jobs;
        uint32_t max_jobs;
        float *dbg_capture;             /* backend-debug.h capture(), during that call only */
};

static int set_err(char **reterr, int r, const char *fmt, ...) {
        va_list ap;
        char *s = NULL;

        if (reterr) {
                va_start(ap, fmt);
                if (vasprintf(&s, fmt, ap) < 0)
                        s = NULL;
                va_end(ap);
                *reterr = s;
        }
        return r;
}

static uint64_t view_numel(const struct tensor_view *t) {
        uint64_t n = 1;

        for (uint32_t i = 0; i < t->ndim; i++)
                n *= t->shape[i];
        return t->ndim ? n : 1;
}

static bool dtype_ok(enum tensor_dtype d) {
        return d == TENSOR_DTYPE_F32 || d == TENSOR_DTYPE_BF16 || d == TENSOR_DTYPE_F16 ||
               d == TENSOR_DTYPE_F8_E4M3;
}

/* A 1-D vector of n floats from a view (norm weights, scales). */
static int load_vector(const struct tensor_view *t, const char *what, uint32_t n, float **ret,
                       char **reterr) {
        float *v;

        if (!tensor_present(t))
                return set_err(reterr, -EINVAL, "cpu backend: tensor %s missing", what);
        if (!dtype_ok(t->dtype) || view_numel(t) != n)
                return set_err(
                        reterr, -EINVAL, "cpu backend: tensor %s has %llu elements of dtype %d, expected %u",
                        t->name ? t->name : what, (unsigned long long) view_numel(t), (int) t->dtype, n);
        v = malloc((size_t) n * sizeof(float));
        if (!v)
                return -ENOMEM;
        for (uint32_t i = 0; i < n; i++)
                v[i] = tensor_get_f32(t, i);
        *ret = v;
        return 0;
}

static int load_linear(struct backend *b, const struct linear_weight *lw, const struct tensor_view *plain,
                       const char *what, uint32_t out, uint32_t in, struct cpu_linear *ret, char **reterr) {
        const struct tensor_view *t = lw ? &lw->w : plain;
        struct cpu_linear l = { .out = out, .in = in };
        uint64_t n = (uint64_t) out * in;

        if (!tensor_present(t))
                return set_err(reterr, -EINVAL, "cpu backend: tensor %s missing", what);
        if (!dtype_ok(t->dtype) || view_numel(t) != n)
                return set_err(reterr, -EINVAL,
                               "cpu backend: tensor %s: expected [%u, %u], got %llu elements",
                               t->name ? t->name : what, out, in, (unsigned long long) view_numel(t));
        if (t->dtype == TENSOR_DTYPE_BF16) {
                l.type = CPU_W_BF16;
                l.w = malloc(n * 2);
                if (!l.w)
                        return -ENOMEM;
                memcpy(l.w, t->data, n * 2);
        } else if (t->dtype == TENSOR_DTYPE_F8_E4M3) {
                const struct tensor_view *s = lw ? &lw->scale : NULL;
                const uint8_t *src = t->data;
                uint16_t lut[256], *dst;

                if (!s || !tensor_present(s) || !dtype_ok(s->dtype) || view_numel(s) != out)
                        return set_err(reterr, -EINVAL,
                                       "cpu backend: FP8 tensor %s needs a weight_scale of %u elements",
                                       t->name ? t->name : what, out);
                for (int i = 0; i < 256; i++)
                        lut[i] = f32_to_bf16(fp8_e4m3_to_f32((uint8_t) i));
                l.type = CPU_W_BF16;
                l.w = dst = malloc(n * 2);
                l.scale = malloc((size_t) out * sizeof(float));
                if (!l.w || !l.scale) {
                        free(l.w);
                        free(l.scale);
                        return -ENOMEM;
                }
                for (uint64_t i = 0; i < n; i++)
                        dst[i] = lut[src[i]];
                for (uint32_t i = 0; i < out; i++)
                        l.scale[i] = tensor_get_f32(s, i);
        } else {
                float *dst;
                l.type = CPU_W_F32;
                l.w = dst = malloc(n * 4);
                if (!l.w)
                        return -ENOMEM;
                for (uint64_t i = 0; i < n; i++)
                        dst[i] = tensor_get_f32(t, i);
        }
        b->weight_bytes += n * (l.type == CPU_W_BF16 ? 2 : 4) + (l.scale ? out * 4ull : 0);
        *ret = l;
        return 0;
}

static void linear_done(struct cpu_linear *l) {
        free(l->w);
        free(l->scale);
        l->w = NULL;
        l->scale = NULL;
}

/* HF: inv_freq = 1 / theta^(2j/D) in float32; proportional keeps the first floor(f*D/2) pairs only. */
static float *make_inv_freq(const struct rope_params *rp, uint32_t hd) {
        uint32_t half = hd / 2, rotated = half;
        float *f = calloc(half ? half : 1, sizeof(float));

        if (!f)
                return NULL;
        if (rp->kind == ROPE_PROPORTIONAL)
                rotated = (uint32_t) floor(rp->partial_rotary_factor * hd / 2.0);
        for (uint32_t j = 0; j < half && j < rotated; j++) {
                float e = (float) (2 * j) / (float) hd;
                f[j] = 1.0f / powf((float) rp->theta, e);
        }
        return f;
}

static void backend_destroy(struct backend *b) {
        if (!b)
                return;
        cpu_pool_free(b->pool);
        linear_done(&b->embed);
        if (b->lm_head_owned)
                linear_done(&b->lm_head);
        free(b->final_norm);
        if (b->layers) {
                for (uint32_t i = 0; i < b->cfg.n_layers; i++) {
                        struct cpu_layer *L = &b->layers[i];
                        float *vecs[] = { L->ln_in,      L->ln_post_attn, L->ln_pre_ff,       L->ln_post_ff,
                                          L->ln_pre_ff2, L->ln_post_ff1,  L->ln_post_ff2,     L->q_norm,
                                          L->k_norm,     L->router_scale, L->per_expert_scale };
                        for (size_t j = 0; j < sizeof(vecs) / sizeof(vecs[0]); j++)
                                free(vecs[j]);
                        linear_done(&L->q);
                        linear_done(&L->k);
                        linear_done(&L->v);
                        linear_done(&L->o);
                        linear_done(&L->gate);
                        linear_done(&L->up);
                        linear_done(&L->down);
                        linear_done(&L->router);
                        for (uint32_t e = 0; e < b->cfg.n_experts; e++) {
                                if (L->eg)
                                        linear_done(&L->eg[e]);
                                if (L->eu)
                                        linear_done(&L->eu[e]);
                                if (L->ed)
                                        linear_done(&L->ed[e]);
                        }
                        free(L->eg);
                        free(L->eu);
                        free(L->ed);
                }
                free(b->layers);
        }
        free(b->inv_freq_sliding);
        free(b->inv_freq_full);
        free(b->kv_full_k);
        free(b->kv_full_v);
        free(b->kv_sliding_k);
        free(b->kv_sliding_v);
        float *ws[] = { b->x, b->a, b->aq, b->ascale, b->q, b->k, b->v, b->attn, b->h, b->t1, b->t2, b->t3,
                        b->m1, b->m2, b->router_logits, b->topk_w, b->pair_z, b->pair_scale, b->pair_g,
                        b->pair_u, b->pair_d, b->pair_dscale, b->pair_weight, b->scores, b->logit_rows,
                        b->xprep };
        for (size_t j = 0; j < sizeof(ws) / sizeof(ws[0]); j++)
                free(ws[j]);
        free(b->topk_idx);
        free(b->pair_token);
        free(b->expert_count);
        free(b->expert_start);
        free(b->steps);
        free(b->jobs);
        free(b);
}

static int load_layer(struct backend *b, uint32_t li, char **reterr) {
        const struct model_config *c = &b->cfg;
        const struct layer_weights *W = &b->m->layers[li];
        struct cpu_layer *L = &b->layers[li];
        uint32_t H = c->hidden_size, nq, nkv, E = c->n_experts, I = c->moe_intermediate_size;
        char what[96];
        int r;

        L->full = c->layer_type[li] == LAYER_FULL;
        /* RoPE tables are per layer kind, so the head dim must be the kind's; the KV head count comes from
         * the loader (full layers use the global count only with k_eq_v, as transformers does) */
        L->hd = L->full ? c->global_head_dim : c->head_dim;
        L->n_kv = W->n_kv_heads ? W->n_kv_heads
                                : (L->full && c->attention_k_eq_v ? c->n_global_kv_heads : c->n_kv_heads);
        if (W->head_dim && W->head_dim != L->hd)
                return set_err(reterr, -EINVAL,
                               "cpu backend: layer %u: head_dim %u disagrees with the config (%u)", li,
                               W->head_dim, L->hd);
        if (L->hd == 0 || L->hd % 2 || L->n_kv == 0 || c->n_heads % L->n_kv)
                return set_err(reterr, -EINVAL,
                               "cpu backend: layer %u: bad geometry (%u kv heads of %u, %u heads)", li,
                               L->n_kv, L->hd, c->n_heads);
        nq = c->n_heads * L->hd;
        nkv = L->n_kv * L->hd;
        L->inv_freq = L->full ? b->inv_freq_full : b->inv_freq_sliding;

#define VEC(field, view, n)                                                                          \
        do {                                                                                         \
                snprintf(what, sizeof(what), "layers.%u." #view, li);                                \
                r = load_vector(&W->view, what, (n), &L->field, reterr);                             \
                if (r < 0)                                                                           \
                        return r;                                                            \
        } while (0)
#define LIN(field, view, o, i)                                                                       \
        do {                                                                                         \
                snprintf(what, sizeof(what), "layers.%u." #view, li);                                \
                r = load_linear(b, &W->view, NULL, what, (o), (i), &L->field, reterr);               \
                if (r < 0)                                                                           \
                        return r;                                                            \
        } while (0)

        VEC(ln_in, input_layernorm, H);
        VEC(ln_post_attn, post_attention_layernorm, H);
        VEC(ln_pre_ff, pre_feedforward_layernorm, H);
        VEC(ln_post_ff, post_feedforward_layernorm, H);
        VEC(q_norm, q_norm, L->hd);
        VEC(k_norm, k_norm, L->hd);
        LIN(q, q_proj, nq, H);
        LIN(k, k_proj, nkv, H);
        L->has_v = tensor_present(&W->v_proj.w);
        if (L->has_v)
                LIN(v, v_proj, nkv, H);
        else if (!(L->full && c->attention_k_eq_v))
                return set_err(reterr, -EINVAL, "cpu backend: layer %u: v_proj missing", li);
        LIN(o, o_proj, H, nq);
        LIN(gate, mlp_gate, c->intermediate_size, H);
        LIN(up, mlp_up, c->intermediate_size, H);
        LIN(down, mlp_down, H, c->intermediate_size);
        if (tensor_present(&W->layer_scalar)) {
                if (view_numel(&W->layer_scalar) != 1 || !dtype_ok(W->layer_scalar.dtype))
                        return set_err(reterr, -EINVAL, "cpu backend: layer %u: layer_scalar must be [1]",
                                       li);
                L->layer_scalar = tensor_get_f32(&W->layer_scalar, 0);
        } else {
                L->layer_scalar = 1.0f;
        }
        if (!c->enable_moe)
                return 0;
        VEC(ln_pre_ff2, pre_feedforward_layernorm_2, H);
        VEC(ln_post_ff1, post_feedforward_layernorm_1, H);
        VEC(ln_post_ff2, post_feedforward_layernorm_2, H);
        VEC(router_scale, router_scale, H);
        VEC(per_expert_scale, router_per_expert_scale, E);
        snprintf(what, sizeof(what), "layers.%u.router.proj", li);
        r = load_linear(b, NULL, &W->router_proj, what, E, H, &L->router, reterr);
        if (r < 0)
                return r;
        if (!W->expert_gate || !W->expert_up || !W->expert_down)
                return set_err(reterr, -EINVAL, "cpu backend: layer %u: experts missing", li);
        L->eg = calloc(E, sizeof(*L->eg));
        L->eu = calloc(E, sizeof(*L->eu));
        L->ed = calloc(E, sizeof(*L->ed));
        if (!L->eg || !L->eu || !L->ed)
                return -ENOMEM;
        for (uint32_t e = 0; e < E; e++) {
                snprintf(what, sizeof(what), "layers.%u.experts.%u.gate_proj", li, e);
                r = load_linear(b, &W->expert_gate[e], NULL, what, I, H, &L->eg[e], reterr);
                if (r < 0)
                        return r;
                snprintf(what, sizeof(what), "layers.%u.experts.%u.up_proj", li, e);
                r = load_linear(b, &W->expert_up[e], NULL, what, I, H, &L->eu[e], reterr);
                if (r < 0)
                        return r;
                snprintf(what, sizeof(what), "layers.%u.experts.%u.down_proj", li, e);
                r = load_linear(b, &W->expert_down[e], NULL, what, H, I, &L->ed[e], reterr);
                if (r < 0)
                        return r;
        }
        return 0;
#undef VEC
#undef LIN
}

static void *xcalloc(size_t n, size_t size, bool *failed) {
        void *p = calloc(n ? n : 1, size);
        if (!p)
                *failed = true;
        return p;
}

static int check_config(const struct model_config *c, char **reterr) {
        if (c->vocab_size == 0 || c->hidden_size == 0 || c->n_layers == 0 ||
            c->n_layers > MODEL_MAX_LAYERS || c->n_heads == 0)
                return set_err(reterr, -EINVAL,
                               "cpu backend: config has an empty vocab/hidden/layers/heads");
        if (c->enable_moe &&
            (c->n_experts == 0 || c->n_experts > MODEL_MAX_EXPERTS || c->top_k_experts == 0 ||
             c->top_k_experts > c->n_experts || c->moe_intermediate_size == 0))
                return set_err(reterr, -EINVAL, "cpu backend: bad MoE config (%u experts, top %u)",
                               c->n_experts, c->top_k_experts);
        if (c->intermediate_size == 0)
                return set_err(reterr, -EINVAL, "cpu backend: intermediate_size is 0");
        for (uint32_t i = 0; i < c->n_layers; i++)
                if (c->layer_type[i] == LAYER_SLIDING && c->sliding_window == 0)
                        return set_err(reterr, -EINVAL,
                                       "cpu backend: sliding layers need sliding_window > 0");
        return 0;
}

static int cpu_create(const struct model *m, const struct backend_params *p, struct backend **ret,
                      char **reterr) {
        const struct model_config *c;
        struct backend *b;
        uint32_t H, hd_max = 0;
        bool failed = false;
        long ncpu;
        int r, nt;

        if (!m || !p || !ret)
                return set_err(reterr, -EINVAL, "cpu backend: NULL argument");
        c = &m->cfg;
        r = check_config(c, reterr);
        if (r < 0)
                return r;
        if (!tensor_present(&m->embed_tokens) || !m->layers)
                return set_err(reterr, -EINVAL, "cpu backend: model has no embedding or layers");
        cpu_kernels_init();
        b = calloc(1, sizeof(*b));
        if (!b)
                return -ENOMEM;
        b->m = m;
        b->cfg = *c;
        H = c->hidden_size;
        /* HF casts sqrt(hidden) to the weight dtype (BF16) before multiplying (spec §2.1). */
        b->embed_scale = bf16_to_f32(f32_to_bf16((float) sqrt((double) H)));

        ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        nt = p->n_threads > 0 ? p->n_threads : (ncpu > 0 ? (int) ncpu : 1);
        if (nt > 256)
                nt = 256;
        r = cpu_pool_new(nt, &b->pool);
        if (r < 0) {
                backend_destroy(b);
                return set_err(reterr, r, "cpu backend: cannot start %d threads", nt);
        }
        b->n_threads = (uint32_t) nt;

        b->inv_freq_sliding = make_inv_freq(&c->rope_sliding, c->head_dim ? c->head_dim : 2);
        b->inv_freq_full = make_inv_freq(&c->rope_full, c->global_head_dim ? c->global_head_dim : 2);
        b->layers = calloc(c->n_layers, sizeof(*b->layers));
        if (!b->inv_freq_sliding || !b->inv_freq_full || !b->layers) {
                backend_destroy(b);
                return -ENOMEM;
        }
        r = load_linear(b, NULL, &m->embed_tokens, "embed_tokens", c->vocab_size, H, &b->embed, reterr);
        if (r >= 0 && tensor_present(&m->lm_head)) {
                b->lm_head_owned = true;
                r = load_linear(b, NULL, &m->lm_head, "lm_head", c->vocab_size, H, &b->lm_head, reterr);
        } else {
                b->lm_head = b->embed;
        }
        if (r >= 0)
                r = load_vector(&m->final_norm, "norm", H, &b->final_norm, reterr);
        for (uint32_t i = 0; r >= 0 && i < c->n_layers; i++) {
                if (p->progress)
                        p->progress(p->progress_userdata, "converting weights", (double) i / c->n_layers);
                r = load_layer(b, i, reterr);
                if (r >= 0) {
                        struct cpu_layer *L = &b->layers[i];
                        L->kv_index = L->full ? b->n_full_layers++ : b->n_sliding_layers++;
                        if (L->full)
                                b->full_row = L->n_kv * L->hd;
                        else
                                b->sliding_row = L->n_kv * L->hd;
                        if (L->hd > hd_max)
                                hd_max = L->hd;
                        if (c->n_heads * L->hd > b->max_q)
                                b->max_q = c->n_heads * L->hd;
                        if (L->n_kv * L->hd > b->max_kv)
                                b->max_kv = L->n_kv * L->hd;
                }
        }
        if (r < 0) {
                backend_destroy(b);
                return r == -ENOMEM ? set_err(reterr, r, "cpu backend: out of memory converting weights")
                                    : r;
        }
        /* All layers of one kind must share a geometry: one page id indexes every layer of its kind. */
        for (uint32_t i = 0; i < c->n_layers; i++) {
                struct cpu_layer *L = &b->layers[i];
                if (L->n_kv * L->hd != (L->full ? b->full_row : b->sliding_row)) {
                        backend_destroy(b);
                        return set_err(reterr, -EINVAL,
                                       "cpu backend: layer %u geometry differs from its kind", i);
                }
        }

        b->kv_round = p->cpu_kv_round;
        b->kv_dtype = p->kv_dtype;
        b->page_size = p->page_size ? p->page_size : DEFAULT_PAGE_SIZE;
        b->max_num_seqs = p->max_num_seqs ? p->max_num_seqs : DEFAULT_MAX_NUM_SEQS;
        b->max_batched_tokens = p->max_batched_tokens ? p->max_batched_tokens : DEFAULT_MAX_BATCHED_TOKENS;
        b->max_model_len = p->max_model_len ? p->max_model_len : DEFAULT_MAX_MODEL_LEN;
        if (b->max_batched_tokens < b->max_num_seqs)
                b->max_batched_tokens = b->max_num_seqs;
        b->n_sliding_ring = (c->sliding_window + b->page_size - 1) / b->page_size + 1;
        b->n_full_pages = p->n_full_pages
                                  ? p->n_full_pages
                                  : b->max_num_seqs * ((b->max_model_len + b->page_size - 1) / b->page_size);
        b->n_sliding_pages = p->n_sliding_pages ? p->n_sliding_pages : b->max_num_seqs * b->n_sliding_ring;
        {
                size_t fsz = (size_t) b->n_full_layers * b->n_full_pages * b->page_size * b->full_row;
                size_t ssz =
                        (size_t) b->n_sliding_layers * b->n_sliding_pages * b->page_size * b->sliding_row;
                b->kv_full_k = xcalloc(fsz, sizeof(float), &failed);
                b->kv_full_v = xcalloc(fsz, sizeof(float), &failed);
                b->kv_sliding_k = xcalloc(ssz, sizeof(float), &failed);
                b->kv_sliding_v = xcalloc(ssz, sizeof(float), &failed);
                b->kv_bytes = 2 * (fsz + ssz) * sizeof(float);
        }
        {
                size_t T = b->max_batched_tokens, I = c->intermediate_size, E = c->n_experts;
                size_t K = c->enable_moe ? c->top_k_experts : 0, MI = c->moe_intermediate_size;
                size_t wide = H;
                if (b->max_q > wide)
                        wide = b->max_q;
                if (I > wide)
                        wide = I;
                b->x = xcalloc(T * H, 4, &failed);
                b->a = xcalloc(T * H, 4, &failed);
                b->aq = xcalloc(T * wide, 4, &failed);
                b->ascale = xcalloc(T, 4, &failed);
                b->q = xcalloc(T * b->max_q, 4, &failed);
                b->k = xcalloc(T * b->max_kv, 4, &failed);
                b->v = xcalloc(T * b->max_kv, 4, &failed);
                b->attn = xcalloc(T * b->max_q, 4, &failed);
                b->h = xcalloc(T * H, 4, &failed);
                b->t1 = xcalloc(T * (I > H ? I : H), 4, &failed);
                b->t2 = xcalloc(T * (I > H ? I : H), 4, &failed);
                b->t3 = xcalloc(T * H, 4, &failed);
                b->m1 = xcalloc(T * H, 4, &failed);
                b->m2 = xcalloc(T * H, 4, &failed);
                b->router_logits = xcalloc(T * (E ? E : 1), 4, &failed);
                b->topk_idx = xcalloc(T * (K ? K : 1), sizeof(int32_t), &failed);
                b->topk_w = xcalloc(T * (K ? K : 1), 4, &failed);
                b->pair_z = xcalloc(T * K * H, 4, &failed);
                b->pair_scale = xcalloc(T * K, 4, &failed);
                b->pair_g = xcalloc(T * K * MI, 4, &failed);
                b->pair_u = xcalloc(T * K * MI, 4, &failed);
                b->pair_d = xcalloc(T * K * H, 4, &failed);
                b->pair_dscale = xcalloc(T * K, 4, &failed);
                b->pair_weight = xcalloc(T * K, 4, &failed);
                b->pair_token = xcalloc(T * K, sizeof(uint32_t), &failed);
                b->expert_count = xcalloc(E, sizeof(uint32_t), &failed);
                b->expert_start = xcalloc(E + 1, sizeof(uint32_t), &failed);
                b->scores = xcalloc((size_t) b->n_threads * b->max_model_len, 4, &failed);
                b->logit_rows = xcalloc(T * H, 4, &failed);
                b->max_in = (uint32_t) (wide > MI ? wide : MI);
                b->xprep = xcalloc((size_t) b->n_threads * GEMM_MBLOCK * b->max_in, 4, &failed);
                b->steps = xcalloc(b->max_num_seqs + 1, sizeof(*b->steps), &failed);
                b->max_jobs = 2 * (uint32_t) (E ? E : 1) + 4;
                b->jobs = xcalloc(b->max_jobs, sizeof(*b->jobs), &failed);
        }
        if (failed) {
                backend_destroy(b);
                return set_err(reterr, -ENOMEM, "cpu backend: out of memory for KV cache / workspace");
        }
        if (p->progress)
                p->progress(p->progress_userdata, "converting weights", 1.0);
        b->m = NULL;
        *ret = b;
        return 0;
}

static void cpu_destroy(struct backend *b) {
        backend_destroy(b);
}

static void cpu_get_capacity(struct backend *b, struct backend_capacity *ret) {
        memset(ret, 0, sizeof(*ret));
        ret->n_full_pages = b->n_full_pages;
        ret->n_sliding_pages = b->n_sliding_pages;
        ret->page_size = b->page_size;
        ret->n_sliding_ring = b->n_sliding_ring;
        ret->kv_bytes = b->kv_bytes;
        ret->weight_bytes = b->weight_bytes;
        snprintf(ret->device, sizeof(ret->device), "cpu (%u threads, %s)", b->n_threads, cpu_kernels_isa());
}

/* ---------------------------------------------------------------------------------------------- */
/* parallel sections                                                                               */

struct gemm_ctx {
        const struct gemm_job *jobs;
        uint32_t n_jobs;
        uint64_t total_rows;
        float *xprep;                   /* per thread: GEMM_MBLOCK rows of the widest input */
        size_t xprep_stride;
        uint32_t n_chunks;
};

/* Below this many multiply-adds a parallel section costs more than it saves: run on the caller. */
#define PARALLEL_MIN_MACS (1u << 20)

/* Sections under PARALLEL_MIN_MACS run as one chunk on the caller; larger ones get ~8 chunks per thread
 * (of at least 16 items), so a thread that is not scheduled costs at most a chunk. */
static uint32_t chunks_for(const struct backend *b, uint64_t macs, uint64_t items) {
        uint64_t n = 8ull * b->n_threads;

        if (macs < PARALLEL_MIN_MACS || b->n_threads == 1)
                return 1;
        if (n > items / 16)
                n = items / 16;
        return n ? (uint32_t) n : 1;
}

/* W8A8 epilogue s_x * (s_w * acc), then the softcap, for count outputs of row m from column n0 on. */
static void gemm_epilogue(const struct gemm_job *job, uint32_t m, uint64_t n0, float *acc, uint32_t count) {
        const struct cpu_linear *w = job->w;

        if (job->xscale)
                for (uint32_t i = 0; i < count; i++)
                        acc[i] = job->xscale[m] * (w->scale[n0 + i] * acc[i]);
        if (job->softcap > 0.0f)
                cpu_softcap(acc, count, job->softcap);
}

static void gemm_rows(const struct gemm_job *job, uint64_t r0, uint64_t r1, float *xp) {
        const struct cpu_linear *w = job->w;
        float acc[GEMM_MBLOCK];

        for (uint32_t m0 = 0; m0 < job->m; m0 += GEMM_MBLOCK) {
                uint32_t mb = job->m - m0 < GEMM_MBLOCK ? job->m - m0 : GEMM_MBLOCK;

                cpu_prepare_rows(w, job->x + (size_t) m0 * w->in, w->in, mb, xp);
                if (mb == 1) {  /* one token: one activation row against 4 weight rows at a time */
                        for (uint64_t n = r0; n < r1; n += GEMM_MBLOCK) {
                                uint32_t nn = r1 - n < GEMM_MBLOCK ? (uint32_t) (r1 - n) : GEMM_MBLOCK;
                                cpu_dot_wrows(w, (uint32_t) n, nn, xp, acc);
                                gemm_epilogue(job, m0, n, acc, nn);
                                memcpy(job->y + (size_t) m0 * w->out + n, acc, nn * sizeof(float));
                        }
                        continue;
                }
                for (uint64_t n = r0; n < r1; n++) {
                        cpu_dot_rows(w, (uint32_t) n, xp, w->in, mb, acc);
                        for (uint32_t i = 0; i < mb; i++) {
                                gemm_epilogue(job, m0 + i, n, &acc[i], 1);
                                job->y[(size_t) (m0 + i) * w->out + n] = acc[i];
                        }
                }
        }
}

static void gemm_worker(void *vctx, uint32_t chunk, int tid) {
        const struct gemm_ctx *g = vctx;
        uint64_t begin, end, base = 0;
        float *xp = g->xprep + (size_t) tid * g->xprep_stride;

        cpu_pool_share(g->total_rows, chunk, g->n_chunks, &begin, &end);
        for (uint32_t j = 0; j < g->n_jobs && base < end; j++) {
                const struct gemm_job *job = &g->jobs[j];
                uint64_t r0 = begin > base ? begin - base : 0, r1 = end - base;

                if (r1 > job->w->out)
                        r1 = job->w->out;
                if (r0 < r1 && job->m)
                        gemm_rows(job, r0, r1, xp);
                base += job->m ? job->w->out : 0;
        }
}

static void run_gemms(struct backend *b, const struct gemm_job *jobs, uint32_t n_jobs) {
        struct gemm_ctx g = { .jobs = jobs, .n_jobs = n_jobs, .xprep = b->xprep,
                              .xprep_stride = (size_t) GEMM_MBLOCK * b->max_in };
        uint64_t macs = 0;

        for (uint32_t j = 0; j < n_jobs; j++) {
                g.total_rows += jobs[j].m ? jobs[j].w->out : 0;
                macs += (uint64_t) jobs[j].m * jobs[j].w->out * jobs[j].w->in;
        }
        if (!g.total_rows)
                return;
        g.n_chunks = chunks_for(b, macs, g.total_rows);
        cpu_pool_run(b->pool, gemm_worker, &g, g.n_chunks);
}

/* Prepare the input of linear w for m rows of x: FP8 weights get per-token FP8 activations in xq. */
static const float *linear_input(const struct cpu_linear *w, const float *x, uint32_t m, float *xq,
                                 float *xscale, const float **ret_scale) {
        if (!w->scale) {
                *ret_scale = NULL;
                return x;
        }
        for (uint32_t i = 0; i < m; i++)
                xscale[i] = cpu_quantize_row_fp8(x + (size_t) i * w->in, w->in, xq + (size_t) i * w->in);
        *ret_scale = xscale;
        return xq;
}

static void linear(struct backend *b, const struct cpu_linear *w, const float *x, uint32_t m, float *y) {
        struct gemm_job job = { .m = m, .w = w, .y = y };
        job.x = linear_input(w, x, m, b->aq, b->ascale, &job.xscale);
        run_gemms(b, &job, 1);
}

/* y = RMSNorm(x) * w (w NULL: no weight), float32 with a double-precision mean of squares. */
static void rmsnorm(float *y, const float *x, const float *w, uint32_t n, float eps) {
        double ss = 0.0;
        float inv;

        for (uint32_t i = 0; i < n; i++)
                ss += (double) x[i] * x[i];
        inv = powf((float) (ss / n) + eps, -0.5f);
        for (uint32_t i = 0; i < n; i++)
                y[i] = w ? x[i] * inv * w[i] : x[i] * inv;
}

static inline float gelu_tanh(float z) {
        const float c = 0.7978845608028654f;    /* sqrt(2/pi) */
        return 0.5f * z * (1.0f + tanhf(c * (z + 0.044715f * z * z * z)));
}

/* Half-split rotation of one head vector by angles pos * inv_freq[j]. */
static void rope(float *v, uint32_t hd, const float *inv_freq, uint32_t pos) {
        uint32_t half = hd / 2;

        for (uint32_t j = 0; j < half; j++) {
                float f = inv_freq[j], ang, cs, sn, a, bb;
                if (f == 0.0f)
                        continue;
                ang = f * (float) pos;
                cs = cosf(ang);
                sn = sinf(ang);
                a = v[j];
                bb = v[j + half];
                v[j] = a * cs - bb * sn;
                v[j + half] = bb * cs + a * sn;
        }
}

/* ---------------------------------------------------------------------------------------------- */
/* attention                                                                                       */

struct attn_ctx {
        struct backend *b;
        const struct cpu_layer *L;
        const struct step_seq *seqs;
        uint32_t n_seqs, n_tokens, n_chunks;
};

static inline const float *kv_row(const struct backend *b, const struct cpu_layer *L,
                                  const struct step_seq *s, uint32_t p, bool value) {
        uint32_t B = b->page_size, page, row = L->n_kv * L->hd;
        const float *base;

        if (L->full) {
                page = s->full_pages[p / B];
                base = value ? b->kv_full_v : b->kv_full_k;
                return base + (((size_t) L->kv_index * b->n_full_pages + page) * B + p % B) * row;
        }
        page = s->sliding_pages[(p / B) % b->n_sliding_ring];
        base = value ? b->kv_sliding_v : b->kv_sliding_k;
        return base + (((size_t) L->kv_index * b->n_sliding_pages + page) * B + p % B) * row;
}

static void attn_worker(void *vctx, uint32_t chunk, int tid) {
        const struct attn_ctx *ac = vctx;
        struct backend *b = ac->b;
        const struct cpu_layer *L = ac->L;
        uint32_t nh = b->cfg.n_heads, hd = L->hd, group = nh / L->n_kv, kvw = L->n_kv * hd;
        float *scores = b->scores + (size_t) tid * b->max_model_len;
        uint64_t begin, end;

        cpu_pool_share((uint64_t) ac->n_tokens * nh, chunk, ac->n_chunks, &begin, &end);
        for (uint64_t item = begin; item < end; item++) {
                uint32_t t = (uint32_t) (item / nh), h = (uint32_t) (item % nh), kvh = h / group;
                const struct step_seq *s = ac->seqs;
                uint32_t p, lo, n;
                const float *q = b->q + (size_t) t * nh * hd + (size_t) h * hd;
                float *out = b->attn + (size_t) t * nh * hd + (size_t) h * hd;
                float mx = -INFINITY, sum = 0.0f;

                while (t >= s->tok0 + s->n)
                        s++;
                p = s->pos + (t - s->tok0);
                lo = (!L->full && p + 1 > b->cfg.sliding_window) ? p + 1 - b->cfg.sliding_window : 0;
                n = p - lo + 1;
                for (uint32_t j = 0; j < n; j++) {
                        uint32_t kp = lo + j;
                        const float *k = kp >= s->pos ? b->k + (size_t) (s->tok0 + kp - s->pos) * kvw
                                                      : kv_row(b, L, s, kp, false);
                        scores[j] = cpu_dot_f32(q, k + (size_t) kvh * hd, hd);
                        if (scores[j] > mx)
                                mx = scores[j];
                }
                for (uint32_t j = 0; j < n; j++) {
                        scores[j] = expf(scores[j] - mx);
                        sum += scores[j];
                }
                for (uint32_t d = 0; d < hd; d++)
                        out[d] = 0.0f;
                for (uint32_t j = 0; j < n; j++) {
                        uint32_t kp = lo + j;
                        const float *v = kp >= s->pos ? b->v + (size_t) (s->tok0 + kp - s->pos) * kvw
                                                      : kv_row(b, L, s, kp, true);
                        float pj = scores[j] / sum;
                        v += (size_t) kvh * hd;
                        for (uint32_t d = 0; d < hd; d++)
                                out[d] += pj * v[d];
                }
        }
}

/* What the GPU's cache holds: BF16, or E4M3 with scale 1.0 (backend.h). The step's own keys are rounded
 * too, as a GPU kernel reads them back from the cache. */
static void kv_round(float *v, uint32_t n, enum kv_dtype dtype) {
        for (uint32_t i = 0; i < n; i++)
                v[i] = dtype == KV_DTYPE_BF16 ? bf16_to_f32(f32_to_bf16(v[i])) : cpu_round_fp8_e4m3(v[i]);
}

static void kv_store(struct backend *b, const struct cpu_layer *L, const struct step_seq *s) {
        uint32_t row = L->n_kv * L->hd;

        for (uint32_t i = 0; i < s->n; i++) {
                uint32_t p = s->pos + i;
                float *k = (float *) kv_row(b, L, s, p, false), *v = (float *) kv_row(b, L, s, p, true);
                memcpy(k, b->k + (size_t) (s->tok0 + i) * row, row * sizeof(float));
                memcpy(v, b->v + (size_t) (s->tok0 + i) * row, row * sizeof(float));
        }
}

/* ---------------------------------------------------------------------------------------------- */
/* one decoder layer over the step's T tokens                                                      */

static void attention_block(struct backend *b, const struct cpu_layer *L, const struct step_seq *seqs,
                            uint32_t n_seqs, uint32_t T) {
        const struct model_config *c = &b->cfg;
        uint32_t H = c->hidden_size, nh = c->n_heads, hd = L->hd, nq = nh * hd, nkv = L->n_kv * hd;
        struct gemm_job jobs[3];
        const float *xin, *xs;
        uint32_t nj = 0;

        for (uint32_t t = 0; t < T; t++)
                rmsnorm(b->a + (size_t) t * H, b->x + (size_t) t * H, L->ln_in, H, c->rms_norm_eps);
        /* q, k and v read the same input; FP8 quantizes it once per token. */
        xin = linear_input(&L->q, b->a, T, b->aq, b->ascale, &xs);
        jobs[nj++] = (struct gemm_job) { .x = xin, .xscale = xs, .m = T, .w = &L->q, .y = b->q };
        jobs[nj++] = (struct gemm_job) { .x = xin, .xscale = xs, .m = T, .w = &L->k, .y = b->k };
        if (L->has_v)
                jobs[nj++] = (struct gemm_job) { .x = xin, .xscale = xs, .m = T, .w = &L->v, .y = b->v };
        run_gemms(b, jobs, nj);
        if (!L->has_v)  /* k_eq_v: V is the raw K projection */
                memcpy(b->v, b->k, (size_t) T * nkv * sizeof(float));

        for (uint32_t si = 0; si < n_seqs; si++) {
                const struct step_seq *s = &seqs[si];
                for (uint32_t i = 0; i < s->n; i++) {
                        uint32_t t = s->tok0 + i, p = s->pos + i;
                        for (uint32_t h = 0; h < nh; h++) {
                                float *qh = b->q + (size_t) t * nq + (size_t) h * hd;
                                rmsnorm(qh, qh, L->q_norm, hd, c->rms_norm_eps);
                                rope(qh, hd, L->inv_freq, p);
                        }
                        for (uint32_t h = 0; h < L->n_kv; h++) {
                                float *kh = b->k + (size_t) t * nkv + (size_t) h * hd;
                                float *vh = b->v + (size_t) t * nkv + (size_t) h * hd;
                                rmsnorm(kh, kh, L->k_norm, hd, c->rms_norm_eps);
                                rope(kh, hd, L->inv_freq, p);
                                rmsnorm(vh, vh, NULL, hd, c->rms_norm_eps);
                                if (b->kv_round) {
                                        kv_round(kh, hd, b->kv_dtype);
                                        kv_round(vh, hd, b->kv_dtype);
                                }
                        }
                }
        }
        {
                struct attn_ctx ac = { .b = b, .L = L, .seqs = seqs, .n_seqs = n_seqs, .n_tokens = T };
                uint64_t work = 0;
                for (uint32_t si = 0; si < n_seqs; si++)
                        work += (uint64_t) seqs[si].n * (seqs[si].pos + seqs[si].n);
                ac.n_chunks = chunks_for(b, work * nh * hd * 2, (uint64_t) T * nh);
                cpu_pool_run(b->pool, attn_worker, &ac, ac.n_chunks);
        }
        for (uint32_t si = 0; si < n_seqs; si++)
                kv_store(b, L, &seqs[si]);

        linear(b, &L->o, b->attn, T, b->t3);
        for (uint32_t t = 0; t < T; t++) {
                float *o = b->t3 + (size_t) t * H, *h = b->h + (size_t) t * H;
                const float *x = b->x + (size_t) t * H;
                rmsnorm(o, o, L->ln_post_attn, H, c->rms_norm_eps);
                for (uint32_t i = 0; i < H; i++)
                        h[i] = x[i] + o[i];
        }
}

static void dense_mlp(struct backend *b, const struct cpu_layer *L, uint32_t T) {
        const struct model_config *c = &b->cfg;
        uint32_t H = c->hidden_size, I = c->intermediate_size;
        struct gemm_job jobs[2];
        const float *xin, *xs;

        for (uint32_t t = 0; t < T; t++)
                rmsnorm(b->a + (size_t) t * H, b->h + (size_t) t * H, L->ln_pre_ff, H, c->rms_norm_eps);
        xin = linear_input(&L->gate, b->a, T, b->aq, b->ascale, &xs);
        jobs[0] = (struct gemm_job) { .x = xin, .xscale = xs, .m = T, .w = &L->gate, .y = b->t1 };
        jobs[1] = (struct gemm_job) { .x = xin, .xscale = xs, .m = T, .w = &L->up, .y = b->t2 };
        run_gemms(b, jobs, 2);
        for (size_t i = 0; i < (size_t) T * I; i++)
                b->t1[i] = gelu_tanh(b->t1[i]) * b->t2[i];
        linear(b, &L->down, b->t1, T, b->m1);
}

static void route(struct backend *b, const struct cpu_layer *L, uint32_t T) {
        const struct model_config *c = &b->cfg;
        uint32_t H = c->hidden_size, E = c->n_experts, K = c->top_k_experts;
        float root = (float) pow((double) H, -0.5);

        for (uint32_t t = 0; t < T; t++) {
                float *r = b->a + (size_t) t * H;
                rmsnorm(r, b->h + (size_t) t * H, NULL, H, c->rms_norm_eps);
                for (uint32_t i = 0; i < H; i++)
                        r[i] = r[i] * L->router_scale[i] * root;
        }
        linear(b, &L->router, b->a, T, b->router_logits);
        for (uint32_t t = 0; t < T; t++) {
                const float *lg = b->router_logits + (size_t) t * E;
                int32_t *idx = b->topk_idx + (size_t) t * K;
                float *w = b->topk_w + (size_t) t * K, mx = -INFINITY, sum = 0.0f, ksum = 0.0f;
                float local[MODEL_MAX_EXPERTS];

                for (uint32_t e = 0; e < E; e++)
                        mx = fmaxf(mx, lg[e]);
                for (uint32_t e = 0; e < E; e++) {
                        local[e] = expf(lg[e] - mx);
                        sum += local[e];
                }
                for (uint32_t e = 0; e < E; e++)
                        local[e] /= sum;
                /* top-k by probability, lowest index first among equals */
                for (uint32_t k = 0; k < K; k++) {
                        int32_t best = -1;
                        for (uint32_t e = 0; e < E; e++) {
                                bool taken = false;
                                for (uint32_t j = 0; j < k; j++)
                                        taken |= idx[j] == (int32_t) e;
                                if (!taken && (best < 0 || local[e] > local[best]))
                                        best = (int32_t) e;
                        }
                        idx[k] = best;
                        w[k] = local[best];
                }
                for (uint32_t k = 0; k < K; k++)
                        ksum += w[k];
                for (uint32_t k = 0; k < K; k++)
                        w[k] = (w[k] / ksum) * L->per_expert_scale[idx[k]];
        }
}

static void experts(struct backend *b, const struct cpu_layer *L, uint32_t T) {
        const struct model_config *c = &b->cfg;
        uint32_t H = c->hidden_size, E = c->n_experts, K = c->top_k_experts, I = c->moe_intermediate_size;
        uint32_t n_pairs = T * K, nj = 0;
        bool fp8_in = L->eg[0].scale != NULL;

        /* pre-norm (and FP8 quantization, once per token) of the experts' input */
        for (uint32_t t = 0; t < T; t++) {
                float *z = b->a + (size_t) t * H;
                rmsnorm(z, b->h + (size_t) t * H, L->ln_pre_ff2, H, c->rms_norm_eps);
                if (fp8_in)
                        b->ascale[t] = cpu_quantize_row_fp8(z, H, z);
        }
        /* group (token, slot) pairs by expert, ascending expert id, tokens ascending inside */
        memset(b->expert_count, 0, E * sizeof(uint32_t));
        for (uint32_t i = 0; i < n_pairs; i++)
                b->expert_count[b->topk_idx[i]]++;
        b->expert_start[0] = 0;
        for (uint32_t e = 0; e < E; e++)
                b->expert_start[e + 1] = b->expert_start[e] + b->expert_count[e];
        memset(b->expert_count, 0, E * sizeof(uint32_t));
        for (uint32_t t = 0; t < T; t++)
                for (uint32_t k = 0; k < K; k++) {
                        uint32_t e = (uint32_t) b->topk_idx[(size_t) t * K + k];
                        uint32_t slot = b->expert_start[e] + b->expert_count[e]++;
                        b->pair_token[slot] = t;
                        b->pair_weight[slot] = b->topk_w[(size_t) t * K + k];
                        memcpy(b->pair_z + (size_t) slot * H, b->a + (size_t) t * H, H * sizeof(float));
                        b->pair_scale[slot] = fp8_in ? b->ascale[t] : 1.0f;
                }
        for (uint32_t e = 0; e < E; e++) {
                uint32_t s0 = b->expert_start[e], cnt = b->expert_start[e + 1] - s0;
                if (!cnt)
                        continue;
                b->jobs[nj++] = (struct gemm_job) { .x = b->pair_z + (size_t) s0 * H,
                                                    .xscale = fp8_in ? b->pair_scale + s0 : NULL, .m = cnt,
                                                    .w = &L->eg[e], .y = b->pair_g + (size_t) s0 * I };
                b->jobs[nj++] = (struct gemm_job) { .x = b->pair_z + (size_t) s0 * H,
                                                    .xscale = fp8_in ? b->pair_scale + s0 : NULL, .m = cnt,
                                                    .w = &L->eu[e], .y = b->pair_u + (size_t) s0 * I };
        }
        run_gemms(b, b->jobs, nj);
        for (size_t i = 0; i < (size_t) n_pairs * I; i++)
                b->pair_g[i] = gelu_tanh(b->pair_g[i]) * b->pair_u[i];
        nj = 0;
        for (uint32_t e = 0; e < E; e++) {
                uint32_t s0 = b->expert_start[e], cnt = b->expert_start[e + 1] - s0;
                const float *xs = NULL;
                if (!cnt)
                        continue;
                if (L->ed[e].scale) {
                        for (uint32_t i = s0; i < s0 + cnt; i++)
                                b->pair_dscale[i] = cpu_quantize_row_fp8(b->pair_g + (size_t) i * I, I,
                                                                         b->pair_g + (size_t) i * I);
                        xs = b->pair_dscale + s0;
                }
                b->jobs[nj++] = (struct gemm_job) { .x = b->pair_g + (size_t) s0 * I, .xscale = xs, .m = cnt,
                                                    .w = &L->ed[e], .y = b->pair_d + (size_t) s0 * H };
        }
        run_gemms(b, b->jobs, nj);
        /* combine in ascending expert order per token (as HF's index_add loop) */
        memset(b->m2, 0, (size_t) T * H * sizeof(float));
        for (uint32_t i = 0; i < n_pairs; i++) {
                float *m2 = b->m2 + (size_t) b->pair_token[i] * H, w = b->pair_weight[i];
                const float *d = b->pair_d + (size_t) i * H;
                for (uint32_t j = 0; j < H; j++)
                        m2[j] += d[j] * w;
        }
}

static void ffn_block(struct backend *b, const struct cpu_layer *L, uint32_t T) {
        const struct model_config *c = &b->cfg;
        uint32_t H = c->hidden_size;
        float eps = c->rms_norm_eps;

        dense_mlp(b, L, T);
        if (c->enable_moe) {
                route(b, L, T);
                experts(b, L, T);
        }
        for (uint32_t t = 0; t < T; t++) {
                float *m1 = b->m1 + (size_t) t * H, *m2 = b->m2 + (size_t) t * H;
                const float *h = b->h + (size_t) t * H;
                float *x = b->x + (size_t) t * H;
                if (c->enable_moe) {
                        rmsnorm(m1, m1, L->ln_post_ff1, H, eps);
                        rmsnorm(m2, m2, L->ln_post_ff2, H, eps);
                        for (uint32_t i = 0; i < H; i++)
                                m1[i] += m2[i];
                }
                rmsnorm(m1, m1, L->ln_post_ff, H, eps);
                for (uint32_t i = 0; i < H; i++)
                        x[i] = (h[i] + m1[i]) * L->layer_scalar;
        }
}

/* ---------------------------------------------------------------------------------------------- */
/* steps                                                                                           */

/* Final norm of the rows that need logits, then the LM head in one GEMM; the step's rows are consecutive
 * in the output, from the first sequence that has any. */
static void head_rows(struct backend *b, const struct step_seq *seqs, uint32_t n_seqs, float *logits) {
        const struct model_config *c = &b->cfg;
        uint32_t H = c->hidden_size, V = c->vocab_size, n_rows = 0, first_row = 0;

        for (uint32_t si = 0; si < n_seqs; si++) {
                const struct step_seq *s = &seqs[si];
                if (!s->logits)
                        continue;
                if (!n_rows)
                        first_row = s->out_row;
                for (uint32_t i = s->logits == 2 ? 0 : s->n - 1; i < s->n; i++)
                        rmsnorm(b->logit_rows + (size_t) n_rows++ * H, b->x + (size_t) (s->tok0 + i) * H,
                                b->final_norm, H, c->rms_norm_eps);
        }
        if (n_rows) {
                struct gemm_job job = { .x = b->logit_rows, .m = n_rows, .w = &b->lm_head,
                                        .y = logits + (size_t) first_row * V,
                                        .softcap = c->final_logit_softcapping };
                run_gemms(b, &job, 1);
        }
}

static void run_step(struct backend *b, const struct step_seq *seqs, uint32_t n_seqs, uint32_t T,
                     float *logits) {
        const struct model_config *c = &b->cfg;
        uint32_t H = c->hidden_size;

        for (uint32_t si = 0; si < n_seqs; si++)
                for (uint32_t i = 0; i < seqs[si].n; i++) {
                        float *x = b->x + (size_t) (seqs[si].tok0 + i) * H;
                        int32_t id = seqs[si].tokens[i];
                        if (b->embed.type == CPU_W_BF16) {
                                const uint16_t *e = (const uint16_t *) b->embed.w + (size_t) id * H;
                                for (uint32_t j = 0; j < H; j++)
                                        x[j] = cpu_bf16_to_f32(e[j]) * b->embed_scale;
                        } else {
                                const float *e = (const float *) b->embed.w + (size_t) id * H;
                                for (uint32_t j = 0; j < H; j++)
                                        x[j] = e[j] * b->embed_scale;
                        }
                }
        for (uint32_t li = 0; li < c->n_layers; li++) {
                if (b->dbg_capture)
                        memcpy(b->dbg_capture + (size_t) li * T * H, b->x, (size_t) T * H * sizeof(float));
                attention_block(b, &b->layers[li], seqs, n_seqs, T);
                ffn_block(b, &b->layers[li], T);
        }
        if (b->dbg_capture)
                memcpy(b->dbg_capture + (size_t) c->n_layers * T * H, b->x, (size_t) T * H * sizeof(float));
        head_rows(b, seqs, n_seqs, logits);
}

static int validate_seq(const struct backend *b, const struct backend_seq *s) {
        const struct model_config *c = &b->cfg;
        uint32_t B = b->page_size, end;

        if (!s->tokens || s->n_tokens == 0)
                return -EINVAL;
        if ((uint64_t) s->pos + s->n_tokens > b->max_model_len)
                return -E2BIG;
        end = s->pos + s->n_tokens;
        for (uint32_t i = 0; i < s->n_tokens; i++)
                if (s->tokens[i] < 0 || (uint32_t) s->tokens[i] >= c->vocab_size)
                        return -EINVAL;
        if (b->n_full_layers) {
                uint32_t need = (end + B - 1) / B;
                if (!s->full_pages || s->n_full_pages < need)
                        return -EINVAL;
                for (uint32_t i = 0; i < need; i++)
                        if (s->full_pages[i] >= b->n_full_pages)
                                return -EINVAL;
        }
        if (b->n_sliding_layers) {
                uint32_t need = (end + B - 1) / B;
                if (need > b->n_sliding_ring)
                        need = b->n_sliding_ring;
                if (!s->sliding_pages || s->n_sliding_pages < need)
                        return -EINVAL;
                for (uint32_t i = 0; i < need; i++)
                        if (s->sliding_pages[i] >= b->n_sliding_pages)
                                return -EINVAL;
        }
        return 0;
}

static int validate_batch(const struct backend *b, const struct backend_batch *batch) {
        if (!b || !batch || (batch->n_seqs && !batch->seqs))
                return -EINVAL;
        if (batch->n_seqs > b->max_num_seqs)
                return -E2BIG;
        for (uint32_t si = 0; si < batch->n_seqs; si++) {
                int r = validate_seq(b, &batch->seqs[si]);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int cpu_forward(struct backend *b, const struct backend_batch *batch, float *logits) {
        uint32_t row = 0, n_steps = 0, T = 0;
        struct step_seq *steps;
        int r;

        if (!logits)
                return -EINVAL;
        r = validate_batch(b, batch);
        if (r < 0)
                return r;
        steps = b->steps;
        /* Split into steps of at most max_batched_tokens tokens. Chunking a sequence is exact: every
         * token's arithmetic is independent of how the tokens are grouped. */
        for (uint32_t si = 0; si < batch->n_seqs; si++) {
                const struct backend_seq *s = &batch->seqs[si];
                uint32_t done = 0;
                while (done < s->n_tokens) {
                        uint32_t n = s->n_tokens - done, room = b->max_batched_tokens - T;
                        struct step_seq *st;
                        if (n > room)
                                n = room;
                        st = &steps[n_steps++];
                        *st = (struct step_seq) { .tokens = s->tokens + done, .n = n, .pos = s->pos + done,
                                                  .tok0 = T, .full_pages = s->full_pages,
                                                  .sliding_pages = s->sliding_pages, .out_row = row };
                        if (s->all_logits)
                                st->logits = 2;
                        else if (done + n == s->n_tokens)
                                st->logits = 1;
                        row += st->logits == 2 ? n : (st->logits ? 1 : 0);
                        done += n;
                        T += n;
                        if (T == b->max_batched_tokens) {
                                run_step(b, steps, n_steps, T, logits);
                                n_steps = 0;
                                T = 0;
                        }
                }
        }
        if (n_steps)
                run_step(b, steps, n_steps, T, logits);
        return 0;
}

const struct backend_ops backend_cpu_ops = {
        .name = "cpu",
        .create = cpu_create,
        .destroy = cpu_destroy,
        .get_capacity = cpu_get_capacity,
        .forward = cpu_forward,
};

/* ---------------------------------------------------------------------------------------------- */
/* debug ops (backend-debug.h): one step, the residual stream in and out                          */

/* The batch as exactly one step, validated as forward() does; returns its token count. */
static int plan_one_step(struct backend *b, const struct backend_batch *batch, uint32_t *ret_tokens) {
        uint32_t T = 0, row = 0;
        int r = validate_batch(b, batch);

        if (r < 0)
                return r;
        if (batch->n_seqs == 0)
                return -EINVAL;
        for (uint32_t si = 0; si < batch->n_seqs; si++) {
                const struct backend_seq *s = &batch->seqs[si];
                struct step_seq *st = &b->steps[si];
                if (s->n_tokens > b->max_batched_tokens - T)
                        return -E2BIG;
                *st = (struct step_seq) { .tokens = s->tokens, .n = s->n_tokens, .pos = s->pos, .tok0 = T,
                                          .full_pages = s->full_pages, .sliding_pages = s->sliding_pages,
                                          .logits = s->all_logits ? 2 : 1, .out_row = row };
                row += s->all_logits ? s->n_tokens : 1;
                T += s->n_tokens;
        }
        *ret_tokens = T;
        return 0;
}

static int cpu_debug_capture(struct backend *b, const struct backend_batch *batch, float *logits,
                             float *x_layers) {
        uint32_t T;
        int r;

        if (!logits || !x_layers)
                return -EINVAL;
        r = plan_one_step(b, batch, &T);
        if (r < 0)
                return r;
        b->dbg_capture = x_layers;
        run_step(b, b->steps, batch->n_seqs, T, logits);
        b->dbg_capture = NULL;
        return 0;
}

static int cpu_debug_run_layer(struct backend *b, const struct backend_batch *batch, uint32_t layer,
                               const float *x_in, float *y_out) {
        uint32_t T;
        size_t bytes;
        int r;

        if (!b || !x_in || !y_out || layer >= b->cfg.n_layers)
                return -EINVAL;
        r = plan_one_step(b, batch, &T);
        if (r < 0)
                return r;
        bytes = (size_t) T * b->cfg.hidden_size * sizeof(float);
        memcpy(b->x, x_in, bytes);
        attention_block(b, &b->layers[layer], b->steps, batch->n_seqs, T);
        ffn_block(b, &b->layers[layer], T);
        memcpy(y_out, b->x, bytes);
        return 0;
}

static int cpu_debug_head(struct backend *b, const struct backend_batch *batch, const float *x_in,
                          float *logits) {
        uint32_t T;
        int r;

        if (!b || !x_in || !logits)
                return -EINVAL;
        r = plan_one_step(b, batch, &T);
        if (r < 0)
                return r;
        memcpy(b->x, x_in, (size_t) T * b->cfg.hidden_size * sizeof(float));
        head_rows(b, b->steps, batch->n_seqs, logits);
        return 0;
}

const struct backend_debug_ops backend_cpu_debug_ops = {
        .capture = cpu_debug_capture,
        .run_layer = cpu_debug_run_layer,
        .head = cpu_debug_head,
};
