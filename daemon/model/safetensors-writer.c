/* SPDX-License-Identifier: Apache-2.0 */
/*
 * safetensors writer in the reference writer's exact form: tensors ordered by dtype size (largest first)
 * then by name, packed without gaps, the JSON header padded with spaces so the data starts at a multiple
 * of 8. The layout is computed up front so that a streaming writer can fill tensors in any order.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model-internal.h"

static int cmp_out_tensor(const void *a, const void *b) {
        const struct st_out_tensor *x = a, *y = b;
        size_t sx = tensor_dtype_size(x->dtype), sy = tensor_dtype_size(y->dtype);

        if (sx != sy)
                return sx > sy ? -1 : 1;
        return strcmp(x->name, y->name);
}

struct strbuf {
        char *s;
        size_t len, cap;
        bool oom;
};

static void sb_printf(struct strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct strbuf *b, const char *fmt, ...) {
        va_list ap;
        int n;

        if (b->oom)
                return;
        for (;;) {
                va_start(ap, fmt);
                n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
                va_end(ap);
                if (n < 0) {
                        b->oom = true;
                        return;
                }
                if (b->s && b->len + (size_t) n < b->cap) {
                        b->len += (size_t) n;
                        return;
                }
                size_t cap = b->cap ? b->cap * 2 : 4096;
                while (cap < b->len + (size_t) n + 16)
                        cap *= 2;
                char *s = realloc(b->s, cap);
                if (!s) {
                        b->oom = true;
                        return;
                }
                b->s = s;
                b->cap = cap;
        }
}

/* Tensor names come from our own code, but escape the JSON specials anyway. */
static void sb_json_string(struct strbuf *b, const char *s) {
        sb_printf(b, "\"");
        for (; *s; s++) {
                if (*s == '"' || *s == '\\')
                        sb_printf(b, "\\%c", *s);
                else if ((unsigned char) *s < 0x20)
                        sb_printf(b, "\\u%04x", (unsigned) (unsigned char) *s);
                else
                        sb_printf(b, "%c", *s);
        }
        sb_printf(b, "\"");
}

int st_layout_build(struct st_out_tensor *t, size_t n, char **ret_prefix, uint64_t *ret_prefix_len,
                    uint64_t *ret_file_size) {
        struct strbuf b = { 0 };
        uint64_t off = 0, json_len, prefix_len;

        qsort(t, n, sizeof(*t), cmp_out_tensor);
        sb_printf(&b, "%8s", "");               /* room for the length */
        sb_printf(&b, "{\"__metadata__\":{\"format\":\"pt\"}");
        for (size_t i = 0; i < n; i++) {
                uint64_t count = 1;
                for (uint32_t d = 0; d < t[i].ndim; d++)
                        count *= t[i].shape[d];
                t[i].nbytes = count * tensor_dtype_size(t[i].dtype);
                sb_printf(&b, ",");
                sb_json_string(&b, t[i].name);
                sb_printf(&b, ":{\"dtype\":\"%s\",\"shape\":[", tensor_dtype_name(t[i].dtype));
                for (uint32_t d = 0; d < t[i].ndim; d++)
                        sb_printf(&b, "%s%" PRIu64, d ? "," : "", t[i].shape[d]);
                sb_printf(&b, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", off, off + t[i].nbytes);
                t[i].file_offset = off;         /* relative for now */
                off += t[i].nbytes;
        }
        sb_printf(&b, "}");
        while (!b.oom && b.len % 8)
                sb_printf(&b, " ");
        if (b.oom) {
                free(b.s);
                return -ENOMEM;
        }
        prefix_len = b.len;
        json_len = prefix_len - 8;
        for (int i = 0; i < 8; i++)
                b.s[i] = (char) ((json_len >> (8 * i)) & 0xff);
        for (size_t i = 0; i < n; i++)
                t[i].file_offset += prefix_len;
        *ret_prefix = b.s;
        *ret_prefix_len = prefix_len;
        *ret_file_size = prefix_len + off;
        return 0;
}

int st_pwrite_all(int fd, const void *buf, uint64_t len, uint64_t off) {
        const char *p = buf;

        while (len > 0) {
                ssize_t k = pwrite(fd, p, len > (1u << 30) ? (1u << 30) : (size_t) len, (off_t) off);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                p += k;
                len -= (uint64_t) k;
                off += (uint64_t) k;
        }
        return 0;
}

int st_write_file(const char *path, struct st_out_tensor *t, size_t n, char **reterr) {
        char *prefix = NULL;
        uint64_t prefix_len, file_size;
        int fd, r;

        r = st_layout_build(t, n, &prefix, &prefix_len, &file_size);
        if (r < 0)
                return model_error(reterr, r, "%s: cannot build header: %s", path, strerror(-r));
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) {
                r = -errno;
                free(prefix);
                return model_error(reterr, r, "%s: cannot create: %s", path, strerror(-r));
        }
        r = st_pwrite_all(fd, prefix, prefix_len, 0);
        for (size_t i = 0; r >= 0 && i < n; i++)
                if (t[i].nbytes)
                        r = st_pwrite_all(fd, t[i].data, t[i].nbytes, t[i].file_offset);
        free(prefix);
        if (close(fd) < 0 && r >= 0)
                r = -errno;
        if (r < 0)
                return model_error(reterr, r, "%s: write failed: %s", path, strerror(-r));
        return 0;
}
