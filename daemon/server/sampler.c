/* SPDX-License-Identifier: Apache-2.0 */
/* The host sampler; the math is specified in sampler.h. */
#include "server/sampler.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sampler {
        uint32_t vocab;
        uint32_t *idx;          /* selection scratch */
        float *w;               /* exp(l - m) per token */
        uint32_t *stamp;        /* penalty bookkeeping without clearing V entries per call */
        uint32_t *count;
        uint32_t cur_stamp;
};

void sampling_params_init(struct sampling_params *ret) {
        *ret = (struct sampling_params) {
                .max_tokens = 256,
                .temperature = 1.0f,
                .top_p = 1.0f,
                .top_k = 0,
                .min_p = 0.0f,
                .repetition_penalty = 1.0f,
                .presence_penalty = 0.0f,
                .frequency_penalty = 0.0f,
                .seed = 0,
                .has_seed = false,
                .logprobs = 0,
                .priority = 0,
                .deadline_ms = 0,
        };
}

static int param_error(char *err, size_t errsize, const char *msg) {
        if (err && errsize)
                snprintf(err, errsize, "%s", msg);
        return -EINVAL;
}

int sampling_params_validate(const struct sampling_params *p, char *err, size_t errsize) {
        if (p->max_tokens < 1)
                return param_error(err, errsize, "max_tokens must be at least 1");
        if (!(p->temperature >= 0.0f && p->temperature <= 100.0f))
                return param_error(err, errsize, "temperature must be in [0, 100]");
        if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
                return param_error(err, errsize, "top_p must be in (0, 1]");
        if (p->top_k < 0)
                return param_error(err, errsize, "top_k must be 0 (off) or positive");
        if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
                return param_error(err, errsize, "min_p must be in [0, 1]");
        if (!(p->repetition_penalty > 0.0f && p->repetition_penalty <= 100.0f))
                return param_error(err, errsize, "repetition_penalty must be in (0, 100]");
        if (!(p->presence_penalty >= -2.0f && p->presence_penalty <= 2.0f))
                return param_error(err, errsize, "presence_penalty must be in [-2, 2]");
        if (!(p->frequency_penalty >= -2.0f && p->frequency_penalty <= 2.0f))
                return param_error(err, errsize, "frequency_penalty must be in [-2, 2]");
        if (p->logprobs > SAMPLER_MAX_LOGPROBS)
                return param_error(err, errsize, "logprobs must be in [0, 20]");
        if (p->priority < SAMPLER_PRIORITY_MIN || p->priority > SAMPLER_PRIORITY_MAX)
                return param_error(err, errsize, "priority must be in [-20, 19]");
        return 0;
}

double sampler_uniform(uint64_t seed, uint64_t index) {
        uint64_t z = seed + (index + 1) * UINT64_C(0x9E3779B97F4A7C15);
        z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
        z ^= z >> 31;
        return (double) (z >> 11) * 0x1.0p-53;
}

int sampler_new(uint32_t vocab_size, struct sampler **ret) {
        if (vocab_size == 0)
                return -EINVAL;
        struct sampler *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->vocab = vocab_size;
        s->idx = malloc(sizeof(uint32_t) * vocab_size);
        s->w = malloc(sizeof(float) * vocab_size);
        s->stamp = calloc(vocab_size, sizeof(uint32_t));
        s->count = calloc(vocab_size, sizeof(uint32_t));
        if (!s->idx || !s->w || !s->stamp || !s->count) {
                sampler_free(s);
                return -ENOMEM;
        }
        *ret = s;
        return 0;
}

struct sampler *sampler_free(struct sampler *s) {
        if (!s)
                return NULL;
        free(s->idx);
        free(s->w);
        free(s->stamp);
        free(s->count);
        free(s);
        return NULL;
}

/* Fresh stamp for one pass of penalty bookkeeping; on wrap-around the arrays are cleared once. */
static uint32_t next_stamp(struct sampler *s) {
        if (++s->cur_stamp == 0) {
                memset(s->stamp, 0, sizeof(uint32_t) * s->vocab);
                s->cur_stamp = 1;
        }
        return s->cur_stamp;
}

/* Ranking key of sampler.h step 5: a ranks before b. */
static inline bool ranks_before(const float *l, uint32_t a, uint32_t b) {
        return l[a] > l[b] || (l[a] == l[b] && a < b);
}

static inline void swap_u32(uint32_t *a, uint32_t *b) {
        uint32_t t = *a;
        *a = *b;
        *b = t;
}

/* Partition idx[lo, hi) around a median-of-three pivot: afterwards idx[lo, p) rank before idx[p] and
 * idx(p, hi) after it. Keys are distinct (ties broken by id), so this always makes progress. */
static uint32_t partition(const float *l, uint32_t *idx, uint32_t lo, uint32_t hi) {
        uint32_t mid = lo + (hi - lo) / 2, last = hi - 1;
        if (ranks_before(l, idx[mid], idx[lo]))
                swap_u32(&idx[mid], &idx[lo]);
        if (ranks_before(l, idx[last], idx[lo]))
                swap_u32(&idx[last], &idx[lo]);
        if (ranks_before(l, idx[last], idx[mid]))
                swap_u32(&idx[last], &idx[mid]);
        /* median now at mid: use it as pivot, parked at the end */
        swap_u32(&idx[mid], &idx[last]);
        uint32_t pivot = idx[last], store = lo;
        for (uint32_t i = lo; i < last; i++)
                if (ranks_before(l, idx[i], pivot))
                        swap_u32(&idx[i], &idx[store++]);
        swap_u32(&idx[store], &idx[last]);
        return store;
}

/* Rearrange idx[0, n) so that its k best-ranked tokens come first (in any order). */
static void select_best_k(const float *l, uint32_t *idx, uint32_t n, uint32_t k) {
        uint32_t lo = 0, hi = n;
        while (hi - lo > 1) {
                uint32_t p = partition(l, idx, lo, hi);
                if (p == k || p + 1 == k)
                        return;
                if (p > k)
                        hi = p;
                else
                        lo = p + 1;
        }
}

/* The shortest best-ranked prefix of idx[0, n) with weight >= target: rearranges idx so that prefix
 * comes first and returns its length (>= 1). */
static uint32_t select_mass(const float *l, const float *w, uint32_t *idx, uint32_t n, double target) {
        uint32_t lo = 0, hi = n;
        double need = target;
        while (hi - lo > 1) {
                uint32_t p = partition(l, idx, lo, hi);
                double front = 0;
                for (uint32_t i = lo; i < p; i++)
                        front += w[idx[i]];
                if (p > lo && front >= need) {
                        hi = p;
                } else if (front + w[idx[p]] >= need) {
                        return p + 1;
                } else {
                        need -= front + w[idx[p]];
                        lo = p + 1;
                        if (lo >= hi)
                                return hi;      /* rounding: everything */
                }
        }
        return lo + 1;
}

/* Insert (t, lp) into the top list ordered by (logprob desc, id asc), keeping at most n entries. */
static void top_insert(struct sampler_logprob *top, uint32_t *len, uint32_t n, int32_t t, float lp) {
        uint32_t i = *len;
        if (i == n) {
                const struct sampler_logprob *worst = &top[n - 1];
                if (lp < worst->logprob || (lp == worst->logprob && t > worst->token))
                        return;
                i = n - 1;
        } else {
                (*len)++;
        }
        while (i > 0 && (top[i - 1].logprob < lp || (top[i - 1].logprob == lp && top[i - 1].token > t))) {
                top[i] = top[i - 1];
                i--;
        }
        top[i] = (struct sampler_logprob) { .token = t, .logprob = lp };
}

static inline float clean(float v) {
        return isnan(v) ? -INFINITY : v;
}

/* m = max, lse = m + log(sum exp(l - m)) over the vocabulary (exp in float, the sum in double). */
static void log_sum_exp(const float *l, uint32_t v, float *ret_max, double *ret_lse) {
        float m = -INFINITY;
        for (uint32_t i = 0; i < v; i++)
                if (clean(l[i]) > m)
                        m = clean(l[i]);
        double sum = 0;
        if (m != -INFINITY)
                for (uint32_t i = 0; i < v; i++)
                        sum += expf(clean(l[i]) - m);
        *ret_max = m;
        *ret_lse = m == -INFINITY ? 0 : m + log(sum);
}

static void fill_top(const float *l, uint32_t v, double lse, uint32_t n_top, struct sampler_result *r) {
        uint32_t len = 0;
        r->n_top = n_top;
        if (n_top == 0)
                return;
        for (uint32_t i = 0; i < v; i++) {
                float lp = (float) (clean(l[i]) - lse);
                if (len < n_top || lp >= r->top[len - 1].logprob)
                        top_insert(r->top, &len, n_top, (int32_t) i, lp);
        }
        r->n_top = len;
}

static void apply_penalties(struct sampler *s, float *l, const int32_t *tokens, uint32_t n_prompt,
                            uint32_t n_generated, const struct sampling_params *p) {
        uint32_t n = n_prompt + n_generated;
        if (p->repetition_penalty != 1.0f) {
                uint32_t st = next_stamp(s);
                for (uint32_t i = 0; i < n; i++) {
                        int32_t t = tokens[i];
                        if (t < 0 || (uint32_t) t >= s->vocab || s->stamp[t] == st)
                                continue;
                        s->stamp[t] = st;
                        l[t] = l[t] > 0 ? l[t] / p->repetition_penalty : l[t] * p->repetition_penalty;
                }
        }
        if (p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f) {
                uint32_t st = next_stamp(s);
                const int32_t *gen = tokens + n_prompt;
                for (uint32_t i = 0; i < n_generated; i++) {
                        int32_t t = gen[i];
                        if (t < 0 || (uint32_t) t >= s->vocab)
                                continue;
                        if (s->stamp[t] != st) {
                                s->stamp[t] = st;
                                s->count[t] = 0;
                        }
                        s->count[t]++;
                }
                for (uint32_t i = 0; i < n_generated; i++) {
                        int32_t t = gen[i];
                        if (t < 0 || (uint32_t) t >= s->vocab || s->stamp[t] != st || s->count[t] == 0)
                                continue;
                        l[t] -= p->presence_penalty + p->frequency_penalty * (float) s->count[t];
                        s->count[t] = 0;        /* once per distinct token */
                }
        }
}

int sampler_sample(struct sampler *s, float *l, const int32_t *tokens, uint32_t n_prompt,
                   uint32_t n_generated, const struct sampling_params *p, struct sampler_result *ret) {
        const uint32_t v = s->vocab;
        if (!l || (n_prompt + n_generated > 0 && !tokens) || p->logprobs > SAMPLER_MAX_LOGPROBS)
                return -EINVAL;

        /* NaN stays NaN through the penalties and is read as -inf everywhere after */
        apply_penalties(s, l, tokens, n_prompt, n_generated, p);

        struct sampler_result r = { 0 };
        float m;
        double lse;

        if (p->temperature == 0.0f) {
                /* one read-only pass: NaN never compares greater, ties keep the lowest id */
                uint32_t best = 0;
                float best_v = -INFINITY;
                for (uint32_t i = 0; i < v; i++)
                        if (l[i] > best_v) {
                                best_v = l[i];
                                best = i;
                        }
                r.token = (int32_t) best;
                if (p->logprobs > 0 || p->logprob) {
                        log_sum_exp(l, v, &m, &lse);
                        r.logprob = (float) (clean(l[best]) - lse);
                        fill_top(l, v, lse, p->logprobs, &r);
                }
                *ret = r;
                return 0;
        }

        float inv_t = 1.0f / p->temperature;
        m = -INFINITY;
        for (uint32_t i = 0; i < v; i++) {
                l[i] = clean(l[i]) * inv_t;
                if (l[i] > m)
                        m = l[i];
        }
        if (m == -INFINITY) {
                /* every logit -inf: nothing to rank, fall back to the lowest id */
                r.token = 0;
                r.logprob = -INFINITY;
                fill_top(l, v, 0, p->logprobs, &r);
                *ret = r;
                return 0;
        }
        double total_w = 0;
        for (uint32_t i = 0; i < v; i++) {
                s->w[i] = expf(l[i] - m);
                total_w += s->w[i];
        }
        lse = m + log(total_w);

        /* Candidate set: every token ranking at or before `thr` (none = the whole vocabulary), and with
         * weight >= min_w. */
        bool have_thr = false;
        uint32_t thr = 0, n_cand = v;
        bool use_k = p->top_k > 0 && (uint32_t) p->top_k < v;
        bool use_p = p->top_p < 1.0f;
        if (use_k || use_p) {
                if (use_k) {
                        for (uint32_t i = 0; i < v; i++)
                                s->idx[i] = i;
                        n_cand = (uint32_t) p->top_k;
                        select_best_k(l, s->idx, v, n_cand);
                } else {
                        /* Top-p alone: tokens of weight below tau = (1 - p) * total / V hold less than
                         * (1 - p) of the mass together and rank after every heavier token, so the
                         * nucleus lies among the heavier ones: select there only. */
                        float tau = (float) ((1.0 - p->top_p) * total_w / v * 0.999);
                        n_cand = 0;
                        for (uint32_t i = 0; i < v; i++)
                                if (s->w[i] >= tau)
                                        s->idx[n_cand++] = i;
                }
                if (use_p) {
                        double total = 0;
                        if (use_k)
                                for (uint32_t i = 0; i < n_cand; i++)
                                        total += s->w[s->idx[i]];
                        else
                                total = total_w;
                        n_cand = select_mass(l, s->w, s->idx, n_cand, (double) p->top_p * total);
                }
                thr = s->idx[0];
                for (uint32_t i = 1; i < n_cand; i++)
                        if (ranks_before(l, thr, s->idx[i]))
                                thr = s->idx[i];
                have_thr = true;
        }
        float min_w = p->min_p > 0.0f ? p->min_p : 0.0f;

        double z = 0;
        for (uint32_t i = 0; i < v; i++)
                if ((!have_thr || i == thr || ranks_before(l, i, thr)) && s->w[i] >= min_w)
                        z += s->w[i];
        double target = sampler_uniform(p->seed, n_generated) * z;
        double acc = 0;
        int32_t chosen = -1, last = -1;
        for (uint32_t i = 0; i < v; i++) {
                if (!((!have_thr || i == thr || ranks_before(l, i, thr)) && s->w[i] >= min_w))
                        continue;
                acc += s->w[i];
                if (s->w[i] > 0)
                        last = (int32_t) i;
                if (acc > target) {
                        chosen = (int32_t) i;
                        break;
                }
        }
        if (chosen < 0)
                chosen = last;
        r.token = chosen;
        r.logprob = (float) (l[chosen] - lse);
        fill_top(l, v, lse, p->logprobs, &r);
        *ret = r;
        return 0;
}

int sampler_score(struct sampler *s, const float *logits, int32_t token, uint32_t n_top,
                  struct sampler_result *ret) {
        if (!logits || token < 0 || (uint32_t) token >= s->vocab || n_top > SAMPLER_MAX_LOGPROBS)
                return -EINVAL;
        struct sampler_result r = { 0 };
        float m;
        double lse;
        log_sum_exp(logits, s->vocab, &m, &lse);
        r.token = token;
        r.logprob = (float) (clean(logits[token]) - lse);
        fill_top(logits, s->vocab, lse, n_top, &r);
        *ret = r;
        return 0;
}
