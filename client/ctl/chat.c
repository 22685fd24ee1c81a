/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gemma4ctl chat: a multi-turn REPL over libedit, streaming answers as they arrive. With standard input
 * not a terminal it answers one prompt read from stdin and exits.
 */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <editline/readline.h>

#include "ctl.h"

#define DIM "\033[2m"
#define RESET "\033[0m"

struct chat {
        const struct ctl *ctl;
        gc_client *client;
        json_t *history;             /* JSON array of messages, the system message first if any */
        gc_params *params;
        json_t *settings;            /* NAME -> VALUE text of every /set and option, to show and rebuild */
        bool thinking;               /* ask the model to think */
        bool show_thinking;          /* print the thinking (dimmed on a terminal) */
        bool color;
};

struct turn {
        struct chat *chat;
        bool done;
        bool printed_reasoning;
        bool printed_content;
        bool dimmed;                 /* inside the dim span of the thinking */
        bool stream;                 /* print deltas as they come */
        gc_request *req;
        gc_result *result;
};

static int turn_cb(gc_request *req, enum gc_event_type type, const gc_event *ev, void *userdata) {
        struct turn *t = userdata;
        struct chat *ch = t->chat;

        if (type == GC_EVENT_DELTA && t->stream) {
                const char *reasoning = gc_event_reasoning(ev), *content = gc_event_content(ev);

                /* One dim span for the whole thinking, not one per delta. */
                if (*reasoning && ch->show_thinking) {
                        if (ch->color && !t->dimmed)
                                fputs(DIM, stdout);
                        t->dimmed = ch->color;
                        fputs(reasoning, stdout);
                        t->printed_reasoning = true;
                }
                if (*content) {
                        if (t->dimmed)
                                fputs(RESET, stdout);
                        t->dimmed = false;
                        if (t->printed_reasoning && !t->printed_content)
                                fputs("\n\n", stdout);
                        fputs(content, stdout);
                        t->printed_content = true;
                }
                fflush(stdout);
        } else if (type == GC_EVENT_TOOL_CALL && t->stream) {
                printf("%s[tool call %s %s]%s\n", ch->color ? DIM : "", gc_event_tool_name(ev),
                       gc_event_tool_arguments(ev), ch->color ? RESET : "");
                fflush(stdout);
        } else if (type == GC_EVENT_FINISHED) {
                if (t->dimmed)
                        fputs(RESET, stdout);
                t->dimmed = false;
                t->result = gc_event_steal_result(ev);
                t->done = true;
        }
        return 0;
}

static int set_system(struct chat *ch, const char *text) {
        json_t *first = json_array_get(ch->history, 0);
        json_t *msg = json_pack("{s:s, s:s}", "role", "system", "content", text);
        const char *role = json_string_value(json_object_get(first, "role"));

        if (!msg)
                return -ENOMEM;
        if (role && strcmp(role, "system") == 0)
                return json_array_set_new(ch->history, 0, msg) < 0 ? -ENOMEM : 0;
        return json_array_insert_new(ch->history, 0, msg) < 0 ? -ENOMEM : 0;
}

static void reset_history(struct chat *ch) {
        json_t *first = json_array_get(ch->history, 0);
        const char *role = json_string_value(json_object_get(first, "role"));

        if (role && strcmp(role, "system") == 0) {
                json_incref(first);
                json_array_clear(ch->history);
                json_array_append_new(ch->history, first);
        } else
                json_array_clear(ch->history);
}

/*
 * One turn: send the history plus the user's message, stream the answer, and keep both in the history
 * when the answer completed. A cancelled or failed turn leaves the history as it was. Returns the error
 * (0 on success) and the result through ret (may be NULL).
 */
static int chat_turn(struct chat *ch, const char *text, bool stream, gc_result **ret) {
        struct turn t = { .chat = ch, .stream = stream };
        size_t before = json_array_size(ch->history);
        char *messages;
        int r;

        if (json_array_append_new(ch->history, json_pack("{s:s, s:s}", "role", "user", "content", text)) < 0)
                return -ENOMEM;
        messages = json_dumps(ch->history, JSON_COMPACT);
        if (!messages) {
                json_array_remove(ch->history, before);
                return -ENOMEM;
        }
        ctl_catch_sigint(true);
        r = gc_chat_start(ch->client, messages, NULL, ch->thinking, ch->params, turn_cb, &t, &t.req);
        if (r == 0)
                r = ctl_wait(ch->client, &t.req, &t.done);
        ctl_catch_sigint(false);
        free(messages);
        if (r == 0)
                r = gc_result_error(t.result);
        if (stream && (t.printed_content || t.printed_reasoning))
                fputc('\n', stdout);
        if (r == 0) {
                json_t *msg = json_pack("{s:s, s:s}", "role", "assistant", "content", gc_result_text(t.result));
                size_t n = gc_result_tool_call_count(t.result);

                if (n) {
                        json_t *calls = json_array();

                        for (size_t i = 0; i < n; i++) {
                                json_t *args = json_loads(gc_result_tool_call_arguments(t.result, i), 0, NULL);

                                json_array_append_new(calls, json_pack("{s:s, s:s, s:{s:s, s:o}}",
                                        "id", gc_result_tool_call_id(t.result, i), "type", "function",
                                        "function", "name", gc_result_tool_call_name(t.result, i),
                                        "arguments", args ? args : json_object()));
                        }
                        json_object_set_new(msg, "tool_calls", calls);
                }
                json_array_append_new(ch->history, msg);
        } else
                json_array_remove(ch->history, before);
        if (ret)
                *ret = t.result;
        else
                gc_result_free(t.result);
        return r;
}

static bool valid_history(json_t *h) {
        size_t i;
        json_t *m;

        if (!json_is_array(h))
                return false;
        json_array_foreach(h, i, m)
                if (!json_is_object(m) || !json_is_string(json_object_get(m, "role")))
                        return false;
        return true;
}

static int load_history(struct chat *ch, const char *file) {
        json_error_t err;
        json_t *h = json_load_file(file, 0, &err);

        if (!h) {
                fprintf(stderr, "gemma4ctl: %s:%d:%d: %s\n", file, err.line, err.column, err.text);
                return -EINVAL;
        }
        if (!valid_history(h)) {
                fprintf(stderr, "gemma4ctl: %s: expected a JSON array of message objects with a \"role\"\n", file);
                json_decref(h);
                return -EINVAL;
        }
        json_decref(ch->history);
        ch->history = h;
        return 0;
}

static int set_param(struct chat *ch, const char *name, const char *value) {
        gc_params *p;
        const char *k;
        json_t *v;
        int r;

        /* Rebuild from all settings so that a rejected value leaves the old parameters in force. */
        r = gc_params_new(&p);
        if (r < 0)
                return r;
        json_object_foreach(ch->settings, k, v)
                if (strcmp(k, name) != 0 || strcmp(name, "stop") == 0) {
                        if (strcmp(k, "stop") == 0) {
                                size_t i;
                                json_t *s;

                                json_array_foreach(v, i, s)
                                        gc_params_add_stop(p, json_string_value(s));
                        } else
                                gc_params_set(p, k, json_string_value(v));
                }
        r = gc_params_set(p, name, value);
        if (r < 0) {
                gc_params_free(p);
                return r;
        }
        if (strcmp(name, "stop") == 0) {
                json_t *a = json_object_get(ch->settings, "stop");

                if (!a) {
                        a = json_array();
                        json_object_set_new(ch->settings, "stop", a);
                }
                json_array_append_new(a, json_string(value));
        } else
                json_object_set_new(ch->settings, name, json_string(value));
        gc_params_free(ch->params);
        ch->params = p;
        return 0;
}

static void repl_help(void) {
        puts("Commands:\n"
             "  /system TEXT         set the system prompt (keeps the conversation)\n"
             "  /reset               forget the conversation (keeps the system prompt)\n"
             "  /thinking on|off     let the model think before answering\n"
             "  /set NAME VALUE      sampling parameter, e.g. /set temperature 0.7; /set alone lists them\n"
             "  /save FILE           write the conversation as JSON\n"
             "  /load FILE           read a conversation written by /save\n"
             "  /quit                leave (Ctrl-D too)\n"
             "Ctrl-C cancels the answer being written (at the prompt: the line being typed).");
}

/* A /command. Returns 1 to leave the REPL, else 0. */
static int repl_command(struct chat *ch, char *line) {
        char *cmd = strtok(line, " \t"), *arg = strtok(NULL, "");

        while (arg && (*arg == ' ' || *arg == '\t'))
                arg++;
        if (strcmp(cmd, "/quit") == 0 || strcmp(cmd, "/exit") == 0)
                return 1;
        if (strcmp(cmd, "/help") == 0)
                repl_help();
        else if (strcmp(cmd, "/system") == 0) {
                if (!arg || !*arg)
                        fputs("usage: /system TEXT\n", stderr);
                else if (set_system(ch, arg) == 0)
                        puts("system prompt set");
        } else if (strcmp(cmd, "/reset") == 0) {
                reset_history(ch);
                puts("conversation cleared");
        } else if (strcmp(cmd, "/thinking") == 0) {
                if (arg && strcmp(arg, "on") == 0)
                        ch->thinking = true;
                else if (arg && strcmp(arg, "off") == 0)
                        ch->thinking = false;
                else
                        fputs("usage: /thinking on|off\n", stderr);
                printf("thinking %s\n", ch->thinking ? "on" : "off");
        } else if (strcmp(cmd, "/set") == 0) {
                char *name = arg ? strtok(arg, " \t") : NULL, *value = name ? strtok(NULL, "") : NULL;

                if (!name) {
                        char *s = json_dumps(ch->settings, JSON_COMPACT);

                        printf("%s\n", s ? s : "{}");
                        free(s);
                } else if (!value)
                        fputs("usage: /set NAME VALUE\n", stderr);
                else if (set_param(ch, name, value) < 0)
                        fprintf(stderr, "bad parameter or value: %s %s (see gemma4ctl(1))\n", name, value);
        } else if (strcmp(cmd, "/save") == 0) {
                if (!arg || !*arg)
                        fputs("usage: /save FILE\n", stderr);
                else if (json_dump_file(ch->history, arg, JSON_INDENT(2)) < 0)
                        fprintf(stderr, "gemma4ctl: cannot write %s\n", arg);
                else
                        printf("saved %zu messages to %s\n", json_array_size(ch->history), arg);
        } else if (strcmp(cmd, "/load") == 0) {
                if (!arg || !*arg)
                        fputs("usage: /load FILE\n", stderr);
                else if (load_history(ch, arg) == 0)
                        printf("loaded %zu messages from %s\n", json_array_size(ch->history), arg);
        } else
                fprintf(stderr, "unknown command %s (try /help)\n", cmd);
        return 0;
}

static char *history_file(void) {
        const char *home = getenv("HOME");
        char *path;

        if (!home || !*home)
                return NULL;
        if (asprintf(&path, "%s/.gemma4ctl_history", home) < 0)
                return NULL;
        return path;
}

static int repl(struct chat *ch) {
        char *hist = history_file(), *line;

        using_history();
        stifle_history(1000);
        if (hist)
                read_history(hist);
        printf("Connected to %s (%s on %s). /help for commands, Ctrl-D to leave.\n",
               gc_client_info_str(ch->client, 0, GC_INFO_MODEL) ? gc_client_info_str(ch->client, 0, GC_INFO_MODEL) : "?",
               gc_client_info_str(ch->client, 0, GC_INFO_BACKEND) ? gc_client_info_str(ch->client, 0, GC_INFO_BACKEND) : "?",
               gc_client_info_str(ch->client, 0, GC_INFO_DEVICE) ? gc_client_info_str(ch->client, 0, GC_INFO_DEVICE) : "?");
        for (;;) {
                char *s, *e;
                int r;

                /* Ctrl-C at the prompt abandons the line being typed, as in a shell. */
                ctl_catch_sigint(true);
                line = readline("> ");
                if (ctl_interrupted) {
                        ctl_catch_sigint(false);
                        free(line);
                        fputc('\n', stdout);
                        continue;
                }
                ctl_catch_sigint(false);
                if (!line)
                        break;
                s = line;

                while (*s == ' ' || *s == '\t')
                        s++;
                e = s + strlen(s);
                while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n'))
                        *--e = 0;
                if (!*s) {
                        free(line);
                        continue;
                }
                add_history(s);
                if (*s == '/') {
                        r = repl_command(ch, s);
                        free(line);
                        if (r)
                                break;
                        continue;
                }
                r = chat_turn(ch, s, true, NULL);
                free(line);
                if (r == GC_ECANCELLED)
                        printf("%s[cancelled]%s\n", ch->color ? DIM : "", ch->color ? RESET : "");
                else if (r < 0) {
                        fprintf(stderr, "gemma4ctl: %s\n", gc_strerror(r));
                        if (r == GC_ENOTRUNNING)
                                break;
                }
        }
        if (hist) {
                write_history(hist);
                free(hist);
        }
        return EXIT_OK;
}

static void usage_chat(FILE *f) {
        fputs("Usage: gemma4ctl [--socket PATH] [--json] chat [OPTIONS]\n"
              "Interactive chat. When standard input is not a terminal, it is read as one prompt,\n"
              "the answer is printed and gemma4ctl exits.\n\n"
              "  --system TEXT     system prompt\n"
              "  --thinking        let the model think first (/thinking on)\n"
              "  --hide-thinking   do not print the thinking\n"
              "  --load FILE       start from a conversation saved with /save\n\n", f);
        ctl_print_param_help(f);
}

int cmd_chat(const struct ctl *ctl, int argc, char **argv) {
        enum { OPT_SYSTEM = 1, OPT_THINKING, OPT_HIDE, OPT_LOAD };
        struct option opts[32] = {
                { "help", no_argument, NULL, 'h' }, { "system", required_argument, NULL, OPT_SYSTEM },
                { "thinking", no_argument, NULL, OPT_THINKING }, { "hide-thinking", no_argument, NULL, OPT_HIDE },
                { "load", required_argument, NULL, OPT_LOAD },
        };
        struct chat ch = { .ctl = ctl, .show_thinking = true, .history = json_array(), .settings = json_object() };
        const char *system = NULL, *load = NULL;
        bool interactive = isatty(STDIN_FILENO);
        int ret = EXIT_OK, o;

        ctl_add_param_options(opts, 5);
        if (gc_params_new(&ch.params) < 0) {
                ret = ctl_fail("chat", -ENOMEM);
                goto out;
        }
        optind = 1;
        while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
                switch (o) {
                case 'h':
                        usage_chat(stdout);
                        goto out;
                case OPT_SYSTEM:
                        system = optarg;
                        break;
                case OPT_THINKING:
                        ch.thinking = true;
                        break;
                case OPT_HIDE:
                        ch.show_thinking = false;
                        break;
                case OPT_LOAD:
                        load = optarg;
                        break;
                default:
                        if (o >= CTL_OPT_PARAM && (size_t) (o - CTL_OPT_PARAM) < ctl_n_params &&
                            set_param(&ch, ctl_param_names[o - CTL_OPT_PARAM], optarg) == 0)
                                break;
                        if (o >= CTL_OPT_PARAM)
                                fprintf(stderr, "gemma4ctl: bad value for --%s: '%s'\n",
                                        ctl_param_names[o - CTL_OPT_PARAM], optarg);
                        else
                                usage_chat(stderr);
                        ret = EXIT_USAGE;
                        goto out;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "gemma4ctl: chat takes no arguments (the prompt comes from the terminal or stdin)\n");
                ret = EXIT_USAGE;
                goto out;
        }
        if (load && load_history(&ch, load) < 0) {
                ret = EXIT_USAGE;
                goto out;
        }
        if (system && set_system(&ch, system) < 0) {
                ret = ctl_fail("chat", -ENOMEM);
                goto out;
        }
        ret = ctl_connect(ctl, &ch.client);
        if (ret != 0)
                goto out;

        if (interactive) {
                ch.color = isatty(STDOUT_FILENO) && !getenv("NO_COLOR");
                ret = repl(&ch);
        } else {
                gc_result *res = NULL;
                char *prompt = NULL;
                int r = ctl_read_all(stdin, &prompt);

                if (r < 0) {
                        ret = ctl_fail("reading the prompt from stdin", r);
                        goto out;
                }
                /* Piped: the answer alone on stdout (--json has the reasoning too). */
                /* The newline that ends a piped line is not part of the message. */
                for (size_t n = strlen(prompt); n > 0 && (prompt[n - 1] == '\n' || prompt[n - 1] == '\r'); n--)
                        prompt[n - 1] = 0;
                ch.color = false;
                ch.show_thinking = false;
                r = chat_turn(&ch, prompt, !ctl->json, &res);
                free(prompt);
                if (ctl->json && res) {
                        json_t *j = ctl_result_json(res);

                        ctl_print_json(j);
                        json_decref(j);
                }
                if (r) {
                        const char *msg = res ? gc_result_error_message(res) : "";

                        fprintf(stderr, "gemma4ctl: chat: %s\n", *msg ? msg : gc_strerror(r));
                }
                gc_result_free(res);
                ret = ctl_exit_code(r);
        }
out:
        gc_client_free(ch.client);
        gc_params_free(ch.params);
        json_decref(ch.history);
        json_decref(ch.settings);
        return ret;
}
