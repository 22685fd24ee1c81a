/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * The engine: one thread that owns the backend, the KV pool, the scheduler and the sampler, and runs one
 * step after another. Other threads (the libuv I/O thread) talk to it only through this API:
 *
 *   engine_submit / engine_cancel / engine_cancel_connection / engine_request_stop   -> inbox
 *   engine_pop_events                                                                 <- outbox
 *   engine_get_status, engine_last_progress_ns                                        (snapshots)
 *
 * Every function here is thread-safe unless it says otherwise. After pushing events the engine calls
 * params.wake(params.wake_userdata) from the engine thread (the server sets it to uv_async_send on its
 * uv_async_t; tests use a condition variable). Wake-ups may be coalesced: drain engine_pop_events fully.
 *
 * Request input is token ids (the I/O thread renders templates and tokenizes) with sampling_params
 * (sampler.h) and the caller's opaque (conn_id, req_id), unique among requests in flight. Every accepted
 * request gets exactly one FINISHED event (or an ERROR event) last; before it, for a generate request, a
 * STARTED event and TOKENS events, for a score request one SCORE event.
 *
 * Stop conditions checked here: the model's stop ids (eos, <turn|>, <|tool_response> = {1, 106, 50}),
 * max_tokens, the length limit and the deadline. Stop STRINGS are the I/O thread's: when its output
 * parser sees one it calls engine_request_stop(), and the request finishes with reason STOP in the next
 * step (tokens generated meanwhile are still delivered; the parser drops them).
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "server/kv_pool.h"
#include "server/sampler.h"

#define ENGINE_MAX_STOP_IDS 8
#define ENGINE_N_PRIORITIES (SAMPLER_PRIORITY_MAX - SAMPLER_PRIORITY_MIN + 1)

struct engine_params {
        /* The backend, created by the caller; the engine drives it from its thread and does not
         * destroy it. */
        const struct backend_ops *ops;
        struct backend *backend;
        uint32_t vocab_size;
        int32_t stop_ids[ENGINE_MAX_STOP_IDS];
        uint32_t n_stop_ids;
        /* limits.* and scheduler.* of the configuration */
        uint32_t max_model_len;
        uint32_t max_num_seqs;
        uint32_t max_batched_tokens;
        uint32_t max_queue;             /* waiting requests (new + preempted) before `overloaded` */
        uint32_t aging_ms;
        bool prefix_cache;
        uint32_t score_chunk;           /* 0 = 64: all-logits tokens per score request per step */
        /* Threads that sample a step's rows on the host (the engine thread counts as one). 0 = the
         * environment's GEMMA4D_SAMPLE_THREADS, else min(online CPUs, 8). Results never depend on it. */
        uint32_t sample_threads;
        /* Called from the engine thread after events were queued. May be NULL. */
        void (*wake)(void *userdata);
        void *wake_userdata;
};

enum engine_kind {
        ENGINE_KIND_GENERATE = 0,
        ENGINE_KIND_SCORE = 1,
};

struct engine_request {
        uint64_t conn_id, req_id;
        enum engine_kind kind;
        const int32_t *tokens;          /* copied by engine_submit */
        uint32_t n_tokens;
        struct sampling_params params;  /* score: only logprobs (top-N) is used */
};

enum engine_finish_reason {
        ENGINE_FINISH_STOP = 0,         /* stop id, stop string (engine_request_stop), or score done */
        ENGINE_FINISH_LENGTH,           /* max_tokens or the length limit */
        ENGINE_FINISH_CANCELLED,
        ENGINE_FINISH_DEADLINE,
        ENGINE_FINISH_ERROR,
};
const char *engine_finish_reason_to_string(enum engine_finish_reason r);

/* Stable error codes of the protocol. */
enum engine_error {
        ENGINE_ERROR_BAD_REQUEST = 0,
        ENGINE_ERROR_TOO_LONG,
        ENGINE_ERROR_OVERLOADED,
        ENGINE_ERROR_INTERNAL,
};
const char *engine_error_to_string(enum engine_error e);

enum engine_event_type {
        ENGINE_EVENT_STARTED = 0,
        ENGINE_EVENT_TOKENS,
        ENGINE_EVENT_SCORE,
        ENGINE_EVENT_FINISHED,
        ENGINE_EVENT_ERROR,
};

struct engine_usage {
        uint32_t prompt_tokens;
        uint32_t cached_tokens;         /* prompt tokens skipped through the prefix cache */
        uint32_t output_tokens;         /* generated, including a final stop id */
};

struct engine_timings {
        double queue_ms;                /* submission to first admission */
        double ttft_ms;                 /* submission to first token (0 when none) */
        double total_ms;                /* submission to finish */
        double decode_tokens_per_s;     /* output tokens after the first / time since the first */
};

struct engine_event {
        struct engine_event *next;      /* engine_pop_events list */
        enum engine_event_type type;
        uint64_t conn_id, req_id;
        int32_t priority;
        union {
                struct {
                        uint32_t prompt_tokens;
                        uint32_t queue_position;        /* waiting requests ahead at submission */
                } started;
                /* TOKENS: generated tokens in order (stop ids are not sent; they only end the request).
                 * SCORE: tokens[i] = prompt token i+1 and logprobs[i] its log-probability given the
                 * tokens before it. top[i * n_top .. (i+1) * n_top) are the top alternatives when the
                 * request asked for logprobs (n_top = logprobs, else 0). */
                struct {
                        uint32_t n;
                        int32_t *tokens;
                        float *logprobs;
                        uint32_t n_top;
                        struct sampler_logprob *top;
                } tokens;
                struct {
                        enum engine_finish_reason reason;
                        struct engine_usage usage;
                        struct engine_timings timings;
                        uint32_t preempted;
                } finished;
                struct {
                        enum engine_error code;
                        char message[256];
                } error;
        };
};

/* Frees one event (not its successors). */
void engine_event_free(struct engine_event *ev);

struct engine_status {
        uint32_t queued_by_priority[ENGINE_N_PRIORITIES];       /* index = priority + 20 */
        uint32_t queued;
        uint32_t running;
        struct kv_space_stats kv[_KV_SPACE_MAX];
        uint32_t page_size;
        uint64_t capacity_tokens;       /* full pages * B */
        uint32_t max_len;               /* longest sequence: min(limits.max_model_len, capacity_tokens) */
        uint32_t seqs_32k;              /* 32K-token sequences that fit */
        double prefix_hit_rate;         /* skipped / offered prompt tokens since start */
        double tokens_per_s;            /* generated tokens/s over the last 10 s */
        double prefill_tokens_per_s;    /* computed prompt tokens/s over the last 10 s */
        uint64_t preemptions;
        uint64_t rejected;              /* overloaded, too_long, bad_request at submission */
        uint64_t finished;
        uint64_t steps;
        double uptime_s;
        int fatal;                      /* 0, or the backend's sticky error: the process must exit */
};

struct engine;

/* Create the engine (not yet running). Sizes the KV pool from the backend's capacity. */
int engine_new(const struct engine_params *p, struct engine **ret, char **reterr);
/* Stops the thread if running, fails every request in flight (FINISHED cancelled), frees everything. */
struct engine *engine_free(struct engine *e);

/* Start / stop the engine thread. Without a thread, engine_run_step drives the engine synchronously. */
int engine_start(struct engine *e);
void engine_stop(struct engine *e);

/* Apply the inbox and run one step on the caller's thread (only when the thread is not started).
 * Returns 1 when it did work, 0 when idle, or a negative errno (a fatal backend error). */
int engine_run_step(struct engine *e);

/* Submit a request. Returns 0 (accepted: events follow), or rejects at once, writing a message to err:
 *   -EINVAL  bad_request (bad parameters, token ids out of range, empty prompt)
 *   -E2BIG   too_long (prompt does not fit max_model_len / the KV pool)
 *   -EAGAIN  overloaded (limits.max_queue requests waiting)
 *   -ESHUTDOWN the engine stopped after a fatal error */
int engine_submit(struct engine *e, const struct engine_request *req, char *err, size_t errsize);
/* Cancel one request / every request of a connection (disconnect). Unknown ids are ignored. The
 * pages are freed in the engine's next step. */
int engine_cancel(struct engine *e, uint64_t conn_id, uint64_t req_id);
int engine_cancel_connection(struct engine *e, uint64_t conn_id);
/* Finish a request with reason STOP (the I/O thread matched a stop string). */
int engine_request_stop(struct engine *e, uint64_t conn_id, uint64_t req_id);

/* Take every queued event, oldest first (NULL when none); free each with engine_event_free. */
struct engine_event *engine_pop_events(struct engine *e);

void engine_get_status(struct engine *e, struct engine_status *ret);
/* CLOCK_MONOTONIC ns of the last step or healthy idle wait: the watchdog's liveness signal. */
uint64_t engine_last_progress_ns(struct engine *e);
/* Change limits.max_queue and scheduler.aging_ms of a running engine (SIGHUP). Thread-safe; the engine
 * thread applies them at its next step (submissions see the new max_queue from then on). -EINVAL when
 * max_queue is 0. */
int engine_set_admission(struct engine *e, uint32_t max_queue, uint32_t aging_ms);
/* Test hook: the engine thread sleeps `ms` without progress before its next step. */
void engine_test_stall(struct engine *e, uint32_t ms);
/* Capacity facts for welcome: the KV pool's parameters. */
void engine_get_pool_params(struct engine *e, struct kv_pool_params *ret);
/* Tests: check the KV pool's invariants (kv_pool_check). Only while the thread is not started. */
int engine_check(struct engine *e, char *err, size_t errsize);

uint64_t engine_now_ns(void);
