/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * A small fixed pool of threads that runs the jobs of one engine step in parallel (host sampling of the
 * step's logits rows) and returns when all are done. The calling thread works too, as worker 0. Each worker
 * owns one struct sampler (its scratch), so a job's result depends only on its inputs, never on the worker
 * or the thread count: the sampler's draw is counter based (sampler.h).
 */
#include <stdint.h>

#include "server/sampler.h"

struct sample_pool;

/* n_workers >= 1 (1 = no extra thread: jobs run inline). Returns 0 or a negative errno. */
int sample_pool_new(uint32_t n_workers, uint32_t vocab_size, struct sample_pool **ret);
struct sample_pool *sample_pool_free(struct sample_pool *p);

uint32_t sample_pool_workers(const struct sample_pool *p);
/* Worker 0's sampler, for work the caller does alone. */
struct sampler *sample_pool_sampler(struct sample_pool *p);

/* Run fn(arg, job, sampler) for job in [0, n_jobs) across the workers; returns when every job is done.
 * fn must not touch state shared with other jobs. Only one thread may call this at a time. */
void sample_pool_run(struct sample_pool *p, uint32_t n_jobs,
                     void (*fn)(void *arg, uint32_t job, struct sampler *s), void *arg);
