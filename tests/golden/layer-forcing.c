/* SPDX-License-Identifier: Apache-2.0 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layer-forcing.h"

int lf_open(struct lf_engine *e, const char *backend, const struct model *m, const struct lf_params *p,
            char **reterr) {
        struct backend_params bp = {
                .kv_dtype = p->kv_dtype, .page_size = p->page_size, .max_num_seqs = 2,
                .max_batched_tokens = p->max_len, .max_model_len = p->max_len, .gpu_fraction = 0.5,
                .lm_head_bf16 = p->lm_head_bf16, .weights_bf16 = p->weights_bf16,
                .cpu_kv_round = p->cpu_kv_round,
        };
        struct lf_engine n = { 0 };
        int r;

        n.ops = backend_find(backend);
        n.dbg = backend_debug_find(backend);
        if (!n.ops || !n.dbg)
                return -ENOENT;
        n.n_full = (p->max_len + p->page_size - 1) / p->page_size;
        bp.n_full_pages = 2 * n.n_full + 3;
        r = n.ops->create(m, &bp, &n.be, reterr);
        if (r < 0)
                return r;
        n.ops->get_capacity(n.be, &n.cap);
        n.n_sliding = n.cap.n_sliding_ring;
        n.full = calloc(n.n_full, sizeof(uint32_t));
        n.sliding = calloc(n.n_sliding + 1, sizeof(uint32_t));
        if (!n.full || !n.sliding) {
                lf_close(&n);
                return -ENOMEM;
        }
        /* pages from the top of each pool down: page order must not matter */
        for (uint32_t i = 0; i < n.n_full; i++)
                n.full[i] = n.cap.n_full_pages - 1 - i;
        for (uint32_t i = 0; i < n.n_sliding; i++)
                n.sliding[i] = n.cap.n_sliding_pages - 1 - i;
        n.n_layers = m->cfg.n_layers;
        n.hidden = m->cfg.hidden_size;
        n.vocab = m->cfg.vocab_size;
        *e = n;
        return 0;
}

void lf_close(struct lf_engine *e) {
        if (e->be)
                e->ops->destroy(e->be);
        free(e->full);
        free(e->sliding);
        memset(e, 0, sizeof(*e));
}

static struct backend_seq step_seq(const struct lf_engine *e, const struct lf_plan *p, uint32_t i) {
        uint32_t p0 = i ? p->step_end[i - 1] : 0;
        return (struct backend_seq) { .tokens = p->tokens + p0, .n_tokens = p->step_end[i] - p0, .pos = p0,
                                      .full_pages = e->full, .n_full_pages = e->n_full,
                                      .sliding_pages = e->sliding, .n_sliding_pages = e->n_sliding,
                                      .all_logits = true };
}

int lf_capture(struct lf_engine *e, const struct lf_plan *p, float *x, float *logits) {
        uint32_t S = lf_plan_tokens(p), H = e->hidden, L = e->n_layers;
        float *buf = malloc((size_t) (L + 1) * S * H * sizeof(float));
        int r = buf ? 0 : -ENOMEM;

        for (uint32_t i = 0; r == 0 && i < p->n_steps; i++) {
                struct backend_seq s = step_seq(e, p, i);
                struct backend_batch b = { &s, 1 };
                r = e->dbg->capture(e->be, &b, logits + (size_t) s.pos * e->vocab, buf);
                /* the step's rows are [L + 1][n][H]; x keeps [L + 1][S][H] */
                for (uint32_t l = 0; r == 0 && l <= L; l++)
                        memcpy(x + ((size_t) l * S + s.pos) * H, buf + (size_t) l * s.n_tokens * H,
                               (size_t) s.n_tokens * H * sizeof(float));
        }
        free(buf);
        return r;
}

int lf_forward(struct lf_engine *e, const struct lf_plan *p, float *logits) {
        for (uint32_t i = 0; i < p->n_steps; i++) {
                struct backend_seq s = step_seq(e, p, i);
                struct backend_batch b = { &s, 1 };
                int r = e->ops->forward(e->be, &b, logits + (size_t) s.pos * e->vocab);
                if (r < 0)
                        return r;
        }
        return 0;
}

int lf_layer(struct lf_engine *e, const struct lf_plan *p, uint32_t layer, const float *x_in, float *y) {
        for (uint32_t i = 0; i < p->n_steps; i++) {
                struct backend_seq s = step_seq(e, p, i);
                struct backend_batch b = { &s, 1 };
                size_t off = (size_t) s.pos * e->hidden;
                int r = e->dbg->run_layer(e->be, &b, layer, x_in + off, y + off);
                if (r < 0)
                        return r;
        }
        return 0;
}

int lf_head(struct lf_engine *e, const struct lf_plan *p, const float *x_in, float *logits) {
        for (uint32_t i = 0; i < p->n_steps; i++) {
                struct backend_seq s = step_seq(e, p, i);
                struct backend_batch b = { &s, 1 };
                int r = e->dbg->head(e->be, &b, x_in + (size_t) s.pos * e->hidden,
                                     logits + (size_t) s.pos * e->vocab);
                if (r < 0)
                        return r;
        }
        return 0;
}

void lf_compare(const float *got, const float *want, uint32_t rows, uint32_t n, struct lf_err *ret) {
        struct lf_err e = { 0 };
        double num = 0, den = 0;

        for (uint32_t r = 0; r < rows; r++) {
                double rn = 0, rd = 0;
                for (uint32_t i = 0; i < n; i++) {
                        size_t k = (size_t) r * n + i;
                        double d = (double) got[k] - want[k];
                        if (!isfinite(got[k]))
                                d = INFINITY;
                        if (fabs(d) > e.max_abs || isnan(d))
                                e.max_abs = isnan(d) ? INFINITY : fabs(d);
                        rn += d * d;
                        rd += (double) want[k] * want[k];
                }
                num += rn;
                den += rd;
                double rr = rd > 0 ? sqrt(rn / rd) : sqrt(rn);
                if (rr > e.worst_row_rel || isnan(rr)) {
                        e.worst_row_rel = isnan(rr) ? INFINITY : rr;
                        e.worst_row = r;
                }
        }
        e.rel = den > 0 ? sqrt(num / den) : sqrt(num);
        if (isnan(e.rel))
                e.rel = INFINITY;
        *ret = e;
}

int lf_tests, lf_failures;

void lf_check(const char *what, bool ok, const char *fmt, double a, double b) {
        lf_tests++;
        if (!ok)
                lf_failures++;
        printf("%s %d - %s: ", ok ? "ok" : "not ok", lf_tests, what);
        printf(fmt, a, b);
        printf("\n");
}
