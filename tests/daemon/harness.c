/* SPDX-License-Identifier: Apache-2.0 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "harness.h"
#include "proto.h"

#define DIE(...) do { fprintf(stderr, "harness: " __VA_ARGS__); fputc('\n', stderr); abort(); } while (0)

static char tmpdir[256];

double h_now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

double h_timeout(double seconds) {
        const char *m = getenv("GEMMA4D_TEST_TIMEOUT_MULTIPLIER");
        double f = m ? atof(m) : 1.0;
        return seconds * (f > 0 ? f : 1.0);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        (void) st;
        (void) flag;
        (void) ftw;
        (void) remove(path);
        return 0;
}

static void rm_rf(const char *path) {
        (void) nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static pid_t tmp_owner;

static void tmpdir_cleanup(void) {
        if (tmpdir[0] && getpid() == tmp_owner && !getenv("GEMMA4D_TEST_KEEP"))
                rm_rf(tmpdir);
}

const char *h_tmpdir(void) {
        if (!tmpdir[0]) {
                const char *base = getenv("TMPDIR");
                snprintf(tmpdir, sizeof tmpdir, "%s/gemma4d-test.XXXXXX", base && base[0] ? base : "/tmp");
                if (!mkdtemp(tmpdir))
                        DIE("mkdtemp %s: %s", tmpdir, strerror(errno));
                tmp_owner = getpid();
                atexit(tmpdir_cleanup);
        }
        return tmpdir;
}

const char *h_build_path(const char *rel) {
        static char bufs[4][512];
        static unsigned next;
        const char *root = getenv("GEMMA4D_BUILD_ROOT");
        char *b = bufs[next++ % 4];
        snprintf(b, sizeof bufs[0], "%s/%s", root && root[0] ? root : "build", rel);
        return b;
}

/* fork + exec argv with stdout/stderr to log (or inherited when NULL); returns the exit status. */
static int run_wait(char *const argv[], const char *log) {
        pid_t pid = fork();
        int st;
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                if (log) {
                        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
                        if (fd >= 0) {
                                dup2(fd, 1);
                                dup2(fd, 2);
                                close(fd);
                        }
                }
                execv(argv[0], argv);
                _exit(127);
        }
        while (waitpid(pid, &st, 0) < 0)
                if (errno != EINTR)
                        return -errno;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

const char *h_model(const char *name, const char *args, bool keep_tokenizer) {
        static char paths[8][512];
        static unsigned n_paths;
        char *argv[32], copy[512], log[600], tok[600];
        char *dir;
        unsigned n = 0;

        if (n_paths == 8)
                DIE("too many models");
        dir = paths[n_paths++];
        snprintf(dir, sizeof paths[0], "%s/%s", h_tmpdir(), name);
        snprintf(log, sizeof log, "%s.log", dir);
        snprintf(copy, sizeof copy, "%s", args ? args : "");
        argv[n++] = (char *) h_build_path("tools/mkmodel/gemma4-mkmodel");
        argv[n++] = (char *) "--preset";
        argv[n++] = (char *) "demo";
        argv[n++] = (char *) "--out";
        argv[n++] = dir;
        for (char *save = NULL, *t = strtok_r(copy, " ", &save); t && n < 30; t = strtok_r(NULL, " ", &save))
                argv[n++] = t;
        argv[n] = NULL;
        int st = run_wait(argv, log);
        if (st != 0)
                DIE("gemma4-mkmodel %s failed (%d), see %s", args ? args : "", st, log);
        if (!keep_tokenizer) {
                snprintf(tok, sizeof tok, "%s/tokenizer.json", dir);
                (void) unlink(tok);
        }
        return dir;
}

const char *h_small_model(void) {
        static const char *m;
        if (!m)
                m = h_model("small", "--layers 2 --vocab 512", false);
        return m;
}

/* ---- the daemon process ---- */

int daemon_start(struct daemon *d, const struct daemon_opts *o) {
        static unsigned seq;
        FILE *f;

        memset(d, 0, sizeof *d);
        d->pid = -1;
        snprintf(d->dir, sizeof d->dir, "%s/d%u", h_tmpdir(), seq++);
        if (mkdir(d->dir, 0700) < 0)
                return -errno;
        if (o->socket_path)
                snprintf(d->sock, sizeof d->sock, "%s", o->socket_path);
        else
                snprintf(d->sock, sizeof d->sock, "%s/s.sock", d->dir);
        snprintf(d->log, sizeof d->log, "%s/gemma4d.log", d->dir);
        snprintf(d->config, sizeof d->config, "%s/gemma4d.yaml", d->dir);
        f = fopen(d->config, "w");
        if (!f)
                return -errno;
        fprintf(f, "# written by the daemon test harness\n%s\n", o->yaml ? o->yaml : "");
        fclose(f);

        d->pid = fork();
        if (d->pid < 0)
                return -errno;
        if (d->pid == 0) {
                /* A test that fails between start and stop skips its stop: the daemon must not outlive the
                 * test program (CI and the next runs would inherit it). */
                pid_t parent = getppid();
                if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
                        _exit(125);
                char *argv[] = { (char *) h_build_path("daemon/gemma4d"), (char *) "--config", d->config,
                                 (char *) "--backend", (char *) "cpu", (char *) "--model", (char *) o->model,
                                 (char *) "--socket", d->sock, (char *) "--set", (char *) "cpu.threads=1",
                                 NULL };
                int fd = open(d->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
                if (fd >= 0) {
                        dup2(fd, 1);
                        dup2(fd, 2);
                        if (fd > 2)
                                close(fd);
                }
                unsetenv("NOTIFY_SOCKET");
                unsetenv("WATCHDOG_USEC");
                unsetenv("WATCHDOG_PID");
                unsetenv("LISTEN_FDS");
                unsetenv("LISTEN_PID");
                unsetenv("LISTEN_FDNAMES");
                unsetenv("JOURNAL_STREAM");
                for (const char *const *e = o->env; e && *e; e++) {
                        if (strcmp(*e, "WATCHDOG_PID=self") == 0) {
                                char pid[32];
                                snprintf(pid, sizeof pid, "%d", (int) getpid());
                                setenv("WATCHDOG_PID", pid, 1);
                        } else
                                putenv((char *) *e);
                }
                if (o->listen_fd >= 0 && o->listen_fd != 0) {
                        char pid[32];
                        if (o->listen_fd != 3) {
                                if (dup2(o->listen_fd, 3) < 0)
                                        _exit(126);
                                close(o->listen_fd);
                        } else {
                                int fl = fcntl(3, F_GETFD);
                                fcntl(3, F_SETFD, fl & ~FD_CLOEXEC);
                        }
                        snprintf(pid, sizeof pid, "%d", (int) getpid());
                        setenv("LISTEN_PID", pid, 1);
                        setenv("LISTEN_FDS", "1", 1);
                        setenv("LISTEN_FDNAMES", "gemma4d.socket", 1);
                }
                execv(argv[0], argv);
                _exit(127);
        }
        if (o->no_wait)
                return 0;
        return daemon_wait_ready(d);
}

bool daemon_alive(struct daemon *d) {
        int st;
        if (d->pid <= 0)
                return false;
        pid_t r = waitpid(d->pid, &st, WNOHANG);
        if (r == d->pid) {
                d->exit_status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
                d->pid = -1;
                return false;
        }
        return true;
}

int daemon_wait_ready(struct daemon *d) {
        double end = h_now() + h_timeout(H_BOOT_TIMEOUT_S);
        while (h_now() < end) {
                gc_client *c = NULL;
                if (!daemon_alive(d)) {
                        daemon_dump_log(d);
                        return -ECHILD;
                }
                if (gc_client_new(&c, d->sock, 5000) == 0) {
                        char *js = NULL;
                        bool ready = false;
                        if (gc_status(c, 0, &js) == 0) {
                                json_t *o = json_loads(js, 0, NULL);
                                const char *s = json_string_value(json_object_get(o, "state"));
                                ready = s && strcmp(s, "ready") == 0;
                                json_decref(o);
                                gc_free(js);
                        }
                        gc_client_free(c);
                        if (ready)
                                return 0;
                }
                usleep(50000);
        }
        daemon_dump_log(d);
        return -ETIMEDOUT;
}

void daemon_kill(struct daemon *d, int sig) {
        if (d->pid > 0)
                kill(d->pid, sig);
}

int daemon_wait_exit(struct daemon *d, double timeout_s) {
        double end = h_now() + h_timeout(timeout_s);
        while (daemon_alive(d)) {
                if (h_now() > end)
                        return -ETIMEDOUT;
                usleep(10000);
        }
        return 0;
}

void daemon_dump_log(struct daemon *d) {
        char buf[4096];
        size_t n;
        FILE *f = fopen(d->log, "r");
        if (!f)
                return;
        fprintf(stderr, "---- %s ----\n", d->log);
        while ((n = fread(buf, 1, sizeof buf, f)) > 0)
                fwrite(buf, 1, n, stderr);
        fprintf(stderr, "---- end ----\n");
        fclose(f);
}

bool daemon_log_contains(struct daemon *d, const char *s) {
        FILE *f = fopen(d->log, "r");
        char *line = NULL;
        size_t cap = 0;
        bool found = false;
        if (!f)
                return false;
        while (!found && getline(&line, &cap, f) > 0)
                found = strstr(line, s) != NULL;
        free(line);
        fclose(f);
        return found;
}

int daemon_stop(struct daemon *d) {
        int st = d->exit_status;
        if (d->pid > 0) {
                daemon_kill(d, SIGTERM);
                if (daemon_wait_exit(d, 60) < 0) {
                        fprintf(stderr, "harness: gemma4d did not exit after SIGTERM; killing it\n");
                        daemon_kill(d, SIGKILL);
                        (void) daemon_wait_exit(d, 30);
                        d->exit_status = 137;
                }
                st = d->exit_status;
        }
        if (st != 0 || getenv("GEMMA4D_TEST_VERBOSE"))
                daemon_dump_log(d);
        if (!getenv("GEMMA4D_TEST_KEEP"))
                rm_rf(d->dir);
        return st;
}

/* ---- clients ---- */

gc_client *h_connect(struct daemon *d) {
        gc_client *c = NULL;
        int r = gc_client_new(&c, d->sock, (int) (h_timeout(30) * 1000));
        if (r < 0)
                DIE("connect %s: %s", d->sock, gc_strerror(r));
        return c;
}

void *h_status(gc_client *c) {
        char *js = NULL;
        int r = gc_status(c, 0, &js);
        if (r < 0)
                DIE("status: %s", gc_strerror(r));
        json_t *o = json_loads(js, 0, NULL);
        gc_free(js);
        if (!o)
                DIE("status: not JSON");
        return o;
}

long long h_status_int(gc_client *c, const char *path) {
        json_t *root = h_status(c), *o = root;
        char copy[128];
        long long v = -1;
        snprintf(copy, sizeof copy, "%s", path);
        for (char *save = NULL, *t = strtok_r(copy, ".", &save); t && o; t = strtok_r(NULL, ".", &save))
                o = json_object_get(o, t);
        if (o && json_is_integer(o))
                v = json_integer_value(o);
        json_decref(root);
        return v;
}

int h_wait_idle(gc_client *c, double timeout_s) {
        double end = h_now() + h_timeout(timeout_s);
        do {
                if (h_status_int(c, "kv.full.used") == 0 && h_status_int(c, "kv.sliding.used") == 0 &&
                    h_status_int(c, "running") == 0 && h_status_int(c, "queue.total") == 0)
                        return 0;
                usleep(20000);
        } while (h_now() < end);
        return -ETIMEDOUT;
}

void h_prompt(int32_t *ids, size_t n, uint32_t seed, uint32_t vocab) {
        uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
        for (size_t i = 0; i < n; i++) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ids[i] = (int32_t) (3 + x % (vocab - 3));
                /* stay clear of the stop ids (1, 50, 106) so prompts look ordinary */
                if (ids[i] == 50 || ids[i] == 106)
                        ids[i]++;
        }
}

static int req_cb(gc_request *req, enum gc_event_type type, const gc_event *ev, void *userdata) {
        struct h_req *r = userdata;
        (void) req;
        if (type == GC_EVENT_DELTA && r->t_first == 0)
                r->t_first = h_now();
        if (type == GC_EVENT_FINISHED) {
                const gc_result *res = gc_event_result(ev);
                size_t n = 0;
                const int32_t *t = gc_result_token_ids(res, &n);
                r->t_end = h_now();
                r->err = gc_result_error(res);
                r->finish = gc_result_finish(res);
                r->tokens = malloc((n ? n : 1) * sizeof *r->tokens);
                if (!r->tokens)
                        DIE("out of memory");
                if (n)
                        memcpy(r->tokens, t, n * sizeof *t);
                r->n_tokens = n;
                r->preempted = gc_result_preempted(res);
                r->cached_tokens = gc_result_cached_tokens(res);
                r->prompt_tokens = gc_result_prompt_tokens(res);
                r->ttft_ms = gc_result_ttft_ms(res);
                r->queue_ms = gc_result_queue_ms(res);
                r->done = true;
                r->handle = NULL;
        }
        return 0;
}

int h_req_start(gc_client *c, struct h_req *r) {
        gc_params *p = NULL;
        int ret;

        r->done = false;
        r->t_first = r->t_end = 0;
        r->tokens = NULL;
        r->n_tokens = 0;
        if (gc_params_new(&p) < 0)
                DIE("out of memory");
        gc_params_set_temperature(p, 0);
        if (r->max_tokens)
                gc_params_set_max_tokens(p, r->max_tokens);
        gc_params_set_priority(p, r->priority);
        if (r->deadline_ms)
                gc_params_set_deadline_ms(p, r->deadline_ms);
        r->t_start = h_now();
        ret = gc_generate_ids_start(c, r->prompt, r->n_prompt, p, req_cb, r, &r->handle);
        gc_params_free(p);
        r->start_err = ret < 0 ? ret : 0;
        if (ret < 0)
                r->done = true;
        return ret;
}

int h_run_all(gc_client *const *clients, size_t n_clients, struct h_req *const *reqs, size_t n_reqs,
              double timeout_s) {
        double end = h_now() + h_timeout(timeout_s);
        struct pollfd *pfd = calloc(n_clients, sizeof *pfd);
        int ret = -ETIMEDOUT;
        if (!pfd)
                DIE("out of memory");
        for (;;) {
                bool all = true;
                for (size_t i = 0; i < n_reqs; i++)
                        all &= reqs[i]->done;
                if (all) {
                        ret = 0;
                        break;
                }
                if (h_now() > end)
                        break;
                for (size_t i = 0; i < n_clients; i++)
                        pfd[i] = (struct pollfd) { .fd = gc_client_get_fd(clients[i]), .events = POLLIN };
                int n = poll(pfd, n_clients, 100);
                if (n < 0 && errno != EINTR)
                        DIE("poll: %s", strerror(errno));
                for (size_t i = 0; i < n_clients; i++)
                        if (n > 0 && (pfd[i].revents & (POLLIN | POLLHUP | POLLERR))) {
                                int r = gc_client_process(clients[i]);
                                if (r < 0)
                                        DIE("gc_client_process: %s", gc_strerror(r));
                        }
        }
        free(pfd);
        return ret;
}

int h_req_run(gc_client *c, struct h_req *r) {
        struct h_req *rs[1] = { r };
        int ret = h_req_start(c, r);
        if (ret < 0)
                return ret;
        return h_run_all(&c, 1, rs, 1, H_REQUEST_TIMEOUT_S);
}

void h_req_done(struct h_req *r) {
        free(r->tokens);
        r->tokens = NULL;
        r->n_tokens = 0;
}

/* ---- raw protocol ---- */

int raw_connect(struct daemon *d) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        if (strlen(d->sock) >= sizeof sa.sun_path) {
                close(fd);
                return -ENAMETOOLONG;
        }
        memcpy(sa.sun_path, d->sock, strlen(d->sock) + 1);
        if (connect(fd, (struct sockaddr *) &sa, sizeof sa) < 0) {
                int e = -errno;
                close(fd);
                return e;
        }
        return fd;
}

int raw_send_all(int fd, const void *p, size_t n) {
        const uint8_t *b = p;
        while (n > 0) {
                ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
                if (w < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                b += w;
                n -= (size_t) w;
        }
        return 0;
}

void raw_hello(int fd) {
        struct proto_buf b;
        struct proto_hello h = { .proto = PROTO_VERSION, .client = (char *) "daemon-test" };
        proto_buf_init(&b);
        if (proto_encode_hello(&b, &h) < 0 || raw_send_all(fd, b.data, b.len) < 0)
                DIE("hello: cannot send");
        proto_buf_done(&b);
}

static int read_full(int fd, void *p, size_t n, double end) {
        uint8_t *b = p;
        while (n > 0) {
                struct pollfd pfd = { .fd = fd, .events = POLLIN };
                int ms = (int) ((end - h_now()) * 1000);
                if (ms <= 0)
                        return -ETIMEDOUT;
                int r = poll(&pfd, 1, ms);
                if (r < 0 && errno == EINTR)
                        continue;
                if (r == 0)
                        return -ETIMEDOUT;
                ssize_t got = recv(fd, b, n, 0);
                if (got < 0) {
                        if (errno == EINTR || errno == EAGAIN)
                                continue;
                        return errno == ECONNRESET ? 0 : -errno;
                }
                if (got == 0)
                        return 0;
                b += got;
                n -= (size_t) got;
        }
        return 1;
}

ssize_t raw_read_frame(int fd, uint8_t **ret, double timeout_s) {
        double end = h_now() + h_timeout(timeout_s);
        uint8_t hdr[4];
        int r = read_full(fd, hdr, 4, end);
        if (r <= 0)
                return r;
        uint32_t len = (uint32_t) hdr[0] << 24 | (uint32_t) hdr[1] << 16 | (uint32_t) hdr[2] << 8 | hdr[3];
        uint8_t *body = malloc(len ? len : 1);
        if (!body)
                DIE("out of memory");
        r = read_full(fd, body, len, end);
        if (r <= 0) {
                free(body);
                return r;
        }
        *ret = body;
        return (ssize_t) len;
}

void raw_generate(int fd, uint64_t id, const int32_t *ids, uint32_t n, uint32_t max_tokens) {
        struct proto_buf b;
        struct proto_generate g = { .id = id, .prompt = { .ids = (int32_t *) ids, .n_ids = n } };
        g.params.present = PROTO_PARAM_MAX_TOKENS | PROTO_PARAM_TEMPERATURE | PROTO_PARAM_LOGPROBS;
        g.params.max_tokens = max_tokens;
        g.params.temperature = 0;
        g.params.logprobs = 20;         /* big frames: the slow-reader test fills buffers quickly */
        proto_buf_init(&b);
        if (proto_encode_generate(&b, &g) < 0)
                DIE("cannot encode generate");
        (void) raw_send_all(fd, b.data, b.len);
        proto_buf_done(&b);
}

int raw_expect_error(int fd, double timeout_s) {
        double end = h_now() + h_timeout(timeout_s);
        for (;;) {
                uint8_t *body = NULL;
                ssize_t n = raw_read_frame(fd, &body, end - h_now() > 0 ? (end - h_now()) / h_timeout(1) : 0);
                if (n <= 0)
                        return (int) n;
                struct proto_msg m;
                struct proto_diag diag = { 0 };
                int code = -1;
                if (proto_decode_event(body, (size_t) n, &m, &diag) == 0) {
                        if (m.type == PROTO_TYPE_ERROR)
                                code = m.error.code;
                        proto_msg_done(&m);
                }
                free(body);
                if (code > 0)
                        return code;
        }
}

int raw_wait_eof(int fd, double timeout_s) {
        double end = h_now() + h_timeout(timeout_s);
        char buf[65536];
        for (;;) {
                struct pollfd pfd = { .fd = fd, .events = POLLIN };
                int ms = (int) ((end - h_now()) * 1000);
                if (ms <= 0)
                        return -ETIMEDOUT;
                if (poll(&pfd, 1, ms) <= 0)
                        continue;
                ssize_t got = recv(fd, buf, sizeof buf, 0);
                if (got == 0 || (got < 0 && errno == ECONNRESET))
                        return 0;
                if (got < 0 && errno != EINTR && errno != EAGAIN)
                        return -errno;
        }
}

/* Next event of the connection (decoded into m, caller frees with proto_msg_done): its type, 0 on EOF. */
int raw_next_event(int fd, void *msg) {
        struct proto_msg *m = msg;
        uint8_t *body = NULL;
        ssize_t n = raw_read_frame(fd, &body, 60);
        struct proto_diag diag = { 0 };
        if (n <= 0)
                return (int) n;
        int r = proto_decode_event(body, (size_t) n, m, &diag);
        free(body);
        if (r < 0)
                DIE("undecodable event: %s", diag.message);
        return m->type;
}

/* Read events until the FINISHED or ERROR of request id; returns the type and fills *code / *reason. */
int raw_wait_request_end(int fd, uint64_t id, int *code, int *reason, uint32_t *n_tokens) {
        struct proto_msg m;
        for (;;) {
                int t = raw_next_event(fd, &m);
                if (t <= 0)
                        return t;
                if (t == PROTO_TYPE_DELTA && m.delta.id == id && n_tokens)
                        *n_tokens += m.delta.n_token_ids;
                if ((t == PROTO_TYPE_FINISHED && m.finished.id == id) || (t == PROTO_TYPE_ERROR && m.error.id == id)) {
                        if (code)
                                *code = t == PROTO_TYPE_ERROR ? (int) m.error.code : 0;
                        if (reason)
                                *reason = t == PROTO_TYPE_FINISHED ? (int) m.finished.reason : -1;
                        proto_msg_done(&m);
                        return t;
                }
                proto_msg_done(&m);
        }
}

/* ---- NOTIFY_SOCKET ---- */

int notify_open(struct notify *n, const char *dir) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        snprintf(n->path, sizeof n->path, "%s/notify.sock", dir);
        if (strlen(n->path) >= sizeof sa.sun_path)
                return -ENAMETOOLONG;
        n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (n->fd < 0)
                return -errno;
        strcpy(sa.sun_path, n->path);
        (void) unlink(n->path);
        if (bind(n->fd, (struct sockaddr *) &sa, sizeof sa) < 0) {
                int e = -errno;
                close(n->fd);
                return e;
        }
        return 0;
}

ssize_t notify_recv(struct notify *n, char *buf, size_t size, double timeout_s) {
        struct pollfd pfd = { .fd = n->fd, .events = POLLIN };
        int r = poll(&pfd, 1, (int) (h_timeout(timeout_s) * 1000));
        if (r <= 0)
                return -ETIMEDOUT;
        ssize_t got = recv(n->fd, buf, size - 1, 0);
        if (got < 0)
                return -errno;
        buf[got] = 0;
        /* one line per datagram in the test output (TAP): its assignments separated by ';' */
        for (ssize_t i = 0; i < got; i++)
                if (buf[i] == '\n')
                        buf[i] = ';';
        return got;
}

int notify_wait_for(struct notify *n, const char *s, double timeout_s, char *log, size_t log_size) {
        double end = h_now() + h_timeout(timeout_s);
        char buf[4096];
        while (h_now() < end) {
                ssize_t got = notify_recv(n, buf, sizeof buf, (end - h_now()) / h_timeout(1));
                if (got < 0)
                        break;
                if (log) {
                        size_t l = strlen(log);
                        snprintf(log + l, log_size - l, "%s|", buf);
                }
                if (strstr(buf, s))
                        return 0;
        }
        return -ETIMEDOUT;
}

void notify_close(struct notify *n) {
        if (n->fd >= 0)
                close(n->fd);
        n->fd = -1;
        (void) unlink(n->path);
}
