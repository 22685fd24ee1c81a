/* SPDX-License-Identifier: Apache-2.0 */
#include <errno.h>
#include <cuda_runtime.h>

#include "selftest.h"

static __global__ void saxpy_kernel(float a, const float *x, const float *y, float *out, uint32_t n) {
        uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i < n)
                out[i] = a * x[i] + y[i];
}

extern "C" int kernels_device_count(void) {
        int n = 0;
        cudaError_t e = cudaGetDeviceCount(&n);
        if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver)
                return 0;
        if (e != cudaSuccess)
                return -EIO;
        return n;
}

extern "C" int kernels_selftest_saxpy(int gpu, float a, const float *x, const float *y, float *out,
                                      uint32_t n) {
        float *dx = NULL, *dy = NULL, *dout = NULL;
        size_t bytes = (size_t) n * sizeof(float);
        int r = -EIO;

        if (kernels_device_count() <= gpu)
                return -ENODEV;
        if (cudaSetDevice(gpu) != cudaSuccess)
                return -EIO;
        if (cudaMalloc(&dx, bytes) != cudaSuccess || cudaMalloc(&dy, bytes) != cudaSuccess ||
            cudaMalloc(&dout, bytes) != cudaSuccess)
                goto finish;
        if (cudaMemcpy(dx, x, bytes, cudaMemcpyHostToDevice) != cudaSuccess ||
            cudaMemcpy(dy, y, bytes, cudaMemcpyHostToDevice) != cudaSuccess)
                goto finish;
        saxpy_kernel<<<(n + 255) / 256, 256>>>(a, dx, dy, dout, n);
        if (cudaGetLastError() != cudaSuccess || cudaDeviceSynchronize() != cudaSuccess)
                goto finish;
        if (cudaMemcpy(out, dout, bytes, cudaMemcpyDeviceToHost) != cudaSuccess)
                goto finish;
        r = 0;
finish:
        cudaFree(dx);
        cudaFree(dy);
        cudaFree(dout);
        return r;
}
