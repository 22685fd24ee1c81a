/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Randomized checks (deterministic seed) for the chat template and the output parser: random, often
 * invalid, requests must render or fail with a message, never crash, and keep the segment invariants;
 * random token streams must keep the parser's invariants (stop-string trimming equals a plain search of
 * the concatenated text, nothing after a stop).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "chat/output_parser.h"
#include "chat/special.h"
#include "chat/template.h"

static uint64_t rng_state;

static uint32_t rnd(uint32_t n) {
        /* xorshift64* */
        rng_state ^= rng_state >> 12;
        rng_state ^= rng_state << 25;
        rng_state ^= rng_state >> 27;
        return (uint32_t) ((rng_state * 2685821657736338717ULL) >> 33) % n;
}

/* ---- template ---- */

static json_t *random_string(void) {
        static const char *const parts[] = { "a", " ", "\n", "<|turn>", "<|\"|>", "{", "}", ":", ",", "é",
                                              "<channel|>", "<|channel>", "\xc2\xa0", "x1", "True" };
        char buf[128] = "";
        size_t n = rnd(6);
        for (size_t i = 0; i < n; i++)
                strcat(buf, parts[rnd(sizeof(parts) / sizeof(parts[0]))]);
        return json_string(buf);
}

static json_t *random_value(int depth) {
        switch (rnd(depth > 2 ? 6 : 8)) {
        case 0: return random_string();
        case 1: return json_integer((json_int_t) rnd(2000) - 1000);
        case 2: return json_real((double) rnd(100000) / 64.0 - 700.0);
        case 3: return json_boolean(rnd(2));
        case 4: return json_null();
        case 5: return random_string();
        case 6: {
                json_t *o = json_object();
                size_t n = rnd(4);
                for (size_t i = 0; i < n; i++) {
                        static const char *const keys[] = { "type", "properties", "description", "items", "enum",
                                                            "required", "nullable", "a", "B", "name", "content",
                                                            "role", "text", "function", "arguments" };
                        json_object_set_new(o, keys[rnd(sizeof(keys) / sizeof(keys[0]))], random_value(depth + 1));
                }
                return o;
        }
        default: {
                json_t *a = json_array();
                size_t n = rnd(4);
                for (size_t i = 0; i < n; i++)
                        json_array_append_new(a, random_value(depth + 1));
                return a;
        }
        }
}

static json_t *random_schema(int depth) {
        static const char *const types[] = { "string", "integer", "number", "boolean", "array", "object", "null" };
        json_t *s = json_object();
        json_object_set_new(s, "type", rnd(10) ? json_string(types[rnd(7)]) : random_value(2));
        if (rnd(2))
                json_object_set_new(s, "description", rnd(8) ? random_string() : random_value(2));
        if (rnd(4) == 0)
                json_object_set_new(s, "enum", random_value(1));
        if (rnd(4) == 0)
                json_object_set_new(s, "nullable", json_boolean(rnd(2)));
        if (depth < 3 && rnd(3) == 0)
                json_object_set_new(s, "items", random_schema(depth + 1));
        if (depth < 3 && rnd(3) == 0) {
                json_t *props = json_object();
                size_t n = rnd(3);
                for (size_t i = 0; i < n; i++) {
                        char k[8];
                        snprintf(k, sizeof(k), "%c%u", "aBc"[rnd(3)], rnd(3));
                        json_object_set_new(props, k, random_schema(depth + 1));
                }
                json_object_set_new(s, "properties", props);
        }
        if (rnd(4) == 0)
                json_object_set_new(s, "required", rnd(4) ? json_pack("[s]", "a0") : random_value(2));
        return s;
}

static json_t *random_message(void) {
        static const char *const roles[] = { "system", "developer", "user", "assistant", "tool", "user",
                                             "assistant", "bogus" };
        json_t *m = json_object();
        const char *role = roles[rnd(8)];

        if (rnd(30))
                json_object_set_new(m, "role", json_string(role));
        switch (rnd(6)) {
        case 0: break;
        case 1: json_object_set_new(m, "content", random_value(0)); break;
        default: json_object_set_new(m, "content", random_string()); break;
        }
        if (strcmp(role, "assistant") == 0 && rnd(2)) {
                json_t *calls = json_array();
                size_t n = 1 + rnd(2);
                for (size_t i = 0; i < n; i++) {
                        json_t *args = rnd(5) ? random_value(0) : json_string("{\"a\": [1, {\"b\": null}]}");
                        json_array_append_new(calls, json_pack("{s:s, s:{s:s, s:o}}", "id", rnd(2) ? "c1" : "c2",
                                                               "function", "name", rnd(2) ? "f" : "g", "arguments",
                                                               args));
                }
                json_object_set_new(m, "tool_calls", calls);
                if (rnd(3) == 0)
                        json_object_set_new(m, "reasoning", random_string());
                if (rnd(5) == 0)
                        json_object_set_new(m, "tool_responses", json_pack("[{s:s, s:o}]", "name", "f", "response",
                                                                           random_value(0)));
        }
        if (strcmp(role, "tool") == 0 && rnd(2))
                json_object_set_new(m, "tool_call_id", json_string(rnd(2) ? "c1" : "c9"));
        return m;
}

static void check_prompt(const struct chat_prompt *p) {
        size_t at = 0;
        for (size_t i = 0; i < p->n_segments; i++) {
                const struct chat_segment *s = &p->segments[i];
                assert_int_equal(s->offset, at);
                assert_true(s->length > 0);
                if (s->kind == CHAT_SEGMENT_SPECIAL) {
                        const char *t = chat_special_text(s->token_id);
                        assert_non_null(t);
                        assert_int_equal(s->length, strlen(t));
                        assert_memory_equal(p->text + s->offset, t, s->length);
                } else if (s->kind == CHAT_SEGMENT_TEMPLATE) {
                        for (size_t k = 0; k < s->length; k++)
                                assert_int_equal(chat_special_match(p->text + s->offset + k, s->length - k, NULL), 0);
                }
                if (i > 0 && s->kind != CHAT_SEGMENT_SPECIAL)
                        assert_int_not_equal(p->segments[i - 1].kind, s->kind);  /* merged */
                at += s->length;
        }
        assert_int_equal(at, p->text_length);
        assert_memory_equal(p->text, "<bos>", 5);
}

static void test_random_requests(void **state) {
        size_t ok = 0, failed = 0;

        rng_state = 0x9E3779B97F4A7C15ULL;
        for (int iter = 0; iter < 3000; iter++) {
                json_t *msgs = json_array(), *tools = NULL;
                size_t n = rnd(6);
                for (size_t i = 0; i < n; i++)
                        json_array_append_new(msgs, random_message());
                if (rnd(3) == 0) {
                        tools = json_array();
                        size_t nt = 1 + rnd(2);
                        for (size_t i = 0; i < nt; i++) {
                                json_t *fn = json_pack("{s:s, s:o}", "name", rnd(10) ? "tool" : "", "parameters",
                                                       rnd(8) ? random_schema(0) : random_value(1));
                                if (rnd(2))
                                        json_object_set_new(fn, "description", random_string());
                                json_array_append_new(tools, json_pack("{s:s, s:o}", "type", "function", "function",
                                                                       fn));
                        }
                }
                struct chat_render_options o = { .enable_thinking = rnd(2), .add_generation_prompt = rnd(4) != 0 };
                struct chat_prompt p;
                struct chat_error err = { { 0 } };
                int r = chat_render(msgs, tools, &o, &p, &err);
                if (r == 0) {
                        check_prompt(&p);
                        chat_prompt_done(&p);
                        ok++;
                } else {
                        assert_true(r == -EINVAL || r == -EOPNOTSUPP);
                        assert_true(strlen(err.message) > 0);
                        failed++;
                }
                json_decref(msgs);
                json_decref(tools);
        }
        /* both paths must have been exercised */
        assert_true(ok > 300);
        assert_true(failed > 300);
}

/* ---- parser ---- */

struct collect {
        char content[8192];
        size_t length;
        bool stopped;
        size_t after_stop;
        size_t stop_string;
        enum chat_stop_reason reason;
};

static int collect(const struct chat_event *ev, void *userdata) {
        struct collect *c = userdata;
        if (c->stopped)
                c->after_stop++;
        if (ev->kind == CHAT_EVENT_CONTENT || ev->kind == CHAT_EVENT_REASONING) {
                assert_true(c->length + ev->length < sizeof(c->content));
                memcpy(c->content + c->length, ev->text, ev->length);
                c->length += ev->length;
        } else if (ev->kind == CHAT_EVENT_STOP) {
                c->stopped = true;
                c->reason = ev->stop_reason;
                c->stop_string = ev->stop_string;
        }
        return 0;
}

/* Plain text over {a, b}: the parser's output must equal a direct search for the earliest stop string. */
static void test_random_stop_strings(void **state) {
        rng_state = 0xD1B54A32D192ED03ULL;
        for (int iter = 0; iter < 3000; iter++) {
                char stops_buf[3][6];
                const char *stops[3];
                size_t n_stops = 1 + rnd(3);
                for (size_t i = 0; i < n_stops; i++) {
                        size_t l = 1 + rnd(5);
                        for (size_t k = 0; k < l; k++)
                                stops_buf[i][k] = "ab"[rnd(2)];
                        stops_buf[i][l] = '\0';
                        stops[i] = stops_buf[i];
                }
                char text[64];
                size_t tl = rnd(40);
                for (size_t k = 0; k < tl; k++)
                        text[k] = "ab"[rnd(2)];
                text[tl] = '\0';

                /*
                 * Expected: after each piece, the earliest match in all text so far (a stop string that
                 * completes first wins, even if a longer one would have started earlier).
                 */
                size_t cuts[64], n_cuts = 0, best = SIZE_MAX;
                for (size_t k = 0; k < tl;) {
                        size_t piece = 1 + rnd(4);
                        k += piece > tl - k ? tl - k : piece;
                        cuts[n_cuts++] = k;
                }
                for (size_t c = 0; c < n_cuts && best == SIZE_MAX; c++) {
                        char prefix[64];
                        memcpy(prefix, text, cuts[c]);
                        prefix[cuts[c]] = '\0';
                        for (size_t i = 0; i < n_stops; i++) {
                                const char *m = strstr(prefix, stops[i]);
                                if (m && (size_t) (m - prefix) < best)
                                        best = (size_t) (m - prefix);
                        }
                }

                struct chat_parser_options o = { .stop_strings = stops, .n_stop_strings = n_stops };
                struct chat_parser *p;
                struct collect c = { 0 };
                assert_int_equal(chat_parser_new(&o, collect, &c, &p), 0);
                for (size_t i = 0, k = 0; i < n_cuts; i++) {
                        assert_int_equal(chat_parser_feed(p, 1000, text + k, cuts[i] - k), 0);
                        k = cuts[i];
                }
                assert_int_equal(chat_parser_feed(p, CHAT_TOKEN_EOS, "", 0), 0);
                chat_parser_free(p);

                assert_true(c.stopped);
                assert_int_equal(c.after_stop, 0);
                if (best == SIZE_MAX) {
                        assert_int_equal(c.reason, CHAT_STOP_EOS);
                        assert_int_equal(c.length, tl);
                        assert_memory_equal(c.content, text, tl);
                } else {
                        assert_int_equal(c.reason, CHAT_STOP_STRING);
                        assert_int_equal(c.length, best);
                        assert_memory_equal(c.content, text, best);
                        assert_memory_equal(text + best, stops[c.stop_string], strlen(stops[c.stop_string]));
                }
        }
}

static int count_events(const struct chat_event *ev, void *userdata) {
        size_t *n = userdata;
        (*n)++;
        if (ev->kind == CHAT_EVENT_TOOL_CALL)
                assert_true(json_is_object(ev->arguments) && ev->name && ev->name[0]);
        if (ev->kind == CHAT_EVENT_CONTENT || ev->kind == CHAT_EVENT_REASONING)
                assert_true(ev->length > 0 && ev->text);
        return 0;
}

/* Random mixes of structural tokens and text: no crash, no leak, no event after the end. */
static void test_random_token_streams(void **state) {
        static const uint32_t ids[] = { 48, 49, 52, 100, 101, 105, 2, 46, 1000, 1000, 1000, 1000, 1000, 1000 };
        static const char *const texts[] = { "call:", "f", "{", "}", "[", "]", ":", ",", "a", "1.5", " ", "\n",
                                             "thought", "thought\n", "null", "\xff", "\xc3", "ABC" };
        static const char *const stops[] = { "ABCD", "}}" };

        rng_state = 0x2545F4914F6CDD1DULL;
        for (int iter = 0; iter < 3000; iter++) {
                struct chat_parser_options o = {
                        .stop_strings = stops, .n_stop_strings = rnd(3), .bare_tool_calls = rnd(2),
                        .stop_strings_in_reasoning = rnd(2),
                };
                struct chat_parser *p;
                size_t events = 0, n = rnd(60);
                assert_int_equal(chat_parser_new(&o, count_events, &events, &p), 0);
                for (size_t k = 0; k < n; k++) {
                        uint32_t id = rnd(40) == 0 ? (uint32_t[]) { 1, 106, 50 }[rnd(3)]
                                                   : ids[rnd(sizeof(ids) / sizeof(ids[0]))];
                        const char *t = texts[rnd(sizeof(texts) / sizeof(texts[0]))];
                        assert_int_equal(chat_parser_feed(p, id, t, strlen(t)), 0);
                }
                bool stopped = chat_parser_stopped(p);
                size_t before = events;
                assert_int_equal(chat_parser_finish(p), 0);
                if (stopped)
                        assert_int_equal(events, before);
                assert_true(chat_parser_stopped(p));
                chat_parser_free(p);
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_random_requests),
                cmocka_unit_test(test_random_stop_strings),
                cmocka_unit_test(test_random_token_streams),
        };
        return cmocka_run_group_tests_name("chat-random", tests, NULL, NULL);
}
