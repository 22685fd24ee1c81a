/* SPDX-License-Identifier: Apache-2.0 */
/* Element types of checkpoint tensors and their conversions to and from float. */
#include <math.h>
#include <string.h>

#include "model-internal.h"

size_t tensor_dtype_size(enum tensor_dtype dtype) {
        switch (dtype) {
        case TENSOR_DTYPE_F32:
                return 4;
        case TENSOR_DTYPE_F16:
        case TENSOR_DTYPE_BF16:
                return 2;
        case TENSOR_DTYPE_F8_E4M3:
                return 1;
        default:
                return 0;
        }
}

const char *tensor_dtype_name(enum tensor_dtype dtype) {
        switch (dtype) {
        case TENSOR_DTYPE_F32:
                return "F32";
        case TENSOR_DTYPE_F16:
                return "F16";
        case TENSOR_DTYPE_BF16:
                return "BF16";
        case TENSOR_DTYPE_F8_E4M3:
                return "F8_E4M3";
        default:
                return "INVALID";
        }
}

enum tensor_dtype tensor_dtype_from_name(const char *name) {
        static const enum tensor_dtype all[] = {
                TENSOR_DTYPE_F32, TENSOR_DTYPE_F16, TENSOR_DTYPE_BF16, TENSOR_DTYPE_F8_E4M3,
        };
        if (!name)
                return TENSOR_DTYPE_INVALID;
        for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
                if (strcmp(name, tensor_dtype_name(all[i])) == 0)
                        return all[i];
        return TENSOR_DTYPE_INVALID;
}

static uint32_t f32_bits(float v) {
        uint32_t u;
        memcpy(&u, &v, sizeof(u));
        return u;
}

static float bits_f32(uint32_t u) {
        float v;
        memcpy(&v, &u, sizeof(v));
        return v;
}

float bf16_to_f32(uint16_t v) {
        return bits_f32((uint32_t) v << 16);
}

uint16_t f32_to_bf16(float v) {
        uint32_t u = f32_bits(v);

        if (isnan(v))
                /* Keep sign and payload top bits; force the quiet bit so truncation cannot make an Inf. */
                return (uint16_t) ((u >> 16) | 0x0040);
        /* Round to nearest even: add 0x7fff plus the lowest kept bit, then truncate. Overflow carries into
         * the exponent and correctly produces Inf. */
        u += 0x7fffu + ((u >> 16) & 1u);
        return (uint16_t) (u >> 16);
}

float f16_to_f32(uint16_t v) {
        uint32_t sign = (uint32_t) (v & 0x8000) << 16;
        uint32_t exp = (v >> 10) & 0x1f;
        uint32_t mant = v & 0x3ff;

        if (exp == 0x1f)
                return bits_f32(sign | 0x7f800000u | (mant << 13));
        if (exp == 0) {
                /* Zero or subnormal: mant * 2^-24, exact in float. */
                float f = ldexpf((float) mant, -24);
                return sign ? -f : f;
        }
        return bits_f32(sign | ((exp + 127 - 15) << 23) | (mant << 13));
}

float fp8_e4m3_to_f32(uint8_t v) {
        uint32_t sign = v & 0x80;
        uint32_t exp = (v >> 3) & 0xf;
        uint32_t mant = v & 0x7;
        float f;

        if (exp == 0xf && mant == 0x7)
                return sign ? -NAN : NAN;
        if (exp == 0)
                f = ldexpf((float) mant, -9);           /* subnormal: mant * 2^-6 * 2^-3 */
        else
                f = ldexpf((float) (8 + mant), (int) exp - 7 - 3);
        return sign ? -f : f;
}

uint8_t f32_to_fp8_e4m3(float v) {
        uint8_t sign;
        float a;
        uint32_t u;

        if (isnan(v))
                return 0x7f;                            /* canonical NaN, as cvt.rn.satfinite gives */
        sign = signbit(v) ? 0x80 : 0x00;
        a = fabsf(v);
        if (a >= 448.0f)
                return sign | 0x7e;                     /* satfinite, Inf included */
        if (a < 0x1p-6f) {
                /* Subnormal range: count units of 2^-9 (exact scaling), round half to even. The result
                 * 8 encodes the smallest normal 2^-6, which is where rounding up lands. */
                float q = a * 512.0f;
                float r = floorf(q);
                float frac = q - r;
                uint32_t n = (uint32_t) r;
                if (frac > 0.5f || (frac == 0.5f && (n & 1u)))
                        n++;
                return sign | (uint8_t) n;
        }
        /* Normal range: round the 23-bit mantissa to 3 bits, nearest even, carrying into the exponent. */
        u = f32_bits(a);
        u += 0x7ffffu + ((u >> 20) & 1u);
        {
                int e = (int) (u >> 23) - 127;
                uint32_t m = (u >> 20) & 7u;
                uint32_t code = ((uint32_t) (e + 7) << 3) | m;
                if (code > 0x7e)
                        code = 0x7e;
                return sign | (uint8_t) code;
        }
}

float tensor_get_f32(const struct tensor_view *t, uint64_t i) {
        const uint8_t *p = t->data;

        switch (t->dtype) {
        case TENSOR_DTYPE_F32: {
                float f;
                memcpy(&f, p + 4 * i, 4);
                return f;
        }
        case TENSOR_DTYPE_F16: {
                uint16_t h;
                memcpy(&h, p + 2 * i, 2);
                return f16_to_f32(h);
        }
        case TENSOR_DTYPE_BF16: {
                uint16_t h;
                memcpy(&h, p + 2 * i, 2);
                return bf16_to_f32(h);
        }
        case TENSOR_DTYPE_F8_E4M3:
                return fp8_e4m3_to_f32(p[i]);
        default:
                return NAN;
        }
}
