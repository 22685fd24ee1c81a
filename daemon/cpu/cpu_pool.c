/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Sections are numbered (generation). A chunk is claimed by compare-and-swap on a 64-bit word holding
 * (generation << 32 | next chunk), so a worker that wakes up late, after its section has ended, can never
 * claim a chunk of a newer section with the function it read for the old one: its claim carries the old
 * generation and fails. Section descriptions live in two slots (by generation parity) so the caller can
 * publish the next section while a late worker may still be reading the previous description; such a
 * worker never uses what it read.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

#include "cpu_pool.h"

#define SPIN_ROUNDS 20000

struct section {
        _Atomic(cpu_pool_fn) fn;
        _Atomic(void *) ctx;
        atomic_uint n_chunks;
};

struct cpu_pool {
        int n_threads;
        pthread_t *threads;
        pthread_mutex_t mu;
        pthread_cond_t cv;
        atomic_uint_fast64_t generation;
        atomic_uint_fast64_t next;      /* (uint32 generation << 32) | next chunk index */
        atomic_uint done;               /* chunks finished in the current section */
        atomic_int sleepers;
        atomic_bool stop;
        struct section slot[2];
};

struct worker_arg {
        struct cpu_pool *pool;
        int tid;
};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
}

static bool claim(struct cpu_pool *p, uint32_t gen, uint32_t n_chunks, uint32_t *ret) {
        uint64_t v = atomic_load(&p->next);

        for (;;) {
                if ((uint32_t) (v >> 32) != gen || (uint32_t) v >= n_chunks)
                        return false;
                if (atomic_compare_exchange_weak(&p->next, &v, v + 1)) {
                        *ret = (uint32_t) v;
                        return true;
                }
        }
}

static void work(struct cpu_pool *p, uint64_t gen, int tid) {
        struct section *s = &p->slot[gen & 1];
        cpu_pool_fn fn = atomic_load(&s->fn);
        void *ctx = atomic_load(&s->ctx);
        uint32_t n = atomic_load(&s->n_chunks), c;

        while (claim(p, (uint32_t) gen, n, &c)) {
                fn(ctx, c, tid);
                atomic_fetch_add(&p->done, 1);
        }
}

static void *worker_main(void *arg) {
        struct worker_arg *wa = arg;
        struct cpu_pool *p = wa->pool;
        int tid = wa->tid;
        uint64_t seen = 0;

        free(wa);
        for (;;) {
                uint64_t gen = atomic_load(&p->generation);
                for (int i = 0; gen == seen && i < SPIN_ROUNDS; i++) {
                        cpu_relax();
                        gen = atomic_load(&p->generation);
                }
                if (gen == seen) {
                        pthread_mutex_lock(&p->mu);
                        atomic_fetch_add(&p->sleepers, 1);
                        while ((gen = atomic_load(&p->generation)) == seen && !atomic_load(&p->stop))
                                pthread_cond_wait(&p->cv, &p->mu);
                        atomic_fetch_sub(&p->sleepers, 1);
                        pthread_mutex_unlock(&p->mu);
                }
                if (atomic_load(&p->stop))
                        return NULL;
                seen = gen;
                work(p, gen, tid);
        }
}

int cpu_pool_new(int n_threads, struct cpu_pool **ret) {
        struct cpu_pool *p;
        int r;

        if (n_threads < 1 || n_threads > 1024)
                return -EINVAL;
        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->n_threads = 1;
        pthread_mutex_init(&p->mu, NULL);
        pthread_cond_init(&p->cv, NULL);
        atomic_init(&p->generation, 0);
        atomic_init(&p->next, 0);
        atomic_init(&p->done, 0);
        atomic_init(&p->sleepers, 0);
        atomic_init(&p->stop, false);
        for (int i = 0; i < 2; i++) {
                atomic_init(&p->slot[i].fn, NULL);
                atomic_init(&p->slot[i].ctx, NULL);
                atomic_init(&p->slot[i].n_chunks, 0);
        }
        p->threads = calloc((size_t) n_threads, sizeof(pthread_t));
        if (!p->threads) {
                cpu_pool_free(p);
                return -ENOMEM;
        }
        for (int i = 1; i < n_threads; i++) {
                struct worker_arg *wa = malloc(sizeof(*wa));
                if (!wa) {
                        cpu_pool_free(p);
                        return -ENOMEM;
                }
                wa->pool = p;
                wa->tid = i;
                r = pthread_create(&p->threads[i], NULL, worker_main, wa);
                if (r != 0) {
                        free(wa);
                        cpu_pool_free(p);
                        return -r;
                }
                p->n_threads = i + 1;
        }
        *ret = p;
        return 0;
}

void cpu_pool_free(struct cpu_pool *p) {
        if (!p)
                return;
        atomic_store(&p->stop, true);
        atomic_fetch_add(&p->generation, 1);
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        for (int i = 1; i < p->n_threads; i++)
                pthread_join(p->threads[i], NULL);
        pthread_cond_destroy(&p->cv);
        pthread_mutex_destroy(&p->mu);
        free(p->threads);
        free(p);
}

int cpu_pool_size(const struct cpu_pool *p) {
        return p->n_threads;
}

void cpu_pool_run(struct cpu_pool *p, cpu_pool_fn fn, void *ctx, uint32_t n_chunks) {
        uint64_t gen;

        if (n_chunks == 0)
                return;
        if (p->n_threads == 1 || n_chunks == 1) {
                for (uint32_t c = 0; c < n_chunks; c++)
                        fn(ctx, c, 0);
                return;
        }
        /* only this thread writes generation, slots and the counters' resets */
        gen = atomic_load(&p->generation) + 1;
        atomic_store(&p->slot[gen & 1].fn, fn);
        atomic_store(&p->slot[gen & 1].ctx, ctx);
        atomic_store(&p->slot[gen & 1].n_chunks, n_chunks);
        atomic_store(&p->done, 0);
        atomic_store(&p->next, (uint64_t) (uint32_t) gen << 32);
        atomic_store(&p->generation, gen);
        if (atomic_load(&p->sleepers) > 0) {
                pthread_mutex_lock(&p->mu);
                pthread_cond_broadcast(&p->cv);
                pthread_mutex_unlock(&p->mu);
        }
        work(p, gen, 0);
        /* only chunks a worker has claimed and not finished can remain */
        for (int i = 0; atomic_load(&p->done) < n_chunks; i++) {
                if (i < SPIN_ROUNDS)
                        cpu_relax();
                else
                        sched_yield();
        }
}
