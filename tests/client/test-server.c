/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A scripted gemma4d stand-in for the client tests: a single-threaded poll() server on a Unix socket that
 * speaks the real protocol through the shared proto/ codec (hello/welcome, every request, every event)
 * but computes nothing. Its answers are deterministic:
 *
 *   tokenizer     one token per byte (id = byte value); detokenize maps ids < 256 back to bytes.
 *   generate      text prompt: the answer is "You said: PROMPT"; token-id prompt: max_tokens (default 16)
 *                 words "tok ". Each word (with its trailing space) is one token and one delta.
 *   chat          content "You said: LAST_USER_CONTENT"; with thinking, the reasoning "The user wrote N
 *                 bytes." comes first in deltas of its own.
 *   max_tokens, stop strings, stream=false and logprobs are honoured; the finished event carries usage
 *   and timings.
 *
 * Markers in the prompt (or the last user message) script other behaviour:
 *   [overloaded] [toolong] [badrequest] [notready]  refused with that error code (no started event);
 *   [internal]    started, one delta, finished with reason error (code internal);
 *   [deadline]    started, finished with reason deadline;
 *   [tool]        a tool_call event (get_weather {"location": "London"}) before finished;
 *   [slow]        30 ms between events (cancel tests); --delay-ms sets a delay for every request;
 *   [disconnect]  started, two deltas, then the connection is closed;
 *   [garbage]     a frame whose body is not msgpack; [hugeframe] a 2 GiB length prefix (broken daemon).
 *
 * Options: --socket PATH (required), --name MODEL (welcome model name), --max-inflight N, --delay-ms N,
 * --max-frame N (max_frame_bytes of welcome and of the reader), --loading-steps N (the first N status
 * requests report state "loading" with loading {phase, percent}, and generate/chat get not_ready until
 * then), --reject-version (answer hello with unsupported_version and close), --overloaded (refuse every
 * generate and chat as overloaded). Prints "READY" on stdout once listening. SIGTERM/SIGINT end it.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "proto.h"

#define MAX_CONNS 256

struct item {
        struct proto_buf frame;      /* empty with close set: drop the connection */
        bool close;
        uint32_t tokens;             /* output tokens this frame carries */
        int delay_ms;                /* before sending */
};

struct job {
        uint64_t id;
        struct item *items;
        size_t n_items, next;
        uint64_t due_ms;
        uint32_t prompt_tokens, emitted;
        struct job *next_job;
};

struct sconn {
        int fd;
        bool hello;
        struct proto_reader reader;
        struct proto_buf out;
        struct job *jobs;
        size_t n_jobs;
        bool closing;                /* close once out is flushed */
};

static struct {
        const char *socket, *name;
        uint32_t max_inflight, max_frame;
        int delay_ms;
        unsigned loading_steps, status_calls;
        bool reject_version, overloaded;
        uint64_t started_ms, requests;
        struct sconn conns[MAX_CONNS];
} S = { .name = "test-model", .max_inflight = 64, .max_frame = PROTO_DEFAULT_MAX_FRAME };

static volatile sig_atomic_t quit;

static void on_signal(int sig) {
        quit = 1;
}

static uint64_t now_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000u + (uint64_t) ts.tv_nsec / 1000000u;
}

static void die_oom(int r) {
        if (r == -ENOMEM) {
                fprintf(stderr, "test-server: out of memory\n");
                abort();
        }
}

static bool loading(void) {
        return S.status_calls < S.loading_steps;
}

/* ---- jobs ---- */

static void job_free(struct job *j) {
        for (size_t i = 0; i < j->n_items; i++)
                proto_buf_done(&j->items[i].frame);
        free(j->items);
        free(j);
}

static struct item *job_push(struct job *j, int delay_ms) {
        struct item *v = realloc(j->items, (j->n_items + 1) * sizeof(*v));

        if (!v)
                die_oom(-ENOMEM);
        j->items = v;
        v = &j->items[j->n_items++];
        *v = (struct item) { .delay_ms = delay_ms };
        proto_buf_init(&v->frame);
        return v;
}

static void send_error(struct sconn *c, uint64_t id, enum proto_code code, const char *message) {
        struct proto_error e = { .id = id, .code = code, .message = (char *) message };

        die_oom(proto_encode_error(&c->out, &e));
}

static bool has(const char *s, const char *marker) {
        return s && strstr(s, marker) != NULL;
}

static void fill_logprobs(struct proto_token_logprob *lp, const int32_t *ids, uint32_t n, int32_t top_n,
                          struct proto_top_logprob *tops) {
        for (uint32_t i = 0; i < n; i++) {
                lp[i] = (struct proto_token_logprob) { .id = ids[i], .logprob = -0.25f * (float) (i % 4 + 1) };
                lp[i].top = top_n > 0 ? tops + (size_t) i * top_n : NULL;
                lp[i].n_top = top_n > 0 ? (uint32_t) top_n : 0;
                for (int32_t k = 0; k < top_n; k++)
                        lp[i].top[k] = (struct proto_top_logprob) { .id = ids[i] + k, .logprob = -0.5f * (k + 1) };
        }
}

/* Append one delta item covering text[0..len) as content or reasoning. */
static void push_delta(struct job *j, const struct proto_params *p, const char *text, size_t len,
                       bool reasoning, int delay) {
        struct item *it = job_push(j, delay);
        char *s = strndup(text, len);
        int32_t *ids = malloc((len ? len : 1) * sizeof(*ids));
        struct proto_token_logprob *lp = NULL;
        struct proto_top_logprob *tops = NULL;
        struct proto_delta d = { .id = j->id };
        uint32_t n = 0;

        if (!s || !ids)
                die_oom(-ENOMEM);
        /* A delta is one "token" of the answer; its id list is the token's bytes for realism. */
        ids[n++] = (int32_t) (1000 + (unsigned char) s[0]);
        if (p->logprobs >= 0) {
                lp = calloc(n, sizeof(*lp));
                tops = calloc((size_t) n * (p->logprobs > 0 ? p->logprobs : 1), sizeof(*tops));
                if (!lp || !tops)
                        die_oom(-ENOMEM);
                fill_logprobs(lp, ids, n, p->logprobs, tops);
        }
        d.text = reasoning ? NULL : s;
        d.reasoning = reasoning ? s : NULL;
        d.token_ids = ids;
        d.n_token_ids = n;
        d.logprobs = lp;
        d.n_logprobs = lp ? n : 0;
        die_oom(proto_encode_delta(&it->frame, &d));
        it->tokens = n;
        free(s);
        free(ids);
        free(lp);
        free(tops);
}

/* Split text into word tokens (each word with its trailing spaces), at most *budget of them. */
static size_t next_word(const char *s) {
        size_t i = 0;

        while (s[i] && s[i] != ' ')
                i++;
        while (s[i] == ' ')
                i++;
        return i;
}

static size_t count_words(const char *s) {
        size_t n = 0;

        for (size_t i = 0; s[i]; i += next_word(s + i))
                n++;
        return n;
}

/*
 * Script a generate/chat answer. text: the content; reasoning: thinking text or NULL. Returns the job, or
 * NULL after queueing an immediate refusal.
 */
static struct job *script_answer(struct sconn *c, uint64_t id, const char *marker_text, const char *reasoning,
                                 char *content, uint32_t prompt_tokens, const struct proto_params *p) {
        int delay = has(marker_text, "[slow]") ? 30 : S.delay_ms;
        uint32_t budget = p->max_tokens ? p->max_tokens : UINT32_MAX, used = 0;
        enum proto_reason reason = PROTO_REASON_STOP;
        struct proto_finished fin = { .id = id };
        struct proto_started st = { .id = id, .prompt_tokens = prompt_tokens };
        struct job *j;
        struct item *it;

        if (has(marker_text, "[overloaded]") || S.overloaded) {
                send_error(c, id, PROTO_CODE_OVERLOADED, "queue full (test server)");
                return NULL;
        }
        if (has(marker_text, "[toolong]")) {
                send_error(c, id, PROTO_CODE_TOO_LONG, "prompt (9000 tokens) + max_tokens exceed max_model_len 8192");
                return NULL;
        }
        if (has(marker_text, "[badrequest]")) {
                send_error(c, id, PROTO_CODE_BAD_REQUEST, "params.top_p: must be in (0, 1], got 1.5");
                return NULL;
        }
        if (has(marker_text, "[garbage]") || has(marker_text, "[hugeframe]")) {
                /*
                 * A broken daemon: a frame whose body is not msgpack, or a length prefix far above any
                 * reader's limit. The client must fail the request (and the connection), not crash.
                 */
                static const uint8_t garbage[] = { 0, 0, 0, 3, 0xc1, 0xc1, 0xc1 };
                static const uint8_t huge[] = { 0x7f, 0xff, 0xff, 0xff, 0x80 };
                bool g = has(marker_text, "[garbage]");
                const uint8_t *bytes = g ? garbage : huge;
                size_t n = g ? sizeof(garbage) : sizeof(huge);
                uint8_t *dst;

                if (c->out.cap - c->out.len < n) {
                        dst = realloc(c->out.data, c->out.len + n);
                        if (!dst)
                                die_oom(-ENOMEM);
                        c->out.data = dst;
                        c->out.cap = c->out.len + n;
                }
                memcpy(c->out.data + c->out.len, bytes, n);
                c->out.len += n;
                return NULL;
        }
        if (has(marker_text, "[notready]") || loading()) {
                send_error(c, id, PROTO_CODE_NOT_READY, "the model is loading");
                return NULL;
        }
        j = calloc(1, sizeof(*j));
        if (!j)
                die_oom(-ENOMEM);
        j->id = id;
        j->prompt_tokens = prompt_tokens;
        it = job_push(j, 0);
        die_oom(proto_encode_started(&it->frame, &st));

        /* Stop strings cut the content before the first match. */
        for (uint32_t k = 0; k < p->n_stop; k++) {
                char *hit = strstr(content, p->stop[k]);

                if (hit)
                        *hit = 0;
        }
        if (has(marker_text, "[deadline]")) {
                reason = PROTO_REASON_DEADLINE;
                goto finish;
        }
        if ((reasoning ? count_words(reasoning) : 0) + count_words(content) > budget)
                reason = PROTO_REASON_LENGTH;
        if (p->stream) {
                for (size_t pass = 0; pass < 2; pass++) {
                        const char *t = pass == 0 ? reasoning : content;

                        for (size_t i = 0; t && t[i] && used < budget;) {
                                size_t n = next_word(t + i);

                                push_delta(j, p, t + i, n, pass == 0, delay);
                                used++;
                                i += n;
                                if (has(marker_text, "[disconnect]") && used == 2) {
                                        job_push(j, delay)->close = true;
                                        goto finish;
                                }
                                if (has(marker_text, "[internal]")) {
                                        reason = PROTO_REASON_ERROR;
                                        goto finish;
                                }
                        }
                }
        } else {
                /* One delta with everything (both kinds, cut to max_tokens), as stream=false asks. */
                struct item *d = job_push(j, delay);
                struct proto_delta del = { .id = id };
                int32_t *ids = calloc(budget < 4096 ? budget + 1 : 4097, sizeof(*ids));
                char *cut[2] = {};

                if (!ids)
                        die_oom(-ENOMEM);
                for (size_t pass = 0; pass < 2; pass++) {
                        const char *t = pass == 0 ? reasoning : content;
                        size_t i = 0;

                        while (t && t[i] && used < budget) {
                                if (used < 4096)
                                        ids[used] = (int32_t) (1000 + (unsigned char) t[i]);
                                i += next_word(t + i);
                                used++;
                        }
                        if (t && i && !(cut[pass] = strndup(t, i)))
                                die_oom(-ENOMEM);
                }
                del.reasoning = cut[0];
                del.text = cut[1];
                del.token_ids = ids;
                del.n_token_ids = used < 4096 ? used : 4096;
                die_oom(proto_encode_delta(&d->frame, &del));
                d->tokens = used;
                free(cut[0]);
                free(cut[1]);
                free(ids);
                if (has(marker_text, "[internal]"))
                        reason = PROTO_REASON_ERROR;
        }
        if (has(marker_text, "[tool]")) {
                struct proto_tool_call tc = { .id = id, .index = 0, .call_id = "call_0", .name = "get_weather",
                                              .arguments = "{\"location\": \"London\"}" };

                die_oom(proto_encode_tool_call(&job_push(j, delay)->frame, &tc));
        }
finish:
        fin.reason = reason;
        fin.usage = (struct proto_usage) { .prompt_tokens = prompt_tokens, .cached_tokens = 0, .completion_tokens = used };
        fin.timings = (struct proto_timings) { .queue_ms = 0.5, .ttft_ms = 2.0 + delay, .per_token_ms = 1.0 + delay };
        if (reason == PROTO_REASON_ERROR) {
                fin.error_code = PROTO_CODE_INTERNAL;
                fin.error_message = "engine failed (test server)";
        }
        if (!(j->n_items && j->items[j->n_items - 1].close))
                die_oom(proto_encode_finished(&job_push(j, delay)->frame, &fin));
        j->due_ms = now_ms();
        return j;
}

static void add_job(struct sconn *c, struct job *j) {
        if (!j)
                return;
        j->next_job = c->jobs;
        c->jobs = j;
        c->n_jobs++;
}

static struct job *find_job(struct sconn *c, uint64_t id, struct job ***ret_link) {
        for (struct job **p = &c->jobs; *p; p = &(*p)->next_job)
                if ((*p)->id == id) {
                        if (ret_link)
                                *ret_link = p;
                        return *p;
                }
        return NULL;
}

/* ---- requests ---- */

static const char *last_user_content(json_t *messages) {
        for (size_t i = json_array_size(messages); i-- > 0;) {
                json_t *m = json_array_get(messages, i);
                const char *role = json_string_value(json_object_get(m, "role"));

                if (role && strcmp(role, "user") == 0) {
                        const char *s = json_string_value(json_object_get(m, "content"));

                        return s ? s : "";
                }
        }
        return "";
}

static void handle_request(struct sconn *c, struct proto_msg *m) {
        uint64_t id = proto_msg_id(m);
        char *content = NULL, reasoning[64];

        if (m->type == PROTO_TYPE_HELLO) {
                send_error(c, 0, PROTO_CODE_HANDSHAKE, "hello was already received");
                return;
        }
        if (m->type == PROTO_TYPE_CANCEL) {
                struct job **link, *j = find_job(c, m->cancel.id, &link);

                if (j) {
                        struct proto_finished fin = {
                                .id = j->id, .reason = PROTO_REASON_CANCELLED,
                                .usage = { .prompt_tokens = j->prompt_tokens, .completion_tokens = j->emitted },
                        };

                        /* Before started, the request ends with a single error (docs/protocol.md, 8). */
                        if (j->next == 0)
                                send_error(c, j->id, PROTO_CODE_CANCELLED, "cancelled before it started");
                        else
                                die_oom(proto_encode_finished(&c->out, &fin));
                        *link = j->next_job;
                        c->n_jobs--;
                        job_free(j);
                }
                return;
        }
        if (find_job(c, id, NULL)) {
                send_error(c, id, PROTO_CODE_DUPLICATE_ID, "the id is already in flight on this connection");
                return;
        }
        if ((m->type == PROTO_TYPE_GENERATE || m->type == PROTO_TYPE_CHAT) && c->n_jobs >= S.max_inflight) {
                send_error(c, id, PROTO_CODE_OVERLOADED, "too many requests in flight on this connection");
                return;
        }
        S.requests++;
        switch (m->type) {
        case PROTO_TYPE_GENERATE: {
                const struct proto_prompt *pr = &m->generate.prompt;

                if (pr->text) {
                        if (asprintf(&content, "You said: %s", pr->text) < 0)
                                die_oom(-ENOMEM);
                } else {
                        uint32_t n = m->generate.params.max_tokens ? m->generate.params.max_tokens : 16;

                        content = malloc((size_t) n * 4 + 1);
                        if (!content)
                                die_oom(-ENOMEM);
                        content[0] = 0;
                        for (uint32_t i = 0; i < n; i++)
                                strcat(content, "tok ");
                }
                add_job(c, script_answer(c, id, pr->text, NULL, content,
                                         pr->text ? (uint32_t) strlen(pr->text) : pr->n_ids, &m->generate.params));
                break;
        }
        case PROTO_TYPE_CHAT: {
                const char *user = last_user_content(m->chat.messages);
                char *all = json_dumps(m->chat.messages, JSON_COMPACT);

                if (asprintf(&content, "You said: %s", user) < 0 || !all)
                        die_oom(-ENOMEM);
                snprintf(reasoning, sizeof(reasoning), "The user wrote %zu bytes.", strlen(user));
                add_job(c, script_answer(c, id, user, m->chat.thinking ? reasoning : NULL, content,
                                         (uint32_t) strlen(all), &m->chat.params));
                free(all);
                break;
        }
        case PROTO_TYPE_STATUS: {
                /* The shape of gemma4d's status map (daemon/io/server.c), reduced. */
                json_t *st = json_pack("{s:s, s:s, s:f, s:{s:i}, s:i, s:I, s:s}",
                                       "state", loading() ? "loading" : "ready", "model", S.name,
                                       "uptime_s", (double) (now_ms() - S.started_ms) / 1000.0,
                                       "queue", "total", 0, "running", (int) c->n_jobs,
                                       "finished", (json_int_t) S.requests, "backend", "test");

                if (loading())
                        json_object_set_new(st, "loading", json_pack("{s:s, s:i}", "phase", "weights", "percent",
                                                                     (int) (S.status_calls * 100 / S.loading_steps)));
                struct proto_status_reply rep = { .id = id, .status = st };

                S.status_calls++;
                die_oom(proto_encode_status_reply(&c->out, &rep));
                json_decref(st);
                break;
        }
        case PROTO_TYPE_TOKENIZE: {
                size_t n = strlen(m->tokenize.text);
                int32_t *ids = malloc((n ? n : 1) * sizeof(*ids));
                struct proto_tokenize_reply rep = { .id = id, .ids = ids, .n_ids = (uint32_t) n };

                if (!ids)
                        die_oom(-ENOMEM);
                for (size_t i = 0; i < n; i++)
                        ids[i] = (unsigned char) m->tokenize.text[i];
                die_oom(proto_encode_tokenize_reply(&c->out, &rep));
                free(ids);
                break;
        }
        case PROTO_TYPE_DETOKENIZE: {
                char *text = malloc(m->detokenize.n_ids + 1);
                size_t n = 0;

                if (!text)
                        die_oom(-ENOMEM);
                for (uint32_t i = 0; i < m->detokenize.n_ids; i++)
                        if (m->detokenize.ids[i] > 0 && m->detokenize.ids[i] < 256)
                                text[n++] = (char) m->detokenize.ids[i];
                text[n] = 0;
                if (!proto_utf8_valid(text, n))
                        send_error(c, id, PROTO_CODE_BAD_REQUEST, "ids: the bytes are not valid UTF-8");
                else {
                        struct proto_detokenize_reply rep = { .id = id, .text = text };

                        die_oom(proto_encode_detokenize_reply(&c->out, &rep));
                }
                free(text);
                break;
        }
        case PROTO_TYPE_SCORE: {
                const struct proto_prompt *pr = &m->score.prompt;
                uint32_t n = pr->text ? (uint32_t) strlen(pr->text) : pr->n_ids;
                int32_t top = m->score.params.logprobs > 0 ? m->score.params.logprobs : 0;
                int32_t *ids = malloc((n ? n : 1) * sizeof(*ids));
                struct proto_token_logprob *lp = calloc(n ? n : 1, sizeof(*lp));
                struct proto_top_logprob *tops = calloc((size_t) (n ? n : 1) * (top ? top : 1), sizeof(*tops));

                if (!ids || !lp || !tops)
                        die_oom(-ENOMEM);
                if (n == 0) {
                        send_error(c, id, PROTO_CODE_BAD_REQUEST, "prompt: at least one token is needed");
                } else {
                        struct proto_score_reply rep = { .id = id, .token_ids = ids, .n_token_ids = n,
                                                         .logprobs = lp, .n_logprobs = n - 1 };

                        for (uint32_t i = 0; i < n; i++)
                                ids[i] = pr->text ? (unsigned char) pr->text[i] : pr->ids[i];
                        fill_logprobs(lp, ids + 1, n - 1, top, tops);
                        die_oom(proto_encode_score_reply(&c->out, &rep));
                }
                free(ids);
                free(lp);
                free(tops);
                break;
        }
        default:
                send_error(c, id, PROTO_CODE_UNSUPPORTED, "unexpected message type");
        }
        free(content);
}

static void handle_frame(struct sconn *c, const uint8_t *body, size_t len) {
        struct proto_diag diag = {};
        struct proto_msg m;
        int r = proto_decode_request(body, len, &m, &diag);

        if (r < 0) {
                die_oom(r);
                /* A bad hello (e.g. another protocol version) ends the connection. */
                die_oom(proto_encode_diag(&c->out, &diag));
                if (!c->hello)
                        c->closing = true;
                return;
        }
        if (!c->hello) {
                if (m.type != PROTO_TYPE_HELLO) {
                        send_error(c, 0, PROTO_CODE_HANDSHAKE, "the first message must be hello");
                        c->closing = true;
                } else if (S.reject_version) {
                        send_error(c, 0, PROTO_CODE_UNSUPPORTED_VERSION, "this server speaks protocol 99");
                        c->closing = true;
                } else {
                        struct proto_welcome w = {
                                .proto = PROTO_VERSION, .server_version = "0.1.0-test", .model = (char *) S.name,
                                .architecture = "gemma4", .max_model_len = 8192,
                                .limits = { .max_frame_bytes = S.max_frame, .max_inflight = S.max_inflight,
                                            .max_num_seqs = 64, .max_queue = 256 },
                                .backend = "test", .device = "none", .kv_tokens = 65536, .kv_seqs_32k = 2,
                        };

                        die_oom(proto_encode_welcome(&c->out, &w));
                        c->hello = true;
                }
        } else
                handle_request(c, &m);
        proto_msg_done(&m);
}

/* ---- connections ---- */

static void conn_drop(struct sconn *c) {
        while (c->jobs) {
                struct job *j = c->jobs;

                c->jobs = j->next_job;
                job_free(j);
        }
        close(c->fd);
        proto_reader_done(&c->reader);
        proto_buf_done(&c->out);
        *c = (struct sconn) { .fd = -1 };
}

static void conn_read(struct sconn *c) {
        uint8_t buf[65536];
        ssize_t n = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
        size_t off = 0;

        if (n < 0 && (errno == EAGAIN || errno == EINTR))
                return;
        if (n <= 0) {
                conn_drop(c);
                return;
        }
        while (off < (size_t) n && !c->closing) {
                struct proto_diag diag = {};
                size_t used, len;
                const uint8_t *body;
                int r = proto_reader_feed(&c->reader, buf + off, (size_t) n - off, &used, &diag);

                off += used;
                if (r < 0) {
                        die_oom(r);
                        die_oom(proto_encode_diag(&c->out, &diag));
                        c->closing = true;
                        return;
                }
                if (r == 0)
                        break;
                body = proto_reader_frame(&c->reader, &len);
                handle_frame(c, body, len);
        }
}

static void conn_write(struct sconn *c) {
        while (c->out.len) {
                ssize_t n = send(c->fd, c->out.data, c->out.len, MSG_DONTWAIT | MSG_NOSIGNAL);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN)
                        return;
                if (n < 0) {
                        conn_drop(c);
                        return;
                }
                proto_buf_consume(&c->out, (size_t) n);
        }
        if (c->closing)
                conn_drop(c);
}

/* Move due items of every job to the output; returns ms until the next item is due (-1: none). */
static int run_jobs(struct sconn *c) {
        uint64_t now = now_ms();
        int wait = -1;

        for (struct job **p = &c->jobs; *p;) {
                struct job *j = *p;

                while (j->next < j->n_items && j->due_ms <= now) {
                        struct item *it = &j->items[j->next++];

                        if (it->close) {
                                /* What was sent before still goes out; then the connection drops. */
                                c->closing = true;
                                j->next = j->n_items;
                                break;
                        }
                        if (it->frame.len)
                                die_oom(proto_frame_append(&c->out, it->frame.data + PROTO_FRAME_HEADER_BYTES,
                                                           it->frame.len - PROTO_FRAME_HEADER_BYTES));
                        j->emitted += it->tokens;
                        if (j->next < j->n_items)
                                j->due_ms = now + (uint64_t) j->items[j->next].delay_ms;
                }
                if (j->next >= j->n_items) {
                        *p = j->next_job;
                        c->n_jobs--;
                        job_free(j);
                        continue;
                }
                if (wait < 0 || (int) (j->due_ms - now) < wait)
                        wait = (int) (j->due_ms - now);
                p = &j->next_job;
        }
        return wait;
}

static int listen_on(const char *path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd;

        if (strlen(path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        strcpy(sa.sun_path, path);
        unlink(path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return -errno;
        if (bind(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0 || listen(fd, 64) < 0) {
                int r = -errno;

                close(fd);
                return r;
        }
        return fd;
}

int main(int argc, char **argv) {
        static const struct option opts[] = {
                { "socket", required_argument, NULL, 's' }, { "name", required_argument, NULL, 'n' },
                { "max-inflight", required_argument, NULL, 'm' }, { "delay-ms", required_argument, NULL, 'd' },
                { "loading-steps", required_argument, NULL, 'l' },
                { "reject-version", no_argument, NULL, 'R' },
                { "max-frame", required_argument, NULL, 'F' },
                { "overloaded", no_argument, NULL, 'O' }, {},
        };
        struct pollfd pfd[MAX_CONNS + 1];
        sigset_t block, waitmask;
        int lfd, o;

        while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
                switch (o) {
                case 's': S.socket = optarg; break;
                case 'n': S.name = optarg; break;
                case 'm': S.max_inflight = (uint32_t) atoi(optarg); break;
                case 'd': S.delay_ms = atoi(optarg); break;
                case 'l': S.loading_steps = (unsigned) atoi(optarg); break;
                case 'R': S.reject_version = true; break;
                case 'F': S.max_frame = (uint32_t) atoi(optarg); break;
                case 'O': S.overloaded = true; break;
                default:
                        fprintf(stderr, "usage: test-server --socket PATH [--name M] [--max-inflight N] "
                                        "[--delay-ms N] [--loading-steps N] [--reject-version] [--max-frame N] [--overloaded]\n");
                        return 2;
                }
        }
        if (!S.socket || S.max_inflight == 0 || S.max_frame < 64) {
                fprintf(stderr, "test-server: --socket is required (and --max-inflight must be >= 1)\n");
                return 2;
        }
        /*
         * SIGTERM/SIGINT stay blocked except inside ppoll(), so a signal can never slip in between the
         * quit check and the wait (and a mask inherited from the test runner cannot keep them out).
         */
        signal(SIGPIPE, SIG_IGN);
        signal(SIGTERM, on_signal);
        signal(SIGINT, on_signal);
        sigemptyset(&block);
        sigaddset(&block, SIGTERM);
        sigaddset(&block, SIGINT);
        sigprocmask(SIG_BLOCK, &block, &waitmask);
        sigdelset(&waitmask, SIGTERM);
        sigdelset(&waitmask, SIGINT);
        lfd = listen_on(S.socket);
        if (lfd < 0) {
                fprintf(stderr, "test-server: %s: %s\n", S.socket, strerror(-lfd));
                return 1;
        }
        for (size_t i = 0; i < MAX_CONNS; i++)
                S.conns[i].fd = -1;
        S.started_ms = now_ms();
        printf("READY\n");
        fflush(stdout);

        while (!quit) {
                int timeout = -1;
                nfds_t n = 1;
                size_t map[MAX_CONNS];

                for (size_t i = 0; i < MAX_CONNS; i++) {
                        struct sconn *c = &S.conns[i];
                        int w;

                        if (c->fd < 0)
                                continue;
                        w = run_jobs(c);
                        if (c->fd < 0)
                                continue;
                        if (w >= 0 && (timeout < 0 || w < timeout))
                                timeout = w;
                        if (c->out.len || c->closing)
                                conn_write(c);
                        if (c->fd < 0)
                                continue;
                        pfd[n] = (struct pollfd) { .fd = c->fd, .events = POLLIN | (c->out.len ? POLLOUT : 0) };
                        map[n - 1] = i;
                        n++;
                }
                pfd[0] = (struct pollfd) { .fd = lfd, .events = POLLIN };
                struct timespec ts = { .tv_sec = timeout / 1000, .tv_nsec = (long) (timeout % 1000) * 1000000 };

                if (ppoll(pfd, n, timeout < 0 ? NULL : &ts, &waitmask) < 0) {
                        if (errno == EINTR)
                                continue;
                        break;
                }
                if (pfd[0].revents & POLLIN) {
                        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

                        for (size_t i = 0; fd >= 0 && i < MAX_CONNS; i++)
                                if (S.conns[i].fd < 0) {
                                        S.conns[i] = (struct sconn) { .fd = fd };
                                        proto_reader_init(&S.conns[i].reader, S.max_frame);
                                        proto_buf_init(&S.conns[i].out);
                                        fd = -1;
                                }
                        if (fd >= 0)
                                close(fd);
                }
                for (nfds_t k = 1; k < n; k++) {
                        struct sconn *c = &S.conns[map[k - 1]];

                        if (c->fd < 0)
                                continue;
                        if (pfd[k].revents & (POLLIN | POLLHUP | POLLERR))
                                conn_read(c);
                        if (c->fd >= 0 && (pfd[k].revents & POLLOUT))
                                conn_write(c);
                }
        }
        for (size_t i = 0; i < MAX_CONNS; i++)
                if (S.conns[i].fd >= 0)
                        conn_drop(&S.conns[i]);
        close(lfd);
        unlink(S.socket);
        return 0;
}
