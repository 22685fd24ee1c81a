/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Host cost of the engine per step, apart from the backend: bench-engine [vocab] [streams] [tokens] [temp]
 * runs `streams` concurrent greedy (or sampled, temp > 0) requests of `tokens` output tokens on the fake
 * backend in benchmark mode and reports the time per step spent outside forward() (scheduling, KV
 * bookkeeping, sampling, events), as well as inside it (the fake's logits copy, which any backend pays).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fake-backend.h"
#include "server/engine.h"

static uint64_t mono_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

int main(int argc, char **argv) {
        uint32_t vocab = argc > 1 ? (uint32_t) strtoul(argv[1], NULL, 10) : 262144;
        uint32_t streams = argc > 2 ? (uint32_t) strtoul(argv[2], NULL, 10) : 64;
        uint32_t tokens = argc > 3 ? (uint32_t) strtoul(argv[3], NULL, 10) : 64;
        float temp = argc > 4 ? strtof(argv[4], NULL) : 0.0f;
        if (vocab < 256 || streams == 0 || streams > 1024 || tokens == 0) {
                fprintf(stderr, "usage: bench-engine [vocab >= 256] [streams 1..1024] [tokens] [temperature]\n");
                return 2;
        }
        struct fake_params fp = { .page_size = 16, .n_full_pages = streams * ((128 + tokens) / 16 + 2),
                                  .n_sliding_pages = streams * 66 * 2, .window = 1024, .vocab = vocab,
                                  .fast = true };
        struct backend *b;
        int r = fake_backend_new(&fp, &b);
        if (r < 0) {
                fprintf(stderr, "fake backend: %s\n", strerror(-r));
                return 1;
        }
        struct engine_params p = {
                .ops = &fake_backend_ops, .backend = b, .vocab_size = vocab, .n_stop_ids = 0,
                .max_model_len = 4096, .max_num_seqs = streams, .max_batched_tokens = 8192,
                .max_queue = 4096, .prefix_cache = true,
        };
        struct engine *e;
        char *err = NULL;
        r = engine_new(&p, &e, &err);
        if (r < 0) {
                fprintf(stderr, "engine: %s\n", err ? err : strerror(-r));
                free(err);
                fake_backend_ops.destroy(b);
                return 1;
        }
        int32_t prompt[128];
        for (uint32_t i = 0; i < streams; i++) {
                for (uint32_t k = 0; k < 128; k++)
                        prompt[k] = (int32_t) ((k * 31 + i * 7 + 3) % vocab);
                struct engine_request rq = { .conn_id = 1, .req_id = i, .kind = ENGINE_KIND_GENERATE,
                                             .tokens = prompt, .n_tokens = 128 };
                sampling_params_init(&rq.params);
                rq.params.temperature = temp;
                rq.params.top_p = temp > 0 ? 0.95f : 1.0f;
                rq.params.max_tokens = tokens;
                char msg[256];
                if ((r = engine_submit(e, &rq, msg, sizeof(msg))) < 0) {
                        fprintf(stderr, "submit: %s\n", msg);
                        return 1;
                }
        }
        /* prefill first, then time the decode steps only */
        uint32_t finished = 0;
        uint64_t decode_ns = 0, decode_fwd_ns = 0, decode_steps = 0;
        bool prefilled = false;
        while (finished < streams) {
                struct engine_status st;
                uint64_t t0 = mono_ns(), f0 = fake_backend_forward_ns(b);
                r = engine_run_step(e);
                if (r < 0) {
                        fprintf(stderr, "step: %s\n", strerror(-r));
                        return 1;
                }
                uint64_t dt = mono_ns() - t0, df = fake_backend_forward_ns(b) - f0;
                for (struct engine_event *ev = engine_pop_events(e), *next; ev; ev = next) {
                        next = ev->next;
                        finished += ev->type == ENGINE_EVENT_FINISHED || ev->type == ENGINE_EVENT_ERROR;
                        engine_event_free(ev);
                }
                engine_get_status(e, &st);
                if (prefilled && st.running == streams) {
                        decode_ns += dt;
                        decode_fwd_ns += df;
                        decode_steps++;
                }
                if (st.running == streams)
                        prefilled = true;
        }
        if (decode_steps == 0) {
                fprintf(stderr, "no full decode steps measured\n");
                return 1;
        }
        printf("vocab %u, %u streams, %s: %llu decode steps, %.3f ms/step outside forward (%.1f us per "
               "sequence), %.3f ms/step inside the fake forward\n", vocab, streams,
               temp > 0 ? "sampled (T, top_p 0.95)" : "greedy", (unsigned long long) decode_steps,
               (double) (decode_ns - decode_fwd_ns) / decode_steps / 1e6,
               (double) (decode_ns - decode_fwd_ns) / decode_steps / streams / 1e3,
               (double) decode_fwd_ns / decode_steps / 1e6);
        engine_free(e);
        fake_backend_ops.destroy(b);
        return 0;
}
