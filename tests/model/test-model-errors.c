/* SPDX-License-Identifier: Apache-2.0 */
/*
 * model_load on deliberately broken checkpoints: corrupted safetensors files, wrong or missing tensors,
 * broken shard indexes, unsupported config.json fields and quantization schemes. Every case checks that
 * loading fails cleanly and that the message names the file, tensor or field at fault.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "tiny-ckpt.h"

#define P "model.language_model."

struct fixture {
        char *dir;
        char st[1024];          /* the single model.safetensors */
};

static int setup(void **state) {
        struct fixture *f = calloc(1, sizeof(*f));
        f->dir = tiny_mkdtemp();
        if (!f->dir)
                return -1;
        snprintf(f->st, sizeof(f->st), "%s/model.safetensors", f->dir);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        struct fixture *f = *state;
        rm_rf(f->dir);
        free(f->dir);
        free(f);
        return 0;
}

/* Loads f->dir, expecting failure with a message containing every given substring. */
static void expect_fail(struct fixture *f, ...) {
        struct model *m = NULL;
        char *err = NULL;
        const char *s;
        va_list ap;
        int r;

        r = model_load(f->dir, &m, &err);
        if (r >= 0)
                fail_msg("model_load succeeded on a broken checkpoint");
        assert_null(m);
        assert_non_null(err);
        if (getenv("MODEL_TEST_VERBOSE"))
                fprintf(stderr, "# %s\n", err);
        va_start(ap, f);
        while ((s = va_arg(ap, const char *)))
                if (!strstr(err, s))
                        fail_msg("message \"%s\" lacks \"%s\"", err, s);
        va_end(ap);
        free(err);
}

static void write_good(struct fixture *f, const struct tiny_opts *o) {
        assert_int_equal(tiny_write(f->dir, o), 0);
}

/* ---- safetensors file corruption ---- */

static void patch_bytes(const char *path, long off, const void *bytes, size_t n) {
        FILE *fp = fopen(path, "r+b");
        assert_non_null(fp);
        fseek(fp, off, SEEK_SET);
        assert_int_equal(fwrite(bytes, 1, n, fp), n);
        fclose(fp);
}

static void write_raw(const char *path, const char *header, size_t data_len) {
        FILE *fp = fopen(path, "wb");
        uint64_t n = strlen(header);
        uint8_t len[8];
        assert_non_null(fp);
        for (int i = 0; i < 8; i++)
                len[i] = (uint8_t) (n >> (8 * i));
        fwrite(len, 1, 8, fp);
        fwrite(header, 1, n, fp);
        for (size_t i = 0; i < data_len; i++)
                fputc(0, fp);
        fclose(fp);
}

static void test_truncated(void **state) {
        struct fixture *f = *state;
        struct stat st;

        write_good(f, &(struct tiny_opts) { 0 });
        assert_int_equal(stat(f->st, &st), 0);
        assert_int_equal(truncate(f->st, st.st_size - 100), 0);
        expect_fail(f, "model.safetensors", "tensor '", "out of bounds", NULL);
}

static void test_truncated_to_nothing(void **state) {
        struct fixture *f = *state;

        write_good(f, &(struct tiny_opts) { 0 });
        assert_int_equal(truncate(f->st, 5), 0);
        expect_fail(f, "model.safetensors", "truncated", NULL);
        assert_int_equal(truncate(f->st, 0), 0);
        expect_fail(f, "model.safetensors", "truncated", NULL);
}

static void test_header_len_over_limit(void **state) {
        struct fixture *f = *state;
        uint64_t n = 200000000;
        uint8_t b[8];

        write_good(f, &(struct tiny_opts) { 0 });
        for (int i = 0; i < 8; i++)
                b[i] = (uint8_t) (n >> (8 * i));
        patch_bytes(f->st, 0, b, 8);
        expect_fail(f, "model.safetensors", "header length 200000000", "limit", NULL);
        memset(b, 0xff, 8);
        patch_bytes(f->st, 0, b, 8);
        expect_fail(f, "model.safetensors", "header length", NULL);
}

static void test_header_len_past_eof(void **state) {
        struct fixture *f = *state;
        struct stat st;
        uint8_t b[8];

        write_good(f, &(struct tiny_opts) { 0 });
        assert_int_equal(stat(f->st, &st), 0);
        for (int i = 0; i < 8; i++)
                b[i] = (uint8_t) ((uint64_t) st.st_size >> (8 * i));
        patch_bytes(f->st, 0, b, 8);
        expect_fail(f, "model.safetensors", "exceeds the file size", NULL);
}

static void test_bad_json(void **state) {
        struct fixture *f = *state;

        write_good(f, &(struct tiny_opts) { 0 });
        patch_bytes(f->st, 9, "#", 1);
        expect_fail(f, "model.safetensors", "not valid JSON", NULL);
        write_raw(f->st, "[1, 2]", 0);
        expect_fail(f, "model.safetensors", "not a JSON object", NULL);
        write_raw(f->st, "{\"a\": 5}", 0);
        expect_fail(f, "model.safetensors", "tensor 'a'", "not a JSON object", NULL);
}

static void test_duplicate_names(void **state) {
        struct fixture *f = *state;

        write_good(f, &(struct tiny_opts) { 0 });
        write_raw(f->st, "{\"x\": {\"dtype\": \"BF16\", \"shape\": [1], \"data_offsets\": [0, 2]},"
                         " \"x\": {\"dtype\": \"BF16\", \"shape\": [1], \"data_offsets\": [2, 4]}}", 4);
        expect_fail(f, "model.safetensors", "duplicate", NULL);
}

struct edit {
        const char *tensor;
        const char *key;
        const char *json;       /* NULL: delete the key */
};

static void apply_edit(json_t *hdr, void *arg) {
        const struct edit *e = arg;
        json_t *t = json_object_get(hdr, e->tensor);
        assert_non_null(t);
        if (e->json)
                json_object_set_new(t, e->key, json_loads(e->json, JSON_DECODE_ANY, NULL));
        else
                json_object_del(t, e->key);
}

static void edit_and_expect(struct fixture *f, const char *tensor, const char *key, const char *json, ...) {
        struct edit e = { tensor, key, json };
        struct model *m = NULL;
        char *err = NULL;
        const char *s;
        va_list ap;

        write_good(f, &(struct tiny_opts) { 0 });
        assert_int_equal(st_edit_header(f->st, apply_edit, &e), 0);
        assert_true(model_load(f->dir, &m, &err) < 0);
        assert_null(m);
        assert_non_null(err);
        if (!strstr(err, "model.safetensors") || !strstr(err, tensor))
                fail_msg("message \"%s\" names neither the file nor '%s'", err, tensor);
        va_start(ap, json);
        while ((s = va_arg(ap, const char *)))
                if (!strstr(err, s))
                        fail_msg("message \"%s\" lacks \"%s\"", err, s);
        va_end(ap);
        free(err);
}

#define QN P "layers.0.self_attn.q_norm.weight"

static void test_header_fields(void **state) {
        struct fixture *f = *state;

        edit_and_expect(f, QN, "data_offsets", NULL, "missing \"data_offsets\"", NULL);
        edit_and_expect(f, QN, "dtype", NULL, "missing \"dtype\"", NULL);
        edit_and_expect(f, QN, "shape", NULL, "missing \"shape\"", NULL);
        edit_and_expect(f, QN, "dtype", "5", "not a string", NULL);
        edit_and_expect(f, QN, "shape", "{}", "not an array", NULL);
        edit_and_expect(f, QN, "data_offsets", "[0]", "[begin, end]", NULL);
        edit_and_expect(f, QN, "data_offsets", "[0, -2]", "[begin, end]", NULL);
        edit_and_expect(f, QN, "data_offsets", "[\"0\", 2]", "[begin, end]", NULL);
}

static void test_unknown_dtype(void **state) {
        struct fixture *f = *state;

        edit_and_expect(f, QN, "dtype", "\"I64\"", "unsupported dtype I64", NULL);
        edit_and_expect(f, QN, "dtype", "\"F8_E5M2\"", "unsupported dtype F8_E5M2", NULL);
}

static void test_bad_shapes(void **state) {
        struct fixture *f = *state;

        edit_and_expect(f, QN, "shape", "[-16]", "shape[0] is not a non-negative integer", NULL);
        edit_and_expect(f, QN, "shape", "[16.0]", "shape[0] is not a non-negative integer", NULL);
        edit_and_expect(f, QN, "shape", "[\"16\"]", "shape[0]", NULL);
        edit_and_expect(f, QN, "shape", "[4294967296, 4294967296, 4294967296]", "overflows", NULL);
        edit_and_expect(f, QN, "shape", "[4611686018427387904, 4]", "overflows", NULL);
        edit_and_expect(f, QN, "shape", "[1,1,1,1,1,1,1,1,1,16]", "dimensions", NULL);
        edit_and_expect(f, QN, "shape", "[17]", "needs 34 bytes", NULL);
        edit_and_expect(f, QN, "shape", "[]", "needs 2 bytes", NULL);
        /* Right byte count, wrong shape: caught by the tensor mapping. */
        edit_and_expect(f, QN, "shape", "[2, 8]", "shape [2, 8], expected [16]", NULL);
}

static void test_bad_offsets(void **state) {
        struct fixture *f = *state;

        edit_and_expect(f, QN, "data_offsets", "[0, 1000000000000]", "out of bounds", NULL);
        edit_and_expect(f, QN, "data_offsets", "[1000000000000, 1000000000032]", "out of bounds", NULL);
        edit_and_expect(f, QN, "data_offsets", "[32, 0]", "end before begin", NULL);
        /* Same bytes as the embedding (first in the file): overlap. */
        edit_and_expect(f, QN, "data_offsets", "[64, 96]", "overlap", NULL);
}

static void test_random_header_damage(void **state) {
        struct fixture *f = *state;
        struct stat st;
        uint64_t x = 0x1234567;
        uint8_t *orig;
        FILE *fp;

        /* Damage the header at random; loading must fail or succeed cleanly, never crash (ASan/valgrind). */
        write_good(f, &(struct tiny_opts) { .fp8 = true });
        assert_int_equal(stat(f->st, &st), 0);
        orig = malloc((size_t) st.st_size);
        fp = fopen(f->st, "rb");
        assert_int_equal(fread(orig, 1, (size_t) st.st_size, fp), (size_t) st.st_size);
        fclose(fp);
        uint64_t hlen = 0;
        for (int i = 7; i >= 0; i--)
                hlen = (hlen << 8) | orig[i];
        for (int iter = 0; iter < 150; iter++) {
                uint8_t *b = malloc((size_t) st.st_size);
                memcpy(b, orig, (size_t) st.st_size);
                for (int k = 0; k < 1 + iter % 4; k++) {
                        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                        size_t pos = 8 + (size_t) (x % hlen);
                        static const char sub[] = "0123456789[]{}\",:-. eE\\x";
                        b[pos] = (x >> 32) & 1 ? (uint8_t) sub[(x >> 40) % (sizeof(sub) - 1)]
                                               : (uint8_t) (x >> 48);
                }
                fp = fopen(f->st, "wb");
                fwrite(b, 1, (size_t) st.st_size, fp);
                fclose(fp);
                free(b);
                struct model *m = NULL;
                char *err = NULL;
                if (model_load(f->dir, &m, &err) < 0) {
                        assert_null(m);
                        assert_non_null(err);
                } else
                        model_free(m);
                free(err);
        }
        free(orig);
}

/* ---- tensor mapping ---- */

static void write_with(struct fixture *f, const struct tiny_opts *o, const char *drop, const char *add_name,
                       enum tensor_dtype add_dtype, uint32_t ndim, uint64_t d0, uint64_t d1, uint64_t d2) {
        struct tiny_tensors tt;
        uint64_t shape[3] = { d0, d1, d2 };
        json_t *cfg = tiny_config(o);

        assert_int_equal(tiny_write_config(f->dir, cfg), 0);
        json_decref(cfg);
        assert_int_equal(tiny_build_tensors(o, &tt), 0);
        if (drop)
                tiny_drop_tensor(&tt, drop);
        if (add_name)
                assert_int_equal(tiny_add_tensor(&tt, add_name, add_dtype, ndim, shape), 0);
        assert_int_equal(tiny_write_tensors(f->dir, o, &tt), 0);
        tiny_tensors_free(&tt);
}

static void test_missing_tensor(void **state) {
        struct fixture *f = *state;
        struct tiny_opts o = { 0 }, split = { .split_experts = true }, fp8 = { .fp8 = true };

        write_with(f, &o, P "layers.1.self_attn.k_norm.weight", NULL, 0, 0, 0, 0, 0);
        expect_fail(f, "missing tensor '" P "layers.1.self_attn.k_norm.weight'", NULL);
        write_with(f, &o, P "embed_tokens.weight", NULL, 0, 0, 0, 0, 0);
        expect_fail(f, "missing tensor 'model.language_model.embed_tokens.weight'", NULL);
        write_with(f, &o, P "layers.0.layer_scalar", NULL, 0, 0, 0, 0, 0);
        expect_fail(f, "missing tensor '" P "layers.0.layer_scalar'", NULL);
        write_with(f, &o, P "layers.0.self_attn.v_proj.weight", NULL, 0, 0, 0, 0, 0);
        expect_fail(f, "missing tensor '" P "layers.0.self_attn.v_proj.weight'", NULL);
        write_with(f, &o, P "layers.1.experts.gate_up_proj", NULL, 0, 0, 0, 0, 0);
        expect_fail(f, P "layers.1.experts.gate_up_proj", NULL);
        write_with(f, &o, P "layers.1.experts.down_proj", NULL, 0, 0, 0, 0, 0);
        expect_fail(f, "missing tensor '" P "layers.1.experts.down_proj'", NULL);
        write_with(f, &split, P "layers.1.experts.3.down_proj.weight", NULL, 0, 0, 0, 0, 0);
        expect_fail(f, "missing tensor '" P "layers.1.experts.3.down_proj.weight'", NULL);
        write_with(f, &fp8, P "layers.0.mlp.up_proj.weight_scale", NULL, 0, 0, 0, 0, 0);
        expect_fail(f, "missing tensor '" P "layers.0.mlp.up_proj.weight_scale'", NULL);
        write_with(f, &fp8, P "layers.0.experts.2.gate_proj.weight_scale", NULL, 0, 0, 0, 0, 0);
        expect_fail(f, "missing tensor '" P "layers.0.experts.2.gate_proj.weight_scale'", NULL);
}

static void test_wrong_shape_cases(void **state) {
        struct fixture *f = *state;
        struct tiny_opts o = { 0 }, fp8 = { .fp8 = true };
        const char *t;

        t = P "layers.1.self_attn.k_proj.weight";       /* full layer: 1 x 32 rows, not 1 x 16 */
        write_with(f, &o, t, t, TENSOR_DTYPE_BF16, 2, TINY_KV * TINY_HEAD_DIM, TINY_HIDDEN, 0);
        expect_fail(f, "model.safetensors", t, "shape [16, 32], expected [32, 32]", NULL);
        t = P "layers.0.experts.gate_up_proj";
        write_with(f, &o, t, t, TENSOR_DTYPE_BF16, 3, TINY_EXPERTS, TINY_MOE_INTER, TINY_HIDDEN);
        expect_fail(f, t, "shape [4, 16, 32], expected [4, 32, 32]", NULL);
        t = P "layers.0.router.proj.weight";
        write_with(f, &o, t, t, TENSOR_DTYPE_BF16, 2, TINY_HIDDEN, TINY_EXPERTS, 0);
        expect_fail(f, t, "shape [32, 4], expected [4, 32]", NULL);
        t = P "layers.0.mlp.down_proj.weight_scale";
        write_with(f, &fp8, t, t, TENSOR_DTYPE_BF16, 2, 1, TINY_HIDDEN, 0);
        expect_fail(f, t, "shape [1, 32], expected [32, 1]", NULL);
        t = P "layers.0.layer_scalar";
        write_with(f, &o, t, t, TENSOR_DTYPE_BF16, 1, 2, 0, 0);
        expect_fail(f, t, "shape [2], expected [1]", NULL);
        t = P "embed_tokens.weight";
        write_with(f, &o, t, t, TENSOR_DTYPE_BF16, 2, TINY_VOCAB - 1, TINY_HIDDEN, 0);
        expect_fail(f, t, "shape [63, 32], expected [64, 32]", NULL);
}

static void test_unexpected_tensors(void **state) {
        struct fixture *f = *state;
        struct tiny_opts o = { 0 }, split = { .split_experts = true };

        write_with(f, &o, NULL, P "layers.0.self_attn.v_norm.weight", TENSOR_DTYPE_BF16, 1, 16, 0, 0);
        expect_fail(f, "model.safetensors", P "layers.0.self_attn.v_norm.weight", "unexpected", NULL);
        /* k_eq_v full layers have no v_proj */
        write_with(f, &o, NULL, P "layers.1.self_attn.v_proj.weight", TENSOR_DTYPE_BF16, 2, 32, 32, 0);
        expect_fail(f, P "layers.1.self_attn.v_proj.weight", "unexpected", NULL);
        /* a third layer that config.json does not know */
        write_with(f, &o, NULL, P "layers.2.input_layernorm.weight", TENSOR_DTYPE_BF16, 1, 32, 0, 0);
        expect_fail(f, P "layers.2.input_layernorm.weight", "unexpected", NULL);
        /* a scale next to a BF16 weight */
        write_with(f, &o, NULL, P "layers.0.mlp.up_proj.weight_scale", TENSOR_DTYPE_BF16, 2, TINY_INTER, 1,
                   0);
        expect_fail(f, P "layers.0.mlp.up_proj.weight_scale", "unquantized", NULL);
        /* both expert layouts at once */
        write_with(f, &o, NULL, P "layers.0.experts.0.gate_proj.weight", TENSOR_DTYPE_BF16, 2, 16, 32, 0);
        expect_fail(f, P "layers.0.experts.0.gate_proj.weight", "both", NULL);
        write_with(f, &split, NULL, P "layers.0.experts.7.gate_proj.weight", TENSOR_DTYPE_BF16, 2, 16, 32,
                   0);
        expect_fail(f, P "layers.0.experts.7.gate_proj.weight", "unexpected", NULL);
}

static void test_dtype_misuse(void **state) {
        struct fixture *f = *state;
        struct tiny_opts o = { 0 }, fp8 = { .fp8 = true };
        const char *t;

        t = P "layers.0.mlp.up_proj.weight";
        write_with(f, &o, t, t, TENSOR_DTYPE_F8_E4M3, 2, TINY_INTER, TINY_HIDDEN, 0);
        expect_fail(f, t, "no quantization_config", NULL);
        t = P "layers.0.router.proj.weight";
        write_with(f, &fp8, t, t, TENSOR_DTYPE_F8_E4M3, 2, TINY_EXPERTS, TINY_HIDDEN, 0);
        expect_fail(f, t, "router", NULL);
        t = P "layers.0.input_layernorm.weight";
        write_with(f, &o, t, t, TENSOR_DTYPE_F8_E4M3, 1, TINY_HIDDEN, 0, 0);
        expect_fail(f, t, "F8_E4M3 is not supported", NULL);
        t = P "layers.0.experts.gate_up_proj";
        write_with(f, &o, t, t, TENSOR_DTYPE_F8_E4M3, 3, TINY_EXPERTS, 2 * TINY_MOE_INTER, TINY_HIDDEN);
        expect_fail(f, t, "fused 3-D F8_E4M3", NULL);
        t = P "layers.0.mlp.up_proj.weight_scale";
        write_with(f, &fp8, t, t, TENSOR_DTYPE_F8_E4M3, 2, TINY_INTER, 1, 0);
        expect_fail(f, t, "scale dtype", NULL);
}

/* Overwrites element idx of a tensor in a written file with raw bytes. */
static void poke(const char *path, const char *tensor, uint64_t offset_bytes, const void *bytes, size_t n) {
        struct st_file *sf = NULL;
        long off = -1;

        assert_int_equal(st_file_open(path, &sf, NULL), 0);
        for (size_t i = 0; i < sf->n_tensors; i++)
                if (strcmp(sf->tensors[i].name, tensor) == 0)
                        off = (long) (8 + sf->header_len + sf->tensors[i].begin + offset_bytes);
        st_file_close(sf);
        assert_true(off >= 0);
        patch_bytes(path, off, bytes, n);
}

/* NaN or Inf in a norm, scalar or scale: a corrupt file, named with the element. */
static void test_non_finite(void **state) {
        struct fixture *f = *state;
        const uint16_t nan_bf16 = 0x7fc0, inf_bf16 = 0xff80;
        const float inf_f32 = INFINITY;

        write_good(f, &(struct tiny_opts) { 0 });
        poke(f->st, P "layers.1.post_feedforward_layernorm.weight", 2 * 7, &nan_bf16, 2);
        expect_fail(f, "model.safetensors", P "layers.1.post_feedforward_layernorm.weight",
                    "element 7 is nan", NULL);
        write_good(f, &(struct tiny_opts) { 0 });
        poke(f->st, P "layers.0.layer_scalar", 0, &inf_bf16, 2);
        expect_fail(f, P "layers.0.layer_scalar", "element 0 is -inf", NULL);
        write_good(f, &(struct tiny_opts) { 0 });
        poke(f->st, P "norm.weight", 2 * 31, &nan_bf16, 2);
        expect_fail(f, P "norm.weight", "element 31", NULL);
        write_good(f, &(struct tiny_opts) { .fp8 = true, .f32_scale = true });
        poke(f->st, P "layers.0.experts.3.down_proj.weight_scale", 4 * 5, &inf_f32, 4);
        expect_fail(f, P "layers.0.experts.3.down_proj.weight_scale", "element 5 is inf", NULL);
        write_good(f, &(struct tiny_opts) { 0 });
        poke(f->st, P "layers.0.router.per_expert_scale", 2, &nan_bf16, 2);
        expect_fail(f, P "layers.0.router.per_expert_scale", "element 1", NULL);
}

static void add_to_ignore(json_t *cfg, const char *module) {
        json_array_append_new(json_object_get(json_object_get(cfg, "quantization_config"), "ignore"),
                              json_string(module));
}

static void test_fp8_in_ignore(void **state) {
        struct fixture *f = *state;
        struct tiny_opts o = { .fp8 = true };
        json_t *cfg;

        write_good(f, &o);
        cfg = tiny_config(&o);
        add_to_ignore(cfg, P "layers.1.self_attn.o_proj");
        assert_int_equal(tiny_write_config(f->dir, cfg), 0);
        json_decref(cfg);
        expect_fail(f, P "layers.1.self_attn.o_proj.weight", "quantization_config.ignore", NULL);
}

static void test_untied_lm_head(void **state) {
        struct fixture *f = *state;
        struct tiny_opts o = { .lm_head = true };
        struct model *m = NULL;
        char *err = NULL;
        json_t *cfg;

        /* tie_word_embeddings false: lm_head.weight becomes required and is mapped */
        write_good(f, &(struct tiny_opts) { 0 });
        cfg = tiny_config(&o);
        json_object_set_new(cfg, "tie_word_embeddings", json_false());
        assert_int_equal(tiny_write_config(f->dir, cfg), 0);
        json_decref(cfg);
        expect_fail(f, "missing tensor 'lm_head.weight'", NULL);
        write_with(f, &o, NULL, NULL, 0, 0, 0, 0, 0);
        cfg = tiny_config(&o);
        json_object_set_new(cfg, "tie_word_embeddings", json_false());
        assert_int_equal(tiny_write_config(f->dir, cfg), 0);
        json_decref(cfg);
        assert_int_equal(model_load(f->dir, &m, &err), 0);
        assert_false(m->cfg.tie_word_embeddings);
        assert_true(tensor_present(&m->lm_head));
        assert_string_equal(m->lm_head.name, "lm_head.weight");
        model_free(m);
}

/* ---- shards ---- */

static void write_index(struct fixture *f, const char *json) {
        char path[1100];
        FILE *fp;
        snprintf(path, sizeof(path), "%s/model.safetensors.index.json", f->dir);
        fp = fopen(path, "w");
        fputs(json, fp);
        fclose(fp);
}

static void test_shard_errors(void **state) {
        struct fixture *f = *state;
        struct tiny_opts o = { .sharded = true };
        char path[1100];

        write_good(f, &o);
        snprintf(path, sizeof(path), "%s/model-00002-of-00002.safetensors", f->dir);
        assert_int_equal(unlink(path), 0);
        expect_fail(f, "model-00002-of-00002.safetensors", "cannot open", NULL);

        write_good(f, &o);
        write_index(f, "{\"weight_map\": {\"" P "norm.weight\": \"../model-00001-of-00002.safetensors\"}}");
        expect_fail(f, "model.safetensors.index.json", P "norm.weight", "file name", NULL);

        write_good(f, &o);
        write_index(f, "{\"weight_map\": {\"" P "norm.weight\": \"model-00002-of-00002.safetensors\"}}");
        expect_fail(f, "model-00002-of-00002.safetensors", P "norm.weight", "missing from it", NULL);

        write_good(f, &o);
        write_index(f, "{\"weight_map\": [1]}");
        expect_fail(f, "model.safetensors.index.json", "weight_map", NULL);
        write_index(f, "{\"weight_map\": ");
        expect_fail(f, "model.safetensors.index.json", "not valid JSON", NULL);

        /* The same tensor in two shards */
        write_good(f, &o);
        snprintf(path, sizeof(path), "%s/model-00001-of-00002.safetensors", f->dir);
        write_raw(path,
                  "{\"" P
                  "norm.weight\": {\"dtype\": \"BF16\", \"shape\": [32], \"data_offsets\": [0, 64]}}",
                  64);
        snprintf(path, sizeof(path), "%s/model-00002-of-00002.safetensors", f->dir);
        write_raw(path,
                  "{\"" P "norm.weight\": {\"dtype\": \"BF16\", \"shape\": [32], \"data_offsets\": [0, 64]},"
                  " \"x\": {\"dtype\": \"BF16\", \"shape\": [1], \"data_offsets\": [64, 66]}}",
                  66);
        write_index(f, "{\"weight_map\": {\"" P "norm.weight\": \"model-00001-of-00002.safetensors\","
                       " \"x\": \"model-00002-of-00002.safetensors\"}}");
        expect_fail(f, P "norm.weight", "appears in both", NULL);
}

static void test_no_weights(void **state) {
        struct fixture *f = *state;

        write_good(f, &(struct tiny_opts) { 0 });
        assert_int_equal(unlink(f->st), 0);
        expect_fail(f, "neither model.safetensors.index.json nor model.safetensors", NULL);
}

/* ---- config.json ---- */

enum where { ROOT, TEXT, ROPE_FULL, QUANT, QWEIGHTS, QINPUT, QGROUP };

struct cfg_case {
        enum where where;
        const char *key;
        const char *json;       /* NULL: delete */
        const char *want;       /* substring of the message (the field name) */
        const char *want2;
};

static json_t *target(json_t *cfg, enum where w) {
        json_t *text = json_object_get(cfg, "text_config"), *q = json_object_get(cfg, "quantization_config");
        json_t *g = json_object_get(json_object_get(q, "config_groups"), "group_0");
        switch (w) {
        case ROOT:
                return cfg;
        case TEXT:
                return text;
        case ROPE_FULL:
                return json_object_get(json_object_get(text, "rope_parameters"), "full_attention");
        case QUANT:
                return q;
        case QWEIGHTS:
                return json_object_get(g, "weights");
        case QINPUT:
                return json_object_get(g, "input_activations");
        case QGROUP:
                return g;
        }
        return NULL;
}

static const struct cfg_case cfg_cases[] = {
        { TEXT, "hidden_size_per_layer_input", "256", "text_config.hidden_size_per_layer_input",
          "per-layer" },
        { TEXT, "hidden_size_per_layer_input", NULL, "text_config.hidden_size_per_layer_input", "default" },
        { TEXT, "num_kv_shared_layers", "2", "text_config.num_kv_shared_layers", NULL },
        { TEXT, "use_double_wide_mlp", "true", "text_config.use_double_wide_mlp", NULL },
        { TEXT, "hidden_activation", "\"silu\"", "text_config.hidden_activation", "silu" },
        { TEXT, "attention_bias", "true", "text_config.attention_bias", NULL },
        { TEXT, "use_bidirectional_attention", "\"all\"", "text_config.use_bidirectional_attention", NULL },
        { TEXT, "hidden_size", NULL, "text_config.hidden_size: missing", NULL },
        { TEXT, "hidden_size", "\"32\"", "text_config.hidden_size: must be an integer", NULL },
        { TEXT, "hidden_size", "-32", "text_config.hidden_size", "out of range" },
        { TEXT, "num_hidden_layers", "1000", "text_config.num_hidden_layers", "out of range" },
        { TEXT, "vocab_size", "1e9", "text_config.vocab_size", NULL },
        { TEXT, "head_dim", "15", "text_config.head_dim", "even" },
        { TEXT, "num_key_value_heads", "3", "text_config.num_key_value_heads", "divide" },
        { TEXT, "rms_norm_eps", "0", "text_config.rms_norm_eps", NULL },
        { TEXT, "rms_norm_eps", "\"x\"", "text_config.rms_norm_eps", NULL },
        { TEXT, "final_logit_softcapping", "-1", "text_config.final_logit_softcapping", NULL },
        { TEXT, "layer_types", "[\"sliding_attention\"]", "text_config.layer_types", "one type per layer" },
        { TEXT, "layer_types", "[\"sliding_attention\", \"chunked_attention\"]", "text_config.layer_types",
          "chunked_attention" },
        { TEXT, "rope_parameters", "{\"rope_type\": \"default\", \"rope_theta\": 10000}",
          "text_config.rope_parameters", NULL },
        { TEXT, "rope_parameters",
          "{\"sliding_attention\": {\"rope_type\": \"default\", \"rope_theta\": 10000}}",
          "text_config.rope_parameters.full_attention", "missing" },
        { ROPE_FULL, "rope_type", "\"yarn\"", "text_config.rope_parameters.full_attention.rope_type",
          "yarn" },
        { ROPE_FULL, "rope_theta", NULL, "text_config.rope_parameters.full_attention.rope_theta", NULL },
        { ROPE_FULL, "partial_rotary_factor", "1.5",
          "text_config.rope_parameters.full_attention.partial_rotary_factor", NULL },
        { ROPE_FULL, "factor", "8.0", "text_config.rope_parameters.full_attention.factor", NULL },
        { ROPE_FULL, "original_max_position_embeddings", "8192",
          "text_config.rope_parameters.full_attention.original_max_position_embeddings", NULL },
        { TEXT, "global_head_dim", "33", "text_config.global_head_dim", "even" },
        { TEXT, "num_global_key_value_heads", "3", "text_config.num_global_key_value_heads", "divide" },
        { TEXT, "per_layer_config", "{\"1\": {\"head_dim\": 32, \"sliding_window\": 4}}",
          "text_config.per_layer_config.1.sliding_window", NULL },
        { TEXT, "per_layer_config", "{\"0\": {\"head_dim\": 32}}", "text_config.per_layer_config.0",
          "sliding" },
        { TEXT, "per_layer_config", "{\"7\": {\"head_dim\": 32}}", "text_config.per_layer_config.7", NULL },
        { TEXT, "per_layer_config", "{\"1\": {\"head_dim\": \"x\"}}",
          "text_config.per_layer_config.1.head_dim", NULL },
        { TEXT, "per_layer_config", "[]", "text_config.per_layer_config", NULL },
        { TEXT, "num_experts", NULL, "text_config.num_experts: missing", NULL },
        { TEXT, "num_experts", "1000", "text_config.num_experts", "out of range" },
        { TEXT, "top_k_experts", "5", "text_config.top_k_experts", "out of range" },
        { TEXT, "moe_intermediate_size", NULL, "text_config.moe_intermediate_size", NULL },
        { TEXT, "model_type", "\"llama\"", "text_config.model_type", NULL },
        { TEXT, "bos_token_id", "64", "text_config.bos_token_id", NULL },
        { ROOT, "eos_token_id", "[]", "eos_token_id", NULL },
        { ROOT, "eos_token_id", "[1, 99]", "eos_token_id", "outside the vocabulary" },
        { ROOT, "eos_token_id", "\"1\"", "eos_token_id", NULL },
        { ROOT, "architectures", "[\"LlamaForCausalLM\"]", "architectures", "LlamaForCausalLM" },
        { ROOT, "architectures", "\"Gemma4ForCausalLM\"", "architectures", NULL },
        { ROOT, "model_type", "\"gemma3\"", "model_type", NULL },
        { ROOT, "text_config", "[]", "text_config", NULL },
        { ROOT, "tie_word_embeddings", "1", "tie_word_embeddings", NULL },
        { QUANT, "quant_method", "\"awq\"", "quantization_config.quant_method", "awq" },
        { QUANT, "quant_method", "\"gptq\"", "quantization_config.quant_method", "gptq" },
        { QUANT, "quant_method", "\"fp8\"", "quantization_config.quant_method", NULL },
        { QUANT, "format", "\"pack-quantized\"", "quantization_config.format", NULL },
        { QUANT, "format", "\"int-quantized\"", "quantization_config.format", NULL },
        { QUANT, "quantization_status", "\"frozen\"", "quantization_config.quantization_status", NULL },
        { QUANT, "kv_cache_scheme", "{\"num_bits\": 8}", "quantization_config.kv_cache_scheme", NULL },
        { QUANT, "sparsity_config", "{\"format\": \"sparse-24\"}", "quantization_config.sparsity_config",
          NULL },
        { QUANT, "config_groups", "{}", "quantization_config.config_groups", NULL },
        { QUANT, "ignore", "\"lm_head\"", "quantization_config.ignore", NULL },
        { QUANT, "ignore", "[1]", "quantization_config.ignore", NULL },
        { QWEIGHTS, "strategy", "\"tensor\"", "config_groups.group_0.weights.strategy", "tensor" },
        { QWEIGHTS, "strategy", "\"block\"", "config_groups.group_0.weights.strategy", "block" },
        { QWEIGHTS, "block_structure", "[128, 128]", "config_groups.group_0.weights.block_structure", NULL },
        { QWEIGHTS, "group_size", "128", "config_groups.group_0.weights.group_size", NULL },
        { QWEIGHTS, "type", "\"int\"", "config_groups.group_0.weights.type", "int" },
        { QWEIGHTS, "num_bits", "4", "config_groups.group_0.weights.num_bits", NULL },
        { QWEIGHTS, "symmetric", "false", "config_groups.group_0.weights.symmetric", NULL },
        { QWEIGHTS, "dynamic", "true", "config_groups.group_0.weights.dynamic", NULL },
        { QWEIGHTS, "actorder", "\"group\"", "config_groups.group_0.weights.actorder", NULL },
        { QINPUT, "dynamic", "false", "config_groups.group_0.input_activations.dynamic", NULL },
        { QINPUT, "strategy", "\"tensor\"", "config_groups.group_0.input_activations.strategy", NULL },
        { QGROUP, "input_activations", NULL, "config_groups.group_0.input_activations", "W8A16" },
        { QGROUP, "weights", NULL, "config_groups.group_0.weights", NULL },
        { QGROUP, "output_activations", "{\"num_bits\": 8}", "config_groups.group_0.output_activations",
          NULL },
        { QGROUP, "format", "\"naive-quantized\"", "config_groups.group_0.format", NULL },
};

static void test_config_fields(void **state) {
        struct fixture *f = *state;
        struct tiny_opts o = { .fp8 = true };

        write_good(f, &o);
        for (size_t i = 0; i < sizeof(cfg_cases) / sizeof(cfg_cases[0]); i++) {
                const struct cfg_case *c = &cfg_cases[i];
                json_t *cfg = tiny_config(&o), *t = target(cfg, c->where);
                assert_non_null(t);
                if (c->json) {
                        json_t *v = json_loads(c->json, JSON_DECODE_ANY, NULL);
                        assert_non_null(v);
                        json_object_set_new(t, c->key, v);
                } else
                        json_object_del(t, c->key);
                assert_int_equal(tiny_write_config(f->dir, cfg), 0);
                json_decref(cfg);
                expect_fail(f, "config.json", c->want, c->want2, NULL);
        }
}

static void test_config_file_errors(void **state) {
        struct fixture *f = *state;
        char path[1100];
        FILE *fp;

        write_good(f, &(struct tiny_opts) { 0 });
        snprintf(path, sizeof(path), "%s/config.json", f->dir);
        fp = fopen(path, "w");
        fputs("{\"text_config\": ", fp);
        fclose(fp);
        expect_fail(f, "config.json", "not valid JSON", NULL);
        fp = fopen(path, "w");
        fputs("[]", fp);
        fclose(fp);
        expect_fail(f, "config.json", "not a JSON object", NULL);
        fp = fopen(path, "w");
        fputs("{\"a\": 1, \"a\": 2}", fp);
        fclose(fp);
        expect_fail(f, "config.json", "duplicate", NULL);
        assert_int_equal(unlink(path), 0);
        expect_fail(f, "config.json", "cannot open", NULL);
}

/* Absent optional fields take transformers' defaults. */
static void test_config_defaults(void **state) {
        struct fixture *f = *state;
        struct model_config cfg;
        struct quant_config q;
        char path[1100], *err = NULL;
        json_t *j = json_pack("{s:s,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i}", "model_type", "gemma4_text",
                              "vocab_size", 100, "hidden_size", 64, "num_hidden_layers", 8,
                              "num_attention_heads", 4, "num_key_value_heads", 2, "head_dim", 16,
                              "intermediate_size", 128, "hidden_size_per_layer_input", 0);

        snprintf(path, sizeof(path), "%s/config.json", f->dir);
        assert_int_equal(json_dump_file(j, path, 0), 0);
        json_decref(j);
        assert_int_equal(model_config_parse_file(path, &cfg, &q, &err), 0);
        assert_null(err);
        assert_string_equal(cfg.architecture, "Gemma4ForCausalLM");
        assert_int_equal(cfg.sliding_window, 512);
        assert_int_equal(cfg.max_position_embeddings, 131072);
        for (uint32_t l = 0; l < 8; l++)
                assert_int_equal(cfg.layer_type[l], (l == 5 || l == 7) ? LAYER_FULL : LAYER_SLIDING);
        assert_int_equal(cfg.rope_sliding.kind, ROPE_DEFAULT);
        assert_true(cfg.rope_sliding.theta == 10000.0);
        assert_int_equal(cfg.rope_full.kind, ROPE_PROPORTIONAL);
        assert_true(cfg.rope_full.partial_rotary_factor == 0.25);
        assert_int_equal(cfg.global_head_dim, 512);
        assert_int_equal(cfg.n_global_kv_heads, 2);     /* no k_eq_v: num_key_value_heads */
        assert_false(cfg.attention_k_eq_v);
        assert_false(cfg.enable_moe);
        assert_true(cfg.final_logit_softcapping == 0.0f);
        assert_true(cfg.tie_word_embeddings);
        assert_int_equal(cfg.bos_token_id, 2);
        assert_int_equal(cfg.eos_token_id, 1);
        assert_int_equal(cfg.n_stop_ids, 1);
        assert_false(q.fp8);
        assert_int_equal(q.n_ignore, 0);
        quant_config_done(&q);
}

/* k_eq_v false: num_global_key_value_heads does not apply; eos from text_config as a list. */
static void test_config_variants(void **state) {
        struct fixture *f = *state;
        struct tiny_opts o = { 0 };
        struct model_config cfg;
        char path[1100], *err = NULL;
        json_t *j = tiny_config(&o), *text = json_object_get(j, "text_config");

        json_object_set_new(text, "attention_k_eq_v", json_false());
        json_object_set_new(text, "num_global_key_value_heads", json_integer(2));
        json_object_set_new(text, "eos_token_id", json_pack("[i,i]", 1, 106 % TINY_VOCAB));
        json_object_del(j, "eos_token_id");
        json_object_set_new(text, "layer_types",
                            json_pack("[s,s]", "sliding_attention", "sliding_attention"));
        json_object_set_new(text, "final_logit_softcapping", json_null());
        snprintf(path, sizeof(path), "%s/config.json", f->dir);
        assert_int_equal(json_dump_file(j, path, 0), 0);
        json_decref(j);
        assert_int_equal(model_config_parse_file(path, &cfg, NULL, &err), 0);
        assert_int_equal(cfg.n_global_kv_heads, TINY_KV);
        assert_int_equal(cfg.global_head_dim, TINY_GHEAD_DIM);
        assert_int_equal(cfg.n_stop_ids, 2);
        assert_int_equal(cfg.stop_ids[1], 106 % TINY_VOCAB);
        assert_int_equal(cfg.layer_type[1], LAYER_FULL); /* last layer forced to full, as in transformers */
        assert_true(cfg.final_logit_softcapping == 0.0f);
}

static void write_gen_config(struct fixture *f, const char *json) {
        char path[1100];
        FILE *fp;
        snprintf(path, sizeof(path), "%s/generation_config.json", f->dir);
        fp = fopen(path, "w");
        fputs(json, fp);
        fclose(fp);
}

/* generation_config.json adds stop ids (transformers' converter puts <|tool_response> only there). */
static void test_generation_config(void **state) {
        struct fixture *f = *state;
        struct model *m = NULL;
        char *err = NULL;

        write_good(f, &(struct tiny_opts) { 0 });
        write_gen_config(f, "{\"bos_token_id\": 2, \"eos_token_id\": [1, 6, 50, 9], \"top_k\": 64}");
        assert_int_equal(model_load(f->dir, &m, &err), 0);
        assert_int_equal(m->cfg.eos_token_id, 1);
        assert_int_equal(m->cfg.n_stop_ids, 5);
        static const int32_t want[5] = { 1, 6, 5, 50, 9 };
        for (int i = 0; i < 5; i++)
                assert_int_equal(m->cfg.stop_ids[i], want[i]);
        model_free(m);
        write_gen_config(f, "{\"eos_token_id\": 7}");
        assert_int_equal(model_load(f->dir, &m, &err), 0);
        assert_int_equal(m->cfg.n_stop_ids, 4);
        model_free(m);
        write_gen_config(f, "{\"eos_token_id\": null}");
        assert_int_equal(model_load(f->dir, &m, &err), 0);
        assert_int_equal(m->cfg.n_stop_ids, 3);
        model_free(m);

        write_gen_config(f, "{\"eos_token_id\": [1, 99]}");
        expect_fail(f, "generation_config.json: eos_token_id", "outside the vocabulary", NULL);
        write_gen_config(f, "{\"eos_token_id\": [10, 11, 12, 13, 14, 15, 16]}");
        expect_fail(f, "generation_config.json: eos_token_id", "more than 8", NULL);
        write_gen_config(f, "{\"eos_token_id\": ");
        expect_fail(f, "generation_config.json", "not valid JSON", NULL);
        write_gen_config(f, "[]");
        expect_fail(f, "generation_config.json", "not a JSON object", NULL);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_truncated, setup, teardown),
                cmocka_unit_test_setup_teardown(test_truncated_to_nothing, setup, teardown),
                cmocka_unit_test_setup_teardown(test_header_len_over_limit, setup, teardown),
                cmocka_unit_test_setup_teardown(test_header_len_past_eof, setup, teardown),
                cmocka_unit_test_setup_teardown(test_bad_json, setup, teardown),
                cmocka_unit_test_setup_teardown(test_duplicate_names, setup, teardown),
                cmocka_unit_test_setup_teardown(test_header_fields, setup, teardown),
                cmocka_unit_test_setup_teardown(test_unknown_dtype, setup, teardown),
                cmocka_unit_test_setup_teardown(test_bad_shapes, setup, teardown),
                cmocka_unit_test_setup_teardown(test_bad_offsets, setup, teardown),
                cmocka_unit_test_setup_teardown(test_random_header_damage, setup, teardown),
                cmocka_unit_test_setup_teardown(test_missing_tensor, setup, teardown),
                cmocka_unit_test_setup_teardown(test_wrong_shape_cases, setup, teardown),
                cmocka_unit_test_setup_teardown(test_unexpected_tensors, setup, teardown),
                cmocka_unit_test_setup_teardown(test_dtype_misuse, setup, teardown),
                cmocka_unit_test_setup_teardown(test_fp8_in_ignore, setup, teardown),
                cmocka_unit_test_setup_teardown(test_non_finite, setup, teardown),
                cmocka_unit_test_setup_teardown(test_untied_lm_head, setup, teardown),
                cmocka_unit_test_setup_teardown(test_shard_errors, setup, teardown),
                cmocka_unit_test_setup_teardown(test_no_weights, setup, teardown),
                cmocka_unit_test_setup_teardown(test_config_fields, setup, teardown),
                cmocka_unit_test_setup_teardown(test_config_file_errors, setup, teardown),
                cmocka_unit_test_setup_teardown(test_config_defaults, setup, teardown),
                cmocka_unit_test_setup_teardown(test_config_variants, setup, teardown),
                cmocka_unit_test_setup_teardown(test_generation_config, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
