/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * Example messages of every type, shared by the proto unit tests, the fuzz corpus generator and the
 * generator of the hex dumps in docs/protocol.md. Strings and arrays are static (borrowed); JSON values
 * are created fresh, so release every sample with sample_release().
 */
#include "proto.h"

/* Number of samples; each type appears at least once, some with variants. */
unsigned sample_count(void);

/* Fill *m with sample i and return its name ("generate", "generate-ids", ...). */
const char *sample_get(unsigned i, struct proto_msg *m);

/* Drop the JSON references a sample holds (not the static parts). */
void sample_release(struct proto_msg *m);
