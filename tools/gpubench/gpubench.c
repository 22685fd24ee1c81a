/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gemma4-gpubench: the CUDA backend's own numbers on a checkpoint, straight through backend.h (no socket, no
 * scheduler): time to ready, weight memory, prefill of one long prompt, single-stream decode and aggregate
 * decode over many concurrent streams, and a per-op breakdown of a decode step (docs/performance.md).
 * Greedy sampling on the host from the float32 logits the interface returns.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime_api.h>

#include "backend.h"
#include "cuda/cuda-profile.h"

struct opts {
        const char *model;
        enum kv_dtype kv;
        uint32_t page, prefill, prompt, decode, streams, stream_prompt, stream_decode, repeats;
        bool profile, head_bf16, greedy, weights_bf16;
};

static double now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint32_t argmax(const float *row, uint32_t n) {
        uint32_t best = 0;
        float bv = row[0];
        for (uint32_t i = 1; i < n; i++)
                if (row[i] > bv) {
                        bv = row[i];
                        best = i;
                }
        return best;
}

/* greedy sampling of many rows on the host: one thread per block of rows (the engine would sample on the
 * GPU; this keeps the host from dominating the many-stream figure) */
struct argmax_job {
        const float *logits;
        uint32_t V, r0, r1;
        int32_t *out;
};

static void *argmax_worker(void *arg) {
        struct argmax_job *j = arg;
        for (uint32_t r = j->r0; r < j->r1; r++)
                j->out[r] = (int32_t) argmax(j->logits + (size_t) r * j->V, j->V);
        return NULL;
}

static void argmax_rows(const float *logits, uint32_t rows, uint32_t V, int32_t *out) {
        enum { MAXT = 16 };
        pthread_t th[MAXT];
        struct argmax_job jobs[MAXT];
        uint32_t n = rows < MAXT ? rows : MAXT, per = (rows + n - 1) / n;
        if (rows <= 2) {
                for (uint32_t r = 0; r < rows; r++)
                        out[r] = (int32_t) argmax(logits + (size_t) r * V, V);
                return;
        }
        for (uint32_t i = 0; i < n; i++) {
                jobs[i] = (struct argmax_job){logits, V, i * per, (i + 1) * per < rows ? (i + 1) * per : rows, out};
                if (pthread_create(&th[i], NULL, argmax_worker, &jobs[i]) != 0)
                        argmax_worker(&jobs[i]), th[i] = 0;
        }
        for (uint32_t i = 0; i < n; i++)
                if (th[i])
                        pthread_join(th[i], NULL);
}

struct bench {
        const struct backend_ops *ops;
        struct backend *be;
        struct backend_capacity cap;
        uint32_t V, pages_per_seq, slots;
        uint32_t *full, *sliding;
        float *logits;
        size_t logits_bytes;
};

static struct backend_seq seq_at(struct bench *b, uint32_t slot, const int32_t *tok, uint32_t n, uint32_t pos,
                                 bool all) {
        return (struct backend_seq){.tokens = tok, .n_tokens = n, .pos = pos,
                                    .full_pages = b->full + (size_t) slot * b->pages_per_seq,
                                    .n_full_pages = b->pages_per_seq,
                                    .sliding_pages = b->sliding + (size_t) slot * b->cap.n_sliding_ring,
                                    .n_sliding_pages = b->cap.n_sliding_ring, .all_logits = all};
}

static int prefill(struct bench *b, uint32_t slot, const int32_t *tok, uint32_t n, uint32_t chunk) {
        for (uint32_t done = 0; done < n;) {
                uint32_t k = n - done < chunk ? n - done : chunk;
                struct backend_seq s = seq_at(b, slot, tok + done, k, done, false);
                struct backend_batch bt = {&s, 1};
                int r = b->ops->forward(b->be, &bt, b->logits);
                if (r < 0)
                        return r;
                done += k;
        }
        return 0;
}

static double fwd_seconds;     /* time inside forward() during the last decode_streams() */
static bool use_greedy;         /* --greedy: decode through forward_greedy (argmax on the device) */

/* n_streams sequences that each have `prompt` tokens: decode `steps` steps together; returns seconds */
static double decode_streams(struct bench *b, uint32_t n_streams, uint32_t prompt, uint32_t steps, int *ret) {
        struct backend_seq *s = calloc(n_streams, sizeof(*s));
        int32_t *tok = calloc(n_streams, sizeof(int32_t));
        double t0, t1;
        int r = 0;

        for (uint32_t i = 0; i < n_streams; i++)
                tok[i] = (int32_t) argmax(b->logits + (size_t) i * b->V, b->V) % (int32_t) b->V;
        t0 = now();
        fwd_seconds = 0;
        for (uint32_t step = 0; step < steps && r == 0; step++) {
                for (uint32_t i = 0; i < n_streams; i++)
                        s[i] = seq_at(b, i, &tok[i], 1, prompt + step, false);
                struct backend_batch bt = {s, n_streams};
                double f0 = now();
                if (use_greedy) {
                        r = b->ops->forward_greedy(b->be, &bt, tok);
                        fwd_seconds += now() - f0;
                        continue;
                }
                r = b->ops->forward(b->be, &bt, b->logits);
                fwd_seconds += now() - f0;
                if (r == 0)
                        argmax_rows(b->logits, n_streams, b->V, tok);
        }
        t1 = now();
        free(s);
        free(tok);
        *ret = r;
        return t1 - t0;
}

static void usage(void) {
        printf("Usage: gemma4-gpubench --model DIR [options]\n"
               "  --kv fp8|bf16        KV cache dtype (default fp8)\n"
               "  --page-size B        KV page size (default 16)\n"
               "  --prefill N          one prompt of N tokens in one step (default 8192, 0 = skip)\n"
               "  --prompt N           single-stream prompt length (default 38)\n"
               "  --decode N           single-stream decode steps (default 256)\n"
               "  --streams N          concurrent streams (default 64, 0 = skip)\n"
               "  --stream-prompt N    prompt per stream (default 256)\n"
               "  --stream-decode N    decode steps with all streams (default 256)\n"
               "  --repeats N          timed repeats of each figure (default 3)\n"
               "  --head-bf16          BF16 LM head instead of the FP8 copy\n"
               "  --weights-bf16       keep a BF16 checkpoint's weights in BF16 (cuda.weights bf16)\n"
               "  --greedy             decode through forward_greedy (argmax on the device, no logits copy)\n"
               "  --profile            per-op breakdown of decode steps and of the prefill\n");
}

int main(int argc, char **argv) {
        struct opts o = {NULL, KV_DTYPE_FP8, 16, 8192, 38, 256, 64, 256, 256, 3, false, false, false};
        static const struct option lo[] = {
                {"model", required_argument, NULL, 'm'},  {"kv", required_argument, NULL, 'k'},
                {"page-size", required_argument, NULL, 'B'}, {"prefill", required_argument, NULL, 'P'},
                {"prompt", required_argument, NULL, 'p'}, {"decode", required_argument, NULL, 'd'},
                {"streams", required_argument, NULL, 's'}, {"stream-prompt", required_argument, NULL, 'q'},
                {"stream-decode", required_argument, NULL, 'D'}, {"repeats", required_argument, NULL, 'r'},
                {"profile", no_argument, NULL, 'x'}, {"head-bf16", no_argument, NULL, 'H'},
                {"greedy", no_argument, NULL, 'g'}, {"weights-bf16", no_argument, NULL, 'W'},
                {"help", no_argument, NULL, 'h'}, {0},
        };
        int c, r;
        while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
                switch (c) {
                case 'm': o.model = optarg; break;
                case 'k': o.kv = strcmp(optarg, "bf16") == 0 ? KV_DTYPE_BF16 : KV_DTYPE_FP8; break;
                case 'B': o.page = (uint32_t) strtoul(optarg, NULL, 10); break;
                case 'P': o.prefill = (uint32_t) strtoul(optarg, NULL, 10); break;
                case 'p': o.prompt = (uint32_t) strtoul(optarg, NULL, 10); break;
                case 'd': o.decode = (uint32_t) strtoul(optarg, NULL, 10); break;
                case 's': o.streams = (uint32_t) strtoul(optarg, NULL, 10); break;
                case 'q': o.stream_prompt = (uint32_t) strtoul(optarg, NULL, 10); break;
                case 'D': o.stream_decode = (uint32_t) strtoul(optarg, NULL, 10); break;
                case 'r': o.repeats = (uint32_t) strtoul(optarg, NULL, 10); break;
                case 'x': o.profile = true; break;
                case 'H': o.head_bf16 = true; break;
                case 'g': o.greedy = true; break;
                case 'W': o.weights_bf16 = true; break;
                case 'h': usage(); return 0;
                default: usage(); return 2;
                }
        }
        if (!o.model || o.page == 0 || o.prompt == 0 || o.repeats == 0) {
                usage();
                return 2;
        }

        struct bench b = {0};
        struct model *m = NULL;
        char *err = NULL;
        double t0 = now();
        r = model_load(o.model, &m, &err);
        if (r < 0) {
                fprintf(stderr, "gemma4-gpubench: %s\n", err ? err : strerror(-r));
                return 1;
        }
        double t_load = now();
        uint32_t max_len = o.prompt + o.decode;
        if (o.stream_prompt + o.stream_decode > max_len)
                max_len = o.stream_prompt + o.stream_decode;
        if (o.prefill > max_len)
                max_len = o.prefill;
        max_len += 16;
        b.slots = o.streams > 1 ? o.streams : 1;
        b.pages_per_seq = (max_len + o.page - 1) / o.page;
        struct backend_params p = {0};
        p.kv_dtype = o.kv;
        p.page_size = o.page;
        p.max_num_seqs = b.slots;
        p.max_batched_tokens = o.prefill > 2048 ? o.prefill : 2048;
        p.max_model_len = max_len;
        p.gpu_fraction = 0.9;
        p.lm_head_bf16 = o.head_bf16;
        p.weights_bf16 = o.weights_bf16;
        b.ops = backend_find("cuda");
        if (!b.ops) {
                fprintf(stderr, "gemma4-gpubench: built without the CUDA backend\n");
                return 1;
        }
        use_greedy = o.greedy && b.ops->forward_greedy;
        r = b.ops->create(m, &p, &b.be, &err);
        if (r < 0) {
                fprintf(stderr, "gemma4-gpubench: %s\n", err ? err : strerror(-r));
                return 1;
        }
        double t_ready = now();
        b.ops->get_capacity(b.be, &b.cap);
        b.V = m->cfg.vocab_size;
        printf("device: %s\n", b.cap.device);
        printf("ready: %.2f s (model_load %.2f s, backend create %.2f s)\n", t_ready - t0, t_load - t0,
               t_ready - t_load);
        printf("weights on GPU: %.2f GiB; KV: %.2f GiB, %u full + %u sliding pages of %u (ring %u)\n",
               b.cap.weight_bytes / 1073741824.0, b.cap.kv_bytes / 1073741824.0, b.cap.n_full_pages,
               b.cap.n_sliding_pages, b.cap.page_size, b.cap.n_sliding_ring);
        if ((uint64_t) b.slots * b.pages_per_seq > b.cap.n_full_pages) {
                fprintf(stderr, "gemma4-gpubench: not enough KV pages for %u streams\n", b.slots);
                return 1;
        }
        b.full = calloc((size_t) b.slots * b.pages_per_seq, sizeof(uint32_t));
        b.sliding = calloc((size_t) b.slots * b.cap.n_sliding_ring + 1, sizeof(uint32_t));
        for (uint32_t i = 0; i < b.slots * b.pages_per_seq; i++)
                b.full[i] = i;
        for (uint32_t i = 0; i < b.slots * b.cap.n_sliding_ring; i++)
                b.sliding[i] = i;
        b.logits_bytes = (size_t) b.slots * b.V * sizeof(float);
        /* page-locked, so logits come back by DMA (what the engine thread should do with its buffer too) */
        if (cudaMallocHost((void **) &b.logits, b.logits_bytes) != cudaSuccess) {
                fprintf(stderr, "gemma4-gpubench: cannot allocate logits\n");
                return 1;
        }
        uint32_t tok_n = o.prefill > o.stream_prompt ? o.prefill : o.stream_prompt;
        if (o.prompt > tok_n)
                tok_n = o.prompt;
        int32_t *tok = malloc(sizeof(int32_t) * tok_n);
        uint64_t seed = 12345;
        for (uint32_t i = 0; i < tok_n; i++) {
                seed = seed * 6364136223846793005ull + 1442695040888963407ull;
                tok[i] = (int32_t) ((seed >> 33) % (b.V - 10)) + 3;
        }
        tok[0] = 2;

        /* single stream: prompt, then greedy decode */
        for (uint32_t rep = 0; rep <= o.repeats; rep++) {
                double tp0 = now();
                if ((r = prefill(&b, 0, tok, o.prompt, o.prompt)) < 0)
                        goto fail;
                double tp1 = now();
                double dt = decode_streams(&b, 1, o.prompt, rep == 0 ? 8 : o.decode, &r);
                if (r < 0)
                        goto fail;
                if (rep > 0)
                        printf("single-stream: prompt %u in %.2f ms, decode %u tokens in %.3f s = %.1f tok/s "
                               "(%.3f ms/token, %.3f in forward)\n", o.prompt, (tp1 - tp0) * 1e3, o.decode, dt,
                               o.decode / dt, dt * 1e3 / o.decode, fwd_seconds * 1e3 / o.decode);
        }
        /* many streams */
        if (o.streams > 0) {
                for (uint32_t rep = 0; rep <= o.repeats && rep <= 2; rep++) {
                        double tp0 = now();
                        for (uint32_t i = 0; i < o.streams; i++)
                                if ((r = prefill(&b, i, tok, o.stream_prompt, o.stream_prompt)) < 0)
                                        goto fail;
                        double tp1 = now();
                        double dt = decode_streams(&b, o.streams, o.stream_prompt, rep == 0 ? 4 : o.stream_decode, &r);
                        if (r < 0)
                                goto fail;
                        if (rep > 0)
                                printf("%u streams: prefill %u x %u tokens in %.2f s; decode %u steps in %.3f s = "
                                       "%.0f tok/s aggregate (%.2f ms/step, %.2f ms in forward)\n", o.streams, o.streams,
                                       o.stream_prompt, tp1 - tp0, o.stream_decode, dt,
                                       (double) o.streams * o.stream_decode / dt, dt * 1e3 / o.stream_decode,
                                       fwd_seconds * 1e3 / o.stream_decode);
                }
        }
        /* one long prompt */
        if (o.prefill > 0) {
                for (uint32_t rep = 0; rep <= o.repeats; rep++) {
                        double tp0 = now();
                        if ((r = prefill(&b, 0, tok, o.prefill, o.prefill)) < 0)
                                goto fail;
                        double tp1 = now();
                        if (rep > 0)
                                printf("prefill: %u tokens in one step: %.3f s = %.0f tok/s (time to first token)\n",
                                       o.prefill, tp1 - tp0, o.prefill / (tp1 - tp0));
                }
        }
        if (o.profile) {
                char buf[4096];
                if (cuda_backend_set_profile(b.be, true) < 0)
                        goto fail;
                if ((r = prefill(&b, 0, tok, o.prompt, o.prompt)) < 0)
                        goto fail;
                cuda_backend_profile(b.be, buf, sizeof(buf), true);
                decode_streams(&b, 1, o.prompt, 16, &r);
                if (r < 0)
                        goto fail;
                cuda_backend_profile(b.be, buf, sizeof(buf), true);
                printf("profile: decode, 1 stream, context ~%u (eager launches, no graph)\n%s", o.prompt, buf);
                if (o.streams > 1) {
                        decode_streams(&b, o.streams, o.stream_prompt, 4, &r);
                        if (r < 0)
                                goto fail;
                        cuda_backend_profile(b.be, buf, sizeof(buf), true);
                        printf("profile: decode, %u streams\n%s", o.streams, buf);
                }
                if (o.prefill > 0) {
                        if ((r = prefill(&b, 0, tok, o.prefill, o.prefill)) < 0)
                                goto fail;
                        cuda_backend_profile(b.be, buf, sizeof(buf), true);
                        printf("profile: prefill %u tokens\n%s", o.prefill, buf);
                }
        }
        b.ops->destroy(b.be);
        model_free(m);
        cudaFreeHost(b.logits);
        free(b.full), free(b.sliding), free(tok);
        return 0;
fail:
        fprintf(stderr, "gemma4-gpubench: forward failed: %s\n", strerror(-r));
        return 1;
}
