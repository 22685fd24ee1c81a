/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/* Shared between the I/O thread's two halves: server.c (connections, requests, events) and lifecycle.c
 * (boot, signals, systemd notification, watchdog, reload). Everything here belongs to the I/O thread,
 * except the fields marked "boot thread" and the atomics. */
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>
#include <uv.h>

#include "backend.h"
#include "chat/output_parser.h"
#include "config.h"
#include "daemon.h"
#include "model/model.h"
#include "proto.h"
#include "server/engine.h"
#include "tokenizer/tokenizer.h"

#define IO_MAX_LISTENERS 8
#define IO_REQ_BUCKETS 4096

enum daemon_state {
        DAEMON_LOADING = 0,
        DAEMON_READY,
        DAEMON_DRAINING,        /* SIGTERM: no new requests, running ones finish */
        DAEMON_STOPPING,        /* drain over: the loop is closing its handles */
};

enum req_kind {
        REQ_GENERATE = 0,
        REQ_CHAT,
        REQ_SCORE,
};

struct conn;

/* One request between its receipt and its last event. Owned by the server's request table; it outlives
 * its connection (conn == NULL) until the engine confirms the cancellation with FINISHED. */
struct req {
        struct req *hash_next;
        struct req *conn_prev, *conn_next;
        struct conn *conn;
        uint64_t conn_id, id;
        enum req_kind kind;
        int32_t priority;
        bool stream;
        int32_t want_logprobs;          /* protocol value: -1 none, 0 chosen token, N plus top N */
        bool submitted;                 /* handed to the engine (false while waiting for boot) */
        bool stopped;                   /* a stop string matched: drop further tokens */
        uint32_t prompt_tokens;
        int32_t first_token;            /* prompt token 0, for the score reply */
        uint32_t n_tool_calls;
        struct detok_stream *detok;
        struct chat_parser *parser;
        /* delta being built for the current engine TOKENS event (or the whole output when !stream) */
        char *content; size_t content_len, content_cap;
        char *reasoning; size_t reasoning_len, reasoning_cap;
        int32_t *ids; uint32_t n_ids, cap_ids;
        struct proto_token_logprob *lps; uint32_t n_lps, cap_lps;
        /* while loading: the decoded request, submitted once the model is ready */
        struct proto_msg pending_msg;
        struct req *pending_next;
};

struct conn {
        uv_pipe_t pipe;
        struct server *srv;
        struct conn *prev, *next;
        uint64_t id;
        pid_t pid;
        uid_t uid;
        gid_t gid;
        bool hello_done;
        bool closing;
        uint32_t n_inflight;
        struct req *reqs;               /* in flight on this connection */
        struct proto_reader reader;
        struct proto_buf out;           /* frames queued during this callback, flushed at its end */
};

/* Boot-thread products, handed to the I/O thread once (boot_done). */
struct boot_result {
        int error;                      /* 0 or negative errno; message logged by the boot thread */
        struct model *model;
        struct tokenizer *tokenizer;    /* NULL: the model directory has no tokenizer.json */
        const struct backend_ops *ops;
        struct backend *backend;
        struct backend_capacity capacity;
        struct engine *engine;
        double phase_s[4];              /* weights read/parse, backend (upload + KV + graphs), engine, warm-up */
};

struct server {
        uv_loop_t *loop;
        struct gemma4d_config cfg;
        struct gemma4d_config boot_cfg;  /* the boot thread's own copy: SIGHUP may change cfg meanwhile */
        daemon_reload_fn reload;
        void *reload_userdata;
        enum daemon_state state;
        int exit_status;

        uv_pipe_t listeners[IO_MAX_LISTENERS];
        unsigned n_listeners;
        bool listeners_from_systemd;

        struct conn *conns;
        uint32_t n_conns;
        uint64_t next_conn_id;

        struct req *reqs[IO_REQ_BUCKETS];
        uint32_t n_reqs;
        struct req *pending_head, *pending_tail;        /* received while loading */
        uint32_t n_pending;

        uv_async_t engine_async;        /* engine -> I/O: events queued */
        uv_async_t boot_async;          /* boot thread -> I/O: done */
        uv_signal_t sig_term, sig_int, sig_hup;
        uv_timer_t watchdog_timer, drain_timer;
        uint64_t watchdog_usec;
        /* Test hooks (environment, read at start; see tests/daemon/harness.h): stall the engine this many
         * ms at the first request after READY, so the watchdog test sees the pings stop. 0 = off. */
        uint32_t test_stall_ms;
        uv_thread_t boot_thread;
        bool boot_thread_started;

        struct boot_result boot;        /* valid once state >= READY */
        bool engine_ready;

        /* progress of the boot thread (written there, read by status and the watchdog) */
        _Atomic uint64_t boot_progress_ns;
        _Atomic int boot_percent;
        char boot_phase[96];            /* guarded by boot_lock */
        uv_mutex_t boot_lock;

        uint64_t start_ns;
        uint64_t rejected;              /* refused by the I/O thread (the engine counts its own) */
        uint64_t bad_frames;
};

/* server.c */
int server_listen(struct server *srv);
void server_stop_listening(struct server *srv);
void server_close_all(struct server *srv);
void server_free_requests(struct server *srv);
void server_on_ready(struct server *srv);
void server_pump_events(struct server *srv);
void server_cancel_everything(struct server *srv);
void server_apply_live_config(struct server *srv, const struct gemma4d_config *new_cfg);
void server_maybe_finish_drain(struct server *srv);
json_t *server_status_json(struct server *srv);

/* lifecycle.c */
void lifecycle_request_exit(struct server *srv, int status);
void lifecycle_boot_progress(struct server *srv, const char *phase, double fraction);

static inline uint64_t req_key(uint64_t conn_id, uint64_t id) {
        uint64_t h = conn_id * 0x9E3779B97F4A7C15ull ^ (id + 0x632BE59BD9B4E019ull);
        h ^= h >> 29;
        return h;
}
