/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Configuration: one table describes every key (name, type, range, default, reloadable or not), and
 * everything else -- defaults, YAML loading, command-line overrides, comparison for SIGHUP reload and
 * printing the effective configuration -- walks that table. Adding a key means adding one table row,
 * one struct field, and its documentation in config/gemma4d.yaml and man/gemma4d.yaml.5.scd (a unit
 * test checks that both mention every key).
 *
 * The YAML file is read with libyaml's document API so every node keeps its start mark; errors name
 * "file:line:column" (1-based) of the offending key or value. Loading works on a copy, so a failed
 * load leaves the caller's configuration untouched.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "build-config.h"
#include "config.h"

enum config_type {
        CONFIG_STRING,          /* char *, any text (flag CONFIG_GROUP_NAME / CONFIG_SOCKET restrict it) */
        CONFIG_BOOL,            /* bool */
        CONFIG_INT,             /* int, decimal */
        CONFIG_U32,             /* uint32_t, decimal */
        CONFIG_U64_SIZE,        /* uint64_t, decimal with an optional K/M/G (binary) suffix */
        CONFIG_DOUBLE,          /* double */
        CONFIG_MODE,            /* unsigned, octal file mode 0..0777 */
        CONFIG_ENUM,            /* int-sized enum, value = index into names */
        CONFIG_ENUM_BOOL,       /* bool chosen by a two-name enum: names[0] = false, names[1] = true */
        CONFIG_UID_LIST,        /* uid_t[CONFIG_MAX_ALLOWED] + count */
        CONFIG_NAME_LIST,       /* char *[CONFIG_MAX_ALLOWED] + count */
};

enum {
        CONFIG_RESTART = 1 << 0,        /* a change takes effect only after a restart */
        CONFIG_POW2 = 1 << 1,           /* integer must be a power of two */
        CONFIG_MIN_EXCLUSIVE = 1 << 2,  /* double: value must be > min */
        CONFIG_GROUP_NAME = 1 << 3,     /* string: empty or a valid user/group name */
        CONFIG_SOCKET = 1 << 4,         /* string: a non-empty path that fits sockaddr_un */
};

struct config_entry {
        const char *name;
        enum config_type type;
        size_t offset;
        size_t count_offset;            /* lists: offset of the unsigned element count */
        double min, max;                /* numbers; modes use max only */
        const char *const *names;       /* enums */
        const char *default_value;      /* parsed by the same code as file values; NULL = empty list */
        unsigned flags;
};

static const char *const backend_names[] = { "cpu", "cuda", NULL };
static const char *const kv_dtype_names[] = { "fp8", "bf16", NULL };
static const char *const precision_names[] = { "fp8", "bf16", NULL };
static const char *const placement_names[] = { "host", "device", NULL };
static const char *const log_level_names[] = { "error", "warning", "info", "debug", NULL };

#define FIELD(f) offsetof(struct gemma4d_config, f)
#define KiB 1024.0
#define MiB (1024.0 * 1024.0)
#define GiB (1024.0 * 1024.0 * 1024.0)

/* Keep in the order of config/gemma4d.yaml: config_format() prints in table order. */
static const struct config_entry config_table[] = {
        { "model.path", CONFIG_STRING, FIELD(model_path), 0, 0, 0, NULL, "", CONFIG_RESTART },
        { "backend", CONFIG_ENUM, FIELD(backend), 0, 0, 0, backend_names, "cpu", CONFIG_RESTART },
        { "gpu", CONFIG_INT, FIELD(gpu), 0, 0, 255, NULL, "0", CONFIG_RESTART },

        { "socket.path", CONFIG_STRING, FIELD(socket_path), 0, 0, 0, NULL, GEMMA4D_DEFAULT_SOCKET,
          CONFIG_RESTART | CONFIG_SOCKET },
        { "socket.mode", CONFIG_MODE, FIELD(socket_mode), 0, 0, 0777, NULL, "0660", CONFIG_RESTART },
        { "socket.group", CONFIG_STRING, FIELD(socket_group), 0, 0, 0, NULL, "",
          CONFIG_RESTART | CONFIG_GROUP_NAME },

        { "access.allowed_uids", CONFIG_UID_LIST, FIELD(allowed_uids), FIELD(n_allowed_uids),
          0, 4294967294.0, NULL, NULL, 0 },
        { "access.allowed_groups", CONFIG_NAME_LIST, FIELD(allowed_groups), FIELD(n_allowed_groups),
          0, 0, NULL, NULL, CONFIG_GROUP_NAME },

        { "memory.gpu_fraction", CONFIG_DOUBLE, FIELD(gpu_fraction), 0, 0, 1, NULL, "0.9",
          CONFIG_RESTART | CONFIG_MIN_EXCLUSIVE },

        { "kv.dtype", CONFIG_ENUM, FIELD(kv_dtype), 0, 0, 0, kv_dtype_names, "fp8", CONFIG_RESTART },
        { "kv.page_size", CONFIG_U32, FIELD(kv_page_size), 0, 8, 256, NULL, "16",
          CONFIG_RESTART | CONFIG_POW2 },
        { "kv.prefix_cache", CONFIG_BOOL, FIELD(prefix_cache), 0, 0, 0, NULL, "true", CONFIG_RESTART },

        { "limits.max_model_len", CONFIG_U32, FIELD(max_model_len), 0, 16, 1048576, NULL, "32768",
          CONFIG_RESTART },
        { "limits.max_num_seqs", CONFIG_U32, FIELD(max_num_seqs), 0, 1, 4096, NULL, "64", CONFIG_RESTART },
        { "limits.max_batched_tokens", CONFIG_U32, FIELD(max_batched_tokens), 0, 16, 1048576, NULL, "8192",
          CONFIG_RESTART },
        { "limits.max_queue", CONFIG_U32, FIELD(max_queue), 0, 1, 1000000, NULL, "1024", 0 },
        { "limits.max_frame_bytes", CONFIG_U64_SIZE, FIELD(max_frame_bytes), 0, 4 * KiB, 1 * GiB, NULL,
          "16M", 0 },
        { "limits.max_inflight_per_connection", CONFIG_U32, FIELD(max_inflight_per_connection), 0,
          1, 65536, NULL, "64", 0 },
        { "limits.max_connections", CONFIG_U32, FIELD(max_connections), 0, 1, 65536, NULL, "256", 0 },
        { "limits.max_write_queue_bytes", CONFIG_U64_SIZE, FIELD(max_write_queue_bytes), 0, 64 * KiB,
          4 * GiB, NULL, "8M", 0 },

        { "scheduler.aging_ms", CONFIG_U32, FIELD(aging_ms), 0, 1, 3600000, NULL, "10000", 0 },
        { "shutdown.drain_seconds", CONFIG_U32, FIELD(drain_seconds), 0, 0, 3600, NULL, "30", 0 },
        { "log.level", CONFIG_ENUM, FIELD(log_level), 0, 0, 0, log_level_names, "info", 0 },

        { "cuda.lm_head", CONFIG_ENUM_BOOL, FIELD(lm_head_bf16), 0, 0, 0, precision_names, "fp8",
          CONFIG_RESTART },
        { "cuda.weights", CONFIG_ENUM_BOOL, FIELD(weights_bf16), 0, 0, 0, precision_names, "fp8",
          CONFIG_RESTART },
        { "cuda.embedding", CONFIG_ENUM_BOOL, FIELD(embedding_device), 0, 0, 0, placement_names, "host",
          CONFIG_RESTART },
        { "cpu.threads", CONFIG_U32, FIELD(cpu_threads), 0, 0, 1024, NULL, "0", CONFIG_RESTART },
};

#define N_ENTRIES (sizeof config_table / sizeof config_table[0])

/* ---- small helpers ---- */

static char *vformat(const char *fmt, va_list ap) {
        va_list aq;
        va_copy(aq, ap);
        int n = vsnprintf(NULL, 0, fmt, aq);
        va_end(aq);
        if (n < 0)
                return NULL;
        char *s = malloc((size_t) n + 1);
        if (s)
                vsnprintf(s, (size_t) n + 1, fmt, ap);
        return s;
}

/* Writes the message to *reterr (when reterr is given) and returns err. */
static int fail(char **reterr, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char **reterr, int err, const char *fmt, ...) {
        if (reterr) {
                va_list ap;
                va_start(ap, fmt);
                *reterr = vformat(fmt, ap);
                va_end(ap);
        }
        return err;
}

static void *field(struct gemma4d_config *c, const struct config_entry *e) {
        return (char *) c + e->offset;
}

static const void *cfield(const struct gemma4d_config *c, const struct config_entry *e) {
        return (const char *) c + e->offset;
}

static unsigned *count_field(struct gemma4d_config *c, const struct config_entry *e) {
        return (unsigned *) (void *) ((char *) c + e->count_offset);
}

static unsigned ccount_field(const struct gemma4d_config *c, const struct config_entry *e) {
        return *(const unsigned *) (const void *) ((const char *) c + e->count_offset);
}

static const struct config_entry *entry_find(const char *name) {
        for (size_t i = 0; i < N_ENTRIES; i++)
                if (strcmp(config_table[i].name, name) == 0)
                        return &config_table[i];
        return NULL;
}

size_t config_n_keys(void) {
        return N_ENTRIES;
}

const char *config_key_name(size_t i) {
        return i < N_ENTRIES ? config_table[i].name : NULL;
}

bool config_key_is_reloadable(const char *key) {
        const struct config_entry *e = entry_find(key);
        return e && !(e->flags & CONFIG_RESTART);
}

const char *backend_kind_to_string(enum backend_kind k) {
        if ((unsigned) k >= 2)
                return "invalid";
        return backend_names[k];
}

/* ---- scalar parsing: the value text is checked completely before anything is stored ---- */

/* Parses an unsigned decimal; with allow_suffix, K/M/G or KiB/MiB/GiB (powers of 1024) may follow. */
static int parse_unsigned(const char *s, bool allow_suffix, uint64_t *ret) {
        const char *p = s;
        char *end;
        uint64_t mult = 1;

        if (*p == '+')
                p++;
        if (!isdigit((unsigned char) *p))
                return -EINVAL;
        errno = 0;
        unsigned long long v = strtoull(p, &end, 10);
        if (errno == ERANGE)
                return -ERANGE;
        if (*end) {
                if (!allow_suffix)
                        return -EINVAL;
                if (strcmp(end, "K") == 0 || strcmp(end, "KiB") == 0)
                        mult = 1ull << 10;
                else if (strcmp(end, "M") == 0 || strcmp(end, "MiB") == 0)
                        mult = 1ull << 20;
                else if (strcmp(end, "G") == 0 || strcmp(end, "GiB") == 0)
                        mult = 1ull << 30;
                else
                        return -EINVAL;
        }
        if (v > UINT64_MAX / mult)
                return -ERANGE;
        *ret = (uint64_t) v * mult;
        return 0;
}

static int parse_int(const char *s, int64_t *ret) {
        const char *p = s;
        char *end;

        if (*p == '-' || *p == '+')
                p++;
        if (!isdigit((unsigned char) *p))
                return -EINVAL;
        errno = 0;
        long long v = strtoll(s, &end, 10);
        if (*end)
                return -EINVAL;
        if (errno == ERANGE)
                return -ERANGE;
        *ret = v;
        return 0;
}

static int parse_bool(const char *s, bool *ret) {
        static const char *const yes[] = { "true", "yes", "on" }, *const no[] = { "false", "no", "off" };
        for (size_t i = 0; i < 3; i++) {
                if (strcasecmp(s, yes[i]) == 0) {
                        *ret = true;
                        return 0;
                }
                if (strcasecmp(s, no[i]) == 0) {
                        *ret = false;
                        return 0;
                }
        }
        return -EINVAL;
}

/* Octal with a leading 0 or 0o, as in chmod(1): 0660, 0o660. */
static int parse_mode(const char *s, uint64_t *ret) {
        const char *p = s;
        if (p[0] != '0')
                return -EINVAL;
        p += (p[1] == 'o' || p[1] == 'O') ? 2 : 1;
        if (!*p && s[1] != '\0')        /* "0o" alone */
                return -EINVAL;
        uint64_t v = 0;
        for (; *p; p++) {
                if (*p < '0' || *p > '7')
                        return -EINVAL;
                v = v * 8 + (uint64_t) (*p - '0');
                if (v > 07777777)
                        return -ERANGE;
        }
        *ret = v;
        return 0;
}

static int parse_enum(const char *s, const char *const *names, int *ret) {
        for (int i = 0; names[i]; i++)
                if (strcmp(s, names[i]) == 0) {
                        *ret = i;
                        return 0;
                }
        return -EINVAL;
}

/* A POSIX-portable user or group name, as useradd(8) accepts it by default. */
static bool valid_account_name(const char *s) {
        size_t n = strlen(s);
        if (n == 0 || n > 32 || s[0] == '-')
                return false;
        for (size_t i = 0; i < n; i++) {
                char ch = s[i];
                if (!(isalnum((unsigned char) ch) || ch == '_' || ch == '-' || ch == '.' ||
                      (ch == '$' && i == n - 1)))
                        return false;
        }
        return true;
}

static void enum_list(const char *const *names, char *buf, size_t size) {
        size_t used = 0;
        buf[0] = '\0';
        for (int i = 0; names[i] && used < size; i++)
                used += (size_t) snprintf(buf + used, size - used, "%s%s", i ? ", " : "", names[i]);
}

/* Type names for "expected ..." messages. */
static const char *type_description(const struct config_entry *e) {
        switch (e->type) {
        case CONFIG_STRING:     return "a string";
        case CONFIG_BOOL:       return "a boolean (true or false)";
        case CONFIG_INT:
        case CONFIG_U32:        return "an integer";
        case CONFIG_U64_SIZE:   return "a size (an integer, optionally with a K, M or G suffix)";
        case CONFIG_DOUBLE:     return "a number";
        case CONFIG_MODE:       return "an octal file mode such as 0660";
        case CONFIG_ENUM:
        case CONFIG_ENUM_BOOL:  return "one of the listed names";
        case CONFIG_UID_LIST:   return "a list of user ids";
        case CONFIG_NAME_LIST:  return "a list of group names";
        }
        return "?";
}

static void format_number(double v, bool size, char *buf, size_t n) {
        if (size && v >= GiB && fmod(v, GiB) == 0)
                snprintf(buf, n, "%.0fG", v / GiB);
        else if (size && v >= MiB && fmod(v, MiB) == 0)
                snprintf(buf, n, "%.0fM", v / MiB);
        else if (size && v >= KiB && fmod(v, KiB) == 0)
                snprintf(buf, n, "%.0fK", v / KiB);
        else
                snprintf(buf, n, "%.15g", v);
}

static int range_error(const struct config_entry *e, const char *value, const char *where, char **reterr) {
        char lo[32], hi[32];
        bool size = e->type == CONFIG_U64_SIZE;
        if (e->type == CONFIG_MODE)
                return fail(reterr, -ERANGE, "%s%s: mode %s is out of range (0000..0777)", where, e->name,
                            value);
        format_number(e->min, size, lo, sizeof lo);
        format_number(e->max, size, hi, sizeof hi);
        return fail(reterr, -ERANGE, "%s%s: %s is out of range (%s%s..%s%s)", where, e->name, value,
                    (e->flags & CONFIG_MIN_EXCLUSIVE) ? ">" : "", lo, hi,
                    (e->flags & CONFIG_POW2) ? ", a power of two" : "");
}

/*
 * Parses one scalar `value` for entry e and stores it into *c. `where` prefixes messages
 * ("file:line:col: " or ""). Lists are not handled here (see list_add). Nothing is stored on error.
 */
static int set_scalar(struct gemma4d_config *c, const struct config_entry *e, const char *value,
                      const char *where, char **reterr) {
        void *f = field(c, e);
        uint64_t u;
        int64_t i;
        int r, idx;
        bool b;

        switch (e->type) {
        case CONFIG_STRING: {
                if ((e->flags & CONFIG_SOCKET) && value[0] == '\0')
                        return fail(reterr, -EINVAL, "%s%s: must not be empty", where, e->name);
                /* sockaddr_un.sun_path holds 108 bytes including the terminating NUL. */
                if ((e->flags & CONFIG_SOCKET) && strlen(value) > 107)
                        return fail(reterr, -ENAMETOOLONG, "%s%s: path is longer than 107 bytes", where,
                                    e->name);
                if ((e->flags & CONFIG_GROUP_NAME) && value[0] && !valid_account_name(value))
                        return fail(reterr, -EINVAL, "%s%s: '%s' is not a valid group name", where, e->name,
                                    value);
                if (strlen(value) > 4096)
                        return fail(reterr, -ENAMETOOLONG, "%s%s: value is longer than 4096 bytes", where,
                                    e->name);
                char *s = strdup(value);
                if (!s)
                        return fail(reterr, -ENOMEM, "out of memory");
                free(*(char **) f);
                *(char **) f = s;
                return 0;
        }
        case CONFIG_BOOL:
                if (parse_bool(value, &b) < 0)
                        return fail(reterr, -EINVAL, "%s%s: expected true or false, got '%s'", where, e->name,
                                    value);
                *(bool *) f = b;
                return 0;
        case CONFIG_INT:
                r = parse_int(value, &i);
                if (r == -EINVAL)
                        return fail(reterr, -EINVAL, "%s%s: expected an integer, got '%s'", where, e->name,
                                    value);
                if (r < 0 || (double) i < e->min || (double) i > e->max)
                        return range_error(e, value, where, reterr);
                *(int *) f = (int) i;
                return 0;
        case CONFIG_U32:
        case CONFIG_U64_SIZE:
                r = parse_unsigned(value, e->type == CONFIG_U64_SIZE, &u);
                if (r == -EINVAL) {
                        /* A minus sign is a range problem, not a type problem. */
                        if (value[0] == '-' && parse_int(value, &i) == 0)
                                return range_error(e, value, where, reterr);
                        return fail(reterr, -EINVAL, "%s%s: expected %s, got '%s'", where, e->name,
                                    type_description(e), value);
                }
                if (r < 0 || (double) u < e->min || (double) u > e->max)
                        return range_error(e, value, where, reterr);
                if ((e->flags & CONFIG_POW2) && (u & (u - 1)) != 0)
                        return fail(reterr, -EINVAL, "%s%s: %s is not a power of two", where, e->name,
                                    value);
                if (e->type == CONFIG_U32)
                        *(uint32_t *) f = (uint32_t) u;
                else
                        *(uint64_t *) f = u;
                return 0;
        case CONFIG_DOUBLE: {
                char *end;
                double d;
                errno = 0;
                d = strtod(value, &end);
                if (end == value || *end || !isfinite(d) || isspace((unsigned char) value[0]))
                        return fail(reterr, -EINVAL, "%s%s: expected a number, got '%s'", where, e->name,
                                    value);
                if (d > e->max || d < e->min || ((e->flags & CONFIG_MIN_EXCLUSIVE) && d <= e->min))
                        return range_error(e, value, where, reterr);
                *(double *) f = d;
                return 0;
        }
        case CONFIG_MODE:
                r = parse_mode(value, &u);
                if (r == -EINVAL)
                        return fail(reterr, -EINVAL,
                                    "%s%s: expected an octal file mode such as 0660, got '%s'", where,
                                    e->name, value);
                if (r < 0 || u > (uint64_t) e->max)
                        return range_error(e, value, where, reterr);
                *(unsigned *) f = (unsigned) u;
                return 0;
        case CONFIG_ENUM:
        case CONFIG_ENUM_BOOL:
                if (parse_enum(value, e->names, &idx) < 0) {
                        char allowed[128];
                        enum_list(e->names, allowed, sizeof allowed);
                        return fail(reterr, -EINVAL, "%s%s: invalid value '%s' (expected one of: %s)", where,
                                    e->name, value, allowed);
                }
                if (e->type == CONFIG_ENUM)
                        *(int *) f = idx;
                else
                        *(bool *) f = idx == 1;
                return 0;
        case CONFIG_UID_LIST:
        case CONFIG_NAME_LIST:
                break;
        }
        return fail(reterr, -EINVAL, "%s%s: expected %s", where, e->name, type_description(e));
}

static void list_clear(struct gemma4d_config *c, const struct config_entry *e) {
        unsigned *n = count_field(c, e);
        if (e->type == CONFIG_NAME_LIST) {
                char **names = field(c, e);
                for (unsigned k = 0; k < *n; k++) {
                        free(names[k]);
                        names[k] = NULL;
                }
        }
        *n = 0;
}

/* Appends one element to a list entry. */
static int list_add(struct gemma4d_config *c, const struct config_entry *e, const char *value,
                    const char *where, char **reterr) {
        unsigned *n = count_field(c, e);

        if (*n >= CONFIG_MAX_ALLOWED)
                return fail(reterr, -E2BIG, "%s%s: more than %d entries", where, e->name, CONFIG_MAX_ALLOWED);
        if (e->type == CONFIG_UID_LIST) {
                uint64_t u;
                int64_t i;
                int r = parse_unsigned(value, false, &u);
                if (r == -EINVAL && !(value[0] == '-' && parse_int(value, &i) == 0))
                        return fail(reterr, -EINVAL, "%s%s: expected a numeric user id, got '%s'", where,
                                    e->name, value);
                if (r < 0 || (double) u > e->max)
                        return fail(reterr, -ERANGE, "%s%s: user id %s is out of range (0..4294967294)",
                                    where, e->name, value);
                ((uid_t *) field(c, e))[(*n)++] = (uid_t) u;
                return 0;
        }
        if (!valid_account_name(value))
                return fail(reterr, -EINVAL, "%s%s: '%s' is not a valid group name", where, e->name, value);
        char *s = strdup(value);
        if (!s)
                return fail(reterr, -ENOMEM, "out of memory");
        ((char **) field(c, e))[(*n)++] = s;
        return 0;
}

/* ---- lifetime ---- */

void config_done(struct gemma4d_config *c) {
        if (!c)
                return;
        for (size_t i = 0; i < N_ENTRIES; i++) {
                const struct config_entry *e = &config_table[i];
                if (e->type == CONFIG_STRING)
                        free(*(char **) field(c, e));
                else if (e->type == CONFIG_NAME_LIST)
                        list_clear(c, e);
        }
        memset(c, 0, sizeof *c);
}

int config_init_defaults(struct gemma4d_config *ret) {
        struct gemma4d_config c;
        char *err = NULL;

        memset(&c, 0, sizeof c);
        for (size_t i = 0; i < N_ENTRIES; i++) {
                const struct config_entry *e = &config_table[i];
                if (!e->default_value)
                        continue;
                int r = set_scalar(&c, e, e->default_value, "", &err);
                if (r < 0) {
                        /* Only ENOMEM can happen: the defaults are checked by the unit tests. */
                        free(err);
                        config_done(&c);
                        return r;
                }
        }
        *ret = c;
        return 0;
}

int config_copy(const struct gemma4d_config *src, struct gemma4d_config *ret) {
        struct gemma4d_config c = *src;

        /* Clear the pointers first so config_done() on a half-built copy frees only what it owns. */
        for (size_t i = 0; i < N_ENTRIES; i++) {
                const struct config_entry *e = &config_table[i];
                if (e->type == CONFIG_STRING)
                        *(char **) field(&c, e) = NULL;
                else if (e->type == CONFIG_NAME_LIST)
                        memset(field(&c, e), 0, sizeof(char *) * CONFIG_MAX_ALLOWED);
        }
        for (size_t i = 0; i < N_ENTRIES; i++) {
                const struct config_entry *e = &config_table[i];
                if (e->type == CONFIG_STRING) {
                        char *s = strdup(*(char *const *) cfield(src, e));
                        if (!s)
                                goto oom;
                        *(char **) field(&c, e) = s;
                } else if (e->type == CONFIG_NAME_LIST) {
                        char *const *from = cfield(src, e);
                        char **to = field(&c, e);
                        for (unsigned k = 0; k < ccount_field(src, e); k++)
                                if (!(to[k] = strdup(from[k])))
                                        goto oom;
                }
        }
        *ret = c;
        return 0;
oom:
        /* Names not yet copied are NULL, and free(NULL) is a no-op. */
        config_done(&c);
        return -ENOMEM;
}

/* ---- cross-key checks, run after a whole file or an override ---- */

static int config_check(const struct gemma4d_config *c, const char *where, char **reterr) {
        if (c->max_batched_tokens < c->max_num_seqs)
                return fail(reterr, -EINVAL,
                            "%slimits.max_batched_tokens (%u) must be at least limits.max_num_seqs (%u): "
                            "every running sequence decodes one token per step",
                            where, c->max_batched_tokens, c->max_num_seqs);
        if (c->max_batched_tokens < c->kv_page_size)
                return fail(reterr, -EINVAL,
                            "%slimits.max_batched_tokens (%u) must be at least kv.page_size (%u)",
                            where, c->max_batched_tokens, c->kv_page_size);
        return 0;
}

int config_validate(const struct gemma4d_config *c, char **reterr) {
        return config_check(c, "", reterr);
}

/* ---- command-line style overrides ---- */

int config_set(struct gemma4d_config *c, const char *key, const char *value, char **reterr) {
        const struct config_entry *e = entry_find(key);
        struct gemma4d_config tmp;
        int r;

        if (!e)
                return fail(reterr, -ENOENT, "unknown configuration key '%s'", key);
        r = config_copy(c, &tmp);
        if (r < 0)
                return fail(reterr, r, "out of memory");
        if (e->type == CONFIG_UID_LIST || e->type == CONFIG_NAME_LIST) {
                /* Comma-separated; an empty value clears the list. */
                char *copy = strdup(value), *save = NULL;
                if (!copy) {
                        config_done(&tmp);
                        return fail(reterr, -ENOMEM, "out of memory");
                }
                list_clear(&tmp, e);
                for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                        while (isspace((unsigned char) *tok))
                                tok++;
                        size_t n = strlen(tok);
                        while (n && isspace((unsigned char) tok[n - 1]))
                                tok[--n] = '\0';
                        r = list_add(&tmp, e, tok, "", reterr);
                        if (r < 0)
                                break;
                }
                free(copy);
        } else
                r = set_scalar(&tmp, e, value, "", reterr);
        if (r < 0) {
                config_done(&tmp);
                return r;
        }
        config_done(c);
        *c = tmp;
        return 0;
}

/* ---- YAML ---- */

struct load_state {
        const char *name;
        yaml_document_t *doc;
        struct gemma4d_config *c;
        char **reterr;
};

static const char *node_kind(const yaml_node_t *n) {
        switch (n->type) {
        case YAML_SCALAR_NODE:   return "a scalar";
        case YAML_SEQUENCE_NODE: return "a list";
        case YAML_MAPPING_NODE:  return "a mapping";
        default:                 return "nothing";
        }
}

static const char *scalar_text(const yaml_node_t *n) {
        return (const char *) n->data.scalar.value;
}

/* A plain empty value, ~ or null: YAML's null. */
static bool scalar_is_null(const yaml_node_t *n) {
        const char *s = scalar_text(n);
        if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
                return false;
        return s[0] == '\0' || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 || strcmp(s, "Null") == 0 ||
               strcmp(s, "NULL") == 0;
}

static bool scalar_is_quoted(const yaml_node_t *n) {
        return n->data.scalar.style == YAML_SINGLE_QUOTED_SCALAR_STYLE ||
               n->data.scalar.style == YAML_DOUBLE_QUOTED_SCALAR_STYLE;
}

/* "file:line:col: " for a node; libyaml marks are 0-based. */
static void mark_prefix(const struct load_state *st, yaml_mark_t m, char *buf, size_t n) {
        snprintf(buf, n, "%s:%zu:%zu: ", st->name, m.line + 1, m.column + 1);
}

static int load_value(struct load_state *st, const struct config_entry *e, yaml_node_t *v) {
        char where[512];
        mark_prefix(st, v->start_mark, where, sizeof where);

        if (e->type == CONFIG_UID_LIST || e->type == CONFIG_NAME_LIST) {
                if (v->type != YAML_SEQUENCE_NODE)
                        return fail(st->reterr, -EINVAL, "%s%s: expected %s, got %s", where, e->name,
                                    type_description(e), node_kind(v));
                list_clear(st->c, e);
                for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top;
                     it++) {
                        yaml_node_t *item = yaml_document_get_node(st->doc, *it);
                        mark_prefix(st, item->start_mark, where, sizeof where);
                        if (item->type != YAML_SCALAR_NODE || scalar_is_null(item))
                                return fail(st->reterr, -EINVAL, "%s%s: list entries must be %s, got %s",
                                            where, e->name,
                                            e->type == CONFIG_UID_LIST ? "user ids" : "group names",
                                            scalar_is_null(item) ? "null" : node_kind(item));
                        int r = list_add(st->c, e, scalar_text(item), where, st->reterr);
                        if (r < 0)
                                return r;
                }
                return 0;
        }
        if (v->type != YAML_SCALAR_NODE)
                return fail(st->reterr, -EINVAL, "%s%s: expected %s, got %s", where, e->name,
                            type_description(e), node_kind(v));
        if (scalar_is_null(v))
                return fail(st->reterr, -EINVAL, "%s%s: value is missing (write \"\" for an empty string)",
                            where, e->name);
        /* "3" is a string in YAML; numbers and booleans must be written plainly. Modes may be quoted
         * because quoting keeps YAML 1.1 tools from reading 0660 as the decimal 432. */
        if (scalar_is_quoted(v) && e->type != CONFIG_STRING && e->type != CONFIG_MODE &&
            e->type != CONFIG_ENUM && e->type != CONFIG_ENUM_BOOL)
                return fail(st->reterr, -EINVAL, "%s%s: expected %s, got the string \"%s\"", where, e->name,
                            type_description(e), scalar_text(v));
        return set_scalar(st->c, e, scalar_text(v), where, st->reterr);
}

/* Walks a mapping; `prefix` is "" at the top level or "section." below it. */
static int load_mapping(struct load_state *st, yaml_node_t *map, const char *prefix) {
        for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
                yaml_node_t *k = yaml_document_get_node(st->doc, p->key);
                yaml_node_t *v = yaml_document_get_node(st->doc, p->value);
                char where[512], name[256];
                int r;

                mark_prefix(st, k->start_mark, where, sizeof where);
                if (k->type != YAML_SCALAR_NODE)
                        return fail(st->reterr, -EINVAL, "%skeys must be plain names, got %s", where,
                                    node_kind(k));
                for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < p; q++) {
                        yaml_node_t *k2 = yaml_document_get_node(st->doc, q->key);
                        if (k2->type == YAML_SCALAR_NODE && strcmp(scalar_text(k2), scalar_text(k)) == 0)
                                return fail(st->reterr, -EINVAL, "%sduplicate key '%s%s' (first set at line %zu)",
                                            where, prefix, scalar_text(k), k2->start_mark.line + 1);
                }
                int n = snprintf(name, sizeof name, "%s%s", prefix, scalar_text(k));
                if (n < 0 || (size_t) n >= sizeof name)
                        return fail(st->reterr, -ENOENT, "%sunknown key '%.64s...'", where, scalar_text(k));

                const struct config_entry *e = strchr(scalar_text(k), '.') ? NULL : entry_find(name);
                if (e) {
                        r = load_value(st, e, v);
                        if (r < 0)
                                return r;
                        continue;
                }
                /* Not a key: a section if some key starts with "name.". */
                size_t len = strlen(name);
                bool section = false;
                for (size_t i = 0; i < N_ENTRIES && !section && prefix[0] == '\0'; i++)
                        section = strncmp(config_table[i].name, name, len) == 0 &&
                                  config_table[i].name[len] == '.';
                if (!section || strchr(scalar_text(k), '.'))
                        return fail(st->reterr, -ENOENT, "%sunknown key '%s'", where, name);
                if (v->type == YAML_SCALAR_NODE && scalar_is_null(v))
                        continue;       /* "limits:" with every key commented out */
                if (v->type != YAML_MAPPING_NODE) {
                        mark_prefix(st, v->start_mark, where, sizeof where);
                        return fail(st->reterr, -EINVAL, "%s%s: expected a mapping of %s.* keys, got %s", where,
                                    name, name, node_kind(v));
                }
                char sub[260];
                snprintf(sub, sizeof sub, "%s.", name);
                r = load_mapping(st, v, sub);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int parser_error(const char *name, const yaml_parser_t *parser, char **reterr) {
        const char *problem = parser->problem ? parser->problem : "malformed YAML";
        if (parser->error == YAML_MEMORY_ERROR)
                return fail(reterr, -ENOMEM, "%s: out of memory", name);
        if (parser->error == YAML_READER_ERROR)
                /* Reader errors (bad UTF-8, NUL) have an offset but no line. */
                return fail(reterr, -EBADMSG, "%s: byte %zu: %s", name, parser->problem_offset, problem);
        if (parser->context)
                return fail(reterr, -EBADMSG, "%s:%zu:%zu: %s %s started at line %zu, column %zu", name,
                            parser->problem_mark.line + 1, parser->problem_mark.column + 1, problem,
                            parser->context, parser->context_mark.line + 1, parser->context_mark.column + 1);
        return fail(reterr, -EBADMSG, "%s:%zu:%zu: %s", name, parser->problem_mark.line + 1,
                    parser->problem_mark.column + 1, problem);
}

/* Loads from an initialised parser into a copy of *c; on success replaces *c. */
static int load_parser(struct gemma4d_config *c, const char *name, yaml_parser_t *parser, char **reterr) {
        yaml_document_t doc, extra;
        struct gemma4d_config tmp;
        int r;

        if (!yaml_parser_load(parser, &doc))
                return parser_error(name, parser, reterr);

        yaml_node_t *root = yaml_document_get_root_node(&doc);
        if (root) {
                /* A second document would be silently ignored otherwise. */
                if (!yaml_parser_load(parser, &extra)) {
                        yaml_document_delete(&doc);
                        return parser_error(name, parser, reterr);
                }
                yaml_node_t *root2 = yaml_document_get_root_node(&extra);
                if (root2) {
                        r = fail(reterr, -EINVAL, "%s:%zu:%zu: only one YAML document is allowed", name,
                                 extra.start_mark.line + 1, extra.start_mark.column + 1);
                        yaml_document_delete(&extra);
                        yaml_document_delete(&doc);
                        return r;
                }
                yaml_document_delete(&extra);
        }

        r = config_copy(c, &tmp);
        if (r < 0) {
                yaml_document_delete(&doc);
                return fail(reterr, r, "%s: out of memory", name);
        }
        struct load_state st = { .name = name, .doc = &doc, .c = &tmp, .reterr = reterr };
        if (!root || (root->type == YAML_SCALAR_NODE && scalar_is_null(root)))
                r = 0;  /* an empty file (or only comments) changes nothing */
        else if (root->type != YAML_MAPPING_NODE)
                r = fail(reterr, -EINVAL, "%s:%zu:%zu: the top level must be a mapping of keys, got %s", name,
                         root->start_mark.line + 1, root->start_mark.column + 1, node_kind(root));
        else
                r = load_mapping(&st, root, "");
        if (r >= 0) {
                char where[512];
                snprintf(where, sizeof where, "%s: ", name);
                r = config_check(&tmp, where, reterr);
        }
        yaml_document_delete(&doc);
        if (r < 0) {
                config_done(&tmp);
                return r;
        }
        config_done(c);
        *c = tmp;
        return 0;
}

int config_load_string(struct gemma4d_config *c, const char *name, const char *yaml, char **reterr) {
        yaml_parser_t parser;
        int r;

        if (!yaml_parser_initialize(&parser))
                return fail(reterr, -ENOMEM, "%s: out of memory", name);
        yaml_parser_set_input_string(&parser, (const unsigned char *) yaml, strlen(yaml));
        r = load_parser(c, name, &parser, reterr);
        yaml_parser_delete(&parser);
        return r;
}

int config_load_file(struct gemma4d_config *c, const char *path, char **reterr) {
        yaml_parser_t parser;
        FILE *f;
        int r;

        f = fopen(path, "re");
        if (!f)
                return fail(reterr, -errno, "%s: %s", path, strerror(errno));
        if (!yaml_parser_initialize(&parser)) {
                fclose(f);
                return fail(reterr, -ENOMEM, "%s: out of memory", path);
        }
        yaml_parser_set_input_file(&parser, f);
        r = load_parser(c, path, &parser, reterr);
        yaml_parser_delete(&parser);
        fclose(f);
        return r;
}

/* ---- comparison and printing ---- */

static bool entry_equal(const struct gemma4d_config *a, const struct gemma4d_config *b,
                        const struct config_entry *e) {
        const void *x = cfield(a, e), *y = cfield(b, e);
        switch (e->type) {
        case CONFIG_STRING:     return strcmp(*(char *const *) x, *(char *const *) y) == 0;
        case CONFIG_BOOL:
        case CONFIG_ENUM_BOOL:  return *(const bool *) x == *(const bool *) y;
        case CONFIG_INT:
        case CONFIG_ENUM:       return *(const int *) x == *(const int *) y;
        case CONFIG_U32:        return *(const uint32_t *) x == *(const uint32_t *) y;
        case CONFIG_U64_SIZE:   return *(const uint64_t *) x == *(const uint64_t *) y;
        case CONFIG_DOUBLE:     return *(const double *) x == *(const double *) y;
        case CONFIG_MODE:       return *(const unsigned *) x == *(const unsigned *) y;
        case CONFIG_UID_LIST:
                return ccount_field(a, e) == ccount_field(b, e) &&
                       memcmp(x, y, sizeof(uid_t) * ccount_field(a, e)) == 0;
        case CONFIG_NAME_LIST:
                if (ccount_field(a, e) != ccount_field(b, e))
                        return false;
                for (unsigned k = 0; k < ccount_field(a, e); k++)
                        if (strcmp(((char *const *) x)[k], ((char *const *) y)[k]) != 0)
                                return false;
                return true;
        }
        return false;
}

bool config_equal(const struct gemma4d_config *a, const struct gemma4d_config *b) {
        for (size_t i = 0; i < N_ENTRIES; i++)
                if (!entry_equal(a, b, &config_table[i]))
                        return false;
        return true;
}

bool config_restart_keys_changed(const struct gemma4d_config *old, const struct gemma4d_config *new,
                                 char *buf, size_t bufsize) {
        size_t used = 0;
        bool changed = false;

        if (buf && bufsize)
                buf[0] = '\0';
        for (size_t i = 0; i < N_ENTRIES; i++) {
                const struct config_entry *e = &config_table[i];
                if (!(e->flags & CONFIG_RESTART) || entry_equal(old, new, e))
                        continue;
                if (buf && used < bufsize) {
                        int n = snprintf(buf + used, bufsize - used, "%s%s", changed ? ", " : "", e->name);
                        used = n < 0 ? bufsize : used + (size_t) n;
                }
                changed = true;
        }
        return changed;
}

/* Appends to a growing string; on allocation failure sets *ok = false and stops appending. */
struct strbuf {
        char *s;
        size_t len, cap;
        bool ok;
};

static void sb_printf(struct strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct strbuf *b, const char *fmt, ...) {
        va_list ap;
        if (!b->ok)
                return;
        va_start(ap, fmt);
        char *piece = vformat(fmt, ap);
        va_end(ap);
        size_t n = piece ? strlen(piece) : 0;
        if (!piece || b->len + n + 1 > b->cap) {
                size_t cap = b->cap ? b->cap : 1024;
                while (cap < b->len + n + 1)
                        cap *= 2;
                char *s = piece ? realloc(b->s, cap) : NULL;
                if (!s) {
                        free(piece);
                        b->ok = false;
                        return;
                }
                b->s = s;
                b->cap = cap;
        }
        memcpy(b->s + b->len, piece, n + 1);
        b->len += n;
        free(piece);
}

/* Double-quoted YAML string with the escapes YAML needs. */
static void sb_quoted(struct strbuf *b, const char *s) {
        sb_printf(b, "\"");
        for (; *s; s++) {
                unsigned char ch = (unsigned char) *s;
                if (ch == '"' || ch == '\\')
                        sb_printf(b, "\\%c", ch);
                else if (ch < 0x20 || ch == 0x7f)
                        sb_printf(b, "\\x%02x", ch);
                else
                        sb_printf(b, "%c", ch);
        }
        sb_printf(b, "\"");
}

int config_format(const struct gemma4d_config *c, char **ret) {
        struct strbuf b = { .ok = true };
        char section[64] = "";

        for (size_t i = 0; i < N_ENTRIES; i++) {
                const struct config_entry *e = &config_table[i];
                const void *f = cfield(c, e);
                const char *dot = strchr(e->name, '.'), *key = e->name;
                const char *indent = "";

                if (dot) {
                        size_t n = (size_t) (dot - e->name);
                        if (strlen(section) != n || strncmp(section, e->name, n) != 0) {
                                snprintf(section, sizeof section, "%.*s", (int) n, e->name);
                                sb_printf(&b, "%s:\n", section);
                        }
                        key = dot + 1;
                        indent = "  ";
                } else
                        section[0] = '\0';
                sb_printf(&b, "%s%s: ", indent, key);
                switch (e->type) {
                case CONFIG_STRING:     sb_quoted(&b, *(char *const *) f); break;
                case CONFIG_BOOL:       sb_printf(&b, "%s", *(const bool *) f ? "true" : "false"); break;
                case CONFIG_INT:        sb_printf(&b, "%d", *(const int *) f); break;
                case CONFIG_U32:        sb_printf(&b, "%" PRIu32, *(const uint32_t *) f); break;
                case CONFIG_U64_SIZE: {
                        char num[32];
                        format_number((double) *(const uint64_t *) f, true, num, sizeof num);
                        sb_printf(&b, "%s", num);
                        break;
                }
                case CONFIG_DOUBLE: {
                        /* Shortest form that reads back as the same double. */
                        double d = *(const double *) f;
                        char num[40];
                        for (int prec = 6; prec <= 17; prec++) {
                                snprintf(num, sizeof num, "%.*g", prec, d);
                                if (strtod(num, NULL) == d)
                                        break;
                        }
                        sb_printf(&b, "%s", num);
                        break;
                }
                case CONFIG_MODE:       sb_printf(&b, "0%03o", *(const unsigned *) f); break;
                case CONFIG_ENUM:       sb_printf(&b, "%s", e->names[*(const int *) f]); break;
                case CONFIG_ENUM_BOOL:  sb_printf(&b, "%s", e->names[*(const bool *) f ? 1 : 0]); break;
                case CONFIG_UID_LIST:
                        sb_printf(&b, "[");
                        for (unsigned k = 0; k < ccount_field(c, e); k++)
                                sb_printf(&b, "%s%u", k ? ", " : "", (unsigned) ((const uid_t *) f)[k]);
                        sb_printf(&b, "]");
                        break;
                case CONFIG_NAME_LIST:
                        sb_printf(&b, "[");
                        for (unsigned k = 0; k < ccount_field(c, e); k++) {
                                sb_printf(&b, "%s", k ? ", " : "");
                                sb_quoted(&b, ((char *const *) f)[k]);
                        }
                        sb_printf(&b, "]");
                        break;
                }
                sb_printf(&b, "\n");
        }
        if (!b.ok) {
                free(b.s);
                return -ENOMEM;
        }
        *ret = b.s;
        return 0;
}
