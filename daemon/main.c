/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gemma4d: command line, configuration, then the daemon. See gemma4d(8).
 *
 * Order of precedence: compiled-in defaults < instance defaults (--instance N: gpu N, socket
 * /run/gemma4d/N.sock) < the YAML file (--config, else GEMMA4D_SYSCONFDIR/gemma4d.yaml when it exists) <
 * the instance overlay (instances/N.yaml next to that file, when it exists) < command-line flags. Flags are
 * applied with config_set(), so they follow exactly the rules of the file's keys.
 *
 * Exit status: 0 success; 1 the configuration does not load or the daemon failed; 2 the command line is
 * wrong (unknown option, missing argument, invalid value of a flag).
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "build-config.h"
#include "config.h"
#include "io/daemon.h"
#include "log.h"

#define EXIT_USAGE 2
#define MAX_OVERRIDES 64

enum main_action {
        ACTION_RUN,
        ACTION_CHECK_CONFIG,
};

/* A key = value pair from a flag; the strings point into argv. */
struct override {
        const char *key;
        const char *value;
        char *owned;            /* --set KEY=VALUE: a copy split at '=' */
};

struct gemma4d_args {
        enum main_action action;
        enum log_target log_target;
        const char *config_path;        /* NULL: the default file, if it exists */
        const char *instance;           /* --instance: systemd's %i, NULL when not given */
        struct override overrides[MAX_OVERRIDES];
        unsigned n_overrides;
};

static void args_done(struct gemma4d_args *a) {
        for (unsigned i = 0; i < a->n_overrides; i++)
                free(a->overrides[i].owned);
        a->n_overrides = 0;
}

static void help(void) {
        printf("Usage: gemma4d [OPTIONS]\n"
               "Serve Gemma 4 over a Unix socket. See gemma4d(8) and gemma4d.yaml(5).\n\n"
               "  -c, --config FILE         configuration file (default %s/gemma4d.yaml if it exists;\n"
               "                            - reads standard input)\n"
               "  -m, --model DIR           model directory (model.path)\n"
               "  -b, --backend cpu|cuda    compute backend (backend)\n"
               "  -s, --socket PATH         Unix socket to listen on (socket.path)\n"
               "      --instance N          instance name (systemd's %%i): gpu N, socket\n"
               "                            /run/gemma4d/N.sock, then instances/N.yaml over the file\n"
               "      --log-level LEVEL     error, warning, info or debug (log.level)\n"
               "      --log-target TARGET   console, journal or auto (default auto: the journal when\n"
               "                            stderr is connected to it)\n"
               "      --set KEY=VALUE       set any configuration key, e.g. --set limits.max_queue=64\n"
               "      --check-config        validate the configuration, print the result and exit\n"
               "  -h, --help                show this help and exit\n"
               "  -V, --version             show the version and exit\n\n"
               "Flags override the file. Exit status: 0 success, 1 invalid configuration or failure,\n"
               "2 invalid command line.\n",
               GEMMA4D_SYSCONFDIR);
}

static int add_override(struct gemma4d_args *a, const char *key, const char *value, char *owned) {
        struct gemma4d_config scratch;
        char *err = NULL;
        int r;

        if (a->n_overrides >= MAX_OVERRIDES) {
                free(owned);
                return log_error_errno(E2BIG, "more than %d configuration flags", MAX_OVERRIDES);
        }
        /* Check the value now, against the defaults, so a bad flag is a command-line error. */
        r = config_init_defaults(&scratch);
        if (r < 0) {
                free(owned);
                return log_error_errno(r, "out of memory");
        }
        r = config_set(&scratch, key, value, &err);
        config_done(&scratch);
        if (r < 0) {
                log_error("command line: %s", err ? err : strerror(-r));
                free(err);
                free(owned);
                return r;
        }
        a->overrides[a->n_overrides++] = (struct override) { .key = key, .value = value, .owned = owned };
        return 0;
}

/* Instance names end up in file and socket paths: no '/', no '.', nothing odd. */
static bool valid_instance_name(const char *s) {
        size_t n = strlen(s);
        if (n == 0 || n > 64)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!isalnum((unsigned char) s[i]) && s[i] != '-' && s[i] != '_')
                        return false;
        return true;
}

/* Defaults that follow from the instance name: a numeric instance serves that GPU, and every instance
 * gets its own socket (the socket unit passes the same path when socket-activated). */
static int apply_instance_defaults(struct gemma4d_config *cfg, const char *instance, char **reterr) {
        char sock[128];
        int r;

        snprintf(sock, sizeof sock, "/run/gemma4d/%s.sock", instance);
        r = config_set(cfg, "socket.path", sock, reterr);
        if (r < 0)
                return r;
        if (instance[strspn(instance, "0123456789")] == '\0' && strlen(instance) <= 3) {
                r = config_set(cfg, "gpu", instance, reterr);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* "instances/NAME.yaml" in the directory of the main file (or of the default file). */
static int instance_overlay_path(const char *main_path, const char *instance, char *buf, size_t size) {
        char dir[PATH_MAX];
        int n;

        n = snprintf(dir, sizeof dir, "%s", main_path ? main_path : GEMMA4D_SYSCONFDIR "/gemma4d.yaml");
        if (n < 0 || (size_t) n >= sizeof dir)
                return -ENAMETOOLONG;
        n = snprintf(buf, size, "%s/instances/%s.yaml", dirname(dir), instance);
        if (n < 0 || (size_t) n >= size)
                return -ENAMETOOLONG;
        return 0;
}

/*
 * Parses the command line into *ret. Returns 1 to go on, 0 when the job is done (--help, --version), or
 * a negative errno after logging the problem (exit status 2).
 */
static int parse_argv(int argc, char **argv, struct gemma4d_args *ret) {
        enum { OPT_LOG_LEVEL = 0x100, OPT_LOG_TARGET, OPT_SET, OPT_CHECK_CONFIG, OPT_INSTANCE };
        static const struct option options[] = {
                { "config",       required_argument, NULL, 'c' },
                { "model",        required_argument, NULL, 'm' },
                { "backend",      required_argument, NULL, 'b' },
                { "socket",       required_argument, NULL, 's' },
                { "log-level",    required_argument, NULL, OPT_LOG_LEVEL },
                { "log-target",   required_argument, NULL, OPT_LOG_TARGET },
                { "set",          required_argument, NULL, OPT_SET },
                { "instance",     required_argument, NULL, OPT_INSTANCE },
                { "check-config", no_argument,       NULL, OPT_CHECK_CONFIG },
                { "help",         no_argument,       NULL, 'h' },
                { "version",      no_argument,       NULL, 'V' },
                {}
        };
        struct gemma4d_args a = { .action = ACTION_RUN, .log_target = LOG_TARGET_AUTO };
        int c, r = 0;

        optind = 0;     /* full reset, in case anything parsed before */
        while (r >= 0 && (c = getopt_long(argc, argv, ":c:m:b:s:hV", options, NULL)) >= 0) {
                switch (c) {
                case 'c':
                        a.config_path = optarg;
                        break;
                case 'm':
                        r = add_override(&a, "model.path", optarg, NULL);
                        break;
                case 'b':
                        r = add_override(&a, "backend", optarg, NULL);
                        break;
                case 's':
                        r = add_override(&a, "socket.path", optarg, NULL);
                        break;
                case OPT_LOG_LEVEL:
                        r = add_override(&a, "log.level", optarg, NULL);
                        break;
                case OPT_LOG_TARGET:
                        if (strcmp(optarg, "console") == 0)
                                a.log_target = LOG_TARGET_CONSOLE;
                        else if (strcmp(optarg, "journal") == 0)
                                a.log_target = LOG_TARGET_JOURNAL;
                        else if (strcmp(optarg, "auto") == 0)
                                a.log_target = LOG_TARGET_AUTO;
                        else
                                r = log_error_errno(EINVAL, "--log-target: expected console, journal or auto, "
                                                    "got '%s'", optarg);
                        break;
                case OPT_SET: {
                        char *copy = strdup(optarg), *eq;
                        if (!copy) {
                                r = log_error_errno(ENOMEM, "out of memory");
                                break;
                        }
                        eq = strchr(copy, '=');
                        if (!eq || eq == copy) {
                                free(copy);
                                r = log_error_errno(EINVAL, "--set: expected KEY=VALUE, got '%s'", optarg);
                                break;
                        }
                        *eq = '\0';
                        r = add_override(&a, copy, eq + 1, copy);
                        break;
                }
                case OPT_INSTANCE:
                        if (!valid_instance_name(optarg))
                                r = log_error_errno(EINVAL, "--instance: '%s' is not a valid instance name "
                                                    "(letters, digits, '-' and '_', at most 64)", optarg);
                        else
                                a.instance = optarg;
                        break;
                case OPT_CHECK_CONFIG:
                        a.action = ACTION_CHECK_CONFIG;
                        break;
                case 'h':
                        help();
                        args_done(&a);
                        return 0;
                case 'V':
                        printf("gemma4d %s (%s)\n", GEMMA4D_VERSION, HAVE_CUDA ? "+cuda" : "-cuda");
                        args_done(&a);
                        return 0;
                case ':':
                        r = log_error_errno(EINVAL, "option '%s' needs an argument (see --help)",
                                            argv[optind - 1]);
                        break;
                default:
                        r = log_error_errno(EINVAL, "unknown option '%s' (see --help)", argv[optind - 1]);
                        break;
                }
        }
        if (r >= 0 && optind < argc)
                r = log_error_errno(EINVAL, "unexpected argument '%s' (see --help)", argv[optind]);
        if (r < 0) {
                args_done(&a);
                return r;
        }
        *ret = a;
        return 1;
}

/* Reads all of stdin (for --config -), at most 1 MiB: configuration files are small. */
static int read_stdin(char **ret) {
        size_t cap = 1 << 20, len = 0;
        char *buf = malloc(cap + 1);
        ssize_t n;

        if (!buf)
                return -ENOMEM;
        while ((n = read(STDIN_FILENO, buf + len, cap - len)) != 0) {
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        int r = -errno;
                        free(buf);
                        return r;
                }
                len += (size_t) n;
                if (len == cap) {
                        free(buf);
                        return -EFBIG;
                }
        }
        buf[len] = '\0';
        if (memchr(buf, '\0', len)) {
                free(buf);
                return -EBADMSG;
        }
        *ret = buf;
        return 0;
}

static int load_config_file(struct gemma4d_config *cfg, const char *path, char **reterr) {
        char *text = NULL;
        int r;

        if (strcmp(path, "-") != 0)
                return config_load_file(cfg, path, reterr);
        r = read_stdin(&text);
        if (r < 0) {
                *reterr = NULL;
                if (asprintf(reterr, "<stdin>: %s", r == -EFBIG ? "larger than 1 MiB" :
                             r == -EBADMSG ? "contains a NUL byte" : strerror(-r)) < 0)
                        *reterr = NULL;
                return r;
        }
        r = config_load_string(cfg, "<stdin>", text, reterr);
        free(text);
        return r;
}

/* Defaults, then the file, then the flags. Logs the problem and returns a negative errno on error. */
static int config_from_args(const struct gemma4d_args *a, struct gemma4d_config *ret) {
        static const char default_path[] = GEMMA4D_SYSCONFDIR "/gemma4d.yaml";
        const char *path = a->config_path;
        char overlay[PATH_MAX] = "";
        struct gemma4d_config cfg;
        char *err = NULL;
        int r;

        if (!path && access(default_path, F_OK) == 0)
                path = default_path;

        r = config_init_defaults(&cfg);
        if (r < 0)
                return log_error_errno(r, "out of memory");
        if (a->instance) {
                r = apply_instance_defaults(&cfg, a->instance, &err);
                if (r < 0)
                        goto fail;
        }
        if (path) {
                r = load_config_file(&cfg, path, &err);
                if (r < 0)
                        goto fail;
        }
        if (a->instance) {
                r = instance_overlay_path(path && strcmp(path, "-") != 0 ? path : NULL, a->instance, overlay, sizeof overlay);
                if (r < 0) {
                        log_error("instance overlay path is too long");
                        config_done(&cfg);
                        return r;
                }
                if (access(overlay, F_OK) == 0) {
                        r = config_load_file(&cfg, overlay, &err);
                        if (r < 0)
                                goto fail;
                } else
                        overlay[0] = '\0';
        }
        for (unsigned i = 0; i < a->n_overrides; i++) {
                r = config_set(&cfg, a->overrides[i].key, a->overrides[i].value, &err);
                if (r < 0)
                        goto fail;
        }
        r = config_validate(&cfg, &err);
        if (r < 0)
                goto fail;
        /* From here on the configured level applies. */
        log_set_level(cfg.log_level);
        log_debug("configuration file: %s%s%s", path ? path : "(none, compiled-in defaults)",
                  overlay[0] ? ", instance overlay: " : "", overlay);
        *ret = cfg;
        return 0;
fail:
        log_error("%s", err ? err : strerror(-r));
        free(err);
        config_done(&cfg);
        return r;
}

static void log_config(const struct gemma4d_config *cfg) {
        char *text = NULL;

        if (log_get_level() < LOG_LEVEL_DEBUG)
                return;
        if (config_format(cfg, &text) < 0)
                return;
        size_t n = strlen(text);
        if (n && text[n - 1] == '\n')
                text[n - 1] = '\0';
        log_debug("effective configuration:\n%s", text);
        free(text);
}

/* SIGHUP: the configuration is rebuilt from the same sources as at start. --config - (stdin) cannot be
 * read twice, so that setup reloads nothing. */
static int reload_config(void *userdata, struct gemma4d_config *ret) {
        const struct gemma4d_args *a = userdata;
        if (a->config_path && strcmp(a->config_path, "-") == 0)
                return log_error_errno(EOPNOTSUPP, "the configuration came from standard input; "
                                       "nothing to reload");
        return config_from_args(a, ret);
}

int main(int argc, char **argv) {
        struct gemma4d_args args;
        struct gemma4d_config cfg;
        int r;

        r = parse_argv(argc, argv, &args);
        if (r <= 0)
                return r == 0 ? EXIT_SUCCESS : EXIT_USAGE;
        log_set_target(args.log_target);

        r = config_from_args(&args, &cfg);
        if (r < 0) {
                args_done(&args);
                return EXIT_FAILURE;
        }
        log_config(&cfg);

        if (args.action == ACTION_CHECK_CONFIG) {
                printf("configuration is valid\n");
                config_done(&cfg);
                args_done(&args);
                return EXIT_SUCCESS;
        }

        r = daemon_run(&cfg, reload_config, &args);
        config_done(&cfg);
        args_done(&args);
        return r;
}
