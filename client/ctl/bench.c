/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gemma4ctl bench: N concurrent clients (one connection each), each sending R requests back to back with
 * a prompt of P tokens and up to O output tokens. One thread drives all clients through their pollable
 * fds, so client overhead does not grow with N. Latencies are measured here, at the client:
 *   TTFT    send to the first delta carrying tokens;
 *   TPOT    (last token time - first token time) / (completion tokens - 1), per request;
 *   tok/s   all completion tokens of a run / the run's wall time (first send to last finish).
 * A warm-up run (not counted) precedes K measured runs; throughput is reported as the median of the
 * runs with min, max and standard deviation, latencies as percentiles over all measured requests.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"

struct bench_cfg {
        unsigned clients, prompt_tokens, output_tokens, requests, repeats, warmup;
        gc_params *params;
        int32_t *filler;             /* token ids prompts are cut from */
        size_t n_filler;
};

struct sample {
        double ttft_ms, tpot_ms, latency_ms;
        uint32_t completion_tokens, cached_tokens;
};

struct bench_client {
        struct bench_cfg *cfg;
        struct bench_run *run;
        gc_client *client;
        unsigned index;
        unsigned sent;               /* requests started in this run */
        bool busy;
        double t_send, t_first, t_last;
};

struct bench_run {
        struct sample *samples;
        size_t n_samples, cap;
        unsigned errors, overloaded, in_flight;
        uint64_t tokens;
        int fatal;
        unsigned seq;                /* varies prompts between requests */
};

static int bench_send(struct bench_client *bc);

static int bench_cb(gc_request *req, enum gc_event_type type, const gc_event *ev, void *userdata) {
        struct bench_client *bc = userdata;
        struct bench_run *run = bc->run;
        double now = ctl_now_ms();

        if (type == GC_EVENT_DELTA) {
                size_t n;

                gc_event_token_ids(ev, &n);
                if (n && bc->t_first == 0)
                        bc->t_first = now;
                if (n)
                        bc->t_last = now;
        } else if (type == GC_EVENT_FINISHED) {
                const gc_result *r = gc_event_result(ev);
                int err = gc_result_error(r);

                bc->busy = false;
                run->in_flight--;
                if (err) {
                        run->errors++;
                        if (err == GC_EOVERLOADED)
                                run->overloaded++;
                } else {
                        uint32_t n = gc_result_completion_tokens(r);
                        struct sample s = {
                                .ttft_ms = bc->t_first ? bc->t_first - bc->t_send : now - bc->t_send,
                                .tpot_ms = n > 1 && bc->t_first ? (bc->t_last - bc->t_first) / (n - 1) : 0,
                                .latency_ms = now - bc->t_send,
                                .completion_tokens = n,
                                .cached_tokens = gc_result_cached_tokens(r),
                        };

                        if (run->samples && run->n_samples == run->cap) {
                                struct sample *v = realloc(run->samples, run->cap * 2 * sizeof(*v));

                                if (!v) {
                                        run->fatal = -ENOMEM;
                                        return 0;
                                }
                                run->samples = v;
                                run->cap *= 2;
                        }
                        if (run->samples)
                                run->samples[run->n_samples++] = s;
                        run->tokens += n;
                }
                if (bc->sent < bc->cfg->requests) {
                        int e = bench_send(bc);

                        if (e < 0 && !run->fatal)
                                run->fatal = e;
                }
        }
        return 0;
}

static int bench_send(struct bench_client *bc) {
        struct bench_cfg *cfg = bc->cfg;
        /* Each request starts at a different place in the filler, so no two prompts share a prefix. */
        size_t off = (size_t) (bc->run->seq++ * 7919u) % (cfg->n_filler - cfg->prompt_tokens + 1);
        int r;

        bc->t_send = ctl_now_ms();
        bc->t_first = bc->t_last = 0;
        r = gc_generate_ids_start(bc->client, cfg->filler + off, cfg->prompt_tokens, cfg->params, bench_cb, bc,
                                  NULL);
        if (r < 0)
                return r;
        bc->sent++;
        bc->busy = true;
        bc->run->in_flight++;
        return 0;
}

/* One run: every client sends its requests; returns the wall time in ms or a negative error. */
static double bench_run(struct bench_client *bcs, struct bench_cfg *cfg, struct bench_run *run) {
        struct pollfd *pfd = calloc(cfg->clients, sizeof(*pfd));
        double t0 = ctl_now_ms();

        if (!pfd)
                return -ENOMEM;
        for (unsigned i = 0; i < cfg->clients; i++) {
                bcs[i].run = run;
                bcs[i].sent = 0;
                pfd[i] = (struct pollfd) { .fd = gc_client_get_fd(bcs[i].client), .events = POLLIN };
        }
        for (unsigned i = 0; i < cfg->clients && !run->fatal; i++) {
                int r = bench_send(&bcs[i]);

                if (r < 0)
                        run->fatal = r;
        }
        while (run->in_flight > 0 && !run->fatal) {
                int n = poll(pfd, cfg->clients, -1);

                if (n < 0 && errno == EINTR) {
                        if (ctl_interrupted)
                                run->fatal = GC_ECANCELLED;
                        continue;
                }
                if (n < 0) {
                        run->fatal = -errno;
                        break;
                }
                for (unsigned i = 0; i < cfg->clients; i++)
                        if (pfd[i].revents) {
                                int r = gc_client_process(bcs[i].client);

                                if (r < 0 && !run->fatal)
                                        run->fatal = r;
                        }
        }
        free(pfd);
        return run->fatal ? run->fatal : ctl_now_ms() - t0;
}

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;

        return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted v[0..n). */
static double percentile(const double *v, size_t n, double p) {
        size_t k;

        if (n == 0)
                return 0;
        k = (size_t) ceil(p / 100.0 * (double) n);
        return v[k ? k - 1 : 0];
}

static json_t *stats_json(double *v, size_t n) {
        double sum = 0;

        qsort(v, n, sizeof(*v), cmp_double);
        for (size_t i = 0; i < n; i++)
                sum += v[i];
        return json_pack("{s:f, s:f, s:f, s:f, s:f, s:f, s:I}",
                         "p50", percentile(v, n, 50), "p90", percentile(v, n, 90), "p99", percentile(v, n, 99),
                         "mean", n ? sum / (double) n : 0.0, "min", n ? v[0] : 0.0, "max", n ? v[n - 1] : 0.0,
                         "count", (json_int_t) n);
}

/* Token ids to cut prompts from: a tokenized pseudo-random word sequence of at least need tokens. */
static int make_filler(gc_client *c, size_t need, int32_t **ret, size_t *ret_n) {
        static const char *const words[] = {
                "river", "stone", "quiet", "market", "engine", "winter", "purple", "ladder", "signal",
                "harbor", "silver", "garden", "number", "forest", "candle", "window", "mirror", "planet",
        };
        size_t len = 0, cap = need * 8 + 64;
        uint32_t x = 12345;
        char *text = malloc(cap);
        int32_t *ids = NULL;
        size_t n = 0;
        int r;

        if (!text)
                return -ENOMEM;
        for (;;) {
                text[0] = 0;
                len = 0;
                while (len + 16 < cap) {
                        x = x * 1103515245u + 12345u;
                        len += (size_t) snprintf(text + len, cap - len, "%s ", words[(x >> 16) % 18]);
                }
                r = gc_tokenize(c, text, 0, &ids, &n);
                if (r < 0 || n >= need)
                        break;
                gc_free(ids);
                ids = NULL;
                cap *= 2;
                char *t = realloc(text, cap);

                if (!t) {
                        r = -ENOMEM;
                        break;
                }
                text = t;
        }
        free(text);
        if (r < 0)
                return r;
        *ret = ids;
        *ret_n = n;
        return 0;
}

static void usage_bench(FILE *f) {
        fputs("Usage: gemma4ctl [--socket PATH] [--json] bench [OPTIONS]\n"
              "  -c, --clients N         concurrent clients, one connection each (default 1)\n"
              "  -p, --prompt-tokens N   prompt length in tokens (default 128)\n"
              "  -o, --output-tokens N   max_tokens of each request (default 128)\n"
              "  -n, --requests N        requests per client per run (default 4)\n"
              "  -r, --repeats N         measured runs (default 3)\n"
              "  -w, --warmup N          warm-up runs, not counted (default 1)\n\n", f);
        ctl_print_param_help(f);
}

static int parse_count(const char *s, unsigned min, unsigned max, unsigned *ret) {
        char *end;
        long v = strtol(s, &end, 10);

        if (*end || end == s || v < (long) min || v > (long) max)
                return -EINVAL;
        *ret = (unsigned) v;
        return 0;
}

int cmd_bench(const struct ctl *ctl, int argc, char **argv) {
        struct option opts[40] = {
                { "help", no_argument, NULL, 'h' }, { "clients", required_argument, NULL, 'c' },
                { "prompt-tokens", required_argument, NULL, 'p' }, { "output-tokens", required_argument, NULL, 'o' },
                { "requests", required_argument, NULL, 'n' }, { "repeats", required_argument, NULL, 'r' },
                { "warmup", required_argument, NULL, 'w' },
        };
        struct bench_cfg cfg = { .clients = 1, .prompt_tokens = 128, .output_tokens = 128, .requests = 4,
                                 .repeats = 3, .warmup = 1 };
        struct bench_client *bcs = NULL;
        double *runs_tps = NULL, *ttft = NULL, *tpot = NULL, *lat = NULL;
        struct bench_run total = {};
        unsigned errors = 0, overloaded = 0;
        uint64_t cached = 0, out_tokens = 0;
        int ret = EXIT_OK, o, r = 0;
        bool synthetic = false;
        char buf[32];

        ctl_add_param_options(opts, 7);
        if (gc_params_new(&cfg.params) < 0)
                return ctl_fail("bench", -ENOMEM);
        optind = 1;
        while ((o = getopt_long(argc, argv, "hc:p:o:n:r:w:", opts, NULL)) != -1) {
                unsigned *dst = NULL, min = 1, max = 100000;

                switch (o) {
                case 'h':
                        usage_bench(stdout);
                        goto out;
                case 'c': dst = &cfg.clients; max = 4096; break;
                case 'p': dst = &cfg.prompt_tokens; max = 1u << 20; break;
                case 'o': dst = &cfg.output_tokens; max = 1u << 20; break;
                case 'n': dst = &cfg.requests; break;
                case 'r': dst = &cfg.repeats; max = 1000; break;
                case 'w': dst = &cfg.warmup; min = 0; max = 100; break;
                default:
                        if (o >= CTL_OPT_PARAM && ctl_apply_param(cfg.params, o, optarg) == 0)
                                continue;
                        if (o < CTL_OPT_PARAM)
                                usage_bench(stderr);
                        ret = EXIT_USAGE;
                        goto out;
                }
                if (parse_count(optarg, min, max, dst) < 0) {
                        fprintf(stderr, "gemma4ctl: bench: bad value for -%c: '%s' (%u..%u)\n", o, optarg, min, max);
                        ret = EXIT_USAGE;
                        goto out;
                }
        }
        snprintf(buf, sizeof(buf), "%u", cfg.output_tokens);
        gc_params_set(cfg.params, "max_tokens", buf);

        bcs = calloc(cfg.clients, sizeof(*bcs));
        if (!bcs) {
                ret = ctl_fail("bench", -ENOMEM);
                goto out;
        }
        for (unsigned i = 0; i < cfg.clients; i++) {
                bcs[i].cfg = &cfg;
                bcs[i].index = i;
                ret = ctl_connect(ctl, &bcs[i].client);
                if (ret != 0)
                        goto out;
        }
        r = make_filler(bcs[0].client, cfg.prompt_tokens + 4096, &cfg.filler, &cfg.n_filler);
        if (r < 0 && r != GC_ENOTRUNNING && r != GC_EDISCONNECTED && r != -ENOMEM) {
                /* A daemon without a tokenizer (token-id models): prompts of ids spread over 3..258. */
                cfg.n_filler = cfg.prompt_tokens + 4096;
                cfg.filler = malloc(cfg.n_filler * sizeof(int32_t));
                if (!cfg.filler) {
                        ret = ctl_fail("bench", -ENOMEM);
                        goto out;
                }
                for (size_t i = 0; i < cfg.n_filler; i++)
                        cfg.filler[i] = (int32_t) (3 + (i * 2654435761u >> 7) % 256);
                synthetic = true;
                r = 0;
                if (!ctl->json)
                        fprintf(stderr, "bench: tokenize failed (%s); using synthetic token ids\n", gc_strerror(r));
        } else if (r < 0) {
                ret = ctl_fail("bench: tokenizing the prompt text", r);
                goto out;
        }
        if (cfg.n_filler < cfg.prompt_tokens) {
                fprintf(stderr, "gemma4ctl: bench: could not build a %u-token prompt\n", cfg.prompt_tokens);
                ret = EXIT_FAILURE_OTHER;
                goto out;
        }

        runs_tps = calloc(cfg.repeats, sizeof(double));
        total.cap = (size_t) cfg.clients * cfg.requests * cfg.repeats + 1;
        total.samples = calloc(total.cap, sizeof(*total.samples));
        if (!runs_tps || !total.samples) {
                ret = ctl_fail("bench", -ENOMEM);
                goto out;
        }
        ctl_catch_sigint(true);
        for (unsigned k = 0; k < cfg.warmup + cfg.repeats; k++) {
                bool measured = k >= cfg.warmup;
                struct bench_run scratch = { .seq = k * 1000003u };
                struct bench_run *run = measured ? &total : &scratch;
                uint64_t tokens_before = total.tokens;
                unsigned err_before = total.errors;
                double wall;

                run->seq = k * 1000003u;
                wall = bench_run(bcs, &cfg, run);
                if (wall < 0) {
                        r = (int) wall;
                        break;
                }
                if (measured) {
                        runs_tps[k - cfg.warmup] = (double) (total.tokens - tokens_before) / (wall / 1000.0);
                        if (!ctl->json)
                                fprintf(stderr, "run %u: %.1f tok/s, %u errors, %.0f ms\n", k - cfg.warmup + 1,
                                        runs_tps[k - cfg.warmup], total.errors - err_before, wall);
                } else if (!ctl->json)
                        fprintf(stderr, "warm-up %u: %.0f ms, %u errors\n", k + 1, wall, scratch.errors);
        }
        ctl_catch_sigint(false);
        if (r < 0) {
                ret = ctl_fail("bench", r);
                goto out;
        }
        errors = total.errors;
        overloaded = total.overloaded;

        ttft = calloc(total.n_samples + 1, sizeof(double));
        tpot = calloc(total.n_samples + 1, sizeof(double));
        lat = calloc(total.n_samples + 1, sizeof(double));
        if (!ttft || !tpot || !lat) {
                ret = ctl_fail("bench", -ENOMEM);
                goto out;
        }
        size_t n_tpot = 0;

        for (size_t i = 0; i < total.n_samples; i++) {
                ttft[i] = total.samples[i].ttft_ms;
                lat[i] = total.samples[i].latency_ms;
                if (total.samples[i].completion_tokens > 1)
                        tpot[n_tpot++] = total.samples[i].tpot_ms;
                cached += total.samples[i].cached_tokens;
                out_tokens += total.samples[i].completion_tokens;
        }
        {
                double tps_sorted[cfg.repeats], mean = 0, var = 0;
                json_t *runs = json_array(), *j;

                for (unsigned i = 0; i < cfg.repeats; i++) {
                        tps_sorted[i] = runs_tps[i];
                        mean += runs_tps[i] / cfg.repeats;
                        json_array_append_new(runs, json_real(runs_tps[i]));
                }
                for (unsigned i = 0; i < cfg.repeats; i++)
                        var += (runs_tps[i] - mean) * (runs_tps[i] - mean) / cfg.repeats;
                qsort(tps_sorted, cfg.repeats, sizeof(double), cmp_double);
                double median = cfg.repeats % 2 ? tps_sorted[cfg.repeats / 2] :
                                (tps_sorted[cfg.repeats / 2 - 1] + tps_sorted[cfg.repeats / 2]) / 2;

                j = json_pack("{s:{s:I, s:I, s:I, s:I, s:I, s:I, s:s?, s:s?, s:s?}, s:I, s:I, s:I, s:f, s:I,"
                              " s:{s:f, s:f, s:f, s:f, s:o}}",
                              "config", "clients", (json_int_t) cfg.clients,
                              "prompt_tokens", (json_int_t) cfg.prompt_tokens,
                              "output_tokens", (json_int_t) cfg.output_tokens,
                              "requests_per_client", (json_int_t) cfg.requests,
                              "repeats", (json_int_t) cfg.repeats, "warmup", (json_int_t) cfg.warmup,
                              "model", gc_client_info_str(bcs[0].client, 0, GC_INFO_MODEL),
                              "backend", gc_client_info_str(bcs[0].client, 0, GC_INFO_BACKEND),
                              "device", gc_client_info_str(bcs[0].client, 0, GC_INFO_DEVICE),
                              "requests", (json_int_t) total.n_samples,
                              "errors", (json_int_t) errors, "overloaded", (json_int_t) overloaded,
                              "output_tokens_mean", total.n_samples ? (double) out_tokens / total.n_samples : 0.0,
                              "cached_tokens", (json_int_t) cached,
                              "throughput_tok_s", "median", median, "min", tps_sorted[0],
                              "max", tps_sorted[cfg.repeats - 1], "stdev", sqrt(var), "runs", runs);
                json_object_set_new(j, "prompt_source", json_string(synthetic ? "synthetic_ids" : "tokenized_text"));
                json_object_set_new(j, "ttft_ms", stats_json(ttft, total.n_samples));
                json_object_set_new(j, "tpot_ms", stats_json(tpot, n_tpot));
                json_object_set_new(j, "latency_ms", stats_json(lat, total.n_samples));
                if (ctl->json)
                        ctl_print_json(j);
                else {
                        json_t *t = json_object_get(j, "ttft_ms"), *p = json_object_get(j, "tpot_ms");

                        printf("%u clients, prompt %u tokens, up to %u output tokens, %u requests/client, "
                               "%u runs (+%u warm-up)\n", cfg.clients, cfg.prompt_tokens, cfg.output_tokens,
                               cfg.requests, cfg.repeats, cfg.warmup);
                        printf("requests: %zu ok, %u failed (%u overloaded); mean output %.1f tokens\n",
                               total.n_samples, errors, overloaded,
                               total.n_samples ? (double) out_tokens / total.n_samples : 0.0);
                        printf("throughput: %.1f tok/s median (min %.1f, max %.1f, stdev %.1f)\n", median,
                               tps_sorted[0], tps_sorted[cfg.repeats - 1], sqrt(var));
                        printf("TTFT:       p50 %.2f ms, p99 %.2f ms, mean %.2f ms\n",
                               json_real_value(json_object_get(t, "p50")), json_real_value(json_object_get(t, "p99")),
                               json_real_value(json_object_get(t, "mean")));
                        printf("per token:  p50 %.3f ms, p99 %.3f ms, mean %.3f ms\n",
                               json_real_value(json_object_get(p, "p50")), json_real_value(json_object_get(p, "p99")),
                               json_real_value(json_object_get(p, "mean")));
                }
                json_decref(j);
        }
        if (errors && total.n_samples == 0)
                ret = overloaded ? EXIT_OVERLOADED : EXIT_DAEMON_ERROR;
out:
        if (bcs)
                for (unsigned i = 0; i < cfg.clients; i++)
                        gc_client_free(bcs[i].client);
        free(bcs);
        free(runs_tps);
        free(ttft);
        free(tpot);
        free(lat);
        free(total.samples);
        if (synthetic)
                free(cfg.filler);
        else
                gc_free(cfg.filler);
        gc_params_free(cfg.params);
        return ret;
}
