/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * The priority scheduler: which requests run in the next engine step and how many tokens each computes.
 *
 * Urgency. A request's effective priority is
 *     eff = max(-20, priority - floor((now - arrival) / aging_ms))        (aging_ms 0 = no aging)
 * and requests are ordered by the key (eff, arrival number): lower first, first come first served within
 * an effective priority. Aging is what stops starvation: a waiting request eventually outranks newer
 * urgent ones.
 *
 * Each step (sched_plan) walks running and waiting requests merged in key order, under a token budget of
 * max_batched_tokens and at most max_num_seqs running:
 *  - a running request computes min(its pending tokens, remaining budget) tokens: 1 when decoding, a
 *    prefill chunk otherwise (score requests share score_chunk tokens per step, since every one of
 *    their tokens yields a row of logits);
 *  - a waiting request is admitted when a slot is free, after matching the prefix cache;
 *  - when KV pages run out for a request, or the slots are full when a waiting request's turn comes,
 *    the least urgent running request not yet scheduled in this step is preempted: its pages are
 *    released (its complete pages stay in the prefix cache), it keeps its tokens (prompt and generated)
 *    and returns to the waiting queue, to resume by recomputing what the cache lost. A waiting request
 *    preempts only a running one of strictly larger effective priority (so two requests never take
 *    turns preempting each other); a running request short of pages preempts any later one, or itself
 *    when it is the last.
 * Waiting requests are admitted strictly in key order: when the first cannot get pages, no later one is
 * admitted in that step.
 *
 * Not thread-safe: the engine thread owns the scheduler.
 */
#include <stdbool.h>
#include <stdint.h>

#include "server/kv_pool.h"
#include "server/sampler.h"

enum sched_state {
        SCHED_NEW = 0,          /* not yet added */
        SCHED_WAITING,
        SCHED_RUNNING,
        SCHED_REMOVED,
};

enum sched_kind {
        SCHED_KIND_GENERATE = 0,
        SCHED_KIND_SCORE = 1,   /* prompt log-probabilities: logits for every prompt token, no output */
};

struct sched_req {
        enum sched_kind kind;
        int32_t priority;               /* -20..19 */
        int32_t *tokens;                /* prompt followed by generated tokens; owned by the caller */
        uint32_t n_prompt, n_tokens;
        struct kv_seq kv;               /* kv.n_tokens <= n_tokens: positions already computed */
        /* scheduler bookkeeping */
        enum sched_state state;
        uint64_t arrival_ns, arrival_no;
        uint32_t preempted;             /* times preempted */
        uint32_t cached_tokens;         /* prefix-cache hit at the first admission */
        bool admitted_once;
        bool scheduled;                 /* in the current plan */
        int32_t key_eff;                /* effective priority when the plan was made */
};

struct sched_params {
        uint32_t max_num_seqs;
        uint32_t max_batched_tokens;
        uint32_t aging_ms;
        uint32_t score_chunk;           /* most all-logits (score) tokens in one step, all requests */
};

struct sched_entry {
        struct sched_req *req;
        uint32_t n_tokens;              /* compute tokens[kv.n_tokens, kv.n_tokens + n_tokens) */
        bool admitted;                  /* admitted (or resumed) in this step */
};

struct sched_plan {
        struct sched_entry *entries;    /* in urgency order */
        uint32_t n_entries;
        uint32_t n_batched_tokens;
        struct sched_req **preempted;   /* preempted in this step (now waiting) */
        uint32_t n_preempted;
};

struct sched;

int sched_new(const struct sched_params *p, struct kv_pool *pool, struct sched **ret);
/* Frees the scheduler; requests still in it are released from the pool but not freed. */
struct sched *sched_free(struct sched *s);

/* Queue a new request (state SCHED_NEW, empty kv). */
int sched_add(struct sched *s, struct sched_req *r, uint64_t now_ns);
/* Take a request out (waiting or running) and release its pages. */
void sched_remove(struct sched *s, struct sched_req *r);

/* Plan the next step (see above). The plan's arrays belong to the scheduler and stay valid until the
 * next call. The KV pages for every entry are reserved. Returns 0 or -ENOMEM. */
int sched_plan(struct sched *s, uint64_t now_ns, struct sched_plan **ret);

int32_t sched_effective_priority(const struct sched *s, const struct sched_req *r, uint64_t now_ns);
uint32_t sched_n_waiting(const struct sched *s);
/* Change scheduler.aging_ms (SIGHUP); effective priorities use it from the next plan on. */
void sched_set_aging(struct sched *s, uint32_t aging_ms);
uint32_t sched_n_running(const struct sched *s);
struct sched_req *sched_waiting_at(const struct sched *s, uint32_t i);
struct sched_req *sched_running_at(const struct sched *s, uint32_t i);
/* Waiting requests that rank before r now (its queue position). */
uint32_t sched_queue_position(const struct sched *s, const struct sched_req *r, uint64_t now_ns);
uint64_t sched_preemptions(const struct sched *s);
