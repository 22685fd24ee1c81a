/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Encoding: split on added tokens (leftmost-longest literal match), then BPE with byte fallback over each
 * remaining segment as one word. The merge loop keeps the symbols in a doubly linked list over arrays and
 * candidate merges in a binary min-heap keyed by (rank << 32 | left position): the lowest rank merges
 * first and, on equal rank, the leftmost pair. Entries made stale by an earlier merge are dropped when
 * popped (the pair at that position no longer matches the merge's two tokens), so every step is
 * O(log n) and a 100k-character segment is not quadratic.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer-internal.h"
#include "utf8.h"

struct work {
        int32_t *ids;           /* symbol token ids; -1 once merged into the left neighbour */
        int32_t *prev, *next;   /* linked list of live symbols; -1 at the ends */
        size_t n, cap;
        uint64_t *heap;
        size_t heap_n, heap_cap;
        bool last_unk;          /* the previous symbol is an unk that may absorb the next (fuse_unk) */
        char *norm;             /* normalized segment, only for ignore_merges */
        size_t norm_n, norm_cap;
};

static void work_free(struct work *w) {
        free(w->ids);
        free(w->prev);
        free(w->next);
        free(w->heap);
        free(w->norm);
}

static int grow(void **p, size_t *cap, size_t want, size_t elem) {
        size_t ncap = *cap ? *cap : 64;
        void *np;

        if (want <= *cap)
                return 0;
        while (ncap < want)
                ncap *= 2;
        np = realloc(*p, ncap * elem);
        if (!np)
                return -ENOMEM;
        *p = np;
        *cap = ncap;
        return 0;
}

static int push_symbol(struct work *w, int32_t id) {
        if (w->n == w->cap) {
                size_t ncap = w->cap ? w->cap * 2 : 256;
                int32_t *a = realloc(w->ids, ncap * sizeof(int32_t));
                int32_t *b = a ? realloc(w->prev, ncap * sizeof(int32_t)) : NULL;
                int32_t *c = b ? realloc(w->next, ncap * sizeof(int32_t)) : NULL;

                if (a)
                        w->ids = a;
                if (b)
                        w->prev = b;
                if (!c)
                        return -ENOMEM;
                w->next = c;
                w->cap = ncap;
        }
        w->ids[w->n++] = id;
        return 0;
}

static int push_unk(const struct tokenizer *t, struct work *w) {
        int k;

        if (t->unk_id < 0)
                return 0;       /* HF drops a character it cannot represent when there is no unk */
        if (t->fuse_unk && w->last_unk)
                return 0;
        k = push_symbol(w, t->unk_id);
        if (k < 0)
                return k;
        w->last_unk = true;
        return 0;
}

static int emit(struct token_ids *out, int32_t id) {
        if (out->n == out->cap) {
                size_t cap = out->cap;
                int k = grow((void **)&out->ids, &cap, out->n + 1, sizeof(int32_t));

                if (k < 0)
                        return k;
                out->cap = cap;
        }
        out->ids[out->n++] = id;
        return 0;
}

static void heap_push(struct work *w, uint64_t v) {
        size_t i = w->heap_n++;

        while (i > 0) {
                size_t parent = (i - 1) / 2;

                if (w->heap[parent] <= v)
                        break;
                w->heap[i] = w->heap[parent];
                i = parent;
        }
        w->heap[i] = v;
}

static uint64_t heap_pop(struct work *w) {
        uint64_t top = w->heap[0], v = w->heap[--w->heap_n];
        size_t i = 0, n = w->heap_n;

        for (;;) {
                size_t c = 2 * i + 1;

                if (c >= n)
                        break;
                if (c + 1 < n && w->heap[c + 1] < w->heap[c])
                        c++;
                if (v <= w->heap[c])
                        break;
                w->heap[i] = w->heap[c];
                i = c;
        }
        if (n > 0)
                w->heap[i] = v;
        return top;
}

static void push_pair(const struct tokenizer *t, struct work *w, int32_t pos) {
        int32_t rank = tok_merge_rank(t, w->ids[pos], w->ids[w->next[pos]]);

        if (rank >= 0)
                heap_push(w, (uint64_t)(uint32_t)rank << 32 | (uint32_t)pos);
}

/* Applies the merges to the w->n symbols and appends the resulting ids to out. */
static int merge_and_emit(const struct tokenizer *t, struct work *w, struct token_ids *out) {
        size_t n = w->n;
        int k;

        if (n == 0)
                return 0;
        if (t->ignore_merges && w->norm_n > 0) {
                int32_t id = tok_vocab_lookup(t, w->norm, w->norm_n);

                if (id >= 0) {
                        w->n = 0;
                        w->norm_n = 0;
                        return emit(out, id);
                }
        }
        w->norm_n = 0;
        if (n > 1) {
                k = grow((void **)&w->heap, &w->heap_cap, 3 * n, sizeof(uint64_t));
                if (k < 0)
                        return k;
                for (size_t i = 0; i < n; i++) {
                        w->prev[i] = (int32_t)i - 1;
                        w->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
                }
                w->heap_n = 0;
                for (size_t i = 0; i + 1 < n; i++)
                        push_pair(t, w, (int32_t)i);
                while (w->heap_n > 0) {
                        uint64_t e = heap_pop(w);
                        int32_t pos = (int32_t)(uint32_t)e, rank = (int32_t)(e >> 32), nx, nn;

                        nx = w->next[pos];
                        if (w->ids[pos] != t->merge_left[rank] || nx < 0 || w->ids[nx] != t->merge_right[rank])
                                continue;       /* stale: this pair changed since it was queued */
                        w->ids[pos] = t->merge_result[rank];
                        w->ids[nx] = -1;
                        nn = w->next[nx];
                        w->next[pos] = nn;
                        if (nn >= 0)
                                w->prev[nn] = pos;
                        if (w->prev[pos] >= 0)
                                push_pair(t, w, w->prev[pos]);
                        if (nn >= 0)
                                push_pair(t, w, pos);
                }
        }
        for (int32_t i = 0; i >= 0; i = n > 1 ? w->next[i] : -1) {
                k = emit(out, w->ids[i]);
                if (k < 0)
                        return k;
        }
        w->n = 0;
        w->last_unk = false;
        return 0;
}

static int add_norm_bytes(struct work *w, const char *p, size_t n) {
        int k = grow((void **)&w->norm, &w->norm_cap, w->norm_n + n, 1);

        if (k < 0)
                return k;
        memcpy(w->norm + w->norm_n, p, n);
        w->norm_n += n;
        return 0;
}

enum { CLASS_OTHER, CLASS_NEWLINE, CLASS_TAB };

/* Encodes p[0..n), which contains no added token, as one BPE word, cut where no merge can cross (see
 * split_newlines and split_space in tokenizer-internal.h) to keep the heaps small. */
static bool space_blocked(const struct tokenizer *t, int64_t cp) {
        if (cp >= 0x10000)
                return t->space_block_high;
        return t->space_block[cp >> 3] & (1u << (cp & 7));
}

static int encode_segment(const struct tokenizer *t, const uint8_t *p, size_t n, struct work *w,
                          struct token_ids *out) {
        int64_t prev_own = -1;  /* previous character, when it is its own vocabulary token */
        int cls = -1;
        int k;

        w->n = 0;
        w->norm_n = 0;
        w->last_unk = false;
        for (size_t i = 0; i < n;) {
                size_t l = p[i] < 0x80 ? 1 : utf8_sequence_len(p + i, n - i);
                int32_t id = -1;
                int c = CLASS_OTHER;
                uint32_t cp;
                char enc[4];
                size_t el;

                if (l == 0) {
                        /* not well-formed UTF-8: the byte becomes its own byte token */
                        if (t->ignore_merges) {
                                k = add_norm_bytes(w, (const char *)p + i, 1);
                                if (k < 0)
                                        return k;
                        }
                        id = t->byte_fallback ? t->byte_ids[p[i]] : -1;
                        if (cls != CLASS_OTHER && cls != -1) {
                                k = merge_and_emit(t, w, out);
                                if (k < 0)
                                        return k;
                        }
                        cls = CLASS_OTHER;
                        prev_own = -1;
                        k = id >= 0 ? push_symbol(w, id) : push_unk(t, w);
                        if (k < 0)
                                return k;
                        if (id >= 0)
                                w->last_unk = false;
                        i++;
                        continue;
                }
                cp = l == 1 ? p[i] : utf8_decode(p + i, l);
                if (t->has_normalizer && cp == t->norm_from)
                        cp = t->norm_to;
                if ((cp == '\n' && t->split_newlines))
                        c = CLASS_NEWLINE;
                else if (cp == '\t' && t->split_tabs)
                        c = CLASS_TAB;
                if ((c != cls && cls != -1) ||
                    (t->split_space && cp == t->norm_to && prev_own >= 0 && prev_own != t->norm_to &&
                     !space_blocked(t, prev_own))) {
                        k = merge_and_emit(t, w, out);
                        if (k < 0)
                                return k;
                }
                cls = c;
                el = utf8_encode(cp, enc);
                if (t->ignore_merges) {
                        k = add_norm_bytes(w, enc, el);
                        if (k < 0)
                                return k;
                }
                id = cp < 0x10000 ? t->bmp_ids[cp] : tok_vocab_lookup(t, enc, el);
                prev_own = id >= 0 ? (int64_t)cp : -1;
                if (id >= 0) {
                        k = push_symbol(w, id);
                        w->last_unk = false;
                } else {
                        /* byte fallback: all of the character's bytes, or unk if one is missing */
                        bool all = t->byte_fallback;

                        for (size_t j = 0; all && j < el; j++)
                                all = t->byte_ids[(uint8_t)enc[j]] >= 0;
                        k = 0;
                        if (all) {
                                for (size_t j = 0; j < el && k >= 0; j++)
                                        k = push_symbol(w, t->byte_ids[(uint8_t)enc[j]]);
                                w->last_unk = false;
                        } else {
                                k = push_unk(t, w);
                        }
                }
                if (k < 0)
                        return k;
                i += l;
        }
        return merge_and_emit(t, w, out);
}

int tokenizer_encode_append(const struct tokenizer *t, const char *text, size_t len, bool parse_special,
                            struct token_ids *out) {
        const uint8_t *p = (const uint8_t *)text;
        struct work w = { 0 };
        size_t n0 = out->n, seg = 0, i = 0;
        int k = 0;

        if (len > INT32_MAX / 4)
                return -E2BIG;          /* symbol positions and heap entries are 32-bit */

        while (i < len) {
                size_t ml = 0;
                int32_t id;

                if (!t->added.first_byte[p[i]]) {
                        i++;
                        continue;
                }
                id = tok_added_match(t, p + i, len - i, &ml);
                if (id < 0) {
                        i++;
                        continue;
                }
                if (!parse_special && (t->flags[id] & TOKF_SPECIAL)) {
                        /* the literal stays text; like HF with split_special_tokens, nothing inside it
                         * is matched again */
                        i += ml;
                        continue;
                }
                k = encode_segment(t, p + seg, i - seg, &w, out);
                if (k < 0)
                        goto out;
                k = emit(out, id);
                if (k < 0)
                        goto out;
                i += ml;
                seg = i;
        }
        k = encode_segment(t, p + seg, len - seg, &w, out);
out:
        if (k < 0)
                out->n = n0;
        work_free(&w);
        return k;
}

int tokenizer_encode(const struct tokenizer *t, const char *text, size_t len, bool parse_special,
                     int32_t **ret_ids, size_t *ret_n) {
        struct token_ids out = { 0 };
        int k = tokenizer_encode_append(t, text, len, parse_special, &out);

        if (k < 0) {
                free(out.ids);
                return k;
        }
        *ret_ids = out.ids;
        *ret_n = out.n;
        return 0;
}
