/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/* Internals of libgemmaclient shared by its source files (not installed). */
#include <stdbool.h>

#include "gemmaclient.h"
#include "proto.h"

struct gc_params {
        struct proto_params p;       /* stop strings owned */
};

struct gc_tool_call {
        char *name;
        char *arguments;
        char *call_id;               /* "" when the daemon gave none */
};

struct gc_result {
        char *text;                  /* always NUL-terminated, never NULL */
        size_t text_len, text_cap;
        char *reasoning;
        size_t reasoning_len, reasoning_cap;
        int32_t *ids;
        size_t n_ids, cap_ids;
        struct proto_token_logprob *lp;   /* owned, tops too */
        size_t n_lp, cap_lp;
        struct gc_tool_call *tools;
        size_t n_tools;
        enum gc_finish finish;
        int error;
        char *error_message;         /* never NULL */
        bool started;
        struct proto_usage usage;
        struct proto_timings timings;
        uint32_t preempted;
        char *json;                  /* status reply */
};

struct gc_event {
        enum gc_event_type type;
        const struct proto_msg *msg; /* NULL for FINISHED */
        gc_result *result;
        bool stolen;
};

gc_result *result_new(void);
int result_append_delta(gc_result *r, const struct proto_delta *d);
int result_add_tool_call(gc_result *r, const struct proto_tool_call *t);
int result_set_ids(gc_result *r, const int32_t *ids, size_t n);
int result_set_logprobs(gc_result *r, const struct proto_token_logprob *lp, size_t n);
int result_set_text(gc_result *r, const char *s);
void result_set_error(gc_result *r, int err, const char *message);

/* GC_E* code of a protocol error code. */
int gc_code_from_proto(enum proto_code code);
