/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/* forward_sample's device side (cuda-sample.c): parameters and token histories up, kern_sample_rows on the
 * logits the LM head left on the device, one struct sampler_result per sequence back. */
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "backend.h"

struct cuda_sampler;

/* max_rows: most sequences of a step; launch_rows: most rows one launch samples (the LM head's chunk).
 * Device buffers are allocated on first use, so that a daemon that never samples pays nothing. */
int cuda_sampler_new(uint32_t vocab, uint32_t max_rows, uint32_t launch_rows, struct cuda_sampler **ret);
struct cuda_sampler *cuda_sampler_free(struct cuda_sampler *s);

/* Enqueue the upload of the step's parameters and token histories (only rows with a penalty have one).
 * -EINVAL for parameters the kernel cannot take, -ENOMEM when the device buffers cannot be had, -EIO. */
int cuda_sampler_stage(struct cuda_sampler *s, const struct backend_sample *samples, uint32_t n,
                       cudaStream_t stream);
/* Enqueue the sampling of rows [r0, r0 + nr) of the staged step; `logits` holds row r0 first (modified in
 * place: penalties and temperature). */
int cuda_sampler_enqueue(struct cuda_sampler *s, float *logits, uint32_t r0, uint32_t nr, cudaStream_t stream);
/* The results of the first n rows (waits for the stream). */
int cuda_sampler_fetch(struct cuda_sampler *s, uint32_t n, cudaStream_t stream, struct sampler_result *ret);
