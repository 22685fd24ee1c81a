/* SPDX-License-Identifier: Apache-2.0 */
/*
 * model_load: config.json (plus generation_config.json's stop ids) + safetensors shards -> struct model.
 * Every tensor the text decoder needs is looked up by its checkpoint name, checked for dtype and shape
 * against the configured geometry, and exposed as a view into the mapping. Tensors of the vision/audio towers are skipped; any other tensor
 * the configuration does not explain is an error, because silently ignoring weights gives wrong output.
 */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model-internal.h"

struct model_files {
        struct st_file **files;
        size_t n_files;
        const struct st_tensor **index;         /* all tensors, sorted by name */
        bool *used;                             /* parallel to index */
        size_t n_index;
};

struct loader {
        struct model *m;
        const char *prefix;                     /* "model.language_model." or "model." */
        char **sorted_ignore;                   /* exact module names of quant.ignore, sorted */
        size_t n_sorted_ignore;
        char **reterr;
        char name[512];                         /* scratch for the tensor being looked up */
};

static const char *const skipped_prefixes[] = {
        "model.vision_tower.", "model.embed_vision.", "model.audio_tower.", "model.embed_audio.",
        "model.multi_modal_projector.",
};

static int cmp_tensor_name(const void *a, const void *b) {
        const struct st_tensor *x = *(const struct st_tensor *const *) a,
                               *y = *(const struct st_tensor *const *) b;
        return strcmp(x->name, y->name);
}

static int cmp_str(const void *a, const void *b) {
        return strcmp(*(char * const *) a, *(char * const *) b);
}

static struct model_files *model_files_free(struct model_files *mf) {
        if (!mf)
                return NULL;
        for (size_t i = 0; i < mf->n_files; i++)
                st_file_close(mf->files[i]);
        free(mf->files);
        free(mf->index);
        free(mf->used);
        free(mf);
        return NULL;
}

static ssize_t find_tensor(const struct model_files *mf, const char *name) {
        size_t lo = 0, hi = mf->n_index;

        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                int c = strcmp(mf->index[mid]->name, name);
                if (c == 0)
                        return (ssize_t) mid;
                if (c < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return -1;
}

static int add_file(struct model_files *mf, const char *path, char **reterr) {
        struct st_file *f, **files;
        int r;

        r = st_file_open(path, &f, reterr);
        if (r < 0)
                return r;
        files = realloc(mf->files, (mf->n_files + 1) * sizeof(*files));
        if (!files) {
                st_file_close(f);
                return model_error(reterr, -ENOMEM, "out of memory");
        }
        mf->files = files;
        mf->files[mf->n_files++] = f;
        return 0;
}

static bool shard_name_ok(const char *s) {
        return *s && !strchr(s, '/') && strcmp(s, ".") && strcmp(s, "..");
}

/* model.safetensors.index.json: open every shard its weight_map names. *ret_map keeps the map for
 * check_weight_map, which runs once the name index exists. */
static int open_sharded(struct model_files *mf, const char *dir, const char *index_path, json_t **ret_root,
                        char **reterr) {
        json_error_t jerr;
        json_t *root, *wm;
        const char *key;
        json_t *value;
        char path[4096];
        int r = 0;

        root = json_load_file(index_path, JSON_REJECT_DUPLICATES, &jerr);
        if (!root)
                return model_error(reterr, -EINVAL, "%s: not valid JSON (line %d: %s)", index_path,
                                   jerr.line, jerr.text);
        wm = json_object_get(root, "weight_map");
        if (!json_is_object(wm) || json_object_size(wm) == 0) {
                json_decref(root);
                return model_error(reterr, -EINVAL, "%s: weight_map: missing, empty or not an object",
                                   index_path);
        }
        json_object_foreach(wm, key, value) {
                const char *shard = json_string_value(value);
                bool have = false;
                if (!shard || !shard_name_ok(shard)) {
                        r = model_error(reterr, -EINVAL,
                                        "%s: weight_map: tensor '%s': shard must be a file name in "
                                        "the model directory",
                                        index_path, key);
                        break;
                }
                snprintf(path, sizeof(path), "%s/%s", dir, shard);
                /* Few shards, many tensors: the last one opened is almost always the one named. */
                for (size_t i = mf->n_files; i > 0 && !have; i--)
                        have = strcmp(mf->files[i - 1]->path, path) == 0;
                if (!have && (r = add_file(mf, path, reterr)) < 0)
                        break;
        }
        if (r < 0) {
                json_decref(root);
                return r;
        }
        *ret_root = root;
        return 0;
}

/* Each tensor the index lists must be in the shard it names. */
static int check_weight_map(const struct model_files *mf, const char *dir, const char *index_path,
                            json_t *root, char **reterr) {
        json_t *wm = json_object_get(root, "weight_map");
        const char *key;
        json_t *value;
        char path[4096];

        json_object_foreach(wm, key, value) {
                ssize_t i = find_tensor(mf, key);
                snprintf(path, sizeof(path), "%s/%s", dir, json_string_value(value));
                if (i < 0 || strcmp(mf->index[i]->file->path, path) != 0)
                        return model_error(reterr, -ENOENT,
                                           "%s: tensor '%s' listed in %s is missing from it", path, key,
                                           index_path);
        }
        return 0;
}

static int build_index(struct model_files *mf, char **reterr) {
        size_t n = 0, k = 0;

        for (size_t i = 0; i < mf->n_files; i++)
                n += mf->files[i]->n_tensors;
        mf->index = calloc(n + 1, sizeof(*mf->index));
        mf->used = calloc(n + 1, sizeof(*mf->used));
        if (!mf->index || !mf->used)
                return model_error(reterr, -ENOMEM, "out of memory");
        for (size_t i = 0; i < mf->n_files; i++)
                for (size_t j = 0; j < mf->files[i]->n_tensors; j++)
                        mf->index[k++] = &mf->files[i]->tensors[j];
        mf->n_index = n;
        qsort(mf->index, n, sizeof(*mf->index), cmp_tensor_name);
        for (size_t i = 1; i < n; i++)
                if (strcmp(mf->index[i - 1]->name, mf->index[i]->name) == 0)
                        return model_error(reterr, -EINVAL, "tensor '%s' appears in both %s and %s",
                                           mf->index[i]->name, mf->index[i - 1]->file->path,
                                           mf->index[i]->file->path);
        return 0;
}

static void format_shape(char *buf, size_t len, uint32_t ndim, const uint64_t *shape) {
        size_t off = 0;

        off += (size_t) snprintf(buf + off, len - off, "[");
        for (uint32_t i = 0; i < ndim && off < len; i++)
                off += (size_t) snprintf(buf + off, len - off, "%s%" PRIu64, i ? ", " : "", shape[i]);
        if (off < len)
                snprintf(buf + off, len - off, "]");
}

/* Looks up prefix + suffix. Absent tensors leave *ret zeroed and return 0 unless required. */
static int take(struct loader *ld, bool required, struct tensor_view *ret, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));
static int take(struct loader *ld, bool required, struct tensor_view *ret, const char *fmt, ...) {
        struct model_files *mf = ld->m->files;
        const struct st_tensor *t;
        size_t plen = strlen(ld->prefix);
        va_list ap;
        ssize_t i;

        memset(ret, 0, sizeof(*ret));
        snprintf(ld->name, sizeof(ld->name), "%s", ld->prefix);
        va_start(ap, fmt);
        vsnprintf(ld->name + plen, sizeof(ld->name) - plen, fmt, ap);
        va_end(ap);
        i = find_tensor(mf, ld->name);
        if (i < 0)
                return required ? model_error(ld->reterr, -ENOENT, "%s: missing tensor '%s'", ld->m->dir,
                                              ld->name)
                                : 0;
        t = mf->index[i];
        if (t->ndim > 4) {
                char s[128];
                format_shape(s, sizeof(s), t->ndim, t->shape);
                return model_error(ld->reterr, -EINVAL, "%s: tensor '%s': unexpected shape %s",
                                   t->file->path, t->name, s);
        }
        mf->used[i] = true;
        ret->name = t->name;
        ret->dtype = t->dtype;
        ret->ndim = t->ndim;
        memcpy(ret->shape, t->shape, t->ndim * sizeof(uint64_t));
        ret->data = t->data;
        ret->nbytes = t->end - t->begin;
        ld->m->weight_bytes += ret->nbytes;
        return 0;
}

static const char *view_path(const struct loader *ld, const struct tensor_view *v) {
        ssize_t i = find_tensor(ld->m->files, v->name);
        return i >= 0 ? ld->m->files->index[i]->file->path : ld->m->dir;
}

static int expect_shape(struct loader *ld, const struct tensor_view *v, uint32_t ndim, uint64_t d0,
                        uint64_t d1, uint64_t d2) {
        uint64_t want[3] = { d0, d1, d2 };
        char got[128], exp[128];

        if (v->ndim == ndim && memcmp(v->shape, want, ndim * sizeof(uint64_t)) == 0)
                return 0;
        format_shape(got, sizeof(got), v->ndim, v->shape);
        format_shape(exp, sizeof(exp), ndim, want);
        return model_error(ld->reterr, -EINVAL, "%s: tensor '%s': shape %s, expected %s", view_path(ld, v),
                           v->name, got, exp);
}

/* Unquantized float tensors: norms, scalars, router, embedding. */
static int expect_float(struct loader *ld, const struct tensor_view *v) {
        if (v->dtype != TENSOR_DTYPE_F8_E4M3)
                return 0;
        return model_error(ld->reterr, -ENOTSUP, "%s: tensor '%s': F8_E4M3 is not supported here (must stay "
                           "BF16/F16/F32)", view_path(ld, v), v->name);
}

/* Small per-channel tensors (norm weights, scalars, scales) are read once at load: a NaN or Inf there is a
 * corrupt file, and would otherwise poison every output silently. The big matrices are not scanned. */
static int expect_finite(struct loader *ld, const struct tensor_view *v) {
        uint64_t n = v->nbytes / tensor_dtype_size(v->dtype);

        for (uint64_t i = 0; i < n; i++)
                if (!isfinite(tensor_get_f32(v, i)))
                        return model_error(ld->reterr, -EINVAL, "%s: tensor '%s': element %" PRIu64 " is %g",
                                           view_path(ld, v), v->name, i, (double) tensor_get_f32(v, i));
        return 0;
}

static int take_vector(struct loader *ld, struct tensor_view *ret, uint64_t n, const char *fmt,
                       const char *a, uint32_t l) {
        int r;
        char suffix[256];

        snprintf(suffix, sizeof(suffix), fmt, l, a);
        if ((r = take(ld, true, ret, "%s", suffix)) < 0 || (r = expect_float(ld, ret)) < 0 ||
            (r = expect_shape(ld, ret, 1, n, 0, 0)) < 0)
                return r;
        return expect_finite(ld, ret);
}

static bool in_ignore(const struct loader *ld, const char *module) {
        return ld->n_sorted_ignore &&
               bsearch(&module, ld->sorted_ignore, ld->n_sorted_ignore, sizeof(char *), cmp_str) != NULL;
}

/* A linear layer "<module>.weight" [out, in], with "<module>.weight_scale" [out, 1] when FP8. */
static int take_linear(struct loader *ld, bool required, struct linear_weight *ret, uint32_t out,
                       uint32_t in, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static int take_linear(struct loader *ld, bool required, struct linear_weight *ret, uint32_t out,
                       uint32_t in, const char *fmt, ...) {
        char module[400];
        va_list ap;
        int r;

        memset(ret, 0, sizeof(*ret));
        va_start(ap, fmt);
        vsnprintf(module, sizeof(module), fmt, ap);
        va_end(ap);
        if ((r = take(ld, required, &ret->w, "%s.weight", module)) < 0)
                return r;
        if (!tensor_present(&ret->w))
                return 0;
        if ((r = expect_shape(ld, &ret->w, 2, out, in, 0)) < 0)
                return r;
        if ((r = take(ld, false, &ret->scale, "%s.weight_scale", module)) < 0)
                return r;
        if (ret->w.dtype == TENSOR_DTYPE_F8_E4M3) {
                char full[512];
                if (!ld->m->quant.fp8)
                        return model_error(ld->reterr, -EINVAL,
                                           "%s: tensor '%s': F8_E4M3 weight but config.json has "
                                           "no quantization_config",
                                           view_path(ld, &ret->w), ret->w.name);
                snprintf(full, sizeof(full), "%s%s", ld->prefix, module);
                if (in_ignore(ld, full))
                        return model_error(ld->reterr, -EINVAL,
                                           "%s: tensor '%s': F8_E4M3 but '%s' is listed in "
                                           "quantization_config.ignore",
                                           view_path(ld, &ret->w), ret->w.name, full);
                if (!tensor_present(&ret->scale))
                        return model_error(ld->reterr, -ENOENT,
                                           "%s: missing tensor '%s%s.weight_scale' for the "
                                           "F8_E4M3 weight '%s'",
                                           ld->m->dir, ld->prefix, module, ret->w.name);
                if (ret->scale.dtype == TENSOR_DTYPE_F8_E4M3)
                        return model_error(ld->reterr, -ENOTSUP,
                                           "%s: tensor '%s': scale dtype F8_E4M3 is not "
                                           "supported (BF16, F16 or F32)",
                                           view_path(ld, &ret->scale), ret->scale.name);
                /* compressed-tensors writes [out, 1]; accept a flat [out] as well. */
                if (!(ret->scale.ndim == 1 && ret->scale.shape[0] == out) &&
                    (r = expect_shape(ld, &ret->scale, 2, out, 1, 0)) < 0)
                        return r;
                if ((r = expect_finite(ld, &ret->scale)) < 0)
                        return r;
        } else if (tensor_present(&ret->scale))
                return model_error(ld->reterr, -EINVAL,
                                   "%s: tensor '%s': a scale for the unquantized %s weight '%s' "
                                   "(only F8_E4M3 weights carry one)",
                                   view_path(ld, &ret->scale), ret->scale.name,
                                   tensor_dtype_name(ret->w.dtype), ret->w.name);
        ret->out_features = out;
        ret->in_features = in;
        return 0;
}

static struct tensor_view slice_rows(const struct tensor_view *t, uint64_t first_row, uint64_t rows,
                                     uint64_t cols) {
        struct tensor_view v = *t;
        size_t es = tensor_dtype_size(t->dtype);

        v.ndim = 2;
        v.shape[0] = rows;
        v.shape[1] = cols;
        v.shape[2] = v.shape[3] = 0;
        v.data = (const uint8_t *) t->data + first_row * cols * es;
        v.nbytes = rows * cols * es;
        return v;
}

static int take_experts(struct loader *ld, uint32_t l, struct layer_weights *lw) {
        const struct model_config *c = &ld->m->cfg;
        uint32_t E = c->n_experts, I = c->moe_intermediate_size, H = c->hidden_size;
        struct tensor_view gate_up, down;
        int r;

        lw->expert_gate = calloc(E, sizeof(struct linear_weight));
        lw->expert_up = calloc(E, sizeof(struct linear_weight));
        lw->expert_down = calloc(E, sizeof(struct linear_weight));
        if (!lw->expert_gate || !lw->expert_up || !lw->expert_down)
                return model_error(ld->reterr, -ENOMEM, "out of memory");

        if ((r = take(ld, false, &gate_up, "layers.%u.experts.gate_up_proj", l)) < 0)
                return r;
        if (tensor_present(&gate_up)) {
                struct tensor_view probe;
                if ((r = take(ld, true, &down, "layers.%u.experts.down_proj", l)) < 0)
                        return r;
                if (gate_up.dtype == TENSOR_DTYPE_F8_E4M3 || down.dtype == TENSOR_DTYPE_F8_E4M3)
                        return model_error(ld->reterr, -ENOTSUP,
                                           "%s: tensor '%s': fused 3-D F8_E4M3 experts are not "
                                           "supported (store them per expert)",
                                           view_path(ld, &gate_up), gate_up.name);
                if ((r = expect_shape(ld, &gate_up, 3, E, 2ull * I, H)) < 0 ||
                    (r = expect_shape(ld, &down, 3, E, H, I)) < 0)
                        return r;
                if ((r = take(ld, false, &probe, "layers.%u.experts.0.gate_proj.weight", l)) < 0)
                        return r;
                if (tensor_present(&probe))
                        return model_error(ld->reterr, -EINVAL,
                                           "%s: both fused '%s' and per-expert '%s' are present", ld->m->dir,
                                           gate_up.name, probe.name);
                for (uint32_t e = 0; e < E; e++) {
                        lw->expert_gate[e].w = slice_rows(&gate_up, (uint64_t) e * 2 * I, I, H);
                        lw->expert_up[e].w = slice_rows(&gate_up, (uint64_t) e * 2 * I + I, I, H);
                        lw->expert_down[e].w = slice_rows(&down, (uint64_t) e * H, H, I);
                        lw->expert_gate[e].out_features = lw->expert_up[e].out_features = I;
                        lw->expert_gate[e].in_features = lw->expert_up[e].in_features = H;
                        lw->expert_down[e].out_features = H;
                        lw->expert_down[e].in_features = I;
                }
                lw->experts_fused_on_disk = true;
                return 0;
        }
        if ((r = take(ld, false, &down, "layers.%u.experts.down_proj", l)) < 0)
                return r;
        if (tensor_present(&down))
                return model_error(ld->reterr, -ENOENT,
                                   "%s: missing tensor '%slayers.%u.experts.gate_up_proj' "
                                   "(its down_proj is present)",
                                   ld->m->dir, ld->prefix, l);
        for (uint32_t e = 0; e < E; e++) {
                if ((r = take_linear(ld, true, &lw->expert_gate[e], I, H, "layers.%u.experts.%u.gate_proj",
                                     l, e)) < 0 ||
                    (r = take_linear(ld, true, &lw->expert_up[e], I, H, "layers.%u.experts.%u.up_proj", l,
                                     e)) < 0 ||
                    (r = take_linear(ld, true, &lw->expert_down[e], H, I, "layers.%u.experts.%u.down_proj",
                                     l, e)) < 0)
                        return r;
        }
        lw->experts_fused_on_disk = false;
        return 0;
}

static int take_layer(struct loader *ld, uint32_t l) {
        const struct model_config *c = &ld->m->cfg;
        struct layer_weights *lw = &ld->m->layers[l];
        bool full = c->layer_type[l] == LAYER_FULL;
        uint32_t H = c->hidden_size, kv, hd, qd;
        static const char *const hidden_norms[] = {
                "input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                "post_feedforward_layernorm", "pre_feedforward_layernorm_2", "post_feedforward_layernorm_1",
                "post_feedforward_layernorm_2",
        };
        struct tensor_view *norm_slots[] = {
                &lw->input_layernorm, &lw->post_attention_layernorm, &lw->pre_feedforward_layernorm,
                &lw->post_feedforward_layernorm, &lw->pre_feedforward_layernorm_2,
                &lw->post_feedforward_layernorm_1, &lw->post_feedforward_layernorm_2,
        };
        int r;

        lw->type = c->layer_type[l];
        kv = lw->n_kv_heads = full ? c->n_global_kv_heads : c->n_kv_heads;
        hd = lw->head_dim = full ? c->global_head_dim : c->head_dim;
        qd = c->n_heads * hd;

        /* The last three norms belong to the MoE branch and exist only with enable_moe_block. */
        for (size_t i = 0; i < (c->enable_moe ? 7u : 4u); i++)
                if ((r = take_vector(ld, norm_slots[i], H, "layers.%u.%s.weight", hidden_norms[i], l)) < 0)
                        return r;
        if ((r = take_vector(ld, &lw->q_norm, hd, "layers.%u.self_attn.%s.weight", "q_norm", l)) < 0 ||
            (r = take_vector(ld, &lw->k_norm, hd, "layers.%u.self_attn.%s.weight", "k_norm", l)) < 0)
                return r;
        if ((r = take_linear(ld, true, &lw->q_proj, qd, H, "layers.%u.self_attn.q_proj", l)) < 0 ||
            (r = take_linear(ld, true, &lw->k_proj, kv * hd, H, "layers.%u.self_attn.k_proj", l)) < 0 ||
            (r = take_linear(ld, true, &lw->o_proj, H, qd, "layers.%u.self_attn.o_proj", l)) < 0)
                return r;
        /* k_eq_v full layers have no v_proj; a stray one stays unused and is reported below. */
        if (!(full && c->attention_k_eq_v) &&
            (r = take_linear(ld, true, &lw->v_proj, kv * hd, H, "layers.%u.self_attn.v_proj", l)) < 0)
                return r;
        if ((r = take_linear(ld, true, &lw->mlp_gate, c->intermediate_size, H, "layers.%u.mlp.gate_proj",
                             l)) < 0 ||
            (r = take_linear(ld, true, &lw->mlp_up, c->intermediate_size, H, "layers.%u.mlp.up_proj", l)) <
                    0 ||
            (r = take_linear(ld, true, &lw->mlp_down, H, c->intermediate_size, "layers.%u.mlp.down_proj",
                             l)) < 0)
                return r;

        if ((r = take(ld, true, &lw->layer_scalar, "layers.%u.layer_scalar", l)) < 0 ||
            (r = expect_float(ld, &lw->layer_scalar)) < 0)
                return r;
        if (!(lw->layer_scalar.ndim == 0 ||
              (lw->layer_scalar.ndim == 1 && lw->layer_scalar.shape[0] == 1)) &&
            (r = expect_shape(ld, &lw->layer_scalar, 1, 1, 0, 0)) < 0)
                return r;
        if ((r = expect_finite(ld, &lw->layer_scalar)) < 0)
                return r;

        if (!c->enable_moe)
                return 0;
        if ((r = take(ld, true, &lw->router_proj, "layers.%u.router.proj.weight", l)) < 0)
                return r;
        if (lw->router_proj.dtype == TENSOR_DTYPE_F8_E4M3)
                return model_error(ld->reterr, -ENOTSUP,
                                   "%s: tensor '%s': an F8_E4M3 router is not supported (keep "
                                   "router.proj in BF16 via quantization_config.ignore)",
                                   view_path(ld, &lw->router_proj), lw->router_proj.name);
        if ((r = expect_shape(ld, &lw->router_proj, 2, c->n_experts, H, 0)) < 0 ||
            (r = take_vector(ld, &lw->router_scale, H, "layers.%u.router.%s", "scale", l)) < 0 ||
            (r = take_vector(ld, &lw->router_per_expert_scale, c->n_experts, "layers.%u.router.%s",
                             "per_expert_scale", l)) < 0)
                return r;
        return take_experts(ld, l, lw);
}

static bool has_prefix(const char *s, const char *p) {
        return strncmp(s, p, strlen(p)) == 0;
}

/* Everything left over must be a multimodal tower tensor or a tied lm_head. */
static int check_unused(struct loader *ld) {
        const struct model_files *mf = ld->m->files;

        for (size_t i = 0; i < mf->n_index; i++) {
                const struct st_tensor *t = mf->index[i];
                bool skip = false;
                if (mf->used[i])
                        continue;
                for (size_t k = 0; k < sizeof(skipped_prefixes) / sizeof(skipped_prefixes[0]); k++)
                        skip |= has_prefix(t->name, skipped_prefixes[k]);
                if (skip)
                        continue;
                if (strcmp(t->name, "lm_head.weight") == 0 && ld->m->cfg.tie_word_embeddings)
                        continue;
                return model_error(ld->reterr, -EINVAL,
                                   "%s: tensor '%s': unexpected for this config.json (not part of "
                                   "a Gemma 4 text model with this geometry and quantization)",
                                   t->file->path, t->name);
        }
        return 0;
}

static int map_tensors(struct loader *ld) {
        struct model *m = ld->m;
        const struct model_config *c = &m->cfg;
        struct model_files *mf = m->files;
        int r;

        if (find_tensor(mf, "model.language_model.embed_tokens.weight") >= 0)
                ld->prefix = "model.language_model.";
        else if (find_tensor(mf, "model.embed_tokens.weight") >= 0)
                ld->prefix = "model.";
        else
                return model_error(ld->reterr, -ENOENT,
                                   "%s: missing tensor 'model.language_model.embed_tokens.weight' "
                                   "(or 'model.embed_tokens.weight')",
                                   m->dir);

        if ((r = take(ld, true, &m->embed_tokens, "embed_tokens.weight")) < 0 ||
            (r = expect_float(ld, &m->embed_tokens)) < 0 ||
            (r = expect_shape(ld, &m->embed_tokens, 2, c->vocab_size, c->hidden_size, 0)) < 0)
                return r;
        if ((r = take(ld, true, &m->final_norm, "norm.weight")) < 0 ||
            (r = expect_float(ld, &m->final_norm)) < 0 ||
            (r = expect_shape(ld, &m->final_norm, 1, c->hidden_size, 0, 0)) < 0 ||
            (r = expect_finite(ld, &m->final_norm)) < 0)
                return r;
        if (!c->tie_word_embeddings) {
                const char *saved = ld->prefix;
                ld->prefix = "";
                r = take(ld, true, &m->lm_head, "lm_head.weight");
                ld->prefix = saved;
                if (r < 0 || (r = expect_float(ld, &m->lm_head)) < 0 ||
                    (r = expect_shape(ld, &m->lm_head, 2, c->vocab_size, c->hidden_size, 0)) < 0)
                        return r;
        }
        m->layers = calloc(c->n_layers, sizeof(*m->layers));
        if (!m->layers)
                return model_error(ld->reterr, -ENOMEM, "out of memory");
        for (uint32_t l = 0; l < c->n_layers; l++)
                if ((r = take_layer(ld, l)) < 0)
                        return r;
        return check_unused(ld);
}

static int sort_ignore(struct loader *ld) {
        const struct quant_config *q = &ld->m->quant;

        if (!q->n_ignore)
                return 0;
        ld->sorted_ignore = calloc(q->n_ignore, sizeof(char *));
        if (!ld->sorted_ignore)
                return model_error(ld->reterr, -ENOMEM, "out of memory");
        for (uint32_t i = 0; i < q->n_ignore; i++)
                if (!has_prefix(q->ignore[i], "re:"))
                        ld->sorted_ignore[ld->n_sorted_ignore++] = q->ignore[i];
        qsort(ld->sorted_ignore, ld->n_sorted_ignore, sizeof(char *), cmp_str);
        return 0;
}

int model_load(const char *dir, struct model **ret, char **reterr) {
        struct loader ld = { .reterr = reterr };
        json_t *index_root = NULL;
        struct model *m;
        char path[4096];
        struct stat st;
        int r;

        if (reterr)
                *reterr = NULL;
        if (!dir || strlen(dir) > 3000)
                return model_error(reterr, -EINVAL, "model directory path missing or too long");
        m = calloc(1, sizeof(*m));
        if (!m)
                return model_error(reterr, -ENOMEM, "out of memory");
        ld.m = m;
        m->dir = strdup(dir);
        m->files = calloc(1, sizeof(*m->files));
        if (!m->dir || !m->files) {
                r = model_error(reterr, -ENOMEM, "out of memory");
                goto fail;
        }
        snprintf(path, sizeof(path), "%s/config.json", dir);
        r = model_config_parse_file(path, &m->cfg, &m->quant, reterr);
        if (r < 0)
                goto fail;
        snprintf(path, sizeof(path), "%s/generation_config.json", dir);
        r = model_config_merge_generation(path, &m->cfg, reterr);
        if (r < 0)
                goto fail;

        snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
        if (stat(path, &st) == 0) {
                r = open_sharded(m->files, dir, path, &index_root, reterr);
                if (r >= 0 && (r = build_index(m->files, reterr)) >= 0)
                        r = check_weight_map(m->files, dir, path, index_root, reterr);
        } else {
                snprintf(path, sizeof(path), "%s/model.safetensors", dir);
                if (stat(path, &st) < 0) {
                        r = model_error(reterr, -ENOENT, "%s: neither model.safetensors.index.json nor "
                                        "model.safetensors exists", dir);
                        goto fail;
                }
                r = add_file(m->files, path, reterr);
                if (r >= 0)
                        r = build_index(m->files, reterr);
        }
        if (r < 0 || (r = sort_ignore(&ld)) < 0 || (r = map_tensors(&ld)) < 0)
                goto fail;
        json_decref(index_root);
        free(ld.sorted_ignore);
        *ret = m;
        return 0;
fail:
        json_decref(index_root);
        free(ld.sorted_ignore);
        model_free(m);
        return r;
}

struct model *model_free(struct model *m) {
        if (!m)
                return NULL;
        if (m->layers)
                for (uint32_t l = 0; l < m->cfg.n_layers; l++) {
                        free(m->layers[l].expert_gate);
                        free(m->layers[l].expert_up);
                        free(m->layers[l].expert_down);
                }
        free(m->layers);
        model_files_free(m->files);
        quant_config_done(&m->quant);
        free(m->dir);
        free(m);
        return NULL;
}
