/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/* gemma4ctl: shared pieces of the subcommands. */
#include <stdbool.h>
#include <stdio.h>

#include <jansson.h>

#include "gemmaclient.h"

/* Exit codes, documented in gemma4ctl(1). */
enum {
        EXIT_OK = 0,
        EXIT_FAILURE_OTHER = 1,      /* anything not listed below */
        EXIT_USAGE = 2,              /* bad command line */
        EXIT_NOT_RUNNING = 3,        /* no daemon listens on the socket */
        EXIT_OVERLOADED = 4,         /* the daemon refused: queue full */
        EXIT_BAD_REQUEST = 5,        /* the daemon rejected the request (bad_request, too_long, ...) */
        EXIT_CANCELLED = 6,          /* cancelled (Ctrl-C) */
        EXIT_DEADLINE = 7,           /* --deadline-ms passed */
        EXIT_PROTOCOL = 8,           /* protocol version mismatch or undecodable answer */
        EXIT_NOT_READY = 9,          /* the model is still loading */
        EXIT_DAEMON_ERROR = 10,      /* the daemon failed or went away during the request */
};

struct ctl {
        const char *socket;          /* --socket (colon-separated list), NULL: GEMMA4D_SOCKET or default */
        bool json;                   /* --json */
        int timeout_ms;              /* connect/handshake timeout */
};

/* Exit code for a libgemmaclient error code. */
int ctl_exit_code(int err);
/* Print "gemma4ctl: WHAT: message" for err and return its exit code. */
int ctl_fail(const char *what, int err);
/* Connect with the global options; prints the error. Returns 0 or an exit code. */
int ctl_connect(const struct ctl *ctl, gc_client **ret);

/* Sampling options shared by generate, chat and bench: getopt_long entries with val >= CTL_OPT_PARAM. */
#define CTL_OPT_PARAM 1000
extern const char *const ctl_param_names[];
extern const size_t ctl_n_params;
/* Append the sampling options to an option table (which must have room). Returns the new count. */
size_t ctl_add_param_options(void *long_options, size_t n);
/* Apply an option with val >= CTL_OPT_PARAM; prints an error and returns EXIT_USAGE on a bad value. */
int ctl_apply_param(gc_params *p, int val, const char *arg);
void ctl_print_param_help(FILE *f);

/* Read all of a stream into a NUL-terminated string. -ENOMEM, -EIO, -EINVAL for NUL bytes. */
int ctl_read_all(FILE *f, char **ret);
/* Join argv[0..argc) with spaces. NULL on allocation failure. */
char *ctl_join_args(int argc, char **argv);
/* The result as a JSON object (text, reasoning, finish_reason, error, usage, timings, tool_calls). */
json_t *ctl_result_json(const gc_result *r);
/* Print a JSON value to stdout with a newline. */
void ctl_print_json(json_t *j);
double ctl_now_ms(void);

int cmd_chat(const struct ctl *ctl, int argc, char **argv);
int cmd_bench(const struct ctl *ctl, int argc, char **argv);

#include <signal.h>
extern volatile sig_atomic_t ctl_interrupted;
/* SIGINT sets ctl_interrupted (and interrupts waits) while on; default disposition when off. */
void ctl_catch_sigint(bool on);
/* Wait until *done, cancelling *req on the first Ctrl-C. Returns 0 or a client error. */
int ctl_wait(gc_client *c, gc_request *const *req, const bool *done);
