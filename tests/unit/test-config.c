/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Configuration: defaults, a full valid file, one test per error class (each checks the exact
 * "file:line:column: message" and that the configuration is left untouched), overrides, the restart-key
 * diff, printing, and that the shipped file and man page document every key.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"

/* A configuration with several non-default values, so "untouched" is not confused with "defaults". */
static void make_custom(struct gemma4d_config *c) {
        char *err = NULL;
        assert_int_equal(config_init_defaults(c), 0);
        assert_int_equal(config_load_string(c, "custom.yaml",
                                            "backend: cuda\n"
                                            "model: {path: /srv/m}\n"
                                            "access: {allowed_uids: [7], allowed_groups: [staff]}\n"
                                            "limits: {max_queue: 9}\n",
                                            &err), 0);
        assert_null(err);
}

/* Loads `yaml` as "t.yaml" on top of a custom config; expects error `errnum` and message `msg` exactly. */
static void expect_error_at(const char *yaml, int errnum, const char *msg) {
        struct gemma4d_config c, before;
        char *err = NULL;

        make_custom(&c);
        assert_int_equal(config_copy(&c, &before), 0);
        int r = config_load_string(&c, "t.yaml", yaml, &err);
        assert_int_equal(r, -errnum);
        assert_non_null(err);
        assert_string_equal(err, msg);
        assert_true(config_equal(&c, &before));
        free(err);
        config_done(&c);
        config_done(&before);
}

static void test_defaults(void **state) {
        struct gemma4d_config c;
        assert_int_equal(config_init_defaults(&c), 0);
        assert_string_equal(c.model_path, "");
        assert_int_equal(c.backend, BACKEND_KIND_CPU);
        assert_int_equal(c.gpu, 0);
        assert_string_equal(c.socket_path, "/run/gemma4d/0.sock");
        assert_int_equal(c.socket_mode, 0660);
        assert_string_equal(c.socket_group, "");
        assert_int_equal(c.n_allowed_uids, 0);
        assert_int_equal(c.n_allowed_groups, 0);
        assert_true(c.gpu_fraction == 0.9);
        assert_int_equal(c.kv_dtype, KV_DTYPE_FP8);
        assert_int_equal(c.kv_page_size, 16);
        assert_true(c.prefix_cache);
        assert_int_equal(c.max_model_len, 32768);
        assert_int_equal(c.max_num_seqs, 64);
        assert_int_equal(c.max_batched_tokens, 8192);
        assert_int_equal(c.max_queue, 1024);
        assert_int_equal(c.max_frame_bytes, 16u << 20);
        assert_int_equal(c.max_inflight_per_connection, 64);
        assert_int_equal(c.max_connections, 256);
        assert_int_equal(c.max_write_queue_bytes, 8u << 20);
        assert_int_equal(c.aging_ms, 10000);
        assert_int_equal(c.drain_seconds, 30);
        assert_int_equal(c.log_level, LOG_LEVEL_INFO);
        assert_false(c.lm_head_bf16);
        assert_false(c.weights_bf16);
        assert_false(c.embedding_device);
        assert_int_equal(c.cpu_threads, 0);
        assert_int_equal(config_validate(&c, NULL), 0);
        config_done(&c);
}

static void test_full_file(void **state) {
        struct gemma4d_config c;
        char *err = NULL;
        assert_int_equal(config_init_defaults(&c), 0);
        int r = config_load_string(&c, "full.yaml",
                "model:\n  path: /models/gemma-4-26B-A4B-it-FP8-Dynamic\n"
                "backend: cuda\n"
                "gpu: 3\n"
                "socket:\n  path: /run/gemma4d/3.sock\n  mode: 0600\n  group: gemma4d\n"
                "access:\n  allowed_uids:\n    - 0\n    - 1000\n  allowed_groups: [adm, gemma-users]\n"
                "memory:\n  gpu_fraction: 0.55\n"
                "kv:\n  dtype: bf16\n  page_size: 32\n  prefix_cache: no\n"
                "limits:\n  max_model_len: 131072\n  max_num_seqs: 128\n  max_batched_tokens: 16384\n"
                "  max_queue: 5000\n  max_frame_bytes: 1G\n  max_inflight_per_connection: 8\n"
                "  max_connections: 1000\n  max_write_queue_bytes: 65536\n"
                "scheduler:\n  aging_ms: 250\n"
                "shutdown:\n  drain_seconds: 0\n"
                "log:\n  level: debug\n"
                "cuda:\n  lm_head: bf16\n  weights: bf16\n  embedding: device\n"
                "cpu:\n  threads: 2\n", &err);
        assert_null(err);
        assert_int_equal(r, 0);
        assert_string_equal(c.model_path, "/models/gemma-4-26B-A4B-it-FP8-Dynamic");
        assert_int_equal(c.backend, BACKEND_KIND_CUDA);
        assert_int_equal(c.gpu, 3);
        assert_string_equal(c.socket_path, "/run/gemma4d/3.sock");
        assert_int_equal(c.socket_mode, 0600);
        assert_string_equal(c.socket_group, "gemma4d");
        assert_int_equal(c.n_allowed_uids, 2);
        assert_int_equal(c.allowed_uids[0], 0);
        assert_int_equal(c.allowed_uids[1], 1000);
        assert_int_equal(c.n_allowed_groups, 2);
        assert_string_equal(c.allowed_groups[0], "adm");
        assert_string_equal(c.allowed_groups[1], "gemma-users");
        assert_true(c.gpu_fraction == 0.55);
        assert_int_equal(c.kv_dtype, KV_DTYPE_BF16);
        assert_int_equal(c.kv_page_size, 32);
        assert_false(c.prefix_cache);
        assert_int_equal(c.max_model_len, 131072);
        assert_int_equal(c.max_num_seqs, 128);
        assert_int_equal(c.max_batched_tokens, 16384);
        assert_int_equal(c.max_queue, 5000);
        assert_int_equal(c.max_frame_bytes, 1u << 30);
        assert_int_equal(c.max_inflight_per_connection, 8);
        assert_int_equal(c.max_connections, 1000);
        assert_int_equal(c.max_write_queue_bytes, 65536);
        assert_int_equal(c.aging_ms, 250);
        assert_int_equal(c.drain_seconds, 0);
        assert_int_equal(c.log_level, LOG_LEVEL_DEBUG);
        assert_true(c.lm_head_bf16);
        assert_true(c.weights_bf16);
        assert_true(c.embedding_device);
        assert_int_equal(c.cpu_threads, 2);
        config_done(&c);
}

/* Keys left out keep their earlier values; an empty file or a section with everything commented out
 * changes nothing. */
static void test_partial_and_empty(void **state) {
        struct gemma4d_config c, before;
        char *err = NULL;
        make_custom(&c);
        assert_int_equal(config_copy(&c, &before), 0);
        assert_int_equal(config_load_string(&c, "e.yaml", "", &err), 0);
        assert_int_equal(config_load_string(&c, "e.yaml", "# only a comment\n", &err), 0);
        assert_int_equal(config_load_string(&c, "e.yaml", "limits:\n#  max_queue: 3\nkv:\n", &err), 0);
        assert_true(config_equal(&c, &before));
        assert_int_equal(config_load_string(&c, "e.yaml", "limits: {max_connections: 3}\n", &err), 0);
        assert_null(err);
        assert_int_equal(c.max_connections, 3);
        assert_int_equal(c.max_queue, 9);               /* from make_custom */
        assert_int_equal(c.backend, BACKEND_KIND_CUDA);
        config_done(&c);
        config_done(&before);
}

static void test_value_syntax(void **state) {
        struct gemma4d_config c;
        char *err = NULL;
        assert_int_equal(config_init_defaults(&c), 0);
        assert_int_equal(config_load_string(&c, "s.yaml",
                                            "socket: {mode: \"0o640\"}\n"
                                            "kv: {prefix_cache: Off}\n"
                                            "limits: {max_frame_bytes: 64KiB, max_write_queue_bytes: 2G}\n"
                                            "memory: {gpu_fraction: 1}\n", &err), 0);
        assert_null(err);
        assert_int_equal(c.socket_mode, 0640);
        assert_false(c.prefix_cache);
        assert_int_equal(c.max_frame_bytes, 64 * 1024);
        assert_int_equal(c.max_write_queue_bytes, 2ull << 30);
        assert_true(c.gpu_fraction == 1.0);
        config_done(&c);
}

static void test_unknown_key(void **state) {
        expect_error_at("bogus: 1\n", ENOENT, "t.yaml:1:1: unknown key 'bogus'");
        expect_error_at("limits:\n  max_queue: 5\n  max_queu: 5\n", ENOENT,
                        "t.yaml:3:3: unknown key 'limits.max_queu'");
        expect_error_at("gpu: 1\nnetwork:\n  port: 80\n", ENOENT, "t.yaml:2:1: unknown key 'network'");
        /* Dotted names are not keys of the file: sections nest. */
        expect_error_at("limits.max_queue: 5\n", ENOENT, "t.yaml:1:1: unknown key 'limits.max_queue'");
        /* A section name is not a section below the top level. */
        expect_error_at("kv:\n  limits:\n    max_queue: 5\n", ENOENT, "t.yaml:2:3: unknown key 'kv.limits'");
}

static void test_wrong_type(void **state) {
        expect_error_at("limits:\n  max_queue: abc\n", EINVAL,
                        "t.yaml:2:14: limits.max_queue: expected an integer, got 'abc'");
        expect_error_at("limits:\n  max_queue: 12abc\n", EINVAL,
                        "t.yaml:2:14: limits.max_queue: expected an integer, got '12abc'");
        expect_error_at("gpu: \"3\"\n", EINVAL, "t.yaml:1:6: gpu: expected an integer, got the string \"3\"");
        expect_error_at("gpu: [1]\n", EINVAL, "t.yaml:1:6: gpu: expected an integer, got a list");
        expect_error_at("model:\n  path: {a: b}\n", EINVAL,
                        "t.yaml:2:9: model.path: expected a string, got a mapping");
        expect_error_at("kv: {prefix_cache: maybe}\n", EINVAL,
                        "t.yaml:1:20: kv.prefix_cache: expected true or false, got 'maybe'");
        expect_error_at("memory: {gpu_fraction: half}\n", EINVAL,
                        "t.yaml:1:24: memory.gpu_fraction: expected a number, got 'half'");
        expect_error_at("limits: {max_frame_bytes: 16X}\n", EINVAL,
                        "t.yaml:1:27: limits.max_frame_bytes: expected a size (an integer, optionally with "
                        "a K, M or G suffix), got '16X'");
        expect_error_at("access:\n  allowed_uids: 1000\n", EINVAL,
                        "t.yaml:2:17: access.allowed_uids: expected a list of user ids, got a scalar");
        expect_error_at("access:\n  allowed_uids: [1000, [1]]\n", EINVAL,
                        "t.yaml:2:24: access.allowed_uids: list entries must be user ids, got a list");
        expect_error_at("access:\n  allowed_uids: [root]\n", EINVAL,
                        "t.yaml:2:18: access.allowed_uids: expected a numeric user id, got 'root'");
        expect_error_at("limits: 5\n", EINVAL,
                        "t.yaml:1:9: limits: expected a mapping of limits.* keys, got a scalar");
        expect_error_at("gpu:\n", EINVAL,
                        "t.yaml:1:5: gpu: value is missing (write \"\" for an empty string)");
        expect_error_at("- a\n- b\n", EINVAL,
                        "t.yaml:1:1: the top level must be a mapping of keys, got a list");
        expect_error_at("? [a]\n: 1\n", EINVAL, "t.yaml:1:3: keys must be plain names, got a list");
}

static void test_out_of_range(void **state) {
        expect_error_at("limits:\n  max_queue: 0\n", ERANGE,
                        "t.yaml:2:14: limits.max_queue: 0 is out of range (1..1000000)");
        expect_error_at("limits:\n  max_num_seqs: -1\n", ERANGE,
                        "t.yaml:2:17: limits.max_num_seqs: -1 is out of range (1..4096)");
        expect_error_at("limits:\n  max_queue: 99999999999999999999999\n", ERANGE,
                        "t.yaml:2:14: limits.max_queue: 99999999999999999999999 is out of range (1..1000000)");
        expect_error_at("gpu: 256\n", ERANGE, "t.yaml:1:6: gpu: 256 is out of range (0..255)");
        expect_error_at("memory: {gpu_fraction: 0}\n", ERANGE,
                        "t.yaml:1:24: memory.gpu_fraction: 0 is out of range (>0..1)");
        expect_error_at("memory: {gpu_fraction: 1.01}\n", ERANGE,
                        "t.yaml:1:24: memory.gpu_fraction: 1.01 is out of range (>0..1)");
        expect_error_at("kv: {page_size: 512}\n", ERANGE,
                        "t.yaml:1:17: kv.page_size: 512 is out of range (8..256, a power of two)");
        expect_error_at("kv: {page_size: 24}\n", EINVAL, "t.yaml:1:17: kv.page_size: 24 is not a power of two");
        expect_error_at("limits: {max_frame_bytes: 2K}\n", ERANGE,
                        "t.yaml:1:27: limits.max_frame_bytes: 2K is out of range (4K..1G)");
        expect_error_at("access: {allowed_uids: [4294967295]}\n", ERANGE,
                        "t.yaml:1:25: access.allowed_uids: user id 4294967295 is out of range (0..4294967294)");
        expect_error_at("socket: {path: \"\"}\n", EINVAL, "t.yaml:1:16: socket.path: must not be empty");

        char yaml[400], msg[200];
        snprintf(yaml, sizeof yaml, "socket:\n  path: /%0120d\n", 0);
        expect_error_at(yaml, ENAMETOOLONG, "t.yaml:2:9: socket.path: path is longer than 107 bytes");

        /* 65 entries: one more than the struct holds. */
        size_t n = (size_t) snprintf(yaml, sizeof yaml, "access: {allowed_uids: [");
        for (int i = 0; i <= CONFIG_MAX_ALLOWED; i++)
                n += (size_t) snprintf(yaml + n, sizeof yaml - n, "%s%d", i ? "," : "", i);
        snprintf(yaml + n, sizeof yaml - n, "]}\n");
        snprintf(msg, sizeof msg, "t.yaml:1:%zu: access.allowed_uids: more than 64 entries",
                 strlen("access: {allowed_uids: [") + strlen("0,1,2,3,4,5,6,7,8,9,") + 54 * 3 + 1);
        expect_error_at(yaml, E2BIG, msg);

        /* Checks between keys name the file. */
        expect_error_at("limits: {max_num_seqs: 256, max_batched_tokens: 128}\n", EINVAL,
                        "t.yaml: limits.max_batched_tokens (128) must be at least limits.max_num_seqs (256): "
                        "every running sequence decodes one token per step");
}

static void test_bad_enum(void **state) {
        expect_error_at("backend: gpu\n", EINVAL,
                        "t.yaml:1:10: backend: invalid value 'gpu' (expected one of: cpu, cuda)");
        expect_error_at("kv:\n  dtype: fp16\n", EINVAL,
                        "t.yaml:2:10: kv.dtype: invalid value 'fp16' (expected one of: fp8, bf16)");
        expect_error_at("log:\n  level: verbose\n", EINVAL,
                        "t.yaml:2:10: log.level: invalid value 'verbose' (expected one of: error, warning, "
                        "info, debug)");
        expect_error_at("cuda: {lm_head: fp32}\n", EINVAL,
                        "t.yaml:1:17: cuda.lm_head: invalid value 'fp32' (expected one of: fp8, bf16)");
        expect_error_at("cuda: {embedding: gpu}\n", EINVAL,
                        "t.yaml:1:19: cuda.embedding: invalid value 'gpu' (expected one of: host, device)");
        /* Names are case-sensitive, as in the documentation. */
        expect_error_at("backend: CPU\n", EINVAL,
                        "t.yaml:1:10: backend: invalid value 'CPU' (expected one of: cpu, cuda)");
}

static void test_bad_mode(void **state) {
        expect_error_at("socket:\n  mode: 0888\n", EINVAL,
                        "t.yaml:2:9: socket.mode: expected an octal file mode such as 0660, got '0888'");
        expect_error_at("socket:\n  mode: 660\n", EINVAL,
                        "t.yaml:2:9: socket.mode: expected an octal file mode such as 0660, got '660'");
        expect_error_at("socket:\n  mode: 0o\n", EINVAL,
                        "t.yaml:2:9: socket.mode: expected an octal file mode such as 0660, got '0o'");
        expect_error_at("socket:\n  mode: 01777\n", ERANGE,
                        "t.yaml:2:9: socket.mode: mode 01777 is out of range (0000..0777)");
}

static void test_bad_group_name(void **state) {
        expect_error_at("socket: {group: \"bad group\"}\n", EINVAL,
                        "t.yaml:1:17: socket.group: 'bad group' is not a valid group name");
        expect_error_at("access: {allowed_groups: [ok, -x]}\n", EINVAL,
                        "t.yaml:1:31: access.allowed_groups: '-x' is not a valid group name");
}

static void test_duplicate_key(void **state) {
        expect_error_at("socket:\n  path: /a.sock\n  path: /b.sock\n", EINVAL,
                        "t.yaml:3:3: duplicate key 'socket.path' (first set at line 2)");
        expect_error_at("gpu: 1\nlimits: {max_queue: 3}\ngpu: 2\n", EINVAL,
                        "t.yaml:3:1: duplicate key 'gpu' (first set at line 1)");
        expect_error_at("limits:\n  max_queue: 3\nlimits:\n  max_connections: 4\n", EINVAL,
                        "t.yaml:3:1: duplicate key 'limits' (first set at line 1)");
}

static void test_malformed(void **state) {
        expect_error_at("limits: [1, 2\n", EBADMSG,
                        "t.yaml:2:1: did not find expected ',' or ']' while parsing a flow sequence "
                        "started at line 1, column 9");
        expect_error_at("limits:\n  max_queue: 1\n max_connections: 2\n", EBADMSG,
                        "t.yaml:3:2: did not find expected key while parsing a block mapping "
                        "started at line 1, column 1");
        expect_error_at("model:\n  path: \"/unterminated\n", EBADMSG,
                        "t.yaml:3:1: found unexpected end of stream while scanning a quoted scalar "
                        "started at line 2, column 9");
        expect_error_at("gpu: 1\n\tbackend: cpu\n", EBADMSG,
                        "t.yaml:2:1: found a tab character that violates indentation while scanning a "
                        "plain scalar started at line 1, column 6");
        expect_error_at("gpu: 1\n---\ngpu: 2\n", EINVAL, "t.yaml:2:1: only one YAML document is allowed");
        /* Invalid UTF-8 is caught by libyaml's reader, which knows only the byte offset. */
        expect_error_at("model: {path: \"\xff\"}\n", EBADMSG, "t.yaml: byte 15: invalid leading UTF-8 octet");
}

static void test_load_file(void **state) {
        struct gemma4d_config c, before;
        char path[] = "/tmp/test-config-XXXXXX", *err = NULL;
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        const char *text = "backend: cuda\nlimits:\n  max_queue: 17\n  max_queue: 18\n";
        assert_int_equal(write(fd, text, strlen(text)), (ssize_t) strlen(text));
        close(fd);

        make_custom(&c);
        assert_int_equal(config_copy(&c, &before), 0);
        assert_int_equal(config_load_file(&c, path, &err), -EINVAL);
        char expected[200];
        snprintf(expected, sizeof expected, "%s:4:3: duplicate key 'limits.max_queue' (first set at line 3)",
                 path);
        assert_string_equal(err, expected);
        assert_true(config_equal(&c, &before));
        free(err);
        err = NULL;

        /* A missing file. */
        unlink(path);
        assert_int_equal(config_load_file(&c, path, &err), -ENOENT);
        snprintf(expected, sizeof expected, "%s: No such file or directory", path);
        assert_string_equal(err, expected);
        assert_true(config_equal(&c, &before));
        free(err);
        config_done(&c);
        config_done(&before);
}

/* The shipped config/gemma4d.yaml sets every key to its compiled-in default. */
static void test_shipped_file_is_defaults(void **state) {
        struct gemma4d_config c, d;
        char path[4096], *err = NULL;
        const char *root = getenv("GEMMA4D_SOURCE_ROOT");
        assert_non_null(root);
        snprintf(path, sizeof path, "%s/config/gemma4d.yaml", root);

        /* Load it on top of a config that differs from the defaults in every key it sets. */
        assert_int_equal(config_init_defaults(&d), 0);
        make_custom(&c);
        assert_int_equal(config_load_file(&c, path, &err), 0);
        assert_null(err);
        assert_true(config_equal(&c, &d));
        config_done(&c);
        config_done(&d);
}

static char *read_text(const char *relpath) {
        char path[4096];
        const char *root = getenv("GEMMA4D_SOURCE_ROOT");
        assert_non_null(root);
        snprintf(path, sizeof path, "%s/%s", root, relpath);
        FILE *f = fopen(path, "re");
        assert_non_null(f);
        assert_int_equal(fseek(f, 0, SEEK_END), 0);
        long n = ftell(f);
        assert_true(n > 0);
        rewind(f);
        char *s = malloc((size_t) n + 1);
        assert_non_null(s);
        assert_int_equal(fread(s, 1, (size_t) n, f), (size_t) n);
        s[n] = '\0';
        fclose(f);
        return s;
}

/* Every key of the table is written out (uncommented) in the shipped file and documented in
 * gemma4d.yaml(5) with its reload/restart class. */
static void test_docs_cover_every_key(void **state) {
        char *yaml = read_text("config/gemma4d.yaml");
        char *man = read_text("man/gemma4d.yaml.5.scd");

        for (size_t i = 0; i < config_n_keys(); i++) {
                const char *key = config_key_name(i), *dot = strchr(key, '.');
                char needle[200];
                if (dot) {
                        snprintf(needle, sizeof needle, "\n%.*s:\n", (int) (dot - key), key);
                        const char *sec = strstr(yaml, needle);
                        assert_non_null(sec);
                        snprintf(needle, sizeof needle, "\n  %s: ", dot + 1);
                        const char *leaf = strstr(sec, needle);
                        /* The leaf must come before the next section starts. */
                        assert_non_null(leaf);
                        for (const char *p = sec + 1; p < leaf; p++)
                                assert_false(p[0] == '\n' && p[1] != ' ' && p[1] != '#' && p[1] != '\n');
                } else {
                        snprintf(needle, sizeof needle, "\n%s: ", key);
                        assert_non_null(strstr(yaml, needle));
                }
                /* The man page has a "*key*" heading followed by the reload class. */
                snprintf(needle, sizeof needle, "\n*%s*\n", key);
                const char *entry = strstr(man, needle);
                if (!entry)
                        fail_msg("gemma4d.yaml.5.scd does not document %s", key);
                const char *next = strstr(entry + 1, "\n*");
                const char *cls = strstr(entry, config_key_is_reloadable(key) ? "Reload: yes" : "Reload: no");
                if (!cls || (next && cls > next))
                        fail_msg("gemma4d.yaml.5.scd: %s lacks the right \"Reload:\" line", key);
        }
        free(yaml);
        free(man);
}

static void test_set(void **state) {
        struct gemma4d_config c, before;
        char *err = NULL;

        make_custom(&c);
        assert_int_equal(config_set(&c, "backend", "cpu", &err), 0);
        assert_int_equal(c.backend, BACKEND_KIND_CPU);
        assert_int_equal(config_set(&c, "model.path", "/x/y", &err), 0);
        assert_string_equal(c.model_path, "/x/y");
        assert_int_equal(config_set(&c, "access.allowed_uids", "1, 2,3", &err), 0);
        assert_int_equal(c.n_allowed_uids, 3);
        assert_int_equal(c.allowed_uids[2], 3);
        assert_int_equal(config_set(&c, "access.allowed_groups", "a,b", &err), 0);
        assert_int_equal(c.n_allowed_groups, 2);
        assert_string_equal(c.allowed_groups[1], "b");
        assert_int_equal(config_set(&c, "access.allowed_groups", "", &err), 0);
        assert_int_equal(c.n_allowed_groups, 0);
        assert_int_equal(config_set(&c, "limits.max_frame_bytes", "1M", &err), 0);
        assert_int_equal(c.max_frame_bytes, 1 << 20);
        assert_null(err);

        /* Errors leave the config alone and say which key. */
        assert_int_equal(config_copy(&c, &before), 0);
        assert_int_equal(config_set(&c, "log.level", "loud", &err), -EINVAL);
        assert_string_equal(err, "log.level: invalid value 'loud' (expected one of: error, warning, info, debug)");
        free(err);
        assert_int_equal(config_set(&c, "limits.max_queu", "1", &err), -ENOENT);
        assert_string_equal(err, "unknown configuration key 'limits.max_queu'");
        free(err);
        assert_int_equal(config_set(&c, "access.allowed_uids", "5,x", &err), -EINVAL);
        assert_string_equal(err, "access.allowed_uids: expected a numeric user id, got 'x'");
        free(err);
        assert_int_equal(config_set(&c, "limits", "3", &err), -ENOENT);
        free(err);
        assert_true(config_equal(&c, &before));

        /* config_set leaves checks between keys to config_validate, so order does not matter. */
        assert_int_equal(config_set(&c, "limits.max_batched_tokens", "16", NULL), 0);
        assert_int_equal(config_validate(&c, &err), -EINVAL);
        free(err);
        assert_int_equal(config_set(&c, "limits.max_num_seqs", "16", NULL), 0);
        assert_int_equal(config_validate(&c, NULL), 0);
        config_done(&c);
        config_done(&before);
}

/* File, then override: the override wins; a later file overrides earlier values. */
static void test_override_wins(void **state) {
        struct gemma4d_config c;
        char *err = NULL;
        assert_int_equal(config_init_defaults(&c), 0);
        assert_int_equal(config_load_string(&c, "f.yaml", "backend: cuda\nsocket: {path: /f.sock}\n", &err), 0);
        assert_int_equal(config_set(&c, "socket.path", "/flag.sock", &err), 0);
        assert_string_equal(c.socket_path, "/flag.sock");
        assert_int_equal(c.backend, BACKEND_KIND_CUDA);
        assert_null(err);
        config_done(&c);
}

static void test_restart_keys_changed(void **state) {
        struct gemma4d_config a, b;
        char buf[256];

        assert_int_equal(config_init_defaults(&a), 0);
        assert_int_equal(config_copy(&a, &b), 0);
        assert_false(config_restart_keys_changed(&a, &b, buf, sizeof buf));
        assert_string_equal(buf, "");

        /* Reloadable keys only. */
        assert_int_equal(config_set(&b, "log.level", "debug", NULL), 0);
        assert_int_equal(config_set(&b, "limits.max_queue", "5", NULL), 0);
        assert_int_equal(config_set(&b, "access.allowed_uids", "0", NULL), 0);
        assert_false(config_restart_keys_changed(&a, &b, buf, sizeof buf));
        assert_string_equal(buf, "");
        assert_false(config_equal(&a, &b));

        assert_int_equal(config_set(&b, "model.path", "/other", NULL), 0);
        assert_int_equal(config_set(&b, "kv.dtype", "bf16", NULL), 0);
        assert_int_equal(config_set(&b, "cuda.lm_head", "bf16", NULL), 0);
        assert_true(config_restart_keys_changed(&a, &b, buf, sizeof buf));
        assert_string_equal(buf, "model.path, kv.dtype, cuda.lm_head");

        /* A short buffer is truncated, not overrun; NULL is allowed. */
        char small[8];
        assert_true(config_restart_keys_changed(&a, &b, small, sizeof small));
        assert_string_equal(small, "model.p");
        assert_true(config_restart_keys_changed(&a, &b, NULL, 0));

        assert_true(config_key_is_reloadable("log.level"));
        assert_true(config_key_is_reloadable("access.allowed_groups"));
        assert_false(config_key_is_reloadable("backend"));
        assert_false(config_key_is_reloadable("kv.page_size"));
        assert_false(config_key_is_reloadable("no.such"));
        config_done(&a);
        config_done(&b);
}

/* config_format prints YAML that loads back to an equal configuration. */
static void test_format_round_trip(void **state) {
        struct gemma4d_config c, d;
        char *text = NULL, *err = NULL;
        make_custom(&c);
        assert_int_equal(config_set(&c, "memory.gpu_fraction", "0.123456789", NULL), 0);
        assert_int_equal(config_set(&c, "socket.group", "gemma4d", NULL), 0);
        assert_int_equal(config_set(&c, "model.path", "/odd \"name\"\\dir", NULL), 0);
        assert_int_equal(config_set(&c, "limits.max_write_queue_bytes", "100000", NULL), 0);
        assert_int_equal(config_set(&c, "socket.mode", "0600", NULL), 0);
        assert_int_equal(config_format(&c, &text), 0);
        assert_non_null(strstr(text, "\nlimits:\n  max_model_len: 32768\n"));
        assert_non_null(strstr(text, "  mode: 0600\n"));
        assert_non_null(strstr(text, "  max_frame_bytes: 16M\n"));

        assert_int_equal(config_init_defaults(&d), 0);
        assert_int_equal(config_load_string(&d, "formatted", text, &err), 0);
        assert_null(err);
        assert_true(config_equal(&c, &d));
        free(text);
        config_done(&c);
        config_done(&d);
}

/* Deterministic mutations of a valid file (flipped, deleted and inserted bytes) never crash, never leak,
 * and either load or fail with a "t.yaml..." message and the configuration untouched. */
static void test_mutations(void **state) {
        static const char base[] =
                "model: {path: /m}\nbackend: cuda\ngpu: 1\n"
                "socket: {path: /s.sock, mode: 0600, group: g}\n"
                "access: {allowed_uids: [1, 2], allowed_groups: [a]}\n"
                "memory: {gpu_fraction: 0.5}\nkv: {dtype: bf16, page_size: 32, prefix_cache: false}\n"
                "limits:\n  max_model_len: 4096\n  max_num_seqs: 8\n  max_batched_tokens: 512\n"
                "  max_queue: 10\n  max_frame_bytes: 1M\n  max_inflight_per_connection: 4\n"
                "  max_connections: 9\n  max_write_queue_bytes: 128K\n"
                "scheduler: {aging_ms: 5}\nshutdown: {drain_seconds: 1}\nlog: {level: warning}\n"
                "cuda: {lm_head: bf16, weights: fp8}\ncpu: {threads: 3}\n";
        static const char alphabet[] = ":{}[],-#'\"\n\t &*!|>%@`0a.";
        uint64_t rng = 0x9e3779b97f4a7c15ull;
        char text[sizeof base + 16];
        unsigned loaded = 0, rejected = 0;

        for (int iter = 0; iter < 1500; iter++) {
                size_t n = sizeof base - 1;
                memcpy(text, base, sizeof base);
                for (int m = 0; m < 1 + iter % 3; m++) {
                        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
                        size_t at = (size_t) (rng >> 8) % n;
                        char ch = alphabet[(rng >> 40) % (sizeof alphabet - 1)];
                        switch ((rng >> 60) % 3) {
                        case 0:
                                text[at] = ch;
                                break;
                        case 1:
                                memmove(text + at, text + at + 1, n - at);
                                n--;
                                break;
                        default:
                                if (n + 1 < sizeof text) {
                                        memmove(text + at + 1, text + at, n - at + 1);
                                        text[at] = ch;
                                        n++;
                                }
                        }
                }
                struct gemma4d_config c, before;
                char *err = NULL;
                make_custom(&c);
                assert_int_equal(config_copy(&c, &before), 0);
                int r = config_load_string(&c, "t.yaml", text, &err);
                if (r == 0) {
                        assert_null(err);
                        assert_int_equal(config_validate(&c, NULL), 0);
                        loaded++;
                } else {
                        assert_true(r < 0);
                        assert_non_null(err);
                        assert_true(strncmp(err, "t.yaml:", 7) == 0);
                        assert_true(config_equal(&c, &before));
                        free(err);
                        rejected++;
                }
                config_done(&c);
                config_done(&before);
        }
        print_message("# mutations: %u loaded, %u rejected\n", loaded, rejected);
        /* Both outcomes occur, or the mutations are not testing anything. */
        assert_true(loaded > 10);
        assert_true(rejected > 50);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_defaults),
                cmocka_unit_test(test_full_file),
                cmocka_unit_test(test_partial_and_empty),
                cmocka_unit_test(test_value_syntax),
                cmocka_unit_test(test_unknown_key),
                cmocka_unit_test(test_wrong_type),
                cmocka_unit_test(test_out_of_range),
                cmocka_unit_test(test_bad_enum),
                cmocka_unit_test(test_bad_mode),
                cmocka_unit_test(test_bad_group_name),
                cmocka_unit_test(test_duplicate_key),
                cmocka_unit_test(test_malformed),
                cmocka_unit_test(test_load_file),
                cmocka_unit_test(test_shipped_file_is_defaults),
                cmocka_unit_test(test_docs_cover_every_key),
                cmocka_unit_test(test_set),
                cmocka_unit_test(test_override_wins),
                cmocka_unit_test(test_restart_keys_changed),
                cmocka_unit_test(test_format_round_trip),
                cmocka_unit_test(test_mutations),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
