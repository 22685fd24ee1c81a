/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/* Internal to the kernels library: the tiled wgmma grouped GEMM behind kern_fp8_linear_grouped(). */
#include "kernels.h"

/* The schedule of group runs is built in shared memory: calls with more groups take the mma.sync kernel. */
#define GEMM_GROUPED_TILED_MAX_GROUPS 2048

/* Same contract as kern_fp8_linear_grouped() (group counts <= 64); k % 16 == 0. sm_90a only. */
int gemm_grouped_tiled(const uint8_t *w, const float *w_scale, uint32_t n_out, uint32_t k, const uint8_t *x,
                       const float *x_scale, uint32_t x_row_div, const int32_t *pair_rows,
                       const struct kern_gemm_group *groups, const int32_t *n_groups, uint32_t max_groups, uint16_t *y,
                       cudaStream_t stream);

/* Kernel configurations (tests time them against each other): 2 (default) 256 weight rows per many-token
 * tile, few-token steps of 256 K bytes in a 5-stage ring; 1: 128 rows, steps of 128 K bytes, 8 stages;
 * 3: 256 rows, steps of 128 K bytes, 8 stages. */
extern int gemm_grouped_variant;
