/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gemma4-eval: feed token ids through a backend and report logits, greedy continuations or decode speed.
 * One sequence; page ids are handed out sequentially. Used by the golden/GPU comparisons and by people.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "model/model.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gemma4-eval writes native floats as little-endian: port the writer first"
#endif

struct eval_opts {
        const char *model_dir, *backend, *dump_path;
        int32_t *ids;
        uint32_t n_ids;
        uint32_t greedy, bench, page_size, chunk;
        int threads;
        enum kv_dtype kv_dtype;
        bool kv_dtype_set;
        bool weights_bf16, lm_head_bf16;        /* CUDA: cuda.weights / cuda.lm_head bf16 */
};

static void usage(FILE *f) {
        fputs("Usage: gemma4-eval --model DIR --ids ID,ID,... [options]\n"
              "  --backend cpu|cuda     compute backend (default cpu)\n"
              "  --dump-logits FILE     write float32 little-endian logits [n_ids, vocab] of every id\n"
              "  --greedy N             print N greedily generated ids, space-separated, on one line\n"
              "  --bench N              decode N tokens after the prompt and report tokens/s\n"
              "  --threads N            CPU backend threads (default: all cores)\n"
              "  --page-size B          KV page size in tokens (default 16)\n"
              "  --chunk N              prefill at most N tokens per step (default 256)\n"
              "  --kv-dtype bf16|fp8    KV cache dtype (CUDA default bf16; the CPU keeps float32 unless given,\n"
              "                         then rounds K/V as the GPU stores them)\n"
              "  --weights fp8|bf16     CUDA: FP8 per channel (default) or a BF16 checkpoint's weights in BF16\n"
              "  --lm-head fp8|bf16     CUDA: FP8 copy of the LM head (default) or the BF16 table\n"
              "  -h, --help\n", f);
}

static int parse_u32(const char *s, const char *what, uint32_t min, uint32_t max, uint32_t *ret) {
        char *end;
        unsigned long long v;

        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno || end == s || *end || s[0] == '-' || v < min || v > max) {
                fprintf(stderr, "gemma4-eval: %s: '%s' is not an integer in [%u, %u]\n", what, s, min, max);
                return -EINVAL;
        }
        *ret = (uint32_t) v;
        return 0;
}

static int parse_ids(const char *s, int32_t **ret, uint32_t *ret_n) {
        uint32_t cap = 16, n = 0;
        int32_t *ids = malloc(cap * sizeof(int32_t));
        const char *p = s;

        if (!ids)
                return -ENOMEM;
        while (*p) {
                char *end;
                long long v;
                errno = 0;
                v = strtoll(p, &end, 10);
                if (errno || end == p || v < 0 || v > INT32_MAX || (*end && *end != ',')) {
                        fprintf(stderr,
                                "gemma4-eval: --ids: bad id list '%s' (want comma-separated ids >= 0)\n", s);
                        free(ids);
                        return -EINVAL;
                }
                if (n == cap) {
                        int32_t *t = realloc(ids, 2 * cap * sizeof(int32_t));
                        if (!t) {
                                free(ids);
                                return -ENOMEM;
                        }
                        ids = t;
                        cap *= 2;
                }
                ids[n++] = (int32_t) v;
                p = *end ? end + 1 : end;
                if (*end == ',' && !*p) {
                        fprintf(stderr, "gemma4-eval: --ids: trailing comma in '%s'\n", s);
                        free(ids);
                        return -EINVAL;
                }
        }
        if (n == 0) {
                fprintf(stderr, "gemma4-eval: --ids: empty id list\n");
                free(ids);
                return -EINVAL;
        }
        *ret = ids;
        *ret_n = n;
        return 0;
}

static int parse_args(int argc, char **argv, struct eval_opts *o) {
        static const struct option longopts[] = {
                { "model", required_argument, NULL, 'm' },   { "backend", required_argument, NULL, 'b' },
                { "ids", required_argument, NULL, 'i' },     { "dump-logits", required_argument, NULL, 'd' },
                { "greedy", required_argument, NULL, 'g' },  { "bench", required_argument, NULL, 'B' },
                { "threads", required_argument, NULL, 't' }, { "page-size", required_argument, NULL, 'p' },
                { "chunk", required_argument, NULL, 'c' },   { "kv-dtype", required_argument, NULL, 'k' },
                { "weights", required_argument, NULL, 'W' }, { "lm-head", required_argument, NULL, 'L' },
                { "help", no_argument, NULL, 'h' },          { 0 },
        };
        uint32_t v;
        int c, r;

        *o = (struct eval_opts) { .backend = "cpu", .page_size = 16, .chunk = 256,
                                  .kv_dtype = KV_DTYPE_BF16 };
        while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
                r = 0;
                switch (c) {
                case 'm': o->model_dir = optarg; break;
                case 'b': o->backend = optarg; break;
                case 'd': o->dump_path = optarg; break;
                case 'i':
                        free(o->ids);
                        o->ids = NULL;
                        r = parse_ids(optarg, &o->ids, &o->n_ids);
                        break;
                case 'g': r = parse_u32(optarg, "--greedy", 0, 1u << 20, &o->greedy); break;
                case 'B': r = parse_u32(optarg, "--bench", 1, 1u << 20, &o->bench); break;
                case 't':
                        r = parse_u32(optarg, "--threads", 1, 256, &v);
                        o->threads = (int) v;
                        break;
                case 'p': r = parse_u32(optarg, "--page-size", 1, 4096, &o->page_size); break;
                case 'c': r = parse_u32(optarg, "--chunk", 1, 1u << 16, &o->chunk); break;
                case 'k':
                        o->kv_dtype_set = true;
                        if (strcmp(optarg, "bf16") == 0)
                                o->kv_dtype = KV_DTYPE_BF16;
                        else if (strcmp(optarg, "fp8") == 0)
                                o->kv_dtype = KV_DTYPE_FP8;
                        else {
                                fprintf(stderr, "gemma4-eval: --kv-dtype: '%s' is not bf16 or fp8\n",
                                        optarg);
                                r = -EINVAL;
                        }
                        break;
                case 'W':
                case 'L': {
                        bool bf16 = strcmp(optarg, "bf16") == 0;
                        if (!bf16 && strcmp(optarg, "fp8") != 0) {
                                fprintf(stderr, "gemma4-eval: --%s: '%s' is not fp8 or bf16\n",
                                        c == 'W' ? "weights" : "lm-head", optarg);
                                r = -EINVAL;
                        } else if (c == 'W') {
                                o->weights_bf16 = bf16;
                        } else {
                                o->lm_head_bf16 = bf16;
                        }
                        break;
                }
                case 'h': usage(stdout); return 1;
                default: usage(stderr); return -EINVAL;
                }
                if (r < 0)
                        return r;
        }
        if (optind < argc) {
                fprintf(stderr, "gemma4-eval: unexpected argument '%s'\n", argv[optind]);
                return -EINVAL;
        }
        if (!o->model_dir || !o->ids) {
                fprintf(stderr, "gemma4-eval: --model and --ids are required\n");
                usage(stderr);
                return -EINVAL;
        }
        if (!o->dump_path && !o->greedy && !o->bench) {
                fprintf(stderr, "gemma4-eval: nothing to do: give --dump-logits, --greedy or --bench\n");
                return -EINVAL;
        }
        return 0;
}

struct session {
        const struct backend_ops *ops;
        struct backend *be;
        struct model *model;
        struct backend_capacity cap;
        uint32_t *full_pages, *sliding_pages, n_full, max_len;
};

static double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + ts.tv_nsec / 1e9;
}

static int step(struct session *s, const int32_t *tokens, uint32_t n, uint32_t pos, bool all, float *out) {
        struct backend_seq seq = { .tokens = tokens, .n_tokens = n, .pos = pos, .full_pages = s->full_pages,
                                   .n_full_pages = s->n_full, .sliding_pages = s->sliding_pages,
                                   .n_sliding_pages = s->cap.n_sliding_ring, .all_logits = all };
        struct backend_batch b = { .seqs = &seq, .n_seqs = 1 };
        int r = s->ops->forward(s->be, &b, out);

        if (r < 0)
                fprintf(stderr, "gemma4-eval: %s forward at position %u failed: %s\n", s->ops->name, pos,
                        strerror(-r));
        return r;
}

static double cpu_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
        return (double) ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint32_t argmax(const float *v, uint32_t n) {
        uint32_t best = 0;
        for (uint32_t i = 1; i < n; i++)
                if (v[i] > v[best])
                        best = i;
        return best;
}

static int run(const struct eval_opts *o) {
        struct session s = { 0 };
        struct backend_params p = { 0 };
        uint32_t V, B = o->page_size, extra = o->greedy > o->bench ? o->greedy : o->bench, ring;
        float *logits = NULL, *last = NULL;
        char *err = NULL;
        FILE *f = NULL;
        int r;

        s.ops = backend_find(o->backend);
        if (!s.ops) {
                fprintf(stderr, "gemma4-eval: unknown or unbuilt backend '%s'\n", o->backend);
                return -EINVAL;
        }
        r = model_load(o->model_dir, &s.model, &err);
        if (r < 0) {
                fprintf(stderr, "gemma4-eval: %s\n", err ? err : strerror(-r));
                free(err);
                return r;
        }
        V = s.model->cfg.vocab_size;
        for (uint32_t i = 0; i < o->n_ids; i++)
                if ((uint32_t) o->ids[i] >= V) {
                        fprintf(stderr, "gemma4-eval: --ids: id %d is outside the vocabulary (%u)\n",
                                o->ids[i], V);
                        r = -EINVAL;
                        goto out;
                }
        s.max_len = o->n_ids + extra + 1;
        s.n_full = (s.max_len + B - 1) / B;
        ring = (s.model->cfg.sliding_window + B - 1) / B + 1;
        p.kv_dtype = o->kv_dtype;
        p.cpu_kv_round = o->kv_dtype_set;
        p.weights_bf16 = o->weights_bf16;
        p.lm_head_bf16 = o->lm_head_bf16;
        p.page_size = B;
        p.max_num_seqs = 1;
        p.max_batched_tokens = o->chunk;
        p.max_model_len = s.max_len;
        p.n_full_pages = s.n_full;
        p.n_sliding_pages = ring;
        p.gpu_fraction = 0.9;
        p.n_threads = o->threads;
        r = s.ops->create(s.model, &p, &s.be, &err);
        if (r < 0) {
                fprintf(stderr, "gemma4-eval: %s backend: %s\n", o->backend, err ? err : strerror(-r));
                free(err);
                goto out;
        }
        s.ops->get_capacity(s.be, &s.cap);
        s.full_pages = calloc(s.n_full, sizeof(uint32_t));
        s.sliding_pages = calloc(s.cap.n_sliding_ring ? s.cap.n_sliding_ring : 1, sizeof(uint32_t));
        logits = malloc((size_t) o->n_ids * V * sizeof(float));
        last = malloc((size_t) V * sizeof(float));
        if (!s.full_pages || !s.sliding_pages || !logits || !last) {
                fprintf(stderr, "gemma4-eval: out of memory\n");
                r = -ENOMEM;
                goto out;
        }
        for (uint32_t i = 0; i < s.n_full; i++)
                s.full_pages[i] = i;
        for (uint32_t i = 0; i < s.cap.n_sliding_ring; i++)
                s.sliding_pages[i] = i;

        {
                double t0 = now_s(), t1;
                /* every row only when they are dumped; otherwise the last row, as a server prefill */
                r = step(&s, o->ids, o->n_ids, 0, o->dump_path != NULL, logits);
                if (r < 0)
                        goto out;
                t1 = now_s();
                if (o->bench)
                        fprintf(stderr, "prefill: %u tokens in %.3f s = %.1f tokens/s (%s)\n", o->n_ids,
                                t1 - t0, o->n_ids / (t1 - t0), s.cap.device);
        }
        if (o->dump_path) {
                f = fopen(o->dump_path, "wb");
                if (!f || fwrite(logits, sizeof(float), (size_t) o->n_ids * V, f) != (size_t) o->n_ids * V ||
                    fclose(f) != 0) {
                        fprintf(stderr, "gemma4-eval: cannot write %s: %s\n", o->dump_path, strerror(errno));
                        f = NULL;
                        r = -EIO;
                        goto out;
                }
                f = NULL;
        }
        memcpy(last, logits + (o->dump_path ? (size_t) (o->n_ids - 1) * V : 0), (size_t) V * sizeof(float));
        if (o->greedy || o->bench) {
                uint32_t pos = o->n_ids;
                double t0 = now_s(), c0 = cpu_s(), t1, c1;
                for (uint32_t i = 0; i < extra; i++) {
                        int32_t tok = (int32_t) argmax(last, V);
                        if (i < o->greedy)
                                printf(i ? " %d" : "%d", tok);
                        if (i + 1 == extra)
                                break;
                        r = step(&s, &tok, 1, pos++, false, last);
                        if (r < 0)
                                goto out;
                }
                t1 = now_s();
                c1 = cpu_s();
                if (o->greedy)
                        printf("\n");
                /* CPU time shows what the wall clock hides on a shared machine */
                if (o->bench && extra > 1)
                        fprintf(stderr,
                                "decode: %u tokens in %.3f s = %.1f tokens/s, %.2f ms CPU/token (%s)\n",
                                extra - 1, t1 - t0, (extra - 1) / (t1 - t0), (c1 - c0) * 1e3 / (extra - 1),
                                s.cap.device);
        }
        r = 0;
out:
        if (f)
                fclose(f);
        if (s.be)
                s.ops->destroy(s.be);
        model_free(s.model);
        free(s.full_pages);
        free(s.sliding_pages);
        free(logits);
        free(last);
        return r;
}

int main(int argc, char **argv) {
        struct eval_opts o = { 0 };
        int r = parse_args(argc, argv, &o);

        if (r == 0)
                r = run(&o);
        free(o.ids);
        if (r > 0)
                return 0;
        return r < 0 ? 1 : 0;
}
