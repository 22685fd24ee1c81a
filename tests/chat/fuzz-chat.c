/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Fuzz targets of the chat module. FUZZ_TEMPLATE: the input is a request as JSON (messages, tools,
 * enable_thinking); rendering must succeed with consistent segments or fail with a message. FUZZ_PARSER:
 * the input is a token stream (bytes 0x10-0x1B stand for special tokens, other bytes are text, in pieces of
 * up to 7 bytes) after one byte of options; the parser must not crash, leak or emit after a stop.
 *
 * Built as a libFuzzer target with -Dfuzz=true under clang; otherwise main() below replays the files and
 * directories named on the command line (the seed corpus runs as a test).
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "chat/output_parser.h"
#include "chat/special.h"
#include "chat/template.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#ifdef FUZZ_TEMPLATE
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        json_t *req = json_loadb((const char *) data, size, 0, NULL);
        struct chat_prompt p;
        struct chat_error err = { { 0 } };

        if (!req)
                return 0;
        struct chat_render_options o = {
                .enable_thinking = json_is_true(json_object_get(req, "enable_thinking")),
                .add_generation_prompt = !json_is_false(json_object_get(req, "add_generation_prompt")),
        };
        if (chat_render(json_object_get(req, "messages"), json_object_get(req, "tools"), &o, &p, &err) == 0) {
                size_t at = 0;
                for (size_t i = 0; i < p.n_segments; i++) {
                        if (p.segments[i].offset != at)
                                abort();
                        if (p.segments[i].kind == CHAT_SEGMENT_SPECIAL &&
                            strlen(chat_special_text(p.segments[i].token_id)) != p.segments[i].length)
                                abort();
                        at += p.segments[i].length;
                }
                if (at != p.text_length)
                        abort();
                chat_prompt_done(&p);
        } else if (err.message[0] == '\0') {
                abort();        /* every refusal says why */
        }
        json_decref(req);
        return 0;
}
#endif

#ifdef FUZZ_PARSER
struct seen {
        int stopped;
};

static int on_event(const struct chat_event *ev, void *userdata) {
        struct seen *s = userdata;
        if (s->stopped)
                abort();
        if (ev->kind == CHAT_EVENT_STOP)
                s->stopped = 1;
        if (ev->kind == CHAT_EVENT_TOOL_CALL && (!json_is_object(ev->arguments) || !ev->name[0]))
                abort();
        if ((ev->kind == CHAT_EVENT_CONTENT || ev->kind == CHAT_EVENT_REASONING) && ev->length == 0)
                abort();
        return 0;
}

static int is_token(uint8_t b) {
        return b >= 0x10 && b <= 0x1B;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        static const uint32_t ids[] = { 0, 48, 49, 52, 100, 101, 1, 106, 50, 105, 2, 98 };
        static const char *const stops[] = { "}}", "ABC", "\n\n" };
        struct chat_parser *p;
        struct seen s = { 0 };

        if (size == 0)
                return 0;
        struct chat_parser_options o = {
                .stop_strings = stops, .n_stop_strings = data[0] & 3,
                .bare_tool_calls = data[0] & 4, .stop_strings_in_reasoning = data[0] & 8,
        };
        if (chat_parser_new(&o, on_event, &s, &p) < 0)
                abort();
        for (size_t i = 1; i < size;) {
                if (is_token(data[i])) {
                        chat_parser_feed(p, ids[data[i] - 0x10], "", 0);
                        i++;
                        continue;
                }
                size_t j = i;
                while (j < size && !is_token(data[j]) && j - i < 7)
                        j++;
                chat_parser_feed(p, 1000, (const char *) data + i, j - i);
                i = j;
        }
        chat_parser_finish(p);
        chat_parser_free(p);
        return 0;
}
#endif

#ifdef FUZZ_REPLAY
static int replay_file(const char *path) {
        FILE *f = fopen(path, "rb");
        uint8_t *buf = NULL;
        size_t len = 0, cap = 0, n;
        uint8_t chunk[4096];

        if (!f) {
                fprintf(stderr, "%s: cannot open\n", path);
                return -1;
        }
        while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
                if (len + n > cap) {
                        cap = (len + n) * 2;
                        uint8_t *b = realloc(buf, cap);
                        if (!b) {
                                free(buf);
                                fclose(f);
                                return -1;
                        }
                        buf = b;
                }
                memcpy(buf + len, chunk, n);
                len += n;
        }
        fclose(f);
        LLVMFuzzerTestOneInput(buf ? buf : (const uint8_t *) "", len);
        free(buf);
        return 0;
}

int main(int argc, char **argv) {
        size_t files = 0;

        for (int i = 1; i < argc; i++) {
                DIR *d = opendir(argv[i]);
                if (!d) {
                        if (replay_file(argv[i]) < 0)
                                return 1;
                        files++;
                        continue;
                }
                struct dirent *e;
                while ((e = readdir(d))) {
                        char path[4096];
                        if (e->d_name[0] == '.')
                                continue;
                        snprintf(path, sizeof(path), "%s/%s", argv[i], e->d_name);
                        if (replay_file(path) < 0) {
                                closedir(d);
                                return 1;
                        }
                        files++;
                }
                closedir(d);
        }
        printf("replayed %zu inputs\n", files);
        return files > 0 ? 0 : 1;
}
#endif
