/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * Private to daemon/model/: the safetensors reader and writer and the error-message helper shared by the
 * loader's files. Tools and tests that write checkpoints use the writer half as well.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"

/* safetensors' own bound on the JSON header length. */
#define ST_MAX_HEADER_LEN 100000000ULL
/* Dimensions a tensor may have in a file we read (model tensors use at most 3). */
#define ST_MAX_DIMS 8

/* Sets *reterr (when non-NULL) to a formatted, heap-allocated message and returns r (negative). */
int model_error(char **reterr, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

enum tensor_dtype tensor_dtype_from_name(const char *name);

/* Adds generation_config.json's eos_token_id (an id or a list) to cfg->stop_ids. A missing file is fine;
 * a malformed one is an error naming it. */
/* model_config_parse_file on a buffer; name stands for the path in messages and the model name. */
int model_config_parse_buffer(const char *name, const char *buf, size_t len, struct model_config *ret_cfg,
                              struct quant_config *ret_quant, char **reterr);
int model_config_merge_generation(const char *path, struct model_config *cfg, char **reterr);

struct st_tensor {
        char *name;
        enum tensor_dtype dtype;
        uint32_t ndim;
        uint64_t shape[ST_MAX_DIMS];
        uint64_t begin, end;            /* relative to the data section */
        const void *data;               /* into the file's mapping */
        const struct st_file *file;
};

struct st_file {
        char *path;
        void *map;
        uint64_t size;
        uint64_t header_len;
        struct st_tensor *tensors;      /* in header order */
        size_t n_tensors;
        bool mapped;                    /* map is ours to munmap */
};

/* Maps and validates one .safetensors file. Errors name the file and, where one is at fault, the tensor. */
int st_file_open(const char *path, struct st_file **ret, char **reterr);
struct st_file *st_file_close(struct st_file *f);
/* The same validation of a file image in memory (not copied: data must outlive the result). */
int st_file_parse(const char *name, const void *data, uint64_t size, struct st_file **ret, char **reterr);

/* ---- writer: shared by gemma4-mkmodel and the tests ---- */

struct st_out_tensor {
        const char *name;               /* not copied */
        enum tensor_dtype dtype;
        uint32_t ndim;
        uint64_t shape[4];
        uint64_t nbytes;                /* filled by st_layout_build */
        uint64_t file_offset;           /* absolute offset in the file, filled by st_layout_build */
        const void *data;               /* for st_write_file; the streaming writer ignores it */
};

/* Orders tensors as the reference writer does (dtype size descending, then name), assigns offsets, and
 * builds the header: 8-byte little-endian length + JSON padded with spaces to a multiple of 8.
 * *ret_prefix (heap) holds length + JSON; *ret_prefix_len is its size, *ret_file_size the total size. */
int st_layout_build(struct st_out_tensor *t, size_t n, char **ret_prefix, uint64_t *ret_prefix_len,
                    uint64_t *ret_file_size);

/* pwrite() until done (EINTR and short writes handled). */
int st_pwrite_all(int fd, const void *buf, uint64_t len, uint64_t off);

/* Writes a whole file from in-memory tensors (t[i].data must hold t[i].nbytes bytes). Reorders t. */
int st_write_file(const char *path, struct st_out_tensor *t, size_t n, char **reterr);
