/* SPDX-License-Identifier: Apache-2.0 */
/*
 * qkv_post, paged attention and kv_commit against double-precision host references.
 * Batches mix prefill chunks (longer than the sliding ring, so the ring wraps inside one step), decode
 * tokens and long contexts (split-K path). Pages are handed out in a random order.
 * Tolerances: q (BF16 out) 8e-3; FP8 K/V dequantized 4e-2 (3 mantissa bits); attention output (BF16, FP32
 * softmax on the exact K/V the kernel stored) 8e-3; committed pages must equal the scratch bytes exactly.
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
};

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

static void run(const struct scen *S) {
        const uint32_t nh = S->nh, nkv = S->nkv, d = S->d, B = S->B, elt = S->fp8 ? 1 : 2;
        const uint32_t ring = S->sliding ? (S->window + B - 1) / B + 1 : 0;
        uint32_t T = 0, n_pages = 0, n_tab = 0;
        char name[160];

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
                oldk[s] = malloc(sizeof(float) * (p0 + 1) * row_elems);
                oldv[s] = malloc(sizeof(float) * (p0 + 1) * row_elems);
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

        /* attention reference on the exact stored values */
        struct kt_err ea = {0};
        double *sc = malloc(sizeof(double) * (max_pos + 1));
        for (uint32_t t = 0; t < T; t++) {
                uint32_t s = (uint32_t) tok_seq[t], p = (uint32_t) tok_pos[t], p0 = S->seqs[s].pos0;
                uint32_t lo = S->window && p + 1 > S->window ? p + 1 - S->window : 0;
                for (uint32_t h = 0; h < nh; h++) {
                        uint32_t kvh = h / (nh / nkv);
                        double mx = -1e300, tot = 0;
                        for (uint32_t j = lo; j <= p; j++) {
                                double a = 0;
                                for (uint32_t i = 0; i < d; i++) {
                                        float kf = j < p0 ? oldk[s][(size_t) j * row_elems + kvh * d + i]
                                                          : kv_load(knew, ((size_t) (seq_row0[s] + j - p0) * nkv + kvh) * d + i, S->fp8);
                                        a += (double) kt_bf16_to_f32(q[((size_t) t * nh + h) * d + i]) * kf;
                                }
                                sc[j] = a;
                                mx = a > mx ? a : mx;
                        }
                        for (uint32_t j = lo; j <= p; j++) {
                                sc[j] = exp(sc[j] - mx);
                                tot += sc[j];
                        }
                        for (uint32_t i = 0; i < d; i++) {
                                double o = 0;
                                for (uint32_t j = lo; j <= p; j++) {
                                        float vf = j < p0 ? oldv[s][(size_t) j * row_elems + kvh * d + i]
                                                          : kv_load(vnew, ((size_t) (seq_row0[s] + j - p0) * nkv + kvh) * d + i, S->fp8);
                                        o += sc[j] * vf;
                                }
                                kt_acc(&ea, kt_bf16_to_f32(out[((size_t) t * nh + h) * d + i]), o / tot);
                        }
                }
        }
        snprintf(name, sizeof(name), "%s: attention (max_keys %u)", S->name, max_keys);
        kt_check(name, &ea, 8e-3);

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
        free(q), free(out), free(knew), free(vnew), free(kpool2), free(vpool2), free(src), free(y), free(sc);
}

int main(void) {
        static const struct seqdef sl[] = {{0, 100}, {200, 1}, {70, 5}, {3, 2}};
        static const struct seqdef fl[] = {{0, 40}, {300, 1}, {2100, 1}, {50, 3}};
        static const struct seqdef small[] = {{0, 21}, {9, 1}, {30, 4}};
        static const struct seqdef longdec[] = {{5000, 1}};
        const struct scen sc[] = {
                {"sliding d256 gqa2 fp8", 16, 8, 256, 16, 64, 128, 10000.0f, 0, 1, 1, sl, 4},
                {"sliding d256 gqa2 bf16", 16, 8, 256, 16, 64, 128, 10000.0f, 0, 0, 1, sl, 4},
                {"full d512 gqa8 k_eq_v proportional fp8", 16, 2, 512, 16, 0, 64, 1e6f, 1, 1, 0, fl, 4},
                {"full d512 gqa8 k_eq_v proportional bf16", 16, 2, 512, 16, 0, 64, 1e6f, 1, 0, 0, fl, 4},
                {"full d512 long decode split fp8", 16, 2, 512, 16, 0, 64, 1e6f, 1, 1, 0, longdec, 1},
                {"tiny sliding d32 window 8 bf16", 4, 2, 32, 4, 8, 16, 10000.0f, 0, 0, 1, small, 3},
                {"tiny full d64 fp8", 4, 1, 64, 8, 0, 8, 1e6f, 1, 1, 0, small, 3},
                {"tiny sliding d20 window 12 fp8 (unaligned head)", 4, 2, 20, 4, 12, 10, 10000.0f, 0, 1, 1, small, 3},
                {"tiny full d16 k_eq_v bf16 (unaligned head)", 4, 1, 16, 4, 0, 2, 1e6f, 1, 0, 0, small, 3},
                {"tiny-b full d40 gqa2 with v_proj fp8", 4, 2, 40, 4, 0, 10, 1e6f, 0, 1, 0, small, 3},
                {"tiny-b full d40 gqa2 with v_proj bf16", 4, 2, 40, 4, 0, 10, 1e6f, 0, 0, 0, small, 3},
                {"full d80 fp8 (lane slice of 3)", 4, 2, 80, 16, 0, 10, 1e6f, 0, 1, 0, fl, 4},
        };

        kt_require_gpu();
        kt_seed(3);
        /* every scenario through the default choice (tile kernel for the prefill batches), then through the
         * split-K kernel alone */
        for (int forced = 0; forced < 2; forced++) {
                kern_attention_force_split = forced;
                printf("# attention kernel: %s\n", forced ? "split-K forced" : "default choice");
                for (size_t i = 0; i < sizeof(sc) / sizeof(sc[0]); i++)
                        run(&sc[i]);
        }
        return kt_finish();
}
