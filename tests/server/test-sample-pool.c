/* SPDX-License-Identifier: Apache-2.0 */
/* The sampling pool: every job runs exactly once per round, results equal the inline sampler's whatever the
 * thread count, many short rounds in a row (the hand-off between rounds), and the degenerate sizes. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "server/sample_pool.h"

#define VOCAB 3000
#define ROWS 37
#define HIST 24

struct rows {
        float *logits;                  /* [ROWS][VOCAB], copied fresh per run (the sampler edits rows) */
        float *work;
        int32_t hist[HIST];
        struct sampling_params p[ROWS];
        struct sampler_result res[ROWS];
        int ret[ROWS];
        atomic_uint calls[ROWS];
};

static uint64_t rng = 0x2545F4914F6CDD1Dull;

static float uniform(void) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        return (float) (rng >> 40) / 16777216.0f;
}

static void job(void *arg, uint32_t i, struct sampler *s) {
        struct rows *r = arg;
        atomic_fetch_add(&r->calls[i], 1);
        r->ret[i] = sampler_sample(s, r->work + (size_t) i * VOCAB, r->hist, HIST / 2, HIST / 2, &r->p[i],
                                   &r->res[i]);
}

static struct rows *rows_new(void) {
        struct rows *r = calloc(1, sizeof(*r));
        assert_non_null(r);
        r->logits = malloc(sizeof(float) * ROWS * VOCAB);
        r->work = malloc(sizeof(float) * ROWS * VOCAB);
        assert_non_null(r->logits);
        assert_non_null(r->work);
        for (size_t i = 0; i < (size_t) ROWS * VOCAB; i++)
                r->logits[i] = uniform() * 12.0f - 6.0f;
        for (uint32_t i = 0; i < HIST; i++)
                r->hist[i] = (int32_t) (uniform() * VOCAB);
        /* a mix of every sampler path: greedy with logprobs, penalties, temperature + truncations */
        for (uint32_t i = 0; i < ROWS; i++) {
                struct sampling_params *p = &r->p[i];
                sampling_params_init(p);
                p->seed = 1000 + i;
                p->has_seed = true;
                p->temperature = i % 4 == 0 ? 0.0f : 0.5f + 0.1f * (float) (i % 7);
                p->top_k = i % 3 == 0 ? 40 : 0;
                p->top_p = i % 5 == 0 ? 0.9f : 1.0f;
                p->min_p = i % 6 == 0 ? 0.05f : 0.0f;
                p->repetition_penalty = i % 2 ? 1.2f : 1.0f;
                p->presence_penalty = i % 3 == 1 ? 0.4f : 0.0f;
                p->frequency_penalty = i % 5 == 2 ? 0.3f : 0.0f;
                p->logprobs = i % 4;
        }
        return r;
}

static void rows_free(struct rows *r) {
        free(r->logits);
        free(r->work);
        free(r);
}

static void run(struct sample_pool *pool, struct rows *r, uint32_t n_jobs) {
        memcpy(r->work, r->logits, sizeof(float) * ROWS * VOCAB);
        memset(r->res, 0, sizeof(r->res));
        for (uint32_t i = 0; i < ROWS; i++)
                atomic_store(&r->calls[i], 0);
        sample_pool_run(pool, n_jobs, job, r);
        for (uint32_t i = 0; i < ROWS; i++)
                assert_int_equal(atomic_load(&r->calls[i]), i < n_jobs ? 1 : 0);
}

static void test_same_results_any_thread_count(void **state) {
        struct rows *r = rows_new();
        struct sample_pool *one = NULL;
        assert_int_equal(sample_pool_new(1, VOCAB, &one), 0);
        assert_int_equal(sample_pool_workers(one), 1);
        run(one, r, ROWS);
        struct sampler_result want[ROWS];
        memcpy(want, r->res, sizeof(want));
        for (uint32_t i = 0; i < ROWS; i++)
                assert_int_equal(r->ret[i], 0);
        const uint32_t counts[] = { 2, 3, 8 };
        for (size_t c = 0; c < sizeof(counts) / sizeof(counts[0]); c++) {
                struct sample_pool *pool = NULL;
                assert_int_equal(sample_pool_new(counts[c], VOCAB, &pool), 0);
                assert_int_equal(sample_pool_workers(pool), counts[c]);
                for (int round = 0; round < 3; round++) {
                        run(pool, r, ROWS);
                        for (uint32_t i = 0; i < ROWS; i++) {
                                assert_int_equal(r->ret[i], 0);
                                assert_int_equal(r->res[i].token, want[i].token);
                                assert_memory_equal(&r->res[i].logprob, &want[i].logprob, sizeof(float));
                                assert_int_equal(r->res[i].n_top, want[i].n_top);
                                assert_memory_equal(r->res[i].top, want[i].top,
                                                    sizeof(struct sampler_logprob) * want[i].n_top);
                        }
                }
                sample_pool_free(pool);
        }
        sample_pool_free(one);
        rows_free(r);
}

/* Many rounds of few jobs: every hand-off between rounds, fewer jobs than workers, zero jobs. */
static void test_many_short_rounds(void **state) {
        struct rows *r = rows_new();
        struct sample_pool *pool = NULL;
        assert_int_equal(sample_pool_new(4, VOCAB, &pool), 0);
        for (uint32_t round = 0; round < 300; round++)
                run(pool, r, round % 6);
        assert_non_null(sample_pool_sampler(pool));
        sample_pool_free(pool);
        rows_free(r);
}

static void test_bad_args(void **state) {
        struct sample_pool *pool = (struct sample_pool *) 0x1;
        assert_int_equal(sample_pool_new(0, VOCAB, &pool), -EINVAL);
        assert_int_equal(sample_pool_new(2, 0, &pool), -EINVAL);
        assert_ptr_equal(pool, (struct sample_pool *) 0x1);     /* untouched on failure */
        assert_null(sample_pool_free(NULL));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_same_results_any_thread_count),
                cmocka_unit_test(test_many_short_rounds),
                cmocka_unit_test(test_bad_args),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
