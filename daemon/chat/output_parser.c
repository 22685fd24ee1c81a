/* SPDX-License-Identifier: Apache-2.0 */
#include "chat/output_parser.h"
#include "chat/pyfmt.h"
#include "chat/special.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/*
 * Inside a tool call, <|"|> (token 52) is kept as this byte. 0xFF never occurs in UTF-8, so a delimiter
 * the model wrote as a token can not be confused with the same characters written as text; stray 0xFF
 * bytes in pieces are replaced by U+FFFD on the way in.
 */
#define QUOTE_MARK ((char) 0xFF)

static const char THOUGHT_LABEL[] = "thought\n";
#define THOUGHT_LABEL_LEN (sizeof(THOUGHT_LABEL) - 1)
#define MAX_BARE_NAME 256

struct buf {
        char *data;
        size_t length, capacity;
};

static int buf_add(struct buf *b, const char *s, size_t n) {
        if (b->length + n + 1 > b->capacity) {
                size_t cap = b->capacity ? b->capacity : 64;
                while (cap < b->length + n + 1)
                        cap *= 2;
                char *d = realloc(b->data, cap);
                if (!d)
                        return -ENOMEM;
                b->data = d;
                b->capacity = cap;
        }
        if (n)
                memcpy(b->data + b->length, s, n);
        b->length += n;
        b->data[b->length] = '\0';
        return 0;
}

static void buf_consume(struct buf *b, size_t n) {
        memmove(b->data, b->data + n, b->length - n);
        b->length -= n;
}

/* Take the contents out (caller frees); the buffer is empty afterwards. */
static char *buf_take(struct buf *b, size_t *ret_length) {
        char *d = b->data;
        *ret_length = b->length;
        *b = (struct buf) { 0 };
        return d;
}

enum state { ST_CONTENT, ST_REASONING, ST_TOOL_CALL, ST_STOPPED };

struct chat_parser {
        chat_event_fn emit;
        void *userdata;
        char **stops;
        size_t *stop_lengths;
        size_t n_stops;
        bool stops_in_reasoning;
        bool bare_calls;

        enum state state;
        bool label_pending;             /* reasoning: the text may still turn out to start with "thought\n" */
        struct buf label;
        struct buf hold_content;        /* text that may be the start of a stop string */
        struct buf hold_reasoning;
        bool at_content_start;          /* a bare `call:` may begin here */
        struct buf bare;                /* content held while it may be a bare call */
        struct buf call;                /* the tool call being read, QUOTE_MARK for <|"|> */
        bool call_bare;
        bool in_string;
        int depth;                      /* bare calls end at the brace that closes the arguments */
        size_t n_calls;
        bool call_error;
};

/* ---- argument parsing (vLLM gemma4 rules, spec §4.3) ---- */

static void utf8_char(const unsigned char *s, size_t n, size_t *ret_len, bool *ret_valid) {
        size_t len;
        uint32_t min, c;

        if (s[0] < 0x80) {
                *ret_len = 1;
                *ret_valid = true;
                return;
        }
        if ((s[0] & 0xE0) == 0xC0) {
                len = 2;
                min = 0x80;
                c = s[0] & 0x1F;
        } else if ((s[0] & 0xF0) == 0xE0) {
                len = 3;
                min = 0x800;
                c = s[0] & 0x0F;
        } else if ((s[0] & 0xF8) == 0xF0) {
                len = 4;
                min = 0x10000;
                c = s[0] & 0x07;
        } else {
                *ret_len = 1;
                *ret_valid = false;
                return;
        }
        if (len > n) {
                *ret_len = 1;
                *ret_valid = false;
                return;
        }
        for (size_t i = 1; i < len; i++) {
                if ((s[i] & 0xC0) != 0x80) {
                        *ret_len = 1;
                        *ret_valid = false;
                        return;
                }
                c = (c << 6) | (s[i] & 0x3F);
        }
        *ret_len = len;
        *ret_valid = c >= min && c <= 0x10FFFF && !(c >= 0xD800 && c <= 0xDFFF);
}

/* Text from the call buffer as a JSON string: delimiters spelled out, invalid bytes as U+FFFD. */
static json_t *make_string(const char *s, size_t n) {
        struct buf b = { 0 };
        json_t *j;

        if (buf_add(&b, "", 0) < 0)
                return NULL;
        for (size_t i = 0; i < n;) {
                size_t len;
                bool valid;
                int r;
                if (s[i] == QUOTE_MARK) {
                        r = buf_add(&b, "<|\"|>", 5);
                        len = 1;
                } else {
                        utf8_char((const unsigned char *) s + i, n - i, &len, &valid);
                        r = valid ? buf_add(&b, s + i, len) : buf_add(&b, "\xEF\xBF\xBD", 3);
                }
                if (r < 0) {
                        free(b.data);
                        return NULL;
                }
                i += len;
        }
        j = json_stringn(b.data, b.length);
        free(b.data);
        return j;
}

static bool is_ws(char c) {
        return c == ' ' || c == '\n' || c == '\t';
}

static size_t find_mark(const char *s, size_t from, size_t n) {
        const char *m = from < n ? memchr(s + from, QUOTE_MARK, n - from) : NULL;
        return m ? (size_t) (m - s) : SIZE_MAX;
}

/* i is just after an opening bracket; returns the index after its match (or n), skipping strings. */
static size_t skip_balanced(const char *s, size_t i, size_t n, char open, char close, bool *ret_complete) {
        int depth = 1;

        while (i < n && depth > 0) {
                if (s[i] == QUOTE_MARK) {
                        size_t e = find_mark(s, i + 1, n);
                        i = e == SIZE_MAX ? n : e + 1;
                        continue;
                }
                if (s[i] == open)
                        depth++;
                else if (s[i] == close)
                        depth--;
                i++;
        }
        *ret_complete = depth == 0;
        return i;
}

/* Python int() / float() on a stripped literal; false when Python would raise ValueError. */
static bool py_number(const char *s, size_t n, bool is_float, json_t **ret) {
        char clean[128];
        size_t o = 0, i = 0;
        bool digit_before = false, any_digit = false;

        if (n == 0 || n >= sizeof(clean))
                return false;
        if (s[i] == '+' || s[i] == '-')
                clean[o++] = s[i++];
        for (; i < n; i++) {
                char c = s[i];
                if (c >= '0' && c <= '9') {
                        clean[o++] = c;
                        digit_before = any_digit = true;
                } else if (c == '_') {
                        /* single underscores between digits only */
                        if (!digit_before || i + 1 >= n || s[i + 1] < '0' || s[i + 1] > '9')
                                return false;
                        digit_before = false;
                } else if (is_float && (c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-')) {
                        if ((c == '+' || c == '-') && !(i > 0 && (s[i - 1] == 'e' || s[i - 1] == 'E')))
                                return false;
                        clean[o++] = c;
                        digit_before = false;
                } else {
                        return false;
                }
        }
        clean[o] = '\0';
        if (!any_digit)
                return false;
        if (!is_float) {
                char *end;
                errno = 0;
                long long v = strtoll(clean, &end, 10);
                if (*end)
                        return false;
                /* Python ints are unbounded; a JSON object here can only hold it as a double */
                *ret = errno == ERANGE ? json_real(strtod(clean, NULL)) : json_integer(v);
                return *ret != NULL;
        }
        /* Python float syntax: mantissa with digits on at least one side of '.', optional exponent */
        const char *p = clean + (clean[0] == '+' || clean[0] == '-');
        size_t before = strspn(p, "0123456789");
        if (p[before] != '.')
                return false;
        size_t after = strspn(p + before + 1, "0123456789");
        if (before == 0 && after == 0)
                return false;
        const char *q = p + before + 1 + after;
        if (*q == 'e' || *q == 'E') {
                q++;
                if (*q == '+' || *q == '-')
                        q++;
                size_t ed = strspn(q, "0123456789");
                if (ed == 0)
                        return false;
                q += ed;
        }
        if (*q)
                return false;
        double d = strtod(clean, NULL);
        if (!isfinite(d))
                return false;   /* JSON has no infinity: keep the text */
        *ret = json_real(d);
        return *ret != NULL;
}

/* _parse_gemma4_value: one bare value. */
static json_t *parse_value(const char *s, size_t n) {
        size_t a, z;
        json_t *num = NULL;

        py_strip(s, n, &a, &z);
        s += a;
        n = z - a;
        if (n == 4 && memcmp(s, "true", 4) == 0)
                return json_true();
        if (n == 5 && memcmp(s, "false", 5) == 0)
                return json_false();
        if ((n == 4 && strncasecmp(s, "null", 4) == 0) || (n == 4 && strncasecmp(s, "none", 4) == 0) ||
            (n == 3 && strncasecmp(s, "nil", 3) == 0))
                return json_null();
        if (n > 0 && py_number(s, n, memchr(s, '.', n) != NULL, &num))
                return num;
        return make_string(s, n);
}

static json_t *parse_args(const char *s, size_t n, bool partial);
static json_t *parse_array(const char *s, size_t n, bool partial);

/*
 * One value at s[*pi]: a <|"|> string (unterminated: the rest), a {…} or […] (unfinished: parsed as
 * partial), or a bare value ending before one of `ends`. Returns 1 with *ret, 0 when there is nothing to
 * take (no progress, or a bare value a partial parse must withhold), -ENOMEM.
 */
static int parse_one(const char *s, size_t n, size_t *pi, bool partial, const char *ends, json_t **ret) {
        size_t i = *pi;
        json_t *val;

        if (s[i] == QUOTE_MARK) {
                size_t e = find_mark(s, i + 1, n);
                size_t stop = e == SIZE_MAX ? n : e;
                val = make_string(s + i + 1, stop - i - 1);
                i = e == SIZE_MAX ? n : e + 1;
        } else if (s[i] == '{' || s[i] == '[') {
                bool complete, is_obj = s[i] == '{';
                size_t start = i + 1;
                i = skip_balanced(s, start, n, s[i], is_obj ? '}' : ']', &complete);
                size_t len = complete ? i - 1 - start : i - start;
                val = is_obj ? parse_args(s + start, len, !complete) : parse_array(s + start, len, !complete);
        } else {
                size_t vs = i, a, z;
                while (i < n && !strchr(ends, s[i]))
                        i++;
                if ((partial && i >= n) || i == vs)
                        return 0;
                py_strip(s + vs, i - vs, &a, &z);
                /* "108." may still become "108.2": a partial parse withholds it */
                if (partial && z > a && s[vs + z - 1] == '.')
                        return 0;
                val = parse_value(s + vs, i - vs);
        }
        if (!val)
                return -ENOMEM;
        *pi = i;
        *ret = val;
        return 1;
}

/* _parse_gemma4_args: KEY:VALUE pairs. partial: the text was cut off (an unfinished nested value). */
static json_t *parse_args(const char *s, size_t n, bool partial) {
        json_t *obj = json_object();
        size_t i = 0;

        if (!obj)
                return NULL;
        while (i < n) {
                json_t *val = NULL, *key;
                size_t a, z;
                int r;

                while (i < n && (is_ws(s[i]) || s[i] == ','))
                        i++;
                if (i >= n)
                        break;
                size_t key_start = i;
                while (i < n && s[i] != ':')
                        i++;
                if (i >= n)
                        break;
                py_strip(s + key_start, i - key_start, &a, &z);
                const char *k = s + key_start + a;
                size_t kn = z - a;
                if (kn >= 1 && k[0] == QUOTE_MARK && k[kn - 1] == QUOTE_MARK) {
                        k += kn >= 2 ? 1 : 0;
                        kn = kn >= 2 ? kn - 2 : 0;
                }
                key = make_string(k, kn);
                if (!key)
                        goto oom;
                i++;
                while (i < n && is_ws(s[i]))
                        i++;
                if (i >= n) {
                        r = partial ? 0 : 1;
                        val = partial ? NULL : json_string("");
                        if (r == 1 && !val)
                                r = -ENOMEM;
                } else {
                        r = parse_one(s, n, &i, partial, ",}]", &val);
                }
                if (r <= 0) {
                        json_decref(key);
                        if (r < 0)
                                goto oom;
                        break;
                }
                r = json_object_setn_new(obj, json_string_value(key), json_string_length(key), val);
                json_decref(key);
                if (r < 0)
                        goto oom;
        }
        return obj;
oom:
        json_decref(obj);
        return NULL;
}

static json_t *parse_array(const char *s, size_t n, bool partial) {
        json_t *arr = json_array();
        size_t i = 0;

        if (!arr)
                return NULL;
        while (i < n) {
                json_t *val;
                int r;

                while (i < n && (is_ws(s[i]) || s[i] == ','))
                        i++;
                if (i >= n)
                        break;
                r = parse_one(s, n, &i, partial, ",]", &val);
                if (r == 0)
                        break;
                if (r < 0 || json_array_append_new(arr, val) < 0) {
                        json_decref(arr);
                        return NULL;
                }
        }
        return arr;
}

int chat_parse_tool_arguments(const char *text, size_t length, json_t **ret) {
        struct buf b = { 0 };
        json_t *obj;

        if (buf_add(&b, "", 0) < 0)
                return -ENOMEM;
        for (size_t i = 0; i < length;) {
                int r;
                if (length - i >= 5 && memcmp(text + i, "<|\"|>", 5) == 0) {
                        r = buf_add(&b, &(char) { QUOTE_MARK }, 1);
                        i += 5;
                } else {
                        r = text[i] == QUOTE_MARK ? buf_add(&b, "\xEF\xBF\xBD", 3) : buf_add(&b, text + i, 1);
                        i++;
                }
                if (r < 0) {
                        free(b.data);
                        return -ENOMEM;
                }
        }
        obj = parse_args(b.data, b.length, false);
        free(b.data);
        if (!obj)
                return -ENOMEM;
        *ret = obj;
        return 0;
}

/* ---- event delivery ---- */

static int emit_text(struct chat_parser *p, enum chat_event_kind kind, const char *s, size_t n, bool error) {
        if (n == 0)
                return 0;
        struct chat_event ev = { .kind = kind, .text = s, .length = n, .tool_call_error = error };
        return p->emit(&ev, p->userdata);
}

static int emit_stop(struct chat_parser *p, enum chat_stop_reason reason, uint32_t token, size_t stop_string) {
        struct chat_event ev = {
                .kind = CHAT_EVENT_STOP, .stop_reason = reason, .stop_token = token, .stop_string = stop_string,
        };
        p->state = ST_STOPPED;
        return p->emit(&ev, p->userdata);
}

/*
 * Text bound for the client, through the stop-string matcher: emit what can no longer be part of a stop
 * string, hold back the longest tail that is still the beginning of one, stop at the earliest full match.
 */
static int deliver(struct chat_parser *p, enum chat_event_kind kind, const char *s, size_t n) {
        struct buf *h = kind == CHAT_EVENT_CONTENT ? &p->hold_content
                        : p->stops_in_reasoning ? &p->hold_reasoning : NULL;
        size_t best = SIZE_MAX, best_i = 0, keep = 0;
        int r;

        if (!h || p->n_stops == 0)
                return emit_text(p, kind, s, n, false);
        if (buf_add(h, s, n) < 0)
                return -ENOMEM;
        for (size_t i = 0; i < p->n_stops; i++) {
                const char *m = memmem(h->data, h->length, p->stops[i], p->stop_lengths[i]);
                if (m && (size_t) (m - h->data) < best) {
                        best = (size_t) (m - h->data);
                        best_i = i;
                }
        }
        if (best != SIZE_MAX) {
                r = emit_text(p, kind, h->data, best, false);
                h->length = 0;
                if (r < 0)
                        return r;
                return emit_stop(p, CHAT_STOP_STRING, 0, best_i);
        }
        for (size_t i = 0; i < p->n_stops; i++) {
                size_t max = p->stop_lengths[i] - 1 < h->length ? p->stop_lengths[i] - 1 : h->length;
                for (size_t l = max; l > keep; l--)
                        if (memcmp(h->data + h->length - l, p->stops[i], l) == 0) {
                                keep = l;
                                break;
                        }
        }
        r = emit_text(p, kind, h->data, h->length - keep, false);
        buf_consume(h, h->length - keep);
        return r;
}

/* Held text becomes final (the stream breaks here): emit it as it is. */
static int release_hold(struct chat_parser *p, struct buf *h, enum chat_event_kind kind) {
        int r = emit_text(p, kind, h->data, h->length, false);
        h->length = 0;
        return r;
}

static int flush_content(struct chat_parser *p) {
        if (p->bare.length > 0) {
                size_t n;
                char *d = buf_take(&p->bare, &n);
                p->at_content_start = false;
                int r = deliver(p, CHAT_EVENT_CONTENT, d, n);
                free(d);
                if (r < 0 || p->state == ST_STOPPED)
                        return r;
        }
        return release_hold(p, &p->hold_content, CHAT_EVENT_CONTENT);
}

static int reasoning_text(struct chat_parser *p, const char *s, size_t n) {
        int r;

        if (!p->label_pending)
                return deliver(p, CHAT_EVENT_REASONING, s, n);
        if (buf_add(&p->label, s, n) < 0)
                return -ENOMEM;
        if (p->label.length >= THOUGHT_LABEL_LEN && memcmp(p->label.data, THOUGHT_LABEL, THOUGHT_LABEL_LEN) == 0) {
                p->label_pending = false;
                r = deliver(p, CHAT_EVENT_REASONING, p->label.data + THOUGHT_LABEL_LEN,
                            p->label.length - THOUGHT_LABEL_LEN);
                p->label.length = 0;
                return r;
        }
        if (p->label.length < THOUGHT_LABEL_LEN && memcmp(p->label.data, THOUGHT_LABEL, p->label.length) == 0)
                return 0;       /* still undecided */
        /* a channel without the label (seen in the wild): all of it is reasoning */
        p->label_pending = false;
        r = deliver(p, CHAT_EVENT_REASONING, p->label.data, p->label.length);
        p->label.length = 0;
        return r;
}

/* Close the thought channel. A label still pending is a prefix of "thought\n": the channel name, dropped. */
static int end_reasoning(struct chat_parser *p) {
        p->label_pending = false;
        p->label.length = 0;
        int r = release_hold(p, &p->hold_reasoning, CHAT_EVENT_REASONING);
        if (p->state != ST_STOPPED) {
                p->state = ST_CONTENT;
                p->at_content_start = true;
        }
        return r;
}

/* ---- tool calls ---- */

static bool name_char(unsigned char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
               c == '-' || c == '.' || (c >= 0x80 && c != 0xFF);
}

static void start_call(struct chat_parser *p, bool bare) {
        p->state = ST_TOOL_CALL;
        p->call.length = 0;
        p->call_bare = bare;
        p->in_string = false;
        p->depth = 0;
}

/* The call text as the model wrote it, for a malformed call surfaced as content. */
static int emit_malformed(struct chat_parser *p, const char *close_text) {
        struct buf t = { 0 };
        int r = 0;

        p->call_error = true;
        if (!p->call_bare)
                r = buf_add(&t, "<|tool_call>", 12);
        for (size_t i = 0; i < p->call.length && r >= 0; i++)
                r = p->call.data[i] == QUOTE_MARK ? buf_add(&t, "<|\"|>", 5) : buf_add(&t, p->call.data + i, 1);
        if (r >= 0)
                r = buf_add(&t, close_text, strlen(close_text));
        if (r >= 0)
                r = release_hold(p, &p->hold_content, CHAT_EVENT_CONTENT);
        if (r >= 0)
                r = emit_text(p, CHAT_EVENT_CONTENT, t.data, t.length, true);
        free(t.data);
        return r;
}

/* The call is over (closed by a token, by its brace, or cut off): emit it, or surface it as content. */
static int finalize_call(struct chat_parser *p, const char *close_text, bool force_error) {
        const char *s = p->call.data ? p->call.data : "";
        size_t n = p->call.length, i = 0, name_start, name_end, z = n;
        int r;

        p->state = ST_CONTENT;
        p->at_content_start = true;
        while (i < n && (is_ws(s[i]) || s[i] == '\r'))
                i++;
        if (force_error || n - i < 5 || memcmp(s + i, "call:", 5) != 0)
                return emit_malformed(p, close_text);
        name_start = i += 5;
        while (i < n && name_char((unsigned char) s[i]))
                i++;
        name_end = i;
        while (z > i && (is_ws(s[z - 1]) || s[z - 1] == '\r'))
                z--;
        if (name_end == name_start || i >= n || s[i] != '{' || z < i + 2 || s[z - 1] != '}')
                return emit_malformed(p, close_text);

        json_t *args = parse_args(s + i + 1, z - 1 - (i + 1), false);
        char *name = strndup(s + name_start, name_end - name_start);
        if (!args || !name) {
                json_decref(args);
                free(name);
                return -ENOMEM;
        }
        r = release_hold(p, &p->hold_content, CHAT_EVENT_CONTENT);
        if (r >= 0) {
                struct chat_event ev = {
                        .kind = CHAT_EVENT_TOOL_CALL, .name = name, .arguments = args, .index = p->n_calls++,
                };
                r = p->emit(&ev, p->userdata);
        }
        json_decref(args);
        free(name);
        p->call.length = 0;
        return r;
}

static int route_text(struct chat_parser *p, const char *s, size_t n);

/* Append model text to the call; a bare call ends at the brace that closes its arguments. */
static int call_text(struct chat_parser *p, const char *s, size_t n) {
        for (size_t i = 0; i < n; i++) {
                int r;
                if (s[i] == QUOTE_MARK) {
                        r = buf_add(&p->call, "\xEF\xBF\xBD", 3);
                } else {
                        r = buf_add(&p->call, s + i, 1);
                        if (p->call_bare && !p->in_string) {
                                if (s[i] == '{')
                                        p->depth++;
                                else if (s[i] == '}' && --p->depth == 0) {
                                        r = finalize_call(p, "", false);
                                        if (r < 0 || p->state == ST_STOPPED)
                                                return r;
                                        return route_text(p, s + i + 1, n - i - 1);
                                }
                        }
                }
                if (r < 0)
                        return -ENOMEM;
        }
        return 0;
}

/* Content at its start: is this `call:NAME{` without the token? Hold until that is decided. */
static int bare_text(struct chat_parser *p, const char *s, size_t n) {
        const char *b;
        char *d;
        size_t len, total, j = 0, k;
        int r;

        if (buf_add(&p->bare, s, n) < 0)
                return -ENOMEM;
        b = p->bare.data;
        len = p->bare.length;
        while (j < len && (is_ws(b[j]) || b[j] == '\r'))
                j++;
        if (len - j < 5) {
                if (memcmp(b + j, "call:", len - j) == 0)
                        return 0;
                goto release;
        }
        if (memcmp(b + j, "call:", 5) != 0)
                goto release;
        for (k = j + 5; k < len && name_char((unsigned char) b[k]) && k - j - 5 < MAX_BARE_NAME; k++)
                ;
        if (k == len)
                return 0;
        if (b[k] != '{' || k == j + 5)
                goto release;

        /* a bare call: whitespace before it is content, the rest goes to the call */
        d = buf_take(&p->bare, &total);
        r = deliver(p, CHAT_EVENT_CONTENT, d, j);
        if (r >= 0 && p->state != ST_STOPPED)
                r = release_hold(p, &p->hold_content, CHAT_EVENT_CONTENT);
        if (r >= 0 && p->state != ST_STOPPED) {
                start_call(p, true);
                r = call_text(p, d + j, total - j);
        }
        free(d);
        return r;

release:
        p->at_content_start = false;
        d = buf_take(&p->bare, &total);
        r = deliver(p, CHAT_EVENT_CONTENT, d, total);
        free(d);
        return r;
}

static int route_text(struct chat_parser *p, const char *s, size_t n) {
        if (n == 0)
                return 0;
        switch (p->state) {
        case ST_REASONING:
                return reasoning_text(p, s, n);
        case ST_TOOL_CALL:
                return call_text(p, s, n);
        case ST_CONTENT:
                if (p->bare_calls && p->at_content_start)
                        return bare_text(p, s, n);
                return deliver(p, CHAT_EVENT_CONTENT, s, n);
        default:
                return 0;
        }
}

/* Leave whatever state we are in: the stream of text breaks here. */
static int close_state(struct chat_parser *p, const char *call_close_text, bool call_force_error) {
        switch (p->state) {
        case ST_REASONING:
                return end_reasoning(p);
        case ST_TOOL_CALL:
                return finalize_call(p, call_close_text, call_force_error);
        case ST_CONTENT:
                return flush_content(p);
        default:
                return 0;
        }
}

int chat_parser_feed(struct chat_parser *p, uint32_t id, const char *piece, size_t length) {
        int r;

        if (p->state == ST_STOPPED)
                return 0;
        switch (id) {
        case CHAT_TOKEN_EOS:
        case CHAT_TOKEN_TURN_END:
        case CHAT_TOKEN_TOOL_RESPONSE:
                /* a stop token also ends an open call (<turn|> instead of <tool_call|> is seen in the wild) */
                r = close_state(p, "", false);
                if (r < 0 || p->state == ST_STOPPED)
                        return r;
                return emit_stop(p, id == CHAT_TOKEN_EOS ? CHAT_STOP_EOS
                                    : id == CHAT_TOKEN_TURN_END ? CHAT_STOP_END_OF_TURN : CHAT_STOP_TOOL_RESPONSE,
                                 id, 0);
        case CHAT_TOKEN_CHANNEL:
                if (p->state == ST_TOOL_CALL)
                        return call_text(p, "<|channel>", 10);
                if (p->state == ST_REASONING)
                        return 0;
                r = flush_content(p);
                if (r < 0 || p->state == ST_STOPPED)
                        return r;
                p->state = ST_REASONING;
                p->label_pending = true;
                p->label.length = 0;
                return 0;
        case CHAT_TOKEN_CHANNEL_END:
                if (p->state == ST_TOOL_CALL)
                        return call_text(p, "<channel|>", 10);
                if (p->state == ST_REASONING)
                        return end_reasoning(p);
                return 0;       /* stray close after content: dropped */
        case CHAT_TOKEN_TOOL_CALL:
                /* a new call also ends reasoning, content, or an unclosed previous call */
                r = close_state(p, "", false);
                if (r < 0 || p->state == ST_STOPPED)
                        return r;
                start_call(p, false);
                return 0;
        case CHAT_TOKEN_TOOL_CALL_END:
                if (p->state == ST_TOOL_CALL)
                        return finalize_call(p, "<tool_call|>", false);
                return 0;
        case CHAT_TOKEN_QUOTE:
                if (p->state == ST_TOOL_CALL) {
                        p->in_string = !p->in_string;
                        return buf_add(&p->call, &(char) { QUOTE_MARK }, 1);
                }
                return 0;
        default:
                if (chat_is_special(id))
                        return 0;
                return route_text(p, piece, length);
        }
}

int chat_parser_finish(struct chat_parser *p) {
        int r;

        if (p->state == ST_STOPPED)
                return 0;
        r = close_state(p, "", true);
        if (r >= 0 && p->state != ST_STOPPED)
                r = release_hold(p, &p->hold_content, CHAT_EVENT_CONTENT);
        p->state = ST_STOPPED;
        return r;
}

bool chat_parser_stopped(const struct chat_parser *p) {
        return p->state == ST_STOPPED;
}

bool chat_parser_tool_call_error(const struct chat_parser *p) {
        return p->call_error;
}

size_t chat_parser_n_tool_calls(const struct chat_parser *p) {
        return p->n_calls;
}

int chat_parser_new(const struct chat_parser_options *o, chat_event_fn emit, void *userdata,
                    struct chat_parser **ret) {
        struct chat_parser *p;
        size_t n = o ? o->n_stop_strings : 0;

        if (!emit)
                return -EINVAL;
        for (size_t i = 0; i < n; i++)
                if (!o->stop_strings[i] || !o->stop_strings[i][0])
                        return -EINVAL;
        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->emit = emit;
        p->userdata = userdata;
        p->state = ST_CONTENT;
        p->at_content_start = true;
        if (o) {
                p->stops_in_reasoning = o->stop_strings_in_reasoning;
                p->bare_calls = o->bare_tool_calls;
        }
        if (n > 0) {
                p->stops = calloc(n, sizeof(*p->stops));
                p->stop_lengths = calloc(n, sizeof(*p->stop_lengths));
                if (!p->stops || !p->stop_lengths) {
                        chat_parser_free(p);
                        return -ENOMEM;
                }
                for (size_t i = 0; i < n; i++) {
                        p->stops[i] = strdup(o->stop_strings[i]);
                        if (!p->stops[i]) {
                                p->n_stops = i;
                                chat_parser_free(p);
                                return -ENOMEM;
                        }
                        p->stop_lengths[i] = strlen(p->stops[i]);
                }
                p->n_stops = n;
        }
        *ret = p;
        return 0;
}

void chat_parser_free(struct chat_parser *p) {
        if (!p)
                return;
        for (size_t i = 0; i < p->n_stops; i++)
                free(p->stops[i]);
        free(p->stops);
        free(p->stop_lengths);
        free(p->label.data);
        free(p->hold_content.data);
        free(p->hold_reasoning.data);
        free(p->bare.data);
        free(p->call.data);
        free(p);
}
