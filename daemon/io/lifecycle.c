/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The daemon's lifecycle on the I/O thread: listen first, then load the model on a boot thread while
 * clients can already connect (their requests wait), then READY=1; SIGHUP reloads what can change live;
 * SIGTERM drains; the watchdog is fed only while the engine makes progress.
 *
 * systemd protocol (sd_notify; all no-ops without NOTIFY_SOCKET):
 *   STATUS=<phase> (<percent>%)  while loading, from the boot thread
 *   READY=1                       after the model is loaded, the backend built and a warm-up step ran
 *   WATCHDOG=1                    every WatchdogSec/2 while the engine is healthy (progress or idle)
 *   RELOADING=1 MONOTONIC_USEC=   on SIGHUP, then READY=1 again
 *   STOPPING=1                    on SIGTERM/SIGINT, before the drain
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "build-config.h"
#include "chat/special.h"
#include "io-internal.h"
#include "log.h"

static double now_s(void) {
        return (double) engine_now_ns() / 1e9;
}

void lifecycle_boot_progress(struct server *srv, const char *phase, double fraction) {
        int pct = (int) (fraction * 100.0 + 0.5);
        if (pct < 0)
                pct = 0;
        if (pct > 100)
                pct = 100;
        uv_mutex_lock(&srv->boot_lock);
        snprintf(srv->boot_phase, sizeof srv->boot_phase, "%s", phase);
        uv_mutex_unlock(&srv->boot_lock);
        atomic_store(&srv->boot_percent, pct);
        atomic_store(&srv->boot_progress_ns, engine_now_ns());
        (void) sd_notifyf(0, "STATUS=%s (%d%%)", phase, pct);
}

static void backend_progress(void *userdata, const char *phase, double fraction) {
        struct server *srv = userdata;
        /* the backend's share of the boot is 10%..95% */
        lifecycle_boot_progress(srv, phase, 0.10 + 0.85 * fraction);
}

static void engine_wake(void *userdata) {
        struct server *srv = userdata;
        uv_async_send(&srv->engine_async);
}

/* One short generation through the whole stack, so the first client does not pay for lazy
 * initialisation (allocator growth, cuBLASLt heuristics, page faults on the weights). */
static int warm_up(struct engine *e, const struct model *m) {
        int32_t prompt[4] = { m->cfg.bos_token_id >= 0 ? m->cfg.bos_token_id : 2, 3, 4, 5 };
        struct engine_request req = { .conn_id = 0, .req_id = 1, .kind = ENGINE_KIND_GENERATE,
                                      .tokens = prompt, .n_tokens = 4 };
        char err[256];
        int r, done = 0;

        for (int i = 0; i < 4; i++)
                if ((uint32_t) prompt[i] >= m->cfg.vocab_size)
                        prompt[i] = 0;
        sampling_params_init(&req.params);
        req.params.max_tokens = 2;
        req.params.temperature = 0;
        r = engine_submit(e, &req, err, sizeof err);
        if (r < 0)
                return log_error_errno(r, "warm-up: %s", err);
        for (int steps = 0; steps < 64 && !done; steps++) {
                r = engine_run_step(e);
                if (r < 0)
                        return log_error_errno(r, "warm-up step failed");
                for (struct engine_event *ev = engine_pop_events(e), *next; ev; ev = next) {
                        next = ev->next;
                        if (ev->type == ENGINE_EVENT_FINISHED || ev->type == ENGINE_EVENT_ERROR)
                                done = 1;
                        engine_event_free(ev);
                }
        }
        return done ? 0 : log_error_errno(ETIMEDOUT, "warm-up did not finish");
}

static int special_lookup(void *userdata, const char *text, uint32_t *ret_id) {
        int id = tokenizer_id_for(userdata, text);
        if (id < 0)
                return id;
        *ret_id = (uint32_t) id;
        return 0;
}

static void boot_thread_main(void *arg) {
        struct server *srv = arg;
        struct boot_result *b = &srv->boot;
        const struct gemma4d_config *cfg = &srv->boot_cfg;
        char *err = NULL;
        double t0 = now_s(), t1;
        int r;

        lifecycle_boot_progress(srv, "parsing the checkpoint", 0.0);
        r = model_load(cfg->model_path, &b->model, &err);
        if (r < 0) {
                log_error_errno(r, "model.path: %s", err ? err : strerror(-r));
                goto fail;
        }
        {
                char tok_path[4096];
                snprintf(tok_path, sizeof tok_path, "%s/tokenizer.json", cfg->model_path);
                if (access(tok_path, R_OK) == 0) {
                        lifecycle_boot_progress(srv, "loading the tokenizer", 0.05);
                        r = tokenizer_load(tok_path, &b->tokenizer, &err);
                        if (r < 0) {
                                log_error_errno(r, "%s", err ? err : strerror(-r));
                                goto fail;
                        }
                        /* The template and the output parser hard-code Gemma 4's control-token ids; a
                         * tokenizer that disagrees would produce wrong prompts silently. */
                        const char *bad = NULL;
                        r = chat_special_verify(special_lookup, b->tokenizer, &bad);
                        if (r < 0) {
                                log_error_errno(r, "%s: special token '%s' does not have its Gemma 4 id",
                                                tok_path, bad ? bad : "?");
                                goto fail;
                        }
                } else
                        log_warning("%s: no tokenizer.json; only token-id prompts can be served", cfg->model_path);
        }
        t1 = now_s();
        b->phase_s[0] = t1 - t0;

        b->ops = backend_find(backend_kind_to_string(cfg->backend));
        if (!b->ops) {
                r = log_error_errno(EOPNOTSUPP, "backend: '%s' is not built into this gemma4d",
                                    backend_kind_to_string(cfg->backend));
                goto fail;
        }
        struct backend_params bp = {
                .kv_dtype = cfg->kv_dtype,
                .page_size = cfg->kv_page_size,
                .max_num_seqs = cfg->max_num_seqs,
                .max_batched_tokens = cfg->max_batched_tokens,
                .max_model_len = cfg->max_model_len,
                .gpu_fraction = cfg->gpu_fraction,
                .gpu = cfg->gpu,
                .n_threads = (int) cfg->cpu_threads,
                .lm_head_bf16 = cfg->lm_head_bf16,
                .weights_bf16 = cfg->weights_bf16,
                .embedding_device = cfg->embedding_device,
                .progress = backend_progress,
                .progress_userdata = srv,
                /* room for every running ring plus as many prefix-cache snapshots (docs/scheduler.md) */
                .n_sliding_pages = kv_pool_sliding_pages_for(b->model->cfg.sliding_window, cfg->kv_page_size,
                                                             cfg->max_num_seqs),
        };
        {
                /* Test hook: a small full-attention KV space, so tests on the cpu backend (which otherwise
                 * sizes it for max_num_seqs sequences of max_model_len) can exhaust it. */
                const char *pages = getenv("GEMMA4D_TEST_KV_FULL_PAGES");
                if (pages && atoi(pages) > 0) {
                        bp.n_full_pages = (uint32_t) atoi(pages);
                        log_warning("test hook GEMMA4D_TEST_KV_FULL_PAGES: %u full KV pages", bp.n_full_pages);
                }
        }
        r = b->ops->create(b->model, &bp, &b->backend, &err);
        if (r < 0) {
                log_error_errno(r, "backend %s: %s", b->ops->name, err ? err : strerror(-r));
                goto fail;
        }
        b->ops->get_capacity(b->backend, &b->capacity);
        b->phase_s[1] = now_s() - t1;
        t1 = now_s();

        lifecycle_boot_progress(srv, "building the KV pool and scheduler", 0.95);
        struct engine_params ep = {
                .ops = b->ops,
                .backend = b->backend,
                .vocab_size = b->model->cfg.vocab_size,
                .max_model_len = cfg->max_model_len,
                .max_num_seqs = cfg->max_num_seqs,
                .max_batched_tokens = cfg->max_batched_tokens,
                .max_queue = cfg->max_queue,
                .aging_ms = cfg->aging_ms,
                .prefix_cache = cfg->prefix_cache,
                .wake = engine_wake,
                .wake_userdata = srv,
        };
        for (uint32_t i = 0; i < b->model->cfg.n_stop_ids && i < ENGINE_MAX_STOP_IDS; i++)
                ep.stop_ids[ep.n_stop_ids++] = b->model->cfg.stop_ids[i];
        if (ep.n_stop_ids == 0) {
                static const int32_t gemma_stops[] = { 1, 106, 50 };
                for (unsigned i = 0; i < 3; i++)
                        ep.stop_ids[ep.n_stop_ids++] = gemma_stops[i];
        }
        r = engine_new(&ep, &b->engine, &err);
        if (r < 0) {
                log_error_errno(r, "engine: %s", err ? err : strerror(-r));
                goto fail;
        }
        b->phase_s[2] = now_s() - t1;
        t1 = now_s();
        lifecycle_boot_progress(srv, "warming up", 0.97);
        r = warm_up(b->engine, b->model);
        if (r < 0)
                goto fail;
        b->phase_s[3] = now_s() - t1;
        r = engine_start(b->engine);
        if (r < 0) {
                log_error_errno(r, "engine thread: %m");
                goto fail;
        }
        log_info("boot: checkpoint %.2fs, backend %.2fs (weights %.2f GiB + %.2f GiB in host memory, KV %.2f GiB, "
                 "%s), engine %.2fs, warm-up %.2fs; total %.2fs", b->phase_s[0], b->phase_s[1],
                 (double) b->capacity.weight_bytes / (1 << 30), (double) b->capacity.weight_host_bytes / (1 << 30),
                 (double) b->capacity.kv_bytes / (1 << 30),
                 b->capacity.device, b->phase_s[2], b->phase_s[3], now_s() - t0);
        b->error = 0;
        free(err);
        uv_async_send(&srv->boot_async);
        return;
fail:
        free(err);
        b->error = r < 0 ? r : -EIO;
        uv_async_send(&srv->boot_async);
}

void lifecycle_request_exit(struct server *srv, int status) {
        if (srv->state == DAEMON_STOPPING)
                return;
        srv->state = DAEMON_STOPPING;
        srv->exit_status = status;
        uv_stop(srv->loop);
}

static void on_boot_done(uv_async_t *a) {
        struct server *srv = a->data;
        if (srv->boot.error < 0) {
                log_error("the model could not be loaded; exiting");
                srv->exit_status = EXIT_FAILURE;
                lifecycle_request_exit(srv, EXIT_FAILURE);
                return;
        }
        srv->engine_ready = true;
        /* a SIGHUP while loading changed srv->cfg after the boot thread read it */
        (void) engine_set_admission(srv->boot.engine, srv->cfg.max_queue, srv->cfg.aging_ms);
        if (srv->state == DAEMON_LOADING)
                srv->state = DAEMON_READY;
        {
                struct engine_status st;
                engine_get_status(srv->boot.engine, &st);
                (void) sd_notifyf(0, "READY=1\nSTATUS=Serving %s on %s: KV %llu tokens (%u x 32K sequences)",
                                  srv->cfg.model_path, srv->boot.capacity.device,
                                  (unsigned long long) st.capacity_tokens, st.seqs_32k);
                log_info("ready: KV capacity %llu tokens, %u sequences of 32K tokens fit",
                         (unsigned long long) st.capacity_tokens, st.seqs_32k);
        }
        server_on_ready(srv);
        server_pump_events(srv);
}

static void on_engine_events(uv_async_t *a) {
        struct server *srv = a->data;
        server_pump_events(srv);
        if (srv->engine_ready) {
                struct engine_status st;
                engine_get_status(srv->boot.engine, &st);
                if (st.fatal) {
                        /* A sticky device error: a daemon that stays up answering errors is the worst
                         * outcome, so exit non-zero and let systemd restart us. */
                        log_error_errno(st.fatal, "the backend failed fatally; exiting so the service restarts");
                        lifecycle_request_exit(srv, EXIT_FAILURE);
                }
        }
}

static void on_watchdog(uv_timer_t *t) {
        struct server *srv = t->data;
        uint64_t now = engine_now_ns(), last;

        if (srv->engine_ready) {
                struct engine_status st;
                engine_get_status(srv->boot.engine, &st);
                if (st.fatal)
                        return;
                last = engine_last_progress_ns(srv->boot.engine);
        } else
                last = atomic_load(&srv->boot_progress_ns);
        if (now - last <= srv->watchdog_usec * 1000ull)
                (void) sd_notify(0, "WATCHDOG=1");
        else
                log_warning("%s made no progress for %.1fs; not feeding the watchdog",
                            srv->engine_ready ? "the engine" : "the boot", (double) (now - last) / 1e9);
}

static void on_drain_timeout(uv_timer_t *t) {
        struct server *srv = t->data;
        log_info("drain: %u request(s) still running after %us; cancelling them", srv->n_reqs,
                 srv->cfg.drain_seconds);
        server_cancel_everything(srv);
        /* their FINISHED(cancelled) events arrive through the engine; exit once the table is empty */
}

static void on_terminate(uv_signal_t *s, int signum) {
        struct server *srv = s->data;
        if (srv->state >= DAEMON_DRAINING) {
                log_info("%s again: exiting now", strsignal(signum));
                lifecycle_request_exit(srv, EXIT_SUCCESS);
                return;
        }
        log_info("%s: draining %u request(s) for up to %us", strsignal(signum), srv->n_reqs,
                 srv->cfg.drain_seconds);
        (void) sd_notify(0, "STOPPING=1\nSTATUS=Draining");
        server_stop_listening(srv);
        if (srv->state == DAEMON_LOADING) {
                lifecycle_request_exit(srv, EXIT_SUCCESS);
                return;
        }
        srv->state = DAEMON_DRAINING;
        srv->exit_status = EXIT_SUCCESS;
        uv_timer_start(&srv->drain_timer, on_drain_timeout, (uint64_t) srv->cfg.drain_seconds * 1000, 0);
        server_maybe_finish_drain(srv);
}

static void on_reload(uv_signal_t *s, int signum) {
        struct server *srv = s->data;
        struct gemma4d_config n;
        struct timespec ts;
        char restart[512];
        int r;

        (void) signum;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        (void) sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=Reloading the configuration",
                          (unsigned long long) ts.tv_sec * 1000000ull + (unsigned long long) ts.tv_nsec / 1000);
        if (!srv->reload) {
                log_warning("SIGHUP: no configuration source to reload");
                r = -EOPNOTSUPP;
        } else
                r = srv->reload(srv->reload_userdata, &n);
        if (r < 0)
                log_error("SIGHUP: the new configuration is invalid; keeping the running one");
        else {
                if (config_restart_keys_changed(&srv->cfg, &n, restart, sizeof restart))
                        log_warning("SIGHUP: changed keys that need a restart (not applied): %s", restart);
                server_apply_live_config(srv, &n);
                log_info("SIGHUP: configuration reloaded (log level, limits, access, scheduler)");
                config_done(&n);
        }
        (void) sd_notifyf(0, "READY=1\nSTATUS=%s", srv->engine_ready ? "Serving" : "Loading");
}

static void close_walk(uv_handle_t *h, void *arg) {
        (void) arg;
        if (!uv_is_closing(h))
                uv_close(h, NULL);
}

int daemon_run(const struct gemma4d_config *cfg, daemon_reload_fn reload, void *reload_userdata) {
        struct server *srv = calloc(1, sizeof *srv);
        uv_loop_t loop;
        int r, status;

        if (!srv)
                return EXIT_FAILURE;
        if (config_copy(cfg, &srv->cfg) < 0) {
                free(srv);
                return EXIT_FAILURE;
        }
        srv->reload = reload;
        srv->reload_userdata = reload_userdata;
        srv->start_ns = engine_now_ns();
        srv->exit_status = EXIT_SUCCESS;
        atomic_store(&srv->boot_progress_ns, engine_now_ns());
        {
                /* Test hook for the watchdog test (tests/daemon): the first request after READY stalls the
                 * engine this many ms, so the WATCHDOG=1 pings stop and then resume. */
                const char *stall = getenv("GEMMA4D_TEST_ENGINE_STALL_MS");
                if (stall && atoi(stall) > 0) {
                        srv->test_stall_ms = (uint32_t) atoi(stall);
                        log_warning("test hook GEMMA4D_TEST_ENGINE_STALL_MS: the first request stalls the "
                                    "engine %u ms", srv->test_stall_ms);
                }
        }
        uv_mutex_init(&srv->boot_lock);
        snprintf(srv->boot_phase, sizeof srv->boot_phase, "starting");
        /* A peer that disconnects mid-write must not kill the daemon. */
        signal(SIGPIPE, SIG_IGN);

        uv_loop_init(&loop);
        srv->loop = &loop;
        uv_async_init(&loop, &srv->engine_async, on_engine_events);
        srv->engine_async.data = srv;
        uv_async_init(&loop, &srv->boot_async, on_boot_done);
        srv->boot_async.data = srv;
        uv_signal_init(&loop, &srv->sig_term);
        uv_signal_init(&loop, &srv->sig_int);
        uv_signal_init(&loop, &srv->sig_hup);
        srv->sig_term.data = srv->sig_int.data = srv->sig_hup.data = srv;
        uv_signal_start(&srv->sig_term, on_terminate, SIGTERM);
        uv_signal_start(&srv->sig_int, on_terminate, SIGINT);
        uv_signal_start(&srv->sig_hup, on_reload, SIGHUP);
        uv_timer_init(&loop, &srv->watchdog_timer);
        uv_timer_init(&loop, &srv->drain_timer);
        srv->watchdog_timer.data = srv->drain_timer.data = srv;

        r = server_listen(srv);
        if (r < 0) {
                status = EXIT_FAILURE;
                goto finish;
        }
        if (sd_watchdog_enabled(0, &srv->watchdog_usec) > 0 && srv->watchdog_usec > 0) {
                uint64_t period_ms = srv->watchdog_usec / 2000;
                uv_timer_start(&srv->watchdog_timer, on_watchdog, period_ms ? period_ms : 1,
                               period_ms ? period_ms : 1);
                log_debug("watchdog: every %llu ms", (unsigned long long) period_ms);
        }
        if (config_copy(&srv->cfg, &srv->boot_cfg) < 0 ||
            uv_thread_create(&srv->boot_thread, boot_thread_main, srv) != 0) {
                log_error("cannot start the boot thread");
                status = EXIT_FAILURE;
                goto finish;
        }
        srv->boot_thread_started = true;

        uv_run(&loop, UV_RUN_DEFAULT);
        status = srv->exit_status;

finish:
        srv->state = DAEMON_STOPPING;
        if (srv->boot_thread_started)
                uv_thread_join(&srv->boot_thread);
        server_stop_listening(srv);
        server_close_all(srv);
        if (srv->engine_ready || srv->boot.engine) {
                struct engine_status st = { 0 };
                engine_get_status(srv->boot.engine, &st);
                if (st.fatal) {
                        /* The device is gone: freeing it could hang; the process exit cleans up. */
                        log_error("exiting after a fatal backend error");
                        return EXIT_FAILURE;
                }
                engine_free(srv->boot.engine);
        }
        if (srv->boot.backend)
                srv->boot.ops->destroy(srv->boot.backend);
        tokenizer_free(srv->boot.tokenizer);
        model_free(srv->boot.model);
        /* the remaining requests were cancelled by engine_free; drop their bookkeeping */
        server_free_requests(srv);
        uv_walk(&loop, close_walk, NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
        (void) uv_loop_close(&loop);
        uv_mutex_destroy(&srv->boot_lock);
        config_done(&srv->cfg);
        config_done(&srv->boot_cfg);
        free(srv);
        log_info("stopped");
        return status;
}
