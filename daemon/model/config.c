/* SPDX-License-Identifier: Apache-2.0 */
/*
 * config.json of a Gemma 4 checkpoint: the nested Gemma4ForConditionalGeneration layout (text fields
 * under "text_config") and the flat Gemma4ForCausalLM layout, plus the compressed-tensors FP8_DYNAMIC
 * quantization block. Absent optional fields take transformers' Gemma4TextConfig defaults (config.json is
 * saved as a diff against them); anything the engines do not implement is refused by field name.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model-internal.h"

#define CONFIG_MAX_BYTES (16u << 20)

struct cfg_reader {
        const char *path;
        const char *prefix;             /* "text_config." or "" */
        char **reterr;
};

#define cfg_fail(c, r, key, fmt, ...) \
        model_error((c)->reterr, (r), "%s: %s%s: " fmt, (c)->path, (c)->prefix, (key), ##__VA_ARGS__)

/* null counts as absent: transformers writes null for unset optional fields. */
static json_t *cfg_get(json_t *obj, const char *key) {
        json_t *v = json_object_get(obj, key);
        return json_is_null(v) ? NULL : v;
}

static int read_u32(struct cfg_reader *c, json_t *obj, const char *key, bool required, uint32_t def,
                    uint32_t lo, uint32_t hi, uint32_t *ret) {
        json_t *v = cfg_get(obj, key);
        json_int_t i;

        if (!v) {
                if (required)
                        return cfg_fail(c, -EINVAL, key, "missing");
                *ret = def;
                return 0;
        }
        if (!json_is_integer(v))
                return cfg_fail(c, -EINVAL, key, "must be an integer");
        i = json_integer_value(v);
        if (i < (json_int_t) lo || i > (json_int_t) hi)
                return cfg_fail(c, -ERANGE, key, "%lld out of range [%u, %u]", (long long) i, lo, hi);
        *ret = (uint32_t) i;
        return 0;
}

static int read_double(struct cfg_reader *c, json_t *obj, const char *key, bool required, double def,
                       double *ret) {
        json_t *v = cfg_get(obj, key);

        if (!v) {
                if (required)
                        return cfg_fail(c, -EINVAL, key, "missing");
                *ret = def;
                return 0;
        }
        if (!json_is_number(v) || !isfinite(json_number_value(v)))
                return cfg_fail(c, -EINVAL, key, "must be a number");
        *ret = json_number_value(v);
        return 0;
}

static int read_bool(struct cfg_reader *c, json_t *obj, const char *key, bool def, bool *ret) {
        json_t *v = cfg_get(obj, key);

        if (!v) {
                *ret = def;
                return 0;
        }
        if (!json_is_boolean(v))
                return cfg_fail(c, -EINVAL, key, "must be true or false");
        *ret = json_is_true(v);
        return 0;
}

static int read_string(struct cfg_reader *c, json_t *obj, const char *key, const char *def,
                       const char **ret) {
        json_t *v = cfg_get(obj, key);

        if (!v) {
                *ret = def;
                return 0;
        }
        if (!json_is_string(v))
                return cfg_fail(c, -EINVAL, key, "must be a string");
        *ret = json_string_value(v);
        return 0;
}

/* A token id or a list of them (eos_token_id is either). */
static int read_token_ids(struct cfg_reader *c, json_t *v, const char *key, struct model_config *cfg) {
        json_t *items[8];
        size_t n;

        if (json_is_integer(v)) {
                items[0] = v;
                n = 1;
        } else if (json_is_array(v)) {
                n = json_array_size(v);
                if (n == 0 || n > 8)
                        return cfg_fail(c, -EINVAL, key, "must list 1 to 8 token ids");
                for (size_t i = 0; i < n; i++)
                        items[i] = json_array_get(v, i);
        } else
                return cfg_fail(c, -EINVAL, key, "must be a token id or a list of token ids");

        cfg->n_stop_ids = 0;
        for (size_t i = 0; i < n; i++) {
                json_int_t id;
                bool dup = false;
                if (!json_is_integer(items[i]))
                        return cfg_fail(c, -EINVAL, key, "element %zu is not an integer", i);
                id = json_integer_value(items[i]);
                if (id < 0 || id >= (json_int_t) cfg->vocab_size)
                        return cfg_fail(c, -ERANGE, key, "token id %lld outside the vocabulary of %u",
                                        (long long) id, cfg->vocab_size);
                for (uint32_t k = 0; k < cfg->n_stop_ids; k++)
                        dup |= cfg->stop_ids[k] == (int32_t) id;
                if (!dup)
                        cfg->stop_ids[cfg->n_stop_ids++] = (int32_t) id;
        }
        cfg->eos_token_id = cfg->stop_ids[0];
        return 0;
}

static int read_rope(struct cfg_reader *c, json_t *rope, const char *type_key, struct rope_params *ret) {
        struct cfg_reader sub = *c;
        char prefix[128];
        json_t *obj = json_object_get(rope, type_key);
        const char *kind;
        double theta, factor, partial;
        const char *key;
        json_t *value;
        int r;

        snprintf(prefix, sizeof(prefix), "%srope_parameters.", c->prefix);
        sub.prefix = prefix;
        if (!json_is_object(obj))
                return cfg_fail(&sub, -EINVAL, type_key, "missing or not an object");
        snprintf(prefix, sizeof(prefix), "%srope_parameters.%s.", c->prefix, type_key);
        json_object_foreach(obj, key, value) {
                if (strcmp(key, "rope_type") && strcmp(key, "rope_theta") &&
                    strcmp(key, "partial_rotary_factor") && strcmp(key, "factor"))
                        return cfg_fail(&sub, -ENOTSUP, key, "unsupported RoPE parameter");
        }
        r = read_string(&sub, obj, "rope_type", NULL, &kind);
        if (r < 0)
                return r;
        if (!kind)
                return cfg_fail(&sub, -EINVAL, "rope_type", "missing");
        r = read_double(&sub, obj, "rope_theta", true, 0, &theta);
        if (r < 0)
                return r;
        if (theta <= 1.0)
                return cfg_fail(&sub, -ERANGE, "rope_theta", "%g must be greater than 1", theta);
        r = read_double(&sub, obj, "factor", false, 1.0, &factor);
        if (r < 0)
                return r;
        if (factor != 1.0)
                return cfg_fail(&sub, -ENOTSUP, "factor", "%g is not supported (only 1)", factor);
        r = read_double(&sub, obj, "partial_rotary_factor", false, 1.0, &partial);
        if (r < 0)
                return r;
        if (strcmp(kind, "default") == 0) {
                if (partial != 1.0)
                        return cfg_fail(&sub, -ENOTSUP, "partial_rotary_factor",
                                        "%g is not supported with rope_type default", partial);
                ret->kind = ROPE_DEFAULT;
        } else if (strcmp(kind, "proportional") == 0) {
                if (!(partial > 0.0 && partial <= 1.0))
                        return cfg_fail(&sub, -ERANGE, "partial_rotary_factor", "%g must be in (0, 1]",
                                        partial);
                ret->kind = ROPE_PROPORTIONAL;
        } else
                return cfg_fail(&sub, -ENOTSUP, "rope_type", "unsupported rope type '%.64s'", kind);
        ret->theta = theta;
        ret->partial_rotary_factor = partial;
        return 0;
}

static bool str_is(const char *s, const char *want) {
        return s && strcmp(s, want) == 0;
}

/* per_layer_config (transformers >= 5.17): {"<layer index>": {"head_dim": D, "num_key_value_heads": K}}. */
static int read_per_layer_config(struct cfg_reader *c, json_t *plc, struct model_config *cfg,
                                 uint32_t *full_kv, uint32_t *full_hd) {
        bool seen_full = false;
        const char *key;
        json_t *value;

        if (!json_is_object(plc))
                return cfg_fail(c, -EINVAL, "per_layer_config", "must be an object keyed by layer index");
        /* Layers without an entry keep the base geometry. */
        for (uint32_t l = 0; l < cfg->n_layers; l++) {
                char idx[16], field[96];
                uint32_t kv = cfg->n_kv_heads, hd = cfg->head_dim;
                json_t *o;
                const char *k2;
                json_t *v2;
                int r;

                snprintf(idx, sizeof(idx), "%u", l);
                o = json_object_get(plc, idx);
                if (o) {
                        snprintf(field, sizeof(field), "per_layer_config.%s", idx);
                        if (!json_is_object(o))
                                return cfg_fail(c, -EINVAL, field, "must be an object");
                        json_object_foreach(o, k2, v2) {
                                if (strcmp(k2, "head_dim") && strcmp(k2, "num_key_value_heads")) {
                                        snprintf(field, sizeof(field), "per_layer_config.%s.%.32s", idx, k2);
                                        return cfg_fail(c, -ENOTSUP, field,
                                                        "unsupported per-layer override");
                                }
                        }
                        struct cfg_reader sub = *c;
                        char prefix[96];
                        snprintf(prefix, sizeof(prefix), "%sper_layer_config.%s.", c->prefix, idx);
                        sub.prefix = prefix;
                        r = read_u32(&sub, o, "head_dim", false, cfg->head_dim, 2, 4096, &hd);
                        if (r < 0)
                                return r;
                        r = read_u32(&sub, o, "num_key_value_heads", false, cfg->n_kv_heads, 1, 1024, &kv);
                        if (r < 0)
                                return r;
                }
                snprintf(field, sizeof(field), "per_layer_config.%s", idx);
                if (cfg->layer_type[l] == LAYER_SLIDING) {
                        if (kv != cfg->n_kv_heads || hd != cfg->head_dim)
                                return cfg_fail(c, -ENOTSUP, field,
                                                "overrides the geometry of a sliding layer (not supported)");
                } else if (!seen_full) {
                        *full_kv = kv;
                        *full_hd = hd;
                        seen_full = true;
                } else if (kv != *full_kv || hd != *full_hd)
                        return cfg_fail(c, -ENOTSUP, field,
                                        "full layers with different geometries are not supported");
        }
        json_object_foreach(plc, key, value) {
                char *end;
                unsigned long l = strtoul(key, &end, 10);
                if (!*key || *end || l >= cfg->n_layers) {
                        char field[64];
                        snprintf(field, sizeof(field), "per_layer_config.%.32s", key);
                        return cfg_fail(c, -EINVAL, field, "not a layer index below %u", cfg->n_layers);
                }
        }
        return 0;
}

static int check_args(struct cfg_reader *c, json_t *args, const char *key, bool weights) {
        const char *type, *strategy;
        uint32_t bits;
        bool symmetric, dynamic;
        json_t *v;
        int r;

        struct cfg_reader sub = *c;
        char prefix[160];
        snprintf(prefix, sizeof(prefix), "%s%s.", c->prefix, key);
        sub.prefix = prefix;

        if (!json_is_object(args))
                return cfg_fail(
                        c, -ENOTSUP, key, "%s",
                        weights ? "missing (not a float-quantized weight scheme)"
                                : "missing: weight-only FP8 (W8A16) is not supported; need dynamic per-token "
                                  "FP8 activations");
        r = read_u32(&sub, args, "num_bits", true, 0, 0, 64, &bits);
        if (r < 0)
                return r;
        if (bits != 8)
                return cfg_fail(&sub, -ENOTSUP, "num_bits", "%u is not supported (need 8)", bits);
        r = read_string(&sub, args, "type", NULL, &type);
        if (r < 0)
                return r;
        if (!str_is(type, "float"))
                return cfg_fail(&sub, -ENOTSUP, "type", "'%.32s' is not supported (need 'float')",
                                type ? type : "(missing)");
        r = read_string(&sub, args, "strategy", NULL, &strategy);
        if (r < 0)
                return r;
        if (!str_is(strategy, weights ? "channel" : "token"))
                return cfg_fail(&sub, -ENOTSUP, "strategy", "'%.32s' is not supported (need '%s')",
                                strategy ? strategy : "(missing)", weights ? "channel" : "token");
        r = read_bool(&sub, args, "symmetric", true, &symmetric);
        if (r < 0)
                return r;
        if (!symmetric)
                return cfg_fail(&sub, -ENOTSUP, "symmetric", "asymmetric quantization is not supported");
        r = read_bool(&sub, args, "dynamic", false, &dynamic);
        if (r < 0)
                return r;
        if (dynamic != !weights)
                return cfg_fail(&sub, -ENOTSUP, "dynamic", "%s is not supported (need %s)",
                                dynamic ? "true" : "false",
                                weights ? "static weights" : "dynamic activations");
        if ((v = cfg_get(args, "group_size")))
                return cfg_fail(&sub, -ENOTSUP, "group_size", "group quantization is not supported");
        if ((v = cfg_get(args, "block_structure")))
                return cfg_fail(&sub, -ENOTSUP, "block_structure", "block quantization is not supported");
        v = cfg_get(args, "actorder");
        if (v && !json_is_false(v))
                return cfg_fail(&sub, -ENOTSUP, "actorder", "activation ordering (GPTQ) is not supported");
        return 0;
}

static int read_quant(struct cfg_reader *c, json_t *q, struct quant_config *ret) {
        struct cfg_reader sub = *c;
        const char *method, *format, *status;
        json_t *groups, *ignore, *v;
        const char *gname;
        json_t *group;
        int r;

        sub.prefix = "quantization_config.";
        if (!json_is_object(q))
                return cfg_fail(c, -EINVAL, "quantization_config", "must be an object");
        r = read_string(&sub, q, "quant_method", NULL, &method);
        if (r < 0)
                return r;
        if (!str_is(method, "compressed-tensors"))
                return cfg_fail(&sub, -ENOTSUP, "quant_method",
                                "'%.32s' is not supported (only compressed-tensors FP8_DYNAMIC)",
                                method ? method : "(missing)");
        r = read_string(&sub, q, "format", "float-quantized", &format);
        if (r < 0)
                return r;
        if (!str_is(format, "float-quantized"))
                return cfg_fail(&sub, -ENOTSUP, "format", "'%.32s' is not supported (need float-quantized)",
                                format);
        r = read_string(&sub, q, "quantization_status", "compressed", &status);
        if (r < 0)
                return r;
        if (!str_is(status, "compressed"))
                return cfg_fail(&sub, -ENOTSUP, "quantization_status",
                                "'%.32s' is not supported (weights must be stored compressed)", status);
        if (cfg_get(q, "kv_cache_scheme"))
                return cfg_fail(&sub, -ENOTSUP, "kv_cache_scheme",
                                "quantized KV-cache schemes are not supported");
        v = cfg_get(q, "sparsity_config");
        if (v && (!json_is_object(v) || json_object_size(v) > 0))
                return cfg_fail(&sub, -ENOTSUP, "sparsity_config", "sparse checkpoints are not supported");
        v = cfg_get(q, "transform_config");
        if (v && (!json_is_object(v) || json_object_size(v) > 0))
                return cfg_fail(&sub, -ENOTSUP, "transform_config", "transforms are not supported");

        groups = cfg_get(q, "config_groups");
        if (!json_is_object(groups) || json_object_size(groups) == 0)
                return cfg_fail(&sub, -ENOTSUP, "config_groups", "missing or empty");
        json_object_foreach(groups, gname, group) {
                struct cfg_reader gsub = *c;
                char prefix[160];
                const char *gformat;

                snprintf(prefix, sizeof(prefix), "quantization_config.config_groups.%.64s.", gname);
                gsub.prefix = prefix;
                if (!json_is_object(group))
                        return cfg_fail(&sub, -EINVAL, "config_groups", "group '%.64s' is not an object",
                                        gname);
                r = read_string(&gsub, group, "format", "float-quantized", &gformat);
                if (r < 0)
                        return r;
                if (!str_is(gformat, "float-quantized"))
                        return cfg_fail(&gsub, -ENOTSUP, "format",
                                        "'%.32s' is not supported (need float-quantized)", gformat);
                r = check_args(&gsub, cfg_get(group, "weights"), "weights", true);
                if (r < 0)
                        return r;
                r = check_args(&gsub, cfg_get(group, "input_activations"), "input_activations", false);
                if (r < 0)
                        return r;
                if (cfg_get(group, "output_activations"))
                        return cfg_fail(&gsub, -ENOTSUP, "output_activations",
                                        "output activation quantization is not supported");
        }

        ignore = cfg_get(q, "ignore");
        if (ignore && !json_is_array(ignore))
                return cfg_fail(&sub, -EINVAL, "ignore", "must be a list of module names");
        ret->fp8 = true;
        ret->n_ignore = 0;
        ret->ignore = NULL;
        if (ignore && json_array_size(ignore) > 0) {
                size_t n = json_array_size(ignore);
                if (n > 1u << 20)
                        return cfg_fail(&sub, -E2BIG, "ignore", "too many entries");
                ret->ignore = calloc(n, sizeof(char *));
                if (!ret->ignore)
                        return model_error(c->reterr, -ENOMEM, "out of memory");
                for (size_t i = 0; i < n; i++) {
                        json_t *s = json_array_get(ignore, i);
                        if (!json_is_string(s)) {
                                quant_config_done(ret);
                                return cfg_fail(&sub, -EINVAL, "ignore", "element %zu is not a string", i);
                        }
                        ret->ignore[i] = strdup(json_string_value(s));
                        ret->n_ignore = (uint32_t) (i + 1);
                        if (!ret->ignore[i]) {
                                quant_config_done(ret);
                                return model_error(c->reterr, -ENOMEM, "out of memory");
                        }
                }
        }
        return 0;
}

void quant_config_done(struct quant_config *q) {
        if (!q)
                return;
        for (uint32_t i = 0; i < q->n_ignore; i++)
                free(q->ignore[i]);
        free(q->ignore);
        q->ignore = NULL;
        q->n_ignore = 0;
        q->fp8 = false;
}

static int read_text_config(struct cfg_reader *c, json_t *root, json_t *text, bool nested,
                            struct model_config *cfg) {
        const char *s;
        json_t *v, *lt, *rope, *plc;
        uint32_t u, full_kv, full_hd;
        double d;
        bool b;
        int r;

        if ((r = read_u32(c, text, "vocab_size", true, 0, 1, 1u << 24, &cfg->vocab_size)) < 0 ||
            (r = read_u32(c, text, "hidden_size", true, 0, 1, 65536, &cfg->hidden_size)) < 0 ||
            (r = read_u32(c, text, "num_hidden_layers", true, 0, 1, MODEL_MAX_LAYERS, &cfg->n_layers)) < 0 ||
            (r = read_u32(c, text, "num_attention_heads", true, 0, 1, 1024, &cfg->n_heads)) < 0 ||
            (r = read_u32(c, text, "num_key_value_heads", true, 0, 1, 1024, &cfg->n_kv_heads)) < 0 ||
            (r = read_u32(c, text, "head_dim", true, 0, 2, 4096, &cfg->head_dim)) < 0 ||
            (r = read_u32(c, text, "intermediate_size", true, 0, 1, 1u << 20, &cfg->intermediate_size)) <
                    0 ||
            (r = read_u32(c, text, "max_position_embeddings", false, 131072, 1, 1u << 30,
                          &cfg->max_position_embeddings)) < 0 ||
            (r = read_u32(c, text, "sliding_window", false, 512, 1, 1u << 30, &cfg->sliding_window)) < 0)
                return r;
        if (cfg->head_dim % 2)
                return cfg_fail(c, -EINVAL, "head_dim", "%u must be even (RoPE rotates pairs)",
                                cfg->head_dim);
        if (cfg->n_heads % cfg->n_kv_heads)
                return cfg_fail(c, -EINVAL, "num_key_value_heads",
                                "%u does not divide num_attention_heads %u", cfg->n_kv_heads, cfg->n_heads);

        if ((r = read_double(c, text, "rms_norm_eps", false, 1e-6, &d)) < 0)
                return r;
        if (!(d > 0 && d < 1))
                return cfg_fail(c, -ERANGE, "rms_norm_eps", "%g out of range (0, 1)", d);
        cfg->rms_norm_eps = (float) d;
        if ((r = read_double(c, text, "final_logit_softcapping", false, 0, &d)) < 0)
                return r;
        if (d < 0)
                return cfg_fail(c, -ERANGE, "final_logit_softcapping", "%g must not be negative", d);
        cfg->final_logit_softcapping = (float) d;

        /* Features of the Gemma 4 family this engine does not implement. */
        if ((r = read_string(c, text, "hidden_activation", "gelu_pytorch_tanh", &s)) < 0)
                return r;
        if (!str_is(s, "gelu_pytorch_tanh"))
                return cfg_fail(c, -ENOTSUP, "hidden_activation",
                                "'%.32s' is not supported (need gelu_pytorch_tanh)", s);
        if ((r = read_u32(c, text, "hidden_size_per_layer_input", false, 256, 0, UINT32_MAX, &u)) < 0)
                return r;
        if (u != 0)
                return cfg_fail(c, -ENOTSUP, "hidden_size_per_layer_input",
                                "%u%s: per-layer embeddings are not supported (need 0)", u,
                                cfg_get(text, "hidden_size_per_layer_input") ? ""
                                                                             : " (transformers default)");
        if ((r = read_u32(c, text, "num_kv_shared_layers", false, 0, 0, UINT32_MAX, &u)) < 0)
                return r;
        if (u != 0)
                return cfg_fail(c, -ENOTSUP, "num_kv_shared_layers",
                                "%u: KV sharing is not supported (need 0)", u);
        if ((r = read_bool(c, text, "use_double_wide_mlp", false, &b)) < 0)
                return r;
        if (b)
                return cfg_fail(c, -ENOTSUP, "use_double_wide_mlp", "true is not supported");
        if ((r = read_bool(c, text, "attention_bias", false, &b)) < 0)
                return r;
        if (b)
                return cfg_fail(c, -ENOTSUP, "attention_bias", "true is not supported");
        if ((r = read_string(c, text, "use_bidirectional_attention", NULL, &s)) < 0)
                return r;
        if (s && !str_is(s, "vision"))
                return cfg_fail(c, -ENOTSUP, "use_bidirectional_attention", "'%.32s' is not supported", s);

        /* Layer types; transformers forces the last layer to full attention, so do we. */
        lt = cfg_get(text, "layer_types");
        if (lt) {
                if (!json_is_array(lt) || json_array_size(lt) != cfg->n_layers)
                        return cfg_fail(c, -EINVAL, "layer_types", "must list one type per layer (%u)",
                                        cfg->n_layers);
                for (uint32_t l = 0; l < cfg->n_layers; l++) {
                        const char *t = json_string_value(json_array_get(lt, l));
                        if (str_is(t, "sliding_attention"))
                                cfg->layer_type[l] = LAYER_SLIDING;
                        else if (str_is(t, "full_attention"))
                                cfg->layer_type[l] = LAYER_FULL;
                        else
                                return cfg_fail(c, -ENOTSUP, "layer_types",
                                                "element %u: unsupported layer type '%.32s'", l,
                                                t ? t : "(not a string)");
                }
        } else
                for (uint32_t l = 0; l < cfg->n_layers; l++)
                        cfg->layer_type[l] = (l + 1) % 6 ? LAYER_SLIDING : LAYER_FULL;
        cfg->layer_type[cfg->n_layers - 1] = LAYER_FULL;

        rope = cfg_get(text, "rope_parameters");
        if (rope) {
                if (!json_is_object(rope))
                        return cfg_fail(c, -EINVAL, "rope_parameters",
                                        "must be an object keyed by layer type");
                if (json_object_get(rope, "rope_type"))
                        return cfg_fail(
                                c, -ENOTSUP, "rope_parameters",
                                "one set for all layers is not supported (need sliding_attention and "
                                "full_attention entries)");
                cfg->rope_sliding = (struct rope_params) { ROPE_DEFAULT, 10000.0, 1.0 };
                for (uint32_t l = 0; l < cfg->n_layers; l++)
                        if (cfg->layer_type[l] == LAYER_SLIDING) {
                                if ((r = read_rope(c, rope, "sliding_attention", &cfg->rope_sliding)) < 0)
                                        return r;
                                break;
                        }
                if ((r = read_rope(c, rope, "full_attention", &cfg->rope_full)) < 0)
                        return r;
        } else {
                cfg->rope_sliding = (struct rope_params) { ROPE_DEFAULT, 10000.0, 1.0 };
                cfg->rope_full = (struct rope_params) { ROPE_PROPORTIONAL, 1000000.0, 0.25 };
        }

        /* Full-layer geometry: per_layer_config (transformers 5.17), else global_head_dim and, with k_eq_v,
         * num_global_key_value_heads. */
        if ((r = read_bool(c, text, "attention_k_eq_v", false, &cfg->attention_k_eq_v)) < 0)
                return r;
        plc = cfg_get(text, "per_layer_config");
        if (plc) {
                full_kv = cfg->n_kv_heads;
                full_hd = cfg->head_dim;
                if ((r = read_per_layer_config(c, plc, cfg, &full_kv, &full_hd)) < 0)
                        return r;
        } else {
                if ((r = read_u32(c, text, "global_head_dim", false, 512, 2, 4096, &full_hd)) < 0)
                        return r;
                full_kv = cfg->n_kv_heads;
                if (cfg->attention_k_eq_v &&
                    (r = read_u32(c, text, "num_global_key_value_heads", false, cfg->n_kv_heads, 1, 1024,
                                  &full_kv)) < 0)
                        return r;
        }
        if (full_hd % 2)
                return cfg_fail(c, -EINVAL, plc ? "per_layer_config" : "global_head_dim",
                                "full-layer head_dim %u must be even", full_hd);
        if (cfg->n_heads % full_kv)
                return cfg_fail(c, -EINVAL, plc ? "per_layer_config" : "num_global_key_value_heads",
                                "%u does not divide num_attention_heads %u", full_kv, cfg->n_heads);
        cfg->n_global_kv_heads = full_kv;
        cfg->global_head_dim = full_hd;

        if ((r = read_bool(c, text, "enable_moe_block", false, &cfg->enable_moe)) < 0)
                return r;
        if (cfg->enable_moe) {
                if ((r = read_u32(c, text, "num_experts", true, 0, 1, MODEL_MAX_EXPERTS, &cfg->n_experts)) <
                            0 ||
                    (r = read_u32(c, text, "top_k_experts", true, 0, 1, cfg->n_experts,
                                  &cfg->top_k_experts)) < 0 ||
                    (r = read_u32(c, text, "moe_intermediate_size", true, 0, 1, 1u << 20,
                                  &cfg->moe_intermediate_size)) < 0)
                        return r;
        }

        /* Token ids: the top level of the nested layout wins (that is where eos lists live). */
        cfg->bos_token_id = 2;
        cfg->pad_token_id = 0;
        cfg->eos_token_id = 1;
        cfg->stop_ids[0] = 1;
        cfg->n_stop_ids = 1;
        if ((r = read_u32(c, text, "bos_token_id", false, 2, 0, cfg->vocab_size - 1, &u)) < 0)
                return r;
        cfg->bos_token_id = (int32_t) u;
        if ((r = read_u32(c, text, "pad_token_id", false, 0, 0, cfg->vocab_size - 1, &u)) < 0)
                return r;
        cfg->pad_token_id = (int32_t) u;
        if (nested && (v = cfg_get(root, "eos_token_id"))) {
                struct cfg_reader top = *c;
                top.prefix = "";
                if ((r = read_token_ids(&top, v, "eos_token_id", cfg)) < 0)
                        return r;
        } else if ((v = cfg_get(text, "eos_token_id"))) {
                if ((r = read_token_ids(c, v, "eos_token_id", cfg)) < 0)
                        return r;
        }

        cfg->tie_word_embeddings = true;
        if (nested && cfg_get(root, "tie_word_embeddings")) {
                struct cfg_reader top = *c;
                top.prefix = "";
                r = read_bool(&top, root, "tie_word_embeddings", true, &cfg->tie_word_embeddings);
        } else
                r = read_bool(c, text, "tie_word_embeddings", true, &cfg->tie_word_embeddings);
        return r;
}

static int read_file(const char *path, char **ret_buf, size_t *ret_len, char **reterr) {
        struct stat st;
        char *buf;
        size_t off = 0;
        int fd, r;

        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return model_error(reterr, -errno, "%s: cannot open: %s", path, strerror(errno));
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > CONFIG_MAX_BYTES) {
                close(fd);
                return model_error(reterr, -EINVAL, "%s: not a regular file of at most %u bytes", path,
                                   CONFIG_MAX_BYTES);
        }
        buf = malloc((size_t) st.st_size + 1);
        if (!buf) {
                close(fd);
                return model_error(reterr, -ENOMEM, "out of memory");
        }
        while (off < (size_t) st.st_size) {
                ssize_t k = read(fd, buf + off, (size_t) st.st_size - off);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0) {
                        r = k < 0 ? -errno : -EIO;
                        close(fd);
                        free(buf);
                        return model_error(reterr, r, "%s: read failed", path);
                }
                off += (size_t) k;
        }
        close(fd);
        buf[off] = 0;
        *ret_buf = buf;
        *ret_len = off;
        return 0;
}

static void set_model_name(const char *path, struct model_config *cfg) {
        char *copy = strdup(path), *dir, *base;
        char real[PATH_MAX];

        cfg->model_name[0] = 0;
        if (!copy)
                return;
        dir = dirname(copy);
        if (realpath(dir, real))
                dir = real;
        base = basename(dir);
        snprintf(cfg->model_name, sizeof(cfg->model_name), "%s", base);
        free(copy);
}

int model_config_parse_file(const char *path, struct model_config *ret_cfg, struct quant_config *ret_quant,
                            char **reterr) {
        char *buf = NULL;
        size_t len = 0;
        int r;

        r = read_file(path, &buf, &len, reterr);
        if (r < 0)
                return r;
        r = model_config_parse_buffer(path, buf, len, ret_cfg, ret_quant, reterr);
        free(buf);
        return r;
}

int model_config_parse_buffer(const char *path, const char *buf, size_t len, struct model_config *ret_cfg,
                              struct quant_config *ret_quant, char **reterr) {
        struct cfg_reader c = { .path = path, .prefix = "", .reterr = reterr };
        struct model_config *cfg = NULL;
        struct quant_config quant = { 0 };
        json_error_t jerr;
        json_t *root = NULL, *text, *arch, *q;
        const char *model_type, *arch_name = NULL;
        bool nested;
        int r;

        root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
        if (!root)
                return model_error(reterr, -EINVAL, "%s: not valid JSON (line %d: %s)", path, jerr.line,
                                   jerr.text);
        cfg = calloc(1, sizeof(*cfg));
        if (!cfg) {
                r = model_error(reterr, -ENOMEM, "out of memory");
                goto out;
        }
        if (!json_is_object(root)) {
                r = model_error(reterr, -EINVAL, "%s: not a JSON object", path);
                goto out;
        }

        arch = cfg_get(root, "architectures");
        if (arch) {
                if (!json_is_array(arch) || !json_is_string(json_array_get(arch, 0))) {
                        r = cfg_fail(&c, -EINVAL, "architectures", "must be a list of class names");
                        goto out;
                }
                arch_name = json_string_value(json_array_get(arch, 0));
        }
        if ((r = read_string(&c, root, "model_type", NULL, &model_type)) < 0)
                goto out;
        text = cfg_get(root, "text_config");
        nested = text != NULL;
        if (nested) {
                if (!json_is_object(text)) {
                        r = cfg_fail(&c, -EINVAL, "text_config", "must be an object");
                        goto out;
                }
                if (arch_name && !str_is(arch_name, "Gemma4ForConditionalGeneration")) {
                        r = cfg_fail(
                                &c, -ENOTSUP, "architectures",
                                "'%.64s' is not supported with a text_config (need Gemma4ForConditionalGeneration)",
                                arch_name);
                        goto out;
                }
                if (model_type && !str_is(model_type, "gemma4")) {
                        r = cfg_fail(&c, -ENOTSUP, "model_type", "'%.32s' is not supported (need gemma4)",
                                     model_type);
                        goto out;
                }
                c.prefix = "text_config.";
                if ((r = read_string(&c, text, "model_type", NULL, &model_type)) < 0)
                        goto out;
                if (model_type && !str_is(model_type, "gemma4_text")) {
                        r = cfg_fail(&c, -ENOTSUP, "model_type",
                                     "'%.32s' is not supported (need gemma4_text)", model_type);
                        goto out;
                }
                if (!arch_name)
                        arch_name = "Gemma4ForConditionalGeneration";
        } else {
                text = root;
                if (arch_name && !str_is(arch_name, "Gemma4ForCausalLM")) {
                        r = cfg_fail(
                                &c, -ENOTSUP, "architectures",
                                "'%.64s' is not supported "
                                "(need Gemma4ForCausalLM, or Gemma4ForConditionalGeneration with text_config)",
                                arch_name);
                        goto out;
                }
                if (model_type && !str_is(model_type, "gemma4_text")) {
                        r = cfg_fail(&c, -ENOTSUP, "model_type",
                                     "'%.32s' is not supported (need gemma4_text)", model_type);
                        goto out;
                }
                if (!arch_name)
                        arch_name = "Gemma4ForCausalLM";
        }
        snprintf(cfg->architecture, sizeof(cfg->architecture), "%s", arch_name);

        r = read_text_config(&c, root, text, nested, cfg);
        if (r < 0)
                goto out;

        c.prefix = "";
        q = cfg_get(root, "quantization_config");
        if (!q && nested)
                q = cfg_get(text, "quantization_config");
        if (q && (r = read_quant(&c, q, &quant)) < 0)
                goto out;

        set_model_name(path, cfg);
        *ret_cfg = *cfg;
        if (ret_quant)
                *ret_quant = quant;
        else
                quant_config_done(&quant);
        r = 0;
out:
        free(cfg);
        json_decref(root);
        return r;
}

int model_config_merge_generation(const char *path, struct model_config *cfg, char **reterr) {
        struct cfg_reader c = { .path = path, .prefix = "", .reterr = reterr };
        struct model_config merged = *cfg;
        json_error_t jerr;
        json_t *root, *eos;
        char *buf = NULL;
        size_t len = 0;
        int r;

        if (access(path, F_OK) < 0)
                return 0;
        r = read_file(path, &buf, &len, reterr);
        if (r < 0)
                return r;
        root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
        free(buf);
        if (!root)
                return model_error(reterr, -EINVAL, "%s: not valid JSON (line %d: %s)", path, jerr.line,
                                   jerr.text);
        if (!json_is_object(root)) {
                json_decref(root);
                return model_error(reterr, -EINVAL, "%s: not a JSON object", path);
        }
        eos = cfg_get(root, "eos_token_id");
        if (eos) {
                r = read_token_ids(&c, eos, "eos_token_id", &merged);
                if (r >= 0) {
                        /* config.json's ids first (its first one stays eos_token_id), then the new ones */
                        struct model_config out = *cfg;
                        for (uint32_t i = 0; i < merged.n_stop_ids && r >= 0; i++) {
                                bool dup = false;
                                for (uint32_t k = 0; k < out.n_stop_ids; k++)
                                        dup |= out.stop_ids[k] == merged.stop_ids[i];
                                if (dup)
                                        continue;
                                if (out.n_stop_ids == 8)
                                        r = cfg_fail(&c, -E2BIG, "eos_token_id",
                                                     "more than 8 stop ids together with config.json's");
                                else
                                        out.stop_ids[out.n_stop_ids++] = merged.stop_ids[i];
                        }
                        if (r >= 0)
                                *cfg = out;
                }
        }
        json_decref(root);
        return r < 0 ? r : 0;
}
