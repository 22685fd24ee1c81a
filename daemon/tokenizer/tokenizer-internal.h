/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/* Data structures shared by the tokenizer's loader (tokenizer.c), encoder (encode.c) and decoder
 * (decode.c). Not for use outside daemon/tokenizer. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

enum {
        TOKF_PRESENT = 1 << 0,  /* the id has a string (vocabulary entry or added token) */
        TOKF_BYTE = 1 << 1,     /* "<0xNN>" byte-fallback token */
        TOKF_ADDED = 1 << 2,    /* in added_tokens */
        TOKF_SPECIAL = 1 << 3,  /* added token with "special": true */
};

/* Open-addressing hash set of vocabulary entries keyed by their strings. Each slot holds
 * (hash high 32 bits << 32 | entry index + 1); 0 marks an empty slot. */
struct str_index {
        uint64_t *slots;
        size_t mask;
        size_t n;
};

/* Merge table: (left id, right id) -> merge rank. Ranks index the per-rank arrays in struct tokenizer.
 * Slot key (left << 32 | right) with UINT64_MAX marking an empty slot. */
struct merge_index {
        uint64_t *keys;
        uint32_t *ranks;
        size_t mask;
};

/* Trie of added-token strings for leftmost-longest literal matching. Edges live in one hash table keyed
 * by (node << 8 | byte). */
struct added_trie {
        int32_t *node_token;    /* per node: token id ending here, or -1 */
        uint32_t n_nodes;
        uint64_t *edge_keys;    /* UINT64_MAX = empty */
        uint32_t *edge_child;
        size_t edge_mask;
        uint8_t first_byte[256];        /* 1 when some added token starts with the byte */
};

struct vocab_entry {
        uint32_t off, len;      /* string in tokenizer.strings */
        int32_t id;
};

struct tokenizer {
        uint32_t n_ids;                 /* max id + 1 */
        uint8_t *flags;                 /* TOKF_* per id */

        /* raw token strings (vocabulary form; added tokens' content overrides), and decoded text
         * (normalizer reversed: U+2581 -> space); both indexed by id through offsets */
        char *strings;                  /* arena of all strings below */
        uint32_t *piece_off, *piece_len;
        char *texts;
        uint32_t *text_off, *text_len;
        uint8_t *byte_value;            /* per id: the byte of a TOKF_BYTE token */
        size_t max_text_len;

        /* model vocabulary entries in file order (a string may repeat; the last one wins, as in HF) */
        uint32_t n_entries;
        struct vocab_entry *entries;
        struct str_index vocab;         /* entry strings -> entry index */

        /* initial symbols: one-character tokens of the Basic Multilingual Plane (-1 = not in vocab);
         * other planes go through vocab */
        int32_t *bmp_ids;
        int32_t byte_ids[256];          /* id of "<0xNN>", -1 when absent */

        struct merge_index merges;
        uint32_t n_merges;
        int32_t *merge_left, *merge_right, *merge_result;      /* per rank */
        uint32_t *merge_result_entry;   /* per rank: vocabulary entry of the result (load time only) */

        struct added_trie added;

        /* model options */
        bool byte_fallback;
        bool fuse_unk;
        bool ignore_merges;
        int32_t unk_id;                 /* -1 when the model has no unk token */

        /* normalizer: Replace(one code point -> one code point), or none */
        bool has_normalizer;
        uint32_t norm_from, norm_to;

        /* decoder: Replace(decode_from -> decode_to) then ByteFallback (then Fuse, a no-op here) */
        bool decode_replace;
        bool decode_byte_fallback;

        /* Safe speed-up: no merge result mixes '\n' (or '\t') with other characters, so runs of the
         * character and runs of everything else are encoded independently (smaller heaps). */
        bool split_newlines;
        bool split_tabs;
        /* Same idea for word starts: a boundary between a character c (its own vocabulary token, not
         * the space symbol) and the space symbol U+2581 can be crossed only by a merge result that
         * contains c followed by U+2581. space_block marks those c (Gemma: only '>', from ">▁</"), so
         * the segment is cut before every other space symbol that follows a non-space character.
         * Characters above the BMP are never cut after when space_block_high is set. */
        bool split_space;
        bool space_block_high;
        uint8_t *space_block;           /* bitmap over the BMP */
};

uint64_t tok_hash_bytes(const void *p, size_t n);
uint64_t tok_hash_u64(uint64_t x);

/* Lookups (return -1 when absent). */
int32_t tok_vocab_lookup(const struct tokenizer *t, const char *s, size_t n);
int32_t tok_merge_rank(const struct tokenizer *t, int32_t left, int32_t right);
/* Longest added token starting at p[0..n): its id (and *ret_len), or -1. */
int32_t tok_added_match(const struct tokenizer *t, const uint8_t *p, size_t n, size_t *ret_len);
