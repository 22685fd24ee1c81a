/* SPDX-License-Identifier: Apache-2.0 */
/*
 * kern_sample_rows against the host sampler (daemon/server/sampler.c) on the same rows: random, peaked, flat,
 * few-level (massive ties), -inf / NaN mixes, all -inf, all NaN, signed zeros, softcapped rows with a few
 * peaks, rows whose maximum is shared by many ids; every combination of temperature (incl. greedy), top_k,
 * top_p, min_p, penalties and logprobs on each kind, then random parameters, seeds, indices and histories.
 *
 * What must match, and the tolerance (kernels/sample.cu says why):
 *   - greedy rows: the token exactly;
 *   - sampled rows: the token exactly, unless the host's own decision lies within a relative TOL_BOUNDARY of
 *     a boundary: u * z within TOL_BOUNDARY * z of the inclusive prefix sum at the lower of the two tokens
 *     (the draw), p * mass within TOL_BOUNDARY * mass of the top_p prefix sums around the nucleus length, or
 *     a candidate's w within TOL_BOUNDARY * min_p of min_p. The margins are recomputed here in long double
 *     from the host's own row (the sampler leaves the penalised, tempered logits in it). Such rows are
 *     counted and printed; more than a few per thousand fails the test;
 *   - logprobs: |gpu - host| <= TOL_LP_ABS + TOL_LP_REL * |host| (the GPU's log-sum-exp is within ~3e-7 of
 *     the host's; one float rounding of the result adds an ulp); -inf must be -inf;
 *   - the top-N list: the same length, logprobs position by position within that tolerance, and the same
 *     token at each position unless the two tokens' host logprobs are within the tolerance (a near tie).
 * RESULT lines give the kernel time per step (median of cudaEvent timings) for 1 and 64 rows of the
 * Gemma 4 vocabulary, next to the host sampler's time per row and the 1 MiB-per-row copy the GPU path saves.
 */
#include <errno.h>
#include <time.h>

#include "kt.h"
#include "server/sampler.h"

#define TOL_BOUNDARY 1e-6
#define TOL_LP_ABS 1e-6
#define TOL_LP_REL 5e-7
#define BATCH 64

enum row_kind { ROW_RANDOM, ROW_PEAKED, ROW_FLAT, ROW_LEVELS, ROW_NEG_INF_MIX, ROW_NAN_MIX, ROW_ALL_NEG_INF,
                ROW_ALL_NAN, ROW_SIGNED_ZEROS, ROW_SOFTCAP, ROW_TOP_TIES, ROW_KINDS };

static const char *const kind_names[ROW_KINDS] = {"random", "peaked", "flat", "levels", "-inf mix", "NaN mix",
                                                  "all -inf", "all NaN", "signed zeros", "softcap", "top ties"};

static float gauss(void) {
        return (kt_uniform() + kt_uniform() + kt_uniform()) * 1.7f;
}

static void fill_row(float *row, uint32_t n, enum row_kind kind) {
        switch (kind) {
        case ROW_RANDOM:
                for (uint32_t i = 0; i < n; i++)
                        row[i] = gauss() * 2.0f;
                break;
        case ROW_PEAKED:
                for (uint32_t i = 0; i < n; i++)
                        row[i] = gauss();
                row[kt_u32() % n] = 25.0f;
                row[kt_u32() % n] = 21.0f;
                break;
        case ROW_FLAT:
                for (uint32_t i = 0; i < n; i++)
                        row[i] = 1.5f;
                break;
        case ROW_LEVELS: {
                static const float levels[] = {-3.0f, 0.0f, 0.5f, 2.0f, 4.0f};
                for (uint32_t i = 0; i < n; i++)
                        row[i] = levels[kt_u32() % 5];
                break;
        }
        case ROW_NEG_INF_MIX:
                for (uint32_t i = 0; i < n; i++)
                        row[i] = kt_u32() % 10 ? -INFINITY : gauss() * 3.0f;
                row[kt_u32() % n] = 2.0f;
                break;
        case ROW_NAN_MIX:
                for (uint32_t i = 0; i < n; i++) {
                        uint32_t r = kt_u32() % 10;
                        row[i] = r < 3 ? NAN : r < 4 ? -INFINITY : gauss() * 2.0f;
                }
                break;
        case ROW_ALL_NEG_INF:
                for (uint32_t i = 0; i < n; i++)
                        row[i] = -INFINITY;
                break;
        case ROW_ALL_NAN:
                for (uint32_t i = 0; i < n; i++)
                        row[i] = NAN;
                break;
        case ROW_SIGNED_ZEROS: {
                static const float z[] = {0.0f, -0.0f, 1.0f, -1.0f};
                for (uint32_t i = 0; i < n; i++)
                        row[i] = z[kt_u32() % 4];
                break;
        }
        case ROW_SOFTCAP:
                for (uint32_t i = 0; i < n; i++)
                        row[i] = 30.0f * tanhf(gauss() * 1.5f / 30.0f);
                for (int k = 0; k < 5; k++)
                        row[kt_u32() % n] = 30.0f * tanhf((15.0f + 5.0f * kt_uniform()) / 30.0f);
                break;
        case ROW_TOP_TIES:
                for (uint32_t i = 0; i < n; i++)
                        row[i] = gauss();
                for (int k = 0; k < 50; k++)
                        row[kt_u32() % n] = 9.0f;
                break;
        case ROW_KINDS:
                break;
        }
}

/* A history: prompt then generated tokens, with repeats, and a few ids the sampler must ignore. */
static void fill_history(int32_t *h, uint32_t n_all, uint32_t vocab) {
        for (uint32_t i = 0; i < n_all; i++) {
                uint32_t r = kt_u32() % 16;
                if (r == 0)
                        h[i] = -1;
                else if (r == 1)
                        h[i] = (int32_t) (vocab + kt_u32() % 7);
                else if (r < 8 && i > 0)
                        h[i] = h[kt_u32() % i];                 /* a repeat */
                else if (r < 11)
                        h[i] = (int32_t) (kt_u32() % (vocab < 64 ? vocab : 64));   /* likely high-ranked ids */
                else
                        h[i] = (int32_t) (kt_u32() % vocab);
        }
}

struct row_case {
        struct sampling_params p;
        uint32_t n_prompt, n_generated;
        enum row_kind kind;
};

static double now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static inline float host_clean(float v) {
        return isnan(v) ? -INFINITY : v;
}

static const float *cmp_l;
static int cmp_rank(const void *a, const void *b) {
        uint32_t x = *(const uint32_t *) a, y = *(const uint32_t *) b;
        if (cmp_l[x] != cmp_l[y])
                return cmp_l[x] > cmp_l[y] ? -1 : 1;
        return x < y ? -1 : x > y;
}

/* The smallest relative margin of the host's decisions that can separate tokens g and h (see the top
 * comment); l is the host's row after sampler_sample (penalised, tempered, NaN-free). */
static double boundary_margin(const float *l, uint32_t n, const struct sampling_params *p, uint64_t index,
                              int32_t g, int32_t h) {
        float m = -INFINITY;
        for (uint32_t i = 0; i < n; i++)
                if (l[i] > m)
                        m = l[i];
        float *w = malloc(sizeof(float) * n);
        uint32_t *idx = malloc(sizeof(uint32_t) * n);
        bool *in = calloc(n, sizeof(bool));
        for (uint32_t i = 0; i < n; i++) {
                w[i] = expf(l[i] - m);
                idx[i] = i;
        }
        cmp_l = l;
        qsort(idx, n, sizeof(uint32_t), cmp_rank);
        uint32_t len = n;
        if (p->top_k > 0 && (uint32_t) p->top_k < n)
                len = (uint32_t) p->top_k;
        double margin = INFINITY;
        if (p->top_p < 1.0f) {
                long double mass = 0, s = 0;
                for (uint32_t j = 0; j < len; j++)
                        mass += w[idx[j]];
                long double target = (long double) p->top_p * mass;
                uint32_t j = 0;
                for (; j < len; j++) {
                        long double before = s;
                        s += w[idx[j]];
                        if (s >= target) {
                                double mb = (double) (fabsl(target - before) / mass);
                                double ma = (double) (fabsl(s - target) / mass);
                                margin = fmin(margin, fmin(mb, ma));
                                j++;
                                break;
                        }
                }
                len = j ? j : 1;
        }
        for (uint32_t j = 0; j < len; j++)
                in[idx[j]] = true;
        if (p->min_p > 0.0f)
                for (uint32_t j = 0; j < len; j++) {
                        margin = fmin(margin, fabs((double) w[idx[j]] - p->min_p) / p->min_p);
                        if (w[idx[j]] < p->min_p)
                                in[idx[j]] = false;
                }
        long double z = 0, acc = 0;
        for (uint32_t i = 0; i < n; i++)
                if (in[i])
                        z += w[i];
        long double target = (long double) sampler_uniform(p->seed, index) * z;
        uint32_t lo = (uint32_t) (g < h ? g : h);
        for (uint32_t i = 0; i <= lo && i < n; i++)
                if (in[i])
                        acc += w[i];
        margin = fmin(margin, (double) (fabsl(acc - target) / z));
        free(w);
        free(idx);
        free(in);
        return margin;
}

static bool lp_close(float a, float b) {
        if (isinf(a) || isinf(b))
                return a == b;
        return fabsf(a - b) <= TOL_LP_ABS + TOL_LP_REL * fabsf(b);
}

struct tally {
        uint32_t rows, sampled, greedy, boundary, wrong_token, wrong_lp, wrong_top;
        double max_lp_err;
};

/* Compare one row; `hrow` is the host's row after sampling. Prints the first failures in detail. */
static void check_row(const struct row_case *c, const float *hrow, uint32_t n, const struct sampler_result *hr,
                      const struct kern_sample_result *gr, struct tally *t) {
        char what[160];
        snprintf(what, sizeof(what), "n=%u kind=%s T=%g k=%d p=%g min_p=%g rep=%g pres=%g freq=%g N=%u lp=%d "
                 "seed=%llu idx=%u", n, kind_names[c->kind], c->p.temperature, c->p.top_k, c->p.top_p, c->p.min_p,
                 c->p.repetition_penalty, c->p.presence_penalty, c->p.frequency_penalty, c->p.logprobs,
                 c->p.logprob, (unsigned long long) c->p.seed, c->n_generated);
        t->rows++;
        bool greedy = c->p.temperature == 0.0f;
        greedy ? t->greedy++ : t->sampled++;
        if (gr->token != hr->token) {
                double mg = greedy ? INFINITY : boundary_margin(hrow, n, &c->p, c->n_generated, gr->token, hr->token);
                if (mg <= TOL_BOUNDARY) {
                        t->boundary++;
                        printf("# boundary: %s: gpu %d host %d, host margin %.3g\n", what, gr->token, hr->token, mg);
                        return;         /* logprobs of different tokens: nothing to compare */
                }
                if (t->wrong_token++ < 8)
                        printf("# WRONG TOKEN: %s: gpu %d host %d (margin %.3g)\n", what, gr->token, hr->token, mg);
                return;
        }
        double e = isinf(hr->logprob) ? 0 : fabs((double) gr->logprob - hr->logprob);
        if (e > t->max_lp_err)
                t->max_lp_err = e;
        if (!lp_close(gr->logprob, hr->logprob)) {
                if (t->wrong_lp++ < 8)
                        printf("# WRONG LOGPROB: %s: token %d gpu %.9g host %.9g\n", what, gr->token, gr->logprob,
                               hr->logprob);
        }
        bool top_ok = gr->n_top == hr->n_top;
        /* the host's lse, to price a token the host list does not show */
        double lse = hr->n_top ? host_clean(hrow[hr->top[0].token]) - (double) hr->top[0].logprob : 0;
        for (uint32_t k = 0; top_ok && k < hr->n_top; k++) {
                if (!lp_close(gr->top[k].logprob, hr->top[k].logprob))
                        top_ok = false;
                else if (gr->top[k].token != hr->top[k].token) {
                        int32_t gt = gr->top[k].token;
                        float hl = gt >= 0 && (uint32_t) gt < n ? (float) (host_clean(hrow[gt]) - lse) : NAN;
                        top_ok = lp_close(hl, hr->top[k].logprob);
                }
                if (!top_ok && t->wrong_top < 8)
                        printf("# WRONG TOP[%u]: %s: gpu (%d, %.9g) host (%d, %.9g) of %u\n", k, what,
                               gr->top[k].token, gr->top[k].logprob, hr->top[k].token, hr->top[k].logprob, hr->n_top);
        }
        if (!top_ok && t->wrong_top++ < 8 && gr->n_top != hr->n_top)
                printf("# WRONG TOP length: %s: gpu %u host %u\n", what, gr->n_top, hr->n_top);
}

/* Run `n_cases` rows in launches of BATCH rows. */
static void run_cases(const char *name, uint32_t n, const struct row_case *cases, uint32_t n_cases,
                      struct sampler *hs) {
        struct tally t = {0};
        float *rows = malloc(sizeof(float) * BATCH * n);
        float *hrow = malloc(sizeof(float) * n);
        int32_t *hist = NULL;
        size_t hist_cap = 0;
        struct kern_sample_params kp[BATCH];
        struct kern_sample_result *gres = malloc(sizeof(*gres) * BATCH);
        float *d_rows = kt_dev(sizeof(float) * BATCH * n), *d_work = kt_dev(sizeof(float) * BATCH * n);
        struct kern_sample_params *d_p = kt_dev(sizeof(kp));
        struct kern_sample_result *d_res = kt_dev(sizeof(*gres) * BATCH);
        double host_ms = 0;

        for (uint32_t b0 = 0; b0 < n_cases; b0 += BATCH) {
                uint32_t nb = n_cases - b0 < BATCH ? n_cases - b0 : BATCH;
                size_t n_hist = 0;
                for (uint32_t r = 0; r < nb; r++)
                        n_hist += cases[b0 + r].n_prompt + cases[b0 + r].n_generated;
                if (n_hist + 1 > hist_cap) {
                        hist_cap = n_hist + 1;
                        hist = realloc(hist, sizeof(int32_t) * hist_cap);
                }
                size_t off = 0;
                for (uint32_t r = 0; r < nb; r++) {
                        const struct row_case *c = &cases[b0 + r];
                        fill_row(rows + (size_t) r * n, n, c->kind);
                        fill_history(hist + off, c->n_prompt + c->n_generated, n);
                        kp[r] = (struct kern_sample_params) {
                                .temperature = c->p.temperature, .top_p = c->p.top_p, .min_p = c->p.min_p,
                                .repetition_penalty = c->p.repetition_penalty,
                                .presence_penalty = c->p.presence_penalty,
                                .frequency_penalty = c->p.frequency_penalty, .top_k = c->p.top_k,
                                .n_logprobs = c->p.logprobs, .want_logprob = c->p.logprob,
                                .n_prompt = c->n_prompt, .n_generated = c->n_generated, .hist_off = (uint32_t) off,
                                .seed = c->p.seed, .index = c->n_generated,
                        };
                        off += c->n_prompt + c->n_generated;
                }
                int32_t *d_hist = kt_up(hist, sizeof(int32_t) * (n_hist + 1));
                KT_CUDA(cudaMemcpy(d_rows, rows, sizeof(float) * nb * n, cudaMemcpyHostToDevice));
                KT_CUDA(cudaMemcpy(d_p, kp, sizeof(kp[0]) * nb, cudaMemcpyHostToDevice));
                KT_CUDA(cudaMemset(d_res, 0xff, sizeof(*gres) * BATCH));
                KT_OK(kern_sample_rows(d_rows, n, nb, n, d_p, d_hist, d_work, d_res, 0));
                KT_CUDA(cudaDeviceSynchronize());
                KT_CUDA(cudaMemcpy(gres, d_res, sizeof(*gres) * nb, cudaMemcpyDeviceToHost));
                cudaFree(d_hist);
                off = 0;
                for (uint32_t r = 0; r < nb; r++) {
                        const struct row_case *c = &cases[b0 + r];
                        struct sampler_result hr;
                        memcpy(hrow, rows + (size_t) r * n, sizeof(float) * n);
                        double t0 = now_ms();
                        int ret = sampler_sample(hs, hrow, hist + off, c->n_prompt, c->n_generated, &c->p, &hr);
                        host_ms += now_ms() - t0;
                        off += c->n_prompt + c->n_generated;
                        if (ret < 0) {
                                printf("# host sampler failed: %d\n", ret);
                                t.wrong_token++;
                                continue;
                        }
                        check_row(c, hrow, n, &hr, &gres[r], &t);
                }
        }
        char what[256];
        snprintf(what, sizeof(what), "%s (n=%u): %u rows (%u sampled, %u greedy): %u wrong tokens, %u boundary "
                 "cases, %u wrong logprobs (max err %.3g), %u wrong top lists", name, n, t.rows, t.sampled, t.greedy,
                 t.wrong_token, t.boundary, t.wrong_lp, t.max_lp_err, t.wrong_top);
        kt_expect(what, t.wrong_token == 0 && t.wrong_lp == 0 && t.wrong_top == 0 &&
                                t.boundary * 200 <= t.sampled + 1);
        printf("# host sampler: %.3f ms per row (n=%u)\n", host_ms / (t.rows ? t.rows : 1), n);
        cudaFree(d_rows), cudaFree(d_work), cudaFree(d_p), cudaFree(d_res);
        free(rows), free(hrow), free(hist), free(gres);
}

static struct sampling_params base_params(void) {
        struct sampling_params p;
        sampling_params_init(&p);
        p.has_seed = true;
        p.seed = ((uint64_t) kt_u32() << 32) | kt_u32();
        return p;
}

/* Every combination of a small set per parameter, on every row kind. */
static uint32_t combo_cases(struct row_case *cases, uint32_t n) {
        static const float temps[] = {0.0f, 1.0f, 0.6f};
        static const int32_t ks[] = {0, 7};
        static const float ps[] = {1.0f, 0.9f};
        static const float min_ps[] = {0.0f, 0.1f};
        uint32_t c = 0;
        for (int kind = 0; kind < ROW_KINDS; kind++)
                for (int ti = 0; ti < 3; ti++)
                        for (int ki = 0; ki < 2; ki++)
                                for (int pi = 0; pi < 2; pi++)
                                        for (int mi = 0; mi < 2; mi++)
                                                for (int pen = 0; pen < 2; pen++)
                                                        for (int lp = 0; lp < 2; lp++) {
                                                                struct row_case *rc = &cases[c++];
                                                                rc->p = base_params();
                                                                rc->p.temperature = temps[ti];
                                                                rc->p.top_k = ks[ki];
                                                                rc->p.top_p = ps[pi];
                                                                rc->p.min_p = min_ps[mi];
                                                                if (pen) {
                                                                        rc->p.repetition_penalty = 1.3f;
                                                                        rc->p.presence_penalty = 0.4f;
                                                                        rc->p.frequency_penalty = 0.25f;
                                                                }
                                                                rc->p.logprobs = lp ? 20 : 0;
                                                                rc->p.logprob = lp;
                                                                rc->kind = (enum row_kind) kind;
                                                                rc->n_prompt = pen ? 40 + kt_u32() % 200 : 0;
                                                                rc->n_generated = kt_u32() % 300;
                                                        }
        (void) n;
        return c;
}

static uint32_t random_cases(struct row_case *cases, uint32_t count, uint32_t n) {
        static const float temps[] = {0.0f, 0.0f, 0.3f, 0.7f, 1.0f, 1.0f, 1.5f, 4.0f};
        static const float ps[] = {1.0f, 1.0f, 0.999f, 0.95f, 0.9f, 0.5f, 0.1f, 1e-6f};
        static const float min_ps[] = {0.0f, 0.0f, 0.0f, 0.02f, 0.1f, 0.5f, 1.0f};
        static const float reps[] = {1.0f, 1.0f, 1.0f, 1.2f, 0.7f, 2.0f};
        static const float pens[] = {0.0f, 0.0f, 0.0f, 0.5f, -0.5f, 2.0f, -2.0f};
        static const uint32_t lps[] = {0, 0, 0, 1, 5, 20};
        for (uint32_t i = 0; i < count; i++) {
                struct row_case *rc = &cases[i];
                uint32_t ks[] = {0, 0, 0, 1, 2, 10, 40, 1000, n - 1, n, n + 5};
                rc->p = base_params();
                rc->p.temperature = temps[kt_u32() % 8];
                rc->p.top_k = (int32_t) ks[kt_u32() % 11];
                rc->p.top_p = ps[kt_u32() % 8];
                rc->p.min_p = min_ps[kt_u32() % 7];
                rc->p.repetition_penalty = reps[kt_u32() % 6];
                rc->p.presence_penalty = pens[kt_u32() % 7];
                rc->p.frequency_penalty = pens[kt_u32() % 7];
                rc->p.logprobs = lps[kt_u32() % 6];
                rc->p.logprob = kt_u32() % 2;
                rc->kind = (enum row_kind) (kt_u32() % ROW_KINDS);
                rc->n_prompt = kt_u32() % 2 ? kt_u32() % 3000 : kt_u32() % 20;
                rc->n_generated = kt_u32() % 3 ? kt_u32() % 500 : (kt_u32() % 2 ? 0 : 100000 + kt_u32() % 1000);
                if (rc->n_generated > 100000)
                        rc->n_prompt = 0;
        }
        return count;
}

/* Kernel time per step for `rows` rows: logits restored between launches (the kernel works in place). */
static void bench(const char *name, uint32_t n, uint32_t rows, const struct sampling_params *p, uint32_t n_hist) {
        float *h = malloc(sizeof(float) * n * rows);
        for (uint32_t r = 0; r < rows; r++)
                fill_row(h + (size_t) r * n, n, ROW_SOFTCAP);
        int32_t *hist = malloc(sizeof(int32_t) * (n_hist + 1) * rows);
        fill_history(hist, (n_hist + 1) * rows, n);
        struct kern_sample_params *kp = calloc(rows, sizeof(*kp));
        for (uint32_t r = 0; r < rows; r++)
                kp[r] = (struct kern_sample_params) {
                        .temperature = p->temperature, .top_p = p->top_p, .min_p = p->min_p,
                        .repetition_penalty = p->repetition_penalty, .presence_penalty = p->presence_penalty,
                        .frequency_penalty = p->frequency_penalty, .top_k = p->top_k, .n_logprobs = p->logprobs,
                        .want_logprob = p->logprob, .n_prompt = n_hist / 2, .n_generated = n_hist - n_hist / 2,
                        .hist_off = r * (n_hist + 1), .seed = 1234 + r, .index = 7,
                };
        float *d_src = kt_up(h, sizeof(float) * n * rows), *d_rows = kt_dev(sizeof(float) * n * rows);
        float *d_work = kt_dev(sizeof(float) * n * rows);
        int32_t *d_hist = kt_up(hist, sizeof(int32_t) * (n_hist + 1) * rows);
        struct kern_sample_params *d_p = kt_up(kp, sizeof(*kp) * rows);
        struct kern_sample_result *d_res = kt_dev(sizeof(struct kern_sample_result) * rows);
        cudaEvent_t e0, e1;
        KT_CUDA(cudaEventCreate(&e0));
        KT_CUDA(cudaEventCreate(&e1));
        /* where row 0's time goes (a warm launch with the kernel's phase stamps) */
        unsigned long long *d_prof = kt_dev(sizeof(unsigned long long) * 9), prof[9];
        for (int it = 0; it < 2; it++) {
                KT_CUDA(cudaMemcpy(d_rows, d_src, sizeof(float) * n * rows, cudaMemcpyDeviceToDevice));
                KT_CUDA(cudaMemset(d_prof, 0, sizeof(unsigned long long) * 9));
                KT_OK(kern_sample_set_profile(it ? d_prof : NULL));
                KT_OK(kern_sample_rows(d_rows, n, rows, n, d_p, d_hist, d_work, d_res, 0));
                KT_CUDA(cudaDeviceSynchronize());
        }
        KT_OK(kern_sample_set_profile(NULL));
        KT_CUDA(cudaMemcpy(prof, d_prof, sizeof(prof), cudaMemcpyDeviceToHost));
        static const char *const phase[8] = {"penalties", "temperature", "total", "top_k", "top_p", "z", "draw",
                                             "logprobs"};
        printf("# phases (%s, rows=%u, row 0, us):", name, rows);
        for (int ph = 0; ph < 8; ph++)
                if (prof[ph + 1] >= prof[ph] && prof[ph])
                        printf(" %s %.1f", phase[ph], (prof[ph + 1] - prof[ph]) / 1e3);
        printf("\n");
        cudaFree(d_prof);
        float ms[25];
        for (int it = -3; it < 25; it++) {
                KT_CUDA(cudaMemcpy(d_rows, d_src, sizeof(float) * n * rows, cudaMemcpyDeviceToDevice));
                KT_CUDA(cudaEventRecord(e0, 0));
                KT_OK(kern_sample_rows(d_rows, n, rows, n, d_p, d_hist, d_work, d_res, 0));
                KT_CUDA(cudaEventRecord(e1, 0));
                KT_CUDA(cudaEventSynchronize(e1));
                if (it >= 0)
                        KT_CUDA(cudaEventElapsedTime(&ms[it], e0, e1));
        }
        for (int a = 0; a < 25; a++)
                for (int b = a + 1; b < 25; b++)
                        if (ms[b] < ms[a]) {
                                float x = ms[a];
                                ms[a] = ms[b];
                                ms[b] = x;
                        }
        printf("RESULT sample_kernel %s rows=%u vocab=%u: %.1f us per step (median of 25; min %.1f, max %.1f)\n",
               name, rows, n, ms[12] * 1e3, ms[0] * 1e3, ms[24] * 1e3);
        cudaEventDestroy(e0), cudaEventDestroy(e1);
        cudaFree(d_src), cudaFree(d_rows), cudaFree(d_work), cudaFree(d_hist), cudaFree(d_p), cudaFree(d_res);
        free(h), free(hist), free(kp);
}

/* What the GPU sampler saves: the D2H copy of the logits rows into page-locked memory. */
static void bench_copy(uint32_t n, uint32_t rows) {
        float *d = kt_dev(sizeof(float) * n * rows), *h = NULL;
        KT_CUDA(cudaMallocHost((void **) &h, sizeof(float) * n * rows));
        cudaEvent_t e0, e1;
        KT_CUDA(cudaEventCreate(&e0));
        KT_CUDA(cudaEventCreate(&e1));
        float best = INFINITY, t;
        for (int it = 0; it < 10; it++) {
                KT_CUDA(cudaEventRecord(e0, 0));
                KT_CUDA(cudaMemcpyAsync(h, d, sizeof(float) * n * rows, cudaMemcpyDeviceToHost, 0));
                KT_CUDA(cudaEventRecord(e1, 0));
                KT_CUDA(cudaEventSynchronize(e1));
                KT_CUDA(cudaEventElapsedTime(&t, e0, e1));
                best = fminf(best, t);
        }
        printf("RESULT logits_copy rows=%u vocab=%u: %.1f us (best of 10, page-locked)\n", rows, n, best * 1e3);
        cudaEventDestroy(e0), cudaEventDestroy(e1);
        cudaFree(d), cudaFreeHost(h);
}

static void test_vocab(uint32_t n, uint32_t n_random) {
        struct sampler *hs = NULL;
        KT_OK(sampler_new(n, &hs));
        struct row_case *cases = calloc(ROW_KINDS * 96 + n_random, sizeof(*cases));
        char name[64];
        uint32_t c = combo_cases(cases, n);
        snprintf(name, sizeof(name), "every combination");
        run_cases(name, n, cases, c, hs);
        random_cases(cases, n_random, n);
        snprintf(name, sizeof(name), "random parameters");
        run_cases(name, n, cases, n_random, hs);
        free(cases);
        sampler_free(hs);
}

int main(void) {
        kt_require_gpu();
        kt_seed(11);

        /* the same logits give the same token: two launches on identical input agree bit for bit */
        {
                const uint32_t n = 262144, rows = 8;
                float *h = malloc(sizeof(float) * n * rows);
                for (uint32_t r = 0; r < rows; r++)
                        fill_row(h + (size_t) r * n, n, (enum row_kind) (r % 3 == 0 ? ROW_FLAT : ROW_SOFTCAP));
                struct kern_sample_params kp[8];
                for (uint32_t r = 0; r < rows; r++)
                        kp[r] = (struct kern_sample_params) {.temperature = 1.0f, .top_p = 0.9f, .min_p = 0.0f,
                                                             .repetition_penalty = 1.0f, .n_logprobs = 5,
                                                             .seed = 99, .index = r};
                float *d = kt_dev(sizeof(float) * n * rows), *work = kt_dev(sizeof(float) * n * rows);
                struct kern_sample_params *dp = kt_up(kp, sizeof(kp));
                struct kern_sample_result *dr = kt_dev(sizeof(struct kern_sample_result) * rows);
                struct kern_sample_result a[8], b[8];
                KT_CUDA(cudaMemcpy(d, h, sizeof(float) * n * rows, cudaMemcpyHostToDevice));
                KT_OK(kern_sample_rows(d, n, rows, n, dp, NULL, work, dr, 0));
                KT_CUDA(cudaMemcpy(a, dr, sizeof(a), cudaMemcpyDeviceToHost));
                KT_CUDA(cudaMemcpy(d, h, sizeof(float) * n * rows, cudaMemcpyHostToDevice));
                KT_OK(kern_sample_rows(d, n, rows, n, dp, NULL, work, dr, 0));
                KT_CUDA(cudaMemcpy(b, dr, sizeof(b), cudaMemcpyDeviceToHost));
                kt_expect("two launches on the same rows give identical results", memcmp(a, b, sizeof(a)) == 0);
                cudaFree(d), cudaFree(work), cudaFree(dp), cudaFree(dr);
                free(h);
        }

        test_vocab(33, 256);            /* top-N and top_k against a tiny vocabulary */
        test_vocab(1000, 512);          /* fewer elements than threads */
        test_vocab(4099, 512);          /* not a multiple of anything */
        test_vocab(262144, 512);        /* Gemma 4 */

        kt_expect("0 rows is a no-op", kern_sample_rows(NULL, 16, 0, 16, NULL, NULL, NULL, NULL, 0) == 0);
        kt_expect("0-wide rows are refused", kern_sample_rows((float *) 16, 16, 1, 0, (void *) 16, NULL,
                                                              (float *) 16, (void *) 16, 0) == -EINVAL);

        struct sampling_params typical = base_params(), heavy = base_params(), nucleus = base_params(),
                               greedy_lp = base_params();
        typical.temperature = 0.8f;
        typical.top_k = 50;
        typical.top_p = 0.95f;
        nucleus.temperature = 1.0f;
        nucleus.top_p = 0.9f;
        heavy.temperature = 1.0f;
        heavy.top_p = 0.95f;
        heavy.min_p = 0.01f;
        heavy.repetition_penalty = 1.1f;
        heavy.presence_penalty = 0.3f;
        heavy.frequency_penalty = 0.2f;
        heavy.logprobs = 20;
        greedy_lp.temperature = 0.0f;
        greedy_lp.logprobs = 5;
        for (uint32_t rows = 1; rows <= 64; rows *= 64) {
                bench("T=0.8,top_k=50,top_p=0.95", 262144, rows, &typical, 0);
                bench("T=1,top_p=0.9", 262144, rows, &nucleus, 0);
                bench("T=1,top_p=0.95,min_p=0.01,penalties(2000 tokens),logprobs=20", 262144, rows, &heavy, 2000);
                bench("greedy,logprobs=5", 262144, rows, &greedy_lp, 0);
                bench_copy(262144, rows);
        }
        {
                struct sampler *hs = NULL;
                KT_OK(sampler_new(262144, &hs));
                float *row = malloc(sizeof(float) * 262144), *src = malloc(sizeof(float) * 262144);
                fill_row(src, 262144, ROW_SOFTCAP);
                struct sampler_result r;
                double best = INFINITY;
                for (int it = 0; it < 10; it++) {
                        memcpy(row, src, sizeof(float) * 262144);
                        double t0 = now_ms();
                        sampler_sample(hs, row, NULL, 0, 0, &typical, &r);
                        best = fmin(best, now_ms() - t0);
                }
                printf("RESULT host_sampler T=0.8,top_k=50,top_p=0.95 vocab=262144: %.1f us per row (best of 10, one "
                       "thread)\n", best * 1e3);
                sampler_free(hs);
                free(row), free(src);
        }
        return kt_finish();
}
