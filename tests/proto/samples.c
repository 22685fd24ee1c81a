/* SPDX-License-Identifier: Apache-2.0 */
#include <stdlib.h>
#include <string.h>

#include "samples.h"

static char *stop_strings[] = { "<turn|>", "\n\nUser:" };
static int32_t prompt_ids[] = { 2, 105, 2364, 107, 9259, 236761 };
static int32_t delta_ids[] = { 9259, 236888 };
static struct proto_top_logprob top0[] = { { 9259, -0.0625f }, { 10979, -2.875f } };
static struct proto_top_logprob top1[] = { { 236888, -0.25f }, { 236761, -1.5f } };
static struct proto_token_logprob delta_lp[] = {
        { .id = 9259, .logprob = -0.0625f, .top = top0, .n_top = 2 },
        { .id = 236888, .logprob = -0.25f, .top = top1, .n_top = 2 },
};
static int32_t score_ids[] = { 2, 9259, 1902 };
static struct proto_token_logprob score_lp[] = {
        { .id = 9259, .logprob = -7.5f },
        { .id = 1902, .logprob = -3.25f },
};

static json_t *json_or_die(const char *text) {
        json_error_t error;
        json_t *j = json_loads(text, 0, &error);

        if (!j)
                abort();                /* a bug in the sample text itself */
        return j;
}

static void sample_params(struct proto_params *p) {
        proto_params_init(p);
        p->present = PROTO_PARAM_MAX_TOKENS | PROTO_PARAM_TEMPERATURE | PROTO_PARAM_TOP_P | PROTO_PARAM_TOP_K |
                     PROTO_PARAM_MIN_P | PROTO_PARAM_REPETITION_PENALTY | PROTO_PARAM_PRESENCE_PENALTY |
                     PROTO_PARAM_FREQUENCY_PENALTY | PROTO_PARAM_SEED | PROTO_PARAM_STOP |
                     PROTO_PARAM_LOGPROBS | PROTO_PARAM_PRIORITY | PROTO_PARAM_DEADLINE_MS | PROTO_PARAM_STREAM;
        p->max_tokens = 256;
        p->temperature = 0.7;
        p->top_p = 0.95;
        p->top_k = 64;
        p->min_p = 0.05;
        p->repetition_penalty = 1.1;
        p->presence_penalty = 0.5;
        p->frequency_penalty = -0.5;
        p->seed = 42;
        p->stop = stop_strings;
        p->n_stop = 2;
        p->logprobs = 2;
        p->priority = -5;
        p->deadline_ms = 30000;
        p->stream = true;
}

enum {
        S_HELLO, S_GENERATE, S_GENERATE_IDS, S_CHAT, S_CANCEL, S_STATUS, S_TOKENIZE, S_DETOKENIZE, S_SCORE,
        S_WELCOME, S_STARTED, S_DELTA, S_DELTA_REASONING, S_TOOL_CALL, S_FINISHED, S_FINISHED_ERROR, S_ERROR,
        S_STATUS_REPLY, S_TOKENIZE_REPLY, S_DETOKENIZE_REPLY, S_SCORE_REPLY, S_COUNT,
};

unsigned sample_count(void) {
        return S_COUNT;
}

const char *sample_get(unsigned i, struct proto_msg *m) {
        *m = (struct proto_msg) {};
        switch (i) {
        case S_HELLO:
                m->type = PROTO_TYPE_HELLO;
                m->hello = (struct proto_hello) { .proto = PROTO_VERSION, .client = "gemma4ctl/0.1.0" };
                return "hello";
        case S_GENERATE:
                m->type = PROTO_TYPE_GENERATE;
                m->generate.id = 1;
                m->generate.prompt.text = "<bos>The capital of France is";
                sample_params(&m->generate.params);
                return "generate";
        case S_GENERATE_IDS:
                m->type = PROTO_TYPE_GENERATE;
                m->generate.id = 2;
                m->generate.prompt.ids = prompt_ids;
                m->generate.prompt.n_ids = 6;
                proto_params_init(&m->generate.params);
                m->generate.params.present = PROTO_PARAM_MAX_TOKENS | PROTO_PARAM_TEMPERATURE;
                m->generate.params.max_tokens = 16;
                m->generate.params.temperature = 0;
                return "generate-ids";
        case S_CHAT:
                m->type = PROTO_TYPE_CHAT;
                m->chat.id = 3;
                m->chat.messages = json_or_die(
                        "[{\"role\": \"system\", \"content\": \"You are terse.\"},"
                        " {\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"Weather in London?\"}]},"
                        " {\"role\": \"assistant\", \"content\": null, \"reasoning_content\": \"Need a tool.\","
                        "  \"tool_calls\": [{\"id\": \"call_0\", \"type\": \"function\", \"function\":"
                        "   {\"name\": \"get_weather\", \"arguments\": {\"location\": \"London\"}}}]},"
                        " {\"role\": \"tool\", \"tool_call_id\": \"call_0\", \"name\": \"get_weather\","
                        "  \"content\": \"{\\\"temperature\\\": 15}\"}]");
                m->chat.tools = json_or_die(
                        "[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\","
                        " \"description\": \"Current weather.\", \"parameters\": {\"type\": \"object\","
                        " \"properties\": {\"location\": {\"type\": \"string\"}}, \"required\": [\"location\"]}}}]");
                m->chat.thinking = true;
                proto_params_init(&m->chat.params);
                m->chat.params.present = PROTO_PARAM_TEMPERATURE | PROTO_PARAM_PRIORITY;
                m->chat.params.temperature = 1.0;
                m->chat.params.priority = 10;
                return "chat";
        case S_CANCEL:
                m->type = PROTO_TYPE_CANCEL;
                m->cancel.id = 1;
                return "cancel";
        case S_STATUS:
                m->type = PROTO_TYPE_STATUS;
                m->status.id = 4;
                return "status";
        case S_TOKENIZE:
                m->type = PROTO_TYPE_TOKENIZE;
                m->tokenize = (struct proto_tokenize) { .id = 5, .text = "Hello <|turn>", .special = true };
                return "tokenize";
        case S_DETOKENIZE:
                m->type = PROTO_TYPE_DETOKENIZE;
                m->detokenize = (struct proto_detokenize) { .id = 6, .ids = delta_ids, .n_ids = 2 };
                return "detokenize";
        case S_SCORE:
                m->type = PROTO_TYPE_SCORE;
                m->score.id = 7;
                m->score.prompt.ids = score_ids;
                m->score.prompt.n_ids = 3;
                proto_params_init(&m->score.params);
                m->score.params.present = PROTO_PARAM_LOGPROBS;
                m->score.params.logprobs = 0;
                return "score";
        case S_WELCOME:
                m->type = PROTO_TYPE_WELCOME;
                m->welcome = (struct proto_welcome) {
                        .proto = PROTO_VERSION,
                        .server_version = "0.1.0",
                        .model = "gemma-4-26b-a4b-it-fp8",
                        .architecture = "gemma4",
                        .max_model_len = 262144,
                        .limits = { .max_frame_bytes = PROTO_DEFAULT_MAX_FRAME, .max_inflight = 64,
                                    .max_num_seqs = 256, .max_queue = 1024 },
                        .backend = "cuda",
                        .device = "NVIDIA H100 80GB HBM3",
                        .kv_tokens = 1048576,
                        .kv_seqs_32k = 32,
                };
                return "welcome";
        case S_STARTED:
                m->type = PROTO_TYPE_STARTED;
                m->started = (struct proto_started) { .id = 1, .prompt_tokens = 7, .queue_position = 0 };
                return "started";
        case S_DELTA:
                m->type = PROTO_TYPE_DELTA;
                m->delta = (struct proto_delta) {
                        .id = 1, .text = " Paris.", .token_ids = delta_ids, .n_token_ids = 2,
                        .logprobs = delta_lp, .n_logprobs = 2,
                };
                return "delta";
        case S_DELTA_REASONING:
                m->type = PROTO_TYPE_DELTA;
                m->delta = (struct proto_delta) { .id = 3, .reasoning = "The user wants", .text = "" };
                return "delta-reasoning";
        case S_TOOL_CALL:
                m->type = PROTO_TYPE_TOOL_CALL;
                m->tool_call = (struct proto_tool_call) {
                        .id = 3, .index = 0, .call_id = "call_0", .name = "get_weather",
                        .arguments = "{\"location\": \"London\"}",
                };
                return "tool_call";
        case S_FINISHED:
                m->type = PROTO_TYPE_FINISHED;
                m->finished = (struct proto_finished) {
                        .id = 1, .reason = PROTO_REASON_STOP,
                        .usage = { .prompt_tokens = 7, .cached_tokens = 0, .completion_tokens = 3 },
                        .timings = { .queue_ms = 0.25, .ttft_ms = 18.5, .per_token_ms = 6.75 },
                        .preempted = 1,
                };
                return "finished";
        case S_FINISHED_ERROR:
                m->type = PROTO_TYPE_FINISHED;
                m->finished = (struct proto_finished) {
                        .id = 2, .reason = PROTO_REASON_ERROR,
                        .usage = { .prompt_tokens = 6, .cached_tokens = 4, .completion_tokens = 1 },
                        .timings = { .queue_ms = 1, .ttft_ms = 20, .per_token_ms = 0 },
                        .error_code = PROTO_CODE_INTERNAL, .error_message = "engine failed",
                };
                return "finished-error";
        case S_ERROR:
                m->type = PROTO_TYPE_ERROR;
                m->error = (struct proto_error) {
                        .id = 9, .code = PROTO_CODE_BAD_REQUEST,
                        .message = "params.top_p: must be in (0, 1], got 1.5",
                };
                return "error";
        case S_STATUS_REPLY:
                m->type = PROTO_TYPE_STATUS_REPLY;
                m->status_reply.id = 4;
                m->status_reply.status = json_or_die(
                        "{\"state\": \"ready\", \"uptime_s\": 3600, \"queue\": {\"waiting\": 2, \"running\": 5},"
                        " \"kv_used\": 0.25, \"load_progress\": 1.0, \"last_gpu_error\": null}");
                return "status_reply";
        case S_TOKENIZE_REPLY:
                m->type = PROTO_TYPE_TOKENIZE_REPLY;
                m->tokenize_reply = (struct proto_tokenize_reply) { .id = 5, .ids = delta_ids, .n_ids = 2 };
                return "tokenize_reply";
        case S_DETOKENIZE_REPLY:
                m->type = PROTO_TYPE_DETOKENIZE_REPLY;
                m->detokenize_reply = (struct proto_detokenize_reply) { .id = 6, .text = "Hello." };
                return "detokenize_reply";
        case S_SCORE_REPLY:
                m->type = PROTO_TYPE_SCORE_REPLY;
                m->score_reply = (struct proto_score_reply) {
                        .id = 7, .token_ids = score_ids, .n_token_ids = 3, .logprobs = score_lp, .n_logprobs = 2,
                };
                return "score_reply";
        }
        return NULL;
}

void sample_release(struct proto_msg *m) {
        if (m->type == PROTO_TYPE_CHAT) {
                json_decref(m->chat.messages);
                json_decref(m->chat.tools);
        } else if (m->type == PROTO_TYPE_STATUS_REPLY)
                json_decref(m->status_reply.status);
        *m = (struct proto_msg) {};
}
