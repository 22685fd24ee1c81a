/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GEMMA4_GEMMACLIENT_H
#define GEMMA4_GEMMACLIENT_H
/*
 * libgemmaclient: the C client library of gemma4d (see libgemmaclient(3) and docs/protocol.md).
 *
 * A gc_client holds one Unix-socket connection per daemon (one daemon per GPU). gc_client_new() connects
 * to each path and does the hello/welcome handshake. Requests are spread over the connected daemons
 * (the one with the fewest requests in flight); a generate or chat that a daemon refuses as overloaded
 * is passed on to the next least loaded daemon that has not refused it, and fails with GC_EOVERLOADED
 * only when all have.
 *
 * Three ways to run a request:
 *   - blocking: gc_generate(), gc_chat(), gc_score(), gc_status(), gc_tokenize(), gc_detokenize() wait
 *     for the answer and return it;
 *   - blocking with streaming: gc_generate_stream(), gc_chat_stream() call a callback for every event
 *     while they wait;
 *   - non-blocking: gc_generate_start(), gc_chat_start() only send the request; the caller polls
 *     gc_client_get_fd() for readability and calls gc_client_process(), which runs the callbacks.
 *
 * Conventions (the libuv contract):
 *   - Functions returning int return 0 (or a documented non-negative value) on success and a negative
 *     code on failure: a negated errno (-ENOMEM, -ECONNRESET, ...) for system errors, or one of the
 *     GC_E* codes below for protocol errors. gc_strerror() describes any of them.
 *   - Output parameters (ret, ret_*) are written only on success.
 *   - If a call that takes a callback fails, the callback is never called for that request.
 *   - Thread safety: functions marked "thread-safe" may be called from any thread at any time. All
 *     others operate on one gc_client and everything reached from it (its requests, results handed to
 *     callbacks); a gc_client must be used by one thread at a time (use one client per thread, or a
 *     lock of your own). Distinct gc_client objects are independent.
 *   - Ownership: objects returned through ret_* belong to the caller, who releases them with the
 *     matching free function (gc_client_free, gc_params_free, gc_result_free, gc_free). Strings
 *     returned by accessors are borrowed from their object and live as long as it does.
 *
 * This header is plain C99 and needs no other header but <stddef.h> and <stdint.h>.
 */
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) && __GNUC__ >= 4
#define GC_EXTERN __attribute__((visibility("default")))
#else
#define GC_EXTERN
#endif

/* ---- version ---- */

#define GC_VERSION_MAJOR 0
#define GC_VERSION_MINOR 1
#define GC_VERSION_PATCH 0
#define GC_VERSION_HEX ((GC_VERSION_MAJOR << 16) | (GC_VERSION_MINOR << 8) | GC_VERSION_PATCH)

/* GC_VERSION_HEX of the library at run time (may be newer than the header). Thread-safe. */
GC_EXTERN unsigned gc_version(void);
/* "0.1.0". Static string. Thread-safe. */
GC_EXTERN const char *gc_version_string(void);

/* ---- errors ---- */

/*
 * Protocol errors. They are far below any errno value, so a code is either -errno or one of these.
 * System errors worth knowing: -ECONNRESET / -EPIPE (the daemon went away), -ETIMEDOUT (the handshake
 * did not complete), -EINVAL (bad argument), -ENOMEM.
 */
#define GC_EBADREQUEST   (-3001)  /* the daemon rejected the request ("bad_request") */
#define GC_ETOOLONG      (-3002)  /* prompt + max_tokens exceed the context ("too_long") */
#define GC_EOVERLOADED   (-3003)  /* queue full or too many requests in flight ("overloaded") */
#define GC_ECANCELLED    (-3004)  /* cancelled by gc_cancel() or the daemon ("cancelled") */
#define GC_EDEADLINE     (-3005)  /* deadline_ms passed ("deadline") */
#define GC_EINTERNAL     (-3006)  /* the daemon failed ("internal") */
#define GC_EVERSION      (-3007)  /* the daemon does not speak this protocol version */
#define GC_EUNSUPPORTED  (-3008)  /* the daemon does not know the request ("unsupported") */
#define GC_ENOTREADY     (-3009)  /* the model is still loading ("not_ready") */
#define GC_ESHUTDOWN     (-3010)  /* the daemon is shutting down ("shutting_down") */
#define GC_EPROTO        (-3011)  /* the daemon sent something this library cannot decode */
#define GC_ENOTRUNNING   (-3012)  /* no daemon at the socket path (ENOENT/ECONNREFUSED on connect) */
#define GC_EDISCONNECTED (-3013)  /* the connection closed while the request was in flight */
#define GC_EFRAMETOOLARGE (-3014) /* a frame exceeded the peer's limit ("frame_too_large") */
#define GC_EUNKNOWN      (-3015)  /* an error code this library version does not know */

/*
 * A message for any code returned by this library (GC_E* or -errno). Static string; unknown codes give
 * "unknown error". Thread-safe.
 */
GC_EXTERN const char *gc_strerror(int err);
/* A short stable name: "GC_EOVERLOADED", "ECONNREFUSED", ... or "UNKNOWN". Thread-safe. */
GC_EXTERN const char *gc_err_name(int err);

/* Free memory returned by gc_status(), gc_tokenize() and gc_detokenize(). NULL is fine. Thread-safe. */
GC_EXTERN void gc_free(void *p);

/* ---- request parameters ---- */

typedef struct gc_params gc_params;

/*
 * A parameter set: nothing set means the daemon's defaults. A gc_params is only read by the requests
 * it is passed to (they copy what they need), so one may be reused and freed right after the call.
 * Ownership: gc_params_new() gives the caller a set to free with gc_params_free().
 * Thread safety (all gc_params_* functions): a set may be read by several threads at once (passed to
 * requests of different clients), but a setter, reset or free needs exclusive access to that set.
 * Distinct sets are independent.
 */
GC_EXTERN int gc_params_new(gc_params **ret);
GC_EXTERN void gc_params_free(gc_params *p);                  /* NULL is fine */
/* Forget every setting. */
GC_EXTERN void gc_params_reset(gc_params *p);

/*
 * Setters validate the range of the protocol (docs/protocol.md) and return -EINVAL, leaving p as it
 * was, when the value is out of range.
 */
GC_EXTERN int gc_params_set_max_tokens(gc_params *p, uint32_t n);             /* 1..1048576 */
GC_EXTERN int gc_params_set_temperature(gc_params *p, double t);              /* [0, 100], 0 = greedy */
GC_EXTERN int gc_params_set_top_p(gc_params *p, double v);                    /* (0, 1] */
GC_EXTERN int gc_params_set_top_k(gc_params *p, uint32_t k);                  /* 0 (off)..1048576 */
GC_EXTERN int gc_params_set_min_p(gc_params *p, double v);                    /* [0, 1] */
GC_EXTERN int gc_params_set_repetition_penalty(gc_params *p, double v);       /* (0, 10] */
GC_EXTERN int gc_params_set_presence_penalty(gc_params *p, double v);         /* [-2, 2] */
GC_EXTERN int gc_params_set_frequency_penalty(gc_params *p, double v);        /* [-2, 2] */
GC_EXTERN int gc_params_set_seed(gc_params *p, uint64_t seed);
/* Append a stop string (1..256 bytes of UTF-8, at most 16 of them); the string is copied. */
GC_EXTERN int gc_params_add_stop(gc_params *p, const char *stop);
GC_EXTERN void gc_params_clear_stop(gc_params *p);
/* -1: none (default); 0: log-probability of each sampled token; N (1..20): plus the top N alternatives. */
GC_EXTERN int gc_params_set_logprobs(gc_params *p, int n);
/* Nice-style, -20..19, lower runs first (and may preempt higher values). */
GC_EXTERN int gc_params_set_priority(gc_params *p, int priority);
/* Give up if the request has not finished this many ms after the daemon received it (0 = none). */
GC_EXTERN int gc_params_set_deadline_ms(gc_params *p, uint32_t ms);
/*
 * Set a parameter by its protocol name from text ("temperature", "0.7"), as command lines and config
 * files have them. Names: the setters above without the prefix, plus "stop" (appends). -EINVAL for an
 * unknown name or a bad value.
 */
GC_EXTERN int gc_params_set(gc_params *p, const char *name, const char *value);

/* ---- results ---- */

typedef struct gc_result gc_result;

enum gc_finish {
        GC_FINISH_STOP = 0,       /* end of turn, EOS or a stop string */
        GC_FINISH_LENGTH = 1,     /* max_tokens or the context limit */
        GC_FINISH_CANCELLED = 2,  /* gc_cancel() */
        GC_FINISH_DEADLINE = 3,   /* deadline_ms passed while running */
        GC_FINISH_ERROR = 4       /* failed; gc_result_error() says why */
};

/*
 * A finished request: everything its events carried, accumulated. Owned by the caller when returned
 * through ret (free with gc_result_free); borrowed (valid during the callback only) when handed to a
 * stream callback. Accessors never fail: they return empty strings and zeros for what is absent; the
 * strings and arrays they return are borrowed from the result and live as long as it does.
 * Thread safety (all gc_result_* functions): a result the caller owns is immutable, so any number of
 * threads may read it at once; gc_result_free() needs exclusive access. A borrowed result (inside a
 * callback) belongs to its client's thread.
 */
GC_EXTERN void gc_result_free(gc_result *r);                 /* NULL is fine */
GC_EXTERN const char *gc_result_text(const gc_result *r);     /* the answer content ("" if none) */
GC_EXTERN const char *gc_result_reasoning(const gc_result *r); /* the thinking text ("" if none) */
GC_EXTERN enum gc_finish gc_result_finish(const gc_result *r);
/* "stop", "length", "cancelled", "deadline", "error". */
GC_EXTERN const char *gc_result_finish_string(const gc_result *r);
/*
 * 0 when the request succeeded (finish stop or length), else the GC_E* or -errno code: GC_ECANCELLED,
 * GC_EDEADLINE, the daemon's error, or GC_EDISCONNECTED. message: the daemon's text ("" if none).
 */
GC_EXTERN int gc_result_error(const gc_result *r);
GC_EXTERN const char *gc_result_error_message(const gc_result *r);
GC_EXTERN uint32_t gc_result_prompt_tokens(const gc_result *r);
GC_EXTERN uint32_t gc_result_cached_tokens(const gc_result *r);
GC_EXTERN uint32_t gc_result_completion_tokens(const gc_result *r);
/* The daemon's timings (ms): queueing, time to first token, mean time per later token. */
GC_EXTERN double gc_result_queue_ms(const gc_result *r);
GC_EXTERN double gc_result_ttft_ms(const gc_result *r);
GC_EXTERN double gc_result_per_token_ms(const gc_result *r);
/* How often the request was preempted by higher-priority work and resumed. */
GC_EXTERN uint32_t gc_result_preempted(const gc_result *r);
/* Output token ids (generate/chat) or the scored prompt tokens (gc_score); *ret_n gets the count. */
GC_EXTERN const int32_t *gc_result_token_ids(const gc_result *r, size_t *ret_n);
/* Tool calls, in order. Index out of range: NULL. arguments is a JSON object text. */
GC_EXTERN size_t gc_result_tool_call_count(const gc_result *r);
GC_EXTERN const char *gc_result_tool_call_name(const gc_result *r, size_t i);
GC_EXTERN const char *gc_result_tool_call_arguments(const gc_result *r, size_t i);
GC_EXTERN const char *gc_result_tool_call_id(const gc_result *r, size_t i);   /* "" if the daemon gave none */
/*
 * Log-probabilities (when gc_params_set_logprobs asked for them). Generate/chat: one entry per output
 * token. gc_score: entry i scores token i + 1 of the prompt. gc_result_logprob writes the token and its
 * log-probability; gc_result_top_logprob the k-th best alternative. -ERANGE for an index out of range.
 */
GC_EXTERN size_t gc_result_logprob_count(const gc_result *r);
GC_EXTERN int gc_result_logprob(const gc_result *r, size_t i, int32_t *ret_token, float *ret_logprob);
GC_EXTERN size_t gc_result_top_logprob_count(const gc_result *r, size_t i);
GC_EXTERN int gc_result_top_logprob(const gc_result *r, size_t i, size_t k, int32_t *ret_token,
                                    float *ret_logprob);

/* ---- client ---- */

/*
 * Thread safety of everything below that takes a gc_client, gc_request or gc_event: not thread-safe.
 * A client, its requests and the events handed to its callbacks may be used by one thread at a time
 * (callbacks run on the thread that called into the client). Different clients may be used from
 * different threads concurrently; nothing is shared between them.
 */
typedef struct gc_client gc_client;

#define GC_DEFAULT_SOCKET "/run/gemma4d/0.sock"

/*
 * Connect to the daemons at paths, a colon-separated list of socket paths. NULL (or "") means the
 * GEMMA4D_SOCKET environment variable if set and non-empty, else GC_DEFAULT_SOCKET. Each connection
 * does the hello/welcome handshake before this returns (waiting at most timeout_ms for each, 0 = 10 s).
 * Succeeds if at least one daemon answered; the others are retried when a request is started. Fails
 * with GC_ENOTRUNNING if no daemon listens at any path, GC_EVERSION if a daemon does not speak this
 * protocol version, -ETIMEDOUT, -EINVAL for an empty or too long path (108 bytes), -ENOMEM.
 * Not thread-safe with respect to the environment (reads GEMMA4D_SOCKET). The client belongs to the
 * caller: free with gc_client_free().
 */
GC_EXTERN int gc_client_new(gc_client **ret, const char *paths, int timeout_ms);
/* The same with an array of n paths (no colon splitting). */
GC_EXTERN int gc_client_new_paths(gc_client **ret, const char *const *paths, size_t n, int timeout_ms);
/*
 * Close every connection and free the client. Requests still in flight are dropped: their callbacks
 * get a finished event with GC_ECANCELLED first (the daemon cancels them when the connection closes).
 * NULL is fine. Must not be called from inside a callback of the same client.
 */
GC_EXTERN void gc_client_free(gc_client *c);

/* Number of daemons (socket paths) of the client, connected or not. Reads only; client's thread. */
GC_EXTERN size_t gc_client_daemon_count(const gc_client *c);
/* 1 if daemon i is connected now, else 0. */
GC_EXTERN int gc_client_daemon_connected(const gc_client *c, size_t daemon);
/* The socket path of daemon i; NULL if out of range. */
GC_EXTERN const char *gc_client_daemon_path(const gc_client *c, size_t daemon);

/* What a daemon's welcome said. Strings are borrowed from the client; NULL/0 if daemon i never answered. */
enum gc_info {
        GC_INFO_SERVER_VERSION = 0,  /* str, e.g. "0.1.0" */
        GC_INFO_MODEL = 1,           /* str */
        GC_INFO_ARCHITECTURE = 2,    /* str, e.g. "gemma4" */
        GC_INFO_BACKEND = 3,         /* str, "cuda", "cpu", ... */
        GC_INFO_DEVICE = 4,          /* str, e.g. "NVIDIA H100 80GB HBM3" */
        GC_INFO_MAX_MODEL_LEN = 5,   /* num: tokens of context per sequence */
        GC_INFO_MAX_FRAME_BYTES = 6, /* num: largest frame the daemon accepts */
        GC_INFO_MAX_INFLIGHT = 7,    /* num: requests in flight per connection */
        GC_INFO_MAX_NUM_SEQS = 8,    /* num: sequences decoded together */
        GC_INFO_MAX_QUEUE = 9,       /* num: requests waiting, whole daemon */
        GC_INFO_KV_TOKENS = 10,      /* num: KV pool capacity in tokens */
        GC_INFO_KV_SEQS_32K = 11,    /* num: 32k-token sequences that fit at once */
        GC_INFO_PROTO = 12           /* num: protocol version */
};
GC_EXTERN const char *gc_client_info_str(const gc_client *c, size_t daemon, enum gc_info key);
GC_EXTERN uint64_t gc_client_info_num(const gc_client *c, size_t daemon, enum gc_info key);

/* Requests in flight on the whole client (started, FINISHED not yet delivered). */
GC_EXTERN size_t gc_client_inflight(const gc_client *c);

/* ---- blocking calls ---- */

/*
 * Run a text completion of prompt (raw text, special tokens allowed, no BOS added) and wait for it. On
 * success *ret is the result (free with gc_result_free). A request the daemon refused or that failed
 * after starting still returns 0 with the error in gc_result_error(); the return value is negative only
 * when there is no result at all (the request could not be sent, or was refused before it started:
 * GC_EOVERLOADED, GC_EBADREQUEST, GC_ETOOLONG, GC_ENOTREADY, ...). params may be NULL. While waiting,
 * callbacks of other requests of the same client run as well.
 */
GC_EXTERN int gc_generate(gc_client *c, const char *prompt, const gc_params *params, gc_result **ret);

/*
 * A chat turn. messages_json: a JSON array of message objects ({"role": "user", "content": "Hi"}, ...,
 * as in docs/protocol.md); tools_json: NULL or a JSON array of tool definitions; thinking: nonzero to let
 * the model think first (its reasoning is kept apart from the content). -EINVAL if the JSON does not
 * parse or has the wrong shape. Otherwise as gc_generate.
 */
GC_EXTERN int gc_chat(gc_client *c, const char *messages_json, const char *tools_json, int thinking,
                      const gc_params *params, gc_result **ret);

/*
 * Log-probabilities of the prompt's tokens (set gc_params_set_logprobs(p, N) for the top N
 * alternatives as well). The result has the prompt's token ids and one logprob entry per token after
 * the first.
 */
GC_EXTERN int gc_score(gc_client *c, const char *prompt, const gc_params *params, gc_result **ret);

/*
 * The daemon's status map as JSON text (an object, see docs/protocol.md: state, load progress, queue,
 * KV use, ...). daemon selects which of the client's daemons to ask. *ret_json is the caller's: free
 * with gc_free().
 */
GC_EXTERN int gc_status(gc_client *c, size_t daemon, char **ret_json);

/*
 * Tokenize text with the daemon's tokenizer. special nonzero: control-token spellings like
 * "<start_of_turn>" become their tokens; zero: they are plain text. *ret_ids (free with gc_free) gets
 * *ret_n ids; an empty text gives *ret_ids NULL and *ret_n 0.
 */
GC_EXTERN int gc_tokenize(gc_client *c, const char *text, int special, int32_t **ret_ids, size_t *ret_n);
/* Token ids to text (free with gc_free). special zero: special tokens are skipped. */
GC_EXTERN int gc_detokenize(gc_client *c, const int32_t *ids, size_t n, int special, char **ret_text);

/* ---- streaming ---- */

typedef struct gc_request gc_request;
typedef struct gc_event gc_event;

enum gc_event_type {
        GC_EVENT_STARTED = 1,    /* the daemon accepted the request (prompt tokens, queue position) */
        GC_EVENT_DELTA = 2,      /* new output: content and/or reasoning text, token ids */
        GC_EVENT_TOOL_CALL = 3,  /* one complete tool call */
        GC_EVENT_FINISHED = 4    /* always the last event of a request, exactly once */
};

/*
 * Called for each event of a request, in order: STARTED (unless the daemon refused the request), DELTA
 * and TOOL_CALL any number of times, then FINISHED exactly once, also for failures (the result's
 * gc_result_error() says which; a refusal finishes with that error and no STARTED). ev and everything
 * reached from it are valid during the call only. After FINISHED returns, req is freed.
 * Inside the callback the client may be used freely except gc_client_free() and blocking calls;
 * gc_cancel(req) is fine. A nonzero return value cancels the request (as gc_cancel).
 */
typedef int (*gc_event_cb)(gc_request *req, enum gc_event_type type, const gc_event *ev, void *userdata);

/* STARTED: prompt tokens and queue position (0 = started at once). */
GC_EXTERN uint32_t gc_event_prompt_tokens(const gc_event *ev);
GC_EXTERN uint32_t gc_event_queue_position(const gc_event *ev);
/* DELTA: the new content and reasoning text ("" when the delta has none of that kind). */
GC_EXTERN const char *gc_event_content(const gc_event *ev);
GC_EXTERN const char *gc_event_reasoning(const gc_event *ev);
GC_EXTERN const int32_t *gc_event_token_ids(const gc_event *ev, size_t *ret_n);
/* TOOL_CALL: name, arguments (JSON object text), call id ("" if none), index within the request. */
GC_EXTERN const char *gc_event_tool_name(const gc_event *ev);
GC_EXTERN const char *gc_event_tool_arguments(const gc_event *ev);
GC_EXTERN const char *gc_event_tool_call_id(const gc_event *ev);
GC_EXTERN uint32_t gc_event_tool_index(const gc_event *ev);
/* FINISHED: the accumulated result (borrowed; gc_event_steal_result() keeps it). Other events: the result so far. */
GC_EXTERN const gc_result *gc_event_result(const gc_event *ev);
/* FINISHED only: take ownership of the result (free with gc_result_free); NULL for other events or twice. */
GC_EXTERN gc_result *gc_event_steal_result(const gc_event *ev);

/* Blocking with a callback: as gc_generate/gc_chat, calling cb for every event. ret may be NULL. */
GC_EXTERN int gc_generate_stream(gc_client *c, const char *prompt, const gc_params *params, gc_event_cb cb,
                                 void *userdata, gc_result **ret);
GC_EXTERN int gc_chat_stream(gc_client *c, const char *messages_json, const char *tools_json, int thinking,
                             const gc_params *params, gc_event_cb cb, void *userdata, gc_result **ret);

/*
 * Non-blocking: send the request and return. Events arrive through cb from gc_client_process() (or
 * from any blocking call of the same client). *ret_req (may be NULL) identifies the request until its
 * FINISHED callback returns; it belongs to the library. Fails (and never calls cb) with GC_ENOTRUNNING
 * when no daemon is connected and none can be reconnected, -EINVAL for bad arguments, -ENOMEM.
 * gc_generate_ids_start takes the prompt as n token ids instead of text.
 */
GC_EXTERN int gc_generate_start(gc_client *c, const char *prompt, const gc_params *params, gc_event_cb cb,
                                void *userdata, gc_request **ret_req);
GC_EXTERN int gc_generate_ids_start(gc_client *c, const int32_t *ids, size_t n, const gc_params *params,
                                    gc_event_cb cb, void *userdata, gc_request **ret_req);
GC_EXTERN int gc_chat_start(gc_client *c, const char *messages_json, const char *tools_json, int thinking,
                            const gc_params *params, gc_event_cb cb, void *userdata, gc_request **ret_req);

/*
 * Ask the daemon to stop req. Its FINISHED event still comes (usually with GC_FINISH_CANCELLED and the
 * text so far). Harmless if called twice. Returns 0 or -ENOMEM. Same thread as the client.
 */
GC_EXTERN int gc_cancel(gc_request *req);
/* The request's id on the wire (unique within the client) and the index of the daemon serving it. */
GC_EXTERN uint64_t gc_request_id(const gc_request *req);
GC_EXTERN size_t gc_request_daemon(const gc_request *req);
GC_EXTERN void *gc_request_userdata(const gc_request *req);

/* ---- event-loop integration ---- */

/*
 * A file descriptor that becomes readable whenever gc_client_process() has work: data from any daemon,
 * a closed connection, or pending output that can now be written. Poll it for POLLIN (or add it to
 * epoll, libuv's uv_poll_t, ...); there is no need to watch for writability. The fd belongs to the
 * client and stays the same for its whole life; do not read, write or close it.
 */
GC_EXTERN int gc_client_get_fd(const gc_client *c);
/*
 * Do all work that is possible without blocking: write pending requests, read and decode what arrived,
 * and run the callbacks. Returns the number of requests that finished (>= 0), or a negative code for a
 * failure of the client as a whole (-ENOMEM, or epoll errors). A daemon disconnecting is not a failure
 * of the client: its requests finish with GC_EDISCONNECTED.
 */
GC_EXTERN int gc_client_process(gc_client *c);
/* 1 if requests are waiting to be written (socket buffer full), else 0. */
GC_EXTERN int gc_client_want_write(const gc_client *c);
/* Write pending output now, without blocking. 0 or a negative code (the connection is then closed). */
GC_EXTERN int gc_client_flush(gc_client *c);
/*
 * Wait up to timeout_ms (-1: forever) for work and do it (poll + gc_client_process). Returns what
 * gc_client_process returns, 0 on timeout, or -EINTR when a signal interrupted the wait (after which
 * the caller may check its flags and, e.g., gc_cancel()).
 */
GC_EXTERN int gc_client_wait(gc_client *c, int timeout_ms);

#ifdef __cplusplus
}
#endif
#endif
