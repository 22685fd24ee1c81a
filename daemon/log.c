/* SPDX-License-Identifier: Apache-2.0 */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#define SD_JOURNAL_SUPPRESS_LOCATION 1
#include <systemd/sd-journal.h>

static _Atomic int current_level = LOG_LEVEL_INFO;
static _Atomic int current_target = LOG_TARGET_AUTO;

static const char *const level_names[_LOG_LEVEL_MAX] = {
        [LOG_LEVEL_ERROR] = "error",
        [LOG_LEVEL_WARNING] = "warning",
        [LOG_LEVEL_INFO] = "info",
        [LOG_LEVEL_DEBUG] = "debug",
};

static const int level_priority[_LOG_LEVEL_MAX] = {
        [LOG_LEVEL_ERROR] = LOG_ERR,
        [LOG_LEVEL_WARNING] = LOG_WARNING,
        [LOG_LEVEL_INFO] = LOG_INFO,
        [LOG_LEVEL_DEBUG] = LOG_DEBUG,
};

int log_level_from_string(const char *s, enum log_level *ret) {
        if (!s)
                return -EINVAL;
        for (int i = 0; i < _LOG_LEVEL_MAX; i++)
                if (strcmp(s, level_names[i]) == 0) {
                        *ret = (enum log_level) i;
                        return 0;
                }
        if (strcmp(s, "warn") == 0) {
                *ret = LOG_LEVEL_WARNING;
                return 0;
        }
        return -EINVAL;
}

const char *log_level_to_string(enum log_level level) {
        if ((int) level < 0 || level >= _LOG_LEVEL_MAX)
                return "invalid";
        return level_names[level];
}

void log_set_level(enum log_level level) {
        atomic_store(&current_level, (int) level);
}

enum log_level log_get_level(void) {
        return (enum log_level) atomic_load(&current_level);
}

void log_set_target(enum log_target target) {
        atomic_store(&current_target, (int) target);
}

/* systemd sets JOURNAL_STREAM to "dev:inode" of the stream it connected to our stderr. */
static int stderr_is_journal(void) {
        const char *e = getenv("JOURNAL_STREAM");
        unsigned long long dev, ino;
        struct stat st;

        if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2)
                return 0;
        if (fstat(STDERR_FILENO, &st) < 0)
                return 0;
        return (unsigned long long) st.st_dev == dev && (unsigned long long) st.st_ino == ino;
}

static int use_journal(void) {
        int t = atomic_load(&current_target);
        if (t == LOG_TARGET_JOURNAL)
                return 1;
        if (t == LOG_TARGET_CONSOLE)
                return 0;
        return stderr_is_journal();
}

int log_internal(enum log_level level, int error, uint64_t request_id,
                 const char *file, int line, const char *func, const char *fmt, ...) {
        int saved_errno = errno;
        int ret = error == 0 ? 0 : -abs(error);
        char msg[2048];
        va_list ap;

        if ((int) level > atomic_load(&current_level))
                return ret;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);

        if (use_journal()) {
                char f_file[512], f_line[32], f_func[256], f_prio[32], f_msg[2100], f_req[64];
                snprintf(f_prio, sizeof f_prio, "PRIORITY=%d", level_priority[level]);
                snprintf(f_file, sizeof f_file, "CODE_FILE=%s", file);
                snprintf(f_line, sizeof f_line, "CODE_LINE=%d", line);
                snprintf(f_func, sizeof f_func, "CODE_FUNC=%s", func);
                snprintf(f_msg, sizeof f_msg, "MESSAGE=%s", msg);
                if (request_id) {
                        snprintf(f_req, sizeof f_req, "REQUEST_ID=%llu", (unsigned long long) request_id);
                        sd_journal_send(f_msg, f_prio, f_file, f_line, f_func, f_req,
                                        "SYSLOG_IDENTIFIER=gemma4d", NULL);
                } else
                        sd_journal_send(f_msg, f_prio, f_file, f_line, f_func,
                                        "SYSLOG_IDENTIFIER=gemma4d", NULL);
        } else {
                char line_buf[2300];
                int n;
                if (request_id)
                        n = snprintf(line_buf, sizeof line_buf, "%s: [req %llu] %s\n",
                                     level_names[level], (unsigned long long) request_id, msg);
                else
                        n = snprintf(line_buf, sizeof line_buf, "%s: %s\n", level_names[level], msg);
                if (n > (int) sizeof line_buf - 1)
                        n = (int) sizeof line_buf - 1;
                /* One write(2) per record keeps lines from the two threads whole. */
                (void) !write(STDERR_FILENO, line_buf, (size_t) n);
        }
        errno = saved_errno;
        return ret;
}
