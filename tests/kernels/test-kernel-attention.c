/* SPDX-License-Identifier: Apache-2.0 */
/*
 * qkv_post, paged attention and kv_commit against double-precision host references.
 * Batches mix prefill chunks (longer than the sliding ring, so the ring wraps inside one step), decode
 * tokens and long contexts (split-K path). Pages are handed out in a random order.
 * Tolerances: q (BF16 out) 8e-3; FP8 K/V dequantized 4e-2 (3 mantissa bits); attention output (BF16, FP32
 * softmax on the exact K/V the kernel stored) 8e-3; committed pages must equal the scratch bytes exactly.
 * The attention reference is exact (double, unrounded probabilities); the tensor-core kernels round each
 * probability to BF16 before PV as HF does (relative 2^-9 per term, about 2e-3 on the output in the Frobenius
 * norm) on top of the BF16 output rounding (1.1e-3), so they keep the same 8e-3 bound.
 * Every scenario runs through each kernel path (forced), long ones (8192 tokens) through the default choice
 * only; long prefills check a sample of query rows (every sequence edge plus a pseudo-random subset).
 * Then timings (cudaEvent, warm-up, median of repeats) of the old and new kernels on the model's shapes,
 * printed as RESULT lines.
 */
#include "kt.h"

#define EPS 1e-6f

struct seqdef {
        uint32_t pos0, ntok;
};

struct scen {
        const char *name;
        uint32_t nh, nkv, d, B, window, rope_pairs;
        float theta;
        int k_eq_v, fp8, sliding;
        const struct seqdef *seqs;
        uint32_t n_seqs;
        uint32_t n_check;               /* check about this many query tokens (0: all) */
        int big;                        /* default path only */
};

/* whether the reference checks token t: all of small batches; else sequence edges and a pseudo-random
 * subset of about n_check tokens */
static int checked(const struct scen *S, uint32_t T, const int32_t *tok_seq, uint32_t t) {
        if (!S->n_check || T <= S->n_check)
                return 1;
        if (t < 2 || t + 2 >= T || tok_seq[t] != tok_seq[t - 1] || tok_seq[t] != tok_seq[t + 1])
                return 1;
        return (uint32_t) (t * 2654435761u) % T < S->n_check;
}

/* a random K/V element, stored in the pool's dtype at base[idx]; returns its value */
static float kv_gen(void *base, size_t idx, int fp8) {
        if (fp8) {
                /* exponent field 3..8: magnitudes 2^-4 .. 3.75, like RMS-normalised k/v */
                uint8_t b = (uint8_t) ((kt_u32() & 0x80) | ((3 + kt_u32() % 6) << 3) | (kt_u32() & 7));
                ((uint8_t *) base)[idx] = b;
                return kt_e4m3_to_f32(b);
        }
        uint16_t v = kt_f32_to_bf16(kt_uniform() * 2.0f);
        ((uint16_t *) base)[idx] = v;
        return kt_bf16_to_f32(v);
}

static float kv_load(const void *base, size_t idx, int fp8) {
        return fp8 ? kt_e4m3_to_f32(((const uint8_t *) base)[idx]) : kt_bf16_to_f32(((const uint16_t *) base)[idx]);
}

static const char *path_name(int p) {
        switch (p) {
        case KERN_ATT_PATH_AUTO: return "default";
        case KERN_ATT_PATH_SPLIT: return "split-K";
        case KERN_ATT_PATH_TILE: return "smem tile";
        case KERN_ATT_PATH_MMA_PREFILL: return "mma prefill";
        case KERN_ATT_PATH_MMA_DECODE: return "mma decode";
        case KERN_ATT_PATH_MMA_DECODE_ROWS: return "mma decode rows";
        case KERN_ATT_PATH_MMA_PREFILL_REGS: return "mma prefill regs";
        default: return "?";
        }
}

static void run(const struct scen *S) {
        const uint32_t nh = S->nh, nkv = S->nkv, d = S->d, B = S->B, elt = S->fp8 ? 1 : 2;
        const uint32_t ring = S->sliding ? (S->window + B - 1) / B + 1 : 0;
        uint32_t T = 0, n_pages = 0, n_tab = 0;
        char name[256];

        for (uint32_t s = 0; s < S->n_seqs; s++) {
                T += S->seqs[s].ntok;
                uint32_t need = (S->seqs[s].pos0 + S->seqs[s].ntok + B - 1) / B;
                n_tab += S->sliding ? ring : need;
        }
        n_pages = n_tab + 3;
        /* tables: a random permutation of the pages */
        int32_t *perm = malloc(4 * n_pages), *tables = malloc(4 * n_tab);
        for (uint32_t i = 0; i < n_pages; i++)
                perm[i] = (int32_t) i;
        for (uint32_t i = n_pages - 1; i > 0; i--) {
                uint32_t j = kt_u32() % (i + 1);
                int32_t t = perm[i];
                perm[i] = perm[j];
                perm[j] = t;
        }
        memcpy(tables, perm, 4 * n_tab);
        int32_t *tok_seq = malloc(4 * T), *tok_pos = malloc(4 * T), *seq_row0 = malloc(4 * S->n_seqs),
                *seq_pos0 = malloc(4 * S->n_seqs), *seq_ntok = malloc(4 * S->n_seqs),
                *seq_table0 = malloc(4 * S->n_seqs);
        uint32_t row = 0, tab = 0, max_keys = 0, max_pos = 0;
        for (uint32_t s = 0; s < S->n_seqs; s++) {
                seq_row0[s] = (int32_t) row;
                seq_pos0[s] = (int32_t) S->seqs[s].pos0;
                seq_ntok[s] = (int32_t) S->seqs[s].ntok;
                seq_table0[s] = (int32_t) tab;
                tab += S->sliding ? ring : (S->seqs[s].pos0 + S->seqs[s].ntok + B - 1) / B;
                for (uint32_t i = 0; i < S->seqs[s].ntok; i++, row++) {
                        uint32_t p = S->seqs[s].pos0 + i;
                        tok_seq[row] = (int32_t) s;
                        tok_pos[row] = (int32_t) p;
                        uint32_t keys = S->window && p + 1 > S->window ? S->window : p + 1;
                        max_keys = keys > max_keys ? keys : max_keys;
                }
                uint32_t last = S->seqs[s].pos0 + S->seqs[s].ntok;
                max_pos = last > max_pos ? last : max_pos;
        }

        /* old K/V: random values for every position of every sequence, stored in page order */
        size_t row_elems = (size_t) nkv * d, pool_elems = (size_t) n_pages * B * row_elems;
        float **oldk = malloc(sizeof(float *) * S->n_seqs), **oldv = malloc(sizeof(float *) * S->n_seqs);
        void *kpool = malloc(pool_elems * elt), *vpool = malloc(pool_elems * elt);
        memset(kpool, 0x11, pool_elems * elt);
        memset(vpool, 0x22, pool_elems * elt);
        for (uint32_t s = 0; s < S->n_seqs; s++) {
                uint32_t p0 = S->seqs[s].pos0;
                /* room for this step's keys too: the reference reads every key of a sequence from here */
                oldk[s] = malloc(sizeof(float) * (p0 + S->seqs[s].ntok) * row_elems);
                oldv[s] = malloc(sizeof(float) * (p0 + S->seqs[s].ntok) * row_elems);
                for (uint32_t p = 0; p < p0; p++) {
                        uint32_t pi = p / B;
                        int32_t page = tables[seq_table0[s] + (ring ? pi % ring : pi)];
                        size_t base = ((size_t) page * B + p % B) * row_elems;
                        for (size_t i = 0; i < row_elems; i++) {
                                oldk[s][(size_t) p * row_elems + i] = kv_gen(kpool, base + i, S->fp8);
                                oldv[s][(size_t) p * row_elems + i] = kv_gen(vpool, base + i, S->fp8);
                        }
                }
        }

        /* qkv projection output */
        uint32_t n_v = S->k_eq_v ? 0 : nkv, row_len = (nh + nkv + n_v) * d;
        uint16_t *qkv = malloc(2 * (size_t) T * row_len), *qn = malloc(2 * d), *kn = malloc(2 * d);
        for (size_t i = 0; i < (size_t) T * row_len; i++)
                qkv[i] = kt_f32_to_bf16(kt_uniform() * 3.0f);
        for (uint32_t i = 0; i < d; i++) {
                qn[i] = kt_f32_to_bf16(0.5f + kt_uniform() * 0.4f);
                kn[i] = kt_f32_to_bf16(0.5f + kt_uniform() * 0.4f);
        }

        int32_t *d_tok_seq = kt_up(tok_seq, 4 * T), *d_tok_pos = kt_up(tok_pos, 4 * T);
        int32_t *d_row0 = kt_up(seq_row0, 4 * S->n_seqs), *d_pos0 = kt_up(seq_pos0, 4 * S->n_seqs);
        int32_t *d_ntok = kt_up(seq_ntok, 4 * S->n_seqs), *d_tab0 = kt_up(seq_table0, 4 * S->n_seqs);
        int32_t *d_tables = kt_up(tables, 4 * n_tab);
        struct kern_batch bt = {d_tok_seq, d_tok_pos, d_row0, d_pos0, d_ntok, d_tab0, d_tables, T, S->n_seqs,
                                max_keys};
        struct kern_attn_layer L = {0};
        L.n_heads = nh;
        L.n_kv_heads = nkv;
        L.head_dim = d;
        L.k_eq_v = S->k_eq_v;
        L.kv_fp8 = S->fp8;
        L.page_size = B;
        L.ring = ring;
        L.window = S->window;
        L.rope_theta = S->theta;
        L.rope_pairs = S->rope_pairs;
        L.eps = EPS;
        L.q_norm = kt_up(qn, 2 * d);
        L.k_norm = kt_up(kn, 2 * d);
        L.k_pages = kt_up(kpool, pool_elems * elt);
        L.v_pages = kt_up(vpool, pool_elems * elt);
        uint16_t *dqkv = kt_up(qkv, 2 * (size_t) T * row_len);
        uint16_t *dq = kt_dev(2 * (size_t) T * nh * d), *dout = kt_dev(2 * (size_t) T * nh * d);
        void *dkn = kt_dev((size_t) T * row_elems * elt), *dvn = kt_dev((size_t) T * row_elems * elt);
        size_t pf = kern_attention_partial_floats(T, nh, d);
        float *dpart = kt_dev(4 * pf);

        KT_OK(kern_qkv_post(dqkv, &bt, &L, dq, dkn, dvn, 0));
        KT_OK(kern_attention(dq, dkn, dvn, &bt, &L, dpart, pf, dout, 0));
        KT_OK(kern_kv_commit(dkn, dvn, &bt, &L, 0));
        uint16_t *q = kt_down(dq, 2 * (size_t) T * nh * d), *out = kt_down(dout, 2 * (size_t) T * nh * d);
        void *knew = kt_down(dkn, (size_t) T * row_elems * elt), *vnew = kt_down(dvn, (size_t) T * row_elems * elt);
        void *kpool2 = kt_down(L.k_pages, pool_elems * elt), *vpool2 = kt_down(L.v_pages, pool_elems * elt);

        /* qkv_post reference */
        struct kt_err eq = {0}, ek = {0}, ev = {0};
        float *src = malloc(sizeof(float) * d), *y = malloc(sizeof(float) * d);
        for (uint32_t t = 0; t < T; t++) {
                if (!checked(S, T, tok_seq, t))
                        continue;
                for (uint32_t hh = 0; hh < nh + 2 * nkv; hh++) {
                        int kind = hh < nh ? 0 : hh < nh + nkv ? 1 : 2;
                        uint32_t head = kind == 0 ? hh : kind == 1 ? hh - nh : hh - nh - nkv;
                        uint32_t col = kind == 0 ? head : kind == 1 ? nh + head : nh + (S->k_eq_v ? 0 : nkv) + head;
                        for (uint32_t i = 0; i < d; i++)
                                src[i] = kt_bf16_to_f32(qkv[(size_t) t * row_len + col * d + i]);
                        kt_rmsnorm(src, kind == 0 ? qn : kind == 1 ? kn : NULL, d, EPS, y);
                        if (kind != 2)
                                for (uint32_t j = 0; j < S->rope_pairs; j++) {
                                        double f = 1.0 / pow(S->theta, 2.0 * j / d), a = f * tok_pos[t];
                                        double c = cos(a), s = sin(a), y0 = y[j], y1 = y[j + d / 2];
                                        y[j] = (float) (y0 * c - y1 * s);
                                        y[j + d / 2] = (float) (y1 * c + y0 * s);
                                }
                        for (uint32_t i = 0; i < d; i++) {
                                if (kind == 0)
                                        kt_acc(&eq, kt_bf16_to_f32(q[((size_t) t * nh + head) * d + i]), y[i]);
                                else
                                        kt_acc(kind == 1 ? &ek : &ev,
                                               kv_load(kind == 1 ? knew : vnew, ((size_t) t * nkv + head) * d + i, S->fp8),
                                               y[i]);
                        }
                }
        }
        snprintf(name, sizeof(name), "%s: qkv_post q", S->name);
        kt_check(name, &eq, 8e-3);
        snprintf(name, sizeof(name), "%s: qkv_post k", S->name);
        kt_check(name, &ek, S->fp8 ? 4e-2 : 8e-3);
        snprintf(name, sizeof(name), "%s: qkv_post v", S->name);
        kt_check(name, &ev, S->fp8 ? 4e-2 : 8e-3);

        /* attention reference on the exact stored values (this step's keys appended to each sequence's old ones) */
        for (uint32_t s = 0; s < S->n_seqs; s++)
                for (uint32_t i = 0; i < S->seqs[s].ntok; i++)
                        for (size_t e = 0; e < row_elems; e++) {
                                size_t src_i = (size_t) (seq_row0[s] + i) * row_elems + e;
                                size_t dst_i = (size_t) (S->seqs[s].pos0 + i) * row_elems + e;
                                oldk[s][dst_i] = kv_load(knew, src_i, S->fp8);
                                oldv[s][dst_i] = kv_load(vnew, src_i, S->fp8);
                        }
        struct kt_err ea = {0};
        double *sc = malloc(sizeof(double) * (max_pos + 1)), *qd = malloc(sizeof(double) * d);
        double *od = malloc(sizeof(double) * d), worst = 0, worst_ref = 0, worst_out = 0;
        uint32_t n_checked = 0, worst_t = 0, worst_h = 0, worst_i = 0;
        for (uint32_t t = 0; t < T; t++) {
                if (!checked(S, T, tok_seq, t))
                        continue;
                n_checked++;
                uint32_t s = (uint32_t) tok_seq[t], p = (uint32_t) tok_pos[t];
                uint32_t lo = S->window && p + 1 > S->window ? p + 1 - S->window : 0;
                for (uint32_t h = 0; h < nh; h++) {
                        uint32_t kvh = h / (nh / nkv);
                        double mx = -1e300, tot = 0;
                        for (uint32_t i = 0; i < d; i++) {
                                qd[i] = kt_bf16_to_f32(q[((size_t) t * nh + h) * d + i]);
                                od[i] = 0;
                        }
                        for (uint32_t j = lo; j <= p; j++) {
                                const float *kr = oldk[s] + (size_t) j * row_elems + kvh * d;
                                /* four chains: the reference's add latency bounds the test's run time */
                                double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
                                uint32_t i = 0;
                                for (; i + 4 <= d; i += 4) {
                                        a0 += qd[i] * kr[i];
                                        a1 += qd[i + 1] * kr[i + 1];
                                        a2 += qd[i + 2] * kr[i + 2];
                                        a3 += qd[i + 3] * kr[i + 3];
                                }
                                for (; i < d; i++)
                                        a0 += qd[i] * kr[i];
                                double a = (a0 + a1) + (a2 + a3);
                                sc[j] = a;
                                mx = a > mx ? a : mx;
                        }
                        for (uint32_t j = lo; j <= p; j++) {
                                const float *vr = oldv[s] + (size_t) j * row_elems + kvh * d;
                                sc[j] = exp(sc[j] - mx);
                                tot += sc[j];
                                for (uint32_t i = 0; i < d; i++)
                                        od[i] += sc[j] * vr[i];
                        }
                        for (uint32_t i = 0; i < d; i++) {
                                double o = od[i] / tot, got = kt_bf16_to_f32(out[((size_t) t * nh + h) * d + i]);
                                kt_acc(&ea, got, o);
                                if (!(fabs(got - o) <= worst)) {
                                        worst = isfinite(got) ? fabs(got - o) : INFINITY;
                                        worst_ref = o, worst_out = got, worst_t = t, worst_h = h, worst_i = i;
                                }
                        }
                }
        }
        snprintf(name, sizeof(name), "%s: attention [%s] (max_keys %u, %u of %u tokens checked)", S->name,
                 path_name(kern_attention_last_path), max_keys, n_checked, T);
        kt_check(name, &ea, 8e-3);
        if (kt_rel(&ea) > 8e-3)
                printf("#   worst element: token %u (seq %d, pos %d) head %u dim %u: got %g, reference %g\n", worst_t,
                       tok_seq[worst_t], tok_pos[worst_t], worst_h, worst_i, worst_out, worst_ref);

        /* committed pages: each position that must survive holds its scratch bytes */
        int commit_ok = 1;
        for (uint32_t s = 0; s < S->n_seqs; s++) {
                uint32_t p0 = S->seqs[s].pos0, n = S->seqs[s].ntok, end = p0 + n;
                uint32_t first = ring && end > ring * B ? end - ring * B : 0;
                for (uint32_t p = p0 > first ? p0 : first; p < end; p++) {
                        uint32_t pi = p / B;
                        int32_t page = tables[seq_table0[s] + (ring ? pi % ring : pi)];
                        size_t dst = ((size_t) page * B + p % B) * row_elems * elt;
                        size_t srcb = (size_t) (seq_row0[s] + p - p0) * row_elems * elt;
                        commit_ok &= memcmp((uint8_t *) kpool2 + dst, (uint8_t *) knew + srcb, row_elems * elt) == 0;
                        commit_ok &= memcmp((uint8_t *) vpool2 + dst, (uint8_t *) vnew + srcb, row_elems * elt) == 0;
                }
        }
        snprintf(name, sizeof(name), "%s: kv_commit wrote every surviving position", S->name);
        kt_expect(name, commit_ok);

        cudaFree(d_tok_seq), cudaFree(d_tok_pos), cudaFree(d_row0), cudaFree(d_pos0), cudaFree(d_ntok);
        cudaFree(d_tab0), cudaFree(d_tables), cudaFree((void *) L.q_norm), cudaFree((void *) L.k_norm);
        cudaFree(L.k_pages), cudaFree(L.v_pages), cudaFree(dqkv), cudaFree(dq), cudaFree(dout), cudaFree(dkn);
        cudaFree(dvn), cudaFree(dpart);
        for (uint32_t s = 0; s < S->n_seqs; s++)
                free(oldk[s]), free(oldv[s]);
        free(oldk), free(oldv), free(perm), free(tables), free(tok_seq), free(tok_pos), free(seq_row0);
        free(seq_pos0), free(seq_ntok), free(seq_table0), free(kpool), free(vpool), free(qkv), free(qn), free(kn);
        free(q), free(out), free(knew), free(vnew), free(kpool2), free(vpool2), free(src), free(y), free(sc), free(qd), free(od);
}

/* ---- timings ---- */

/* fill n bytes of device memory with random K/V elements of the pool dtype (a 4 MiB random block repeated) */
static void fill_kv(void *dev, size_t n, int fp8) {
        const size_t blk = 4u << 20;
        uint8_t *h = malloc(blk);
        for (size_t i = 0; i < blk; i += fp8 ? 1 : 2)
                kv_gen(h, fp8 ? i : i / 2, fp8);
        for (size_t off = 0; off < n; off += blk)
                KT_CUDA(cudaMemcpy((uint8_t *) dev + off, h, n - off < blk ? n - off : blk, cudaMemcpyHostToDevice));
        free(h);
}

static int cmp_f(const void *a, const void *b) {
        float x = *(const float *) a, y = *(const float *) b;
        return x < y ? -1 : x > y;
}

struct bench {
        const char *name;
        uint32_t nh, nkv, d, window;
        int fp8;
        uint32_t n_seqs, ctx, ntok;     /* each sequence: ctx keys in the pages, then ntok new tokens */
        uint32_t max_keys;              /* 0: the exact bound; else this bound (decode graphs use max_model_len) */
};

/* median time of kern_attention on path `path`, or -1 when it fell back to another path */
static double time_path(int path, const struct kern_batch *bt, const struct kern_attn_layer *L, const uint16_t *dq,
                        const void *dkn, const void *dvn, float *dpart, size_t pf, uint16_t *dout, int reps,
                        double *lo, double *hi) {
        float ms[64];
        cudaEvent_t e0, e1;

        kern_attention_force_path = path;
        for (int i = 0; i < 3; i++)
                KT_OK(kern_attention(dq, dkn, dvn, bt, L, dpart, pf, dout, 0));
        KT_CUDA(cudaDeviceSynchronize());
        if (path != KERN_ATT_PATH_AUTO && kern_attention_last_path != path) {
                kern_attention_force_path = KERN_ATT_PATH_AUTO;
                return -1;
        }
        KT_CUDA(cudaEventCreate(&e0));
        KT_CUDA(cudaEventCreate(&e1));
        for (int r = 0; r < reps; r++) {
                KT_CUDA(cudaEventRecord(e0, 0));
                KT_OK(kern_attention(dq, dkn, dvn, bt, L, dpart, pf, dout, 0));
                KT_CUDA(cudaEventRecord(e1, 0));
                KT_CUDA(cudaEventSynchronize(e1));
                KT_CUDA(cudaEventElapsedTime(&ms[r], e0, e1));
        }
        KT_CUDA(cudaEventDestroy(e0));
        KT_CUDA(cudaEventDestroy(e1));
        qsort(ms, reps, sizeof(float), cmp_f);
        kern_attention_force_path = KERN_ATT_PATH_AUTO;
        *lo = ms[0];
        *hi = ms[reps - 1];
        return ms[reps / 2];
}

/* times: [0] old path, [1] new path, [2] the default choice, [3] new path 2 (ms; 2 may be 0: none) */
static void bench_one(const struct bench *Bn, int old_path, int new_path, int new_path2, double times[4]) {
        const uint32_t B = 16, elt = Bn->fp8 ? 1 : 2, nh = Bn->nh, nkv = Bn->nkv, d = Bn->d;
        const uint32_t ring = Bn->window ? (Bn->window + B - 1) / B + 1 : 0;
        const uint32_t end = Bn->ctx + Bn->ntok, per_seq = ring ? ring : (end + B - 1) / B;
        const uint32_t S = Bn->n_seqs, T = S * Bn->ntok;
        int32_t *tok_seq = malloc(4 * T), *tok_pos = malloc(4 * T), *row0 = malloc(4 * S), *pos0 = malloc(4 * S);
        int32_t *ntok = malloc(4 * S), *tab0 = malloc(4 * S), *tables = malloc(4 * (size_t) S * per_seq);
        uint32_t t = 0;
        double flop = 0;

        for (uint32_t s = 0; s < S; s++) {
                row0[s] = (int32_t) t;
                pos0[s] = (int32_t) Bn->ctx;
                ntok[s] = (int32_t) Bn->ntok;
                tab0[s] = (int32_t) (s * per_seq);
                for (uint32_t i = 0; i < per_seq; i++)
                        tables[s * per_seq + i] = (int32_t) (s * per_seq + i);
                for (uint32_t i = 0; i < Bn->ntok; i++, t++) {
                        uint32_t p = Bn->ctx + i, keys = Bn->window && p + 1 > Bn->window ? Bn->window : p + 1;
                        tok_seq[t] = (int32_t) s;
                        tok_pos[t] = (int32_t) p;
                        flop += 4.0 * keys * nh * d;
                }
        }
        uint32_t exact = Bn->window && end > Bn->window ? Bn->window : end;
        struct kern_batch bt = {kt_up(tok_seq, 4 * T), kt_up(tok_pos, 4 * T), kt_up(row0, 4 * S), kt_up(pos0, 4 * S),
                                kt_up(ntok, 4 * S), kt_up(tab0, 4 * S), kt_up(tables, 4 * (size_t) S * per_seq),
                                T, S, Bn->max_keys ? Bn->max_keys : exact};
        struct kern_attn_layer L = {0};
        L.n_heads = nh;
        L.n_kv_heads = nkv;
        L.head_dim = d;
        L.kv_fp8 = Bn->fp8;
        L.page_size = B;
        L.ring = ring;
        L.window = Bn->window;
        size_t pool = (size_t) S * per_seq * B * nkv * d * elt, nbytes = (size_t) T * nkv * d * elt;
        L.k_pages = kt_dev(pool);
        L.v_pages = kt_dev(pool);
        fill_kv(L.k_pages, pool, Bn->fp8);
        fill_kv(L.v_pages, pool, Bn->fp8);
        void *dkn = kt_dev(nbytes), *dvn = kt_dev(nbytes);
        fill_kv(dkn, nbytes, Bn->fp8);
        fill_kv(dvn, nbytes, Bn->fp8);
        /* q: BF16 in [-1, 1) (a random BF16 K/V block reinterpreted is in [-2, 2): fine for timing) */
        uint16_t *dq = kt_dev((size_t) T * nh * d * 2), *dout = kt_dev((size_t) T * nh * d * 2);
        fill_kv(dq, (size_t) T * nh * d * 2, 0);
        size_t pf = kern_attention_partial_floats(T, nh, d);
        float *dpart = kt_dev(4 * pf);

        int reps = T >= 4096 ? 7 : 21;
        const int paths[4] = {old_path, new_path, KERN_ATT_PATH_AUTO, new_path2};
        double lo[4] = {0}, hi[4] = {0};
        times[3] = -1;
        for (int i = 0; i < (new_path2 ? 4 : 3); i++)
                times[i] = time_path(paths[i], &bt, &L, dq, dkn, dvn, dpart, pf, dout, reps, &lo[i], &hi[i]);
        kern_attention_force_path = KERN_ATT_PATH_AUTO;
        KT_OK(kern_attention(dq, dkn, dvn, &bt, &L, dpart, pf, dout, 0));
        KT_CUDA(cudaDeviceSynchronize());
        printf("RESULT attn %s: old[%s] %.4f ms (%.4f-%.4f), new[%s] %.4f ms (%.4f-%.4f), default[%s] %.4f ms, "
               "speedup %.2fx, new %.1f TFLOP/s (exact-mask flops %.3g), max_keys %u\n",
               Bn->name, path_name(old_path), times[0], lo[0], hi[0], path_name(new_path), times[1], lo[1], hi[1],
               path_name(kern_attention_last_path), times[2], times[1] > 0 ? times[0] / times[1] : 0.0,
               times[1] > 0 ? flop / (times[1] * 1e-3) / 1e12 : 0.0, flop, bt.max_keys);
        if (new_path2)
                printf("RESULT attn %s: variant[%s] %.4f ms (%.4f-%.4f), %.1f TFLOP/s\n", Bn->name,
                       path_name(new_path2), times[3], lo[3], hi[3],
                       times[3] > 0 ? flop / (times[3] * 1e-3) / 1e12 : 0.0);
        fflush(stdout);
        cudaFree((void *) bt.tok_seq), cudaFree((void *) bt.tok_pos), cudaFree((void *) bt.seq_row0);
        cudaFree((void *) bt.seq_pos0), cudaFree((void *) bt.seq_ntok), cudaFree((void *) bt.seq_table0);
        cudaFree((void *) bt.tables), cudaFree(L.k_pages), cudaFree(L.v_pages), cudaFree(dkn), cudaFree(dvn);
        cudaFree(dq), cudaFree(dout), cudaFree(dpart);
        free(tok_seq), free(tok_pos), free(row0), free(pos0), free(ntok), free(tab0), free(tables);
}

/* the model's 25 sliding + 5 full layers: old kernels against new, per layer type and per forward */
static void benchmarks(void) {
        double sl[4], fl[4];
        struct bench b;

        printf("# timings (cudaEvent, 3 warm-ups, median of 7-21 runs); model: 25 sliding (d256, 8 kv heads, window "
               "1024) + 5 full (d512, 2 kv heads) layers, FP8 KV, page size 16\n");
        b = (struct bench){"prefill 8192 sliding fp8", 16, 8, 256, 1024, 1, 1, 0, 8192, 0};
        bench_one(&b, KERN_ATT_PATH_TILE, KERN_ATT_PATH_MMA_PREFILL, KERN_ATT_PATH_MMA_PREFILL_REGS, sl);
        b = (struct bench){"prefill 8192 full fp8", 16, 2, 512, 0, 1, 1, 0, 8192, 0};
        bench_one(&b, KERN_ATT_PATH_TILE, KERN_ATT_PATH_MMA_PREFILL, KERN_ATT_PATH_MMA_PREFILL_REGS, fl);
        printf("RESULT attn prefill 8192 x 30 layers: old %.1f ms, new %.1f ms, default %.1f ms\n",
               25 * sl[0] + 5 * fl[0], 25 * sl[1] + 5 * fl[1], 25 * sl[2] + 5 * fl[2]);
        b = (struct bench){"prefill 8192 sliding bf16", 16, 8, 256, 1024, 0, 1, 0, 8192, 0};
        bench_one(&b, KERN_ATT_PATH_TILE, KERN_ATT_PATH_MMA_PREFILL, KERN_ATT_PATH_MMA_PREFILL_REGS, sl);
        b = (struct bench){"prefill 8192 full bf16", 16, 2, 512, 0, 0, 1, 0, 8192, 0};
        bench_one(&b, KERN_ATT_PATH_TILE, KERN_ATT_PATH_MMA_PREFILL, KERN_ATT_PATH_MMA_PREFILL_REGS, fl);
        b = (struct bench){"chunked prefill 2048 at 6144 sliding fp8", 16, 8, 256, 1024, 1, 1, 6144, 2048, 0};
        bench_one(&b, KERN_ATT_PATH_TILE, KERN_ATT_PATH_MMA_PREFILL, KERN_ATT_PATH_MMA_PREFILL_REGS, sl);
        b = (struct bench){"chunked prefill 2048 at 6144 full fp8", 16, 2, 512, 0, 1, 1, 6144, 2048, 0};
        bench_one(&b, KERN_ATT_PATH_TILE, KERN_ATT_PATH_MMA_PREFILL, KERN_ATT_PATH_MMA_PREFILL_REGS, fl);

        static const uint32_t streams[] = {64, 16, 4, 1};
        for (size_t i = 0; i < sizeof(streams) / sizeof(streams[0]); i++) {
                for (int bound = 0; bound < 2; bound++) {
                        char n1[96], n2[96];
                        const char *bn = bound ? " (graph bound max_keys)" : "";
                        snprintf(n1, sizeof(n1), "decode %ux300 sliding fp8%s", streams[i], bn);
                        snprintf(n2, sizeof(n2), "decode %ux300 full fp8%s", streams[i], bn);
                        b = (struct bench){n1, 16, 8, 256, 1024, 1, streams[i], 299, 1, bound ? 1024 : 0};
                        bench_one(&b, KERN_ATT_PATH_SPLIT, KERN_ATT_PATH_MMA_DECODE, KERN_ATT_PATH_MMA_DECODE_ROWS, sl);
                        b = (struct bench){n2, 16, 2, 512, 0, 1, streams[i], 299, 1, bound ? 32768 : 0};
                        bench_one(&b, KERN_ATT_PATH_SPLIT, KERN_ATT_PATH_MMA_DECODE, KERN_ATT_PATH_MMA_DECODE_ROWS, fl);
                        printf("RESULT attn decode %ux300%s x 30 layers: old %.3f ms, new %.3f ms, rows variant %.3f ms, "
                               "default %.3f ms\n", streams[i], bn, 25 * sl[0] + 5 * fl[0], 25 * sl[1] + 5 * fl[1],
                               25 * sl[3] + 5 * fl[3], 25 * sl[2] + 5 * fl[2]);
                }
        }
        b = (struct bench){"decode 64x2000 full fp8", 16, 2, 512, 0, 1, 64, 1999, 1, 0};
        bench_one(&b, KERN_ATT_PATH_SPLIT, KERN_ATT_PATH_MMA_DECODE, KERN_ATT_PATH_MMA_DECODE_ROWS, fl);
        b = (struct bench){"decode 1x8000 full fp8", 16, 2, 512, 0, 1, 1, 7999, 1, 0};
        bench_one(&b, KERN_ATT_PATH_SPLIT, KERN_ATT_PATH_MMA_DECODE, KERN_ATT_PATH_MMA_DECODE_ROWS, fl);
}

int main(int argc, char **argv) {
        static const struct seqdef sl[] = {{0, 100}, {200, 1}, {70, 5}, {3, 2}};
        static const struct seqdef fl[] = {{0, 40}, {300, 1}, {2100, 1}, {50, 3}};
        static const struct seqdef small[] = {{0, 21}, {9, 1}, {30, 4}};
        static const struct seqdef longdec[] = {{5000, 1}};
        static const struct seqdef pre2k[] = {{0, 2048}};
        static const struct seqdef pre8k[] = {{0, 8192}};
        /* a chunk that wraps the sliding ring, decode tokens at and around the window edge (1023, 1024, 1030
         * keys before), and a short one */
        static const struct seqdef mixed_sl[] = {{3000, 1024}, {5000, 1}, {700, 1}, {1030, 1}, {1023, 1}, {1024, 1}, {7, 3}};
        static const struct seqdef mixed_fl[] = {{3000, 512}, {5000, 1}, {40, 1}, {1, 1}, {77, 2}};
        static struct seqdef dec64[64];
        for (uint32_t s = 0; s < 64; s++)
                dec64[s] = (struct seqdef){250 + 3 * s, 1};
        const struct scen sc[] = {
                {"sliding d256 gqa2 fp8", 16, 8, 256, 16, 64, 128, 10000.0f, 0, 1, 1, sl, 4, 0, 0},
                {"sliding d256 gqa2 bf16", 16, 8, 256, 16, 64, 128, 10000.0f, 0, 0, 1, sl, 4, 0, 0},
                {"full d512 gqa8 k_eq_v proportional fp8", 16, 2, 512, 16, 0, 64, 1e6f, 1, 1, 0, fl, 4, 0, 0},
                {"full d512 gqa8 k_eq_v proportional bf16", 16, 2, 512, 16, 0, 64, 1e6f, 1, 0, 0, fl, 4, 0, 0},
                {"full d512 long decode split fp8", 16, 2, 512, 16, 0, 64, 1e6f, 1, 1, 0, longdec, 1, 0, 0},
                {"tiny sliding d32 window 8 bf16", 4, 2, 32, 4, 8, 16, 10000.0f, 0, 0, 1, small, 3, 0, 0},
                {"tiny full d64 fp8", 4, 1, 64, 8, 0, 8, 1e6f, 1, 1, 0, small, 3, 0, 0},
                {"tiny sliding d20 window 12 fp8 (unaligned head)", 4, 2, 20, 4, 12, 10, 10000.0f, 0, 1, 1, small, 3, 0, 0},
                {"tiny full d16 k_eq_v bf16 (unaligned head)", 4, 1, 16, 4, 0, 2, 1e6f, 1, 0, 0, small, 3, 0, 0},
                {"tiny-b full d40 gqa2 with v_proj fp8", 4, 2, 40, 4, 0, 10, 1e6f, 0, 1, 0, small, 3, 0, 0},
                {"tiny-b full d40 gqa2 with v_proj bf16", 4, 2, 40, 4, 0, 10, 1e6f, 0, 0, 0, small, 3, 0, 0},
                {"full d80 fp8 (lane slice of 3)", 4, 2, 80, 16, 0, 10, 1e6f, 0, 1, 0, fl, 4, 0, 0},
                {"prefill 2048 sliding w1024 fp8", 16, 8, 256, 16, 1024, 128, 10000.0f, 0, 1, 1, pre2k, 1, 40, 0},
                {"prefill 2048 sliding w1024 bf16", 16, 8, 256, 16, 1024, 128, 10000.0f, 0, 0, 1, pre2k, 1, 40, 0},
                {"prefill 2048 full d512 fp8", 16, 2, 512, 16, 0, 64, 1e6f, 1, 1, 0, pre2k, 1, 16, 0},
                {"prefill 2048 full d512 bf16", 16, 2, 512, 16, 0, 64, 1e6f, 1, 0, 0, pre2k, 1, 16, 0},
                {"mixed: chunked prefill wrapping the ring + decodes at the window edge, sliding fp8", 16, 8, 256, 16, 1024, 128,
                 10000.0f, 0, 1, 1, mixed_sl, 7, 48, 0},
                {"mixed: chunked prefill wrapping the ring + decodes at the window edge, sliding bf16", 16, 8, 256, 16, 1024, 128,
                 10000.0f, 0, 0, 1, mixed_sl, 7, 48, 0},
                {"mixed: chunked prefill after 3000 + decodes, full fp8", 16, 2, 512, 16, 0, 64, 1e6f, 1, 1, 0, mixed_fl, 5, 12, 0},
                {"mixed: chunked prefill after 3000 + decodes, full bf16", 16, 2, 512, 16, 0, 64, 1e6f, 1, 0, 0, mixed_fl, 5, 12, 0},
                {"decode 64 x 250-439 sliding fp8", 16, 8, 256, 16, 1024, 128, 10000.0f, 0, 1, 1, dec64, 64, 0, 0},
                {"decode 64 x 250-439 sliding bf16", 16, 8, 256, 16, 1024, 128, 10000.0f, 0, 0, 1, dec64, 64, 0, 0},
                {"decode 64 x 250-439 full fp8", 16, 2, 512, 16, 0, 64, 1e6f, 1, 1, 0, dec64, 64, 0, 0},
                {"decode 64 x 250-439 full bf16", 16, 2, 512, 16, 0, 64, 1e6f, 1, 0, 0, dec64, 64, 0, 0},
                {"full d256 gqa16 fp8 (16-row decode Q tile)", 16, 1, 256, 16, 0, 64, 1e6f, 1, 1, 0, fl, 4, 0, 0},
                {"full d512 gqa16 bf16 (16-row decode Q tile)", 16, 1, 512, 16, 0, 64, 1e6f, 1, 0, 0, fl, 4, 0, 0},
                {"mixed sliding d256 gqa4 window 300 fp8", 16, 4, 256, 16, 300, 128, 10000.0f, 0, 1, 1, mixed_sl, 7,
                 48, 0},
                {"prefill 8192 sliding w1024 fp8", 16, 8, 256, 16, 1024, 128, 10000.0f, 0, 1, 1, pre8k, 1, 24, 1},
                {"prefill 8192 full d512 fp8", 16, 2, 512, 16, 0, 64, 1e6f, 1, 1, 0, pre8k, 1, 12, 1},
        };
        static const int paths[] = {KERN_ATT_PATH_AUTO, KERN_ATT_PATH_SPLIT, KERN_ATT_PATH_TILE,
                                    KERN_ATT_PATH_MMA_PREFILL, KERN_ATT_PATH_MMA_DECODE,
                                    KERN_ATT_PATH_MMA_DECODE_ROWS, KERN_ATT_PATH_MMA_PREFILL_REGS};
        /* GEMMA4D_ATTN_TEST=quick: the reference checks only; =bench: the timings only */
        const char *mode = getenv("GEMMA4D_ATTN_TEST");
        int checks = !mode || strcmp(mode, "bench") != 0, timings = !mode || strcmp(mode, "quick") != 0;
        (void) argc, (void) argv;

        kt_require_gpu();
        kt_seed(3);
        /* every scenario through the default choice, then through each path forced (a path that cannot take a
         * layer falls back, and the check's name says which kernel ran); the CUDA-core paths keep their
         * original scenarios (the first N_OLD), the variants those and the batches of their kind, the
         * long ones run through the default choice only */
        const size_t N_OLD = 12;
        for (size_t k = 0; checks && k < sizeof(paths) / sizeof(paths[0]); k++) {
                int old_path = paths[k] == KERN_ATT_PATH_SPLIT || paths[k] == KERN_ATT_PATH_TILE;
                /* the variants: the original scenarios and those of their own kind */
                const char *variant = paths[k] == KERN_ATT_PATH_MMA_DECODE_ROWS   ? "decode"
                                      : paths[k] == KERN_ATT_PATH_MMA_PREFILL_REGS ? "prefill"
                                                                                : NULL;
                kern_attention_force_path = paths[k];
                printf("# attention path: %s\n", k ? path_name(paths[k]) : "default choice");
                fflush(stdout);
                for (size_t i = 0; i < sizeof(sc) / sizeof(sc[0]); i++)
                        if (k == 0 || (!sc[i].big && (!old_path || i < N_OLD) &&
                                       (!variant || i < N_OLD || strstr(sc[i].name, variant)))) {
                                run(&sc[i]);
                                fflush(stdout);
                        }
        }
        kern_attention_force_path = KERN_ATT_PATH_AUTO;
        /* the old switch still forces the split-K kernel */
        kern_attention_force_split = true;
        if (checks)
                run(&sc[2]);
        kern_attention_force_split = false;
        if (timings)
                benchmarks();
        return kt_finish();
}
