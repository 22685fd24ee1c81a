/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * Gemma 4 chat template, rendered in C.
 *
 * Reproduces the newer official template (the revision vLLM ships as examples/tool_chat_template_gemma4.jinja,
 * spec gemma4-tokenizer-chat.md §3, column [V-TPL] of §3.6) byte for byte for the inputs it accepts;
 * docs/chat.md lists the few places where bad input is refused instead of rendered the way Jinja would.
 *
 * Input: an array of OpenAI-style message objects, an optional array of tools (JSON-schema function
 * definitions), and options. Output: the prompt text plus a list of segments that says which bytes are
 * special tokens, which are template text, and which were copied from the request. Copied bytes must be
 * tokenized with special-token matching OFF, so "<|turn>" typed by a user stays plain text.
 *
 * Segment boundaries are NOT word boundaries for BPE: Hugging Face tokenizes all text between two special
 * tokens as one word, so runs of template and content text must be encoded together. chat_prompt_next_run()
 * yields exactly those units: one special token, or one maximal run of plain text.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

enum chat_segment_kind {
        CHAT_SEGMENT_SPECIAL,   /* exactly one special token, token_id set */
        CHAT_SEGMENT_TEMPLATE,  /* text the renderer wrote; never contains special-token text */
        CHAT_SEGMENT_CONTENT,   /* text copied from the request (untrusted) */
};

struct chat_segment {
        enum chat_segment_kind kind;
        uint32_t token_id;      /* CHAT_SEGMENT_SPECIAL only */
        size_t offset;          /* into chat_prompt.text */
        size_t length;
};

struct chat_prompt {
        char *text;             /* NUL-terminated (content may contain NUL bytes too: use text_length) */
        size_t text_length;
        struct chat_segment *segments;
        size_t n_segments;
};

struct chat_render_options {
        bool enable_thinking;           /* <|think|> in the system turn, no empty thought prefill */
        bool add_generation_prompt;     /* open the model turn at the end */
};

#define CHAT_ERROR_MAX 256
struct chat_error {
        char message[CHAT_ERROR_MAX];
};

/*
 * Render messages (array) and tools (array, or NULL / JSON null for none) into ret.
 * Returns 0, -EINVAL for bad input (err->message names the field, e.g. "messages[2].role: unknown role
 * \"bot\""), -EOPNOTSUPP for image/audio/video parts (text-only server), -ENOMEM.
 * err may be NULL. ret is written only on success; free it with chat_prompt_done().
 */
int chat_render(const json_t *messages, const json_t *tools, const struct chat_render_options *opts,
                struct chat_prompt *ret, struct chat_error *err);

/* The same, returning only the text (malloc'd, NUL-terminated; *ret_length may be NULL). */
int chat_render_string(const json_t *messages, const json_t *tools, const struct chat_render_options *opts,
                       char **ret_text, size_t *ret_length, struct chat_error *err);

void chat_prompt_done(struct chat_prompt *p);

/* One tokenizer unit: a special token, or a run of plain text to encode with special matching off. */
struct chat_prompt_run {
        bool special;
        uint32_t token_id;      /* special only */
        const char *text;       /* plain text (not NUL-terminated) or the special token's text */
        size_t length;
};

/* Iterate units; start with *cursor = 0. Returns false after the last one. */
bool chat_prompt_next_run(const struct chat_prompt *p, size_t *cursor, struct chat_prompt_run *ret);
