/* SPDX-License-Identifier: Apache-2.0 */
/*
 * chat-render: render a request with the C chat template, for debugging and for comparing against the
 * Jinja template by hand. Input (file or stdin): {"messages": [...], "tools": [...], "enable_thinking": bool,
 * "add_generation_prompt": bool}. Prints the prompt; with --segments, one line per segment instead.
 */
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "chat/template.h"

int main(int argc, char **argv) {
        bool segments = argc > 1 && strcmp(argv[1], "--segments") == 0;
        const char *file = argc > (segments ? 2 : 1) ? argv[segments ? 2 : 1] : NULL;
        json_error_t jerr;
        json_t *req = file ? json_load_file(file, 0, &jerr) : json_loadf(stdin, 0, &jerr);
        struct chat_error err = { { 0 } };
        struct chat_prompt p;

        if (!req) {
                fprintf(stderr, "chat-render: %s: line %d: %s\n", file ? file : "stdin", jerr.line, jerr.text);
                return 1;
        }
        json_t *dflt = json_object_get(req, "add_generation_prompt");
        struct chat_render_options opts = {
                .enable_thinking = json_is_true(json_object_get(req, "enable_thinking")),
                .add_generation_prompt = dflt ? json_is_true(dflt) : true,
        };
        int r = chat_render(json_object_get(req, "messages"), json_object_get(req, "tools"), &opts, &p, &err);
        json_decref(req);
        if (r < 0) {
                fprintf(stderr, "chat-render: %s (%s)\n", err.message, strerror(-r));
                return 2;
        }
        if (!segments) {
                fwrite(p.text, 1, p.text_length, stdout);
        } else {
                static const char *const kinds[] = { "special", "template", "content" };
                for (size_t i = 0; i < p.n_segments; i++)
                        printf("%s %u %.*s\n", kinds[p.segments[i].kind], p.segments[i].token_id,
                               (int) p.segments[i].length, p.text + p.segments[i].offset);
        }
        chat_prompt_done(&p);
        return 0;
}
