/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Weight upload: checkpoint views (read-only mmaps) -> device. FP8 weights are copied as they are; BF16, F16
 * and F32 weights are widened to FP32 on the host, copied, and quantized per output row on the GPU with the
 * compressed-tensors recipe (kern_quantize_weight_rows), so one FP8 forward path serves every checkpoint.
 * Copies go through one pinned staging buffer.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda-internal.h"

#define STAGING_BYTES (64u << 20)

int cuda_errorf(char **reterr, int r, const char *fmt, ...) {
        va_list ap;
        if (reterr && !*reterr) {
                char *s = NULL;
                va_start(ap, fmt);
                if (vasprintf(&s, fmt, ap) < 0)
                        s = NULL;
                va_end(ap);
                *reterr = s;
        }
        return r;
}

static float h_bf16(uint16_t v) {
        uint32_t u = (uint32_t) v << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
}

static uint16_t h_to_bf16(float f) {
        uint32_t u;
        memcpy(&u, &f, 4);
        if ((u & 0x7fffffffu) > 0x7f800000u)
                return (uint16_t) ((u >> 16) | 0x40);
        u += 0x7fffu + ((u >> 16) & 1);
        return (uint16_t) (u >> 16);
}

static float h_f16(uint16_t h) {
        uint32_t s = (uint32_t) (h >> 15) << 31, e = (h >> 10) & 31, m = h & 1023, u;
        float f;
        if (e == 0) {
                f = (float) m / 1024.0f / 16384.0f;
                return s ? -f : f;
        }
        if (e == 31)
                u = s | 0x7f800000u | (m << 13);
        else
                u = s | ((e + 112) << 23) | (m << 13);
        memcpy(&f, &u, 4);
        return f;
}

static float h_e4m3(uint8_t v) {
        int s = v >> 7, e = (v >> 3) & 15, m = v & 7;
        float r;
        if (e == 15 && m == 7)
                return __builtin_nanf("");
        r = e == 0 ? (float) m / 8.0f / 64.0f : (1.0f + (float) m / 8.0f) * (float) (1u << e) / 128.0f;
        return s ? -r : r;
}

float host_tensor_f32(const struct tensor_view *t, uint64_t i) {
        const uint8_t *d = t->data;
        switch (t->dtype) {
        case TENSOR_DTYPE_F32: {
                float f;
                memcpy(&f, d + i * 4, 4);
                return f;
        }
        case TENSOR_DTYPE_BF16: {
                uint16_t v;
                memcpy(&v, d + i * 2, 2);
                return h_bf16(v);
        }
        case TENSOR_DTYPE_F16: {
                uint16_t v;
                memcpy(&v, d + i * 2, 2);
                return h_f16(v);
        }
        case TENSOR_DTYPE_F8_E4M3:
                return h_e4m3(d[i]);
        default:
                return 0.0f;
        }
}

static uint64_t view_elems(const struct tensor_view *t) {
        uint64_t n = 1;
        for (uint32_t i = 0; i < t->ndim; i++)
                n *= t->shape[i];
        return n;
}

int upload_init(struct uploader *u, const struct backend_params *p, cudaStream_t stream) {
        memset(u, 0, sizeof(*u));
        u->p = p;
        u->stream = stream;
        u->pinned_bytes = STAGING_BYTES;
        if (cudaMallocHost(&u->pinned, u->pinned_bytes) != cudaSuccess)
                return -ENOMEM;
        u->dev_f32_floats = STAGING_BYTES / sizeof(float);
        if (cudaMalloc((void **) &u->dev_f32, u->dev_f32_floats * sizeof(float)) != cudaSuccess) {
                cudaFreeHost(u->pinned);
                u->pinned = NULL;
                return -ENOMEM;
        }
        return 0;
}

void upload_done(struct uploader *u) {
        if (u->pinned)
                cudaFreeHost(u->pinned);
        if (u->dev_f32)
                cudaFree(u->dev_f32);
        u->pinned = NULL;
        u->dev_f32 = NULL;
}

static void progress(struct uploader *u, uint64_t bytes) {
        uint64_t before = u->bytes_done;
        u->bytes_done += bytes;
        if (!u->p->progress || u->bytes_total == 0)
                return;
        /* report about every 1 % */
        if (before * 100 / u->bytes_total != u->bytes_done * 100 / u->bytes_total) {
                char phase[64];
                snprintf(phase, sizeof phase, "loading weights %.1f/%.1f GiB",
                         (double) u->bytes_done / (1u << 30), (double) u->bytes_total / (1u << 30));
                u->p->progress(u->p->progress_userdata, phase, (double) u->bytes_done / (double) u->bytes_total);
        }
}

/* Host bytes -> device through the pinned buffer. */
static int copy_up(struct uploader *u, void *dst, const void *src, size_t bytes) {
        const uint8_t *s = src;
        uint8_t *d = dst;
        while (bytes > 0) {
                size_t n = bytes < u->pinned_bytes ? bytes : u->pinned_bytes;
                memcpy(u->pinned, s, n);
                if (cudaMemcpyAsync(d, u->pinned, n, cudaMemcpyHostToDevice, u->stream) != cudaSuccess ||
                    cudaStreamSynchronize(u->stream) != cudaSuccess)
                        return -EIO;
                s += n;
                d += n;
                bytes -= n;
        }
        return 0;
}

/* backend_params.weights_bf16: the linears stay BF16 ([n_out, k] BF16 at w_dst, no scales). BF16 tensors are
 * copied as they are, F16/F32 rounded to BF16 on the host; an FP8 tensor cannot become the BF16 weight it was
 * quantized from, so it is refused. */
static int upload_linear_bf16(struct uploader *u, const struct linear_weight *const *parts, uint32_t n_parts,
                              struct dev_linear *out, uint16_t *w_dst, char **reterr) {
        uint32_t k = parts[0]->in_features, row = 0;
        int r;

        for (uint32_t i = 0; i < n_parts; i++) {
                const struct linear_weight *lw = parts[i];
                const struct tensor_view *w = &lw->w;
                uint32_t n = lw->out_features;
                uint64_t elems = (uint64_t) n * k, per = u->pinned_bytes / 2;

                if (!tensor_present(w))
                        return cuda_errorf(reterr, -EINVAL, "tensor %s: missing", w->name ? w->name : "?");
                if (lw->in_features != k || view_elems(w) != elems || k == 0)
                        return cuda_errorf(reterr, -EINVAL, "tensor %s: shape does not match [%u, %u]", w->name, n,
                                           k);
                uint16_t *dst = w_dst + (size_t) row * k;
                if (w->dtype == TENSOR_DTYPE_BF16) {
                        r = copy_up(u, dst, w->data, elems * 2);
                } else if (w->dtype == TENSOR_DTYPE_F16 || w->dtype == TENSOR_DTYPE_F32) {
                        r = 0;
                        for (uint64_t i0 = 0; i0 < elems && r == 0; i0 += per) {
                                uint64_t m = elems - i0 < per ? elems - i0 : per;
                                uint16_t *h = u->pinned;
                                for (uint64_t j = 0; j < m; j++)
                                        h[j] = h_to_bf16(host_tensor_f32(w, i0 + j));
                                if (cudaMemcpyAsync(dst + i0, h, m * 2, cudaMemcpyHostToDevice, u->stream) !=
                                            cudaSuccess ||
                                    cudaStreamSynchronize(u->stream) != cudaSuccess)
                                        r = -EIO;
                        }
                } else {
                        return cuda_errorf(reterr, -EINVAL,
                                           "tensor %s is %s: cuda.weights bf16 keeps a BF16 checkpoint's weights and "
                                           "cannot recover them from an FP8 checkpoint (use cuda.weights fp8, or a "
                                           "BF16 checkpoint)", w->name, tensor_dtype_name(w->dtype));
                }
                if (r < 0)
                        return cuda_errorf(reterr, r, "tensor %s: upload failed", w->name);
                progress(u, elems * tensor_dtype_size(w->dtype));
                row += n;
        }
        out->w = (uint8_t *) w_dst;
        out->scale = NULL;
        out->n_out = row;
        out->k = k;
        out->experts = 1;
        return 0;
}

int upload_linear(struct uploader *u, const struct linear_weight *const *parts, uint32_t n_parts,
                  struct dev_linear *out, uint8_t *w_dst, float *s_dst, char **reterr) {
        uint32_t k = parts[0]->in_features, row = 0;
        int r;

        if (u->p->weights_bf16)
                return upload_linear_bf16(u, parts, n_parts, out, (uint16_t *) (void *) w_dst, reterr);

        for (uint32_t i = 0; i < n_parts; i++) {
                const struct linear_weight *lw = parts[i];
                const struct tensor_view *w = &lw->w;
                uint32_t n = lw->out_features;

                if (!tensor_present(w))
                        return cuda_errorf(reterr, -EINVAL, "tensor %s: missing", w->name ? w->name : "?");
                if (lw->in_features != k || view_elems(w) != (uint64_t) n * k)
                        return cuda_errorf(reterr, -EINVAL, "tensor %s: shape does not match [%u, %u]", w->name, n,
                                           k);
                if (k == 0)
                        return cuda_errorf(reterr, -EINVAL, "tensor %s: in_features is 0", w->name);
                if (w->dtype == TENSOR_DTYPE_F8_E4M3) {
                        if (!tensor_present(&lw->scale) || view_elems(&lw->scale) != n)
                                return cuda_errorf(reterr, -EINVAL, "tensor %s: FP8 weight needs a [%u] weight_scale",
                                                   w->name, n);
                        r = copy_up(u, w_dst + (size_t) row * k, w->data, (size_t) n * k);
                        if (r < 0)
                                return cuda_errorf(reterr, r, "tensor %s: upload failed", w->name);
                        float *s = u->pinned;
                        for (uint32_t j = 0; j < n; j++)
                                s[j] = host_tensor_f32(&lw->scale, j);
                        if (cudaMemcpyAsync(s_dst + row, s, sizeof(float) * n, cudaMemcpyHostToDevice, u->stream) !=
                                    cudaSuccess ||
                            cudaStreamSynchronize(u->stream) != cudaSuccess)
                                return cuda_errorf(reterr, -EIO, "tensor %s: scale upload failed", w->name);
                        progress(u, (size_t) n * k);
                } else if (w->dtype == TENSOR_DTYPE_BF16 || w->dtype == TENSOR_DTYPE_F16 ||
                           w->dtype == TENSOR_DTYPE_F32) {
                        uint32_t rows_per = (uint32_t) (u->dev_f32_floats / k);
                        for (uint32_t r0 = 0; r0 < n; r0 += rows_per) {
                                uint32_t nr = n - r0 < rows_per ? n - r0 : rows_per;
                                float *f = u->pinned;
                                uint64_t base = (uint64_t) r0 * k;
                                if (w->dtype == TENSOR_DTYPE_BF16) {
                                        const uint16_t *src = (const uint16_t *) w->data + base;
                                        for (uint64_t j = 0; j < (uint64_t) nr * k; j++)
                                                f[j] = h_bf16(src[j]);
                                } else {
                                        for (uint64_t j = 0; j < (uint64_t) nr * k; j++)
                                                f[j] = host_tensor_f32(w, base + j);
                                }
                                if (cudaMemcpyAsync(u->dev_f32, f, sizeof(float) * nr * k, cudaMemcpyHostToDevice,
                                                    u->stream) != cudaSuccess ||
                                    kern_quantize_weight_rows(u->dev_f32, nr, k, w_dst + ((size_t) row + r0) * k,
                                                              s_dst + row + r0, u->stream) < 0 ||
                                    cudaStreamSynchronize(u->stream) != cudaSuccess)
                                        return cuda_errorf(reterr, -EIO, "tensor %s: upload/quantize failed", w->name);
                                progress(u, (size_t) nr * k * tensor_dtype_size(w->dtype));
                        }
                } else {
                        return cuda_errorf(reterr, -EINVAL, "tensor %s: unsupported dtype %s for a linear layer",
                                           w->name, tensor_dtype_name(w->dtype));
                }
                row += n;
        }
        out->w = w_dst;
        out->scale = s_dst;
        out->n_out = row;
        out->k = k;
        out->experts = 1;
        return 0;
}

int upload_vector_bf16(struct uploader *u, const struct tensor_view *t, uint32_t n, uint16_t **ret,
                       char **reterr) {
        uint16_t *d = NULL, *h;

        if (!tensor_present(t)) {
                *ret = NULL;
                return 0;
        }
        if (view_elems(t) != n)
                return cuda_errorf(reterr, -EINVAL, "tensor %s: expected %u elements, found %llu", t->name, n,
                                   (unsigned long long) view_elems(t));
        if (cudaMalloc((void **) &d, (size_t) n * 2) != cudaSuccess)
                return cuda_errorf(reterr, -ENOMEM, "tensor %s: out of device memory", t->name);
        h = u->pinned;
        for (uint32_t i = 0; i < n; i++)
                h[i] = t->dtype == TENSOR_DTYPE_BF16 ? ((const uint16_t *) t->data)[i]
                                                     : h_to_bf16(host_tensor_f32(t, i));
        if (cudaMemcpyAsync(d, h, (size_t) n * 2, cudaMemcpyHostToDevice, u->stream) != cudaSuccess ||
            cudaStreamSynchronize(u->stream) != cudaSuccess) {
                cudaFree(d);
                return cuda_errorf(reterr, -EIO, "tensor %s: upload failed", t->name);
        }
        *ret = d;
        return 0;
}

int upload_matrix_bf16(struct uploader *u, const struct tensor_view *t, uint64_t rows, uint64_t cols,
                       uint16_t **ret, char **reterr) {
        uint16_t *d = NULL;
        uint64_t n = rows * cols;
        int r = 0;

        if (!tensor_present(t) || view_elems(t) != n)
                return cuda_errorf(reterr, -EINVAL, "tensor %s: missing or not [%llu, %llu]",
                                   t->name ? t->name : "embed_tokens", (unsigned long long) rows,
                                   (unsigned long long) cols);
        if (cudaMalloc((void **) &d, n * 2) != cudaSuccess)
                return cuda_errorf(reterr, -ENOMEM, "tensor %s: out of device memory", t->name);
        if (t->dtype == TENSOR_DTYPE_BF16) {
                r = copy_up(u, d, t->data, n * 2);
        } else {
                size_t per = u->pinned_bytes / 2;
                for (uint64_t i0 = 0; i0 < n && r == 0; i0 += per) {
                        uint64_t m = n - i0 < per ? n - i0 : per;
                        uint16_t *h = u->pinned;
                        for (uint64_t j = 0; j < m; j++)
                                h[j] = h_to_bf16(host_tensor_f32(t, i0 + j));
                        if (cudaMemcpyAsync(d + i0, h, m * 2, cudaMemcpyHostToDevice, u->stream) != cudaSuccess ||
                            cudaStreamSynchronize(u->stream) != cudaSuccess)
                                r = -EIO;
                }
        }
        if (r < 0) {
                cudaFree(d);
                return cuda_errorf(reterr, r, "tensor %s: upload failed", t->name);
        }
        progress(u, n * tensor_dtype_size(t->dtype));
        *ret = d;
        return 0;
}

int upload_matrix_bf16_host(struct uploader *u, const struct tensor_view *t, uint64_t rows, uint64_t cols,
                            uint16_t **ret, char **reterr) {
        uint16_t *h = NULL;
        uint64_t n = rows * cols;

        if (!tensor_present(t) || view_elems(t) != n)
                return cuda_errorf(reterr, -EINVAL, "tensor %s: missing or not [%llu, %llu]",
                                   t->name ? t->name : "embed_tokens", (unsigned long long) rows,
                                   (unsigned long long) cols);
        /* mapped: kernels read the rows they gather straight over the bus (UVA), no device copy */
        if (cudaHostAlloc((void **) &h, n * 2, cudaHostAllocMapped | cudaHostAllocPortable) != cudaSuccess)
                return cuda_errorf(reterr, -ENOMEM, "tensor %s: cannot allocate %.2f GiB of page-locked host memory",
                                   t->name, (double) n * 2 / 1073741824.0);
        if (t->dtype == TENSOR_DTYPE_BF16)
                memcpy(h, t->data, n * 2);
        else
                for (uint64_t j = 0; j < n; j++)
                        h[j] = h_to_bf16(host_tensor_f32(t, j));
        progress(u, n * tensor_dtype_size(t->dtype));
        *ret = h;
        return 0;
}

int quantize_device_matrix(struct uploader *u, const uint16_t *src, uint64_t rows, uint64_t cols, uint8_t *q,
                           float *scale) {
        uint64_t per = u->dev_f32_floats / cols;
        for (uint64_t r0 = 0; r0 < rows; r0 += per) {
                uint64_t nr = rows - r0 < per ? rows - r0 : per;
                if (kern_bf16_to_f32(src + r0 * cols, nr * cols, u->dev_f32, u->stream) < 0 ||
                    kern_quantize_weight_rows(u->dev_f32, (uint32_t) nr, (uint32_t) cols, q + r0 * cols, scale + r0,
                                              u->stream) < 0)
                        return -EIO;
        }
        return cudaStreamSynchronize(u->stream) == cudaSuccess ? 0 : -EIO;
}
