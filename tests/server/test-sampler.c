/* SPDX-License-Identifier: Apache-2.0 */
/* Host sampler: each parameter, the exact draw rule against a naive sorted reference, seeds, logprobs. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "server/sampler.h"

static struct sampling_params params(float temperature) {
        struct sampling_params p;
        sampling_params_init(&p);
        p.temperature = temperature;
        return p;
}

static struct sampler *new_sampler(uint32_t v) {
        struct sampler *s = NULL;
        assert_int_equal(sampler_new(v, &s), 0);
        return s;
}

static int32_t sample(struct sampler *s, const float *logits, uint32_t v, const struct sampling_params *p,
                      const int32_t *toks, uint32_t n_prompt, uint32_t n_gen, struct sampler_result *ret) {
        float *l = malloc(sizeof(float) * v);
        assert_non_null(l);
        memcpy(l, logits, sizeof(float) * v);
        int32_t *dummy = NULL;
        if (!toks) {    /* only the draw index matters: a history of zeros (penalties are off) */
                dummy = calloc(n_prompt + n_gen + 1, sizeof(int32_t));
                assert_non_null(dummy);
                toks = dummy;
        }
        struct sampler_result r;
        assert_int_equal(sampler_sample(s, l, toks, n_prompt, n_gen, p, &r), 0);
        free(dummy);
        free(l);
        if (ret)
                *ret = r;
        return r.token;
}

static void test_uniform_vectors(void **state) {
        /* the first splitmix64 outputs for seed 0 and seed 42, as the CUDA sampler must reproduce */
        assert_true(sampler_uniform(0, 0) == (double) (UINT64_C(0xe220a8397b1dcdaf) >> 11) * 0x1.0p-53);
        assert_true(sampler_uniform(0, 1) == (double) (UINT64_C(0x6e789e6aa1b965f4) >> 11) * 0x1.0p-53);
        assert_true(sampler_uniform(42, 0) == (double) (UINT64_C(0xbdd732262feb6e95) >> 11) * 0x1.0p-53);
        double sum = 0;
        for (uint64_t i = 0; i < 100000; i++) {
                double u = sampler_uniform(7, i);
                assert_true(u >= 0 && u < 1);
                sum += u;
        }
        assert_true(fabs(sum / 100000 - 0.5) < 0.01);
}

static void test_validate(void **state) {
        struct sampling_params p = params(1);
        char err[128];
        assert_int_equal(sampling_params_validate(&p, err, sizeof(err)), 0);
        p.temperature = -1;
        assert_int_equal(sampling_params_validate(&p, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "temperature"));
        p = params(1);
        p.top_p = 0;
        assert_int_equal(sampling_params_validate(&p, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "top_p"));
        p = params(1);
        p.top_p = NAN;
        assert_int_equal(sampling_params_validate(&p, err, sizeof(err)), -EINVAL);
        p = params(1);
        p.priority = 20;
        assert_int_equal(sampling_params_validate(&p, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "priority"));
        p = params(1);
        p.logprobs = 21;
        assert_int_equal(sampling_params_validate(&p, err, sizeof(err)), -EINVAL);
        p = params(1);
        p.max_tokens = 0;
        assert_int_equal(sampling_params_validate(&p, err, sizeof(err)), -EINVAL);
        p = params(1);
        p.repetition_penalty = 0;
        assert_int_equal(sampling_params_validate(&p, err, sizeof(err)), -EINVAL);
        p = params(1);
        p.min_p = 1.5f;
        assert_int_equal(sampling_params_validate(&p, err, sizeof(err)), -EINVAL);
        p = params(1);
        p.frequency_penalty = 3;
        assert_int_equal(sampling_params_validate(&p, err, sizeof(err)), -EINVAL);
        p = params(1);
        p.top_k = -1;
        assert_int_equal(sampling_params_validate(&p, err, sizeof(err)), -EINVAL);
}

static void test_greedy(void **state) {
        struct sampler *s = new_sampler(6);
        float l[6] = { 0.5f, 2.0f, -1.0f, 2.0f, NAN, 1.0f };
        struct sampling_params p = params(0);
        struct sampler_result r;
        assert_int_equal(sample(s, l, 6, &p, NULL, 0, 0, &r), 1);     /* tie: lowest id */
        assert_true(r.logprob == 0);                                    /* not requested */
        /* regression: logprobs 0 on the wire ("the sampled token only") must still give its logprob */
        p.logprob = true;
        assert_int_equal(sample(s, l, 6, &p, NULL, 0, 0, &r), 1);
        assert_float_equal(r.logprob, 2.0 - log(exp(0.5) + exp(2.0) * 2 + exp(-1.0) + exp(1.0)), 1e-5);
        assert_int_equal(r.n_top, 0);
        p.logprob = false;
        p.logprobs = 1;
        assert_int_equal(sample(s, l, 6, &p, NULL, 0, 0, &r), 1);
        /* logprob = log softmax at T = 1, NaN counted as -inf */
        double z = exp(0.5) + exp(2.0) * 2 + exp(-1.0) + exp(1.0);
        assert_float_equal(r.logprob, 2.0 - log(z), 1e-5);
        /* greedy ignores seeds */
        p.seed = 99;
        assert_int_equal(sample(s, l, 6, &p, NULL, 0, 5, NULL), 1);
        sampler_free(s);
}

static void test_repetition_penalty(void **state) {
        struct sampler *s = new_sampler(4);
        float l[4] = { 3.0f, -2.0f, 2.9f, 1.0f };
        int32_t toks[3] = { 0, 1, 0 };         /* prompt 0 1, generated 0 */
        struct sampling_params p = params(0);
        p.repetition_penalty = 2.0f;
        float w[4];
        memcpy(w, l, sizeof(w));
        struct sampler_result r;
        assert_int_equal(sampler_sample(s, w, toks, 2, 1, &p, &r), 0);
        assert_float_equal(w[0], 1.5f, 1e-6);          /* positive: divided, once despite two uses */
        assert_float_equal(w[1], -4.0f, 1e-6);         /* negative: multiplied */
        assert_float_equal(w[2], 2.9f, 1e-6);
        assert_int_equal(r.token, 2);
        sampler_free(s);
}

static void test_presence_frequency(void **state) {
        struct sampler *s = new_sampler(4);
        float w[4] = { 1.0f, 1.0f, 1.0f, 1.0f };
        int32_t toks[6] = { 3, 3, 0, 1, 1, 1 };   /* prompt 3 3; generated 0, 1, 1, 1 */
        struct sampling_params p = params(0);
        p.presence_penalty = 0.5f;
        p.frequency_penalty = 0.25f;
        struct sampler_result r;
        assert_int_equal(sampler_sample(s, w, toks, 2, 4, &p, &r), 0);
        assert_float_equal(w[0], 1.0f - 0.5f - 0.25f, 1e-6);
        assert_float_equal(w[1], 1.0f - 0.5f - 0.75f, 1e-6);
        assert_float_equal(w[2], 1.0f, 1e-6);
        assert_float_equal(w[3], 1.0f, 1e-6);          /* prompt tokens are not penalised */
        assert_int_equal(r.token, 2);
        sampler_free(s);
}

/* Empirical frequencies over many seeds match the expected distribution. */
static void check_distribution(struct sampler *s, const float *l, uint32_t v, const struct sampling_params *p0,
                               const double *expect) {
        enum { N = 20000 };
        uint32_t counts[16] = { 0 };
        struct sampling_params p = *p0;
        for (uint32_t i = 0; i < N; i++) {
                p.seed = i * 7919u + 1;
                int32_t t = sample(s, l, v, &p, NULL, 0, i % 5, NULL);
                assert_true(t >= 0 && (uint32_t) t < v);
                counts[t]++;
        }
        for (uint32_t t = 0; t < v; t++) {
                double f = (double) counts[t] / N;
                double sd = sqrt(expect[t] * (1 - expect[t]) / N);
                if (fabs(f - expect[t]) > 5 * sd + 1e-9)
                        fail_msg("token %u: frequency %.4f, expected %.4f", t, f, expect[t]);
        }
}

static void test_temperature_distribution(void **state) {
        struct sampler *s = new_sampler(4);
        float l[4] = { 1.0f, 2.0f, 0.0f, -1.0f };
        struct sampling_params p = params(0.5f);
        double e[4], z = 0;
        for (int i = 0; i < 4; i++)
                z += e[i] = exp(l[i] / 0.5);
        for (int i = 0; i < 4; i++)
                e[i] /= z;
        check_distribution(s, l, 4, &p, e);
        p = params(1.0f);
        z = 0;
        for (int i = 0; i < 4; i++)
                z += e[i] = exp(l[i]);
        for (int i = 0; i < 4; i++)
                e[i] /= z;
        check_distribution(s, l, 4, &p, e);
        sampler_free(s);
}

static void test_truncations(void **state) {
        struct sampler *s = new_sampler(4);
        /* probabilities 0.5, 0.3, 0.15, 0.05 */
        float l[4] = { logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f) };
        struct sampling_params p = params(1);
        p.top_k = 2;
        double e[4] = { 0.5 / 0.8, 0.3 / 0.8, 0, 0 };
        check_distribution(s, l, 4, &p, e);
        p = params(1);
        p.top_p = 0.7f;                 /* 0.5 < 0.7 <= 0.8: two tokens */
        check_distribution(s, l, 4, &p, e);
        p = params(1);
        p.min_p = 0.5f;                 /* keep p >= 0.25 */
        check_distribution(s, l, 4, &p, e);
        p = params(1);
        p.top_p = 0.9f;                 /* 0.8 < 0.9 <= 0.95: three */
        double e3[4] = { 0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0 };
        check_distribution(s, l, 4, &p, e3);
        p = params(1);
        p.top_k = 3;
        p.top_p = 0.6f;                 /* within the top 3 (mass 0.95): 0.5/0.95 = 0.526 < 0.6 */
        check_distribution(s, l, 4, &p, e);
        p = params(1);
        p.top_k = 1;
        double e1[4] = { 1, 0, 0, 0 };
        check_distribution(s, l, 4, &p, e1);
        sampler_free(s);
}

/* The specification of sampler.h implemented the slow, obvious way: full sort by key. */
struct keyed {
        float l;
        uint32_t id;
};

static int cmp_keyed(const void *a, const void *b) {
        const struct keyed *x = a, *y = b;
        if (x->l != y->l)
                return x->l > y->l ? -1 : 1;
        return x->id < y->id ? -1 : x->id > y->id;
}

static int32_t reference_sample(const float *logits, uint32_t v, const struct sampling_params *p, uint64_t index) {
        float *l = malloc(sizeof(float) * v);
        struct keyed *k = malloc(sizeof(*k) * v);
        bool *in = calloc(v, 1);
        assert_true(l && k && in);
        for (uint32_t i = 0; i < v; i++) {
                l[i] = logits[i] / p->temperature;
                k[i] = (struct keyed) { l[i], i };
        }
        qsort(k, v, sizeof(*k), cmp_keyed);
        float m = k[0].l;
        uint32_t n = v;
        if (p->top_k > 0 && (uint32_t) p->top_k < n)
                n = (uint32_t) p->top_k;
        if (p->top_p < 1) {
                double total = 0, acc = 0;
                for (uint32_t i = 0; i < n; i++)
                        total += expf(k[i].l - m);
                uint32_t keep = n;
                for (uint32_t i = 0; i < n; i++) {
                        acc += expf(k[i].l - m);
                        if (acc >= p->top_p * total) {
                                keep = i + 1;
                                break;
                        }
                }
                n = keep;
        }
        for (uint32_t i = 0; i < n; i++)
                if (expf(k[i].l - m) >= p->min_p)
                        in[k[i].id] = true;
        double z = 0;
        for (uint32_t i = 0; i < v; i++)
                if (in[i])
                        z += expf(l[i] - m);
        double target = sampler_uniform(p->seed, index) * z, acc = 0;
        int32_t chosen = -1;
        for (uint32_t i = 0; i < v && chosen < 0; i++)
                if (in[i]) {
                        acc += expf(l[i] - m);
                        if (acc > target)
                                chosen = (int32_t) i;
                }
        free(l);
        free(k);
        free(in);
        return chosen;
}

static void test_against_reference(void **state) {
        const uint32_t v = 1000;
        struct sampler *s = new_sampler(v);
        float *l = malloc(sizeof(float) * v);
        assert_non_null(l);
        uint64_t rng = 77;
        uint32_t mismatches = 0, trials = 0;
        for (int trial = 0; trial < 300; trial++) {
                for (uint32_t i = 0; i < v; i++) {
                        rng = rng * 6364136223846793005u + 1442695040888963407u;
                        /* coarse values so ties occur and exercise the id tie-break */
                        l[i] = (float) ((rng >> 33) % 64) / 8.0f;
                }
                struct sampling_params p = params(0.3f + (trial % 7) * 0.25f);
                p.top_k = trial % 3 == 0 ? 0 : 1 + trial % 50;
                p.top_p = trial % 4 == 0 ? 1.0f : 0.5f + (trial % 5) * 0.1f;
                p.min_p = trial % 5 == 0 ? 0.2f : 0;
                p.seed = (uint64_t) trial * 31;
                int32_t got = sample(s, l, v, &p, NULL, 0, (uint32_t) trial, NULL);
                int32_t want = reference_sample(l, v, &p, (uint64_t) trial);
                trials++;
                mismatches += got != want;
        }
        /* the only allowed differences are rounding at a cumulative boundary; expect none here */
        assert_int_equal(mismatches, 0);
        assert_int_equal(trials, 300);
        free(l);
        sampler_free(s);
}

/* Full Gemma vocabulary: correctness of selection at 262,144 entries and reproducible seeds. */
static void test_big_vocab(void **state) {
        const uint32_t v = 262144;
        struct sampler *s = new_sampler(v);
        float *l = malloc(sizeof(float) * v);
        assert_non_null(l);
        uint64_t rng = 5;
        for (uint32_t i = 0; i < v; i++) {
                rng = rng * 6364136223846793005u + 1442695040888963407u;
                l[i] = (float) ((rng >> 40) % 100000) / 5000.0f;
        }
        struct sampling_params p = params(0.8f);
        p.top_k = 40;
        p.top_p = 0.9f;
        p.seed = 1234;
        p.logprobs = 5;
        struct sampler_result r1, r2;
        int32_t a = sample(s, l, v, &p, NULL, 0, 3, &r1);
        int32_t b = sample(s, l, v, &p, NULL, 0, 3, &r2);
        assert_int_equal(a, b);
        assert_int_equal(a, reference_sample(l, v, &p, 3));
        assert_int_equal(r1.n_top, 5);
        for (uint32_t i = 1; i < 5; i++)
                assert_true(r1.top[i - 1].logprob >= r1.top[i].logprob);
        /* no truncation: the whole vocabulary is the candidate set */
        p = params(1.0f);
        p.seed = 9;
        assert_int_equal(sample(s, l, v, &p, NULL, 0, 0, NULL), reference_sample(l, v, &p, 0));
        /* different draws across indexes */
        uint32_t distinct = 0;
        int32_t prev = -1;
        for (uint32_t i = 0; i < 8; i++) {
                int32_t t = sample(s, l, v, &p, NULL, 0, i, NULL);
                distinct += t != prev;
                prev = t;
        }
        assert_true(distinct >= 6);
        free(l);
        sampler_free(s);
}

static void test_logprobs(void **state) {
        struct sampler *s = new_sampler(5);
        float l[5] = { 1.0f, 3.0f, 2.0f, 3.0f, -1.0f };
        struct sampling_params p = params(2.0f);
        p.logprobs = 3;
        p.seed = 3;
        struct sampler_result r;
        int32_t t = sample(s, l, 5, &p, NULL, 0, 0, &r);
        double z = 0;
        for (int i = 0; i < 5; i++)
                z += exp(l[i] / 2.0);
        assert_float_equal(r.logprob, l[t] / 2.0 - log(z), 1e-5);
        assert_int_equal(r.n_top, 3);
        assert_int_equal(r.top[0].token, 1);    /* tie 1 and 3: lower id first */
        assert_int_equal(r.top[1].token, 3);
        assert_int_equal(r.top[2].token, 2);
        assert_float_equal(r.top[2].logprob, 1.0 - log(z), 1e-5);
        /* score: raw log-softmax */
        struct sampler_result sc;
        assert_int_equal(sampler_score(s, l, 4, 2, &sc), 0);
        double z1 = 0;
        for (int i = 0; i < 5; i++)
                z1 += exp(l[i]);
        assert_float_equal(sc.logprob, -1.0 - log(z1), 1e-5);
        assert_int_equal(sc.n_top, 2);
        assert_int_equal(sc.top[0].token, 1);
        assert_int_equal(sampler_score(s, l, 5, 0, &sc), -EINVAL);
        sampler_free(s);
}

static void test_seed_reproducible(void **state) {
        struct sampler *s = new_sampler(64);
        float l[64];
        for (int i = 0; i < 64; i++)
                l[i] = (float) ((i * 37) % 17) / 4.0f;
        struct sampling_params p = params(1.0f);
        int32_t seq1[32], seq2[32], seq3[32];
        for (int run = 0; run < 3; run++) {
                p.seed = run == 2 ? 8 : 7;
                int32_t *out = run == 0 ? seq1 : run == 1 ? seq2 : seq3;
                for (uint32_t i = 0; i < 32; i++)
                        out[i] = sample(s, l, 64, &p, NULL, 0, i, NULL);
        }
        assert_memory_equal(seq1, seq2, sizeof(seq1));
        assert_memory_not_equal(seq1, seq3, sizeof(seq1));
        sampler_free(s);
}

static void test_all_neg_inf(void **state) {
        struct sampler *s = new_sampler(3);
        float l[3] = { -INFINITY, NAN, -INFINITY };
        struct sampling_params p = params(1.0f);
        struct sampler_result r;
        assert_int_equal(sample(s, l, 3, &p, NULL, 0, 0, &r), 0);
        p.temperature = 0;
        assert_int_equal(sample(s, l, 3, &p, NULL, 0, 0, &r), 0);
        /* out-of-vocabulary history tokens are ignored, not a crash */
        int32_t toks[2] = { -5, 1000 };
        float w[3] = { 1, 2, 3 };
        p.repetition_penalty = 1.5f;
        p.frequency_penalty = 1;
        assert_int_equal(sampler_sample(s, w, toks, 1, 1, &p, &r), 0);
        assert_int_equal(r.token, 2);
        sampler_free(s);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_uniform_vectors),
                cmocka_unit_test(test_validate),
                cmocka_unit_test(test_greedy),
                cmocka_unit_test(test_repetition_penalty),
                cmocka_unit_test(test_presence_frequency),
                cmocka_unit_test(test_temperature_distribution),
                cmocka_unit_test(test_truncations),
                cmocka_unit_test(test_against_reference),
                cmocka_unit_test(test_big_vocab),
                cmocka_unit_test(test_logprobs),
                cmocka_unit_test(test_seed_reproducible),
                cmocka_unit_test(test_all_neg_inf),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
