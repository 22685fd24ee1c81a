/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * Token sampling on the host (CPU backend). The CUDA sampler must implement exactly the same math; it is
 * written down here so that both agree, and docs/scheduler.md repeats it with the reasons.
 *
 * Input: one row of float32 logits over the vocabulary V (after the model's final soft-capping), the
 * request's tokens so far (prompt followed by generated tokens) and its parameters. Steps, in order:
 *
 *  0. Sanitise: a NaN logit counts as -inf.
 *  1. Repetition penalty r (HF style, applied when r != 1): for every DISTINCT token id t occurring in the
 *     prompt or the generated tokens, l[t] = l[t] > 0 ? l[t] / r : l[t] * r.
 *  2. Presence / frequency penalties (OpenAI style, over GENERATED tokens only): for every distinct
 *     generated token t occurring c(t) > 0 times, l[t] -= presence_penalty + frequency_penalty * c(t).
 *  3. Temperature T: T == 0 selects greedy decoding: the token with the largest l (lowest id among equal
 *     values); steps 4-7 are skipped and logprobs use T = 1. Otherwise l[t] /= T.
 *  4. Logprobs: logprob[t] = l[t] - m - log(sum_s exp(l[s] - m)), m = max l, over the whole vocabulary,
 *     (greedy decoding computes them only when logprobs > 0, and reports 0 otherwise),
 *     i.e. the log-softmax of the distribution after penalties and temperature and BEFORE the truncations
 *     of steps 5-6. The top-N list is ordered by (logprob descending, id ascending).
 *  5. Candidate order: tokens are ranked by the key (l[t] descending, t ascending); every truncation keeps
 *     a prefix of that ranking, so the candidate set C is always "all tokens whose key ranks at or above
 *     a threshold token".
 *       top_k (k > 0, k < V): C keeps the k best-ranked tokens.
 *       top_p (0 < p < 1): with q[t] = exp(l[t] - m) / sum_{s in C} exp(l[s] - m), C keeps the shortest
 *           prefix of the ranking whose mass sum q >= p (at least one token).
 *       min_p (0 < min_p <= 1): C keeps tokens with exp(l[t] - m) >= min_p (m = max l, the best token).
 *     Applied in this order: top_k, top_p, min_p.
 *  6. Draw u = sampler_uniform(seed, index), where index is the number of tokens this request has
 *     generated before this one (0 for the first). The result is the SMALLEST token id t in C with
 *         sum_{s in C, s <= t} exp(l[s] - m)  >  u * sum_{s in C} exp(l[s] - m)
 *     (sums in double precision in ascending id order; if rounding leaves no such t, the largest id in C).
 *     Scanning by id rather than by probability keeps the draw free of any sort.
 *
 * sampler_uniform is the (index+1)-th output of splitmix64 seeded with `seed`:
 *     z = seed + (index + 1) * 0x9E3779B97F4A7C15            (mod 2^64)
 *     z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
 *     z = (z ^ (z >> 27)) * 0x94D049BB133111EB
 *     z =  z ^ (z >> 31)
 *     u = (z >> 11) * 2^-53                                   (in [0, 1))
 * Being counter based, a request preempted and resumed, or sampled on another device, draws the same u.
 *
 * Cost: O(V) passes plus O(n_tokens) for the penalties; top_k and top_p use partial selection
 * (quickselect), never a full sort of the vocabulary.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SAMPLER_MAX_LOGPROBS 20
#define SAMPLER_PRIORITY_MIN (-20)
#define SAMPLER_PRIORITY_MAX 19

/* The request parameters of the protocol's sampling map, plus the scheduling fields that travel with
 * them. Defaults (sampling_params_init): max_tokens 256, temperature 1, top_p 1, top_k 0 (off),
 * min_p 0 (off), penalties off (repetition 1, presence 0, frequency 0), no seed (the engine picks one),
 * logprobs 0, priority 0, no deadline. */
struct sampling_params {
        uint32_t max_tokens;            /* generated tokens at most, >= 1 */
        float temperature;              /* 0 = greedy, else > 0 and <= 100 */
        float top_p;                    /* (0, 1]; 1 = off */
        int32_t top_k;                  /* 0 = off, else >= 1 */
        float min_p;                    /* [0, 1]; 0 = off */
        float repetition_penalty;       /* > 0; 1 = off */
        float presence_penalty;         /* [-2, 2] */
        float frequency_penalty;        /* [-2, 2] */
        uint64_t seed;
        bool has_seed;                  /* false: the engine derives a seed from the request id and time */
        uint32_t logprobs;              /* top-N alternatives per token, 0..SAMPLER_MAX_LOGPROBS */
        bool logprob;                   /* report the chosen token's logprob even with logprobs 0 (the
                                         * protocol's logprobs: 0); implied by logprobs > 0 */
        int32_t priority;               /* nice-style, -20..19, lower runs first */
        uint32_t deadline_ms;           /* 0 = none; counted from submission */
};

void sampling_params_init(struct sampling_params *ret);
/* 0, or -EINVAL with a message naming the parameter written to err. */
int sampling_params_validate(const struct sampling_params *p, char *err, size_t errsize);

double sampler_uniform(uint64_t seed, uint64_t index);

struct sampler_logprob {
        int32_t token;
        float logprob;
};

struct sampler_result {
        int32_t token;
        float logprob;                  /* of the chosen token (step 4); 0 for greedy without logprobs */
        uint32_t n_top;                 /* = params->logprobs */
        struct sampler_logprob top[SAMPLER_MAX_LOGPROBS];
};

/* Per-thread workspace sized for one vocabulary (scratch for selection and penalty counting). */
struct sampler;

int sampler_new(uint32_t vocab_size, struct sampler **ret);
struct sampler *sampler_free(struct sampler *s);

/* Sample one token. logits: [vocab] (modified in place: penalties and temperature are applied to it).
 * tokens: n_prompt prompt tokens followed by n_generated generated tokens. Returns 0 or -EINVAL. */
int sampler_sample(struct sampler *s, float *logits, const int32_t *tokens, uint32_t n_prompt,
                   uint32_t n_generated, const struct sampling_params *p, struct sampler_result *ret);

/* Log-softmax of one raw logits row (no penalties, temperature 1), for prompt scoring: writes the
 * logprob of `token` and, when n_top > 0, the top-n_top list. */
int sampler_score(struct sampler *s, const float *logits, int32_t token, uint32_t n_top,
                  struct sampler_result *ret);
