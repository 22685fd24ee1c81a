/* SPDX-License-Identifier: Apache-2.0 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

#include "cpu_pool.h"

#define SPIN_ROUNDS 20000

struct cpu_pool {
        int n_threads;
        pthread_t *threads;
        pthread_mutex_t mu;
        pthread_cond_t cv;
        atomic_uint_fast64_t generation;
        atomic_int remaining;
        atomic_int sleepers;
        atomic_bool stop;
        cpu_pool_fn fn;
        void *ctx;
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
                p->fn(p->ctx, tid, p->n_threads);
                atomic_fetch_sub(&p->remaining, 1);
        }
}

static void wake_all(struct cpu_pool *p) {
        if (atomic_load(&p->sleepers) > 0) {
                pthread_mutex_lock(&p->mu);
                pthread_cond_broadcast(&p->cv);
                pthread_mutex_unlock(&p->mu);
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
        p->n_threads = n_threads;
        pthread_mutex_init(&p->mu, NULL);
        pthread_cond_init(&p->cv, NULL);
        atomic_init(&p->generation, 0);
        atomic_init(&p->remaining, 0);
        atomic_init(&p->sleepers, 0);
        atomic_init(&p->stop, false);
        p->threads = calloc((size_t) n_threads, sizeof(pthread_t));
        if (!p->threads) {
                free(p);
                return -ENOMEM;
        }
        for (int i = 1; i < n_threads; i++) {
                struct worker_arg *wa = malloc(sizeof(*wa));
                if (!wa) {
                        p->n_threads = i;
                        cpu_pool_free(p);
                        return -ENOMEM;
                }
                wa->pool = p;
                wa->tid = i;
                r = pthread_create(&p->threads[i], NULL, worker_main, wa);
                if (r != 0) {
                        free(wa);
                        p->n_threads = i;
                        cpu_pool_free(p);
                        return -r;
                }
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

void cpu_pool_run(struct cpu_pool *p, cpu_pool_fn fn, void *ctx) {
        if (p->n_threads == 1) {
                fn(ctx, 0, 1);
                return;
        }
        p->fn = fn;
        p->ctx = ctx;
        atomic_store(&p->remaining, p->n_threads - 1);
        atomic_fetch_add(&p->generation, 1);
        wake_all(p);
        fn(ctx, 0, p->n_threads);
        for (int i = 0; atomic_load(&p->remaining) > 0; i++) {
                if (i < SPIN_ROUNDS)
                        cpu_relax();
                else
                        sched_yield();
        }
}
