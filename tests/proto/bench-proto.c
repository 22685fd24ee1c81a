/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Codec cost per message: for every sample, the time to encode it into a frame, and to read the frame
 * back through the reader and decode it. Not a test (timings vary); numbers go to docs/perf-notes.md.
 *
 *   bench-proto [ITERATIONS]      (default 200000)
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "proto.h"
#include "samples.h"

static double now_ns(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv) {
        long iters = argc > 1 ? atol(argv[1]) : 200000;
        struct proto_buf b;
        struct proto_reader rd;

        if (iters <= 0) {
                fprintf(stderr, "usage: %s [ITERATIONS]\n", argv[0]);
                return 2;
        }
        proto_buf_init(&b);
        proto_reader_init(&rd, 0);
        printf("%-18s %7s %12s %12s\n", "message", "bytes", "encode ns", "decode ns");
        for (unsigned i = 0; i < sample_count(); i++) {
                struct proto_msg m, d;
                struct proto_diag diag;
                const char *name = sample_get(i, &m);
                double t0, t1, t2;
                size_t used, flen;
                const uint8_t *frame;

                t0 = now_ns();
                for (long k = 0; k < iters; k++) {
                        proto_buf_reset(&b);
                        if (proto_encode(&b, &m) < 0)
                                return 1;
                }
                t1 = now_ns();
                for (long k = 0; k < iters; k++) {
                        if (proto_reader_feed(&rd, b.data, b.len, &used, &diag) != 1)
                                return 1;
                        frame = proto_reader_frame(&rd, &flen);
                        if (proto_decode(frame, flen, &d, &diag) < 0)
                                return 1;
                        proto_msg_done(&d);
                }
                t2 = now_ns();
                printf("%-18s %7zu %12.0f %12.0f\n", name, b.len, (t1 - t0) / iters, (t2 - t1) / iters);
                sample_release(&m);
        }
        proto_reader_done(&rd);
        proto_buf_done(&b);
        return 0;
}
