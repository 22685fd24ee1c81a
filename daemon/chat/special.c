/* SPDX-License-Identifier: Apache-2.0 */
#include "chat/special.h"

#include <errno.h>
#include <string.h>

#define T(id, text) { (id), (text), sizeof(text) - 1 }
const struct chat_special_token chat_special_tokens[] = {
        T(0, "<pad>"),             T(1, "<eos>"),              T(2, "<bos>"),
        T(3, "<unk>"),             T(4, "<mask>"),             T(46, "<|tool>"),
        T(47, "<tool|>"),          T(48, "<|tool_call>"),      T(49, "<tool_call|>"),
        T(50, "<|tool_response>"), T(51, "<tool_response|>"),  T(52, "<|\"|>"),
        T(98, "<|think|>"),        T(100, "<|channel>"),       T(101, "<channel|>"),
        T(105, "<|turn>"),         T(106, "<turn|>"),          T(255999, "<|image>"),
        T(256000, "<|audio>"),     T(258880, "<|image|>"),     T(258881, "<|audio|>"),
        T(258882, "<image|>"),     T(258883, "<audio|>"),      T(258884, "<|video|>"),
};
#undef T
const size_t chat_n_special_tokens = sizeof(chat_special_tokens) / sizeof(chat_special_tokens[0]);

const char *chat_special_text(uint32_t id) {
        if (id > CHAT_TOKEN_TURN_END && id < 255999)
                return NULL;    /* the ordinary vocabulary, i.e. almost every generated token */
        for (size_t i = 0; i < chat_n_special_tokens; i++)
                if (chat_special_tokens[i].id == id)
                        return chat_special_tokens[i].text;
        return NULL;
}

size_t chat_special_match(const char *s, size_t n, uint32_t *ret_id) {
        size_t best = 0;
        uint32_t best_id = 0;

        if (n < 2 || s[0] != '<')
                return 0;
        /* Leftmost-longest, as the Hugging Face added-token matcher does. */
        for (size_t i = 0; i < chat_n_special_tokens; i++) {
                size_t len = chat_special_tokens[i].length;
                if (len > best && len <= n && s[1] == chat_special_tokens[i].text[1] &&
                    memcmp(s, chat_special_tokens[i].text, len) == 0) {
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
