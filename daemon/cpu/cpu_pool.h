/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * A persistent pool of worker threads for the CPU engine. cpu_pool_run() splits a parallel section into
 * n_chunks chunks that the calling thread and the workers claim one at a time, and returns when every
 * chunk is done. Claiming (instead of a fixed share per thread) matters on a shared machine: when a worker
 * is not scheduled, the caller simply does its chunks, and it never waits for a worker that has not
 * started. Workers spin briefly before sleeping, because a step issues many short sections.
 */
#include <stdint.h>

struct cpu_pool;

/* Runs chunk `chunk` of a section; tid (0 = the caller, < cpu_pool_size()) identifies the thread, e.g.
 * for per-thread scratch memory. */
typedef void (*cpu_pool_fn)(void *ctx, uint32_t chunk, int tid);

int cpu_pool_new(int n_threads, struct cpu_pool **ret);
void cpu_pool_free(struct cpu_pool *p);
int cpu_pool_size(const struct cpu_pool *p);
void cpu_pool_run(struct cpu_pool *p, cpu_pool_fn fn, void *ctx, uint32_t n_chunks);

/* The [begin, end) part of n items that chunk c of n_chunks covers (contiguous, balanced). */
static inline void cpu_pool_share(uint64_t n, uint32_t c, uint32_t n_chunks, uint64_t *begin, uint64_t *end) {
        *begin = n * (uint64_t) c / (uint64_t) n_chunks;
        *end = n * (uint64_t) (c + 1) / (uint64_t) n_chunks;
}
