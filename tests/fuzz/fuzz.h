/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * Shared by the fuzz targets: the libFuzzer entry point, and the oracle every decoder target checks.
 * Built with -fsanitize=fuzzer when meson is configured with -Dfuzz=true under clang, otherwise linked
 * with fuzz-main.c, which replays the seed corpus as an ordinary test.
 */
#include <stddef.h>
#include <stdint.h>

#include "proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/*
 * The oracle for a frame body that decode() accepted: encoding the decoded message must succeed, the
 * result must decode again, and encoding that must give the very same bytes (the codec is canonical and
 * loses nothing it accepted). Aborts on violation, so the fuzzer reports it as a crash.
 */
void fuzz_check_round_trip(const struct proto_msg *m,
                           int (*decode)(const void *, size_t, struct proto_msg *, struct proto_diag *));

/* A rejection must carry a code and a non-empty, NUL-terminated message; encode_diag must accept it. */
void fuzz_check_diag(const struct proto_diag *d);
