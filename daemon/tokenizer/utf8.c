/* SPDX-License-Identifier: Apache-2.0 */
#include "utf8.h"

/* For a lead byte: the sequence length and the allowed range of the second byte (the range is what rules
 * out overlong forms, surrogates and code points above U+10FFFF). Returns 0 for bytes that never start a
 * character. */
static size_t lead_info(uint8_t c, uint8_t *ret_lo, uint8_t *ret_hi) {
        *ret_lo = 0x80;
        *ret_hi = 0xbf;
        if (c < 0x80)
                return 1;
        if (c >= 0xc2 && c <= 0xdf)
                return 2;
        if (c == 0xe0) {
                *ret_lo = 0xa0;
                return 3;
        }
        if (c == 0xed) {
                *ret_hi = 0x9f;
                return 3;
        }
        if (c >= 0xe1 && c <= 0xef)
                return 3;
        if (c == 0xf0) {
                *ret_lo = 0x90;
                return 4;
        }
        if (c >= 0xf1 && c <= 0xf3)
                return 4;
        if (c == 0xf4) {
                *ret_hi = 0x8f;
                return 4;
        }
        return 0;
}

enum utf8_prefix utf8_classify_prefix(const uint8_t *p, size_t n) {
        uint8_t lo, hi;
        size_t len = lead_info(p[0], &lo, &hi);

        if (len == 0 || n > len)
                return UTF8_PREFIX_INVALID;
        for (size_t i = 1; i < n; i++) {
                if (p[i] < lo || p[i] > hi)
                        return UTF8_PREFIX_INVALID;
                lo = 0x80;
                hi = 0xbf;
        }
        return n == len ? UTF8_PREFIX_COMPLETE : UTF8_PREFIX_INCOMPLETE;
}

size_t utf8_sequence_len(const uint8_t *p, size_t n) {
        uint8_t lo, hi;
        size_t len;

        if (n == 0)
                return 0;
        if (p[0] < 0x80)
                return 1;
        len = lead_info(p[0], &lo, &hi);
        if (len == 0 || len > n)
                return 0;
        for (size_t i = 1; i < len; i++) {
                if (p[i] < lo || p[i] > hi)
                        return 0;
                lo = 0x80;
                hi = 0xbf;
        }
        return len;
}

uint32_t utf8_decode(const uint8_t *p, size_t len) {
        switch (len) {
        case 1:
                return p[0];
        case 2:
                return (uint32_t)(p[0] & 0x1f) << 6 | (p[1] & 0x3f);
        case 3:
                return (uint32_t)(p[0] & 0x0f) << 12 | (uint32_t)(p[1] & 0x3f) << 6 | (p[2] & 0x3f);
        default:
                return (uint32_t)(p[0] & 0x07) << 18 | (uint32_t)(p[1] & 0x3f) << 12 |
                       (uint32_t)(p[2] & 0x3f) << 6 | (p[3] & 0x3f);
        }
}

size_t utf8_encode(uint32_t cp, char out[4]) {
        if (cp < 0x80) {
                out[0] = (char)cp;
                return 1;
        }
        if (cp < 0x800) {
                out[0] = (char)(0xc0 | cp >> 6);
                out[1] = (char)(0x80 | (cp & 0x3f));
                return 2;
        }
        if (cp >= 0xd800 && cp <= 0xdfff)
                return 0;
        if (cp < 0x10000) {
                out[0] = (char)(0xe0 | cp >> 12);
                out[1] = (char)(0x80 | (cp >> 6 & 0x3f));
                out[2] = (char)(0x80 | (cp & 0x3f));
                return 3;
        }
        if (cp > 0x10ffff)
                return 0;
        out[0] = (char)(0xf0 | cp >> 18);
        out[1] = (char)(0x80 | (cp >> 12 & 0x3f));
        out[2] = (char)(0x80 | (cp >> 6 & 0x3f));
        out[3] = (char)(0x80 | (cp & 0x3f));
        return 4;
}

int utf8_is_valid(const uint8_t *p, size_t n) {
        size_t i = 0;

        while (i < n) {
                size_t l;

                if (p[i] < 0x80) {
                        i++;
                        continue;
                }
                l = utf8_sequence_len(p + i, n - i);
                if (l == 0)
                        return 0;
                i += l;
        }
        return 1;
}
