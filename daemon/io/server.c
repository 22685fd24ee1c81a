/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The I/O thread's protocol half: listening sockets, connections, frame decoding, turning requests into
 * token ids for the engine, and turning engine events back into protocol events.
 *
 * Nothing here blocks or touches the GPU. Every frame written to a client is first appended to its
 * conn->out buffer and flushed once at the end of the callback that produced it, so one engine step costs
 * each client one write(2). A client whose unwritten bytes pass limits.max_write_queue_bytes is
 * disconnected (a slow reader must not make the daemon buffer without bound); its requests are cancelled
 * like any other disconnect's.
 */
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "build-config.h"
#include "chat/template.h"
#include "io-internal.h"
#include "log.h"

static void conn_close(struct conn *c);
static void conn_flush(struct conn *c);

/* ---- small buffers ---- */

static int grow(void **p, size_t elem, uint32_t need, uint32_t *cap) {
        if (need <= *cap)
                return 0;
        uint32_t ncap = *cap ? *cap : 16;
        while (ncap < need)
                ncap *= 2;
        void *np = realloc(*p, (size_t) ncap * elem);
        if (!np)
                return -ENOMEM;
        *p = np;
        *cap = ncap;
        return 0;
}

static int text_append(char **buf, size_t *len, size_t *cap, const char *s, size_t n) {
        if (*len + n + 1 > *cap) {
                size_t ncap = *cap ? *cap : 256;
                while (ncap < *len + n + 1)
                        ncap *= 2;
                char *nb = realloc(*buf, ncap);
                if (!nb)
                        return -ENOMEM;
                *buf = nb;
                *cap = ncap;
        }
        memcpy(*buf + *len, s, n);
        *len += n;
        (*buf)[*len] = '\0';
        return 0;
}

/* ---- request table ---- */

static struct req *req_find(struct server *srv, uint64_t conn_id, uint64_t id) {
        for (struct req *r = srv->reqs[req_key(conn_id, id) % IO_REQ_BUCKETS]; r; r = r->hash_next)
                if (r->conn_id == conn_id && r->id == id)
                        return r;
        return NULL;
}

static void req_insert(struct server *srv, struct req *r) {
        struct req **b = &srv->reqs[req_key(r->conn_id, r->id) % IO_REQ_BUCKETS];
        r->hash_next = *b;
        *b = r;
        srv->n_reqs++;
        if (r->conn) {
                r->conn_next = r->conn->reqs;
                if (r->conn->reqs)
                        r->conn->reqs->conn_prev = r;
                r->conn->reqs = r;
                r->conn->n_inflight++;
        }
}

static void req_detach_conn(struct req *r) {
        struct conn *c = r->conn;
        if (!c)
                return;
        if (r->conn_prev)
                r->conn_prev->conn_next = r->conn_next;
        else
                c->reqs = r->conn_next;
        if (r->conn_next)
                r->conn_next->conn_prev = r->conn_prev;
        r->conn_prev = r->conn_next = NULL;
        c->n_inflight--;
        r->conn = NULL;
}

static void req_free(struct req *r) {
        if (!r)
                return;
        detok_stream_free(r->detok);
        chat_parser_free(r->parser);
        free(r->content);
        free(r->reasoning);
        free(r->ids);
        proto_token_logprobs_free(r->lps, r->n_lps);
        proto_msg_done(&r->pending_msg);
        free(r);
}

static void req_remove(struct server *srv, struct req *r) {
        struct req **p = &srv->reqs[req_key(r->conn_id, r->id) % IO_REQ_BUCKETS];
        while (*p && *p != r)
                p = &(*p)->hash_next;
        if (*p) {
                *p = r->hash_next;
                srv->n_reqs--;
        }
        req_detach_conn(r);
        req_free(r);
}

/* Take a request that waits for the model out of the boot queue. */
static void pending_unlink(struct server *srv, struct req *r) {
        struct req **p = &srv->pending_head, *prev = NULL;
        while (*p && *p != r) {
                prev = *p;
                p = &(*p)->pending_next;
        }
        if (!*p)
                return;
        *p = r->pending_next;
        if (srv->pending_tail == r)
                srv->pending_tail = prev;
        srv->n_pending--;
}

/* ---- writing ---- */

struct write_req {
        uv_write_t req;
        uint8_t *data;
};

static void on_write_done(uv_write_t *w, int status) {
        struct write_req *wr = (struct write_req *) w;
        free(wr->data);
        free(wr);
        (void) status;  /* a failed write shows up as a read error or EOF on the same connection */
}

static void conn_flush(struct conn *c) {
        struct server *srv = c->srv;
        struct write_req *wr;
        uv_buf_t buf;
        int r;

        if (c->closing || c->out.len == 0)
                return;
        wr = malloc(sizeof *wr);
        if (!wr) {
                log_warning("connection %llu: out of memory writing, disconnecting", (unsigned long long) c->id);
                conn_close(c);
                return;
        }
        wr->data = c->out.data;
        buf = uv_buf_init((char *) c->out.data, (unsigned) c->out.len);
        proto_buf_init(&c->out);
        r = uv_write(&wr->req, (uv_stream_t *) &c->pipe, &buf, 1, on_write_done);
        if (r < 0) {
                free(wr->data);
                free(wr);
                log_debug("connection %llu: write failed: %s", (unsigned long long) c->id, uv_strerror(r));
                conn_close(c);
                return;
        }
        if (uv_stream_get_write_queue_size((uv_stream_t *) &c->pipe) > srv->cfg.max_write_queue_bytes) {
                log_warning("connection %llu (uid %u): client is not reading, %zu bytes unwritten "
                            "(limits.max_write_queue_bytes %llu); disconnecting", (unsigned long long) c->id,
                            (unsigned) c->uid, uv_stream_get_write_queue_size((uv_stream_t *) &c->pipe),
                            (unsigned long long) srv->cfg.max_write_queue_bytes);
                conn_close(c);
        }
}

static void send_error(struct conn *c, uint64_t id, enum proto_code code, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));
static void send_error(struct conn *c, uint64_t id, enum proto_code code, const char *fmt, ...) {
        char msg[PROTO_MAX_MESSAGE_BYTES];
        struct proto_error e = { .id = id, .code = code, .message = msg };
        va_list ap;

        if (!c || c->closing)
                return;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        if (!proto_utf8_valid(msg, strlen(msg)))
                snprintf(msg, sizeof msg, "%s", proto_code_to_string(code));
        if (proto_encode_error(&c->out, &e) < 0)
                log_warning("connection %llu: could not encode an error event", (unsigned long long) c->id);
}

/* ---- connections ---- */

static void on_conn_closed(uv_handle_t *h) {
        struct conn *c = h->data;
        proto_reader_done(&c->reader);
        proto_buf_done(&c->out);
        free(c);
}

static void conn_close(struct conn *c) {
        struct server *srv = c->srv;
        if (c->closing)
                return;
        c->closing = true;
        /* Requests outlive the connection until the engine confirms; pending ones just go. */
        while (c->reqs) {
                struct req *r = c->reqs;
                req_detach_conn(r);
                if (!r->submitted) {
                        pending_unlink(srv, r);
                        req_remove(srv, r);
                }
        }
        if (srv->engine_ready)
                (void) engine_cancel_connection(srv->boot.engine, c->id);
        if (c->prev)
                c->prev->next = c->next;
        else
                srv->conns = c->next;
        if (c->next)
                c->next->prev = c->prev;
        srv->n_conns--;
        uv_read_stop((uv_stream_t *) &c->pipe);
        uv_close((uv_handle_t *) &c->pipe, on_conn_closed);
        server_maybe_finish_drain(srv);
}

static bool gid_in_list(gid_t gid, const struct gemma4d_config *cfg) {
        for (unsigned i = 0; i < cfg->n_allowed_groups; i++) {
                struct group *g = getgrnam(cfg->allowed_groups[i]);
                if (g && g->gr_gid == gid)
                        return true;
        }
        return false;
}

/* access.*: empty lists allow every peer the socket's mode lets in; otherwise the uid must be listed or
 * one of its groups (primary or supplementary) must be. root and the daemon's own uid always pass. */
static bool peer_allowed(const struct gemma4d_config *cfg, uid_t uid, gid_t gid) {
        if (cfg->n_allowed_uids == 0 && cfg->n_allowed_groups == 0)
                return true;
        if (uid == 0 || uid == getuid())
                return true;
        for (unsigned i = 0; i < cfg->n_allowed_uids; i++)
                if (cfg->allowed_uids[i] == uid)
                        return true;
        if (gid_in_list(gid, cfg))
                return true;
        if (cfg->n_allowed_groups > 0) {
                struct passwd *pw = getpwuid(uid);
                gid_t groups[256];
                int n = 256;
                if (pw && getgrouplist(pw->pw_name, gid, groups, &n) >= 0)
                        for (int i = 0; i < n; i++)
                                if (gid_in_list(groups[i], cfg))
                                        return true;
        }
        return false;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
        (void) h;
        buf->base = malloc(suggested);
        buf->len = buf->base ? suggested : 0;
}

static void handle_frame(struct conn *c, const uint8_t *body, size_t len);

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
        struct conn *c = s->data;
        size_t off = 0;

        if (nread < 0) {
                if (nread != UV_EOF)
                        log_debug("connection %llu: read error: %s", (unsigned long long) c->id,
                                  uv_strerror((int) nread));
                else if (proto_reader_partial(&c->reader))
                        log_debug("connection %llu: closed in the middle of a frame", (unsigned long long) c->id);
                free(buf->base);
                conn_close(c);
                return;
        }
        while (off < (size_t) nread && !c->closing) {
                struct proto_diag diag = { 0 };
                size_t used = 0;
                int r = proto_reader_feed(&c->reader, buf->base + off, (size_t) nread - off, &used, &diag);
                off += used;
                if (r < 0) {
                        c->srv->bad_frames++;
                        if (r == -ENOMEM)
                                send_error(c, 0, PROTO_CODE_INTERNAL, "out of memory");
                        else
                                (void) proto_encode_diag(&c->out, &diag);
                        log_info("connection %llu (uid %u): framing error, closing: %s",
                                 (unsigned long long) c->id, (unsigned) c->uid, diag.message);
                        conn_flush(c);
                        conn_close(c);
                        break;
                }
                if (r == 1) {
                        size_t flen;
                        const uint8_t *frame = proto_reader_frame(&c->reader, &flen);
                        handle_frame(c, frame, flen);
                }
        }
        free(buf->base);
        if (!c->closing)
                conn_flush(c);
}

static void on_connection(uv_stream_t *listener, int status) {
        struct server *srv = listener->data;
        struct conn *c;
        struct ucred cred;
        socklen_t len = sizeof cred;
        uv_os_fd_t fd;

        if (status < 0) {
                log_warning("accept: %s", uv_strerror(status));
                return;
        }
        c = calloc(1, sizeof *c);
        if (!c) {
                log_warning("accept: out of memory");
                return;
        }
        c->srv = srv;
        uv_pipe_init(srv->loop, &c->pipe, 0);
        c->pipe.data = c;
        if (uv_accept(listener, (uv_stream_t *) &c->pipe) < 0) {
                uv_close((uv_handle_t *) &c->pipe, (uv_close_cb) free);
                return;
        }
        c->id = ++srv->next_conn_id;
        proto_reader_init(&c->reader, (uint32_t) srv->cfg.max_frame_bytes);
        proto_buf_init(&c->out);
        c->next = srv->conns;
        if (srv->conns)
                srv->conns->prev = c;
        srv->conns = c;
        srv->n_conns++;

        if (uv_fileno((uv_handle_t *) &c->pipe, &fd) == 0 &&
            getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
                c->pid = cred.pid;
                c->uid = cred.uid;
                c->gid = cred.gid;
        } else {
                log_warning("connection %llu: no peer credentials; refusing", (unsigned long long) c->id);
                conn_close(c);
                return;
        }
        if (!peer_allowed(&srv->cfg, c->uid, c->gid)) {
                log_warning("connection %llu: refused peer pid %d uid %u gid %u (access.allowed_uids/groups)",
                            (unsigned long long) c->id, (int) c->pid, (unsigned) c->uid, (unsigned) c->gid);
                send_error(c, 0, PROTO_CODE_BAD_REQUEST, "access denied for uid %u", (unsigned) c->uid);
                conn_flush(c);
                conn_close(c);
                return;
        }
        if (srv->n_conns > srv->cfg.max_connections) {
                log_warning("connection %llu (uid %u): refused, %u connections (limits.max_connections)",
                            (unsigned long long) c->id, (unsigned) c->uid, srv->cfg.max_connections);
                send_error(c, 0, PROTO_CODE_OVERLOADED, "too many connections (limit %u)",
                           srv->cfg.max_connections);
                conn_flush(c);
                conn_close(c);
                return;
        }
        if (srv->state >= DAEMON_DRAINING) {
                send_error(c, 0, PROTO_CODE_SHUTTING_DOWN, "the daemon is shutting down");
                conn_flush(c);
                conn_close(c);
                return;
        }
        log_debug("connection %llu: pid %d uid %u", (unsigned long long) c->id, (int) c->pid, (unsigned) c->uid);
        uv_read_start((uv_stream_t *) &c->pipe, on_alloc, on_read);
}

/* ---- listening ---- */

/* A stale socket file from a crashed daemon is removed; a live one means another daemon owns the path. */
static int prepare_socket_path(const char *path) {
        struct stat st;
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd, r;

        if (strlen(path) >= sizeof sa.sun_path)
                return log_error_errno(ENAMETOOLONG, "socket.path: '%s' is longer than %zu bytes", path,
                                       sizeof sa.sun_path - 1);
        if (lstat(path, &st) < 0)
                return errno == ENOENT ? 0 : log_error_errno(errno, "socket.path: %s: %m", path);
        if (!S_ISSOCK(st.st_mode))
                return log_error_errno(EEXIST, "socket.path: %s exists and is not a socket", path);
        strcpy(sa.sun_path, path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return log_error_errno(errno, "socket: %m");
        r = connect(fd, (struct sockaddr *) &sa, sizeof sa);
        close(fd);
        if (r == 0)
                return log_error_errno(EADDRINUSE, "socket.path: %s: another daemon is listening there", path);
        if (unlink(path) < 0 && errno != ENOENT)
                return log_error_errno(errno, "socket.path: cannot remove stale %s: %m", path);
        return 0;
}

int server_listen(struct server *srv) {
        int n = sd_listen_fds(1);
        int r;

        if (n > 0) {
                if (n > IO_MAX_LISTENERS)
                        n = IO_MAX_LISTENERS;
                for (int i = 0; i < n; i++) {
                        int fd = SD_LISTEN_FDS_START + i;
                        if (sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0) <= 0) {
                                log_warning("systemd passed fd %d, which is not a listening Unix stream socket; "
                                            "ignoring it", fd);
                                continue;
                        }
                        uv_pipe_t *p = &srv->listeners[srv->n_listeners];
                        uv_pipe_init(srv->loop, p, 0);
                        p->data = srv;
                        r = uv_pipe_open(p, fd);
                        if (r == 0)
                                r = uv_listen((uv_stream_t *) p, 128, on_connection);
                        if (r < 0) {
                                uv_close((uv_handle_t *) p, NULL);
                                return log_error_errno(-r, "listening on systemd's socket fd %d: %s", fd,
                                                       uv_strerror(r));
                        }
                        srv->n_listeners++;
                }
                if (srv->n_listeners > 0) {
                        srv->listeners_from_systemd = true;
                        log_info("listening on %u socket(s) from systemd", srv->n_listeners);
                        return 0;
                }
        } else if (n < 0)
                log_warning("sd_listen_fds: %s; binding the socket myself", strerror(-n));

        const char *path = srv->cfg.socket_path;
        r = prepare_socket_path(path);
        if (r < 0)
                return r;
        uv_pipe_t *p = &srv->listeners[0];
        uv_pipe_init(srv->loop, p, 0);
        p->data = srv;
        /* umask decides the mode at bind(); tighten it, then set the configured mode exactly. */
        mode_t old = umask(0177);
        r = uv_pipe_bind(p, path);
        umask(old);
        if (r == 0)
                r = uv_listen((uv_stream_t *) p, 128, on_connection);
        if (r < 0) {
                uv_close((uv_handle_t *) p, NULL);
                return log_error_errno(-r, "socket.path: cannot listen on %s: %s", path, uv_strerror(r));
        }
        srv->n_listeners = 1;
        if (chmod(path, srv->cfg.socket_mode) < 0)
                return log_error_errno(errno, "socket.mode: chmod %s: %m", path);
        if (srv->cfg.socket_group && srv->cfg.socket_group[0]) {
                struct group *g = getgrnam(srv->cfg.socket_group);
                if (!g)
                        return log_error_errno(ENOENT, "socket.group: no group '%s'", srv->cfg.socket_group);
                if (chown(path, (uid_t) -1, g->gr_gid) < 0)
                        return log_error_errno(errno, "socket.group: chown %s to %s: %m", path,
                                               srv->cfg.socket_group);
        }
        log_info("listening on %s (mode %04o)", path, srv->cfg.socket_mode);
        return 0;
}

void server_stop_listening(struct server *srv) {
        for (unsigned i = 0; i < srv->n_listeners; i++)
                if (!uv_is_closing((uv_handle_t *) &srv->listeners[i]))
                        uv_close((uv_handle_t *) &srv->listeners[i], NULL);
        /* Our own socket file goes with us; systemd's belongs to the socket unit. */
        if (!srv->listeners_from_systemd && srv->n_listeners > 0)
                (void) unlink(srv->cfg.socket_path);
}

void server_close_all(struct server *srv) {
        while (srv->conns)
                conn_close(srv->conns);
}

void server_free_requests(struct server *srv) {
        for (unsigned i = 0; i < IO_REQ_BUCKETS; i++)
                while (srv->reqs[i])
                        req_remove(srv, srv->reqs[i]);
        srv->pending_head = srv->pending_tail = NULL;
        srv->n_pending = 0;
}

/* ---- requests ---- */

static void fill_welcome(struct server *srv, struct proto_welcome *w, char *model_name, size_t model_name_size) {
        const char *base = strrchr(srv->cfg.model_path, '/');
        base = base && base[1] ? base + 1 : srv->cfg.model_path;
        snprintf(model_name, model_name_size, "%s", base[0] ? base : "unknown");
        memset(w, 0, sizeof *w);
        w->proto = PROTO_VERSION;
        w->server_version = (char *) GEMMA4D_VERSION;
        w->model = model_name;
        w->architecture = (char *) "gemma4";
        w->max_model_len = srv->cfg.max_model_len;
        w->limits.max_frame_bytes = (uint32_t) srv->cfg.max_frame_bytes;
        w->limits.max_inflight = srv->cfg.max_inflight_per_connection;
        w->limits.max_num_seqs = srv->cfg.max_num_seqs;
        w->limits.max_queue = srv->cfg.max_queue;
        w->backend = (char *) backend_kind_to_string(srv->cfg.backend);
        w->device = (char *) "loading";
        if (srv->engine_ready) {
                struct engine_status st;
                engine_get_status(srv->boot.engine, &st);
                w->device = srv->boot.capacity.device;
                w->kv_tokens = st.capacity_tokens;
                w->kv_seqs_32k = st.seqs_32k;
                if (srv->boot.model->cfg.architecture[0])
                        w->architecture = srv->boot.model->cfg.architecture;
        }
}

static void sampling_from_proto(const struct proto_params *pp, uint32_t prompt_len, uint32_t max_model_len,
                                struct sampling_params *sp) {
        sampling_params_init(sp);
        if (pp->max_tokens > 0)
                sp->max_tokens = pp->max_tokens;
        else
                sp->max_tokens = prompt_len < max_model_len ? max_model_len - prompt_len : 1;
        sp->temperature = (float) pp->temperature;
        sp->top_p = (float) pp->top_p;
        sp->top_k = (int32_t) pp->top_k;
        sp->min_p = (float) pp->min_p;
        sp->repetition_penalty = (float) pp->repetition_penalty;
        sp->presence_penalty = (float) pp->presence_penalty;
        sp->frequency_penalty = (float) pp->frequency_penalty;
        sp->has_seed = (pp->present & PROTO_PARAM_SEED) != 0;
        sp->seed = pp->seed;
        sp->logprobs = pp->logprobs > 0 ? (uint32_t) pp->logprobs : 0;
        sp->logprob = pp->logprobs >= 0;        /* logprobs 0: the sampled token's own logprob */
        sp->priority = pp->priority;
        sp->deadline_ms = pp->deadline_ms;
}

static int tokenize_prompt(struct server *srv, const struct proto_prompt *p, int32_t **ret, uint32_t *ret_n,
                           char *err, size_t errsize) {
        if (p->n_ids > 0) {
                int32_t *ids = malloc(sizeof(int32_t) * p->n_ids);
                if (!ids)
                        return -ENOMEM;
                memcpy(ids, p->ids, sizeof(int32_t) * p->n_ids);
                *ret = ids;
                *ret_n = p->n_ids;
                return 0;
        }
        if (!srv->boot.tokenizer) {
                snprintf(err, errsize, "prompt: the model has no tokenizer.json; send prompt_ids");
                return -EOPNOTSUPP;
        }
        int32_t *ids = NULL;
        size_t n = 0;
        int r = tokenizer_encode(srv->boot.tokenizer, p->text, strlen(p->text), true, &ids, &n);
        if (r < 0)
                return r;
        if (n == 0) {
                free(ids);
                snprintf(err, errsize, "prompt: empty after tokenization");
                return -EINVAL;
        }
        *ret = ids;
        *ret_n = (uint32_t) n;
        return 0;
}

static int token_ids_push(struct token_ids *t, int32_t id) {
        if (t->n == t->cap) {
                size_t ncap = t->cap ? t->cap * 2 : 256;
                int32_t *n = realloc(t->ids, ncap * sizeof *n);
                if (!n)
                        return -ENOMEM;
                t->ids = n;
                t->cap = ncap;
        }
        t->ids[t->n++] = id;
        return 0;
}

static int render_chat(struct server *srv, const struct proto_chat *m, int32_t **ret, uint32_t *ret_n,
                       char *err, size_t errsize) {
        struct chat_render_options opts = { .enable_thinking = m->thinking, .add_generation_prompt = true };
        struct chat_prompt prompt;
        struct chat_error cerr = { { 0 } };
        struct token_ids out = { 0 };
        struct chat_prompt_run run;
        size_t cursor = 0;
        int r;

        if (!srv->boot.tokenizer) {
                snprintf(err, errsize, "chat: the model has no tokenizer.json");
                return -EOPNOTSUPP;
        }
        r = chat_render(m->messages, m->tools, &opts, &prompt, &cerr);
        if (r < 0) {
                snprintf(err, errsize, "%s", cerr.message[0] ? cerr.message : strerror(-r));
                return r == -ENOMEM ? r : -EINVAL;
        }
        while (chat_prompt_next_run(&prompt, &cursor, &run)) {
                if (run.special) {
                        r = token_ids_push(&out, (int32_t) run.token_id);
                        if (r < 0)
                                break;
                } else {
                        r = tokenizer_encode_append(srv->boot.tokenizer, run.text, run.length, false, &out);
                        if (r < 0)
                                break;
                }
        }
        chat_prompt_done(&prompt);
        if (r < 0) {
                free(out.ids);
                return r;
        }
        *ret = out.ids;
        *ret_n = (uint32_t) out.n;
        return 0;
}

static int parser_event(const struct chat_event *ev, void *userdata);

/* Turn a decoded generate/chat/score into an engine submission. Errors are answered here. */
static void submit_request(struct server *srv, struct req *r, struct proto_msg *m) {
        struct conn *c = r->conn;
        const struct proto_params *pp = m->type == PROTO_TYPE_CHAT ? &m->chat.params :
                                        m->type == PROTO_TYPE_GENERATE ? &m->generate.params : &m->score.params;
        struct engine_request er = { .conn_id = r->conn_id, .req_id = r->id };
        char err[256] = "";
        int32_t *ids = NULL;
        uint32_t n = 0;
        int ret;

        if (m->type == PROTO_TYPE_CHAT)
                ret = render_chat(srv, &m->chat, &ids, &n, err, sizeof err);
        else
                ret = tokenize_prompt(srv, m->type == PROTO_TYPE_GENERATE ? &m->generate.prompt :
                                      &m->score.prompt, &ids, &n, err, sizeof err);
        if (ret < 0) {
                send_error(c, r->id, ret == -EOPNOTSUPP ? PROTO_CODE_UNSUPPORTED :
                           ret == -ENOMEM ? PROTO_CODE_INTERNAL : PROTO_CODE_BAD_REQUEST, "%s",
                           err[0] ? err : strerror(-ret));
                srv->rejected++;
                req_remove(srv, r);
                return;
        }
        /* docs/protocol.md: a prompt that cannot be followed by the max_tokens asked for is refused
         * before any work, rather than cut short later. */
        if ((pp->present & PROTO_PARAM_MAX_TOKENS) && r->kind != REQ_SCORE &&
            (uint64_t) n + pp->max_tokens > srv->cfg.max_model_len) {
                send_error(c, r->id, PROTO_CODE_TOO_LONG, "prompt (%u tokens) + max_tokens (%u) exceeds "
                           "max_model_len (%u)", n, pp->max_tokens, srv->cfg.max_model_len);
                free(ids);
                srv->rejected++;
                req_remove(srv, r);
                return;
        }
        r->prompt_tokens = n;
        r->first_token = ids[0];
        er.kind = r->kind == REQ_SCORE ? ENGINE_KIND_SCORE : ENGINE_KIND_GENERATE;
        er.tokens = ids;
        er.n_tokens = n;
        sampling_from_proto(pp, n, srv->cfg.max_model_len, &er.params);
        if (r->kind != REQ_SCORE) {
                struct chat_parser_options po = {
                        .stop_strings = (const char *const *) pp->stop,
                        .n_stop_strings = pp->n_stop,
                        .bare_tool_calls = m->type == PROTO_TYPE_CHAT && m->chat.tools &&
                                           json_array_size(m->chat.tools) > 0,
                };
                /* A model without tokenizer.json serves prompt_ids only: no text, no detokenizer. */
                if (srv->boot.tokenizer && detok_stream_new(srv->boot.tokenizer, true, &r->detok) < 0) {
                        free(ids);
                        send_error(c, r->id, PROTO_CODE_INTERNAL, "out of memory");
                        req_remove(srv, r);
                        return;
                }
                if (chat_parser_new(&po, parser_event, r, &r->parser) < 0) {
                        free(ids);
                        send_error(c, r->id, PROTO_CODE_BAD_REQUEST, "params.stop: invalid stop strings");
                        req_remove(srv, r);
                        return;
                }
        }
        ret = engine_submit(srv->boot.engine, &er, err, sizeof err);
        free(ids);
        if (ret < 0) {
                enum proto_code code = ret == -E2BIG ? PROTO_CODE_TOO_LONG : ret == -EAGAIN ? PROTO_CODE_OVERLOADED :
                                       ret == -EINVAL ? PROTO_CODE_BAD_REQUEST : ret == -ESHUTDOWN ?
                                       PROTO_CODE_SHUTTING_DOWN : PROTO_CODE_INTERNAL;
                send_error(c, r->id, code, "%s", err[0] ? err : strerror(-ret));
                req_remove(srv, r);
                return;
        }
        r->submitted = true;
        if (srv->test_stall_ms) {
                engine_test_stall(srv->boot.engine, srv->test_stall_ms);
                srv->test_stall_ms = 0;
        }
}

static void handle_request(struct conn *c, struct proto_msg *m) {
        struct server *srv = c->srv;
        uint64_t id = proto_msg_id(m);
        struct req *r;

        if (srv->state >= DAEMON_DRAINING) {
                send_error(c, id, PROTO_CODE_SHUTTING_DOWN, "the daemon is shutting down");
                return;
        }
        if (req_find(srv, c->id, id)) {
                send_error(c, id, PROTO_CODE_DUPLICATE_ID, "request id %llu is already in flight",
                           (unsigned long long) id);
                return;
        }
        if (c->n_inflight >= srv->cfg.max_inflight_per_connection) {
                srv->rejected++;
                send_error(c, id, PROTO_CODE_OVERLOADED, "%u requests in flight on this connection "
                           "(limits.max_inflight_per_connection)", c->n_inflight);
                return;
        }
        r = calloc(1, sizeof *r);
        if (!r) {
                send_error(c, id, PROTO_CODE_INTERNAL, "out of memory");
                return;
        }
        const struct proto_params *pp = m->type == PROTO_TYPE_CHAT ? &m->chat.params :
                                        m->type == PROTO_TYPE_GENERATE ? &m->generate.params : &m->score.params;
        r->conn = c;
        r->conn_id = c->id;
        r->id = id;
        r->kind = m->type == PROTO_TYPE_CHAT ? REQ_CHAT : m->type == PROTO_TYPE_GENERATE ? REQ_GENERATE : REQ_SCORE;
        r->priority = pp->priority;
        r->stream = (pp->present & PROTO_PARAM_STREAM) ? pp->stream : true;
        r->want_logprobs = (pp->present & PROTO_PARAM_LOGPROBS) ? pp->logprobs : -1;
        req_insert(srv, r);

        if (srv->state == DAEMON_LOADING) {
                /* Clients wait while the model loads; the wait is bounded like the engine's queue. */
                if (srv->n_pending >= srv->cfg.max_queue) {
                        srv->rejected++;
                        send_error(c, id, PROTO_CODE_OVERLOADED, "the model is loading and %u requests are "
                                   "waiting (limits.max_queue)", srv->n_pending);
                        req_remove(srv, r);
                        return;
                }
                r->pending_msg = *m;
                memset(m, 0, sizeof *m);
                if (srv->pending_tail)
                        srv->pending_tail->pending_next = r;
                else
                        srv->pending_head = r;
                srv->pending_tail = r;
                srv->n_pending++;
                return;
        }
        submit_request(srv, r, m);
}

static void handle_tokenize(struct conn *c, const struct proto_tokenize *m) {
        struct server *srv = c->srv;
        struct proto_tokenize_reply rep = { .id = m->id };
        size_t n = 0;
        int r;

        if (srv->state == DAEMON_LOADING || !srv->boot.tokenizer) {
                send_error(c, m->id, srv->state == DAEMON_LOADING ? PROTO_CODE_NOT_READY : PROTO_CODE_UNSUPPORTED,
                           srv->state == DAEMON_LOADING ? "the model is loading" : "the model has no tokenizer.json");
                return;
        }
        r = tokenizer_encode(srv->boot.tokenizer, m->text, strlen(m->text), m->special, &rep.ids, &n);
        if (r < 0) {
                send_error(c, m->id, PROTO_CODE_INTERNAL, "tokenize: %s", strerror(-r));
                return;
        }
        rep.n_ids = (uint32_t) n;
        if (proto_encode_tokenize_reply(&c->out, &rep) < 0)
                send_error(c, m->id, PROTO_CODE_INTERNAL, "tokenize: reply too large");
        free(rep.ids);
}

static void handle_detokenize(struct conn *c, const struct proto_detokenize *m) {
        struct server *srv = c->srv;
        struct proto_detokenize_reply rep = { .id = m->id };
        size_t len = 0;
        int r;

        if (srv->state == DAEMON_LOADING || !srv->boot.tokenizer) {
                send_error(c, m->id, srv->state == DAEMON_LOADING ? PROTO_CODE_NOT_READY : PROTO_CODE_UNSUPPORTED,
                           srv->state == DAEMON_LOADING ? "the model is loading" : "the model has no tokenizer.json");
                return;
        }
        r = tokenizer_decode(srv->boot.tokenizer, m->ids, m->n_ids, !m->special, &rep.text, &len);
        if (r < 0) {
                send_error(c, m->id, PROTO_CODE_BAD_REQUEST, "ids: contains an id outside the vocabulary (%zu)",
                           tokenizer_vocab_size(srv->boot.tokenizer));
                return;
        }
        if (!proto_utf8_valid(rep.text, len)) {
                /* a NUL byte decoded from <0x00>: not representable as a protocol string */
                send_error(c, m->id, PROTO_CODE_BAD_REQUEST, "ids: decoded text contains a NUL byte");
        } else if (proto_encode_detokenize_reply(&c->out, &rep) < 0)
                send_error(c, m->id, PROTO_CODE_INTERNAL, "detokenize: reply too large");
        free(rep.text);
}

static void handle_status(struct conn *c, const struct proto_status *m) {
        json_t *st = server_status_json(c->srv);
        struct proto_status_reply rep = { .id = m->id, .status = st };
        if (!st || proto_encode_status_reply(&c->out, &rep) < 0)
                send_error(c, m->id, PROTO_CODE_INTERNAL, "status: could not build the reply");
        json_decref(st);
}

static void handle_cancel(struct conn *c, const struct proto_cancel *m) {
        struct server *srv = c->srv;
        struct req *r = req_find(srv, c->id, m->id);
        if (!r)
                return;         /* finished already, or never existed: cancel is idempotent */
        if (!r->submitted) {
                struct proto_finished f = { .id = r->id, .reason = PROTO_REASON_CANCELLED };
                pending_unlink(srv, r);
                (void) proto_encode_finished(&c->out, &f);
                req_remove(srv, r);
                return;
        }
        (void) engine_cancel(srv->boot.engine, c->id, m->id);
}

static void handle_frame(struct conn *c, const uint8_t *body, size_t len) {
        struct server *srv = c->srv;
        struct proto_diag diag = { 0 };
        struct proto_msg m;
        int r;

        r = proto_decode_request(body, len, &m, &diag);
        if (r < 0) {
                srv->bad_frames++;
                if (r == -ENOMEM)
                        send_error(c, diag.has_id ? diag.id : 0, PROTO_CODE_INTERNAL, "out of memory");
                else
                        (void) proto_encode_diag(&c->out, &diag);
                log_debug("connection %llu (uid %u): rejected frame: %s", (unsigned long long) c->id,
                          (unsigned) c->uid, diag.message);
                /* Without a successful hello the peer does not speak our protocol: stop listening. */
                if (!c->hello_done) {
                        conn_flush(c);
                        conn_close(c);
                }
                return;
        }
        if (m.type == PROTO_TYPE_HELLO) {
                if (c->hello_done) {
                        send_error(c, 0, PROTO_CODE_HANDSHAKE, "hello was already received");
                } else {
                        struct proto_welcome w;
                        char name[PROTO_MAX_NAME_BYTES];
                        fill_welcome(srv, &w, name, sizeof name);
                        c->hello_done = true;
                        if (proto_encode_welcome(&c->out, &w) < 0)
                                send_error(c, 0, PROTO_CODE_INTERNAL, "could not encode welcome");
                        log_debug("connection %llu: hello from '%s'", (unsigned long long) c->id,
                                  m.hello.client ? m.hello.client : "");
                }
                proto_msg_done(&m);
                return;
        }
        if (!c->hello_done) {
                send_error(c, proto_msg_id(&m), PROTO_CODE_HANDSHAKE, "the first message must be hello");
                proto_msg_done(&m);
                conn_flush(c);
                conn_close(c);
                return;
        }
        switch (m.type) {
        case PROTO_TYPE_GENERATE:
        case PROTO_TYPE_CHAT:
        case PROTO_TYPE_SCORE:
                handle_request(c, &m);
                break;
        case PROTO_TYPE_CANCEL:
                handle_cancel(c, &m.cancel);
                break;
        case PROTO_TYPE_STATUS:
                handle_status(c, &m.status);
                break;
        case PROTO_TYPE_TOKENIZE:
                handle_tokenize(c, &m.tokenize);
                break;
        case PROTO_TYPE_DETOKENIZE:
                handle_detokenize(c, &m.detokenize);
                break;
        default:
                send_error(c, proto_msg_id(&m), PROTO_CODE_UNSUPPORTED, "message type '%s' is not a request",
                           proto_type_to_string(m.type));
                break;
        }
        proto_msg_done(&m);
}

void server_on_ready(struct server *srv) {
        struct req *r = srv->pending_head;
        srv->pending_head = srv->pending_tail = NULL;
        srv->n_pending = 0;
        while (r) {
                struct req *next = r->pending_next;
                struct proto_msg m = r->pending_msg;
                struct conn *c = r->conn;
                memset(&r->pending_msg, 0, sizeof r->pending_msg);
                r->pending_next = NULL;
                submit_request(srv, r, &m);
                proto_msg_done(&m);
                if (c)
                        conn_flush(c);
                r = next;
        }
}

/* ---- engine events -> protocol events ---- */

/* Length of the well-formed UTF-8 character at s (1..4), or 0 when it is malformed or NUL. */
static size_t utf8_char_len(const unsigned char *s, size_t n) {
        size_t len;
        uint32_t cp;
        if (s[0] == 0)
                return 0;
        if (s[0] < 0x80)
                return 1;
        if ((s[0] & 0xE0) == 0xC0) {
                len = 2;
                cp = s[0] & 0x1F;
        } else if ((s[0] & 0xF0) == 0xE0) {
                len = 3;
                cp = s[0] & 0x0F;
        } else if ((s[0] & 0xF8) == 0xF0) {
                len = 4;
                cp = s[0] & 0x07;
        } else
                return 0;
        if (len > n)
                return 0;
        for (size_t i = 1; i < len; i++) {
                if ((s[i] & 0xC0) != 0x80)
                        return 0;
                cp = (cp << 6) | (s[i] & 0x3F);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
                return 0;
        return len;
}

/* Protocol strings are valid UTF-8 without NUL (docs/protocol.md). Model output can hold a NUL byte
 * (<0x00>) or, in theory, bytes the detokenizer passed through: each such byte becomes U+FFFD, the same
 * substitution the detokenizer makes for invalid runs. Done in place, growing the buffer as needed. */
static int utf8_sanitize(char **buf, size_t *len, size_t *cap) {
        size_t i = 0, bad = 0;
        char *out;
        size_t o = 0;

        if (proto_utf8_valid(*buf, *len))
                return 0;
        for (i = 0; i < *len;) {
                size_t l = utf8_char_len((const unsigned char *) *buf + i, *len - i);
                bad += l == 0;
                i += l ? l : 1;
        }
        out = malloc(*len + 2 * bad + 1);
        if (!out)
                return -ENOMEM;
        for (i = 0; i < *len;) {
                size_t l = utf8_char_len((const unsigned char *) *buf + i, *len - i);
                if (l == 0) {
                        memcpy(out + o, "\xEF\xBF\xBD", 3);
                        o += 3;
                        i++;
                } else {
                        memcpy(out + o, *buf + i, l);
                        o += l;
                        i += l;
                }
        }
        out[o] = '\0';
        free(*buf);
        *buf = out;
        *len = o;
        *cap = *len + 2 * bad + 1;
        return 0;
}

static int parser_event(const struct chat_event *ev, void *userdata) {
        struct req *r = userdata;
        switch (ev->kind) {
        case CHAT_EVENT_CONTENT:
                return text_append(&r->content, &r->content_len, &r->content_cap, ev->text, ev->length);
        case CHAT_EVENT_REASONING:
                return text_append(&r->reasoning, &r->reasoning_len, &r->reasoning_cap, ev->text, ev->length);
        case CHAT_EVENT_TOOL_CALL: {
                struct conn *c = r->conn;
                char call_id[32];
                char *args = json_dumps(ev->arguments, JSON_COMPACT | JSON_ENSURE_ASCII);
                struct proto_tool_call tc = { .id = r->id, .index = (uint32_t) ev->index, .call_id = call_id,
                                              .name = (char *) ev->name, .arguments = args };
                if (!args)
                        return -ENOMEM;
                snprintf(call_id, sizeof call_id, "call_%u", (unsigned) ev->index);
                r->n_tool_calls++;
                if (c && !c->closing) {
                        /* Text before the call goes first, so the client sees the output in order. */
                        if (r->stream && (r->content_len || r->reasoning_len)) {
                                if (utf8_sanitize(&r->content, &r->content_len, &r->content_cap) < 0 ||
                                    utf8_sanitize(&r->reasoning, &r->reasoning_len, &r->reasoning_cap) < 0) {
                                        free(args);
                                        return -ENOMEM;
                                }
                                struct proto_delta d = { .id = r->id, .text = r->content_len ? r->content : NULL,
                                                         .reasoning = r->reasoning_len ? r->reasoning : NULL };
                                (void) proto_encode_delta(&c->out, &d);
                                r->content_len = r->reasoning_len = 0;
                        }
                        if (proto_encode_tool_call(&c->out, &tc) < 0)
                                send_error(c, r->id, PROTO_CODE_INTERNAL, "could not encode a tool call");
                }
                free(args);
                return 0;
        }
        case CHAT_EVENT_STOP:
                if (ev->stop_reason == CHAT_STOP_STRING && !r->stopped) {
                        r->stopped = true;
                        if (r->conn && r->conn->srv->engine_ready)
                                (void) engine_request_stop(r->conn->srv->boot.engine, r->conn_id, r->id);
                }
                return 0;
        }
        return 0;
}

static void flush_delta(struct req *r) {
        struct conn *c = r->conn;
        if ((r->content_len && utf8_sanitize(&r->content, &r->content_len, &r->content_cap) < 0) ||
            (r->reasoning_len && utf8_sanitize(&r->reasoning, &r->reasoning_len, &r->reasoning_cap) < 0)) {
                r->content_len = r->reasoning_len = 0;
                send_error(c, r->id, PROTO_CODE_INTERNAL, "out of memory");
        }
        struct proto_delta d = {
                .id = r->id,
                .text = r->content_len ? r->content : NULL,
                .reasoning = r->reasoning_len ? r->reasoning : NULL,
                .token_ids = r->ids,
                .n_token_ids = r->n_ids,
                .logprobs = r->n_lps ? r->lps : NULL,
                .n_logprobs = r->n_lps,
        };
        if (c && !c->closing && (r->content_len || r->reasoning_len || r->n_ids)) {
                if (proto_encode_delta(&c->out, &d) < 0)
                        send_error(c, r->id, PROTO_CODE_INTERNAL, "could not encode a delta");
        }
        r->content_len = r->reasoning_len = 0;
        r->n_ids = 0;
        proto_token_logprobs_free(r->lps, r->n_lps);
        r->lps = NULL;
        r->n_lps = r->cap_lps = 0;
}

static void on_tokens(struct server *srv, struct req *r, const struct engine_event *ev) {
        for (uint32_t i = 0; i < ev->tokens.n; i++) {
                int32_t tok = ev->tokens.tokens[i];
                const char *piece = "";
                size_t plen = 0;

                if (r->stopped)
                        break;
                if (r->detok && detok_stream_push(r->detok, tok, &piece, &plen) < 0)
                        plen = 0;
                if (grow((void **) &r->ids, sizeof(int32_t), r->n_ids + 1, &r->cap_ids) == 0)
                        r->ids[r->n_ids++] = tok;
                if (r->want_logprobs >= 0 &&
                    grow((void **) &r->lps, sizeof *r->lps, r->n_lps + 1, &r->cap_lps) == 0) {
                        struct proto_token_logprob *lp = &r->lps[r->n_lps++];
                        memset(lp, 0, sizeof *lp);
                        lp->id = tok;
                        lp->logprob = ev->tokens.logprobs ? ev->tokens.logprobs[i] : 0.0f;
                        uint32_t ntop = r->want_logprobs > 0 ? (uint32_t) r->want_logprobs : 0;
                        if (ntop > ev->tokens.n_top)
                                ntop = ev->tokens.n_top;
                        if (ntop > 0 && ev->tokens.top) {
                                lp->top = calloc(ntop, sizeof *lp->top);
                                if (lp->top) {
                                        lp->n_top = ntop;
                                        for (uint32_t k = 0; k < ntop; k++) {
                                                lp->top[k].id = ev->tokens.top[i * ev->tokens.n_top + k].token;
                                                lp->top[k].logprob = ev->tokens.top[i * ev->tokens.n_top + k].logprob;
                                        }
                                }
                        }
                }
                if (r->parser)
                        (void) chat_parser_feed(r->parser, (uint32_t) tok, piece, plen);
        }
        if (r->stream)
                flush_delta(r);
        (void) srv;
}

static void on_score(struct server *srv, struct req *r, const struct engine_event *ev) {
        struct conn *c = r->conn;
        uint32_t n = ev->tokens.n;
        struct proto_score_reply rep = { .id = r->id };
        struct proto_token_logprob *lps;

        (void) srv;
        if (!c || c->closing)
                return;
        rep.token_ids = calloc(n + 1, sizeof(int32_t));
        lps = calloc(n ? n : 1, sizeof *lps);
        if (!rep.token_ids || !lps) {
                free(rep.token_ids);
                free(lps);
                send_error(c, r->id, PROTO_CODE_INTERNAL, "out of memory");
                return;
        }
        /* The event scores prompt tokens 1..n; the reply lists the whole prompt, token 0 included. */
        rep.token_ids[0] = r->first_token;
        for (uint32_t i = 0; i < n; i++) {
                rep.token_ids[i + 1] = ev->tokens.tokens[i];
                lps[i].id = ev->tokens.tokens[i];
                lps[i].logprob = ev->tokens.logprobs[i];
                if (ev->tokens.n_top && ev->tokens.top) {
                        lps[i].top = calloc(ev->tokens.n_top, sizeof *lps[i].top);
                        if (lps[i].top) {
                                lps[i].n_top = ev->tokens.n_top;
                                for (uint32_t k = 0; k < ev->tokens.n_top; k++) {
                                        lps[i].top[k].id = ev->tokens.top[i * ev->tokens.n_top + k].token;
                                        lps[i].top[k].logprob = ev->tokens.top[i * ev->tokens.n_top + k].logprob;
                                }
                        }
                }
        }
        rep.n_token_ids = n + 1;
        rep.logprobs = lps;
        rep.n_logprobs = n;
        if (proto_encode_score_reply(&c->out, &rep) < 0)
                send_error(c, r->id, PROTO_CODE_INTERNAL, "score: reply too large");
        free(rep.token_ids);
        proto_token_logprobs_free(lps, n);
}

static enum proto_reason reason_to_proto(enum engine_finish_reason r) {
        switch (r) {
        case ENGINE_FINISH_STOP: return PROTO_REASON_STOP;
        case ENGINE_FINISH_LENGTH: return PROTO_REASON_LENGTH;
        case ENGINE_FINISH_CANCELLED: return PROTO_REASON_CANCELLED;
        case ENGINE_FINISH_DEADLINE: return PROTO_REASON_DEADLINE;
        default: return PROTO_REASON_ERROR;
        }
}

static void on_finished(struct server *srv, struct req *r, const struct engine_event *ev) {
        struct conn *c = r->conn;
        const struct engine_timings *t = &ev->finished.timings;
        struct proto_finished f = {
                .id = r->id,
                .reason = reason_to_proto(ev->finished.reason),
                .usage = { .prompt_tokens = ev->finished.usage.prompt_tokens,
                           .cached_tokens = ev->finished.usage.cached_tokens,
                           .completion_tokens = ev->finished.usage.output_tokens },
                .timings = { .queue_ms = t->queue_ms, .ttft_ms = t->ttft_ms,
                             .per_token_ms = t->decode_tokens_per_s > 0 ? 1000.0 / t->decode_tokens_per_s : 0 },
                .preempted = ev->finished.preempted,
        };
        if (f.reason == PROTO_REASON_ERROR) {
                f.error_code = PROTO_CODE_INTERNAL;
                f.error_message = (char *) "the engine failed this request";
        }
        if (r->parser && !chat_parser_stopped(r->parser)) {
                const char *piece;
                size_t plen;
                if (r->detok && detok_stream_finish(r->detok, &piece, &plen) == 0 && plen > 0)
                        (void) text_append(&r->content, &r->content_len, &r->content_cap, piece, plen);
                (void) chat_parser_finish(r->parser);
        }
        if (c && !c->closing) {
                flush_delta(r);
                if (proto_encode_finished(&c->out, &f) < 0)
                        send_error(c, r->id, PROTO_CODE_INTERNAL, "could not encode finished");
        }
        log_request(LOG_LEVEL_INFO, r->id, "finished conn=%llu uid=%u priority=%d prompt=%u cached=%u output=%u "
                    "queue=%.1fms ttft=%.1fms %.1f tok/s preempted=%u reason=%s",
                    (unsigned long long) r->conn_id, c ? (unsigned) c->uid : 0u, r->priority,
                    f.usage.prompt_tokens, f.usage.cached_tokens, f.usage.completion_tokens, t->queue_ms,
                    t->ttft_ms, t->decode_tokens_per_s, f.preempted, proto_reason_to_string(f.reason));
        (void) srv;
}

static enum proto_code engine_error_to_proto(enum engine_error e) {
        switch (e) {
        case ENGINE_ERROR_BAD_REQUEST: return PROTO_CODE_BAD_REQUEST;
        case ENGINE_ERROR_TOO_LONG: return PROTO_CODE_TOO_LONG;
        case ENGINE_ERROR_OVERLOADED: return PROTO_CODE_OVERLOADED;
        default: return PROTO_CODE_INTERNAL;
        }
}

void server_pump_events(struct server *srv) {
        struct engine_event *ev, *next;
        struct conn *touched[64];
        unsigned n_touched = 0;

        if (!srv->engine_ready)
                return;
        ev = engine_pop_events(srv->boot.engine);
        for (; ev; ev = next) {
                struct req *r = req_find(srv, ev->conn_id, ev->req_id);
                next = ev->next;
                if (r) {
                        struct conn *c = r->conn;
                        switch (ev->type) {
                        case ENGINE_EVENT_STARTED:
                                if (c && !c->closing) {
                                        struct proto_started s = { .id = r->id,
                                                                   .prompt_tokens = ev->started.prompt_tokens,
                                                                   .queue_position = ev->started.queue_position };
                                        (void) proto_encode_started(&c->out, &s);
                                }
                                break;
                        case ENGINE_EVENT_TOKENS:
                                on_tokens(srv, r, ev);
                                break;
                        case ENGINE_EVENT_SCORE:
                                on_score(srv, r, ev);
                                break;
                        case ENGINE_EVENT_FINISHED:
                                on_finished(srv, r, ev);
                                break;
                        case ENGINE_EVENT_ERROR:
                                send_error(c, r->id, engine_error_to_proto(ev->error.code), "%s", ev->error.message);
                                break;
                        }
                        if (c && !c->closing) {
                                bool seen = false;
                                for (unsigned i = 0; i < n_touched; i++)
                                        seen |= touched[i] == c;
                                if (!seen) {
                                        if (n_touched == 64) {
                                                for (unsigned i = 0; i < n_touched; i++)
                                                        conn_flush(touched[i]);
                                                n_touched = 0;
                                        }
                                        touched[n_touched++] = c;
                                }
                        }
                        if (ev->type == ENGINE_EVENT_FINISHED || ev->type == ENGINE_EVENT_ERROR) {
                                /* flush before a possible close frees c */
                                req_remove(srv, r);
                        }
                }
                engine_event_free(ev);
        }
        /* conn_flush may close a slow reader, which only detaches its requests: the array stays valid
         * because closed connections are freed in a later loop iteration (uv_close). */
        for (unsigned i = 0; i < n_touched; i++)
                conn_flush(touched[i]);
        server_maybe_finish_drain(srv);
}

void server_cancel_everything(struct server *srv) {
        for (struct conn *c = srv->conns; c; c = c->next)
                if (srv->engine_ready)
                        (void) engine_cancel_connection(srv->boot.engine, c->id);
        /* requests whose connection is gone were cancelled when it closed */
}

void server_maybe_finish_drain(struct server *srv) {
        if (srv->state == DAEMON_DRAINING && srv->n_reqs == 0)
                lifecycle_request_exit(srv, srv->exit_status);
}

void server_apply_live_config(struct server *srv, const struct gemma4d_config *n) {
        struct gemma4d_config *c = &srv->cfg;
        c->max_frame_bytes = n->max_frame_bytes;
        c->max_inflight_per_connection = n->max_inflight_per_connection;
        c->max_connections = n->max_connections;
        c->max_write_queue_bytes = n->max_write_queue_bytes;
        c->log_level = n->log_level;
        c->n_allowed_uids = n->n_allowed_uids;
        memcpy(c->allowed_uids, n->allowed_uids, sizeof c->allowed_uids);
        for (unsigned i = 0; i < c->n_allowed_groups; i++)
                free(c->allowed_groups[i]);
        c->n_allowed_groups = 0;
        for (unsigned i = 0; i < n->n_allowed_groups; i++) {
                c->allowed_groups[i] = strdup(n->allowed_groups[i]);
                if (c->allowed_groups[i])
                        c->n_allowed_groups++;
        }
        c->max_queue = n->max_queue;
        c->aging_ms = n->aging_ms;
        if (srv->engine_ready)
                (void) engine_set_admission(srv->boot.engine, n->max_queue, n->aging_ms);
        c->drain_seconds = n->drain_seconds;
        log_set_level(n->log_level);
        for (struct conn *k = srv->conns; k; k = k->next)
                k->reader.max_frame = (uint32_t) n->max_frame_bytes;
}

static json_t *space_json(const struct kv_space_stats *s) {
        return json_pack("{s:i, s:i, s:i, s:i}", "total", (json_int_t) s->total, "used", (json_int_t) s->used,
                         "cached", (json_int_t) s->cached, "free", (json_int_t) s->free);
}

json_t *server_status_json(struct server *srv) {
        json_t *o = json_object();
        char phase[96];
        static const char *const state_names[] = { "loading", "ready", "draining", "stopping" };

        if (!o)
                return NULL;
        uv_mutex_lock(&srv->boot_lock);
        snprintf(phase, sizeof phase, "%s", srv->boot_phase);
        uv_mutex_unlock(&srv->boot_lock);
        json_object_set_new(o, "state", json_string(state_names[srv->state]));
        json_object_set_new(o, "version", json_string(GEMMA4D_VERSION));
        json_object_set_new(o, "model", json_string(srv->cfg.model_path));
        json_object_set_new(o, "backend", json_string(backend_kind_to_string(srv->cfg.backend)));
        json_object_set_new(o, "uptime_s", json_real((double) (engine_now_ns() - srv->start_ns) / 1e9));
        json_object_set_new(o, "connections", json_integer(srv->n_conns));
        json_object_set_new(o, "bad_frames", json_integer((json_int_t) srv->bad_frames));
        if (srv->state == DAEMON_LOADING) {
                json_object_set_new(o, "loading", json_pack("{s:s, s:i}", "phase", phase, "percent",
                                                             atomic_load(&srv->boot_percent)));
                json_object_set_new(o, "waiting_for_model", json_integer(srv->n_pending));
                return o;
        }
        if (!srv->engine_ready)
                return o;
        struct engine_status st;
        engine_get_status(srv->boot.engine, &st);
        json_t *byprio = json_object();
        for (int p = 0; p < ENGINE_N_PRIORITIES; p++)
                if (st.queued_by_priority[p]) {
                        char key[8];
                        snprintf(key, sizeof key, "%d", p + SAMPLER_PRIORITY_MIN);
                        json_object_set_new(byprio, key, json_integer(st.queued_by_priority[p]));
                }
        json_object_set_new(o, "device", json_string(srv->boot.capacity.device));
        json_object_set_new(o, "queue", json_pack("{s:i, s:o}", "total", (json_int_t) st.queued,
                                                    "by_priority", byprio));
        json_object_set_new(o, "running", json_integer(st.running));
        json_object_set_new(o, "kv", json_pack("{s:i, s:I, s:i, s:o, s:o}", "page_size", (json_int_t) st.page_size,
                                                 "capacity_tokens", (json_int_t) st.capacity_tokens,
                                                 "seqs_32k", (json_int_t) st.seqs_32k,
                                                 "full", space_json(&st.kv[KV_SPACE_FULL]),
                                                 "sliding", space_json(&st.kv[KV_SPACE_SLIDING])));
        json_object_set_new(o, "prefix_cache_hit_rate", json_real(st.prefix_hit_rate));
        json_object_set_new(o, "tokens_per_s", json_real(st.tokens_per_s));
        json_object_set_new(o, "prefill_tokens_per_s", json_real(st.prefill_tokens_per_s));
        json_object_set_new(o, "preemptions", json_integer((json_int_t) st.preemptions));
        json_object_set_new(o, "rejected", json_integer((json_int_t) (st.rejected + srv->rejected)));
        json_object_set_new(o, "finished", json_integer((json_int_t) st.finished));
        json_object_set_new(o, "steps", json_integer((json_int_t) st.steps));
        json_object_set_new(o, "boot", json_pack("{s:f, s:f, s:f, s:f}", "weights_s", srv->boot.phase_s[0],
                                                   "backend_s", srv->boot.phase_s[1], "engine_s",
                                                   srv->boot.phase_s[2], "warmup_s", srv->boot.phase_s[3]));
        json_object_set_new(o, "weight_bytes", json_integer((json_int_t) srv->boot.capacity.weight_bytes));
        json_object_set_new(o, "weight_host_bytes", json_integer((json_int_t) srv->boot.capacity.weight_host_bytes));
        json_object_set_new(o, "kv_bytes", json_integer((json_int_t) srv->boot.capacity.kv_bytes));
        return o;
}
