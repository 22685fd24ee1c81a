/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Output parser tests (spec gemma4-tokenizer-chat.md §4): reasoning split, tool calls, argument conversion,
 * malformed calls, stop ids and stop strings, the deviations of §4.1. Most scenarios are fed several ways
 * (whole text pieces, then 1, 2 and 5 characters a piece) and must give the same result every time.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "chat/output_parser.h"
#include "chat/special.h"

#define ORDINARY_ID 1000        /* any id that is not special */

struct rec {
        char reasoning[2048];
        char content[2048];
        char error_content[1024];       /* content events flagged tool_call_error */
        char calls[8][512];             /* "name json" */
        size_t n_calls;
        size_t n_events;
        bool stopped;
        enum chat_stop_reason reason;
        uint32_t stop_token;
        size_t stop_string;
        size_t events_after_stop;
        int fail_with;
};

static void append(char *dst, size_t size, const char *s, size_t n) {
        size_t l = strlen(dst);
        assert_true(l + n < size);
        memcpy(dst + l, s, n);
        dst[l + n] = '\0';
}

static int on_event(const struct chat_event *ev, void *userdata) {
        struct rec *r = userdata;

        r->n_events++;
        if (r->stopped)
                r->events_after_stop++;
        switch (ev->kind) {
        case CHAT_EVENT_REASONING:
                assert_true(ev->length > 0);
                append(r->reasoning, sizeof(r->reasoning), ev->text, ev->length);
                break;
        case CHAT_EVENT_CONTENT:
                assert_true(ev->length > 0);
                if (ev->tool_call_error)
                        append(r->error_content, sizeof(r->error_content), ev->text, ev->length);
                append(r->content, sizeof(r->content), ev->text, ev->length);
                break;
        case CHAT_EVENT_TOOL_CALL: {
                assert_true(r->n_calls < 8);
                assert_int_equal(ev->index, r->n_calls);
                assert_true(json_is_object(ev->arguments));
                char *js = json_dumps(ev->arguments, JSON_COMPACT | JSON_SORT_KEYS);
                assert_non_null(js);
                snprintf(r->calls[r->n_calls++], sizeof(r->calls[0]), "%s %s", ev->name, js);
                free(js);
                break;
        }
        case CHAT_EVENT_STOP:
                r->stopped = true;
                r->reason = ev->stop_reason;
                r->stop_token = ev->stop_token;
                r->stop_string = ev->stop_string;
                break;
        }
        return r->fail_with;
}

/* Feed text in which special-token strings stand for their ids; ordinary text in pieces of `chunk` chars. */
static int feed_text(struct chat_parser *p, const char *s, size_t chunk) {
        size_t n = strlen(s), i = 0;

        while (i < n) {
                uint32_t id;
                size_t m = chat_special_match(s + i, n - i, &id);
                int r;
                if (m > 0) {
                        r = chat_parser_feed(p, id, s + i, m);
                        if (r < 0)
                                return r;
                        i += m;
                        continue;
                }
                size_t end = i;
                while (end < n && chat_special_match(s + end, n - end, NULL) == 0)
                        end++;
                while (i < end) {
                        size_t len = 0, chars = 0;
                        while (i + len < end && (chunk == 0 || chars < chunk)) {
                                len++;
                                while (i + len < end && ((unsigned char) s[i + len] & 0xC0) == 0x80)
                                        len++;
                                chars++;
                        }
                        r = chat_parser_feed(p, ORDINARY_ID, s + i, len);
                        if (r < 0)
                                return r;
                        i += len;
                }
        }
        return 0;
}

static void run(const char *output, const struct chat_parser_options *o, size_t chunk, bool finish,
                struct rec *r) {
        struct chat_parser *p;

        memset(r, 0, sizeof(*r));
        assert_int_equal(chat_parser_new(o, on_event, r, &p), 0);
        assert_int_equal(feed_text(p, output, chunk), 0);
        if (finish)
                assert_int_equal(chat_parser_finish(p), 0);
        assert_int_equal(r->events_after_stop, 0);
        chat_parser_free(p);
}

/* Run with every chunking; all must agree with the whole-piece run, which is returned. */
static void run_all(const char *output, const struct chat_parser_options *o, bool finish, struct rec *ret) {
        static const size_t chunks[] = { 1, 2, 5 };
        struct rec other;

        run(output, o, 0, finish, ret);
        for (size_t i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++) {
                run(output, o, chunks[i], finish, &other);
                assert_string_equal(other.reasoning, ret->reasoning);
                assert_string_equal(other.content, ret->content);
                assert_string_equal(other.error_content, ret->error_content);
                assert_int_equal(other.n_calls, ret->n_calls);
                for (size_t k = 0; k < ret->n_calls; k++)
                        assert_string_equal(other.calls[k], ret->calls[k]);
                assert_int_equal(other.stopped, ret->stopped);
                assert_int_equal(other.reason, ret->reason);
                assert_int_equal(other.stop_string, ret->stop_string);
        }
}

/* ---- reasoning and content ---- */

static void test_plain_content(void **state) {
        struct rec r;
        run_all("Hello, world! 😀 日本語<turn|>", NULL, false, &r);
        assert_string_equal(r.content, "Hello, world! 😀 日本語");
        assert_string_equal(r.reasoning, "");
        assert_true(r.stopped);
        assert_int_equal(r.reason, CHAT_STOP_END_OF_TURN);
        assert_int_equal(r.stop_token, 106);
}

static void test_reasoning_split(void **state) {
        struct rec r;
        run_all("<|channel>thought\nThe user asks 2+2.\nIt is 4.<channel|>The answer is 4.<turn|>", NULL, false, &r);
        assert_string_equal(r.reasoning, "The user asks 2+2.\nIt is 4.");
        assert_string_equal(r.content, "The answer is 4.");
        assert_int_equal(r.reason, CHAT_STOP_END_OF_TURN);
}

static void test_reasoning_label_is_buffered(void **state) {
        struct rec r = { 0 };
        struct chat_parser *p;

        assert_int_equal(chat_parser_new(NULL, on_event, &r, &p), 0);
        assert_int_equal(chat_parser_feed(p, CHAT_TOKEN_CHANNEL, "<|channel>", 10), 0);
        assert_int_equal(chat_parser_feed(p, ORDINARY_ID, "thou", 4), 0);
        assert_int_equal(chat_parser_feed(p, ORDINARY_ID, "ght", 3), 0);
        assert_int_equal(r.n_events, 0);        /* could still be the label */
        assert_int_equal(chat_parser_feed(p, ORDINARY_ID, "\nHm", 3), 0);
        assert_string_equal(r.reasoning, "Hm");
        assert_int_equal(chat_parser_feed(p, ORDINARY_ID, "m", 1), 0);
        assert_string_equal(r.reasoning, "Hmm");
        chat_parser_free(p);
}

static void test_channel_without_label(void **state) {
        struct rec r;
        /* <|channel> not followed by "thought" (§4.1): all of it is reasoning */
        run_all("<|channel>thinking hard<channel|>Answer<eos>", NULL, false, &r);
        assert_string_equal(r.reasoning, "thinking hard");
        assert_string_equal(r.content, "Answer");
        assert_int_equal(r.reason, CHAT_STOP_EOS);
        run_all("<|channel>tho<channel|>A<eos>", NULL, false, &r);  /* a label cut short is dropped */
        assert_string_equal(r.reasoning, "");
        assert_string_equal(r.content, "A");
}

static void test_extra_empty_channel_and_stray_close(void **state) {
        struct rec r;
        /* thinking off: the model repeats the empty channel, and closes a channel that is not open */
        run_all("<|channel>thought\n<channel|>Hi there.<channel|> Bye<turn|>", NULL, false, &r);
        assert_string_equal(r.reasoning, "");
        assert_string_equal(r.content, "Hi there. Bye");
        assert_int_equal(r.n_events, 2 + 1);    /* "Hi there." " Bye" stop */
}

static void test_other_specials_dropped(void **state) {
        struct rec r;
        run_all("Hi<|turn><bos><|\"|><tool_call|> there<turn|>", NULL, false, &r);
        assert_string_equal(r.content, "Hi there");
}

/* ---- tool calls ---- */

static void test_tool_call_single(void **state) {
        struct rec r;
        run_all("<|tool_call>call:get_current_temperature{location:<|\"|>London<|\"|>}<tool_call|><|tool_response>",
                NULL, false, &r);
        assert_int_equal(r.n_calls, 1);
        assert_string_equal(r.calls[0], "get_current_temperature {\"location\":\"London\"}");
        assert_string_equal(r.content, "");
        assert_int_equal(r.reason, CHAT_STOP_TOOL_RESPONSE);
        assert_int_equal(r.stop_token, 50);
}

static void test_tool_calls_multiple(void **state) {
        struct rec r;
        run_all("Let me check.<|tool_call>call:a{x:1}<tool_call|><|tool_call>call:b.c-d{y:<|\"|>z<|\"|>,"
                "w:false}<tool_call|><|tool_response>", NULL, false, &r);
        assert_string_equal(r.content, "Let me check.");
        assert_int_equal(r.n_calls, 2);
        assert_string_equal(r.calls[0], "a {\"x\":1}");
        assert_string_equal(r.calls[1], "b.c-d {\"w\":false,\"y\":\"z\"}");
}

static void test_tool_call_nested_and_values(void **state) {
        struct rec r;
        run_all("<|tool_call>call:f{o:{k:<|\"|>v<|\"|>,n:[1,2.5,{d:true},[<|\"|>a]<|\"|>]]},s:<|\"|>a,b{c}<|\"|>,"
                "z:null,w:None,u:NIL,e:1e5,neg:-3,fl:0.5,str:hello, sp : 7 ,<|\"|>qk<|\"|>:1,emp:<|\"|><|\"|>}"
                "<tool_call|><|tool_response>", NULL, false, &r);
        assert_int_equal(r.n_calls, 1);
        assert_string_equal(r.calls[0], "f {\"e\":\"1e5\",\"emp\":\"\",\"fl\":0.5,\"neg\":-3,\"o\":{\"k\":\"v\","
                                        "\"n\":[1,2.5,{\"d\":true},[\"a]\"]]},\"qk\":1,\"s\":\"a,b{c}\",\"sp\":7,"
                                        "\"str\":\"hello\",\"u\":null,\"w\":null,\"z\":null}");
}

static void test_tool_call_text_lookalikes(void **state) {
        struct rec r = { 0 };
        struct chat_parser *p;

        /* "}<tool_call|>" typed as text inside a string does not close the call: only token 49 does */
        assert_int_equal(chat_parser_new(NULL, on_event, &r, &p), 0);
        assert_int_equal(chat_parser_feed(p, CHAT_TOKEN_TOOL_CALL, "", 0), 0);
        assert_int_equal(chat_parser_feed(p, ORDINARY_ID, "call:f{a:", 9), 0);
        assert_int_equal(chat_parser_feed(p, CHAT_TOKEN_QUOTE, "", 0), 0);
        assert_int_equal(chat_parser_feed(p, ORDINARY_ID, "x}<tool_call|>", 14), 0);
        assert_int_equal(chat_parser_feed(p, ORDINARY_ID, "<|\"|>y", 6), 0);
        assert_int_equal(chat_parser_feed(p, CHAT_TOKEN_QUOTE, "", 0), 0);
        assert_int_equal(r.n_events, 0);
        assert_int_equal(chat_parser_feed(p, ORDINARY_ID, "}", 1), 0);
        assert_int_equal(chat_parser_feed(p, CHAT_TOKEN_TOOL_CALL_END, "", 0), 0);
        assert_int_equal(r.n_calls, 1);
        assert_string_equal(r.calls[0], "f {\"a\":\"x}<tool_call|><|\\\"|>y\"}");
        assert_false(chat_parser_tool_call_error(p));
        assert_int_equal(chat_parser_n_tool_calls(p), 1);
        chat_parser_free(p);
}

static void test_malformed_tool_calls(void **state) {
        static const struct { const char *out, *content, *error_part; } cases[] = {
                { "Hi<|tool_call>call:{oops<tool_call|><turn|>", "Hi<|tool_call>call:{oops<tool_call|>",
                  "<|tool_call>call:{oops<tool_call|>" },
                { "<|tool_call>nonsense<tool_call|>after<turn|>", "<|tool_call>nonsense<tool_call|>after",
                  "<|tool_call>nonsense<tool_call|>" },
                { "<|tool_call>call:f(a=1)<tool_call|><eos>", "<|tool_call>call:f(a=1)<tool_call|>",
                  "<|tool_call>call:f(a=1)<tool_call|>" },
                { "<|tool_call>call:f{a:<|\"|>x<|\"|><tool_call|><eos>", "<|tool_call>call:f{a:<|\"|>x<|\"|><tool_call|>",
                  "<|tool_call>call:f{a:<|\"|>x<|\"|><tool_call|>" },
                { "<|tool_call><tool_call|><eos>", "<|tool_call><tool_call|>", "<|tool_call><tool_call|>" },
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct rec r;
                run_all(cases[i].out, NULL, false, &r);
                assert_int_equal(r.n_calls, 0);
                assert_string_equal(r.content, cases[i].content);
                assert_string_equal(r.error_content, cases[i].error_part);
                assert_true(r.stopped);
        }
        /* the sticky flag */
        struct rec r = { 0 };
        struct chat_parser *p;
        assert_int_equal(chat_parser_new(NULL, on_event, &r, &p), 0);
        assert_int_equal(feed_text(p, "<|tool_call>bad<tool_call|><|tool_call>call:g{}<tool_call|>", 0), 0);
        assert_true(chat_parser_tool_call_error(p));
        assert_int_equal(r.n_calls, 1);
        assert_string_equal(r.calls[0], "g {}");
        chat_parser_free(p);
}

static void test_turn_end_closes_call(void **state) {
        struct rec r;
        /* <turn|> instead of <tool_call|> (§4.1) */
        run_all("<|tool_call>call:get_weather{city:<|\"|>Paris<|\"|>}<turn|>", NULL, false, &r);
        assert_int_equal(r.n_calls, 1);
        assert_string_equal(r.calls[0], "get_weather {\"city\":\"Paris\"}");
        assert_int_equal(r.reason, CHAT_STOP_END_OF_TURN);
        assert_string_equal(r.error_content, "");
}

static void test_eos_after_call(void **state) {
        struct rec r;
        /* <eos> instead of <|tool_response> (§4.1) */
        run_all("<|tool_call>call:ping{}<tool_call|><eos>", NULL, false, &r);
        assert_int_equal(r.n_calls, 1);
        assert_string_equal(r.calls[0], "ping {}");
        assert_int_equal(r.reason, CHAT_STOP_EOS);
}

static void test_new_call_closes_unclosed_call(void **state) {
        struct rec r;
        run_all("<|tool_call>call:a{x:1}<|tool_call>call:b{}<tool_call|><|tool_response>", NULL, false, &r);
        assert_int_equal(r.n_calls, 2);
        assert_string_equal(r.calls[0], "a {\"x\":1}");
        assert_string_equal(r.calls[1], "b {}");
}

static void test_tool_call_ends_reasoning(void **state) {
        struct rec r;
        run_all("<|channel>thought\nI need the weather.<|tool_call>call:w{c:<|\"|>L<|\"|>}<tool_call|><|tool_response>",
                NULL, false, &r);
        assert_string_equal(r.reasoning, "I need the weather.");
        assert_int_equal(r.n_calls, 1);
        assert_string_equal(r.calls[0], "w {\"c\":\"L\"}");
}

static void test_finish_inside_call(void **state) {
        struct rec r;
        /* cut off by the length limit: the half call surfaces as content, flagged */
        run_all("Sure.<|tool_call>call:f{a:1", NULL, true, &r);
        assert_int_equal(r.n_calls, 0);
        assert_string_equal(r.content, "Sure.<|tool_call>call:f{a:1");
        assert_string_equal(r.error_content, "<|tool_call>call:f{a:1");
        assert_false(r.stopped);        /* finish emits no stop event */
}

static void test_bare_tool_calls(void **state) {
        struct chat_parser_options o = { .bare_tool_calls = true };
        struct rec r;

        run_all("call:get_weather{city:<|\"|>Paris<|\"|>}<eos>", &o, false, &r);
        assert_int_equal(r.n_calls, 1);
        assert_string_equal(r.calls[0], "get_weather {\"city\":\"Paris\"}");
        assert_string_equal(r.content, "");

        run_all("\ncall:f{a:<|\"|>}{<|\"|>,o:{b:1}}call:g{} done<eos>", &o, false, &r);
        assert_int_equal(r.n_calls, 2);
        assert_string_equal(r.calls[0], "f {\"a\":\"}{\",\"o\":{\"b\":1}}");
        assert_string_equal(r.calls[1], "g {}");
        assert_string_equal(r.content, "\n done");

        run_all("<|channel>thought\nx<channel|>call:h{}<eos>", &o, false, &r);
        assert_string_equal(r.reasoning, "x");
        assert_int_equal(r.n_calls, 1);

        /* looks like a call at first, then is not */
        run_all("calling you: call me{maybe}<turn|>", &o, false, &r);
        assert_int_equal(r.n_calls, 0);
        assert_string_equal(r.content, "calling you: call me{maybe}");
        run_all("call:<turn|>", &o, false, &r);
        assert_string_equal(r.content, "call:");

        /* off: plain content */
        run_all("call:f{a:1}<eos>", NULL, false, &r);
        assert_int_equal(r.n_calls, 0);
        assert_string_equal(r.content, "call:f{a:1}");
        /* not at the start of the content: plain content */
        run_all("Then call:f{a:1}<eos>", &o, false, &r);
        assert_int_equal(r.n_calls, 0);
        assert_string_equal(r.content, "Then call:f{a:1}");
}

/* ---- stops ---- */

static void test_stop_ids(void **state) {
        static const struct { const char *tok; uint32_t id; enum chat_stop_reason reason; } cases[] = {
                { "<eos>", 1, CHAT_STOP_EOS },
                { "<turn|>", 106, CHAT_STOP_END_OF_TURN },
                { "<|tool_response>", 50, CHAT_STOP_TOOL_RESPONSE },
        };
        for (size_t i = 0; i < 3; i++) {
                char out[128];
                struct rec r;
                snprintf(out, sizeof(out), "Done.%sIgnored<turn|>more", cases[i].tok);
                run_all(out, NULL, false, &r);       /* run() asserts no event after the stop */
                assert_string_equal(r.content, "Done.");
                assert_int_equal(r.reason, cases[i].reason);
                assert_int_equal(r.stop_token, cases[i].id);
        }
}

static void test_stop_string_trimmed(void **state) {
        static const char *const stops[] = { "STOP", "\n\nUser:" };
        struct chat_parser_options o = { .stop_strings = stops, .n_stop_strings = 2 };
        struct rec r;

        run_all("Hello STOP more text<turn|>", &o, false, &r);
        assert_string_equal(r.content, "Hello ");
        assert_true(r.stopped);
        assert_int_equal(r.reason, CHAT_STOP_STRING);
        assert_int_equal(r.stop_string, 0);

        /* spanning pieces and containing a newline run */
        run_all("Answer.\n\nUser: next<turn|>", &o, false, &r);
        assert_string_equal(r.content, "Answer.");
        assert_int_equal(r.stop_string, 1);

        /* earliest match wins */
        run_all("a\n\nUser:STOP<turn|>", &o, false, &r);
        assert_string_equal(r.content, "a");
        assert_int_equal(r.stop_string, 1);
}

static void test_stop_string_prefix_released(void **state) {
        static const char *const stops[] = { "ABCD" };
        struct chat_parser_options o = { .stop_strings = stops, .n_stop_strings = 1 };
        struct rec r = { 0 };
        struct chat_parser *p;

        assert_int_equal(chat_parser_new(&o, on_event, &r, &p), 0);
        assert_int_equal(chat_parser_feed(p, ORDINARY_ID, "xAB", 3), 0);
        assert_string_equal(r.content, "x");            /* "AB" may start the stop string */
        assert_int_equal(chat_parser_feed(p, ORDINARY_ID, "C", 1), 0);
        assert_string_equal(r.content, "x");
        assert_int_equal(chat_parser_feed(p, ORDINARY_ID, "x", 1), 0);
        assert_string_equal(r.content, "xABCx");        /* it was not: emitted late, in order */
        assert_int_equal(chat_parser_feed(p, ORDINARY_ID, "AB", 2), 0);
        assert_int_equal(chat_parser_feed(p, ORDINARY_ID, "CD tail", 7), 0);
        assert_string_equal(r.content, "xABCx");
        assert_true(r.stopped);
        assert_true(chat_parser_stopped(p));
        assert_int_equal(chat_parser_feed(p, ORDINARY_ID, "more", 4), 0);
        assert_int_equal(r.events_after_stop, 0);
        chat_parser_free(p);

        /* overlapping prefix */
        static const char *const aab[] = { "aab" };
        struct chat_parser_options o2 = { .stop_strings = aab, .n_stop_strings = 1 };
        run_all("aaab<eos>", &o2, false, &r);
        assert_string_equal(r.content, "a");
        assert_int_equal(r.reason, CHAT_STOP_STRING);
}

static void test_stop_prefix_flushed_at_end(void **state) {
        static const char *const stops[] = { "ABCD" };
        struct chat_parser_options o = { .stop_strings = stops, .n_stop_strings = 1 };
        struct rec r;

        run_all("xABC<turn|>", &o, false, &r);
        assert_string_equal(r.content, "xABC");
        assert_int_equal(r.reason, CHAT_STOP_END_OF_TURN);
        run_all("xAB", &o, true, &r);           /* length limit */
        assert_string_equal(r.content, "xAB");
        run_all("xAB<|tool_call>call:f{}<tool_call|><|tool_response>", &o, false, &r);
        assert_string_equal(r.content, "xAB");
        assert_int_equal(r.n_calls, 1);
}

static void test_stop_strings_and_reasoning(void **state) {
        static const char *const stops[] = { "END" };
        struct chat_parser_options o = { .stop_strings = stops, .n_stop_strings = 1 };
        struct rec r;

        /* by default reasoning is not searched */
        run_all("<|channel>thought\nno END here<channel|>ok END x<turn|>", &o, false, &r);
        assert_string_equal(r.reasoning, "no END here");
        assert_string_equal(r.content, "ok ");
        assert_int_equal(r.reason, CHAT_STOP_STRING);

        o.stop_strings_in_reasoning = true;
        run_all("<|channel>thought\nno END here<channel|>ok<turn|>", &o, false, &r);
        assert_string_equal(r.reasoning, "no ");
        assert_string_equal(r.content, "");
        assert_int_equal(r.reason, CHAT_STOP_STRING);
        /* a held prefix in reasoning is released when the channel closes */
        run_all("<|channel>thought\nhmm EN<channel|>ok<turn|>", &o, false, &r);
        assert_string_equal(r.reasoning, "hmm EN");
        assert_string_equal(r.content, "ok");
}

/* ---- arguments ---- */

static void test_argument_conversion(void **state) {
        static const struct { const char *in, *want; } cases[] = {
                { "", "{}" },
                { "  \n", "{}" },
                { "location:<|\"|>Tokyo<|\"|>", "{\"location\":\"Tokyo\"}" },
                { "count:42,flag:true", "{\"count\":42,\"flag\":true}" },
                { "a:True,b:FALSE", "{\"a\":\"True\",\"b\":\"FALSE\"}" },      /* booleans are case-sensitive */
                { "a:NULL,b:None,c:nil,d:Nil", "{\"a\":null,\"b\":null,\"c\":null,\"d\":null}" },
                { "a:1.5,b:-2,c:+5,d:1_000,e:1.,f:.5,g:1.5e3", "{\"a\":1.5,\"b\":-2,\"c\":5,\"d\":1000,\"e\":1.0,"
                                                                "\"f\":0.5,\"g\":1500.0}" },
                { "a:1e5,b:1.5.3,c:0x10,d:1__0,e:12abc,f:inf", "{\"a\":\"1e5\",\"b\":\"1.5.3\",\"c\":\"0x10\","
                                                               "\"d\":\"1__0\",\"e\":\"12abc\",\"f\":\"inf\"}" },
                { "<|\"|>quoted key<|\"|>:1", "{\"quoted key\":1}" },
                { "a:", "{\"a\":\"\"}" },
                { "a:<|\"|>unterminated, b:1", "{\"a\":\"unterminated, b:1\"}" },
                { "o:{a:{b:[1,{c:<|\"|>}<|\"|>}]}}", "{\"o\":{\"a\":{\"b\":[1,{\"c\":\"}\"}]}}}" },
                { "o:{a:1,b:2", "{\"o\":{\"a\":1}}" },        /* unfinished object: partial, last bare value withheld */
                { "l:[1, 2 ,<|\"|>x<|\"|>,[true,null]]", "{\"l\":[1,2,\"x\",[true,null]]}" },
                { "dup:1,dup:2", "{\"dup\":2}" },
                { "a : hello world ", "{\"a\":\"hello world\"}" },
                { "x:1,:2", "{\"\":2,\"x\":1}" },
                { "nokey", "{}" },
                { "big:123456789012345678901234567890", "{\"big\":1.2345678901234568e29}" },
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                json_t *args = NULL;
                assert_int_equal(chat_parse_tool_arguments(cases[i].in, strlen(cases[i].in), &args), 0);
                char *js = json_dumps(args, JSON_COMPACT | JSON_SORT_KEYS);
                if (strcmp(js, cases[i].want) != 0)
                        fail_msg("args %s: got %s, want %s", cases[i].in, js, cases[i].want);
                free(js);
                json_decref(args);
        }
}

static void test_invalid_bytes(void **state) {
        struct rec r = { 0 };
        struct chat_parser *p;
        json_t *args;

        /* 0xFF in a piece can not be taken for a delimiter; invalid UTF-8 becomes U+FFFD in arguments */
        assert_int_equal(chat_parser_new(NULL, on_event, &r, &p), 0);
        assert_int_equal(feed_text(p, "<|tool_call>call:f{a:", 0), 0);
        assert_int_equal(chat_parser_feed(p, ORDINARY_ID, "\xff" "b\xc3", 3), 0);
        assert_int_equal(feed_text(p, "}<tool_call|>", 0), 0);
        assert_int_equal(r.n_calls, 1);
        assert_string_equal(r.calls[0], "f {\"a\":\"\xEF\xBF\xBD" "b\xEF\xBF\xBD\"}");
        chat_parser_free(p);

        assert_int_equal(chat_parse_tool_arguments("k\xe2:1", 4, &args), 0);
        assert_non_null(json_object_get(args, "k\xEF\xBF\xBD"));
        json_decref(args);
}

static void test_callback_error_propagates(void **state) {
        struct rec r = { 0 };
        struct chat_parser *p;

        r.fail_with = -ECANCELED;
        assert_int_equal(chat_parser_new(NULL, on_event, &r, &p), 0);
        assert_int_equal(chat_parser_feed(p, ORDINARY_ID, "x", 1), -ECANCELED);
        chat_parser_free(p);
}

static void test_options_checked(void **state) {
        static const char *const bad[] = { "ok", "" };
        struct chat_parser_options o = { .stop_strings = bad, .n_stop_strings = 2 };
        struct chat_parser *p = NULL;
        struct rec r;

        assert_int_equal(chat_parser_new(&o, on_event, &r, &p), -EINVAL);
        assert_null(p);
        assert_int_equal(chat_parser_new(NULL, NULL, &r, &p), -EINVAL);
        chat_parser_free(NULL);
}

static void test_feed_after_finish_ignored(void **state) {
        struct rec r = { 0 };
        struct chat_parser *p;

        assert_int_equal(chat_parser_new(NULL, on_event, &r, &p), 0);
        assert_int_equal(chat_parser_feed(p, ORDINARY_ID, "a", 1), 0);
        assert_int_equal(chat_parser_finish(p), 0);
        assert_int_equal(chat_parser_feed(p, ORDINARY_ID, "b", 1), 0);
        assert_int_equal(chat_parser_finish(p), 0);
        assert_string_equal(r.content, "a");
        chat_parser_free(p);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_plain_content),
                cmocka_unit_test(test_reasoning_split),
                cmocka_unit_test(test_reasoning_label_is_buffered),
                cmocka_unit_test(test_channel_without_label),
                cmocka_unit_test(test_extra_empty_channel_and_stray_close),
                cmocka_unit_test(test_other_specials_dropped),
                cmocka_unit_test(test_tool_call_single),
                cmocka_unit_test(test_tool_calls_multiple),
                cmocka_unit_test(test_tool_call_nested_and_values),
                cmocka_unit_test(test_tool_call_text_lookalikes),
                cmocka_unit_test(test_malformed_tool_calls),
                cmocka_unit_test(test_turn_end_closes_call),
                cmocka_unit_test(test_eos_after_call),
                cmocka_unit_test(test_new_call_closes_unclosed_call),
                cmocka_unit_test(test_tool_call_ends_reasoning),
                cmocka_unit_test(test_finish_inside_call),
                cmocka_unit_test(test_bare_tool_calls),
                cmocka_unit_test(test_stop_ids),
                cmocka_unit_test(test_stop_string_trimmed),
                cmocka_unit_test(test_stop_string_prefix_released),
                cmocka_unit_test(test_stop_prefix_flushed_at_end),
                cmocka_unit_test(test_stop_strings_and_reasoning),
                cmocka_unit_test(test_argument_conversion),
                cmocka_unit_test(test_invalid_bytes),
                cmocka_unit_test(test_callback_error_propagates),
                cmocka_unit_test(test_options_checked),
                cmocka_unit_test(test_feed_after_finish_ignored),
        };
        return cmocka_run_group_tests_name("chat-parser", tests, NULL, NULL);
}
