/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Issue 7: the systemd protocol of the real gemma4d, without systemd. The test plays the service
 * manager: it owns the NOTIFY_SOCKET (an AF_UNIX datagram socket), sets WATCHDOG_USEC/WATCHDOG_PID,
 * passes a listening socket through LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES, and sends SIGHUP/SIGTERM.
 * A sticky device error (exit non-zero for a restart) cannot happen on the cpu backend: not tested here.
 */
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "proto.h"

#define VOCAB 512
#define BASE_YAML "limits:\n  max_model_len: 256\n  max_num_seqs: 4\n  max_batched_tokens: 256\n"

static void write_config(struct daemon *d, const char *yaml) {
        char tmp[400];
        snprintf(tmp, sizeof tmp, "%s.new", d->config);
        FILE *f = fopen(tmp, "w");
        assert_non_null(f);
        fputs(yaml, f);
        fclose(f);
        assert_int_equal(rename(tmp, d->config), 0);
}

static int wait_log(struct daemon *d, const char *s, double timeout_s) {
        double end = h_now() + h_timeout(timeout_s);
        while (h_now() < end) {
                if (daemon_log_contains(d, s))
                        return 0;
                usleep(20000);
        }
        return -ETIMEDOUT;
}

/* ---- the notification sequence: STATUS with progress, READY, WATCHDOG, RELOADING, STOPPING ---- */

static void test_notify_sequence(void **state) {
        struct notify n;
        struct daemon d;
        char env_sock[400], log[16384] = "", buf[4096];
        (void) state;

        assert_int_equal(notify_open(&n, h_tmpdir()), 0);
        snprintf(env_sock, sizeof env_sock, "NOTIFY_SOCKET=%s", n.path);
        const char *env[] = { env_sock, "WATCHDOG_USEC=400000", "WATCHDOG_PID=self", NULL };
        struct daemon_opts o = { .model = h_small_model(), .yaml = BASE_YAML, .env = env, .listen_fd = -1,
                                 .no_wait = true };
        assert_int_equal(daemon_start(&d, &o), 0);

        /* boot: STATUS=... (N%) messages with non-decreasing percentages, then READY=1 */
        int last_pct = -1, n_status = 0;
        bool ready = false;
        double end = h_now() + h_timeout(H_BOOT_TIMEOUT_S);
        while (!ready && h_now() < end) {
                ssize_t got = notify_recv(&n, buf, sizeof buf, 5);
                if (got < 0)
                        continue;
                strncat(log, buf, sizeof log - strlen(log) - 2);
                strcat(log, "|");
                if (strstr(buf, "READY=1"))
                        ready = true;
                else if (strncmp(buf, "STATUS=", 7) == 0) {
                        const char *pct = strrchr(buf, '(');
                        int p = -1;
                        assert_non_null(pct);
                        assert_int_equal(sscanf(pct, "(%d%%)", &p), 1);
                        assert_true(p >= last_pct && p <= 100);
                        last_pct = p;
                        n_status++;
                }
        }
        print_message("# boot notifications: %s\n", log);
        assert_true(ready);
        assert_true(n_status >= 2);
        assert_true(last_pct >= 90);

        /* WATCHDOG=1 while healthy (every WATCHDOG_USEC/2) */
        assert_int_equal(notify_wait_for(&n, "WATCHDOG=1", 5, NULL, 0), 0);
        assert_int_equal(notify_wait_for(&n, "WATCHDOG=1", 5, NULL, 0), 0);

        /* SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1 */
        log[0] = 0;
        daemon_kill(&d, SIGHUP);
        assert_int_equal(notify_wait_for(&n, "RELOADING=1", 30, log, sizeof log), 0);
        assert_non_null(strstr(log, "MONOTONIC_USEC="));
        {
                const char *m = strstr(log, "MONOTONIC_USEC=");
                unsigned long long usec = strtoull(m + 15, NULL, 10);
                struct timespec ts;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                unsigned long long now = (unsigned long long) ts.tv_sec * 1000000ull + (unsigned long long) ts.tv_nsec / 1000;
                assert_true(usec > 0 && usec <= now && now - usec < 60000000ull);
        }
        assert_int_equal(notify_wait_for(&n, "READY=1", 30, log, sizeof log), 0);
        print_message("# reload notifications: %s\n", log);

        /* SIGTERM: STOPPING=1, exit 0 */
        log[0] = 0;
        daemon_kill(&d, SIGTERM);
        assert_int_equal(notify_wait_for(&n, "STOPPING=1", 30, log, sizeof log), 0);
        assert_int_equal(daemon_wait_exit(&d, 60), 0);
        assert_int_equal(d.exit_status, 0);
        assert_int_equal(daemon_stop(&d), 0);
        notify_close(&n);
}

/* ---- socket activation ---- */

static void test_socket_activation(void **state) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        struct daemon d;
        char path[400];
        struct stat st;
        (void) state;

        snprintf(path, sizeof path, "%s/activated.sock", h_tmpdir());
        assert_true(strlen(path) < sizeof sa.sun_path);
        strcpy(sa.sun_path, path);
        (void) unlink(path);
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        assert_true(fd >= 0);
        assert_int_equal(bind(fd, (struct sockaddr *) &sa, sizeof sa), 0);
        assert_int_equal(listen(fd, 16), 0);

        /* a client connects and sends its request before the daemon even runs: it waits in the backlog */
        struct sockaddr_un ca = sa;
        int early = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(early >= 0);
        assert_int_equal(connect(early, (struct sockaddr *) &ca, sizeof ca), 0);
        raw_hello(early);
        int32_t ep[10];
        h_prompt(ep, 10, 6, VOCAB);
        raw_generate(early, 1, ep, 10, 5);

        struct daemon_opts o = { .model = h_small_model(), .yaml = BASE_YAML, .listen_fd = fd, .no_wait = true };
        assert_int_equal(daemon_start(&d, &o), 0);
        close(fd);      /* the daemon has its own copy, as under systemd */
        char own[320];
        snprintf(own, sizeof own, "%s", d.sock);
        snprintf(d.sock, sizeof d.sock, "%s", path);
        assert_int_equal(daemon_wait_ready(&d), 0);
        assert_true(daemon_log_contains(&d, "from systemd"));
        /* it did not bind socket.path itself */
        assert_int_equal(stat(own, &st), -1);

        {
                struct proto_msg m;
                int code = -1, reason = -1;
                uint32_t n_tok = 0;
                assert_int_equal(raw_next_event(early, &m), PROTO_TYPE_WELCOME);
                proto_msg_done(&m);
                assert_int_equal(raw_wait_request_end(early, 1, &code, &reason, &n_tok), PROTO_TYPE_FINISHED);
                assert_true(reason == PROTO_REASON_LENGTH || reason == PROTO_REASON_STOP);
                close(early);
        }
        gc_client *c = h_connect(&d);
        int32_t p[12];
        struct h_req r;
        h_prompt(p, 12, 5, VOCAB);
        r = (struct h_req) { .prompt = p, .n_prompt = 12, .max_tokens = 8 };
        assert_int_equal(h_req_run(c, &r), 0);
        assert_int_equal(r.err, 0);
        assert_true(r.n_tokens > 0 || r.finish == GC_FINISH_STOP);
        h_req_done(&r);
        gc_client_free(c);
        assert_int_equal(daemon_stop(&d), 0);
        /* the socket file belongs to the socket unit: still there after the daemon stopped */
        assert_int_equal(stat(path, &st), 0);
        assert_true(S_ISSOCK(st.st_mode));
        (void) unlink(path);
}

/* ---- SIGTERM drains: requests finish or are cancelled, exit 0 ---- */

static void test_sigterm_drain(void **state) {
        struct daemon d;
        enum { N_LONG = 3, N_SHORT = 3 };
        int32_t p[N_LONG + N_SHORT][16];
        struct h_req r[N_LONG + N_SHORT];
        struct h_req *rp[N_LONG + N_SHORT];
        (void) state;

        struct daemon_opts o = { .model = h_small_model(), .listen_fd = -1,
                                 .yaml = "limits:\n  max_model_len: 2048\n  max_num_seqs: 8\n"
                                         "  max_batched_tokens: 512\nshutdown:\n  drain_seconds: 1\n" };
        assert_int_equal(daemon_start(&d, &o), 0);
        gc_client *c = h_connect(&d);
        for (int i = 0; i < N_LONG + N_SHORT; i++) {
                h_prompt(p[i], 16, 40 + (uint32_t) i, VOCAB);
                /* long ones cannot finish within drain_seconds; short ones can */
                r[i] = (struct h_req) { .prompt = p[i], .n_prompt = 16, .max_tokens = i < N_LONG ? 2000 : 3 };
                rp[i] = &r[i];
                assert_int_equal(h_req_start(c, &r[i]), 0);
        }
        double end = h_now() + h_timeout(30);
        while (!r[0].t_first && h_now() < end)
                (void) gc_client_wait(c, 10);
        assert_true(r[0].t_first > 0);
        double t_term = h_now();
        daemon_kill(&d, SIGTERM);
        assert_int_equal(h_run_all(&c, 1, rp, N_LONG + N_SHORT, 60), 0);
        int cancelled = 0, finished = 0;
        for (int i = 0; i < N_LONG + N_SHORT; i++) {
                if (r[i].err == GC_ECANCELLED) {
                        assert_int_equal(r[i].finish, GC_FINISH_CANCELLED);
                        cancelled++;
                } else {
                        if (r[i].err != 0)
                                fail_msg("request %d ended with %s, not finished or cancelled", i,
                                         gc_strerror(r[i].err));
                        finished++;
                }
        }
        print_message("# drain: %d finished, %d cancelled, %.2f s after SIGTERM\n", finished, cancelled,
                      h_now() - t_term);
        assert_true(cancelled >= 1);
        assert_true(finished >= N_SHORT);
        assert_int_equal(daemon_wait_exit(&d, 60), 0);
        assert_int_equal(d.exit_status, 0);
        assert_true(daemon_log_contains(&d, "drain"));
        for (int i = 0; i < N_LONG + N_SHORT; i++)
                h_req_done(&r[i]);
        gc_client_free(c);
        assert_int_equal(daemon_stop(&d), 0);
}

/* ---- SIGHUP: a good configuration applies live, a bad one is rejected ---- */

/* Start n requests on one connection at once; returns how many were refused as overloaded. */
static int count_overloaded(gc_client *c, int n, uint32_t max_tokens) {
        int32_t p[16];
        struct h_req r[16];
        struct h_req *rp[16];
        int over = 0;
        h_prompt(p, 16, 11, VOCAB);
        for (int i = 0; i < n; i++) {
                r[i] = (struct h_req) { .prompt = p, .n_prompt = 16, .max_tokens = max_tokens };
                rp[i] = &r[i];
                assert_int_equal(h_req_start(c, &r[i]), 0);
        }
        assert_int_equal(h_run_all(&c, 1, rp, (size_t) n, H_REQUEST_TIMEOUT_S), 0);
        for (int i = 0; i < n; i++) {
                if (r[i].err == GC_EOVERLOADED)
                        over++;
                else
                        assert_int_equal(r[i].err, 0);
                h_req_done(&r[i]);
        }
        return over;
}

static void test_sighup_reload(void **state) {
        struct daemon d;
        (void) state;

        static const char *good_a =
                "limits:\n  max_model_len: 256\n  max_num_seqs: 1\n  max_batched_tokens: 256\n"
                "  max_inflight_per_connection: 1\n  max_queue: 100\nlog:\n  level: info\n";
        static const char *good_b =
                "limits:\n  max_model_len: 128\n  max_num_seqs: 1\n  max_batched_tokens: 256\n"
                "  max_inflight_per_connection: 8\n  max_queue: 100\nlog:\n  level: debug\n";
        static const char *good_c =
                "limits:\n  max_model_len: 256\n  max_num_seqs: 1\n  max_batched_tokens: 256\n"
                "  max_inflight_per_connection: 8\n  max_queue: 1\nscheduler:\n  aging_ms: 500\n"
                "log:\n  level: debug\n";
        struct daemon_opts o = { .model = h_small_model(), .yaml = good_a, .listen_fd = -1 };
        assert_int_equal(daemon_start(&d, &o), 0);
        gc_client *c = h_connect(&d);

        /* before: one request in flight per connection */
        assert_int_equal(count_overloaded(c, 3, 8), 2);
        assert_false(daemon_log_contains(&d, "debug:"));

        /* a good configuration: more in flight, debug logging */
        write_config(&d, good_b);
        daemon_kill(&d, SIGHUP);
        assert_int_equal(wait_log(&d, "configuration reloaded", 30), 0);
        /* max_model_len needs a restart: named in the log, not applied */
        assert_true(daemon_log_contains(&d, "need a restart"));
        assert_true(daemon_log_contains(&d, "limits.max_model_len"));
        assert_int_equal(count_overloaded(c, 3, 8), 0);
        gc_client *c2 = h_connect(&d);          /* its hello is logged at debug level */
        assert_int_equal(gc_client_info_num(c2, 0, GC_INFO_MAX_MODEL_LEN), 256);
        assert_int_equal(wait_log(&d, "debug:", 30), 0);
        gc_client_free(c2);

        /* limits.max_queue is the engine's: applied live too (one running, one waiting, the rest refused) */
        write_config(&d, good_c);
        daemon_kill(&d, SIGHUP);
        double end = h_now() + h_timeout(30);
        int over = 0;
        while (over == 0 && h_now() < end)
                over = count_overloaded(c, 6, 30);
        print_message("# after max_queue 100 -> 1: %d of 6 refused\n", over);
        assert_true(over >= 3);

        /* a bad configuration is rejected and the running one stays */
        write_config(&d, "limits:\n  max_inflight_per_connection: [\n");
        daemon_kill(&d, SIGHUP);
        assert_int_equal(wait_log(&d, "keeping the running one", 30), 0);
        write_config(&d, "limits:\n  max_inflight_per_connection: 0\n");
        daemon_kill(&d, SIGHUP);
        assert_true(daemon_alive(&d));
        usleep(200000);
        assert_int_equal(count_overloaded(c, 1, 4), 0);
        /* max_queue 1 still holds after the rejected reloads, and 8 in flight are still allowed */
        int32_t p[8];
        struct h_req r;
        h_prompt(p, 8, 2, VOCAB);
        r = (struct h_req) { .prompt = p, .n_prompt = 8, .max_tokens = 4 };
        assert_int_equal(h_req_run(c, &r), 0);
        assert_int_equal(r.err, 0);
        h_req_done(&r);
        assert_true(daemon_alive(&d));
        gc_client_free(c);
        assert_int_equal(daemon_stop(&d), 0);
}

/* ---- watchdog: pings stop while the engine stalls, and resume ---- */

static void test_watchdog(void **state) {
        struct notify n;
        struct daemon d;
        char env_sock[400], buf[4096];
        double pings[256];
        int n_pings = 0;
        (void) state;

        assert_int_equal(notify_open(&n, h_tmpdir()), 0);
        snprintf(env_sock, sizeof env_sock, "NOTIFY_SOCKET=%s", n.path);
        /* WatchdogSec=0.5: pings every 250 ms; the stall (3 s) is far longer than the watchdog interval */
        const char *env[] = { env_sock, "WATCHDOG_USEC=500000", "WATCHDOG_PID=self",
                              "GEMMA4D_TEST_ENGINE_STALL_MS=3000", NULL };
        struct daemon_opts o = { .model = h_small_model(), .yaml = BASE_YAML, .env = env, .listen_fd = -1 };
        assert_int_equal(daemon_start(&d, &o), 0);
        /* healthy: pings come */
        assert_int_equal(notify_wait_for(&n, "WATCHDOG=1", 5, NULL, 0), 0);
        assert_int_equal(notify_wait_for(&n, "WATCHDOG=1", 5, NULL, 0), 0);

        gc_client *c = h_connect(&d);
        int32_t p[8];
        struct h_req r;
        h_prompt(p, 8, 9, VOCAB);
        r = (struct h_req) { .prompt = p, .n_prompt = 8, .max_tokens = 4 };
        double t0 = h_now();
        assert_int_equal(h_req_start(c, &r), 0);
        double t_done = 0, end = t0 + h_timeout(60);
        while (h_now() < end) {
                struct pollfd pfd[2] = { { .fd = n.fd, .events = POLLIN },
                                         { .fd = gc_client_get_fd(c), .events = POLLIN } };
                if (poll(pfd, 2, 100) < 0)
                        continue;
                if (pfd[0].revents & POLLIN) {
                        ssize_t got = recv(n.fd, buf, sizeof buf - 1, 0);
                        if (got > 0) {
                                buf[got] = 0;
                                if (strstr(buf, "WATCHDOG=1") && n_pings < 256)
                                        pings[n_pings++] = h_now();
                        }
                }
                if (pfd[1].revents & POLLIN)
                        (void) gc_client_process(c);
                if (r.done && !t_done)
                        t_done = h_now();
                /* keep listening a while after the request finished to see pings resume */
                if (t_done && h_now() > t_done + 1.5)
                        break;
        }
        assert_true(r.done);
        assert_int_equal(r.err, 0);
        /* the request waited out the stall */
        assert_true(t_done - t0 >= 2.5);
        /* the largest gap between pings (or from the request to the first ping) covers most of the stall */
        double gap = 0, prev = t0;
        int after = 0;
        for (int i = 0; i < n_pings; i++) {
                if (pings[i] - prev > gap)
                        gap = pings[i] - prev;
                prev = pings[i];
                after += pings[i] > t_done;
        }
        print_message("# %d pings; longest gap %.2f s during a 3 s stall; %d pings after it\n", n_pings, gap,
                      after);
        assert_true(gap >= 1.5);
        assert_true(after >= 2);
        assert_true(daemon_log_contains(&d, "not feeding the watchdog"));
        h_req_done(&r);
        gc_client_free(c);
        assert_int_equal(daemon_stop(&d), 0);
        notify_close(&n);
}

/* ---- clients connect while the model loads; their requests wait and are served after READY ---- */

static void test_requests_wait_for_boot(void **state) {
        struct daemon d;
        (void) state;

        /* the tokenizer (when the fixture is there) makes the boot take seconds */
        const char *model = h_model("small-tok", "--layers 2 --vocab 512", true);
        struct daemon_opts o = { .model = model, .yaml = BASE_YAML, .listen_fd = -1, .no_wait = true };
        assert_int_equal(daemon_start(&d, &o), 0);
        gc_client *c = NULL;
        double end = h_now() + h_timeout(60);
        while (gc_client_new(&c, d.sock, 5000) < 0 && h_now() < end)
                usleep(5000);
        assert_non_null(c);
        int32_t p[12];
        struct h_req r;
        h_prompt(p, 12, 21, VOCAB);
        /* another client queues requests while loading, cancels one and disconnects with the others */
        int fd = raw_connect(&d);
        assert_true(fd >= 0);
        raw_hello(fd);
        for (uint64_t id = 1; id <= 3; id++)
                raw_generate(fd, id, p, 12, 50);
        {
                struct proto_buf b;
                struct proto_cancel cn = { .id = 2 };
                proto_buf_init(&b);
                assert_int_equal(proto_encode_cancel(&b, &cn), 0);
                assert_int_equal(raw_send_all(fd, b.data, b.len), 0);
                proto_buf_done(&b);
                int reason = -1;
                assert_int_equal(raw_wait_request_end(fd, 2, NULL, &reason, NULL), PROTO_TYPE_FINISHED);
                assert_int_equal(reason, PROTO_REASON_CANCELLED);
        }
        close(fd);
        r = (struct h_req) { .prompt = p, .n_prompt = 12, .max_tokens = 6 };
        long long waiting = h_status_int(c, "waiting_for_model");
        assert_int_equal(h_req_start(c, &r), 0);
        struct h_req *rp[1] = { &r };
        assert_int_equal(h_run_all(&c, 1, rp, 1, H_BOOT_TIMEOUT_S), 0);
        print_message("# status while connecting: waiting_for_model %lld (-1: already ready)\n", waiting);
        assert_int_equal(r.err, 0);
        assert_true(r.n_tokens > 0 || r.finish == GC_FINISH_STOP);
        assert_int_equal(h_wait_idle(c, 30), 0);
        h_req_done(&r);
        gc_client_free(c);
        assert_int_equal(daemon_stop(&d), 0);
}

/* ---- socket.path: a live daemon keeps it, a stale file is replaced ---- */

static void test_socket_path(void **state) {
        struct daemon a, b;
        char path[400];
        struct stat st;
        (void) state;

        snprintf(path, sizeof path, "%s/shared.sock", h_tmpdir());
        struct daemon_opts o = { .model = h_small_model(), .yaml = BASE_YAML, .listen_fd = -1, .socket_path = path };
        assert_int_equal(daemon_start(&a, &o), 0);
        /* a second daemon on the same path refuses to start and leaves the first one alone */
        o.no_wait = true;
        assert_int_equal(daemon_start(&b, &o), 0);
        assert_int_equal(daemon_wait_exit(&b, 60), 0);
        assert_int_not_equal(b.exit_status, 0);
        assert_true(daemon_log_contains(&b, "another daemon is listening there"));
        b.exit_status = 0;
        (void) daemon_stop(&b);
        gc_client *c = h_connect(&a);
        gc_client_free(c);
        /* killed without a chance to clean up: the socket file stays behind ... */
        daemon_kill(&a, SIGKILL);
        assert_int_equal(daemon_wait_exit(&a, 30), 0);
        a.exit_status = 0;
        (void) daemon_stop(&a);
        assert_int_equal(stat(path, &st), 0);
        /* ... and the next daemon replaces the stale file */
        o.no_wait = false;
        assert_int_equal(daemon_start(&b, &o), 0);
        c = h_connect(&b);
        gc_client_free(c);
        assert_int_equal(daemon_stop(&b), 0);
        /* a clean stop removes its own socket file */
        assert_int_equal(stat(path, &st), -1);
}

/* ---- a second SIGTERM during the drain exits at once; SIGTERM while loading exits 0 ---- */

static void test_sigterm_twice_and_while_loading(void **state) {
        struct daemon d;
        int32_t p[16];
        struct h_req r;
        (void) state;

        struct daemon_opts o = { .model = h_small_model(), .listen_fd = -1,
                                 .yaml = "limits:\n  max_model_len: 2048\n  max_num_seqs: 2\n"
                                         "  max_batched_tokens: 512\nshutdown:\n  drain_seconds: 600\n" };
        assert_int_equal(daemon_start(&d, &o), 0);
        gc_client *c = h_connect(&d);
        h_prompt(p, 16, 3, VOCAB);
        r = (struct h_req) { .prompt = p, .n_prompt = 16, .max_tokens = 2000 };
        assert_int_equal(h_req_start(c, &r), 0);
        double end = h_now() + h_timeout(30);
        while (!r.t_first && h_now() < end)
                (void) gc_client_wait(c, 10);
        daemon_kill(&d, SIGTERM);
        assert_true(wait_log(&d, "draining", 30) == 0);
        /* the drain would wait 600 s for the long request; the second signal ends it */
        double t = h_now();
        daemon_kill(&d, SIGTERM);
        assert_int_equal(daemon_wait_exit(&d, 60), 0);
        print_message("# exited %.2f s after the second SIGTERM\n", h_now() - t);
        assert_int_equal(d.exit_status, 0);
        struct h_req *rp[1] = { &r };
        assert_int_equal(h_run_all(&c, 1, rp, 1, 30), 0);
        assert_true(r.err != 0);        /* cancelled or disconnected, never a success */
        h_req_done(&r);
        gc_client_free(c);
        assert_int_equal(daemon_stop(&d), 0);

        /* SIGTERM while the model loads (the tokenizer makes that take a moment) */
        const char *model = h_model("small-tok2", "--layers 2 --vocab 512", true);
        struct daemon_opts o2 = { .model = model, .yaml = BASE_YAML, .listen_fd = -1, .no_wait = true };
        assert_int_equal(daemon_start(&d, &o2), 0);
        struct stat st;
        end = h_now() + h_timeout(30);
        while (stat(d.sock, &st) < 0 && h_now() < end)
                usleep(2000);
        daemon_kill(&d, SIGTERM);
        assert_int_equal(daemon_wait_exit(&d, 120), 0);
        assert_int_equal(d.exit_status, 0);
        assert_int_equal(daemon_stop(&d), 0);
}

int main(int argc, char **argv) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_notify_sequence),
                cmocka_unit_test(test_socket_activation),
                cmocka_unit_test(test_sigterm_drain),
                cmocka_unit_test(test_sighup_reload),
                cmocka_unit_test(test_watchdog),
                cmocka_unit_test(test_requests_wait_for_boot),
                cmocka_unit_test(test_socket_path),
                cmocka_unit_test(test_sigterm_twice_and_while_loading),
        };
        signal(SIGPIPE, SIG_IGN);
        if (argc > 1)
                cmocka_set_test_filter(argv[1]);
        (void) h_small_model();
        return cmocka_run_group_tests(tests, NULL, NULL);
}
