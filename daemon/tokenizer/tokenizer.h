/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * Gemma tokenizer: Hugging Face tokenizer.json (BPE with byte fallback) loaded with jansson, encoded and
 * decoded exactly as HF tokenizers does for google/gemma-4-*. See docs/tokenizer.md for the algorithm.
 *
 * A loaded tokenizer is read-only: every function taking a const struct tokenizer may be called from any
 * number of threads at once. Encoding never adds <bos>/<eos> (the chat template writes <bos> itself).
 *
 * Invalid UTF-8 in the input of tokenizer_encode() is not an error: each byte that does not start a
 * well-formed sequence becomes its own byte token <0xNN> (id 238 + byte for Gemma), like a character
 * missing from the vocabulary. Decoding those ids gives U+FFFD per byte, as HF does.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tokenizer;

/* Loads tokenizer.json from path. On failure returns a negative errno and, when reterr is not NULL, sets
 * *reterr to a malloc'd message naming the file and the offending field (the caller frees it). */
int tokenizer_load(const char *path, struct tokenizer **ret, char **reterr);
/* Same from memory; name is used in messages only. */
int tokenizer_load_buffer(const char *data, size_t len, const char *name, struct tokenizer **ret,
                          char **reterr);
void tokenizer_free(struct tokenizer *t);

/* Number of ids (model vocabulary and added tokens; max id + 1). 262,144 for Gemma 4. */
size_t tokenizer_vocab_size(const struct tokenizer *t);

/* A growable id array for tokenizer_encode_append(). Zero-initialise; free ids with free(). */
struct token_ids {
        int32_t *ids;
        size_t n;
        size_t cap;
};

/* Encodes text[0..len) (need not be NUL-terminated, may contain NUL and invalid UTF-8) and appends the
 * ids to out. parse_special=true matches the literal text of special tokens (HF behaviour, for trusted
 * text such as a rendered template); false encodes it as ordinary text (for untrusted user content).
 * On failure (-ENOMEM, or -E2BIG above 512 MiB of text) out->n is unchanged. */
int tokenizer_encode_append(const struct tokenizer *t, const char *text, size_t len, bool parse_special,
                            struct token_ids *out);
/* Same into a new malloc'd array (*ret_ids is NULL when *ret_n is 0). */
int tokenizer_encode(const struct tokenizer *t, const char *text, size_t len, bool parse_special,
                     int32_t **ret_ids, size_t *ret_n);

/* The raw vocabulary string of id (SentencePiece form: U+2581 for spaces, "<0x0D>" for byte tokens, the
 * literal text of special tokens). Not NUL-terminated. -EINVAL for an unknown id. */
int tokenizer_token_to_piece(const struct tokenizer *t, int32_t id, const char **ret_piece, size_t *ret_len);
/* Id of an exact token string (added tokens first, then the vocabulary), or -ENOENT. */
int tokenizer_id_for(const struct tokenizer *t, const char *piece);
int tokenizer_id_for_len(const struct tokenizer *t, const char *piece, size_t len);
/* True for added tokens marked special (the 24 Gemma 4 control tokens). */
bool tokenizer_is_special(const struct tokenizer *t, int32_t id);
/* True for the 256 byte-fallback tokens <0x00>..<0xFF>. */
bool tokenizer_is_byte(const struct tokenizer *t, int32_t id);

/* One-shot decoding, identical to HF tokenizers' decode(ids, skip_special_tokens): pieces concatenated
 * with U+2581 -> space; each run of consecutive byte tokens becomes its bytes when they are valid UTF-8,
 * else one U+FFFD per byte of the run. Returns a malloc'd NUL-terminated string. -EINVAL for an id
 * outside the vocabulary. */
int tokenizer_decode(const struct tokenizer *t, const int32_t *ids, size_t n, bool skip_special,
                     char **ret_text, size_t *ret_len);

/*
 * Streaming detokenizer: feed ids one at a time, get text that always ends on a complete UTF-8 character.
 * At most 3 bytes of an unfinished character are held back. Within a run of byte tokens, once a byte makes
 * the run invalid UTF-8, that byte, the held bytes and every later byte of the same run come out as one
 * U+FFFD each (HF replaces the whole run; the stream cannot take back characters it already emitted, so
 * it differs from tokenizer_decode() only for a run that holds a complete character before its first
 * invalid byte). An unfinished character at the end of a run or of the stream becomes U+FFFD per byte.
 * Skipped special tokens do not end a byte run (as in HF, which removes them before decoding).
 */
struct detok_stream;

int detok_stream_new(const struct tokenizer *t, bool skip_special, struct detok_stream **ret);
void detok_stream_free(struct detok_stream *s);
/* Feeds one id. *ret_text and *ret_len receive the text that became final (possibly empty); the pointer is
 * valid until the next call on s. -EINVAL for an unknown id (the stream is unchanged). */
int detok_stream_push(struct detok_stream *s, int32_t id, const char **ret_text, size_t *ret_len);
/* Ends the stream: held bytes come out as U+FFFD each. The stream can then be reused. */
int detok_stream_finish(struct detok_stream *s, const char **ret_text, size_t *ret_len);
/* Number of bytes held back (0-3). */
size_t detok_stream_pending(const struct detok_stream *s);
