/* SPDX-License-Identifier: Apache-2.0 */
/* The engine loop on the checking fake backend: outputs identical to solo runs under concurrency,
 * preemption (both limits), prefix caching; cancel, deadlines, admission, score, errors, thread. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "fake-backend.h"
#include "server/engine.h"

#define VOCAB 512
#define MAX_OUT 256
#define MAX_REQS 200

static const int32_t stop_ids[3] = { 1, 106, 50 };

struct result {
        bool started, finished, error;
        int32_t toks[MAX_OUT];
        float lps[MAX_OUT];
        uint32_t n;
        enum engine_finish_reason reason;
        struct engine_usage usage;
        uint32_t preempted;
        uint32_t finish_order;
        enum engine_error error_code;
        uint32_t queue_position;
        /* score */
        uint32_t n_score;
        int32_t score_toks[MAX_OUT];
        float score_lps[MAX_OUT];
        struct sampler_logprob score_top[MAX_OUT][2];
};

struct fixture {
        struct fake_params fp;
        struct backend *b;
        struct engine *e;
        struct result res[MAX_REQS];
        uint32_t n_finished;
};

struct limits {
        uint32_t max_num_seqs, max_batched_tokens, max_queue, max_model_len, aging_ms, score_chunk;
        uint32_t sample_threads;
        bool no_prefix_cache;
        bool no_stops;          /* requests run to max_tokens, for timing-driven tests */
};

static struct fixture *fixture_new(const struct fake_params *fp_in, const struct limits *l) {
        struct fixture *f = calloc(1, sizeof(*f));
        assert_non_null(f);
        f->fp = (struct fake_params) { .page_size = 4, .n_full_pages = 512, .n_sliding_pages = 256,
                                       .window = 16, .vocab = VOCAB };
        if (fp_in)
                f->fp = *fp_in;
        assert_int_equal(fake_backend_new(&f->fp, &f->b), 0);
        struct engine_params p = {
                .ops = &fake_backend_ops,
                .backend = f->b,
                .vocab_size = VOCAB,
                .stop_ids = { 1, 106, 50 },
                .n_stop_ids = l && l->no_stops ? 0 : 3,
                .max_model_len = l && l->max_model_len ? l->max_model_len : 1024,
                .max_num_seqs = l && l->max_num_seqs ? l->max_num_seqs : 8,
                .max_batched_tokens = l && l->max_batched_tokens ? l->max_batched_tokens : 64,
                .max_queue = l && l->max_queue ? l->max_queue : 256,
                .aging_ms = l ? l->aging_ms : 0,
                .prefix_cache = !(l && l->no_prefix_cache),
                .score_chunk = l ? l->score_chunk : 0,
                .sample_threads = l && l->sample_threads ? l->sample_threads : 1,
        };
        char *err = NULL;
        int r = engine_new(&p, &f->e, &err);
        if (r < 0)
                fail_msg("engine_new: %s", err ? err : "?");
        return f;
}

static void fixture_free(struct fixture *f) {
        f->e = engine_free(f->e);
        /* every logits buffer from host_alloc went back through host_free, before the backend goes */
        assert_int_equal(fake_backend_host_live(f->b), 0);
        if (fake_backend_error(f->b)[0])
                fail_msg("fake backend check: %s", fake_backend_error(f->b));
        fake_backend_ops.destroy(f->b);
        free(f);
}

static void collect(struct fixture *f) {
        struct engine_event *ev = engine_pop_events(f->e);
        while (ev) {
                struct engine_event *next = ev->next;
                assert_true(ev->req_id < MAX_REQS);
                struct result *r = &f->res[ev->req_id];
                assert_false(r->finished || r->error);  /* nothing after the last event */
                switch (ev->type) {
                case ENGINE_EVENT_STARTED:
                        assert_false(r->started);
                        r->started = true;
                        r->queue_position = ev->started.queue_position;
                        break;
                case ENGINE_EVENT_TOKENS:
                        assert_true(r->started);
                        for (uint32_t i = 0; i < ev->tokens.n; i++) {
                                assert_true(r->n < MAX_OUT);
                                r->lps[r->n] = ev->tokens.logprobs[i];
                                r->toks[r->n++] = ev->tokens.tokens[i];
                        }
                        break;
                case ENGINE_EVENT_SCORE:
                        assert_true(ev->tokens.n < MAX_OUT);
                        r->n_score = ev->tokens.n;
                        for (uint32_t i = 0; i < ev->tokens.n; i++) {
                                r->score_toks[i] = ev->tokens.tokens[i];
                                r->score_lps[i] = ev->tokens.logprobs[i];
                                for (uint32_t k = 0; k < ev->tokens.n_top && k < 2; k++)
                                        r->score_top[i][k] = ev->tokens.top[i * ev->tokens.n_top + k];
                        }
                        break;
                case ENGINE_EVENT_FINISHED:
                        r->finished = true;
                        r->reason = ev->finished.reason;
                        r->usage = ev->finished.usage;
                        r->preempted = ev->finished.preempted;
                        r->finish_order = f->n_finished++;
                        break;
                case ENGINE_EVENT_ERROR:
                        r->error = true;
                        r->error_code = ev->error.code;
                        r->finish_order = f->n_finished++;
                        break;
                }
                engine_event_free(ev);
                ev = next;
        }
}

static void step(struct fixture *f) {
        int r = engine_run_step(f->e);
        assert_true(r >= 0);
        collect(f);
        if (fake_backend_error(f->b)[0])
                fail_msg("fake backend check: %s", fake_backend_error(f->b));
}

static void run_until_done(struct fixture *f, uint32_t n_expected) {
        for (int i = 0; i < 100000 && f->n_finished < n_expected; i++)
                step(f);
        assert_int_equal(f->n_finished, n_expected);
}

static void make_prompt(int32_t *p, uint32_t n, uint32_t salt, uint32_t shared) {
        for (uint32_t i = 0; i < n; i++) {
                uint32_t s = i < shared ? 0 : salt;
                p[i] = (int32_t) (200 + (i * 7 + s * 31 + (i * s) % 13) % 300);
        }
}

static int submit(struct fixture *f, uint64_t id, const int32_t *prompt, uint32_t n, uint32_t max_tokens,
                  int32_t prio) {
        struct engine_request rq = { .conn_id = 1, .req_id = id, .kind = ENGINE_KIND_GENERATE,
                                     .tokens = prompt, .n_tokens = n };
        sampling_params_init(&rq.params);
        rq.params.temperature = 0;
        rq.params.max_tokens = max_tokens;
        rq.params.priority = prio;
        rq.params.logprobs = 1;
        char err[256];
        return engine_submit(f->e, &rq, err, sizeof(err));
}

/* The engine's output must be exactly the fake model's greedy continuation. */
static void check_reference(struct fixture *f, uint64_t id, const int32_t *prompt, uint32_t n, uint32_t max_tokens) {
        int32_t ref[MAX_OUT];
        uint32_t n_ref = fake_reference_greedy(&f->fp, prompt, n, stop_ids, 3, max_tokens, ref);
        struct result *r = &f->res[id];
        assert_true(r->finished);
        bool stopped = n_ref > 0 && (ref[n_ref - 1] == 1 || ref[n_ref - 1] == 106 || ref[n_ref - 1] == 50);
        uint32_t visible = stopped ? n_ref - 1 : n_ref;
        if (r->n != visible || memcmp(r->toks, ref, sizeof(int32_t) * visible) != 0)
                fail_msg("request %llu: %u tokens differ from the solo reference (%u tokens)",
                         (unsigned long long) id, r->n, visible);
        assert_int_equal(r->reason, stopped ? ENGINE_FINISH_STOP : ENGINE_FINISH_LENGTH);
        assert_int_equal(r->usage.output_tokens, n_ref);
        assert_int_equal(r->usage.prompt_tokens, n);
}

static void assert_pool_empty(struct fixture *f) {
        struct engine_status st;
        engine_get_status(f->e, &st);
        assert_int_equal(st.kv[KV_SPACE_FULL].used, 0);
        assert_int_equal(st.kv[KV_SPACE_SLIDING].used, 0);
        assert_int_equal(st.running, 0);
        assert_int_equal(st.queued, 0);
}

static void test_single(void **state) {
        struct fixture *f = fixture_new(NULL, NULL);
        int32_t p[40];
        make_prompt(p, 40, 3, 0);
        assert_int_equal(submit(f, 0, p, 40, 30, 0), 0);
        run_until_done(f, 1);
        check_reference(f, 0, p, 40, 30);
        assert_true(f->res[0].started);
        /* greedy logprobs are the log-softmax of the raw row: negative, finite */
        for (uint32_t i = 0; i < f->res[0].n; i++)
                assert_true(f->res[0].lps[i] < 0 && f->res[0].lps[i] > -100);
        assert_pool_empty(f);
        fixture_free(f);
}

/* 64 requests of mixed priorities, in waves, with slots, budget and pages all short. */
static void test_concurrent_64(void **state) {
        struct fake_params fp = { .page_size = 4, .n_full_pages = 150, .n_sliding_pages = 48, .window = 16,
                                  .vocab = VOCAB };
        struct limits l = { .max_num_seqs = 8, .max_batched_tokens = 48, .aging_ms = 50 };
        struct fixture *f = fixture_new(&fp, &l);
        static int32_t prompts[64][80];
        uint32_t lens[64], maxt[64];
        uint64_t rng = 99;
        uint32_t submitted = 0;
        for (uint32_t wave = 0; wave < 4; wave++) {
                for (uint32_t k = 0; k < 16; k++, submitted++) {
                        uint32_t i = submitted;
                        rng = rng * 6364136223846793005u + 1442695040888963407u;
                        lens[i] = 5 + (uint32_t) ((rng >> 33) % 70);
                        maxt[i] = 5 + (uint32_t) ((rng >> 20) % 40);
                        make_prompt(prompts[i], lens[i], i % 5, (i % 3) * 10);
                        int32_t prio = (int32_t) ((rng >> 40) % 40) - 20;
                        assert_int_equal(submit(f, i, prompts[i], lens[i], maxt[i], prio), 0);
                }
                for (int s = 0; s < 6; s++)
                        step(f);
        }
        run_until_done(f, 64);
        uint32_t preempted = 0, cached = 0;
        for (uint32_t i = 0; i < 64; i++) {
                check_reference(f, i, prompts[i], lens[i], maxt[i]);
                preempted += f->res[i].preempted;
                cached += f->res[i].usage.cached_tokens;
        }
        struct engine_status st;
        engine_get_status(f->e, &st);
        print_message("# 64 requests: %llu steps, %u preemptions, %u cached prompt tokens, at most %u "
                      "sequences per step\n", (unsigned long long) st.steps, preempted, cached,
                      fake_backend_max_seqs(f->b));
        assert_true(fake_backend_max_seqs(f->b) <= 8);
        assert_int_equal(st.preemptions, preempted);
        assert_int_equal(st.finished, 64);
        assert_pool_empty(f);
        fixture_free(f);
}

/* Preemption when the running slots are the limit: the urgent request overtakes, the victim resumes
 * and its output (greedy, and sampled with a seed) is the same as uninterrupted. */
static void run_slots_case(bool sampled, int32_t *out, uint32_t *n_out, uint32_t *preempted, bool with_urgent) {
        struct limits l = { .max_num_seqs = 1, .max_batched_tokens = 64 };
        struct fixture *f = fixture_new(NULL, &l);
        int32_t low[30], urgent[12];
        make_prompt(low, 30, 1, 0);
        make_prompt(urgent, 12, 2, 0);
        struct engine_request rq = { .conn_id = 7, .req_id = 0, .kind = ENGINE_KIND_GENERATE, .tokens = low,
                                     .n_tokens = 30 };
        sampling_params_init(&rq.params);
        rq.params.temperature = sampled ? 0.9f : 0.0f;
        rq.params.top_k = sampled ? 40 : 0;
        rq.params.seed = 4242;
        rq.params.has_seed = true;
        rq.params.max_tokens = 40;
        rq.params.priority = 10;
        char err[128];
        assert_int_equal(engine_submit(f->e, &rq, err, sizeof(err)), 0);
        for (int i = 0; i < 10; i++)
                step(f);
        if (with_urgent) {
                assert_int_equal(submit(f, 1, urgent, 12, 5, -10), 0);
                run_until_done(f, 2);
                assert_true(f->res[1].finish_order < f->res[0].finish_order);
                assert_int_equal(f->res[1].preempted, 0);
                check_reference(f, 1, urgent, 12, 5);
        } else {
                run_until_done(f, 1);
        }
        memcpy(out, f->res[0].toks, sizeof(int32_t) * f->res[0].n);
        *n_out = f->res[0].n;
        *preempted = f->res[0].preempted;
        if (!sampled)
                check_reference(f, 0, low, 30, 40);
        assert_pool_empty(f);
        fixture_free(f);
}

static void test_preempt_slots(void **state) {
        for (int sampled = 0; sampled < 2; sampled++) {
                int32_t a[MAX_OUT], b[MAX_OUT];
                uint32_t na, nb, pa, pb;
                run_slots_case(sampled, a, &na, &pa, true);
                run_slots_case(sampled, b, &nb, &pb, false);
                assert_int_equal(pa, 1);
                assert_int_equal(pb, 0);
                assert_int_equal(na, nb);
                assert_memory_equal(a, b, sizeof(int32_t) * na);
        }
}

/* An urgent request overtakes a saturated batch: with every slot decoding and a queue of waiting
 * requests, its first token comes out of the very next step (its prompt fits the token budget). */
static void test_urgent_ttft(void **state) {
        struct limits l = { .max_num_seqs = 8, .max_batched_tokens = 64, .no_stops = true };
        struct fixture *f = fixture_new(NULL, &l);
        static int32_t p[30][24];
        for (uint32_t i = 0; i < 28; i++) {
                make_prompt(p[i], 24, i, 0);
                assert_int_equal(submit(f, i, p[i], 24, 200, 10), 0);
        }
        for (int s = 0; s < 8; s++)
                step(f);
        struct engine_status st;
        engine_get_status(f->e, &st);
        assert_int_equal(st.running, 8);
        assert_int_equal(st.queued, 20);
        make_prompt(p[29], 24, 29, 0);
        assert_int_equal(submit(f, 29, p[29], 24, 3, -20), 0);
        step(f);
        assert_int_equal(f->res[29].n, 1);
        engine_get_status(f->e, &st);
        assert_int_equal(st.preemptions, 1);
        for (int s = 0; s < 2; s++)
                step(f);
        assert_true(f->res[29].finished);       /* 3 tokens in 3 steps */
        assert_int_equal(f->res[29].reason, ENGINE_FINISH_LENGTH);
        fixture_free(f);
}

/* Preemption when KV pages are the limit (slots to spare). */
static void test_preempt_pages(void **state) {
        struct fake_params fp = { .page_size = 4, .n_full_pages = 24, .n_sliding_pages = 40, .window = 16,
                                  .vocab = VOCAB };
        struct limits l = { .max_num_seqs = 8, .max_batched_tokens = 64 };
        struct fixture *f = fixture_new(&fp, &l);
        int32_t low[40], urgent[30];
        make_prompt(low, 40, 4, 0);
        make_prompt(urgent, 30, 5, 0);
        assert_int_equal(submit(f, 0, low, 40, 40, 5), 0);
        for (int i = 0; i < 12; i++)
                step(f);
        /* low holds 13 of 24 pages; urgent needs 8 and more as it grows */
        assert_int_equal(submit(f, 1, urgent, 30, 30, -5), 0);
        run_until_done(f, 2);
        assert_true(f->res[1].finish_order < f->res[0].finish_order);
        assert_true(f->res[0].preempted >= 1);
        assert_int_equal(f->res[1].preempted, 0);
        check_reference(f, 0, low, 40, 40);
        check_reference(f, 1, urgent, 30, 30);
        assert_pool_empty(f);
        fixture_free(f);
}

/* A follow-up request that extends an earlier conversation skips the cached part of the prefill. */
static void test_prefix_cache(void **state) {
        for (int on = 0; on < 2; on++) {
                struct limits l = { .no_prefix_cache = !on };
                struct fixture *f = fixture_new(NULL, &l);
                int32_t p[128];
                make_prompt(p, 41, 8, 0);
                assert_int_equal(submit(f, 0, p, 41, 12, 0), 0);
                run_until_done(f, 1);
                uint32_t n = 41;
                memcpy(p + n, f->res[0].toks, sizeof(int32_t) * f->res[0].n);
                n += f->res[0].n;
                make_prompt(p + n, 9, 9, 0);
                n += 9;
                uint64_t before = fake_backend_tokens(f->b);
                assert_int_equal(submit(f, 1, p, n, 6, 0), 0);
                run_until_done(f, 2);
                check_reference(f, 1, p, n, 6);
                uint64_t computed = fake_backend_tokens(f->b) - before;
                uint32_t cached = f->res[1].usage.cached_tokens;
                if (on) {
                        /* everything up to the last complete page of request 0 */
                        uint32_t end0 = 41 + f->res[0].usage.output_tokens - 1;
                        assert_int_equal(cached, end0 / 4 * 4);
                        assert_int_equal(computed, n - cached + f->res[1].usage.output_tokens - 1);
                        struct engine_status st;
                        engine_get_status(f->e, &st);
                        assert_true(st.prefix_hit_rate > 0.3);
                } else {
                        assert_int_equal(cached, 0);
                        assert_int_equal(computed, n + f->res[1].usage.output_tokens - 1);
                }
                assert_pool_empty(f);
                fixture_free(f);
        }
}

static void test_cancel(void **state) {
        struct limits l = { .no_stops = true };
        struct fixture *f = fixture_new(NULL, &l);
        int32_t p[30];
        make_prompt(p, 30, 1, 0);
        assert_int_equal(submit(f, 0, p, 30, 100, 0), 0);
        assert_int_equal(submit(f, 1, p, 30, 100, 0), 0);
        struct engine_request rq = { .conn_id = 2, .req_id = 2, .kind = ENGINE_KIND_GENERATE, .tokens = p,
                                     .n_tokens = 30 };
        sampling_params_init(&rq.params);
        rq.params.max_tokens = 100;
        assert_int_equal(engine_submit(f->e, &rq, NULL, 0), 0);
        for (int i = 0; i < 4; i++)
                step(f);
        struct engine_status st;
        engine_get_status(f->e, &st);
        assert_int_equal(st.running, 3);
        uint32_t used = st.kv[KV_SPACE_FULL].used;
        assert_true(used > 0);
        /* cancel one: within the next step it is finished and its pages are back */
        assert_int_equal(engine_cancel(f->e, 1, 0), 0);
        assert_int_equal(engine_cancel(f->e, 1, 99), 0);        /* unknown: ignored */
        step(f);
        assert_true(f->res[0].finished);
        assert_int_equal(f->res[0].reason, ENGINE_FINISH_CANCELLED);
        engine_get_status(f->e, &st);
        assert_int_equal(st.running, 2);
        assert_true(st.kv[KV_SPACE_FULL].used < used);
        /* a disconnect cancels every request of the connection, in one step */
        assert_int_equal(engine_cancel_connection(f->e, 1), 0);
        step(f);
        assert_true(f->res[1].finished);
        assert_int_equal(f->res[1].reason, ENGINE_FINISH_CANCELLED);
        assert_false(f->res[2].finished);
        assert_int_equal(engine_request_stop(f->e, 2, 2), 0);
        step(f);
        assert_true(f->res[2].finished);
        assert_int_equal(f->res[2].reason, ENGINE_FINISH_STOP);
        assert_pool_empty(f);
        fixture_free(f);
}

static void test_deadline(void **state) {
        struct limits l = { .max_num_seqs = 1, .no_stops = true };
        struct fixture *f = fixture_new(NULL, &l);
        int32_t p[20];
        make_prompt(p, 20, 1, 0);
        struct engine_request rq = { .conn_id = 1, .req_id = 0, .kind = ENGINE_KIND_GENERATE, .tokens = p,
                                     .n_tokens = 20 };
        sampling_params_init(&rq.params);
        rq.params.max_tokens = 200;
        rq.params.deadline_ms = 40;
        assert_int_equal(engine_submit(f->e, &rq, NULL, 0), 0);
        rq.req_id = 1;          /* waits behind request 0 and expires in the queue */
        rq.params.deadline_ms = 20;
        assert_int_equal(engine_submit(f->e, &rq, NULL, 0), 0);
        for (int i = 0; i < 2000 && f->n_finished < 2; i++) {
                step(f);
                usleep(1000);
        }
        assert_int_equal(f->n_finished, 2);
        assert_int_equal(f->res[0].reason, ENGINE_FINISH_DEADLINE);
        assert_int_equal(f->res[1].reason, ENGINE_FINISH_DEADLINE);
        assert_true(f->res[0].n > 0);
        assert_int_equal(f->res[1].n, 0);
        assert_pool_empty(f);
        fixture_free(f);
}

static void test_admission(void **state) {
        struct limits l = { .max_queue = 3, .max_model_len = 64, .max_num_seqs = 1 };
        struct fixture *f = fixture_new(NULL, &l);
        int32_t p[80];
        make_prompt(p, 80, 1, 0);
        char err[256];
        struct engine_request rq = { .conn_id = 1, .req_id = 10, .kind = ENGINE_KIND_GENERATE, .tokens = p,
                                     .n_tokens = 64 };
        sampling_params_init(&rq.params);
        /* too long: checked before any work */
        assert_int_equal(engine_submit(f->e, &rq, err, sizeof(err)), -E2BIG);
        assert_non_null(strstr(err, "64"));
        rq.kind = ENGINE_KIND_SCORE;    /* scoring needs no generated token: 64 fits */
        assert_int_equal(engine_submit(f->e, &rq, err, sizeof(err)), 0);
        rq.kind = ENGINE_KIND_GENERATE;
        rq.n_tokens = 10;
        p[3] = VOCAB;
        assert_int_equal(engine_submit(f->e, &rq, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "token 3"));
        p[3] = 5;
        rq.params.top_p = 2;
        assert_int_equal(engine_submit(f->e, &rq, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "top_p"));
        rq.params.top_p = 1;
        rq.n_tokens = 0;
        assert_int_equal(engine_submit(f->e, &rq, err, sizeof(err)), -EINVAL);
        rq.n_tokens = 10;
        /* queue bound: 3 waiting at most, counting the inbox */
        for (uint64_t i = 0; i < 2; i++) {
                rq.req_id = 20 + i;
                assert_int_equal(engine_submit(f->e, &rq, err, sizeof(err)), 0);
        }
        rq.req_id = 30;
        assert_int_equal(engine_submit(f->e, &rq, err, sizeof(err)), -EAGAIN);
        assert_non_null(strstr(err, "overloaded"));
        struct engine_status st;
        engine_get_status(f->e, &st);
        assert_int_equal(st.rejected, 5);
        /* one admitted (slots 1) leaves room for one more */
        step(f);
        assert_int_equal(engine_submit(f->e, &rq, err, sizeof(err)), 0);
        rq.req_id = 31;
        assert_int_equal(engine_submit(f->e, &rq, err, sizeof(err)), -EAGAIN);
        fixture_free(f);
}

static void test_status(void **state) {
        struct limits l = { .max_num_seqs = 1, .no_stops = true };
        struct fixture *f = fixture_new(NULL, &l);
        int32_t p[10];
        make_prompt(p, 10, 1, 0);
        assert_int_equal(submit(f, 0, p, 10, 50, -5), 0);
        assert_int_equal(submit(f, 1, p, 10, 50, 0), 0);
        assert_int_equal(submit(f, 2, p, 10, 50, 0), 0);
        assert_int_equal(submit(f, 3, p, 10, 50, 19), 0);
        step(f);
        struct engine_status st;
        engine_get_status(f->e, &st);
        assert_int_equal(st.running, 1);
        assert_int_equal(st.queued, 3);
        assert_int_equal(st.queued_by_priority[20], 2);
        assert_int_equal(st.queued_by_priority[39], 1);
        assert_int_equal(f->res[3].queue_position, 3);
        assert_int_equal(st.page_size, 4);
        assert_int_equal(st.capacity_tokens, 512 * 4);
        assert_int_equal(st.max_len, 1024);
        /* 32K tokens need 8192 pages of 4: none fit this toy pool */
        assert_int_equal(st.seqs_32k, 0);
        assert_true(st.kv[KV_SPACE_FULL].used >= 3);
        assert_true(st.uptime_s >= 0);
        for (int i = 0; i < 5; i++)
                step(f);
        engine_get_status(f->e, &st);
        assert_true(st.tokens_per_s > 0);
        assert_true(st.prefill_tokens_per_s > 0);
        fixture_free(f);
}

static void test_score(void **state) {
        struct limits l = { .score_chunk = 8 };
        struct fixture *f = fixture_new(NULL, &l);
        int32_t p[64];
        make_prompt(p, 10, 6, 0);
        /* greedy generate with logprobs, then score prompt + continuation: the continuation tokens are
         * the argmax of their rows, and their logprobs agree bit for bit */
        struct engine_request rq = { .conn_id = 1, .req_id = 0, .kind = ENGINE_KIND_GENERATE, .tokens = p,
                                     .n_tokens = 10 };
        sampling_params_init(&rq.params);
        rq.params.temperature = 0;
        rq.params.max_tokens = 20;
        rq.params.logprobs = 1;
        assert_int_equal(engine_submit(f->e, &rq, NULL, 0), 0);
        run_until_done(f, 1);
        uint32_t n_gen = f->res[0].n;
        assert_true(n_gen > 0);
        memcpy(p + 10, f->res[0].toks, sizeof(int32_t) * n_gen);
        rq.req_id = 1;
        rq.kind = ENGINE_KIND_SCORE;
        rq.n_tokens = 10 + n_gen;
        rq.params.logprobs = 2;
        assert_int_equal(engine_submit(f->e, &rq, NULL, 0), 0);
        run_until_done(f, 2);
        struct result *r = &f->res[1];
        assert_int_equal(r->reason, ENGINE_FINISH_STOP);
        assert_int_equal(r->n_score, 10 + n_gen - 1);
        assert_int_equal(r->usage.cached_tokens, 0);    /* scoring needs every row: no cache */
        for (uint32_t i = 0; i < r->n_score; i++) {
                assert_int_equal(r->score_toks[i], p[i + 1]);
                assert_true(r->score_lps[i] <= 0);
                assert_true(r->score_top[i][0].logprob >= r->score_top[i][1].logprob);
        }
        for (uint32_t k = 0; k < n_gen; k++) {
                uint32_t i = 9 + k;
                assert_int_equal(r->score_top[i][0].token, p[i + 1]);
                assert_true(r->score_lps[i] == f->res[0].lps[k]);
        }
        assert_pool_empty(f);
        fixture_free(f);
}

static void test_backend_errors(void **state) {
        struct fixture *f = fixture_new(NULL, NULL);
        int32_t p[20];
        make_prompt(p, 20, 1, 0);
        assert_int_equal(submit(f, 0, p, 20, 50, 0), 0);
        assert_int_equal(submit(f, 1, p, 20, 50, 0), 0);
        step(f);
        fake_backend_set_fail(f->b, fake_backend_steps(f->b) + 1, -ENOMEM);
        step(f);
        assert_true(f->res[0].error && f->res[1].error);
        assert_int_equal(f->res[0].error_code, ENGINE_ERROR_INTERNAL);
        assert_pool_empty(f);
        /* the engine carries on after a transient error */
        assert_int_equal(submit(f, 2, p, 20, 5, 0), 0);
        run_until_done(f, 3);
        check_reference(f, 2, p, 20, 5);
        fixture_free(f);

        /* a lost device (-EIO) is fatal; a request waiting outside the failed step gets an error too */
        struct limits l1 = { .max_num_seqs = 1 };
        f = fixture_new(NULL, &l1);
        assert_int_equal(submit(f, 3, p, 20, 50, 0), 0);
        assert_int_equal(submit(f, 5, p, 20, 50, 19), 0);
        step(f);
        fake_backend_set_fail(f->b, fake_backend_steps(f->b) + 1, -EIO);
        assert_int_equal(engine_run_step(f->e), -EIO);
        collect(f);
        assert_true(f->res[3].error);
        assert_true(f->res[5].error);
        assert_int_equal(f->res[5].error_code, ENGINE_ERROR_INTERNAL);
        struct engine_status st;
        engine_get_status(f->e, &st);
        assert_int_equal(st.fatal, -EIO);
        assert_int_equal(submit(f, 4, p, 20, 5, 0), -ESHUTDOWN);
        assert_int_equal(engine_run_step(f->e), -EIO);
        fixture_free(f);
}

static void test_duplicate_id(void **state) {
        struct fixture *f = fixture_new(NULL, NULL);
        int32_t p[8];
        make_prompt(p, 8, 1, 0);
        assert_int_equal(submit(f, 0, p, 8, 3, 0), 0);
        step(f);
        assert_int_equal(submit(f, 0, p, 8, 3, 0), 0);
        struct engine_event *ev;
        assert_int_equal(engine_run_step(f->e), 1);
        ev = engine_pop_events(f->e);
        bool saw_error = false;
        while (ev) {
                struct engine_event *next = ev->next;
                if (ev->type == ENGINE_EVENT_ERROR) {
                        saw_error = true;
                        assert_int_equal(ev->error.code, ENGINE_ERROR_BAD_REQUEST);
                }
                engine_event_free(ev);
                ev = next;
        }
        assert_true(saw_error);
        fixture_free(f);
}

/* Prefix-cache workloads, measured in prefill tokens computed (docs/scheduler.md quotes the output):
 * multi-turn conversations (each turn extends the previous prompt and answer) and a shared system
 * prompt, submitted all at once or one after another. */
static uint64_t run_multiturn(bool cache, uint32_t *ret_cached) {
        struct limits l = { .no_prefix_cache = !cache, .max_num_seqs = 8, .max_batched_tokens = 64 };
        struct fixture *f = fixture_new(NULL, &l);
        static int32_t conv[8][400];
        uint32_t len[8], cached = 0;
        for (uint32_t c = 0; c < 8; c++) {
                make_prompt(conv[c], 30, c, 20);
                len[c] = 30;
        }
        uint64_t id = 0;
        for (uint32_t turn = 0; turn < 4; turn++) {
                uint64_t first = id;
                for (uint32_t c = 0; c < 8; c++)
                        assert_int_equal(submit(f, id++, conv[c], len[c], 10, 0), 0);
                run_until_done(f, (uint32_t) id);
                for (uint32_t c = 0; c < 8; c++) {
                        struct result *r = &f->res[first + c];
                        cached += r->usage.cached_tokens;
                        memcpy(conv[c] + len[c], r->toks, sizeof(int32_t) * r->n);
                        len[c] += r->n;
                        make_prompt(conv[c] + len[c], 12, 100 + c * 4 + turn, 0);
                        len[c] += 12;
                }
        }
        uint64_t tokens = fake_backend_tokens(f->b);
        fixture_free(f);
        *ret_cached = cached;
        return tokens;
}

/* Like a chat template: the next turn re-renders the previous answer after the model-turn header but
 * drops the last 4 tokens of the previous prompt (Gemma's empty thought channel), so the shared prefix
 * ends 4 tokens before the previous prompt's end, not at the end of its sequence. B = 16, W = 64. */
static uint64_t run_chat(bool cache, uint32_t *ret_cached, uint32_t *ret_hits) {
        struct fake_params fp = { .page_size = 16, .n_full_pages = 256, .n_sliding_pages = 160, .window = 64,
                                  .vocab = VOCAB };
        struct limits l = { .no_prefix_cache = !cache, .max_num_seqs = 8, .max_batched_tokens = 256 };
        struct fixture *f = fixture_new(&fp, &l);
        static int32_t conv[8][600];
        uint32_t len[8], cached = 0, hits = 0;
        const int32_t tail[4] = { 100, 45518 % VOCAB, 107, 101 };
        for (uint32_t c = 0; c < 8; c++) {
                make_prompt(conv[c], 40 + c * 3, c, 20);
                len[c] = 40 + c * 3;
                memcpy(conv[c] + len[c], tail, sizeof(tail));
                len[c] += 4;
        }
        uint64_t id = 0;
        for (uint32_t turn = 0; turn < 4; turn++) {
                uint64_t first = id;
                for (uint32_t c = 0; c < 8; c++)
                        assert_int_equal(submit(f, id++, conv[c], len[c], 12, 0), 0);
                run_until_done(f, (uint32_t) id);
                for (uint32_t c = 0; c < 8; c++) {
                        struct result *r = &f->res[first + c];
                        cached += r->usage.cached_tokens;
                        hits += r->usage.cached_tokens > 0;
                        len[c] -= 4;            /* the history drops the empty thought channel */
                        memcpy(conv[c] + len[c], r->toks, sizeof(int32_t) * r->n);
                        len[c] += r->n;
                        conv[c][len[c]++] = 106;        /* <turn|> */
                        make_prompt(conv[c] + len[c], 9 + c, 100 + c * 4 + turn, 0);
                        len[c] += 9 + c;
                        memcpy(conv[c] + len[c], tail, sizeof(tail));
                        len[c] += 4;
                }
        }
        uint64_t tokens = fake_backend_tokens(f->b);
        fixture_free(f);
        *ret_cached = cached;
        *ret_hits = hits;
        return tokens;
}

static uint64_t run_system_prompt(bool cache, bool one_by_one, uint32_t *ret_cached) {
        struct limits l = { .no_prefix_cache = !cache, .max_num_seqs = 16, .max_batched_tokens = 256 };
        struct fixture *f = fixture_new(NULL, &l);
        static int32_t p[16][80];
        uint32_t cached = 0;
        for (uint32_t i = 0; i < 16; i++) {
                make_prompt(p[i], 72, i + 1, 64);
                assert_int_equal(submit(f, i, p[i], 72, 4, 0), 0);
                if (one_by_one)
                        run_until_done(f, i + 1);
        }
        run_until_done(f, 16);
        for (uint32_t i = 0; i < 16; i++)
                cached += f->res[i].usage.cached_tokens;
        uint64_t tokens = fake_backend_tokens(f->b);
        fixture_free(f);
        *ret_cached = cached;
        return tokens;
}

static void test_prefix_workloads(void **state) {
        uint32_t c_on, c_off;
        uint64_t on = run_multiturn(true, &c_on), off = run_multiturn(false, &c_off);
        print_message("# multi-turn (8 conversations x 4 turns): %llu tokens computed with the prefix cache "
                      "(%u cached), %llu without\n", (unsigned long long) on, c_on, (unsigned long long) off);
        assert_true(on < off);
        assert_int_equal(c_off, 0);
        assert_int_equal(off - on, c_on);
        uint32_t hits_on, hits_off;
        on = run_chat(true, &c_on, &hits_on);
        off = run_chat(false, &c_off, &hits_off);
        print_message("# chat-template turns (8 conversations x 4 turns, B = 16, W = 64): %llu tokens computed "
                      "with the prefix cache (%u cached, %u of 24 follow-up turns hit), %llu without\n",
                      (unsigned long long) on, c_on, hits_on, (unsigned long long) off);
        assert_true(on < off);
        assert_true(hits_on >= 18);
        assert_int_equal(off - on, c_on);
        uint64_t at_once = run_system_prompt(true, false, &c_on);
        uint64_t seq = run_system_prompt(true, true, &c_off);
        uint32_t c_none;
        uint64_t none = run_system_prompt(false, false, &c_none);
        print_message("# shared 64-token system prompt, 16 requests: %llu tokens computed all at once "
                      "(%u cached), %llu one after another (%u cached), %llu without the cache\n",
                      (unsigned long long) at_once, c_on, (unsigned long long) seq, c_off,
                      (unsigned long long) none);
        assert_true(at_once <= none);
        assert_int_equal(none - seq, c_off);
}

static uint32_t rnd_next(uint64_t *rng, uint32_t n) {
        *rng = *rng * 6364136223846793005u + 1442695040888963407u;
        return (uint32_t) ((*rng >> 33) % n);
}

/* A random mix of submissions (shared prefixes, priorities, deadlines, seeds), cancels, disconnects and
 * stop requests under slot and page pressure: after every step the pool is consistent and the fake's
 * checks hold; every greedy request's output is a prefix of its solo reference (equal to it when it
 * ended by itself); at the end every page is free or cached. */
static void test_random_mix(void **state) {
        struct fake_params fp = { .page_size = 4, .n_full_pages = 96, .n_sliding_pages = 48, .window = 16,
                                  .vocab = VOCAB };
        struct limits l = { .max_num_seqs = 6, .max_batched_tokens = 40, .max_queue = 12, .aging_ms = 20 };
        struct fixture *f = fixture_new(&fp, &l);
        static int32_t prompts[MAX_REQS][64];
        static uint32_t lens[MAX_REQS], maxt[MAX_REQS];
        static bool greedy[MAX_REQS], accepted[MAX_REQS];
        uint64_t rng = 2024;
        uint32_t next_id = 0, n_accepted = 0, actions = 0, overloaded = 0;
        char err[256];
        while (actions < 2000) {
                uint32_t a = rnd_next(&rng, 100);
                actions++;
                for (uint32_t burst = a < 25 ? (rnd_next(&rng, 6) == 0 ? 10 : 1) : 0;
                     burst > 0 && next_id < MAX_REQS; burst--) {
                        uint32_t id = next_id++;
                        lens[id] = 2 + rnd_next(&rng, 50);
                        maxt[id] = 1 + rnd_next(&rng, 30);
                        uint32_t salt = rnd_next(&rng, 4), shared = rnd_next(&rng, 3) * 12;
                        make_prompt(prompts[id], lens[id], salt, shared);
                        struct engine_request rq = { .conn_id = 1 + id % 3, .req_id = id,
                                                     .kind = rnd_next(&rng, 10) == 0 ? ENGINE_KIND_SCORE :
                                                                                       ENGINE_KIND_GENERATE,
                                                     .tokens = prompts[id], .n_tokens = lens[id] };
                        sampling_params_init(&rq.params);
                        greedy[id] = rnd_next(&rng, 3) != 0 && rq.kind == ENGINE_KIND_GENERATE;
                        rq.params.temperature = greedy[id] ? 0.0f : 0.8f;
                        rq.params.top_p = greedy[id] ? 1.0f : 0.9f;
                        rq.params.seed = id;
                        rq.params.has_seed = rnd_next(&rng, 2);
                        rq.params.max_tokens = maxt[id];
                        rq.params.priority = (int32_t) rnd_next(&rng, 40) - 20;
                        rq.params.deadline_ms = rnd_next(&rng, 8) == 0 ? 1 + rnd_next(&rng, 20) : 0;
                        rq.params.logprobs = rnd_next(&rng, 3);
                        int r = engine_submit(f->e, &rq, err, sizeof(err));
                        if (r == -EAGAIN) {
                                overloaded++;
                        } else {
                                assert_int_equal(r, 0);
                                accepted[id] = true;
                                n_accepted++;
                        }
                }
                if (a < 25) {
                        continue;
                } else if (a < 26 && next_id > 0) {
                        uint32_t id = rnd_next(&rng, next_id);
                        assert_int_equal(engine_cancel(f->e, 1 + id % 3, id), 0);
                } else if (a < 28) {
                        assert_int_equal(engine_cancel_connection(f->e, 1 + rnd_next(&rng, 3)), 0);
                } else if (a < 32 && next_id > 0) {
                        uint32_t id = rnd_next(&rng, next_id);
                        assert_int_equal(engine_request_stop(f->e, 1 + id % 3, id), 0);
                } else {
                        step(f);
                        assert_int_equal(engine_check(f->e, err, sizeof(err)), 0);
                        if (rnd_next(&rng, 20) == 0)
                                usleep(2000);   /* let some deadlines pass */
                }
        }
        run_until_done(f, n_accepted);
        uint32_t full_checks = 0;
        for (uint32_t id = 0; id < next_id; id++) {
                struct result *r = &f->res[id];
                if (!accepted[id] || !greedy[id] || r->error)
                        continue;
                assert_true(r->finished);
                int32_t ref[MAX_OUT];
                uint32_t n_ref = fake_reference_greedy(&f->fp, prompts[id], lens[id], stop_ids, 3, maxt[id], ref);
                assert_true(r->n <= n_ref);
                assert_memory_equal(r->toks, ref, sizeof(int32_t) * r->n);
                if (r->reason == ENGINE_FINISH_LENGTH || r->reason == ENGINE_FINISH_STOP) {
                        bool by_stop_id = r->reason == ENGINE_FINISH_STOP && r->usage.output_tokens == n_ref &&
                                          r->n + 1 == n_ref;
                        if (r->reason == ENGINE_FINISH_LENGTH || by_stop_id) {
                                assert_int_equal(r->usage.output_tokens, n_ref);
                                full_checks++;
                        }
                }
        }
        struct engine_status st;
        engine_get_status(f->e, &st);
        print_message("# random mix: %u actions, %u accepted, %u overloaded, %llu preemptions, %u outputs "
                      "checked in full\n", actions, n_accepted, overloaded, (unsigned long long) st.preemptions,
                      full_checks);
        assert_true(full_checks > 5);
        assert_pool_empty(f);
        assert_int_equal(engine_check(f->e, err, sizeof(err)), 0);
        fixture_free(f);
}

/* ---- the real thread ---- */

struct waker {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        uint32_t wakes;
};

static void wake_cb(void *userdata) {
        struct waker *w = userdata;
        pthread_mutex_lock(&w->lock);
        w->wakes++;
        pthread_cond_signal(&w->cond);
        pthread_mutex_unlock(&w->lock);
}

static void test_thread(void **state) {
        struct fake_params fp = { .page_size = 4, .n_full_pages = 512, .n_sliding_pages = 256, .window = 16,
                                  .vocab = VOCAB };
        struct fixture *f = calloc(1, sizeof(*f));
        assert_non_null(f);
        f->fp = fp;
        assert_int_equal(fake_backend_new(&fp, &f->b), 0);
        struct waker w = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };
        struct engine_params p = {
                .ops = &fake_backend_ops, .backend = f->b, .vocab_size = VOCAB,
                .stop_ids = { 1, 106, 50 }, .n_stop_ids = 3, .max_model_len = 1024, .max_num_seqs = 4,
                .max_batched_tokens = 32, .max_queue = 64, .aging_ms = 100, .prefix_cache = true,
                .wake = wake_cb, .wake_userdata = &w,
        };
        assert_int_equal(engine_new(&p, &f->e, NULL), 0);
        assert_int_equal(engine_start(f->e), 0);
        assert_int_equal(engine_run_step(f->e), -EBUSY);
        static int32_t prompts[16][40];
        for (uint32_t i = 0; i < 16; i++) {
                make_prompt(prompts[i], 10 + i, i, 0);
                assert_int_equal(submit(f, i, prompts[i], 10 + i, 12, (int32_t) (i % 4) - 2), 0);
        }
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += 60;
        while (f->n_finished < 16) {
                pthread_mutex_lock(&w.lock);
                while (w.wakes == 0)
                        if (pthread_cond_timedwait(&w.cond, &w.lock, &deadline) != 0)
                                break;
                w.wakes = 0;
                pthread_mutex_unlock(&w.lock);
                collect(f);
                struct timespec now;
                clock_gettime(CLOCK_REALTIME, &now);
                if (now.tv_sec > deadline.tv_sec)
                        fail_msg("timed out: %u of 16 finished", f->n_finished);
        }
        for (uint32_t i = 0; i < 16; i++)
                check_reference(f, i, prompts[i], 10 + i, 12);
        assert_string_equal(fake_backend_error(f->b), "");

        /* watchdog: idle but healthy keeps the timestamp fresh; a stall freezes it (generous bounds:
         * this also runs under valgrind on a loaded machine) */
        usleep(600000);
        uint64_t age = engine_now_ns() - engine_last_progress_ns(f->e);
        assert_true(age < 550000000u);
        engine_test_stall(f->e, 1500);
        usleep(900000);
        age = engine_now_ns() - engine_last_progress_ns(f->e);
        assert_true(age >= 850000000u);
        usleep(1400000);
        age = engine_now_ns() - engine_last_progress_ns(f->e);
        assert_true(age < 700000000u);

        /* a request submitted after engine_test_stall() returns is served only after the stall */
        uint64_t t0 = engine_now_ns();
        engine_test_stall(f->e, 600);
        assert_int_equal(submit(f, 21, prompts[1], 11, 1, 0), 0);
        while (!f->res[21].finished) {
                pthread_mutex_lock(&w.lock);
                while (w.wakes == 0)
                        if (pthread_cond_timedwait(&w.cond, &w.lock, &deadline) != 0)
                                break;
                w.wakes = 0;
                pthread_mutex_unlock(&w.lock);
                collect(f);
                if (engine_now_ns() - t0 > 30000000000ull)
                        fail_msg("the request after the stall never finished");
        }
        assert_true(engine_now_ns() - t0 >= 590000000ull);

        /* freeing with requests in flight cancels them cleanly */
        assert_int_equal(submit(f, 20, prompts[0], 10, 200, 0), 0);
        usleep(2000);
        fixture_free(f);
}

/* Submit with explicit sampling parameters (greedy-path tests). */
static int submit_params(struct fixture *f, uint64_t id, const int32_t *prompt, uint32_t n,
                         const struct sampling_params *sp, enum engine_kind kind) {
        struct engine_request rq = { .conn_id = 1, .req_id = id, .kind = kind, .tokens = prompt, .n_tokens = n };
        rq.params = *sp;
        return engine_submit(f->e, &rq, NULL, 0);
}

/* The backend's greedy op is used for a step exactly when no row of it is needed on the host, and gives
 * the same tokens as sampling the logits. */
static void test_greedy_fast_path(void **state) {
        struct limits l = { .max_batched_tokens = 16 };
        struct fixture *f = fixture_new(NULL, &l);
        int32_t p[4][40];
        for (uint32_t i = 0; i < 4; i++)
                make_prompt(p[i], 12 + 9 * i, 40 + i, 0);
        struct sampling_params plain;
        sampling_params_init(&plain);
        plain.temperature = 0;
        plain.max_tokens = 24;
        plain.logprobs = 0;

        /* plain greedy: every step (chunked prefill of 39 tokens included) takes the fast path */
        assert_int_equal(submit_params(f, 0, p[3], 39, &plain, ENGINE_KIND_GENERATE), 0);
        run_until_done(f, 1);
        check_reference(f, 0, p[3], 39, 24);
        for (uint32_t i = 0; i < f->res[0].n; i++)
                assert_true(f->res[0].lps[i] == 0.0f);
        assert_true(fake_backend_greedy_steps(f->b) > 0);
        assert_int_equal(fake_backend_greedy_steps(f->b), fake_backend_steps(f->b));
        assert_int_equal(fake_backend_host_allocs(f->b), 0);    /* no logits buffer was even needed */

        /* anything that reads the row on the host keeps the slow path: logprobs, each penalty, sampling */
        uint64_t id = 1;
        for (int k = 0; k < 5; k++, id++) {
                struct sampling_params sp = plain;
                switch (k) {
                case 0: sp.logprobs = 1; break;
                case 1: sp.repetition_penalty = 1.3f; break;
                case 2: sp.presence_penalty = 0.5f; break;
                case 3: sp.frequency_penalty = -0.5f; break;
                case 4: sp.temperature = 0.7f; sp.seed = 9; sp.has_seed = true; break;
                }
                uint64_t g0 = fake_backend_greedy_steps(f->b), s0 = fake_backend_steps(f->b);
                /* 12 tokens: one prefill step, so every step of this request needs its row */
                assert_int_equal(submit_params(f, id, p[0], 12, &sp, ENGINE_KIND_GENERATE), 0);
                run_until_done(f, (uint32_t) id + 1);
                assert_true(fake_backend_steps(f->b) > s0);
                assert_int_equal(fake_backend_greedy_steps(f->b), g0);
                if (k == 0)
                        check_reference(f, id, p[0], 12, 24);
        }

        /* a score request in the step forces the slow path for everyone in it */
        struct sampling_params sc = plain;
        sc.logprobs = 1;
        uint64_t g0 = fake_backend_greedy_steps(f->b);
        assert_int_equal(submit_params(f, id, p[1], 21, &sc, ENGINE_KIND_SCORE), 0);
        run_until_done(f, (uint32_t) id + 1);
        assert_int_equal(fake_backend_greedy_steps(f->b), g0);
        assert_int_equal(f->res[id].n_score, 20);
        id++;

        /* mixed batch: plain greedy next to a logprobs request; both equal their solo reference, and
         * once the logprobs request is done the plain one continues on the fast path */
        struct sampling_params lp = plain;
        lp.logprobs = 1;
        lp.max_tokens = 4;
        g0 = fake_backend_greedy_steps(f->b);
        assert_int_equal(submit_params(f, id, p[2], 30, &plain, ENGINE_KIND_GENERATE), 0);
        assert_int_equal(submit_params(f, id + 1, p[1], 21, &lp, ENGINE_KIND_GENERATE), 0);
        run_until_done(f, (uint32_t) id + 2);
        check_reference(f, id, p[2], 30, 24);
        check_reference(f, id + 1, p[1], 21, 4);
        assert_true(fake_backend_greedy_steps(f->b) > g0);
        assert_true(fake_backend_host_allocs(f->b) > 0);        /* the slow steps' buffer came from the backend */
        assert_pool_empty(f);
        fixture_free(f);

        /* a backend that switched the op off: the engine falls back to forward() for good, same tokens */
        struct fake_params fp = { .page_size = 4, .n_full_pages = 512, .n_sliding_pages = 256, .window = 16,
                                  .vocab = VOCAB, .no_greedy = true };
        f = fixture_new(&fp, &l);
        assert_int_equal(submit_params(f, 0, p[3], 39, &plain, ENGINE_KIND_GENERATE), 0);
        run_until_done(f, 1);
        check_reference(f, 0, p[3], 39, 24);
        assert_int_equal(fake_backend_greedy_steps(f->b), 0);
        assert_pool_empty(f);
        fixture_free(f);
}

/* Sampled requests (temperature, truncations, penalties, logprobs) give the same tokens and logprobs
 * whether the step's rows are sampled by one thread or by a pool of four. */
static void test_sampling_threads(void **state) {
        static int32_t toks[2][12][MAX_OUT];
        static float lps[2][12][MAX_OUT];
        uint32_t n[2][12];
        int32_t p[12][30];
        for (uint32_t i = 0; i < 12; i++)
                make_prompt(p[i], 10 + i, 70 + i, 0);
        for (int run = 0; run < 2; run++) {
                struct limits l = { .max_num_seqs = 12, .max_batched_tokens = 128, .sample_threads = run ? 4 : 1 };
                /* the second run also has a backend that declines host_alloc: malloc'd logits instead */
                struct fake_params fp = { .page_size = 4, .n_full_pages = 512, .n_sliding_pages = 256,
                                          .window = 16, .vocab = VOCAB, .no_host_alloc = run == 1 };
                struct fixture *f = fixture_new(&fp, &l);
                for (uint32_t i = 0; i < 12; i++) {
                        struct sampling_params sp;
                        sampling_params_init(&sp);
                        sp.max_tokens = 20;
                        sp.temperature = i % 3 == 0 ? 0.0f : 0.6f + 0.1f * (float) i;
                        sp.top_k = i % 2 ? 50 : 0;
                        sp.top_p = i % 4 == 1 ? 0.8f : 1.0f;
                        sp.repetition_penalty = i % 5 == 0 ? 1.1f : 1.0f;
                        sp.frequency_penalty = i % 3 == 2 ? 0.2f : 0.0f;
                        sp.logprobs = i % 3;
                        sp.seed = 77 + i;
                        sp.has_seed = true;
                        assert_int_equal(submit_params(f, i, p[i], 10 + i, &sp, ENGINE_KIND_GENERATE), 0);
                }
                run_until_done(f, 12);
                for (uint32_t i = 0; i < 12; i++) {
                        n[run][i] = f->res[i].n;
                        memcpy(toks[run][i], f->res[i].toks, sizeof(int32_t) * f->res[i].n);
                        memcpy(lps[run][i], f->res[i].lps, sizeof(float) * f->res[i].n);
                }
                assert_int_equal(fake_backend_greedy_steps(f->b), 0);
                assert_pool_empty(f);
                fixture_free(f);
        }
        for (uint32_t i = 0; i < 12; i++) {
                assert_int_equal(n[0][i], n[1][i]);
                assert_memory_equal(toks[0][i], toks[1][i], sizeof(int32_t) * n[0][i]);
                assert_memory_equal(lps[0][i], lps[1][i], sizeof(float) * n[0][i]);
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_single),
                cmocka_unit_test(test_concurrent_64),
                cmocka_unit_test(test_preempt_slots),
                cmocka_unit_test(test_preempt_pages),
                cmocka_unit_test(test_urgent_ttft),
                cmocka_unit_test(test_prefix_cache),
                cmocka_unit_test(test_prefix_workloads),
                cmocka_unit_test(test_cancel),
                cmocka_unit_test(test_deadline),
                cmocka_unit_test(test_admission),
                cmocka_unit_test(test_status),
                cmocka_unit_test(test_score),
                cmocka_unit_test(test_backend_errors),
                cmocka_unit_test(test_duplicate_id),
                cmocka_unit_test(test_random_mix),
                cmocka_unit_test(test_thread),
                cmocka_unit_test(test_greedy_fast_path),
                cmocka_unit_test(test_sampling_threads),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
