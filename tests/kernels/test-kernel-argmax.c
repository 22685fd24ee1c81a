/* SPDX-License-Identifier: Apache-2.0 */
/*
 * kern_argmax_rows against the host sampler's greedy rule (sampler.h step 3): NaN never wins, ties keep the
 * lowest id, a row without a value above -inf gives 0. Rows are built so every case is decided exactly:
 * ties planted at both ends of the row and across thread strides, +inf, NaN and -inf rows, vocabulary sizes
 * that are and are not multiples of 4 or of the block, and a misaligned row start (the scalar path).
 */
#include <errno.h>

#include "kt.h"

/* the reference: the host sampler's loop */
static int32_t ref_argmax(const float *row, uint32_t n) {
        uint32_t best = 0;
        float best_v = -INFINITY;
        for (uint32_t i = 0; i < n; i++)
                if (row[i] > best_v) {
                        best_v = row[i];
                        best = i;
                }
        return (int32_t) best;
}

enum row_kind { ROW_RANDOM, ROW_TIE_ENDS, ROW_TIE_MANY, ROW_POS_INF, ROW_ALL_NEG_INF, ROW_ALL_NAN,
                ROW_NAN_MIX, ROW_CONST, ROW_LAST_WINS, ROW_KINDS };

static void fill_row(float *row, uint32_t n, enum row_kind kind) {
        for (uint32_t i = 0; i < n; i++)
                row[i] = kt_uniform() * 20.0f;
        switch (kind) {
        case ROW_RANDOM:
                break;
        case ROW_TIE_ENDS:              /* the max at the last id and at a random earlier one */
                row[n - 1] = 30.0f;
                row[kt_u32() % n] = 30.0f;
                break;
        case ROW_TIE_MANY:              /* the max at many ids, spread over threads and warps */
                for (uint32_t k = 0; k < 40; k++)
                        row[kt_u32() % n] = 25.0f;
                break;
        case ROW_POS_INF:
                row[kt_u32() % n] = INFINITY;
                row[kt_u32() % n] = INFINITY;
                break;
        case ROW_ALL_NEG_INF:
                for (uint32_t i = 0; i < n; i++)
                        row[i] = -INFINITY;
                break;
        case ROW_ALL_NAN:
                for (uint32_t i = 0; i < n; i++)
                        row[i] = NAN;
                break;
        case ROW_NAN_MIX:               /* NaN everywhere but a few finite values, including -inf */
                for (uint32_t i = 0; i < n; i++)
                        row[i] = (kt_u32() % 4) ? NAN : -INFINITY;
                row[kt_u32() % n] = -3.5f;
                row[kt_u32() % n] = -3.5f;
                row[kt_u32() % n] = -7.0f;
                break;
        case ROW_CONST:                 /* all equal: id 0 */
                for (uint32_t i = 0; i < n; i++)
                        row[i] = 1.25f;
                break;
        case ROW_LAST_WINS:
                row[n - 1] = 1e30f;
                break;
        case ROW_KINDS:
                break;
        }
}

static void test_argmax(uint32_t n, uint32_t rows_per_kind, uint32_t offset) {
        uint32_t n_rows = rows_per_kind * ROW_KINDS;
        size_t floats = (size_t) n_rows * n + offset;
        float *x = malloc(sizeof(float) * floats);
        int32_t *ref = malloc(sizeof(int32_t) * n_rows);
        char name[128];

        for (uint32_t i = 0; i < offset; i++)
                x[i] = 0;
        for (uint32_t r = 0; r < n_rows; r++) {
                float *row = x + offset + (size_t) r * n;
                fill_row(row, n, (enum row_kind) (r % ROW_KINDS));
                ref[r] = ref_argmax(row, n);
        }
        float *dx = kt_up(x, sizeof(float) * floats);
        int32_t *dout = kt_dev(sizeof(int32_t) * n_rows);
        KT_OK(kern_argmax_rows(dx + offset, n_rows, n, dout, 0));
        int32_t *out = kt_down(dout, sizeof(int32_t) * n_rows);
        uint32_t wrong = 0, first = UINT32_MAX;
        for (uint32_t r = 0; r < n_rows; r++)
                if (out[r] != ref[r]) {
                        if (first == UINT32_MAX)
                                first = r;
                        wrong++;
                }
        if (wrong)
                printf("# n=%u offset=%u: row %u (kind %u) gave %d, expected %d\n", n, offset, first,
                       first % ROW_KINDS, out[first], ref[first]);
        snprintf(name, sizeof(name), "argmax n=%u rows=%u offset=%u: %u rows wrong", n, n_rows, offset, wrong);
        kt_expect(name, wrong == 0);
        cudaFree(dx), cudaFree(dout);
        free(x), free(ref), free(out);
}

int main(void) {
        kt_require_gpu();
        kt_seed(7);
        test_argmax(262144, 4, 0);      /* Gemma 4 vocabulary, float4 path */
        test_argmax(262144, 2, 1);      /* misaligned row start: scalar path */
        test_argmax(1, 2, 0);
        test_argmax(3, 3, 0);
        test_argmax(1000, 3, 0);        /* fewer elements than threads */
        test_argmax(1027, 3, 0);        /* not a multiple of 4 */
        test_argmax(4100, 3, 0);        /* multiple of 4, not of the block */
        test_argmax(262147, 2, 0);      /* odd vocabulary */
        /* an empty launch and a bad width are refused or no-ops */
        kt_expect("argmax of 0 rows is a no-op", kern_argmax_rows(NULL, 0, 16, NULL, 0) == 0);
        kt_expect("argmax of 0-wide rows is refused", kern_argmax_rows(NULL, 1, 0, NULL, 0) == -EINVAL);
        return kt_finish();
}
