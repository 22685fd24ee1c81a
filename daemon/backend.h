/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * The interface between the engine (scheduler + KV pool accounting) and a compute backend.
 *
 * The engine owns *which* KV pages a sequence uses (daemon/server/kv_pool.c hands out page ids); the
 * backend owns the *memory* behind the pages and the arithmetic. Two page spaces exist because Gemma 4
 * has two kinds of layers (design.md, "Paged KV pool"):
 *   - full pages: page i of a sequence's table holds positions [i*B, (i+1)*B) of every full layer;
 *   - sliding pages: a ring of at most ceil(window/B)+1 pages; position p lives in
 *     sliding_pages[(p / B) % n_sliding_ring] at row p % B, for every sliding layer.
 * B = params.page_size. A page id indexes the same slot in every layer of its kind.
 *
 * Threading: every call comes from the engine thread. Backends never call back into the engine.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model/model.h"
#include "server/sampler.h"

enum kv_dtype {
        KV_DTYPE_FP8 = 0,       /* e4m3, scale 1.0 (k/v are RMS-normalised, so O(1)) */
        KV_DTYPE_BF16 = 1,
};

struct backend_params {
        enum kv_dtype kv_dtype;
        uint32_t page_size;             /* B, tokens per page */
        uint32_t max_num_seqs;          /* most sequences in one step */
        uint32_t max_batched_tokens;    /* most tokens (all sequences) in one step */
        uint32_t max_model_len;
        /* Pages to allocate. 0 = size from the memory budget (CUDA: gpu_fraction of the card;
         * CPU: enough for max_num_seqs sequences of max_model_len). */
        uint32_t n_full_pages, n_sliding_pages;
        double gpu_fraction;
        int gpu;
        int n_threads;                  /* CPU backend; 0 = all cores */
        bool lm_head_bf16;              /* CUDA: keep the tied head in BF16 instead of the FP8 copy */
        bool weights_bf16;              /* CUDA: keep BF16 checkpoint weights instead of FP8 on load */
        bool embedding_device;          /* CUDA: the embedding table in device memory instead of mapped host
                                         * memory (forced when a tied BF16 head reads it every step) */
        bool cpu_kv_round;              /* CPU: round stored K/V to kv_dtype as the GPU does (default float32) */
        /* Progress for STATUS= while loading: phase text and fraction 0..1. May be NULL. */
        void (*progress)(void *userdata, const char *phase, double fraction);
        void *progress_userdata;
};

struct backend_capacity {
        uint32_t n_full_pages, n_sliding_pages;
        uint32_t page_size;
        uint32_t n_sliding_ring;        /* ceil(window / B) + 1 */
        uint64_t kv_bytes;              /* device (or host) bytes allocated for KV */
        uint64_t weight_bytes;          /* device (CPU backend: host) bytes used by weights */
        uint64_t weight_host_bytes;     /* CUDA: page-locked host bytes of weights the kernels read (embedding) */
        char device[128];               /* "cpu (2 threads)", "NVIDIA H100 80GB HBM3" */
};

/* One sequence's part of a step: n_tokens new tokens at positions pos .. pos+n_tokens-1. Their K/V
 * are written into the pages; attention sees every earlier position of the sequence (window-limited on
 * sliding layers). */
struct backend_seq {
        const int32_t *tokens;
        uint32_t n_tokens;
        uint32_t pos;
        const uint32_t *full_pages;     /* covers at least positions [0, pos + n_tokens) */
        uint32_t n_full_pages;
        const uint32_t *sliding_pages;  /* ring, see above */
        uint32_t n_sliding_pages;
        bool all_logits;                /* logits for every token (score) instead of only the last */
};

struct backend_batch {
        const struct backend_seq *seqs;
        uint32_t n_seqs;
};

/* One sequence's sampling for forward_sample: the host sampler's inputs (sampler_sample), so that the
 * backend can draw exactly the token the host would. params.seed is the request's resolved seed; the draw's
 * index is n_generated (sampler.h step 6). tokens may be NULL when no penalty is active (only the penalties
 * read the history). */
struct backend_sample {
        struct sampling_params params;
        const int32_t *tokens;          /* n_prompt prompt tokens, then n_generated generated ones */
        uint32_t n_prompt, n_generated;
};

struct backend;

struct backend_ops {
        const char *name;
        int (*create)(const struct model *m, const struct backend_params *p, struct backend **ret,
                      char **reterr);
        void (*destroy)(struct backend *b);
        void (*get_capacity)(struct backend *b, struct backend_capacity *ret);
        /* Run one step. logits: float32 row-major [n_rows, vocab], rows in sequence order: every token
         * of an all_logits sequence, else one row for its last token. Returns 0 or negative errno;
         * -EIO from the CUDA backend means the device is lost (sticky error): the caller exits. */
        int (*forward)(struct backend *b, const struct backend_batch *batch, float *logits);
        /* Optional (may be NULL): the same step, but instead of logits it returns, per sequence, the
         * greedy token of its last row: the largest logit, NaN read as -inf, the lowest id among equal
         * values (sampler.h step 3 at temperature 0 without penalties), so no logits leave the device.
         * ret_tokens: [n_seqs]. No sequence may ask for all_logits (-EINVAL). -EOPNOTSUPP means the
         * backend has it switched off (nothing ran): the caller uses forward() from then on. */
        int (*forward_greedy)(struct backend *b, const struct backend_batch *batch, int32_t *ret_tokens);
        /* Optional (may be NULL): the same step, but each sequence's last row is sampled on the backend with
         * the host sampler's math (sampler.h; any parameters, greedy included) and only the result comes
         * back: ret[i] is what sampler_sample would give for samples[i] on that row, up to the rounding
         * boundaries docs/cuda-backend.md lists. samples, ret: [n_seqs]. No sequence may ask for
         * all_logits (-EINVAL). -EOPNOTSUPP means the backend has it switched off (nothing ran): the caller
         * samples on the host from then on. */
        int (*forward_sample)(struct backend *b, const struct backend_batch *batch,
                              const struct backend_sample *samples, struct sampler_result *ret);
        /* Optional (may be NULL): host memory that forward() copies logits into fastest (CUDA: page-locked),
         * or NULL when there is none to give (the caller then uses malloc). Freed with host_free, before the
         * backend is destroyed. */
        void *(*host_alloc)(struct backend *b, size_t bytes);
        void (*host_free)(struct backend *b, void *p);
};

extern const struct backend_ops backend_cpu_ops;
#if HAVE_CUDA
extern const struct backend_ops backend_cuda_ops;
#endif

/* Look up a backend by name ("cpu", "cuda"); NULL when unknown or not built. */
const struct backend_ops *backend_find(const char *name);

static inline uint32_t backend_rows_for(const struct backend_batch *batch) {
        uint32_t rows = 0;
        for (uint32_t i = 0; i < batch->n_seqs; i++)
                rows += batch->seqs[i].all_logits ? batch->seqs[i].n_tokens : 1;
        return rows;
}
