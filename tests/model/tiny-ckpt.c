/* SPDX-License-Identifier: Apache-2.0 */
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tiny-ckpt.h"

static uint64_t name_hash(const char *s) {
        uint64_t h = 1469598103934665603ull;
        for (; *s; s++)
                h = (h ^ (uint8_t) *s) * 1099511628211ull;
        return h;
}

static uint64_t mix(uint64_t x) {
        x += 0x9e3779b97f4a7c15ull;
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
        return x ^ (x >> 31);
}

static uint8_t fp8_code(const char *name, uint64_t i) {
        uint8_t c = (uint8_t) (mix(name_hash(name) + i) & 0xff);
        return (c & 0x7f) == 0x7f ? (uint8_t) (c - 1) : c;      /* no NaN codes */
}

float tiny_value(const char *name, enum tensor_dtype dtype, uint64_t i) {
        float v = (float) ((int) (mix(name_hash(name) + i) % 2001) - 1000) / 1000.0f;

        switch (dtype) {
        case TENSOR_DTYPE_BF16:
                return bf16_to_f32(f32_to_bf16(v));
        case TENSOR_DTYPE_F8_E4M3:
                return fp8_e4m3_to_f32(fp8_code(name, i));
        default:
                return v;
        }
}

int tiny_add_tensor(struct tiny_tensors *tt, const char *name, enum tensor_dtype dtype, uint32_t ndim,
                    const uint64_t *shape) {
        uint64_t count = 1;
        size_t es = tensor_dtype_size(dtype);
        uint8_t *buf;

        if (tt->n == tt->cap) {
                size_t cap = tt->cap ? tt->cap * 2 : 64;
                void *a = realloc(tt->t, cap * sizeof(*tt->t)), *b, *c;
                if (!a)
                        return -ENOMEM;
                tt->t = a;
                b = realloc(tt->names, cap * sizeof(*tt->names));
                if (!b)
                        return -ENOMEM;
                tt->names = b;
                c = realloc(tt->bufs, cap * sizeof(*tt->bufs));
                if (!c)
                        return -ENOMEM;
                tt->bufs = c;
                tt->cap = cap;
        }
        for (uint32_t d = 0; d < ndim; d++)
                count *= shape[d];
        buf = malloc(count * es + 1);
        if (!buf)
                return -ENOMEM;
        for (uint64_t i = 0; i < count; i++) {
                float v = tiny_value(name, dtype, i);
                if (dtype == TENSOR_DTYPE_BF16) {
                        uint16_t h = f32_to_bf16(v);
                        memcpy(buf + 2 * i, &h, 2);
                } else if (dtype == TENSOR_DTYPE_F32)
                        memcpy(buf + 4 * i, &v, 4);
                else if (dtype == TENSOR_DTYPE_F8_E4M3)
                        buf[i] = fp8_code(name, i);
                else {
                        uint16_t h = 0x3c00;    /* F16 tensors hold 1.0: only dtype handling is tested */
                        memcpy(buf + 2 * i, &h, 2);
                }
        }
        tt->names[tt->n] = strdup(name);
        tt->bufs[tt->n] = buf;
        tt->t[tt->n] = (struct st_out_tensor) { .name = tt->names[tt->n], .dtype = dtype, .ndim = ndim,
                                                .data = buf };
        memcpy(tt->t[tt->n].shape, shape, ndim * sizeof(uint64_t));
        tt->n++;
        return 0;
}

void tiny_drop_tensor(struct tiny_tensors *tt, const char *name) {
        for (size_t i = 0; i < tt->n; i++)
                if (strcmp(tt->t[i].name, name) == 0) {
                        /* Names and buffers stay owned by the arrays; just remove the entry. */
                        char *nm = tt->names[i];
                        void *b = tt->bufs[i];
                        memmove(&tt->t[i], &tt->t[i + 1], (tt->n - i - 1) * sizeof(*tt->t));
                        memmove(&tt->names[i], &tt->names[i + 1], (tt->n - i - 1) * sizeof(*tt->names));
                        memmove(&tt->bufs[i], &tt->bufs[i + 1], (tt->n - i - 1) * sizeof(*tt->bufs));
                        tt->n--;
                        free(nm);
                        free(b);
                        return;
                }
}

void tiny_tensors_free(struct tiny_tensors *tt) {
        for (size_t i = 0; i < tt->n; i++) {
                free(tt->names[i]);
                free(tt->bufs[i]);
        }
        free(tt->t);
        free(tt->names);
        free(tt->bufs);
        memset(tt, 0, sizeof(*tt));
}

static int add(struct tiny_tensors *tt, enum tensor_dtype dt, uint32_t ndim, uint64_t a, uint64_t b,
               uint64_t c, const char *fmt, ...) __attribute__((format(printf, 7, 8)));
static int add(struct tiny_tensors *tt, enum tensor_dtype dt, uint32_t ndim, uint64_t a, uint64_t b,
               uint64_t c, const char *fmt, ...) {
        uint64_t shape[3] = { a, b, c };
        char name[256];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(name, sizeof(name), fmt, ap);
        va_end(ap);
        return tiny_add_tensor(tt, name, dt, ndim, shape);
}

static int add_linear(struct tiny_tensors *tt, const struct tiny_opts *o, const char *p, uint64_t out,
                      uint64_t in, const char *module) {
        int r = add(tt, o->fp8 ? TENSOR_DTYPE_F8_E4M3 : TENSOR_DTYPE_BF16, 2, out, in, 0, "%s%s.weight", p,
                    module);
        if (r < 0 || !o->fp8)
                return r;
        return add(tt, o->f32_scale ? TENSOR_DTYPE_F32 : TENSOR_DTYPE_BF16, 2, out, 1, 0,
                   "%s%s.weight_scale", p, module);
}

int tiny_build_tensors(const struct tiny_opts *o, struct tiny_tensors *tt) {
        const char *p = o->flat ? "model." : "model.language_model.";
        const enum tensor_dtype bf = TENSOR_DTYPE_BF16;
        static const char *const norms[] = {
                "input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                "post_feedforward_layernorm", "pre_feedforward_layernorm_2", "post_feedforward_layernorm_1",
                "post_feedforward_layernorm_2",
        };
        char m[128];
        int r = 0;

        memset(tt, 0, sizeof(*tt));
        r |= add(tt, bf, 2, TINY_VOCAB, TINY_HIDDEN, 0, "%sembed_tokens.weight", p);
        r |= add(tt, bf, 1, TINY_HIDDEN, 0, 0, "%snorm.weight", p);
        for (unsigned l = 0; l < TINY_LAYERS; l++) {
                bool full = l == TINY_LAYERS - 1;
                uint64_t hd = full ? TINY_GHEAD_DIM : TINY_HEAD_DIM, kv = full ? TINY_GKV : TINY_KV;
                for (size_t i = 0; i < (o->dense ? 4u : 7u); i++)
                        r |= add(tt, bf, 1, TINY_HIDDEN, 0, 0, "%slayers.%u.%s.weight", p, l, norms[i]);
                r |= add(tt, bf, 1, hd, 0, 0, "%slayers.%u.self_attn.q_norm.weight", p, l);
                r |= add(tt, bf, 1, hd, 0, 0, "%slayers.%u.self_attn.k_norm.weight", p, l);
                snprintf(m, sizeof(m), "layers.%u.self_attn.q_proj", l);
                r |= add_linear(tt, o, p, TINY_HEADS * hd, TINY_HIDDEN, m);
                snprintf(m, sizeof(m), "layers.%u.self_attn.k_proj", l);
                r |= add_linear(tt, o, p, kv * hd, TINY_HIDDEN, m);
                if (!full || o->no_k_eq_v) {
                        snprintf(m, sizeof(m), "layers.%u.self_attn.v_proj", l);
                        r |= add_linear(tt, o, p, kv * hd, TINY_HIDDEN, m);
                }
                snprintf(m, sizeof(m), "layers.%u.self_attn.o_proj", l);
                r |= add_linear(tt, o, p, TINY_HIDDEN, TINY_HEADS * hd, m);
                snprintf(m, sizeof(m), "layers.%u.mlp.gate_proj", l);
                r |= add_linear(tt, o, p, TINY_INTER, TINY_HIDDEN, m);
                snprintf(m, sizeof(m), "layers.%u.mlp.up_proj", l);
                r |= add_linear(tt, o, p, TINY_INTER, TINY_HIDDEN, m);
                snprintf(m, sizeof(m), "layers.%u.mlp.down_proj", l);
                r |= add_linear(tt, o, p, TINY_HIDDEN, TINY_INTER, m);
                r |= add(tt, bf, 1, 1, 0, 0, "%slayers.%u.layer_scalar", p, l);
                if (o->dense)
                        continue;
                r |= add(tt, bf, 2, TINY_EXPERTS, TINY_HIDDEN, 0, "%slayers.%u.router.proj.weight", p, l);
                r |= add(tt, bf, 1, TINY_HIDDEN, 0, 0, "%slayers.%u.router.scale", p, l);
                r |= add(tt, bf, 1, TINY_EXPERTS, 0, 0, "%slayers.%u.router.per_expert_scale", p, l);
                if (o->split_experts || o->fp8) {
                        for (unsigned e = 0; e < TINY_EXPERTS; e++) {
                                snprintf(m, sizeof(m), "layers.%u.experts.%u.gate_proj", l, e);
                                r |= add_linear(tt, o, p, TINY_MOE_INTER, TINY_HIDDEN, m);
                                snprintf(m, sizeof(m), "layers.%u.experts.%u.up_proj", l, e);
                                r |= add_linear(tt, o, p, TINY_MOE_INTER, TINY_HIDDEN, m);
                                snprintf(m, sizeof(m), "layers.%u.experts.%u.down_proj", l, e);
                                r |= add_linear(tt, o, p, TINY_HIDDEN, TINY_MOE_INTER, m);
                        }
                } else {
                        r |= add(tt, bf, 3, TINY_EXPERTS, 2 * TINY_MOE_INTER, TINY_HIDDEN,
                                 "%slayers.%u.experts.gate_up_proj", p, l);
                        r |= add(tt, bf, 3, TINY_EXPERTS, TINY_HIDDEN, TINY_MOE_INTER,
                                 "%slayers.%u.experts.down_proj", p, l);
                }
        }
        if (o->vision && !o->flat)
                r |= add(tt, bf, 2, TINY_HIDDEN, 8, 0, "model.embed_vision.embedding_projection.weight");
        if (o->lm_head || o->untied)
                r |= add(tt, bf, 2, TINY_VOCAB, TINY_HIDDEN, 0, "lm_head.weight");
        if (r) {
                tiny_tensors_free(tt);
                return -ENOMEM;
        }
        return 0;
}

static const char quant_json[] =
        "{\"config_groups\": {\"group_0\": {\"format\": \"float-quantized\","
        " \"input_activations\": {\"actorder\": null, \"block_structure\": null, \"dynamic\": true,"
        " \"group_size\": null, \"num_bits\": 8, \"observer\": null, \"observer_kwargs\": {},"
        " \"scale_dtype\": null, \"strategy\": \"token\", \"symmetric\": true, \"type\": \"float\","
        " \"zp_dtype\": null},"
        " \"output_activations\": null, \"targets\": [\"Linear\"],"
        " \"weights\": {\"actorder\": null, \"block_structure\": null, \"dynamic\": false,"
        " \"group_size\": null, \"num_bits\": 8, \"observer\": \"memoryless_minmax\","
        " \"observer_kwargs\": {}, \"scale_dtype\": null, \"strategy\": \"channel\", \"symmetric\": true,"
        " \"type\": \"float\", \"zp_dtype\": null}}},"
        " \"format\": \"float-quantized\", \"global_compression_ratio\": null, \"ignore\": [\"lm_head\"],"
        " \"kv_cache_scheme\": null, \"quant_method\": \"compressed-tensors\","
        " \"quantization_status\": \"compressed\", \"sparsity_config\": {}, \"transform_config\": {},"
        " \"version\": \"0.12.0\"}";

static json_t *quant_block(const char *prefix) {
        json_t *q = json_loads(quant_json, 0, NULL);
        json_t *ignore = json_object_get(q, "ignore");
        for (int l = 0; l < TINY_LAYERS; l++) {
                char s[96];
                snprintf(s, sizeof(s), "%slayers.%d.router.proj", prefix, l);
                json_array_append_new(ignore, json_string(s));
        }
        return q;
}

json_t *tiny_config(const struct tiny_opts *o) {
        json_t *text = json_pack(
                "{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:s,s:f,s:i,s:i,s:[s,s],s:b,s:f,s:b,s:i,s:i,s:i,"
                "s:i,s:i,s:b,s:i,s:i,s:i,s:b,s:s}",
                "vocab_size", TINY_VOCAB, "hidden_size", TINY_HIDDEN, "num_hidden_layers", TINY_LAYERS,
                "num_attention_heads", TINY_HEADS, "num_key_value_heads", TINY_KV, "head_dim", TINY_HEAD_DIM,
                "intermediate_size", TINY_INTER, "hidden_activation", "gelu_pytorch_tanh", "rms_norm_eps",
                1e-6, "sliding_window", 8, "max_position_embeddings", 4096, "layer_types",
                "sliding_attention", "full_attention", "attention_k_eq_v", 1, "final_logit_softcapping",
                30.0, "enable_moe_block", 1, "num_experts", TINY_EXPERTS, "top_k_experts", TINY_TOPK,
                "moe_intermediate_size", TINY_MOE_INTER, "hidden_size_per_layer_input", 0,
                "num_kv_shared_layers", 0, "use_double_wide_mlp", 0, "bos_token_id", 2, "pad_token_id", 0,
                "eos_token_id", 1, "tie_word_embeddings", 1, "model_type", "gemma4_text");
        json_t *rope = json_pack("{s:{s:s,s:f},s:{s:s,s:f,s:f}}", "sliding_attention", "rope_type",
                                 "default", "rope_theta", 10000.0, "full_attention", "rope_type",
                                 "proportional", "partial_rotary_factor", 0.25, "rope_theta", 1000000.0);
        json_object_set_new(text, "rope_parameters", rope);
        if (o->dense) {
                json_object_set_new(text, "enable_moe_block", json_false());
                json_object_set_new(text, "num_experts", json_null());
                json_object_set_new(text, "top_k_experts", json_null());
                json_object_set_new(text, "moe_intermediate_size", json_null());
        }
        if (o->no_k_eq_v)
                json_object_set_new(text, "attention_k_eq_v", json_false());
        if (o->untied)
                json_object_set_new(text, "tie_word_embeddings", json_false());
        if (o->per_layer_config)
                json_object_set_new(text, "per_layer_config",
                                    json_pack("{s:{s:i,s:i}}", "1", "head_dim", TINY_GHEAD_DIM,
                                              "num_key_value_heads", TINY_GKV));
        else {
                json_object_set_new(text, "global_head_dim", json_integer(TINY_GHEAD_DIM));
                json_object_set_new(text, "num_global_key_value_heads", json_integer(TINY_GKV));
        }
        if (o->flat) {
                json_object_set_new(text, "architectures", json_pack("[s]", "Gemma4ForCausalLM"));
                if (o->fp8)
                        json_object_set_new(text, "quantization_config", quant_block("model."));
                return text;
        }
        json_t *root =
                json_pack("{s:[s],s:s,s:o,s:[i,i,i],s:b,s:i,s:{s:i,s:s}}", "architectures",
                          "Gemma4ForConditionalGeneration", "model_type", "gemma4", "text_config", text,
                          "eos_token_id", 1, 6, 5, "tie_word_embeddings", !o->untied, "image_token_id", 60,
                          "vision_config", "hidden_size", 8, "model_type", "gemma4_vision");
        if (o->fp8)
                json_object_set_new(root, "quantization_config", quant_block("model.language_model."));
        return root;
}

int tiny_write_config(const char *dir, json_t *cfg) {
        char path[1024];
        snprintf(path, sizeof(path), "%s/config.json", dir);
        return json_dump_file(cfg, path, JSON_INDENT(2) | JSON_SORT_KEYS) < 0 ? -EIO : 0;
}

int tiny_write_tensors(const char *dir, const struct tiny_opts *o, struct tiny_tensors *tt) {
        char path[1024];
        int r;

        if (!o->sharded) {
                snprintf(path, sizeof(path), "%s/model.safetensors", dir);
                return st_write_file(path, tt->t, tt->n, NULL);
        }
        /* Two shards split at the middle of the (module-ordered) list, plus the index. */
        size_t half = tt->n / 2;
        json_t *wm = json_object(), *idx;
        uint64_t total = 0;
        for (size_t i = 0; i < tt->n; i++)
                json_object_set_new(wm, tt->t[i].name,
                                    json_string(i < half ? "model-00001-of-00002.safetensors"
                                                         : "model-00002-of-00002.safetensors"));
        snprintf(path, sizeof(path), "%s/model-00001-of-00002.safetensors", dir);
        r = st_write_file(path, tt->t, half, NULL);
        if (r >= 0) {
                snprintf(path, sizeof(path), "%s/model-00002-of-00002.safetensors", dir);
                r = st_write_file(path, tt->t + half, tt->n - half, NULL);
        }
        for (size_t i = 0; i < tt->n; i++)
                total += tt->t[i].nbytes;
        idx = json_pack("{s:{s:I},s:o}", "metadata", "total_size", (json_int_t) total, "weight_map", wm);
        snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
        if (r >= 0 && json_dump_file(idx, path, JSON_INDENT(2) | JSON_SORT_KEYS) < 0)
                r = -EIO;
        json_decref(idx);
        return r;
}

int tiny_write(const char *dir, const struct tiny_opts *o) {
        struct tiny_tensors tt;
        json_t *cfg = tiny_config(o);
        int r = tiny_write_config(dir, cfg);

        json_decref(cfg);
        if (r < 0)
                return r;
        r = tiny_build_tensors(o, &tt);
        if (r < 0)
                return r;
        r = tiny_write_tensors(dir, o, &tt);
        tiny_tensors_free(&tt);
        return r;
}

char *tiny_mkdtemp(void) {
        const char *base = getenv("TMPDIR");
        char *p;
        if (asprintf(&p, "%s/gemma4-model-test-XXXXXX", base ? base : "/tmp") < 0)
                return NULL;
        if (!mkdtemp(p)) {
                free(p);
                return NULL;
        }
        return p;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        return remove(path);
}

void rm_rf(const char *dir) {
        nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

int st_edit_header(const char *path, void (*edit)(json_t *hdr, void *arg), void *arg) {
        FILE *f = fopen(path, "rb");
        uint8_t lenb[8];
        uint64_t len = 0, size;
        char *hdr, *out, *data;
        json_t *j;
        int r = -EIO;

        if (!f)
                return -errno;
        fseek(f, 0, SEEK_END);
        size = (uint64_t) ftell(f);
        fseek(f, 0, SEEK_SET);
        if (fread(lenb, 1, 8, f) != 8) {
                fclose(f);
                return -EIO;
        }
        for (int i = 7; i >= 0; i--)
                len = (len << 8) | lenb[i];
        hdr = malloc(len);
        data = malloc(size - 8 - len + 1);
        if (fread(hdr, 1, len, f) != len || fread(data, 1, size - 8 - len, f) != size - 8 - len)
                goto out;
        fclose(f);
        f = NULL;
        j = json_loadb(hdr, len, 0, NULL);
        if (!j)
                goto out;
        edit(j, arg);
        out = json_dumps(j, JSON_COMPACT);
        json_decref(j);
        f = fopen(path, "wb");
        if (f && out) {
                uint64_t n = strlen(out);
                for (int i = 0; i < 8; i++)
                        lenb[i] = (uint8_t) (n >> (8 * i));
                fwrite(lenb, 1, 8, f);
                fwrite(out, 1, n, f);
                fwrite(data, 1, size - 8 - len, f);
                r = 0;
        }
        free(out);
out:
        if (f)
                fclose(f);
        free(hdr);
        free(data);
        return r;
}
