/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * Builds tiny Gemma 4 checkpoints in a directory, from C, for the loader tests: config.json in either
 * layout and safetensors in either expert layout, BF16 or FP8, single file or sharded. Tensor contents
 * follow tiny_value() so tests can check that every view points at the right bytes.
 */
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "model/model-internal.h"

/* Geometry: vocab 64, hidden 32, layers [S, F], 2 query heads, sliding 1 kv x 16, full 1 kv x 32 (k_eq_v),
 * intermediate 48, 4 experts top-2 of width 16. */
#define TINY_VOCAB 64
#define TINY_HIDDEN 32
#define TINY_LAYERS 2
#define TINY_HEADS 2
#define TINY_KV 1
#define TINY_HEAD_DIM 16
#define TINY_GKV 1
#define TINY_GHEAD_DIM 32
#define TINY_INTER 48
#define TINY_EXPERTS 4
#define TINY_TOPK 2
#define TINY_MOE_INTER 16

struct tiny_opts {
        bool flat;              /* Gemma4ForCausalLM config and "model." prefix */
        bool split_experts;     /* experts.{e}.*_proj.weight instead of fused 3-D */
        bool fp8;               /* FP8 linears with weight_scale (implies split experts) */
        bool f32_scale;         /* weight_scale in F32 instead of BF16 */
        bool sharded;           /* two shards + model.safetensors.index.json */
        bool per_layer_config;  /* full-layer geometry as transformers 5.17's per_layer_config */
        bool vision;            /* add a vision tensor (skipped by the loader) */
        bool lm_head;           /* add lm_head.weight (ignored when tied) */
        bool dense;             /* enable_moe_block false: no router, experts or MoE norms */
        bool no_k_eq_v;         /* attention_k_eq_v false: full layers have a v_proj */
        bool untied;            /* tie_word_embeddings false (with lm_head) */
};

json_t *tiny_config(const struct tiny_opts *o);
int tiny_write_config(const char *dir, json_t *cfg);
/* Writes config + weights. extra (may be NULL) is called on the tensor list before writing so that a test
 * can add, drop or alter tensors. */
struct tiny_tensors {
        struct st_out_tensor *t;
        char **names;
        void **bufs;
        size_t n, cap;
};
int tiny_build_tensors(const struct tiny_opts *o, struct tiny_tensors *ret);
int tiny_add_tensor(struct tiny_tensors *tt, const char *name, enum tensor_dtype dtype, uint32_t ndim,
                    const uint64_t *shape);
void tiny_drop_tensor(struct tiny_tensors *tt, const char *name);
int tiny_write_tensors(const char *dir, const struct tiny_opts *o, struct tiny_tensors *tt);
void tiny_tensors_free(struct tiny_tensors *tt);
int tiny_write(const char *dir, const struct tiny_opts *o);

/* Element i of the tensor called name, as written (after dtype rounding). */
float tiny_value(const char *name, enum tensor_dtype dtype, uint64_t i);

/* A fresh temp directory (caller frees, and removes with rm_rf). */
char *tiny_mkdtemp(void);
void rm_rf(const char *dir);

/* Rewrites the JSON header of a safetensors file through edit(); the data section is kept. */
int st_edit_header(const char *path, void (*edit)(json_t *hdr, void *arg), void *arg);
