/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Writes the seed corpus of the proto fuzz targets, and prints the hex dumps of docs/protocol.md.
 *
 *   gen-corpus DIR     write DIR/fuzz-request/, DIR/fuzz-event/, DIR/fuzz-frame-reader/ (the committed
 *                      corpus is tests/fuzz/corpus; rerun after changing samples or the codec)
 *   gen-corpus --hex   print every sample frame as a markdown section with an exact hex dump
 *   gen-corpus --check-doc docs/protocol.md
 *                      exit 1 unless the generated section of that file (between the hex:begin and
 *                      hex:end markers) is exactly what --hex prints (the test proto-doc-hex)
 *
 * Valid inputs are the samples of tests/proto/samples.c encoded by the codec itself; invalid inputs are
 * each one defect away from valid (truncation, a wrong type, a bad range, bad msgpack, deep nesting,
 * oversize and zero length prefixes).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "proto.h"
#include "samples.h"

static int write_file(const char *dir, const char *sub, const char *name, const void *data, size_t len) {
        char path[512];
        FILE *f;

        snprintf(path, sizeof(path), "%s/%s", dir, sub);
        if (mkdir(path, 0755) < 0 && errno != EEXIST)
                return -errno;
        snprintf(path, sizeof(path), "%s/%s/%s", dir, sub, name);
        f = fopen(path, "wb");
        if (!f)
                return -errno;
        if (len && fwrite(data, 1, len, f) != len) {
                fclose(f);
                return -EIO;
        }
        return fclose(f) == 0 ? 0 : -errno;
}

static int pack_text(const char *text, struct proto_buf *ret) {
        json_t *j = json_loads(text, JSON_DECODE_ANY, NULL);
        msgpack_sbuffer sb;
        msgpack_packer pk;
        int r;

        if (!j)
                return -EINVAL;
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        r = proto_pack_json(&pk, j);
        json_decref(j);
        if (r == 0)
                r = proto_frame_append(ret, sb.data, sb.size);
        msgpack_sbuffer_destroy(&sb);
        return r;
}

/* Invalid bodies, each a near miss of a valid message. */
static const char *const bad_requests[] = {
        "{\"type\":\"hello\",\"proto\":2}",
        "{\"type\":\"hello\",\"proto\":\"1\"}",
        "{\"type\":\"generate\",\"id\":0,\"prompt\":\"x\"}",
        "{\"type\":\"generate\",\"id\":1,\"prompt\":\"x\",\"prompt_ids\":[1]}",
        "{\"type\":\"generate\",\"id\":1,\"prompt_ids\":[1,-1]}",
        "{\"type\":\"generate\",\"id\":1,\"prompt\":\"x\",\"params\":{\"top_p\":1.5}}",
        "{\"type\":\"generate\",\"id\":1,\"prompt\":\"x\",\"params\":{\"priority\":20,\"stop\":[\"\"]}}",
        "{\"type\":\"generate\",\"id\":1,\"prompt\":\"x\",\"params\":{\"logprobs\":21,\"temperature\":-1}}",
        "{\"type\":\"chat\",\"id\":2,\"messages\":[]}",
        "{\"type\":\"chat\",\"id\":2,\"messages\":[{\"content\":\"hi\"}]}",
        "{\"type\":\"chat\",\"id\":2,\"messages\":[{\"role\":\"user\",\"content\":[{\"text\":\"x\"}]}]}",
        "{\"type\":\"chat\",\"id\":2,\"messages\":[{\"role\":\"user\"}],\"tools\":{}}",
        "{\"type\":\"cancel\"}",
        "{\"type\":\"tokenize\",\"id\":1,\"special\":true}",
        "{\"type\":\"detokenize\",\"id\":1,\"ids\":\"1\"}",
        "{\"type\":\"score\",\"id\":1,\"prompt_ids\":[]}",
        "{\"type\":\"welcome\"}",
        "[\"generate\",1]",
};

static const char *const bad_events[] = {
        "{\"type\":\"welcome\",\"proto\":1,\"server_version\":\"x\"}",
        "{\"type\":\"started\",\"id\":1}",
        "{\"type\":\"delta\",\"id\":1,\"token_ids\":[1,2],\"logprobs\":[{\"id\":1,\"logprob\":-1}]}",
        "{\"type\":\"delta\",\"id\":1,\"token_ids\":[1],\"logprobs\":[{\"id\":1,\"logprob\":-1,"
        "\"top\":[{\"id\":2,\"logprob\":3}]}]}",
        "{\"type\":\"tool_call\",\"id\":1,\"index\":0,\"name\":\"f\",\"arguments\":\"[1]\"}",
        "{\"type\":\"finished\",\"id\":1,\"reason\":\"error\",\"usage\":{\"prompt_tokens\":1,"
        "\"cached_tokens\":0,\"completion_tokens\":2},\"timings\":{\"queue_ms\":0,\"ttft_ms\":1,"
        "\"per_token_ms\":2}}",
        "{\"type\":\"error\",\"id\":0,\"code\":\"quota\",\"message\":\"new code\"}",
        "{\"type\":\"status_reply\",\"id\":4,\"status\":[]}",
        "{\"type\":\"score_reply\",\"id\":4,\"token_ids\":[1,2],\"logprobs\":[]}",
        "{\"type\":\"generate\",\"id\":1,\"prompt\":\"x\"}",
};

/* Raw msgpack oddities (bodies). */
static const struct {
        const char *name;
        uint8_t bytes[24];
        size_t len;
} raw_bodies[] = {
        { "raw-huge-map", { 0xdf, 0xff, 0xff, 0xff, 0xff, 0xa4, 't', 'y', 'p', 'e' }, 10 },
        { "raw-huge-array", { 0x81, 0xa1, 'x', 0xdd, 0xff, 0xff, 0xff, 0xff, 0x01 }, 9 },
        { "raw-huge-str", { 0x81, 0xa1, 'x', 0xdb, 0x7f, 0xff, 0xff, 0xff, 'a' }, 9 },
        { "raw-c1", { 0x81, 0xa4, 't', 'y', 'p', 'e', 0xc1 }, 7 },
        { "raw-ext", { 0x82, 0xa4, 't', 'y', 'p', 'e', 0xd4, 0x01, 0x00, 0xa2, 'i', 'd', 0xc7, 0x01, 0x05, 0x00 }, 16 },
        { "raw-nan", { 0x81, 0xa1, 'x', 0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0 }, 12 },
        { "raw-trailing", { 0x80, 0xc0 }, 2 },
        { "raw-int-key", { 0x82, 0x01, 0x02, 0xa4, 't', 'y', 'p', 'e', 0xa6, 's', 't', 'a', 't', 'u', 's' }, 15 },
};

static int write_bad(const char *dir, const char *sub, const char *const *texts, size_t n) {
        for (size_t i = 0; i < n; i++) {
                struct proto_buf b;
                char name[32];
                int r;

                proto_buf_init(&b);
                r = pack_text(texts[i], &b);
                if (r == 0) {
                        snprintf(name, sizeof(name), "bad-%02zu", i);
                        r = write_file(dir, sub, name, b.data + PROTO_FRAME_HEADER_BYTES,
                                       b.len - PROTO_FRAME_HEADER_BYTES);
                }
                proto_buf_done(&b);
                if (r < 0)
                        return r;
        }
        for (size_t i = 0; i < sizeof(raw_bodies) / sizeof(raw_bodies[0]); i++) {
                int r = write_file(dir, sub, raw_bodies[i].name, raw_bodies[i].bytes, raw_bodies[i].len);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* A chat body nested `depth` levels deep (PROTO_MAX_DEPTH + 1 is one too many). */
static int write_deep(const char *dir, const char *sub, unsigned depth) {
        static const uint8_t head[] = { 0x83, 0xa4, 't', 'y', 'p', 'e', 0xa4, 'c', 'h', 'a', 't', 0xa2, 'i', 'd',
                                        0x01, 0xa8, 'm', 'e', 's', 's', 'a', 'g', 'e', 's', 0x91, 0x82, 0xa4, 'r',
                                        'o', 'l', 'e', 0xa4, 'u', 's', 'e', 'r', 0xa1, 'x' };
        uint8_t b[sizeof(head) + 256];
        size_t n = sizeof(head);
        char name[32];

        memcpy(b, head, sizeof(head));
        for (unsigned d = 4; d <= depth && n < sizeof(b); d++)
                b[n++] = d == depth ? 0x90 : 0x91;
        snprintf(name, sizeof(name), "deep-%u", depth);
        return write_file(dir, sub, name, b, n);
}

static int write_corpus(const char *dir) {
        struct proto_buf all;
        int r = 0;

        if (mkdir(dir, 0755) < 0 && errno != EEXIST)
                return -errno;
        proto_buf_init(&all);
        for (unsigned i = 0; i < sample_count() && r == 0; i++) {
                struct proto_msg m;
                struct proto_buf b;
                const char *name = sample_get(i, &m);

                proto_buf_init(&b);
                r = proto_encode(&b, &m);
                if (r == 0)
                        r = write_file(dir, proto_type_is_request(m.type) ? "fuzz-request" : "fuzz-event",
                                       name,
                                       b.data + PROTO_FRAME_HEADER_BYTES, b.len - PROTO_FRAME_HEADER_BYTES);
                if (r == 0)
                        r = proto_encode(&all, &m);
                proto_buf_done(&b);
                sample_release(&m);
        }
        if (r == 0)
                r = write_bad(dir, "fuzz-request", bad_requests,
                              sizeof(bad_requests) / sizeof(bad_requests[0]));
        if (r == 0)
                r = write_bad(dir, "fuzz-event", bad_events, sizeof(bad_events) / sizeof(bad_events[0]));
        if (r == 0)
                r = write_deep(dir, "fuzz-request", PROTO_MAX_DEPTH);
        if (r == 0)
                r = write_deep(dir, "fuzz-request", PROTO_MAX_DEPTH + 1);

        /* Frame reader: control byte + stream. */
        if (r == 0) {
                static const uint8_t controls[] = { 0x00, 0x10, 0x70, 0xf0, 0x06, 0x3a };
                uint8_t *s = malloc(all.len + 1);

                if (!s)
                        r = -ENOMEM;
                for (size_t i = 0; s && r == 0 && i < sizeof(controls); i++) {
                        char name[32];

                        s[0] = controls[i];
                        memcpy(s + 1, all.data, all.len);
                        snprintf(name, sizeof(name), "all-messages-%02x", controls[i]);
                        r = write_file(dir, "fuzz-frame-reader", name, s, all.len + 1);
                }
                /* Truncated mid-stream. */
                if (s && r == 0)
                        r = write_file(dir, "fuzz-frame-reader", "truncated", s, all.len / 2);
                free(s);
        }
        if (r == 0) {
                static const uint8_t oversize[] = { 0x01, 0x00, 0x00, 0x00, 0x11, 0x80 };     /* 17 > 16 */
                static const uint8_t zero[] = { 0x00, 0x00, 0x00, 0x00, 0x00, 0x80 };
                static const uint8_t huge[] = { 0x00, 0xff, 0xff, 0xff, 0xff };
                static const uint8_t not_map[] = { 0x20, 0, 0, 0, 1, 0x05, 0, 0, 0, 2, 0x91, 0xc0 };

                r = write_file(dir, "fuzz-frame-reader", "oversize", oversize, sizeof(oversize));
                if (r == 0)
                        r = write_file(dir, "fuzz-frame-reader", "zero-length", zero, sizeof(zero));
                if (r == 0)
                        r = write_file(dir, "fuzz-frame-reader", "huge-length", huge, sizeof(huge));
                if (r == 0)
                        r = write_file(dir, "fuzz-frame-reader", "not-map", not_map, sizeof(not_map));
        }
        proto_buf_done(&all);
        return r;
}

static int print_hex(FILE *out) {
        for (unsigned i = 0; i < sample_count(); i++) {
                struct proto_msg m;
                struct proto_buf b;
                const char *name = sample_get(i, &m);
                int r;

                proto_buf_init(&b);
                r = proto_encode(&b, &m);
                sample_release(&m);
                if (r < 0) {
                        proto_buf_done(&b);
                        return r;
                }
                fprintf(out, "#### `%s` (%zu bytes)\n\n```\n", name, b.len);
                for (size_t off = 0; off < b.len; off += 16) {
                        fprintf(out, "%04zx ", off);
                        for (size_t k = off; k < off + 16; k++) {
                                if (k < b.len)
                                        fprintf(out, " %02x", b.data[k]);
                                else
                                        fprintf(out, "   ");
                        }
                        fprintf(out, "  |");
                        for (size_t k = off; k < off + 16 && k < b.len; k++)
                                fputc(b.data[k] >= 0x20 && b.data[k] < 0x7f ? b.data[k] : '.', out);
                        fprintf(out, "|\n");
                }
                fprintf(out, "```\n\n");
                proto_buf_done(&b);
        }
        return 0;
}

#define HEX_BEGIN "<!-- hex:begin (generated, do not edit) -->\n\n"
#define HEX_END "<!-- hex:end -->"

static int check_doc(const char *path) {
        char *want = NULL, *doc = NULL, *begin, *end;
        size_t want_len = 0, doc_len = 0;
        FILE *f;
        int r;

        f = open_memstream(&want, &want_len);
        if (!f)
                return -errno;
        r = print_hex(f);
        if (fclose(f) != 0 && r == 0)
                r = -EIO;
        if (r < 0)
                goto out;

        f = fopen(path, "r");
        if (!f) {
                r = -errno;
                goto out;
        }
        {
                FILE *m = open_memstream(&doc, &doc_len);
                int c;

                if (!m) {
                        r = -errno;
                        fclose(f);
                        goto out;
                }
                while ((c = fgetc(f)) != EOF)
                        fputc(c, m);
                fclose(f);
                if (fclose(m) != 0) {
                        r = -EIO;
                        goto out;
                }
        }
        begin = strstr(doc, HEX_BEGIN);
        end = begin ? strstr(begin, HEX_END) : NULL;
        if (!begin || !end) {
                fprintf(stderr, "%s: no generated hex section (markers missing)\n", path);
                r = 1;
                goto out;
        }
        begin += strlen(HEX_BEGIN);
        if ((size_t) (end - begin) != want_len || memcmp(begin, want, want_len) != 0) {
                fprintf(stderr, "%s: the examples are stale; regenerate them with gen-corpus --hex\n", path);
                r = 1;
                goto out;
        }
        printf("%s: examples match the codec\n", path);
        r = 0;
out:
        free(want);
        free(doc);
        return r;
}

int main(int argc, char **argv) {
        int r;

        if (argc == 3 && strcmp(argv[1], "--check-doc") == 0)
                r = check_doc(argv[2]);
        else if (argc == 2)
                r = strcmp(argv[1], "--hex") == 0 ? print_hex(stdout) : write_corpus(argv[1]);
        else {
                fprintf(stderr, "usage: %s DIR | --hex | --check-doc PROTOCOL_MD\n", argv[0]);
                return 2;
        }
        if (r < 0) {
                fprintf(stderr, "gen-corpus: %s\n", strerror(-r));
                return 1;
        }
        return r;
}
