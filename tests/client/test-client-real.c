/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libgemmaclient and gemma4ctl against the REAL gemma4d (cpu backend, a tiny random-weight model without
 * tokenizer, started through the daemon tests' harness). Only what holds for any model is asserted:
 * event order, counts, greedy determinism, error codes, cancel, spreading, a daemon that dies.
 * argv[1]: gemma4ctl.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "harness.h"

static const char *ctl_bin;
static struct daemon d0, d1;

static int setup(void **state) {
        struct daemon_opts o = { .model = h_small_model(), .listen_fd = -1 };

        if (daemon_start(&d0, &o) < 0 || daemon_wait_ready(&d0) < 0)
                return -1;
        if (daemon_start(&d1, &o) < 0 || daemon_wait_ready(&d1) < 0)
                return -1;
        return 0;
}

static int teardown(void **state) {
        if (d0.pid > 0)
                daemon_stop(&d0);
        if (d1.pid > 0)
                daemon_stop(&d1);
        return 0;
}

struct trace {
        char order[600];
        size_t n;
        int32_t ids[512];
        size_t n_ids;
        int error;
        bool done;
        bool cancel_on_first_delta;
};

static int trace_cb(gc_request *req, enum gc_event_type type, const gc_event *ev, void *userdata) {
        struct trace *t = userdata;
        static const char kinds[] = { '?', 'S', 'D', 'T', 'F' };

        if (t->n + 1 < sizeof(t->order))
                t->order[t->n++] = kinds[type];
        if (type == GC_EVENT_DELTA) {
                size_t n;
                const int32_t *ids = gc_event_token_ids(ev, &n);

                for (size_t i = 0; i < n && t->n_ids < 512; i++)
                        t->ids[t->n_ids++] = ids[i];
                if (t->cancel_on_first_delta) {
                        t->cancel_on_first_delta = false;
                        assert_int_equal(gc_cancel(req), 0);
                }
        }
        if (type == GC_EVENT_FINISHED) {
                t->error = gc_result_error(gc_event_result(ev));
                t->done = true;
        }
        return 0;
}

static void wait_done(gc_client *c, struct trace *t) {
        double end = h_now() + h_timeout(H_REQUEST_TIMEOUT_S);

        while (!t->done) {
                assert_true(h_now() < end);
                assert_true(gc_client_wait(c, 1000) >= 0);
        }
}

static gc_params *greedy(uint32_t max_tokens) {
        gc_params *p;

        assert_int_equal(gc_params_new(&p), 0);
        assert_int_equal(gc_params_set_temperature(p, 0), 0);
        assert_int_equal(gc_params_set_max_tokens(p, max_tokens), 0);
        return p;
}

static void test_real_handshake(void **state) {
        gc_client *c = h_connect(&d0);

        assert_non_null(gc_client_info_str(c, 0, GC_INFO_MODEL));
        assert_string_equal(gc_client_info_str(c, 0, GC_INFO_BACKEND), "cpu");
        assert_true(gc_client_info_num(c, 0, GC_INFO_MAX_MODEL_LEN) > 0);
        assert_true(gc_client_info_num(c, 0, GC_INFO_MAX_INFLIGHT) > 0);
        assert_int_equal(gc_client_info_num(c, 0, GC_INFO_PROTO), 1);
        gc_client_free(c);
}

static void test_real_stream_and_determinism(void **state) {
        gc_client *c = h_connect(&d0);
        gc_params *p = greedy(8);
        struct trace a = {}, b = {};
        int32_t prompt[16];

        h_prompt(prompt, 16, 7, 512);
        assert_int_equal(gc_generate_ids_start(c, prompt, 16, p, trace_cb, &a, NULL), 0);
        wait_done(c, &a);
        assert_int_equal(a.error, 0);
        /* started, then deltas, then finished once and last. */
        assert_int_equal(a.order[0], 'S');
        assert_int_equal(a.order[a.n - 1], 'F');
        assert_null(memchr(a.order, 'F', a.n - 1));
        assert_true(a.n_ids >= 1 && a.n_ids <= 8);
        /* Greedy decoding is deterministic. */
        assert_int_equal(gc_generate_ids_start(c, prompt, 16, p, trace_cb, &b, NULL), 0);
        wait_done(c, &b);
        assert_int_equal(b.n_ids, a.n_ids);
        assert_memory_equal(b.ids, a.ids, a.n_ids * sizeof(int32_t));
        /* Status: a JSON object that says ready. */
        char *json;

        assert_int_equal(gc_status(c, 0, &json), 0);
        json_t *j = json_loads(json, 0, NULL);

        assert_string_equal(json_string_value(json_object_get(j, "state")), "ready");
        json_decref(j);
        gc_free(json);
        gc_params_free(p);
        gc_client_free(c);
}

static void test_real_errors(void **state) {
        gc_client *c = h_connect(&d0);
        uint64_t max_len = gc_client_info_num(c, 0, GC_INFO_MAX_MODEL_LEN);
        gc_params *p = greedy(4);
        int32_t *prompt = malloc((max_len + 1) * sizeof(int32_t)), bad[2] = { 3, 1000000 };
        struct trace t = {}, u = {};

        assert_non_null(prompt);
        /* A prompt longer than the context: too_long, refused before started. */
        h_prompt(prompt, max_len + 1, 9, 512);
        assert_int_equal(gc_generate_ids_start(c, prompt, max_len + 1, p, trace_cb, &t, NULL), 0);
        wait_done(c, &t);
        assert_int_equal(t.error, GC_ETOOLONG);
        assert_string_equal(t.order, "F");
        /* A token id outside the vocabulary: bad_request. */
        assert_int_equal(gc_generate_ids_start(c, bad, 2, p, trace_cb, &u, NULL), 0);
        wait_done(c, &u);
        assert_int_equal(u.error, GC_EBADREQUEST);
        free(prompt);
        gc_params_free(p);
        gc_client_free(c);
}

static void test_real_cancel(void **state) {
        gc_client *c = h_connect(&d0);
        gc_params *p = greedy(400);
        struct trace t = { .cancel_on_first_delta = true };
        int32_t prompt[8];

        h_prompt(prompt, 8, 11, 512);
        assert_int_equal(gc_generate_ids_start(c, prompt, 8, p, trace_cb, &t, NULL), 0);
        wait_done(c, &t);
        assert_int_equal(t.error, GC_ECANCELLED);
        assert_true(t.n_ids < 400);
        gc_params_free(p);
        gc_client_free(c);
}

static void test_real_spread_and_death(void **state) {
        char paths[700];
        gc_client *c;
        gc_params *p = greedy(4);
        struct trace t[4] = {}, after = {};
        int hits[2] = {};
        int32_t prompt[8];

        snprintf(paths, sizeof(paths), "%s:%s", d0.sock, d1.sock);
        assert_int_equal(gc_client_new(&c, paths, 10000), 0);
        h_prompt(prompt, 8, 13, 512);
        for (int i = 0; i < 4; i++) {
                gc_request *req;

                assert_int_equal(gc_generate_ids_start(c, prompt, 8, p, trace_cb, &t[i], &req), 0);
                hits[gc_request_daemon(req)]++;
        }
        assert_int_equal(hits[0], 2);
        assert_int_equal(hits[1], 2);
        for (int i = 0; i < 4; i++) {
                wait_done(c, &t[i]);
                assert_int_equal(t[i].error, 0);
        }
        /* One daemon dies: its requests end with GC_EDISCONNECTED, the other keeps serving. */
        daemon_kill(&d1, SIGKILL);
        assert_int_equal(daemon_wait_exit(&d1, 30), 0);
        for (int i = 0; i < 3; i++) {
                struct trace x = {};

                assert_int_equal(gc_generate_ids_start(c, prompt, 8, p, trace_cb, &x, NULL), 0);
                wait_done(c, &x);
                assert_true(x.error == 0 || x.error == GC_EDISCONNECTED);
        }
        assert_int_equal(gc_generate_ids_start(c, prompt, 8, p, trace_cb, &after, NULL), 0);
        wait_done(c, &after);
        assert_int_equal(after.error, 0);
        assert_false(gc_client_daemon_connected(c, 1));
        gc_params_free(p);
        gc_client_free(c);
}

static int run_ctl(const char *sock, char *out, size_t cap, const char *const *args) {
        int pfd[2], status;
        size_t len = 0;
        ssize_t n;
        pid_t pid;

        assert_int_equal(pipe(pfd), 0);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                dup2(pfd[1], STDOUT_FILENO);
                close(pfd[0]);
                close(pfd[1]);
                setenv("GEMMA4D_SOCKET", sock, 1);
                execv(ctl_bin, (char *const *) args);
                _exit(127);
        }
        close(pfd[1]);
        while (len + 1 < cap && (n = read(pfd[0], out + len, cap - 1 - len)) > 0)
                len += (size_t) n;
        out[len] = 0;
        close(pfd[0]);
        waitpid(pid, &status, 0);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void test_real_ctl(void **state) {
        static char out[65536];
        json_t *j;

        assert_int_equal(run_ctl(d0.sock, out, sizeof(out), (const char *[]) { ctl_bin, "--json", "status", NULL }), 0);
        j = json_loads(out, 0, NULL);
        assert_non_null(j);
        assert_string_equal(json_string_value(json_object_get(json_object_get(json_array_get(
                json_object_get(j, "daemons"), 0), "status"), "state")), "ready");
        json_decref(j);
        /* bench on a model without tokenizer falls back to synthetic ids. */
        assert_int_equal(run_ctl(d0.sock, out, sizeof(out), (const char *[]) {
                ctl_bin, "--json", "bench", "-c", "2", "-p", "16", "-o", "4", "-n", "1", "-r", "2", "-w", "1",
                "--temperature", "0", NULL }), 0);
        j = json_loads(out, 0, NULL);
        assert_non_null(j);
        assert_int_equal(json_integer_value(json_object_get(j, "requests")), 4);
        assert_int_equal(json_integer_value(json_object_get(j, "errors")), 0);
        assert_true(json_real_value(json_object_get(json_object_get(j, "throughput_tok_s"), "median")) > 0);
        json_decref(j);
        assert_int_equal(run_ctl("/nonexistent/gemma4d.sock", out, sizeof(out),
                                 (const char *[]) { ctl_bin, "status", NULL }), 3);
}

int main(int argc, char **argv) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_real_handshake),
                cmocka_unit_test(test_real_stream_and_determinism),
                cmocka_unit_test(test_real_errors),
                cmocka_unit_test(test_real_cancel),
                cmocka_unit_test(test_real_ctl),
                cmocka_unit_test(test_real_spread_and_death),   /* last: kills one daemon */
        };

        if (argc != 2) {
                fprintf(stderr, "usage: %s GEMMA4CTL\n", argv[0]);
                return 2;
        }
        ctl_bin = argv[1];
        signal(SIGPIPE, SIG_IGN);
        return cmocka_run_group_tests_name("client-real", tests, setup, teardown);
}
