/* SPDX-License-Identifier: Apache-2.0 */
#include <string.h>

#include "build-config.h"
#include "backend.h"

const struct backend_ops *backend_find(const char *name) {
        if (!name)
                return NULL;
        if (strcmp(name, "cpu") == 0)
                return &backend_cpu_ops;
#if HAVE_CUDA
        if (strcmp(name, "cuda") == 0)
                return &backend_cuda_ops;
#endif
        return NULL;
}
