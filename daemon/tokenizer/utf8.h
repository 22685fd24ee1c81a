/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * Strict UTF-8 helpers (Unicode 15, table 3-7 "well-formed byte sequences"): no overlong forms, no
 * surrogates (U+D800..U+DFFF), nothing above U+10FFFF. Shared by the tokenizer, the detokenizer and the
 * chat code.
 */
#include <stddef.h>
#include <stdint.h>

#define UTF8_REPLACEMENT "\xef\xbf\xbd"        /* U+FFFD */

/* Length (1-4) of the well-formed sequence at the start of p[0..n), or 0 when p starts with an invalid
 * or truncated sequence (n == 0 also gives 0). */
size_t utf8_sequence_len(const uint8_t *p, size_t n);

/* Decodes the well-formed sequence of length len (from utf8_sequence_len) at p. */
uint32_t utf8_decode(const uint8_t *p, size_t len);

/* Writes the UTF-8 form of cp (<= U+10FFFF, not a surrogate) to out; returns its length (1-4) or 0 when
 * cp is not a Unicode scalar value. */
size_t utf8_encode(uint32_t cp, char out[4]);

enum utf8_prefix {
        UTF8_PREFIX_INVALID,            /* no continuation can make p[0..n) well-formed */
        UTF8_PREFIX_INCOMPLETE,         /* a proper prefix of some well-formed sequence */
        UTF8_PREFIX_COMPLETE,           /* exactly one well-formed sequence */
};

/* Classifies p[0..n), 1 <= n <= 4, as the start of one character. */
enum utf8_prefix utf8_classify_prefix(const uint8_t *p, size_t n);

/* True when p[0..n) is entirely well-formed UTF-8. */
int utf8_is_valid(const uint8_t *p, size_t n);
