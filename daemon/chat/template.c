/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Gemma 4 prompt rendering. The control flow follows the newer official chat template step by step (the
 * comments name the template construct each piece reproduces), because the goal is byte equality with what
 * Hugging Face renders from that template, including its quirks (None for null, case-insensitive key order,
 * `properties:{}` for schema-less objects).
 */
#include "chat/template.h"
#include "chat/special.h"
#include "chat/pyfmt.h"

#include <errno.h>
#include <sys/types.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- output builder ---- */

struct builder {
        char *text;
        size_t length, capacity;
        struct chat_segment *segments;
        size_t n_segments, segments_capacity;
        int error;              /* sticky -ENOMEM */
};

static void put(struct builder *b, enum chat_segment_kind kind, uint32_t id, const char *s, size_t n) {
        if (b->error < 0 || (n == 0 && kind != CHAT_SEGMENT_SPECIAL))
                return;
        if (b->length + n + 1 > b->capacity) {
                size_t cap = b->capacity ? b->capacity : 256;
                while (cap < b->length + n + 1)
                        cap *= 2;
                char *t = realloc(b->text, cap);
                if (!t) {
                        b->error = -ENOMEM;
                        return;
                }
                b->text = t;
                b->capacity = cap;
        }
        struct chat_segment *last = b->n_segments ? &b->segments[b->n_segments - 1] : NULL;
        if (last && last->kind == kind && kind != CHAT_SEGMENT_SPECIAL) {
                last->length += n;
        } else {
                if (b->n_segments == b->segments_capacity) {
                        size_t cap = b->segments_capacity ? b->segments_capacity * 2 : 32;
                        struct chat_segment *s2 = realloc(b->segments, cap * sizeof(*s2));
                        if (!s2) {
                                b->error = -ENOMEM;
                                return;
                        }
                        b->segments = s2;
                        b->segments_capacity = cap;
                }
                b->segments[b->n_segments++] = (struct chat_segment) {
                        .kind = kind, .token_id = id, .offset = b->length, .length = n,
                };
        }
        memcpy(b->text + b->length, s, n);
        b->length += n;
        b->text[b->length] = '\0';
}

/* Template text: trusted, so special-token strings in it become special segments. */
static void tpl(struct builder *b, const char *s) {
        size_t n = strlen(s), start = 0, i = 0;

        while (i < n) {
                uint32_t id;
                const char *lt = memchr(s + i, '<', n - i);
                if (!lt)
                        break;
                i = (size_t) (lt - s);
                size_t m = chat_special_match(s + i, n - i, &id);
                if (m == 0) {
                        i++;
                        continue;
                }
                put(b, CHAT_SEGMENT_TEMPLATE, 0, s + start, i - start);
                put(b, CHAT_SEGMENT_SPECIAL, id, s + i, m);
                i += m;
                start = i;
        }
        put(b, CHAT_SEGMENT_TEMPLATE, 0, s + start, n - start);
}

static void content(struct builder *b, const char *s, size_t n) {
        put(b, CHAT_SEGMENT_CONTENT, 0, s, n);
}

static void quoted_content(struct builder *b, const char *s, size_t n) {
        tpl(b, "<|\"|>");
        content(b, s, n);
        tpl(b, "<|\"|>");
}

static int fail(struct chat_error *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(struct chat_error *err, int code, const char *fmt, ...) {
        if (err) {
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(err->message, sizeof(err->message), fmt, ap);
                va_end(ap);
        }
        return code;
}

/* ---- Jinja-like value access ---- */

/* value['key'] in Jinja: undefined (NULL here) unless value is a mapping that has the key. */
static json_t *get(const json_t *v, const char *key) {
        return json_is_object(v) ? json_object_get(v, key) : NULL;
}

/* Python truthiness; undefined is false. */
static bool truthy(const json_t *v) {
        if (!v)
                return false;
        switch (json_typeof(v)) {
        case JSON_OBJECT:  return json_object_size(v) > 0;
        case JSON_ARRAY:   return json_array_size(v) > 0;
        case JSON_STRING:  return json_string_length(v) > 0;
        case JSON_INTEGER: return json_integer_value(v) != 0;
        case JSON_REAL:    return json_real_value(v) != 0.0;
        case JSON_TRUE:    return true;
        default:           return false;
        }
}

static bool str_eq(const json_t *v, const char *s) {
        return json_is_string(v) && json_string_length(v) == strlen(s) && strcmp(json_string_value(v), s) == 0;
}

/* `{{ v }}`: Python str() of a scalar. Strings are request content; other scalars are our own digits. */
static int emit_py_str(struct builder *b, const json_t *v, struct chat_error *err, const char *path) {
        char buf[PY_REPR_MAX];

        if (!v)
                return 0;
        if (json_is_string(v)) {
                content(b, json_string_value(v), json_string_length(v));
                return 0;
        }
        if (json_is_object(v) || json_is_array(v))
                return fail(err, -EINVAL, "%s: must be a string", path);
        py_scalar_repr(v, buf, sizeof(buf));
        tpl(b, buf);
        return 0;
}

static void format_argument(struct builder *b, const json_t *v, bool escape_keys);

/* `k:v,k:v` in dictsort order, without braces: objects in values, call arguments, response bodies. */
static void format_items_sorted(struct builder *b, const json_t *obj, bool escape_keys) {
        struct py_sorted_item *items;
        size_t n;

        if (py_dictsort(obj, &items, &n) < 0) {
                b->error = -ENOMEM;
                return;
        }
        for (size_t i = 0; i < n; i++) {
                if (i > 0)
                        tpl(b, ",");
                if (escape_keys)
                        quoted_content(b, items[i].key, items[i].key_length);
                else
                        content(b, items[i].key, items[i].key_length);
                tpl(b, ":");
                format_argument(b, items[i].value, escape_keys);
        }
        free(items);
}

/* format_argument(): the template's value serializer. */
static void format_argument(struct builder *b, const json_t *v, bool escape_keys) {
        char buf[PY_REPR_MAX];

        if (json_is_string(v)) {
                quoted_content(b, json_string_value(v), json_string_length(v));
        } else if (json_is_object(v)) {
                tpl(b, "{");
                format_items_sorted(b, v, escape_keys);
                tpl(b, "}");
        } else if (json_is_array(v)) {
                tpl(b, "[");
                for (size_t i = 0; i < json_array_size(v); i++) {
                        if (i > 0)
                                tpl(b, ",");
                        format_argument(b, json_array_get(v, i), escape_keys);
                }
                tpl(b, "]");
        } else if (json_is_boolean(v)) {
                tpl(b, json_is_true(v) ? "true" : "false");
        } else {
                py_scalar_repr(v, buf, sizeof(buf));   /* numbers, None */
                tpl(b, buf);
        }
}

/* ---- tool declarations ---- */

/* `value['type'] | upper`. Returns a malloc'd string ("" when undefined). */
static int type_upper(const json_t *type, char **ret, struct chat_error *err, const char *path) {
        char *s;

        if (!type || json_is_null(type)) {
                s = strdup("");
        } else if (json_is_string(type)) {
                s = py_upper(json_string_value(type), json_string_length(type));
        } else if (json_is_array(type)) {
                /* Jinja stringifies the list first: ['STRING', 'NULL'] */
                int r = py_str_list_upper(type, &s);
                if (r < 0)
                        return fail(err, r, "%s: a type list must hold plain strings", path);
        } else {
                return fail(err, -EINVAL, "%s: must be a string or an array of strings", path);
        }
        if (!s)
                return fail(err, -ENOMEM, "out of memory");
        *ret = s;
        return 0;
}

static int emit_required_list(struct builder *b, const json_t *req, struct chat_error *err, const char *path) {
        if (!json_is_array(req))
                return fail(err, -EINVAL, "%s: must be an array of property names", path);
        tpl(b, "required:[");
        for (size_t i = 0; i < json_array_size(req); i++) {
                char p[256];
                if (i > 0)
                        tpl(b, ",");
                snprintf(p, sizeof(p), "%.200s[%zu]", path, i);
                tpl(b, "<|\"|>");
                int r = emit_py_str(b, json_array_get(req, i), err, p);
                if (r < 0)
                        return r;
                tpl(b, "<|\"|>");
        }
        tpl(b, "]");
        return 0;
}

static int format_parameters(struct builder *b, const json_t *properties, bool filter_keys, int depth,
                             struct chat_error *err, const char *path);

/* The `items:{…}` block of an ARRAY property. */
static int format_items(struct builder *b, const json_t *items, int depth, struct chat_error *err,
                        const char *path) {
        struct py_sorted_item *it;
        size_t n;
        bool first = true;
        int r = 0;

        if (py_dictsort(items, &it, &n) < 0)
                return fail(err, -ENOMEM, "out of memory");
        tpl(b, "items:{");
        for (size_t i = 0; i < n && r >= 0; i++) {
                const json_t *v = it[i].value;
                char p[256];

                if (json_is_null(v))
                        continue;
                if (!first)
                        tpl(b, ",");
                first = false;
                snprintf(p, sizeof(p), "%.200s.%.40s", path, it[i].key);
                if (strcmp(it[i].key, "properties") == 0) {
                        tpl(b, "properties:{");
                        if (json_is_object(v))
                                r = format_parameters(b, v, false, depth + 1, err, p);
                        tpl(b, "}");
                } else if (strcmp(it[i].key, "required") == 0) {
                        r = emit_required_list(b, v, err, p);
                } else if (strcmp(it[i].key, "type") == 0) {
                        if (json_is_string(v)) {
                                char *u = py_upper(json_string_value(v), json_string_length(v));
                                if (!u) {
                                        r = fail(err, -ENOMEM, "out of memory");
                                        break;
                                }
                                tpl(b, "type:");
                                quoted_content(b, u, strlen(u));
                                free(u);
                        } else if (json_is_array(v)) {
                                tpl(b, "type:[");
                                for (size_t k = 0; k < json_array_size(v) && r >= 0; k++) {
                                        const json_t *e = json_array_get(v, k);
                                        if (!json_is_string(e)) {
                                                r = fail(err, -EINVAL, "%s[%zu]: must be a string", p, k);
                                                break;
                                        }
                                        char *u = py_upper(json_string_value(e), json_string_length(e));
                                        if (!u) {
                                                r = fail(err, -ENOMEM, "out of memory");
                                                break;
                                        }
                                        if (k > 0)
                                                tpl(b, ",");
                                        quoted_content(b, u, strlen(u));
                                        free(u);
                                }
                                tpl(b, "]");
                        } else {
                                r = fail(err, -EINVAL, "%s: must be a string or an array of strings", p);
                        }
                } else {
                        content(b, it[i].key, it[i].key_length);
                        tpl(b, ":");
                        format_argument(b, v, true);
                }
        }
        tpl(b, "}");
        free(it);
        return r;
}

/* format_parameters(): the properties of one schema level, sorted case-insensitively by name. */
static int format_parameters(struct builder *b, const json_t *properties, bool filter_keys, int depth,
                             struct chat_error *err, const char *path) {
        static const char *const standard_keys[] = { "description", "type", "properties", "required",
                                                     "nullable" };
        struct py_sorted_item *items;
        size_t n;
        bool first = true;
        int r = 0;

        if (depth > 32)
                return fail(err, -EINVAL, "%s: schema nested deeper than 32 levels", path);
        if (!json_is_object(properties))
                return fail(err, -EINVAL, "%s: must be an object", path);
        if (py_dictsort(properties, &items, &n) < 0)
                return fail(err, -ENOMEM, "out of memory");

        for (size_t i = 0; i < n && r >= 0; i++) {
                const json_t *value = items[i].value;
                bool add_comma = false, skip = false;
                char p[256], *type = NULL;

                if (filter_keys)
                        for (size_t k = 0; k < sizeof(standard_keys) / sizeof(standard_keys[0]); k++)
                                if (strcmp(items[i].key, standard_keys[k]) == 0)
                                        skip = true;
                if (skip)
                        continue;
                snprintf(p, sizeof(p), "%.200s.%.40s", path, items[i].key);
                if (!first)
                        tpl(b, ",");
                first = false;
                content(b, items[i].key, items[i].key_length);
                tpl(b, ":{");

                const json_t *desc = get(value, "description");
                if (truthy(desc)) {
                        char pd[256];
                        snprintf(pd, sizeof(pd), "%.200s.description", p);
                        tpl(b, "description:<|\"|>");
                        r = emit_py_str(b, desc, err, pd);
                        if (r < 0)
                                break;
                        tpl(b, "<|\"|>");
                        add_comma = true;
                }
                char pt[256];
                snprintf(pt, sizeof(pt), "%.200s.type", p);
                r = type_upper(get(value, "type"), &type, err, pt);
                if (r < 0)
                        break;

                if (strcmp(type, "STRING") == 0) {
                        const json_t *en = get(value, "enum");
                        if (truthy(en)) {
                                if (add_comma)
                                        tpl(b, ",");
                                add_comma = true;
                                tpl(b, "enum:");
                                format_argument(b, en, true);
                        }
                } else if (strcmp(type, "ARRAY") == 0) {
                        const json_t *it = get(value, "items");
                        if (json_is_object(it) && json_object_size(it) > 0) {
                                char pi[256];
                                if (add_comma)
                                        tpl(b, ",");
                                add_comma = true;
                                snprintf(pi, sizeof(pi), "%.200s.items", p);
                                r = format_items(b, it, depth, err, pi);
                        }
                }
                if (r >= 0 && truthy(get(value, "nullable"))) {
                        if (add_comma)
                                tpl(b, ",");
                        add_comma = true;
                        tpl(b, "nullable:true");
                }
                if (r >= 0 && strcmp(type, "OBJECT") == 0) {
                        const json_t *props = get(value, "properties");
                        char pp[256];
                        if (add_comma)
                                tpl(b, ",");
                        add_comma = true;
                        tpl(b, "properties:{");
                        if (json_is_object(props)) {
                                snprintf(pp, sizeof(pp), "%.200s.properties", p);
                                r = format_parameters(b, props, false, depth + 1, err, pp);
                        } else {
                                /* no usable `properties`: the template lists the schema's own other keys */
                                r = format_parameters(b, value, true, depth + 1, err, p);
                        }
                        tpl(b, "}");
                        const json_t *req = get(value, "required");
                        if (r >= 0 && truthy(req)) {
                                char pr[256];
                                snprintf(pr, sizeof(pr), "%.200s.required", p);
                                tpl(b, ",");
                                r = emit_required_list(b, req, err, pr);
                        }
                }
                if (r >= 0) {
                        if (add_comma)
                                tpl(b, ",");
                        tpl(b, "type:<|\"|>");
                        content(b, type, strlen(type));
                        tpl(b, "<|\"|>}");
                }
                free(type);
        }
        free(items);
        return r;
}

/* format_function_declaration(), wrapped in <|tool>…<tool|>. */
static int format_tool(struct builder *b, const json_t *tool, size_t index, struct chat_error *err) {
        char path[256];
        const json_t *fn;
        int r;

        if (!json_is_object(tool))
                return fail(err, -EINVAL, "tools[%zu]: must be an object", index);
        fn = json_object_get(tool, "function");
        if (fn) {
                snprintf(path, sizeof(path), "tools[%zu].function", index);
                if (!json_is_object(fn))
                        return fail(err, -EINVAL, "%s: must be an object", path);
        } else {
                /* also accept the flat form {name, description, parameters} */
                snprintf(path, sizeof(path), "tools[%zu]", index);
                fn = tool;
        }

        const json_t *name = json_object_get(fn, "name");
        if (!json_is_string(name) || json_string_length(name) == 0)
                return fail(err, -EINVAL, "%s.name: must be a non-empty string", path);
        const json_t *desc = json_object_get(fn, "description");
        if (desc && !json_is_null(desc) && !json_is_string(desc))
                return fail(err, -EINVAL, "%s.description: must be a string", path);

        tpl(b, "<|tool>declaration:");
        content(b, json_string_value(name), json_string_length(name));
        tpl(b, "{description:<|\"|>");
        if (json_is_string(desc))
                content(b, json_string_value(desc), json_string_length(desc));
        tpl(b, "<|\"|>");

        const json_t *params = json_object_get(fn, "parameters");
        if (truthy(params)) {
                char p[256];
                if (!json_is_object(params))
                        return fail(err, -EINVAL, "%s.parameters: must be a JSON schema object", path);
                tpl(b, ",parameters:{");
                const json_t *props = json_object_get(params, "properties");
                if (truthy(props)) {
                        snprintf(p, sizeof(p), "%.200s.parameters.properties", path);
                        tpl(b, "properties:{");
                        r = format_parameters(b, props, false, 0, err, p);
                        if (r < 0)
                                return r;
                        tpl(b, "},");
                }
                const json_t *req = json_object_get(params, "required");
                if (truthy(req)) {
                        snprintf(p, sizeof(p), "%.200s.parameters.required", path);
                        r = emit_required_list(b, req, err, p);
                        if (r < 0)
                                return r;
                        tpl(b, ",");
                }
                const json_t *type = json_object_get(params, "type");
                if (!truthy(type))
                        /* the template would leave `parameters:{` unclosed */
                        return fail(err, -EINVAL, "%s.parameters.type: missing (use \"object\")", path);
                char *t;
                snprintf(p, sizeof(p), "%.200s.parameters.type", path);
                r = type_upper(type, &t, err, p);
                if (r < 0)
                        return r;
                tpl(b, "type:<|\"|>");
                content(b, t, strlen(t));
                tpl(b, "<|\"|>}");
                free(t);
        }

        const json_t *resp = json_object_get(fn, "response");
        if (resp) {
                char *t = NULL;
                char p[256];
                snprintf(p, sizeof(p), "%.200s.response.type", path);
                if (!json_is_object(resp))
                        return fail(err, -EINVAL, "%s.response: must be an object", path);
                r = type_upper(json_object_get(resp, "type"), &t, err, p);
                if (r < 0)
                        return r;
                if (strcmp(t, "OBJECT") != 0) {
                        free(t);
                        /* the template would leave `response:{` unclosed */
                        return fail(err, -EINVAL, "%s: must be \"object\"", p);
                }
                tpl(b, ",response:{");
                const json_t *rd = json_object_get(resp, "description");
                if (truthy(rd)) {
                        snprintf(p, sizeof(p), "%.200s.response.description", path);
                        tpl(b, "description:<|\"|>");
                        r = emit_py_str(b, rd, err, p);
                        if (r < 0) {
                                free(t);
                                return r;
                        }
                        tpl(b, "<|\"|>,");
                }
                tpl(b, "type:<|\"|>");
                content(b, t, strlen(t));
                tpl(b, "<|\"|>}");
                free(t);
        }
        tpl(b, "}<tool|>");
        return 0;
}

/* ---- messages ---- */

enum role { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT, ROLE_TOOL };

/* What the template's ns.prev_message_type tracks, for the end of the turn and the generation prompt. */
enum prev_type { PREV_NONE, PREV_THINK, PREV_TOOL, PREV_TOOL_CALL, PREV_TOOL_RESPONSE };

struct msg {
        const json_t *json;
        enum role role;
        const char *role_name;  /* as rendered after <|turn> */
};

/* Python str.strip() bounds of s[0..n). */
static void strip_bounds(const char *s, size_t n, size_t *ret_start, size_t *ret_end) {
        size_t start = 0, end = n;
        py_strip(s, n, &start, &end);
        *ret_start = start;
        *ret_end = end;
}

static void emit_trimmed(struct builder *b, const char *s, size_t n) {
        size_t a, z;
        strip_bounds(s, n, &a, &z);
        content(b, s + a, z - a);
}

/*
 * strip_thinking(): drop every <|channel>…<channel|> span (text after a <|channel> up to the next
 * <channel|>), then trim. Works on the raw text, as the template does.
 */
static int emit_strip_thinking(struct builder *b, const char *s, size_t n, bool *ret_nonempty) {
        static const char open[] = "<|channel>", close[] = "<channel|>";
        char *out = malloc(n + 1);
        size_t o = 0, i = 0;

        if (!out)
                return -ENOMEM;
        while (i <= n) {
                /* one part of text.split('<channel|>') */
                const char *part = s + i;
                const char *end = memmem(part, n - i, close, sizeof(close) - 1);
                size_t plen = end ? (size_t) (end - part) : n - i;
                const char *ch = memmem(part, plen, open, sizeof(open) - 1);
                size_t keep = ch ? (size_t) (ch - part) : plen;
                memcpy(out + o, part, keep);
                o += keep;
                if (!end)
                        break;
                i += plen + sizeof(close) - 1;
        }
        size_t a, z;
        strip_bounds(out, o, &a, &z);
        content(b, out + a, z - a);
        *ret_nonempty = z > a;
        free(out);
        return 0;
}

static int parse_role(const json_t *m, size_t index, struct msg *ret, struct chat_error *err) {
        if (!json_is_object(m))
                return fail(err, -EINVAL, "messages[%zu]: must be an object", index);
        const json_t *role = json_object_get(m, "role");
        if (!json_is_string(role))
                return fail(err, -EINVAL, "messages[%zu].role: must be a string", index);
        const char *r = json_string_value(role);
        ret->json = m;
        if (strcmp(r, "system") == 0 || strcmp(r, "developer") == 0) {
                ret->role = ROLE_SYSTEM;
                ret->role_name = "system";
        } else if (strcmp(r, "user") == 0) {
                ret->role = ROLE_USER;
                ret->role_name = "user";
        } else if (strcmp(r, "assistant") == 0) {
                ret->role = ROLE_ASSISTANT;
                ret->role_name = "model";
        } else if (strcmp(r, "tool") == 0) {
                ret->role = ROLE_TOOL;
                ret->role_name = "tool";
        } else {
                return fail(err, -EINVAL,
                            "messages[%zu].role: unknown role \"%.64s\" (system, developer, user, assistant, tool)",
                            index, r);
        }
        if (ret->role != ROLE_ASSISTANT) {
                if (json_object_get(m, "tool_calls") && !json_is_null(json_object_get(m, "tool_calls")))
                        return fail(err, -EINVAL, "messages[%zu].tool_calls: only assistant messages carry tool calls",
                                    index);
                if (json_object_get(m, "tool_responses") && !json_is_null(json_object_get(m, "tool_responses")))
                        return fail(err, -EINVAL,
                                    "messages[%zu].tool_responses: only assistant messages carry tool responses",
                                    index);
        }
        return 0;
}

/* Check a content part list; text parts only (this server has no vision or audio tower). */
static int check_parts(const json_t *parts, size_t index, struct chat_error *err) {
        for (size_t i = 0; i < json_array_size(parts); i++) {
                const json_t *p = json_array_get(parts, i);
                const json_t *type = get(p, "type");
                if (!json_is_object(p))
                        return fail(err, -EINVAL, "messages[%zu].content[%zu]: must be an object", index, i);
                if (!json_is_string(type))
                        return fail(err, -EINVAL, "messages[%zu].content[%zu].type: must be a string", index, i);
                if (str_eq(type, "image") || str_eq(type, "image_url") || str_eq(type, "audio") ||
                    str_eq(type, "input_audio") || str_eq(type, "video"))
                        return fail(err, -EOPNOTSUPP,
                                    "messages[%zu].content[%zu]: %s parts are not supported (text-only model)",
                                    index, i, json_string_value(type));
                if (!str_eq(type, "text"))
                        return fail(err, -EINVAL, "messages[%zu].content[%zu].type: unknown part type \"%.32s\"",
                                    index, i, json_string_value(type));
                if (!json_is_string(get(p, "text")))
                        return fail(err, -EINVAL, "messages[%zu].content[%zu].text: must be a string", index, i);
        }
        return 0;
}

/* Message text for user, system and model turns. ret_nonempty: the captured content is not blank. */
static int emit_content(struct builder *b, const struct msg *m, size_t index, bool *ret_nonempty,
                        struct chat_error *err) {
        const json_t *c = json_object_get(m->json, "content");
        bool nonempty = false;
        int r;

        if (!c || json_is_null(c)) {
                /* nothing */
        } else if (json_is_string(c)) {
                if (m->role == ROLE_ASSISTANT) {
                        r = emit_strip_thinking(b, json_string_value(c), json_string_length(c), &nonempty);
                        if (r < 0)
                                return fail(err, r, "out of memory");
                } else {
                        size_t before = b->length;
                        emit_trimmed(b, json_string_value(c), json_string_length(c));
                        nonempty = b->length > before;
                }
        } else if (json_is_array(c)) {
                r = check_parts(c, index, err);
                if (r < 0)
                        return r;
                for (size_t i = 0; i < json_array_size(c); i++) {
                        const json_t *t = json_object_get(json_array_get(c, i), "text");
                        bool ne = false;
                        if (m->role == ROLE_ASSISTANT) {
                                r = emit_strip_thinking(b, json_string_value(t), json_string_length(t), &ne);
                                if (r < 0)
                                        return fail(err, r, "out of memory");
                        } else {
                                size_t before = b->length;
                                emit_trimmed(b, json_string_value(t), json_string_length(t));
                                ne = b->length > before;
                        }
                        nonempty = nonempty || ne;
                }
        } else {
                return fail(err, -EINVAL, "messages[%zu].content: must be a string, an array of parts or null",
                            index);
        }
        *ret_nonempty = nonempty;
        return 0;
}

/* The first system message: trimmed string, or each text part trimmed and followed by one space. */
static int emit_first_system(struct builder *b, const json_t *m, struct chat_error *err) {
        const json_t *c = json_object_get(m, "content");
        int r;

        if (!c || json_is_null(c))
                return 0;
        if (json_is_string(c)) {
                emit_trimmed(b, json_string_value(c), json_string_length(c));
                return 0;
        }
        if (!json_is_array(c))
                return fail(err, -EINVAL, "messages[0].content: must be a string, an array of parts or null");
        r = check_parts(c, 0, err);
        if (r < 0)
                return r;
        for (size_t i = 0; i < json_array_size(c); i++) {
                const json_t *t = json_object_get(json_array_get(c, i), "text");
                emit_trimmed(b, json_string_value(t), json_string_length(t));
                tpl(b, " ");
        }
        return 0;
}

/* One <|tool_call>call:NAME{…}<tool_call|>. */
static int emit_tool_call(struct builder *b, const json_t *tc, size_t index, size_t k, struct chat_error *err) {
        const json_t *fn = get(tc, "function");
        const json_t *name = get(fn, "name");
        const json_t *args;
        json_t *parsed = NULL;

        if (!json_is_object(tc))
                return fail(err, -EINVAL, "messages[%zu].tool_calls[%zu]: must be an object", index, k);
        if (!json_is_object(fn))
                return fail(err, -EINVAL, "messages[%zu].tool_calls[%zu].function: must be an object", index, k);
        if (!json_is_string(name) || json_string_length(name) == 0)
                return fail(err, -EINVAL, "messages[%zu].tool_calls[%zu].function.name: must be a non-empty string",
                            index, k);
        args = json_object_get(fn, "arguments");
        if (json_is_string(args)) {
                /* OpenAI sends arguments as a JSON string; the template would paste it raw (`f{{"a": 1}}`) */
                size_t a, z;
                strip_bounds(json_string_value(args), json_string_length(args), &a, &z);
                if (z == a) {
                        args = NULL;
                } else {
                        json_error_t jerr;
                        parsed = json_loadb(json_string_value(args), json_string_length(args),
                                            JSON_DECODE_ANY, &jerr);
                        if (!parsed)
                                return fail(err, -EINVAL,
                                            "messages[%zu].tool_calls[%zu].function.arguments: invalid JSON (%s)",
                                            index, k, jerr.text);
                        args = parsed;
                }
        }
        if (args && !json_is_null(args) && !json_is_object(args)) {
                json_decref(parsed);
                return fail(err, -EINVAL, "messages[%zu].tool_calls[%zu].function.arguments: must be an object",
                            index, k);
        }

        tpl(b, "<|tool_call>call:");
        content(b, json_string_value(name), json_string_length(name));
        tpl(b, "{");
        if (json_is_object(args))
                format_items_sorted(b, args, false);
        tpl(b, "}<tool_call|>");
        json_decref(parsed);
        return 0;
}

/* format_tool_response_block(). name is a JSON string. */
static void emit_tool_response(struct builder *b, const json_t *name, const json_t *response) {
        tpl(b, "<|tool_response>response:");
        content(b, json_string_value(name), json_string_length(name));
        if (json_is_object(response)) {
                tpl(b, "{");
                format_items_sorted(b, response, false);
                tpl(b, "}");
        } else {
                tpl(b, "{value:");
                format_argument(b, response ? response : json_null(), false);
                tpl(b, "}");
        }
        tpl(b, "<tool_response|>");
}

/* `x | default('unknown', true)` for a name that must end up a string. */
static int name_or_unknown(const json_t *v, const json_t *unknown, const json_t **ret, struct chat_error *err,
                           const char *path) {
        if (!truthy(v)) {
                *ret = unknown;
                return 0;
        }
        if (!json_is_string(v))
                return fail(err, -EINVAL, "%s: must be a string", path);
        *ret = v;
        return 0;
}

/* Google native: tool_responses:[{name, response}] on the assistant message. */
static int emit_native_responses(struct builder *b, const json_t *trs, size_t index, const json_t *unknown,
                                 struct chat_error *err) {
        if (!json_is_array(trs))
                return fail(err, -EINVAL, "messages[%zu].tool_responses: must be an array", index);
        for (size_t i = 0; i < json_array_size(trs); i++) {
                const json_t *tr = json_array_get(trs, i), *name = unknown;
                char p[256];
                if (!json_is_object(tr))
                        return fail(err, -EINVAL, "messages[%zu].tool_responses[%zu]: must be an object", index, i);
                snprintf(p, sizeof(p), "messages[%zu].tool_responses[%zu].name", index, i);
                int r = name_or_unknown(json_object_get(tr, "name"), unknown, &name, err, p);
                if (r < 0)
                        return r;
                if (!json_object_get(tr, "response"))
                        return fail(err, -EINVAL, "messages[%zu].tool_responses[%zu].response: missing", index, i);
                emit_tool_response(b, name, json_object_get(tr, "response"));
        }
        return 0;
}

/* OpenAI: the role:"tool" messages that follow, folded into this model turn. */
static int emit_following_tool_messages(struct builder *b, const struct msg *msgs, size_t n, size_t at,
                                        size_t base, const json_t *unknown, bool *ret_any,
                                        struct chat_error *err) {
        const json_t *calls = json_object_get(msgs[at].json, "tool_calls");
        bool any = false;
        int r;

        for (size_t k = at + 1; k < n && msgs[k].role == ROLE_TOOL; k++) {
                const json_t *follow = msgs[k].json, *name = unknown, *body;
                char p[256];
                size_t index = base + k;

                snprintf(p, sizeof(p), "messages[%zu].name", index);
                r = name_or_unknown(json_object_get(follow, "name"), unknown, &name, err, p);
                if (r < 0)
                        return r;
                /* resolve tool_call_id; as in Python, a missing id equals a missing id, and the last match wins */
                const json_t *want = json_object_get(follow, "tool_call_id");
                for (size_t c = 0; c < json_array_size(calls); c++) {
                        const json_t *tc = json_array_get(calls, c);
                        const json_t *id = json_object_get(tc, "id");
                        bool same = (!id || json_is_null(id)) ? (!want || json_is_null(want))
                                                              : (want && json_equal((json_t *) id, (json_t *) want));
                        if (same)
                                name = json_object_get(json_object_get(tc, "function"), "name");
                }
                body = json_object_get(follow, "content");
                if (json_is_array(body)) {
                        /* text parts concatenated as they are (not trimmed) */
                        json_t *s;
                        size_t total = 0, off = 0;
                        for (size_t i = 0; i < json_array_size(body); i++) {
                                const json_t *part = json_array_get(body, i);
                                if (str_eq(get(part, "type"), "text")) {
                                        const json_t *t = get(part, "text");
                                        if (t && !json_is_string(t) && !json_is_null(t))
                                                return fail(err, -EINVAL, "messages[%zu].content[%zu].text: must be "
                                                            "a string", index, i);
                                        total += json_string_length(t);
                                }
                        }
                        char *buf = malloc(total + 1);
                        if (!buf)
                                return fail(err, -ENOMEM, "out of memory");
                        for (size_t i = 0; i < json_array_size(body); i++) {
                                const json_t *part = json_array_get(body, i);
                                const json_t *t = get(part, "text");
                                if (str_eq(get(part, "type"), "text") && json_is_string(t)) {
                                        memcpy(buf + off, json_string_value(t), json_string_length(t));
                                        off += json_string_length(t);
                                }
                        }
                        s = json_stringn_nocheck(buf, off);
                        free(buf);
                        if (!s)
                                return fail(err, -ENOMEM, "out of memory");
                        emit_tool_response(b, name, s);
                        json_decref(s);
                } else {
                        emit_tool_response(b, name, body);
                }
                any = true;
        }
        *ret_any = any;
        return 0;
}

static int render(const json_t *messages, const json_t *tools, const struct chat_render_options *opts,
                  struct builder *b, struct chat_error *err) {
        struct msg *msgs = NULL;
        size_t n_all, base = 0, n;
        enum prev_type prev = PREV_NONE;
        json_t *unknown = NULL;
        ssize_t last_user = -1;
        int r = 0;

        if (!json_is_array(messages))
                return fail(err, -EINVAL, "messages: must be an array");
        n_all = json_array_size(messages);
        if (n_all == 0)
                return fail(err, -EINVAL, "messages: must not be empty");
        if (tools && !json_is_null(tools) && !json_is_array(tools))
                return fail(err, -EINVAL, "tools: must be an array");

        msgs = calloc(n_all, sizeof(*msgs));
        unknown = json_string("unknown");
        if (!msgs || !unknown) {
                r = fail(err, -ENOMEM, "out of memory");
                goto out;
        }
        for (size_t i = 0; i < n_all; i++) {
                r = parse_role(json_array_get(messages, i), i, &msgs[i], err);
                if (r < 0)
                        goto out;
        }

        tpl(b, "<bos>");
        bool has_tools = truthy(tools);
        if (opts->enable_thinking || has_tools || msgs[0].role == ROLE_SYSTEM) {
                tpl(b, "<|turn>system\n");
                if (opts->enable_thinking) {
                        tpl(b, "<|think|>\n");
                        prev = PREV_THINK;
                }
                if (msgs[0].role == ROLE_SYSTEM) {
                        r = emit_first_system(b, msgs[0].json, err);
                        if (r < 0)
                                goto out;
                        base = 1;
                }
                if (has_tools) {
                        for (size_t i = 0; i < json_array_size(tools); i++) {
                                r = format_tool(b, json_array_get(tools, i), i, err);
                                if (r < 0)
                                        goto out;
                        }
                        prev = PREV_TOOL;
                }
                tpl(b, "<turn|>\n");
        }

        /* loop_messages = messages[base:] */
        const struct msg *lm = msgs + base;
        n = n_all - base;
        for (size_t i = 0; i < n; i++)
                if (lm[i].role == ROLE_USER)
                        last_user = (ssize_t) i;

        for (size_t i = 0; i < n; i++) {
                const struct msg *m = &lm[i];
                size_t index = base + i;

                if (m->role == ROLE_TOOL) {
                        /* rendered by the assistant message it answers; anything else is an orphan */
                        size_t j = i;
                        while (j > 0 && lm[j - 1].role == ROLE_TOOL)
                                j--;
                        if (j == 0 || lm[j - 1].role != ROLE_ASSISTANT ||
                            !truthy(json_object_get(lm[j - 1].json, "tool_calls"))) {
                                r = fail(err, -EINVAL, "messages[%zu]: tool message does not follow an assistant "
                                         "message with tool_calls", index);
                                goto out;
                        }
                        if (truthy(json_object_get(lm[j - 1].json, "tool_responses"))) {
                                r = fail(err, -EINVAL, "messages[%zu]: tool message after an assistant message "
                                         "that already carries tool_responses", index);
                                goto out;
                        }
                        continue;
                }
                prev = PREV_NONE;

                /* continue the model turn when the previous non-tool message was an assistant one */
                bool cont = false;
                for (size_t j = i; j-- > 0;) {
                        if (lm[j].role != ROLE_TOOL) {
                                cont = m->role == ROLE_ASSISTANT && lm[j].role == ROLE_ASSISTANT;
                                break;
                        }
                }
                if (!cont) {
                        tpl(b, "<|turn>");
                        tpl(b, m->role_name);
                        tpl(b, "\n");
                }

                const json_t *calls = json_object_get(m->json, "tool_calls");
                if (calls && !json_is_null(calls) && !json_is_array(calls)) {
                        r = fail(err, -EINVAL, "messages[%zu].tool_calls: must be an array", index);
                        goto out;
                }

                /* reasoning replay: only for tool-calling assistant messages after the last user message */
                const json_t *reasoning = json_object_get(m->json, "reasoning");
                const char *rfield = "reasoning";
                if (!truthy(reasoning)) {
                        reasoning = json_object_get(m->json, "reasoning_content");
                        rfield = "reasoning_content";
                }
                if (truthy(reasoning) && !json_is_string(reasoning)) {
                        r = fail(err, -EINVAL, "messages[%zu].%s: must be a string", index, rfield);
                        goto out;
                }
                if (truthy(reasoning) && (ssize_t) i > last_user && truthy(calls)) {
                        tpl(b, "<|channel>thought\n");
                        content(b, json_string_value(reasoning), json_string_length(reasoning));
                        tpl(b, "\n<channel|>");
                }

                if (truthy(calls)) {
                        for (size_t k = 0; k < json_array_size(calls); k++) {
                                r = emit_tool_call(b, json_array_get(calls, k), index, k, err);
                                if (r < 0)
                                        goto out;
                        }
                        prev = PREV_TOOL_CALL;
                }

                bool responded = false;
                const json_t *trs = json_object_get(m->json, "tool_responses");
                if (truthy(trs)) {
                        r = emit_native_responses(b, trs, index, unknown, err);
                        if (r < 0)
                                goto out;
                        responded = true;
                } else if (trs && !json_is_null(trs) && !json_is_array(trs)) {
                        r = fail(err, -EINVAL, "messages[%zu].tool_responses: must be an array", index);
                        goto out;
                } else if (truthy(calls)) {
                        r = emit_following_tool_messages(b, lm, n, i, base, unknown, &responded, err);
                        if (r < 0)
                                goto out;
                }
                if (responded)
                        prev = PREV_TOOL_RESPONSE;

                bool has_content = false;
                r = emit_content(b, m, index, &has_content, err);
                if (r < 0)
                        goto out;

                if (prev == PREV_TOOL_CALL && !responded)
                        tpl(b, "<|tool_response>");
                else if (!(responded && !has_content))
                        tpl(b, "<turn|>\n");
        }

        if (opts->add_generation_prompt && prev != PREV_TOOL_RESPONSE && prev != PREV_TOOL_CALL) {
                tpl(b, "<|turn>model\n");
                if (!opts->enable_thinking)
                        tpl(b, "<|channel>thought\n<channel|>");
        }
        if (b->error < 0)
                r = fail(err, b->error, "out of memory");
out:
        json_decref(unknown);
        free(msgs);
        return r;
}

int chat_render(const json_t *messages, const json_t *tools, const struct chat_render_options *opts,
                struct chat_prompt *ret, struct chat_error *err) {
        static const struct chat_render_options defaults = { .add_generation_prompt = true };
        struct builder b = { 0 };
        int r;

        r = render(messages, tools, opts ? opts : &defaults, &b, err);
        if (r >= 0 && b.error < 0)
                r = fail(err, b.error, "out of memory");
        if (r < 0) {
                free(b.text);
                free(b.segments);
                return r;
        }
        *ret = (struct chat_prompt) {
                .text = b.text, .text_length = b.length, .segments = b.segments, .n_segments = b.n_segments,
        };
        return 0;
}

int chat_render_string(const json_t *messages, const json_t *tools, const struct chat_render_options *opts,
                       char **ret_text, size_t *ret_length, struct chat_error *err) {
        struct chat_prompt p;
        int r = chat_render(messages, tools, opts, &p, err);

        if (r < 0)
                return r;
        free(p.segments);
        *ret_text = p.text;
        if (ret_length)
                *ret_length = p.text_length;
        return 0;
}

void chat_prompt_done(struct chat_prompt *p) {
        if (!p)
                return;
        free(p->text);
        free(p->segments);
        *p = (struct chat_prompt) { 0 };
}

bool chat_prompt_next_run(const struct chat_prompt *p, size_t *cursor, struct chat_prompt_run *ret) {
        size_t i = *cursor;

        if (i >= p->n_segments)
                return false;
        const struct chat_segment *s = &p->segments[i];
        if (s->kind == CHAT_SEGMENT_SPECIAL) {
                *ret = (struct chat_prompt_run) {
                        .special = true, .token_id = s->token_id, .text = p->text + s->offset, .length = s->length,
                };
                *cursor = i + 1;
                return true;
        }
        size_t end = i;
        while (end < p->n_segments && p->segments[end].kind != CHAT_SEGMENT_SPECIAL)
                end++;
        const struct chat_segment *last = &p->segments[end - 1];
        *ret = (struct chat_prompt_run) {
                .special = false, .text = p->text + s->offset, .length = last->offset + last->length - s->offset,
        };
        *cursor = end;
        return true;
}
