/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * Helpers of the golden tests: fixture paths and metadata (written by make_golden.py), running a CPU
 * backend over one or several sequences with trivially allocated pages, and logits comparisons.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"

struct golden_meta {
        int32_t *prompt;
        uint32_t n_prompt;
        int32_t *greedy_bf16, *greedy_fp8;
        uint32_t n_greedy;
        uint32_t vocab;
};

/* $GEMMA4D_SOURCE_ROOT/tests/golden/fixtures/<name>/<sub> (caller frees). */
char *golden_path(const char *name, const char *sub);
int golden_meta_load(const char *name, struct golden_meta *ret);
void golden_meta_done(struct golden_meta *m);
/* Reads a little-endian float32 file of exactly n floats (caller frees). */
float *golden_read_f32(const char *path, size_t n);

/* A backend plus page tables for up to max_seqs sequences (page ids handed out sequentially). */
struct golden_engine {
        struct model *model;
        struct backend *be;
        struct backend_capacity cap;
        uint32_t max_seqs, max_len, pages_per_seq, vocab;
        uint32_t *full_pages, *sliding_pages;   /* [max_seqs][...] */
};

struct golden_engine_opts {
        uint32_t page_size, max_len, max_seqs, max_batched_tokens;
        int n_threads;
        bool kv_round;                  /* round K/V to kv_dtype (else float32 KV) */
        enum kv_dtype kv_dtype;
};

int golden_engine_open(const char *model_dir, const struct golden_engine_opts *o, struct golden_engine *ret);
void golden_engine_close(struct golden_engine *e);
/* Feeds tokens[0..n) of sequence slot seq starting at pos, in chunks of at most chunk tokens (0 = all at
 * once); writes logits of every token to out [n][vocab] when all is set, else of the last token only. */
int golden_run(struct golden_engine *e, uint32_t seq, const int32_t *tokens, uint32_t n, uint32_t pos,
               uint32_t chunk, bool all, float *out);
/* One forward over several sequences at once (slot i = sequence i). */
int golden_run_batch(struct golden_engine *e, const int32_t *const *tokens, const uint32_t *n,
                     const uint32_t *pos, const bool *all, uint32_t n_seqs, float *out);

double golden_rel_frobenius(const float *got, const float *want, size_t n);
uint32_t golden_argmax(const float *row, uint32_t n);
