/* SPDX-License-Identifier: Apache-2.0 */
#include "chat/pyfmt.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void py_float_repr(double v, char *buf, size_t size) {
        char tmp[48], digits[24];
        int prec, exp10, nd = 0, decpt;
        bool neg;
        size_t o = 0;

        if (isnan(v)) {
                snprintf(buf, size, "nan");
                return;
        }
        if (isinf(v)) {
                snprintf(buf, size, v < 0 ? "-inf" : "inf");
                return;
        }
        for (prec = 1; prec <= 17; prec++) {
                snprintf(tmp, sizeof(tmp), "%.*e", prec - 1, v);
                if (strtod(tmp, NULL) == v)
                        break;
        }
        /* tmp is [-]d[.ddd]e[+-]xx */
        const char *p = tmp;
        neg = *p == '-';
        if (neg)
                p++;
        for (; *p && *p != 'e'; p++)
                if (*p >= '0' && *p <= '9')
                        digits[nd++] = *p;
        exp10 = atoi(p + 1);
        while (nd > 1 && digits[nd - 1] == '0')
                nd--;
        decpt = exp10 + 1;

        char out[64];
        if (neg)
                out[o++] = '-';
        if (decpt > 16 || decpt < -3) {
                out[o++] = digits[0];
                if (nd > 1) {
                        out[o++] = '.';
                        for (int i = 1; i < nd; i++)
                                out[o++] = digits[i];
                }
                o += (size_t) snprintf(out + o, sizeof(out) - o, "e%c%02d", exp10 < 0 ? '-' : '+', abs(exp10));
        } else if (decpt <= 0) {
                out[o++] = '0';
                out[o++] = '.';
                for (int i = 0; i < -decpt; i++)
                        out[o++] = '0';
                for (int i = 0; i < nd; i++)
                        out[o++] = digits[i];
        } else {
                for (int i = 0; i < decpt; i++)
                        out[o++] = i < nd ? digits[i] : '0';
                out[o++] = '.';
                if (nd > decpt)
                        for (int i = decpt; i < nd; i++)
                                out[o++] = digits[i];
                else
                        out[o++] = '0';
        }
        out[o] = '\0';
        snprintf(buf, size, "%s", out);
}

void py_scalar_repr(const json_t *v, char *buf, size_t size) {
        switch (json_typeof(v)) {
        case JSON_INTEGER:
                snprintf(buf, size, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
                break;
        case JSON_REAL:
                py_float_repr(json_real_value(v), buf, size);
                break;
        case JSON_TRUE:
                snprintf(buf, size, "True");
                break;
        case JSON_FALSE:
                snprintf(buf, size, "False");
                break;
        case JSON_STRING:
                snprintf(buf, size, "%s", json_string_value(v));
                break;
        default:
                snprintf(buf, size, "None");
                break;
        }
}


struct sort_entry {
        struct py_sorted_item item;
        size_t index;
};

static int lower(int c) {
        return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

static int cmp_entries(const void *a, const void *b) {
        const struct sort_entry *x = a, *y = b;
        size_t n = x->item.key_length < y->item.key_length ? x->item.key_length : y->item.key_length;

        for (size_t i = 0; i < n; i++) {
                int cx = lower((unsigned char) x->item.key[i]), cy = lower((unsigned char) y->item.key[i]);
                if (cx != cy)
                        return cx - cy;
        }
        if (x->item.key_length != y->item.key_length)
                return x->item.key_length < y->item.key_length ? -1 : 1;
        return x->index < y->index ? -1 : x->index > y->index;
}

int py_dictsort(const json_t *obj, struct py_sorted_item **ret, size_t *ret_n) {
        size_t n = json_object_size(obj), i = 0;
        struct sort_entry *e;
        struct py_sorted_item *out;
        void *iter;

        if (n == 0) {
                *ret = NULL;
                *ret_n = 0;
                return 0;
        }
        e = calloc(n, sizeof(*e));
        out = calloc(n, sizeof(*out));
        if (!e || !out) {
                free(e);
                free(out);
                return -ENOMEM;
        }
        for (iter = json_object_iter((json_t *) obj); iter && i < n;
             iter = json_object_iter_next((json_t *) obj, iter), i++) {
                e[i].item.key = json_object_iter_key(iter);
                e[i].item.key_length = json_object_iter_key_len(iter);
                e[i].item.value = json_object_iter_value(iter);
                e[i].index = i;
        }
        qsort(e, i, sizeof(*e), cmp_entries);
        for (size_t k = 0; k < i; k++)
                out[k] = e[k].item;
        free(e);
        *ret = out;
        *ret_n = i;
        return 0;
}

/* Decode one UTF-8 scalar at s (valid input assumed; bad bytes count as one non-space unit). */
static uint32_t decode_at(const unsigned char *s, size_t n, size_t *len) {
        if (s[0] < 0x80 || n < 2) {
                *len = 1;
                return s[0];
        }
        if ((s[0] & 0xE0) == 0xC0) {
                *len = 2;
                return ((uint32_t) (s[0] & 0x1F) << 6) | (s[1] & 0x3F);
        }
        if ((s[0] & 0xF0) == 0xE0 && n >= 3) {
                *len = 3;
                return ((uint32_t) (s[0] & 0x0F) << 12) | ((uint32_t) (s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        }
        if ((s[0] & 0xF8) == 0xF0 && n >= 4) {
                *len = 4;
                return ((uint32_t) (s[0] & 0x07) << 18) | ((uint32_t) (s[1] & 0x3F) << 12) |
                       ((uint32_t) (s[2] & 0x3F) << 6) | (s[3] & 0x3F);
        }
        *len = 1;
        return 0xFFFD;
}

/* str.isspace() in Python 3 */
static bool py_isspace(uint32_t c) {
        return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
               (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
               c == 0x3000;
}

void py_strip(const char *str, size_t n, size_t *start, size_t *end) {
        const unsigned char *s = (const unsigned char *) str;
        size_t a = 0, z = n, len;

        while (a < z && py_isspace(decode_at(s + a, z - a, &len)))
                a += len;
        while (z > a) {
                /* step back to the start of the last character */
                size_t k = z - 1;
                while (k > a && (s[k] & 0xC0) == 0x80 && z - k < 4)
                        k--;
                if (!py_isspace(decode_at(s + k, z - k, &len)) || k + len != z)
                        break;
                z = k;
        }
        *start = a;
        *end = z;
}

char *py_upper(const char *s, size_t n) {
        char *u = malloc(n + 1);
        if (!u)
                return NULL;
        for (size_t i = 0; i < n; i++)
                u[i] = (s[i] >= 'a' && s[i] <= 'z') ? (char) (s[i] - 32) : s[i];
        u[n] = '\0';
        return u;
}

int py_str_list_upper(const json_t *list, char **ret) {
        size_t total = 3;
        char *out, *p;

        for (size_t i = 0; i < json_array_size(list); i++) {
                const json_t *e = json_array_get(list, i);
                if (!json_is_string(e) || strpbrk(json_string_value(e), "'\\") ||
                    strlen(json_string_value(e)) != json_string_length(e))
                        return -EINVAL;
                total += json_string_length(e) + 4;
        }
        out = p = malloc(total);
        if (!out)
                return -ENOMEM;
        *p++ = '[';
        for (size_t i = 0; i < json_array_size(list); i++) {
                const json_t *e = json_array_get(list, i);
                if (i > 0) {
                        *p++ = ',';
                        *p++ = ' ';
                }
                *p++ = '\'';
                for (const char *c = json_string_value(e); *c; c++)
                        *p++ = (*c >= 'a' && *c <= 'z') ? (char) (*c - 32) : *c;
                *p++ = '\'';
        }
        *p++ = ']';
        *p = '\0';
        *ret = out;
        return 0;
}
