/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libgemmaclient and gemma4ctl against test-server (a scripted gemma4d stand-in on the shared codec).
 * argv: test-server, gemma4ctl, the man page example binary, libgemmaclient.3.scd, example.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <pty.h>

#include <gemma4/gemmaclient.h>

static const char *server_bin, *ctl_bin, *example_bin, *man_page, *example_src;
static char tmpdir[64];

/*
 * Servers still running when a test fails (cmocka leaves the test function early): killed at exit, so no
 * child keeps the test's output pipe open.
 */
static pid_t live_servers[16];

static void kill_live_servers(void) {
        for (size_t i = 0; i < sizeof(live_servers) / sizeof(live_servers[0]); i++)
                if (live_servers[i] > 0) {
                        kill(live_servers[i], SIGKILL);
                        waitpid(live_servers[i], NULL, 0);
                        live_servers[i] = 0;
                }
}

static void track_server(pid_t old, pid_t new) {
        for (size_t i = 0; i < sizeof(live_servers) / sizeof(live_servers[0]); i++)
                if (live_servers[i] == old) {
                        live_servers[i] = new;
                        return;
                }
}

/* ---- helpers: servers and child processes ---- */

struct server {
        pid_t pid;
        char path[128];
};

/* Children start with no signal blocked, whatever mask the test runner gave us. */
static void unblock_signals(void) {
        sigset_t none;

        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
}

/* Start test-server on tmpdir/NAME.sock with extra options (NULL-terminated); waits for READY. */
static void server_start(struct server *s, const char *name, ...) {
        const char *argv[16] = { server_bin, "--socket", s->path, "--name", name };
        int argc = 5, pfd[2];
        char buf[16] = "";
        va_list ap;

        snprintf(s->path, sizeof(s->path), "%s/%s.sock", tmpdir, name);
        va_start(ap, name);
        for (const char *a; (a = va_arg(ap, const char *)) && argc < 15;)
                argv[argc++] = a;
        va_end(ap);
        argv[argc] = NULL;
        assert_int_equal(pipe(pfd), 0);
        s->pid = fork();
        assert_true(s->pid >= 0);
        if (s->pid == 0) {
                unblock_signals();
                dup2(pfd[1], STDOUT_FILENO);
                close(pfd[0]);
                close(pfd[1]);
                execv(server_bin, (char **) argv);
                _exit(127);
        }
        close(pfd[1]);
        track_server(0, s->pid);
        assert_true(read(pfd[0], buf, sizeof(buf) - 1) >= 5);
        assert_memory_equal(buf, "READY", 5);
        close(pfd[0]);
}

static void server_stop(struct server *s) {
        int status;

        if (s->pid <= 0)
                return;
        kill(s->pid, SIGTERM);
        waitpid(s->pid, &status, 0);
        track_server(s->pid, 0);
        s->pid = 0;
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
}

struct run {
        int status;                  /* exit code, or 128 + signal */
        char out[65536];
        char err[16384];
};

static void read_all(int fd, char *buf, size_t cap) {
        size_t len = 0;
        ssize_t n;

        while (len + 1 < cap && (n = read(fd, buf + len, cap - 1 - len)) > 0)
                len += (size_t) n;
        buf[len] = 0;
}

/*
 * Run argv (NULL-terminated) with env GEMMA4D_SOCKET=socket (unless NULL), feeding input on stdin; if
 * sigint_after_ms > 0, send SIGINT after that long.
 */
static void run_cmd(struct run *r, const char *socket, const char *input, int sigint_after_ms, const char **argv) {
        int in[2], out[2], err[2], status;
        pid_t pid;

        assert_int_equal(pipe(in), 0);
        assert_int_equal(pipe(out), 0);
        assert_int_equal(pipe(err), 0);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                unblock_signals();
                dup2(in[0], STDIN_FILENO);
                dup2(out[1], STDOUT_FILENO);
                dup2(err[1], STDERR_FILENO);
                for (int fd = 3; fd < 64; fd++)
                        close(fd);
                if (socket)
                        setenv("GEMMA4D_SOCKET", socket, 1);
                else
                        unsetenv("GEMMA4D_SOCKET");
                setenv("HOME", tmpdir, 1);
                execv(argv[0], (char **) argv);
                _exit(127);
        }
        close(in[0]);
        close(out[1]);
        close(err[1]);
        if (input) {
                /* a command that fails before reading its input (a usage error) may close the pipe first:
                 * EPIPE then, not a short write (SIGPIPE is ignored here) */
                ssize_t w = write(in[1], input, strlen(input));
                assert_true(w == (ssize_t) strlen(input) || (w < 0 && errno == EPIPE));
        }
        close(in[1]);
        if (sigint_after_ms > 0) {
                usleep((useconds_t) sigint_after_ms * 1000);
                kill(pid, SIGINT);
        }
        read_all(out[0], r->out, sizeof(r->out));
        read_all(err[0], r->err, sizeof(r->err));
        close(out[0]);
        close(err[0]);
        waitpid(pid, &status, 0);
        r->status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

#define CTL(...) ((const char *[]) { ctl_bin, __VA_ARGS__, NULL })

static gc_client *connect_to(const struct server *s) {
        gc_client *c = NULL;

        assert_int_equal(gc_client_new(&c, s->path, 5000), 0);
        assert_non_null(c);
        return c;
}

/* ---- library: basics ---- */

static void test_version_and_errors(void **state) {
        char buf[32];

        assert_int_equal(gc_version(), GC_VERSION_HEX);
        snprintf(buf, sizeof(buf), "%d.%d.%d", GC_VERSION_MAJOR, GC_VERSION_MINOR, GC_VERSION_PATCH);
        assert_string_equal(gc_version_string(), buf);
        assert_string_equal(gc_err_name(GC_EOVERLOADED), "GC_EOVERLOADED");
        assert_string_equal(gc_err_name(-ECONNREFUSED), "ECONNREFUSED");
        assert_non_null(strstr(gc_strerror(GC_ENOTRUNNING), "not running"));
        assert_string_equal(gc_strerror(-ENOENT), "No such file or directory");
        assert_string_equal(gc_strerror(-99999), "unknown error");
        /* Every GC_E* code has its own message. */
        for (int a = GC_EUNKNOWN; a <= GC_EBADREQUEST; a++)
                for (int b = a + 1; b <= GC_EBADREQUEST; b++)
                        assert_string_not_equal(gc_strerror(a), gc_strerror(b));
}

static void test_params(void **state) {
        gc_params *p;

        assert_int_equal(gc_params_new(&p), 0);
        assert_int_equal(gc_params_set_temperature(p, 0.7), 0);
        assert_int_equal(gc_params_set_temperature(p, -1), -EINVAL);
        assert_int_equal(gc_params_set_top_p(p, 0), -EINVAL);
        assert_int_equal(gc_params_set_top_p(p, 1.5), -EINVAL);
        assert_int_equal(gc_params_set_top_p(p, 0.9), 0);
        assert_int_equal(gc_params_set_priority(p, -21), -EINVAL);
        assert_int_equal(gc_params_set_priority(p, 19), 0);
        assert_int_equal(gc_params_set_logprobs(p, 21), -EINVAL);
        assert_int_equal(gc_params_set_max_tokens(p, 0), -EINVAL);
        assert_int_equal(gc_params_set_presence_penalty(p, 2.5), -EINVAL);
        assert_int_equal(gc_params_add_stop(p, ""), -EINVAL);
        for (int i = 0; i < 16; i++)
                assert_int_equal(gc_params_add_stop(p, "x"), 0);
        assert_int_equal(gc_params_add_stop(p, "x"), -EINVAL);     /* at most 16 */
        gc_params_clear_stop(p);
        assert_int_equal(gc_params_add_stop(p, "END"), 0);
        assert_int_equal(gc_params_set(p, "temperature", "0.2"), 0);
        assert_int_equal(gc_params_set(p, "temperature", "warm"), -EINVAL);
        assert_int_equal(gc_params_set(p, "top_k", "40"), 0);
        assert_int_equal(gc_params_set(p, "top_k", "-1"), -EINVAL);
        assert_int_equal(gc_params_set(p, "seed", "18446744073709551615"), 0);
        assert_int_equal(gc_params_set(p, "nonsense", "1"), -EINVAL);
        assert_int_equal(gc_params_set(p, "deadline_ms", "1000"), 0);
        gc_params_reset(p);
        gc_params_free(p);
        gc_params_free(NULL);
}

static void test_handshake(void **state) {
        struct server s;
        gc_client *c;

        server_start(&s, "alpha", NULL);
        c = connect_to(&s);
        assert_int_equal(gc_client_daemon_count(c), 1);
        assert_true(gc_client_daemon_connected(c, 0));
        assert_string_equal(gc_client_daemon_path(c, 0), s.path);
        assert_string_equal(gc_client_info_str(c, 0, GC_INFO_MODEL), "alpha");
        assert_string_equal(gc_client_info_str(c, 0, GC_INFO_BACKEND), "test");
        assert_string_equal(gc_client_info_str(c, 0, GC_INFO_ARCHITECTURE), "gemma4");
        assert_int_equal(gc_client_info_num(c, 0, GC_INFO_MAX_MODEL_LEN), 8192);
        assert_int_equal(gc_client_info_num(c, 0, GC_INFO_MAX_INFLIGHT), 64);
        assert_int_equal(gc_client_info_num(c, 0, GC_INFO_KV_TOKENS), 65536);
        assert_int_equal(gc_client_info_num(c, 0, GC_INFO_PROTO), 1);
        assert_null(gc_client_info_str(c, 1, GC_INFO_MODEL));
        assert_int_equal(gc_client_inflight(c), 0);
        gc_client_free(c);
        server_stop(&s);
}

static void test_version_mismatch(void **state) {
        struct server s;
        gc_client *c = NULL;

        server_start(&s, "old", "--reject-version", NULL);
        assert_int_equal(gc_client_new(&c, s.path, 5000), GC_EVERSION);
        assert_null(c);
        server_stop(&s);
}

static void test_not_running(void **state) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        gc_client *c = NULL;
        char path[128];
        int fd;

        snprintf(path, sizeof(path), "%s/nobody.sock", tmpdir);
        assert_int_equal(gc_client_new(&c, path, 1000), GC_ENOTRUNNING);
        /* A socket file nobody listens on (a daemon that died): ECONNREFUSED, the same code. */
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/dead.sock", tmpdir);
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        assert_int_equal(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        close(fd);
        assert_int_equal(gc_client_new(&c, sa.sun_path, 1000), GC_ENOTRUNNING);
        assert_null(c);
        assert_int_equal(gc_client_new(&c, "", 1000) == 0 ? 0 : -1, -1);
        assert_int_equal(gc_client_new_paths(&c, (const char *const[]) { "" }, 1, 0), -EINVAL);
}

static void test_env_override(void **state) {
        struct server s;
        gc_client *c = NULL;

        server_start(&s, "fromenv", NULL);
        setenv("GEMMA4D_SOCKET", s.path, 1);
        assert_int_equal(gc_client_new(&c, NULL, 5000), 0);
        assert_string_equal(gc_client_info_str(c, 0, GC_INFO_MODEL), "fromenv");
        gc_client_free(c);
        /* An explicit path wins over the variable. */
        setenv("GEMMA4D_SOCKET", "/nonexistent/x.sock", 1);
        assert_int_equal(gc_client_new(&c, NULL, 1000), GC_ENOTRUNNING);
        assert_int_equal(gc_client_new(&c, s.path, 5000), 0);
        gc_client_free(c);
        unsetenv("GEMMA4D_SOCKET");
        server_stop(&s);
}

/* ---- library: requests ---- */

static struct server srv;    /* shared by the request tests (setup/teardown) */

static int srv_setup(void **state) {
        server_start(&srv, "main", NULL);
        return 0;
}

static int srv_teardown(void **state) {
        server_stop(&srv);
        return 0;
}

static void test_generate_blocking(void **state) {
        gc_client *c = connect_to(&srv);
        gc_params *p;
        gc_result *r;
        size_t n;

        assert_int_equal(gc_generate(c, "hello world", NULL, &r), 0);
        assert_string_equal(gc_result_text(r), "You said: hello world");
        assert_string_equal(gc_result_reasoning(r), "");
        assert_int_equal(gc_result_finish(r), GC_FINISH_STOP);
        assert_string_equal(gc_result_finish_string(r), "stop");
        assert_int_equal(gc_result_error(r), 0);
        assert_int_equal(gc_result_prompt_tokens(r), 11);
        assert_int_equal(gc_result_completion_tokens(r), 4);
        assert_non_null(gc_result_token_ids(r, &n));
        assert_true(n >= 1);
        assert_true(gc_result_ttft_ms(r) > 0);
        gc_result_free(r);

        /* max_tokens cuts the answer: finish length. */
        assert_int_equal(gc_params_new(&p), 0);
        assert_int_equal(gc_params_set_max_tokens(p, 2), 0);
        assert_int_equal(gc_generate(c, "hello world", p, &r), 0);
        assert_int_equal(gc_result_finish(r), GC_FINISH_LENGTH);
        assert_int_equal(gc_result_error(r), 0);
        gc_result_free(r);
        /* A stop string ends it early. */
        gc_params_reset(p);
        assert_int_equal(gc_params_add_stop(p, "world"), 0);
        assert_int_equal(gc_generate(c, "hello world", p, &r), 0);
        assert_string_equal(gc_result_text(r), "You said: hello ");
        gc_result_free(r);
        gc_params_free(p);
        assert_int_equal(gc_generate(c, NULL, NULL, &r), -EINVAL);
        gc_client_free(c);
}

static void test_chat_blocking(void **state) {
        gc_client *c = connect_to(&srv);
        gc_result *r;

        assert_int_equal(gc_chat(c, "[{\"role\": \"system\", \"content\": \"Be brief.\"},"
                                    " {\"role\": \"user\", \"content\": \"hello\"}]", NULL, 1, NULL, &r), 0);
        assert_string_equal(gc_result_reasoning(r), "The user wrote 5 bytes.");
        assert_string_equal(gc_result_text(r), "You said: hello");
        assert_int_equal(gc_result_tool_call_count(r), 0);
        gc_result_free(r);

        assert_int_equal(gc_chat(c, "[{\"role\": \"user\", \"content\": \"weather? [tool]\"}]",
                                 "[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\"}}]", 0, NULL, &r), 0);
        assert_string_equal(gc_result_reasoning(r), "");
        assert_int_equal(gc_result_tool_call_count(r), 1);
        assert_string_equal(gc_result_tool_call_name(r, 0), "get_weather");
        assert_string_equal(gc_result_tool_call_arguments(r, 0), "{\"location\": \"London\"}");
        assert_string_equal(gc_result_tool_call_id(r, 0), "call_0");
        assert_null(gc_result_tool_call_name(r, 1));
        gc_result_free(r);

        /* Malformed JSON and wrong shapes are caught before anything is sent. */
        assert_int_equal(gc_chat(c, "[{\"role\": ", NULL, 0, NULL, &r), -EINVAL);
        assert_int_equal(gc_chat(c, "{\"role\": \"user\"}", NULL, 0, NULL, &r), -EINVAL);
        assert_int_equal(gc_chat(c, "[{\"role\": \"user\", \"content\": \"x\"}]", "{}", 0, NULL, &r), -EINVAL);
        gc_client_free(c);
}

struct trace {
        char order[64];              /* S started, R reasoning delta, D content delta, T tool, F finished */
        size_t n;
        char content[256], reasoning[256];
        int finished_error;
        int cancel_after_deltas;     /* > 0: return nonzero after that many deltas */
        gc_request *cancel_req;      /* gc_cancel() this request on its first delta */
        bool done;
};

static int trace_cb(gc_request *req, enum gc_event_type type, const gc_event *ev, void *userdata) {
        struct trace *t = userdata;
        char kind = '?';

        assert_ptr_equal(gc_request_userdata(req), userdata);
        switch (type) {
        case GC_EVENT_STARTED:
                kind = 'S';
                assert_true(gc_event_prompt_tokens(ev) > 0);
                break;
        case GC_EVENT_DELTA:
                kind = *gc_event_reasoning(ev) ? 'R' : 'D';
                /* Content and reasoning never share a delta in the test server's stream. */
                assert_false(*gc_event_reasoning(ev) && *gc_event_content(ev));
                strncat(t->content, gc_event_content(ev), sizeof(t->content) - strlen(t->content) - 1);
                strncat(t->reasoning, gc_event_reasoning(ev), sizeof(t->reasoning) - strlen(t->reasoning) - 1);
                break;
        case GC_EVENT_TOOL_CALL:
                kind = 'T';
                assert_string_equal(gc_event_tool_name(ev), "get_weather");
                assert_int_equal(gc_event_tool_index(ev), 0);
                break;
        case GC_EVENT_FINISHED:
                kind = 'F';
                t->finished_error = gc_result_error(gc_event_result(ev));
                t->done = true;
                break;
        }
        if (t->n + 1 < sizeof(t->order))
                t->order[t->n++] = kind;
        if (type == GC_EVENT_DELTA && t->cancel_req) {
                assert_int_equal(gc_cancel(t->cancel_req), 0);
                assert_int_equal(gc_cancel(t->cancel_req), 0);      /* twice is harmless */
                t->cancel_req = NULL;
        }
        if (type == GC_EVENT_DELTA && t->cancel_after_deltas > 0 && --t->cancel_after_deltas == 0)
                return 1;
        return 0;
}

static void test_stream_order(void **state) {
        gc_client *c = connect_to(&srv);
        struct trace t = {};
        gc_result *r;

        assert_int_equal(gc_chat_stream(c, "[{\"role\": \"user\", \"content\": \"one two [tool]\"}]", NULL, 1,
                                        NULL, trace_cb, &t, &r), 0);
        assert_true(t.done);
        /* started; reasoning deltas, then content deltas; the tool call; finished exactly once, last. */
        assert_string_equal(t.order, "SRRRRRDDDDDTF");
        assert_string_equal(t.reasoning, gc_result_reasoning(r));
        assert_string_equal(t.content, gc_result_text(r));
        assert_string_equal(t.content, "You said: one two [tool]");
        assert_int_equal(gc_result_tool_call_count(r), 1);
        gc_result_free(r);

        memset(&t, 0, sizeof(t));
        assert_int_equal(gc_generate_stream(c, "abc", NULL, trace_cb, &t, NULL), 0);
        assert_string_equal(t.order, "SDDDF");     /* "You said: abc": three word tokens */
        gc_client_free(c);
}

static void expect_refusal(gc_client *c, const char *prompt, int code) {
        gc_result *r = NULL;
        struct trace t = {};

        assert_int_equal(gc_generate(c, prompt, NULL, &r), code);
        assert_null(r);
        /* Streaming: no started, a finished event with the code. */
        assert_int_equal(gc_generate_stream(c, prompt, NULL, trace_cb, &t, NULL), code);
        assert_string_equal(t.order, "F");
        assert_int_equal(t.finished_error, code);
}

static void test_error_mapping(void **state) {
        gc_client *c = connect_to(&srv);
        gc_result *r;

        expect_refusal(c, "x [overloaded]", GC_EOVERLOADED);
        expect_refusal(c, "x [toolong]", GC_ETOOLONG);
        expect_refusal(c, "x [badrequest]", GC_EBADREQUEST);
        expect_refusal(c, "x [notready]", GC_ENOTREADY);

        /* Failures after started come back as a result with the error. */
        assert_int_equal(gc_generate(c, "x [internal]", NULL, &r), 0);
        assert_int_equal(gc_result_error(r), GC_EINTERNAL);
        assert_int_equal(gc_result_finish(r), GC_FINISH_ERROR);
        assert_string_equal(gc_result_error_message(r), "engine failed (test server)");
        gc_result_free(r);
        assert_int_equal(gc_generate(c, "x [deadline]", NULL, &r), 0);
        assert_int_equal(gc_result_error(r), GC_EDEADLINE);
        assert_int_equal(gc_result_finish(r), GC_FINISH_DEADLINE);
        gc_result_free(r);
        /* The connection is still usable afterwards. */
        assert_int_equal(gc_generate(c, "ok", NULL, &r), 0);
        assert_string_equal(gc_result_text(r), "You said: ok");
        gc_result_free(r);
        gc_client_free(c);
}

static void test_cancel(void **state) {
        gc_client *c = connect_to(&srv);
        struct trace t = {}, t2 = {};
        gc_request *req;
        gc_result *r;

        /* gc_cancel() from inside the callback of a non-blocking request. */
        assert_int_equal(gc_generate_start(c, "a b c d e f g h i j k l [slow]", NULL, trace_cb, &t, &req), 0);
        assert_true(gc_request_id(req) >= 1);
        t.cancel_req = req;
        while (!t.done)
                assert_true(gc_client_wait(c, 5000) >= 0);
        assert_int_equal(t.finished_error, GC_ECANCELLED);
        assert_true(strlen(t.order) < 10);

        /* A nonzero callback return cancels; the blocking call returns the partial result. */
        t2.cancel_after_deltas = 2;
        assert_int_equal(gc_generate_stream(c, "a b c d e f g h i j k l [slow]", NULL, trace_cb, &t2, &r), 0);
        assert_int_equal(gc_result_error(r), GC_ECANCELLED);
        assert_int_equal(gc_result_finish(r), GC_FINISH_CANCELLED);
        assert_string_equal(gc_result_finish_string(r), "cancelled");
        assert_true(strlen(gc_result_text(r)) < strlen("You said: a b c d e f g h i j k l [slow]"));
        gc_result_free(r);
        assert_int_equal(gc_client_inflight(c), 0);
        gc_client_free(c);
}

struct counter {
        int finished;
        int errors;
        size_t daemon_hits[2];
};

static int count_cb(gc_request *req, enum gc_event_type type, const gc_event *ev, void *userdata) {
        struct counter *k = userdata;

        if (type == GC_EVENT_FINISHED) {
                k->finished++;
                if (gc_result_error(gc_event_result(ev)))
                        k->errors++;
        }
        return 0;
}

static void test_nonblocking_poll(void **state) {
        gc_client *c = connect_to(&srv);
        struct counter k = {};
        int fd = gc_client_get_fd(c), finished = 0;

        assert_true(fd >= 0);
        assert_int_equal(gc_generate_start(c, "first [slow]", NULL, count_cb, &k, NULL), 0);
        assert_int_equal(gc_chat_start(c, "[{\"role\": \"user\", \"content\": \"second\"}]", NULL, 1, NULL, count_cb,
                                       &k, NULL), 0);
        assert_int_equal(gc_generate_ids_start(c, (const int32_t[]) { 1, 2, 3 }, 3, NULL, count_cb, &k, NULL), 0);
        assert_int_equal(gc_client_inflight(c), 3);
        assert_int_equal(gc_client_flush(c), 0);
        assert_int_equal(gc_client_want_write(c), 0);
        while (finished < 3) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                int r;

                assert_int_equal(poll(&p, 1, 5000), 1);
                r = gc_client_process(c);
                assert_true(r >= 0);
                finished += r;
        }
        assert_int_equal(k.finished, 3);
        assert_int_equal(k.errors, 0);
        assert_int_equal(gc_client_inflight(c), 0);
        /* Nothing pending: processing is a no-op and the fd is not readable. */
        assert_int_equal(gc_client_process(c), 0);
        assert_int_equal(poll(&(struct pollfd) { .fd = fd, .events = POLLIN }, 1, 50), 0);
        gc_client_free(c);
}

static void test_free_with_inflight(void **state) {
        gc_client *c = connect_to(&srv);
        struct trace t = {};

        assert_int_equal(gc_generate_start(c, "a b c d e f [slow]", NULL, trace_cb, &t, NULL), 0);
        gc_client_free(c);
        assert_true(t.done);
        assert_int_equal(t.finished_error, GC_ECANCELLED);
}

static void test_multiple_sockets(void **state) {
        struct server a, b;
        struct counter k = {};
        char paths[300];
        gc_client *c;
        char *json;
        int hits[2] = {};

        server_start(&a, "gpu0", NULL);
        server_start(&b, "gpu1", NULL);
        snprintf(paths, sizeof(paths), "%s:%s", a.path, b.path);
        c = NULL;
        assert_int_equal(gc_client_new(&c, paths, 5000), 0);
        assert_int_equal(gc_client_daemon_count(c), 2);
        assert_string_equal(gc_client_info_str(c, 0, GC_INFO_MODEL), "gpu0");
        assert_string_equal(gc_client_info_str(c, 1, GC_INFO_MODEL), "gpu1");
        /* Requests in flight together are spread evenly (least in flight first). */
        for (int i = 0; i < 6; i++) {
                gc_request *req;

                assert_int_equal(gc_generate_start(c, "spread [slow]", NULL, count_cb, &k, &req), 0);
                hits[gc_request_daemon(req)]++;
        }
        assert_int_equal(hits[0], 3);
        assert_int_equal(hits[1], 3);
        while (k.finished < 6)
                assert_true(gc_client_wait(c, 5000) >= 0);
        /* Status of each daemon separately. */
        assert_int_equal(gc_status(c, 1, &json), 0);
        assert_non_null(strstr(json, "\"gpu1\""));
        gc_free(json);
        assert_int_equal(gc_status(c, 2, &json), -EINVAL);

        /* One daemon gone: the other serves everything. */
        server_stop(&b);
        for (int i = 0; i < 4; i++) {
                gc_result *r;

                assert_int_equal(gc_generate(c, "still here", NULL, &r), 0);
                assert_int_equal(gc_result_error(r), 0);
                gc_result_free(r);
        }
        assert_false(gc_client_daemon_connected(c, 1));
        gc_client_free(c);

        /* A list with a dead path connects to the live one. */
        snprintf(paths, sizeof(paths), "%s/none.sock:%s", tmpdir, a.path);
        assert_int_equal(gc_client_new(&c, paths, 5000), 0);
        assert_false(gc_client_daemon_connected(c, 0));
        assert_true(gc_client_daemon_connected(c, 1));
        gc_client_free(c);
        server_stop(&a);
}


static int daemon_cb(gc_request *req, enum gc_event_type type, const gc_event *ev, void *userdata) {
        struct counter *k = userdata;

        if (type == GC_EVENT_FINISHED) {
                k->finished++;
                if (gc_result_error(gc_event_result(ev)))
                        k->errors++;
                else
                        k->daemon_hits[gc_request_daemon(req)]++;
        }
        return 0;
}

/* With several daemons, a request an overloaded daemon refuses goes to another one. */
static void test_overload_failover(void **state) {
        struct server busy, free_, busy2;
        struct counter k = {};
        char paths[400];
        gc_client *c;
        gc_result *r;

        server_start(&busy, "busy", "--overloaded", NULL);
        server_start(&free_, "free", NULL);
        snprintf(paths, sizeof(paths), "%s:%s", busy.path, free_.path);
        assert_int_equal(gc_client_new(&c, paths, 5000), 0);
        for (int i = 0; i < 6; i++)
                assert_int_equal(gc_generate_start(c, "anyone?", NULL, daemon_cb, &k, NULL), 0);
        while (k.finished < 6)
                assert_true(gc_client_wait(c, 5000) >= 0);
        assert_int_equal(k.errors, 0);
        assert_int_equal(k.daemon_hits[0], 0);
        assert_int_equal(k.daemon_hits[1], 6);
        gc_client_free(c);

        /* When every daemon is overloaded, the caller gets GC_EOVERLOADED. */
        server_start(&busy2, "busy2", "--overloaded", NULL);
        snprintf(paths, sizeof(paths), "%s:%s", busy.path, busy2.path);
        assert_int_equal(gc_client_new(&c, paths, 5000), 0);
        assert_int_equal(gc_generate(c, "anyone?", NULL, &r), GC_EOVERLOADED);
        gc_client_free(c);
        server_stop(&busy2);
        server_stop(&free_);
        server_stop(&busy);
}

static void test_disconnect_mid_stream(void **state) {
        gc_client *c = connect_to(&srv);
        struct trace t = {};
        gc_result *r;

        assert_int_equal(gc_generate_stream(c, "a b c d e [disconnect]", NULL, trace_cb, &t, &r), 0);
        assert_string_equal(t.order, "SDDF");
        assert_int_equal(gc_result_error(r), GC_EDISCONNECTED);
        assert_int_equal(gc_result_finish(r), GC_FINISH_ERROR);
        assert_string_equal(gc_result_text(r), "You said: ");     /* the two deltas before the close */
        gc_result_free(r);
        assert_false(gc_client_daemon_connected(c, 0));
        /* The next request reconnects. */
        assert_int_equal(gc_generate(c, "again", NULL, &r), 0);
        assert_string_equal(gc_result_text(r), "You said: again");
        gc_result_free(r);
        gc_client_free(c);
}

/* A daemon that sends undecodable bytes: the request fails with GC_EPROTO, nothing crashes or leaks. */
static void test_broken_daemon(void **state) {
        static const char *const prompts[] = { "x [garbage]", "x [hugeframe]" };

        for (size_t i = 0; i < 2; i++) {
                gc_client *c = connect_to(&srv);
                struct trace t = {};
                gc_result *r;

                assert_int_equal(gc_generate_stream(c, prompts[i], NULL, trace_cb, &t, &r), GC_EPROTO);
                assert_string_equal(t.order, "F");
                assert_int_equal(t.finished_error, GC_EPROTO);
                assert_false(gc_client_daemon_connected(c, 0));
                /* The client reconnects for the next request. */
                assert_int_equal(gc_generate(c, "fine", NULL, &r), 0);
                assert_string_equal(gc_result_text(r), "You said: fine");
                gc_result_free(r);
                gc_client_free(c);
        }
}

static void test_status_tokenize_score(void **state) {
        gc_client *c = connect_to(&srv);
        int32_t *ids;
        char *text, *json;
        size_t n;
        gc_params *p;
        gc_result *r;
        json_t *j;
        int32_t tok;
        float lp;

        assert_int_equal(gc_status(c, 0, &json), 0);
        j = json_loads(json, 0, NULL);
        assert_non_null(j);
        assert_string_equal(json_string_value(json_object_get(j, "state")), "ready");
        assert_true(json_is_object(json_object_get(j, "queue")));
        json_decref(j);
        gc_free(json);

        assert_int_equal(gc_tokenize(c, "Hi!", 0, &ids, &n), 0);
        assert_int_equal(n, 3);
        assert_int_equal(ids[0], 'H');
        assert_int_equal(ids[2], '!');
        assert_int_equal(gc_detokenize(c, ids, n, 0, &text), 0);
        assert_string_equal(text, "Hi!");
        gc_free(text);
        gc_free(ids);
        assert_int_equal(gc_tokenize(c, "", 1, &ids, &n), 0);
        assert_int_equal(n, 0);
        assert_null(ids);
        /* The server refuses ids that are not UTF-8; the library maps it. */
        assert_int_equal(gc_detokenize(c, (const int32_t[]) { 0xC3 }, 1, 0, &text), GC_EBADREQUEST);

        assert_int_equal(gc_params_new(&p), 0);
        assert_int_equal(gc_params_set_logprobs(p, 2), 0);
        assert_int_equal(gc_score(c, "abcd", p, &r), 0);
        gc_result_token_ids(r, &n);
        assert_int_equal(n, 4);
        assert_int_equal(gc_result_logprob_count(r), 3);
        assert_int_equal(gc_result_logprob(r, 0, &tok, &lp), 0);
        assert_int_equal(tok, 'b');
        assert_true(lp < 0);
        assert_int_equal(gc_result_top_logprob_count(r, 0), 2);
        assert_int_equal(gc_result_top_logprob(r, 0, 1, &tok, &lp), 0);
        assert_int_equal(gc_result_top_logprob(r, 0, 2, &tok, &lp), -ERANGE);
        assert_int_equal(gc_result_logprob(r, 3, &tok, &lp), -ERANGE);
        gc_result_free(r);

        /* Logprobs of a generation: one entry per output token. */
        assert_int_equal(gc_params_set_logprobs(p, 0), 0);
        assert_int_equal(gc_generate_stream(c, "x y", p, count_cb, &(struct counter) {}, &r), 0);
        assert_int_equal(gc_result_logprob_count(r), gc_result_completion_tokens(r));
        gc_result_free(r);
        gc_params_free(p);
        gc_client_free(c);
}


static void test_limits(void **state) {
        struct server s;
        struct trace t[3] = {};
        gc_client *c;
        gc_result *r;
        char big[300];

        server_start(&s, "small", "--max-frame", "256", "--max-inflight", "2", NULL);
        c = connect_to(&s);
        assert_int_equal(gc_client_info_num(c, 0, GC_INFO_MAX_FRAME_BYTES), 256);
        /* A request larger than the daemon's frame limit is refused before it is sent. */
        memset(big, 'a', sizeof(big) - 1);
        big[sizeof(big) - 1] = 0;
        assert_int_equal(gc_generate(c, big, NULL, &r), GC_EFRAMETOOLARGE);
        assert_int_equal(gc_client_inflight(c), 0);
        /* The connection's max_inflight is 2: the third request in flight is refused as overloaded. */
        for (int i = 0; i < 3; i++)
                assert_int_equal(gc_generate_start(c, "busy [slow]", NULL, trace_cb, &t[i], NULL), 0);
        while (!t[0].done || !t[1].done || !t[2].done)
                assert_true(gc_client_wait(c, 5000) >= 0);
        assert_int_equal(t[0].finished_error, 0);
        assert_int_equal(t[1].finished_error, 0);
        assert_int_equal(t[2].finished_error, GC_EOVERLOADED);
        assert_string_equal(t[2].order, "F");
        gc_client_free(c);
        server_stop(&s);
}

/* Read what fd has into out[len..cap-1) while it becomes readable within timeout_ms; the new length. */
static size_t drain(int fd, char *out, size_t cap, size_t len, int timeout_ms) {
        for (;;) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                ssize_t n;

                if (len + 1 >= cap || poll(&p, 1, timeout_ms) <= 0)
                        return len;
                n = read(fd, out + len, cap - 1 - len);
                if (n <= 0)
                        return len;
                len += (size_t) n;
        }
}

/* gemma4ctl chat on a terminal: line editing REPL, /commands, streaming, Ctrl-C cancels the answer only. */
static void test_ctl_chat_repl(void **state) {
        static const char *const steps[] = {
                "hello\r", "/thinking on\r", "again\r", "/set temperature 0.5\r", "/set top_p 7\r", "/set\r",
                "/save HIST\r", "/reset\r", "/load HIST\r", "/system be brief\r",
                "long [slow] a b c d e f g h i j k l m n o p q r s t u v w x y z a b c d e f g h i j\r",
                "\003", "half a line\003", "after\r", "/bogus\r", "/quit\r",
        };
        char out[65536], hist[128];
        size_t len = 0;
        int master, status;
        pid_t pid;

        snprintf(hist, sizeof(hist), "%s/repl.json", tmpdir);
        pid = forkpty(&master, NULL, NULL, NULL);
        assert_true(pid >= 0);
        if (pid == 0) {
                unblock_signals();
                setenv("GEMMA4D_SOCKET", srv.path, 1);
                setenv("HOME", tmpdir, 1);
                setenv("TERM", "dumb", 1);
                execl(ctl_bin, ctl_bin, "chat", (char *) NULL);
                _exit(127);
        }
        for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
                char line[256], *at;

                snprintf(line, sizeof(line), "%s", steps[i]);
                if ((at = strstr(line, "HIST"))) {
                        char rest[256];

                        snprintf(rest, sizeof(rest), "%s", at + 4);
                        snprintf(at, sizeof(line) - (size_t) (at - line), "%s%s", hist, rest);
                }
                /* Let the answer before a Ctrl-C start streaming; give every other line time to run. */
                usleep(strchr(steps[i], '\003') ? 300000 : 100000);
                assert_int_equal(write(master, line, strlen(line)), (ssize_t) strlen(line));
                /* Drain output as we go so the child never blocks on a full pty. */
                len = drain(master, out, sizeof(out), len, 0);
        }
        len = drain(master, out, sizeof(out), len, 5000);     /* until the child closes the pty */
        out[len] = 0;
        close(master);
        waitpid(pid, &status, 0);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        assert_non_null(strstr(out, "Connected to main"));
        assert_non_null(strstr(out, "You said: hello"));
        assert_non_null(strstr(out, "thinking on"));
        assert_non_null(strstr(out, "The user wrote 5 bytes."));
        assert_non_null(strstr(out, "You said: again"));
        assert_non_null(strstr(out, "bad parameter or value: top_p 7"));
        assert_non_null(strstr(out, "{\"temperature\":\"0.5\"}"));
        assert_non_null(strstr(out, "saved 4 messages"));
        assert_non_null(strstr(out, "conversation cleared"));
        assert_non_null(strstr(out, "loaded 4 messages"));
        assert_non_null(strstr(out, "system prompt set"));
        assert_non_null(strstr(out, "[cancelled]"));
        /* The long answer was cut (the terminal echoes the question, so look for the whole answer). */
        assert_null(strstr(out, "You said: long [slow] a b c d e f g h i j k l m n o p q r s t u v w x y z a b c"));
        assert_non_null(strstr(out, "You said: after"));
        assert_null(strstr(out, "You said: half a line"));      /* Ctrl-C at the prompt drops the line */
        assert_non_null(strstr(out, "unknown command /bogus"));
}

/* ---- the man page example ---- */

static char *slurp(const char *path) {
        FILE *f = fopen(path, "r");
        char *buf;
        long len;

        assert_non_null(f);
        fseek(f, 0, SEEK_END);
        len = ftell(f);
        fseek(f, 0, SEEK_SET);
        buf = calloc(1, (size_t) len + 1);
        assert_non_null(buf);
        assert_int_equal(fread(buf, 1, (size_t) len, f), (size_t) len);
        fclose(f);
        return buf;
}

static void test_example_matches_man_page(void **state) {
        char *page = slurp(man_page), *src = slurp(example_src);
        char *start = strstr(page, "\n# EXAMPLE\n"), *end;

        assert_non_null(start);
        start = strstr(start, "\n```\n");
        assert_non_null(start);
        start += 5;
        end = strstr(start, "```\n");
        assert_non_null(end);
        *end = 0;
        /* scdoc needs backslashes doubled in literal blocks; otherwise the text is the file's. */
        for (char *r = start, *w = start;; r++, w++) {
                if (r[0] == '\\' && r[1] == '\\')
                        r++;
                *w = *r;
                if (!*r)
                        break;
        }
        assert_string_equal(start, src);
        free(page);
        free(src);
}

static void test_example_runs(void **state) {
        struct run r;

        run_cmd(&r, srv.path, NULL, 0, (const char *[]) { example_bin, "tell me", NULL });
        assert_int_equal(r.status, 0);
        assert_non_null(strstr(r.out, "model main, context 8192 tokens"));
        assert_non_null(strstr(r.out, "You said: tell me"));
        assert_non_null(strstr(r.out, "[stop: 7 prompt + 4 output tokens"));
        run_cmd(&r, "/nonexistent.sock", NULL, 0, (const char *[]) { example_bin, NULL });
        assert_int_equal(r.status, 1);
        assert_non_null(strstr(r.err, "not running"));
}

/* ---- gemma4ctl ---- */

static void test_ctl_exit_codes(void **state) {
        struct run r;
        char missing[128];

        snprintf(missing, sizeof(missing), "%s/missing.sock", tmpdir);
        run_cmd(&r, missing, NULL, 0, CTL("generate", "hi"));
        assert_int_equal(r.status, 3);
        assert_non_null(strstr(r.err, "not running"));
        run_cmd(&r, srv.path, NULL, 0, CTL("generate", "x [overloaded]"));
        assert_int_equal(r.status, 4);
        assert_non_null(strstr(r.err, "queue full"));
        run_cmd(&r, srv.path, NULL, 0, CTL("generate", "x [badrequest]"));
        assert_int_equal(r.status, 5);
        run_cmd(&r, srv.path, NULL, 0, CTL("generate", "x [toolong]"));
        assert_int_equal(r.status, 5);
        run_cmd(&r, srv.path, NULL, 0, CTL("generate", "x [deadline]"));
        assert_int_equal(r.status, 7);
        run_cmd(&r, srv.path, NULL, 0, CTL("generate", "x [notready]"));
        assert_int_equal(r.status, 9);
        run_cmd(&r, srv.path, NULL, 0, CTL("generate", "x [internal]"));
        assert_int_equal(r.status, 10);
        run_cmd(&r, srv.path, NULL, 0, CTL("generate", "--temperature", "hot", "x"));
        assert_int_equal(r.status, 2);
        run_cmd(&r, srv.path, NULL, 0, CTL("frobnicate"));
        assert_int_equal(r.status, 2);
        /* --socket wins over the environment. */
        run_cmd(&r, missing, NULL, 0, CTL("--socket", srv.path, "generate", "via option"));
        assert_int_equal(r.status, 0);
        assert_string_equal(r.out, "You said: via option\n");
        /* Ctrl-C cancels the answer: exit code 6. */
        run_cmd(&r, srv.path, NULL, 300, CTL("generate", "a b c d e f g h i j k l m n o p q r s t u v w x y z [slow]"));
        assert_int_equal(r.status, 6);
}

static void test_ctl_version_mismatch(void **state) {
        struct server s;
        struct run r;

        server_start(&s, "future", "--reject-version", NULL);
        run_cmd(&r, s.path, NULL, 0, CTL("status"));
        assert_int_equal(r.status, 8);
        server_stop(&s);
}

static void test_ctl_generate(void **state) {
        struct run r;
        json_t *j;

        run_cmd(&r, srv.path, "from stdin", 0, CTL("generate", "--max-tokens", "100"));
        assert_int_equal(r.status, 0);
        assert_string_equal(r.out, "You said: from stdin\n");
        run_cmd(&r, srv.path, NULL, 0, CTL("--json", "generate", "--stop", "b", "a b c"));
        assert_int_equal(r.status, 0);
        j = json_loads(r.out, 0, NULL);
        assert_non_null(j);
        assert_string_equal(json_string_value(json_object_get(j, "text")), "You said: a ");
        assert_string_equal(json_string_value(json_object_get(j, "finish_reason")), "stop");
        assert_true(json_is_null(json_object_get(j, "error")));
        assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "usage"), "prompt_tokens")), 5);
        json_decref(j);
}

static void test_ctl_chat_pipe(void **state) {
        struct run r;
        json_t *j;
        char hist[160];
        FILE *f;

        run_cmd(&r, srv.path, "hello there\n", 0, CTL("chat"));
        assert_int_equal(r.status, 0);
        assert_string_equal(r.out, "You said: hello there\n");
        /* Thinking is not mixed into the piped answer; --json has both. */
        run_cmd(&r, srv.path, "hi", 0, CTL("chat", "--thinking", "--json"));
        assert_int_equal(r.status, 0);
        j = json_loads(r.out, 0, NULL);
        assert_non_null(j);
        assert_string_equal(json_string_value(json_object_get(j, "text")), "You said: hi");
        assert_string_equal(json_string_value(json_object_get(j, "reasoning")), "The user wrote 2 bytes.");
        json_decref(j);
        /* A saved conversation: the prompt continues it. */
        snprintf(hist, sizeof(hist), "%s/hist.json", tmpdir);
        f = fopen(hist, "w");
        assert_non_null(f);
        fputs("[{\"role\": \"user\", \"content\": \"first\"}, {\"role\": \"assistant\", \"content\": \"ok\"}]", f);
        fclose(f);
        run_cmd(&r, srv.path, "second", 0, CTL("chat", "--load", hist, "--system", "terse"));
        assert_int_equal(r.status, 0);
        assert_string_equal(r.out, "You said: second\n");
        /* A broken history file is a usage error naming the file. */
        f = fopen(hist, "w");
        fputs("{\"role\": 1}", f);
        fclose(f);
        run_cmd(&r, srv.path, "x", 0, CTL("chat", "--load", hist));
        assert_int_equal(r.status, 2);
        assert_non_null(strstr(r.err, hist));
        run_cmd(&r, srv.path, "x [overloaded]", 0, CTL("chat"));
        assert_int_equal(r.status, 4);
}

static void test_ctl_status(void **state) {
        struct server s;
        struct run r;
        json_t *j, *d;

        run_cmd(&r, srv.path, NULL, 0, CTL("--json", "status"));
        assert_int_equal(r.status, 0);
        j = json_loads(r.out, 0, NULL);
        assert_non_null(j);
        d = json_array_get(json_object_get(j, "daemons"), 0);
        assert_string_equal(json_string_value(json_object_get(d, "socket")), srv.path);
        assert_true(json_is_true(json_object_get(d, "connected")));
        assert_string_equal(json_string_value(json_object_get(json_object_get(d, "welcome"), "model")), "main");
        assert_int_equal(json_integer_value(json_object_get(json_object_get(d, "welcome"), "max_model_len")), 8192);
        assert_string_equal(json_string_value(json_object_get(json_object_get(d, "status"), "state")), "ready");
        json_decref(j);
        run_cmd(&r, srv.path, NULL, 0, CTL("status"));
        assert_int_equal(r.status, 0);
        assert_non_null(strstr(r.out, ": ready\n"));
        assert_non_null(strstr(r.out, "max_model_len"));

        /* A loading daemon: progress bar, exit 9 without --wait; --wait follows it to ready. */
        server_start(&s, "loading", "--loading-steps", "4", NULL);
        run_cmd(&r, s.path, NULL, 0, CTL("status"));
        assert_int_equal(r.status, 9);
        assert_non_null(strstr(r.out, "loading [......"));
        assert_non_null(strstr(r.out, "]   0% weights"));
        run_cmd(&r, s.path, NULL, 0, CTL("generate", "too early"));
        assert_int_equal(r.status, 9);
        run_cmd(&r, s.path, NULL, 0, CTL("status", "--wait"));
        assert_int_equal(r.status, 0);
        assert_non_null(strstr(r.out, "loading ["));
        assert_non_null(strstr(r.out, ": ready\n"));
        server_stop(&s);

        /* --wait also waits for a daemon that does not listen yet. */
        struct server late = { 0 };
        pid_t pid;
        int st;

        snprintf(late.path, sizeof(late.path), "%s/late.sock", tmpdir);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                int null = open("/dev/null", O_WRONLY);

                unblock_signals();
                dup2(null, STDOUT_FILENO);        /* its READY line must not land in the TAP output */
                usleep(700 * 1000);
                execl(server_bin, server_bin, "--socket", late.path, "--name", "late", (char *) NULL);
                _exit(127);
        }
        run_cmd(&r, late.path, NULL, 0, CTL("status", "--wait"));
        kill(pid, SIGTERM);
        waitpid(pid, &st, 0);
        assert_int_equal(r.status, 0);
        assert_non_null(strstr(r.err, "waiting for the daemon to listen"));
        assert_non_null(strstr(r.out, ": ready\n"));
}

static void test_ctl_tokenize(void **state) {
        struct run r;
        json_t *j;

        run_cmd(&r, srv.path, NULL, 0, CTL("tokenize", "AB"));
        assert_int_equal(r.status, 0);
        assert_string_equal(r.out, "65 66\n");
        run_cmd(&r, srv.path, NULL, 0, CTL("tokenize", "--json", "AB"));
        j = json_loads(r.out, 0, NULL);
        assert_int_equal(json_integer_value(json_object_get(j, "count")), 2);
        json_decref(j);
        run_cmd(&r, srv.path, NULL, 0, CTL("detokenize", "72", "105"));
        assert_int_equal(r.status, 0);
        assert_string_equal(r.out, "Hi\n");
        run_cmd(&r, srv.path, NULL, 0, CTL("detokenize", "x"));
        assert_int_equal(r.status, 2);
}

static void test_ctl_bench(void **state) {
        static const char *const keys[] = { "p50", "p90", "p99", "mean", "min", "max", "count" };
        struct run r;
        json_t *j, *cfg, *tp;

        run_cmd(&r, srv.path, NULL, 0, CTL("--json", "bench", "-c", "3", "-p", "32", "-o", "8", "-n", "2",
                                           "-r", "3", "-w", "1"));
        assert_int_equal(r.status, 0);
        j = json_loads(r.out, 0, NULL);
        assert_non_null(j);
        cfg = json_object_get(j, "config");
        assert_int_equal(json_integer_value(json_object_get(cfg, "clients")), 3);
        assert_int_equal(json_integer_value(json_object_get(cfg, "prompt_tokens")), 32);
        assert_string_equal(json_string_value(json_object_get(cfg, "model")), "main");
        /* 3 clients x 2 requests x 3 measured runs; the warm-up run is not counted. */
        assert_int_equal(json_integer_value(json_object_get(j, "requests")), 18);
        assert_int_equal(json_integer_value(json_object_get(j, "errors")), 0);
        assert_true(json_real_value(json_object_get(j, "output_tokens_mean")) == 8.0);
        tp = json_object_get(j, "throughput_tok_s");
        assert_int_equal(json_array_size(json_object_get(tp, "runs")), 3);
        assert_true(json_real_value(json_object_get(tp, "median")) > 0);
        assert_true(json_real_value(json_object_get(tp, "min")) <= json_real_value(json_object_get(tp, "median")));
        assert_true(json_real_value(json_object_get(tp, "max")) >= json_real_value(json_object_get(tp, "median")));
        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
                assert_non_null(json_object_get(json_object_get(j, "ttft_ms"), keys[i]));
                assert_non_null(json_object_get(json_object_get(j, "tpot_ms"), keys[i]));
                assert_non_null(json_object_get(json_object_get(j, "latency_ms"), keys[i]));
        }
        assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "ttft_ms"), "count")), 18);
        assert_true(json_real_value(json_object_get(json_object_get(j, "ttft_ms"), "p50")) <=
                    json_real_value(json_object_get(json_object_get(j, "ttft_ms"), "p99")));
        json_decref(j);

        run_cmd(&r, srv.path, NULL, 0, CTL("bench", "-c", "0"));
        assert_int_equal(r.status, 2);
}

int main(int argc, char **argv) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_version_and_errors),
                cmocka_unit_test(test_params),
                cmocka_unit_test(test_handshake),
                cmocka_unit_test(test_version_mismatch),
                cmocka_unit_test(test_not_running),
                cmocka_unit_test(test_env_override),
                cmocka_unit_test(test_multiple_sockets),
                cmocka_unit_test(test_overload_failover),
                cmocka_unit_test(test_ctl_version_mismatch),
                cmocka_unit_test(test_example_matches_man_page),
                /* These use the server of srv_setup. */
                cmocka_unit_test(test_generate_blocking),
                cmocka_unit_test(test_chat_blocking),
                cmocka_unit_test(test_stream_order),
                cmocka_unit_test(test_error_mapping),
                cmocka_unit_test(test_cancel),
                cmocka_unit_test(test_nonblocking_poll),
                cmocka_unit_test(test_free_with_inflight),
                cmocka_unit_test(test_limits),
                cmocka_unit_test(test_disconnect_mid_stream),
                cmocka_unit_test(test_broken_daemon),
                cmocka_unit_test(test_status_tokenize_score),
                cmocka_unit_test(test_example_runs),
                cmocka_unit_test(test_ctl_exit_codes),
                cmocka_unit_test(test_ctl_generate),
                cmocka_unit_test(test_ctl_chat_pipe),
                cmocka_unit_test(test_ctl_chat_repl),
                cmocka_unit_test(test_ctl_status),
                cmocka_unit_test(test_ctl_tokenize),
                cmocka_unit_test(test_ctl_bench),
        };
        char cmd[128];
        int fails;

        if (argc != 6) {
                fprintf(stderr, "usage: %s TEST-SERVER GEMMA4CTL EXAMPLE MAN-PAGE EXAMPLE-SOURCE\n", argv[0]);
                return 2;
        }
        server_bin = argv[1];
        ctl_bin = argv[2];
        example_bin = argv[3];
        man_page = argv[4];
        example_src = argv[5];
        signal(SIGPIPE, SIG_IGN);
        atexit(kill_live_servers);
        snprintf(tmpdir, sizeof(tmpdir), "/tmp/gc-test-XXXXXX");
        if (!mkdtemp(tmpdir)) {
                perror("mkdtemp");
                return 1;
        }
        unsetenv("GEMMA4D_SOCKET");
        if (getenv("GC_TEST_FILTER"))        /* e.g. GC_TEST_FILTER='test_ctl_*' */
                cmocka_set_test_filter(getenv("GC_TEST_FILTER"));
        fails = cmocka_run_group_tests_name("client", tests, srv_setup, srv_teardown);
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0)
                fprintf(stderr, "could not remove %s\n", tmpdir);
        return fails ? 1 : 0;
}
