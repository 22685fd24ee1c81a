/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * A persistent pool of worker threads for the CPU engine. cpu_pool_run() calls fn(ctx, tid, n) once on
 * every thread (tid 0 is the caller) and returns when all have finished. Workers spin briefly before
 * sleeping, because a decode step issues a few hundred short parallel sections.
 */
#include <stdint.h>

struct cpu_pool;

typedef void (*cpu_pool_fn)(void *ctx, int tid, int n_threads);

int cpu_pool_new(int n_threads, struct cpu_pool **ret);
void cpu_pool_free(struct cpu_pool *p);
int cpu_pool_size(const struct cpu_pool *p);
void cpu_pool_run(struct cpu_pool *p, cpu_pool_fn fn, void *ctx);

/* The [begin, end) share of n items for thread tid of n_threads (contiguous, balanced). */
static inline void cpu_pool_share(uint64_t n, int tid, int n_threads, uint64_t *begin, uint64_t *end) {
        *begin = n * (uint64_t) tid / (uint64_t) n_threads;
        *end = n * (uint64_t) (tid + 1) / (uint64_t) n_threads;
}
