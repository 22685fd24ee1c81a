/* SPDX-License-Identifier: Apache-2.0 */
#include "chat/special.h"

#include <errno.h>
#include <string.h>

const struct chat_special_token chat_special_tokens[] = {
        { 0, "<pad>" },           { 1, "<eos>" },            { 2, "<bos>" },
        { 3, "<unk>" },           { 4, "<mask>" },           { 46, "<|tool>" },
        { 47, "<tool|>" },        { 48, "<|tool_call>" },    { 49, "<tool_call|>" },
        { 50, "<|tool_response>" }, { 51, "<tool_response|>" }, { 52, "<|\"|>" },
        { 98, "<|think|>" },      { 100, "<|channel>" },     { 101, "<channel|>" },
        { 105, "<|turn>" },       { 106, "<turn|>" },        { 255999, "<|image>" },
        { 256000, "<|audio>" },   { 258880, "<|image|>" },   { 258881, "<|audio|>" },
        { 258882, "<image|>" },   { 258883, "<audio|>" },    { 258884, "<|video|>" },
};
const size_t chat_n_special_tokens = sizeof(chat_special_tokens) / sizeof(chat_special_tokens[0]);

const char *chat_special_text(uint32_t id) {
        for (size_t i = 0; i < chat_n_special_tokens; i++)
                if (chat_special_tokens[i].id == id)
                        return chat_special_tokens[i].text;
        return NULL;
}

size_t chat_special_match(const char *s, size_t n, uint32_t *ret_id) {
        size_t best = 0;
        uint32_t best_id = 0;

        if (n == 0 || s[0] != '<')
                return 0;
        /* Leftmost-longest, as the Hugging Face added-token matcher does. */
        for (size_t i = 0; i < chat_n_special_tokens; i++) {
                size_t len = strlen(chat_special_tokens[i].text);
                if (len > best && len <= n && memcmp(s, chat_special_tokens[i].text, len) == 0) {
                        best = len;
                        best_id = chat_special_tokens[i].id;
                }
        }
        if (best > 0 && ret_id)
                *ret_id = best_id;
        return best;
}

int chat_special_verify(int (*lookup)(void *userdata, const char *text, uint32_t *ret_id), void *userdata,
                        const char **ret_bad) {
        for (size_t i = 0; i < chat_n_special_tokens; i++) {
                uint32_t id;
                if (lookup(userdata, chat_special_tokens[i].text, &id) < 0 || id != chat_special_tokens[i].id) {
                        if (ret_bad)
                                *ret_bad = chat_special_tokens[i].text;
                        return -EPROTO;
                }
        }
        return 0;
}
