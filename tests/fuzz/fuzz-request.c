/* SPDX-License-Identifier: Apache-2.0 */
/* Fuzz the decoder of what clients send (hello and requests): input = one frame body. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct proto_msg m;
        struct proto_diag d;

        if (proto_decode_request(data, size, &m, &d) < 0) {
                fuzz_check_diag(&d);
                return 0;
        }
        fuzz_check_round_trip(&m, proto_decode_request);
        proto_msg_done(&m);
        return 0;
}
