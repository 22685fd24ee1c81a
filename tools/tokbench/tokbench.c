/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tokbench: measures the tokenizer on one core (a benchmark, not a test).
 *
 *   tokbench [-n RUNS] TOKENIZER_JSON [TEXT_FILE...]
 *
 * Prints the load time of tokenizer.json (best and median of RUNS loads), then for each text file (or,
 * without files, built-in English prose of about 4 MB) the encode and decode throughput in MB/s of input
 * text, best of RUNS. Times are CPU time of the (single-threaded) process. Numbers go to docs/perf-notes.md under "## tokenizer".
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tokenizer/tokenizer.h"

/* CPU time of this process: on a shared machine wall time mostly measures the neighbours. */
static double now_s(void) {
        struct timespec ts;

        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *)a, y = *(const double *)b;

        return x < y ? -1 : x > y;
}

static int read_all(const char *path, char **ret, size_t *ret_len) {
        FILE *f = fopen(path, "rb");
        char *buf = NULL;
        size_t n = 0, cap = 0;

        if (!f)
                return -errno;
        for (;;) {
                size_t got;

                if (cap - n < 65536) {
                        char *nb = realloc(buf, cap = cap ? cap * 2 : 1 << 20);

                        if (!nb) {
                                free(buf);
                                fclose(f);
                                return -ENOMEM;
                        }
                        buf = nb;
                }
                got = fread(buf + n, 1, cap - n, f);
                n += got;
                if (got == 0)
                        break;
        }
        fclose(f);
        *ret = buf;
        *ret_len = n;
        return 0;
}

/* Deterministic English-like prose: sentences of common words in paragraphs. */
static char *make_english(size_t target, size_t *ret_len) {
        static const char *const words[] = {
                "the", "of", "and", "to", "in", "is", "was", "for", "that", "on", "as", "with", "by", "he",
                "at", "from", "his", "an", "were", "are", "which", "this", "be", "or", "had", "not", "but",
                "they", "have", "one", "their", "all", "has", "been", "also", "more", "first", "new", "who",
                "after", "its", "two", "can", "other", "when", "into", "time", "only", "may", "there",
                "would", "some", "these", "than", "most", "over", "years", "where", "made", "between",
                "government", "university", "national", "however", "language", "American", "century",
                "different", "network", "question", "answer", "simple", "tokenizer", "daemon", "weather",
                "London", "temperature", "yesterday", "don't", "it's", "state-of-the-art", "1984", "42",
        };
        size_t nw = sizeof(words) / sizeof(words[0]), n = 0;
        char *buf = malloc(target + 256);
        unsigned x = 12345;

        if (!buf)
                return NULL;
        while (n < target) {
                unsigned len = 5 + (x % 15);

                for (unsigned i = 0; i < len; i++) {
                        const char *w;
                        size_t l;

                        x = x * 1103515245u + 12345u;
                        w = words[(x >> 8) % nw];
                        l = strlen(w);
                        memcpy(buf + n, w, l);
                        if (i == 0 && w[0] >= 'a' && w[0] <= 'z')
                                buf[n] = (char)(w[0] - 32);
                        n += l;
                        buf[n++] = i + 1 < len ? ' ' : '.';
                }
                x = x * 1103515245u + 12345u;
                buf[n++] = (x >> 8) % 6 == 0 ? '\n' : ' ';
        }
        *ret_len = n;
        return buf;
}

static void usage(void) {
        fprintf(stderr, "usage: tokbench [-n RUNS] TOKENIZER_JSON [TEXT_FILE...]\n");
}

static int bench_text(const struct tokenizer *t, const char *name, const char *text, size_t len, int runs) {
        double best_enc = 1e30, best_dec = 1e30;
        int32_t *ids = NULL;
        size_t n_ids = 0;

        for (int r = 0; r < runs; r++) {
                double t0 = now_s();
                int k;

                free(ids);
                ids = NULL;
                k = tokenizer_encode(t, text, len, true, &ids, &n_ids);
                if (k < 0) {
                        fprintf(stderr, "tokbench: encode failed: %s\n", strerror(-k));
                        return k;
                }
                t0 = now_s() - t0;
                if (t0 < best_enc)
                        best_enc = t0;
        }
        for (int r = 0; r < runs; r++) {
                double t0 = now_s();
                char *out = NULL;
                size_t out_len;
                int k = tokenizer_decode(t, ids, n_ids, false, &out, &out_len);

                if (k < 0) {
                        fprintf(stderr, "tokbench: decode failed: %s\n", strerror(-k));
                        free(ids);
                        return k;
                }
                free(out);
                t0 = now_s() - t0;
                if (t0 < best_dec)
                        best_dec = t0;
        }
        printf("%s: %zu bytes -> %zu tokens (%.2f bytes/token)\n", name, len, n_ids,
               n_ids ? (double)len / (double)n_ids : 0.0);
        printf("  encode: %.3f s, %.2f MB/s\n", best_enc, (double)len / best_enc / 1e6);
        printf("  decode: %.3f s, %.2f MB/s\n", best_dec, (double)len / best_dec / 1e6);
        free(ids);
        return 0;
}

int main(int argc, char **argv) {
        struct tokenizer *t = NULL;
        double *times;
        int runs = 5, opt, k;

        while ((opt = getopt(argc, argv, "n:h")) != -1) {
                switch (opt) {
                case 'n':
                        runs = atoi(optarg);
                        if (runs < 1 || runs > 1000) {
                                fprintf(stderr, "tokbench: -n must be 1..1000\n");
                                return 2;
                        }
                        break;
                default:
                        usage();
                        return opt == 'h' ? 0 : 2;
                }
        }
        if (optind >= argc) {
                usage();
                return 2;
        }
        times = calloc((size_t)runs, sizeof(double));
        if (!times)
                return 1;
        for (int r = 0; r < runs; r++) {
                double t0 = now_s();
                char *err = NULL;

                tokenizer_free(t);
                t = NULL;
                k = tokenizer_load(argv[optind], &t, &err);
                if (k < 0) {
                        fprintf(stderr, "tokbench: %s\n", err ? err : strerror(-k));
                        free(err);
                        free(times);
                        return 1;
                }
                times[r] = now_s() - t0;
        }
        qsort(times, (size_t)runs, sizeof(double), cmp_double);
        printf("load %s: vocab %zu, best %.3f s, median %.3f s (%d runs)\n", argv[optind],
               tokenizer_vocab_size(t), times[0], times[runs / 2], runs);
        free(times);

        if (optind + 1 >= argc) {
                size_t len;
                char *text = make_english(4u << 20, &len);

                k = text ? bench_text(t, "built-in English", text, len, runs) : -ENOMEM;
                free(text);
        } else {
                k = 0;
                for (int i = optind + 1; i < argc && k >= 0; i++) {
                        char *text = NULL;
                        size_t len = 0;

                        k = read_all(argv[i], &text, &len);
                        if (k < 0) {
                                fprintf(stderr, "tokbench: %s: %s\n", argv[i], strerror(-k));
                                break;
                        }
                        k = bench_text(t, argv[i], text, len, runs);
                        free(text);
                }
        }
        tokenizer_free(t);
        return k < 0 ? 1 : 0;
}
