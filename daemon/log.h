/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * Logging for the daemon and its tools.
 *
 * Under systemd (JOURNAL_STREAM set, or log_open(LOG_TARGET_JOURNAL)) records go to the journal with
 * PRIORITY, CODE_FILE, CODE_LINE, CODE_FUNC and REQUEST_ID fields; otherwise to stderr with a level
 * prefix. Thread-safe: the engine thread and the I/O thread both log.
 *
 * Library-style modules (proto/, model loading, tokenizer) do not log above debug; the caller that owns
 * an error logs it once.
 */
#include <stdint.h>

enum log_level {
        LOG_LEVEL_ERROR = 0,
        LOG_LEVEL_WARNING,
        LOG_LEVEL_INFO,
        LOG_LEVEL_DEBUG,
        _LOG_LEVEL_MAX,
};

enum log_target {
        LOG_TARGET_AUTO = 0,    /* journal if JOURNAL_STREAM matches stderr, else console */
        LOG_TARGET_CONSOLE,
        LOG_TARGET_JOURNAL,
};

int log_level_from_string(const char *s, enum log_level *ret);
const char *log_level_to_string(enum log_level level);
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
void log_set_target(enum log_target target);

/* Returns -abs(error) when error != 0, so callers can write `return log_error_errno(r, ...)`. */
int log_internal(enum log_level level, int error, uint64_t request_id,
                 const char *file, int line, const char *func,
                 const char *fmt, ...) __attribute__((format(printf, 7, 8)));

#define log_full(level, ...) log_internal((level), 0, 0, __FILE__, __LINE__, __func__, __VA_ARGS__)
#define log_error(...)   log_full(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warning(...) log_full(LOG_LEVEL_WARNING, __VA_ARGS__)
#define log_info(...)    log_full(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...)   log_full(LOG_LEVEL_DEBUG, __VA_ARGS__)
#define log_error_errno(err, ...) \
        log_internal(LOG_LEVEL_ERROR, (err), 0, __FILE__, __LINE__, __func__, __VA_ARGS__)
#define log_warning_errno(err, ...) \
        log_internal(LOG_LEVEL_WARNING, (err), 0, __FILE__, __LINE__, __func__, __VA_ARGS__)
/* Per-request records carry REQUEST_ID in the journal and "[req N]" on the console. */
#define log_request(level, req_id, ...) \
        log_internal((level), 0, (req_id), __FILE__, __LINE__, __func__, __VA_ARGS__)
