/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gemma4-mkmodel: its checkpoints load, have the preset's geometry and on-disk form (header padding,
 * tensor order, shards and index), realistic magnitudes, a router that spreads tokens over experts, and
 * bytes that depend on the seed but not on the thread count.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "tiny-ckpt.h"

static char *mkmodel_path(void) {
        const char *b = getenv("GEMMA4D_BUILD_ROOT");
        char *p;
        if (asprintf(&p, "%s/tools/mkmodel/gemma4-mkmodel", b ? b : ".") < 0)
                return NULL;
        return p;
}

static void run_mkmodel(const char *dir, const char *args) {
        char *exe = mkmodel_path(), *cmd;
        assert_non_null(exe);
        assert_true(asprintf(&cmd, "'%s' --out '%s' %s >/dev/null 2>&1 </dev/null", exe, dir, args) > 0);
        if (system(cmd) != 0)
                fail_msg("failed: %s", cmd);
        free(cmd);
        free(exe);
}

static struct model *load(const char *dir) {
        struct model *m = NULL;
        char *err = NULL;
        if (model_load(dir, &m, &err) < 0)
                fail_msg("model_load %s: %s", dir, err);
        return m;
}

static void stats(const struct tensor_view *t, uint64_t first, uint64_t n, double *mean, double *sd,
                  double *lo, double *hi) {
        double s = 0, s2 = 0;
        *lo = INFINITY, *hi = -INFINITY;
        for (uint64_t i = first; i < first + n; i++) {
                double v = tensor_get_f32(t, i);
                s += v, s2 += v * v;
                *lo = fmin(*lo, v), *hi = fmax(*hi, v);
        }
        *mean = s / n;
        *sd = sqrt(fmax(0, s2 / n - *mean * *mean));
}

/* Every shard: header padded to 8, tensors tile the data section in (dtype size desc, name) order. */
static void check_shard_form(const char *path) {
        struct st_file *f = NULL;
        char *err = NULL;
        const struct st_tensor **ord;

        if (st_file_open(path, &f, &err) < 0)
                fail_msg("%s", err);
        assert_int_equal((8 + f->header_len) % 8, 0);
        ord = calloc(f->n_tensors, sizeof(*ord));
        for (size_t i = 0; i < f->n_tensors; i++) {
                size_t k = i;
                while (k > 0 && ord[k - 1]->begin > f->tensors[i].begin) {
                        ord[k] = ord[k - 1];
                        k--;
                }
                ord[k] = &f->tensors[i];
        }
        assert_int_equal(ord[0]->begin, 0);
        for (size_t i = 1; i < f->n_tensors; i++) {
                size_t a = tensor_dtype_size(ord[i - 1]->dtype), b = tensor_dtype_size(ord[i]->dtype);
                assert_int_equal(ord[i]->begin, ord[i - 1]->end);
                assert_true(a > b || (a == b && strcmp(ord[i - 1]->name, ord[i]->name) < 0));
        }
        assert_int_equal(8 + f->header_len + ord[f->n_tensors - 1]->end, f->size);
        free(ord);
        st_file_close(f);
}

/* Router as the forward pass computes it, in float: which experts do random tokens pick? */
static unsigned experts_used(const struct model *m, uint32_t layer, unsigned tokens) {
        const struct model_config *c = &m->cfg;
        const struct layer_weights *lw = &m->layers[layer];
        uint32_t H = c->hidden_size, E = c->n_experts;
        bool used[MODEL_MAX_EXPERTS] = { 0 };
        float *x = malloc(H * sizeof(float)), *logit = malloc(E * sizeof(float));
        unsigned n = 0;

        for (unsigned t = 0; t < tokens; t++) {
                uint64_t row = (uint64_t) (t * 7919u) % c->vocab_size;
                double ss = 0;
                for (uint32_t i = 0; i < H; i++) {
                        x[i] = tensor_get_f32(&m->embed_tokens, row * H + i);
                        ss += (double) x[i] * x[i];
                }
                float inv = (float) (1.0 / sqrt(ss / H + 1e-6));
                for (uint32_t i = 0; i < H; i++)
                        x[i] = x[i] * inv * tensor_get_f32(&lw->router_scale, i) / sqrtf((float) H);
                for (uint32_t e = 0; e < E; e++) {
                        double acc = 0;
                        for (uint32_t i = 0; i < H; i++)
                                acc += tensor_get_f32(&lw->router_proj, (uint64_t) e * H + i) * x[i];
                        logit[e] = (float) acc;
                }
                for (uint32_t k = 0; k < c->top_k_experts; k++) {
                        uint32_t best = 0;
                        for (uint32_t e = 1; e < E; e++)
                                if (logit[e] > logit[best])
                                        best = e;
                        used[best] = true;
                        logit[best] = -INFINITY;
                }
        }
        for (uint32_t e = 0; e < E; e++)
                n += used[e];
        free(x);
        free(logit);
        return n;
}

static void check_magnitudes(const struct model *m) {
        const struct model_config *c = &m->cfg;
        double mean, sd, lo, hi;

        stats(&m->embed_tokens, 0, 1 << 16, &mean, &sd, &lo, &hi);
        assert_true(fabs(mean) < 0.01 &&
                    fabs(sd - 2.0 / sqrt(c->hidden_size)) < 0.1 * (2.0 / sqrt(c->hidden_size)));
        for (uint32_t l = 0; l < c->n_layers; l++) {
                const struct layer_weights *lw = &m->layers[l];
                double s = tensor_get_f32(&lw->layer_scalar, 0);
                assert_true(s >= 0.1 && s <= 0.9);
                stats(&lw->post_feedforward_layernorm, 0, c->hidden_size, &mean, &sd, &lo, &hi);
                assert_true(mean > 0.9 && mean < 1.1 && sd > 0.1 && lo > 0);
                stats(&lw->q_norm, 0, lw->head_dim, &mean, &sd, &lo, &hi);
                assert_true(mean > 0.85 && mean < 1.15 && sd > 0.05);
                stats(&lw->k_norm, 0, lw->head_dim, &mean, &sd, &lo, &hi);
                assert_true(fabs(mean - 1.5 / sqrt(lw->head_dim)) < 0.3 * 1.5 / sqrt(lw->head_dim) &&
                            sd > 0);
                stats(&lw->router_per_expert_scale, 0, c->n_experts, &mean, &sd, &lo, &hi);
                assert_true(lo >= 0.5 && hi <= 1.5 && sd > 0.1);
                stats(&lw->router_scale, 0, c->hidden_size, &mean, &sd, &lo, &hi);
                assert_true(mean > 0.9 && mean < 1.1 && sd > 0.1);

                /* Dequantized linear weights: std about 1/sqrt(in). */
                const struct linear_weight *w = &lw->expert_up[c->n_experts - 1];
                uint64_t in = w->in_features, rows = w->out_features < 64 ? w->out_features : 64;
                double s2 = 0;
                for (uint64_t r = 0; r < rows; r++)
                        for (uint64_t i = 0; i < in; i++) {
                                double v = tensor_get_f32(&w->w, r * in + i);
                                if (tensor_present(&w->scale))
                                        v *= tensor_get_f32(&w->scale, r);
                                s2 += v * v;
                        }
                sd = sqrt(s2 / (rows * in));
                if (fabs(sd * sqrt((double) in) - 1.0) > 0.2)
                        fail_msg("layer %u expert weight std %g, want about %g", l, sd,
                                 1 / sqrt((double) in));
        }
}

static void test_demo(void **state) {
        char *dir = tiny_mkdtemp(), path[1024];
        struct model *m;
        struct stat st;

        run_mkmodel(dir, "--preset demo --seed 7");
        m = load(dir);
        const struct model_config *c = &m->cfg;
        assert_string_equal(c->architecture, "Gemma4ForConditionalGeneration");
        assert_int_equal(c->vocab_size, 262144);
        assert_int_equal(c->hidden_size, 256);
        assert_int_equal(c->n_layers, 6);
        static const enum layer_type want[6] = { LAYER_SLIDING, LAYER_SLIDING, LAYER_FULL,
                                                 LAYER_SLIDING, LAYER_SLIDING, LAYER_FULL };
        for (uint32_t l = 0; l < 6; l++)
                assert_int_equal(c->layer_type[l], want[l]);
        assert_int_equal(c->n_heads, 4);
        assert_int_equal(c->n_kv_heads, 2);
        assert_int_equal(c->head_dim, 64);
        assert_int_equal(c->n_global_kv_heads, 1);
        assert_int_equal(c->global_head_dim, 128);
        assert_true(c->attention_k_eq_v);
        assert_int_equal(c->sliding_window, 128);
        assert_int_equal(c->intermediate_size, 512);
        assert_int_equal(c->n_experts, 16);
        assert_int_equal(c->top_k_experts, 4);
        assert_int_equal(c->moe_intermediate_size, 128);
        assert_true(c->final_logit_softcapping == 30.0f);
        assert_int_equal(c->n_stop_ids, 3);
        assert_int_equal(c->stop_ids[1], 106);
        assert_false(m->quant.fp8);
        assert_true(m->layers[0].experts_fused_on_disk);
        assert_int_equal(m->embed_tokens.dtype, TENSOR_DTYPE_BF16);
        check_magnitudes(m);
        assert_true(experts_used(m, 0, 64) >= 12);
        model_free(m);

        snprintf(path, sizeof(path), "%s/model.safetensors", dir);
        check_shard_form(path);
        snprintf(path, sizeof(path), "%s/generation_config.json", dir);
        assert_int_equal(stat(path, &st), 0);
        rm_rf(dir);
        free(dir);
}

static void test_fp8_small(void **state) {
        char *dir = tiny_mkdtemp(), path[1024];
        struct model *m;

        /* The 26B FP8 layout (geometry, names, dtypes) with 2 layers, 4 experts and a small vocabulary. */
        run_mkmodel(dir, "--preset 26b-a4b-fp8 --layers 2 --vocab 2048 --experts 4 --seed 3");
        m = load(dir);
        const struct model_config *c = &m->cfg;
        assert_int_equal(c->hidden_size, 2816);
        assert_int_equal(c->n_heads, 16);
        assert_int_equal(c->n_kv_heads, 8);
        assert_int_equal(c->head_dim, 256);
        assert_int_equal(c->n_global_kv_heads, 2);
        assert_int_equal(c->global_head_dim, 512);
        assert_int_equal(c->intermediate_size, 2112);
        assert_int_equal(c->moe_intermediate_size, 704);
        assert_int_equal(c->sliding_window, 1024);
        assert_int_equal(c->layer_type[0], LAYER_SLIDING);
        assert_int_equal(c->layer_type[1], LAYER_FULL);
        assert_int_equal(c->rope_full.kind, ROPE_PROPORTIONAL);
        assert_true(m->quant.fp8);
        assert_int_equal(m->quant.n_ignore, 2 + 2);
        assert_string_equal(m->quant.ignore[0], "lm_head");
        assert_string_equal(m->quant.ignore[3], "model.language_model.layers.1.router.proj");
        for (uint32_t l = 0; l < 2; l++) {
                const struct layer_weights *lw = &m->layers[l];
                assert_false(lw->experts_fused_on_disk);
                assert_int_equal(lw->q_proj.w.dtype, TENSOR_DTYPE_F8_E4M3);
                assert_int_equal(lw->q_proj.scale.dtype, TENSOR_DTYPE_BF16);
                assert_int_equal(lw->q_proj.scale.ndim, 2);
                assert_int_equal(lw->q_proj.scale.shape[1], 1);
                assert_int_equal(lw->expert_down[3].w.dtype, TENSOR_DTYPE_F8_E4M3);
                assert_int_equal(lw->expert_down[3].scale.shape[0], 2816);
                assert_int_equal(lw->router_proj.dtype, TENSOR_DTYPE_BF16);
                assert_int_equal(tensor_present(&lw->v_proj.w), l == 0);
        }
        /* no FP8 NaN codes anywhere in a weight */
        const struct tensor_view *w = &m->layers[0].mlp_down.w;
        for (uint64_t i = 0; i < w->nbytes; i++)
                if ((((const uint8_t *) w->data)[i] & 0x7f) == 0x7f)
                        fail_msg("NaN code at %llu", (unsigned long long) i);
        check_magnitudes(m);
        assert_int_equal(experts_used(m, 1, 32), 4);
        model_free(m);
        snprintf(path, sizeof(path), "%s/model.safetensors", dir);
        check_shard_form(path);
        rm_rf(dir);
        free(dir);
}

static bool same_file(const char *a, const char *b) {
        char *cmd;
        int r;
        assert_true(asprintf(&cmd, "cmp -s '%s' '%s'", a, b) > 0);
        r = system(cmd);
        free(cmd);
        return r == 0;
}

static void test_sharded_and_deterministic(void **state) {
        char *a = tiny_mkdtemp(), *b = tiny_mkdtemp(), pa[1024], pb[1024];
        struct model *m;
        json_t *idx;
        uint64_t total = 0;

        run_mkmodel(a, "--preset demo --layers 3 --vocab 4096 --shard-size 6000000 --threads 1 --seed 5");
        run_mkmodel(b, "--preset demo --layers 3 --vocab 4096 --shard-size 6000000 --threads 3 --seed 5");
        snprintf(pa, sizeof(pa), "%s/model.safetensors.index.json", a);
        idx = json_load_file(pa, 0, NULL);
        assert_non_null(idx);
        json_t *wm = json_object_get(idx, "weight_map");
        assert_true(json_object_size(wm) > 10);
        /* embedding 2 MB, layers about 4.6 MB each: at least three shards of at most 6 MB */
        unsigned n_shards = 0;
        for (unsigned s = 1; s <= 99; s++) {
                char want[64];
                snprintf(want, sizeof(want), "model-%05u-of-", s);
                const char *key;
                json_t *v;
                bool seen = false;
                json_object_foreach(wm, key, v)
                        seen |= strncmp(json_string_value(v), want, strlen(want)) == 0;
                if (!seen)
                        break;
                n_shards = s;
        }
        assert_true(n_shards >= 3);
        for (unsigned s = 1; s <= n_shards; s++) {
                char want[64];
                snprintf(want, sizeof(want), "model-%05u-of-%05u.safetensors", s, n_shards);
                snprintf(pa, sizeof(pa), "%s/%s", a, want);
                snprintf(pb, sizeof(pb), "%s/%s", b, want);
                check_shard_form(pa);
                assert_true(same_file(pa, pb));
                struct st_file *f = NULL;
                assert_int_equal(st_file_open(pa, &f, NULL), 0);
                for (size_t i = 0; i < f->n_tensors; i++) {
                        assert_string_equal(json_string_value(json_object_get(wm, f->tensors[i].name)),
                                            want);
                        total += f->tensors[i].end - f->tensors[i].begin;
                }
                /* shards are at most the shard size unless one tensor alone is larger */
                assert_true(f->n_tensors == 1 || f->size - 8 - f->header_len <= 6000000);
                st_file_close(f);
        }
        assert_int_equal(json_integer_value(json_object_get(json_object_get(idx, "metadata"), "total_size")),
                         total);
        json_decref(idx);
        m = load(a);
        assert_int_equal(m->cfg.n_layers, 3);
        assert_int_equal(m->cfg.layer_type[2], LAYER_FULL);
        model_free(m);

        /* another seed, other bytes */
        run_mkmodel(b, "--preset demo --layers 3 --vocab 4096 --shard-size 6000000 --seed 6");
        assert_false(same_file(pa, pb));
        rm_rf(a);
        rm_rf(b);
        free(a);
        free(b);
}

static void test_tokenizer_and_errors(void **state) {
        char *dir = tiny_mkdtemp(), *exe = mkmodel_path(), *cmd, path[1024];
        FILE *f;

        snprintf(path, sizeof(path), "%s/tok-src.json", dir);
        f = fopen(path, "w");
        fputs("{\"model\": {\"type\": \"BPE\"}}", f);
        fclose(f);
        assert_true(asprintf(&cmd, "'%s' --preset demo --layers 1 --vocab 1024 --experts 2 --out '%s/m' "
                                   "--tokenizer '%s' >/dev/null 2>&1 && cmp -s '%s' '%s/m/tokenizer.json'",
                             exe, dir, path, path, dir) > 0);
        assert_int_equal(system(cmd), 0);
        free(cmd);
        static const char *const bad[] = {
                "--preset nope --out /tmp/x",
                "--preset demo",
                "--out /tmp/x",
                "--preset demo --out /tmp/x --seed z",
                "--preset demo --out /tmp/x --layers 0",
                "--preset demo --out /tmp/x --vocab 10",
                "--preset demo --out /tmp/x --experts 999",
                "--preset demo --out /tmp/x extra",
                "--preset demo --out /nonexistent-dir/sub/x",
                "--preset demo --config x.json --out /tmp/x",
                "--config /nonexistent/config.json --out /tmp/x",
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                assert_true(asprintf(&cmd, "'%s' %s >/dev/null 2>&1", exe, bad[i]) > 0);
                if (system(cmd) == 0)
                        fail_msg("accepted: %s", bad[i]);
                free(cmd);
        }
        free(exe);
        rm_rf(dir);
        free(dir);
}

/* --config: any geometry the loader accepts, in the layout and format of the given config.json. */
static void test_from_config(void **state) {
        static const struct tiny_opts variants[] = {
                { .flat = true, .fp8 = true, .per_layer_config = true },
                { .dense = true, .no_k_eq_v = true, .untied = true },
                { 0 },
        };
        for (size_t v = 0; v < sizeof(variants) / sizeof(variants[0]); v++) {
                const struct tiny_opts *o = &variants[v];
                char *dir = tiny_mkdtemp(), *args, src[1024], out[1024];
                json_t *cfg = tiny_config(o);
                struct model_config want;
                struct model *m;

                if (o->fp8) {
                        /* a linear listed in ignore stays BF16 */
                        json_array_append_new(
                                json_object_get(json_object_get(cfg, "quantization_config"), "ignore"),
                                json_string("model.layers.1.mlp.down_proj"));
                }
                assert_int_equal(tiny_write_config(dir, cfg), 0);
                json_decref(cfg);
                snprintf(src, sizeof(src), "%s/config.json", dir);
                assert_int_equal(model_config_parse_file(src, &want, NULL, NULL), 0);
                snprintf(out, sizeof(out), "%s/out", dir);
                assert_true(asprintf(&args, "--config '%s' --seed 9", src) > 0);
                run_mkmodel(out, args);
                free(args);
                m = load(out);
                assert_int_equal(m->cfg.hidden_size, want.hidden_size);
                assert_int_equal(m->cfg.n_layers, want.n_layers);
                assert_int_equal(m->cfg.global_head_dim, want.global_head_dim);
                assert_int_equal(m->cfg.enable_moe, want.enable_moe);
                assert_int_equal(m->quant.fp8, o->fp8);
                assert_int_equal(tensor_present(&m->lm_head), o->untied);
                assert_int_equal(tensor_present(&m->layers[1].v_proj.w), o->no_k_eq_v);
                if (o->fp8) {
                        assert_int_equal(m->layers[1].mlp_up.w.dtype, TENSOR_DTYPE_F8_E4M3);
                        assert_int_equal(m->layers[1].mlp_down.w.dtype, TENSOR_DTYPE_BF16);
                        assert_false(tensor_present(&m->layers[1].mlp_down.scale));
                        assert_false(m->layers[0].experts_fused_on_disk);
                }
                model_free(m);
                rm_rf(dir);
                free(dir);
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_demo),
                cmocka_unit_test(test_fp8_small),
                cmocka_unit_test(test_sharded_and_deterministic),
                cmocka_unit_test(test_tokenizer_and_errors),
                cmocka_unit_test(test_from_config),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
