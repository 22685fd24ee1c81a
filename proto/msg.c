/* SPDX-License-Identifier: Apache-2.0 */
/* Sampling parameter defaults and ranges, and the destructors of decoded messages. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "proto-internal.h"

void proto_params_init(struct proto_params *p) {
        *p = (struct proto_params) {
                .max_tokens = 0,
                .temperature = 1.0,
                .top_p = 1.0,
                .top_k = 0,
                .min_p = 0.0,
                .repetition_penalty = 1.0,
                .presence_penalty = 0.0,
                .frequency_penalty = 0.0,
                .logprobs = -1,
                .priority = 0,
                .deadline_ms = 0,
                .stream = true,
        };
}

void proto_params_done(struct proto_params *p) {
        if (!p)
                return;
        for (uint32_t i = 0; i < p->n_stop; i++)
                free(p->stop[i]);
        free(p->stop);
        p->stop = NULL;
        p->n_stop = 0;
}

static int check_range(struct proto_diag *d, const char *key, double x, double lo, bool lo_open, double hi) {
        if (!isfinite(x) || (lo_open ? !(x > lo) : !(x >= lo)) || !(x <= hi))
                return proto__diag_key(d, "params", key, "must be in %c%g, %g], got %g",
                                       lo_open ? '(' : '[', lo, hi, x);
        return 0;
}

int proto_params_validate(const struct proto_params *p, struct proto_diag *reterr) {
        uint32_t f = p->present;
        int r = 0;

        if (f & PROTO_PARAM_MAX_TOKENS && (p->max_tokens < 1 || p->max_tokens > PROTO_MAX_MAX_TOKENS))
                return proto__diag_key(reterr, "params", "max_tokens", "must be in 1..%u, got %u",
                                       PROTO_MAX_MAX_TOKENS,
                                p->max_tokens);
        if (r == 0 && f & PROTO_PARAM_TEMPERATURE)
                r = check_range(reterr, "temperature", p->temperature, 0, false, 100);
        if (r == 0 && f & PROTO_PARAM_TOP_P)
                r = check_range(reterr, "top_p", p->top_p, 0, true, 1);
        if (r == 0 && f & PROTO_PARAM_MIN_P)
                r = check_range(reterr, "min_p", p->min_p, 0, false, 1);
        if (r == 0 && f & PROTO_PARAM_REPETITION_PENALTY)
                r = check_range(reterr, "repetition_penalty", p->repetition_penalty, 0, true, 10);
        if (r == 0 && f & PROTO_PARAM_PRESENCE_PENALTY)
                r = check_range(reterr, "presence_penalty", p->presence_penalty, -2, false, 2);
        if (r == 0 && f & PROTO_PARAM_FREQUENCY_PENALTY)
                r = check_range(reterr, "frequency_penalty", p->frequency_penalty, -2, false, 2);
        if (r < 0)
                return r;
        if (f & PROTO_PARAM_TOP_K && p->top_k > (1u << 20))
                return proto__diag_key(reterr, "params", "top_k", "must be in 0..%u, got %u", 1u << 20,
                                       p->top_k);
        if (f & PROTO_PARAM_LOGPROBS && (p->logprobs < 0 || p->logprobs > PROTO_MAX_LOGPROBS))
                return proto__diag_key(reterr, "params", "logprobs", "must be in 0..%d, got %d",
                                       PROTO_MAX_LOGPROBS,
                                p->logprobs);
        if (f & PROTO_PARAM_PRIORITY &&
            (p->priority < PROTO_PRIORITY_MIN || p->priority > PROTO_PRIORITY_MAX))
                return proto__diag_key(reterr, "params", "priority", "must be in %d..%d, got %d",
                                       PROTO_PRIORITY_MIN,
                                PROTO_PRIORITY_MAX, p->priority);
        if (f & PROTO_PARAM_DEADLINE_MS && p->deadline_ms > PROTO_MAX_DEADLINE_MS)
                return proto__diag_key(reterr, "params", "deadline_ms", "must be in 0..%u, got %u",
                                       PROTO_MAX_DEADLINE_MS,
                                p->deadline_ms);
        if (f & PROTO_PARAM_STOP) {
                if (p->n_stop > PROTO_MAX_STOP)
                        return proto__diag_key(reterr, "params", "stop", "more than %u stop strings",
                                               PROTO_MAX_STOP);
                if (p->n_stop > 0 && !p->stop)
                        return proto__diag_key(reterr, "params", "stop", "n_stop without strings");
                for (uint32_t i = 0; i < p->n_stop; i++) {
                        size_t n = p->stop[i] ? strlen(p->stop[i]) : 0;

                        if (n == 0 || n > PROTO_MAX_STOP_BYTES || !proto_utf8_valid(p->stop[i], n))
                                return proto__diag_key(reterr, "params", "stop",
                                                       "element %u: must be 1..%u bytes of UTF-8", i,
                                                       PROTO_MAX_STOP_BYTES);
                }
        }
        return 0;
}

/* ---- destructors ---- */

void proto_hello_done(struct proto_hello *m) {
        if (!m)
                return;
        free(m->client);
        *m = (struct proto_hello) {};
}

void proto_prompt_done(struct proto_prompt *m) {
        if (!m)
                return;
        free(m->text);
        free(m->ids);
        *m = (struct proto_prompt) {};
}

void proto_generate_done(struct proto_generate *m) {
        if (!m)
                return;
        proto_prompt_done(&m->prompt);
        proto_params_done(&m->params);
        *m = (struct proto_generate) {};
}

void proto_chat_done(struct proto_chat *m) {
        if (!m)
                return;
        json_decref(m->messages);
        json_decref(m->tools);
        proto_params_done(&m->params);
        *m = (struct proto_chat) {};
}

void proto_tokenize_done(struct proto_tokenize *m) {
        if (!m)
                return;
        free(m->text);
        *m = (struct proto_tokenize) {};
}

void proto_detokenize_done(struct proto_detokenize *m) {
        if (!m)
                return;
        free(m->ids);
        *m = (struct proto_detokenize) {};
}

void proto_score_done(struct proto_score *m) {
        if (!m)
                return;
        proto_prompt_done(&m->prompt);
        proto_params_done(&m->params);
        *m = (struct proto_score) {};
}

void proto_welcome_done(struct proto_welcome *m) {
        if (!m)
                return;
        free(m->server_version);
        free(m->model);
        free(m->architecture);
        free(m->backend);
        free(m->device);
        *m = (struct proto_welcome) {};
}

void proto_token_logprobs_free(struct proto_token_logprob *lp, uint32_t n) {
        if (!lp)
                return;
        for (uint32_t i = 0; i < n; i++)
                free(lp[i].top);
        free(lp);
}

void proto_delta_done(struct proto_delta *m) {
        if (!m)
                return;
        free(m->text);
        free(m->reasoning);
        free(m->token_ids);
        proto_token_logprobs_free(m->logprobs, m->n_logprobs);
        *m = (struct proto_delta) {};
}

void proto_tool_call_done(struct proto_tool_call *m) {
        if (!m)
                return;
        free(m->call_id);
        free(m->name);
        free(m->arguments);
        *m = (struct proto_tool_call) {};
}

void proto_finished_done(struct proto_finished *m) {
        if (!m)
                return;
        free(m->error_message);
        *m = (struct proto_finished) {};
}

void proto_error_done(struct proto_error *m) {
        if (!m)
                return;
        free(m->message);
        *m = (struct proto_error) {};
}

void proto_status_reply_done(struct proto_status_reply *m) {
        if (!m)
                return;
        json_decref(m->status);
        *m = (struct proto_status_reply) {};
}

void proto_tokenize_reply_done(struct proto_tokenize_reply *m) {
        if (!m)
                return;
        free(m->ids);
        *m = (struct proto_tokenize_reply) {};
}

void proto_detokenize_reply_done(struct proto_detokenize_reply *m) {
        if (!m)
                return;
        free(m->text);
        *m = (struct proto_detokenize_reply) {};
}

void proto_score_reply_done(struct proto_score_reply *m) {
        if (!m)
                return;
        free(m->token_ids);
        proto_token_logprobs_free(m->logprobs, m->n_logprobs);
        *m = (struct proto_score_reply) {};
}

void proto_msg_done(struct proto_msg *m) {
        if (!m)
                return;
        switch (m->type) {
        case PROTO_TYPE_HELLO:            proto_hello_done(&m->hello); break;
        case PROTO_TYPE_GENERATE:         proto_generate_done(&m->generate); break;
        case PROTO_TYPE_CHAT:             proto_chat_done(&m->chat); break;
        case PROTO_TYPE_TOKENIZE:         proto_tokenize_done(&m->tokenize); break;
        case PROTO_TYPE_DETOKENIZE:       proto_detokenize_done(&m->detokenize); break;
        case PROTO_TYPE_SCORE:            proto_score_done(&m->score); break;
        case PROTO_TYPE_WELCOME:          proto_welcome_done(&m->welcome); break;
        case PROTO_TYPE_DELTA:            proto_delta_done(&m->delta); break;
        case PROTO_TYPE_TOOL_CALL:        proto_tool_call_done(&m->tool_call); break;
        case PROTO_TYPE_FINISHED:         proto_finished_done(&m->finished); break;
        case PROTO_TYPE_ERROR:            proto_error_done(&m->error); break;
        case PROTO_TYPE_STATUS_REPLY:     proto_status_reply_done(&m->status_reply); break;
        case PROTO_TYPE_TOKENIZE_REPLY:   proto_tokenize_reply_done(&m->tokenize_reply); break;
        case PROTO_TYPE_DETOKENIZE_REPLY: proto_detokenize_reply_done(&m->detokenize_reply); break;
        case PROTO_TYPE_SCORE_REPLY:      proto_score_reply_done(&m->score_reply); break;
        default:                          break;        /* cancel, status, started own nothing */
        }
        *m = (struct proto_msg) {};
}

uint64_t proto_msg_id(const struct proto_msg *m) {
        switch (m->type) {
        case PROTO_TYPE_GENERATE:         return m->generate.id;
        case PROTO_TYPE_CHAT:             return m->chat.id;
        case PROTO_TYPE_CANCEL:           return m->cancel.id;
        case PROTO_TYPE_STATUS:           return m->status.id;
        case PROTO_TYPE_TOKENIZE:         return m->tokenize.id;
        case PROTO_TYPE_DETOKENIZE:       return m->detokenize.id;
        case PROTO_TYPE_SCORE:            return m->score.id;
        case PROTO_TYPE_STARTED:          return m->started.id;
        case PROTO_TYPE_DELTA:            return m->delta.id;
        case PROTO_TYPE_TOOL_CALL:        return m->tool_call.id;
        case PROTO_TYPE_FINISHED:         return m->finished.id;
        case PROTO_TYPE_ERROR:            return m->error.id;
        case PROTO_TYPE_STATUS_REPLY:     return m->status_reply.id;
        case PROTO_TYPE_TOKENIZE_REPLY:   return m->tokenize_reply.id;
        case PROTO_TYPE_DETOKENIZE_REPLY: return m->detokenize_reply.id;
        case PROTO_TYPE_SCORE_REPLY:      return m->score_reply.id;
        default:                          return 0;
        }
}
