/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Loading tokenizer.json.
 *
 * jansson builds a node per JSON value; for Gemma's 262,144-entry vocabulary and 514,906 merges that is
 * ~1.8 million nodes and ~1 s on one core before any of our own tables exist. So the two big members,
 * model.vocab and model.merges, are parsed here by a small strict JSON reader that writes straight into
 * the final tables; their text is then blanked to {} / [] and jansson parses everything else (added
 * tokens, normalizer, pre-tokenizer, decoder, model options), which also validates the whole document.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tokenizer-internal.h"
#include "utf8.h"

#define MAX_FILE_BYTES (1024u * 1024u * 1024u)
#define MAX_IDS (1u << 24)
#define MAX_SCAN_DEPTH 128

/* ---- hashing ---- */

uint64_t tok_hash_u64(uint64_t x) {
        x ^= x >> 31;
        x *= 0x7fb5d329728ea185ull;
        x ^= x >> 27;
        x *= 0x81dadef4bc2dd44dull;
        x ^= x >> 33;
        return x;
}

uint64_t tok_hash_bytes(const void *p, size_t n) {
        const uint8_t *s = p;
        uint64_t h = 0x243f6a8885a308d3ull ^ ((uint64_t)n * 0x9e3779b97f4a7c15ull);

        while (n >= 8) {
                uint64_t v;

                memcpy(&v, s, 8);
                h = (h ^ v) * 0xff51afd7ed558ccdull;
                h ^= h >> 32;
                s += 8;
                n -= 8;
        }
        if (n > 0) {
                uint64_t v = 0;

                memcpy(&v, s, n);
                h = (h ^ v) * 0xc4ceb9fe1a85ec53ull;
                h ^= h >> 29;
        }
        return tok_hash_u64(h);
}

static size_t table_size_for(size_t n) {
        size_t size = 16;

        while (size < n * 2)
                size <<= 1;
        return size;
}

/* ---- vocabulary index ---- */

static int str_index_init(struct str_index *idx, size_t n) {
        size_t size = table_size_for(n);

        idx->slots = calloc(size, sizeof(uint64_t));
        if (!idx->slots)
                return -ENOMEM;
        idx->mask = size - 1;
        idx->n = 0;
        return 0;
}

/* Inserts entry e (its string is t->strings + entry_off[e]); a repeated string now maps to e. */
static void str_index_put(struct tokenizer *t, uint32_t e) {
        const char *s = t->strings + t->entries[e].off;
        size_t n = t->entries[e].len;
        uint64_t h = tok_hash_bytes(s, n);
        uint64_t tag = h >> 32 << 32;

        for (size_t i = h & t->vocab.mask;; i = (i + 1) & t->vocab.mask) {
                uint64_t slot = t->vocab.slots[i];
                uint32_t o;

                if (slot == 0) {
                        t->vocab.slots[i] = tag | (e + 1);
                        t->vocab.n++;
                        return;
                }
                o = (uint32_t)slot - 1;
                if ((slot & ~0xffffffffull) == tag && t->entries[o].len == n &&
                    memcmp(t->strings + t->entries[o].off, s, n) == 0) {
                        t->vocab.slots[i] = tag | (e + 1);
                        return;
                }
        }
}

/* Index of the vocabulary entry whose string is s[0..n) (h = its hash), or -1. */
static int32_t vocab_find_entry(const struct tokenizer *t, const char *s, size_t n, uint64_t h) {
        uint64_t tag = h >> 32 << 32;

        for (size_t i = h & t->vocab.mask;; i = (i + 1) & t->vocab.mask) {
                uint64_t slot = t->vocab.slots[i];
                uint32_t o;

                if (slot == 0)
                        return -1;
                o = (uint32_t)slot - 1;
                if ((slot & ~0xffffffffull) == tag && t->entries[o].len == n &&
                    memcmp(t->strings + t->entries[o].off, s, n) == 0)
                        return (int32_t)o;
        }
}

static int32_t vocab_lookup_hashed(const struct tokenizer *t, const char *s, size_t n, uint64_t h) {
        int32_t e = vocab_find_entry(t, s, n, h);

        return e >= 0 ? t->entries[e].id : -1;
}

int32_t tok_vocab_lookup(const struct tokenizer *t, const char *s, size_t n) {
        return vocab_lookup_hashed(t, s, n, tok_hash_bytes(s, n));
}

static void vocab_prefetch(const struct tokenizer *t, uint64_t h) {
        __builtin_prefetch(&t->vocab.slots[h & t->vocab.mask]);
}

/* ---- merge index ---- */

static int merge_index_init(struct merge_index *m, size_t n) {
        size_t size = table_size_for(n);

        m->keys = malloc(size * sizeof(uint64_t));
        m->ranks = malloc(size * sizeof(uint32_t));
        if (!m->keys || !m->ranks)
                return -ENOMEM;
        memset(m->keys, 0xff, size * sizeof(uint64_t));
        m->mask = size - 1;
        return 0;
}

/* A repeated pair takes the later rank (HF collects the merges into a map in list order). */
static void merge_index_put(struct merge_index *m, int32_t left, int32_t right, uint32_t rank) {
        uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;

        for (size_t i = tok_hash_u64(key) & m->mask;; i = (i + 1) & m->mask) {
                if (m->keys[i] == UINT64_MAX || m->keys[i] == key) {
                        m->keys[i] = key;
                        m->ranks[i] = rank;
                        return;
                }
        }
}

int32_t tok_merge_rank(const struct tokenizer *t, int32_t left, int32_t right) {
        uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;

        for (size_t i = tok_hash_u64(key) & t->merges.mask;; i = (i + 1) & t->merges.mask) {
                uint64_t k = t->merges.keys[i];

                if (k == key)
                        return (int32_t)t->merges.ranks[i];
                if (k == UINT64_MAX)
                        return -1;
        }
}

/* ---- added-token trie ---- */

static int trie_init(struct added_trie *a, size_t total_bytes) {
        size_t size = table_size_for(total_bytes + 1);

        a->node_token = malloc((total_bytes + 1) * sizeof(int32_t));
        a->edge_keys = malloc(size * sizeof(uint64_t));
        a->edge_child = malloc(size * sizeof(uint32_t));
        if (!a->node_token || !a->edge_keys || !a->edge_child)
                return -ENOMEM;
        memset(a->edge_keys, 0xff, size * sizeof(uint64_t));
        a->edge_mask = size - 1;
        a->node_token[0] = -1;
        a->n_nodes = 1;
        return 0;
}

static uint32_t trie_child(const struct added_trie *a, uint32_t node, uint8_t byte) {
        uint64_t key = (uint64_t)node << 8 | byte;

        for (size_t i = tok_hash_u64(key) & a->edge_mask;; i = (i + 1) & a->edge_mask) {
                if (a->edge_keys[i] == key)
                        return a->edge_child[i];
                if (a->edge_keys[i] == UINT64_MAX)
                        return 0;
        }
}

/* Adds s -> id; a repeated string keeps the later id. The caller sized the trie for all strings. */
static void trie_add(struct added_trie *a, const char *s, size_t n, int32_t id) {
        uint32_t node = 0;

        a->first_byte[(uint8_t)s[0]] = 1;
        for (size_t k = 0; k < n; k++) {
                uint64_t key = (uint64_t)node << 8 | (uint8_t)s[k];
                size_t i = tok_hash_u64(key) & a->edge_mask;

                while (a->edge_keys[i] != UINT64_MAX && a->edge_keys[i] != key)
                        i = (i + 1) & a->edge_mask;
                if (a->edge_keys[i] == UINT64_MAX) {
                        a->edge_keys[i] = key;
                        a->edge_child[i] = a->n_nodes;
                        a->node_token[a->n_nodes] = -1;
                        a->n_nodes++;
                }
                node = a->edge_child[i];
        }
        a->node_token[node] = id;
}

/* Longest added token starting at p[0..n): its id and length, or -1. */
int32_t tok_added_match(const struct tokenizer *t, const uint8_t *p, size_t n, size_t *ret_len) {
        const struct added_trie *a = &t->added;
        int32_t best = -1;
        uint32_t node = 0;

        for (size_t k = 0; k < n; k++) {
                node = trie_child(a, node, p[k]);
                if (node == 0)
                        break;
                if (a->node_token[node] >= 0) {
                        best = a->node_token[node];
                        *ret_len = k + 1;
                }
        }
        return best;
}

/* ---- error reporting ---- */

struct load_ctx {
        const char *name;
        const char *buf;        /* file contents, for line numbers */
        size_t len;
        char *err;
};

static int fail(struct load_ctx *c, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(struct load_ctx *c, int r, const char *fmt, ...) {
        va_list ap;
        char *msg = NULL, *full = NULL;

        if (c->err)
                return r;
        va_start(ap, fmt);
        if (vasprintf(&msg, fmt, ap) < 0)
                msg = NULL;
        va_end(ap);
        if (msg && asprintf(&full, "%s: %s", c->name, msg) < 0)
                full = NULL;
        free(msg);
        c->err = full;
        return r;
}

static void line_col(const struct load_ctx *c, const char *pos, size_t *ret_line, size_t *ret_col) {
        size_t line = 1, col = 1;

        for (const char *p = c->buf; p < pos && p < c->buf + c->len; p++) {
                if (*p == '\n') {
                        line++;
                        col = 1;
                } else {
                        col++;
                }
        }
        *ret_line = line;
        *ret_col = col;
}

static int fail_at(struct load_ctx *c, const char *pos, const char *what) {
        size_t line, col;

        line_col(c, pos, &line, &col);
        return fail(c, -EINVAL, "line %zu column %zu: %s", line, col, what);
}

/* ---- a strict JSON reader for model.vocab and model.merges ---- */

struct jreader {
        struct load_ctx *ctx;
        const char *p, *end;
};

static void skip_ws(struct jreader *r) {
        while (r->p < r->end && (*r->p == ' ' || *r->p == '\n' || *r->p == '\r' || *r->p == '\t'))
                r->p++;
}

static int expect(struct jreader *r, char ch, const char *what) {
        skip_ws(r);
        if (r->p >= r->end || *r->p != ch)
                return fail_at(r->ctx, r->p, what);
        r->p++;
        return 0;
}

static int hex4(const char *p, uint32_t *ret) {
        uint32_t v = 0;

        for (int i = 0; i < 4; i++) {
                char ch = p[i];

                v <<= 4;
                if (ch >= '0' && ch <= '9')
                        v |= (uint32_t)(ch - '0');
                else if (ch >= 'a' && ch <= 'f')
                        v |= (uint32_t)(ch - 'a' + 10);
                else if (ch >= 'A' && ch <= 'F')
                        v |= (uint32_t)(ch - 'A' + 10);
                else
                        return -EINVAL;
        }
        *ret = v;
        return 0;
}

/* Reads a JSON string at r->p into out (which has room: a decoded string is never longer than its JSON
 * form). When out is NULL the string is only validated and skipped. */
static int read_string(struct jreader *r, char *out, size_t *ret_len) {
        const char *start;
        size_t n = 0;

        skip_ws(r);
        if (r->p >= r->end || *r->p != '"')
                return fail_at(r->ctx, r->p, "expected a string");
        start = r->p++;
        for (;;) {
                const char *q = r->p;
                uint8_t ch;

                /* copy the plain run at once */
                while (q < r->end && *q != '"' && *q != '\\' && (uint8_t)*q >= 0x20 && (uint8_t)*q < 0x80)
                        q++;
                if (out)
                        memcpy(out + n, r->p, (size_t)(q - r->p));
                n += (size_t)(q - r->p);
                r->p = q;
                if (r->p >= r->end)
                        return fail_at(r->ctx, start, "unterminated string");
                ch = (uint8_t)*r->p;
                if (ch == '"') {
                        r->p++;
                        break;
                }
                if (ch < 0x20)
                        return fail_at(r->ctx, r->p, "control character inside a string");
                if (ch >= 0x80) {
                        size_t l = utf8_sequence_len((const uint8_t *)r->p, (size_t)(r->end - r->p));

                        if (l == 0)
                                return fail_at(r->ctx, r->p, "invalid UTF-8 inside a string");
                        if (out)
                                memcpy(out + n, r->p, l);
                        n += l;
                        r->p += l;
                        continue;
                }
                /* backslash escape */
                if (r->end - r->p < 2)
                        return fail_at(r->ctx, start, "unterminated string");
                r->p++;
                ch = (uint8_t)*r->p++;
                if (ch == 'u') {
                        uint32_t cp, lo;
                        char enc[4];
                        size_t l;

                        if (r->end - r->p < 4 || hex4(r->p, &cp) < 0)
                                return fail_at(r->ctx, r->p - 2, "bad \\u escape");
                        r->p += 4;
                        if (cp >= 0xdc00 && cp <= 0xdfff)
                                return fail_at(r->ctx, r->p - 6, "lone low surrogate in \\u escape");
                        if (cp >= 0xd800 && cp <= 0xdbff) {
                                if (r->end - r->p < 6 || r->p[0] != '\\' || r->p[1] != 'u' ||
                                    hex4(r->p + 2, &lo) < 0 || lo < 0xdc00 || lo > 0xdfff)
                                        return fail_at(r->ctx, r->p - 6, "lone high surrogate in \\u escape");
                                r->p += 6;
                                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                        }
                        l = utf8_encode(cp, enc);
                        if (out)
                                memcpy(out + n, enc, l);
                        n += l;
                        continue;
                }
                switch (ch) {
                case '"': case '\\': case '/':
                        break;
                case 'b': ch = '\b'; break;
                case 'f': ch = '\f'; break;
                case 'n': ch = '\n'; break;
                case 'r': ch = '\r'; break;
                case 't': ch = '\t'; break;
                default:
                        return fail_at(r->ctx, r->p - 2, "bad escape in string");
                }
                if (out)
                        out[n] = (char)ch;
                n++;
        }
        if (ret_len)
                *ret_len = n;
        return 0;
}

/* Non-negative JSON integer (no fraction or exponent) below limit. */
static int read_id(struct jreader *r, uint32_t limit, uint32_t *ret) {
        uint64_t v = 0;
        const char *start;

        skip_ws(r);
        start = r->p;
        if (r->p < r->end && *r->p == '-')
                return fail_at(r->ctx, start, "negative token id");
        while (r->p < r->end && *r->p >= '0' && *r->p <= '9') {
                v = v * 10 + (uint64_t)(*r->p - '0');
                if (v >= limit)
                        return fail_at(r->ctx, start, "token id too large");
                r->p++;
        }
        if (r->p == start || (r->p - start > 1 && *start == '0'))
                return fail_at(r->ctx, start, "expected a token id (non-negative integer)");
        if (r->p < r->end && (*r->p == '.' || *r->p == 'e' || *r->p == 'E'))
                return fail_at(r->ctx, start, "token id must be an integer");
        *ret = (uint32_t)v;
        return 0;
}

/* Iterating an object or array: container_open() consumes the opening bracket and says whether the
 * container is empty; container_next(), after each member, consumes ',' (another member follows) or the
 * closing bracket. */
static int container_open(struct jreader *r, char open, const char *what, bool *ret_empty) {
        int k = expect(r, open, what);

        if (k < 0)
                return k;
        skip_ws(r);
        *ret_empty = r->p < r->end && *r->p == (open == '{' ? '}' : ']');
        if (*ret_empty)
                r->p++;
        return 0;
}

static int container_next(struct jreader *r, char close, const char *where, bool *ret_more) {
        skip_ws(r);
        if (r->p < r->end && *r->p == ',') {
                r->p++;
                *ret_more = true;
                return 0;
        }
        *ret_more = false;
        if (r->p >= r->end || *r->p != close) {
                size_t line, col;

                line_col(r->ctx, r->p, &line, &col);
                return fail(r->ctx, -EINVAL, "line %zu column %zu: expected ',' or '%c'%s%s", line, col, close,
                            where ? " in " : "", where ? where : "");
        }
        r->p++;
        return 0;
}

/* Reads an object key and its ':'. The decoded key goes to key[0..cap) when it fits, else key is "". */
static int object_key(struct jreader *r, char *key, size_t cap, const char *where) {
        const char *start;
        size_t len;
        int k;

        skip_ws(r);
        start = r->p;
        k = read_string(r, NULL, &len);
        if (k < 0)
                return k;
        if (key && cap > 0) {
                key[0] = 0;
                if (len < cap) {
                        struct jreader kr = { .ctx = r->ctx, .p = start, .end = r->p };

                        (void)read_string(&kr, key, NULL);
                        key[len] = 0;
                }
        }
        return expect(r, ':', where ? where : "expected ':'");
}

/* Skips any JSON value (loosely: jansson validates what is not vocab/merges afterwards). */
static int skip_value(struct jreader *r, int depth) {
        bool empty, more = true;
        char open;
        int k;

        skip_ws(r);
        if (r->p >= r->end)
                return fail_at(r->ctx, r->p, "unexpected end of file");
        if (depth > MAX_SCAN_DEPTH)
                return fail_at(r->ctx, r->p, "nested too deeply");
        open = *r->p;
        if (open == '"')
                return read_string(r, NULL, NULL);
        if (open != '{' && open != '[') {
                if (!strchr("-0123456789tfn", open))
                        return fail_at(r->ctx, r->p, "unexpected character");
                while (r->p < r->end && strchr("+-.0123456789eEtruefalsn", *r->p))
                        r->p++;
                return 0;
        }
        k = container_open(r, open, "", &empty);
        if (k < 0 || empty)
                return k;
        while (more) {
                if (open == '{') {
                        k = object_key(r, NULL, 0, NULL);
                        if (k < 0)
                                return k;
                }
                k = skip_value(r, depth + 1);
                if (k < 0)
                        return k;
                k = container_next(r, open == '{' ? '}' : ']', NULL, &more);
                if (k < 0)
                        return k;
        }
        return 0;
}

struct span {
        const char *begin, *end;
};

/* The model object: records where the values of "vocab" and "merges" are. */
static int scan_model(struct jreader *r, struct span *vocab, struct span *merges) {
        bool empty, more = true;
        char key[8];
        int k = container_open(r, '{', "model must be an object", &empty);

        if (k < 0 || empty)
                return k;
        while (more) {
                struct span *target = NULL;

                k = object_key(r, key, sizeof(key), NULL);
                if (k < 0)
                        return k;
                if (strcmp(key, "vocab") == 0)
                        target = vocab;
                else if (strcmp(key, "merges") == 0)
                        target = merges;
                skip_ws(r);
                if (target)
                        target->begin = r->p;
                k = skip_value(r, 2);
                if (k < 0)
                        return k;
                if (target)
                        target->end = r->p;
                k = container_next(r, '}', "model", &more);
                if (k < 0)
                        return k;
        }
        return 0;
}

/* Finds the values of model.vocab and model.merges (the last ones, if keys repeat, as jansson does). */
static int find_model_spans(struct load_ctx *c, const char *buf, size_t len, struct span *vocab,
                            struct span *merges) {
        struct jreader r = { .ctx = c, .p = buf, .end = buf + len };
        bool empty, more = true;
        char key[8];
        int k;

        *vocab = (struct span){ 0 };
        *merges = (struct span){ 0 };
        k = container_open(&r, '{', "expected a JSON object at the top level", &empty);
        if (k < 0)
                return k;
        if (empty)
                return fail(c, -EINVAL, "missing \"model\"");
        while (more) {
                k = object_key(&r, key, sizeof(key), NULL);
                if (k < 0)
                        return k;
                skip_ws(&r);
                if (strcmp(key, "model") == 0 && r.p < r.end && *r.p == '{')
                        k = scan_model(&r, vocab, merges);
                else
                        k = skip_value(&r, 1);
                if (k < 0)
                        return k;
                k = container_next(&r, '}', NULL, &more);
                if (k < 0)
                        return k;
        }
        if (!vocab->begin)
                return fail(c, -EINVAL, "model.vocab is missing");
        if (!merges->begin)
                return fail(c, -EINVAL, "model.merges is missing");
        return 0;
}

static void blank_span(struct span *s, char open, char close) {
        char *p = (char *)s->begin;

        memset(p, ' ', (size_t)(s->end - s->begin));
        p[0] = open;
        p[1] = close;
}

/* model.vocab: {"piece": id, ...} straight into the entry arrays and the string arena. */
static int parse_vocab(struct load_ctx *c, struct tokenizer *t, const struct span *s, uint32_t *ret_max_id) {
        struct jreader r = { .ctx = c, .p = s->begin, .end = s->end };
        size_t cap = 0, arena = 0, span_len = (size_t)(s->end - s->begin);
        uint32_t max_id = 0;
        bool empty, more = true;
        int k;

        k = container_open(&r, '{', "model.vocab must be an object", &empty);
        if (k < 0)
                return k;
        if (empty)
                return fail(c, -EINVAL, "model.vocab is empty");
        /* a decoded string is never longer than its JSON text, so the arena never moves */
        t->strings = malloc(span_len + 1);
        if (!t->strings)
                return -ENOMEM;
        while (more) {
                size_t len;
                uint32_t id = 0;

                if (t->n_entries == cap) {
                        size_t ncap = cap ? cap * 2 : 1u << 16;
                        struct vocab_entry *ne = realloc(t->entries, ncap * sizeof(*ne));

                        if (!ne)
                                return -ENOMEM;
                        t->entries = ne;
                        cap = ncap;
                }
                k = read_string(&r, t->strings + arena, &len);
                if (k < 0)
                        return k;
                if (len == 0)
                        return fail_at(c, r.p, "model.vocab has an empty token");
                k = expect(&r, ':', "expected ':' in model.vocab");
                if (k < 0)
                        return k;
                k = read_id(&r, MAX_IDS, &id);
                if (k < 0)
                        return k;
                t->entries[t->n_entries].off = (uint32_t)arena;
                t->entries[t->n_entries].len = (uint32_t)len;
                t->entries[t->n_entries].id = (int32_t)id;
                t->n_entries++;
                arena += len;
                if (id > max_id)
                        max_id = id;
                k = container_next(&r, '}', "model.vocab", &more);
                if (k < 0)
                        return k;
        }
        *ret_max_id = max_id;
        return 0;
}

static bool mixes_char(const char *s, size_t n, char ch) {
        bool has = false, other = false;

        for (size_t i = 0; i < n; i++) {
                if (s[i] == ch)
                        has = true;
                else
                        other = true;
        }
        return has && other;
}

/* model.merges: ["a", "b"] pairs or legacy "a b" strings; rank = position in the list. */
static int parse_merges(struct load_ctx *c, struct tokenizer *t, const struct span *s) {
        struct jreader r = { .ctx = c, .p = s->begin, .end = s->end };
        size_t span_len = (size_t)(s->end - s->begin), cap = 0;
        char *scratch = NULL;
        uint32_t count = 0;
        bool empty, more;
        int k = 0;

        k = container_open(&r, '[', "model.merges must be an array", &empty);
        if (k < 0)
                return k;
        more = !empty;
        /* an upper bound of the number of merges, to size the hash table once: every pair has at least
         * four quote characters, every legacy string two */
        for (const char *q = r.p; q < r.end; q++)
                if (*q == '"')
                        cap++;
        skip_ws(&r);
        cap = (r.p < r.end && *r.p == '[' ? cap / 4 : cap / 2) + 1;
        k = merge_index_init(&t->merges, cap);
        if (k < 0)
                return k;
        t->merge_left = malloc(cap * sizeof(int32_t));
        t->merge_right = malloc(cap * sizeof(int32_t));
        t->merge_result = malloc(cap * sizeof(int32_t));
        t->merge_result_entry = malloc(cap * sizeof(uint32_t));
        scratch = malloc(span_len + 1);
        if (!t->merge_left || !t->merge_right || !t->merge_result || !t->merge_result_entry || !scratch) {
                free(scratch);
                return -ENOMEM;
        }
        t->split_newlines = true;
        t->split_tabs = true;
        while (more) {
                const char *elem;
                size_t la, lb;
                int32_t a, b, m;

                skip_ws(&r);
                elem = r.p;
                if (r.p < r.end && *r.p == '[') {
                        r.p++;
                        k = read_string(&r, scratch, &la);
                        if (k < 0)
                                break;
                        k = expect(&r, ',', "expected ',' in a merge pair");
                        if (k < 0)
                                break;
                        k = read_string(&r, scratch + la, &lb);
                        if (k < 0)
                                break;
                        k = expect(&r, ']', "a merge pair must have exactly two strings");
                        if (k < 0)
                                break;
                } else {
                        char *sp;
                        size_t l;

                        k = read_string(&r, scratch, &l);
                        if (k < 0)
                                break;
                        if (l >= 8 && memcmp(scratch, "#version", 8) == 0)
                                goto next;
                        sp = memchr(scratch, ' ', l);
                        if (!sp || memchr(sp + 1, ' ', l - (size_t)(sp - scratch) - 1)) {
                                k = fail_at(c, elem, "a merge string must be two tokens separated by one space");
                                break;
                        }
                        la = (size_t)(sp - scratch);
                        lb = l - la - 1;
                        memmove(sp, sp + 1, lb);
                }
                {
                        /* three independent cache misses: start them together */
                        uint64_t ha = tok_hash_bytes(scratch, la), hb = tok_hash_bytes(scratch + la, lb);
                        uint64_t hm = tok_hash_bytes(scratch, la + lb);

                        vocab_prefetch(t, ha);
                        vocab_prefetch(t, hb);
                        vocab_prefetch(t, hm);
                        a = vocab_lookup_hashed(t, scratch, la, ha);
                        b = vocab_lookup_hashed(t, scratch + la, lb, hb);
                        m = vocab_find_entry(t, scratch, la + lb, hm);
                }
                if (a < 0 || b < 0 || m < 0) {
                        size_t line, col;

                        line_col(c, elem, &line, &col);
                        k = fail(c, -EINVAL, "line %zu column %zu: model.merges[%u]: %s \"%.*s\" is not in "
                                 "the vocabulary", line, col, count,
                                 a < 0 ? "token" : b < 0 ? "token" : "merged token",
                                 (int)(a < 0 ? la : b < 0 ? lb : la + lb),
                                 a < 0 ? scratch : b < 0 ? scratch + la : scratch);
                        break;
                }
                if (count >= cap) {
                        k = fail_at(c, elem, "model.merges: internal count mismatch");
                        break;
                }
                t->merge_left[count] = a;
                t->merge_right[count] = b;
                t->merge_result_entry[count] = (uint32_t)m;
                t->merge_result[count] = t->entries[m].id;
                merge_index_put(&t->merges, a, b, count);
                if (mixes_char(scratch, la + lb, '\n'))
                        t->split_newlines = false;
                if (mixes_char(scratch, la + lb, '\t'))
                        t->split_tabs = false;
                count++;
        next:
                k = container_next(&r, ']', "model.merges", &more);
                if (k < 0)
                        break;
        }
        free(scratch);
        t->n_merges = count;
        return k;
}

/* ---- the rest of the document, with jansson ---- */

static int get_bool(struct load_ctx *c, json_t *obj, const char *key, const char *where, bool def,
                    bool *ret) {
        json_t *v = json_object_get(obj, key);

        if (!v || json_is_null(v)) {
                *ret = def;
                return 0;
        }
        if (!json_is_boolean(v))
                return fail(c, -EINVAL, "%s.%s must be true or false", where, key);
        *ret = json_is_true(v);
        return 0;
}

/* A one-code-point string, as the Replace normalizer/decoder patterns of Gemma use. */
static int single_code_point(const char *s, uint32_t *ret) {
        size_t n = strlen(s), l = utf8_sequence_len((const uint8_t *)s, n);

        if (l == 0 || l != n)
                return -EINVAL;
        *ret = utf8_decode((const uint8_t *)s, l);
        return 0;
}

static int parse_replace(json_t *node, uint32_t *ret_from, uint32_t *ret_to) {
        json_t *pattern = json_object_get(node, "pattern");
        const char *from = json_string_value(json_object_get(pattern, "String"));
        const char *to = json_string_value(json_object_get(node, "content"));

        if (!from || !to || single_code_point(from, ret_from) < 0 || single_code_point(to, ret_to) < 0)
                return -EINVAL;
        return 0;
}

static int parse_normalizer(struct load_ctx *c, struct tokenizer *t, json_t *root) {
        json_t *n = json_object_get(root, "normalizer");
        json_t *pre = json_object_get(root, "pre_tokenizer");
        const char *type;

        if (n && !json_is_null(n)) {
                type = json_string_value(json_object_get(n, "type"));
                if (!type || strcmp(type, "Replace") != 0 ||
                    parse_replace(n, &t->norm_from, &t->norm_to) < 0)
                        return fail(c, -EOPNOTSUPP, "normalizer: only Replace of one character by one "
                                    "character (Gemma: \" \" -> \"\\u2581\") is supported");
                t->has_normalizer = true;
        }
        if (pre && !json_is_null(pre)) {
                /* Gemma's Split(" ") runs after the normalizer turned every space into U+2581, so it never
                 * matches; anything that could split is not supported. */
                const char *pat = json_string_value(json_object_get(json_object_get(pre, "pattern"), "String"));
                uint32_t cp;

                type = json_string_value(json_object_get(pre, "type"));
                if (!type || strcmp(type, "Split") != 0 || !pat || single_code_point(pat, &cp) < 0 ||
                    !t->has_normalizer || cp != t->norm_from || cp == t->norm_to)
                        return fail(c, -EOPNOTSUPP, "pre_tokenizer: only a Split on the character that the "
                                    "normalizer replaces (a no-op) is supported");
        }
        return 0;
}

static int parse_decoder(struct load_ctx *c, struct tokenizer *t, json_t *root) {
        json_t *d = json_object_get(root, "decoder");
        json_t *list;
        size_t i;
        json_t *step;

        if (!d || json_is_null(d))
                return 0;
        list = json_object_get(d, "decoders");
        if (!json_is_array(list) || strcmp(json_string_value(json_object_get(d, "type")) ?: "", "Sequence"))
                return fail(c, -EOPNOTSUPP, "decoder: only a Sequence of Replace, ByteFallback and Fuse is "
                            "supported");
        json_array_foreach(list, i, step) {
                const char *type = json_string_value(json_object_get(step, "type"));
                uint32_t from, to;

                if (type && strcmp(type, "Replace") == 0 && !t->decode_replace && !t->decode_byte_fallback &&
                    parse_replace(step, &from, &to) == 0 && t->has_normalizer && from == t->norm_to &&
                    to == t->norm_from)
                        t->decode_replace = true;
                else if (type && strcmp(type, "ByteFallback") == 0 && !t->decode_byte_fallback)
                        t->decode_byte_fallback = true;
                else if (type && strcmp(type, "Fuse") == 0)
                        continue;
                else
                        return fail(c, -EOPNOTSUPP, "decoder.decoders[%zu]: unsupported step (supported: "
                                    "Replace reversing the normalizer, then ByteFallback, then Fuse)", i);
        }
        return 0;
}

static int parse_model_options(struct load_ctx *c, struct tokenizer *t, json_t *model) {
        json_t *v;
        int k;

        if (!json_is_object(model))
                return fail(c, -EINVAL, "model must be an object");
        v = json_object_get(model, "type");
        if (v && (!json_is_string(v) || strcmp(json_string_value(v), "BPE") != 0))
                return fail(c, -EOPNOTSUPP, "model.type: only BPE is supported");
        k = get_bool(c, model, "byte_fallback", "model", false, &t->byte_fallback);
        if (k < 0)
                return k;
        k = get_bool(c, model, "fuse_unk", "model", false, &t->fuse_unk);
        if (k < 0)
                return k;
        k = get_bool(c, model, "ignore_merges", "model", false, &t->ignore_merges);
        if (k < 0)
                return k;
        v = json_object_get(model, "dropout");
        if (v && !json_is_null(v) && !(json_is_number(v) && json_number_value(v) == 0.0))
                return fail(c, -EOPNOTSUPP, "model.dropout: BPE dropout is not supported");
        for (const char *const *key = (const char *const[]){ "continuing_subword_prefix",
                                                            "end_of_word_suffix", NULL }; *key; key++) {
                v = json_object_get(model, *key);
                if (v && !json_is_null(v) && !(json_is_string(v) && json_string_length(v) == 0))
                        return fail(c, -EOPNOTSUPP, "model.%s is not supported", *key);
        }
        t->unk_id = -1;
        v = json_object_get(model, "unk_token");
        if (v && !json_is_null(v)) {
                if (!json_is_string(v))
                        return fail(c, -EINVAL, "model.unk_token must be a string");
                t->unk_id = tok_vocab_lookup(t, json_string_value(v), json_string_length(v));
                if (t->unk_id < 0)
                        return fail(c, -EINVAL, "model.unk_token \"%s\" is not in the vocabulary",
                                    json_string_value(v));
        }
        return 0;
}

/* added_tokens, first pass: validate, find the largest id and the total content length. */
static int check_added(struct load_ctx *c, json_t *list, uint32_t *max_id, size_t *ret_total) {
        size_t i, total = 0;
        json_t *tok;
        int k;

        json_array_foreach(list, i, tok) {
                json_t *id = json_object_get(tok, "id");
                json_t *content = json_object_get(tok, "content");
                bool special = false, normalized = false, flag = false;

                if (!json_is_object(tok))
                        return fail(c, -EINVAL, "added_tokens[%zu] must be an object", i);
                if (!json_is_integer(id) || json_integer_value(id) < 0 ||
                    json_integer_value(id) >= (json_int_t)MAX_IDS)
                        return fail(c, -EINVAL, "added_tokens[%zu].id must be an integer in [0, %u)", i,
                                    MAX_IDS);
                if (!json_is_string(content) || json_string_length(content) == 0)
                        return fail(c, -EINVAL, "added_tokens[%zu].content must be a non-empty string", i);
                k = get_bool(c, tok, "special", "added_tokens[]", false, &special);
                if (k < 0)
                        return k;
                k = get_bool(c, tok, "normalized", "added_tokens[]", !special, &normalized);
                if (k < 0)
                        return k;
                if (normalized)
                        return fail(c, -EOPNOTSUPP, "added_tokens[%zu] (\"%s\"): normalized added tokens are "
                                    "not supported", i, json_string_value(content));
                for (const char *const *key = (const char *const[]){ "lstrip", "rstrip", "single_word",
                                                                    NULL }; *key; key++) {
                        k = get_bool(c, tok, *key, "added_tokens[]", false, &flag);
                        if (k < 0)
                                return k;
                        if (flag)
                                return fail(c, -EOPNOTSUPP, "added_tokens[%zu] (\"%s\"): %s is not supported",
                                            i, json_string_value(content), *key);
                }
                if ((uint32_t)json_integer_value(id) > *max_id)
                        *max_id = (uint32_t)json_integer_value(id);
                total += json_string_length(content);
        }
        *ret_total = total;
        return 0;
}

/* Fills t->space_block: the characters that some merge result has right before the space symbol. */
static int find_space_blockers(struct tokenizer *t) {
        char sym[4];
        size_t sl;

        t->split_space = false;
        if (!t->has_normalizer || t->ignore_merges)
                return 0;
        sl = utf8_encode(t->norm_to, sym);
        if (sl == 0 || t->norm_to >= 0x10000 || t->bmp_ids[t->norm_to] < 0)
                return 0;
        t->space_block = calloc(0x10000 / 8, 1);
        if (!t->space_block)
                return -ENOMEM;
        for (uint32_t r = 0; r < t->n_merges; r++) {
                const struct vocab_entry *e = &t->entries[t->merge_result_entry[r]];
                const uint8_t *p = (const uint8_t *)t->strings + e->off;
                size_t n = e->len, prev_len = 0;

                for (size_t i = 0; i < n;) {
                        size_t l = utf8_sequence_len(p + i, n - i);

                        if (l == 0)
                                l = 1;
                        if (l == sl && memcmp(p + i, sym, sl) == 0 && prev_len > 0) {
                                const uint8_t *c = p + i - prev_len;

                                if (!(prev_len == sl && memcmp(c, sym, sl) == 0)) {
                                        uint32_t cp = utf8_decode(c, prev_len);

                                        if (cp < 0x10000)
                                                t->space_block[cp >> 3] |= (uint8_t)(1u << (cp & 7));
                                        else
                                                t->space_block_high = true;
                                }
                        }
                        prev_len = utf8_sequence_len(p + i, n - i);
                        i += l;
                }
        }
        t->split_space = true;
        return 0;
}

/* Per-id tables: pieces (vocabulary strings, then added contents over them), flags, decoded texts,
 * byte tokens and the one-character lookup table. */
static int build_id_tables(struct tokenizer *t, json_t *added, size_t vocab_bytes, size_t added_bytes) {
        size_t i, text_bytes = 0, pos = vocab_bytes;
        json_t *tok;
        char *grown;
        int k;

        t->flags = calloc(t->n_ids, 1);
        t->piece_off = calloc(t->n_ids, sizeof(uint32_t));
        t->piece_len = calloc(t->n_ids, sizeof(uint32_t));
        t->text_off = calloc(t->n_ids, sizeof(uint32_t));
        t->text_len = calloc(t->n_ids, sizeof(uint32_t));
        t->byte_value = calloc(t->n_ids, 1);
        t->bmp_ids = malloc(0x10000 * sizeof(int32_t));
        if (!t->flags || !t->piece_off || !t->piece_len || !t->text_off || !t->text_len || !t->byte_value ||
            !t->bmp_ids)
                return -ENOMEM;
        grown = realloc(t->strings, vocab_bytes + added_bytes + 1);
        if (!grown)
                return -ENOMEM;
        t->strings = grown;

        for (uint32_t e = 0; e < t->n_entries; e++) {
                int32_t id = t->entries[e].id;

                t->piece_off[id] = t->entries[e].off;
                t->piece_len[id] = t->entries[e].len;
                t->flags[id] = TOKF_PRESENT;
        }
        k = trie_init(&t->added, added_bytes);
        if (k < 0)
                return k;
        json_array_foreach(added, i, tok) {
                json_t *content = json_object_get(tok, "content");
                int32_t id = (int32_t)json_integer_value(json_object_get(tok, "id"));
                size_t n = json_string_length(content);

                memcpy(t->strings + pos, json_string_value(content), n);
                t->piece_off[id] = (uint32_t)pos;
                t->piece_len[id] = (uint32_t)n;
                t->flags[id] = TOKF_PRESENT | TOKF_ADDED;
                if (json_is_true(json_object_get(tok, "special")))
                        t->flags[id] |= TOKF_SPECIAL;
                trie_add(&t->added, t->strings + pos, n, id);
                pos += n;
        }

        /* byte tokens as HF's ByteFallback decoder recognises them: "<0x" + two hex digits + ">" */
        for (uint32_t id = 0; id < t->n_ids; id++) {
                const char *p = t->strings + t->piece_off[id];
                char hex[5] = { 0 };

                if (t->piece_len[id] == 6 && memcmp(p, "<0x", 3) == 0 && p[5] == '>' &&
                    strchr("0123456789abcdefABCDEF", p[3]) && strchr("0123456789abcdefABCDEF", p[4]) &&
                    p[3] && p[4]) {
                        memcpy(hex, p + 3, 2);
                        t->flags[id] |= TOKF_BYTE;
                        t->byte_value[id] = (uint8_t)strtoul(hex, NULL, 16);
                }
        }
        /* the encoder's byte fallback looks up "<0xNN>" with upper-case hex, as HF formats it */
        for (int b = 0; b < 256; b++) {
                char name[8];

                snprintf(name, sizeof(name), "<0x%02X>", b);
                t->byte_ids[b] = tok_vocab_lookup(t, name, 6);
        }

        /* decoded texts: the decoder's Replace reverses the normalizer (U+2581 -> space) */
        for (uint32_t id = 0; id < t->n_ids; id++)
                text_bytes += t->piece_len[id];
        if (t->decode_replace && t->norm_from > 0x7f)
                text_bytes *= 4;        /* the replacement may be longer than what it replaces */
        t->texts = malloc(text_bytes + 1);
        if (!t->texts)
                return -ENOMEM;
        pos = 0;
        for (uint32_t id = 0; id < t->n_ids; id++) {
                const uint8_t *p = (const uint8_t *)t->strings + t->piece_off[id];
                size_t n = t->piece_len[id], start = pos;
                char from[4], to[4];
                size_t lf = 0, lt = 0;

                if (t->decode_replace) {
                        lf = utf8_encode(t->norm_to, from);
                        lt = utf8_encode(t->norm_from, to);
                }
                for (size_t j = 0; j < n;) {
                        if (lf && j + lf <= n && memcmp(p + j, from, lf) == 0) {
                                memcpy(t->texts + pos, to, lt);
                                pos += lt;
                                j += lf;
                        } else {
                                t->texts[pos++] = (char)p[j++];
                        }
                }
                t->text_off[id] = (uint32_t)start;
                t->text_len[id] = (uint32_t)(pos - start);
                if (pos - start > t->max_text_len)
                        t->max_text_len = pos - start;
        }

        /* initial symbols: one-character vocabulary entries of the BMP (the lookup gives the id a repeated
         * string resolves to) */
        for (size_t cp = 0; cp < 0x10000; cp++)
                t->bmp_ids[cp] = -1;
        for (uint32_t e = 0; e < t->n_entries; e++) {
                const uint8_t *p = (const uint8_t *)t->strings + t->entries[e].off;
                size_t n = t->entries[e].len;

                if (n <= 3 && utf8_sequence_len(p, n) == n) {
                        uint32_t cp = utf8_decode(p, n);

                        if (cp < 0x10000)
                                t->bmp_ids[cp] = tok_vocab_lookup(t, (const char *)p, n);
                }
        }
        k = find_space_blockers(t);
        if (k < 0)
                return k;
        /* splitting at newline/tab runs is exact only when the character is a vocabulary token of its
         * own (so no unk fusion crosses the boundary) and the normalizer does not produce or eat it */
        if (t->ignore_merges || t->bmp_ids['\n'] < 0 ||
            (t->has_normalizer && (t->norm_from == '\n' || t->norm_to == '\n')))
                t->split_newlines = false;
        if (t->ignore_merges || t->bmp_ids['\t'] < 0 ||
            (t->has_normalizer && (t->norm_from == '\t' || t->norm_to == '\t')))
                t->split_tabs = false;
        return 0;
}

static int read_file(struct load_ctx *c, const char *path, char **ret, size_t *ret_len) {
        struct stat st;
        char *buf;
        size_t got = 0;
        int fd = open(path, O_RDONLY | O_CLOEXEC);

        if (fd < 0)
                return fail(c, -errno, "cannot open: %s", strerror(errno));
        if (fstat(fd, &st) < 0) {
                int r = -errno;

                close(fd);
                return fail(c, r, "cannot stat: %s", strerror(-r));
        }
        if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > MAX_FILE_BYTES) {
                close(fd);
                return fail(c, S_ISREG(st.st_mode) ? -EFBIG : -EINVAL, "not a regular file of at most %u bytes",
                            MAX_FILE_BYTES);
        }
        buf = malloc((size_t)st.st_size + 1);
        if (!buf) {
                close(fd);
                return -ENOMEM;
        }
        while (got < (size_t)st.st_size) {
                ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0) {
                        int r = n < 0 ? -errno : -EIO;

                        free(buf);
                        close(fd);
                        return fail(c, r, "read failed: %s", n < 0 ? strerror(-r) : "file shrank");
                }
                got += (size_t)n;
        }
        close(fd);
        buf[got] = 0;
        *ret = buf;
        *ret_len = got;
        return 0;
}

/* Parses buf[0..len) (modified in place: the vocab and merges text is blanked). */
static int load_from(struct load_ctx *c, char *buf, size_t len, struct tokenizer **ret) {
        struct tokenizer *t = NULL;
        struct span vocab, merges;
        json_t *root = NULL, *added;
        json_error_t jerr;
        uint32_t max_id = 0;
        size_t vocab_bytes, added_bytes = 0;
        int k;

        c->buf = buf;
        c->len = len;
        k = find_model_spans(c, buf, len, &vocab, &merges);
        if (k < 0)
                return k;
        t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        k = parse_vocab(c, t, &vocab, &max_id);
        if (k < 0)
                goto out;
        vocab_bytes = 0;
        for (uint32_t e = 0; e < t->n_entries; e++)
                if (t->entries[e].off + t->entries[e].len > vocab_bytes)
                        vocab_bytes = t->entries[e].off + t->entries[e].len;
        k = str_index_init(&t->vocab, t->n_entries);
        if (k < 0)
                goto out;
        for (uint32_t e = 0; e < t->n_entries; e++)
                str_index_put(t, e);
        k = parse_merges(c, t, &merges);
        if (k < 0)
                goto out;

        /* The big members are in our tables now; blank them so jansson parses only the small rest. The
         * messages above quote line numbers of the original text, so this happens only now. */
        blank_span(&vocab, '{', '}');
        blank_span(&merges, '[', ']');
        root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
        if (!root) {
                k = fail(c, -EINVAL, "line %d column %d: %s", jerr.line, jerr.column, jerr.text);
                goto out;
        }
        if (!json_is_object(root)) {
                k = fail(c, -EINVAL, "top level must be an object");
                goto out;
        }
        k = parse_model_options(c, t, json_object_get(root, "model"));
        if (k < 0)
                goto out;
        k = parse_normalizer(c, t, root);
        if (k < 0)
                goto out;
        k = parse_decoder(c, t, root);
        if (k < 0)
                goto out;
        added = json_object_get(root, "added_tokens");
        if (added && !json_is_null(added) && !json_is_array(added)) {
                k = fail(c, -EINVAL, "added_tokens must be an array");
                goto out;
        }
        k = check_added(c, added, &max_id, &added_bytes);
        if (k < 0)
                goto out;
        t->n_ids = max_id + 1;
        k = build_id_tables(t, added, vocab_bytes, added_bytes);
        if (k < 0)
                goto out;
        if (t->byte_fallback) {
                for (int b = 0; b < 256; b++)
                        if (t->byte_ids[b] < 0) {
                                k = fail(c, -EINVAL, "model.byte_fallback is set but the vocabulary has no "
                                         "<0x%02X>", b);
                                goto out;
                        }
        }
        free(t->merge_result_entry);
        t->merge_result_entry = NULL;
        *ret = t;
        t = NULL;
        k = 0;
out:
        if (k == -ENOMEM)
                fail(c, k, "out of memory");
        json_decref(root);
        tokenizer_free(t);
        return k;
}

static int finish_load(struct load_ctx *c, int k, char **reterr) {
        if (k < 0 && reterr) {
                if (!c->err)
                        fail(c, k, "%s", strerror(-k));
                *reterr = c->err;
                c->err = NULL;
        }
        free(c->err);
        return k;
}

int tokenizer_load(const char *path, struct tokenizer **ret, char **reterr) {
        struct load_ctx c = { .name = path };
        char *buf = NULL;
        size_t len = 0;
        int k;

        k = read_file(&c, path, &buf, &len);
        if (k >= 0)
                k = load_from(&c, buf, len, ret);
        free(buf);
        return finish_load(&c, k, reterr);
}

int tokenizer_load_buffer(const char *data, size_t len, const char *name, struct tokenizer **ret,
                          char **reterr) {
        struct load_ctx c = { .name = name ? name : "tokenizer.json" };
        char *buf;
        int k;

        if (len > MAX_FILE_BYTES)
                return finish_load(&c, fail(&c, -EFBIG, "larger than %u bytes", MAX_FILE_BYTES), reterr);
        buf = malloc(len + 1);
        if (!buf)
                return finish_load(&c, -ENOMEM, reterr);
        memcpy(buf, data, len);
        buf[len] = 0;
        k = load_from(&c, buf, len, ret);
        free(buf);
        return finish_load(&c, k, reterr);
}

void tokenizer_free(struct tokenizer *t) {
        if (!t)
                return;
        free(t->flags);
        free(t->strings);
        free(t->piece_off);
        free(t->piece_len);
        free(t->texts);
        free(t->text_off);
        free(t->text_len);
        free(t->byte_value);
        free(t->entries);
        free(t->vocab.slots);
        free(t->bmp_ids);
        free(t->space_block);
        free(t->merges.keys);
        free(t->merges.ranks);
        free(t->merge_left);
        free(t->merge_right);
        free(t->merge_result);
        free(t->merge_result_entry);
        free(t->added.node_token);
        free(t->added.edge_keys);
        free(t->added.edge_child);
        free(t);
}

/* ---- queries ---- */

size_t tokenizer_vocab_size(const struct tokenizer *t) {
        return t->n_ids;
}

static bool valid_id(const struct tokenizer *t, int32_t id) {
        return id >= 0 && (uint32_t)id < t->n_ids && (t->flags[id] & TOKF_PRESENT);
}

int tokenizer_token_to_piece(const struct tokenizer *t, int32_t id, const char **ret_piece, size_t *ret_len) {
        if (!valid_id(t, id))
                return -EINVAL;
        *ret_piece = t->strings + t->piece_off[id];
        *ret_len = t->piece_len[id];
        return 0;
}

int tokenizer_id_for_len(const struct tokenizer *t, const char *piece, size_t len) {
        size_t ml = 0;
        int32_t id;

        if (len == 0)
                return -ENOENT;
        id = tok_added_match(t, (const uint8_t *)piece, len, &ml);
        if (id >= 0 && ml == len)
                return id;
        id = tok_vocab_lookup(t, piece, len);
        return id >= 0 ? id : -ENOENT;
}

int tokenizer_id_for(const struct tokenizer *t, const char *piece) {
        return tokenizer_id_for_len(t, piece, strlen(piece));
}

bool tokenizer_is_special(const struct tokenizer *t, int32_t id) {
        return valid_id(t, id) && (t->flags[id] & TOKF_SPECIAL);
}

bool tokenizer_is_byte(const struct tokenizer *t, int32_t id) {
        return valid_id(t, id) && (t->flags[id] & TOKF_BYTE);
}
