/* SPDX-License-Identifier: Apache-2.0 */
/* Logging: level names, filtering, and the console record format (stderr captured through a pipe). */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"

struct capture {
        int saved_fd;
        int pipe_fd[2];
};

static void capture_begin(struct capture *cap) {
        assert_int_equal(pipe2(cap->pipe_fd, O_CLOEXEC), 0);
        cap->saved_fd = dup(STDERR_FILENO);
        assert_true(cap->saved_fd >= 0);
        assert_int_equal(dup2(cap->pipe_fd[1], STDERR_FILENO), STDERR_FILENO);
        close(cap->pipe_fd[1]);
}

/* Restores stderr and returns what was written (heap). Records are small, so the pipe never fills. */
static char *capture_end(struct capture *cap) {
        assert_int_equal(dup2(cap->saved_fd, STDERR_FILENO), STDERR_FILENO);
        close(cap->saved_fd);
        char *buf = calloc(1, 65536);
        assert_non_null(buf);
        size_t n = 0;
        ssize_t r;
        while ((r = read(cap->pipe_fd[0], buf + n, 65535 - n)) > 0)
                n += (size_t) r;
        close(cap->pipe_fd[0]);
        return buf;
}

static void test_level_names(void **state) {
        static const struct { const char *name; enum log_level level; } cases[] = {
                { "error", LOG_LEVEL_ERROR }, { "warning", LOG_LEVEL_WARNING }, { "warn", LOG_LEVEL_WARNING },
                { "info", LOG_LEVEL_INFO }, { "debug", LOG_LEVEL_DEBUG },
        };
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
                enum log_level l = _LOG_LEVEL_MAX;
                assert_int_equal(log_level_from_string(cases[i].name, &l), 0);
                assert_int_equal(l, cases[i].level);
        }
        enum log_level untouched = LOG_LEVEL_DEBUG;
        assert_int_equal(log_level_from_string("verbose", &untouched), -EINVAL);
        assert_int_equal(log_level_from_string("", &untouched), -EINVAL);
        assert_int_equal(log_level_from_string("INFO", &untouched), -EINVAL);
        assert_int_equal(log_level_from_string(NULL, &untouched), -EINVAL);
        assert_int_equal(untouched, LOG_LEVEL_DEBUG);

        assert_string_equal(log_level_to_string(LOG_LEVEL_ERROR), "error");
        assert_string_equal(log_level_to_string(LOG_LEVEL_WARNING), "warning");
        assert_string_equal(log_level_to_string(LOG_LEVEL_DEBUG), "debug");
        assert_string_equal(log_level_to_string(_LOG_LEVEL_MAX), "invalid");
}

static void test_console_format(void **state) {
        struct capture cap;
        log_set_target(LOG_TARGET_CONSOLE);
        log_set_level(LOG_LEVEL_INFO);
        assert_int_equal(log_get_level(), LOG_LEVEL_INFO);

        capture_begin(&cap);
        log_info("loaded %d tensors", 42);
        log_warning("queue at %s", "90%");
        log_error("bad frame");
        log_request(LOG_LEVEL_INFO, 7, "finished: %s", "stop");
        log_debug("not shown at info");
        char *out = capture_end(&cap);
        assert_string_equal(out, "info: loaded 42 tensors\n"
                                 "warning: queue at 90%\n"
                                 "error: bad frame\n"
                                 "info: [req 7] finished: stop\n");
        free(out);
}

static void test_filtering(void **state) {
        struct capture cap;
        log_set_target(LOG_TARGET_CONSOLE);

        log_set_level(LOG_LEVEL_ERROR);
        capture_begin(&cap);
        log_warning("hidden");
        log_info("hidden");
        log_error("shown");
        char *out = capture_end(&cap);
        assert_string_equal(out, "error: shown\n");
        free(out);

        log_set_level(LOG_LEVEL_DEBUG);
        capture_begin(&cap);
        log_debug("x=%u", 3u);
        out = capture_end(&cap);
        assert_string_equal(out, "debug: x=3\n");
        free(out);
        log_set_level(LOG_LEVEL_INFO);
}

/* log_*_errno returns -|err| so callers can return it, logs even when filtered, and keeps errno. */
static void test_errno_return(void **state) {
        struct capture cap;
        log_set_target(LOG_TARGET_CONSOLE);
        log_set_level(LOG_LEVEL_ERROR);

        capture_begin(&cap);
        errno = EAGAIN;
        assert_int_equal(log_error_errno(ENOENT, "open %s", "x"), -ENOENT);
        assert_int_equal(log_error_errno(-EIO, "read"), -EIO);
        assert_int_equal(log_warning_errno(EPIPE, "filtered but still returns"), -EPIPE);
        assert_int_equal(errno, EAGAIN);
        char *out = capture_end(&cap);
        assert_string_equal(out, "error: open x\nerror: read\n");
        free(out);
        log_set_level(LOG_LEVEL_INFO);
}

/* A record longer than the buffer is cut, still ends in a newline, and is written in one piece. */
static void test_long_message(void **state) {
        struct capture cap;
        char big[5000];
        memset(big, 'a', sizeof big - 1);
        big[sizeof big - 1] = '\0';
        log_set_target(LOG_TARGET_CONSOLE);
        capture_begin(&cap);
        log_info("%s", big);
        char *out = capture_end(&cap);
        size_t n = strlen(out);
        assert_true(n > 1000 && n < 2400);
        assert_memory_equal(out, "info: aaaa", 10);
        assert_int_equal(strchr(out, '\n') - out, (ptrdiff_t) n - 1);
        free(out);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_level_names),
                cmocka_unit_test(test_console_format),
                cmocka_unit_test(test_filtering),
                cmocka_unit_test(test_errno_return),
                cmocka_unit_test(test_long_message),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
