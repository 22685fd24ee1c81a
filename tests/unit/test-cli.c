/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The gemma4d binary's command line: --check-config on good and bad files, flags overriding the file,
 * --help/--version, and the documented exit status (0 ok, 1 bad configuration, 2 bad command line).
 * The binary's path is the first argument (meson passes it).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "build-config.h"

static const char *gemma4d_path;

struct result {
        int status;             /* exit status, or -1 when killed by a signal */
        char out[65536];
        char err[65536];
};

static void drain(int fd, char *buf, size_t *len, bool *open_flag) {
        ssize_t r = read(fd, buf + *len, 65535 - *len);
        if (r > 0)
                *len += (size_t) r;
        else if (r == 0 || (r < 0 && errno != EINTR && errno != EAGAIN)) {
                *open_flag = false;
        }
}

static const char *stdin_path = "/dev/null";

/* Runs gemma4d with the given arguments (NULL-terminated), stdin from stdin_path. */
static void run(struct result *res, ...) {
        const char *argv[32] = { gemma4d_path };
        int n = 1, out[2], err[2];
        va_list ap;

        va_start(ap, res);
        for (const char *a; (a = va_arg(ap, const char *)) && n < 31;)
                argv[n++] = a;
        va_end(ap);
        argv[n] = NULL;

        assert_int_equal(pipe2(out, O_CLOEXEC), 0);
        assert_int_equal(pipe2(err, O_CLOEXEC), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                int devnull = open(stdin_path, O_RDONLY);
                if (devnull < 0 || dup2(devnull, 0) < 0 || dup2(out[1], 1) < 0 || dup2(err[1], 2) < 0)
                        _exit(127);
                /* Not under systemd, whatever runs the tests. */
                unsetenv("JOURNAL_STREAM");
                execv(gemma4d_path, (char *const *) argv);
                _exit(127);
        }
        close(out[1]);
        close(err[1]);
        size_t lo = 0, le = 0;
        bool oo = true, eo = true;
        while (oo || eo) {
                struct pollfd p[2] = { { out[0], POLLIN, 0 }, { err[0], POLLIN, 0 } };
                assert_true(poll(p, 2, 60000) > 0);
                if (oo && p[0].revents)
                        drain(out[0], res->out, &lo, &oo);
                if (eo && p[1].revents)
                        drain(err[0], res->err, &le, &eo);
                if (lo >= 65535 || le >= 65535)
                        break;
        }
        res->out[lo] = res->err[le] = '\0';
        close(out[0]);
        close(err[0]);
        int st;
        assert_int_equal(waitpid(pid, &st, 0), pid);
        res->status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char tmp_path[64];

static const char *write_tmp(const char *text) {
        strcpy(tmp_path, "/tmp/test-cli-XXXXXX.yaml");
        int fd = mkstemps(tmp_path, 5);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, text, strlen(text)), (ssize_t) strlen(text));
        close(fd);
        return tmp_path;
}

static struct result res;

static void test_version_and_help(void **state) {
        char expected[100];
        run(&res, "--version", NULL);
        assert_int_equal(res.status, 0);
        snprintf(expected, sizeof expected, "gemma4d %s (", GEMMA4D_VERSION);
        assert_memory_equal(res.out, expected, strlen(expected));

        run(&res, "--help", NULL);
        assert_int_equal(res.status, 0);
        assert_non_null(strstr(res.out, "--check-config"));
        assert_non_null(strstr(res.out, "--backend cpu|cuda"));
        assert_string_equal(res.err, "");
}

static void test_check_good_file(void **state) {
        const char *p = write_tmp("backend: cuda\nlimits:\n  max_queue: 10\n");
        run(&res, "--check-config", "--config", p, NULL);
        assert_int_equal(res.status, 0);
        assert_string_equal(res.out, "configuration is valid\n");
        assert_string_equal(res.err, "");
        unlink(p);

        char shipped[4096];
        snprintf(shipped, sizeof shipped, "%s/config/gemma4d.yaml", getenv("GEMMA4D_SOURCE_ROOT"));
        run(&res, "--check-config", "-c", shipped, NULL);
        assert_int_equal(res.status, 0);
}

static void test_check_bad_files(void **state) {
        char expected[300];
        const char *p = write_tmp("backend: cuda\nlimits:\n  max_queue: x\n");
        run(&res, "--check-config", "--config", p, NULL);
        assert_int_equal(res.status, 1);
        snprintf(expected, sizeof expected, "error: %s:3:14: limits.max_queue: expected an integer, got 'x'\n", p);
        assert_string_equal(res.err, expected);
        assert_string_equal(res.out, "");
        unlink(p);

        p = write_tmp("socket:\n  path: [unclosed\n");
        run(&res, "--check-config", "--config", p, NULL);
        assert_int_equal(res.status, 1);
        snprintf(expected, sizeof expected, "error: %s:3:1: did not find expected ',' or ']' while parsing a "
                 "flow sequence started at line 2, column 9\n", p);
        assert_string_equal(res.err, expected);
        unlink(p);

        p = write_tmp("sockets:\n  path: /x\n");
        run(&res, "--check-config", "--config", p, NULL);
        assert_int_equal(res.status, 1);
        snprintf(expected, sizeof expected, "error: %s:1:1: unknown key 'sockets'\n", p);
        assert_string_equal(res.err, expected);

        /* Without --check-config a bad file also stops the daemon before anything starts. */
        run(&res, "--config", p, NULL);
        assert_int_equal(res.status, 1);
        unlink(p);

        run(&res, "--check-config", "--config", "/nonexistent/gemma4d.yaml", NULL);
        assert_int_equal(res.status, 1);
        assert_string_equal(res.err, "error: /nonexistent/gemma4d.yaml: No such file or directory\n");
}

/* Flags win over the file, whatever their order on the command line; --log-level debug prints the
 * effective configuration. */
static void test_flags_override_file(void **state) {
        const char *p = write_tmp("backend: cpu\nmodel: {path: /from/file}\nsocket: {path: /file.sock}\n"
                                  "log: {level: error}\n");
        run(&res, "--backend", "cuda", "--socket", "/flag.sock", "--check-config", "--config", p,
            "--log-level", "debug", "--log-target", "console", "-m", "/from/flag",
            "--set", "limits.max_queue=77", NULL);
        assert_int_equal(res.status, 0);
        assert_non_null(strstr(res.err, "debug: effective configuration:\n"));
        assert_non_null(strstr(res.err, "\nbackend: cuda\n"));
        assert_non_null(strstr(res.err, "  path: \"/flag.sock\"\n"));
        assert_non_null(strstr(res.err, "  path: \"/from/flag\"\n"));
        assert_non_null(strstr(res.err, "  max_queue: 77\n"));
        assert_non_null(strstr(res.err, "  level: debug\n"));

        /* The file's log.level applies when no flag overrides it: nothing at debug. */
        run(&res, "--check-config", "--config", p, NULL);
        assert_int_equal(res.status, 0);
        assert_string_equal(res.err, "");
        unlink(p);
}

static void test_usage_errors(void **state) {
        run(&res, "--backend", "gpu", "--check-config", NULL);
        assert_int_equal(res.status, 2);
        assert_string_equal(res.err, "error: command line: backend: invalid value 'gpu' (expected one of: cpu, cuda)\n");

        run(&res, "--no-such-option", NULL);
        assert_int_equal(res.status, 2);
        assert_string_equal(res.err, "error: unknown option '--no-such-option' (see --help)\n");

        run(&res, "--config", NULL);
        assert_int_equal(res.status, 2);
        assert_string_equal(res.err, "error: option '--config' needs an argument (see --help)\n");

        run(&res, "--log-target", "syslog", NULL);
        assert_int_equal(res.status, 2);

        run(&res, "--set", "limits.max_queue", NULL);
        assert_int_equal(res.status, 2);
        assert_string_equal(res.err, "error: --set: expected KEY=VALUE, got 'limits.max_queue'\n");

        run(&res, "--set", "limits.max_queue=0", NULL);
        assert_int_equal(res.status, 2);

        run(&res, "stray", NULL);
        assert_int_equal(res.status, 2);
        assert_string_equal(res.err, "error: unexpected argument 'stray' (see --help)\n");
}

/* Each flag is valid alone, but together with the file the result is inconsistent: exit 1. */
static void test_inconsistent_result(void **state) {
        const char *p = write_tmp("limits: {max_num_seqs: 512}\n");
        run(&res, "--check-config", "--config", p, "--set", "limits.max_batched_tokens=256", NULL);
        assert_int_equal(res.status, 1);
        assert_string_equal(res.err, "error: limits.max_batched_tokens (256) must be at least "
                                     "limits.max_num_seqs (512): every running sequence decodes one token "
                                     "per step\n");
        unlink(p);
}

/* --instance N: gpu N and /run/gemma4d/N.sock as defaults, the file over them, instances/N.yaml next to
 * the file over that, and flags over everything. */
static void test_instance(void **state) {
        char dir[] = "/tmp/test-cli-inst-XXXXXX", path[200], overlay[200], subdir[200];
        assert_non_null(mkdtemp(dir));
        snprintf(path, sizeof path, "%s/gemma4d.yaml", dir);
        snprintf(subdir, sizeof subdir, "%s/instances", dir);
        snprintf(overlay, sizeof overlay, "%s/instances/2.yaml", dir);
        assert_int_equal(mkdir(subdir, 0700), 0);
        FILE *f = fopen(path, "we");
        assert_non_null(f);
        fputs("backend: cuda\nlimits: {max_queue: 10, max_connections: 11}\n", f);
        fclose(f);
        f = fopen(overlay, "we");
        assert_non_null(f);
        fputs("limits: {max_queue: 20}\n", f);
        fclose(f);

        run(&res, "--check-config", "-c", path, "--instance", "2", "--log-level", "debug",
            "--set", "limits.max_connections=12", NULL);
        assert_int_equal(res.status, 0);
        assert_non_null(strstr(res.err, "\ngpu: 2\n"));
        assert_non_null(strstr(res.err, "  path: \"/run/gemma4d/2.sock\"\n"));
        assert_non_null(strstr(res.err, "\nbackend: cuda\n"));
        assert_non_null(strstr(res.err, "  max_queue: 20\n"));
        assert_non_null(strstr(res.err, "  max_connections: 12\n"));

        /* An instance without an overlay file uses the main file alone. */
        run(&res, "--check-config", "-c", path, "--instance", "5", "--log-level", "debug", NULL);
        assert_int_equal(res.status, 0);
        assert_non_null(strstr(res.err, "\ngpu: 5\n"));
        assert_non_null(strstr(res.err, "  max_queue: 10\n"));

        /* A broken overlay is reported with its own name and position. */
        f = fopen(overlay, "we");
        assert_non_null(f);
        fputs("limits: {max_queue: -3}\n", f);
        fclose(f);
        run(&res, "--check-config", "-c", path, "--instance", "2", NULL);
        assert_int_equal(res.status, 1);
        char expected[300];
        snprintf(expected, sizeof expected, "error: %s:1:21: limits.max_queue: -3 is out of range (1..1000000)\n",
                 overlay);
        assert_string_equal(res.err, expected);

        run(&res, "--check-config", "-c", path, "--instance", "../2", NULL);
        assert_int_equal(res.status, 2);

        unlink(overlay);
        rmdir(subdir);
        unlink(path);
        rmdir(dir);
}

/* --config - reads the configuration from standard input, named <stdin> in messages. */
static void test_config_from_stdin(void **state) {
        stdin_path = write_tmp("backend: cuda\n");
        run(&res, "--check-config", "--config", "-", NULL);
        assert_int_equal(res.status, 0);
        unlink(stdin_path);

        stdin_path = write_tmp("backend: cuda\nkv: {dtype: int4}\n");
        run(&res, "--check-config", "--config", "-", NULL);
        assert_int_equal(res.status, 1);
        assert_string_equal(res.err, "error: <stdin>:2:13: kv.dtype: invalid value 'int4' (expected one of: "
                                     "fp8, bf16)\n");
        unlink(stdin_path);

        /* An empty stdin is an empty file: the defaults. (An empty file of our own rather than
         * /dev/null, so a damaged /dev/null on the machine cannot change the input.) */
        stdin_path = write_tmp("");
        run(&res, "--check-config", "--config", "-", NULL);
        if (res.status != 0)
                fprintf(stderr, "gemma4d stderr: %s\n", res.err);
        assert_int_equal(res.status, 0);
        unlink(stdin_path);
        stdin_path = "/dev/null";
}

int main(int argc, char **argv) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_version_and_help),
                cmocka_unit_test(test_check_good_file),
                cmocka_unit_test(test_check_bad_files),
                cmocka_unit_test(test_flags_override_file),
                cmocka_unit_test(test_usage_errors),
                cmocka_unit_test(test_inconsistent_result),
                cmocka_unit_test(test_instance),
                cmocka_unit_test(test_config_from_stdin),
        };
        if (argc != 2) {
                fprintf(stderr, "usage: %s PATH-TO-GEMMA4D\n", argv[0]);
                return 1;
        }
        gemma4d_path = argv[1];
        return cmocka_run_group_tests(tests, NULL, NULL);
}
