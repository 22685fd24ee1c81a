/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/* What the attention kernels (attention.cu: CUDA-core paths, attention-mma.cu: tensor-core paths) share. */
#include "common.cuh"

struct att_ctx {
        struct kern_batch bt;
        uint32_t n_heads, n_kv, d, page_size, ring, window;
        const uint8_t *k_pages, *v_pages, *k_new, *v_new;
};

/* Element offset of key position j's row for kv head kvh. */
static __device__ __forceinline__ size_t key_row(const struct att_ctx &c, const int32_t *table, int32_t j,
                                                 int32_t pos0, int32_t row0, uint32_t kvh, bool *fresh) {
        if (j >= pos0) {
                *fresh = true;
                return ((size_t) (row0 + j - pos0) * c.n_kv + kvh) * c.d;
        }
        *fresh = false;
        uint32_t pi = (uint32_t) j / c.page_size;
        int32_t page = table[c.ring ? pi % c.ring : pi];
        return (((size_t) page * c.page_size + (uint32_t) j % c.page_size) * c.n_kv + kvh) * c.d;
}


/* attention-mma.cu: tensor-core paths for head dims 256 and 512 */
/* keys per decode split at least: one tile, so that a short context still spreads over several blocks */
#define ATT_MMA_MIN_CHUNK 32
/* splits per query: enough to fill the GPU for one long sequence, few enough that the merge stays cheap */
#define ATT_MMA_MAX_SPLIT 64
bool att_mma_supported(const struct kern_attn_layer *L, bool prefill);
int att_mma_prefill(const uint16_t *q, const struct att_ctx &c, bool fp8, bool copy_ahead, uint16_t *out,
                    cudaStream_t stream);
int att_mma_decode_rows(const uint16_t *q, const struct att_ctx &c, bool fp8, uint32_t n_split, bool km,
                        uint32_t prefill_tpb, uint32_t short_seg, float *partial, uint16_t *out,
                        cudaStream_t stream);
int att_mma_decode(const uint16_t *q, const struct att_ctx &c, bool fp8, uint32_t n_split, bool km,
                   float *partial, uint16_t *out, cudaStream_t stream);
