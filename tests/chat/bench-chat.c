/* SPDX-License-Identifier: Apache-2.0 */
/*
 * bench-chat: how long the chat module takes per request and per token (not a test; numbers go to
 * docs/perf-notes.md). Renders a 100-message conversation with tool calls, tool results and a tool
 * declaration, and streams a long model output (reasoning, content with a stop string held back now and
 * then, tool calls) through the output parser one token at a time.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "chat/output_parser.h"
#include "chat/special.h"
#include "chat/template.h"

static double now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);   /* CPU time: the build machine is shared */
        return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

static int count(const struct chat_event *ev, void *userdata) {
        (*(size_t *) userdata)++;
        return 0;
}

int main(void) {
        json_t *msgs = json_array();
        json_t *tools = json_loads("[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"description\":"
                                   "\"Weather.\",\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{"
                                   "\"type\":\"string\"},\"days\":{\"type\":\"integer\"},\"units\":{\"type\":"
                                   "\"string\",\"enum\":[\"c\",\"f\"]}},\"required\":[\"city\"]}}}]", 0, NULL);
        char text[512];

        json_array_append_new(msgs, json_pack("{s:s,s:s}", "role", "system", "content", "You are helpful."));
        for (int i = 0; i < 33; i++) {
                snprintf(text, sizeof(text), "Question %d: what is the weather like in city number %d today, and "
                         "should I take an umbrella with me?", i, i);
                json_array_append_new(msgs, json_pack("{s:s,s:s}", "role", "user", "content", text));
                json_array_append_new(msgs, json_pack("{s:s,s:[{s:s,s:{s:s,s:s}}]}", "role", "assistant",
                                                      "tool_calls", "id", "c1", "function", "name", "get_weather",
                                                      "arguments", "{\"city\": \"Paris\", \"days\": 2}"));
                json_array_append_new(msgs, json_pack("{s:s,s:s,s:s}", "role", "tool", "tool_call_id", "c1",
                                                      "content", "{\"temp\": 15, \"sky\": \"cloudy\"}"));
        }
        json_array_append_new(msgs, json_pack("{s:s,s:s}", "role", "user", "content", "Thanks!"));

        const int renders = 2000;
        size_t bytes = 0;
        double t0 = now();
        for (int i = 0; i < renders; i++) {
                struct chat_prompt p;
                if (chat_render(msgs, tools, NULL, &p, NULL) < 0)
                        return 1;
                bytes = p.text_length;
                chat_prompt_done(&p);
        }
        double t_render = (now() - t0) / renders;
        printf("render: %zu messages, %zu bytes of prompt: %.1f us per request\n", json_array_size(msgs), bytes,
               t_render * 1e6);

        /* a token stream: reasoning, content, a tool call; words of ~4 bytes per token */
        static const char *const stops[] = { "\n\nUser:", "###" };
        struct chat_parser_options o = { .stop_strings = stops, .n_stop_strings = 2 };
        const size_t rounds = 20000;
        size_t tokens = 0, events = 0;
        t0 = now();
        for (size_t r = 0; r < rounds; r++) {
                struct chat_parser *p;
                if (chat_parser_new(&o, count, &events, &p) < 0)
                        return 1;
                chat_parser_feed(p, CHAT_TOKEN_CHANNEL, "", 0);
                tokens++;
                for (int k = 0; k < 20; k++, tokens++)
                        chat_parser_feed(p, 1000, k == 0 ? "thought\n" : " let", k == 0 ? 8 : 4);
                chat_parser_feed(p, CHAT_TOKEN_CHANNEL_END, "", 0);
                tokens++;
                for (int k = 0; k < 20; k++, tokens++)
                        chat_parser_feed(p, 1000, k % 5 == 4 ? "\n\n" : " the", k % 5 == 4 ? 2 : 4);
                chat_parser_feed(p, CHAT_TOKEN_TOOL_CALL, "", 0);
                chat_parser_feed(p, 1000, "call:get_weather{city:", 22);
                chat_parser_feed(p, CHAT_TOKEN_QUOTE, "", 0);
                chat_parser_feed(p, 1000, "Paris", 5);
                chat_parser_feed(p, CHAT_TOKEN_QUOTE, "", 0);
                chat_parser_feed(p, 1000, ",days:2}", 8);
                chat_parser_feed(p, CHAT_TOKEN_TOOL_CALL_END, "", 0);
                chat_parser_feed(p, CHAT_TOKEN_TOOL_RESPONSE, "", 0);
                tokens += 8;
                chat_parser_free(p);
        }
        double t_parse = now() - t0;
        printf("parser: %zu tokens, %zu events: %.0f ns per token (parser setup and teardown included)\n",
               tokens, events, t_parse / (double) tokens * 1e9);
        json_decref(msgs);
        json_decref(tools);
        return 0;
}
