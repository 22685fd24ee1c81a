/* SPDX-License-Identifier: Apache-2.0 */
/* Element conversions of model.h: exhaustive over FP8 codes, RNE ties, saturation, NaN, subnormals. */
#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "model/model-internal.h"

static uint32_t bits(float f) {
        uint32_t u;
        memcpy(&u, &f, 4);
        return u;
}

static float from_bits(uint32_t u) {
        float f;
        memcpy(&f, &u, 4);
        return f;
}

/* Decoding by the E4M3FN definition, independently of the implementation's bit tricks. */
static double fp8_reference(uint8_t c) {
        int s = c >> 7, e = (c >> 3) & 15, m = c & 7;
        double v = e ? ldexp(1.0 + m / 8.0, e - 7) : ldexp(m / 8.0, -6);
        return s ? -v : v;
}

static void test_fp8_decode_all(void **state) {
        for (int c = 0; c < 256; c++) {
                float f = fp8_e4m3_to_f32((uint8_t) c);
                if ((c & 0x7f) == 0x7f) {
                        assert_true(isnan(f));
                        continue;
                }
                assert_true((double) f == fp8_reference((uint8_t) c));
        }
        assert_true(fp8_e4m3_to_f32(0x7e) == 448.0f);
        assert_true(fp8_e4m3_to_f32(0xfe) == -448.0f);
        assert_true(fp8_e4m3_to_f32(0x08) == 0x1p-6f);
        assert_true(fp8_e4m3_to_f32(0x01) == 0x1p-9f);
        assert_true(signbit(fp8_e4m3_to_f32(0x80)) && fp8_e4m3_to_f32(0x80) == 0.0f);
}

static void test_fp8_roundtrip_all(void **state) {
        for (int c = 0; c < 256; c++) {
                if ((c & 0x7f) == 0x7f)
                        continue;
                assert_int_equal(f32_to_fp8_e4m3(fp8_e4m3_to_f32((uint8_t) c)), c);
        }
}

/* Between every pair of neighbouring codes: just below the midpoint rounds down, just above rounds up, the
 * midpoint itself goes to the even code. */
static void test_fp8_ties_and_neighbours(void **state) {
        for (int c = 0; c < 0x7e; c++) {
                for (int neg = 0; neg < 2; neg++) {
                        uint8_t lo = (uint8_t) c | (neg ? 0x80 : 0),
                                hi = (uint8_t) (c + 1) | (neg ? 0x80 : 0);
                        double a = fp8_reference(lo), b = fp8_reference(hi);
                        float mid = (float) ((a + b) / 2);      /* exact in float */
                        assert_true((double) mid == (a + b) / 2);
                        uint8_t even = (c & 1) ? hi : lo;
                        assert_int_equal(f32_to_fp8_e4m3(mid), even);
                        assert_int_equal(f32_to_fp8_e4m3(nextafterf(mid, 0.0f)), lo);
                        assert_int_equal(f32_to_fp8_e4m3(nextafterf(mid, neg ? -INFINITY : INFINITY)), hi);
                }
        }
}

static void test_fp8_saturation_and_specials(void **state) {
        assert_int_equal(f32_to_fp8_e4m3(448.0f), 0x7e);
        assert_int_equal(f32_to_fp8_e4m3(460.0f), 0x7e);
        assert_int_equal(f32_to_fp8_e4m3(464.0f), 0x7e);       /* would round to 480: saturates */
        assert_int_equal(f32_to_fp8_e4m3(1e6f), 0x7e);
        assert_int_equal(f32_to_fp8_e4m3(-1e6f), 0xfe);
        assert_int_equal(f32_to_fp8_e4m3(INFINITY), 0x7e);
        assert_int_equal(f32_to_fp8_e4m3(-INFINITY), 0xfe);
        assert_int_equal(f32_to_fp8_e4m3(FLT_MAX), 0x7e);
        assert_true(isnan(fp8_e4m3_to_f32(f32_to_fp8_e4m3(NAN))));
        assert_true(isnan(fp8_e4m3_to_f32(f32_to_fp8_e4m3(-NAN))));
        assert_int_equal(f32_to_fp8_e4m3(0.0f), 0x00);
        assert_int_equal(f32_to_fp8_e4m3(-0.0f), 0x80);
        assert_int_equal(f32_to_fp8_e4m3(0x1p-10f), 0x00);     /* half the smallest subnormal: tie to 0 */
        assert_int_equal(f32_to_fp8_e4m3(0x1.8p-10f), 0x01);
        assert_int_equal(f32_to_fp8_e4m3(0x1p-30f), 0x00);
        assert_int_equal(f32_to_fp8_e4m3(-0x1p-30f), 0x80);
        assert_int_equal(f32_to_fp8_e4m3(0x1.ep-7f),
                         0x08); /* 15/16 of 2^-6: rounds up to the smallest normal */
        assert_int_equal(f32_to_fp8_e4m3(1.0f), 0x38);
        assert_int_equal(f32_to_fp8_e4m3(1.0625f), 0x38);       /* tie between 1 and 1.125: even */
        assert_int_equal(f32_to_fp8_e4m3(1.1875f), 0x3a);       /* tie between 1.125 and 1.25: even */
}

static void test_bf16(void **state) {
        /* Exhaustive: every non-NaN bf16 value converts to float and back unchanged. */
        for (uint32_t h = 0; h < 65536; h++) {
                float f = bf16_to_f32((uint16_t) h);
                if (isnan(f)) {
                        assert_true(isnan(bf16_to_f32(f32_to_bf16(f))));
                        continue;
                }
                assert_int_equal(f32_to_bf16(f), h);
        }
        assert_int_equal(f32_to_bf16(1.0f), 0x3f80);
        assert_int_equal(f32_to_bf16(from_bits(0x3f808000)), 0x3f80);  /* tie, even stays */
        assert_int_equal(f32_to_bf16(from_bits(0x3f818000)), 0x3f82);  /* tie, odd rounds up */
        assert_int_equal(f32_to_bf16(from_bits(0x3f808001)), 0x3f81);
        assert_int_equal(f32_to_bf16(from_bits(0x3f807fff)), 0x3f80);
        assert_int_equal(f32_to_bf16(from_bits(0x7f7fffff)), 0x7f80);  /* FLT_MAX rounds to Inf */
        assert_int_equal(f32_to_bf16(INFINITY), 0x7f80);
        assert_int_equal(f32_to_bf16(-INFINITY), 0xff80);
        /* A NaN whose payload sits only in the dropped bits must stay NaN, not become Inf. */
        assert_true(isnan(bf16_to_f32(f32_to_bf16(from_bits(0x7f800001)))));
        assert_true(isnan(bf16_to_f32(f32_to_bf16(from_bits(0xff800001)))));
        assert_true(bits(bf16_to_f32(0x8000)) == 0x80000000u);
}

static void test_f16(void **state) {
        assert_true(f16_to_f32(0x3c00) == 1.0f);
        assert_true(f16_to_f32(0xc000) == -2.0f);
        assert_true(f16_to_f32(0x7bff) == 65504.0f);
        assert_true(f16_to_f32(0x0001) == 0x1p-24f);
        assert_true(f16_to_f32(0x03ff) == 1023 * 0x1p-24f);
        assert_true(f16_to_f32(0x0400) == 0x1p-14f);
        assert_true(isinf(f16_to_f32(0x7c00)) && f16_to_f32(0x7c00) > 0);
        assert_true(isinf(f16_to_f32(0xfc00)) && f16_to_f32(0xfc00) < 0);
        assert_true(isnan(f16_to_f32(0x7e00)));
        assert_true(signbit(f16_to_f32(0x8000)));
        /* Exhaustive against the definition. */
        for (uint32_t h = 0; h < 65536; h++) {
                int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
                float f = f16_to_f32((uint16_t) h);
                if (e == 31)
                        continue;
                double v = e ? ldexp(1.0 + m / 1024.0, e - 15) : ldexp(m / 1024.0, -14);
                assert_true((double) f == (s ? -v : v));
        }
}

static void test_dtype_names_and_get(void **state) {
        uint16_t bf[2] = { 0x3f80, 0xc000 };
        uint16_t hf[2] = { 0x3c00, 0xc000 };
        float ff[2] = { 1.5f, -3.0f };
        uint8_t f8[2] = { 0x38, 0xfe };
        struct tensor_view t = { .ndim = 1, .shape = { 2 } };

        assert_int_equal(tensor_dtype_size(TENSOR_DTYPE_F32), 4);
        assert_int_equal(tensor_dtype_size(TENSOR_DTYPE_BF16), 2);
        assert_int_equal(tensor_dtype_size(TENSOR_DTYPE_F16), 2);
        assert_int_equal(tensor_dtype_size(TENSOR_DTYPE_F8_E4M3), 1);
        assert_int_equal(tensor_dtype_size(TENSOR_DTYPE_INVALID), 0);
        assert_string_equal(tensor_dtype_name(TENSOR_DTYPE_F8_E4M3), "F8_E4M3");
        assert_int_equal(tensor_dtype_from_name("BF16"), TENSOR_DTYPE_BF16);
        assert_int_equal(tensor_dtype_from_name("I64"), TENSOR_DTYPE_INVALID);
        assert_int_equal(tensor_dtype_from_name("bf16"), TENSOR_DTYPE_INVALID);

        t.dtype = TENSOR_DTYPE_BF16, t.data = bf;
        assert_true(tensor_get_f32(&t, 0) == 1.0f && tensor_get_f32(&t, 1) == -2.0f);
        t.dtype = TENSOR_DTYPE_F16, t.data = hf;
        assert_true(tensor_get_f32(&t, 0) == 1.0f && tensor_get_f32(&t, 1) == -2.0f);
        t.dtype = TENSOR_DTYPE_F32, t.data = ff;
        assert_true(tensor_get_f32(&t, 0) == 1.5f && tensor_get_f32(&t, 1) == -3.0f);
        t.dtype = TENSOR_DTYPE_F8_E4M3, t.data = f8;
        assert_true(tensor_get_f32(&t, 0) == 1.0f && tensor_get_f32(&t, 1) == -448.0f);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_fp8_decode_all),
                cmocka_unit_test(test_fp8_roundtrip_all),
                cmocka_unit_test(test_fp8_ties_and_neighbours),
                cmocka_unit_test(test_fp8_saturation_and_specials),
                cmocka_unit_test(test_bf16),
                cmocka_unit_test(test_f16),
                cmocka_unit_test(test_dtype_names_and_get),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
