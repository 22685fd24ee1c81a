/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * The gemma4d wire protocol: framing, message structs, encoders and decoders.
 *
 * One module shared by the daemon and libgemmaclient; docs/protocol.md is the normative description of
 * the bytes. A frame is a 4-byte big-endian body length followed by one msgpack map with string keys;
 * every map has a "type" key. Clients send hello and requests, the daemon sends welcome and events.
 *
 * Conventions:
 *   - Functions return 0 (or a documented positive value) on success and a negative errno on failure.
 *     Output parameters (ret, ret_*) are written only on success.
 *   - Decoders fill a struct proto_diag on failure: a stable protocol error code (what the daemon puts
 *     in its error event) and a message that names the offending key, e.g.
 *     "params.top_p: must be in (0, 1], got 1.5".
 *   - Decoded structs own their memory: free it with the matching proto_*_done() (contents only; the
 *     struct itself is the caller's), or proto_msg_done() for a whole message. All done functions accept
 *     a zeroed struct and leave the struct zeroed, so calling them twice is harmless.
 *   - For encoding, the same structs are filled by the caller with borrowed pointers; the encoders only
 *     read them. Absent optional strings/arrays are NULL (or count 0).
 *   - Strings on the wire are msgpack str, valid UTF-8, without NUL bytes (decoders reject anything
 *     else), so decoded strings are plain NUL-terminated C strings.
 *   - Everything the peer controls is bounded (frame size, nesting depth, number of objects, per-key
 *     string and array lengths; see PROTO_MAX_*), so a hostile frame cannot exhaust memory.
 *   - Nothing here logs, blocks, or keeps global state; all functions are thread-safe on distinct
 *     objects.
 *
 * Typical receive path (the daemon; a client is the same with proto_decode_event):
 *
 *     while (len > 0) {
 *             r = proto_reader_feed(&conn->reader, p, len, &used, &diag);
 *             p += used, len -= used;
 *             if (r < 0) {                          // framing lost: report (id 0) and close
 *                     (void) proto_encode_diag(&conn->out, &diag);
 *                     close_after_flush(conn);
 *                     break;
 *             }
 *             if (r == 0)
 *                     break;                        // need more bytes
 *             frame = proto_reader_frame(&conn->reader, &flen);
 *             if (proto_decode_request(frame, flen, &msg, &diag) < 0) {
 *                     (void) proto_encode_diag(&conn->out, &diag);   // error event, id if known
 *                     continue;                     // the connection stays usable
 *             }
 *             handle(conn, &msg);                   // owns msg; proto_msg_done() when finished
 *     }
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <msgpack.h>

/* ---- version and limits ---- */

#define PROTO_VERSION 1u

#define PROTO_FRAME_HEADER_BYTES 4u
#define PROTO_DEFAULT_MAX_FRAME (16u * 1024u * 1024u)   /* bytes of body, default of the reader */
#define PROTO_MAX_FRAME_LIMIT   (1024u * 1024u * 1024u) /* largest max_frame a reader accepts */

#define PROTO_MAX_DEPTH        24u         /* nesting of maps/arrays in a frame; top-level map = 1 */
#define PROTO_MAX_OBJECTS      (2u << 20)  /* msgpack objects (all nodes) in one frame */
#define PROTO_MAX_TOKEN_IDS    (1u << 20)  /* prompt_ids, ids, token_ids, score lengths */
#define PROTO_MAX_TOKEN_ID     INT32_MAX   /* token ids are 0..this (the daemon checks the vocabulary) */
#define PROTO_MAX_MESSAGES     4096u       /* chat messages */
#define PROTO_MAX_TOOLS        512u        /* chat tools */
#define PROTO_MAX_STOP         16u         /* stop strings */
#define PROTO_MAX_STOP_BYTES   256u        /* bytes per stop string (non-empty) */
#define PROTO_MAX_LOGPROBS     20          /* top-N alternatives per token */
#define PROTO_MAX_NAME_BYTES   256u        /* client name, model, backend, device, versions, tool names */
#define PROTO_MAX_MESSAGE_BYTES 4096u      /* error messages */
#define PROTO_MAX_MAX_TOKENS   (1u << 20)
#define PROTO_MAX_DEADLINE_MS  (7u * 24u * 3600u * 1000u)
#define PROTO_PRIORITY_MIN     (-20)
#define PROTO_PRIORITY_MAX     19

/* ---- error codes (stable strings on the wire, "code" of the error event) ---- */

enum proto_code {
        PROTO_CODE_NONE = 0,
        PROTO_CODE_BAD_REQUEST,          /* "bad_request": malformed frame, wrong type, missing key, range */
        PROTO_CODE_FRAME_TOO_LARGE,      /* "frame_too_large": length prefix above max_frame_bytes */
        PROTO_CODE_TOO_LONG,             /* "too_long": prompt + max_tokens exceed max_model_len */
        PROTO_CODE_OVERLOADED,           /* "overloaded": queue full or too many requests in flight */
        PROTO_CODE_CANCELLED,            /* "cancelled" */
        PROTO_CODE_DEADLINE,             /* "deadline": deadline_ms passed before the request started */
        PROTO_CODE_INTERNAL,             /* "internal" */
        PROTO_CODE_UNSUPPORTED_VERSION,  /* "unsupported_version": hello.proto != PROTO_VERSION */
        PROTO_CODE_UNSUPPORTED,          /* "unsupported": unknown message type or feature */
        PROTO_CODE_NOT_READY,            /* "not_ready": model still loading */
        PROTO_CODE_SHUTTING_DOWN,        /* "shutting_down" */
        PROTO_CODE_HANDSHAKE,            /* "handshake": a request before hello, or a second hello */
        PROTO_CODE_DUPLICATE_ID,         /* "duplicate_id": the id is already in flight on this connection */
        PROTO_CODE_UNKNOWN,              /* a code this version does not know (decoders map to it) */
        _PROTO_CODE_MAX,
        _PROTO_CODE_INVALID = -EINVAL,
};

/* "bad_request" etc.; NULL for values out of range. */
const char *proto_code_to_string(enum proto_code code);
/* Unknown names give PROTO_CODE_UNKNOWN (forward compatibility), NULL gives _PROTO_CODE_INVALID. */
enum proto_code proto_code_from_string(const char *s);

/*
 * Why a decode (or frame read) failed. message always names the key (dotted path, with [i] for array
 * elements) when one is to blame. id is the request id when it could be read before the failure, so the
 * daemon can tie its error event to the request (has_id false: use 0).
 */
struct proto_diag {
        enum proto_code code;
        bool has_id;
        uint64_t id;
        char message[256];
};

/* ---- message types ---- */

enum proto_type {
        PROTO_TYPE_NONE = 0,
        /* client -> daemon */
        PROTO_TYPE_HELLO,
        PROTO_TYPE_GENERATE,
        PROTO_TYPE_CHAT,
        PROTO_TYPE_CANCEL,
        PROTO_TYPE_STATUS,
        PROTO_TYPE_TOKENIZE,
        PROTO_TYPE_DETOKENIZE,
        PROTO_TYPE_SCORE,
        /* daemon -> client */
        PROTO_TYPE_WELCOME,
        PROTO_TYPE_STARTED,
        PROTO_TYPE_DELTA,
        PROTO_TYPE_TOOL_CALL,
        PROTO_TYPE_FINISHED,
        PROTO_TYPE_ERROR,
        PROTO_TYPE_STATUS_REPLY,
        PROTO_TYPE_TOKENIZE_REPLY,
        PROTO_TYPE_DETOKENIZE_REPLY,
        PROTO_TYPE_SCORE_REPLY,
        _PROTO_TYPE_MAX,
        _PROTO_TYPE_INVALID = -EINVAL,
};

/* Wire name ("hello", "tool_call", ...); NULL when out of range. */
const char *proto_type_to_string(enum proto_type type);
/* _PROTO_TYPE_INVALID for unknown names. */
enum proto_type proto_type_from_string(const char *s);
/* True for hello and the requests (what a client sends). */
bool proto_type_is_request(enum proto_type type);

/* ---- sampling parameters (the "params" map of generate, chat and score) ---- */

/* Bits of proto_params.present: which keys were on the wire (decode) or are to be sent (encode). */
enum {
        PROTO_PARAM_MAX_TOKENS         = 1u << 0,
        PROTO_PARAM_TEMPERATURE        = 1u << 1,
        PROTO_PARAM_TOP_P              = 1u << 2,
        PROTO_PARAM_TOP_K              = 1u << 3,
        PROTO_PARAM_MIN_P              = 1u << 4,
        PROTO_PARAM_REPETITION_PENALTY = 1u << 5,
        PROTO_PARAM_PRESENCE_PENALTY   = 1u << 6,
        PROTO_PARAM_FREQUENCY_PENALTY  = 1u << 7,
        PROTO_PARAM_SEED               = 1u << 8,
        PROTO_PARAM_STOP               = 1u << 9,
        PROTO_PARAM_LOGPROBS           = 1u << 10,
        PROTO_PARAM_PRIORITY           = 1u << 11,
        PROTO_PARAM_DEADLINE_MS        = 1u << 12,
        PROTO_PARAM_STREAM             = 1u << 13,
};

/*
 * Every field always holds a usable value: absent keys get the protocol defaults of
 * proto_params_init() (listed per field). present tells the daemon which ones the client chose, so it
 * may substitute its own configured defaults for the others.
 */
struct proto_params {
        uint32_t present;            /* PROTO_PARAM_* bits */
        uint32_t max_tokens;         /* 1..PROTO_MAX_MAX_TOKENS; default 0 = up to the context limit */
        double temperature;          /* [0, 100]; 0 = greedy; default 1.0 */
        double top_p;                /* (0, 1]; default 1.0 */
        uint32_t top_k;              /* 0..1048576; 0 = off; default 0 */
        double min_p;                /* [0, 1]; default 0 */
        double repetition_penalty;   /* (0, 10]; default 1.0 */
        double presence_penalty;     /* [-2, 2]; default 0 */
        double frequency_penalty;    /* [-2, 2]; default 0 */
        uint64_t seed;               /* meaningful only if present & PROTO_PARAM_SEED; else daemon picks */
        char **stop;                 /* n_stop strings, each 1..PROTO_MAX_STOP_BYTES bytes */
        uint32_t n_stop;             /* 0..PROTO_MAX_STOP */
        int32_t logprobs;            /* -1 = none (default); 0 = sampled token only; N: plus top N (<= 20) */
        int32_t priority;            /* -20..19, lower runs first; default 0 */
        uint32_t deadline_ms;        /* 0 = none (default); else 1..PROTO_MAX_DEADLINE_MS after receipt */
        bool stream;                 /* default true; false: one delta with everything before finished */
};

void proto_params_init(struct proto_params *p);
void proto_params_done(struct proto_params *p);
/*
 * Range checks of every field named in p->present (the decoder applies them; the client library may call
 * it before sending). Returns 0 or -EINVAL with diag filled (code bad_request, "params.KEY: ...").
 */
int proto_params_validate(const struct proto_params *p, struct proto_diag *reterr);

/* ---- client -> daemon ---- */

struct proto_hello {
        uint32_t proto;              /* required; != PROTO_VERSION fails decoding (unsupported_version) */
        char *client;                /* optional, <= PROTO_MAX_NAME_BYTES, e.g. "libgemmaclient/0.1.0" */
};

/* A prompt is either text (prompt != NULL) or token ids (n_prompt_ids > 0); exactly one. */
struct proto_prompt {
        char *text;                  /* "prompt": tokenized as by tokenize{special: true}, no BOS added */
        int32_t *ids;                /* "prompt_ids": 1..PROTO_MAX_TOKEN_IDS ids */
        uint32_t n_ids;
};

struct proto_generate {
        uint64_t id;                 /* required, >= 1, chosen by the client, unique while in flight */
        struct proto_prompt prompt;
        struct proto_params params;  /* "params": optional map */
};

/*
 * messages: a JSON array (1..PROTO_MAX_MESSAGES) of objects, each with "role" (string, required) and
 * optional "content" (string, null, or array of part objects each with a string "type"), "tool_calls"
 * (array of objects), "tool_call_id", "name", "reasoning_content", "reasoning" (strings),
 * "tool_responses" (array of objects); other keys pass through untouched for the template engine.
 * tools: NULL or a JSON array (0..PROTO_MAX_TOOLS) of objects. Both are converted from msgpack with
 * proto_object_to_json(), so map keys are strings and there are no binary values.
 */
struct proto_chat {
        uint64_t id;
        json_t *messages;            /* owned (one reference) when decoded; borrowed when encoding */
        json_t *tools;               /* optional */
        bool thinking;               /* default false */
        struct proto_params params;
};

struct proto_cancel {
        uint64_t id;                 /* the request to cancel; no reply of its own (see docs/protocol.md) */
};

struct proto_status {
        uint64_t id;
};

struct proto_tokenize {
        uint64_t id;
        char *text;                  /* required, may be "" */
        bool special;                /* default false: control-token spellings are plain text */
};

struct proto_detokenize {
        uint64_t id;
        int32_t *ids;                /* required, 0..PROTO_MAX_TOKEN_IDS ids */
        uint32_t n_ids;
        bool special;                /* default false: special tokens are skipped */
};

struct proto_score {
        uint64_t id;
        struct proto_prompt prompt;  /* at least 1 token once tokenized */
        struct proto_params params;  /* only logprobs (top-N), priority and deadline_ms matter */
};

/* ---- daemon -> client ---- */

struct proto_limits {
        uint32_t max_frame_bytes;    /* the daemon's reader limit for client frames */
        uint32_t max_inflight;       /* requests in flight per connection */
        uint32_t max_num_seqs;       /* sequences decoded together */
        uint32_t max_queue;          /* requests waiting, whole daemon */
};

struct proto_welcome {
        uint32_t proto;              /* PROTO_VERSION */
        char *server_version;        /* e.g. "0.1.0" */
        char *model;                 /* model name / id */
        char *architecture;          /* e.g. "gemma4" */
        uint32_t max_model_len;      /* tokens of context per sequence */
        struct proto_limits limits;
        char *backend;               /* "cuda", "cpu", ... */
        char *device;                /* e.g. "NVIDIA H100 80GB HBM3" */
        uint64_t kv_tokens;          /* "kv": {"tokens": capacity of the KV pool in tokens, */
        uint32_t kv_seqs_32k;        /*        "seqs_32k": 32k-token sequences that fit at once} */
};

struct proto_started {
        uint64_t id;
        uint32_t prompt_tokens;
        uint32_t queue_position;     /* 0 = started at once */
};

struct proto_top_logprob {
        int32_t id;
        float logprob;
};

struct proto_token_logprob {
        int32_t id;                  /* the token this entry scores */
        float logprob;
        struct proto_top_logprob *top;   /* n_top most likely alternatives, best first */
        uint32_t n_top;                  /* 0..PROTO_MAX_LOGPROBS */
};

/*
 * Content and reasoning are kept apart: text is answer content, reasoning is thinking text; either or
 * both may be empty (NULL when decoded from an absent key). Text never ends inside a UTF-8 character.
 * token_ids are the tokens this delta covers; logprobs, when the request asked for them, has exactly
 * n_token_ids entries.
 */
struct proto_delta {
        uint64_t id;
        char *text;
        char *reasoning;
        int32_t *token_ids;
        uint32_t n_token_ids;
        struct proto_token_logprob *logprobs;
        uint32_t n_logprobs;         /* 0 or n_token_ids */
};

/* One complete tool call parsed from the model output. arguments is a JSON text (an object). */
struct proto_tool_call {
        uint64_t id;
        uint32_t index;              /* 0, 1, ... within the request */
        char *call_id;               /* optional, e.g. "call_0", for tool_call_id in later messages */
        char *name;                  /* required, 1..PROTO_MAX_NAME_BYTES */
        char *arguments;             /* required, JSON object text, e.g. "{\"location\": \"London\"}" */
};

enum proto_reason {
        PROTO_REASON_STOP = 0,       /* end of turn, EOS or a stop string */
        PROTO_REASON_LENGTH,         /* max_tokens or the context limit */
        PROTO_REASON_CANCELLED,      /* cancel, or the connection's requests were dropped */
        PROTO_REASON_DEADLINE,       /* deadline_ms passed while running */
        PROTO_REASON_ERROR,          /* failed after started; see error_code/error_message */
        _PROTO_REASON_MAX,
        _PROTO_REASON_INVALID = -EINVAL,
};

const char *proto_reason_to_string(enum proto_reason reason);
enum proto_reason proto_reason_from_string(const char *s);

struct proto_usage {
        uint32_t prompt_tokens;
        uint32_t cached_tokens;      /* prompt tokens served from the prefix cache */
        uint32_t completion_tokens;
};

struct proto_timings {
        double queue_ms;             /* receipt to first scheduling */
        double ttft_ms;              /* receipt to first output token */
        double per_token_ms;         /* mean time per output token after the first */
};

struct proto_finished {
        uint64_t id;
        enum proto_reason reason;
        struct proto_usage usage;
        struct proto_timings timings;
        uint32_t preempted;          /* times the request was preempted and resumed */
        enum proto_code error_code;  /* reason == error only ("error": {code, message}), else NONE */
        char *error_message;         /* reason == error only */
};

/* The error event. id 0: tied to no request (connection-level; the daemon may close afterwards). */
struct proto_error {
        uint64_t id;
        enum proto_code code;        /* required; unknown strings decode as PROTO_CODE_UNKNOWN */
        char *message;               /* required, <= PROTO_MAX_MESSAGE_BYTES */
};

/* "status": a free-form map built by the daemon (json object: strings, numbers, bools, null, nesting). */
struct proto_status_reply {
        uint64_t id;
        json_t *status;              /* a JSON object; owned when decoded, borrowed when encoding */
};

struct proto_tokenize_reply {
        uint64_t id;
        int32_t *ids;
        uint32_t n_ids;
};

struct proto_detokenize_reply {
        uint64_t id;
        char *text;
};

/*
 * Prompt log-probabilities. token_ids: the n tokens scored (the tokenized prompt). logprobs: n - 1
 * entries; entry i is log P(token_ids[i + 1] | token_ids[0..i]) with top alternatives when params.logprobs
 * > 0 (the first token has no context and no entry).
 */
struct proto_score_reply {
        uint64_t id;
        int32_t *token_ids;
        uint32_t n_token_ids;
        struct proto_token_logprob *logprobs;
        uint32_t n_logprobs;         /* n_token_ids - 1 */
};

/* Any message. type selects the union member. */
struct proto_msg {
        enum proto_type type;
        union {
                struct proto_hello hello;
                struct proto_generate generate;
                struct proto_chat chat;
                struct proto_cancel cancel;
                struct proto_status status;
                struct proto_tokenize tokenize;
                struct proto_detokenize detokenize;
                struct proto_score score;
                struct proto_welcome welcome;
                struct proto_started started;
                struct proto_delta delta;
                struct proto_tool_call tool_call;
                struct proto_finished finished;
                struct proto_error error;
                struct proto_status_reply status_reply;
                struct proto_tokenize_reply tokenize_reply;
                struct proto_detokenize_reply detokenize_reply;
                struct proto_score_reply score_reply;
        };
};

/* Request id of a message (0 for hello, welcome and connection-level errors). */
uint64_t proto_msg_id(const struct proto_msg *m);

/* Free what decoding allocated; each leaves its struct zeroed. NULL is accepted. */
void proto_msg_done(struct proto_msg *m);
void proto_hello_done(struct proto_hello *m);
void proto_prompt_done(struct proto_prompt *m);
void proto_generate_done(struct proto_generate *m);
void proto_chat_done(struct proto_chat *m);
void proto_tokenize_done(struct proto_tokenize *m);
void proto_detokenize_done(struct proto_detokenize *m);
void proto_score_done(struct proto_score *m);
void proto_welcome_done(struct proto_welcome *m);
void proto_delta_done(struct proto_delta *m);
void proto_tool_call_done(struct proto_tool_call *m);
void proto_finished_done(struct proto_finished *m);
void proto_error_done(struct proto_error *m);
void proto_status_reply_done(struct proto_status_reply *m);
void proto_tokenize_reply_done(struct proto_tokenize_reply *m);
void proto_detokenize_reply_done(struct proto_detokenize_reply *m);
void proto_score_reply_done(struct proto_score_reply *m);
void proto_token_logprobs_free(struct proto_token_logprob *lp, uint32_t n);
/* (cancel, status and started own nothing.) */

/* ---- output buffer and frame writer ---- */

/* A growable byte buffer that encoders append whole frames to (header included). */
struct proto_buf {
        uint8_t *data;
        size_t len;
        size_t cap;
};

void proto_buf_init(struct proto_buf *b);
void proto_buf_done(struct proto_buf *b);
void proto_buf_reset(struct proto_buf *b);                  /* len = 0, keeps the memory */
/* Drop the first n bytes (after a partial write to a socket). n > len drops everything. */
void proto_buf_consume(struct proto_buf *b, size_t n);
/* Append a frame around an already encoded msgpack body. -EMSGSIZE if len > UINT32_MAX, -ENOMEM. */
int proto_frame_append(struct proto_buf *b, const void *body, size_t len);

/*
 * Encoders: append one complete frame (length prefix + map with "type") to b. On failure b is left as it
 * was. They check what the decoder would reject in the structs they are given (ids >= 1, ranges, string
 * limits, UTF-8) and return -EINVAL for such input, so a peer never receives a frame its decoder
 * refuses; -ENOMEM on allocation failure; -EMSGSIZE above 4 GiB.
 */
int proto_encode(struct proto_buf *b, const struct proto_msg *m);
int proto_encode_hello(struct proto_buf *b, const struct proto_hello *m);
int proto_encode_generate(struct proto_buf *b, const struct proto_generate *m);
int proto_encode_chat(struct proto_buf *b, const struct proto_chat *m);
int proto_encode_cancel(struct proto_buf *b, const struct proto_cancel *m);
int proto_encode_status(struct proto_buf *b, const struct proto_status *m);
int proto_encode_tokenize(struct proto_buf *b, const struct proto_tokenize *m);
int proto_encode_detokenize(struct proto_buf *b, const struct proto_detokenize *m);
int proto_encode_score(struct proto_buf *b, const struct proto_score *m);
int proto_encode_welcome(struct proto_buf *b, const struct proto_welcome *m);
int proto_encode_started(struct proto_buf *b, const struct proto_started *m);
int proto_encode_delta(struct proto_buf *b, const struct proto_delta *m);
int proto_encode_tool_call(struct proto_buf *b, const struct proto_tool_call *m);
int proto_encode_finished(struct proto_buf *b, const struct proto_finished *m);
int proto_encode_error(struct proto_buf *b, const struct proto_error *m);
int proto_encode_status_reply(struct proto_buf *b, const struct proto_status_reply *m);
int proto_encode_tokenize_reply(struct proto_buf *b, const struct proto_tokenize_reply *m);
int proto_encode_detokenize_reply(struct proto_buf *b, const struct proto_detokenize_reply *m);
int proto_encode_score_reply(struct proto_buf *b, const struct proto_score_reply *m);

/* Convenience for the daemon: an error event from a failed decode (id from diag when it has one). */
int proto_encode_diag(struct proto_buf *b, const struct proto_diag *d);

/* ---- incremental frame reader ---- */

/*
 * Feed bytes as they arrive; whole frame bodies come out. Memory is bounded by max_frame (plus the
 * 4-byte header) and grows only as bytes actually arrive, so a length prefix alone allocates nothing
 * large. A length above max_frame is an error as soon as the 4 header bytes are in, before any of the
 * body is buffered. After an error the reader stays failed (framing is lost; close the connection).
 */
struct proto_reader {
        uint32_t max_frame;
        uint8_t header[PROTO_FRAME_HEADER_BYTES];
        uint32_t header_len;         /* header bytes received for the current frame */
        uint32_t body_len;           /* from the header, valid when header_len == 4 */
        uint8_t *buf;                /* body bytes received so far */
        size_t len;
        size_t cap;
        bool frame_ready;            /* a whole body is in buf; the next feed discards it */
        int error;                   /* sticky negative errno after a failure */
};

/* max_frame 0 means PROTO_DEFAULT_MAX_FRAME; values above PROTO_MAX_FRAME_LIMIT are clamped. */
void proto_reader_init(struct proto_reader *r, uint32_t max_frame);
void proto_reader_done(struct proto_reader *r);

/*
 * Consume bytes from data until one frame is complete or data runs out. *ret_consumed is set to the
 * bytes consumed (always, also on error: the bytes examined). Returns:
 *   1  a frame is complete: get it with proto_reader_frame(), then call again with the unconsumed rest;
 *   0  all of data was consumed and the frame is still partial;
 *   -EMSGSIZE  the length prefix exceeds max_frame (diag: frame_too_large, with both numbers);
 *   -EBADMSG   a zero length prefix (diag: bad_request);
 *   -ENOMEM.
 * Each call first discards a frame returned by the previous call, so len 0 is allowed (returns 0).
 */
int proto_reader_feed(struct proto_reader *r, const void *data, size_t len, size_t *ret_consumed,
                      struct proto_diag *reterr);

/* The complete frame body (valid until the next feed/done), or NULL if none is ready. */
const uint8_t *proto_reader_frame(const struct proto_reader *r, size_t *ret_len);

/* True if the reader holds part of a frame (for "connection closed mid-frame" = truncated frame). */
bool proto_reader_partial(const struct proto_reader *r);

/* ---- decoders ---- */

/*
 * Decode one frame body (without the length prefix). proto_decode_request accepts only what a client may
 * send (hello and requests), proto_decode_event only what a daemon sends (welcome and events),
 * proto_decode either. Returns 0, -EBADMSG (reterr->code: bad_request for malformed msgpack, a non-map
 * top level, a missing key, a wrong type, a value out of range, nesting deeper than PROTO_MAX_DEPTH, too
 * many objects, bad UTF-8 or NUL in a string; unsupported for an unknown or wrong-direction "type";
 * unsupported_version for a hello with proto != PROTO_VERSION), or -ENOMEM. Unknown keys are ignored.
 * reterr may be NULL. *ret is written only on success; release it with proto_msg_done().
 */
int proto_decode(const void *body, size_t len, struct proto_msg *ret, struct proto_diag *reterr);
int proto_decode_request(const void *body, size_t len, struct proto_msg *ret, struct proto_diag *reterr);
int proto_decode_event(const void *body, size_t len, struct proto_msg *ret, struct proto_diag *reterr);

/* ---- JSON bridge (chat messages/tools and status are JSON for the rest of the code) ---- */

/*
 * Convert a msgpack object to a new JSON value: maps (string keys only) -> objects, arrays -> arrays,
 * str -> string (UTF-8, no NUL), int -> integer (> INT64_MAX rejected), float -> real (NaN/inf
 * rejected), bool, nil -> null; bin and ext are rejected. max_depth bounds nesting (1 = scalars only,
 * 0 means PROTO_MAX_DEPTH). path names the object in messages ("messages[2].content"). Returns 0,
 * -EBADMSG with reterr (bad_request) or -ENOMEM.
 */
int proto_object_to_json(const msgpack_object *o, unsigned max_depth, const char *path, json_t **ret,
                         struct proto_diag *reterr);

/*
 * Pack a JSON value with pk (the inverse mapping; integers as msgpack ints, reals as float64). Fails
 * with -EINVAL on nesting deeper than PROTO_MAX_DEPTH, -ENOMEM if the packer's writer fails.
 */
int proto_pack_json(msgpack_packer *pk, const json_t *j);

/* ---- small helpers ---- */

/* True if s[0..len) is valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF) and contains no NUL. */
bool proto_utf8_valid(const char *s, size_t len);
/*
 * Length of the longest prefix of s[0..len) that does not end inside a UTF-8 sequence that could still
 * be completed by more bytes (what a streaming detokenizer may emit now). Invalid bytes count as
 * complete (the caller replaces them).
 */
size_t proto_utf8_complete_prefix(const char *s, size_t len);
