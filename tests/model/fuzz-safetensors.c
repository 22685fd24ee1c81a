/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Fuzz target: the safetensors header validator on arbitrary file images. Whatever it accepts must be
 * self-consistent: every tensor inside the data section, byte counts equal to shape x dtype size, no two
 * non-empty tensors sharing bytes. Rejections must come with a message.
 */
#include <stdio.h>
#include <stdlib.h>

#include "../fuzz/fuzz.h"
#include "model/model-internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct st_file *f = NULL;
        char *err = NULL;

        if (st_file_parse("fuzz.safetensors", data, size, &f, &err) < 0) {
                if (!err || !*err)
                        abort();
                free(err);
                return 0;
        }
        const uint8_t *start = data + 8 + f->header_len, *end = data + size;
        for (size_t i = 0; i < f->n_tensors; i++) {
                const struct st_tensor *t = &f->tensors[i];
                uint64_t count = 1;
                for (uint32_t d = 0; d < t->ndim; d++)
                        count *= t->shape[d];
                if (t->end - t->begin != count * tensor_dtype_size(t->dtype) || t->begin > t->end ||
                    (const uint8_t *) t->data != start + t->begin || start + t->end > end)
                        abort();
                /* touch the first and last byte: ASan catches any escape from the buffer */
                if (t->end > t->begin) {
                        volatile uint8_t sink = ((const uint8_t *) t->data)[0];
                        sink = ((const uint8_t *) t->data)[t->end - t->begin - 1];
                        (void) sink;
                }
                for (size_t k = 0; k < i; k++) {
                        const struct st_tensor *u = &f->tensors[k];
                        if (t->begin < t->end && u->begin < u->end && t->begin < u->end && u->begin < t->end)
                                abort();
                }
        }
        st_file_close(f);
        return 0;
}
