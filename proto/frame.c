/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Framing: the output buffer encoders append to, and the incremental reader that cuts a byte stream into
 * frame bodies. A frame is a 4-byte big-endian body length, then the body (one msgpack map).
 */
#include <stdlib.h>
#include <string.h>

#include "proto-internal.h"

/* A reader keeps at most this much memory between frames; a larger buffer is freed once its frame is
 * consumed, so idle connections do not pin a 16 MiB peak. */
#define READER_KEEP_BYTES (64u * 1024u)
#define READER_MIN_ALLOC 4096u

void proto_buf_init(struct proto_buf *b) {
        *b = (struct proto_buf) {};
}

void proto_buf_done(struct proto_buf *b) {
        if (!b)
                return;
        free(b->data);
        *b = (struct proto_buf) {};
}

void proto_buf_reset(struct proto_buf *b) {
        b->len = 0;
}

void proto_buf_consume(struct proto_buf *b, size_t n) {
        if (n >= b->len) {
                b->len = 0;
                return;
        }
        memmove(b->data, b->data + n, b->len - n);
        b->len -= n;
}

int proto__buf_reserve(struct proto_buf *b, size_t extra) {
        size_t need, cap;
        uint8_t *p;

        if (extra > SIZE_MAX - b->len)
                return -ENOMEM;
        need = b->len + extra;
        if (need <= b->cap)
                return 0;
        cap = b->cap ? b->cap : 256;
        while (cap < need)
                cap = cap > SIZE_MAX / 2 ? need : cap * 2;
        p = realloc(b->data, cap);
        if (!p)
                return -ENOMEM;
        b->data = p;
        b->cap = cap;
        return 0;
}

static int buf_write(void *data, const char *buf, size_t len) {
        struct proto_buf *b = data;

        if (len == 0)
                return 0;
        if (proto__buf_reserve(b, len) < 0)
                return -1;
        memcpy(b->data + b->len, buf, len);
        b->len += len;
        return 0;
}

void proto__packer_init_buf(msgpack_packer *pk, struct proto_buf *b) {
        msgpack_packer_init(pk, b, buf_write);
}

static void put_be32(uint8_t *p, uint32_t v) {
        p[0] = (uint8_t) (v >> 24);
        p[1] = (uint8_t) (v >> 16);
        p[2] = (uint8_t) (v >> 8);
        p[3] = (uint8_t) v;
}

int proto_frame_append(struct proto_buf *b, const void *body, size_t len) {
        int r;

        if (len > UINT32_MAX)
                return -EMSGSIZE;
        r = proto__buf_reserve(b, PROTO_FRAME_HEADER_BYTES + len);
        if (r < 0)
                return r;
        put_be32(b->data + b->len, (uint32_t) len);
        if (len > 0)
                memcpy(b->data + b->len + PROTO_FRAME_HEADER_BYTES, body, len);
        b->len += PROTO_FRAME_HEADER_BYTES + len;
        return 0;
}

/* ---- reader ---- */

void proto_reader_init(struct proto_reader *r, uint32_t max_frame) {
        *r = (struct proto_reader) {};
        if (max_frame == 0)
                max_frame = PROTO_DEFAULT_MAX_FRAME;
        if (max_frame > PROTO_MAX_FRAME_LIMIT)
                max_frame = PROTO_MAX_FRAME_LIMIT;
        r->max_frame = max_frame;
}

void proto_reader_done(struct proto_reader *r) {
        if (!r)
                return;
        free(r->buf);
        r->buf = NULL;
        r->len = r->cap = 0;
        r->header_len = 0;
        r->frame_ready = false;
}

static void reader_discard_frame(struct proto_reader *r) {
        r->frame_ready = false;
        r->header_len = 0;
        r->body_len = 0;
        r->len = 0;
        if (r->cap > READER_KEEP_BYTES) {
                free(r->buf);
                r->buf = NULL;
                r->cap = 0;
        }
}

/* Grow the body buffer geometrically, but never beyond the announced body length: memory follows the
 * bytes that really arrived, not the length prefix. */
static int reader_reserve(struct proto_reader *r, size_t need) {
        size_t cap;
        uint8_t *p;

        if (need <= r->cap)
                return 0;
        cap = r->cap ? r->cap : READER_MIN_ALLOC;
        while (cap < need)
                cap *= 2;
        if (cap > r->body_len)
                cap = r->body_len;
        p = realloc(r->buf, cap);
        if (!p)
                return -ENOMEM;
        r->buf = p;
        r->cap = cap;
        return 0;
}

static int reader_fail(struct proto_reader *r, int error) {
        r->error = error;
        return error;
}

static int reader_sticky_diag(const struct proto_reader *r, struct proto_diag *d) {
        /* A framing error is tied to no request. */
        if (d)
                *d = (struct proto_diag) {};
        if (r->error == -EMSGSIZE)
                (void) proto__diag_fail(d, PROTO_CODE_FRAME_TOO_LARGE,
                                        "frame: length %u exceeds the limit of %u bytes",
                                 r->body_len, r->max_frame);
        else if (r->error == -EBADMSG)
                (void) proto__diag_fail(d, PROTO_CODE_BAD_REQUEST, "frame: zero length");
        else
                (void) proto__diag_fail(d, PROTO_CODE_INTERNAL, "frame: out of memory");
        return r->error;
}

int proto_reader_feed(struct proto_reader *r, const void *data, size_t len, size_t *ret_consumed,
                      struct proto_diag *reterr) {
        const uint8_t *p = data;
        size_t used = 0;
        int e;

        *ret_consumed = 0;
        if (r->error < 0) {
                (void) reader_sticky_diag(r, reterr);
                return r->error;
        }
        if (r->frame_ready)
                reader_discard_frame(r);

        while (used < len) {
                if (r->header_len < PROTO_FRAME_HEADER_BYTES) {
                        size_t n = PROTO_FRAME_HEADER_BYTES - r->header_len;

                        if (n > len - used)
                                n = len - used;
                        memcpy(r->header + r->header_len, p + used, n);
                        r->header_len += (uint32_t) n;
                        used += n;
                        if (r->header_len < PROTO_FRAME_HEADER_BYTES)
                                break;
                        r->body_len = (uint32_t) r->header[0] << 24 | (uint32_t) r->header[1] << 16 |
                                      (uint32_t) r->header[2] << 8 | (uint32_t) r->header[3];
                        *ret_consumed = used;
                        if (r->body_len == 0) {
                                (void) reader_fail(r, -EBADMSG);
                                return reader_sticky_diag(r, reterr);
                        }
                        if (r->body_len > r->max_frame) {
                                (void) reader_fail(r, -EMSGSIZE);
                                return reader_sticky_diag(r, reterr);
                        }
                        continue;
                }

                size_t n = r->body_len - r->len;
                if (n > len - used)
                        n = len - used;
                e = reader_reserve(r, r->len + n);
                if (e < 0) {
                        *ret_consumed = used;
                        (void) reader_fail(r, e);
                        return reader_sticky_diag(r, reterr);
                }
                memcpy(r->buf + r->len, p + used, n);
                r->len += n;
                used += n;
                if (r->len == r->body_len) {
                        r->frame_ready = true;
                        *ret_consumed = used;
                        return 1;
                }
        }
        *ret_consumed = used;
        return 0;
}

const uint8_t *proto_reader_frame(const struct proto_reader *r, size_t *ret_len) {
        if (!r->frame_ready)
                return NULL;
        *ret_len = r->len;
        return r->buf;
}

bool proto_reader_partial(const struct proto_reader *r) {
        return !r->frame_ready && r->header_len > 0;
}
