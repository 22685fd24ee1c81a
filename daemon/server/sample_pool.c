/* SPDX-License-Identifier: Apache-2.0 */
#include "server/sample_pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

struct worker {
        struct sample_pool *pool;
        uint32_t index;
        pthread_t thread;
        bool started;
};

struct sample_pool {
        uint32_t n_workers;
        struct sampler **samplers;      /* [n_workers] */
        struct worker *workers;         /* [n_workers], entry 0 is the caller */

        pthread_mutex_t lock;
        pthread_cond_t start_cond, done_cond;
        uint64_t round;                 /* bumped per sample_pool_run: workers wait for a new value */
        uint32_t busy;                  /* workers still inside this round */
        bool stopping;

        /* the current round (written under lock before `round` moves) */
        void (*fn)(void *arg, uint32_t job, struct sampler *s);
        void *arg;
        uint32_t n_jobs;
        atomic_uint next_job;
};

static void run_jobs(struct sample_pool *p, struct sampler *s) {
        for (;;) {
                uint32_t j = atomic_fetch_add(&p->next_job, 1);
                if (j >= p->n_jobs)
                        return;
                p->fn(p->arg, j, s);
        }
}

static void *worker_main(void *arg) {
        struct worker *w = arg;
        struct sample_pool *p = w->pool;
        uint64_t seen = 0;
        pthread_mutex_lock(&p->lock);
        for (;;) {
                while (!p->stopping && p->round == seen)
                        pthread_cond_wait(&p->start_cond, &p->lock);
                if (p->stopping)
                        break;
                seen = p->round;
                pthread_mutex_unlock(&p->lock);
                run_jobs(p, p->samplers[w->index]);
                pthread_mutex_lock(&p->lock);
                if (--p->busy == 0)
                        pthread_cond_signal(&p->done_cond);
        }
        pthread_mutex_unlock(&p->lock);
        return NULL;
}

int sample_pool_new(uint32_t n_workers, uint32_t vocab_size, struct sample_pool **ret) {
        if (n_workers == 0 || vocab_size == 0)
                return -EINVAL;
        struct sample_pool *p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->n_workers = n_workers;
        pthread_mutex_init(&p->lock, NULL);
        pthread_cond_init(&p->start_cond, NULL);
        pthread_cond_init(&p->done_cond, NULL);
        atomic_init(&p->next_job, 0);
        p->samplers = calloc(n_workers, sizeof(*p->samplers));
        p->workers = calloc(n_workers, sizeof(*p->workers));
        int r = p->samplers && p->workers ? 0 : -ENOMEM;
        for (uint32_t i = 0; i < n_workers && r == 0; i++)
                r = sampler_new(vocab_size, &p->samplers[i]);
        for (uint32_t i = 1; i < n_workers && r == 0; i++) {
                p->workers[i] = (struct worker) { .pool = p, .index = i };
                r = -pthread_create(&p->workers[i].thread, NULL, worker_main, &p->workers[i]);
                p->workers[i].started = r == 0;
        }
        if (r < 0) {
                sample_pool_free(p);
                return r;
        }
        *ret = p;
        return 0;
}

struct sample_pool *sample_pool_free(struct sample_pool *p) {
        if (!p)
                return NULL;
        pthread_mutex_lock(&p->lock);
        p->stopping = true;
        pthread_cond_broadcast(&p->start_cond);
        pthread_mutex_unlock(&p->lock);
        for (uint32_t i = 1; p->workers && i < p->n_workers; i++)
                if (p->workers[i].started)
                        pthread_join(p->workers[i].thread, NULL);
        for (uint32_t i = 0; p->samplers && i < p->n_workers; i++)
                sampler_free(p->samplers[i]);
        free(p->samplers);
        free(p->workers);
        pthread_mutex_destroy(&p->lock);
        pthread_cond_destroy(&p->start_cond);
        pthread_cond_destroy(&p->done_cond);
        free(p);
        return NULL;
}

uint32_t sample_pool_workers(const struct sample_pool *p) {
        return p->n_workers;
}

struct sampler *sample_pool_sampler(struct sample_pool *p) {
        return p->samplers[0];
}

void sample_pool_run(struct sample_pool *p, uint32_t n_jobs,
                     void (*fn)(void *arg, uint32_t job, struct sampler *s), void *arg) {
        if (n_jobs == 0)
                return;
        if (p->n_workers == 1 || n_jobs == 1) {
                for (uint32_t j = 0; j < n_jobs; j++)
                        fn(arg, j, p->samplers[0]);
                return;
        }
        pthread_mutex_lock(&p->lock);
        p->fn = fn;
        p->arg = arg;
        p->n_jobs = n_jobs;
        atomic_store(&p->next_job, 0);
        p->busy = p->n_workers - 1;
        p->round++;
        pthread_cond_broadcast(&p->start_cond);
        pthread_mutex_unlock(&p->lock);
        run_jobs(p, p->samplers[0]);
        pthread_mutex_lock(&p->lock);
        while (p->busy > 0)
                pthread_cond_wait(&p->done_cond, &p->lock);
        pthread_mutex_unlock(&p->lock);
}
