/* SPDX-License-Identifier: Apache-2.0 */
/* gemma4ctl: command line of gemma4d. See gemma4ctl(1). */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "build-config.h"
#include "ctl.h"

volatile sig_atomic_t ctl_interrupted;

static void on_sigint(int sig) {
        ctl_interrupted = 1;
}

void ctl_catch_sigint(bool on) {
        struct sigaction sa = { .sa_handler = on ? on_sigint : SIG_DFL };

        /* No SA_RESTART: the wait in gc_client_wait() returns -EINTR so we can cancel. */
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        ctl_interrupted = 0;
}

/* Wait until *done, cancelling *req once on Ctrl-C. Returns 0 or a client error. */
int ctl_wait(gc_client *c, gc_request *const *req, const bool *done) {
        bool cancelled = false;

        while (!*done) {
                int r = gc_client_wait(c, -1);

                if (r == -EINTR || ctl_interrupted) {
                        if (ctl_interrupted && !cancelled && !*done) {
                                gc_cancel(*req);
                                cancelled = true;
                        }
                        continue;
                }
                if (r < 0)
                        return r;
        }
        return 0;
}

struct gen_state {
        bool done;
        bool stream_out;
        bool tty;
        bool in_reasoning;
        gc_request *req;
        gc_result *result;
};

static int gen_cb(gc_request *req, enum gc_event_type type, const gc_event *ev, void *userdata) {
        struct gen_state *s = userdata;

        if (type == GC_EVENT_DELTA && s->stream_out) {
                const char *reasoning = gc_event_reasoning(ev), *content = gc_event_content(ev);

                if (*reasoning) {
                        fprintf(stderr, "%s%s", s->tty ? "\033[2m" : "", reasoning);
                        if (s->tty)
                                fputs("\033[0m", stderr);
                        fflush(stderr);
                }
                if (*content) {
                        fputs(content, stdout);
                        fflush(stdout);
                }
        }
        if (type == GC_EVENT_FINISHED) {
                s->result = gc_event_steal_result(ev);
                s->done = true;
        }
        return 0;
}

static void usage_generate(FILE *f) {
        fputs("Usage: gemma4ctl [--socket PATH] [--json] generate [OPTIONS] [PROMPT...]\n"
              "Complete PROMPT (the arguments, or standard input when there are none) as raw text.\n\n", f);
        ctl_print_param_help(f);
}

static int cmd_generate(const struct ctl *ctl, int argc, char **argv) {
        struct option opts[32] = { { "help", no_argument, NULL, 'h' } };
        struct gen_state s = { .stream_out = !ctl->json, .tty = isatty(STDERR_FILENO) };
        gc_client *c = NULL;
        gc_params *p = NULL;
        char *prompt = NULL;
        int r, ret, o;

        ctl_add_param_options(opts, 1);
        if (gc_params_new(&p) < 0)
                return ctl_fail("generate", -ENOMEM);
        optind = 1;
        while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
                if (o == 'h') {
                        usage_generate(stdout);
                        gc_params_free(p);
                        return EXIT_OK;
                }
                if (o < CTL_OPT_PARAM || ctl_apply_param(p, o, optarg) != 0) {
                        if (o < CTL_OPT_PARAM)
                                usage_generate(stderr);
                        gc_params_free(p);
                        return EXIT_USAGE;
                }
        }
        if (optind < argc)
                prompt = ctl_join_args(argc - optind, argv + optind);
        else if (ctl_read_all(stdin, &prompt) < 0)
                prompt = NULL;
        if (!prompt) {
                gc_params_free(p);
                return ctl_fail("reading the prompt", -EIO);
        }
        ret = ctl_connect(ctl, &c);
        if (ret != 0)
                goto out;
        ctl_catch_sigint(true);
        r = gc_generate_start(c, prompt, p, gen_cb, &s, &s.req);
        if (r == 0)
                r = ctl_wait(c, &s.req, &s.done);
        ctl_catch_sigint(false);
        if (r < 0) {
                ret = ctl_fail("generate", r);
                goto out;
        }
        r = gc_result_error(s.result);
        if (ctl->json) {
                json_t *j = ctl_result_json(s.result);

                ctl_print_json(j);
                json_decref(j);
        } else if (!r && gc_result_text(s.result)[0])
                fputc('\n', stdout);
        if (r) {
                const char *msg = gc_result_error_message(s.result);

                if (!ctl->json && gc_result_text(s.result)[0])
                        fputc('\n', stdout);
                fprintf(stderr, "gemma4ctl: generate: %s\n", *msg ? msg : gc_strerror(r));
        }
        ret = ctl_exit_code(r);
out:
        gc_result_free(s.result);
        gc_client_free(c);
        gc_params_free(p);
        free(prompt);
        return ret;
}

/* ---- status ---- */

/* How long status --wait waits for a socket to appear (a daemon starting up). */
#define WAIT_START_MS (10 * 60 * 1000.0)

static void print_bar(double progress, const char *phase, bool tty) {
        int width = 30, filled;

        if (progress < 0)
                progress = 0;
        if (progress > 1)
                progress = 1;
        filled = (int) (progress * width + 0.5);
        printf("%sloading [", tty ? "\r" : "");
        for (int i = 0; i < width; i++)
                putchar(i < filled ? '#' : '.');
        /* Pad the phase so a shorter one fully overwrites the last on a terminal. */
        printf("] %3.0f%% %-32.32s%s", progress * 100.0, phase, tty ? "" : "\n");
        fflush(stdout);
}

static json_t *welcome_json(gc_client *c, size_t i) {
        static const struct {
                const char *key;
                enum gc_info info;
        } strs[] = {
                { "server_version", GC_INFO_SERVER_VERSION }, { "model", GC_INFO_MODEL },
                { "architecture", GC_INFO_ARCHITECTURE }, { "backend", GC_INFO_BACKEND },
                { "device", GC_INFO_DEVICE },
        }, nums[] = {
                { "max_model_len", GC_INFO_MAX_MODEL_LEN }, { "max_frame_bytes", GC_INFO_MAX_FRAME_BYTES },
                { "max_inflight", GC_INFO_MAX_INFLIGHT }, { "max_num_seqs", GC_INFO_MAX_NUM_SEQS },
                { "max_queue", GC_INFO_MAX_QUEUE }, { "kv_tokens", GC_INFO_KV_TOKENS },
                { "kv_seqs_32k", GC_INFO_KV_SEQS_32K }, { "proto", GC_INFO_PROTO },
        };
        json_t *j = json_object();

        for (size_t k = 0; k < sizeof(strs) / sizeof(strs[0]); k++) {
                const char *v = gc_client_info_str(c, i, strs[k].info);

                json_object_set_new(j, strs[k].key, v ? json_string(v) : json_null());
        }
        for (size_t k = 0; k < sizeof(nums) / sizeof(nums[0]); k++)
                json_object_set_new(j, nums[k].key, json_integer((json_int_t) gc_client_info_num(c, i, nums[k].info)));
        return j;
}

static void print_flat(const char *prefix, json_t *v) {
        const char *key;
        json_t *sub;
        char name[256];

        if (json_is_object(v)) {
                json_object_foreach(v, key, sub) {
                        snprintf(name, sizeof(name), "%s%s%s", prefix, *prefix ? "." : "", key);
                        print_flat(name, sub);
                }
                return;
        }
        char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(6));

        if (json_is_string(v))
                printf("  %-24s %s\n", prefix, json_string_value(v));
        else
                printf("  %-24s %s\n", prefix, s ? s : "?");
        free(s);
}

/* One status of daemon i: 0 and *ret (a JSON object) or an error. */
static int fetch_status(gc_client *c, size_t i, json_t **ret) {
        char *text = NULL;
        json_t *j;
        int r = gc_status(c, i, &text);

        if (r < 0)
                return r;
        j = json_loads(text, 0, NULL);
        gc_free(text);
        if (!json_is_object(j)) {
                json_decref(j);
                return GC_EPROTO;
        }
        *ret = j;
        return 0;
}

/*
 * A daemon that is loading says state "loading" and its progress either as loading.percent (0..100, with
 * loading.phase) or as load_progress (0..1).
 */
static bool is_loading(json_t *st, double *ret_progress) {
        const char *state = json_string_value(json_object_get(st, "state"));
        json_t *pct = json_object_get(json_object_get(st, "loading"), "percent");
        json_t *p = json_object_get(st, "load_progress");

        *ret_progress = json_is_number(pct) ? json_number_value(pct) / 100.0 :
                        json_is_number(p) ? json_number_value(p) : 0;
        return state && strcmp(state, "loading") == 0;
}

static const char *load_phase(json_t *st) {
        const char *phase = json_string_value(json_object_get(json_object_get(st, "loading"), "phase"));

        return phase ? phase : "";
}

static int cmd_status(const struct ctl *ctl, int argc, char **argv) {
        static const struct option opts[] = {
                { "wait", no_argument, NULL, 'w' }, { "help", no_argument, NULL, 'h' }, {},
        };
        bool wait = false, tty = isatty(STDOUT_FILENO);
        json_t *all = json_array();
        gc_client *c = NULL;
        int ret = EXIT_OK, o;

        optind = 1;
        while ((o = getopt_long(argc, argv, "wh", opts, NULL)) != -1) {
                if (o == 'w')
                        wait = true;
                else if (o == 'h') {
                        puts("Usage: gemma4ctl [--socket PATH] [--json] status [--wait]\n"
                             "Show each daemon's state; --wait shows loading progress until it is ready.");
                        json_decref(all);
                        return EXIT_OK;
                } else {
                        json_decref(all);
                        return EXIT_USAGE;
                }
        }
        if (wait) {
                /*
                 * A daemon that is starting may not listen yet (gemma4d binds its socket once the
                 * configuration is loaded; with socket activation it exists from the start): retry.
                 */
                const char *path = ctl->socket && *ctl->socket ? ctl->socket : getenv("GEMMA4D_SOCKET");
                double end = ctl_now_ms() + WAIT_START_MS;
                bool said = false;
                int r;

                while ((r = gc_client_new(&c, path, ctl->timeout_ms)) == GC_ENOTRUNNING && ctl_now_ms() < end) {
                        if (!said && !ctl->json)
                                fprintf(stderr, "gemma4ctl: waiting for the daemon to listen...\n");
                        said = true;
                        usleep(200 * 1000);
                }
                if (r < 0) {
                        json_decref(all);
                        return ctl_fail("status", r);
                }
        } else {
                ret = ctl_connect(ctl, &c);
                if (ret != 0) {
                        json_decref(all);
                        return ret;
                }
        }
        for (size_t i = 0; i < gc_client_daemon_count(c); i++) {
                json_t *st = NULL, *entry;
                double progress = 0;
                bool shown_bar = false;
                int r;

                for (;;) {
                        r = fetch_status(c, i, &st);
                        if (r == 0 && is_loading(st, &progress) && wait) {
                                if (!ctl->json && (tty || !shown_bar))
                                        print_bar(progress, load_phase(st), tty);
                                shown_bar = true;
                                json_decref(st);
                                st = NULL;
                                usleep(200 * 1000);
                                continue;
                        }
                        break;
                }
                if (shown_bar && tty && !ctl->json) {
                        print_bar(1.0, "", tty);
                        putchar('\n');
                }
                entry = json_pack("{s:s, s:b}", "socket", gc_client_daemon_path(c, i),
                                  "connected", r == 0 || gc_client_daemon_connected(c, i));
                json_object_set_new(entry, "welcome", welcome_json(c, i));
                json_object_set_new(entry, "status", st ? st : json_null());
                if (r < 0) {
                        json_object_set_new(entry, "error", json_string(gc_strerror(r)));
                        if (ret == EXIT_OK)
                                ret = ctl_exit_code(r);
                } else if (is_loading(st, &progress) && ret == EXIT_OK)
                        ret = EXIT_NOT_READY;

                if (!ctl->json) {
                        const char *state = st ? json_string_value(json_object_get(st, "state")) : NULL;

                        printf("%s: %s\n", gc_client_daemon_path(c, i),
                               r < 0 ? gc_strerror(r) : state ? state : "unknown");
                        if (st && is_loading(st, &progress))
                                print_bar(progress, load_phase(st), false);
                        print_flat("", json_object_get(entry, "welcome"));
                        if (st) {
                                json_object_del(st, "state");
                                print_flat("", st);
                        }
                }
                json_array_append_new(all, entry);
        }
        if (ctl->json) {
                json_t *j = json_pack("{s:o}", "daemons", all);

                ctl_print_json(j);
                json_decref(j);
        } else
                json_decref(all);
        gc_client_free(c);
        return ret;
}

/* ---- tokenize / detokenize ---- */

static int cmd_tokenize(const struct ctl *ctl, int argc, char **argv) {
        static const struct option opts[] = {
                { "special", no_argument, NULL, 's' }, { "help", no_argument, NULL, 'h' }, {},
        };
        bool special = false;
        gc_client *c = NULL;
        int32_t *ids = NULL;
        char *text = NULL;
        size_t n = 0;
        int r, ret, o;

        optind = 1;
        while ((o = getopt_long(argc, argv, "sh", opts, NULL)) != -1) {
                if (o == 's')
                        special = true;
                else if (o == 'h') {
                        puts("Usage: gemma4ctl [--json] tokenize [--special] [TEXT...]\n"
                             "Print the token ids of TEXT (or standard input).");
                        return EXIT_OK;
                } else
                        return EXIT_USAGE;
        }
        if (optind < argc)
                text = ctl_join_args(argc - optind, argv + optind);
        else if (ctl_read_all(stdin, &text) < 0)
                text = NULL;
        if (!text)
                return ctl_fail("reading the text", -EIO);
        ret = ctl_connect(ctl, &c);
        if (ret != 0) {
                free(text);
                return ret;
        }
        r = gc_tokenize(c, text, special, &ids, &n);
        if (r < 0)
                ret = ctl_fail("tokenize", r);
        else if (ctl->json) {
                json_t *a = json_array(), *j;

                for (size_t i = 0; i < n; i++)
                        json_array_append_new(a, json_integer(ids[i]));
                j = json_pack("{s:I, s:o}", "count", (json_int_t) n, "ids", a);
                ctl_print_json(j);
                json_decref(j);
        } else {
                for (size_t i = 0; i < n; i++)
                        printf("%s%d", i ? " " : "", ids[i]);
                printf("\n");
        }
        gc_free(ids);
        free(text);
        gc_client_free(c);
        return ret;
}

static int cmd_detokenize(const struct ctl *ctl, int argc, char **argv) {
        bool special = argc > 1 && strcmp(argv[1], "--special") == 0;
        int first = special ? 2 : 1, n = argc - first, ret;
        int32_t *ids = calloc(n > 0 ? n : 1, sizeof(*ids));
        gc_client *c = NULL;
        char *text = NULL;

        if (!ids)
                return ctl_fail("detokenize", -ENOMEM);
        for (int i = 0; i < n; i++) {
                char *end;
                long v = strtol(argv[first + i], &end, 10);

                if (*end || end == argv[first + i] || v < 0 || v > INT32_MAX) {
                        fprintf(stderr, "gemma4ctl: detokenize: not a token id: '%s'\n", argv[first + i]);
                        free(ids);
                        return EXIT_USAGE;
                }
                ids[i] = (int32_t) v;
        }
        ret = ctl_connect(ctl, &c);
        if (ret == 0) {
                int r = gc_detokenize(c, ids, (size_t) n, special, &text);

                if (r < 0)
                        ret = ctl_fail("detokenize", r);
                else if (ctl->json) {
                        json_t *j = json_pack("{s:s}", "text", text);

                        ctl_print_json(j);
                        json_decref(j);
                } else
                        printf("%s\n", text);
        }
        gc_free(text);
        free(ids);
        gc_client_free(c);
        return ret;
}

static void usage(FILE *f) {
        fputs("Usage: gemma4ctl [--socket PATH[:PATH...]] [--json] [--timeout MS] COMMAND [ARGS...]\n\n"
              "Commands:\n"
              "  chat        interactive chat (reads one prompt from stdin when it is not a terminal)\n"
              "  generate    complete a raw text prompt\n"
              "  status      daemon state, model, limits, loading progress (--wait)\n"
              "  tokenize    token ids of a text\n"
              "  detokenize  text of token ids\n"
              "  bench       throughput and latency benchmark\n"
              "  version     versions of gemma4ctl and libgemmaclient\n\n"
              "The socket defaults to $GEMMA4D_SOCKET, else " GC_DEFAULT_SOCKET ".\n"
              "'gemma4ctl COMMAND --help' shows a command's options; see gemma4ctl(1).\n", f);
}

int main(int argc, char **argv) {
        static const struct option opts[] = {
                { "socket", required_argument, NULL, 's' },
                { "json", no_argument, NULL, 'j' },
                { "timeout", required_argument, NULL, 't' },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, 'V' },
                {},
        };
        static const struct {
                const char *name;
                int (*run)(const struct ctl *, int, char **);
        } commands[] = {
                { "chat", cmd_chat }, { "generate", cmd_generate }, { "status", cmd_status },
                { "tokenize", cmd_tokenize }, { "detokenize", cmd_detokenize }, { "bench", cmd_bench },
        };
        struct ctl ctl = { .timeout_ms = 10000 };
        int o;

        /* Stop at the command name: its options are parsed by the command. */
        while ((o = getopt_long(argc, argv, "+s:jt:hV", opts, NULL)) != -1) {
                switch (o) {
                case 's':
                        ctl.socket = optarg;
                        break;
                case 'j':
                        ctl.json = true;
                        break;
                case 't': {
                        char *end;
                        long v = strtol(optarg, &end, 10);

                        if (*end || v <= 0 || v > 3600000) {
                                fprintf(stderr, "gemma4ctl: --timeout: expected milliseconds, got '%s'\n", optarg);
                                return EXIT_USAGE;
                        }
                        ctl.timeout_ms = (int) v;
                        break;
                }
                case 'h':
                        usage(stdout);
                        return EXIT_OK;
                case 'V':
                        printf("gemma4ctl %s (libgemmaclient %s)\n", GEMMA4D_VERSION, gc_version_string());
                        return EXIT_OK;
                default:
                        usage(stderr);
                        return EXIT_USAGE;
                }
        }
        if (optind >= argc) {
                usage(stderr);
                return EXIT_USAGE;
        }
        if (strcmp(argv[optind], "version") == 0) {
                printf("gemma4ctl %s (libgemmaclient %s)\n", GEMMA4D_VERSION, gc_version_string());
                return EXIT_OK;
        }
        if (strcmp(argv[optind], "help") == 0) {
                usage(stdout);
                return EXIT_OK;
        }
        /* Writing to a closed pipe (gemma4ctl generate | head) should end quietly, not kill us mid-write. */
        signal(SIGPIPE, SIG_IGN);
        for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
                /* Options after the command (--json) are accepted there too. */
                if (strcmp(argv[optind], commands[i].name) == 0) {
                        int sub_argc = argc - optind;
                        char **sub_argv = argv + optind;

                        for (int k = 1; k < sub_argc; k++)
                                if (strcmp(sub_argv[k], "--json") == 0) {
                                        ctl.json = true;
                                        memmove(sub_argv + k, sub_argv + k + 1, (size_t) (sub_argc - k) * sizeof(char *));
                                        sub_argc--;
                                        k--;
                                } else if (strcmp(sub_argv[k], "--") == 0)
                                        break;
                        return commands[i].run(&ctl, sub_argc, sub_argv);
                }
        }
        fprintf(stderr, "gemma4ctl: unknown command '%s' (see gemma4ctl --help)\n", argv[optind]);
        return EXIT_USAGE;
}
