/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libgemmaclient: connections, handshake, request dispatch and the event loop.
 *
 * Every connection's socket is non-blocking and registered in one epoll instance, whose fd is what
 * gc_client_get_fd() hands out: it turns readable when any socket has input or, while output is pending,
 * can take more. Blocking calls are the non-blocking ones plus a wait loop on that fd.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "client-internal.h"

#define DEFAULT_TIMEOUT_MS 10000
#define RECONNECT_INTERVAL_MS 1000
#define READ_CHUNK 65536

enum req_kind {
        REQ_STREAM,                  /* generate, chat: started, delta, tool_call, finished */
        REQ_SCORE,
        REQ_STATUS,
        REQ_TOKENIZE,
        REQ_DETOKENIZE,
};

struct conn {
        gc_client *client;
        size_t index;
        char *path;
        int fd;                      /* -1 while disconnected */
        struct proto_reader reader;
        struct proto_buf out;
        bool want_out;               /* EPOLLOUT registered */
        bool have_welcome;
        struct proto_welcome welcome;
        size_t inflight;
        uint64_t last_attempt_ms;
};

struct gc_request {
        gc_client *client;
        struct conn *conn;
        uint64_t id;
        enum req_kind kind;
        gc_event_cb cb;
        void *userdata;
        void *public_userdata;       /* what gc_request_userdata() returns (the caller's, not a waiter) */
        gc_result *result;
        bool cancel_sent;
        bool done;
        uint8_t *frame;              /* the request's frame, kept to resend to another daemon if refused */
        size_t frame_len;
        uint64_t tried;              /* bit i: daemon i refused it as overloaded (or got it first) */
        gc_request *next;
};

struct gc_client {
        struct conn *conns;
        size_t n_conns;
        int epfd;
        int timeout_ms;
        uint64_t next_id;
        size_t rr;                   /* rotates ties between equally loaded daemons */
        gc_request *reqs;            /* in flight, newest first */
        size_t n_reqs;
        unsigned finished;           /* requests finished, for gc_client_process's return value */
};

static uint64_t now_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000u + (uint64_t) ts.tv_nsec / 1000000u;
}

/* ---- versions and errors ---- */

GC_EXTERN unsigned gc_version(void) {
        return GC_VERSION_HEX;
}

#define STR2(x) #x
#define STR(x) STR2(x)

GC_EXTERN const char *gc_version_string(void) {
        return STR(GC_VERSION_MAJOR) "." STR(GC_VERSION_MINOR) "." STR(GC_VERSION_PATCH);
}

static const struct {
        int code;
        const char *name;
        const char *message;
} gc_errors[] = {
        { GC_EBADREQUEST, "GC_EBADREQUEST", "the daemon rejected the request as malformed" },
        { GC_ETOOLONG, "GC_ETOOLONG", "prompt and max_tokens exceed the model's context length" },
        { GC_EOVERLOADED, "GC_EOVERLOADED", "the daemon is overloaded; try again later" },
        { GC_ECANCELLED, "GC_ECANCELLED", "the request was cancelled" },
        { GC_EDEADLINE, "GC_EDEADLINE", "the request's deadline passed" },
        { GC_EINTERNAL, "GC_EINTERNAL", "internal error in the daemon" },
        { GC_EVERSION, "GC_EVERSION", "the daemon does not speak this protocol version" },
        { GC_EUNSUPPORTED, "GC_EUNSUPPORTED", "the daemon does not support this request" },
        { GC_ENOTREADY, "GC_ENOTREADY", "the daemon is still loading the model" },
        { GC_ESHUTDOWN, "GC_ESHUTDOWN", "the daemon is shutting down" },
        { GC_EPROTO, "GC_EPROTO", "the daemon sent a message that could not be decoded" },
        { GC_ENOTRUNNING, "GC_ENOTRUNNING", "the daemon is not running (no one listens on the socket)" },
        { GC_EDISCONNECTED, "GC_EDISCONNECTED", "the connection to the daemon closed during the request" },
        { GC_EFRAMETOOLARGE, "GC_EFRAMETOOLARGE", "the message exceeds the frame size limit" },
        { GC_EUNKNOWN, "GC_EUNKNOWN", "the daemon reported an error this library does not know" },
};

GC_EXTERN const char *gc_strerror(int err) {
        const char *s;

        if (err == 0)
                return "success";
        for (size_t i = 0; i < sizeof(gc_errors) / sizeof(gc_errors[0]); i++)
                if (gc_errors[i].code == err)
                        return gc_errors[i].message;
        if (err < 0 && err > -4096) {
                s = strerrordesc_np(-err);       /* static strings, unlike strerror() */
                if (s)
                        return s;
        }
        return "unknown error";
}

GC_EXTERN const char *gc_err_name(int err) {
        const char *s;

        for (size_t i = 0; i < sizeof(gc_errors) / sizeof(gc_errors[0]); i++)
                if (gc_errors[i].code == err)
                        return gc_errors[i].name;
        if (err < 0 && err > -4096) {
                s = strerrorname_np(-err);
                if (s)
                        return s;
        }
        return "UNKNOWN";
}

int gc_code_from_proto(enum proto_code code) {
        switch (code) {
        case PROTO_CODE_NONE:                return 0;
        case PROTO_CODE_BAD_REQUEST:         return GC_EBADREQUEST;
        case PROTO_CODE_FRAME_TOO_LARGE:     return GC_EFRAMETOOLARGE;
        case PROTO_CODE_TOO_LONG:            return GC_ETOOLONG;
        case PROTO_CODE_OVERLOADED:          return GC_EOVERLOADED;
        case PROTO_CODE_CANCELLED:           return GC_ECANCELLED;
        case PROTO_CODE_DEADLINE:            return GC_EDEADLINE;
        case PROTO_CODE_INTERNAL:            return GC_EINTERNAL;
        case PROTO_CODE_UNSUPPORTED_VERSION: return GC_EVERSION;
        case PROTO_CODE_UNSUPPORTED:         return GC_EUNSUPPORTED;
        case PROTO_CODE_NOT_READY:           return GC_ENOTREADY;
        case PROTO_CODE_SHUTTING_DOWN:       return GC_ESHUTDOWN;
        case PROTO_CODE_HANDSHAKE:           return GC_EPROTO;
        case PROTO_CODE_DUPLICATE_ID:        return GC_EPROTO;
        default:                             return GC_EUNKNOWN;
        }
}

GC_EXTERN void gc_free(void *p) {
        free(p);
}

/* ---- requests: completion ---- */

static void request_unlink(gc_request *req) {
        gc_client *c = req->client;

        for (gc_request **p = &c->reqs; *p; p = &(*p)->next)
                if (*p == req) {
                        *p = req->next;
                        c->n_reqs--;
                        break;
                }
        if (req->conn && req->conn->inflight)
                req->conn->inflight--;
}

/* Deliver FINISHED (with err when nonzero and the result has no error yet) and free the request. */
static void request_finish(gc_request *req, int err, const char *message) {
        gc_event ev = { .type = GC_EVENT_FINISHED, .result = req->result };

        if (req->done)
                return;
        req->done = true;
        if (err && !req->result->error)
                result_set_error(req->result, err, message ? message : gc_strerror(err));
        request_unlink(req);
        req->client->finished++;
        req->cb(req, GC_EVENT_FINISHED, &ev, req->userdata);
        if (!ev.stolen)
                gc_result_free(req->result);
        free(req->frame);
        free(req);
}

static gc_request *request_find(gc_client *c, struct conn *conn, uint64_t id) {
        for (gc_request *r = c->reqs; r; r = r->next)
                if (r->conn == conn && r->id == id)
                        return r;
        return NULL;
}

/* ---- connections ---- */

static void conn_update_epoll(struct conn *conn) {
        bool want = conn->out.len > 0;
        struct epoll_event ev = { .events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = conn };

        if (conn->fd < 0 || want == conn->want_out)
                return;
        if (epoll_ctl(conn->client->epfd, EPOLL_CTL_MOD, conn->fd, &ev) == 0)
                conn->want_out = want;
}

/* Close the socket and finish every request that was on it with err. */
static void conn_close(struct conn *conn, int err) {
        gc_client *c = conn->client;
        gc_request *req;

        if (conn->fd >= 0) {
                epoll_ctl(c->epfd, EPOLL_CTL_DEL, conn->fd, NULL);
                close(conn->fd);
                conn->fd = -1;
        }
        conn->want_out = false;
        proto_reader_done(&conn->reader);
        proto_buf_reset(&conn->out);
        /* Callbacks may start new requests (on other connections); rescan after each one. */
        for (;;) {
                for (req = c->reqs; req && req->conn != conn; req = req->next)
                        ;
                if (!req)
                        break;
                request_finish(req, err, NULL);
        }
        conn->inflight = 0;
}

/* Write what is pending without blocking. */
static int conn_flush(struct conn *conn) {
        while (conn->fd >= 0 && conn->out.len > 0) {
                ssize_t n = send(conn->fd, conn->out.data, conn->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN || errno == EWOULDBLOCK)
                                break;
                        return -errno;
                }
                proto_buf_consume(&conn->out, (size_t) n);
        }
        conn_update_epoll(conn);
        return 0;
}

static int connect_error(int err) {
        return err == -ENOENT || err == -ECONNREFUSED || err == -ENOTDIR ? GC_ENOTRUNNING : err;
}

/* Wait until fd is ready for events or the deadline passes. */
static int wait_fd(int fd, short events, uint64_t deadline) {
        for (;;) {
                uint64_t now = now_ms();
                struct pollfd p = { .fd = fd, .events = events };
                int r;

                if (now >= deadline)
                        return -ETIMEDOUT;
                r = poll(&p, 1, (int) (deadline - now));
                if (r < 0 && errno == EINTR)
                        continue;
                if (r < 0)
                        return -errno;
                if (r > 0)
                        return 0;
        }
}

/* Read one frame during the handshake and decode it. */
static int handshake_read(struct conn *conn, uint64_t deadline, struct proto_msg *ret) {
        uint8_t buf[4096];

        for (;;) {
                struct proto_diag diag;
                size_t used;
                const uint8_t *body;
                size_t len;
                ssize_t n;
                int r;

                r = wait_fd(conn->fd, POLLIN, deadline);
                if (r < 0)
                        return r;
                n = recv(conn->fd, buf, sizeof(buf), MSG_DONTWAIT | MSG_PEEK);
                if (n < 0 && (errno == EAGAIN || errno == EINTR))
                        continue;
                if (n < 0)
                        return -errno;
                if (n == 0)
                        return -ECONNRESET;
                r = proto_reader_feed(&conn->reader, buf, (size_t) n, &used, &diag);
                if (r < 0)
                        return GC_EPROTO;
                /* Consume only this frame's bytes: events after the welcome stay for the normal path. */
                if (recv(conn->fd, buf, used, MSG_DONTWAIT) != (ssize_t) used)
                        return -EIO;
                if (r == 0)
                        continue;
                body = proto_reader_frame(&conn->reader, &len);
                r = proto_decode_event(body, len, ret, &diag);
                return r == -ENOMEM ? -ENOMEM : r < 0 ? GC_EPROTO : 0;
        }
}

static int conn_open(struct conn *conn) {
        gc_client *c = conn->client;
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        struct proto_hello hello = { .proto = PROTO_VERSION, .client = "libgemmaclient/" };
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = conn };
        struct proto_msg msg = {};
        char client_name[64];
        uint64_t deadline = now_ms() + (uint64_t) c->timeout_ms;
        int r, fd;

        conn->last_attempt_ms = now_ms();
        if (strlen(conn->path) >= sizeof(sa.sun_path))
                return -EINVAL;
        strcpy(sa.sun_path, conn->path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return -errno;
        conn->fd = fd;
        proto_reader_init(&conn->reader, 0);
        proto_buf_reset(&conn->out);
        if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
                int err = 0;
                socklen_t len = sizeof(err);

                if (errno != EAGAIN && errno != EINPROGRESS) {
                        r = connect_error(-errno);
                        goto fail;
                }
                r = wait_fd(fd, POLLOUT, deadline);
                if (r < 0)
                        goto fail;
                if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) {
                        r = connect_error(-(err ? err : errno));
                        goto fail;
                }
        }

        snprintf(client_name, sizeof(client_name), "libgemmaclient/%s", gc_version_string());
        hello.client = client_name;
        r = proto_encode_hello(&conn->out, &hello);
        if (r < 0)
                goto fail;
        while (conn->out.len > 0) {
                ssize_t n = send(fd, conn->out.data, conn->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);

                if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
                        r = wait_fd(fd, POLLOUT, deadline);
                        if (r < 0)
                                goto fail;
                        continue;
                }
                if (n < 0) {
                        r = -errno;
                        goto fail;
                }
                proto_buf_consume(&conn->out, (size_t) n);
        }

        r = handshake_read(conn, deadline, &msg);
        if (r < 0)
                goto fail;
        if (msg.type == PROTO_TYPE_ERROR) {
                r = gc_code_from_proto(msg.error.code);
                proto_msg_done(&msg);
                goto fail;
        }
        if (msg.type != PROTO_TYPE_WELCOME) {
                proto_msg_done(&msg);
                r = GC_EPROTO;
                goto fail;
        }
        if (msg.welcome.proto != PROTO_VERSION) {
                proto_msg_done(&msg);
                r = GC_EVERSION;
                goto fail;
        }
        if (conn->have_welcome)
                proto_welcome_done(&conn->welcome);
        conn->welcome = msg.welcome;     /* takes the strings */
        conn->have_welcome = true;
        if (epoll_ctl(c->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
                r = -errno;
                goto fail;
        }
        conn->want_out = false;
        return 0;

fail:
        close(fd);
        conn->fd = -1;
        proto_reader_done(&conn->reader);
        proto_buf_reset(&conn->out);
        return r;
}

static void conn_handle_msg(struct conn *conn, struct proto_msg *m);

/* Read what is available and dispatch every complete frame. */
static int conn_read(struct conn *conn) {
        uint8_t buf[READ_CHUNK];

        for (int rounds = 0; rounds < 16 && conn->fd >= 0; rounds++) {
                ssize_t n = recv(conn->fd, buf, sizeof(buf), MSG_DONTWAIT);
                size_t off = 0;

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN || errno == EWOULDBLOCK)
                                return 0;
                        conn_close(conn, GC_EDISCONNECTED);
                        return 0;
                }
                if (n == 0) {
                        conn_close(conn, GC_EDISCONNECTED);
                        return 0;
                }
                while (off < (size_t) n && conn->fd >= 0) {
                        struct proto_diag diag;
                        struct proto_msg msg;
                        const uint8_t *body;
                        size_t used, len;
                        int r = proto_reader_feed(&conn->reader, buf + off, (size_t) n - off, &used, &diag);

                        off += used;
                        if (r == -ENOMEM)
                                return -ENOMEM;
                        if (r < 0) {
                                conn_close(conn, GC_EPROTO);
                                return 0;
                        }
                        if (r == 0)
                                break;
                        body = proto_reader_frame(&conn->reader, &len);
                        r = proto_decode_event(body, len, &msg, &diag);
                        if (r == -ENOMEM)
                                return -ENOMEM;
                        if (r < 0) {
                                conn_close(conn, GC_EPROTO);
                                return 0;
                        }
                        conn_handle_msg(conn, &msg);
                        proto_msg_done(&msg);
                }
        }
        return 0;
}

static int call_cb(gc_request *req, enum gc_event_type type, const struct proto_msg *m) {
        gc_event ev = { .type = type, .msg = m, .result = req->result };

        if (req->cb(req, type, &ev, req->userdata) != 0)
                gc_cancel(req);
        return 0;
}

static int conn_flush(struct conn *conn);

/*
 * A daemon refused req as overloaded before starting it: hand the same frame (ids are unique in the
 * whole client) to the least loaded connected daemon that has not refused it yet. Returns true if the
 * request now waits on another daemon.
 */
static bool request_retry_elsewhere(gc_request *req) {
        gc_client *c = req->client;
        struct conn *best = NULL;

        if (!req->frame || req->result->started || req->cancel_sent)
                return false;
        for (size_t i = 0; i < c->n_conns && i < 64; i++) {
                struct conn *conn = &c->conns[i];

                if (conn->fd < 0 || (req->tried & (UINT64_C(1) << i)))
                        continue;
                if (!best || conn->inflight < best->inflight)
                        best = conn;
        }
        if (!best || proto_frame_append(&best->out, req->frame + PROTO_FRAME_HEADER_BYTES,
                                        req->frame_len - PROTO_FRAME_HEADER_BYTES) < 0)
                return false;
        req->conn->inflight--;
        req->conn = best;
        best->inflight++;
        req->tried |= UINT64_C(1) << best->index;
        if (conn_flush(best) < 0)
                conn_close(best, GC_EDISCONNECTED);     /* finishes req, as every request on best */
        return true;
}

static void conn_handle_msg(struct conn *conn, struct proto_msg *m) {
        uint64_t id = proto_msg_id(m);
        gc_request *req;
        int r = 0;

        if (m->type == PROTO_TYPE_ERROR && id == 0) {
                /*
                 * Tied to no request. Framing and handshake errors precede the daemon closing the
                 * connection: finish its requests with the real cause rather than "disconnected". Others
                 * (a frame whose id could not be read) concern no request of ours: this library only
                 * sends frames the codec accepts.
                 */
                if (m->error.code == PROTO_CODE_FRAME_TOO_LARGE || m->error.code == PROTO_CODE_HANDSHAKE ||
                    m->error.code == PROTO_CODE_UNSUPPORTED_VERSION)
                        conn_close(conn, gc_code_from_proto(m->error.code));
                return;
        }
        req = request_find(conn->client, conn, id);
        if (!req)
                return;      /* e.g. events of a request we already finished locally */

        switch (m->type) {
        case PROTO_TYPE_STARTED:
                req->result->started = true;
                req->result->usage.prompt_tokens = m->started.prompt_tokens;
                call_cb(req, GC_EVENT_STARTED, m);
                return;
        case PROTO_TYPE_DELTA:
                r = result_append_delta(req->result, &m->delta);
                if (r < 0)
                        break;
                call_cb(req, GC_EVENT_DELTA, m);
                return;
        case PROTO_TYPE_TOOL_CALL:
                r = result_add_tool_call(req->result, &m->tool_call);
                if (r < 0)
                        break;
                call_cb(req, GC_EVENT_TOOL_CALL, m);
                return;
        case PROTO_TYPE_FINISHED: {
                const struct proto_finished *f = &m->finished;
                static const int reason_err[] = {
                        [PROTO_REASON_STOP] = 0, [PROTO_REASON_LENGTH] = 0,
                        [PROTO_REASON_CANCELLED] = GC_ECANCELLED, [PROTO_REASON_DEADLINE] = GC_EDEADLINE,
                        [PROTO_REASON_ERROR] = GC_EINTERNAL,
                };
                gc_result *res = req->result;

                res->usage = f->usage;
                res->timings = f->timings;
                res->preempted = f->preempted;
                res->finish = (enum gc_finish) f->reason;
                if (f->reason == PROTO_REASON_ERROR && f->error_code != PROTO_CODE_NONE)
                        r = gc_code_from_proto(f->error_code);
                else
                        r = (unsigned) f->reason < _PROTO_REASON_MAX ? reason_err[f->reason] : GC_EPROTO;
                if (r)
                        result_set_error(res, r, f->error_message ? f->error_message : gc_strerror(r));
                request_finish(req, 0, NULL);
                return;
        }
        case PROTO_TYPE_ERROR:
                if (m->error.code == PROTO_CODE_OVERLOADED && request_retry_elsewhere(req))
                        return;
                request_finish(req, gc_code_from_proto(m->error.code), m->error.message);
                return;
        case PROTO_TYPE_STATUS_REPLY:
                if (req->kind != REQ_STATUS) {
                        r = GC_EPROTO;
                        break;
                }
                req->result->json = json_dumps(m->status_reply.status, JSON_COMPACT);
                r = req->result->json ? 0 : -ENOMEM;
                break;
        case PROTO_TYPE_TOKENIZE_REPLY:
                r = req->kind != REQ_TOKENIZE ? GC_EPROTO :
                    result_set_ids(req->result, m->tokenize_reply.ids, m->tokenize_reply.n_ids);
                break;
        case PROTO_TYPE_DETOKENIZE_REPLY:
                r = req->kind != REQ_DETOKENIZE ? GC_EPROTO :
                    result_set_text(req->result, m->detokenize_reply.text);
                break;
        case PROTO_TYPE_SCORE_REPLY:
                if (req->kind != REQ_SCORE) {
                        r = GC_EPROTO;
                        break;
                }
                r = result_set_ids(req->result, m->score_reply.token_ids, m->score_reply.n_token_ids);
                if (r == 0)
                        r = result_set_logprobs(req->result, m->score_reply.logprobs, m->score_reply.n_logprobs);
                break;
        default:
                r = GC_EPROTO;
                break;
        }
        /* A reply ends its request; so does anything this kind of request cannot receive (r < 0). */
        request_finish(req, r, NULL);
}

/* ---- client ---- */

static int client_alloc(gc_client **ret, size_t n, int timeout_ms) {
        gc_client *c;

        if (n == 0)
                return -EINVAL;
        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->conns = calloc(n, sizeof(*c->conns));
        c->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (!c->conns || c->epfd < 0) {
                int r = c->epfd < 0 ? -errno : -ENOMEM;

                if (c->epfd >= 0)
                        close(c->epfd);
                free(c->conns);
                free(c);
                return r;
        }
        c->timeout_ms = timeout_ms > 0 ? timeout_ms : DEFAULT_TIMEOUT_MS;
        c->next_id = 1;
        *ret = c;
        return 0;
}

GC_EXTERN int gc_client_new_paths(gc_client **ret, const char *const *paths, size_t n, int timeout_ms) {
        gc_client *c = NULL;
        int r, first_err = 0;
        bool any = false;

        if (!ret || !paths || n == 0)
                return -EINVAL;
        for (size_t i = 0; i < n; i++)
                if (!paths[i] || !*paths[i] || strlen(paths[i]) >= sizeof(((struct sockaddr_un *) 0)->sun_path))
                        return -EINVAL;
        r = client_alloc(&c, n, timeout_ms);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                struct conn *conn = &c->conns[i];

                conn->client = c;
                conn->index = i;
                conn->fd = -1;
                proto_buf_init(&conn->out);
                proto_reader_init(&conn->reader, 0);
                c->n_conns++;
                conn->path = strdup(paths[i]);
                if (!conn->path) {
                        gc_client_free(c);
                        return -ENOMEM;
                }
        }
        for (size_t i = 0; i < n; i++) {
                r = conn_open(&c->conns[i]);
                if (r == 0)
                        any = true;
                else if (first_err == 0 || r == GC_EVERSION)
                        first_err = first_err == GC_EVERSION ? first_err : r;
        }
        if (!any) {
                gc_client_free(c);
                return first_err;
        }
        *ret = c;
        return 0;
}

GC_EXTERN int gc_client_new(gc_client **ret, const char *paths, int timeout_ms) {
        const char *v[64];
        char *copy, *save = NULL;
        size_t n = 0;
        int r;

        if (!ret)
                return -EINVAL;
        if (!paths || !*paths) {
                paths = getenv("GEMMA4D_SOCKET");
                if (!paths || !*paths)
                        paths = GC_DEFAULT_SOCKET;
        }
        copy = strdup(paths);
        if (!copy)
                return -ENOMEM;
        for (char *tok = strtok_r(copy, ":", &save); tok; tok = strtok_r(NULL, ":", &save)) {
                if (n == sizeof(v) / sizeof(v[0])) {
                        free(copy);
                        return -E2BIG;
                }
                v[n++] = tok;
        }
        r = n ? gc_client_new_paths(ret, v, n, timeout_ms) : -EINVAL;
        free(copy);
        return r;
}

GC_EXTERN void gc_client_free(gc_client *c) {
        if (!c)
                return;
        while (c->reqs)
                request_finish(c->reqs, GC_ECANCELLED, "the client was freed");
        for (size_t i = 0; i < c->n_conns; i++) {
                struct conn *conn = &c->conns[i];

                if (conn->fd >= 0)
                        close(conn->fd);
                proto_reader_done(&conn->reader);
                proto_buf_done(&conn->out);
                if (conn->have_welcome)
                        proto_welcome_done(&conn->welcome);
                free(conn->path);
        }
        close(c->epfd);
        free(c->conns);
        free(c);
}

GC_EXTERN size_t gc_client_daemon_count(const gc_client *c) {
        return c ? c->n_conns : 0;
}

GC_EXTERN int gc_client_daemon_connected(const gc_client *c, size_t daemon) {
        return c && daemon < c->n_conns && c->conns[daemon].fd >= 0;
}

GC_EXTERN const char *gc_client_daemon_path(const gc_client *c, size_t daemon) {
        return c && daemon < c->n_conns ? c->conns[daemon].path : NULL;
}

GC_EXTERN const char *gc_client_info_str(const gc_client *c, size_t daemon, enum gc_info key) {
        const struct proto_welcome *w;

        if (!c || daemon >= c->n_conns || !c->conns[daemon].have_welcome)
                return NULL;
        w = &c->conns[daemon].welcome;
        switch (key) {
        case GC_INFO_SERVER_VERSION: return w->server_version;
        case GC_INFO_MODEL:          return w->model;
        case GC_INFO_ARCHITECTURE:   return w->architecture;
        case GC_INFO_BACKEND:        return w->backend;
        case GC_INFO_DEVICE:         return w->device;
        default:                     return NULL;
        }
}

GC_EXTERN uint64_t gc_client_info_num(const gc_client *c, size_t daemon, enum gc_info key) {
        const struct proto_welcome *w;

        if (!c || daemon >= c->n_conns || !c->conns[daemon].have_welcome)
                return 0;
        w = &c->conns[daemon].welcome;
        switch (key) {
        case GC_INFO_MAX_MODEL_LEN:   return w->max_model_len;
        case GC_INFO_MAX_FRAME_BYTES: return w->limits.max_frame_bytes;
        case GC_INFO_MAX_INFLIGHT:    return w->limits.max_inflight;
        case GC_INFO_MAX_NUM_SEQS:    return w->limits.max_num_seqs;
        case GC_INFO_MAX_QUEUE:       return w->limits.max_queue;
        case GC_INFO_KV_TOKENS:       return w->kv_tokens;
        case GC_INFO_KV_SEQS_32K:     return w->kv_seqs_32k;
        case GC_INFO_PROTO:           return w->proto;
        default:                      return 0;
        }
}

GC_EXTERN size_t gc_client_inflight(const gc_client *c) {
        return c ? c->n_reqs : 0;
}

/*
 * The connection for a new request: the connected daemon with the fewest requests in flight (ties
 * rotate). Disconnected daemons are retried at most once a second, or at once when none is connected.
 */
static int pick_conn(gc_client *c, ssize_t want, struct conn **ret) {
        struct conn *best = NULL;
        uint64_t now = now_ms();
        bool any = false;
        int r = GC_ENOTRUNNING;

        for (size_t i = 0; i < c->n_conns; i++)
                any = any || c->conns[i].fd >= 0;
        for (size_t i = 0; i < c->n_conns; i++) {
                struct conn *conn = &c->conns[i];

                if (want >= 0 && (size_t) want != i)
                        continue;
                if (conn->fd < 0 && (!any || want >= 0 || now - conn->last_attempt_ms >= RECONNECT_INTERVAL_MS)) {
                        int e = conn_open(conn);

                        if (e < 0 && (r == GC_ENOTRUNNING || e == GC_EVERSION))
                                r = e;
                }
        }
        for (size_t k = 0; k < c->n_conns; k++) {
                struct conn *conn = &c->conns[(c->rr + k) % c->n_conns];

                if (conn->fd < 0 || (want >= 0 && (size_t) want != conn->index))
                        continue;
                if (!best || conn->inflight < best->inflight)
                        best = conn;
        }
        if (!best)
                return r;
        c->rr = (best->index + 1) % c->n_conns;
        *ret = best;
        return 0;
}

/*
 * Encode a request with encode() into the chosen connection's output and register it. The frame must
 * fit the daemon's max_frame_bytes.
 */
static int request_start(gc_client *c, ssize_t daemon, enum req_kind kind, struct proto_msg *m,
                         gc_event_cb cb, void *userdata, void *public_userdata, gc_request **ret) {
        struct conn *conn;
        gc_request *req;
        size_t old_len;
        int r;

        if (!c || !cb)
                return -EINVAL;
        r = pick_conn(c, daemon, &conn);
        if (r < 0)
                return r;
        req = calloc(1, sizeof(*req));
        if (!req)
                return -ENOMEM;
        req->result = result_new();
        if (!req->result) {
                free(req);
                return -ENOMEM;
        }
        req->id = c->next_id++;
        switch (m->type) {
        case PROTO_TYPE_GENERATE:   m->generate.id = req->id; break;
        case PROTO_TYPE_CHAT:       m->chat.id = req->id; break;
        case PROTO_TYPE_STATUS:     m->status.id = req->id; break;
        case PROTO_TYPE_TOKENIZE:   m->tokenize.id = req->id; break;
        case PROTO_TYPE_DETOKENIZE: m->detokenize.id = req->id; break;
        case PROTO_TYPE_SCORE:      m->score.id = req->id; break;
        default:                    break;
        }
        old_len = conn->out.len;
        r = proto_encode(&conn->out, m);
        if (r == 0 && conn->have_welcome && conn->welcome.limits.max_frame_bytes &&
            conn->out.len - old_len - PROTO_FRAME_HEADER_BYTES > conn->welcome.limits.max_frame_bytes) {
                conn->out.len = old_len;
                r = GC_EFRAMETOOLARGE;
        }
        if (r < 0) {
                gc_result_free(req->result);
                free(req);
                return r;
        }
        /* With several daemons, keep the frame so an overloaded daemon's refusal can go elsewhere. */
        if (kind == REQ_STREAM && daemon < 0 && c->n_conns > 1 && conn->index < 64) {
                req->frame_len = conn->out.len - old_len;
                req->frame = malloc(req->frame_len);
                if (!req->frame) {
                        conn->out.len = old_len;
                        gc_result_free(req->result);
                        free(req);
                        return -ENOMEM;
                }
                memcpy(req->frame, conn->out.data + old_len, req->frame_len);
                req->tried = UINT64_C(1) << conn->index;
        }
        req->client = c;
        req->conn = conn;
        req->kind = kind;
        req->cb = cb;
        req->userdata = userdata;
        req->public_userdata = public_userdata;
        req->next = c->reqs;
        c->reqs = req;
        c->n_reqs++;
        conn->inflight++;
        r = conn_flush(conn);
        if (r < 0) {
                /* The request is registered: it finishes (callback included) like every other on conn. */
                conn_close(conn, GC_EDISCONNECTED);
                req = NULL;
        }
        if (ret)
                *ret = req;
        return 0;
}

GC_EXTERN int gc_cancel(gc_request *req) {
        struct proto_cancel m;
        int r;

        if (!req)
                return -EINVAL;
        if (req->done || req->cancel_sent || !req->conn || req->conn->fd < 0)
                return 0;
        m.id = req->id;
        r = proto_encode_cancel(&req->conn->out, &m);
        if (r < 0)
                return r;
        req->cancel_sent = true;
        if (conn_flush(req->conn) < 0)
                conn_close(req->conn, GC_EDISCONNECTED);
        return 0;
}

GC_EXTERN uint64_t gc_request_id(const gc_request *req) {
        return req ? req->id : 0;
}

GC_EXTERN size_t gc_request_daemon(const gc_request *req) {
        return req && req->conn ? req->conn->index : 0;
}

GC_EXTERN void *gc_request_userdata(const gc_request *req) {
        return req ? req->public_userdata : NULL;
}

/* ---- event loop ---- */

GC_EXTERN int gc_client_get_fd(const gc_client *c) {
        return c ? c->epfd : -EINVAL;
}

GC_EXTERN int gc_client_process(gc_client *c) {
        struct epoll_event evs[16];
        unsigned before;
        int n, r;

        if (!c)
                return -EINVAL;
        before = c->finished;
        n = epoll_wait(c->epfd, evs, 16, 0);
        if (n < 0)
                return errno == EINTR ? 0 : -errno;
        for (int i = 0; i < n; i++) {
                struct conn *conn = evs[i].data.ptr;

                if (conn->fd < 0)
                        continue;
                if (evs[i].events & EPOLLOUT) {
                        r = conn_flush(conn);
                        if (r < 0) {
                                conn_close(conn, GC_EDISCONNECTED);
                                continue;
                        }
                }
                if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                        r = conn_read(conn);
                        if (r < 0)
                                return r;
                }
        }
        return (int) (c->finished - before);
}

GC_EXTERN int gc_client_want_write(const gc_client *c) {
        if (!c)
                return 0;
        for (size_t i = 0; i < c->n_conns; i++)
                if (c->conns[i].fd >= 0 && c->conns[i].out.len > 0)
                        return 1;
        return 0;
}

GC_EXTERN int gc_client_flush(gc_client *c) {
        int ret = 0;

        if (!c)
                return -EINVAL;
        for (size_t i = 0; i < c->n_conns; i++) {
                int r = conn_flush(&c->conns[i]);

                if (r < 0) {
                        conn_close(&c->conns[i], GC_EDISCONNECTED);
                        ret = r;
                }
        }
        return ret;
}

GC_EXTERN int gc_client_wait(gc_client *c, int timeout_ms) {
        struct pollfd p;
        int r;

        if (!c)
                return -EINVAL;
        p = (struct pollfd) { .fd = c->epfd, .events = POLLIN };
        r = poll(&p, 1, timeout_ms);
        if (r < 0)
                return -errno;
        if (r == 0)
                return 0;
        return gc_client_process(c);
}

/* ---- blocking calls ---- */

struct waiter {
        bool done;
        gc_result *result;
        gc_event_cb user_cb;
        void *user_data;
};

static int waiter_cb(gc_request *req, enum gc_event_type type, const gc_event *ev, void *userdata) {
        struct waiter *w = userdata;
        int r = 0;

        if (w->user_cb)
                r = w->user_cb(req, type, ev, w->user_data);
        if (type == GC_EVENT_FINISHED) {
                w->result = gc_event_steal_result(ev);
                w->done = true;
        }
        return r;
}

/*
 * Run m to completion. Returns 0 with *ret set (or freed when ret is NULL), or the request's error
 * when there is nothing to return: a refusal before started, or any failure of a reply-type request.
 */
static int run_blocking(gc_client *c, ssize_t daemon, enum req_kind kind, struct proto_msg *m,
                        gc_event_cb cb, void *userdata, gc_result **ret) {
        struct waiter w = { .user_cb = cb, .user_data = userdata };
        gc_request *req;
        int r;

        r = request_start(c, daemon, kind, m, waiter_cb, &w, userdata, &req);
        if (r < 0)
                return r;
        while (!w.done) {
                r = gc_client_wait(c, -1);
                if (r < 0 && r != -EINTR && !w.done) {
                        request_finish(req, r, NULL);
                        break;
                }
        }
        if (!w.result)
                return -ENOMEM;
        r = w.result->error;
        if (r && (kind != REQ_STREAM || !w.result->started) && r != GC_ECANCELLED) {
                gc_result_free(w.result);
                return r;
        }
        if (ret)
                *ret = w.result;
        else
                gc_result_free(w.result);
        return 0;
}

static int prepare_params(const gc_params *params, bool stream, struct proto_params *ret) {
        struct proto_params p;

        if (params)
                p = params->p;
        else
                proto_params_init(&p);
        if (!stream) {
                p.stream = false;
                p.present |= PROTO_PARAM_STREAM;
        }
        *ret = p;
        return 0;
}

static int start_generate(gc_client *c, const char *prompt, const int32_t *ids, size_t n,
                          const gc_params *params, bool stream, gc_event_cb cb, void *userdata,
                          gc_request **ret_req, gc_result **ret_res, bool blocking) {
        struct proto_msg m = { .type = PROTO_TYPE_GENERATE };

        if (!c || (!prompt && (!ids || n == 0)) || n > PROTO_MAX_TOKEN_IDS)
                return -EINVAL;
        m.generate.prompt.text = (char *) prompt;
        m.generate.prompt.ids = (int32_t *) ids;
        m.generate.prompt.n_ids = (uint32_t) n;
        prepare_params(params, stream, &m.generate.params);
        if (blocking)
                return run_blocking(c, -1, REQ_STREAM, &m, cb, userdata, ret_res);
        return request_start(c, -1, REQ_STREAM, &m, cb, userdata, userdata, ret_req);
}

static int parse_json_array(const char *text, bool optional, json_t **ret) {
        json_t *j;

        if (!text) {
                *ret = NULL;
                return optional ? 0 : -EINVAL;
        }
        j = json_loads(text, JSON_REJECT_DUPLICATES, NULL);
        if (!j || !json_is_array(j)) {
                json_decref(j);
                return -EINVAL;
        }
        *ret = j;
        return 0;
}

static int start_chat(gc_client *c, const char *messages_json, const char *tools_json, int thinking,
                      const gc_params *params, bool stream, gc_event_cb cb, void *userdata,
                      gc_request **ret_req, gc_result **ret_res, bool blocking) {
        struct proto_msg m = { .type = PROTO_TYPE_CHAT };
        json_t *messages = NULL, *tools = NULL;
        int r;

        if (!c)
                return -EINVAL;
        r = parse_json_array(messages_json, false, &messages);
        if (r == 0)
                r = parse_json_array(tools_json, true, &tools);
        if (r < 0) {
                json_decref(messages);
                return r;
        }
        m.chat.messages = messages;
        m.chat.tools = tools;
        m.chat.thinking = thinking != 0;
        prepare_params(params, stream, &m.chat.params);
        if (blocking)
                r = run_blocking(c, -1, REQ_STREAM, &m, cb, userdata, ret_res);
        else
                r = request_start(c, -1, REQ_STREAM, &m, cb, userdata, userdata, ret_req);
        json_decref(messages);
        json_decref(tools);
        return r;
}

GC_EXTERN int gc_generate(gc_client *c, const char *prompt, const gc_params *params, gc_result **ret) {
        if (!ret || !prompt)
                return -EINVAL;
        return start_generate(c, prompt, NULL, 0, params, false, NULL, NULL, NULL, ret, true);
}

GC_EXTERN int gc_generate_stream(gc_client *c, const char *prompt, const gc_params *params, gc_event_cb cb,
                                 void *userdata, gc_result **ret) {
        if (!cb || !prompt)
                return -EINVAL;
        return start_generate(c, prompt, NULL, 0, params, true, cb, userdata, NULL, ret, true);
}

GC_EXTERN int gc_generate_start(gc_client *c, const char *prompt, const gc_params *params, gc_event_cb cb,
                                void *userdata, gc_request **ret_req) {
        if (!prompt)
                return -EINVAL;
        return start_generate(c, prompt, NULL, 0, params, true, cb, userdata, ret_req, NULL, false);
}

GC_EXTERN int gc_generate_ids_start(gc_client *c, const int32_t *ids, size_t n, const gc_params *params,
                                    gc_event_cb cb, void *userdata, gc_request **ret_req) {
        if (!ids || n == 0)
                return -EINVAL;
        return start_generate(c, NULL, ids, n, params, true, cb, userdata, ret_req, NULL, false);
}

GC_EXTERN int gc_chat(gc_client *c, const char *messages_json, const char *tools_json, int thinking,
                      const gc_params *params, gc_result **ret) {
        if (!ret)
                return -EINVAL;
        return start_chat(c, messages_json, tools_json, thinking, params, false, NULL, NULL, NULL, ret, true);
}

GC_EXTERN int gc_chat_stream(gc_client *c, const char *messages_json, const char *tools_json, int thinking,
                             const gc_params *params, gc_event_cb cb, void *userdata, gc_result **ret) {
        if (!cb)
                return -EINVAL;
        return start_chat(c, messages_json, tools_json, thinking, params, true, cb, userdata, NULL, ret, true);
}

GC_EXTERN int gc_chat_start(gc_client *c, const char *messages_json, const char *tools_json, int thinking,
                            const gc_params *params, gc_event_cb cb, void *userdata, gc_request **ret_req) {
        return start_chat(c, messages_json, tools_json, thinking, params, true, cb, userdata, ret_req, NULL,
                          false);
}

GC_EXTERN int gc_score(gc_client *c, const char *prompt, const gc_params *params, gc_result **ret) {
        struct proto_msg m = { .type = PROTO_TYPE_SCORE };

        if (!c || !prompt || !ret)
                return -EINVAL;
        m.score.prompt.text = (char *) prompt;
        prepare_params(params, true, &m.score.params);
        return run_blocking(c, -1, REQ_SCORE, &m, NULL, NULL, ret);
}

GC_EXTERN int gc_status(gc_client *c, size_t daemon, char **ret_json) {
        struct proto_msg m = { .type = PROTO_TYPE_STATUS };
        gc_result *res;
        int r;

        if (!c || !ret_json || daemon >= c->n_conns)
                return -EINVAL;
        r = run_blocking(c, (ssize_t) daemon, REQ_STATUS, &m, NULL, NULL, &res);
        if (r < 0)
                return r;
        *ret_json = res->json;
        res->json = NULL;
        gc_result_free(res);
        return 0;
}

GC_EXTERN int gc_tokenize(gc_client *c, const char *text, int special, int32_t **ret_ids, size_t *ret_n) {
        struct proto_msg m = { .type = PROTO_TYPE_TOKENIZE };
        gc_result *res;
        int r;

        if (!c || !text || !ret_ids || !ret_n)
                return -EINVAL;
        m.tokenize.text = (char *) text;
        m.tokenize.special = special != 0;
        r = run_blocking(c, -1, REQ_TOKENIZE, &m, NULL, NULL, &res);
        if (r < 0)
                return r;
        *ret_n = res->n_ids;
        *ret_ids = res->n_ids ? res->ids : NULL;
        if (res->n_ids)
                res->ids = NULL;
        gc_result_free(res);
        return 0;
}

GC_EXTERN int gc_detokenize(gc_client *c, const int32_t *ids, size_t n, int special, char **ret_text) {
        struct proto_msg m = { .type = PROTO_TYPE_DETOKENIZE };
        gc_result *res;
        int r;

        if (!c || (!ids && n) || !ret_text || n > PROTO_MAX_TOKEN_IDS)
                return -EINVAL;
        m.detokenize.ids = (int32_t *) ids;
        m.detokenize.n_ids = (uint32_t) n;
        m.detokenize.special = special != 0;
        r = run_blocking(c, -1, REQ_DETOKENIZE, &m, NULL, NULL, &res);
        if (r < 0)
                return r;
        *ret_text = res->text;
        res->text = NULL;
        gc_result_free(res);
        return 0;
}
