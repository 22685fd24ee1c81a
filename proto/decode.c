/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Decoders: frame body -> struct proto_msg.
 *
 * Untrusted bytes are first walked by scan_body(), our own bounded msgpack walker, before msgpack-c sees
 * them: msgpack-c allocates an array's or map's element storage from the count in its header, so a
 * 5-byte "array of 4 billion" would ask for ~100 GB. The walker checks that every count fits in the bytes
 * that remain (each element takes at least one byte), bounds nesting and the total number of objects,
 * and requires exactly one top-level map with nothing after it. Only then does msgpack_unpack_next()
 * build the object tree, whose size is now at most ~24 bytes per input byte and PROTO_MAX_OBJECTS nodes.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "proto-internal.h"

/* ---- pre-scan ---- */

static int scan_need(size_t pos, size_t len, size_t n) {
        return n <= len - pos ? 0 : -1;
}

static uint64_t be(const uint8_t *p, unsigned n) {
        uint64_t v = 0;

        for (unsigned i = 0; i < n; i++)
                v = v << 8 | p[i];
        return v;
}

static int scan_body(const uint8_t *p, size_t len, struct proto_diag *d) {
        /* remaining[k]: objects still expected at nesting level k (level 0 is the single top object). */
        uint64_t remaining[PROTO_MAX_DEPTH + 1];
        unsigned level = 0;
        size_t pos = 0;
        uint64_t objects = 0;

        if (len == 0)
                return proto__diag_fail(d, PROTO_CODE_BAD_REQUEST, "frame: empty body");
        if (!((p[0] >= 0x80 && p[0] <= 0x8f) || p[0] == 0xde || p[0] == 0xdf))
                return proto__diag_fail(d, PROTO_CODE_BAD_REQUEST, "frame: top level must be a map");

        remaining[0] = 1;
        for (;;) {
                uint64_t count = 0;     /* elements of a container just opened (objects, map pairs * 2) */
                bool container = false;
                uint8_t c;
                size_t skip = 0;

                while (remaining[level] == 0) {
                        if (level == 0) {
                                if (pos != len)
                                        return proto__diag_fail(d, PROTO_CODE_BAD_REQUEST,
                                                                "frame: %zu trailing bytes after the map",
                                                                len - pos);
                                return 0;
                        }
                        level--;
                }
                remaining[level]--;

                if (pos >= len)
                        return proto__diag_fail(d, PROTO_CODE_BAD_REQUEST,
                                                "frame: msgpack data is truncated");
                if (++objects > PROTO_MAX_OBJECTS)
                        return proto__diag_fail(d, PROTO_CODE_BAD_REQUEST, "frame: more than %u objects",
                                         PROTO_MAX_OBJECTS);
                c = p[pos++];

                if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3)
                        skip = 0;
                else if (c <= 0x8f) {
                        container = true;
                        count = 2u * (c & 0x0fu);
                } else if (c <= 0x9f) {
                        container = true;
                        count = c & 0x0fu;
                } else if (c <= 0xbf)
                        skip = c & 0x1fu;
                else {
                        unsigned n;

                        switch (c) {
                        case 0xc4: case 0xc5: case 0xc6:        /* bin 8/16/32 */
                        case 0xd9: case 0xda: case 0xdb:        /* str 8/16/32 */
                                n = c == 0xc4 || c == 0xd9 ? 1 : c == 0xc5 || c == 0xda ? 2 : 4;
                                if (scan_need(pos, len, n) < 0)
                                        goto truncated;
                                skip = (size_t) be(p + pos, n);
                                pos += n;
                                break;
                        case 0xc7: case 0xc8: case 0xc9:        /* ext 8/16/32: length, type, data */
                                n = c == 0xc7 ? 1 : c == 0xc8 ? 2 : 4;
                                if (scan_need(pos, len, n) < 0)
                                        goto truncated;
                                skip = (size_t) be(p + pos, n);
                                pos += n;
                                if (scan_need(pos, len, 1) < 0)
                                        goto truncated;
                                pos++;
                                break;
                        case 0xca: skip = 4; break;
                        case 0xcb: skip = 8; break;
                        case 0xcc: case 0xd0: skip = 1; break;
                        case 0xcd: case 0xd1: skip = 2; break;
                        case 0xce: case 0xd2: skip = 4; break;
                        case 0xcf: case 0xd3: skip = 8; break;
                        case 0xd4: skip = 2; break;             /* fixext 1/2/4/8/16: type + data */
                        case 0xd5: skip = 3; break;
                        case 0xd6: skip = 5; break;
                        case 0xd7: skip = 9; break;
                        case 0xd8: skip = 17; break;
                        case 0xdc: case 0xdd: case 0xde: case 0xdf:
                                n = c == 0xdc || c == 0xde ? 2 : 4;
                                if (scan_need(pos, len, n) < 0)
                                        goto truncated;
                                count = be(p + pos, n);
                                if (c >= 0xde)
                                        count *= 2;
                                pos += n;
                                container = true;
                                break;
                        default:                                /* 0xc1 is never used */
                                return proto__diag_fail(d, PROTO_CODE_BAD_REQUEST,
                                                        "frame: invalid msgpack byte 0x%02x at offset %zu",
                                                        c, pos - 1);
                        }
                }

                if (!container) {
                        if (scan_need(pos, len, skip) < 0)
                                goto truncated;
                        pos += skip;
                        continue;
                }
                if (count > len - pos)
                        return proto__diag_fail(d, PROTO_CODE_BAD_REQUEST,
                                         "frame: a container of %llu elements does not fit in the frame",
                                         (unsigned long long) count);
                /* This container sits at depth level + 1 (the top-level map is depth 1). */
                if (level + 1 > PROTO_MAX_DEPTH)
                        return proto__diag_fail(d, PROTO_CODE_BAD_REQUEST,
                                                "frame: nested deeper than %u levels",
                                         PROTO_MAX_DEPTH);
                if (count == 0)
                        continue;
                remaining[++level] = count;
        }

truncated:
        return proto__diag_fail(d, PROTO_CODE_BAD_REQUEST, "frame: msgpack data is truncated");
}

/* ---- map access ---- */

struct dec {
        struct proto_diag *diag;
};

static bool key_is(const msgpack_object *k, const char *key) {
        size_t n = strlen(key);

        return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n && memcmp(k->via.str.ptr, key, n) == 0;
}

/* The value of key in map, NULL if absent or nil. A key given twice is an error (which one would win
 * differs between implementations). */
static int map_get(struct dec *d, const msgpack_object *map, const char *path, const char *key,
                   const msgpack_object **ret) {
        const msgpack_object *found = NULL;

        for (uint32_t i = 0; i < map->via.map.size; i++) {
                const msgpack_object_kv *kv = &map->via.map.ptr[i];

                if (!key_is(&kv->key, key))
                        continue;
                if (found)
                        return proto__diag_key(d->diag, path, key, "key given twice");
                found = &kv->val;
        }
        *ret = found && found->type != MSGPACK_OBJECT_NIL ? found : NULL;
        return 0;
}

/* Returns 1 when present (value written), 0 when absent and optional, or -EBADMSG. */
static int get_obj(struct dec *d, const msgpack_object *map, const char *path, const char *key,
                   bool required,
                   msgpack_object_type type, const msgpack_object **ret) {
        const msgpack_object *v;
        int r;

        r = map_get(d, map, path, key, &v);
        if (r < 0)
                return r;
        if (!v) {
                if (required)
                        return proto__diag_key(d->diag, path, key, "missing required key");
                return 0;
        }
        if (v->type != type) {
                msgpack_object want = { .type = type };
                return proto__diag_key(d->diag, path, key, "expected %s, got %s", proto__object_kind(&want),
                                       proto__object_kind(v));
        }
        *ret = v;
        return 1;
}

static int get_u64(struct dec *d, const msgpack_object *map, const char *path, const char *key,
                   bool required,
                   uint64_t min, uint64_t max, uint64_t *ret) {
        const msgpack_object *v;
        int r;

        r = map_get(d, map, path, key, &v);
        if (r < 0)
                return r;
        if (!v) {
                if (required)
                        return proto__diag_key(d->diag, path, key, "missing required key");
                return 0;
        }
        if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
                return proto__diag_key(d->diag, path, key, "must be in %llu..%llu, got %lld",
                                       (unsigned long long) min,
                                (unsigned long long) max, (long long) v->via.i64);
        if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
                return proto__diag_key(d->diag, path, key, "expected integer, got %s",
                                       proto__object_kind(v));
        if (v->via.u64 < min || v->via.u64 > max)
                return proto__diag_key(d->diag, path, key, "must be in %llu..%llu, got %llu",
                                       (unsigned long long) min,
                                (unsigned long long) max, (unsigned long long) v->via.u64);
        *ret = v->via.u64;
        return 1;
}

static int get_u32(struct dec *d, const msgpack_object *map, const char *path, const char *key,
                   bool required,
                   uint32_t min, uint32_t max, uint32_t *ret) {
        uint64_t v;
        int r;

        r = get_u64(d, map, path, key, required, min, max, &v);
        if (r > 0)
                *ret = (uint32_t) v;
        return r;
}

static int get_i32(struct dec *d, const msgpack_object *map, const char *path, const char *key,
                   bool required,
                   int32_t min, int32_t max, int32_t *ret) {
        const msgpack_object *v;
        int64_t x;
        int r;

        r = map_get(d, map, path, key, &v);
        if (r < 0)
                return r;
        if (!v) {
                if (required)
                        return proto__diag_key(d->diag, path, key, "missing required key");
                return 0;
        }
        if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
                if (v->via.u64 > (uint64_t) max)
                        return proto__diag_key(d->diag, path, key, "must be in %d..%d, got %llu", min, max,
                                        (unsigned long long) v->via.u64);
                x = (int64_t) v->via.u64;
        } else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
                x = v->via.i64;
        else
                return proto__diag_key(d->diag, path, key, "expected integer, got %s",
                                       proto__object_kind(v));
        if (x < min || x > max)
                return proto__diag_key(d->diag, path, key, "must be in %d..%d, got %lld", min, max,
                                       (long long) x);
        *ret = (int32_t) x;
        return 1;
}

/* A number (int or float on the wire); range checks are the caller's. */
static int get_double(struct dec *d, const msgpack_object *map, const char *path, const char *key,
                      bool required, double *ret) {
        const msgpack_object *v;
        double x;
        int r;

        r = map_get(d, map, path, key, &v);
        if (r < 0)
                return r;
        if (!v) {
                if (required)
                        return proto__diag_key(d->diag, path, key, "missing required key");
                return 0;
        }
        switch (v->type) {
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
                x = (double) v->via.u64;
                break;
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
                x = (double) v->via.i64;
                break;
        case MSGPACK_OBJECT_FLOAT32:
        case MSGPACK_OBJECT_FLOAT64:
                x = v->via.f64;
                break;
        default:
                return proto__diag_key(d->diag, path, key, "expected a number, got %s",
                                       proto__object_kind(v));
        }
        if (!isfinite(x))
                return proto__diag_key(d->diag, path, key, "must be a finite number");
        *ret = x;
        return 1;
}

static int get_bool(struct dec *d, const msgpack_object *map, const char *path, const char *key, bool *ret) {
        const msgpack_object *v;
        int r;

        r = get_obj(d, map, path, key, false, MSGPACK_OBJECT_BOOLEAN, &v);
        if (r > 0)
                *ret = v->via.boolean;
        return r;
}

static int copy_str(struct dec *d, const msgpack_object *v, const char *path, const char *key,
                    size_t max_bytes,
                    bool allow_empty, char **ret) {
        char *s;

        if (v->via.str.size > max_bytes)
                return proto__diag_key(d->diag, path, key, "longer than %zu bytes", max_bytes);
        if (!allow_empty && v->via.str.size == 0)
                return proto__diag_key(d->diag, path, key, "must not be empty");
        if (!proto_utf8_valid(v->via.str.ptr, v->via.str.size))
                return proto__diag_key(d->diag, path, key, "string is not valid UTF-8 or contains NUL");
        s = malloc(v->via.str.size + 1);
        if (!s)
                return -ENOMEM;
        memcpy(s, v->via.str.ptr, v->via.str.size);
        s[v->via.str.size] = 0;
        *ret = s;
        return 1;
}

static int get_str(struct dec *d, const msgpack_object *map, const char *path, const char *key,
                   bool required,
                   size_t max_bytes, bool allow_empty, char **ret) {
        const msgpack_object *v;
        int r;

        r = get_obj(d, map, path, key, required, MSGPACK_OBJECT_STR, &v);
        if (r <= 0)
                return r;
        return copy_str(d, v, path, key, max_bytes, allow_empty, ret);
}

static int decode_id_array(struct dec *d, const msgpack_object *a, const char *path, const char *key,
                           uint32_t min_n, int32_t **ret, uint32_t *ret_n) {
        int32_t *ids = NULL;
        uint32_t n = a->via.array.size;

        if (n < min_n)
                return proto__diag_key(d->diag, path, key, "must have at least %u element(s)", min_n);
        if (n > PROTO_MAX_TOKEN_IDS)
                return proto__diag_key(d->diag, path, key, "more than %u token ids", PROTO_MAX_TOKEN_IDS);
        if (n > 0) {
                ids = malloc(n * sizeof(*ids));
                if (!ids)
                        return -ENOMEM;
        }
        for (uint32_t i = 0; i < n; i++) {
                const msgpack_object *e = &a->via.array.ptr[i];

                if (e->type != MSGPACK_OBJECT_POSITIVE_INTEGER || e->via.u64 > PROTO_MAX_TOKEN_ID) {
                        free(ids);
                        return proto__diag_key(d->diag, path, key,
                                               "element %u: expected a token id in 0..%d", i,
                                        PROTO_MAX_TOKEN_ID);
                }
                ids[i] = (int32_t) e->via.u64;
        }
        *ret = ids;
        *ret_n = n;
        return 1;
}

static int get_ids(struct dec *d, const msgpack_object *map, const char *path, const char *key,
                   bool required,
                   uint32_t min_n, int32_t **ret, uint32_t *ret_n) {
        const msgpack_object *a;
        int r;

        r = get_obj(d, map, path, key, required, MSGPACK_OBJECT_ARRAY, &a);
        if (r <= 0)
                return r;
        return decode_id_array(d, a, path, key, min_n, ret, ret_n);
}

static int get_id(struct dec *d, const msgpack_object *map, uint64_t *ret) {
        int r = get_u64(d, map, NULL, "id", true, 1, UINT64_MAX, ret);

        if (r > 0 && d->diag) {
                d->diag->has_id = true;
                d->diag->id = *ret;
        }
        return r;
}

static int get_json(struct dec *d, const msgpack_object *map, const char *key, bool required,
                    msgpack_object_type type, json_t **ret) {
        const msgpack_object *v;
        int r;

        r = get_obj(d, map, NULL, key, required, type, &v);
        if (r <= 0)
                return r;
        r = proto_object_to_json(v, PROTO_MAX_DEPTH, key, ret, d->diag);
        return r < 0 ? r : 1;
}

/* ---- pieces shared by several messages ---- */

static int decode_params(struct dec *d, const msgpack_object *map, struct proto_params *ret) {
        static const char P[] = "params";
        struct proto_params p;
        const msgpack_object *m, *stop;
        uint64_t u;
        int r;

        proto_params_init(&p);
        r = get_obj(d, map, NULL, "params", false, MSGPACK_OBJECT_MAP, &m);
        if (r <= 0) {
                if (r == 0)
                        *ret = p;
                return r;
        }

#define FLAG(bit, expr) do {                    \
                r = (expr);                     \
                if (r < 0)                      \
                        goto fail;              \
                if (r > 0)                      \
                        p.present |= (bit);     \
        } while (0)

        FLAG(PROTO_PARAM_MAX_TOKENS, get_u32(d, m, P, "max_tokens", false, 1, PROTO_MAX_MAX_TOKENS,
                                             &p.max_tokens));
        FLAG(PROTO_PARAM_TEMPERATURE, get_double(d, m, P, "temperature", false, &p.temperature));
        FLAG(PROTO_PARAM_TOP_P, get_double(d, m, P, "top_p", false, &p.top_p));
        FLAG(PROTO_PARAM_TOP_K, get_u32(d, m, P, "top_k", false, 0, 1u << 20, &p.top_k));
        FLAG(PROTO_PARAM_MIN_P, get_double(d, m, P, "min_p", false, &p.min_p));
        FLAG(PROTO_PARAM_REPETITION_PENALTY, get_double(d, m, P, "repetition_penalty", false,
                                                         &p.repetition_penalty));
        FLAG(PROTO_PARAM_PRESENCE_PENALTY, get_double(d, m, P, "presence_penalty", false,
                                                      &p.presence_penalty));
        FLAG(PROTO_PARAM_FREQUENCY_PENALTY, get_double(d, m, P, "frequency_penalty", false,
                                                        &p.frequency_penalty));
        FLAG(PROTO_PARAM_SEED, get_u64(d, m, P, "seed", false, 0, UINT64_MAX, &u));
        if (p.present & PROTO_PARAM_SEED)
                p.seed = u;
        FLAG(PROTO_PARAM_LOGPROBS, get_i32(d, m, P, "logprobs", false, 0, PROTO_MAX_LOGPROBS, &p.logprobs));
        FLAG(PROTO_PARAM_PRIORITY, get_i32(d, m, P, "priority", false, PROTO_PRIORITY_MIN,
                                           PROTO_PRIORITY_MAX,
                                           &p.priority));
        FLAG(PROTO_PARAM_DEADLINE_MS, get_u32(d, m, P, "deadline_ms", false, 0, PROTO_MAX_DEADLINE_MS,
                                              &p.deadline_ms));
        FLAG(PROTO_PARAM_STREAM, get_bool(d, m, P, "stream", &p.stream));

        r = get_obj(d, m, P, "stop", false, MSGPACK_OBJECT_ARRAY, &stop);
        if (r < 0)
                goto fail;
        if (r > 0) {
                uint32_t n = stop->via.array.size;

                p.present |= PROTO_PARAM_STOP;
                if (n > PROTO_MAX_STOP) {
                        r = proto__diag_key(d->diag, P, "stop", "more than %u stop strings", PROTO_MAX_STOP);
                        goto fail;
                }
                if (n > 0) {
                        p.stop = calloc(n, sizeof(char *));
                        if (!p.stop) {
                                r = -ENOMEM;
                                goto fail;
                        }
                }
                for (uint32_t i = 0; i < n; i++) {
                        const msgpack_object *e = &stop->via.array.ptr[i];
                        char name[32];

                        (void) snprintf(name, sizeof(name), "stop[%u]", i);
                        if (e->type != MSGPACK_OBJECT_STR) {
                                r = proto__diag_key(d->diag, P, name, "expected string, got %s",
                                                    proto__object_kind(e));
                                goto fail;
                        }
                        r = copy_str(d, e, P, name, PROTO_MAX_STOP_BYTES, false, &p.stop[i]);
                        if (r < 0)
                                goto fail;
                        p.n_stop = i + 1;
                }
        }
#undef FLAG

        r = proto_params_validate(&p, d->diag);
        if (r < 0)
                goto fail;
        *ret = p;
        return 1;

fail:
        proto_params_done(&p);
        return r;
}

static int decode_prompt(struct dec *d, const msgpack_object *map, struct proto_prompt *ret) {
        struct proto_prompt p = {};
        int r, has_text, has_ids;

        has_text = get_str(d, map, NULL, "prompt", false, SIZE_MAX, true, &p.text);
        if (has_text < 0)
                return has_text;
        has_ids = get_ids(d, map, NULL, "prompt_ids", false, 1, &p.ids, &p.n_ids);
        if (has_ids < 0) {
                r = has_ids;
                goto fail;
        }
        if (has_text && has_ids) {
                r = proto__diag_key(d->diag, NULL, "prompt", "give either prompt or prompt_ids, not both");
                goto fail;
        }
        if (!has_text && !has_ids) {
                r = proto__diag_key(d->diag, NULL, "prompt", "missing required key (or prompt_ids)");
                goto fail;
        }
        *ret = p;
        return 1;

fail:
        proto_prompt_done(&p);
        return r;
}

static int decode_logprobs(struct dec *d, const msgpack_object *a, const char *key,
                           struct proto_token_logprob **ret, uint32_t *ret_n) {
        struct proto_token_logprob *lp = NULL;
        uint32_t n = a->via.array.size, done = 0;
        char path[48];
        int r;

        if (n > PROTO_MAX_TOKEN_IDS)
                return proto__diag_key(d->diag, NULL, key, "more than %u entries", PROTO_MAX_TOKEN_IDS);
        if (n > 0) {
                lp = calloc(n, sizeof(*lp));
                if (!lp)
                        return -ENOMEM;
        }
        for (; done < n; done++) {
                const msgpack_object *e = &a->via.array.ptr[done], *top;
                struct proto_token_logprob *t = &lp[done];
                double x;

                proto__path_index(path, sizeof(path), key, done);
                if (e->type != MSGPACK_OBJECT_MAP) {
                        r = proto__diag_key(d->diag, NULL, path, "expected map, got %s",
                                            proto__object_kind(e));
                        goto fail;
                }
                r = get_i32(d, e, path, "id", true, 0, PROTO_MAX_TOKEN_ID, &t->id);
                if (r < 0)
                        goto fail;
                r = get_double(d, e, path, "logprob", true, &x);
                if (r < 0)
                        goto fail;
                if (x > 0 || x < -FLT_MAX) {
                        r = proto__diag_key(d->diag, path, "logprob", "must be in [-FLT_MAX, 0]");
                        goto fail;
                }
                t->logprob = (float) x;
                r = get_obj(d, e, path, "top", false, MSGPACK_OBJECT_ARRAY, &top);
                if (r < 0)
                        goto fail;
                if (r == 0 || top->via.array.size == 0)
                        continue;
                if (top->via.array.size > PROTO_MAX_LOGPROBS) {
                        r = proto__diag_key(d->diag, path, "top", "more than %d entries",
                                            PROTO_MAX_LOGPROBS);
                        goto fail;
                }
                t->top = calloc(top->via.array.size, sizeof(*t->top));
                if (!t->top) {
                        r = -ENOMEM;
                        goto fail;
                }
                t->n_top = top->via.array.size;
                for (uint32_t i = 0; i < t->n_top; i++) {
                        const msgpack_object *te = &top->via.array.ptr[i];
                        char tpath[80];

                        (void) snprintf(tpath, sizeof(tpath), "%s.top[%u]", path, i);
                        if (te->type != MSGPACK_OBJECT_MAP) {
                                r = proto__diag_key(d->diag, NULL, tpath, "expected map, got %s",
                                                    proto__object_kind(te));
                                goto fail;
                        }
                        r = get_i32(d, te, tpath, "id", true, 0, PROTO_MAX_TOKEN_ID, &t->top[i].id);
                        if (r < 0)
                                goto fail;
                        r = get_double(d, te, tpath, "logprob", true, &x);
                        if (r < 0)
                                goto fail;
                        if (x > 0 || x < -FLT_MAX) {
                                r = proto__diag_key(d->diag, tpath, "logprob", "must be in [-FLT_MAX, 0]");
                                goto fail;
                        }
                        t->top[i].logprob = (float) x;
                }
        }
        *ret = lp;
        *ret_n = n;
        return 1;

fail:
        proto_token_logprobs_free(lp, n);
        return r;
}

static int get_logprobs(struct dec *d, const msgpack_object *map, const char *key, bool required,
                        struct proto_token_logprob **ret, uint32_t *ret_n) {
        const msgpack_object *a;
        int r;

        r = get_obj(d, map, NULL, key, required, MSGPACK_OBJECT_ARRAY, &a);
        if (r <= 0)
                return r;
        return decode_logprobs(d, a, key, ret, ret_n);
}

/* ---- requests ---- */

static int decode_hello(struct dec *d, const msgpack_object *map, struct proto_hello *ret) {
        struct proto_hello m = {};
        int r;

        r = get_u32(d, map, NULL, "proto", true, 0, UINT32_MAX, &m.proto);
        if (r < 0)
                return r;
        if (m.proto != PROTO_VERSION)
                return proto__diag_fail(d->diag, PROTO_CODE_UNSUPPORTED_VERSION,
                                 "proto: version %u is not supported (this side speaks %u)", m.proto,
                                 PROTO_VERSION);
        r = get_str(d, map, NULL, "client", false, PROTO_MAX_NAME_BYTES, true, &m.client);
        if (r < 0)
                return r;
        *ret = m;
        return 0;
}

/* generate and score share their shape: id, prompt or prompt_ids, params. */
static int decode_prompt_request(struct dec *d, const msgpack_object *map, uint64_t *ret_id,
                                 struct proto_prompt *ret_prompt, struct proto_params *ret_params) {
        struct proto_prompt prompt;
        uint64_t id;
        int r;

        r = get_id(d, map, &id);
        if (r < 0)
                return r;
        r = decode_prompt(d, map, &prompt);
        if (r < 0)
                return r;
        r = decode_params(d, map, ret_params);
        if (r < 0) {
                proto_prompt_done(&prompt);
                return r;
        }
        *ret_id = id;
        *ret_prompt = prompt;
        return 0;
}

static int decode_generate(struct dec *d, const msgpack_object *map, struct proto_generate *ret) {
        struct proto_generate m = {};
        int r;

        r = decode_prompt_request(d, map, &m.id, &m.prompt, &m.params);
        if (r < 0)
                return r;
        *ret = m;
        return 0;
}

static int decode_chat(struct dec *d, const msgpack_object *map, struct proto_chat *ret) {
        struct proto_chat m = {};
        int r;

        proto_params_init(&m.params);
        r = get_id(d, map, &m.id);
        if (r < 0)
                return r;
        /* Cheap checks before the conversion: bounded counts first. */
        r = get_json(d, map, "messages", true, MSGPACK_OBJECT_ARRAY, &m.messages);
        if (r < 0)
                goto fail;
        r = proto__check_chat_messages(m.messages, d->diag);
        if (r < 0)
                goto fail;
        r = get_json(d, map, "tools", false, MSGPACK_OBJECT_ARRAY, &m.tools);
        if (r < 0)
                goto fail;
        if (m.tools) {
                r = proto__check_chat_tools(m.tools, d->diag);
                if (r < 0)
                        goto fail;
        }
        r = get_bool(d, map, NULL, "thinking", &m.thinking);
        if (r < 0)
                goto fail;
        r = decode_params(d, map, &m.params);
        if (r < 0)
                goto fail;
        *ret = m;
        return 0;

fail:
        proto_chat_done(&m);
        return r;
}

static int decode_id_only(struct dec *d, const msgpack_object *map, uint64_t *ret) {
        uint64_t id;
        int r;

        r = get_id(d, map, &id);
        if (r < 0)
                return r;
        *ret = id;
        return 0;
}

static int decode_tokenize(struct dec *d, const msgpack_object *map, struct proto_tokenize *ret) {
        struct proto_tokenize m = {};
        int r;

        r = get_id(d, map, &m.id);
        if (r < 0)
                return r;
        r = get_str(d, map, NULL, "text", true, SIZE_MAX, true, &m.text);
        if (r < 0)
                return r;
        r = get_bool(d, map, NULL, "special", &m.special);
        if (r < 0) {
                proto_tokenize_done(&m);
                return r;
        }
        *ret = m;
        return 0;
}

static int decode_detokenize(struct dec *d, const msgpack_object *map, struct proto_detokenize *ret) {
        struct proto_detokenize m = {};
        int r;

        r = get_id(d, map, &m.id);
        if (r < 0)
                return r;
        r = get_ids(d, map, NULL, "ids", true, 0, &m.ids, &m.n_ids);
        if (r < 0)
                return r;
        r = get_bool(d, map, NULL, "special", &m.special);
        if (r < 0) {
                proto_detokenize_done(&m);
                return r;
        }
        *ret = m;
        return 0;
}

static int decode_score(struct dec *d, const msgpack_object *map, struct proto_score *ret) {
        struct proto_score m = {};
        int r;

        r = decode_prompt_request(d, map, &m.id, &m.prompt, &m.params);
        if (r < 0)
                return r;
        *ret = m;
        return 0;
}

/* ---- events ---- */

static int decode_welcome(struct dec *d, const msgpack_object *map, struct proto_welcome *ret) {
        struct proto_welcome m = {};
        const msgpack_object *limits, *kv;
        int r;

#define TRY(expr) do { r = (expr); if (r < 0) goto fail; } while (0)
        TRY(get_u32(d, map, NULL, "proto", true, 0, UINT32_MAX, &m.proto));
        TRY(get_str(d, map, NULL, "server_version", true, PROTO_MAX_NAME_BYTES, false, &m.server_version));
        TRY(get_str(d, map, NULL, "model", true, PROTO_MAX_NAME_BYTES, false, &m.model));
        TRY(get_str(d, map, NULL, "architecture", true, PROTO_MAX_NAME_BYTES, false, &m.architecture));
        TRY(get_u32(d, map, NULL, "max_model_len", true, 1, UINT32_MAX, &m.max_model_len));
        TRY(get_obj(d, map, NULL, "limits", true, MSGPACK_OBJECT_MAP, &limits));
        TRY(get_u32(d, limits, "limits", "max_frame_bytes", true, 1, UINT32_MAX, &m.limits.max_frame_bytes));
        TRY(get_u32(d, limits, "limits", "max_inflight", true, 1, UINT32_MAX, &m.limits.max_inflight));
        TRY(get_u32(d, limits, "limits", "max_num_seqs", true, 1, UINT32_MAX, &m.limits.max_num_seqs));
        TRY(get_u32(d, limits, "limits", "max_queue", true, 0, UINT32_MAX, &m.limits.max_queue));
        TRY(get_str(d, map, NULL, "backend", true, PROTO_MAX_NAME_BYTES, false, &m.backend));
        TRY(get_str(d, map, NULL, "device", true, PROTO_MAX_NAME_BYTES, true, &m.device));
        TRY(get_obj(d, map, NULL, "kv", true, MSGPACK_OBJECT_MAP, &kv));
        TRY(get_u64(d, kv, "kv", "tokens", true, 0, UINT64_MAX, &m.kv_tokens));
        TRY(get_u32(d, kv, "kv", "seqs_32k", true, 0, UINT32_MAX, &m.kv_seqs_32k));
#undef TRY
        *ret = m;
        return 0;

fail:
        proto_welcome_done(&m);
        return r;
}

static int decode_started(struct dec *d, const msgpack_object *map, struct proto_started *ret) {
        struct proto_started m = {};
        int r;

        r = get_id(d, map, &m.id);
        if (r >= 0)
                r = get_u32(d, map, NULL, "prompt_tokens", true, 0, UINT32_MAX, &m.prompt_tokens);
        if (r >= 0)
                r = get_u32(d, map, NULL, "queue_position", true, 0, UINT32_MAX, &m.queue_position);
        if (r < 0)
                return r;
        *ret = m;
        return 0;
}

static int decode_delta(struct dec *d, const msgpack_object *map, struct proto_delta *ret) {
        struct proto_delta m = {};
        int r;

        r = get_id(d, map, &m.id);
        if (r >= 0)
                r = get_str(d, map, NULL, "text", false, SIZE_MAX, true, &m.text);
        if (r >= 0)
                r = get_str(d, map, NULL, "reasoning", false, SIZE_MAX, true, &m.reasoning);
        if (r >= 0)
                r = get_ids(d, map, NULL, "token_ids", false, 0, &m.token_ids, &m.n_token_ids);
        if (r >= 0)
                r = get_logprobs(d, map, "logprobs", false, &m.logprobs, &m.n_logprobs);
        if (r >= 0 && m.n_logprobs != 0 && m.n_logprobs != m.n_token_ids)
                r = proto__diag_key(d->diag, NULL, "logprobs", "has %u entries for %u token_ids",
                                    m.n_logprobs,
                             m.n_token_ids);
        if (r < 0) {
                proto_delta_done(&m);
                return r;
        }
        *ret = m;
        return 0;
}

static int decode_tool_call(struct dec *d, const msgpack_object *map, struct proto_tool_call *ret) {
        struct proto_tool_call m = {};
        int r;

        r = get_id(d, map, &m.id);
        if (r >= 0)
                r = get_u32(d, map, NULL, "index", true, 0, UINT32_MAX, &m.index);
        if (r >= 0)
                r = get_str(d, map, NULL, "call_id", false, PROTO_MAX_NAME_BYTES, false, &m.call_id);
        if (r >= 0)
                r = get_str(d, map, NULL, "name", true, PROTO_MAX_NAME_BYTES, false, &m.name);
        if (r >= 0)
                r = get_str(d, map, NULL, "arguments", true, SIZE_MAX, false, &m.arguments);
        if (r >= 0)
                r = proto__check_tool_arguments("arguments", m.arguments, d->diag);
        if (r < 0) {
                proto_tool_call_done(&m);
                return r;
        }
        *ret = m;
        return 0;
}

static int get_ms(struct dec *d, const msgpack_object *map, const char *key, double *ret) {
        int r = get_double(d, map, "timings", key, true, ret);

        if (r > 0 && *ret < 0)
                return proto__diag_key(d->diag, "timings", key, "must be >= 0");
        return r;
}

static int decode_finished(struct dec *d, const msgpack_object *map, struct proto_finished *ret) {
        struct proto_finished m = {};
        const msgpack_object *reason, *usage, *timings, *error;
        char *code = NULL;
        int r;

#define TRY(expr) do { r = (expr); if (r < 0) goto fail; } while (0)
        TRY(get_id(d, map, &m.id));
        TRY(get_obj(d, map, NULL, "reason", true, MSGPACK_OBJECT_STR, &reason));
        {
                char name[16] = "";

                if (reason->via.str.size < sizeof(name))
                        memcpy(name, reason->via.str.ptr, reason->via.str.size);
                m.reason = proto_reason_from_string(name);
                if (m.reason < 0 || memchr(reason->via.str.ptr, 0, reason->via.str.size)) {
                        r = proto__diag_key(d->diag, NULL, "reason",
                                            "must be stop, length, cancelled, deadline or error");
                        goto fail;
                }
        }
        TRY(get_obj(d, map, NULL, "usage", true, MSGPACK_OBJECT_MAP, &usage));
        TRY(get_u32(d, usage, "usage", "prompt_tokens", true, 0, UINT32_MAX, &m.usage.prompt_tokens));
        TRY(get_u32(d, usage, "usage", "cached_tokens", true, 0, UINT32_MAX, &m.usage.cached_tokens));
        TRY(get_u32(d, usage, "usage", "completion_tokens", true, 0, UINT32_MAX,
                    &m.usage.completion_tokens));
        TRY(get_obj(d, map, NULL, "timings", true, MSGPACK_OBJECT_MAP, &timings));
        TRY(get_ms(d, timings, "queue_ms", &m.timings.queue_ms));
        TRY(get_ms(d, timings, "ttft_ms", &m.timings.ttft_ms));
        TRY(get_ms(d, timings, "per_token_ms", &m.timings.per_token_ms));
        TRY(get_u32(d, map, NULL, "preempted", false, 0, UINT32_MAX, &m.preempted));
        if (m.reason == PROTO_REASON_ERROR) {
                TRY(get_obj(d, map, NULL, "error", true, MSGPACK_OBJECT_MAP, &error));
                TRY(get_str(d, error, "error", "code", true, PROTO_MAX_NAME_BYTES, false, &code));
                m.error_code = proto_code_from_string(code);
                TRY(get_str(d, error, "error", "message", true, PROTO_MAX_MESSAGE_BYTES, true,
                            &m.error_message));
        }
#undef TRY
        free(code);
        *ret = m;
        return 0;

fail:
        free(code);
        proto_finished_done(&m);
        return r;
}

static int decode_error(struct dec *d, const msgpack_object *map, struct proto_error *ret) {
        struct proto_error m = {};
        char *code = NULL;
        int r;

        /* id 0 is allowed here: a connection-level error. */
        r = get_u64(d, map, NULL, "id", true, 0, UINT64_MAX, &m.id);
        if (r >= 0)
                r = get_str(d, map, NULL, "code", true, PROTO_MAX_NAME_BYTES, false, &code);
        if (r >= 0)
                r = get_str(d, map, NULL, "message", true, PROTO_MAX_MESSAGE_BYTES, true, &m.message);
        if (r < 0) {
                free(code);
                proto_error_done(&m);
                return r;
        }
        m.code = proto_code_from_string(code);
        free(code);
        *ret = m;
        return 0;
}

static int decode_status_reply(struct dec *d, const msgpack_object *map, struct proto_status_reply *ret) {
        struct proto_status_reply m = {};
        int r;

        r = get_id(d, map, &m.id);
        if (r >= 0)
                r = get_json(d, map, "status", true, MSGPACK_OBJECT_MAP, &m.status);
        if (r < 0)
                return r;
        *ret = m;
        return 0;
}

static int decode_tokenize_reply(struct dec *d, const msgpack_object *map,
                                 struct proto_tokenize_reply *ret) {
        struct proto_tokenize_reply m = {};
        int r;

        r = get_id(d, map, &m.id);
        if (r >= 0)
                r = get_ids(d, map, NULL, "ids", true, 0, &m.ids, &m.n_ids);
        if (r < 0)
                return r;
        *ret = m;
        return 0;
}

static int decode_detokenize_reply(struct dec *d, const msgpack_object *map,
                                   struct proto_detokenize_reply *ret) {
        struct proto_detokenize_reply m = {};
        int r;

        r = get_id(d, map, &m.id);
        if (r >= 0)
                r = get_str(d, map, NULL, "text", true, SIZE_MAX, true, &m.text);
        if (r < 0)
                return r;
        *ret = m;
        return 0;
}

static int decode_score_reply(struct dec *d, const msgpack_object *map, struct proto_score_reply *ret) {
        struct proto_score_reply m = {};
        int r;

        r = get_id(d, map, &m.id);
        if (r >= 0)
                r = get_ids(d, map, NULL, "token_ids", true, 1, &m.token_ids, &m.n_token_ids);
        if (r >= 0)
                r = get_logprobs(d, map, "logprobs", true, &m.logprobs, &m.n_logprobs);
        if (r >= 0 && m.n_logprobs + 1 != m.n_token_ids)
                r = proto__diag_key(d->diag, NULL, "logprobs",
                                    "has %u entries for %u token_ids (want n - 1)",
                             m.n_logprobs, m.n_token_ids);
        if (r < 0) {
                proto_score_reply_done(&m);
                return r;
        }
        *ret = m;
        return 0;
}

/* ---- dispatch ---- */

enum direction { DIR_ANY, DIR_REQUEST, DIR_EVENT };

static int decode_map(struct dec *d, const msgpack_object *map, enum direction dir, struct proto_msg *m) {
        const msgpack_object *t, *idv;
        char name[24] = "";
        enum proto_type type;
        int r;

        r = get_obj(d, map, NULL, "type", true, MSGPACK_OBJECT_STR, &t);
        if (r < 0)
                return r;
        if (t->via.str.size < sizeof(name) && !memchr(t->via.str.ptr, 0, t->via.str.size))
                memcpy(name, t->via.str.ptr, t->via.str.size);
        type = proto_type_from_string(name);

        /* Tie a rejection of the message as a whole to its request when the id is readable. */
        if (d->diag && map_get(d, map, NULL, "id", &idv) == 0 && idv &&
            idv->type == MSGPACK_OBJECT_POSITIVE_INTEGER && idv->via.u64 > 0) {
                d->diag->has_id = true;
                d->diag->id = idv->via.u64;
        }

        if (type < 0) {
                if (name[0] && proto_utf8_valid(name, strlen(name)))
                        return proto__diag_fail(d->diag, PROTO_CODE_UNSUPPORTED,
                                                "type: unknown message type '%s'", name);
                return proto__diag_fail(d->diag, PROTO_CODE_UNSUPPORTED, "type: unknown message type");
        }
        if (dir == DIR_REQUEST && !proto_type_is_request(type))
                return proto__diag_fail(d->diag, PROTO_CODE_UNSUPPORTED,
                                        "type: '%s' is not sent by clients", name);
        if (dir == DIR_EVENT && proto_type_is_request(type))
                return proto__diag_fail(d->diag, PROTO_CODE_UNSUPPORTED,
                                        "type: '%s' is not sent by the daemon", name);

        *m = (struct proto_msg) { .type = type };
        switch (type) {
        case PROTO_TYPE_HELLO:            return decode_hello(d, map, &m->hello);
        case PROTO_TYPE_GENERATE:         return decode_generate(d, map, &m->generate);
        case PROTO_TYPE_CHAT:             return decode_chat(d, map, &m->chat);
        case PROTO_TYPE_CANCEL:           return decode_id_only(d, map, &m->cancel.id);
        case PROTO_TYPE_STATUS:           return decode_id_only(d, map, &m->status.id);
        case PROTO_TYPE_TOKENIZE:         return decode_tokenize(d, map, &m->tokenize);
        case PROTO_TYPE_DETOKENIZE:       return decode_detokenize(d, map, &m->detokenize);
        case PROTO_TYPE_SCORE:            return decode_score(d, map, &m->score);
        case PROTO_TYPE_WELCOME:          return decode_welcome(d, map, &m->welcome);
        case PROTO_TYPE_STARTED:          return decode_started(d, map, &m->started);
        case PROTO_TYPE_DELTA:            return decode_delta(d, map, &m->delta);
        case PROTO_TYPE_TOOL_CALL:        return decode_tool_call(d, map, &m->tool_call);
        case PROTO_TYPE_FINISHED:         return decode_finished(d, map, &m->finished);
        case PROTO_TYPE_ERROR:            return decode_error(d, map, &m->error);
        case PROTO_TYPE_STATUS_REPLY:     return decode_status_reply(d, map, &m->status_reply);
        case PROTO_TYPE_TOKENIZE_REPLY:   return decode_tokenize_reply(d, map, &m->tokenize_reply);
        case PROTO_TYPE_DETOKENIZE_REPLY: return decode_detokenize_reply(d, map, &m->detokenize_reply);
        case PROTO_TYPE_SCORE_REPLY:      return decode_score_reply(d, map, &m->score_reply);
        default:
                return proto__diag_fail(d->diag, PROTO_CODE_UNSUPPORTED, "type: unknown message type");
        }
}

static int decode_dir(const void *body, size_t len, enum direction dir, struct proto_msg *ret,
                      struct proto_diag *reterr) {
        struct dec d = { .diag = reterr };
        msgpack_unpacked up;
        struct proto_msg m;
        size_t off = 0;
        int r;

        if (reterr)
                *reterr = (struct proto_diag) {};
        r = scan_body(body, len, reterr);
        if (r < 0)
                return r;

        msgpack_unpacked_init(&up);
        switch (msgpack_unpack_next(&up, body, len, &off)) {
        case MSGPACK_UNPACK_SUCCESS:
                break;
        case MSGPACK_UNPACK_NOMEM_ERROR:
                r = -ENOMEM;
                (void) proto__diag_fail(reterr, PROTO_CODE_INTERNAL, "out of memory decoding a frame");
                goto out;
        default:
                /* The scan accepted it, so msgpack-c should too; stay safe if they ever disagree. */
                r = proto__diag_fail(reterr, PROTO_CODE_BAD_REQUEST, "frame: invalid msgpack");
                goto out;
        }
        if (up.data.type != MSGPACK_OBJECT_MAP || off != len) {
                r = proto__diag_fail(reterr, PROTO_CODE_BAD_REQUEST, "frame: not a single msgpack map");
                goto out;
        }
        r = decode_map(&d, &up.data, dir, &m);
        if (r == -ENOMEM)
                (void) proto__diag_fail(reterr, PROTO_CODE_INTERNAL, "out of memory decoding a frame");
        if (r >= 0) {
                *ret = m;
                r = 0;
        }
out:
        msgpack_unpacked_destroy(&up);
        return r;
}

int proto_decode(const void *body, size_t len, struct proto_msg *ret, struct proto_diag *reterr) {
        return decode_dir(body, len, DIR_ANY, ret, reterr);
}

int proto_decode_request(const void *body, size_t len, struct proto_msg *ret, struct proto_diag *reterr) {
        return decode_dir(body, len, DIR_REQUEST, ret, reterr);
}

int proto_decode_event(const void *body, size_t len, struct proto_msg *ret, struct proto_diag *reterr) {
        return decode_dir(body, len, DIR_EVENT, ret, reterr);
}
