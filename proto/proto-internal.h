/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/* Helpers shared by the proto/ translation units; not part of the API (prefix proto__, like uv__). */
#include "proto.h"

/* Fill *d (if not NULL) with code and a formatted message; returns -EBADMSG. */
int proto__diag_fail(struct proto_diag *d, enum proto_code code, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

/* As diag_fail with code bad_request and the message prefixed "PATH.KEY: " (or "KEY: " for no path). */
int proto__diag_key(struct proto_diag *d, const char *path, const char *key, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

/* Join path and key as "path.key" (or "key") into buf; used to name nested objects. */
void proto__path_join(char *buf, size_t size, const char *path, const char *key);
/* "path[i]" into buf. */
void proto__path_index(char *buf, size_t size, const char *path, uint32_t i);

/* msgpack type of an object as a word for messages ("string", "array", ...). */
const char *proto__object_kind(const msgpack_object *o);

/* Checks shared by encoders and decoders; return 0 or -EBADMSG with diag (bad_request). */
int proto__check_chat_messages(const json_t *messages, struct proto_diag *d);
int proto__check_chat_tools(const json_t *tools, struct proto_diag *d);
int proto__check_tool_arguments(const char *path, const char *arguments, struct proto_diag *d);

/* Bytes of the valid UTF-8 character (not NUL) at s[0], 0 if invalid, NUL or truncated. */
size_t proto__utf8_char_len(const char *s, size_t len);

/* A msgpack packer that appends to a proto_buf. */
void proto__packer_init_buf(msgpack_packer *pk, struct proto_buf *b);
int proto__buf_reserve(struct proto_buf *b, size_t extra);
