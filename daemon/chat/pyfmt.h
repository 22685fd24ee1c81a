/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * The few Python/Jinja behaviours the Gemma 4 template depends on: str() of scalars (float repr, None),
 * dictsort (case-insensitive key order), str.strip() and str.upper().
 */
#include <stddef.h>

#include <jansson.h>

#define PY_REPR_MAX 40

/* Python str() of a JSON scalar: 42, 1.5, 1e+16, True, False, None. Strings are copied as they are. */
void py_scalar_repr(const json_t *v, char *buf, size_t size);

/* Python repr(float): shortest round-trip digits, exponent form when the exponent is < -4 or >= 16. */
void py_float_repr(double v, char *buf, size_t size);

struct py_sorted_item {
        const char *key;
        size_t key_length;
        json_t *value;
};

/*
 * Jinja's `obj | dictsort`: items ordered by key.lower() (ASCII letters only are folded), equal keys in
 * insertion order. *ret is malloc'd (NULL when empty). Returns 0 or -ENOMEM.
 */
int py_dictsort(const json_t *obj, struct py_sorted_item **ret, size_t *ret_n);

/* Python str.strip() with no argument: the bounds [*start, *end) of s without leading/trailing whitespace. */
void py_strip(const char *s, size_t n, size_t *start, size_t *end);

/* Python str.upper() for ASCII letters; malloc'd copy or NULL. */
char *py_upper(const char *s, size_t n);

/* `list | upper` in Jinja: str(list).upper(), e.g. "['STRING', 'NULL']". -EINVAL for non-plain strings. */
int py_str_list_upper(const json_t *list, char **ret);
