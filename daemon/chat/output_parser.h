/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * Streaming parser for Gemma 4 model output (spec gemma4-tokenizer-chat.md §4).
 *
 * The I/O thread feeds it every generated token as (id, decoded text). It splits the stream into
 * reasoning (the thought channel <|channel>thought\n…<channel|>), visible content and tool calls
 * (<|tool_call>call:NAME{ARGS}<tool_call|>), and ends it on a stop token or a stop string. Structure is
 * recognised on token ids (100/101 channel, 48/49 tool call, 52 string delimiter, 1/106/50 stop), never on
 * text, so a special token can not arrive half-emitted and text that merely spells "<|tool_call>" stays
 * text. Pieces of special tokens are ignored; other special tokens (e.g. a stray <|turn>) are dropped, as
 * Hugging Face's skip_special_tokens would.
 *
 * Events go to a callback, synchronously, from inside chat_parser_feed()/chat_parser_finish(). Pointers in
 * an event are valid only during the callback (json_incref the arguments to keep them).
 *
 * Not thread-safe; one parser per request, used by one thread.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

enum chat_event_kind {
        CHAT_EVENT_REASONING,   /* text delta of the thought channel, "thought\n" label removed */
        CHAT_EVENT_CONTENT,     /* visible text delta */
        CHAT_EVENT_TOOL_CALL,   /* one complete tool call: name + arguments object */
        CHAT_EVENT_STOP,        /* generation ended on a stop token or stop string; no events follow */
};

enum chat_stop_reason {
        CHAT_STOP_EOS,                  /* <eos> (1) */
        CHAT_STOP_END_OF_TURN,          /* <turn|> (106) */
        CHAT_STOP_TOOL_RESPONSE,        /* <|tool_response> (50): the model waits for tool results */
        CHAT_STOP_STRING,               /* a stop string matched; it is not part of the content */
};

struct chat_event {
        enum chat_event_kind kind;
        const char *text;               /* REASONING, CONTENT: the delta (not NUL-terminated) */
        size_t length;
        bool tool_call_error;           /* CONTENT: this text is a tool call that could not be parsed */
        const char *name;               /* TOOL_CALL: function name, NUL-terminated */
        json_t *arguments;              /* TOOL_CALL: JSON object, borrowed */
        size_t index;                   /* TOOL_CALL: 0 for the first call of the response, 1, ... */
        enum chat_stop_reason stop_reason;      /* STOP */
        uint32_t stop_token;            /* STOP by token: its id */
        size_t stop_string;             /* STOP_STRING: index into options.stop_strings */
};

/* Return 0 to go on, or a negative errno to abort: feed/finish then return that error. */
typedef int (*chat_event_fn)(const struct chat_event *event, void *userdata);

struct chat_parser_options {
        const char *const *stop_strings;        /* UTF-8, non-empty; copied */
        size_t n_stop_strings;
        bool stop_strings_in_reasoning;         /* also match stop strings inside the thought channel */
        bool bare_tool_calls;                   /* accept `call:NAME{…}` without <|tool_call> at the start of
                                                   the content or right after a call (a known deviation);
                                                   set it when the request offers tools */
};

struct chat_parser;

/* options may be NULL. Returns 0, -EINVAL (empty stop string, naming its index in the log), -ENOMEM. */
int chat_parser_new(const struct chat_parser_options *options, chat_event_fn emit, void *userdata,
                    struct chat_parser **ret);
void chat_parser_free(struct chat_parser *p);

/*
 * Feed one generated token: its id and the text the streaming detokenizer produced for it (may be empty,
 * e.g. for half a UTF-8 character; ignored for special tokens). After a stop, further tokens are ignored.
 * Returns 0, a callback's error, or -ENOMEM; after an error the parser may only be freed.
 * Stop strings are matched on text only: one that spells a special token (e.g. "<turn|>") never matches,
 * the stop ids cover those.
 */
int chat_parser_feed(struct chat_parser *p, uint32_t token_id, const char *piece, size_t length);

/*
 * Generation ended without a stop (length limit, cancellation): release held-back text (a partial stop
 * string, a pending "thought" label) and report an unfinished tool call as content with tool_call_error.
 */
int chat_parser_finish(struct chat_parser *p);

bool chat_parser_stopped(const struct chat_parser *p);

/* A tool call could not be parsed in this response (sticky; for the final event of the request). */
bool chat_parser_tool_call_error(const struct chat_parser *p);

/* Number of tool calls emitted so far. */
size_t chat_parser_n_tool_calls(const struct chat_parser *p);

/*
 * Parse the ARGS of `call:NAME{ARGS}` (the text between the braces, with <|"|> spelled out) into a JSON
 * object the way vLLM's gemma4 parser does (§4.3). For tests and for callers that hold a complete text.
 * Returns 0 or -ENOMEM.
 */
int chat_parse_tool_arguments(const char *text, size_t length, json_t **ret);
