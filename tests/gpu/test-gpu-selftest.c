/* SPDX-License-Identifier: Apache-2.0 */
/* Launches the trivial kernel: proves nvcc, the sm_90a flags, the link and the device. Exit 77 without a
 * GPU, as meson's skip convention wants. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "kernels/selftest.h"

int main(void) {
        enum { N = 1 << 20 };
        float *x = malloc(N * sizeof(float)), *y = malloc(N * sizeof(float)), *out = malloc(N * sizeof(float));
        unsigned seed = 12345;
        int n, r;

        if (!x || !y || !out)
                return 1;
        n = kernels_device_count();
        if (n <= 0) {
                printf("1..0 # SKIP no CUDA device (%d)\n", n);
                return 77;
        }
        for (int i = 0; i < N; i++) {
                seed = seed * 1103515245u + 12345u;
                x[i] = (float) (seed >> 8) / 16777216.0f - 0.5f;
                seed = seed * 1103515245u + 12345u;
                y[i] = (float) (seed >> 8) / 16777216.0f - 0.5f;
                out[i] = NAN;           /* poison: every element must be written */
        }
        r = kernels_selftest_saxpy(0, 2.5f, x, y, out, N);
        if (r < 0) {
                printf("not ok 1 - saxpy launch failed: %d\n", r);
                return 1;
        }
        for (int i = 0; i < N; i++) {
                float ref = 2.5f * x[i] + y[i];
                if (!(fabsf(out[i] - ref) <= 1e-6f * (1.0f + fabsf(ref)))) {
                        printf("not ok 1 - out[%d] = %g, want %g\n", i, out[i], ref);
                        return 1;
                }
        }
        printf("1..1\nok 1 - saxpy on %d device(s), %d elements\n", n, N);
        free(x);
        free(y);
        free(out);
        return 0;
}
