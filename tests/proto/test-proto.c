/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Unit tests of proto/: round trips of every message (encode -> frame -> reader -> decode -> compare),
 * every rejection path of the decoders and the frame reader, the encoders' refusals, the JSON bridge and
 * the UTF-8 helpers.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "proto.h"
#include "samples.h"

/* ---- comparison ---- */

static void assert_str_eq(const char *a, const char *b) {
        if (!a || !b) {
                assert_ptr_equal(a, b);
                return;
        }
        assert_string_equal(a, b);
}

static void assert_ids_eq(const int32_t *a, uint32_t na, const int32_t *b, uint32_t nb) {
        assert_int_equal(na, nb);
        if (na)
                assert_memory_equal(a, b, na * sizeof(*a));
}

static void assert_json_eq(const json_t *a, const json_t *b) {
        if (!a || !b) {
                assert_ptr_equal(a, b);
                return;
        }
        if (!json_equal((json_t *) a, (json_t *) b)) {
                char *sa = json_dumps(a, JSON_ENCODE_ANY), *sb = json_dumps(b, JSON_ENCODE_ANY);

                print_error("json differs:\n  %s\n  %s\n", sa, sb);
                free(sa);
                free(sb);
                fail();
        }
}

static void assert_logprobs_eq(const struct proto_token_logprob *a, uint32_t na,
                               const struct proto_token_logprob *b, uint32_t nb) {
        assert_int_equal(na, nb);
        for (uint32_t i = 0; i < na; i++) {
                assert_int_equal(a[i].id, b[i].id);
                assert_true(a[i].logprob == b[i].logprob);
                assert_int_equal(a[i].n_top, b[i].n_top);
                for (uint32_t j = 0; j < a[i].n_top; j++) {
                        assert_int_equal(a[i].top[j].id, b[i].top[j].id);
                        assert_true(a[i].top[j].logprob == b[i].top[j].logprob);
                }
        }
}

static void assert_params_eq(const struct proto_params *a, const struct proto_params *b) {
        assert_int_equal(a->present, b->present);
        assert_int_equal(a->max_tokens, b->max_tokens);
        assert_true(a->temperature == b->temperature);
        assert_true(a->top_p == b->top_p);
        assert_int_equal(a->top_k, b->top_k);
        assert_true(a->min_p == b->min_p);
        assert_true(a->repetition_penalty == b->repetition_penalty);
        assert_true(a->presence_penalty == b->presence_penalty);
        assert_true(a->frequency_penalty == b->frequency_penalty);
        assert_true(a->seed == b->seed);
        assert_int_equal(a->n_stop, b->n_stop);
        for (uint32_t i = 0; i < a->n_stop; i++)
                assert_string_equal(a->stop[i], b->stop[i]);
        assert_int_equal(a->logprobs, b->logprobs);
        assert_int_equal(a->priority, b->priority);
        assert_int_equal(a->deadline_ms, b->deadline_ms);
        assert_int_equal(a->stream, b->stream);
}

static void assert_prompt_eq(const struct proto_prompt *a, const struct proto_prompt *b) {
        assert_str_eq(a->text, b->text);
        assert_ids_eq(a->ids, a->n_ids, b->ids, b->n_ids);
}

static void assert_msg_eq(const struct proto_msg *a, const struct proto_msg *b) {
        assert_int_equal(a->type, b->type);
        assert_true(proto_msg_id(a) == proto_msg_id(b));
        switch (a->type) {
        case PROTO_TYPE_HELLO:
                assert_int_equal(a->hello.proto, b->hello.proto);
                assert_str_eq(a->hello.client, b->hello.client);
                break;
        case PROTO_TYPE_GENERATE:
                assert_prompt_eq(&a->generate.prompt, &b->generate.prompt);
                assert_params_eq(&a->generate.params, &b->generate.params);
                break;
        case PROTO_TYPE_CHAT:
                assert_json_eq(a->chat.messages, b->chat.messages);
                assert_json_eq(a->chat.tools, b->chat.tools);
                assert_int_equal(a->chat.thinking, b->chat.thinking);
                assert_params_eq(&a->chat.params, &b->chat.params);
                break;
        case PROTO_TYPE_CANCEL:
        case PROTO_TYPE_STATUS:
                break;
        case PROTO_TYPE_TOKENIZE:
                assert_str_eq(a->tokenize.text, b->tokenize.text);
                assert_int_equal(a->tokenize.special, b->tokenize.special);
                break;
        case PROTO_TYPE_DETOKENIZE:
                assert_ids_eq(a->detokenize.ids, a->detokenize.n_ids, b->detokenize.ids,
                              b->detokenize.n_ids);
                assert_int_equal(a->detokenize.special, b->detokenize.special);
                break;
        case PROTO_TYPE_SCORE:
                assert_prompt_eq(&a->score.prompt, &b->score.prompt);
                assert_params_eq(&a->score.params, &b->score.params);
                break;
        case PROTO_TYPE_WELCOME: {
                const struct proto_welcome *x = &a->welcome, *y = &b->welcome;

                assert_int_equal(x->proto, y->proto);
                assert_str_eq(x->server_version, y->server_version);
                assert_str_eq(x->model, y->model);
                assert_str_eq(x->architecture, y->architecture);
                assert_int_equal(x->max_model_len, y->max_model_len);
                assert_memory_equal(&x->limits, &y->limits, sizeof(x->limits));
                assert_str_eq(x->backend, y->backend);
                assert_str_eq(x->device, y->device);
                assert_true(x->kv_tokens == y->kv_tokens);
                assert_int_equal(x->kv_seqs_32k, y->kv_seqs_32k);
                break;
        }
        case PROTO_TYPE_STARTED:
                assert_int_equal(a->started.prompt_tokens, b->started.prompt_tokens);
                assert_int_equal(a->started.queue_position, b->started.queue_position);
                break;
        case PROTO_TYPE_DELTA:
                assert_str_eq(a->delta.text, b->delta.text);
                assert_str_eq(a->delta.reasoning, b->delta.reasoning);
                assert_ids_eq(a->delta.token_ids, a->delta.n_token_ids, b->delta.token_ids,
                              b->delta.n_token_ids);
                assert_logprobs_eq(a->delta.logprobs, a->delta.n_logprobs, b->delta.logprobs,
                                   b->delta.n_logprobs);
                break;
        case PROTO_TYPE_TOOL_CALL:
                assert_int_equal(a->tool_call.index, b->tool_call.index);
                assert_str_eq(a->tool_call.call_id, b->tool_call.call_id);
                assert_str_eq(a->tool_call.name, b->tool_call.name);
                assert_str_eq(a->tool_call.arguments, b->tool_call.arguments);
                break;
        case PROTO_TYPE_FINISHED: {
                const struct proto_finished *x = &a->finished, *y = &b->finished;

                assert_int_equal(x->reason, y->reason);
                assert_memory_equal(&x->usage, &y->usage, sizeof(x->usage));
                assert_true(x->timings.queue_ms == y->timings.queue_ms);
                assert_true(x->timings.ttft_ms == y->timings.ttft_ms);
                assert_true(x->timings.per_token_ms == y->timings.per_token_ms);
                assert_int_equal(x->preempted, y->preempted);
                assert_int_equal(x->error_code, y->error_code);
                assert_str_eq(x->error_message, y->error_message);
                break;
        }
        case PROTO_TYPE_ERROR:
                assert_int_equal(a->error.code, b->error.code);
                assert_str_eq(a->error.message, b->error.message);
                break;
        case PROTO_TYPE_STATUS_REPLY:
                assert_json_eq(a->status_reply.status, b->status_reply.status);
                break;
        case PROTO_TYPE_TOKENIZE_REPLY:
                assert_ids_eq(a->tokenize_reply.ids, a->tokenize_reply.n_ids, b->tokenize_reply.ids,
                              b->tokenize_reply.n_ids);
                break;
        case PROTO_TYPE_DETOKENIZE_REPLY:
                assert_str_eq(a->detokenize_reply.text, b->detokenize_reply.text);
                break;
        case PROTO_TYPE_SCORE_REPLY:
                assert_ids_eq(a->score_reply.token_ids, a->score_reply.n_token_ids, b->score_reply.token_ids,
                              b->score_reply.n_token_ids);
                assert_logprobs_eq(a->score_reply.logprobs, a->score_reply.n_logprobs,
                                   b->score_reply.logprobs,
                                   b->score_reply.n_logprobs);
                break;
        default:
                fail_msg("unexpected type %d", a->type);
        }
}

/* ---- round trips ---- */

/* Feed `len` bytes to a reader in pieces chosen by split(); collect every frame, decode and compare with
 * the samples in order. */
typedef size_t (*split_fn)(size_t remaining, unsigned *state);

static size_t split_whole(size_t remaining, unsigned *state) {
        return remaining;
}

static size_t split_bytes(size_t remaining, unsigned *state) {
        return 1;
}

static size_t split_random(size_t remaining, unsigned *state) {
        /* xorshift; pieces of 1..97 bytes */
        *state ^= *state << 13;
        *state ^= *state >> 17;
        *state ^= *state << 5;
        size_t n = 1 + *state % 97;
        return n < remaining ? n : remaining;
}

static void round_trip_all(split_fn split, unsigned seed) {
        struct proto_buf out;
        struct proto_reader rd;
        unsigned n = sample_count(), got = 0, state = seed;
        size_t pos = 0;

        proto_buf_init(&out);
        for (unsigned i = 0; i < n; i++) {
                struct proto_msg m;

                assert_non_null(sample_get(i, &m));
                assert_int_equal(proto_encode(&out, &m), 0);
                sample_release(&m);
        }

        proto_reader_init(&rd, 0);
        while (pos < out.len) {
                size_t piece = split(out.len - pos, &state), off = 0;

                while (off < piece) {
                        struct proto_diag diag;
                        size_t used, flen;
                        const uint8_t *frame;
                        int r;

                        r = proto_reader_feed(&rd, out.data + pos + off, piece - off, &used, &diag);
                        assert_true(r >= 0);
                        off += used;
                        if (r == 0) {
                                assert_int_equal(off, piece);
                                break;
                        }
                        frame = proto_reader_frame(&rd, &flen);
                        assert_non_null(frame);

                        struct proto_msg want, dec;
                        struct proto_buf again;
                        const char *name = sample_get(got, &want);

                        r = proto_decode(frame, flen, &dec, &diag);
                        if (r < 0)
                                fail_msg("%s: %s", name, diag.message);
                        assert_msg_eq(&want, &dec);
                        /* Direction-specific decoders accept exactly their side. */
                        {
                                struct proto_msg tmp;
                                bool req = proto_type_is_request(want.type);

                                assert_int_equal(proto_decode_request(frame, flen, &tmp, &diag),
                                                 req ? 0 : -EBADMSG);
                                if (req)
                                        proto_msg_done(&tmp);
                                else
                                        assert_int_equal(diag.code, PROTO_CODE_UNSUPPORTED);
                                assert_int_equal(proto_decode_event(frame, flen, &tmp, &diag),
                                                 req ? -EBADMSG : 0);
                                if (!req)
                                        proto_msg_done(&tmp);
                        }
                        /* Re-encoding the decoded struct gives the same bytes: nothing was lost. */
                        proto_buf_init(&again);
                        assert_int_equal(proto_encode(&again, &dec), 0);
                        assert_int_equal(again.len, flen + PROTO_FRAME_HEADER_BYTES);
                        assert_memory_equal(again.data + PROTO_FRAME_HEADER_BYTES, frame, flen);
                        proto_buf_done(&again);
                        proto_msg_done(&dec);
                        proto_msg_done(&dec);           /* done twice is harmless */
                        sample_release(&want);
                        got++;
                }
                pos += piece;
        }
        assert_int_equal(got, n);
        assert_false(proto_reader_partial(&rd));
        proto_reader_done(&rd);
        proto_buf_done(&out);
}

static void test_round_trip_whole(void **state) {
        round_trip_all(split_whole, 1);
}

static void test_round_trip_byte_by_byte(void **state) {
        round_trip_all(split_bytes, 1);
}

static void test_round_trip_random_splits(void **state) {
        for (unsigned seed = 1; seed <= 50; seed++)
                round_trip_all(split_random, seed * 2654435761u);
}

/* Optional keys absent: defaults are filled and present is 0. */
static void test_defaults(void **state) {
        static const uint8_t body[] = {
                0x83, 0xa4, 't', 'y', 'p', 'e', 0xa8, 'g', 'e', 'n', 'e', 'r', 'a', 't', 'e',
                0xa2, 'i', 'd', 0x01, 0xa6, 'p', 'r', 'o', 'm', 'p', 't', 0xa0,
        };
        struct proto_msg m;
        struct proto_diag d;
        struct proto_params def;

        assert_int_equal(proto_decode_request(body, sizeof(body), &m, &d), 0);
        assert_int_equal(m.type, PROTO_TYPE_GENERATE);
        assert_string_equal(m.generate.prompt.text, "");
        proto_params_init(&def);
        assert_params_eq(&m.generate.params, &def);
        assert_int_equal(m.generate.params.present, 0);
        assert_true(m.generate.params.stream);
        assert_int_equal(m.generate.params.logprobs, -1);
        proto_msg_done(&m);
}

/* ---- rejections, described as JSON (converted to msgpack with proto_pack_json) ---- */

static void pack_json_text(const char *text, struct proto_buf *b) {
        json_error_t error;
        json_t *j = json_loads(text, JSON_DECODE_ANY, &error);
        msgpack_packer pk;
        msgpack_sbuffer sb;

        if (!j)
                fail_msg("bad test JSON %s: %s", text, error.text);
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        /* proto_pack_json refuses top-level depth > 23 only for deep values; fine for these tests. */
        assert_int_equal(proto_pack_json(&pk, j), 0);
        proto_buf_init(b);
        b->data = malloc(sb.size);
        assert_non_null(b->data);
        memcpy(b->data, sb.data, sb.size);
        b->len = b->cap = sb.size;
        msgpack_sbuffer_destroy(&sb);
        json_decref(j);
}

enum dir { ANY, REQ, EVT };

static void expect_reject_bytes(const void *body, size_t len, enum dir dir, enum proto_code code,
                                const char *needle, const char *what) {
        struct proto_msg m;
        struct proto_diag d;
        int r;

        memset(&m, 0x5a, sizeof(m));
        r = dir == REQ ? proto_decode_request(body, len, &m, &d) :
            dir == EVT ? proto_decode_event(body, len, &m, &d) : proto_decode(body, len, &m, &d);
        if (r == 0) {
                proto_msg_done(&m);
                fail_msg("accepted: %s", what);
        }
        assert_int_equal(r, -EBADMSG);
        if (d.code != code)
                fail_msg("%s: code %s, want %s (%s)", what, proto_code_to_string(d.code),
                         proto_code_to_string(code), d.message);
        if (needle && !strstr(d.message, needle))
                fail_msg("%s: message '%s' does not name '%s'", what, d.message, needle);
        /* ret untouched on failure */
        assert_int_equal(((const uint8_t *) &m)[0], 0x5a);
}

static void expect_reject(const char *json, enum dir dir, enum proto_code code, const char *needle) {
        struct proto_buf b;

        pack_json_text(json, &b);
        expect_reject_bytes(b.data, b.len, dir, code, needle, json);
        proto_buf_done(&b);
}

static void expect_accept(const char *json, enum dir dir) {
        struct proto_buf b;
        struct proto_msg m;
        struct proto_diag d;
        int r;

        pack_json_text(json, &b);
        r = dir == REQ ? proto_decode_request(b.data, b.len, &m, &d) :
            dir == EVT ? proto_decode_event(b.data, b.len, &m, &d) : proto_decode(b.data, b.len, &m, &d);
        if (r < 0)
                fail_msg("rejected %s: %s", json, d.message);
        proto_msg_done(&m);
        proto_buf_done(&b);
}

#define BAD PROTO_CODE_BAD_REQUEST
#define GEN(extra) "{\"type\":\"generate\",\"id\":1,\"prompt\":\"x\"" extra "}"
#define PARAMS(p) GEN(",\"params\":{" p "}")

static void test_reject_envelope(void **state) {
        expect_reject("[1,2]", ANY, BAD, "top level");
        expect_reject("5", ANY, BAD, "top level");
        expect_reject("{\"id\":1}", ANY, BAD, "type");
        expect_reject("{\"type\":5}", ANY, BAD, "type");
        expect_reject("{\"type\":null}", ANY, BAD, "type");
        expect_reject("{\"type\":\"frobnicate\",\"id\":3}", ANY, PROTO_CODE_UNSUPPORTED, "frobnicate");
        expect_reject("{\"type\":\"welcome\"}", REQ, PROTO_CODE_UNSUPPORTED, "welcome");
        expect_reject("{\"type\":\"generate\",\"id\":1,\"prompt\":\"x\"}", EVT, PROTO_CODE_UNSUPPORTED,
                      "generate");
        /* ids */
        expect_reject("{\"type\":\"cancel\"}", REQ, BAD, "id");
        expect_reject("{\"type\":\"cancel\",\"id\":0}", REQ, BAD, "id");
        expect_reject("{\"type\":\"cancel\",\"id\":-1}", REQ, BAD, "id");
        expect_reject("{\"type\":\"cancel\",\"id\":\"1\"}", REQ, BAD, "id");
        expect_reject("{\"type\":\"cancel\",\"id\":1.0}", REQ, BAD, "id");
        expect_reject("{\"type\":\"status\"}", REQ, BAD, "id");
        /* unknown keys are ignored */
        expect_accept("{\"type\":\"cancel\",\"id\":7,\"future\":{\"x\":[1,2,3]}}", REQ);
}

static void test_reject_id_reported(void **state) {
        struct proto_buf b;
        struct proto_msg m;
        struct proto_diag d;

        pack_json_text(PARAMS("\"top_p\":1.5"), &b);
        assert_int_equal(proto_decode_request(b.data, b.len, &m, &d), -EBADMSG);
        assert_true(d.has_id);
        assert_int_equal(d.id, 1);
        assert_string_equal(d.message, "params.top_p: must be in (0, 1], got 1.5");

        /* The daemon turns a diag into an error event tied to the request. */
        struct proto_buf out;
        struct proto_reader rd;
        const uint8_t *frame;
        size_t used, flen;

        proto_buf_init(&out);
        assert_int_equal(proto_encode_diag(&out, &d), 0);
        proto_reader_init(&rd, 0);
        assert_int_equal(proto_reader_feed(&rd, out.data, out.len, &used, &d), 1);
        frame = proto_reader_frame(&rd, &flen);
        assert_int_equal(proto_decode_event(frame, flen, &m, &d), 0);
        assert_int_equal(m.type, PROTO_TYPE_ERROR);
        assert_int_equal(m.error.id, 1);
        assert_int_equal(m.error.code, PROTO_CODE_BAD_REQUEST);
        assert_string_equal(m.error.message, "params.top_p: must be in (0, 1], got 1.5");
        proto_msg_done(&m);
        proto_reader_done(&rd);
        proto_buf_done(&out);
        proto_buf_done(&b);
}

static void test_reject_hello(void **state) {
        expect_accept("{\"type\":\"hello\",\"proto\":1}", REQ);
        expect_reject("{\"type\":\"hello\"}", REQ, BAD, "proto");
        expect_reject("{\"type\":\"hello\",\"proto\":\"1\"}", REQ, BAD, "proto");
        expect_reject("{\"type\":\"hello\",\"proto\":2,\"client\":\"x\"}", REQ,
                      PROTO_CODE_UNSUPPORTED_VERSION,
                      "version 2");
        expect_reject("{\"type\":\"hello\",\"proto\":0}", REQ, PROTO_CODE_UNSUPPORTED_VERSION, "proto");
        expect_reject("{\"type\":\"hello\",\"proto\":1,\"client\":7}", REQ, BAD, "client");
}

static void test_reject_generate(void **state) {
        expect_reject("{\"type\":\"generate\",\"id\":1}", REQ, BAD, "prompt");
        expect_reject("{\"type\":\"generate\",\"id\":1,\"prompt\":null}", REQ, BAD, "prompt");
        expect_reject("{\"type\":\"generate\",\"id\":1,\"prompt\":5}", REQ, BAD, "prompt");
        expect_reject("{\"type\":\"generate\",\"id\":1,\"prompt\":[\"a\"]}", REQ, BAD, "prompt");
        expect_reject("{\"type\":\"generate\",\"id\":1,\"prompt\":\"a\",\"prompt_ids\":[1]}", REQ, BAD,
                      "prompt");
        expect_reject("{\"type\":\"generate\",\"id\":1,\"prompt_ids\":[]}", REQ, BAD, "prompt_ids");
        expect_reject("{\"type\":\"generate\",\"id\":1,\"prompt_ids\":[1,-2]}", REQ, BAD, "prompt_ids");
        expect_reject("{\"type\":\"generate\",\"id\":1,\"prompt_ids\":[1,\"2\"]}", REQ, BAD, "prompt_ids");
        expect_reject("{\"type\":\"generate\",\"id\":1,\"prompt_ids\":[2147483648]}", REQ, BAD,
                      "prompt_ids");
        expect_reject("{\"type\":\"generate\",\"id\":1,\"prompt_ids\":{\"a\":1}}", REQ, BAD, "prompt_ids");
        expect_reject(GEN(",\"params\":[1]"), REQ, BAD, "params");
        expect_reject(GEN(",\"params\":\"hot\""), REQ, BAD, "params");
        expect_accept(GEN(",\"params\":null"), REQ);
        expect_accept("{\"type\":\"generate\",\"id\":1,\"prompt_ids\":[0,2147483647]}", REQ);
}

static void test_reject_params(void **state) {
        static const struct {
                const char *json;
                const char *key;
        } bad[] = {
                { PARAMS("\"max_tokens\":0"), "params.max_tokens" },
                { PARAMS("\"max_tokens\":1048577"), "params.max_tokens" },
                { PARAMS("\"max_tokens\":-5"), "params.max_tokens" },
                { PARAMS("\"max_tokens\":1.5"), "params.max_tokens" },
                { PARAMS("\"temperature\":-0.1"), "params.temperature" },
                { PARAMS("\"temperature\":101"), "params.temperature" },
                { PARAMS("\"temperature\":\"hot\""), "params.temperature" },
                { PARAMS("\"top_p\":0"), "params.top_p" },
                { PARAMS("\"top_p\":1.01"), "params.top_p" },
                { PARAMS("\"top_k\":-1"), "params.top_k" },
                { PARAMS("\"top_k\":1048577"), "params.top_k" },
                { PARAMS("\"min_p\":-0.5"), "params.min_p" },
                { PARAMS("\"min_p\":2"), "params.min_p" },
                { PARAMS("\"repetition_penalty\":0"), "params.repetition_penalty" },
                { PARAMS("\"repetition_penalty\":11"), "params.repetition_penalty" },
                { PARAMS("\"presence_penalty\":2.5"), "params.presence_penalty" },
                { PARAMS("\"frequency_penalty\":-2.5"), "params.frequency_penalty" },
                { PARAMS("\"seed\":-1"), "params.seed" },
                { PARAMS("\"seed\":\"x\""), "params.seed" },
                { PARAMS("\"stop\":\"x\""), "params.stop" },
                { PARAMS("\"stop\":[1]"), "params.stop[0]" },
                { PARAMS("\"stop\":[\"a\",\"\"]"), "params.stop[1]" },
                { PARAMS("\"stop\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\",\"10\",\"11\",\"12\","
                         "\"13\",\"14\",\"15\",\"16\",\"17\"]"), "params.stop" },
                { PARAMS("\"logprobs\":21"), "params.logprobs" },
                { PARAMS("\"logprobs\":-1"), "params.logprobs" },
                { PARAMS("\"logprobs\":true"), "params.logprobs" },
                { PARAMS("\"priority\":20"), "params.priority" },
                { PARAMS("\"priority\":-21"), "params.priority" },
                { PARAMS("\"deadline_ms\":-1"), "params.deadline_ms" },
                { PARAMS("\"deadline_ms\":604800001"), "params.deadline_ms" },
                { PARAMS("\"stream\":1"), "params.stream" },
        };

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                expect_reject(bad[i].json, REQ, BAD, bad[i].key);

        /* Edges that are inside the ranges, and ints for float keys. */
        expect_accept(PARAMS("\"temperature\":0,\"top_p\":1,\"min_p\":1,\"priority\":-20,\"logprobs\":20,"
                             "\"deadline_ms\":0,\"top_k\":0,\"presence_penalty\":-2,\"frequency_penalty\":2,"
                             "\"max_tokens\":1048576,\"seed\":9223372036854775807,\"stream\":false"), REQ);
        expect_accept(PARAMS("\"priority\":19,\"repetition_penalty\":10,\"temperature\":100,\"stop\":[]"),
                      REQ);

        /* A stop string of 257 bytes. */
        char json[600], s[258];
        memset(s, 'a', 257);
        s[257] = 0;
        snprintf(json, sizeof(json), PARAMS("\"stop\":[\"%s\"]"), s);
        expect_reject(json, REQ, BAD, "params.stop[0]");
        s[256] = 0;
        snprintf(json, sizeof(json), PARAMS("\"stop\":[\"%s\"]"), s);
        expect_accept(json, REQ);
}

static void test_reject_chat(void **state) {
#define CHAT(rest) "{\"type\":\"chat\",\"id\":2" rest "}"
        expect_reject(CHAT(""), REQ, BAD, "messages");
        expect_reject(CHAT(",\"messages\":{}"), REQ, BAD, "messages");
        expect_reject(CHAT(",\"messages\":[]"), REQ, BAD, "messages");
        expect_reject(CHAT(",\"messages\":[\"hi\"]"), REQ, BAD, "messages[0]");
        expect_reject(CHAT(",\"messages\":[{\"content\":\"hi\"}]"), REQ, BAD, "messages[0].role");
        expect_reject(CHAT(",\"messages\":[{\"role\":1}]"), REQ, BAD, "messages[0].role");
        expect_reject(CHAT(",\"messages\":[{\"role\":\"\"}]"), REQ, BAD, "messages[0].role");
        expect_reject(CHAT(",\"messages\":[{\"role\":\"user\",\"content\":5}]"), REQ, BAD,
                      "messages[0].content");
        expect_reject(CHAT(",\"messages\":[{\"role\":\"user\",\"content\":[\"x\"]}]"), REQ, BAD,
                      "messages[0].content[0]");
        expect_reject(CHAT(",\"messages\":[{\"role\":\"user\",\"content\":[{\"text\":\"x\"}]}]"), REQ, BAD,
                      "messages[0].content[0].type");
        expect_reject(CHAT(",\"messages\":[{\"role\":\"user\"},{\"role\":\"assistant\",\"tool_calls\":{}}]"), REQ,
                      BAD, "messages[1].tool_calls");
        expect_reject(CHAT(",\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[1]}]"), REQ, BAD,
                      "messages[0].tool_calls");
        expect_reject(CHAT(",\"messages\":[{\"role\":\"tool\",\"tool_call_id\":3}]"), REQ, BAD,
                      "messages[0].tool_call_id");
        expect_reject(CHAT(",\"messages\":[{\"role\":\"assistant\",\"reasoning_content\":[]}]"), REQ, BAD,
                      "messages[0].reasoning_content");
        expect_reject(CHAT(",\"messages\":[{\"role\":\"user\"}],\"tools\":{}"), REQ, BAD, "tools");
        expect_reject(CHAT(",\"messages\":[{\"role\":\"user\"}],\"tools\":[\"f\"]"), REQ, BAD, "tools");
        expect_reject(CHAT(",\"messages\":[{\"role\":\"user\"}],\"thinking\":\"yes\""), REQ, BAD,
                      "thinking");
        expect_reject(CHAT(",\"messages\":[{\"role\":\"user\"}],\"params\":{\"top_p\":2}"), REQ, BAD,
                      "params.top_p");
        expect_accept(CHAT(",\"messages\":[{\"role\":\"user\",\"content\":null,\"x-extra\":{\"a\":[1,2.5,null,"
                           "true]}}],\"tools\":null"), REQ);
#undef CHAT
}

static void test_reject_small_requests(void **state) {
        expect_reject("{\"type\":\"tokenize\",\"id\":1}", REQ, BAD, "text");
        expect_reject("{\"type\":\"tokenize\",\"id\":1,\"text\":[]}", REQ, BAD, "text");
        expect_reject("{\"type\":\"tokenize\",\"id\":1,\"text\":\"a\",\"special\":\"no\"}", REQ, BAD,
                      "special");
        expect_reject("{\"type\":\"detokenize\",\"id\":1}", REQ, BAD, "ids");
        expect_reject("{\"type\":\"detokenize\",\"id\":1,\"ids\":\"1 2\"}", REQ, BAD, "ids");
        expect_reject("{\"type\":\"detokenize\",\"id\":1,\"ids\":[1],\"special\":0}", REQ, BAD, "special");
        expect_accept("{\"type\":\"detokenize\",\"id\":1,\"ids\":[]}", REQ);
        expect_reject("{\"type\":\"score\",\"id\":1}", REQ, BAD, "prompt");
        expect_reject("{\"type\":\"score\",\"id\":1,\"prompt\":\"x\",\"params\":{\"logprobs\":50}}", REQ,
                      BAD,
                      "params.logprobs");
}

static void test_reject_events(void **state) {
        static const char welcome[] =
                "{\"type\":\"welcome\",\"proto\":1,\"server_version\":\"0.1\",\"model\":\"m\","
                "\"architecture\":\"gemma4\",\"max_model_len\":4096,\"limits\":{\"max_frame_bytes\":1024,"
                "\"max_inflight\":4,\"max_num_seqs\":8,\"max_queue\":16},\"backend\":\"cpu\",\"device\":\"\","
                "\"kv\":{\"tokens\":65536,\"seqs_32k\":2}%s}";
        char buf[600];

        snprintf(buf, sizeof(buf), welcome, "");
        expect_accept(buf, EVT);
        expect_reject("{\"type\":\"welcome\",\"proto\":1}", EVT, BAD, "server_version");
        snprintf(buf, sizeof(buf), welcome, ",\"limits\":{\"max_frame_bytes\":1024}");   /* jansson: last wins */
        expect_reject(buf, EVT, BAD, "limits.max_inflight");

        expect_reject("{\"type\":\"started\",\"id\":1,\"prompt_tokens\":3}", EVT, BAD, "queue_position");
        expect_reject("{\"type\":\"delta\",\"id\":1,\"text\":5}", EVT, BAD, "text");
        expect_reject("{\"type\":\"delta\",\"id\":1,\"token_ids\":[1,2],\"logprobs\":[{\"id\":1,\"logprob\":-1}]}",
                      EVT, BAD, "logprobs");
        expect_reject("{\"type\":\"delta\",\"id\":1,\"token_ids\":[1],\"logprobs\":[{\"id\":1,\"logprob\":0.5}]}",
                      EVT, BAD, "logprobs[0].logprob");
        expect_reject("{\"type\":\"delta\",\"id\":1,\"token_ids\":[1],\"logprobs\":[{\"id\":1}]}", EVT, BAD,
                      "logprobs[0].logprob");
        expect_reject("{\"type\":\"delta\",\"id\":1,\"token_ids\":[1],\"logprobs\":[{\"id\":1,\"logprob\":-1,"
                      "\"top\":[{\"id\":-4,\"logprob\":-1}]}]}", EVT, BAD, "logprobs[0].top[0].id");
        expect_reject("{\"type\":\"delta\",\"id\":1,\"token_ids\":[1],\"logprobs\":[5]}", EVT, BAD,
                      "logprobs[0]");
        expect_reject("{\"type\":\"tool_call\",\"id\":1,\"index\":0,\"name\":\"f\",\"arguments\":\"{bad\"}",
                      EVT,
                      BAD, "arguments");
        expect_reject("{\"type\":\"tool_call\",\"id\":1,\"index\":0,\"name\":\"f\",\"arguments\":\"[1]\"}",
                      EVT,
                      BAD, "arguments");
        expect_reject("{\"type\":\"tool_call\",\"id\":1,\"index\":0,\"arguments\":\"{}\"}", EVT, BAD,
                      "name");
        expect_accept("{\"type\":\"tool_call\",\"id\":1,\"index\":0,\"name\":\"f\",\"arguments\":\"{}\"}",
                      EVT);

#define FIN(reason, extra) "{\"type\":\"finished\",\"id\":1,\"reason\":\"" reason "\",\"usage\":{" \
        "\"prompt_tokens\":1,\"cached_tokens\":0,\"completion_tokens\":2},\"timings\":{\"queue_ms\":0," \
        "\"ttft_ms\":1.5,\"per_token_ms\":2}" extra "}"
        expect_accept(FIN("length", ""), EVT);
        expect_reject(FIN("tired", ""), EVT, BAD, "reason");
        expect_reject(FIN("error", ""), EVT, BAD, "error");
        expect_reject(FIN("error", ",\"error\":{\"message\":\"x\"}"), EVT, BAD, "error.code");
        expect_accept(FIN("error", ",\"error\":{\"code\":\"internal\",\"message\":\"x\"}"), EVT);
        expect_reject(FIN("stop", ",\"preempted\":-1"), EVT, BAD, "preempted");
        expect_reject("{\"type\":\"finished\",\"id\":1,\"reason\":\"stop\",\"usage\":{\"prompt_tokens\":1,"
                      "\"cached_tokens\":0,\"completion_tokens\":2},\"timings\":{\"queue_ms\":-1,\"ttft_ms\":1,"
                      "\"per_token_ms\":2}}", EVT, BAD, "timings.queue_ms");
        expect_reject("{\"type\":\"finished\",\"id\":1,\"reason\":\"stop\",\"usage\":{\"prompt_tokens\":1},"
                      "\"timings\":{}}", EVT, BAD, "usage.cached_tokens");
#undef FIN
        expect_reject("{\"type\":\"error\",\"id\":0,\"message\":\"x\"}", EVT, BAD, "code");
        expect_reject("{\"type\":\"error\",\"code\":\"internal\",\"message\":\"x\"}", EVT, BAD, "id");
        expect_accept("{\"type\":\"error\",\"id\":0,\"code\":\"internal\",\"message\":\"x\"}", EVT);
        expect_reject("{\"type\":\"status_reply\",\"id\":4,\"status\":[1]}", EVT, BAD, "status");
        expect_reject("{\"type\":\"tokenize_reply\",\"id\":4}", EVT, BAD, "ids");
        expect_reject("{\"type\":\"detokenize_reply\",\"id\":4,\"text\":null}", EVT, BAD, "text");
        expect_reject("{\"type\":\"score_reply\",\"id\":4,\"token_ids\":[1,2],\"logprobs\":[]}", EVT, BAD,
                      "logprobs");
        expect_reject("{\"type\":\"score_reply\",\"id\":4,\"token_ids\":[],\"logprobs\":[]}", EVT, BAD,
                      "token_ids");
}

/* printf into a fresh buffer (the JSON texts below hold long generated strings). */
static char *fmt_json(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *fmt_json(const char *fmt, ...) {
        va_list ap;
        char *s;

        va_start(ap, fmt);
        assert_true(vasprintf(&s, fmt, ap) >= 0);
        va_end(ap);
        return s;
}

static char *repeat(const char *piece, unsigned n, const char *sep) {
        size_t lp = strlen(piece), ls = strlen(sep);
        char *s = malloc(n * (lp + ls) + 1), *p = s;

        assert_non_null(s);
        for (unsigned i = 0; i < n; i++) {
                memcpy(p, piece, lp);
                p += lp;
                if (i + 1 < n) {
                        memcpy(p, sep, ls);
                        p += ls;
                }
        }
        *p = 0;
        return s;
}

static void test_reject_lengths(void **state) {
        char *name257 = repeat("n", 257, ""), *name256 = repeat("n", 256, ""), *msg4097 = repeat("m", 4097, "");
        char *msgs4097 = repeat("{\"role\":\"user\"}", 4097, ","), *tools513 = repeat("{}", 513, ",");
        char *j;

#define CHECK(expr) do { j = (expr); } while (0)
        CHECK(fmt_json("{\"type\":\"hello\",\"proto\":1,\"client\":\"%s\"}", name257));
        expect_reject(j, REQ, BAD, "client");
        free(j);
        CHECK(fmt_json("{\"type\":\"hello\",\"proto\":1,\"client\":\"%s\"}", name256));
        expect_accept(j, REQ);
        free(j);
        CHECK(fmt_json("{\"type\":\"chat\",\"id\":1,\"messages\":[{\"role\":\"%s\"}]}", name257));
        expect_reject(j, REQ, BAD, "messages[0].role");
        free(j);
        {
                /* A 257-byte map key inside a message (proto_pack_json refuses to write one). */
                msgpack_sbuffer sb;
                msgpack_packer pk;

                msgpack_sbuffer_init(&sb);
                msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
                msgpack_pack_map(&pk, 3);
                msgpack_pack_str_with_body(&pk, "type", 4);
                msgpack_pack_str_with_body(&pk, "chat", 4);
                msgpack_pack_str_with_body(&pk, "id", 2);
                msgpack_pack_uint8(&pk, 1);
                msgpack_pack_str_with_body(&pk, "messages", 8);
                msgpack_pack_array(&pk, 1);
                msgpack_pack_map(&pk, 2);
                msgpack_pack_str_with_body(&pk, "role", 4);
                msgpack_pack_str_with_body(&pk, "user", 4);
                msgpack_pack_str_with_body(&pk, name257, 257);
                msgpack_pack_nil(&pk);
                expect_reject_bytes(sb.data, sb.size, REQ, BAD, "messages[0].nnn", "long key");
                msgpack_sbuffer_destroy(&sb);
        }
        CHECK(fmt_json("{\"type\":\"chat\",\"id\":1,\"messages\":[%s]}", msgs4097));
        expect_reject(j, REQ, BAD, "messages");
        free(j);
        CHECK(fmt_json("{\"type\":\"chat\",\"id\":1,\"messages\":[{\"role\":\"user\"}],\"tools\":[%s]}",
                       tools513));
        expect_reject(j, REQ, BAD, "tools");
        free(j);
        CHECK(fmt_json("{\"type\":\"error\",\"id\":0,\"code\":\"internal\",\"message\":\"%s\"}", msg4097));
        expect_reject(j, EVT, BAD, "message");
        free(j);
        CHECK(fmt_json("{\"type\":\"tool_call\",\"id\":1,\"index\":0,\"name\":\"%s\",\"arguments\":\"{}\"}",
                       name257));
        expect_reject(j, EVT, BAD, "name");
        free(j);
#undef CHECK
        expect_reject("{\"type\":\"tool_call\",\"id\":1,\"index\":0,\"call_id\":\"\",\"name\":\"f\","
                      "\"arguments\":\"{}\"}", EVT, BAD, "call_id");
        expect_reject("{\"type\":\"a_type_name_much_longer_than_any_real_one\",\"id\":1}", ANY,
                      PROTO_CODE_UNSUPPORTED, "type");
        free(name257);
        free(name256);
        free(msg4097);
        free(msgs4097);
        free(tools513);
}

/* Forward compatibility: an error code this version does not know decodes as UNKNOWN. */
static void test_unknown_error_code(void **state) {
        struct proto_buf b;
        struct proto_msg m;
        struct proto_diag d;

        pack_json_text("{\"type\":\"error\",\"id\":3,\"code\":\"quota_exceeded\",\"message\":\"m\"}", &b);
        assert_int_equal(proto_decode_event(b.data, b.len, &m, &d), 0);
        assert_int_equal(m.error.code, PROTO_CODE_UNKNOWN);
        assert_int_equal(m.error.id, 3);
        proto_msg_done(&m);
        proto_buf_done(&b);
        assert_int_equal(proto_code_from_string("overloaded"), PROTO_CODE_OVERLOADED);
        assert_string_equal(proto_code_to_string(PROTO_CODE_SHUTTING_DOWN), "shutting_down");
        assert_null(proto_code_to_string(_PROTO_CODE_MAX));
        assert_int_equal(proto_code_from_string(NULL), _PROTO_CODE_INVALID);
        assert_int_equal(proto_type_from_string("tool_call"), PROTO_TYPE_TOOL_CALL);
        assert_int_equal(proto_type_from_string("toolcall"), _PROTO_TYPE_INVALID);
        assert_int_equal(proto_reason_from_string("deadline"), PROTO_REASON_DEADLINE);
        assert_null(proto_reason_to_string(_PROTO_REASON_MAX));
}

/* ---- malformed msgpack, built byte by byte ---- */

static void test_reject_bad_msgpack(void **state) {
        /* {"type":"cancel","id":1} = 82 a4 type a6 cancel a2 id 01 */
        static const uint8_t good[] = { 0x82, 0xa4, 't', 'y', 'p', 'e', 0xa6, 'c', 'a', 'n', 'c', 'e', 'l',
                                        0xa2, 'i', 'd', 0x01 };
        uint8_t b[64];
        struct proto_msg m;
        struct proto_diag d;

        assert_int_equal(proto_decode_request(good, sizeof(good), &m, &d), 0);
        proto_msg_done(&m);

        expect_reject_bytes(good, 0, REQ, BAD, "empty", "empty body");
        for (size_t n = 1; n < sizeof(good); n++)
                expect_reject_bytes(good, n, REQ, BAD, "frame: ", "truncated body");
        memcpy(b, good, sizeof(good));
        b[sizeof(good)] = 0xc0;
        expect_reject_bytes(b, sizeof(good) + 1, REQ, BAD, "trailing", "trailing nil");
        memcpy(b, good, sizeof(good));
        b[16] = 0xc1;                                           /* never-used byte */
        expect_reject_bytes(b, sizeof(good), REQ, BAD, "0xc1", "0xc1");
        /* A map claiming 2^32-1 pairs in a tiny frame: rejected before msgpack-c allocates. */
        static const uint8_t huge_map[] = { 0xdf, 0xff, 0xff, 0xff, 0xff, 0xa4, 't', 'y', 'p', 'e' };
        expect_reject_bytes(huge_map, sizeof(huge_map), REQ, BAD, "does not fit", "huge map");
        static const uint8_t huge_array[] = { 0x81, 0xa1, 'x', 0xdd, 0xff, 0xff, 0xff, 0xff, 0x01 };
        expect_reject_bytes(huge_array, sizeof(huge_array), REQ, BAD, "does not fit", "huge array");
        static const uint8_t huge_str[] = { 0x81, 0xa1, 'x', 0xdb, 0x7f, 0xff, 0xff, 0xff, 'a' };
        expect_reject_bytes(huge_str, sizeof(huge_str), REQ, BAD, "truncated", "huge str");
        /* A non-string key before "type" is fine to skip, but the type must still be there. */
        static const uint8_t int_key[] = { 0x81, 0x01, 0x02 };
        expect_reject_bytes(int_key, sizeof(int_key), REQ, BAD, "type", "int key");
        /* Binary where a string is expected. */
        static const uint8_t bin_type[] = { 0x81, 0xa4, 't', 'y', 'p', 'e', 0xc4, 0x02, 'h', 'i' };
        expect_reject_bytes(bin_type, sizeof(bin_type), REQ, BAD, "type", "bin type");
        /* NUL and invalid UTF-8 inside strings. */
        static const uint8_t nul_text[] = { 0x83, 0xa4, 't', 'y', 'p', 'e', 0xa8, 't', 'o', 'k', 'e', 'n', 'i',
                                            'z', 'e', 0xa2, 'i', 'd', 0x01, 0xa4, 't', 'e', 'x', 't', 0xa3, 'a',
                                            0x00, 'b', 0xc0, 0xc0 };
        expect_reject_bytes(nul_text, sizeof(nul_text) - 2, REQ, BAD, "text", "NUL in text");
        uint8_t bad_utf8[sizeof(nul_text)];
        memcpy(bad_utf8, nul_text, sizeof(nul_text));
        bad_utf8[26] = 0xff;
        expect_reject_bytes(bad_utf8, sizeof(nul_text) - 2, REQ, BAD, "UTF-8", "0xff in text");
        bad_utf8[26] = 0xed;                                    /* a surrogate lead without continuation */
        expect_reject_bytes(bad_utf8, sizeof(nul_text) - 2, REQ, BAD, "UTF-8", "truncated sequence");
        /* NaN temperature (float64). */
        static const uint8_t nan_temp[] = {
                0x84, 0xa4, 't', 'y', 'p', 'e', 0xa8, 'g', 'e', 'n', 'e', 'r', 'a', 't', 'e', 0xa2, 'i', 'd', 0x01,
                0xa6, 'p', 'r', 'o', 'm', 'p', 't', 0xa0, 0xa6, 'p', 'a', 'r', 'a', 'm', 's', 0x81, 0xab, 't', 'e',
                'm', 'p', 'e', 'r', 'a', 't', 'u', 'r', 'e', 0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0 };
        expect_reject_bytes(nan_temp, sizeof(nan_temp), REQ, BAD, "params.temperature", "NaN");
        /* Duplicate "id". */
        static const uint8_t dup[] = { 0x83, 0xa4, 't', 'y', 'p', 'e', 0xa6, 'c', 'a', 'n', 'c', 'e', 'l',
                                       0xa2, 'i', 'd', 0x01, 0xa2, 'i', 'd', 0x02 };
        expect_reject_bytes(dup, sizeof(dup), REQ, BAD, "twice", "duplicate id");
}

static void test_reject_in_chat_json(void **state) {
        /* chat whose message holds binary, a non-string key, and an int above INT64_MAX */
        static const uint8_t head[] = { 0x83, 0xa4, 't', 'y', 'p', 'e', 0xa4, 'c', 'h', 'a', 't', 0xa2, 'i', 'd',
                                        0x02, 0xa8, 'm', 'e', 's', 's', 'a', 'g', 'e', 's', 0x91, 0x82, 0xa4, 'r',
                                        'o', 'l', 'e', 0xa4, 'u', 's', 'e', 'r' };
        static const struct {
                uint8_t tail[16];
                size_t n;
                const char *needle;
        } cases[] = {
                { { 0xa1, 'x', 0xc4, 0x01, 0x00 }, 5, "messages[0].x" },
                { { 0x05, 0x06 }, 2, "messages[0]" },
                { { 0xa1, 'x', 0xcf, 0x80, 0, 0, 0, 0, 0, 0, 0 }, 11, "messages[0].x" },
                { { 0xa1, 'x', 0xd4, 0x01, 0x00 }, 5, "messages[0].x" },
        };
        uint8_t b[64];

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                memcpy(b, head, sizeof(head));
                memcpy(b + sizeof(head), cases[i].tail, cases[i].n);
                expect_reject_bytes(b, sizeof(head) + cases[i].n, REQ, BAD, cases[i].needle,
                                    cases[i].needle);
        }
}

static void build_nested(struct proto_buf *b, unsigned depth) {
        /* {"type":"chat","id":1,"messages":[{"role":"user","x":[[[...]]]}]}: top map = 1, messages = 2,
         * message = 3, x opens depth 4 and each further array one more. */
        static const uint8_t head[] = { 0x83, 0xa4, 't', 'y', 'p', 'e', 0xa4, 'c', 'h', 'a', 't', 0xa2, 'i', 'd',
                                        0x01, 0xa8, 'm', 'e', 's', 's', 'a', 'g', 'e', 's', 0x91, 0x82, 0xa4, 'r',
                                        'o', 'l', 'e', 0xa4, 'u', 's', 'e', 'r', 0xa1, 'x' };

        proto_buf_init(b);
        b->data = malloc(sizeof(head) + depth);
        assert_non_null(b->data);
        memcpy(b->data, head, sizeof(head));
        b->len = sizeof(head);
        for (unsigned d = 4; d <= depth; d++)
                b->data[b->len++] = d == depth ? 0x90 : 0x91;
        b->cap = b->len;
}

static void test_nesting_limit(void **state) {
        struct proto_buf b;
        struct proto_msg m;
        struct proto_diag d;

        build_nested(&b, PROTO_MAX_DEPTH);
        if (proto_decode_request(b.data, b.len, &m, &d) < 0)
                fail_msg("depth %u rejected: %s", PROTO_MAX_DEPTH, d.message);
        proto_msg_done(&m);
        proto_buf_done(&b);

        build_nested(&b, PROTO_MAX_DEPTH + 1);
        expect_reject_bytes(b.data, b.len, REQ, BAD, "nested", "too deep");
        proto_buf_done(&b);

        build_nested(&b, 200);
        expect_reject_bytes(b.data, b.len, REQ, BAD, "nested", "far too deep");
        proto_buf_done(&b);
}

/* {"type":"detokenize","id":1,"ids":[0 x n]} */
static uint8_t *build_ids_frame(size_t n, size_t *ret_len) {
        static const uint8_t head[] = { 0x83, 0xa4, 't', 'y', 'p', 'e', 0xaa, 'd', 'e', 't', 'o', 'k', 'e', 'n',
                                        'i', 'z', 'e', 0xa2, 'i', 'd', 0x01, 0xa3, 'i', 'd', 's', 0xdd };
        size_t len = sizeof(head) + 4 + n;
        uint8_t *b = calloc(1, len);

        assert_non_null(b);
        memcpy(b, head, sizeof(head));
        b[sizeof(head)] = (uint8_t) (n >> 24);
        b[sizeof(head) + 1] = (uint8_t) (n >> 16);
        b[sizeof(head) + 2] = (uint8_t) (n >> 8);
        b[sizeof(head) + 3] = (uint8_t) n;
        *ret_len = len;
        return b;
}

static void test_object_limit(void **state) {
        size_t len;
        /* The map, 3 keys, 2 scalar values and the array are 7 objects, plus the elements. */
        uint8_t *b = build_ids_frame(PROTO_MAX_OBJECTS - 6, &len);

        expect_reject_bytes(b, len, REQ, BAD, "objects", "too many objects");
        free(b);
}

static void test_token_id_limit(void **state) {
        size_t len;
        uint8_t *b = build_ids_frame(PROTO_MAX_TOKEN_IDS + 1, &len);     /* within the object limit */

        expect_reject_bytes(b, len, REQ, BAD, "ids", "too many ids");
        free(b);
}

/* ---- frame reader ---- */

static void test_reader_oversize(void **state) {
        struct proto_reader rd;
        struct proto_diag d;
        uint8_t hdr[4] = { 0x00, 0x00, 0x04, 0x01 };     /* 1025 > 1024 */
        size_t used;

        proto_reader_init(&rd, 1024);
        assert_int_equal(proto_reader_feed(&rd, hdr, 3, &used, &d), 0);
        assert_true(proto_reader_partial(&rd));
        assert_int_equal(proto_reader_feed(&rd, hdr + 3, 1, &used, &d), -EMSGSIZE);
        assert_int_equal(d.code, PROTO_CODE_FRAME_TOO_LARGE);
        assert_non_null(strstr(d.message, "1025"));
        assert_null(rd.buf);                    /* nothing of the body was buffered */
        /* Sticky. */
        assert_int_equal(proto_reader_feed(&rd, hdr, 4, &used, &d), -EMSGSIZE);
        assert_int_equal(used, 0);
        proto_reader_done(&rd);

        /* 4 GiB - 1 against the default limit. */
        uint8_t big[4] = { 0xff, 0xff, 0xff, 0xff };
        proto_reader_init(&rd, 0);
        assert_int_equal(rd.max_frame, PROTO_DEFAULT_MAX_FRAME);
        assert_int_equal(proto_reader_feed(&rd, big, 4, &used, &d), -EMSGSIZE);
        proto_reader_done(&rd);

        /* Exactly the limit is fine. */
        uint8_t *frame = calloc(1, 4 + 1024);
        assert_non_null(frame);
        frame[2] = 0x04;
        proto_reader_init(&rd, 1024);
        assert_int_equal(proto_reader_feed(&rd, frame, 4 + 1024, &used, &d), 1);
        assert_int_equal(used, 4 + 1024);
        proto_reader_done(&rd);
        free(frame);

        /* Clamping of a silly limit. */
        proto_reader_init(&rd, UINT32_MAX);
        assert_int_equal(rd.max_frame, PROTO_MAX_FRAME_LIMIT);
        proto_reader_done(&rd);
}

static void test_reader_zero_and_truncated(void **state) {
        struct proto_reader rd;
        struct proto_diag d;
        uint8_t zero[4] = { 0 };
        size_t used, flen;
        struct proto_buf out;
        struct proto_cancel c = { .id = 5 };

        proto_reader_init(&rd, 0);
        memset(&d, 0xfc, sizeof(d));    /* regression (fuzz): the diag used to keep a stale has_id */
        assert_int_equal(proto_reader_feed(&rd, zero, 4, &used, &d), -EBADMSG);
        assert_int_equal(d.code, PROTO_CODE_BAD_REQUEST);
        assert_false(d.has_id);
        assert_int_equal(d.id, 0);
        proto_reader_done(&rd);

        /* A truncated frame: the connection ends mid-frame; the reader reports partial and no frame. */
        proto_buf_init(&out);
        assert_int_equal(proto_encode_cancel(&out, &c), 0);
        for (size_t cut = 1; cut < out.len; cut++) {
                proto_reader_init(&rd, 0);
                assert_int_equal(proto_reader_feed(&rd, out.data, cut, &used, &d), 0);
                assert_int_equal(used, cut);
                assert_true(proto_reader_partial(&rd));
                assert_null(proto_reader_frame(&rd, &flen));
                proto_reader_done(&rd);
        }
        /* Two frames in one feed come out one at a time; len 0 after a frame discards it. */
        assert_int_equal(proto_encode_cancel(&out, &c), 0);
        proto_reader_init(&rd, 0);
        assert_int_equal(proto_reader_feed(&rd, out.data, out.len, &used, &d), 1);
        assert_int_equal(used, out.len / 2);
        assert_non_null(proto_reader_frame(&rd, &flen));
        assert_int_equal(proto_reader_feed(&rd, out.data, 0, &used, &d), 0);
        assert_null(proto_reader_frame(&rd, &flen));
        assert_false(proto_reader_partial(&rd));
        assert_int_equal(proto_reader_feed(&rd, out.data + out.len / 2, out.len / 2, &used, &d), 1);
        assert_int_equal(used, out.len / 2);
        proto_reader_done(&rd);
        proto_buf_done(&out);
}

/* A valid frame of bad msgpack comes out of the reader intact and is rejected by the decoder. */
static void test_reader_then_bad_body(void **state) {
        static const uint8_t stream[] = { 0, 0, 0, 3, 0x93, 0x01, 0x02,      /* [1,2 (truncated) */
                                          0, 0, 0, 1, 0x05 };               /* 5 (not a map) */
        struct proto_reader rd;
        struct proto_diag d;
        const uint8_t *frame;
        size_t used, flen, pos = 0;

        proto_reader_init(&rd, 0);
        assert_int_equal(proto_reader_feed(&rd, stream, sizeof(stream), &used, &d), 1);
        pos += used;
        frame = proto_reader_frame(&rd, &flen);
        assert_int_equal(flen, 3);
        expect_reject_bytes(frame, flen, ANY, BAD, "top level", "array frame");
        assert_int_equal(proto_reader_feed(&rd, stream + pos, sizeof(stream) - pos, &used, &d), 1);
        frame = proto_reader_frame(&rd, &flen);
        expect_reject_bytes(frame, flen, ANY, BAD, "top level", "int frame");
        proto_reader_done(&rd);
}

/* A large frame grows the buffer as bytes arrive and is released once consumed. */
static void test_reader_large_frame(void **state) {
        struct proto_reader rd;
        struct proto_diag d;
        struct proto_buf out;
        struct proto_tokenize t = { .id = 1 };
        size_t used, flen, pos = 0;
        char *text = malloc(3u << 20);
        struct proto_msg m;
        const uint8_t *frame;
        int r = 0;

        assert_non_null(text);
        memset(text, 'z', (3u << 20) - 1);
        text[(3u << 20) - 1] = 0;
        t.text = text;
        proto_buf_init(&out);
        assert_int_equal(proto_encode_tokenize(&out, &t), 0);
        proto_reader_init(&rd, 0);
        while (pos < out.len) {
                size_t piece = out.len - pos < 65536 ? out.len - pos : 65536;

                r = proto_reader_feed(&rd, out.data + pos, piece, &used, &d);
                assert_true(r >= 0);
                pos += used;
                if (r == 0)
                        assert_true(rd.cap <= 2 * rd.len + 4096);       /* grows with the data */
        }
        assert_int_equal(r, 1);
        frame = proto_reader_frame(&rd, &flen);
        assert_int_equal(proto_decode_request(frame, flen, &m, &d), 0);
        assert_int_equal(strlen(m.tokenize.text), (3u << 20) - 1);
        proto_msg_done(&m);
        assert_int_equal(proto_reader_feed(&rd, NULL, 0, &used, &d), 0);
        assert_null(rd.buf);                    /* a big buffer is not kept */
        proto_reader_done(&rd);
        proto_buf_done(&out);
        free(text);
}

/* ---- encoders refuse what decoders would reject ---- */

static void test_encode_refusals(void **state) {
        struct proto_buf b;
        struct proto_generate g = { .id = 1, .prompt.text = "x" };
        int32_t neg[] = { 3, -1 };

        proto_buf_init(&b);
        assert_int_equal(proto_frame_append(&b, "ab", 2), 0);
        assert_int_equal(b.len, 6);

        proto_params_init(&g.params);
        g.id = 0;
        assert_int_equal(proto_encode_generate(&b, &g), -EINVAL);
        g.id = 1;
        g.params.present = PROTO_PARAM_TOP_P;
        g.params.top_p = 0;
        assert_int_equal(proto_encode_generate(&b, &g), -EINVAL);
        g.params.present = PROTO_PARAM_PRIORITY;
        g.params.priority = 40;
        assert_int_equal(proto_encode_generate(&b, &g), -EINVAL);
        g.params.present = 0;
        g.prompt.ids = neg;
        g.prompt.n_ids = 2;
        assert_int_equal(proto_encode_generate(&b, &g), -EINVAL);           /* both prompt forms */
        g.prompt.text = NULL;
        assert_int_equal(proto_encode_generate(&b, &g), -EINVAL);           /* negative id */
        g.prompt.text = "\xff";
        g.prompt.n_ids = 0;
        assert_int_equal(proto_encode_generate(&b, &g), -EINVAL);           /* invalid UTF-8 */

        struct proto_tool_call tc = { .id = 1, .name = "f", .arguments = "[1]" };
        assert_int_equal(proto_encode_tool_call(&b, &tc), -EINVAL);
        tc.arguments = NULL;
        assert_int_equal(proto_encode_tool_call(&b, &tc), -EINVAL);
        struct proto_error er = { .id = 0, .code = PROTO_CODE_UNKNOWN, .message = "m" };
        assert_int_equal(proto_encode_error(&b, &er), -EINVAL);
        struct proto_finished fin = { .id = 1, .reason = _PROTO_REASON_MAX };
        assert_int_equal(proto_encode_finished(&b, &fin), -EINVAL);
        fin.reason = PROTO_REASON_STOP;
        fin.timings.ttft_ms = -1;
        assert_int_equal(proto_encode_finished(&b, &fin), -EINVAL);
        struct proto_chat chat = { .id = 1, .messages = json_loads("[{\"content\":\"x\"}]", 0, NULL) };
        proto_params_init(&chat.params);
        assert_int_equal(proto_encode_chat(&b, &chat), -EINVAL);
        json_decref(chat.messages);
        struct proto_status_reply sr = { .id = 1, .status = json_integer(3) };
        assert_int_equal(proto_encode_status_reply(&b, &sr), -EINVAL);
        json_decref(sr.status);
        struct proto_score_reply scr = { .id = 1, .token_ids = neg, .n_token_ids = 1, .n_logprobs = 1 };
        assert_int_equal(proto_encode_score_reply(&b, &scr), -EINVAL);
        struct proto_msg none = { .type = PROTO_TYPE_NONE };
        assert_int_equal(proto_encode(&b, &none), -EINVAL);

        /* Every failure left the buffer as it was. */
        assert_int_equal(b.len, 6);
        assert_memory_equal(b.data, "\0\0\0\2ab", 6);
        proto_buf_consume(&b, 4);
        assert_memory_equal(b.data, "ab", 2);
        proto_buf_consume(&b, 10);
        assert_int_equal(b.len, 0);
        proto_buf_done(&b);
}

static void test_encode_diag_sanitizes(void **state) {
        struct proto_diag d = { .code = PROTO_CODE_UNSUPPORTED, .has_id = false };
        struct proto_buf b;
        struct proto_reader rd;
        struct proto_msg m;
        size_t used, flen;
        const uint8_t *frame;

        strcpy(d.message, "type: 'a\xff" "b' \xe2\x82");        /* invalid byte and a cut sequence */
        proto_buf_init(&b);
        assert_int_equal(proto_encode_diag(&b, &d), 0);
        proto_reader_init(&rd, 0);
        assert_int_equal(proto_reader_feed(&rd, b.data, b.len, &used, &d), 1);
        frame = proto_reader_frame(&rd, &flen);
        assert_int_equal(proto_decode_event(frame, flen, &m, &d), 0);
        assert_string_equal(m.error.message, "type: 'a?b' ??");
        assert_int_equal(m.error.id, 0);
        assert_int_equal(m.error.code, PROTO_CODE_UNSUPPORTED);
        proto_msg_done(&m);
        proto_reader_done(&rd);
        proto_buf_done(&b);
}

/* ---- JSON bridge and UTF-8 ---- */

static void test_json_bridge(void **state) {
        static const char *texts[] = {
                "{\"a\":[1,-2,2.5,true,false,null,\"\\u00e9\\ud83e\\uddec\"],\"b\":{\"c\":{}}}",
                "[]", "\"s\"", "9223372036854775807", "-9223372036854775808",
        };

        for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
                json_t *in = json_loads(texts[i], JSON_DECODE_ANY, NULL), *out = NULL;
                msgpack_sbuffer sb;
                msgpack_packer pk;
                msgpack_unpacked up;
                struct proto_diag d;
                size_t off = 0;

                assert_non_null(in);
                msgpack_sbuffer_init(&sb);
                msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
                assert_int_equal(proto_pack_json(&pk, in), 0);
                msgpack_unpacked_init(&up);
                assert_int_equal(msgpack_unpack_next(&up, sb.data, sb.size, &off), MSGPACK_UNPACK_SUCCESS);
                assert_int_equal(proto_object_to_json(&up.data, 0, "v", &out, &d), 0);
                assert_json_eq(in, out);
                json_decref(out);
                /* max_depth 1: scalars only */
                if (json_is_array(in) || json_is_object(in)) {
                        out = NULL;
                        assert_int_equal(proto_object_to_json(&up.data, 1, "v", &out, &d), -EBADMSG);
                        assert_null(out);
                        assert_non_null(strstr(d.message, "v: nested"));
                }
                msgpack_unpacked_destroy(&up);
                msgpack_sbuffer_destroy(&sb);
                json_decref(in);
        }

        /* Strings with NUL cannot be packed; neither can deep nesting. */
        json_t *nul = json_stringn("a\0b", 3);
        msgpack_sbuffer sb;
        msgpack_packer pk;
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        assert_int_equal(proto_pack_json(&pk, nul), -EINVAL);
        json_decref(nul);
        json_t *deep = json_array(), *cur = deep;
        for (int i = 0; i < 40; i++) {
                json_t *next = json_array();
                json_array_append_new(cur, next);
                cur = next;
        }
        assert_int_equal(proto_pack_json(&pk, deep), -EINVAL);
        assert_int_equal(proto_pack_json(&pk, NULL), -EINVAL);
        json_decref(deep);
        msgpack_sbuffer_destroy(&sb);
}

static void test_utf8(void **state) {
        assert_true(proto_utf8_valid("", 0));
        assert_true(proto_utf8_valid("a\xc3\xa9\xe2\x82\xac\xf0\x9f\xa7\xac", 10));
        assert_false(proto_utf8_valid("a\0b", 3));
        assert_false(proto_utf8_valid("\xc0\xaf", 2));                 /* overlong */
        assert_false(proto_utf8_valid("\xe0\x80\xaf", 3));             /* overlong */
        assert_false(proto_utf8_valid("\xed\xa0\x80", 3));             /* surrogate */
        assert_false(proto_utf8_valid("\xf4\x90\x80\x80", 4));         /* > U+10FFFF */
        assert_false(proto_utf8_valid("\xf5\x80\x80\x80", 4));
        assert_false(proto_utf8_valid("\x80", 1));
        assert_false(proto_utf8_valid("\xe2\x82", 2));                 /* truncated */

        assert_int_equal(proto_utf8_complete_prefix("abc", 3), 3);
        assert_int_equal(proto_utf8_complete_prefix("ab\xe2\x82", 4), 2);
        assert_int_equal(proto_utf8_complete_prefix("ab\xe2\x82\xac", 5), 5);
        assert_int_equal(proto_utf8_complete_prefix("\xf0\x9f\xa7", 3), 0);
        assert_int_equal(proto_utf8_complete_prefix("\xf0\x9f\xa7\xac", 4), 4);
        assert_int_equal(proto_utf8_complete_prefix("a\xff", 2), 2);   /* invalid counts as complete */
        assert_int_equal(proto_utf8_complete_prefix("a\xe2\x41", 3), 3);
        assert_int_equal(proto_utf8_complete_prefix("", 0), 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_round_trip_whole),
                cmocka_unit_test(test_round_trip_byte_by_byte),
                cmocka_unit_test(test_round_trip_random_splits),
                cmocka_unit_test(test_defaults),
                cmocka_unit_test(test_reject_envelope),
                cmocka_unit_test(test_reject_id_reported),
                cmocka_unit_test(test_reject_hello),
                cmocka_unit_test(test_reject_generate),
                cmocka_unit_test(test_reject_params),
                cmocka_unit_test(test_reject_chat),
                cmocka_unit_test(test_reject_small_requests),
                cmocka_unit_test(test_reject_events),
                cmocka_unit_test(test_reject_lengths),
                cmocka_unit_test(test_unknown_error_code),
                cmocka_unit_test(test_reject_bad_msgpack),
                cmocka_unit_test(test_reject_in_chat_json),
                cmocka_unit_test(test_nesting_limit),
                cmocka_unit_test(test_object_limit),
                cmocka_unit_test(test_token_id_limit),
                cmocka_unit_test(test_reader_oversize),
                cmocka_unit_test(test_reader_zero_and_truncated),
                cmocka_unit_test(test_reader_then_bad_body),
                cmocka_unit_test(test_reader_large_frame),
                cmocka_unit_test(test_encode_refusals),
                cmocka_unit_test(test_encode_diag_sanitizes),
                cmocka_unit_test(test_json_bridge),
                cmocka_unit_test(test_utf8),
        };

        return cmocka_run_group_tests_name("proto", tests, NULL, NULL);
}
