/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Fuzz target: config.json parsing on arbitrary bytes. An accepted config must satisfy what the engines
 * rely on without rechecking: bounded geometry, heads divisible by kv heads on both layer types, even head
 * dims, a full last layer, 1..8 stop ids inside the vocabulary, top-k within the experts.
 */
#include <stdlib.h>

#include "../fuzz/fuzz.h"
#include "model/model-internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct model_config c;
        struct quant_config q;
        char *err = NULL;

        if (model_config_parse_buffer("fuzz/config.json", (const char *) data, size, &c, &q, &err) < 0) {
                if (!err || !*err)
                        abort();
                free(err);
                return 0;
        }
        if (c.n_layers < 1 || c.n_layers > MODEL_MAX_LAYERS || c.layer_type[c.n_layers - 1] != LAYER_FULL ||
            c.n_heads % c.n_kv_heads || c.n_heads % c.n_global_kv_heads || c.head_dim % 2 ||
            c.global_head_dim % 2 || c.n_stop_ids < 1 || c.n_stop_ids > 8 || c.vocab_size < 1 ||
            (c.enable_moe && (c.n_experts < 1 || c.n_experts > MODEL_MAX_EXPERTS || c.top_k_experts < 1 ||
                              c.top_k_experts > c.n_experts)))
                abort();
        for (uint32_t i = 0; i < c.n_stop_ids; i++)
                if (c.stop_ids[i] < 0 || (uint32_t) c.stop_ids[i] >= c.vocab_size)
                        abort();
        if (!(c.rope_full.partial_rotary_factor > 0 && c.rope_full.partial_rotary_factor <= 1))
                abort();
        for (uint32_t i = 0; i < q.n_ignore; i++)
                if (!q.ignore[i])
                        abort();
        quant_config_done(&q);
        return 0;
}
