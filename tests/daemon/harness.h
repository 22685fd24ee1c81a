/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * Harness of the daemon tests: writes tiny models with gemma4-mkmodel, starts the REAL gemma4d (cpu
 * backend) as a child process with a configuration file of the test's choosing, and talks to it through
 * libgemmaclient or raw protocol frames. Everything lives in a temporary directory that is removed at
 * the end. Timeouts are generous: CI runs these on 2 loaded cores, also under ASan.
 *
 * Test hooks of gemma4d used here (read at boot, for tests only):
 *   GEMMA4D_TEST_ENGINE_STALL_MS=N   the first request after READY stalls the engine N ms (watchdog test)
 *   GEMMA4D_TEST_KV_FULL_PAGES=N     size the full-attention KV space to N pages (KV-exhaustion test;
 *                                    the cpu backend otherwise sizes it so it never runs out)
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "gemmaclient.h"

/* Seconds the harness waits for boot / a request; scaled by GEMMA4D_TEST_TIMEOUT_MULTIPLIER. */
#define H_BOOT_TIMEOUT_S 180
#define H_REQUEST_TIMEOUT_S 120

struct daemon {
        pid_t pid;
        char dir[256];          /* temporary directory of this daemon (socket, log, config) */
        char sock[320];
        char log[320];
        char config[320];
        int exit_status;        /* after daemon_wait_exit: the exit code, or 128 + signal */
};

struct daemon_opts {
        const char *model;              /* model directory */
        const char *yaml;               /* extra configuration text, appended after the harness's keys */
        const char *const *env;         /* extra "KEY=VALUE" entries, NULL-terminated; "WATCHDOG_PID=self"
                                         * becomes the daemon's own pid, as systemd sets it */
        int listen_fd;                  /* >= 0: pass as systemd socket (LISTEN_FDS=1, fd 3) */
        bool no_wait;                   /* do not wait for "ready" */
        const char *socket_path;        /* NULL: <dir>/s.sock */
};

/* The model cache: a directory with tiny models written once per test program. */
const char *h_tmpdir(void);
/* Write a model into h_tmpdir()/name with gemma4-mkmodel's extra args (e.g. "--layers 2 --vocab 512");
 * keep_tokenizer false removes tokenizer.json (token-id prompts only, faster boot). Asserts on failure. */
const char *h_model(const char *name, const char *args, bool keep_tokenizer);
/* The standard small model: 2 layers, vocabulary 512, no tokenizer. */
const char *h_small_model(void);

double h_now(void);
double h_timeout(double seconds);       /* seconds * GEMMA4D_TEST_TIMEOUT_MULTIPLIER (default 1) */
const char *h_build_path(const char *rel);       /* $GEMMA4D_BUILD_ROOT/rel (static buffer rotation) */

int daemon_start(struct daemon *d, const struct daemon_opts *o);
/* Wait until gemma4d's status says "ready" (or it died: -ECHILD). */
int daemon_wait_ready(struct daemon *d);
/* Send a signal. */
void daemon_kill(struct daemon *d, int sig);
/* Wait for the child to exit (at most timeout_s); returns 0 and sets exit_status, or -ETIMEDOUT. */
int daemon_wait_exit(struct daemon *d, double timeout_s);
/* SIGTERM, wait, SIGKILL if it hangs; remove the directory. Returns the exit status. Prints the log
 * to stderr when the daemon did not exit cleanly or keep_log is set. */
int daemon_stop(struct daemon *d);
bool daemon_alive(struct daemon *d);
/* Does the log contain s? */
bool daemon_log_contains(struct daemon *d, const char *s);
void daemon_dump_log(struct daemon *d);

/* A libgemmaclient connection. Asserts on failure. */
gc_client *h_connect(struct daemon *d);
/* The status JSON as a jansson object (json_t *), cast to void * to keep jansson out of the header. */
void *h_status(gc_client *c);
/* An integer at a dotted path of the status ("kv.full.used"); -1 when absent. */
long long h_status_int(gc_client *c, const char *path);
/* Wait until kv.full.used and kv.sliding.used are 0 and nothing runs or waits; returns 0 or -ETIMEDOUT. */
int h_wait_idle(gc_client *c, double timeout_s);

/* A generate request by token ids, run to the end with the event loop of c. */
struct h_req {
        /* inputs */
        const int32_t *prompt;
        size_t n_prompt;
        uint32_t max_tokens;
        int priority;
        uint32_t deadline_ms;
        /* outputs */
        bool done;
        int err;                        /* gc_result_error */
        enum gc_finish finish;
        int32_t *tokens;                /* malloc'd */
        size_t n_tokens;
        uint32_t preempted, cached_tokens, prompt_tokens;
        double ttft_ms, queue_ms;       /* daemon's numbers */
        double t_start, t_first, t_end; /* client clock (h_now) */
        gc_request *handle;
        int start_err;                  /* gc_generate_ids_start's result when negative */
};
/* Start r on c (greedy). Returns 0 or the start error. */
int h_req_start(gc_client *c, struct h_req *r);
/* Drive the clients until every request is done (or timeout): returns 0 or -ETIMEDOUT. */
int h_run_all(gc_client *const *clients, size_t n_clients, struct h_req *const *reqs, size_t n_reqs,
              double timeout_s);
/* One request alone, to the end. */
int h_req_run(gc_client *c, struct h_req *r);
void h_req_done(struct h_req *r);

/* Deterministic prompt: n ids in [3, vocab) derived from seed. */
void h_prompt(int32_t *ids, size_t n, uint32_t seed, uint32_t vocab);

/* Raw protocol connections. */
int raw_connect(struct daemon *d);              /* a connected socket fd, or -errno */
int raw_send_all(int fd, const void *p, size_t n);
/* Send hello (asserts it is written). */
void raw_hello(int fd);
/* Read the next frame body (malloc'd) within timeout_s; returns its length, 0 on EOF, -ETIMEDOUT,
 * -errno. */
ssize_t raw_read_frame(int fd, uint8_t **ret, double timeout_s);
/* Encode and send a generate by ids. */
void raw_generate(int fd, uint64_t id, const int32_t *ids, uint32_t n, uint32_t max_tokens);
/* Read events until one with an error code or the connection closes; returns the proto code of the
 * first error event seen (>0), 0 when the connection closed without one, -ETIMEDOUT. */
int raw_expect_error(int fd, double timeout_s);
/* The next event (decoded into *m, free with proto_msg_done): its proto type, 0 on EOF, -ETIMEDOUT (60 s).
 * m is a struct proto_msg *, declared void * to keep proto.h out of this header. */
int raw_next_event(int fd, void *m);
/* Read events until the FINISHED or ERROR of request id: returns PROTO_TYPE_FINISHED / _ERROR (code: the
 * error's proto code, reason: the finish reason), 0 on EOF; n_tokens (may be NULL) adds the delta ids. */
int raw_wait_request_end(int fd, uint64_t id, int *code, int *reason, uint32_t *n_tokens);
/* Read until EOF (returns 0) or timeout (-ETIMEDOUT), discarding everything. */
int raw_wait_eof(int fd, double timeout_s);

/* A NOTIFY_SOCKET: an AF_UNIX datagram socket in dir. */
struct notify {
        int fd;
        char path[320];
};
int notify_open(struct notify *n, const char *dir);
/* Receive one datagram (NUL-terminated) within timeout_s; returns its length or -ETIMEDOUT. */
ssize_t notify_recv(struct notify *n, char *buf, size_t size, double timeout_s);
/* Receive until a datagram contains s; returns 0 or -ETIMEDOUT. Datagrams seen are appended to log
 * (may be NULL) separated by '|'. */
int notify_wait_for(struct notify *n, const char *s, double timeout_s, char *log, size_t log_size);
void notify_close(struct notify *n);
