/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Fuzz the incremental frame reader and, through it, the generic decoder.
 *
 * Input: one control byte, then the byte stream. The control byte's low nibble picks the reader's limit
 * (0: the default 16 MiB, k: 2^(k+3) bytes, so small limits are hit); the high nibble seeds the sizes of
 * the pieces the stream is fed in (0: all at once, else a varying 1..n split). Every frame that comes out
 * is decoded; the reader must never hand out more than the limit, and must consume all it is given.
 */
#include <stdlib.h>

#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct proto_reader rd;
        struct proto_diag d;
        uint32_t limit;
        unsigned seed;
        size_t pos = 1;

        if (size < 1)
                return 0;
        limit = (data[0] & 0x0f) ? 1u << ((data[0] & 0x0f) + 3) : 0;
        seed = data[0] >> 4;
        proto_reader_init(&rd, limit);

        while (pos < size) {
                size_t piece = size - pos, used;
                int r;

                if (seed) {
                        seed = seed * 1103515245u + 12345u;
                        piece = 1 + (seed >> 16) % (piece < 61 ? piece : 61);
                }
                r = proto_reader_feed(&rd, data + pos, piece, &used, &d);
                if (used > piece)
                        abort();
                pos += used;
                if (r < 0) {
                        fuzz_check_diag(&d);
                        break;
                }
                if (r == 1) {
                        struct proto_msg m;
                        const uint8_t *frame;
                        size_t flen;

                        frame = proto_reader_frame(&rd, &flen);
                        if (!frame || flen == 0 || flen > rd.max_frame)
                                abort();
                        if (proto_decode(frame, flen, &m, &d) < 0)
                                fuzz_check_diag(&d);
                        else {
                                fuzz_check_round_trip(&m, proto_decode);
                                proto_msg_done(&m);
                        }
                } else if (used != piece)
                        abort();                        /* 0 means everything was consumed */
        }
        proto_reader_done(&rd);
        return 0;
}
