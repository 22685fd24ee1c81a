/* SPDX-License-Identifier: Apache-2.0 */
/* The engine on the real CPU backend and a tiny random-weight Gemma 4 (a golden fixture): concurrent
 * requests under slot and page pressure, preemption and prefix-cache hits all give exactly the tokens of
 * the same request run alone; scoring agrees with greedy decoding. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "backend.h"
#include "model/model.h"
#include "server/engine.h"

#define MAX_REQS 16
#define MAX_OUT 64

struct out {
        int32_t toks[MAX_OUT];
        float lps[MAX_OUT];
        uint32_t n;
        bool finished;
        enum engine_finish_reason reason;
        struct engine_usage usage;
        uint32_t preempted;
        uint32_t n_score;
        int32_t score_top[MAX_OUT * 2];
        float score_lps[MAX_OUT * 2];
};

struct rig {
        struct model *model;
        struct backend *be;
        struct engine *e;
        struct out out[MAX_REQS];
        uint32_t n_done;
};

static struct model *shared_model;

static int load_model(void **state) {
        const char *root = getenv("GEMMA4D_SOURCE_ROOT");
        char path[4096];
        snprintf(path, sizeof(path), "%s/tests/golden/fixtures/tiny-b/bf16-flat", root ? root : ".");
        char *err = NULL;
        int r = model_load(path, &shared_model, &err);
        if (r < 0) {
                fprintf(stderr, "model_load(%s): %s\n", path, err ? err : "?");
                free(err);
                return -1;
        }
        return 0;
}

static int unload_model(void **state) {
        shared_model = model_free(shared_model);
        return 0;
}

static void rig_open(struct rig *g, uint32_t max_seqs, uint32_t budget, uint32_t n_full_pages, bool cache) {
        memset(g, 0, sizeof(*g));
        g->model = shared_model;
        struct backend_params bp = {
                .kv_dtype = KV_DTYPE_BF16, .page_size = 4, .max_num_seqs = max_seqs,
                .max_batched_tokens = budget, .max_model_len = 256, .n_full_pages = n_full_pages,
                .n_threads = 1,
        };
        char *err = NULL;
        int r = backend_cpu_ops.create(g->model, &bp, &g->be, &err);
        if (r < 0)
                fail_msg("cpu backend: %s", err ? err : "?");
        const struct model_config *c = &g->model->cfg;
        struct engine_params p = {
                .ops = &backend_cpu_ops, .backend = g->be, .vocab_size = c->vocab_size,
                .n_stop_ids = c->n_stop_ids, .max_model_len = 256, .max_num_seqs = max_seqs,
                .max_batched_tokens = budget, .max_queue = 64, .aging_ms = 0, .prefix_cache = cache,
                .score_chunk = 16,
        };
        memcpy(p.stop_ids, c->stop_ids, sizeof(int32_t) * c->n_stop_ids);
        r = engine_new(&p, &g->e, &err);
        if (r < 0)
                fail_msg("engine: %s", err ? err : "?");
}

static void rig_close(struct rig *g) {
        struct engine_status st;
        engine_get_status(g->e, &st);
        assert_int_equal(st.kv[KV_SPACE_FULL].used, 0);
        assert_int_equal(st.kv[KV_SPACE_SLIDING].used, 0);
        g->e = engine_free(g->e);
        backend_cpu_ops.destroy(g->be);
}

static void drain(struct rig *g) {
        struct engine_event *ev = engine_pop_events(g->e);
        while (ev) {
                struct engine_event *next = ev->next;
                assert_true(ev->req_id < MAX_REQS);
                struct out *o = &g->out[ev->req_id];
                switch (ev->type) {
                case ENGINE_EVENT_TOKENS:
                        for (uint32_t i = 0; i < ev->tokens.n && o->n < MAX_OUT; i++) {
                                o->lps[o->n] = ev->tokens.logprobs[i];
                                o->toks[o->n++] = ev->tokens.tokens[i];
                        }
                        break;
                case ENGINE_EVENT_SCORE:
                        o->n_score = ev->tokens.n;
                        for (uint32_t i = 0; i < ev->tokens.n && i < MAX_OUT * 2; i++) {
                                o->score_lps[i] = ev->tokens.logprobs[i];
                                o->score_top[i] = ev->tokens.n_top ? ev->tokens.top[i * ev->tokens.n_top].token : -1;
                        }
                        break;
                case ENGINE_EVENT_FINISHED:
                        o->finished = true;
                        o->reason = ev->finished.reason;
                        o->usage = ev->finished.usage;
                        o->preempted = ev->finished.preempted;
                        g->n_done++;
                        break;
                case ENGINE_EVENT_ERROR:
                        fail_msg("request %llu: error %s: %s", (unsigned long long) ev->req_id,
                                 engine_error_to_string(ev->error.code), ev->error.message);
                        break;
                case ENGINE_EVENT_STARTED:
                        break;
                }
                engine_event_free(ev);
                ev = next;
        }
}

static void run(struct rig *g, uint32_t n) {
        for (int i = 0; i < 20000 && g->n_done < n; i++) {
                int r = engine_run_step(g->e);
                assert_true(r >= 0);
                drain(g);
        }
        assert_int_equal(g->n_done, n);
}

static void submit(struct rig *g, uint64_t id, const int32_t *p, uint32_t n, uint32_t max_tokens, int32_t prio) {
        struct engine_request rq = { .conn_id = 1, .req_id = id, .kind = ENGINE_KIND_GENERATE, .tokens = p,
                                     .n_tokens = n };
        sampling_params_init(&rq.params);
        rq.params.temperature = 0;
        rq.params.max_tokens = max_tokens;
        rq.params.priority = prio;
        rq.params.logprobs = 1;
        char err[256];
        int r = engine_submit(g->e, &rq, err, sizeof(err));
        if (r < 0)
                fail_msg("submit: %s", err);
}

/* The reference: the request alone, one at a time through an engine of one slot without a cache. */
static void solo_on(struct rig *g, const int32_t *p, uint32_t n, uint32_t max_tokens, struct out *ret) {
        uint64_t id = g->n_done;
        assert_true(id < MAX_REQS);
        submit(g, id, p, n, max_tokens, 0);
        run(g, (uint32_t) id + 1);
        *ret = g->out[id];
}

static void solo(const int32_t *p, uint32_t n, uint32_t max_tokens, struct out *ret) {
        struct rig g;
        rig_open(&g, 1, 256, 0, false);
        solo_on(&g, p, n, max_tokens, ret);
        rig_close(&g);
}

static void make_prompt(int32_t *p, uint32_t n, uint32_t salt, uint32_t vocab) {
        uint64_t x = 0x9E3779B97F4A7C15u * (salt + 1);
        for (uint32_t i = 0; i < n; i++) {
                x = x * 6364136223846793005u + 1442695040888963407u;
                p[i] = (int32_t) (3 + (x >> 33) % (vocab - 3));
        }
}

static void assert_same(const struct out *got, const struct out *want, uint32_t id) {
        if (got->n != want->n || memcmp(got->toks, want->toks, sizeof(int32_t) * got->n) != 0)
                fail_msg("request %u: %u tokens, solo run gave %u (or different ones)", id, got->n, want->n);
        assert_int_equal(got->reason, want->reason);
        assert_int_equal(got->usage.output_tokens, want->usage.output_tokens);
}

static void test_cpu_concurrent(void **state) {
        const uint32_t vocab = shared_model->cfg.vocab_size;
        static int32_t prompts[MAX_REQS][48];
        uint32_t lens[MAX_REQS];
        struct rig g;
        /* 3 slots, 32-token budget, 16 full pages (64 tokens) for up to 6 x 40 tokens of demand */
        rig_open(&g, 3, 32, 16, true);
        for (uint32_t i = 0; i < 6; i++) {
                lens[i] = 6 + (i * 11) % 26;
                make_prompt(prompts[i], lens[i], i, vocab);
        }
        for (uint32_t i = 0; i < 3; i++)
                submit(&g, i, prompts[i], lens[i], 8, 5);
        for (int s = 0; s < 4; s++) {
                assert_true(engine_run_step(g.e) >= 0);
                drain(&g);
        }
        for (uint32_t i = 3; i < 6; i++)                /* urgent ones overtake the saturated batch */
                submit(&g, i, prompts[i], lens[i], 8, (int32_t) i - 16);
        run(&g, 6);
        struct engine_status st;
        engine_get_status(g.e, &st);
        uint32_t preempted = 0;
        struct rig alone;
        rig_open(&alone, 1, 256, 0, false);
        for (uint32_t i = 0; i < 6; i++) {
                struct out want;
                solo_on(&alone, prompts[i], lens[i], 8, &want);
                assert_same(&g.out[i], &want, i);
                preempted += g.out[i].preempted;
        }
        rig_close(&alone);
        print_message("# cpu backend, 6 requests: %llu steps, %u preemptions, prefix hit rate %.2f\n",
                      (unsigned long long) st.steps, preempted, st.prefix_hit_rate);
        assert_true(preempted > 0);
        rig_close(&g);
}

static void test_cpu_prefix_cache(void **state) {
        const uint32_t vocab = shared_model->cfg.vocab_size;
        int32_t p[128];
        make_prompt(p, 30, 77, vocab);
        struct rig g;
        rig_open(&g, 4, 64, 0, true);
        submit(&g, 0, p, 30, 6, 0);
        run(&g, 1);
        uint32_t n = 30;
        memcpy(p + n, g.out[0].toks, sizeof(int32_t) * g.out[0].n);
        n += g.out[0].n;
        make_prompt(p + n, 7, 78, vocab);
        n += 7;
        submit(&g, 1, p, n, 6, 0);
        run(&g, 2);
        assert_true(g.out[1].usage.cached_tokens >= 28);
        struct out want;
        solo(p, n, 6, &want);
        assert_same(&g.out[1], &want, 1);
        /* greedy logprobs survive the cache bit for bit, too */
        assert_memory_equal(g.out[1].lps, want.lps, sizeof(float) * want.n);
        rig_close(&g);
}

static void test_cpu_score(void **state) {
        const uint32_t vocab = shared_model->cfg.vocab_size;
        int32_t p[96];
        make_prompt(p, 20, 5, vocab);
        struct out gen;
        solo(p, 20, 8, &gen);
        memcpy(p + 20, gen.toks, sizeof(int32_t) * gen.n);
        struct rig g;
        rig_open(&g, 2, 64, 0, true);
        struct engine_request rq = { .conn_id = 1, .req_id = 0, .kind = ENGINE_KIND_SCORE, .tokens = p,
                                     .n_tokens = 20 + gen.n };
        sampling_params_init(&rq.params);
        rq.params.logprobs = 1;
        assert_int_equal(engine_submit(g.e, &rq, NULL, 0), 0);
        run(&g, 1);
        assert_int_equal(g.out[0].n_score, 20 + gen.n - 1);
        for (uint32_t k = 0; k < gen.n; k++) {
                /* greedy tokens are the argmax of the scored rows, with the same logprob */
                assert_int_equal(g.out[0].score_top[19 + k], gen.toks[k]);
                assert_float_equal(g.out[0].score_lps[19 + k], gen.lps[k], 1e-4);
        }
        rig_close(&g);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_cpu_concurrent),
                cmocka_unit_test(test_cpu_prefix_cache),
                cmocka_unit_test(test_cpu_score),
        };
        return cmocka_run_group_tests(tests, load_model, unload_model);
}
