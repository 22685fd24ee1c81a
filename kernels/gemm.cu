/* SPDX-License-Identifier: Apache-2.0 */
/*
 * FP8 linear layers.
 *
 * Small M (decode, MoE groups): weights are the M side of mma.sync m16n8k32 (e4m3 x e4m3 -> f32), the
 * tokens the N side (8 per fragment), so a warp streams 16 weight rows with 16-byte loads and a block of
 * 8 warps splits K (decode) or rows (large groups). A dot product does not care how K is ordered as long as
 * both operands use the same order, so each lane loads 16 contiguous bytes and the two mma's of a 64-byte
 * chunk take their halves: no shuffles, no shared-memory staging. The kernel lives in mma_small.cuh (the
 * BF16 weights of gemm_bf16.cu use it too).
 *
 * Large M: cuBLASLt with OUTER_VEC_32F scales on both operands (fp8 spec §6.3).
 */
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include <cublasLt.h>

#include "common.cuh"
#include "gemm-grouped.h"

#define MMA_WARPS 8
#define GROUP_ROWS 64

#include "mma_small.cuh"

/* the FP8 instance of the small-M kernel (mma_small.cuh) */
static void pick_split(struct mma_params *p, uint32_t n_groups) {
        mma_pick_split(p, n_groups);
}

template <int NSUB>
static int launch_mma(struct mma_params *p, uint32_t grid_y, cudaStream_t stream) {
        return mma_launch<mma_fmt_e4m3, NSUB>(p, grid_y, stream);
}

extern "C" int kern_fp8_linear_small(const uint8_t *w, const float *w_scale, uint32_t n_out, uint32_t k,
                                     const uint8_t *x, const float *x_scale, uint32_t m, void *y,
                                     enum kern_out out, float softcap, cudaStream_t stream) {
        struct mma_params p = {};

        if (k == 0 || n_out == 0)
                return -EINVAL;
        if (m == 0)
                return 0;
        p.w = w;
        p.w_scale = w_scale;
        p.n_out = n_out;
        p.k = k;
        p.x = x;
        p.x_scale = x_scale;
        p.x_row_div = 1;
        p.m = m;
        p.y = y;
        p.out = out;
        p.softcap = softcap;
        if (m <= 8) {
                pick_split(&p, 1);
                return launch_mma<1>(&p, 1, stream);
        }
        if (m <= 16) {
                pick_split(&p, 1);
                return launch_mma<2>(&p, 1, stream);
        }
        if (m <= 32) {
                pick_split(&p, 1);
                return launch_mma<4>(&p, 1, stream);
        }
        pick_split(&p, (m + 63) / 64);
        return launch_mma<8>(&p, (m + 63) / 64, stream);
}

enum kern_grouped_path kern_grouped_select = KERN_GROUPED_AUTO;

/* GEMMA4D_CUDA_MOE_MMA=1 keeps the experts on the mma.sync kernel (whole-model comparisons in one run) */
static bool moe_mma_env(void) {
        static int v = -1;
        if (v < 0)
                v = getenv("GEMMA4D_CUDA_MOE_MMA") != NULL;
        return v > 0;
}

extern "C" int kern_fp8_linear_grouped(const uint8_t *w, const float *w_scale, uint32_t n_out, uint32_t k,
                                       const uint8_t *x, const float *x_scale, uint32_t x_row_div,
                                       const int32_t *pair_rows, const struct kern_gemm_group *groups,
                                       const int32_t *n_groups, uint32_t max_groups, uint32_t max_rows,
                                       uint16_t *y, cudaStream_t stream) {
        struct mma_params p = {};

        if (k == 0 || n_out == 0 || x_row_div == 0)
                return -EINVAL;
        if (max_groups == 0)
                return 0;
        /* one token (max_rows 1) stays on the streaming kernel: through the whole model on H100 it decoded at
         * 4.52 ms/token against 4.66 with the tiled kernel, whose schedule prologue delays the stream */
        bool tiled = kern_grouped_select == KERN_GROUPED_TILED ||
                     (kern_grouped_select == KERN_GROUPED_AUTO && !moe_mma_env() && max_rows > 1);
        if (tiled && k % 16 == 0 && max_groups <= GEMM_GROUPED_TILED_MAX_GROUPS)
                return gemm_grouped_tiled(w, w_scale, n_out, k, x, x_scale, x_row_div, pair_rows, groups, n_groups,
                                          max_groups, y, stream);
        if (kern_grouped_select == KERN_GROUPED_TILED)
                return -EINVAL;
        p.w = w;
        p.w_scale = w_scale;
        p.n_out = n_out;
        p.k = k;
        p.x = x;
        p.x_scale = x_scale;
        p.x_row_div = x_row_div;
        p.pair_rows = pair_rows;
        p.groups = groups;
        p.n_groups = n_groups;
        p.y = y;
        p.out = KERN_OUT_BF16;
        pick_split(&p, max_groups);
        /* a group holds at most one pair per token, so with few tokens the accumulators (and the loads kept
         * in flight) can be sized for max_rows instead of the full 64 */
        if (max_rows <= 8)
                return launch_mma<1>(&p, max_groups, stream);
        if (max_rows <= 16)
                return launch_mma<2>(&p, max_groups, stream);
        if (max_rows <= 32)
                return launch_mma<4>(&p, max_groups, stream);
        return launch_mma<8>(&p, max_groups, stream);
}

/* ---- MoE routing: sort pairs by expert, cut into groups ---- */

extern "C" uint32_t kern_moe_max_groups(uint32_t n_pairs, uint32_t n_experts) {
        uint32_t a = n_pairs < n_experts ? n_pairs : n_experts;
        uint32_t b = a + (n_pairs + GROUP_ROWS - 1) / GROUP_ROWS;
        return b < n_pairs ? b : n_pairs;
}

static __global__ void moe_route_kernel(const int32_t *topk_idx, uint32_t n_pairs, uint32_t n_experts,
                                        int32_t *pair_rows, struct kern_gemm_group *groups, int32_t *n_groups) {
        extern __shared__ int32_t cnt[];
        int32_t *cursor = cnt + n_experts;

        for (uint32_t e = threadIdx.x; e < n_experts; e += blockDim.x)
                cnt[e] = 0;
        __syncthreads();
        for (uint32_t i = threadIdx.x; i < n_pairs; i += blockDim.x)
                atomicAdd(&cnt[topk_idx[i]], 1);
        __syncthreads();
        if (threadIdx.x == 0) {
                int32_t off = 0, g = 0;
                for (uint32_t e = 0; e < n_experts; e++) {
                        int32_t c = cnt[e];
                        cursor[e] = off;
                        for (int32_t j = 0; j < c; j += GROUP_ROWS) {
                                struct kern_gemm_group gr;
                                gr.expert = (int32_t) e;
                                gr.start = off + j;
                                gr.count = min(GROUP_ROWS, c - j);
                                groups[g++] = gr;
                        }
                        off += c;
                }
                *n_groups = g;
        }
        __syncthreads();
        for (uint32_t i = threadIdx.x; i < n_pairs; i += blockDim.x) {
                int32_t pos = atomicAdd(&cursor[topk_idx[i]], 1);
                pair_rows[pos] = (int32_t) i;
        }
}

extern "C" int kern_moe_route(const int32_t *topk_idx, uint32_t n_pairs, uint32_t n_experts,
                              int32_t *pair_rows, struct kern_gemm_group *groups, int32_t *n_groups,
                              cudaStream_t stream) {
        if (n_experts == 0 || n_experts > 4096)
                return -EINVAL;
        moe_route_kernel<<<1, 1024, 2 * n_experts * sizeof(int32_t), stream>>>(topk_idx, n_pairs, n_experts,
                                                                               pair_rows, groups, n_groups);
        return KERN_CHECK_LAUNCH();
}

/* ---- softcap ---- */

static __global__ void softcap_kernel(const uint16_t *src, float *y, size_t n, float cap) {
        for (size_t i = blockIdx.x * (size_t) blockDim.x + threadIdx.x; i < n; i += (size_t) gridDim.x * blockDim.x) {
                float v = src ? bf16_bits_to_f32(src[i]) : y[i];
                y[i] = cap > 0.0f ? cap * tanhf(v / cap) : v;
        }
}

extern "C" int kern_softcap(const uint16_t *src, float *y, size_t n, float cap, cudaStream_t stream) {
        if (n == 0)
                return 0;
        size_t blocks = (n + 255) / 256;
        softcap_kernel<<<(unsigned) (blocks < 65535 ? blocks : 65535), 256, 0, stream>>>(src, y, n, cap);
        return KERN_CHECK_LAUNCH();
}

/* ---- cuBLASLt ---- */

#define BLAS_CACHE 128
#define BLAS_WORKSPACE (32u << 20)

struct blas_plan {
        int kind;                       /* 0 empty, 1 fp8, 2 bf16 -> f32, 3 bf16 -> bf16 */
        uint32_t n_out, k, m;
        cublasLtMatmulDesc_t desc;
        cublasLtMatrixLayout_t a, b, d;
        cublasLtMatmulAlgo_t algo;
};

struct kern_blas {
        cublasLtHandle_t lt;
        void *workspace;
        struct blas_plan plans[BLAS_CACHE];
        uint32_t next;
        char last_error[160];
};

static void blas_fail(struct kern_blas *b, const char *stage, cublasStatus_t st, uint32_t n, uint32_t k,
                      uint32_t m) {
        snprintf(b->last_error, sizeof(b->last_error), "cuBLASLt %s failed (status %d) for n=%u k=%u m=%u", stage,
                 (int) st, n, k, m);
}

extern "C" const char *kern_blas_last_error(struct kern_blas *b) {
        return b->last_error;
}

extern "C" int kern_blas_create(struct kern_blas **ret) {
        struct kern_blas *b = (struct kern_blas *) calloc(1, sizeof(*b));
        if (!b)
                return -ENOMEM;
        if (cublasLtCreate(&b->lt) != CUBLAS_STATUS_SUCCESS) {
                free(b);
                return -EIO;
        }
        if (cudaMalloc(&b->workspace, BLAS_WORKSPACE) != cudaSuccess) {
                cublasLtDestroy(b->lt);
                free(b);
                return -ENOMEM;
        }
        *ret = b;
        return 0;
}

static void plan_free(struct blas_plan *pl) {
        if (!pl->kind)
                return;
        cublasLtMatrixLayoutDestroy(pl->a);
        cublasLtMatrixLayoutDestroy(pl->b);
        cublasLtMatrixLayoutDestroy(pl->d);
        cublasLtMatmulDescDestroy(pl->desc);
        memset(pl, 0, sizeof(*pl));
}

extern "C" void kern_blas_destroy(struct kern_blas *b) {
        if (!b)
                return;
        for (int i = 0; i < BLAS_CACHE; i++)
                plan_free(&b->plans[i]);
        cudaFree(b->workspace);
        cublasLtDestroy(b->lt);
        free(b);
}

static struct blas_plan *plan_get(struct kern_blas *b, int kind, uint32_t n_out, uint32_t k, uint32_t m,
                                  const float *a_scale, const float *b_scale) {
        struct blas_plan *pl;
        cublasLtMatmulPreference_t pref = NULL;
        cublasLtMatmulHeuristicResult_t heur;
        int found = 0;
        bool fp8 = kind == 1;
        cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
        uint64_t ws = BLAS_WORKSPACE;

        for (int i = 0; i < BLAS_CACHE; i++) {
                pl = &b->plans[i];
                if (pl->kind == kind && pl->n_out == n_out && pl->k == k && pl->m == m)
                        return pl;
        }
        pl = &b->plans[b->next];
        b->next = (b->next + 1) % BLAS_CACHE;
        plan_free(pl);

        if (cublasLtMatmulDescCreate(&pl->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) != CUBLAS_STATUS_SUCCESS)
                return NULL;
        cublasLtMatmulDescSetAttribute(pl->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta));
        cublasLtMatmulDescSetAttribute(pl->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb));
        if (fp8) {
                cublasLtMatmulMatrixScale_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
                cublasLtMatmulDescSetAttribute(pl->desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode, sizeof(mode));
                cublasLtMatmulDescSetAttribute(pl->desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof(mode));
                /* the heuristic only offers outer-vector kernels once the scale pointers are set */
                cublasLtMatmulDescSetAttribute(pl->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a_scale,
                                               sizeof(a_scale));
                cublasLtMatmulDescSetAttribute(pl->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &b_scale,
                                               sizeof(b_scale));
        }
        cudaDataType_t ab = fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF, dt = kind == 2 ? CUDA_R_32F : CUDA_R_16BF;
        cublasLtMatrixLayoutCreate(&pl->a, ab, k, n_out, k);
        cublasLtMatrixLayoutCreate(&pl->b, ab, k, m, k);
        cublasLtMatrixLayoutCreate(&pl->d, dt, n_out, m, n_out);
        pl->kind = kind;
        pl->n_out = n_out;
        pl->k = k;
        pl->m = m;
        if (cublasLtMatmulPreferenceCreate(&pref) != CUBLAS_STATUS_SUCCESS)
                goto fail;
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
        {
                cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(b->lt, pl->desc, pl->a, pl->b, pl->d, pl->d, pref,
                                                                   1, &heur, &found);
                if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
                        blas_fail(b, "heuristic", st, n_out, k, m);
                        goto fail;
                }
        }
        pl->algo = heur.algo;
        cublasLtMatmulPreferenceDestroy(pref);
        return pl;
fail:
        if (pref)
                cublasLtMatmulPreferenceDestroy(pref);
        plan_free(pl);
        return NULL;
}

extern "C" int kern_blas_fp8_linear(struct kern_blas *b, const uint8_t *w, const float *w_scale, uint32_t n_out,
                                    uint32_t k, const uint8_t *x, const float *x_scale, uint32_t m, uint16_t *y,
                                    cudaStream_t stream) {
        float alpha = 1.0f, beta = 0.0f;
        struct blas_plan *pl;

        if (k % 16 != 0 || n_out % 8 != 0)
                return -EINVAL;
        if (m == 0)
                return 0;
        pl = plan_get(b, 1, n_out, k, m, w_scale, x_scale);
        if (!pl)
                return -EIO;
        cublasLtMatmulDescSetAttribute(pl->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &w_scale, sizeof(w_scale));
        cublasLtMatmulDescSetAttribute(pl->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &x_scale, sizeof(x_scale));
        cublasStatus_t st = cublasLtMatmul(b->lt, pl->desc, &alpha, w, pl->a, x, pl->b, &beta, y, pl->d, y, pl->d,
                                           &pl->algo, b->workspace, BLAS_WORKSPACE, stream);
        if (st != CUBLAS_STATUS_SUCCESS) {
                blas_fail(b, "matmul", st, n_out, k, m);
                return -EIO;
        }
        return 0;
}

/* BF16 x BF16 through cuBLASLt: kind 2 writes FP32, kind 3 BF16 (n_out % 8 for the 16-byte BF16 rows) */
static int blas_bf16(struct kern_blas *b, int kind, const uint16_t *w, uint32_t n_out, uint32_t k,
                     const uint16_t *x, uint32_t m, void *y, cudaStream_t stream) {
        float alpha = 1.0f, beta = 0.0f;
        struct blas_plan *pl;

        if (k % 8 != 0 || n_out % (kind == 2 ? 4 : 8) != 0)
                return -EINVAL;
        if (m == 0)
                return 0;
        pl = plan_get(b, kind, n_out, k, m, NULL, NULL);
        if (!pl)
                return -EIO;
        cublasStatus_t st = cublasLtMatmul(b->lt, pl->desc, &alpha, w, pl->a, x, pl->b, &beta, y, pl->d, y, pl->d,
                                           &pl->algo, b->workspace, BLAS_WORKSPACE, stream);
        if (st != CUBLAS_STATUS_SUCCESS) {
                blas_fail(b, "matmul", st, n_out, k, m);
                return -EIO;
        }
        return 0;
}

extern "C" int kern_blas_bf16_linear_f32(struct kern_blas *b, const uint16_t *w, uint32_t n_out, uint32_t k,
                                         const uint16_t *x, uint32_t m, float *y, cudaStream_t stream) {
        return blas_bf16(b, 2, w, n_out, k, x, m, y, stream);
}

extern "C" int kern_blas_bf16_linear(struct kern_blas *b, const uint16_t *w, uint32_t n_out, uint32_t k,
                                     const uint16_t *x, uint32_t m, uint16_t *y, cudaStream_t stream) {
        return blas_bf16(b, 3, w, n_out, k, x, m, y, stream);
}
