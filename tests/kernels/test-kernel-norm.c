/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Row kernels against double-precision host references.
 * Tolerances: FP8 e4m3 keeps 3 mantissa bits, so a dequantized row carries a relative RMS error of about
 * 2^-4 / sqrt(3) ~= 3.6e-2 at worst and ~2.5e-2 typically: outputs that pass through FP8 get 4e-2; BF16
 * outputs (8 bits) get 8e-3; the per-row scale must match amax/448 to FP32 rounding.
 */
#include "kt.h"

#define EPS 1e-6f

static void rand_bf16(uint16_t *w, size_t n, float lo, float hi) {
        for (size_t i = 0; i < n; i++)
                w[i] = kt_f32_to_bf16(lo + (hi - lo) * (kt_uniform() * 0.5f + 0.5f));
}

/* dequantized device row vs reference; also checks the scale against the reference amax */
static void acc_quant(struct kt_err *e, struct kt_err *es, const uint8_t *q, float s, const float *ref,
                      uint32_t n) {
        float amax = 0;
        for (uint32_t i = 0; i < n; i++) {
                kt_acc(e, kt_e4m3_to_f32(q[i]) * s, ref[i]);
                amax = fmaxf(amax, fabsf(ref[i]));
        }
        kt_acc(es, s, fmaxf(amax / 448.0f, 1.0f / (448.0f * 512.0f)));
}

static void test_rmsnorm_quant(uint32_t rows, uint32_t n, int weighted) {
        float *x = malloc(sizeof(float) * rows * n), *ref = malloc(sizeof(float) * n);
        uint16_t *w = malloc(2 * n);
        struct kt_err e = {0}, es = {0};
        char name[96];

        for (size_t i = 0; i < (size_t) rows * n; i++)
                x[i] = kt_uniform() * (1 + (i % 7)) * 3.0f;
        rand_bf16(w, n, 0.2f, 1.8f);
        float *dx = kt_up(x, sizeof(float) * rows * n);
        uint16_t *dw = kt_up(w, 2 * n);
        uint8_t *dq = kt_dev(rows * n);
        float *ds = kt_dev(sizeof(float) * rows);
        KT_OK(kern_rmsnorm_quant(dx, weighted ? dw : NULL, rows, n, EPS, dq, ds, 0));
        uint8_t *q = kt_down(dq, rows * n);
        float *s = kt_down(ds, sizeof(float) * rows);
        for (uint32_t r = 0; r < rows; r++) {
                kt_rmsnorm(x + (size_t) r * n, weighted ? w : NULL, n, EPS, ref);
                acc_quant(&e, &es, q + (size_t) r * n, s[r], ref, n);
        }
        snprintf(name, sizeof(name), "rmsnorm_quant rows=%u n=%u weight=%d", rows, n, weighted);
        kt_check(name, &e, 4e-2);
        snprintf(name, sizeof(name), "rmsnorm_quant scale rows=%u n=%u", rows, n);
        kt_check(name, &es, 1e-6);

        /* gathered rows, BF16 output */
        int32_t *rowsel = malloc(4 * rows);
        for (uint32_t r = 0; r < rows; r++)
                rowsel[r] = (int32_t) (kt_u32() % rows);
        int32_t *drows = kt_up(rowsel, 4 * rows);
        uint16_t *dout = kt_dev(2 * (size_t) rows * n);
        KT_OK(kern_rmsnorm_rows(dx, drows, dw, rows, n, EPS, NULL, NULL, dout, 0));
        uint16_t *out = kt_down(dout, 2 * (size_t) rows * n);
        struct kt_err eb = {0};
        for (uint32_t r = 0; r < rows; r++) {
                kt_rmsnorm(x + (size_t) rowsel[r] * n, dw ? w : NULL, n, EPS, ref);
                for (uint32_t i = 0; i < n; i++)
                        kt_acc(&eb, kt_bf16_to_f32(out[(size_t) r * n + i]), ref[i]);
        }
        snprintf(name, sizeof(name), "rmsnorm_rows gathered bf16 rows=%u n=%u", rows, n);
        kt_check(name, &eb, 8e-3);

        cudaFree(dx), cudaFree(dw), cudaFree(dq), cudaFree(ds), cudaFree(drows), cudaFree(dout);
        free(x), free(ref), free(w), free(q), free(s), free(rowsel), free(out);
}

static float gelu_tanh_ref(float z) {
        return (float) (0.5 * z * (1.0 + tanh(0.7978845608028654 * (z + 0.044715 * z * z * z))));
}

static void test_geglu_quant(uint32_t rows, uint32_t n) {
        uint16_t *gu = malloc(2 * (size_t) rows * 2 * n);
        float *ref = malloc(sizeof(float) * n);
        struct kt_err e = {0}, es = {0};
        char name[96];

        rand_bf16(gu, (size_t) rows * 2 * n, -4.0f, 4.0f);
        uint16_t *dgu = kt_up(gu, 2 * (size_t) rows * 2 * n);
        uint8_t *dq = kt_dev((size_t) rows * n);
        float *ds = kt_dev(sizeof(float) * rows);
        KT_OK(kern_geglu_quant(dgu, rows, n, dq, ds, 0));
        uint8_t *q = kt_down(dq, (size_t) rows * n);
        float *s = kt_down(ds, sizeof(float) * rows);
        for (uint32_t r = 0; r < rows; r++) {
                const uint16_t *g = gu + (size_t) r * 2 * n, *u = g + n;
                for (uint32_t i = 0; i < n; i++)
                        ref[i] = gelu_tanh_ref(kt_bf16_to_f32(g[i])) * kt_bf16_to_f32(u[i]);
                acc_quant(&e, &es, q + (size_t) r * n, s[r], ref, n);
        }
        snprintf(name, sizeof(name), "geglu_quant rows=%u n=%u", rows, n);
        kt_check(name, &e, 4e-2);
        kt_check("geglu_quant scale", &es, 1e-2);
        cudaFree(dgu), cudaFree(dq), cudaFree(ds);
        free(gu), free(ref), free(q), free(s);
}

static void test_weight_quant(uint32_t rows, uint32_t n) {
        float *w = malloc(sizeof(float) * rows * n);
        struct kt_err e = {0};
        for (size_t i = 0; i < (size_t) rows * n; i++)
                w[i] = kt_uniform() * 0.05f * (1 + (i / n) % 5);
        for (uint32_t i = 0; i < n; i++)
                w[i] = 0.0f;            /* an all-zero row takes the 2^-7 scale */
        float *dw = kt_up(w, sizeof(float) * rows * n);
        uint8_t *dq = kt_dev((size_t) rows * n);
        float *ds = kt_dev(sizeof(float) * rows);
        KT_OK(kern_quantize_weight_rows(dw, rows, n, dq, ds, 0));
        uint8_t *q = kt_down(dq, (size_t) rows * n);
        float *s = kt_down(ds, sizeof(float) * rows);
        for (size_t i = 0; i < (size_t) rows * n; i++)
                kt_acc(&e, kt_e4m3_to_f32(q[i]) * s[i / n], kt_round_bf16(w[i]));
        kt_check("quantize_weight_rows", &e, 4e-2);
        kt_expect("quantize_weight_rows zero row scale is 2^-7", s[0] == 0.0078125f);
        int scale_bf16 = 1;
        for (uint32_t r = 0; r < rows; r++)
                scale_bf16 &= kt_round_bf16(s[r]) == s[r];
        kt_expect("quantize_weight_rows scales are BF16 values", scale_bf16);
        cudaFree(dw), cudaFree(dq), cudaFree(ds);
        free(w), free(q), free(s);
}

static void test_embed(uint32_t rows, uint32_t n, uint32_t vocab) {
        uint16_t *table = malloc(2 * (size_t) vocab * n), *w = malloc(2 * n);
        int32_t *ids = malloc(4 * rows);
        float *ref = malloc(sizeof(float) * n), *refn = malloc(sizeof(float) * n);
        struct kt_err e = {0}, en = {0}, es = {0};
        float scale = kt_round_bf16(sqrtf((float) n));

        rand_bf16(table, (size_t) vocab * n, -0.1f, 0.1f);
        rand_bf16(w, n, 0.5f, 1.5f);
        for (uint32_t r = 0; r < rows; r++)
                ids[r] = (int32_t) (kt_u32() % vocab);
        uint16_t *dt = kt_up(table, 2 * (size_t) vocab * n), *dw = kt_up(w, 2 * n);
        int32_t *dids = kt_up(ids, 4 * rows);
        float *dx = kt_dev(sizeof(float) * rows * n), *ds = kt_dev(sizeof(float) * rows);
        uint8_t *dq = kt_dev((size_t) rows * n);
        KT_OK(kern_embed(dt, dids, rows, n, vocab, scale, dx, dw, EPS, dq, ds, 0));
        float *x = kt_down(dx, sizeof(float) * rows * n), *s = kt_down(ds, sizeof(float) * rows);
        uint8_t *q = kt_down(dq, (size_t) rows * n);
        for (uint32_t r = 0; r < rows; r++) {
                for (uint32_t i = 0; i < n; i++) {
                        ref[i] = kt_round_bf16(kt_bf16_to_f32(table[(size_t) ids[r] * n + i]) * scale);
                        kt_acc(&e, x[(size_t) r * n + i], ref[i]);
                }
                kt_rmsnorm(ref, w, n, EPS, refn);
                acc_quant(&en, &es, q + (size_t) r * n, s[r], refn, n);
        }
        kt_check("embed", &e, 1e-6);
        kt_check("embed + input norm quant", &en, 4e-2);
        cudaFree(dt), cudaFree(dw), cudaFree(dids), cudaFree(dx), cudaFree(ds), cudaFree(dq);
        free(table), free(w), free(ids), free(ref), free(refn), free(x), free(s), free(q);
}

/* post-attention residual + two norms + router against the host reference */
static void test_post_attn(uint32_t rows, uint32_t n, uint32_t n_exp, uint32_t top_k) {
        size_t rn = (size_t) rows * n;
        float *x = malloc(sizeof(float) * rn), *h = malloc(sizeof(float) * n), *v = malloc(sizeof(float) * n);
        uint16_t *o = malloc(2 * rn), *w[3], *proj = malloc(2 * (size_t) n_exp * n), *rscale = malloc(2 * n),
                 *pes = malloc(2 * n_exp);
        struct kt_err eh = {0}, e1 = {0}, e2 = {0}, es = {0}, ew = {0}, er = {0};
        int idx_ok = 1;

        for (size_t i = 0; i < rn; i++)
                x[i] = kt_round_bf16(kt_uniform() * 2.0f);
        rand_bf16(o, rn, -3.0f, 3.0f);
        for (int i = 0; i < 3; i++) {
                w[i] = malloc(2 * n);
                rand_bf16(w[i], n, 0.3f, 1.7f);
        }
        rand_bf16(proj, (size_t) n_exp * n, -1.0f, 1.0f);
        rand_bf16(rscale, n, 0.5f, 2.0f);
        rand_bf16(pes, n_exp, 0.5f, 1.5f);

        float *dx = kt_up(x, sizeof(float) * rn);
        uint16_t *do_ = kt_up(o, 2 * rn), *dw0 = kt_up(w[0], 2 * n), *dw1 = kt_up(w[1], 2 * n),
                 *dw2 = kt_up(w[2], 2 * n);
        uint16_t *drs = kt_up(rscale, 2 * n);
        struct kern_router rt = {kt_up(proj, 2 * (size_t) n_exp * n), kt_up(pes, 2 * n_exp), n_exp, top_k};
        uint8_t *dq1 = kt_dev(rn), *dq2 = kt_dev(rn);
        float *ds1 = kt_dev(4 * rows), *ds2 = kt_dev(4 * rows), *dtw = kt_dev(4 * rows * top_k);
        float *dlg = kt_dev(4 * rows * n_exp);
        int32_t *dti = kt_dev(4 * rows * top_k);
        KT_OK(kern_post_attn(dx, do_, rows, n, EPS, dw0, dw1, dq1, ds1, dw2, dq2, ds2, drs, 0));
        uint16_t *rin = kt_down(do_, 2 * rn);
        KT_OK(kern_router(do_, rows, n, &rt, dlg, dti, dtw, 0));
        float *xo = kt_down(dx, sizeof(float) * rn), *s1 = kt_down(ds1, 4 * rows), *s2 = kt_down(ds2, 4 * rows);
        float *tw = kt_down(dtw, 4 * rows * top_k);
        int32_t *ti = kt_down(dti, 4 * rows * top_k);
        uint8_t *q1 = kt_down(dq1, rn), *q2 = kt_down(dq2, rn);
        double *logit = malloc(sizeof(double) * n_exp);
        for (uint32_t r = 0; r < rows; r++) {
                float of[4096];
                for (uint32_t i = 0; i < n; i++)
                        of[i] = kt_bf16_to_f32(o[(size_t) r * n + i]);
                kt_rmsnorm(of, w[0], n, EPS, v);
                for (uint32_t i = 0; i < n; i++) {
                        h[i] = kt_round_bf16(x[(size_t) r * n + i] + v[i]);
                        kt_acc(&eh, xo[(size_t) r * n + i], h[i]);
                }
                kt_rmsnorm(h, w[1], n, EPS, v);
                acc_quant(&e1, &es, q1 + (size_t) r * n, s1[r], v, n);
                kt_rmsnorm(h, w[2], n, EPS, v);
                acc_quant(&e2, &es, q2 + (size_t) r * n, s2[r], v, n);
                kt_rmsnorm(h, NULL, n, EPS, v);
                for (uint32_t i = 0; i < n; i++) {
                        v[i] = kt_round_bf16(kt_round_bf16(v[i] * kt_bf16_to_f32(rscale[i])) / sqrtf((float) n));
                        kt_acc(&er, kt_bf16_to_f32(rin[(size_t) r * n + i]), v[i]);
                }
                double mx = -1e300, tot = 0;
                for (uint32_t e = 0; e < n_exp; e++) {
                        double a = 0;
                        for (uint32_t i = 0; i < n; i++)
                                a += (double) kt_bf16_to_f32(proj[(size_t) e * n + i]) * v[i];
                        logit[e] = a;
                        mx = a > mx ? a : mx;
                }
                for (uint32_t e = 0; e < n_exp; e++)
                        tot += exp(logit[e] - mx);
                /* the kernel's choice must be a valid top-k: no unpicked expert clearly above a picked one */
                double picked_sum = 0, min_picked = 1e300;
                for (uint32_t k = 0; k < top_k; k++) {
                        int32_t e = ti[r * top_k + k];
                        if (e < 0 || (uint32_t) e >= n_exp) {
                                idx_ok = 0;
                                continue;
                        }
                        picked_sum += exp(logit[e] - mx) / tot;
                        min_picked = logit[e] < min_picked ? logit[e] : min_picked;
                        for (uint32_t k2 = 0; k2 < k; k2++)
                                if (ti[r * top_k + k2] == e)
                                        idx_ok = 0;
                }
                for (uint32_t e = 0; e < n_exp; e++) {
                        int picked = 0;
                        for (uint32_t k = 0; k < top_k; k++)
                                picked |= ti[r * top_k + k] == (int32_t) e;
                        if (!picked && logit[e] > min_picked + 2e-3)
                                idx_ok = 0;
                }
                for (uint32_t k = 0; k < top_k; k++) {
                        int32_t e = ti[r * top_k + k];
                        if (e < 0 || (uint32_t) e >= n_exp)
                                continue;
                        double want = exp(logit[e] - mx) / tot / picked_sum * kt_bf16_to_f32(pes[e]);
                        kt_acc(&ew, tw[r * top_k + k], want);
                }
        }
        kt_check("post_attn residual", &eh, 2e-3);
        kt_check("post_attn dense input quant", &e1, 4e-2);
        kt_check("post_attn expert input quant", &e2, 4e-2);
        kt_check("post_attn scales", &es, 1e-6);
        kt_check("post_attn router input", &er, 8e-3);
        kt_expect("router picks a valid top-k", idx_ok);
        kt_check("router weights", &ew, 2e-3);
        cudaFree(dx), cudaFree(do_), cudaFree(dw0), cudaFree(dw1), cudaFree(dw2), cudaFree((void *) rt.proj);
        cudaFree(drs), cudaFree(dlg), free(rin), cudaFree((void *) rt.per_expert_scale), cudaFree(dq1), cudaFree(dq2);
        cudaFree(ds1), cudaFree(ds2), cudaFree(dtw), cudaFree(dti);
        for (int i = 0; i < 3; i++)
                free(w[i]);
        free(x), free(h), free(v), free(o), free(proj), free(rscale), free(pes), free(xo), free(s1), free(s2);
        free(tw), free(ti), free(q1), free(q2), free(logit);
}

static void test_ffn_combine(uint32_t rows, uint32_t n, uint32_t top_k) {
        size_t rn = (size_t) rows * n;
        float *x = malloc(sizeof(float) * rn), *tw = malloc(sizeof(float) * rows * top_k);
        uint16_t *dy = malloc(2 * rn), *my = malloc(2 * rn * top_k), *w[4];
        float m1[4096], m2[4096], y[4096];
        struct kt_err ex = {0}, eq = {0}, es = {0};
        float scalar = 0.37f;

        for (size_t i = 0; i < rn; i++)
                x[i] = kt_round_bf16(kt_uniform() * 5.0f);
        rand_bf16(dy, rn, -2.0f, 2.0f);
        rand_bf16(my, rn * top_k, -2.0f, 2.0f);
        for (uint32_t i = 0; i < rows * top_k; i++)
                tw[i] = kt_uniform() * 0.5f + 0.6f;
        for (int i = 0; i < 4; i++) {
                w[i] = malloc(2 * n);
                rand_bf16(w[i], n, 0.3f, 1.7f);
        }
        float *dx = kt_up(x, sizeof(float) * rn), *dtw = kt_up(tw, sizeof(float) * rows * top_k);
        uint16_t *ddy = kt_up(dy, 2 * rn), *dmy = kt_up(my, 2 * rn * top_k);
        uint16_t *dw[4];
        for (int i = 0; i < 4; i++)
                dw[i] = kt_up(w[i], 2 * n);
        uint8_t *dq = kt_dev(rn);
        float *ds = kt_dev(4 * rows);
        KT_OK(kern_ffn_combine(dx, ddy, dmy, dtw, top_k, rows, n, EPS, dw[0], dw[1], dw[2], scalar, dw[3], dq, ds,
                               0));
        float *xo = kt_down(dx, sizeof(float) * rn), *s = kt_down(ds, 4 * rows);
        uint8_t *q = kt_down(dq, rn);
        for (uint32_t r = 0; r < rows; r++) {
                for (uint32_t i = 0; i < n; i++) {
                        double a = 0;
                        for (uint32_t j = 0; j < top_k; j++)
                                a += tw[r * top_k + j] * kt_bf16_to_f32(my[((size_t) r * top_k + j) * n + i]);
                        m2[i] = kt_round_bf16((float) a);
                        m1[i] = kt_bf16_to_f32(dy[(size_t) r * n + i]);
                }
                kt_rmsnorm(m1, w[0], n, EPS, m1);
                kt_rmsnorm(m2, w[1], n, EPS, m2);
                for (uint32_t i = 0; i < n; i++)
                        m1[i] = kt_round_bf16(m1[i] + m2[i]);
                kt_rmsnorm(m1, w[2], n, EPS, m1);
                for (uint32_t i = 0; i < n; i++) {
                        y[i] = kt_round_bf16(kt_round_bf16(x[(size_t) r * n + i] + m1[i]) * scalar);
                        kt_acc(&ex, xo[(size_t) r * n + i], y[i]);
                }
                kt_rmsnorm(y, w[3], n, EPS, m2);
                acc_quant(&eq, &es, q + (size_t) r * n, s[r], m2, n);
        }
        kt_check("ffn_combine residual * layer_scalar", &ex, 5e-3);
        kt_check("ffn_combine next input quant", &eq, 4e-2);
        cudaFree(dx), cudaFree(dtw), cudaFree(ddy), cudaFree(dmy), cudaFree(dq), cudaFree(ds);
        for (int i = 0; i < 4; i++)
                cudaFree(dw[i]), free(w[i]);
        free(x), free(tw), free(dy), free(my), free(xo), free(s), free(q);
}

int main(void) {
        kt_require_gpu();
        kt_seed(1);
        test_rmsnorm_quant(7, 2816, 1);
        test_rmsnorm_quant(33, 64, 0);
        test_rmsnorm_quant(3, 12000, 1);        /* more than 48 KB of shared memory */
        test_geglu_quant(9, 704);
        test_geglu_quant(5, 2112);
        test_weight_quant(37, 2816);
        test_embed(11, 2816, 300);
        test_embed(4, 64, 50);
        test_post_attn(6, 2816, 128, 8);
        test_post_attn(5, 64, 8, 2);
        test_ffn_combine(6, 2816, 8);
        test_ffn_combine(3, 96, 2);
        return kt_finish();
}
