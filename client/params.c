/* SPDX-License-Identifier: Apache-2.0 */
/* gc_params: request options, stored as the protocol's own params struct so encoding is a borrow. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "client-internal.h"

GC_EXTERN int gc_params_new(gc_params **ret) {
        gc_params *p;

        if (!ret)
                return -EINVAL;
        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        proto_params_init(&p->p);
        *ret = p;
        return 0;
}

GC_EXTERN void gc_params_free(gc_params *p) {
        if (!p)
                return;
        proto_params_done(&p->p);
        free(p);
}

GC_EXTERN void gc_params_reset(gc_params *p) {
        if (!p)
                return;
        proto_params_done(&p->p);
        proto_params_init(&p->p);
}

/*
 * Apply one change on a copy, validate it with the codec's own range checks and keep it only if it
 * passes, so the setters and the daemon's decoder can never disagree about a range.
 */
static int params_commit(gc_params *p, const struct proto_params *candidate) {
        struct proto_diag diag;

        if (proto_params_validate(candidate, &diag) < 0)
                return -EINVAL;
        p->p = *candidate;
        return 0;
}

#define PARAM_SETTER(fn, type, field, bit)                                                       \
        GC_EXTERN int fn(gc_params *p, type v) {                                                  \
                struct proto_params c;                                                            \
                if (!p)                                                                           \
                        return -EINVAL;                                                           \
                c = p->p;                                                                         \
                c.field = v;                                                                      \
                c.present |= bit;                                                                 \
                return params_commit(p, &c);                                                      \
        }

PARAM_SETTER(gc_params_set_max_tokens, uint32_t, max_tokens, PROTO_PARAM_MAX_TOKENS)
PARAM_SETTER(gc_params_set_temperature, double, temperature, PROTO_PARAM_TEMPERATURE)
PARAM_SETTER(gc_params_set_top_p, double, top_p, PROTO_PARAM_TOP_P)
PARAM_SETTER(gc_params_set_top_k, uint32_t, top_k, PROTO_PARAM_TOP_K)
PARAM_SETTER(gc_params_set_min_p, double, min_p, PROTO_PARAM_MIN_P)
PARAM_SETTER(gc_params_set_repetition_penalty, double, repetition_penalty, PROTO_PARAM_REPETITION_PENALTY)
PARAM_SETTER(gc_params_set_presence_penalty, double, presence_penalty, PROTO_PARAM_PRESENCE_PENALTY)
PARAM_SETTER(gc_params_set_frequency_penalty, double, frequency_penalty, PROTO_PARAM_FREQUENCY_PENALTY)
PARAM_SETTER(gc_params_set_seed, uint64_t, seed, PROTO_PARAM_SEED)
PARAM_SETTER(gc_params_set_logprobs, int, logprobs, PROTO_PARAM_LOGPROBS)
PARAM_SETTER(gc_params_set_priority, int, priority, PROTO_PARAM_PRIORITY)
PARAM_SETTER(gc_params_set_deadline_ms, uint32_t, deadline_ms, PROTO_PARAM_DEADLINE_MS)

GC_EXTERN int gc_params_add_stop(gc_params *p, const char *stop) {
        struct proto_params c;
        char **v, *copy;
        int r;

        if (!p || !stop || p->p.n_stop >= PROTO_MAX_STOP)
                return -EINVAL;
        copy = strdup(stop);
        if (!copy)
                return -ENOMEM;
        v = realloc(p->p.stop, (p->p.n_stop + 1) * sizeof(*v));
        if (!v) {
                free(copy);
                return -ENOMEM;
        }
        p->p.stop = v;
        c = p->p;
        c.stop[c.n_stop++] = copy;
        c.present |= PROTO_PARAM_STOP;
        r = params_commit(p, &c);
        if (r < 0)
                free(copy);
        return r;
}

GC_EXTERN void gc_params_clear_stop(gc_params *p) {
        if (!p)
                return;
        for (uint32_t i = 0; i < p->p.n_stop; i++)
                free(p->p.stop[i]);
        free(p->p.stop);
        p->p.stop = NULL;
        p->p.n_stop = 0;
        p->p.present &= ~(uint32_t) PROTO_PARAM_STOP;
}

static int parse_double(const char *s, double *ret) {
        char *end;
        double v;

        errno = 0;
        v = strtod(s, &end);
        if (errno || end == s || *end || !isfinite(v))
                return -EINVAL;
        *ret = v;
        return 0;
}

static int parse_int(const char *s, long long min, long long max, long long *ret) {
        char *end;
        long long v;

        errno = 0;
        v = strtoll(s, &end, 10);
        if (errno || end == s || *end || v < min || v > max)
                return -EINVAL;
        *ret = v;
        return 0;
}

static int parse_u64(const char *s, uint64_t *ret) {
        char *end;
        unsigned long long v;

        if (*s == '-')
                return -EINVAL;
        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno || end == s || *end)
                return -EINVAL;
        *ret = v;
        return 0;
}

GC_EXTERN int gc_params_set(gc_params *p, const char *name, const char *value) {
        static const struct {
                const char *name;
                int (*set_double)(gc_params *, double);
        } doubles[] = {
                { "temperature", gc_params_set_temperature },
                { "top_p", gc_params_set_top_p },
                { "min_p", gc_params_set_min_p },
                { "repetition_penalty", gc_params_set_repetition_penalty },
                { "presence_penalty", gc_params_set_presence_penalty },
                { "frequency_penalty", gc_params_set_frequency_penalty },
        };
        long long n;
        uint64_t u;
        double d;

        if (!p || !name || !value)
                return -EINVAL;
        for (size_t i = 0; i < sizeof(doubles) / sizeof(doubles[0]); i++)
                if (strcmp(name, doubles[i].name) == 0)
                        return parse_double(value, &d) < 0 ? -EINVAL : doubles[i].set_double(p, d);
        if (strcmp(name, "stop") == 0)
                return gc_params_add_stop(p, value);
        if (strcmp(name, "seed") == 0)
                return parse_u64(value, &u) < 0 ? -EINVAL : gc_params_set_seed(p, u);
        if (strcmp(name, "max_tokens") == 0)
                return parse_int(value, 0, UINT32_MAX, &n) < 0 ? -EINVAL : gc_params_set_max_tokens(p, n);
        if (strcmp(name, "top_k") == 0)
                return parse_int(value, 0, UINT32_MAX, &n) < 0 ? -EINVAL : gc_params_set_top_k(p, n);
        if (strcmp(name, "deadline_ms") == 0)
                return parse_int(value, 0, UINT32_MAX, &n) < 0 ? -EINVAL : gc_params_set_deadline_ms(p, n);
        if (strcmp(name, "logprobs") == 0)
                return parse_int(value, -1, 1000, &n) < 0 ? -EINVAL : gc_params_set_logprobs(p, n);
        if (strcmp(name, "priority") == 0)
                return parse_int(value, -1000, 1000, &n) < 0 ? -EINVAL : gc_params_set_priority(p, n);
        return -EINVAL;
}
