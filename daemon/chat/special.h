/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * The 24 special tokens of the Gemma 4 vocabulary (spec gemma4-tokenizer-chat.md §1.2), as the chat
 * template and the output parser use them. The tokenizer loads the same tokens from tokenizer.json; the
 * daemon checks at boot that both agree (chat_special_verify), so a checkpoint with a different layout is
 * refused instead of silently producing wrong prompts.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
        CHAT_TOKEN_PAD           = 0,
        CHAT_TOKEN_EOS           = 1,
        CHAT_TOKEN_BOS           = 2,
        CHAT_TOKEN_UNK           = 3,
        CHAT_TOKEN_MASK          = 4,
        CHAT_TOKEN_TOOL          = 46,     /* <|tool>  declaration open */
        CHAT_TOKEN_TOOL_END      = 47,     /* <tool|> */
        CHAT_TOKEN_TOOL_CALL     = 48,     /* <|tool_call> */
        CHAT_TOKEN_TOOL_CALL_END = 49,     /* <tool_call|> */
        CHAT_TOKEN_TOOL_RESPONSE = 50,     /* <|tool_response>, also a stop token */
        CHAT_TOKEN_TOOL_RESPONSE_END = 51, /* <tool_response|> */
        CHAT_TOKEN_QUOTE         = 52,     /* <|"|> string delimiter */
        CHAT_TOKEN_THINK         = 98,     /* <|think|> */
        CHAT_TOKEN_CHANNEL       = 100,    /* <|channel> */
        CHAT_TOKEN_CHANNEL_END   = 101,    /* <channel|> */
        CHAT_TOKEN_TURN          = 105,    /* <|turn> */
        CHAT_TOKEN_TURN_END      = 106,    /* <turn|>, a stop token */
};

struct chat_special_token {
        uint32_t id;
        const char *text;
        size_t length;
};

extern const struct chat_special_token chat_special_tokens[];
extern const size_t chat_n_special_tokens;

/* The literal text of special token `id`, or NULL when `id` is an ordinary token. */
const char *chat_special_text(uint32_t id);

static inline bool chat_is_special(uint32_t id) {
        return chat_special_text(id) != NULL;
}

/* If a special token's text starts at s (length n), return its length and write its id; else 0. */
size_t chat_special_match(const char *s, size_t n, uint32_t *ret_id);

/*
 * Check the table against the loaded tokenizer: lookup(text) must give the id of every entry.
 * Returns 0, or -EPROTO naming the first token that differs (in ret_bad, may be NULL).
 */
int chat_special_verify(int (*lookup)(void *userdata, const char *text, uint32_t *ret_id), void *userdata,
                        const char **ret_bad);
