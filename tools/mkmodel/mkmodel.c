/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gemma4-mkmodel: writes a synthetic Gemma 4 checkpoint directory in the on-disk form of the real one
 * (nested config.json, safetensors shards of at most 5 GB with model.safetensors.index.json, optional FP8
 * compressed-tensors layout, tokenizer.json). Weights are random with realistic magnitudes.
 *
 * Full-size presets are written at disk speed: the layout (headers, offsets) is computed first, then
 * worker threads generate fixed-size chunks and pwrite them in place, so memory stays at one chunk per
 * thread. Every chunk has its own RNG stream derived from (seed, tensor, chunk), so the output does not
 * depend on the thread count.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "build-config.h"
#include "model/model-internal.h"

#define DEFAULT_SHARD_BYTES 5000000000ull       /* transformers' "5GB" */
#define CHUNK_BYTES (8u << 20)
#define TABLE_BITS 16
#define TABLE_SIZE (1u << TABLE_BITS)

struct geometry {
        const char *preset;
        uint32_t vocab, hidden, layers, heads, kv, head_dim, gkv, ghead_dim, window;
        uint32_t inter, experts, topk, moe_inter;
        uint32_t max_pos;
        uint32_t full_every;    /* every n-th layer is full attention (and always the last) */
        bool fp8;
        /* --config: the geometry of a given config.json instead of a preset */
        const struct model_config *cfg;
        const struct quant_config *quant;
        bool flat, no_k_eq_v, no_moe, untied;
};

static const struct geometry presets[] = {
        { "demo", 262144, 256, 6, 4, 2, 64, 1, 128, 128, 512, 16, 4, 128, 262144, 3, false },
        { "26b-a4b-fp8", 262144, 2816, 30, 16, 8, 256, 2, 512, 1024, 2112, 128, 8, 704, 262144, 6, true },
        { "26b-a4b-bf16", 262144, 2816, 30, 16, 8, 256, 2, 512, 1024, 2112, 128, 8, 704, 262144, 6, false },
};

enum fill {
        FILL_NORMAL,            /* BF16 N(0, a^2) */
        FILL_FP8,               /* E4M3 codes of a row-quantized normal weight */
        FILL_FP8_SCALE,         /* BF16 per-row scales for FILL_FP8: a * 4.5 / 448 * (1 +- 10 %) */
        FILL_AROUND,            /* BF16 a * (1 + b * N(0,1)), kept positive */
        FILL_UNIFORM,           /* BF16 uniform in [a, b) */
};

struct gen_tensor {
        char *name;
        enum tensor_dtype dtype;
        uint32_t ndim;
        uint64_t shape[3];
        enum fill fill;
        float a, b;
        uint32_t shard;
        uint64_t nbytes;
        uint64_t file_offset;
        uint16_t *table;        /* FILL_NORMAL: BF16 quantiles of N(0, a^2) */
        bool owns_table;
};

struct chunk {
        uint32_t tensor;
        uint32_t index;         /* chunk number within the tensor */
        uint64_t first, count;  /* elements */
};

struct gen {
        const struct geometry *g;
        uint64_t seed;
        uint64_t max_shard_bytes;
        struct gen_tensor *t;
        size_t n, cap;
        uint32_t n_shards;
        int *fds;
        struct chunk *chunks;
        size_t n_chunks;
        atomic_size_t next_chunk;
        atomic_int error;
        uint8_t fp8_table[TABLE_SIZE];
        float normal_table[TABLE_SIZE];
};

/* ---- random numbers ---- */

static uint64_t splitmix64(uint64_t *s) {
        uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

struct rng {
        uint64_t s;
};

static inline uint64_t rng_next(struct rng *r) {
        /* xorshift64* */
        r->s ^= r->s >> 12;
        r->s ^= r->s << 25;
        r->s ^= r->s >> 27;
        return r->s * 0x2545f4914f6cdd1dull;
}

static inline float rng_uniform(struct rng *r) {
        return (float) (rng_next(r) >> 40) * 0x1p-24f;
}

/* Inverse of the standard normal CDF: the Abramowitz-Stegun 26.2.23 start, polished by Newton steps. */
static double normal_quantile(double p) {
        double q = p < 0.5 ? p : 1 - p, t = sqrt(-2 * log(q));
        double x = t - (2.515517 + 0.802853 * t + 0.010328 * t * t) /
                       (1 + 1.432788 * t + 0.189269 * t * t + 0.001308 * t * t * t);
        if (p < 0.5)
                x = -x;
        for (int i = 0; i < 3; i++) {
                double cdf = 0.5 * erfc(-x / M_SQRT2), pdf = exp(-0.5 * x * x) / sqrt(2 * M_PI);
                x -= (cdf - p) / pdf;
        }
        return x;
}

static void build_tables(struct gen *G) {
        for (uint32_t i = 0; i < TABLE_SIZE; i++) {
                double z = normal_quantile((i + 0.5) / TABLE_SIZE);
                G->normal_table[i] = (float) z;
                /* A row scaled so its largest |w| is about 448: sigma = 448 / 4.5. */
                G->fp8_table[i] = f32_to_fp8_e4m3((float) (z * 448.0 / 4.5));
        }
}

/* ---- tensor list ---- */

static int add_tensor(struct gen *G, enum tensor_dtype dt, enum fill fill, float a, float b, uint32_t ndim,
                      uint64_t d0, uint64_t d1, uint64_t d2, const char *fmt, ...)
        __attribute__((format(printf, 10, 11)));
static int add_tensor(struct gen *G, enum tensor_dtype dt, enum fill fill, float a, float b, uint32_t ndim,
                      uint64_t d0, uint64_t d1, uint64_t d2, const char *fmt, ...) {
        struct gen_tensor *t;
        va_list ap;

        if (G->n == G->cap) {
                size_t cap = G->cap ? 2 * G->cap : 1024;
                void *p = realloc(G->t, cap * sizeof(*G->t));
                if (!p)
                        return -ENOMEM;
                G->t = p;
                G->cap = cap;
        }
        t = &G->t[G->n];
        memset(t, 0, sizeof(*t));
        va_start(ap, fmt);
        if (vasprintf(&t->name, fmt, ap) < 0)
                t->name = NULL;
        va_end(ap);
        if (!t->name)
                return -ENOMEM;
        t->dtype = dt;
        t->fill = fill;
        t->a = a;
        t->b = b;
        t->ndim = ndim;
        t->shape[0] = d0;
        t->shape[1] = d1;
        t->shape[2] = d2;
        t->nbytes = tensor_dtype_size(dt);
        for (uint32_t i = 0; i < ndim; i++)
                t->nbytes *= t->shape[i];
        G->n++;
        return 0;
}

static bool is_full_layer(const struct geometry *g, uint32_t l) {
        if (g->cfg)
                return g->cfg->layer_type[l] == LAYER_FULL;
        return l == g->layers - 1 || (l + 1) % g->full_every == 0;
}

static bool ignored(const struct geometry *g, const char *module) {
        for (uint32_t i = 0; g->quant && i < g->quant->n_ignore; i++)
                if (strcmp(g->quant->ignore[i], module) == 0)
                        return true;
        return false;
}

/* A linear layer: BF16 N(0, 1/in), or FP8 codes + BF16 [out, 1] scales. */
static int add_linear(struct gen *G, uint64_t out, uint64_t in, const char *module) {
        float std = (float) (1.0 / sqrt((double) in));
        int r;

        if (!G->g->fp8 || ignored(G->g, module))
                return add_tensor(G, TENSOR_DTYPE_BF16, FILL_NORMAL, std, 0, 2, out, in, 0, "%s.weight",
                                  module);
        r = add_tensor(G, TENSOR_DTYPE_F8_E4M3, FILL_FP8, 0, 0, 2, out, in, 0, "%s.weight", module);
        if (r < 0)
                return r;
        return add_tensor(G, TENSOR_DTYPE_BF16, FILL_FP8_SCALE, std, 0, 2, out, 1, 0, "%s.weight_scale",
                          module);
}

/* Router and experts of layer l: fused 3-D BF16 experts as released, or per-expert FP8 linears. */
static int add_moe(struct gen *G, const char *P, uint32_t l) {
        const struct geometry *g = G->g;
        const enum tensor_dtype bf = TENSOR_DTYPE_BF16;
        uint32_t H = g->hidden, I = g->moe_inter;
        char m[160];
        int r = 0;

        r |= add_tensor(G, bf, FILL_NORMAL, 1.0f, 0, 2, g->experts, H, 0, "%slayers.%u.router.proj.weight",
                        P, l);
        r |= add_tensor(G, bf, FILL_AROUND, 1.0f, 0.3f, 1, H, 0, 0, "%slayers.%u.router.scale", P, l);
        r |= add_tensor(G, bf, FILL_UNIFORM, 0.5f, 1.5f, 1, g->experts, 0, 0,
                        "%slayers.%u.router.per_expert_scale", P, l);
        if (!g->fp8) {
                r |= add_tensor(G, bf, FILL_NORMAL, (float) (1.0 / sqrt(H)), 0, 3, g->experts, 2ull * I, H,
                                "%slayers.%u.experts.gate_up_proj", P, l);
                r |= add_tensor(G, bf, FILL_NORMAL, (float) (1.0 / sqrt(I)), 0, 3, g->experts, H, I,
                                "%slayers.%u.experts.down_proj", P, l);
                return r;
        }
        for (uint32_t e = 0; e < g->experts; e++) {
                snprintf(m, sizeof(m), "%slayers.%u.experts.%u.gate_proj", P, l, e);
                r |= add_linear(G, I, H, m);
                snprintf(m, sizeof(m), "%slayers.%u.experts.%u.up_proj", P, l, e);
                r |= add_linear(G, I, H, m);
                snprintf(m, sizeof(m), "%slayers.%u.experts.%u.down_proj", P, l, e);
                r |= add_linear(G, H, I, m);
        }
        return r;
}

static int build_tensor_list(struct gen *G) {
        const struct geometry *g = G->g;
        const char *P = g->flat ? "model." : "model.language_model.";
        const enum tensor_dtype bf = TENSOR_DTYPE_BF16;
        uint32_t H = g->hidden;
        char m[160];
        int r = 0;

        /* Module order, as transformers walks the model when it fills shards. */
        r |= add_tensor(G, bf, FILL_NORMAL, (float) (2.0 / sqrt(H)), 0, 2, g->vocab, H, 0,
                        "%sembed_tokens.weight", P);
        for (uint32_t l = 0; l < g->layers && r == 0; l++) {
                bool full = is_full_layer(g, l);
                uint32_t hd = full ? g->ghead_dim : g->head_dim, kv = full ? g->gkv : g->kv;
                /* q/k norms: q around 1, k around 1.5/sqrt(hd) so that scores (scale 1.0) spread ~1.5 */
                float kmean = (float) (1.5 / sqrt(hd));

                snprintf(m, sizeof(m), "%slayers.%u.self_attn.q_proj", P, l);
                r |= add_linear(G, (uint64_t) g->heads * hd, H, m);
                snprintf(m, sizeof(m), "%slayers.%u.self_attn.k_proj", P, l);
                r |= add_linear(G, (uint64_t) kv * hd, H, m);
                if (!full || g->no_k_eq_v) {
                        snprintf(m, sizeof(m), "%slayers.%u.self_attn.v_proj", P, l);
                        r |= add_linear(G, (uint64_t) kv * hd, H, m);
                }
                snprintf(m, sizeof(m), "%slayers.%u.self_attn.o_proj", P, l);
                r |= add_linear(G, H, (uint64_t) g->heads * hd, m);
                r |= add_tensor(G, bf, FILL_AROUND, 1.0f, 0.2f, 1, hd, 0, 0,
                                "%slayers.%u.self_attn.q_norm.weight", P, l);
                r |= add_tensor(G, bf, FILL_AROUND, kmean, 0.25f, 1, hd, 0, 0,
                                "%slayers.%u.self_attn.k_norm.weight", P, l);
                snprintf(m, sizeof(m), "%slayers.%u.mlp.gate_proj", P, l);
                r |= add_linear(G, g->inter, H, m);
                snprintf(m, sizeof(m), "%slayers.%u.mlp.up_proj", P, l);
                r |= add_linear(G, g->inter, H, m);
                snprintf(m, sizeof(m), "%slayers.%u.mlp.down_proj", P, l);
                r |= add_linear(G, H, g->inter, m);
                if (!g->no_moe)
                        r |= add_moe(G, P, l);
                static const char *const norms[] = {
                        "input_layernorm",
                        "post_attention_layernorm",
                        "pre_feedforward_layernorm",
                        "post_feedforward_layernorm",
                        "post_feedforward_layernorm_1",
                        "post_feedforward_layernorm_2",
                        "pre_feedforward_layernorm_2",
                };
                /* the last three norms belong to the MoE branch */
                for (size_t i = 0; i < (g->no_moe ? 4u : 7u); i++)
                        r |= add_tensor(G, bf, FILL_AROUND, 1.0f, 0.25f, 1, H, 0, 0, "%slayers.%u.%s.weight",
                                        P, l, norms[i]);
                r |= add_tensor(G, bf, FILL_UNIFORM, 0.1f, 0.9f, 1, 1, 0, 0, "%slayers.%u.layer_scalar", P,
                                l);
        }
        r |= add_tensor(G, bf, FILL_AROUND, 1.0f, 0.25f, 1, H, 0, 0, "%snorm.weight", P);
        if (g->untied)
                r |= add_tensor(G, bf, FILL_NORMAL, (float) (2.0 / sqrt(H)), 0, 2, g->vocab, H, 0,
                                "lm_head.weight");
        /* The vision tower's input projection: skipped by text-only loaders, present in the real files. */
        if (!g->flat)
                r |= add_tensor(G, bf, FILL_NORMAL, 0.02f, 0, 2, H, 1152, 0,
                                "model.embed_vision.embedding_projection.weight");
        return r ? -ENOMEM : 0;
}

/* ---- config files ---- */

static json_t *rope_json(void) {
        return json_pack("{s:{s:s,s:f},s:{s:f,s:s,s:f}}",
                         "sliding_attention", "rope_type", "default", "rope_theta", 10000.0,
                         "full_attention", "partial_rotary_factor", 0.25, "rope_type", "proportional",
                         "rope_theta", 1000000.0);
}

static json_t *quant_json(const struct geometry *g) {
        json_t *ignore = json_pack("[s,s]", "lm_head", "model.embed_vision.embedding_projection");
        for (uint32_t l = 0; l < g->layers; l++) {
                char s[96];
                snprintf(s, sizeof(s), "model.language_model.layers.%u.router.proj", l);
                json_array_append_new(ignore, json_string(s));
        }
        json_t *args_w = json_pack("{s:n,s:n,s:b,s:n,s:i,s:s,s:{},s:n,s:s,s:b,s:s,s:n}",
                                   "actorder", "block_structure", "dynamic", 0, "group_size", "num_bits", 8,
                                   "observer", "memoryless_minmax", "observer_kwargs", "scale_dtype",
                                   "strategy", "channel", "symmetric", 1, "type", "float", "zp_dtype");
        json_t *args_a = json_pack("{s:n,s:n,s:b,s:n,s:i,s:n,s:{},s:n,s:s,s:b,s:s,s:n}",
                                   "actorder", "block_structure", "dynamic", 1, "group_size", "num_bits", 8,
                                   "observer", "observer_kwargs", "scale_dtype", "strategy", "token",
                                   "symmetric", 1, "type", "float", "zp_dtype");
        json_t *group =
                json_pack("{s:s,s:o,s:n,s:[s],s:o}", "format", "float-quantized", "input_activations",
                          args_a, "output_activations", "targets", "Linear", "weights", args_w);
        return json_pack("{s:{s:o},s:s,s:n,s:o,s:n,s:s,s:s,s:{},s:{},s:s}",
                         "config_groups", "group_0", group, "format", "float-quantized",
                         "global_compression_ratio", "ignore", ignore, "kv_cache_scheme",
                         "quant_method", "compressed-tensors", "quantization_status", "compressed",
                         "sparsity_config", "transform_config", "version", "0.12.0");
}

static int write_json(const char *dir, const char *file, json_t *j) {
        char path[PATH_MAX];
        int r;

        snprintf(path, sizeof(path), "%s/%s", dir, file);
        r = json_dump_file(j, path, JSON_INDENT(2) | JSON_SORT_KEYS) < 0 ? -EIO : 0;
        json_decref(j);
        if (r < 0)
                fprintf(stderr, "gemma4-mkmodel: cannot write %s\n", path);
        return r;
}

static int write_configs(const struct geometry *g, const char *dir) {
        json_t *layer_types = json_array(), *text, *vision, *root;
        int r;

        for (uint32_t l = 0; l < g->layers; l++)
                json_array_append_new(layer_types, json_string(is_full_layer(g, l) ? "full_attention"
                                                                                   : "sliding_attention"));
        text = json_pack(
                "{s:b,s:f,s:b,s:i,s:s,s:b,s:i,s:f,s:i,s:i,s:s,s:i,s:i,s:f,s:i,s:o,s:i,s:s,s:i,s:i,s:i,"
                "s:i,s:i,s:i,s:i,s:i}",
                "attention_bias", 0, "attention_dropout", 0.0, "attention_k_eq_v", 1, "bos_token_id", 2,
                "dtype", "bfloat16", "enable_moe_block", 1, "eos_token_id", 1, "final_logit_softcapping",
                30.0, "global_head_dim", g->ghead_dim, "head_dim", g->head_dim, "hidden_activation",
                "gelu_pytorch_tanh", "hidden_size", g->hidden, "hidden_size_per_layer_input", 0,
                "initializer_range", 0.02, "intermediate_size", g->inter, "layer_types", layer_types,
                "max_position_embeddings", g->max_pos, "model_type", "gemma4_text", "moe_intermediate_size",
                g->moe_inter, "num_attention_heads", g->heads, "num_experts", g->experts,
                "num_global_key_value_heads", g->gkv, "num_hidden_layers", g->layers, "num_key_value_heads",
                g->kv, "num_kv_shared_layers", 0, "pad_token_id", 0);
        json_object_set_new(text, "rms_norm_eps", json_real(1e-6));
        json_object_set_new(text, "rope_parameters", rope_json());
        json_object_set_new(text, "sliding_window", json_integer(g->window));
        json_object_set_new(text, "tie_word_embeddings", json_true());
        json_object_set_new(text, "top_k_experts", json_integer(g->topk));
        json_object_set_new(text, "use_bidirectional_attention", json_string("vision"));
        json_object_set_new(text, "use_cache", json_true());
        json_object_set_new(text, "use_double_wide_mlp", json_false());
        json_object_set_new(text, "vocab_size", json_integer(g->vocab));
        json_object_set_new(text, "vocab_size_per_layer_input", json_integer(g->vocab));
        vision = json_pack(
                "{s:b,s:f,s:s,s:i,s:s,s:i,s:f,s:i,s:i,s:s,s:i,s:i,s:i,s:i,s:i,s:f,s:{s:s,s:f},s:b,s:b}",
                "attention_bias", 0, "attention_dropout", 0.0, "dtype", "bfloat16", "head_dim", 72,
                "hidden_activation", "gelu_pytorch_tanh", "hidden_size", 1152, "initializer_range", 0.02,
                "intermediate_size", 4304, "max_position_embeddings", 131072, "model_type", "gemma4_vision",
                "num_attention_heads", 16, "num_hidden_layers", 27, "num_key_value_heads", 16, "patch_size",
                16, "pooling_kernel_size", 3, "rms_norm_eps", 1e-6, "rope_parameters", "rope_type",
                "default", "rope_theta", 100.0, "standardize", 1, "use_clipped_linears", 0);
        json_object_set_new(vision, "position_embedding_size", json_integer(10240));
        root = json_pack(
                "{s:[s],s:n,s:i,s:i,s:i,s:s,s:i,s:i,s:i,s:[i,i,i],s:i,s:f,s:s,s:o,s:b,s:s,s:i,s:o,s:i}",
                "architectures", "Gemma4ForConditionalGeneration", "audio_config", "audio_token_id", 258881,
                "boa_token_id", 256000, "boi_token_id", 255999, "dtype", "bfloat16", "eoa_token_id", 258883,
                "eoa_token_index", 258883, "eoi_token_id", 258882, "eos_token_id", 1, 106, 50,
                "image_token_id", 258880, "initializer_range", 0.02, "model_type", "gemma4", "text_config",
                text, "tie_word_embeddings", 1, "transformers_version", "5.17.0", "video_token_id", 258884,
                "vision_config", vision, "vision_soft_tokens_per_image", 280);
        if (g->fp8)
                json_object_set_new(root, "quantization_config", quant_json(g));
        r = write_json(dir, "config.json", root);
        if (r < 0)
                return r;
        return write_json(dir, "generation_config.json",
                          json_pack("{s:i,s:b,s:[i,i,i],s:i,s:f,s:i,s:f,s:s}", "bos_token_id", 2,
                                    "do_sample", 1, "eos_token_id", 1, 106, 50, "pad_token_id", 0,
                                    "temperature", 1.0, "top_k", 64, "top_p", 0.95, "transformers_version",
                                    "5.17.0"));
}

/* ---- data ---- */

static int build_bf16_tables(struct gen *G) {
        /* One table per distinct standard deviation (a handful per model). */
        for (size_t i = 0; i < G->n; i++) {
                struct gen_tensor *t = &G->t[i];
                if (t->fill != FILL_NORMAL)
                        continue;
                for (size_t k = 0; k < i && !t->table; k++)
                        if (G->t[k].fill == FILL_NORMAL && G->t[k].a == t->a)
                                t->table = G->t[k].table;
                if (t->table)
                        continue;
                t->table = malloc(TABLE_SIZE * sizeof(uint16_t));
                if (!t->table)
                        return -ENOMEM;
                t->owns_table = true;
                for (uint32_t j = 0; j < TABLE_SIZE; j++)
                        t->table[j] = f32_to_bf16(G->normal_table[j] * t->a);
        }
        return 0;
}

static void fill_chunk(const struct gen *G, const struct gen_tensor *t, const struct chunk *c,
                       uint8_t *buf) {
        uint64_t s = G->seed ^ ((uint64_t) c->tensor * 0x632be59bd9b4e019ull) ^ ((uint64_t) c->index << 32);
        struct rng r = { splitmix64(&s) | 1 };
        uint16_t *h = (uint16_t *) buf;
        uint64_t i = 0, n = c->count;

        switch (t->fill) {
        case FILL_FP8:
                for (; i + 4 <= n; i += 4) {
                        uint64_t x = rng_next(&r);
                        buf[i] = G->fp8_table[x & 0xffff];
                        buf[i + 1] = G->fp8_table[(x >> 16) & 0xffff];
                        buf[i + 2] = G->fp8_table[(x >> 32) & 0xffff];
                        buf[i + 3] = G->fp8_table[x >> 48];
                }
                for (; i < n; i++)
                        buf[i] = G->fp8_table[rng_next(&r) >> 48];
                break;
        case FILL_NORMAL:
                for (; i + 4 <= n; i += 4) {
                        uint64_t x = rng_next(&r);
                        h[i] = t->table[x & 0xffff];
                        h[i + 1] = t->table[(x >> 16) & 0xffff];
                        h[i + 2] = t->table[(x >> 32) & 0xffff];
                        h[i + 3] = t->table[x >> 48];
                }
                for (; i < n; i++)
                        h[i] = t->table[rng_next(&r) >> 48];
                break;
        case FILL_FP8_SCALE:
                for (; i < n; i++) {
                        float z = G->normal_table[rng_next(&r) >> 48];
                        h[i] = f32_to_bf16(t->a * 4.5f / 448.0f *
                                           (1.0f + 0.1f * fmaxf(-3.0f, fminf(3.0f, z))));
                }
                break;
        case FILL_AROUND:
                for (; i < n; i++) {
                        float z = G->normal_table[rng_next(&r) >> 48];
                        h[i] = f32_to_bf16(t->a * fmaxf(0.2f, 1.0f + t->b * z));
                }
                break;
        case FILL_UNIFORM:
                for (; i < n; i++)
                        h[i] = f32_to_bf16(t->a + (t->b - t->a) * rng_uniform(&r));
                break;
        }
}

static void *worker(void *arg) {
        struct gen *G = arg;
        uint8_t *buf = malloc(CHUNK_BYTES);

        if (!buf) {
                atomic_store(&G->error, -ENOMEM);
                return NULL;
        }
        for (;;) {
                size_t k = atomic_fetch_add(&G->next_chunk, 1);
                if (k >= G->n_chunks || atomic_load(&G->error))
                        break;
                const struct chunk *c = &G->chunks[k];
                const struct gen_tensor *t = &G->t[c->tensor];
                size_t es = tensor_dtype_size(t->dtype);
                fill_chunk(G, t, c, buf);
                int r = st_pwrite_all(G->fds[t->shard], buf, c->count * es, t->file_offset + c->first * es);
                if (r < 0) {
                        atomic_store(&G->error, r);
                        break;
                }
        }
        free(buf);
        return NULL;
}

static int cmp_by_offset(const void *a, const void *b) {
        const struct gen_tensor *const *x = a, *const *y = b;
        if ((*x)->shard != (*y)->shard)
                return (*x)->shard < (*y)->shard ? -1 : 1;
        return (*x)->file_offset < (*y)->file_offset ? -1 : (*x)->file_offset > (*y)->file_offset;
}

static void shard_name(char *buf, size_t len, uint32_t i, uint32_t n) {
        if (n == 1)
                snprintf(buf, len, "model.safetensors");
        else
                snprintf(buf, len, "model-%05u-of-%05u.safetensors", i + 1, n);
}

/* Assigns shards (module order, new shard when the next tensor would pass 5 GB), lays out each shard with
 * the reference writer's ordering, writes headers and sizes the files. */
static int layout_and_open(struct gen *G, const char *dir, uint64_t *ret_total) {
        uint64_t cur = 0, total = 0;
        uint32_t shard = 0;
        char name[64], path[PATH_MAX];
        json_t *wm = json_object();
        int r = 0;

        for (size_t i = 0; i < G->n; i++) {
                if (cur > 0 && cur + G->t[i].nbytes > G->max_shard_bytes) {
                        shard++;
                        cur = 0;
                }
                G->t[i].shard = shard;
                cur += G->t[i].nbytes;
                total += G->t[i].nbytes;
        }
        G->n_shards = shard + 1;
        G->fds = calloc(G->n_shards, sizeof(int));
        if (!G->fds)
                return -ENOMEM;
        for (uint32_t s = 0; s < G->n_shards; s++)
                G->fds[s] = -1;
        for (uint32_t s = 0; s < G->n_shards && r == 0; s++) {
                size_t n = 0, k = 0;
                struct st_out_tensor *ot;
                char *prefix = NULL;
                uint64_t prefix_len, file_size;

                for (size_t i = 0; i < G->n; i++)
                        n += G->t[i].shard == s;
                ot = calloc(n, sizeof(*ot));
                if (!ot)
                        return -ENOMEM;
                for (size_t i = 0; i < G->n; i++) {
                        const struct gen_tensor *t = &G->t[i];
                        if (t->shard != s)
                                continue;
                        /* .data carries our tensor back through the reordering */
                        ot[k] = (struct st_out_tensor) { .name = t->name, .dtype = t->dtype, .ndim = t->ndim,
                                                         .data = t };
                        memcpy(ot[k].shape, t->shape, sizeof(t->shape));
                        k++;
                }
                r = st_layout_build(ot, n, &prefix, &prefix_len, &file_size);
                if (r == 0) {
                        for (size_t q = 0; q < n; q++)
                                ((struct gen_tensor *) ot[q].data)->file_offset = ot[q].file_offset;
                        shard_name(name, sizeof(name), s, G->n_shards);
                        snprintf(path, sizeof(path), "%s/%s", dir, name);
                        G->fds[s] = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
                        if (G->fds[s] < 0)
                                r = -errno;
                        else if (ftruncate(G->fds[s], (off_t) file_size) < 0)
                                r = -errno;
                        else
                                r = st_pwrite_all(G->fds[s], (const uint8_t *) prefix, prefix_len, 0);
                        if (r < 0)
                                fprintf(stderr, "gemma4-mkmodel: %s: %s\n", path, strerror(-r));
                        for (size_t q = 0; q < n; q++)
                                json_object_set_new(wm, ot[q].name, json_string(name));
                }
                free(prefix);
                free(ot);
        }
        if (r == 0 && G->n_shards > 1) {
                json_t *idx = json_pack("{s:{s:I},s:o}", "metadata", "total_size", (json_int_t) total,
                                        "weight_map", wm);
                r = write_json(dir, "model.safetensors.index.json", idx);
                snprintf(path, sizeof(path), "%s/model.safetensors", dir);
                unlink(path);           /* a stale single file would shadow nothing, but confuses people */
        } else {
                json_decref(wm);
                snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
                unlink(path);           /* a stale index would win over the new single file */
        }
        *ret_total = total;
        return r;
}

static int build_chunks(struct gen *G) {
        struct gen_tensor **order = calloc(G->n, sizeof(*order));
        size_t n = 0;

        if (!order)
                return -ENOMEM;
        for (size_t i = 0; i < G->n; i++) {
                order[i] = &G->t[i];
                n += (G->t[i].nbytes + CHUNK_BYTES - 1) / CHUNK_BYTES + 1;
        }
        /* Chunks in file order, so the disk sees mostly sequential writes. */
        qsort(order, G->n, sizeof(*order), cmp_by_offset);
        G->chunks = calloc(n, sizeof(*G->chunks));
        if (!G->chunks) {
                free(order);
                return -ENOMEM;
        }
        for (size_t i = 0; i < G->n; i++) {
                const struct gen_tensor *t = order[i];
                uint64_t es = tensor_dtype_size(t->dtype), count = t->nbytes / es, per = CHUNK_BYTES / es;
                for (uint64_t first = 0, k = 0; first < count; first += per, k++)
                        G->chunks[G->n_chunks++] = (struct chunk) {
                                .tensor = (uint32_t) (t - G->t), .index = (uint32_t) k, .first = first,
                                .count = count - first < per ? count - first : per,
                        };
        }
        free(order);
        return 0;
}

static int copy_file(const char *from, const char *to) {
        char buf[1 << 16];
        uint64_t off = 0;
        int in, out, r = 0;
        ssize_t k;

        in = open(from, O_RDONLY | O_CLOEXEC);
        if (in < 0)
                return -errno;
        out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (out < 0) {
                r = -errno;
                close(in);
                return r;
        }
        while ((k = read(in, buf, sizeof(buf))) != 0) {
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        r = -errno;
                        break;
                }
                if ((r = st_pwrite_all(out, (const uint8_t *) buf, (uint64_t) k, off)) < 0)
                        break;
                off += (uint64_t) k;
        }
        close(in);
        if (close(out) < 0 && r == 0)
                r = -errno;
        return r;
}

static double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void usage(FILE *f) {
        fprintf(f, "Usage: gemma4-mkmodel --preset demo|26b-a4b-fp8|26b-a4b-bf16 --out DIR [options]\n"
                   "       gemma4-mkmodel --config config.json --out DIR [options]\n"
                   "Writes a synthetic Gemma 4 checkpoint with random weights.\n\n"
                   "  --preset NAME      geometry and format (docs/model-loading.md lists them)\n"
                   "  --config FILE      instead, the geometry, layout and format of this config.json\n"
                   "                     (copied as is; FP8 when it has a quantization_config)\n"
                   "  --out DIR          output directory (created if missing; files in it are replaced)\n"
                   "  --seed N           random seed (default 1)\n"
                   "  --tokenizer FILE   tokenizer.json to copy (default: $GEMMA4D_TOKENIZER_JSON, then\n"
                   "                     <source>/.deps/fixtures/tokenizer.json when present)\n"
                   "  --layers N         decoder layers instead of the preset's (the last is always full)\n"
                   "  --vocab N          vocabulary size instead of the preset's (tests only)\n"
                   "  --experts N        experts per layer instead of the preset's (tests only)\n"
                   "  --threads N        writer threads (default: all online CPUs)\n"
                   "  --shard-size BYTES largest shard before a new one starts (default 5000000000)\n"
                   "  --verify           load the result with the daemon's loader and report\n"
                   "  --sync             fdatasync the shards before exiting\n"
                   "  -h, --help         this text\n");
}

static const char *pick_tokenizer(const char *arg, char *buf, size_t len) {
        const char *env = getenv("GEMMA4D_TOKENIZER_JSON");
        if (arg)
                return arg;
        if (env && *env)
                return env;
        snprintf(buf, len, "%s/.deps/fixtures/tokenizer.json", GEMMA4D_SOURCE_ROOT);
        return access(buf, R_OK) == 0 ? buf : NULL;
}

int main(int argc, char **argv) {
        static const struct option opts[] = {
                { "preset", required_argument, NULL, 'p' },
                { "config", required_argument, NULL, 'c' },
                { "out", required_argument, NULL, 'o' },
                { "seed", required_argument, NULL, 's' },
                { "tokenizer", required_argument, NULL, 't' },
                { "layers", required_argument, NULL, 'l' },
                { "threads", required_argument, NULL, 'j' },
                { "vocab", required_argument, NULL, 'v' },
                { "experts", required_argument, NULL, 'e' },
                { "shard-size", required_argument, NULL, 'z' },
                { "sync", no_argument, NULL, 'S' },
                { "verify", no_argument, NULL, 'V' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        const char *preset = NULL, *out = NULL, *tok_arg = NULL, *config = NULL, *tok;
        struct model_config mcfg;
        struct quant_config mquant = { 0 };
        struct geometry g;
        struct gen G = { 0 };
        unsigned long long seed = 1, shard_bytes = DEFAULT_SHARD_BYTES;
        long layers = 0, vocab = 0, experts = 0, threads = sysconf(_SC_NPROCESSORS_ONLN);
        bool do_sync = false, verify = false, found = false;
        char tokbuf[PATH_MAX], path[PATH_MAX];
        uint64_t total = 0;
        pthread_t *tids = NULL;
        double t0, t1;
        int c, r = 0;

        while ((c = getopt_long(argc, argv, "h", opts, NULL)) >= 0) {
                char *end;
                switch (c) {
                case 'p':
                        preset = optarg;
                        break;
                case 'c':
                        config = optarg;
                        break;
                case 'o':
                        out = optarg;
                        break;
                case 't':
                        tok_arg = optarg;
                        break;
                case 's':
                        errno = 0;
                        seed = strtoull(optarg, &end, 0);
                        if (errno || *end || !*optarg) {
                                fprintf(stderr, "gemma4-mkmodel: --seed: not a number: %s\n", optarg);
                                return 2;
                        }
                        break;
                case 'l':
                case 'j':
                case 'v':
                case 'e': {
                        static const struct { int c; const char *name; long max; } lim[] = {
                                { 'l', "layers", MODEL_MAX_LAYERS }, { 'j', "threads", 1024 },
                                { 'v', "vocab", 1 << 24 }, { 'e', "experts", MODEL_MAX_EXPERTS },
                        };
                        size_t w = 0;
                        while (lim[w].c != c)
                                w++;
                        long v = strtol(optarg, &end, 10);
                        if (*end || !*optarg || v < (c == 'v' ? 256 : 1) || v > lim[w].max) {
                                fprintf(stderr, "gemma4-mkmodel: --%s: bad value: %s\n", lim[w].name,
                                        optarg);
                                return 2;
                        }
                        *(c == 'l' ? &layers : c == 'j' ? &threads : c == 'v' ? &vocab : &experts) = v;
                        break;
                }
                case 'z':
                        errno = 0;
                        shard_bytes = strtoull(optarg, &end, 0);
                        if (errno || *end || !*optarg || shard_bytes < 1) {
                                fprintf(stderr, "gemma4-mkmodel: --shard-size: bad value: %s\n", optarg);
                                return 2;
                        }
                        break;
                case 'S':
                        do_sync = true;
                        break;
                case 'V':
                        verify = true;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (optind < argc || !!preset == !!config || !out) {
                usage(stderr);
                return 2;
        }
        if (config) {
                char *err = NULL;
                if (layers || vocab || experts) {
                        fprintf(stderr,
                                "gemma4-mkmodel: --layers, --vocab and --experts apply to presets only\n");
                        return 2;
                }
                if (model_config_parse_file(config, &mcfg, &mquant, &err) < 0) {
                        fprintf(stderr, "gemma4-mkmodel: %s\n", err ? err : config);
                        free(err);
                        return 1;
                }
                g = (struct geometry){
                        .preset = "config",
                        .vocab = mcfg.vocab_size,
                        .hidden = mcfg.hidden_size,
                        .layers = mcfg.n_layers,
                        .heads = mcfg.n_heads,
                        .kv = mcfg.n_kv_heads,
                        .head_dim = mcfg.head_dim,
                        .gkv = mcfg.n_global_kv_heads,
                        .ghead_dim = mcfg.global_head_dim,
                        .window = mcfg.sliding_window,
                        .inter = mcfg.intermediate_size,
                        .experts = mcfg.n_experts,
                        .topk = mcfg.top_k_experts,
                        .moe_inter = mcfg.moe_intermediate_size,
                        .max_pos = mcfg.max_position_embeddings,
                        .fp8 = mquant.fp8,
                        .cfg = &mcfg,
                        .quant = &mquant,
                        .flat = strcmp(mcfg.architecture, "Gemma4ForCausalLM") == 0,
                        .no_k_eq_v = !mcfg.attention_k_eq_v,
                        .no_moe = !mcfg.enable_moe,
                        .untied = !mcfg.tie_word_embeddings,
                };
                found = true;
        }
        for (size_t i = 0; preset && i < sizeof(presets) / sizeof(presets[0]); i++)
                if (strcmp(presets[i].preset, preset) == 0) {
                        g = presets[i];
                        found = true;
                }
        if (!found) {
                fprintf(stderr, "gemma4-mkmodel: unknown preset '%s' (demo, 26b-a4b-fp8, 26b-a4b-bf16)\n",
                        preset);
                return 2;
        }
        if (layers)
                g.layers = (uint32_t) layers;
        if (vocab)
                g.vocab = (uint32_t) vocab;
        if (experts) {
                g.experts = (uint32_t) experts;
                if (g.topk > g.experts)
                        g.topk = g.experts;
        }
        if (threads < 1)
                threads = 1;

        if (mkdir(out, 0755) < 0 && errno != EEXIST) {
                fprintf(stderr, "gemma4-mkmodel: %s: %s\n", out, strerror(errno));
                return 1;
        }
        t0 = now_s();
        G.g = &g;
        G.seed = seed;
        G.max_shard_bytes = shard_bytes;
        build_tables(&G);
        r = build_tensor_list(&G);
        if (r == 0)
                r = build_bf16_tables(&G);
        if (r == 0 && config) {
                snprintf(path, sizeof(path), "%s/config.json", out);
                r = copy_file(config, path);
                if (r < 0)
                        fprintf(stderr, "gemma4-mkmodel: copying %s: %s\n", config, strerror(-r));
        } else if (r == 0)
                r = write_configs(&g, out);
        if (r == 0)
                r = layout_and_open(&G, out, &total);
        if (r == 0)
                r = build_chunks(&G);
        if (r == 0) {
                tids = calloc((size_t) threads, sizeof(*tids));
                if (!tids)
                        r = -ENOMEM;
        }
        if (r == 0) {
                long started = 0;
                for (; started < threads; started++)
                        if (pthread_create(&tids[started], NULL, worker, &G) != 0)
                                break;
                if (started == 0)
                        worker(&G);
                for (long i = 0; i < started; i++)
                        pthread_join(tids[i], NULL);
                r = atomic_load(&G.error);
                if (r < 0)
                        fprintf(stderr, "gemma4-mkmodel: writing shards failed: %s\n", strerror(-r));
        }
        for (uint32_t s = 0; G.fds && s < G.n_shards; s++) {
                if (G.fds[s] < 0)
                        continue;
                if (r == 0 && do_sync && fdatasync(G.fds[s]) < 0)
                        r = -errno;
                if (close(G.fds[s]) < 0 && r == 0)
                        r = -errno;
        }
        t1 = now_s();
        if (r == 0) {
                tok = pick_tokenizer(tok_arg, tokbuf, sizeof(tokbuf));
                snprintf(path, sizeof(path), "%s/tokenizer.json", out);
                if (tok) {
                        r = copy_file(tok, path);
                        if (r < 0)
                                fprintf(stderr, "gemma4-mkmodel: copying %s: %s\n", tok, strerror(-r));
                } else
                        fprintf(stderr,
                                "gemma4-mkmodel: note: no tokenizer.json found (--tokenizer, "
                                "$GEMMA4D_TOKENIZER_JSON or .deps/fixtures/tokenizer.json); none written\n");
        }
        if (r == 0)
                printf("%s: %zu tensors, %.3f GB in %u file%s, %.2f s (%.2f GB/s, %ld threads)\n", out, G.n,
                       total / 1e9, G.n_shards, G.n_shards > 1 ? "s" : "", t1 - t0, total / 1e9 / (t1 - t0),
                       threads);

        if (r == 0 && verify) {
                struct model *m = NULL;
                char *err = NULL;
                double t2 = now_s();
                r = model_load(out, &m, &err);
                if (r < 0)
                        fprintf(stderr, "gemma4-mkmodel: verify: %s\n", err ? err : strerror(-r));
                else
                        printf("%s: verified: model_load mapped %.3f GB of text weights in %.3f s\n", out,
                               m->weight_bytes / 1e9, now_s() - t2);
                model_free(m);
                free(err);
        }
        for (size_t i = 0; i < G.n; i++) {
                if (G.t[i].owns_table)
                        free(G.t[i].table);
                free(G.t[i].name);
        }
        quant_config_done(&mquant);
        free(G.t);
        free(G.fds);
        free(G.chunks);
        free(tids);
        return r < 0 ? 1 : 0;
}
