/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The engine's use of forward_sample, on the checking fake backend with a "device sampler" added: the op
 * runs the fake forward into its own buffer and the host sampler on each row, as the CUDA backend does on
 * the device, and records what the engine handed it. Checked:
 *   - sampled requests give the same tokens and logprobs as on a backend without the op (host sampling);
 *   - every sampling row gets the request's parameters, its resolved seed, its whole history (prompt then
 *     the tokens generated so far) and n_generated = the draw's index, once per generated token; rows of a
 *     mid-prefill chunk are asked for a plain greedy token and no history;
 *   - plain greedy steps keep forward_greedy, a step with a score row keeps forward() (host), and a
 *     backend answering -EOPNOTSUPP is never asked again while the output stays the same.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fake-backend.h"
#include "server/engine.h"

#define VOCAB 512
#define MAX_OUT 64
#define N_REQ 8
#define MAX_RECORDS 4096

struct record {
        struct sampling_params params;
        bool has_tokens;
        uint32_t n_prompt, n_generated;
        int32_t hist[160];
        uint32_t seq_pos, seq_n_tokens;         /* the batch entry it came with */
};

static struct {
        struct record rec[MAX_RECORDS];
        uint32_t n_rec;
        uint64_t calls, rows;
        bool refuse;                            /* answer -EOPNOTSUPP */
        struct sampler *s;
} dev;

/* The "device": the fake step's logits, sampled row by row with the host sampler. */
static int sampling_forward(struct backend *b, const struct backend_batch *batch, const struct backend_sample *samples,
                            struct sampler_result *ret) {
        dev.calls++;
        if (dev.refuse)
                return -EOPNOTSUPP;
        for (uint32_t i = 0; i < batch->n_seqs; i++)
                if (batch->seqs[i].all_logits)
                        return -EINVAL;
        float *l = malloc(sizeof(float) * VOCAB * (batch->n_seqs ? batch->n_seqs : 1));
        assert_non_null(l);
        int r = fake_backend_ops.forward(b, batch, l);
        for (uint32_t i = 0; r == 0 && i < batch->n_seqs; i++) {
                const struct backend_sample *bs = &samples[i];
                assert_true(dev.n_rec < MAX_RECORDS);
                struct record *rc = &dev.rec[dev.n_rec++];
                *rc = (struct record) { .params = bs->params, .has_tokens = bs->tokens != NULL,
                                        .n_prompt = bs->n_prompt, .n_generated = bs->n_generated,
                                        .seq_pos = batch->seqs[i].pos, .seq_n_tokens = batch->seqs[i].n_tokens };
                assert_true(bs->n_prompt + bs->n_generated <= 160);
                if (bs->tokens)
                        memcpy(rc->hist, bs->tokens, sizeof(int32_t) * (bs->n_prompt + bs->n_generated));
                r = sampler_sample(dev.s, l + (size_t) i * VOCAB, bs->tokens, bs->n_prompt, bs->n_generated,
                                   &bs->params, &ret[i]);
                dev.rows++;
        }
        free(l);
        return r;
}

static struct backend_ops sampling_ops;

struct fixture {
        struct fake_params fp;
        struct backend *b;
        struct engine *e;
        int32_t toks[N_REQ + 2][MAX_OUT];
        float lps[N_REQ + 2][MAX_OUT];
        uint32_t n[N_REQ + 2], n_score[N_REQ + 2];
        uint32_t finished;
};

static struct fixture *fixture_new(const struct backend_ops *ops) {
        struct fixture *f = calloc(1, sizeof(*f));
        assert_non_null(f);
        f->fp = (struct fake_params) { .page_size = 4, .n_full_pages = 512, .n_sliding_pages = 256, .window = 16,
                                       .vocab = VOCAB };
        assert_int_equal(fake_backend_new(&f->fp, &f->b), 0);
        struct engine_params p = {
                .ops = ops, .backend = f->b, .vocab_size = VOCAB, .stop_ids = { 1 }, .n_stop_ids = 1,
                .max_model_len = 1024, .max_num_seqs = 8, .max_batched_tokens = 16, .max_queue = 64,
                .prefix_cache = true, .sample_threads = 1,
        };
        char *err = NULL;
        if (engine_new(&p, &f->e, &err) < 0)
                fail_msg("engine_new: %s", err ? err : "?");
        return f;
}

static void fixture_free(struct fixture *f) {
        f->e = engine_free(f->e);
        if (fake_backend_error(f->b)[0])
                fail_msg("fake backend check: %s", fake_backend_error(f->b));
        fake_backend_ops.destroy(f->b);
        free(f);
}

static void run_until_done(struct fixture *f, uint32_t n_expected) {
        for (int i = 0; i < 100000 && f->finished < n_expected; i++) {
                assert_true(engine_run_step(f->e) >= 0);
                for (struct engine_event *ev = engine_pop_events(f->e), *next; ev; ev = next) {
                        next = ev->next;
                        assert_true(ev->req_id < N_REQ + 2);
                        uint64_t id = ev->req_id;
                        if (ev->type == ENGINE_EVENT_TOKENS)
                                for (uint32_t k = 0; k < ev->tokens.n; k++) {
                                        assert_true(f->n[id] < MAX_OUT);
                                        f->lps[id][f->n[id]] = ev->tokens.logprobs[k];
                                        f->toks[id][f->n[id]++] = ev->tokens.tokens[k];
                                }
                        else if (ev->type == ENGINE_EVENT_SCORE)
                                f->n_score[id] = ev->tokens.n;
                        else if (ev->type == ENGINE_EVENT_FINISHED)
                                f->finished++;
                        else if (ev->type == ENGINE_EVENT_ERROR)
                                fail_msg("request %llu failed", (unsigned long long) id);
                        engine_event_free(ev);
                }
                if (fake_backend_error(f->b)[0])
                        fail_msg("fake backend check: %s", fake_backend_error(f->b));
        }
        assert_int_equal(f->finished, n_expected);
}

static void make_prompt(int32_t *p, uint32_t n, uint32_t salt) {
        for (uint32_t i = 0; i < n; i++)
                p[i] = (int32_t) (200 + (i * 7 + salt * 31 + (i * salt) % 13) % 300);
}

static uint32_t prompt_len(uint32_t i) {
        return 6 + 5 * i;       /* 6 .. 41: several take more than one prefill chunk of 16 */
}

static struct sampling_params request_params(uint32_t i) {
        struct sampling_params sp;
        sampling_params_init(&sp);
        sp.max_tokens = 24 + i;
        sp.temperature = i == 0 ? 0.0f : 0.5f + 0.15f * (float) i;
        sp.top_k = i % 2 ? 40 : 0;
        sp.top_p = i % 3 == 1 ? 0.85f : 1.0f;
        sp.min_p = i % 4 == 3 ? 0.05f : 0.0f;
        sp.repetition_penalty = i % 3 == 0 ? 1.2f : 1.0f;
        sp.presence_penalty = i % 5 == 2 ? 0.4f : 0.0f;
        sp.frequency_penalty = i % 4 == 1 ? -0.3f : 0.0f;
        sp.logprobs = i % 3;
        sp.logprob = i == 0;            /* request 0 is greedy with a logprob: not the plain greedy path */
        sp.seed = 1000 + 17 * i;
        sp.has_seed = true;
        return sp;
}

static void submit_all(struct fixture *f, int32_t prompts[N_REQ][48]) {
        for (uint32_t i = 0; i < N_REQ; i++) {
                struct engine_request rq = { .conn_id = 1, .req_id = i, .kind = ENGINE_KIND_GENERATE,
                                             .tokens = prompts[i], .n_tokens = prompt_len(i) };
                rq.params = request_params(i);
                assert_int_equal(engine_submit(f->e, &rq, NULL, 0), 0);
        }
}

static void setup_device(void) {
        memset(&dev, 0, sizeof(dev));
        assert_int_equal(sampler_new(VOCAB, &dev.s), 0);
        sampling_ops = fake_backend_ops;
        sampling_ops.name = "fake+sample";
        sampling_ops.forward_sample = sampling_forward;
}

/* Which request a sampling record belongs to: the prompts are all different. */
static int record_request(const struct record *rc, int32_t prompts[N_REQ][48]) {
        for (uint32_t i = 0; i < N_REQ; i++)
                if (rc->n_prompt == prompt_len(i) && memcmp(rc->hist, prompts[i], sizeof(int32_t) * rc->n_prompt) == 0)
                        return (int) i;
        return -1;
}

/* The same 8 requests on the host-sampling backend (the reference, *ret_host) and on the device-sampling one
 * (*ret_dev, refusing the op when `refuse`); both run to completion, and their outputs must be identical. */
static void run_both(int32_t prompts[N_REQ][48], bool refuse, struct fixture **ret_host, struct fixture **ret_dev) {
        for (uint32_t i = 0; i < N_REQ; i++)
                make_prompt(prompts[i], prompt_len(i), 90 + i);
        struct fixture *h = fixture_new(&fake_backend_ops);
        submit_all(h, prompts);
        run_until_done(h, N_REQ);

        setup_device();
        dev.refuse = refuse;
        struct fixture *f = fixture_new(&sampling_ops);
        submit_all(f, prompts);
        run_until_done(f, N_REQ);
        for (uint32_t i = 0; i < N_REQ; i++) {
                assert_int_equal(f->n[i], h->n[i]);
                assert_memory_equal(f->toks[i], h->toks[i], sizeof(int32_t) * h->n[i]);
                assert_memory_equal(f->lps[i], h->lps[i], sizeof(float) * h->n[i]);
                assert_true(h->n[i] > 0);
        }
        *ret_host = h;
        *ret_dev = f;
}

static void test_device_sampling_matches_host(void **state) {
        (void) state;
        int32_t prompts[N_REQ][48];
        struct fixture *h, *f;
        run_both(prompts, false, &h, &f);
        assert_true(dev.calls > 0);
        assert_int_equal(fake_backend_greedy_steps(f->b), 0);   /* no step of this mix is plain greedy */

        /* what each row was given: a sampling row per generated token, with parameters, seed, history and
         * index; every other row is a mid-prefill chunk asking for a greedy token without history */
        uint32_t seen[N_REQ][MAX_OUT] = { { 0 } };
        uint32_t sampling_rows = 0;
        for (uint32_t k = 0; k < dev.n_rec; k++) {
                const struct record *rc = &dev.rec[k];
                if (!rc->has_tokens) {
                        assert_true(rc->params.temperature == 0.0f);
                        assert_int_equal(rc->params.logprobs, 0);
                        assert_false(rc->params.logprob);
                        assert_true(rc->params.repetition_penalty == 1.0f);
                        assert_int_equal(rc->n_prompt + rc->n_generated, 0);
                        continue;
                }
                int id = record_request(rc, prompts);
                assert_true(id >= 0);
                struct sampling_params want = request_params((uint32_t) id);
                assert_true(rc->params.temperature == want.temperature);
                assert_int_equal(rc->params.top_k, want.top_k);
                assert_true(rc->params.top_p == want.top_p);
                assert_true(rc->params.min_p == want.min_p);
                assert_true(rc->params.repetition_penalty == want.repetition_penalty);
                assert_true(rc->params.presence_penalty == want.presence_penalty);
                assert_true(rc->params.frequency_penalty == want.frequency_penalty);
                assert_int_equal(rc->params.logprobs, want.logprobs);
                assert_int_equal(rc->params.logprob, want.logprob);
                assert_int_equal(rc->params.seed, want.seed);
                /* the history is the prompt then exactly the tokens the request emitted so far */
                assert_true(rc->n_generated < f->n[id] + 1);
                assert_memory_equal(rc->hist + rc->n_prompt, f->toks[id], sizeof(int32_t) * rc->n_generated);
                /* the row is the one that ends the sequence's tokens so far */
                assert_int_equal(rc->seq_pos + rc->seq_n_tokens, rc->n_prompt + rc->n_generated);
                seen[id][rc->n_generated]++;
                sampling_rows++;
        }
        for (uint32_t i = 0; i < N_REQ; i++)
                for (uint32_t g = 0; g < f->n[i]; g++)
                        assert_int_equal(seen[i][g], 1);        /* index 0, 1, 2, ... once each */
        uint32_t total = 0;
        for (uint32_t i = 0; i < N_REQ; i++)
                total += f->n[i];
        /* a request that stopped on a stop id sampled one more token than it showed */
        assert_true(sampling_rows >= total && sampling_rows <= total + N_REQ);
        assert_true(dev.n_rec > sampling_rows);                 /* some chunks were mid-prefill */
        fixture_free(f);
        fixture_free(h);
        dev.s = sampler_free(dev.s);
}

/* Plain greedy stays on forward_greedy; a score row in the step sends it through forward(). */
static void test_other_paths(void **state) {
        (void) state;
        setup_device();
        struct fixture *f = fixture_new(&sampling_ops);
        int32_t p[30];
        make_prompt(p, 30, 5);
        struct engine_request rq = { .conn_id = 1, .req_id = 0, .kind = ENGINE_KIND_GENERATE, .tokens = p,
                                     .n_tokens = 30 };
        sampling_params_init(&rq.params);
        rq.params.temperature = 0;
        rq.params.max_tokens = 10;
        assert_int_equal(engine_submit(f->e, &rq, NULL, 0), 0);
        run_until_done(f, 1);
        assert_int_equal(dev.calls, 0);
        assert_int_equal(fake_backend_greedy_steps(f->b), fake_backend_steps(f->b));

        /* a score request alone: every step is forward() with the rows on the host */
        uint64_t s0 = fake_backend_steps(f->b);
        rq.req_id = 1;
        rq.kind = ENGINE_KIND_SCORE;
        rq.params.logprobs = 1;
        assert_int_equal(engine_submit(f->e, &rq, NULL, 0), 0);
        run_until_done(f, 2);
        assert_int_equal(dev.calls, 0);
        assert_true(fake_backend_steps(f->b) > s0);
        assert_int_equal(f->n_score[1], 29);
        fixture_free(f);
        dev.s = sampler_free(dev.s);
}

/* -EOPNOTSUPP: asked once, then never again, and the output is the host's. */
static void test_refused(void **state) {
        (void) state;
        int32_t prompts[N_REQ][48];
        struct fixture *h, *f;
        run_both(prompts, true, &h, &f);
        assert_int_equal(dev.calls, 1);
        assert_int_equal(dev.rows, 0);
        fixture_free(f);
        fixture_free(h);
        dev.s = sampler_free(dev.s);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_device_sampling_matches_host),
                cmocka_unit_test(test_other_paths),
                cmocka_unit_test(test_refused),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
