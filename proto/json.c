/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The JSON bridge: chat messages, tools and the status map travel as msgpack maps but the template engine
 * and gemma4ctl work on jansson values. Also the structural checks of chat messages, shared by the
 * encoder (refuse to send) and the decoder (refuse to accept).
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "proto-internal.h"

struct conv {
        struct proto_diag *diag;
        unsigned max_depth;
        char path[160];
        size_t path_len;
};

static void conv_push(struct conv *c, const char *fmt, const void *arg, size_t arg_len, uint32_t index,
                      size_t *ret_saved) {
        size_t room = sizeof(c->path) - c->path_len;
        int n;

        *ret_saved = c->path_len;
        if (fmt)
                n = snprintf(c->path + c->path_len, room, "[%u]", index);
        else
                n = snprintf(c->path + c->path_len, room, "%s%.*s", c->path_len ? "." : "",
                             (int) (arg_len > 48 ? 48 : arg_len), (const char *) arg);
        if (n > 0)
                c->path_len = (size_t) n >= room ? sizeof(c->path) - 1 : c->path_len + (size_t) n;
}

static void conv_pop(struct conv *c, size_t saved) {
        c->path_len = saved;
        c->path[saved] = 0;
}

static int conv_fail(struct conv *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int conv_fail(struct conv *c, const char *fmt, ...) {
        char msg[160];
        va_list ap;

        va_start(ap, fmt);
        (void) vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        return proto__diag_key(c->diag, NULL, c->path_len ? c->path : "(value)", "%s", msg);
}

static int conv(struct conv *c, const msgpack_object *o, unsigned depth, json_t **ret) {
        json_t *j = NULL;
        size_t saved;
        int r;

        switch (o->type) {
        case MSGPACK_OBJECT_NIL:
                j = json_null();
                break;
        case MSGPACK_OBJECT_BOOLEAN:
                j = json_boolean(o->via.boolean);
                break;
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
                if (o->via.u64 > INT64_MAX)
                        return conv_fail(c, "integer above the JSON range (INT64_MAX)");
                j = json_integer((json_int_t) o->via.u64);
                break;
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
                j = json_integer((json_int_t) o->via.i64);
                break;
        case MSGPACK_OBJECT_FLOAT32:
        case MSGPACK_OBJECT_FLOAT64:
                if (!isfinite(o->via.f64))
                        return conv_fail(c, "number is not finite");
                j = json_real(o->via.f64);
                break;
        case MSGPACK_OBJECT_STR:
                if (!proto_utf8_valid(o->via.str.ptr, o->via.str.size))
                        return conv_fail(c, "string is not valid UTF-8 or contains NUL");
                j = json_stringn_nocheck(o->via.str.ptr, o->via.str.size);
                break;
        case MSGPACK_OBJECT_BIN:
        case MSGPACK_OBJECT_EXT:
                return conv_fail(c, "%s values are not allowed here", proto__object_kind(o));
        case MSGPACK_OBJECT_ARRAY:
                if (depth >= c->max_depth)
                        return conv_fail(c, "nested deeper than %u levels", c->max_depth);
                j = json_array();
                if (!j)
                        return -ENOMEM;
                for (uint32_t i = 0; i < o->via.array.size; i++) {
                        json_t *e;

                        conv_push(c, "[%u]", NULL, 0, i, &saved);
                        r = conv(c, &o->via.array.ptr[i], depth + 1, &e);
                        conv_pop(c, saved);
                        if (r < 0)
                                goto fail;
                        if (json_array_append_new(j, e) < 0) {
                                r = -ENOMEM;
                                goto fail;
                        }
                }
                break;
        case MSGPACK_OBJECT_MAP:
                if (depth >= c->max_depth)
                        return conv_fail(c, "nested deeper than %u levels", c->max_depth);
                j = json_object();
                if (!j)
                        return -ENOMEM;
                for (uint32_t i = 0; i < o->via.map.size; i++) {
                        const msgpack_object_kv *kv = &o->via.map.ptr[i];
                        char key[PROTO_MAX_NAME_BYTES + 1];
                        json_t *e;

                        if (kv->key.type != MSGPACK_OBJECT_STR) {
                                r = conv_fail(c, "map keys must be strings, got %s",
                                              proto__object_kind(&kv->key));
                                goto fail;
                        }
                        conv_push(c, NULL, kv->key.via.str.ptr, kv->key.via.str.size, 0, &saved);
                        if (kv->key.via.str.size > PROTO_MAX_NAME_BYTES ||
                            !proto_utf8_valid(kv->key.via.str.ptr, kv->key.via.str.size)) {
                                r = conv_fail(c, "map key is longer than %u bytes, not UTF-8 or has NUL",
                                              PROTO_MAX_NAME_BYTES);
                                conv_pop(c, saved);
                                goto fail;
                        }
                        memcpy(key, kv->key.via.str.ptr, kv->key.via.str.size);
                        key[kv->key.via.str.size] = 0;
                        if (json_object_get(j, key)) {
                                r = conv_fail(c, "duplicate map key");
                                conv_pop(c, saved);
                                goto fail;
                        }
                        r = conv(c, &kv->val, depth + 1, &e);
                        conv_pop(c, saved);
                        if (r < 0)
                                goto fail;
                        if (json_object_set_new_nocheck(j, key, e) < 0) {
                                r = -ENOMEM;
                                goto fail;
                        }
                }
                break;
        default:
                return conv_fail(c, "%s values are not allowed here", proto__object_kind(o));
        }
        if (!j)
                return -ENOMEM;
        *ret = j;
        return 0;

fail:
        json_decref(j);
        return r;
}

int proto_object_to_json(const msgpack_object *o, unsigned max_depth, const char *path, json_t **ret,
                         struct proto_diag *reterr) {
        struct conv c = { .diag = reterr, .max_depth = max_depth ? max_depth : PROTO_MAX_DEPTH };
        json_t *j;
        int r;

        (void) snprintf(c.path, sizeof(c.path), "%s", path ? path : "");
        c.path_len = strlen(c.path);
        r = conv(&c, o, 1, &j);
        if (r == -ENOMEM)
                (void) proto__diag_fail(reterr, PROTO_CODE_INTERNAL, "out of memory");
        if (r < 0)
                return r;
        *ret = j;
        return 0;
}

static int pack_json(msgpack_packer *pk, const json_t *j, unsigned depth) {
        const char *key;
        json_t *v;
        size_t i;
        int r;

        switch (json_typeof(j)) {
        case JSON_NULL:
                return msgpack_pack_nil(pk) < 0 ? -ENOMEM : 0;
        case JSON_TRUE:
                return msgpack_pack_true(pk) < 0 ? -ENOMEM : 0;
        case JSON_FALSE:
                return msgpack_pack_false(pk) < 0 ? -ENOMEM : 0;
        case JSON_INTEGER:
                return msgpack_pack_int64(pk, json_integer_value(j)) < 0 ? -ENOMEM : 0;
        case JSON_REAL:
                if (!isfinite(json_real_value(j)))
                        return -EINVAL;
                return msgpack_pack_double(pk, json_real_value(j)) < 0 ? -ENOMEM : 0;
        case JSON_STRING: {
                size_t n = json_string_length(j);

                if (!proto_utf8_valid(json_string_value(j), n))
                        return -EINVAL;
                if (msgpack_pack_str_with_body(pk, json_string_value(j), n) < 0)
                        return -ENOMEM;
                return 0;
        }
        case JSON_ARRAY:
                if (depth > PROTO_MAX_DEPTH || json_array_size(j) > UINT32_MAX)
                        return -EINVAL;
                if (msgpack_pack_array(pk, json_array_size(j)) < 0)
                        return -ENOMEM;
                json_array_foreach(j, i, v) {
                        r = pack_json(pk, v, depth + 1);
                        if (r < 0)
                                return r;
                }
                return 0;
        case JSON_OBJECT:
                if (depth > PROTO_MAX_DEPTH || json_object_size(j) > UINT32_MAX)
                        return -EINVAL;
                if (msgpack_pack_map(pk, json_object_size(j)) < 0)
                        return -ENOMEM;
                json_object_foreach((json_t *) j, key, v) {
                        size_t n = strlen(key);

                        if (n > PROTO_MAX_NAME_BYTES || !proto_utf8_valid(key, n))
                                return -EINVAL;
                        if (msgpack_pack_str_with_body(pk, key, n) < 0)
                                return -ENOMEM;
                        r = pack_json(pk, v, depth + 1);
                        if (r < 0)
                                return r;
                }
                return 0;
        }
        return -EINVAL;
}

int proto_pack_json(msgpack_packer *pk, const json_t *j) {
        if (!j)
                return -EINVAL;
        /* Depth 2 for the value: it always sits inside the top-level map of a frame. */
        return pack_json(pk, j, 2);
}

/* ---- structural checks ---- */

static int check_optional_string(const json_t *o, const char *path, const char *key, struct proto_diag *d) {
        const json_t *v = json_object_get(o, key);

        if (v && !json_is_string(v) && !json_is_null(v))
                return proto__diag_key(d, path, key, "expected a string");
        return 0;
}

static int check_array_of_objects(const json_t *o, const char *path, const char *key, struct proto_diag *d) {
        const json_t *v = json_object_get(o, key), *e;
        size_t i;

        if (!v || json_is_null(v))
                return 0;
        if (!json_is_array(v))
                return proto__diag_key(d, path, key, "expected an array");
        json_array_foreach(v, i, e)
                if (!json_is_object(e))
                        return proto__diag_key(d, path, key, "element %zu: expected a map", i);
        return 0;
}

static int check_content(const json_t *m, const char *path, struct proto_diag *d) {
        const json_t *c = json_object_get(m, "content"), *part;
        size_t i;

        if (!c || json_is_null(c) || json_is_string(c))
                return 0;
        if (!json_is_array(c))
                return proto__diag_key(d, path, "content", "expected a string, nil or an array of parts");
        json_array_foreach(c, i, part) {
                char p[96];
                const json_t *t;

                (void) snprintf(p, sizeof(p), "%s.content[%zu]", path, i);
                if (!json_is_object(part))
                        return proto__diag_key(d, NULL, p, "expected a map");
                t = json_object_get(part, "type");
                if (!t)
                        return proto__diag_key(d, p, "type", "missing required key");
                if (!json_is_string(t))
                        return proto__diag_key(d, p, "type", "expected a string");
        }
        return 0;
}

int proto__check_chat_messages(const json_t *messages, struct proto_diag *d) {
        static const char *const string_keys[] = {
                "tool_call_id", "name", "reasoning_content", "reasoning",
        };
        const json_t *m;
        size_t i;
        int r;

        if (!json_is_array(messages))
                return proto__diag_key(d, NULL, "messages", "expected an array");
        if (json_array_size(messages) == 0)
                return proto__diag_key(d, NULL, "messages", "must not be empty");
        if (json_array_size(messages) > PROTO_MAX_MESSAGES)
                return proto__diag_key(d, NULL, "messages", "more than %u messages", PROTO_MAX_MESSAGES);
        json_array_foreach(messages, i, m) {
                char p[48];
                const json_t *role;

                (void) snprintf(p, sizeof(p), "messages[%zu]", i);
                if (!json_is_object(m))
                        return proto__diag_key(d, NULL, p, "expected a map");
                role = json_object_get(m, "role");
                if (!role)
                        return proto__diag_key(d, p, "role", "missing required key");
                if (!json_is_string(role))
                        return proto__diag_key(d, p, "role", "expected a string");
                if (json_string_length(role) == 0 || json_string_length(role) > PROTO_MAX_NAME_BYTES)
                        return proto__diag_key(d, p, "role", "must be 1..%u bytes", PROTO_MAX_NAME_BYTES);
                r = check_content(m, p, d);
                if (r < 0)
                        return r;
                for (size_t k = 0; k < sizeof(string_keys) / sizeof(string_keys[0]); k++) {
                        r = check_optional_string(m, p, string_keys[k], d);
                        if (r < 0)
                                return r;
                }
                r = check_array_of_objects(m, p, "tool_calls", d);
                if (r < 0)
                        return r;
                r = check_array_of_objects(m, p, "tool_responses", d);
                if (r < 0)
                        return r;
        }
        return 0;
}

int proto__check_chat_tools(const json_t *tools, struct proto_diag *d) {
        const json_t *t;
        size_t i;

        if (!json_is_array(tools))
                return proto__diag_key(d, NULL, "tools", "expected an array");
        if (json_array_size(tools) > PROTO_MAX_TOOLS)
                return proto__diag_key(d, NULL, "tools", "more than %u tools", PROTO_MAX_TOOLS);
        json_array_foreach(tools, i, t)
                if (!json_is_object(t))
                        return proto__diag_key(d, NULL, "tools", "element %zu: expected a map", i);
        return 0;
}

int proto__check_tool_arguments(const char *path, const char *arguments, struct proto_diag *d) {
        json_error_t error;
        json_t *j;
        bool object;

        j = json_loads(arguments, 0, &error);
        if (!j)
                return proto__diag_key(d, NULL, path, "not valid JSON (%s at offset %d)", error.text,
                                       error.position);
        object = json_is_object(j);
        json_decref(j);
        if (!object)
                return proto__diag_key(d, NULL, path, "must be a JSON object");
        return 0;
}
