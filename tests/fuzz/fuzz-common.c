/* SPDX-License-Identifier: Apache-2.0 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

static void die(const char *what) {
        fprintf(stderr, "fuzz oracle violated: %s\n", what);
        abort();
}

void fuzz_check_round_trip(const struct proto_msg *m,
                           int (*decode)(const void *, size_t, struct proto_msg *, struct proto_diag *)) {
        struct proto_buf a, b;
        struct proto_msg again;
        struct proto_diag d;

        /* An error code this version does not know decodes as PROTO_CODE_UNKNOWN, which is never sent:
         * the one thing a client legitimately cannot re-encode. */
        if ((m->type == PROTO_TYPE_ERROR && m->error.code == PROTO_CODE_UNKNOWN) ||
            (m->type == PROTO_TYPE_FINISHED && m->finished.error_code == PROTO_CODE_UNKNOWN))
                return;

        proto_buf_init(&a);
        proto_buf_init(&b);
        if (proto_encode(&a, m) < 0)
                die("a decoded message does not encode");
        if (a.len < PROTO_FRAME_HEADER_BYTES)
                die("short frame");
        if (decode(a.data + PROTO_FRAME_HEADER_BYTES, a.len - PROTO_FRAME_HEADER_BYTES, &again, &d) < 0) {
                fprintf(stderr, "%s\n", d.message);
                die("an encoded message does not decode");
        }
        if (again.type != m->type || proto_msg_id(&again) != proto_msg_id(m))
                die("type or id changed in a round trip");
        if (proto_encode(&b, &again) < 0)
                die("a re-decoded message does not encode");
        if (a.len != b.len || memcmp(a.data, b.data, a.len) != 0)
                die("encoding is not stable across a round trip");
        proto_msg_done(&again);
        proto_buf_done(&a);
        proto_buf_done(&b);
}

void fuzz_check_diag(const struct proto_diag *d) {
        struct proto_buf b;

        if (d->code <= PROTO_CODE_NONE || d->code >= _PROTO_CODE_MAX)
                die("rejection without a code");
        if (!memchr(d->message, 0, sizeof(d->message)) || d->message[0] == 0)
                die("rejection without a message");
        proto_buf_init(&b);
        if (proto_encode_diag(&b, d) < 0)
                die("a rejection cannot be reported");
        proto_buf_done(&b);
}
