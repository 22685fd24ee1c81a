/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * gemma4d configuration: compiled-in defaults, overridden by the YAML file (config/gemma4d.yaml is the
 * documented default), overridden by command-line flags. See gemma4d.yaml(5).
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "backend.h"
#include "log.h"

#define CONFIG_MAX_ALLOWED 64

enum backend_kind {
        BACKEND_KIND_CPU = 0,
        BACKEND_KIND_CUDA = 1,
};

struct gemma4d_config {
        char *model_path;                       /* model.path */
        enum backend_kind backend;              /* backend */
        int gpu;                                /* gpu */

        char *socket_path;                      /* socket.path */
        unsigned socket_mode;                   /* socket.mode (octal in YAML, e.g. 0660) */
        char *socket_group;                     /* socket.group ("" = don't chown) */

        uid_t allowed_uids[CONFIG_MAX_ALLOWED]; /* access.allowed_uids */
        unsigned n_allowed_uids;
        char *allowed_groups[CONFIG_MAX_ALLOWED];       /* access.allowed_groups (names) */
        unsigned n_allowed_groups;

        double gpu_fraction;                    /* memory.gpu_fraction */
        enum kv_dtype kv_dtype;                 /* kv.dtype: fp8 | bf16 */
        uint32_t kv_page_size;                  /* kv.page_size */
        bool prefix_cache;                      /* kv.prefix_cache */

        uint32_t max_model_len;                 /* limits.max_model_len */
        uint32_t max_num_seqs;                  /* limits.max_num_seqs */
        uint32_t max_batched_tokens;            /* limits.max_batched_tokens */
        uint32_t max_queue;                     /* limits.max_queue */
        uint64_t max_frame_bytes;               /* limits.max_frame_bytes */
        uint32_t max_inflight_per_connection;   /* limits.max_inflight_per_connection */
        uint32_t max_connections;               /* limits.max_connections */
        uint64_t max_write_queue_bytes;         /* limits.max_write_queue_bytes */

        uint32_t aging_ms;                      /* scheduler.aging_ms */
        uint32_t drain_seconds;                 /* shutdown.drain_seconds */
        enum log_level log_level;               /* log.level */

        bool lm_head_bf16;                      /* cuda.lm_head: fp8 | bf16 */
        bool weights_bf16;                      /* cuda.weights: fp8 | bf16 */
        bool embedding_device;                  /* cuda.embedding: host | device */
        uint32_t cpu_threads;                   /* cpu.threads (0 = all cores) */
};

/* Fill *ret with the compiled-in defaults (allocates strings). */
int config_init_defaults(struct gemma4d_config *ret);
/* Free the strings; the struct can be re-initialised afterwards. */
void config_done(struct gemma4d_config *c);
int config_copy(const struct gemma4d_config *src, struct gemma4d_config *ret);

/* Parse YAML file `path` on top of *c (which holds defaults or earlier values). On error returns a
 * negative errno-style code, leaves *c untouched, and writes "file:line:column: message" to *reterr
 * (heap, caller frees). Unknown keys, wrong types, out-of-range values and malformed YAML are errors. */
int config_load_file(struct gemma4d_config *c, const char *path, char **reterr);
/* The same, from a string (for tests and --check-config on stdin); `name` is used in messages. */
int config_load_string(struct gemma4d_config *c, const char *name, const char *yaml, char **reterr);

/* Set one key from a "section.key" name and a string value, as the YAML parser would (used for the
 * command-line overrides). Same error rules for the value; lists take comma-separated values. The checks
 * that relate several keys are left to config_validate(), so overrides can be applied in any order.
 * Messages are "key: message". */
int config_set(struct gemma4d_config *c, const char *key, const char *value, char **reterr);
/* The checks between keys (e.g. limits.max_batched_tokens >= limits.max_num_seqs); config_load_*() run
 * them on the result of every file. */
int config_validate(const struct gemma4d_config *c, char **reterr);

/* Keys whose change needs a restart (model.path, backend, ...): true when old and new differ in any of
 * them; the names are written comma-separated into buf. Used by SIGHUP reload. */
bool config_restart_keys_changed(const struct gemma4d_config *old, const struct gemma4d_config *new,
                                 char *buf, size_t bufsize);

const char *backend_kind_to_string(enum backend_kind k);

/* True when every key has the same value in a and b. */
bool config_equal(const struct gemma4d_config *a, const struct gemma4d_config *b);
/* The effective configuration as YAML that config_load_string() reads back to an equal config (for the
 * debug log, --check-config and `gemma4ctl config show`). *ret is heap, caller frees. */
int config_format(const struct gemma4d_config *c, char **ret);
/* The key table, in file order: names like "limits.max_queue". */
size_t config_n_keys(void);
const char *config_key_name(size_t i);      /* NULL past the end */
bool config_key_is_reloadable(const char *key);  /* false for restart-required and unknown keys */
