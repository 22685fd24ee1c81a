/* SPDX-License-Identifier: Apache-2.0 */
/* model_load on good checkpoints: both config layouts, both expert layouts, BF16 and FP8, sharded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tiny-ckpt.h"

static void check_view_values(const struct tensor_view *v, const char *name, uint64_t first,
                              uint64_t count) {
        for (uint64_t i = 0; i < count; i++) {
                float want = tiny_value(name, v->dtype, first + i), got = tensor_get_f32(v, i);
                if (want != got)
                        fail_msg("%s element %llu: got %g, want %g", v->name, (unsigned long long) i, got,
                                 want);
        }
}

static struct model *load_ok(const struct tiny_opts *o, char **ret_dir) {
        char *dir = tiny_mkdtemp(), *err = NULL;
        struct model *m = NULL;
        int r;

        assert_non_null(dir);
        assert_int_equal(tiny_write(dir, o), 0);
        r = model_load(dir, &m, &err);
        if (r < 0)
                fail_msg("model_load: %d %s", r, err ? err : "(no message)");
        assert_null(err);
        *ret_dir = dir;
        return m;
}

static void done(struct model *m, char *dir) {
        model_free(m);
        rm_rf(dir);
        free(dir);
}

static void check_common(const struct model *m, const struct tiny_opts *o) {
        const struct model_config *c = &m->cfg;
        const char *p = o->flat ? "model." : "model.language_model.";
        char name[256];

        assert_int_equal(c->vocab_size, TINY_VOCAB);
        assert_int_equal(c->hidden_size, TINY_HIDDEN);
        assert_int_equal(c->n_layers, TINY_LAYERS);
        assert_int_equal(c->layer_type[0], LAYER_SLIDING);
        assert_int_equal(c->layer_type[1], LAYER_FULL);
        assert_int_equal(c->n_heads, TINY_HEADS);
        assert_int_equal(c->n_kv_heads, TINY_KV);
        assert_int_equal(c->head_dim, TINY_HEAD_DIM);
        assert_int_equal(c->n_global_kv_heads, TINY_GKV);
        assert_int_equal(c->global_head_dim, TINY_GHEAD_DIM);
        assert_true(c->attention_k_eq_v);
        assert_int_equal(c->sliding_window, 8);
        assert_int_equal(c->rope_sliding.kind, ROPE_DEFAULT);
        assert_true(c->rope_sliding.theta == 10000.0);
        assert_int_equal(c->rope_full.kind, ROPE_PROPORTIONAL);
        assert_true(c->rope_full.theta == 1000000.0);
        assert_true(c->rope_full.partial_rotary_factor == 0.25);
        assert_int_equal(c->intermediate_size, TINY_INTER);
        assert_true(c->enable_moe);
        assert_int_equal(c->n_experts, TINY_EXPERTS);
        assert_int_equal(c->top_k_experts, TINY_TOPK);
        assert_int_equal(c->moe_intermediate_size, TINY_MOE_INTER);
        assert_true(c->final_logit_softcapping == 30.0f);
        assert_true(c->rms_norm_eps == 1e-6f);
        assert_true(c->tie_word_embeddings);
        assert_int_equal(c->bos_token_id, 2);
        assert_int_equal(c->pad_token_id, 0);
        assert_int_equal(c->eos_token_id, 1);
        if (o->flat) {
                assert_string_equal(c->architecture, "Gemma4ForCausalLM");
                assert_int_equal(c->n_stop_ids, 1);
        } else {
                assert_string_equal(c->architecture, "Gemma4ForConditionalGeneration");
                assert_int_equal(c->n_stop_ids, 3);
                assert_int_equal(c->stop_ids[1], 6);
                assert_int_equal(c->stop_ids[2], 5);
        }
        assert_true(strncmp(c->model_name, "gemma4-model-test-", 18) == 0);
        assert_int_equal(m->quant.fp8, o->fp8);

        snprintf(name, sizeof(name), "%sembed_tokens.weight", p);
        assert_string_equal(m->embed_tokens.name, name);
        assert_int_equal(m->embed_tokens.dtype, TENSOR_DTYPE_BF16);
        assert_int_equal(m->embed_tokens.nbytes, 2 * TINY_VOCAB * TINY_HIDDEN);
        check_view_values(&m->embed_tokens, name, 0, TINY_VOCAB * TINY_HIDDEN);
        assert_false(tensor_present(&m->lm_head));
        assert_true(tensor_present(&m->final_norm));

        for (uint32_t l = 0; l < TINY_LAYERS; l++) {
                const struct layer_weights *lw = &m->layers[l];
                bool full = l == 1;
                uint32_t hd = full ? TINY_GHEAD_DIM : TINY_HEAD_DIM;
                enum tensor_dtype wdt = o->fp8 ? TENSOR_DTYPE_F8_E4M3 : TENSOR_DTYPE_BF16;

                assert_int_equal(lw->type, full ? LAYER_FULL : LAYER_SLIDING);
                assert_int_equal(lw->head_dim, hd);
                assert_int_equal(lw->n_kv_heads, full ? TINY_GKV : TINY_KV);
                assert_int_equal(lw->q_proj.out_features, TINY_HEADS * hd);
                assert_int_equal(lw->q_proj.in_features, TINY_HIDDEN);
                assert_int_equal(lw->q_proj.w.dtype, wdt);
                assert_int_equal(tensor_present(&lw->q_proj.scale), o->fp8);
                assert_int_equal(tensor_present(&lw->v_proj.w), !full);
                assert_int_equal(lw->o_proj.out_features, TINY_HIDDEN);
                assert_int_equal(lw->o_proj.in_features, TINY_HEADS * hd);
                assert_int_equal(lw->q_norm.shape[0], hd);
                assert_int_equal(lw->router_proj.shape[0], TINY_EXPERTS);
                assert_int_equal(lw->router_per_expert_scale.shape[0], TINY_EXPERTS);
                assert_true(tensor_present(&lw->layer_scalar));
                assert_true(tensor_present(&lw->post_feedforward_layernorm_2));
                snprintf(name, sizeof(name), "%slayers.%u.mlp.down_proj.weight", p, l);
                assert_string_equal(lw->mlp_down.w.name, name);
                check_view_values(&lw->mlp_down.w, name, 0, TINY_HIDDEN * TINY_INTER);
                if (o->fp8) {
                        assert_int_equal(lw->mlp_down.scale.dtype,
                                         o->f32_scale ? TENSOR_DTYPE_F32 : TENSOR_DTYPE_BF16);
                        snprintf(name, sizeof(name), "%slayers.%u.mlp.down_proj.weight_scale", p, l);
                        check_view_values(&lw->mlp_down.scale, name, 0, TINY_HIDDEN);
                }
                assert_int_equal(lw->experts_fused_on_disk, !(o->split_experts || o->fp8));
                for (uint32_t e = 0; e < TINY_EXPERTS; e++) {
                        const struct linear_weight *g = &lw->expert_gate[e], *u = &lw->expert_up[e],
                                                   *d = &lw->expert_down[e];
                        uint64_t gi = (uint64_t) TINY_MOE_INTER * TINY_HIDDEN;
                        assert_int_equal(g->out_features, TINY_MOE_INTER);
                        assert_int_equal(g->in_features, TINY_HIDDEN);
                        assert_int_equal(d->out_features, TINY_HIDDEN);
                        assert_int_equal(d->in_features, TINY_MOE_INTER);
                        assert_int_equal(g->w.ndim, 2);
                        assert_int_equal(g->w.shape[0], TINY_MOE_INTER);
                        assert_int_equal(g->w.nbytes, gi * tensor_dtype_size(wdt));
                        if (lw->experts_fused_on_disk) {
                                snprintf(name, sizeof(name), "%slayers.%u.experts.gate_up_proj", p, l);
                                check_view_values(&g->w, name, e * 2 * gi, gi);
                                check_view_values(&u->w, name, e * 2 * gi + gi, gi);
                                snprintf(name, sizeof(name), "%slayers.%u.experts.down_proj", p, l);
                                check_view_values(&d->w, name, e * gi, gi);
                        } else {
                                snprintf(name, sizeof(name), "%slayers.%u.experts.%u.up_proj.weight", p, l,
                                         e);
                                assert_string_equal(u->w.name, name);
                                check_view_values(&u->w, name, 0, gi);
                                snprintf(name, sizeof(name), "%slayers.%u.experts.%u.down_proj.weight", p, l,
                                         e);
                                check_view_values(&d->w, name, 0, gi);
                                assert_int_equal(tensor_present(&d->scale), o->fp8);
                                if (o->fp8) {
                                        assert_int_equal(d->scale.shape[0], TINY_HIDDEN);
                                        assert_int_equal(d->scale.shape[1], 1);
                                }
                        }
                }
        }
}

static void run_good(const struct tiny_opts *o) {
        char *dir;
        struct model *m = load_ok(o, &dir);
        check_common(m, o);
        done(m, dir);
}

static void test_nested_fused_bf16(void **state) {
        run_good(&(struct tiny_opts) { 0 });
}

static void test_flat_fused_bf16(void **state) {
        run_good(&(struct tiny_opts) { .flat = true });
}

static void test_nested_split_bf16(void **state) {
        run_good(&(struct tiny_opts) { .split_experts = true });
}

static void test_nested_fp8(void **state) {
        char *dir;
        struct tiny_opts o = { .fp8 = true };
        struct model *m = load_ok(&o, &dir);
        check_common(m, &o);
        /* ignore holds lm_head and every router.proj, by full module name */
        assert_int_equal(m->quant.n_ignore, 1 + TINY_LAYERS);
        assert_string_equal(m->quant.ignore[0], "lm_head");
        assert_string_equal(m->quant.ignore[2], "model.language_model.layers.1.router.proj");
        done(m, dir);
}

static void test_flat_fp8_f32_scale(void **state) {
        run_good(&(struct tiny_opts) { .flat = true, .fp8 = true, .f32_scale = true });
}

static void test_sharded_fp8(void **state) {
        run_good(&(struct tiny_opts) { .fp8 = true, .sharded = true });
}

static void test_sharded_fused(void **state) {
        run_good(&(struct tiny_opts) { .sharded = true });
}

static void test_per_layer_config(void **state) {
        run_good(&(struct tiny_opts) { .per_layer_config = true });
}

static void test_vision_and_lm_head_skipped(void **state) {
        char *dir;
        struct tiny_opts o = { .vision = true, .lm_head = true };
        struct model *m = load_ok(&o, &dir);
        check_common(m, &o);
        /* weight_bytes counts text tensors only: everything but the vision projection and lm_head */
        assert_true(m->weight_bytes > 0);
        done(m, dir);
}

static void test_weight_bytes(void **state) {
        char *dir;
        struct tiny_opts o = { 0 };
        struct tiny_tensors tt;
        uint64_t total = 0;
        struct model *m = load_ok(&o, &dir);

        assert_int_equal(tiny_build_tensors(&o, &tt), 0);
        for (size_t i = 0; i < tt.n; i++) {
                uint64_t c = 1;
                for (uint32_t d = 0; d < tt.t[i].ndim; d++)
                        c *= tt.t[i].shape[d];
                total += c * tensor_dtype_size(tt.t[i].dtype);
        }
        tiny_tensors_free(&tt);
        assert_int_equal(m->weight_bytes, total);
        done(m, dir);
}

/* A dense model (no MoE branch), k_eq_v off (full layers keep v_proj), untied lm_head. */
static void test_dense_untied(void **state) {
        char *dir;
        struct tiny_opts o = { .dense = true, .no_k_eq_v = true, .untied = true, .flat = true };
        struct model *m = load_ok(&o, &dir);

        assert_false(m->cfg.enable_moe);
        assert_false(m->cfg.attention_k_eq_v);
        assert_false(m->cfg.tie_word_embeddings);
        assert_string_equal(m->lm_head.name, "lm_head.weight");
        check_view_values(&m->lm_head, "lm_head.weight", 0, TINY_VOCAB * TINY_HIDDEN);
        for (uint32_t l = 0; l < TINY_LAYERS; l++) {
                const struct layer_weights *lw = &m->layers[l];
                assert_true(tensor_present(&lw->v_proj.w));
                assert_int_equal(lw->v_proj.out_features, lw->n_kv_heads * lw->head_dim);
                assert_true(tensor_present(&lw->post_feedforward_layernorm));
                assert_false(tensor_present(&lw->pre_feedforward_layernorm_2));
                assert_false(tensor_present(&lw->post_feedforward_layernorm_1));
                assert_false(tensor_present(&lw->router_proj));
                assert_null(lw->expert_gate);
        }
        assert_int_equal(m->layers[1].head_dim, TINY_GHEAD_DIM);
        done(m, dir);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_nested_fused_bf16),
                cmocka_unit_test(test_flat_fused_bf16),
                cmocka_unit_test(test_nested_split_bf16),
                cmocka_unit_test(test_nested_fp8),
                cmocka_unit_test(test_flat_fp8_f32_scale),
                cmocka_unit_test(test_sharded_fp8),
                cmocka_unit_test(test_sharded_fused),
                cmocka_unit_test(test_per_layer_config),
                cmocka_unit_test(test_vision_and_lm_head_skipped),
                cmocka_unit_test(test_weight_bytes),
                cmocka_unit_test(test_dense_untied),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
