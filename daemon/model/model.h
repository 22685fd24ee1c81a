/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * A loaded Gemma 4 text checkpoint: geometry from config.json, quantization scheme, and views of every
 * tensor the text decoder needs. Views point into read-only mmaps of the safetensors shards; nothing is
 * copied at load time, so both backends decide themselves how to convert and upload.
 *
 * The forward pass these tensors feed is ../shared/spec/gemma4-text-model.md; names below follow the
 * checkpoint (see §3 there), with the experts always exposed per expert whatever the on-disk layout.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MODEL_MAX_LAYERS 128
#define MODEL_MAX_EXPERTS 256

enum tensor_dtype {
        TENSOR_DTYPE_INVALID = 0,
        TENSOR_DTYPE_F32,
        TENSOR_DTYPE_F16,
        TENSOR_DTYPE_BF16,
        TENSOR_DTYPE_F8_E4M3,
};

size_t tensor_dtype_size(enum tensor_dtype dtype);
const char *tensor_dtype_name(enum tensor_dtype dtype);

/* A read-only view of a tensor (or of a slice of one). Row-major, little-endian. */
struct tensor_view {
        const char *name;               /* checkpoint name (owned by the model) */
        enum tensor_dtype dtype;
        uint32_t ndim;
        uint64_t shape[4];
        const void *data;               /* NULL when absent */
        uint64_t nbytes;
};

static inline bool tensor_present(const struct tensor_view *t) {
        return t->data != NULL;
}

/* A linear layer y = W x with W [out, in]. FP8 weights carry a per-output-row scale [out] (F32 or BF16
 * on disk: read the dtype). BF16/F32 weights have no scale (scale.data == NULL). */
struct linear_weight {
        struct tensor_view w;
        struct tensor_view scale;
        uint32_t out_features, in_features;
};

enum layer_type {
        LAYER_SLIDING = 0,
        LAYER_FULL = 1,
};

enum rope_kind {
        ROPE_DEFAULT = 0,
        ROPE_PROPORTIONAL = 1,
};

struct rope_params {
        enum rope_kind kind;
        double theta;
        double partial_rotary_factor;   /* 1.0 for default */
};

struct model_config {
        uint32_t vocab_size;
        uint32_t hidden_size;
        uint32_t n_layers;
        enum layer_type layer_type[MODEL_MAX_LAYERS];
        uint32_t n_heads;               /* query heads, every layer */
        /* sliding layers */
        uint32_t n_kv_heads;
        uint32_t head_dim;
        /* full layers */
        uint32_t n_global_kv_heads;
        uint32_t global_head_dim;
        bool attention_k_eq_v;          /* full layers: V from the raw K projection, no v_proj */
        uint32_t sliding_window;        /* keys visible iff 0 <= pos_q - pos_k < sliding_window */
        struct rope_params rope_sliding, rope_full;
        uint32_t intermediate_size;     /* dense MLP */
        bool enable_moe;
        uint32_t n_experts;
        uint32_t top_k_experts;
        uint32_t moe_intermediate_size;
        float rms_norm_eps;
        float final_logit_softcapping;  /* 0 = none */
        bool tie_word_embeddings;
        uint32_t max_position_embeddings;
        int32_t bos_token_id, eos_token_id, pad_token_id;
        int32_t stop_ids[8];
        uint32_t n_stop_ids;
        char architecture[64];          /* as in config.json "architectures"[0] */
        char model_name[128];           /* directory basename, for welcome/status */
};

/* compressed-tensors float-quantized, channel weights, dynamic per-token activations. */
struct quant_config {
        bool fp8;                       /* false: BF16/F16/F32 checkpoint */
        char **ignore;                  /* module names kept unquantized (owned) */
        uint32_t n_ignore;
};

struct layer_weights {
        enum layer_type type;
        uint32_t n_kv_heads, head_dim;  /* this layer's geometry */
        struct tensor_view input_layernorm, post_attention_layernorm;
        struct tensor_view pre_feedforward_layernorm, post_feedforward_layernorm;
        struct tensor_view pre_feedforward_layernorm_2;
        struct tensor_view post_feedforward_layernorm_1, post_feedforward_layernorm_2;
        struct linear_weight q_proj, k_proj, v_proj, o_proj;   /* v_proj absent (w.data NULL) when k_eq_v */
        struct tensor_view q_norm, k_norm;
        struct linear_weight mlp_gate, mlp_up, mlp_down;
        struct tensor_view router_proj;         /* BF16 [n_experts, hidden] */
        struct tensor_view router_scale;        /* [hidden] */
        struct tensor_view router_per_expert_scale;     /* [n_experts] */
        /* Always per expert. For a fused 3-D checkpoint these are row slices of gate_up_proj / down_proj
         * (gate = rows [0, I), up = rows [I, 2I) of gate_up_proj[e]). */
        struct linear_weight *expert_gate, *expert_up, *expert_down;    /* [n_experts] each, owned */
        bool experts_fused_on_disk;
        struct tensor_view layer_scalar;        /* [1] */
};

struct model {
        struct model_config cfg;
        struct quant_config quant;
        struct tensor_view embed_tokens;        /* [vocab, hidden] BF16 */
        struct tensor_view final_norm;
        struct tensor_view lm_head;             /* absent when tied */
        struct layer_weights *layers;           /* [n_layers] */
        char *dir;                              /* model directory (owned) */
        uint64_t weight_bytes;                  /* bytes of text tensors mapped */
        struct model_files *files;              /* mmaps, private to the loader */
};

/* Load a checkpoint directory (config.json + model.safetensors or model.safetensors.index.json shards).
 * On error returns a negative errno-style code and, when reterr is non-NULL, writes a heap-allocated
 * message naming the file / field / tensor at fault (caller frees). */
int model_load(const char *dir, struct model **ret, char **reterr);
struct model *model_free(struct model *m);

/* Parse only config.json (both the nested Gemma4ForConditionalGeneration and flat Gemma4ForCausalLM
 * layouts). Used by model_load and by tools that need geometry without weights. */
int model_config_parse_file(const char *path, struct model_config *ret_cfg, struct quant_config *ret_quant,
                            char **reterr);
void quant_config_done(struct quant_config *q);

/* Element conversions shared by the CPU engine, the tools and the tests. */
float bf16_to_f32(uint16_t v);
uint16_t f32_to_bf16(float v);          /* round to nearest even, NaN preserved */
float f16_to_f32(uint16_t v);
float fp8_e4m3_to_f32(uint8_t v);
uint8_t f32_to_fp8_e4m3(float v);       /* round to nearest even, saturate to +-448 (satfinite) */
/* Read element i of a 1-D/flattened view as float, whatever its dtype. */
float tensor_get_f32(const struct tensor_view *t, uint64_t i);
