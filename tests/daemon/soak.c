/* SPDX-License-Identifier: Apache-2.0 */
/*
 * daemon-soak: minutes of mixed traffic against the real gemma4d (cpu backend, the 2-layer test model),
 * then checks that no KV page leaked and that the daemon's RSS stayed flat. Not part of the default test
 * run (it takes 5 minutes); see docs/perf-notes.md, "daemon soak".
 *
 *   daemon-soak [SECONDS]        (default 300; GEMMA4D_BUILD_ROOT must point at the build directory)
 *
 * Traffic: 16 connections, each keeping 4 requests in flight; prompts of 2..16 token ids (half of them
 * behind one of 4 shared 8-token prefixes), 1..8 output tokens, priorities -20..19; 1 request in 25 is
 * cancelled after its first token, 1 in 40 has a short deadline, and every ~300 requests a connection is
 * dropped with requests in flight and reopened.
 * Exit status 0 when every request ended properly (finished, cancelled, deadline, or disconnected by
 * our own drop), no pages are in use at the end, and RSS grew by less than 10% + 8 MiB after warm-up.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

#define N_CONN 16
#define PER_CONN 4
#define VOCAB 512

struct slot {
        struct h_req r;
        int32_t prompt[64];
        bool active, cancel_after_first;
        int conn;
};

static struct slot slots[N_CONN * PER_CONN];
static gc_client *conns[N_CONN];
static unsigned long long n_started, n_ok, n_cancelled, n_deadline, n_dropped, n_overloaded, n_bad, n_tokens;
static uint64_t rng = 88172645463325252ull;

static uint32_t rnd(uint32_t n) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        return (uint32_t) (rng % n);
}

static long rss_kib(pid_t pid) {
        char path[64], line[256];
        long v = -1;
        snprintf(path, sizeof path, "/proc/%d/status", (int) pid);
        FILE *f = fopen(path, "r");
        if (!f)
                return -1;
        while (fgets(line, sizeof line, f))
                if (strncmp(line, "VmRSS:", 6) == 0)
                        v = strtol(line + 6, NULL, 10);
        fclose(f);
        return v;
}

static void start_slot(struct slot *s) {
        size_t n = 2 + rnd(15);
        h_prompt(s->prompt, n, (uint32_t) n_started * 2654435761u + 7, VOCAB);
        if (rnd(2) == 0) {
                /* half the requests start with one of 4 shared 8-token prefixes: prefix-cache hits under churn */
                uint32_t k = rnd(4);
                h_prompt(s->prompt, 8, 1000 + k, VOCAB);
                if (n < 9)
                        n = 9 + rnd(8);
        }
        s->r = (struct h_req) { .prompt = s->prompt, .n_prompt = n, .max_tokens = 1 + rnd(8),
                                .priority = (int) rnd(40) - 20, .deadline_ms = rnd(40) == 0 ? 1 + rnd(20) : 0 };
        s->cancel_after_first = rnd(25) == 0;
        s->active = h_req_start(conns[s->conn], &s->r) == 0;
        if (!s->active) {
                fprintf(stderr, "soak: start failed: %s\n", gc_strerror(s->r.start_err));
                n_bad++;
                return;
        }
        n_started++;
}

static void account(struct slot *s, bool dropped) {
        struct h_req *r = &s->r;
        n_tokens += r->n_tokens;
        if (dropped && (r->err == GC_ECANCELLED || r->err == GC_EDISCONNECTED))
                n_dropped++;
        else if (r->err == 0)
                n_ok++;
        else if (r->err == GC_ECANCELLED)
                n_cancelled++;
        else if (r->err == GC_EDEADLINE)
                n_deadline++;
        else if (r->err == GC_EOVERLOADED)
                n_overloaded++;
        else {
                fprintf(stderr, "soak: request ended with %s (%s)\n", gc_strerror(r->err), gc_err_name(r->err));
                n_bad++;
        }
        h_req_done(r);
        s->active = false;
}

int main(int argc, char **argv) {
        double seconds = argc > 1 ? atof(argv[1]) : 300;
        struct daemon d;
        struct daemon_opts o = { .listen_fd = -1,
                                 .yaml = "limits:\n  max_model_len: 256\n  max_num_seqs: 16\n"
                                         "  max_batched_tokens: 256\n  max_queue: 4096\nlog:\n  level: warning\n" };
        int ret = 0;

        o.model = h_small_model();
        if (daemon_start(&d, &o) < 0) {
                fprintf(stderr, "soak: gemma4d did not start\n");
                return 1;
        }
        gc_client *watch = h_connect(&d);
        for (int i = 0; i < N_CONN; i++)
                conns[i] = h_connect(&d);
        for (int i = 0; i < N_CONN * PER_CONN; i++) {
                slots[i].conn = i / PER_CONN;
                start_slot(&slots[i]);
        }
        double t0 = h_now(), t_warm = t0 + (seconds > 60 ? 30 : seconds / 4), next_report = t0 + 30;
        long rss_warm = -1, rss_max = 0;
        unsigned long long last_started = 0;
        while (h_now() - t0 < seconds) {
                struct pollfd pfd[N_CONN];
                for (int i = 0; i < N_CONN; i++)
                        pfd[i] = (struct pollfd) { .fd = gc_client_get_fd(conns[i]), .events = POLLIN };
                (void) poll(pfd, N_CONN, 50);
                for (int i = 0; i < N_CONN; i++)
                        if (pfd[i].revents)
                                (void) gc_client_process(conns[i]);
                for (int i = 0; i < N_CONN * PER_CONN; i++) {
                        struct slot *s = &slots[i];
                        if (s->active && !s->r.done && s->cancel_after_first && s->r.t_first > 0 && s->r.handle) {
                                gc_cancel(s->r.handle);
                                s->cancel_after_first = false;
                        }
                        if (s->active && s->r.done) {
                                account(s, false);
                                start_slot(s);
                        }
                }
                if (n_started - last_started >= 300) {
                        /* drop a connection with its requests in flight, and reopen it */
                        int c = (int) rnd(N_CONN);
                        last_started = n_started;
                        gc_client_free(conns[c]);
                        conns[c] = h_connect(&d);
                        for (int k = 0; k < PER_CONN; k++) {
                                struct slot *s = &slots[c * PER_CONN + k];
                                if (s->active)
                                        account(s, true);
                                start_slot(s);
                        }
                }
                long rss = rss_kib(d.pid);
                if (rss > rss_max)
                        rss_max = rss;
                if (rss_warm < 0 && h_now() >= t_warm)
                        rss_warm = rss;
                if (h_now() >= next_report) {
                        next_report += 30;
                        fprintf(stderr, "soak: %.0fs: %llu started, %llu ok, %llu cancelled, %llu deadline, "
                                "%llu dropped, RSS %ld KiB\n", h_now() - t0, n_started, n_ok, n_cancelled,
                                n_deadline, n_dropped, rss);
                }
        }
        /* finish what is in flight */
        struct h_req *rp[N_CONN * PER_CONN];
        size_t n_rp = 0;
        for (int i = 0; i < N_CONN * PER_CONN; i++)
                if (slots[i].active)
                        rp[n_rp++] = &slots[i].r;
        if (h_run_all(conns, N_CONN, rp, n_rp, 120) < 0) {
                fprintf(stderr, "soak: requests did not finish\n");
                ret = 1;
        }
        for (int i = 0; i < N_CONN * PER_CONN; i++)
                if (slots[i].active && slots[i].r.done)
                        account(&slots[i], false);
        double elapsed = h_now() - t0;
        int idle = h_wait_idle(watch, 30);
        long long full_used = h_status_int(watch, "kv.full.used"), sl_used = h_status_int(watch, "kv.sliding.used");
        long long finished = h_status_int(watch, "finished"), preemptions = h_status_int(watch, "preemptions");
        long rss_end = rss_kib(d.pid);
        for (int i = 0; i < N_CONN; i++)
                gc_client_free(conns[i]);
        gc_client_free(watch);
        int st = daemon_stop(&d);

        printf("soak: %.0f s, %llu requests (%.1f/s): %llu ok, %llu cancelled, %llu deadline, %llu dropped with "
               "their connection, %llu overloaded, %llu bad; %llu tokens (%.0f/s); daemon finished %lld, "
               "preemptions %lld\n", elapsed, n_started, (double) n_started / elapsed, n_ok, n_cancelled,
               n_deadline, n_dropped, n_overloaded, n_bad, n_tokens, (double) n_tokens / elapsed, finished,
               preemptions);
        printf("soak: KV in use at the end: full %lld, sliding %lld pages; RSS after warm-up %ld KiB, max %ld KiB, "
               "end %ld KiB; exit status %d\n", full_used, sl_used, rss_warm, rss_max, rss_end, st);
        if (idle < 0 || full_used != 0 || sl_used != 0) {
                printf("soak: FAIL: KV pages still in use\n");
                ret = 1;
        }
        if (rss_warm > 0 && rss_end > rss_warm + rss_warm / 10 + 8192) {
                printf("soak: FAIL: RSS grew from %ld to %ld KiB\n", rss_warm, rss_end);
                ret = 1;
        }
        if (n_bad || st != 0) {
                printf("soak: FAIL: %llu requests ended badly, exit status %d\n", n_bad, st);
                ret = 1;
        }
        if (ret == 0)
                printf("soak: PASS\n");
        return ret;
}
