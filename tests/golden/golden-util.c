/* SPDX-License-Identifier: Apache-2.0 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "golden-util.h"

char *golden_path(const char *name, const char *sub) {
        const char *root = getenv("GEMMA4D_SOURCE_ROOT"), *dir = getenv("GEMMA4D_GOLDEN_FIXTURES");
        char *p = NULL;

        /* the fixture folder itself (where only the fixtures travel, as on the GPU machine) */
        if (dir)
                return asprintf(&p, "%s/%s%s%s", dir, name, sub ? "/" : "", sub ? sub : "") < 0 ? NULL : p;
        if (!root)
                root = ".";
        if (asprintf(&p, "%s/tests/golden/fixtures/%s%s%s", root, name, sub ? "/" : "", sub ? sub : "") < 0)
                return NULL;
        return p;
}

static int read_ids(json_t *root, const char *key, int32_t **ret, uint32_t *ret_n) {
        json_t *a = json_object_get(root, key), *v;
        int32_t *ids;
        size_t i;

        if (!json_is_array(a) || json_array_size(a) == 0)
                return -EINVAL;
        ids = calloc(json_array_size(a), sizeof(int32_t));
        if (!ids)
                return -ENOMEM;
        json_array_foreach(a, i, v) {
                if (!json_is_integer(v)) {
                        free(ids);
                        return -EINVAL;
                }
                ids[i] = (int32_t) json_integer_value(v);
        }
        *ret = ids;
        *ret_n = (uint32_t) json_array_size(a);
        return 0;
}

int golden_meta_load(const char *name, struct golden_meta *ret) {
        char *path = golden_path(name, "meta.json");
        struct golden_meta m = { 0 };
        json_error_t jerr;
        json_t *root;
        uint32_t n8 = 0;
        int r;

        if (!path)
                return -ENOMEM;
        root = json_load_file(path, 0, &jerr);
        free(path);
        if (!root)
                return -EINVAL;
        r = read_ids(root, "prompt", &m.prompt, &m.n_prompt);
        if (r >= 0)
                r = read_ids(root, "greedy_bf16", &m.greedy_bf16, &m.n_greedy);
        if (r >= 0)
                r = read_ids(root, "greedy_fp8", &m.greedy_fp8, &n8);
        if (r >= 0 && n8 != m.n_greedy)
                r = -EINVAL;
        m.vocab = (uint32_t) json_integer_value(json_object_get(root, "vocab_size"));
        json_decref(root);
        if (r < 0 || m.vocab == 0) {
                golden_meta_done(&m);
                return r < 0 ? r : -EINVAL;
        }
        *ret = m;
        return 0;
}

void golden_meta_done(struct golden_meta *m) {
        free(m->prompt);
        free(m->greedy_bf16);
        free(m->greedy_fp8);
        memset(m, 0, sizeof(*m));
}

float *golden_read_f32(const char *path, size_t n) {
        FILE *f = fopen(path, "rb");
        float *v;

        if (!f)
                return NULL;
        v = malloc(n * sizeof(float) + 1);
        if (v && (fread(v, sizeof(float), n, f) != n || fgetc(f) != EOF)) {
                free(v);
                v = NULL;
        }
        fclose(f);
        return v;
}

int golden_engine_open(const char *model_dir, const struct golden_engine_opts *o,
                       struct golden_engine *ret) {
        struct golden_engine e = { 0 };
        struct backend_params p = { 0 };
        char *err = NULL;
        uint32_t B = o->page_size;
        int r;

        r = model_load(model_dir, &e.model, &err);
        if (r < 0) {
                fprintf(stderr, "model_load(%s): %s\n", model_dir, err ? err : strerror(-r));
                free(err);
                return r;
        }
        e.max_seqs = o->max_seqs;
        e.vocab = e.model->cfg.vocab_size;
        e.max_len = o->max_len;
        e.pages_per_seq = (o->max_len + B - 1) / B;
        p.kv_dtype = o->kv_round ? o->kv_dtype : KV_DTYPE_BF16;
        p.cpu_kv_round = o->kv_round;
        p.page_size = B;
        p.max_num_seqs = o->max_seqs;
        p.max_batched_tokens = o->max_batched_tokens;
        p.max_model_len = o->max_len;
        p.n_threads = o->n_threads;
        r = backend_cpu_ops.create(e.model, &p, &e.be, &err);
        if (r < 0) {
                fprintf(stderr, "cpu create: %s\n", err ? err : strerror(-r));
                free(err);
                model_free(e.model);
                return r;
        }
        backend_cpu_ops.get_capacity(e.be, &e.cap);
        e.full_pages = calloc((size_t) e.max_seqs * e.pages_per_seq, sizeof(uint32_t));
        e.sliding_pages = calloc((size_t) e.max_seqs * e.cap.n_sliding_ring, sizeof(uint32_t));
        if (!e.full_pages || !e.sliding_pages) {
                golden_engine_close(&e);
                return -ENOMEM;
        }
        /* sequential ids; sequence s owns a disjoint range in both spaces */
        for (uint32_t i = 0; i < e.max_seqs * e.pages_per_seq; i++)
                e.full_pages[i] = i;
        for (uint32_t i = 0; i < e.max_seqs * e.cap.n_sliding_ring; i++)
                e.sliding_pages[i] = i;
        *ret = e;
        return 0;
}

void golden_engine_close(struct golden_engine *e) {
        if (e->be)
                backend_cpu_ops.destroy(e->be);
        model_free(e->model);
        free(e->full_pages);
        free(e->sliding_pages);
        memset(e, 0, sizeof(*e));
}

static struct backend_seq seq_for(struct golden_engine *e, uint32_t seq, const int32_t *tokens, uint32_t n,
                                  uint32_t pos, bool all) {
        return (struct backend_seq){ .tokens = tokens,
                                     .n_tokens = n,
                                     .pos = pos,
                                     .full_pages = e->full_pages + (size_t) seq * e->pages_per_seq,
                                     .n_full_pages = e->pages_per_seq,
                                     .sliding_pages =
                                             e->sliding_pages + (size_t) seq * e->cap.n_sliding_ring,
                                     .n_sliding_pages = e->cap.n_sliding_ring,
                                     .all_logits = all };
}

int golden_run(struct golden_engine *e, uint32_t seq, const int32_t *tokens, uint32_t n, uint32_t pos,
               uint32_t chunk, bool all, float *out) {
        uint32_t V = e->vocab, done = 0;

        if (chunk == 0)
                chunk = n;
        while (done < n) {
                uint32_t k = n - done < chunk ? n - done : chunk;
                struct backend_seq s = seq_for(e, seq, tokens + done, k, pos + done, all);
                struct backend_batch b = { .seqs = &s, .n_seqs = 1 };
                float *dst = all ? out + (size_t) done * V : out;
                int r;

                /* a last-only run writes each chunk's last row to out; the final chunk's row stays */
                r = backend_cpu_ops.forward(e->be, &b, dst);
                if (r < 0)
                        return r;
                done += k;
        }
        return 0;
}

int golden_run_batch(struct golden_engine *e, const int32_t *const *tokens, const uint32_t *n,
                     const uint32_t *pos, const bool *all, uint32_t n_seqs, float *out) {
        struct backend_seq s[16];
        struct backend_batch b = { .seqs = s, .n_seqs = n_seqs };

        if (n_seqs > 16)
                return -E2BIG;
        for (uint32_t i = 0; i < n_seqs; i++)
                s[i] = seq_for(e, i, tokens[i], n[i], pos[i], all[i]);
        return backend_cpu_ops.forward(e->be, &b, out);
}

double golden_rel_frobenius(const float *got, const float *want, size_t n) {
        double num = 0.0, den = 0.0;

        for (size_t i = 0; i < n; i++) {
                double d = (double) got[i] - want[i];
                num += d * d;
                den += (double) want[i] * want[i];
        }
        return den > 0 ? sqrt(num / den) : sqrt(num);
}

uint32_t golden_argmax(const float *row, uint32_t n) {
        uint32_t best = 0;

        for (uint32_t i = 1; i < n; i++)
                if (row[i] > row[best])
                        best = i;
        return best;
}
