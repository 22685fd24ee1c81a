/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The CPU half of backend-debug.h: teacher forcing the CPU engine with its own recorded residual stream
 * must reproduce its forward pass bit for bit, layer by layer and at the head, over a prompt cut into
 * prefill chunks and decode steps (so run_layer() must leave each layer's pages as forward() does: the
 * later steps read them). capture() must not change forward()'s logits. Bad arguments are refused.
 * This is what makes the CPU engine usable as the teacher in tests/kernels/test-cuda-layers.c.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "golden-util.h"
#include "layer-forcing.h"
#include "model/model.h"

struct layers_case {
        const char *name;
        const char *layout;
        enum kv_dtype kv;
        bool kv_round;
};

static void test_self_forcing(void **state) {
        const struct layers_case *c = *state;
        struct lf_params p = { .kv_dtype = c->kv, .page_size = 4, .max_len = 64, .cpu_kv_round = c->kv_round };
        struct golden_meta meta;
        struct model *m = NULL;
        struct lf_engine rec, forced, plain;
        char *dir = golden_path(c->name, c->layout), *err = NULL;

        assert_int_equal(golden_meta_load(c->name, &meta), 0);
        assert_non_null(dir);
        assert_int_equal(model_load(dir, &m, &err), 0);
        free(dir);
        uint32_t S = meta.n_prompt, H = m->cfg.hidden_size, V = m->cfg.vocab_size, L = m->cfg.n_layers;
        assert_true(S > 20 && S <= p.max_len);
        /* two prefill chunks (the second reads the first's pages), then three decode steps */
        uint32_t ends[] = { 16, S - 3, S - 2, S - 1, S };
        struct lf_plan plan = { .tokens = meta.prompt, .step_end = ends, .n_steps = 5 };
        float *x = malloc((size_t) (L + 1) * S * H * 4), *y = malloc((size_t) S * H * 4);
        float *lg = malloc((size_t) S * V * 4), *lg2 = malloc((size_t) S * V * 4);
        assert_true(x && y && lg && lg2);

        assert_int_equal(lf_open(&rec, "cpu", m, &p, &err), 0);
        assert_int_equal(lf_open(&forced, "cpu", m, &p, &err), 0);
        assert_int_equal(lf_open(&plain, "cpu", m, &p, &err), 0);
        assert_int_equal(lf_capture(&rec, &plan, x, lg), 0);

        /* capture() is forward() */
        assert_int_equal(lf_forward(&plain, &plan, lg2), 0);
        assert_memory_equal(lg, lg2, (size_t) S * V * 4);

        /* the embedding is layer 0's input: bf16(E[id]) * bf16(sqrt(H)), never zero for these weights */
        for (uint32_t i = 0; i < H; i++)
                if (x[i] != 0.0f)
                        break;
                else if (i + 1 == H)
                        fail_msg("%s: layer 0 input row 0 is all zero", c->name);

        /* layer-major teacher forcing on a fresh engine reproduces every layer exactly */
        for (uint32_t l = 0; l < L; l++) {
                assert_int_equal(lf_layer(&forced, &plan, l, x + (size_t) l * S * H, y), 0);
                if (memcmp(y, x + (size_t) (l + 1) * S * H, (size_t) S * H * 4) != 0) {
                        struct lf_err e;
                        lf_compare(y, x + (size_t) (l + 1) * S * H, S, H, &e);
                        fail_msg("%s/%s layer %u: forced output differs (rel %.3e, worst row %u)", c->name,
                                 c->layout, l, e.rel, e.worst_row);
                }
        }
        assert_int_equal(lf_head(&forced, &plan, x + (size_t) L * S * H, lg2), 0);
        assert_memory_equal(lg, lg2, (size_t) S * V * 4);

        /* refused: a layer past the last, a step longer than max_batched_tokens, a token outside the vocab */
        {
                int32_t toks[65] = { 0 }, bad = (int32_t) V;
                struct backend_seq s = { .tokens = meta.prompt, .n_tokens = 1, .pos = 0,
                                         .full_pages = forced.full, .n_full_pages = forced.n_full,
                                         .sliding_pages = forced.sliding, .n_sliding_pages = forced.n_sliding };
                struct backend_batch b = { &s, 1 };
                assert_int_equal(forced.dbg->run_layer(forced.be, &b, L, x, y), -EINVAL);
                s.tokens = &bad;
                assert_int_equal(forced.dbg->run_layer(forced.be, &b, 0, x, y), -EINVAL);
                assert_int_equal(forced.dbg->head(forced.be, &b, x, lg2), -EINVAL);
                s.tokens = toks;
                s.n_tokens = 65;
                assert_int_not_equal(forced.dbg->capture(forced.be, &b, lg2, x), 0);
        }
        lf_close(&rec);
        lf_close(&forced);
        lf_close(&plain);
        model_free(m);
        golden_meta_done(&meta);
        free(x), free(y), free(lg), free(lg2);
}

static const struct layers_case cases[] = {
        { "tiny-a", "fp8", KV_DTYPE_FP8, true },   { "tiny-a", "fp8", KV_DTYPE_BF16, false },
        { "tiny-b", "fp8", KV_DTYPE_BF16, true },  { "tiny-c", "fp8", KV_DTYPE_FP8, true },
        { "tiny-d", "fp8", KV_DTYPE_FP8, true },   { "tiny-d", "bf16-nested", KV_DTYPE_BF16, true },
};

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_prestate(test_self_forcing, (void *) &cases[0]),
                cmocka_unit_test_prestate(test_self_forcing, (void *) &cases[1]),
                cmocka_unit_test_prestate(test_self_forcing, (void *) &cases[2]),
                cmocka_unit_test_prestate(test_self_forcing, (void *) &cases[3]),
                cmocka_unit_test_prestate(test_self_forcing, (void *) &cases[4]),
                cmocka_unit_test_prestate(test_self_forcing, (void *) &cases[5]),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
