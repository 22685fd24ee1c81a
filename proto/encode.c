/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Encoders: struct -> one frame appended to a proto_buf.
 *
 * Every map is written with a one-byte fixmap header that is patched with the key count when the map is
 * closed (no map here has more than 15 keys), so optional keys need no separate counting pass and the
 * output is canonical msgpack. Errors are sticky in struct enc; the frame is rolled back on failure.
 */
#include <math.h>
#include <string.h>

#include "proto-internal.h"

struct enc {
        msgpack_packer pk;
        struct proto_buf *b;
        size_t start;           /* b->len before this frame */
        int r;                  /* first error */
};

struct mapw {
        size_t pos;             /* offset of the fixmap byte */
        unsigned n;
};

static void enc_fail(struct enc *e, int r) {
        if (e->r == 0)
                e->r = r;
}

static void put_byte(struct enc *e, uint8_t c) {
        if (e->r < 0)
                return;
        if (proto__buf_reserve(e->b, 1) < 0) {
                enc_fail(e, -ENOMEM);
                return;
        }
        e->b->data[e->b->len++] = c;
}

static void pk_check(struct enc *e, int packed) {
        if (packed < 0)
                enc_fail(e, -ENOMEM);
}

static struct mapw map_open(struct enc *e) {
        struct mapw m = { .pos = e->b->len };

        put_byte(e, 0x80);
        return m;
}

static void map_close(struct enc *e, struct mapw *m) {
        if (e->r < 0)
                return;
        if (m->n > 15) {
                enc_fail(e, -EINVAL);
                return;
        }
        e->b->data[m->pos] = (uint8_t) (0x80 | m->n);
}

static void put_raw_str(struct enc *e, const char *s, size_t n) {
        if (e->r < 0)
                return;
        pk_check(e, msgpack_pack_str_with_body(&e->pk, s, n));
}

static void key(struct enc *e, struct mapw *m, const char *k) {
        m->n++;
        put_raw_str(e, k, strlen(k));
}

static void put_u64(struct enc *e, struct mapw *m, const char *k, uint64_t v) {
        key(e, m, k);
        if (e->r == 0)
                pk_check(e, msgpack_pack_uint64(&e->pk, v));
}

static void put_i64(struct enc *e, struct mapw *m, const char *k, int64_t v) {
        key(e, m, k);
        if (e->r == 0)
                pk_check(e, msgpack_pack_int64(&e->pk, v));
}

static void put_double(struct enc *e, struct mapw *m, const char *k, double v) {
        if (!isfinite(v)) {
                enc_fail(e, -EINVAL);
                return;
        }
        key(e, m, k);
        if (e->r == 0)
                pk_check(e, msgpack_pack_double(&e->pk, v));
}

static void put_bool(struct enc *e, struct mapw *m, const char *k, bool v) {
        key(e, m, k);
        if (e->r == 0)
                pk_check(e, v ? msgpack_pack_true(&e->pk) : msgpack_pack_false(&e->pk));
}

static void put_str_value(struct enc *e, const char *s, size_t max_bytes, bool allow_empty) {
        size_t n;

        if (!s) {
                enc_fail(e, -EINVAL);
                return;
        }
        n = strlen(s);
        if (n > max_bytes || (!allow_empty && n == 0) || !proto_utf8_valid(s, n)) {
                enc_fail(e, -EINVAL);
                return;
        }
        put_raw_str(e, s, n);
}

static void put_str(struct enc *e, struct mapw *m, const char *k, const char *s, size_t max_bytes,
                    bool allow_empty) {
        key(e, m, k);
        put_str_value(e, s, max_bytes, allow_empty);
}

static void put_ids(struct enc *e, struct mapw *m, const char *k, const int32_t *ids, uint32_t n,
                    uint32_t min_n) {
        if (n < min_n || n > PROTO_MAX_TOKEN_IDS || (n > 0 && !ids)) {
                enc_fail(e, -EINVAL);
                return;
        }
        key(e, m, k);
        if (e->r < 0)
                return;
        pk_check(e, msgpack_pack_array(&e->pk, n));
        for (uint32_t i = 0; i < n && e->r == 0; i++) {
                if (ids[i] < 0) {
                        enc_fail(e, -EINVAL);
                        return;
                }
                pk_check(e, msgpack_pack_uint32(&e->pk, (uint32_t) ids[i]));
        }
}

static void put_json(struct enc *e, struct mapw *m, const char *k, const json_t *j) {
        int r;

        key(e, m, k);
        if (e->r < 0)
                return;
        r = proto_pack_json(&e->pk, j);
        if (r < 0)
                enc_fail(e, r);
}

static void put_logprob_value(struct enc *e, float lp) {
        if (!isfinite(lp) || lp > 0) {
                enc_fail(e, -EINVAL);
                return;
        }
        pk_check(e, msgpack_pack_float(&e->pk, lp));
}

static void put_logprobs(struct enc *e, struct mapw *m, const char *k, const struct proto_token_logprob *lp,
                         uint32_t n) {
        if (n > PROTO_MAX_TOKEN_IDS || (n > 0 && !lp)) {
                enc_fail(e, -EINVAL);
                return;
        }
        key(e, m, k);
        if (e->r < 0)
                return;
        pk_check(e, msgpack_pack_array(&e->pk, n));
        for (uint32_t i = 0; i < n && e->r == 0; i++) {
                const struct proto_token_logprob *t = &lp[i];
                struct mapw tm = map_open(e);

                if (t->id < 0 || t->n_top > PROTO_MAX_LOGPROBS || (t->n_top > 0 && !t->top)) {
                        enc_fail(e, -EINVAL);
                        return;
                }
                put_u64(e, &tm, "id", (uint64_t) t->id);
                key(e, &tm, "logprob");
                put_logprob_value(e, t->logprob);
                if (t->n_top > 0) {
                        key(e, &tm, "top");
                        pk_check(e, msgpack_pack_array(&e->pk, t->n_top));
                        for (uint32_t j = 0; j < t->n_top && e->r == 0; j++) {
                                struct mapw am = map_open(e);

                                if (t->top[j].id < 0) {
                                        enc_fail(e, -EINVAL);
                                        return;
                                }
                                put_u64(e, &am, "id", (uint64_t) t->top[j].id);
                                key(e, &am, "logprob");
                                put_logprob_value(e, t->top[j].logprob);
                                map_close(e, &am);
                        }
                }
                map_close(e, &tm);
        }
}

/* Frame header placeholder + top-level map with "type". */
static struct mapw enc_begin(struct enc *e, struct proto_buf *b, enum proto_type type) {
        struct mapw m;

        *e = (struct enc) { .b = b, .start = b->len };
        proto__packer_init_buf(&e->pk, b);
        if (proto__buf_reserve(b, PROTO_FRAME_HEADER_BYTES) < 0)
                enc_fail(e, -ENOMEM);
        else
                b->len += PROTO_FRAME_HEADER_BYTES;
        m = map_open(e);
        put_str(e, &m, "type", proto_type_to_string(type), 32, false);
        return m;
}

static int enc_end(struct enc *e, struct mapw *m) {
        size_t body;

        map_close(e, m);
        if (e->r == 0) {
                body = e->b->len - e->start - PROTO_FRAME_HEADER_BYTES;
                if (body > UINT32_MAX)
                        e->r = -EMSGSIZE;
                else {
                        uint8_t *h = e->b->data + e->start;

                        h[0] = (uint8_t) (body >> 24);
                        h[1] = (uint8_t) (body >> 16);
                        h[2] = (uint8_t) (body >> 8);
                        h[3] = (uint8_t) body;
                }
        }
        if (e->r < 0)
                e->b->len = e->start;
        return e->r;
}

static void put_id(struct enc *e, struct mapw *m, uint64_t id) {
        if (id == 0) {
                enc_fail(e, -EINVAL);
                return;
        }
        put_u64(e, m, "id", id);
}

static void put_params(struct enc *e, struct mapw *top, const struct proto_params *p) {
        uint32_t f = p->present;
        struct mapw m;

        if (proto_params_validate(p, NULL) < 0) {
                enc_fail(e, -EINVAL);
                return;
        }
        if (f == 0)
                return;
        key(e, top, "params");
        m = map_open(e);
        if (f & PROTO_PARAM_MAX_TOKENS)
                put_u64(e, &m, "max_tokens", p->max_tokens);
        if (f & PROTO_PARAM_TEMPERATURE)
                put_double(e, &m, "temperature", p->temperature);
        if (f & PROTO_PARAM_TOP_P)
                put_double(e, &m, "top_p", p->top_p);
        if (f & PROTO_PARAM_TOP_K)
                put_u64(e, &m, "top_k", p->top_k);
        if (f & PROTO_PARAM_MIN_P)
                put_double(e, &m, "min_p", p->min_p);
        if (f & PROTO_PARAM_REPETITION_PENALTY)
                put_double(e, &m, "repetition_penalty", p->repetition_penalty);
        if (f & PROTO_PARAM_PRESENCE_PENALTY)
                put_double(e, &m, "presence_penalty", p->presence_penalty);
        if (f & PROTO_PARAM_FREQUENCY_PENALTY)
                put_double(e, &m, "frequency_penalty", p->frequency_penalty);
        if (f & PROTO_PARAM_SEED)
                put_u64(e, &m, "seed", p->seed);
        if (f & PROTO_PARAM_STOP) {
                key(e, &m, "stop");
                pk_check(e, e->r == 0 ? msgpack_pack_array(&e->pk, p->n_stop) : 0);
                for (uint32_t i = 0; i < p->n_stop; i++)
                        put_str_value(e, p->stop[i], PROTO_MAX_STOP_BYTES, false);
        }
        if (f & PROTO_PARAM_LOGPROBS)
                put_i64(e, &m, "logprobs", p->logprobs);
        if (f & PROTO_PARAM_PRIORITY)
                put_i64(e, &m, "priority", p->priority);
        if (f & PROTO_PARAM_DEADLINE_MS)
                put_u64(e, &m, "deadline_ms", p->deadline_ms);
        if (f & PROTO_PARAM_STREAM)
                put_bool(e, &m, "stream", p->stream);
        map_close(e, &m);
}

static void put_prompt(struct enc *e, struct mapw *m, const struct proto_prompt *p) {
        if ((p->text != NULL) == (p->n_ids > 0)) {
                enc_fail(e, -EINVAL);
                return;
        }
        if (p->text)
                put_str(e, m, "prompt", p->text, SIZE_MAX, true);
        else
                put_ids(e, m, "prompt_ids", p->ids, p->n_ids, 1);
}

/* ---- requests ---- */

int proto_encode_hello(struct proto_buf *b, const struct proto_hello *m) {
        struct enc e;
        struct mapw top = enc_begin(&e, b, PROTO_TYPE_HELLO);

        put_u64(&e, &top, "proto", m->proto);
        if (m->client)
                put_str(&e, &top, "client", m->client, PROTO_MAX_NAME_BYTES, true);
        return enc_end(&e, &top);
}

static int encode_prompt_request(struct proto_buf *b, enum proto_type type, uint64_t id,
                                 const struct proto_prompt *prompt, const struct proto_params *params) {
        struct enc e;
        struct mapw top = enc_begin(&e, b, type);

        put_id(&e, &top, id);
        put_prompt(&e, &top, prompt);
        put_params(&e, &top, params);
        return enc_end(&e, &top);
}

int proto_encode_generate(struct proto_buf *b, const struct proto_generate *m) {
        return encode_prompt_request(b, PROTO_TYPE_GENERATE, m->id, &m->prompt, &m->params);
}

int proto_encode_chat(struct proto_buf *b, const struct proto_chat *m) {
        struct enc e;
        struct mapw top = enc_begin(&e, b, PROTO_TYPE_CHAT);

        put_id(&e, &top, m->id);
        if (proto__check_chat_messages(m->messages, NULL) < 0 ||
            (m->tools && proto__check_chat_tools(m->tools, NULL) < 0))
                enc_fail(&e, -EINVAL);
        put_json(&e, &top, "messages", m->messages);
        if (m->tools)
                put_json(&e, &top, "tools", m->tools);
        if (m->thinking)
                put_bool(&e, &top, "thinking", true);
        put_params(&e, &top, &m->params);
        return enc_end(&e, &top);
}

static int encode_id_only(struct proto_buf *b, enum proto_type type, uint64_t id) {
        struct enc e;
        struct mapw top = enc_begin(&e, b, type);

        put_id(&e, &top, id);
        return enc_end(&e, &top);
}

int proto_encode_cancel(struct proto_buf *b, const struct proto_cancel *m) {
        return encode_id_only(b, PROTO_TYPE_CANCEL, m->id);
}

int proto_encode_status(struct proto_buf *b, const struct proto_status *m) {
        return encode_id_only(b, PROTO_TYPE_STATUS, m->id);
}

int proto_encode_tokenize(struct proto_buf *b, const struct proto_tokenize *m) {
        struct enc e;
        struct mapw top = enc_begin(&e, b, PROTO_TYPE_TOKENIZE);

        put_id(&e, &top, m->id);
        put_str(&e, &top, "text", m->text, SIZE_MAX, true);
        if (m->special)
                put_bool(&e, &top, "special", true);
        return enc_end(&e, &top);
}

int proto_encode_detokenize(struct proto_buf *b, const struct proto_detokenize *m) {
        struct enc e;
        struct mapw top = enc_begin(&e, b, PROTO_TYPE_DETOKENIZE);

        put_id(&e, &top, m->id);
        put_ids(&e, &top, "ids", m->ids, m->n_ids, 0);
        if (m->special)
                put_bool(&e, &top, "special", true);
        return enc_end(&e, &top);
}

int proto_encode_score(struct proto_buf *b, const struct proto_score *m) {
        return encode_prompt_request(b, PROTO_TYPE_SCORE, m->id, &m->prompt, &m->params);
}

/* ---- events ---- */

int proto_encode_welcome(struct proto_buf *b, const struct proto_welcome *m) {
        struct enc e;
        struct mapw top = enc_begin(&e, b, PROTO_TYPE_WELCOME), sub;

        put_u64(&e, &top, "proto", m->proto);
        put_str(&e, &top, "server_version", m->server_version, PROTO_MAX_NAME_BYTES, false);
        put_str(&e, &top, "model", m->model, PROTO_MAX_NAME_BYTES, false);
        put_str(&e, &top, "architecture", m->architecture, PROTO_MAX_NAME_BYTES, false);
        if (m->max_model_len == 0 || m->limits.max_frame_bytes == 0 || m->limits.max_inflight == 0 ||
            m->limits.max_num_seqs == 0)
                enc_fail(&e, -EINVAL);
        put_u64(&e, &top, "max_model_len", m->max_model_len);
        key(&e, &top, "limits");
        sub = map_open(&e);
        put_u64(&e, &sub, "max_frame_bytes", m->limits.max_frame_bytes);
        put_u64(&e, &sub, "max_inflight", m->limits.max_inflight);
        put_u64(&e, &sub, "max_num_seqs", m->limits.max_num_seqs);
        put_u64(&e, &sub, "max_queue", m->limits.max_queue);
        map_close(&e, &sub);
        put_str(&e, &top, "backend", m->backend, PROTO_MAX_NAME_BYTES, false);
        put_str(&e, &top, "device", m->device, PROTO_MAX_NAME_BYTES, true);
        key(&e, &top, "kv");
        sub = map_open(&e);
        put_u64(&e, &sub, "tokens", m->kv_tokens);
        put_u64(&e, &sub, "seqs_32k", m->kv_seqs_32k);
        map_close(&e, &sub);
        return enc_end(&e, &top);
}

int proto_encode_started(struct proto_buf *b, const struct proto_started *m) {
        struct enc e;
        struct mapw top = enc_begin(&e, b, PROTO_TYPE_STARTED);

        put_id(&e, &top, m->id);
        put_u64(&e, &top, "prompt_tokens", m->prompt_tokens);
        put_u64(&e, &top, "queue_position", m->queue_position);
        return enc_end(&e, &top);
}

int proto_encode_delta(struct proto_buf *b, const struct proto_delta *m) {
        struct enc e;
        struct mapw top = enc_begin(&e, b, PROTO_TYPE_DELTA);

        put_id(&e, &top, m->id);
        if (m->text)
                put_str(&e, &top, "text", m->text, SIZE_MAX, true);
        if (m->reasoning)
                put_str(&e, &top, "reasoning", m->reasoning, SIZE_MAX, true);
        if (m->n_token_ids > 0)
                put_ids(&e, &top, "token_ids", m->token_ids, m->n_token_ids, 0);
        if (m->n_logprobs > 0) {
                if (m->n_logprobs != m->n_token_ids)
                        enc_fail(&e, -EINVAL);
                put_logprobs(&e, &top, "logprobs", m->logprobs, m->n_logprobs);
        }
        return enc_end(&e, &top);
}

int proto_encode_tool_call(struct proto_buf *b, const struct proto_tool_call *m) {
        struct enc e;
        struct mapw top = enc_begin(&e, b, PROTO_TYPE_TOOL_CALL);

        put_id(&e, &top, m->id);
        put_u64(&e, &top, "index", m->index);
        if (m->call_id)
                put_str(&e, &top, "call_id", m->call_id, PROTO_MAX_NAME_BYTES, false);
        put_str(&e, &top, "name", m->name, PROTO_MAX_NAME_BYTES, false);
        if (!m->arguments || proto__check_tool_arguments("arguments", m->arguments, NULL) < 0)
                enc_fail(&e, -EINVAL);
        else
                put_str(&e, &top, "arguments", m->arguments, SIZE_MAX, false);
        return enc_end(&e, &top);
}

static const char *wire_code(enum proto_code code) {
        /* "none" and "unknown" are not codes on the wire. */
        if (code <= PROTO_CODE_NONE || code >= PROTO_CODE_UNKNOWN)
                return NULL;
        return proto_code_to_string(code);
}

int proto_encode_finished(struct proto_buf *b, const struct proto_finished *m) {
        struct enc e;
        struct mapw top = enc_begin(&e, b, PROTO_TYPE_FINISHED), sub;

        put_id(&e, &top, m->id);
        put_str(&e, &top, "reason", proto_reason_to_string(m->reason), 16, false);
        key(&e, &top, "usage");
        sub = map_open(&e);
        put_u64(&e, &sub, "prompt_tokens", m->usage.prompt_tokens);
        put_u64(&e, &sub, "cached_tokens", m->usage.cached_tokens);
        put_u64(&e, &sub, "completion_tokens", m->usage.completion_tokens);
        map_close(&e, &sub);
        if (m->timings.queue_ms < 0 || m->timings.ttft_ms < 0 || m->timings.per_token_ms < 0)
                enc_fail(&e, -EINVAL);
        key(&e, &top, "timings");
        sub = map_open(&e);
        put_double(&e, &sub, "queue_ms", m->timings.queue_ms);
        put_double(&e, &sub, "ttft_ms", m->timings.ttft_ms);
        put_double(&e, &sub, "per_token_ms", m->timings.per_token_ms);
        map_close(&e, &sub);
        if (m->preempted > 0)
                put_u64(&e, &top, "preempted", m->preempted);
        if (m->reason == PROTO_REASON_ERROR) {
                key(&e, &top, "error");
                sub = map_open(&e);
                put_str(&e, &sub, "code", wire_code(m->error_code), PROTO_MAX_NAME_BYTES, false);
                put_str(&e, &sub, "message", m->error_message ? m->error_message : "",
                        PROTO_MAX_MESSAGE_BYTES,
                        true);
                map_close(&e, &sub);
        }
        return enc_end(&e, &top);
}

int proto_encode_error(struct proto_buf *b, const struct proto_error *m) {
        struct enc e;
        struct mapw top = enc_begin(&e, b, PROTO_TYPE_ERROR);

        put_u64(&e, &top, "id", m->id);
        put_str(&e, &top, "code", wire_code(m->code), PROTO_MAX_NAME_BYTES, false);
        put_str(&e, &top, "message", m->message ? m->message : "", PROTO_MAX_MESSAGE_BYTES, true);
        return enc_end(&e, &top);
}

int proto_encode_diag(struct proto_buf *b, const struct proto_diag *d) {
        char message[sizeof(d->message)];
        size_t n = strnlen(d->message, sizeof(d->message) - 1), o = 0;
        struct proto_error m = {
                .id = d->has_id ? d->id : 0,
                .code = wire_code(d->code) ? d->code : PROTO_CODE_INTERNAL,
                .message = message,
        };

        /* The message may quote peer bytes and is cut at a byte limit: replace anything that is not
         * whole, valid UTF-8 with '?' so the event itself is always valid. */
        for (size_t i = 0; i < n;) {
                size_t k = proto__utf8_char_len(d->message + i, n - i);

                if (k == 0) {
                        message[o++] = '?';
                        i++;
                        continue;
                }
                memcpy(message + o, d->message + i, k);
                o += k;
                i += k;
        }
        message[o] = 0;
        return proto_encode_error(b, &m);
}

int proto_encode_status_reply(struct proto_buf *b, const struct proto_status_reply *m) {
        struct enc e;
        struct mapw top = enc_begin(&e, b, PROTO_TYPE_STATUS_REPLY);

        put_id(&e, &top, m->id);
        if (!json_is_object(m->status))
                enc_fail(&e, -EINVAL);
        put_json(&e, &top, "status", m->status);
        return enc_end(&e, &top);
}

int proto_encode_tokenize_reply(struct proto_buf *b, const struct proto_tokenize_reply *m) {
        struct enc e;
        struct mapw top = enc_begin(&e, b, PROTO_TYPE_TOKENIZE_REPLY);

        put_id(&e, &top, m->id);
        put_ids(&e, &top, "ids", m->ids, m->n_ids, 0);
        return enc_end(&e, &top);
}

int proto_encode_detokenize_reply(struct proto_buf *b, const struct proto_detokenize_reply *m) {
        struct enc e;
        struct mapw top = enc_begin(&e, b, PROTO_TYPE_DETOKENIZE_REPLY);

        put_id(&e, &top, m->id);
        put_str(&e, &top, "text", m->text, SIZE_MAX, true);
        return enc_end(&e, &top);
}

int proto_encode_score_reply(struct proto_buf *b, const struct proto_score_reply *m) {
        struct enc e;
        struct mapw top = enc_begin(&e, b, PROTO_TYPE_SCORE_REPLY);

        put_id(&e, &top, m->id);
        put_ids(&e, &top, "token_ids", m->token_ids, m->n_token_ids, 1);
        if (m->n_logprobs + 1 != m->n_token_ids)
                enc_fail(&e, -EINVAL);
        put_logprobs(&e, &top, "logprobs", m->logprobs, m->n_logprobs);
        return enc_end(&e, &top);
}

int proto_encode(struct proto_buf *b, const struct proto_msg *m) {
        switch (m->type) {
        case PROTO_TYPE_HELLO:            return proto_encode_hello(b, &m->hello);
        case PROTO_TYPE_GENERATE:         return proto_encode_generate(b, &m->generate);
        case PROTO_TYPE_CHAT:             return proto_encode_chat(b, &m->chat);
        case PROTO_TYPE_CANCEL:           return proto_encode_cancel(b, &m->cancel);
        case PROTO_TYPE_STATUS:           return proto_encode_status(b, &m->status);
        case PROTO_TYPE_TOKENIZE:         return proto_encode_tokenize(b, &m->tokenize);
        case PROTO_TYPE_DETOKENIZE:       return proto_encode_detokenize(b, &m->detokenize);
        case PROTO_TYPE_SCORE:            return proto_encode_score(b, &m->score);
        case PROTO_TYPE_WELCOME:          return proto_encode_welcome(b, &m->welcome);
        case PROTO_TYPE_STARTED:          return proto_encode_started(b, &m->started);
        case PROTO_TYPE_DELTA:            return proto_encode_delta(b, &m->delta);
        case PROTO_TYPE_TOOL_CALL:        return proto_encode_tool_call(b, &m->tool_call);
        case PROTO_TYPE_FINISHED:         return proto_encode_finished(b, &m->finished);
        case PROTO_TYPE_ERROR:            return proto_encode_error(b, &m->error);
        case PROTO_TYPE_STATUS_REPLY:     return proto_encode_status_reply(b, &m->status_reply);
        case PROTO_TYPE_TOKENIZE_REPLY:   return proto_encode_tokenize_reply(b, &m->tokenize_reply);
        case PROTO_TYPE_DETOKENIZE_REPLY: return proto_encode_detokenize_reply(b, &m->detokenize_reply);
        case PROTO_TYPE_SCORE_REPLY:      return proto_encode_score_reply(b, &m->score_reply);
        default:                          return -EINVAL;
        }
}
