/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/* A trivial kernel that proves the toolchain, the arch flags and the device work end to end. */
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Returns the number of CUDA devices (>= 0) or a negative errno-style code when the runtime fails. */
int kernels_device_count(void);

/* out[i] = a * x[i] + y[i] computed on device `gpu`. Returns 0, -ENODEV without a device, -EIO on a
 * CUDA error. */
int kernels_selftest_saxpy(int gpu, float a, const float *x, const float *y, float *out, uint32_t n);

#ifdef __cplusplus
}
#endif
