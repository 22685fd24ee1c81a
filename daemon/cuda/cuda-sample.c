/* SPDX-License-Identifier: Apache-2.0 */
/*
 * forward_sample on the CUDA backend: the sampler of daemon/server/sampler.h runs on the device
 * (kernels/sample.cu), so a sampled step copies one struct sampler_result per sequence (172 bytes) instead of
 * a 1 MiB float32 logits row.
 *
 * Costs per step: one upload of the parameters (64 bytes a sequence); the token history of each sequence
 * WITH a penalty (4 bytes a token: prompt and generated tokens with a repetition penalty, generated tokens
 * only with presence/frequency penalties alone; nothing without penalties); one download of the results.
 * The kernel's scratch is 4 bytes x vocabulary per row of one launch (1 MiB a row for Gemma 4), allocated on
 * the first sampled step.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "cuda-sample.h"
#include "kernels/kernels.h"
#include "log.h"

_Static_assert(sizeof(struct kern_sample_result) == sizeof(struct sampler_result),
               "kern_sample_result mirrors sampler_result");
_Static_assert(offsetof(struct kern_sample_result, top) == offsetof(struct sampler_result, top),
               "kern_sample_result mirrors sampler_result");
_Static_assert(KERN_SAMPLE_MAX_TOP == SAMPLER_MAX_LOGPROBS, "one top-N limit");

struct cuda_sampler {
        uint32_t vocab, max_rows, launch_rows;
        struct kern_sample_params *params_h, *params_d;        /* [max_rows]; params_h page-locked */
        struct kern_sample_result *res_h, *res_d;               /* [max_rows]; res_h page-locked */
        int32_t *hist_h, *hist_d;                               /* histories of the step; hist_h page-locked */
        size_t hist_cap;                                        /* int32 entries of both */
        bool has_hist;                                          /* the staged step uploaded histories */
        float *work_d;                                          /* [launch_rows * vocab] */
};

int cuda_sampler_new(uint32_t vocab, uint32_t max_rows, uint32_t launch_rows, struct cuda_sampler **ret) {
        if (vocab == 0 || max_rows == 0 || launch_rows == 0)
                return -EINVAL;
        struct cuda_sampler *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->vocab = vocab;
        s->max_rows = max_rows;
        s->launch_rows = launch_rows < max_rows ? launch_rows : max_rows;
        *ret = s;
        return 0;
}

struct cuda_sampler *cuda_sampler_free(struct cuda_sampler *s) {
        if (!s)
                return NULL;
        if (s->params_h)
                cudaFreeHost(s->params_h);
        if (s->res_h)
                cudaFreeHost(s->res_h);
        if (s->hist_h)
                cudaFreeHost(s->hist_h);
        void *dev[] = {s->params_d, s->res_d, s->hist_d, s->work_d};
        for (size_t i = 0; i < sizeof(dev) / sizeof(dev[0]); i++)
                if (dev[i])
                        cudaFree(dev[i]);
        free(s);
        return NULL;
}

static int alloc_buffers(struct cuda_sampler *s) {
        if (s->work_d)
                return 0;
        if (cudaMallocHost((void **) &s->params_h, sizeof(*s->params_h) * s->max_rows) != cudaSuccess ||
            cudaMallocHost((void **) &s->res_h, sizeof(*s->res_h) * s->max_rows) != cudaSuccess ||
            cudaMalloc((void **) &s->params_d, sizeof(*s->params_d) * s->max_rows) != cudaSuccess ||
            cudaMalloc((void **) &s->res_d, sizeof(*s->res_d) * s->max_rows) != cudaSuccess ||
            cudaMalloc((void **) &s->work_d, sizeof(float) * s->launch_rows * (size_t) s->vocab) != cudaSuccess) {
                cudaGetLastError();
                log_warning("backend cuda: cannot allocate the device sampler's buffers (%.1f MiB scratch)",
                            4.0 * s->launch_rows * s->vocab / 1048576.0);
                if (s->work_d)
                        cudaFree(s->work_d);
                s->work_d = NULL;
                return -ENOMEM;
        }
        return 0;
}

static int grow_history(struct cuda_sampler *s, size_t need, cudaStream_t stream) {
        if (need <= s->hist_cap)
                return 0;
        size_t cap = s->hist_cap ? s->hist_cap : 4096;
        while (cap < need)
                cap *= 2;
        /* the last step's copies out of hist_h are done (fetch waited for the stream), but be sure */
        if (cudaStreamSynchronize(stream) != cudaSuccess)
                return -EIO;
        if (s->hist_h)
                cudaFreeHost(s->hist_h);
        if (s->hist_d)
                cudaFree(s->hist_d);
        s->hist_h = NULL;
        s->hist_d = NULL;
        s->hist_cap = 0;
        if (cudaMallocHost((void **) &s->hist_h, sizeof(int32_t) * cap) != cudaSuccess ||
            cudaMalloc((void **) &s->hist_d, sizeof(int32_t) * cap) != cudaSuccess) {
                cudaGetLastError();
                return -ENOMEM;
        }
        s->hist_cap = cap;
        return 0;
}

static bool has_penalty(const struct sampling_params *p) {
        return p->repetition_penalty != 1.0f || p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f;
}

int cuda_sampler_stage(struct cuda_sampler *s, const struct backend_sample *samples, uint32_t n,
                       cudaStream_t stream) {
        if (n > s->max_rows)
                return -EINVAL;
        size_t n_hist = 0;
        for (uint32_t i = 0; i < n; i++) {
                const struct backend_sample *bs = &samples[i];
                if (bs->params.logprobs > SAMPLER_MAX_LOGPROBS || bs->params.top_k < 0)
                        return -EINVAL;
                if (has_penalty(&bs->params)) {
                        if (bs->n_prompt + bs->n_generated > 0 && !bs->tokens)
                                return -EINVAL;
                        /* without a repetition penalty only the generated tokens are read */
                        n_hist += (bs->params.repetition_penalty != 1.0f ? bs->n_prompt : 0) + bs->n_generated;
                }
        }
        int r = alloc_buffers(s);
        if (r < 0)
                return r;
        if (n_hist > UINT32_MAX)
                return -EINVAL;
        if ((r = grow_history(s, n_hist, stream)) < 0)
                return r;
        size_t off = 0;
        for (uint32_t i = 0; i < n; i++) {
                const struct backend_sample *bs = &samples[i];
                const struct sampling_params *p = &bs->params;
                struct kern_sample_params *kp = &s->params_h[i];
                *kp = (struct kern_sample_params) {
                        .temperature = p->temperature,
                        .top_p = p->top_p,
                        .min_p = p->min_p,
                        .repetition_penalty = p->repetition_penalty,
                        .presence_penalty = p->presence_penalty,
                        .frequency_penalty = p->frequency_penalty,
                        .top_k = p->top_k,
                        .n_logprobs = p->logprobs,
                        .want_logprob = p->logprob,
                        .seed = p->seed,
                        .index = bs->n_generated,
                };
                if (!has_penalty(p))
                        continue;
                bool rep = p->repetition_penalty != 1.0f;
                const int32_t *from = rep ? bs->tokens : bs->tokens + bs->n_prompt;
                uint32_t len = (rep ? bs->n_prompt : 0) + bs->n_generated;
                if (len)
                        memcpy(s->hist_h + off, from, sizeof(int32_t) * len);
                kp->n_prompt = rep ? bs->n_prompt : 0;
                kp->n_generated = bs->n_generated;
                kp->hist_off = (uint32_t) off;
                off += len;
        }
        s->has_hist = off > 0;
        if (cudaMemcpyAsync(s->params_d, s->params_h, sizeof(*s->params_h) * n, cudaMemcpyHostToDevice,
                            stream) != cudaSuccess ||
            (off && cudaMemcpyAsync(s->hist_d, s->hist_h, sizeof(int32_t) * off, cudaMemcpyHostToDevice,
                                    stream) != cudaSuccess))
                return -EIO;
        return 0;
}

int cuda_sampler_enqueue(struct cuda_sampler *s, float *logits, uint32_t r0, uint32_t nr, cudaStream_t stream) {
        if (!s->work_d || r0 + nr > s->max_rows)
                return -EINVAL;
        for (uint32_t done = 0; done < nr; done += s->launch_rows) {
                uint32_t k = nr - done < s->launch_rows ? nr - done : s->launch_rows;
                int r = kern_sample_rows(logits + (size_t) done * s->vocab, s->vocab, k, s->vocab,
                                         s->params_d + r0 + done, s->has_hist ? s->hist_d : NULL, s->work_d,
                                         s->res_d + r0 + done, stream);
                if (r < 0)
                        return r;
        }
        return 0;
}

int cuda_sampler_fetch(struct cuda_sampler *s, uint32_t n, cudaStream_t stream, struct sampler_result *ret) {
        if (n > s->max_rows || !s->res_h)
                return -EINVAL;
        if (cudaMemcpyAsync(s->res_h, s->res_d, sizeof(*s->res_h) * n, cudaMemcpyDeviceToHost, stream) !=
                    cudaSuccess ||
            cudaStreamSynchronize(stream) != cudaSuccess)
                return -EIO;
        memcpy(ret, s->res_h, sizeof(*ret) * n);
        return 0;
}
