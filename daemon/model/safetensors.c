/* SPDX-License-Identifier: Apache-2.0 */
/*
 * safetensors reader. A file is mapped read-only and its header is validated completely before any view
 * is handed out: 8-byte little-endian header length within bounds, well-formed JSON, known dtypes, shape
 * products that match the byte ranges without overflowing, offsets inside the data section, and no two
 * tensors sharing bytes. Everything a file says is treated as hostile.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model-internal.h"

int model_error(char **reterr, int r, const char *fmt, ...) {
        va_list ap;
        char *s = NULL;

        if (reterr) {
                va_start(ap, fmt);
                if (vasprintf(&s, fmt, ap) < 0)
                        s = NULL;
                va_end(ap);
                /* Overwrite, never free: callers may pass an uninitialized pointer, and every error
                 * path sets the message exactly once. */
                *reterr = s;
        }
        return r;
}

struct st_file *st_file_close(struct st_file *f) {
        if (!f)
                return NULL;
        for (size_t i = 0; i < f->n_tensors; i++)
                free(f->tensors[i].name);
        free(f->tensors);
        if (f->map && f->mapped)
                munmap(f->map, f->size);
        free(f->path);
        free(f);
        return NULL;
}

/* A JSON number that must be a non-negative integer. */
static int json_get_u64(const json_t *v, uint64_t *ret) {
        json_int_t i;

        if (!json_is_integer(v))
                return -EINVAL;
        i = json_integer_value(v);
        if (i < 0)
                return -EINVAL;
        *ret = (uint64_t) i;
        return 0;
}

static int parse_tensor(struct st_file *f, const char *name, json_t *obj, uint64_t data_size,
                        struct st_tensor *t, char **reterr) {
        const char *path = f->path;
        json_t *jdtype, *jshape, *joff;
        uint64_t count = 1, nbytes, begin, end;
        size_t i;

        if (!json_is_object(obj))
                return model_error(reterr, -EINVAL, "%s: tensor '%s': entry is not a JSON object", path,
                                   name);
        jdtype = json_object_get(obj, "dtype");
        jshape = json_object_get(obj, "shape");
        joff = json_object_get(obj, "data_offsets");
        if (!jdtype)
                return model_error(reterr, -EINVAL, "%s: tensor '%s': missing \"dtype\"", path, name);
        if (!json_is_string(jdtype))
                return model_error(reterr, -EINVAL, "%s: tensor '%s': \"dtype\" is not a string", path,
                                   name);
        if (!jshape)
                return model_error(reterr, -EINVAL, "%s: tensor '%s': missing \"shape\"", path, name);
        if (!joff)
                return model_error(reterr, -EINVAL, "%s: tensor '%s': missing \"data_offsets\"", path, name);

        t->dtype = tensor_dtype_from_name(json_string_value(jdtype));
        if (t->dtype == TENSOR_DTYPE_INVALID)
                return model_error(reterr, -ENOTSUP, "%s: tensor '%s': unsupported dtype %.32s", path, name,
                                   json_string_value(jdtype));

        if (!json_is_array(jshape))
                return model_error(reterr, -EINVAL, "%s: tensor '%s': \"shape\" is not an array", path,
                                   name);
        if (json_array_size(jshape) > ST_MAX_DIMS)
                return model_error(reterr, -EINVAL, "%s: tensor '%s': %zu dimensions (at most %d supported)",
                                   path, name, json_array_size(jshape), ST_MAX_DIMS);
        t->ndim = (uint32_t) json_array_size(jshape);
        for (i = 0; i < t->ndim; i++) {
                if (json_get_u64(json_array_get(jshape, i), &t->shape[i]) < 0)
                        return model_error(reterr, -EINVAL,
                                           "%s: tensor '%s': shape[%zu] is not a non-negative integer",
                                           path, name, i);
                if (__builtin_mul_overflow(count, t->shape[i], &count))
                        return model_error(reterr, -EOVERFLOW, "%s: tensor '%s': shape product overflows",
                                           path, name);
        }
        if (__builtin_mul_overflow(count, (uint64_t) tensor_dtype_size(t->dtype), &nbytes))
                return model_error(reterr, -EOVERFLOW, "%s: tensor '%s': byte size overflows", path, name);

        if (!json_is_array(joff) || json_array_size(joff) != 2 ||
            json_get_u64(json_array_get(joff, 0), &begin) < 0 ||
            json_get_u64(json_array_get(joff, 1), &end) < 0)
                return model_error(
                        reterr, -EINVAL,
                        "%s: tensor '%s': \"data_offsets\" must be [begin, end] of non-negative integers",
                        path, name);
        if (end < begin)
                return model_error(reterr, -EINVAL, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                                   "] end before begin", path, name, begin, end);
        if (end > data_size)
                return model_error(reterr, -EINVAL,
                                   "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                                   "] out of bounds: the data section has %" PRIu64
                                   " bytes (file truncated?)",
                                   path, name, begin, end, data_size);
        if (end - begin != nbytes)
                return model_error(reterr, -EINVAL, "%s: tensor '%s': %s shape needs %" PRIu64
                                   " bytes but data_offsets [%" PRIu64 ", %" PRIu64 "] hold %" PRIu64,
                                   path, name, tensor_dtype_name(t->dtype), nbytes, begin, end, end - begin);
        t->begin = begin;
        t->end = end;
        t->name = strdup(name);
        if (!t->name)
                return model_error(reterr, -ENOMEM, "out of memory");
        t->file = f;
        return 0;
}

static int cmp_by_begin(const void *a, const void *b) {
        const struct st_tensor *x = *(const struct st_tensor *const *) a,
                               *y = *(const struct st_tensor *const *) b;
        if (x->begin != y->begin)
                return x->begin < y->begin ? -1 : 1;
        return x->end < y->end ? -1 : x->end > y->end;
}

static int check_overlaps(struct st_file *f, char **reterr) {
        struct st_tensor **order;
        const struct st_tensor *prev = NULL;
        int r = 0;

        if (f->n_tensors < 2)
                return 0;
        order = calloc(f->n_tensors, sizeof(*order));
        if (!order)
                return model_error(reterr, -ENOMEM, "out of memory");
        for (size_t i = 0; i < f->n_tensors; i++)
                order[i] = &f->tensors[i];
        qsort(order, f->n_tensors, sizeof(*order), cmp_by_begin);
        for (size_t i = 0; i < f->n_tensors; i++) {
                const struct st_tensor *t = order[i];
                if (t->begin == t->end)
                        continue;               /* empty tensors occupy no bytes */
                if (prev && t->begin < prev->end) {
                        r = model_error(reterr, -EINVAL,
                                        "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                                        "] overlap tensor '%s' [%" PRIu64 ", %" PRIu64 "]",
                                        f->path, t->name, t->begin, t->end, prev->name, prev->begin,
                                        prev->end);
                        break;
                }
                prev = t;
        }
        free(order);
        return r;
}

static int parse_header(struct st_file *f, char **reterr) {
        const uint8_t *base = f->map;
        uint64_t data_size = f->size - 8 - f->header_len;
        json_error_t jerr;
        json_t *root;
        const char *key;
        json_t *value;
        size_t n = 0;
        int r = 0;

        root = json_loadb((const char *) base + 8, f->header_len, JSON_REJECT_DUPLICATES, &jerr);
        if (!root)
                return model_error(reterr, -EINVAL, "%s: header is not valid JSON (byte %d: %s)", f->path,
                                   jerr.position, jerr.text);
        if (!json_is_object(root)) {
                json_decref(root);
                return model_error(reterr, -EINVAL, "%s: header is not a JSON object", f->path);
        }
        f->tensors = calloc(json_object_size(root) + 1, sizeof(*f->tensors));
        if (!f->tensors) {
                json_decref(root);
                return model_error(reterr, -ENOMEM, "out of memory");
        }
        json_object_foreach(root, key, value) {
                if (strcmp(key, "__metadata__") == 0)
                        continue;
                r = parse_tensor(f, key, value, data_size, &f->tensors[n], reterr);
                if (r < 0)
                        break;
                f->tensors[n].data = base + 8 + f->header_len + f->tensors[n].begin;
                n++;
                f->n_tensors = n;
        }
        json_decref(root);
        if (r < 0)
                return r;
        return check_overlaps(f, reterr);
}

/* Header length, then the header, of a file already in memory (f->map, f->size >= 8). */
static int parse_file(struct st_file *f, char **reterr) {
        uint64_t len = 0;

        for (int i = 7; i >= 0; i--)
                len = (len << 8) | ((const uint8_t *) f->map)[i];
        if (len > ST_MAX_HEADER_LEN)
                return model_error(reterr, -EINVAL,
                                   "%s: header length %" PRIu64 " exceeds the %llu-byte limit", f->path, len,
                                   ST_MAX_HEADER_LEN);
        if (len > f->size - 8)
                return model_error(reterr, -EINVAL, "%s: header length %" PRIu64
                                   " exceeds the file size %" PRIu64 " (truncated?)", f->path, len, f->size);
        f->header_len = len;
        return parse_header(f, reterr);
}

int st_file_open(const char *path, struct st_file **ret, char **reterr) {
        struct st_file *f;
        struct stat st;
        int fd, r;

        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return model_error(reterr, -errno, "%s: cannot open: %s", path, strerror(errno));
        if (fstat(fd, &st) < 0) {
                r = -errno;
                close(fd);
                return model_error(reterr, r, "%s: cannot stat: %s", path, strerror(-r));
        }
        if (!S_ISREG(st.st_mode)) {
                close(fd);
                return model_error(reterr, -EINVAL, "%s: not a regular file", path);
        }
        if (st.st_size < 8) {
                close(fd);
                return model_error(reterr, -EINVAL,
                                   "%s: truncated: %lld bytes, too short for the header length", path,
                                   (long long) st.st_size);
        }
        f = calloc(1, sizeof(*f));
        if (!f) {
                close(fd);
                return model_error(reterr, -ENOMEM, "out of memory");
        }
        f->path = strdup(path);
        f->size = (uint64_t) st.st_size;
        f->map = mmap(NULL, f->size, PROT_READ, MAP_SHARED, fd, 0);
        r = -errno;
        close(fd);
        if (f->map == MAP_FAILED) {
                f->map = NULL;
                st_file_close(f);
                return model_error(reterr, r, "%s: mmap failed: %s", path, strerror(-r));
        }
        f->mapped = true;
        if (!f->path) {
                st_file_close(f);
                return model_error(reterr, -ENOMEM, "out of memory");
        }
        r = parse_file(f, reterr);
        if (r < 0) {
                st_file_close(f);
                return r;
        }
        *ret = f;
        return 0;
}

int st_file_parse(const char *name, const void *data, uint64_t size, struct st_file **ret, char **reterr) {
        struct st_file *f;
        int r;

        if (size < 8)
                return model_error(reterr, -EINVAL,
                                   "%s: truncated: %" PRIu64 " bytes, too short for the header length", name,
                                   size);
        f = calloc(1, sizeof(*f));
        if (!f)
                return model_error(reterr, -ENOMEM, "out of memory");
        f->path = strdup(name);
        f->map = (void *) data;
        f->size = size;
        if (!f->path) {
                st_file_close(f);
                return model_error(reterr, -ENOMEM, "out of memory");
        }
        r = parse_file(f, reterr);
        if (r < 0) {
                st_file_close(f);
                return r;
        }
        *ret = f;
        return 0;
}
