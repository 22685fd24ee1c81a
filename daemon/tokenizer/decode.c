/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Decoding ids to text: the decoder of Gemma's tokenizer.json is Replace(U+2581 -> " "), ByteFallback,
 * Fuse. Pieces are context-free, so text is the concatenation of per-id texts (precomputed at load time);
 * only runs of byte tokens need care (see tokenizer.h).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer-internal.h"
#include "utf8.h"

struct outbuf {
        char *p;
        size_t n, cap;
};

static int out_reserve(struct outbuf *o, size_t more) {
        size_t cap = o->cap ? o->cap : 256;
        char *np;

        if (o->n + more + 1 <= o->cap)
                return 0;
        while (cap < o->n + more + 1)
                cap *= 2;
        np = realloc(o->p, cap);
        if (!np)
                return -ENOMEM;
        o->p = np;
        o->cap = cap;
        return 0;
}

static int out_put(struct outbuf *o, const void *s, size_t n) {
        int k = out_reserve(o, n);

        if (k < 0)
                return k;
        memcpy(o->p + o->n, s, n);
        o->n += n;
        return 0;
}

static int out_replacements(struct outbuf *o, size_t count) {
        int k = out_reserve(o, 3 * count);

        if (k < 0)
                return k;
        for (size_t i = 0; i < count; i++) {
                memcpy(o->p + o->n, UTF8_REPLACEMENT, 3);
                o->n += 3;
        }
        return 0;
}

/* HF ByteFallback: a run of byte tokens is its bytes when they form valid UTF-8, else one U+FFFD per
 * byte of the whole run. */
static int flush_run(struct outbuf *o, const uint8_t *run, size_t n) {
        if (n == 0)
                return 0;
        if (utf8_is_valid(run, n))
                return out_put(o, run, n);
        return out_replacements(o, n);
}

static bool id_known(const struct tokenizer *t, int32_t id) {
        return id >= 0 && (uint32_t)id < t->n_ids && (t->flags[id] & TOKF_PRESENT);
}

static bool is_byte_token(const struct tokenizer *t, int32_t id) {
        return t->decode_byte_fallback && (t->flags[id] & TOKF_BYTE);
}

int tokenizer_decode(const struct tokenizer *t, const int32_t *ids, size_t n, bool skip_special,
                     char **ret_text, size_t *ret_len) {
        struct outbuf o = { 0 };
        uint8_t *run = NULL;
        size_t run_n = 0;
        int k = 0;

        for (size_t i = 0; i < n; i++)
                if (!id_known(t, ids[i]))
                        return -EINVAL;
        run = malloc(n ? n : 1);
        if (!run)
                return -ENOMEM;
        k = out_reserve(&o, 0);
        for (size_t i = 0; i < n && k >= 0; i++) {
                int32_t id = ids[i];

                if (skip_special && (t->flags[id] & TOKF_SPECIAL))
                        continue;       /* removed before the decoder runs: byte runs join across it */
                if (is_byte_token(t, id)) {
                        run[run_n++] = t->byte_value[id];
                        continue;
                }
                k = flush_run(&o, run, run_n);
                run_n = 0;
                if (k >= 0)
                        k = out_put(&o, t->texts + t->text_off[id], t->text_len[id]);
        }
        if (k >= 0)
                k = flush_run(&o, run, run_n);
        free(run);
        if (k < 0) {
                free(o.p);
                return k;
        }
        o.p[o.n] = 0;
        *ret_text = o.p;
        if (ret_len)
                *ret_len = o.n;
        return 0;
}

struct detok_stream {
        const struct tokenizer *t;
        bool skip_special;
        uint8_t pending[4];
        size_t n_pending;
        bool run_broken;        /* the current byte run is already invalid: its later bytes are U+FFFD */
        char *out;              /* room for the largest output of one push */
};

int detok_stream_new(const struct tokenizer *t, bool skip_special, struct detok_stream **ret) {
        struct detok_stream *s = calloc(1, sizeof(*s));

        if (!s)
                return -ENOMEM;
        /* worst case of one push: 3 held bytes as U+FFFD, then the longest token text (or 4 U+FFFD) */
        s->out = malloc(t->max_text_len + 16);
        if (!s->out) {
                free(s);
                return -ENOMEM;
        }
        s->t = t;
        s->skip_special = skip_special;
        *ret = s;
        return 0;
}

void detok_stream_free(struct detok_stream *s) {
        if (!s)
                return;
        free(s->out);
        free(s);
}

size_t detok_stream_pending(const struct detok_stream *s) {
        return s->n_pending;
}

static size_t put_replacements(char *out, size_t count) {
        for (size_t i = 0; i < count; i++)
                memcpy(out + 3 * i, UTF8_REPLACEMENT, 3);
        return 3 * count;
}

int detok_stream_push(struct detok_stream *s, int32_t id, const char **ret_text, size_t *ret_len) {
        const struct tokenizer *t = s->t;
        size_t n = 0;

        if (!id_known(t, id))
                return -EINVAL;
        if (s->skip_special && (t->flags[id] & TOKF_SPECIAL)) {
                *ret_text = s->out;
                *ret_len = 0;
                return 0;
        }
        if (is_byte_token(t, id)) {
                if (s->run_broken) {
                        n = put_replacements(s->out, 1);
                } else {
                        s->pending[s->n_pending++] = t->byte_value[id];
                        switch (utf8_classify_prefix(s->pending, s->n_pending)) {
                        case UTF8_PREFIX_COMPLETE:
                                memcpy(s->out, s->pending, s->n_pending);
                                n = s->n_pending;
                                s->n_pending = 0;
                                break;
                        case UTF8_PREFIX_INCOMPLETE:
                                break;
                        case UTF8_PREFIX_INVALID:
                                n = put_replacements(s->out, s->n_pending);
                                s->n_pending = 0;
                                s->run_broken = true;
                                break;
                        }
                }
        } else {
                /* the byte run ends here: an unfinished character in it is invalid */
                n = put_replacements(s->out, s->n_pending);
                s->n_pending = 0;
                s->run_broken = false;
                memcpy(s->out + n, t->texts + t->text_off[id], t->text_len[id]);
                n += t->text_len[id];
        }
        *ret_text = s->out;
        *ret_len = n;
        return 0;
}

int detok_stream_finish(struct detok_stream *s, const char **ret_text, size_t *ret_len) {
        size_t n = put_replacements(s->out, s->n_pending);

        s->n_pending = 0;
        s->run_broken = false;
        *ret_text = s->out;
        *ret_len = n;
        return 0;
}
