/* SPDX-License-Identifier: Apache-2.0 */
#include "fake-backend.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define STATE_SEED UINT64_C(0x243F6A8885A308D3)

struct kv_row {
        int64_t pos;            /* -1: never written */
        int32_t token;
        uint64_t state;
};

struct backend {
        struct fake_params p;
        uint32_t ring;
        struct kv_row *full, *sliding;
        uint64_t *full_stamp, *sliding_stamp;   /* step that last claimed a page for writing */
        uint64_t steps, tokens, forward_ns, greedy_steps;
        uint64_t host_live, host_allocs;
        float *base_row;                /* fast mode */
        uint32_t max_seqs;
        char error[512];
};

static uint64_t mix(uint64_t z) {
        z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
        return z ^ (z >> 31);
}

static uint64_t next_state(uint64_t prev, int32_t token) {
        return mix(prev ^ ((uint64_t) (uint32_t) token * UINT64_C(0x9E3779B97F4A7C15)));
}

static uint64_t window_term(int32_t token, uint64_t pos) {
        return mix(((uint64_t) (uint32_t) token << 32) ^ pos ^ UINT64_C(0x5851F42D4C957F2D));
}

static void fill_logits(uint32_t vocab, uint64_t state, uint64_t window, float *out) {
        uint64_t base = mix(state ^ window);
        for (uint32_t v = 0; v < vocab; v++)
                out[v] = (float) (mix(base + v) >> 40) * (8.0f / 16777216.0f);
}

static int check_fail(struct backend *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int check_fail(struct backend *b, const char *fmt, ...) {
        if (!b->error[0]) {
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(b->error, sizeof(b->error), fmt, ap);
                va_end(ap);
        }
        return -EPROTO;
}

int fake_backend_new(const struct fake_params *p, struct backend **ret) {
        if (!p->page_size || !p->n_full_pages || !p->n_sliding_pages || !p->window || !p->vocab)
                return -EINVAL;
        struct backend *b = calloc(1, sizeof(*b));
        if (!b)
                return -ENOMEM;
        b->p = *p;
        b->ring = (p->window + p->page_size - 1) / p->page_size + 1;
        b->full = malloc(sizeof(struct kv_row) * p->n_full_pages * p->page_size);
        b->sliding = malloc(sizeof(struct kv_row) * p->n_sliding_pages * p->page_size);
        b->full_stamp = calloc(p->n_full_pages, sizeof(uint64_t));
        b->sliding_stamp = calloc(p->n_sliding_pages, sizeof(uint64_t));
        if (!b->full || !b->sliding || !b->full_stamp || !b->sliding_stamp) {
                fake_backend_ops.destroy(b);
                return -ENOMEM;
        }
        for (uint64_t i = 0; i < (uint64_t) p->n_full_pages * p->page_size; i++)
                b->full[i] = (struct kv_row) { .pos = -1 };
        for (uint64_t i = 0; i < (uint64_t) p->n_sliding_pages * p->page_size; i++)
                b->sliding[i] = (struct kv_row) { .pos = -1 };
        if (p->fast) {
                b->base_row = malloc(sizeof(float) * p->vocab);
                if (!b->base_row) {
                        fake_backend_ops.destroy(b);
                        return -ENOMEM;
                }
                /* peaked like a language model's row: most logits near 0, a few up to 24 */
                fill_logits(p->vocab, STATE_SEED, 0, b->base_row);
                for (uint32_t v = 0; v < p->vocab; v++) {
                        float u = b->base_row[v] / 8.0f, u2 = u * u, u4 = u2 * u2, u8 = u4 * u4;
                        b->base_row[v] = 24.0f * u8 * u8 - 2.0f;
                }
        }
        *ret = b;
        return 0;
}

static int fake_create(const struct model *m, const struct backend_params *p, struct backend **ret,
                       char **reterr) {
        if (reterr)
                *reterr = strdup("the fake backend is created with fake_backend_new");
        return -ENOTSUP;
}

static void fake_destroy(struct backend *b) {
        if (!b)
                return;
        free(b->full);
        free(b->sliding);
        free(b->full_stamp);
        free(b->sliding_stamp);
        free(b->base_row);
        free(b);
}

static void fake_get_capacity(struct backend *b, struct backend_capacity *ret) {
        *ret = (struct backend_capacity) {
                .n_full_pages = b->p.n_full_pages,
                .n_sliding_pages = b->p.n_sliding_pages,
                .page_size = b->p.page_size,
                .n_sliding_ring = b->ring,
                .kv_bytes = sizeof(struct kv_row) * (uint64_t) (b->p.n_full_pages + b->p.n_sliding_pages) *
                            b->p.page_size,
        };
        snprintf(ret->device, sizeof(ret->device), "fake");
}

static struct kv_row *full_row(struct backend *b, const struct backend_seq *s, uint64_t q) {
        return &b->full[(uint64_t) s->full_pages[q / b->p.page_size] * b->p.page_size + q % b->p.page_size];
}

static struct kv_row *sliding_row(struct backend *b, const struct backend_seq *s, uint64_t q) {
        uint32_t id = s->sliding_pages[(q / b->p.page_size) % b->ring];
        return &b->sliding[(uint64_t) id * b->p.page_size + q % b->p.page_size];
}

/* Validate one sequence's tables and history; claim its written pages for this step. */
static int check_seq(struct backend *b, uint32_t si, const struct backend_seq *s) {
        const uint32_t B = b->p.page_size;
        uint64_t end = (uint64_t) s->pos + s->n_tokens;
        if (s->n_tokens == 0)
                return check_fail(b, "seq %u: no tokens", si);
        if (s->n_full_pages < (end + B - 1) / B)
                return check_fail(b, "seq %u: %u full pages do not cover positions [0, %llu)", si,
                                  s->n_full_pages, (unsigned long long) end);
        if (s->n_sliding_pages != b->ring)
                return check_fail(b, "seq %u: ring of %u pages, expected %u", si, s->n_sliding_pages, b->ring);
        for (uint32_t i = 0; i < s->n_full_pages; i++)
                if (s->full_pages[i] >= b->p.n_full_pages)
                        return check_fail(b, "seq %u: full page %u is id %u, out of range", si, i,
                                          s->full_pages[i]);
        /* every slot the window or the new tokens touch must hold a valid page; slots distinct */
        uint64_t lo = s->pos + 1 > b->p.window ? s->pos + 1 - b->p.window : 0;
        for (uint64_t pg = lo / B; pg <= (end - 1) / B; pg++) {
                uint32_t id = s->sliding_pages[pg % b->ring];
                if (id >= b->p.n_sliding_pages)
                        return check_fail(b, "seq %u: ring slot %llu (page index %llu) holds id %u", si,
                                          (unsigned long long) (pg % b->ring), (unsigned long long) pg, id);
        }
        for (uint32_t i = 0; i < b->ring; i++)
                for (uint32_t j = i + 1; j < b->ring; j++)
                        if (s->sliding_pages[i] != UINT32_MAX && s->sliding_pages[i] == s->sliding_pages[j])
                                return check_fail(b, "seq %u: ring slots %u and %u share page %u", si, i, j,
                                                  s->sliding_pages[i]);
        /* history: every full row, chained; window rows agree with the full rows */
        uint64_t state = STATE_SEED;
        for (uint64_t q = 0; q < s->pos; q++) {
                const struct kv_row *fr = full_row(b, s, q);
                if (fr->pos != (int64_t) q)
                        return check_fail(b, "seq %u: full row for position %llu holds position %lld "
                                          "(page %u)", si, (unsigned long long) q, (long long) fr->pos,
                                          s->full_pages[q / B]);
                state = next_state(state, fr->token);
                if (fr->state != state)
                        return check_fail(b, "seq %u: full row %llu has a state from another prefix", si,
                                          (unsigned long long) q);
        }
        for (uint64_t q = lo; q < s->pos; q++) {
                const struct kv_row *sr = sliding_row(b, s, q), *fr = full_row(b, s, q);
                if (sr->pos != (int64_t) q || sr->state != fr->state || sr->token != fr->token)
                        return check_fail(b, "seq %u: sliding row for position %llu holds position %lld "
                                          "or another prefix", si, (unsigned long long) q, (long long) sr->pos);
        }
        /* claim the pages written this step: no two sequences may write one page */
        for (uint64_t pg = s->pos / B; pg <= (end - 1) / B; pg++) {
                uint32_t id = s->full_pages[pg];
                if (b->full_stamp[id] == b->steps)
                        return check_fail(b, "seq %u: full page %u written by two sequences in one step", si, id);
                b->full_stamp[id] = b->steps;
        }
        for (uint32_t i = 0; i < b->ring; i++) {
                uint32_t id = s->sliding_pages[i];
                if (id == UINT32_MAX)
                        continue;
                if (id >= b->p.n_sliding_pages)
                        return check_fail(b, "seq %u: ring slot %u holds id %u", si, i, id);
                if (b->sliding_stamp[id] == b->steps)
                        return check_fail(b, "seq %u: sliding page %u in two rings in one step", si, id);
                b->sliding_stamp[id] = b->steps;
        }
        return 0;
}

static uint64_t mono_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

/* Benchmark mode: the state chain only, and cheap logits. */
static int fast_forward(struct backend *b, const struct backend_batch *batch, float *logits) {
        uint64_t row = 0;
        for (uint32_t si = 0; si < batch->n_seqs; si++) {
                const struct backend_seq *s = &batch->seqs[si];
                uint64_t state = s->pos ? full_row(b, s, s->pos - 1)->state : STATE_SEED;
                for (uint32_t t = 0; t < s->n_tokens; t++) {
                        uint64_t p = s->pos + t;
                        state = next_state(state, s->tokens[t]);
                        struct kv_row kr = { .pos = (int64_t) p, .token = s->tokens[t], .state = state };
                        *full_row(b, s, p) = kr;
                        *sliding_row(b, s, p) = kr;
                        if (s->all_logits || t + 1 == s->n_tokens) {
                                float *out = logits + (row++) * b->p.vocab;
                                memcpy(out, b->base_row, sizeof(float) * b->p.vocab);
                                out[state % b->p.vocab] += 10.0f;
                        }
                }
                b->tokens += s->n_tokens;
        }
        return 0;
}

static int fake_forward_checked(struct backend *b, const struct backend_batch *batch, float *logits);

static int fake_forward(struct backend *b, const struct backend_batch *batch, float *logits) {
        uint64_t t0 = mono_ns();
        int r;
        b->steps++;
        if (b->p.fail_at_step && b->steps == b->p.fail_at_step)
                r = b->p.fail_error ? b->p.fail_error : -EIO;
        else if (b->p.fast)
                r = fast_forward(b, batch, logits);
        else
                r = fake_forward_checked(b, batch, logits);
        if (b->p.step_delay_us) {
                struct timespec ts = { 0, (long) b->p.step_delay_us * 1000L };
                nanosleep(&ts, NULL);
        }
        b->forward_ns += mono_ns() - t0;
        return r;
}

static int fake_forward_checked(struct backend *b, const struct backend_batch *batch, float *logits) {
        const uint32_t W = b->p.window;
        if (batch->n_seqs > b->max_seqs)
                b->max_seqs = batch->n_seqs;
        for (uint32_t si = 0; si < batch->n_seqs; si++) {
                int r = check_seq(b, si, &batch->seqs[si]);
                if (r < 0)
                        return r;
        }
        uint64_t row = 0;
        for (uint32_t si = 0; si < batch->n_seqs; si++) {
                const struct backend_seq *s = &batch->seqs[si];
                uint64_t state = s->pos ? full_row(b, s, s->pos - 1)->state : STATE_SEED;
                /* read the window history before writing anything (read-before-write, like a real
                 * backend with an in-place ring) */
                uint64_t lo = s->pos + 1 > W ? s->pos + 1 - W : 0;
                uint64_t win = 0;
                for (uint64_t q = lo; q < s->pos; q++)
                        win += window_term(sliding_row(b, s, q)->token, q);
                struct kv_row *fresh = malloc(sizeof(*fresh) * s->n_tokens);
                if (!fresh)
                        return -ENOMEM;
                for (uint32_t t = 0; t < s->n_tokens; t++) {
                        uint64_t p = s->pos + t;
                        state = next_state(state, s->tokens[t]);
                        fresh[t] = (struct kv_row) { .pos = (int64_t) p, .token = s->tokens[t], .state = state };
                        win += window_term(s->tokens[t], p);
                        if (t > 0 && p >= W) {
                                uint64_t out = p - W;   /* leaves the window */
                                int32_t tok = out >= s->pos ? fresh[out - s->pos].token :
                                                              sliding_row(b, s, out)->token;
                                win -= window_term(tok, out);
                        }
                        if (s->all_logits || t + 1 == s->n_tokens)
                                fill_logits(b->p.vocab, state, win, logits + (row++) * b->p.vocab);
                }
                for (uint32_t t = 0; t < s->n_tokens; t++) {
                        uint64_t p = s->pos + t;
                        *full_row(b, s, p) = fresh[t];
                        *sliding_row(b, s, p) = fresh[t];
                }
                free(fresh);
                b->tokens += s->n_tokens;
        }
        return 0;
}

/* The greedy op: the same step, then the argmax of each sequence's row with the sampler's rule (NaN never
 * wins, ties keep the lowest id), as a device backend computes it without copying the logits out. */
static int fake_forward_greedy(struct backend *b, const struct backend_batch *batch, int32_t *ret_tokens) {
        if (b->p.no_greedy)
                return -EOPNOTSUPP;
        for (uint32_t si = 0; si < batch->n_seqs; si++)
                if (batch->seqs[si].all_logits)
                        return check_fail(b, "forward_greedy: seq %u asks for all logits", si);
        /* all of it counts as backend time (a device backend does the argmax there) */
        uint64_t t0 = mono_ns(), inner = b->forward_ns;
        float *l = malloc(sizeof(float) * b->p.vocab * (batch->n_seqs ? batch->n_seqs : 1));
        if (!l)
                return -ENOMEM;
        int r = fake_forward(b, batch, l);
        if (r == 0) {
                for (uint32_t si = 0; si < batch->n_seqs; si++) {
                        const float *row = l + (uint64_t) si * b->p.vocab;
                        uint32_t best = 0;
                        float best_v = -INFINITY;
                        for (uint32_t v = 0; v < b->p.vocab; v++)
                                if (row[v] > best_v) {
                                        best_v = row[v];
                                        best = v;
                                }
                        ret_tokens[si] = (int32_t) best;
                }
                b->greedy_steps++;
        }
        free(l);
        b->forward_ns = inner + (mono_ns() - t0);
        return r;
}

static void *fake_host_alloc(struct backend *b, size_t bytes) {
        if (b->p.no_host_alloc)
                return NULL;
        void *p = malloc(bytes ? bytes : 1);
        if (p) {
                b->host_live++;
                b->host_allocs++;
        }
        return p;
}

static void fake_host_free(struct backend *b, void *p) {
        if (!p)
                return;
        if (b->host_live == 0)
                check_fail(b, "host_free of a block never handed out");
        else
                b->host_live--;
        free(p);
}

const struct backend_ops fake_backend_ops = {
        .name = "fake",
        .create = fake_create,
        .destroy = fake_destroy,
        .get_capacity = fake_get_capacity,
        .forward = fake_forward,
        .forward_greedy = fake_forward_greedy,
        .host_alloc = fake_host_alloc,
        .host_free = fake_host_free,
};

uint64_t fake_backend_host_live(struct backend *b) {
        return b->host_live;
}

uint64_t fake_backend_host_allocs(struct backend *b) {
        return b->host_allocs;
}

uint64_t fake_backend_greedy_steps(struct backend *b) {
        return b->greedy_steps;
}

const char *fake_backend_error(struct backend *b) {
        return b->error;
}

uint64_t fake_backend_steps(struct backend *b) {
        return b->steps;
}

uint64_t fake_backend_tokens(struct backend *b) {
        return b->tokens;
}

uint64_t fake_backend_forward_ns(struct backend *b) {
        return b->forward_ns;
}

uint32_t fake_backend_max_seqs(struct backend *b) {
        return b->max_seqs;
}

void fake_backend_set_fail(struct backend *b, uint64_t at_step, int error) {
        b->p.fail_at_step = at_step;
        b->p.fail_error = error;
}

uint32_t fake_reference_greedy(const struct fake_params *p, const int32_t *prompt, uint32_t n_prompt,
                               const int32_t *stop_ids, uint32_t n_stop, uint32_t max_tokens, int32_t *out) {
        uint32_t cap = n_prompt + max_tokens;
        int32_t *toks = malloc(sizeof(int32_t) * cap);
        float *l = malloc(sizeof(float) * p->vocab);
        if (!toks || !l) {
                free(toks);
                free(l);
                return 0;
        }
        memcpy(toks, prompt, sizeof(int32_t) * n_prompt);
        uint32_t n = n_prompt, n_out = 0;
        while (n_out < max_tokens) {
                uint64_t state = STATE_SEED, win = 0;
                for (uint32_t q = 0; q < n; q++)
                        state = next_state(state, toks[q]);
                uint64_t last = n - 1;
                for (uint64_t q = last + 1 > p->window ? last + 1 - p->window : 0; q <= last; q++)
                        win += window_term(toks[q], q);
                fill_logits(p->vocab, state, win, l);
                uint32_t best = 0;
                for (uint32_t v = 1; v < p->vocab; v++)
                        if (l[v] > l[best])
                                best = v;
                out[n_out++] = (int32_t) best;
                toks[n++] = (int32_t) best;
                bool stop = false;
                for (uint32_t i = 0; i < n_stop; i++)
                        stop |= stop_ids[i] == (int32_t) best;
                if (stop)
                        break;
        }
        free(toks);
        free(l);
        return n_out;
}
