/* SPDX-License-Identifier: Apache-2.0 */
/* gemma4ctl: error reporting, sampling options, JSON of results, small I/O helpers. */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctl.h"

int ctl_exit_code(int err) {
        switch (err) {
        case 0:
                return EXIT_OK;
        case GC_ENOTRUNNING:
                return EXIT_NOT_RUNNING;
        case GC_EOVERLOADED:
                return EXIT_OVERLOADED;
        case GC_EBADREQUEST:
        case GC_ETOOLONG:
        case GC_EFRAMETOOLARGE:
        case GC_EUNSUPPORTED:
                return EXIT_BAD_REQUEST;
        case GC_ECANCELLED:
                return EXIT_CANCELLED;
        case GC_EDEADLINE:
                return EXIT_DEADLINE;
        case GC_EVERSION:
        case GC_EPROTO:
        case GC_EUNKNOWN:
                return EXIT_PROTOCOL;
        case GC_ENOTREADY:
                return EXIT_NOT_READY;
        case GC_EINTERNAL:
        case GC_EDISCONNECTED:
        case GC_ESHUTDOWN:
        case -ECONNRESET:
        case -EPIPE:
                return EXIT_DAEMON_ERROR;
        default:
                return EXIT_FAILURE_OTHER;
        }
}

int ctl_fail(const char *what, int err) {
        fprintf(stderr, "gemma4ctl: %s: %s\n", what, gc_strerror(err));
        return ctl_exit_code(err);
}

int ctl_connect(const struct ctl *ctl, gc_client **ret) {
        const char *path = ctl->socket;
        int r;

        if (!path || !*path) {
                path = getenv("GEMMA4D_SOCKET");
                if (!path || !*path)
                        path = GC_DEFAULT_SOCKET;
        }
        r = gc_client_new(ret, path, ctl->timeout_ms);
        if (r < 0) {
                fprintf(stderr, "gemma4ctl: cannot connect to %s: %s\n", path, gc_strerror(r));
                if (r == GC_ENOTRUNNING)
                        fprintf(stderr, "gemma4ctl: is gemma4d running? (systemctl status gemma4d@0)\n");
                return ctl_exit_code(r);
        }
        return 0;
}

/* Sampling options: --max-tokens N etc.; the option name is the protocol name with '-' for '_'. */
const char *const ctl_param_names[] = {
        "max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
        "frequency_penalty", "seed", "stop", "logprobs", "priority", "deadline_ms",
};
const size_t ctl_n_params = sizeof(ctl_param_names) / sizeof(ctl_param_names[0]);

static char option_names[sizeof(ctl_param_names) / sizeof(ctl_param_names[0])][32];

size_t ctl_add_param_options(void *long_options, size_t n) {
        struct option *o = long_options;

        for (size_t i = 0; i < ctl_n_params; i++) {
                snprintf(option_names[i], sizeof(option_names[i]), "%s", ctl_param_names[i]);
                for (char *s = option_names[i]; *s; s++)
                        if (*s == '_')
                                *s = '-';
                o[n++] = (struct option) { option_names[i], required_argument, NULL, CTL_OPT_PARAM + (int) i };
        }
        o[n] = (struct option) {};
        return n;
}

int ctl_apply_param(gc_params *p, int val, const char *arg) {
        size_t i = (size_t) (val - CTL_OPT_PARAM);
        int r;

        if (i >= ctl_n_params)
                return EXIT_USAGE;
        r = gc_params_set(p, ctl_param_names[i], arg);
        if (r < 0) {
                fprintf(stderr, "gemma4ctl: bad value for %s: '%s' (see gemma4ctl(1) for the ranges)\n",
                        ctl_param_names[i], arg);
                return EXIT_USAGE;
        }
        return 0;
}

void ctl_print_param_help(FILE *f) {
        fputs("Sampling options:\n"
              "  --max-tokens N          at most N output tokens (1..1048576)\n"
              "  --temperature T         0 = greedy .. 100\n"
              "  --top-p P  --top-k K  --min-p P\n"
              "  --repetition-penalty X  --presence-penalty X  --frequency-penalty X\n"
              "  --seed N                reproducible sampling\n"
              "  --stop TEXT             stop string (repeatable, up to 16)\n"
              "  --logprobs N            -1 none, 0 sampled token, N top alternatives (<= 20)\n"
              "  --priority N            -20 (first) .. 19 (last)\n"
              "  --deadline-ms MS        give up after MS milliseconds\n", f);
}

int ctl_read_all(FILE *f, char **ret) {
        size_t len = 0, cap = 4096;
        char *buf = malloc(cap), *nb;

        if (!buf)
                return -ENOMEM;
        for (;;) {
                size_t n;

                if (cap - len < 2) {
                        nb = realloc(buf, cap * 2);
                        if (!nb) {
                                free(buf);
                                return -ENOMEM;
                        }
                        buf = nb;
                        cap *= 2;
                }
                n = fread(buf + len, 1, cap - len - 1, f);
                len += n;
                if (n == 0)
                        break;
        }
        if (ferror(f)) {
                free(buf);
                return -EIO;
        }
        buf[len] = 0;
        if (strlen(buf) != len) {
                free(buf);
                return -EINVAL;
        }
        *ret = buf;
        return 0;
}

char *ctl_join_args(int argc, char **argv) {
        size_t len = 1;
        char *s;

        for (int i = 0; i < argc; i++)
                len += strlen(argv[i]) + 1;
        s = malloc(len);
        if (!s)
                return NULL;
        s[0] = 0;
        for (int i = 0; i < argc; i++) {
                if (i)
                        strcat(s, " ");
                strcat(s, argv[i]);
        }
        return s;
}

json_t *ctl_result_json(const gc_result *r) {
        json_t *tools = json_array(), *ids = json_array();
        size_t n;
        const int32_t *tok = gc_result_token_ids(r, &n);

        for (size_t i = 0; i < gc_result_tool_call_count(r); i++) {
                json_t *args = json_loads(gc_result_tool_call_arguments(r, i), 0, NULL);

                json_array_append_new(tools, json_pack("{s:s, s:s, s:o}",
                                                       "id", gc_result_tool_call_id(r, i),
                                                       "name", gc_result_tool_call_name(r, i),
                                                       "arguments", args ? args : json_object()));
        }
        for (size_t i = 0; i < n; i++)
                json_array_append_new(ids, json_integer(tok[i]));
        return json_pack("{s:s, s:s, s:s, s:o, s:{s:I, s:I, s:I}, s:{s:f, s:f, s:f}, s:I, s:o, s:o}",
                         "text", gc_result_text(r),
                         "reasoning", gc_result_reasoning(r),
                         "finish_reason", gc_result_finish_string(r),
                         "error", gc_result_error(r) ?
                                  json_pack("{s:s, s:s}", "code", gc_err_name(gc_result_error(r)),
                                            "message", gc_result_error_message(r)) : json_null(),
                         "usage",
                         "prompt_tokens", (json_int_t) gc_result_prompt_tokens(r),
                         "cached_tokens", (json_int_t) gc_result_cached_tokens(r),
                         "completion_tokens", (json_int_t) gc_result_completion_tokens(r),
                         "timings",
                         "queue_ms", gc_result_queue_ms(r),
                         "ttft_ms", gc_result_ttft_ms(r),
                         "per_token_ms", gc_result_per_token_ms(r),
                         "preempted", (json_int_t) gc_result_preempted(r),
                         "tool_calls", tools,
                         "token_ids", ids);
}

void ctl_print_json(json_t *j) {
        if (!j) {
                fputs("null\n", stdout);
                return;
        }
        json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        fputc('\n', stdout);
        fflush(stdout);
}

double ctl_now_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec * 1e3 + (double) ts.tv_nsec / 1e6;
}
