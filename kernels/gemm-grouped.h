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

/* Kernel configurations (tests time them all). Many-token phase: 256 weight rows per tile with the output
 * staged through shared memory (2, the default; 4; 5), 128 rows staged (1), 256 rows with 2-byte stores
 * straight from the fragments (3). Few-token phase: 32-token tiles, 8 stages of 128 K bytes (1, 2, 3) or 5
 * stages of 256 (4); 16-token tiles, 11 stages of 128 K bytes (5). 6: as 2, and a last K step with at most
 * 64 bytes left issues half its wgmmas. 7: as 2, weight loads fetch 256-byte L2 blocks. 8: 5 with both. */
extern int gemm_grouped_variant;
