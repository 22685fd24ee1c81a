/* SPDX-License-Identifier: Apache-2.0 */
/* Placeholder until the YAML parser lands: defaults only. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

int config_init_defaults(struct gemma4d_config *ret) {
        memset(ret, 0, sizeof *ret);
        ret->backend = BACKEND_KIND_CPU;
        ret->socket_path = strdup("/run/gemma4d/0.sock");
        ret->socket_mode = 0660;
        ret->socket_group = strdup("");
        ret->model_path = strdup("");
        ret->gpu_fraction = 0.9;
        ret->kv_dtype = KV_DTYPE_FP8;
        ret->kv_page_size = 16;
        ret->prefix_cache = true;
        ret->max_model_len = 32768;
        ret->max_num_seqs = 64;
        ret->max_batched_tokens = 8192;
        ret->max_queue = 1024;
        ret->max_frame_bytes = 16u << 20;
        ret->max_inflight_per_connection = 64;
        ret->max_connections = 256;
        ret->max_write_queue_bytes = 8u << 20;
        ret->aging_ms = 10000;
        ret->drain_seconds = 30;
        ret->log_level = LOG_LEVEL_INFO;
        if (!ret->socket_path || !ret->socket_group || !ret->model_path) {
                config_done(ret);
                return -ENOMEM;
        }
        return 0;
}

void config_done(struct gemma4d_config *c) {
        free(c->model_path);
        free(c->socket_path);
        free(c->socket_group);
        for (unsigned i = 0; i < c->n_allowed_groups; i++)
                free(c->allowed_groups[i]);
        memset(c, 0, sizeof *c);
}
