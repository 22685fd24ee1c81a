/* SPDX-License-Identifier: Apache-2.0 */
/* Wire names of enums, diagnostics and UTF-8 checks. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "proto-internal.h"

static const char *const code_names[_PROTO_CODE_MAX] = {
        [PROTO_CODE_NONE] = "none",
        [PROTO_CODE_BAD_REQUEST] = "bad_request",
        [PROTO_CODE_FRAME_TOO_LARGE] = "frame_too_large",
        [PROTO_CODE_TOO_LONG] = "too_long",
        [PROTO_CODE_OVERLOADED] = "overloaded",
        [PROTO_CODE_CANCELLED] = "cancelled",
        [PROTO_CODE_DEADLINE] = "deadline",
        [PROTO_CODE_INTERNAL] = "internal",
        [PROTO_CODE_UNSUPPORTED_VERSION] = "unsupported_version",
        [PROTO_CODE_UNSUPPORTED] = "unsupported",
        [PROTO_CODE_NOT_READY] = "not_ready",
        [PROTO_CODE_SHUTTING_DOWN] = "shutting_down",
        [PROTO_CODE_HANDSHAKE] = "handshake",
        [PROTO_CODE_DUPLICATE_ID] = "duplicate_id",
        [PROTO_CODE_UNKNOWN] = "unknown",
};

static const char *const type_names[_PROTO_TYPE_MAX] = {
        [PROTO_TYPE_HELLO] = "hello",
        [PROTO_TYPE_GENERATE] = "generate",
        [PROTO_TYPE_CHAT] = "chat",
        [PROTO_TYPE_CANCEL] = "cancel",
        [PROTO_TYPE_STATUS] = "status",
        [PROTO_TYPE_TOKENIZE] = "tokenize",
        [PROTO_TYPE_DETOKENIZE] = "detokenize",
        [PROTO_TYPE_SCORE] = "score",
        [PROTO_TYPE_WELCOME] = "welcome",
        [PROTO_TYPE_STARTED] = "started",
        [PROTO_TYPE_DELTA] = "delta",
        [PROTO_TYPE_TOOL_CALL] = "tool_call",
        [PROTO_TYPE_FINISHED] = "finished",
        [PROTO_TYPE_ERROR] = "error",
        [PROTO_TYPE_STATUS_REPLY] = "status_reply",
        [PROTO_TYPE_TOKENIZE_REPLY] = "tokenize_reply",
        [PROTO_TYPE_DETOKENIZE_REPLY] = "detokenize_reply",
        [PROTO_TYPE_SCORE_REPLY] = "score_reply",
};

static const char *const reason_names[_PROTO_REASON_MAX] = {
        [PROTO_REASON_STOP] = "stop",
        [PROTO_REASON_LENGTH] = "length",
        [PROTO_REASON_CANCELLED] = "cancelled",
        [PROTO_REASON_DEADLINE] = "deadline",
        [PROTO_REASON_ERROR] = "error",
};

const char *proto_code_to_string(enum proto_code code) {
        if (code < 0 || code >= _PROTO_CODE_MAX)
                return NULL;
        return code_names[code];
}

enum proto_code proto_code_from_string(const char *s) {
        if (!s)
                return _PROTO_CODE_INVALID;
        /* "none" and "unknown" are internal; on the wire they are just unknown codes. */
        for (int i = PROTO_CODE_BAD_REQUEST; i < PROTO_CODE_UNKNOWN; i++)
                if (strcmp(code_names[i], s) == 0)
                        return (enum proto_code) i;
        return PROTO_CODE_UNKNOWN;
}

const char *proto_type_to_string(enum proto_type type) {
        if (type <= PROTO_TYPE_NONE || type >= _PROTO_TYPE_MAX)
                return NULL;
        return type_names[type];
}

enum proto_type proto_type_from_string(const char *s) {
        if (!s)
                return _PROTO_TYPE_INVALID;
        for (int i = PROTO_TYPE_HELLO; i < _PROTO_TYPE_MAX; i++)
                if (strcmp(type_names[i], s) == 0)
                        return (enum proto_type) i;
        return _PROTO_TYPE_INVALID;
}

bool proto_type_is_request(enum proto_type type) {
        return type >= PROTO_TYPE_HELLO && type <= PROTO_TYPE_SCORE;
}

const char *proto_reason_to_string(enum proto_reason reason) {
        if (reason < 0 || reason >= _PROTO_REASON_MAX)
                return NULL;
        return reason_names[reason];
}

enum proto_reason proto_reason_from_string(const char *s) {
        if (!s)
                return _PROTO_REASON_INVALID;
        for (int i = 0; i < _PROTO_REASON_MAX; i++)
                if (strcmp(reason_names[i], s) == 0)
                        return (enum proto_reason) i;
        return _PROTO_REASON_INVALID;
}

/* ---- diagnostics ---- */

static void diag_vset(struct proto_diag *d, enum proto_code code, const char *prefix, const char *fmt,
                      va_list ap) {
        size_t n = 0;

        d->code = code;
        d->message[0] = 0;
        if (prefix) {
                int k = snprintf(d->message, sizeof(d->message), "%s: ", prefix);
                n = k < 0 ? 0 : (size_t) k >= sizeof(d->message) ? sizeof(d->message) - 1 : (size_t) k;
        }
        (void) vsnprintf(d->message + n, sizeof(d->message) - n, fmt, ap);
}

int proto__diag_fail(struct proto_diag *d, enum proto_code code, const char *fmt, ...) {
        va_list ap;

        if (!d)
                return -EBADMSG;
        va_start(ap, fmt);
        diag_vset(d, code, NULL, fmt, ap);
        va_end(ap);
        return -EBADMSG;
}

int proto__diag_key(struct proto_diag *d, const char *path, const char *key, const char *fmt, ...) {
        char name[128];
        va_list ap;

        if (!d)
                return -EBADMSG;
        proto__path_join(name, sizeof(name), path, key);
        va_start(ap, fmt);
        diag_vset(d, PROTO_CODE_BAD_REQUEST, name, fmt, ap);
        va_end(ap);
        return -EBADMSG;
}

void proto__path_join(char *buf, size_t size, const char *path, const char *key) {
        if (path && *path && key)
                (void) snprintf(buf, size, "%s.%s", path, key);
        else
                (void) snprintf(buf, size, "%s", key ? key : path ? path : "");
}

void proto__path_index(char *buf, size_t size, const char *path, uint32_t i) {
        (void) snprintf(buf, size, "%s[%u]", path ? path : "", i);
}

const char *proto__object_kind(const msgpack_object *o) {
        switch (o->type) {
        case MSGPACK_OBJECT_NIL:
                return "nil";
        case MSGPACK_OBJECT_BOOLEAN:
                return "boolean";
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
                return "integer";
        case MSGPACK_OBJECT_FLOAT32:
        case MSGPACK_OBJECT_FLOAT64:
                return "float";
        case MSGPACK_OBJECT_STR:
                return "string";
        case MSGPACK_OBJECT_ARRAY:
                return "array";
        case MSGPACK_OBJECT_MAP:
                return "map";
        case MSGPACK_OBJECT_BIN:
                return "binary";
        case MSGPACK_OBJECT_EXT:
                return "extension";
        }
        return "unknown";
}

/* ---- UTF-8 ---- */

/* Length of the valid sequence starting at s[0], 0 if invalid; *ret_partial set when s[0..len) is a
 * valid but truncated prefix of a sequence. */
static size_t utf8_seq(const uint8_t *s, size_t len, bool *ret_partial) {
        uint8_t c = s[0];
        size_t n;
        uint8_t lo = 0x80, hi = 0xbf;

        *ret_partial = false;
        if (c < 0x80)
                return 1;
        if (c >= 0xc2 && c <= 0xdf)
                n = 2;
        else if (c >= 0xe0 && c <= 0xef) {
                n = 3;
                if (c == 0xe0)
                        lo = 0xa0;              /* overlong */
                else if (c == 0xed)
                        hi = 0x9f;              /* surrogates */
        } else if (c >= 0xf0 && c <= 0xf4) {
                n = 4;
                if (c == 0xf0)
                        lo = 0x90;              /* overlong */
                else if (c == 0xf4)
                        hi = 0x8f;              /* above U+10FFFF */
        } else
                return 0;

        for (size_t i = 1; i < n; i++) {
                if (i >= len) {
                        *ret_partial = true;
                        return 0;
                }
                uint8_t b = s[i];
                if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xbf))
                        return 0;
        }
        return n;
}

size_t proto__utf8_char_len(const char *s, size_t len) {
        bool partial;

        if (len == 0 || s[0] == 0)
                return 0;
        return utf8_seq((const uint8_t *) s, len, &partial);
}

bool proto_utf8_valid(const char *s, size_t len) {
        const uint8_t *p = (const uint8_t *) s;
        size_t i = 0;

        while (i < len) {
                bool partial;
                size_t n;

                if (p[i] == 0)
                        return false;
                if (p[i] < 0x80) {
                        i++;
                        continue;
                }
                n = utf8_seq(p + i, len - i, &partial);
                if (n == 0)
                        return false;
                i += n;
        }
        return true;
}

size_t proto_utf8_complete_prefix(const char *s, size_t len) {
        const uint8_t *p = (const uint8_t *) s;
        size_t start;

        /* Only the last up to 3 bytes can be an unfinished sequence; find its lead byte. */
        start = len > 3 ? len - 3 : 0;
        for (size_t i = len; i > start; i--) {
                uint8_t c = p[i - 1];
                bool partial;

                if (c < 0x80)
                        break;                  /* ASCII: everything up to here is complete */
                if (c >= 0xc0) {                /* a lead byte (or an invalid 0xc0/0xc1/0xf5+) */
                        (void) utf8_seq(p + i - 1, len - (i - 1), &partial);
                        return partial ? i - 1 : len;
                }
        }
        return len;
}
