/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/* Per-op timing of the CUDA backend, for tools/gpubench and docs/performance.md. Enabled by the environment
 * variable GEMMA4D_CUDA_PROFILE=1 at create (it disables decode graphs: events sit between the ops). */
#include <stdbool.h>
#include <stddef.h>

struct backend;

/* Turns per-op events on or off (on: decode graphs are bypassed while it lasts). */
int cuda_backend_set_profile(struct backend *b, bool on);
/* Writes a table "op ms/step share" averaged over the steps since the last reset into buf. Returns 0, or
 * -ENOTSUP when profiling is off. */
int cuda_backend_profile(struct backend *b, char *buf, size_t size, bool reset);
