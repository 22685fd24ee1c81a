/* SPDX-License-Identifier: Apache-2.0 */
/* gc_result: what the events of one request carried, accumulated; and gc_event accessors. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "client-internal.h"

gc_result *result_new(void) {
        gc_result *r = calloc(1, sizeof(*r));

        if (!r)
                return NULL;
        r->text = calloc(1, 1);
        r->reasoning = calloc(1, 1);
        r->error_message = calloc(1, 1);
        if (!r->text || !r->reasoning || !r->error_message) {
                gc_result_free(r);
                return NULL;
        }
        return r;
}

GC_EXTERN void gc_result_free(gc_result *r) {
        if (!r)
                return;
        free(r->text);
        free(r->reasoning);
        free(r->ids);
        proto_token_logprobs_free(r->lp, r->n_lp);
        for (size_t i = 0; i < r->n_tools; i++) {
                free(r->tools[i].name);
                free(r->tools[i].arguments);
                free(r->tools[i].call_id);
        }
        free(r->tools);
        free(r->error_message);
        free(r->json);
        free(r);
}

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
        size_t n = *cap ? *cap : 16;
        void *q;

        if (need <= *cap)
                return 0;
        while (n < need)
                n *= 2;
        q = realloc(*p, n * elem);
        if (!q)
                return -ENOMEM;
        *p = q;
        *cap = n;
        return 0;
}

static int append_str(char **s, size_t *len, size_t *cap, const char *add) {
        size_t n = add ? strlen(add) : 0;

        if (n == 0)
                return 0;
        if (*cap == 0)
                *cap = 1;            /* result_new's one-byte allocation */
        if (grow((void **) s, cap, *len + n + 1, 1) < 0)
                return -ENOMEM;
        memcpy(*s + *len, add, n + 1);
        *len += n;
        return 0;
}

int result_set_ids(gc_result *r, const int32_t *ids, size_t n) {
        if (grow((void **) &r->ids, &r->cap_ids, r->n_ids + n, sizeof(*ids)) < 0)
                return -ENOMEM;
        if (n)
                memcpy(r->ids + r->n_ids, ids, n * sizeof(*ids));
        r->n_ids += n;
        return 0;
}

int result_set_logprobs(gc_result *r, const struct proto_token_logprob *lp, size_t n) {
        if (grow((void **) &r->lp, &r->cap_lp, r->n_lp + n, sizeof(*lp)) < 0)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                struct proto_token_logprob e = lp[i];

                e.top = NULL;
                if (lp[i].n_top) {
                        e.top = malloc(lp[i].n_top * sizeof(*e.top));
                        if (!e.top)
                                return -ENOMEM;
                        memcpy(e.top, lp[i].top, lp[i].n_top * sizeof(*e.top));
                }
                r->lp[r->n_lp++] = e;
        }
        return 0;
}

int result_append_delta(gc_result *r, const struct proto_delta *d) {
        if (append_str(&r->text, &r->text_len, &r->text_cap, d->text) < 0 ||
            append_str(&r->reasoning, &r->reasoning_len, &r->reasoning_cap, d->reasoning) < 0 ||
            result_set_ids(r, d->token_ids, d->n_token_ids) < 0 ||
            result_set_logprobs(r, d->logprobs, d->n_logprobs) < 0)
                return -ENOMEM;
        return 0;
}

int result_add_tool_call(gc_result *r, const struct proto_tool_call *t) {
        struct gc_tool_call *v = realloc(r->tools, (r->n_tools + 1) * sizeof(*v));
        struct gc_tool_call tc;

        if (!v)
                return -ENOMEM;
        r->tools = v;
        tc.name = strdup(t->name ? t->name : "");
        tc.arguments = strdup(t->arguments ? t->arguments : "{}");
        tc.call_id = strdup(t->call_id ? t->call_id : "");
        if (!tc.name || !tc.arguments || !tc.call_id) {
                free(tc.name);
                free(tc.arguments);
                free(tc.call_id);
                return -ENOMEM;
        }
        r->tools[r->n_tools++] = tc;
        return 0;
}

int result_set_text(gc_result *r, const char *s) {
        r->text_len = 0;
        r->text[0] = 0;
        return append_str(&r->text, &r->text_len, &r->text_cap, s);
}

void result_set_error(gc_result *r, int err, const char *message) {
        char *m;

        r->error = err;
        switch (err) {
        case 0:
                break;
        case GC_ECANCELLED:
                r->finish = GC_FINISH_CANCELLED;
                break;
        case GC_EDEADLINE:
                r->finish = GC_FINISH_DEADLINE;
                break;
        default:
                r->finish = GC_FINISH_ERROR;
        }
        m = strdup(message ? message : "");
        if (m) {
                free(r->error_message);
                r->error_message = m;
        }
}

GC_EXTERN const char *gc_result_text(const gc_result *r) {
        return r ? r->text : "";
}

GC_EXTERN const char *gc_result_reasoning(const gc_result *r) {
        return r ? r->reasoning : "";
}

GC_EXTERN enum gc_finish gc_result_finish(const gc_result *r) {
        return r ? r->finish : GC_FINISH_ERROR;
}

GC_EXTERN const char *gc_result_finish_string(const gc_result *r) {
        static const char *const names[] = { "stop", "length", "cancelled", "deadline", "error" };
        enum gc_finish f = gc_result_finish(r);

        return (unsigned) f < 5 ? names[f] : "error";
}

GC_EXTERN int gc_result_error(const gc_result *r) {
        return r ? r->error : -EINVAL;
}

GC_EXTERN const char *gc_result_error_message(const gc_result *r) {
        return r ? r->error_message : "";
}

GC_EXTERN uint32_t gc_result_prompt_tokens(const gc_result *r) {
        return r ? r->usage.prompt_tokens : 0;
}

GC_EXTERN uint32_t gc_result_cached_tokens(const gc_result *r) {
        return r ? r->usage.cached_tokens : 0;
}

GC_EXTERN uint32_t gc_result_completion_tokens(const gc_result *r) {
        return r ? r->usage.completion_tokens : 0;
}

GC_EXTERN double gc_result_queue_ms(const gc_result *r) {
        return r ? r->timings.queue_ms : 0;
}

GC_EXTERN double gc_result_ttft_ms(const gc_result *r) {
        return r ? r->timings.ttft_ms : 0;
}

GC_EXTERN double gc_result_per_token_ms(const gc_result *r) {
        return r ? r->timings.per_token_ms : 0;
}

GC_EXTERN uint32_t gc_result_preempted(const gc_result *r) {
        return r ? r->preempted : 0;
}

GC_EXTERN const int32_t *gc_result_token_ids(const gc_result *r, size_t *ret_n) {
        if (ret_n)
                *ret_n = r ? r->n_ids : 0;
        return r ? r->ids : NULL;
}

GC_EXTERN size_t gc_result_tool_call_count(const gc_result *r) {
        return r ? r->n_tools : 0;
}

GC_EXTERN const char *gc_result_tool_call_name(const gc_result *r, size_t i) {
        return r && i < r->n_tools ? r->tools[i].name : NULL;
}

GC_EXTERN const char *gc_result_tool_call_arguments(const gc_result *r, size_t i) {
        return r && i < r->n_tools ? r->tools[i].arguments : NULL;
}

GC_EXTERN const char *gc_result_tool_call_id(const gc_result *r, size_t i) {
        return r && i < r->n_tools ? r->tools[i].call_id : NULL;
}

GC_EXTERN size_t gc_result_logprob_count(const gc_result *r) {
        return r ? r->n_lp : 0;
}

GC_EXTERN int gc_result_logprob(const gc_result *r, size_t i, int32_t *ret_token, float *ret_logprob) {
        if (!r || i >= r->n_lp)
                return -ERANGE;
        if (ret_token)
                *ret_token = r->lp[i].id;
        if (ret_logprob)
                *ret_logprob = r->lp[i].logprob;
        return 0;
}

GC_EXTERN size_t gc_result_top_logprob_count(const gc_result *r, size_t i) {
        return r && i < r->n_lp ? r->lp[i].n_top : 0;
}

GC_EXTERN int gc_result_top_logprob(const gc_result *r, size_t i, size_t k, int32_t *ret_token,
                                    float *ret_logprob) {
        if (!r || i >= r->n_lp || k >= r->lp[i].n_top)
                return -ERANGE;
        if (ret_token)
                *ret_token = r->lp[i].top[k].id;
        if (ret_logprob)
                *ret_logprob = r->lp[i].top[k].logprob;
        return 0;
}

/* ---- events ---- */

GC_EXTERN uint32_t gc_event_prompt_tokens(const gc_event *ev) {
        return ev && ev->type == GC_EVENT_STARTED ? ev->msg->started.prompt_tokens : 0;
}

GC_EXTERN uint32_t gc_event_queue_position(const gc_event *ev) {
        return ev && ev->type == GC_EVENT_STARTED ? ev->msg->started.queue_position : 0;
}

static const char *or_empty(const char *s) {
        return s ? s : "";
}

GC_EXTERN const char *gc_event_content(const gc_event *ev) {
        return ev && ev->type == GC_EVENT_DELTA ? or_empty(ev->msg->delta.text) : "";
}

GC_EXTERN const char *gc_event_reasoning(const gc_event *ev) {
        return ev && ev->type == GC_EVENT_DELTA ? or_empty(ev->msg->delta.reasoning) : "";
}

GC_EXTERN const int32_t *gc_event_token_ids(const gc_event *ev, size_t *ret_n) {
        bool ok = ev && ev->type == GC_EVENT_DELTA;

        if (ret_n)
                *ret_n = ok ? ev->msg->delta.n_token_ids : 0;
        return ok ? ev->msg->delta.token_ids : NULL;
}

GC_EXTERN const char *gc_event_tool_name(const gc_event *ev) {
        return ev && ev->type == GC_EVENT_TOOL_CALL ? or_empty(ev->msg->tool_call.name) : "";
}

GC_EXTERN const char *gc_event_tool_arguments(const gc_event *ev) {
        return ev && ev->type == GC_EVENT_TOOL_CALL ? or_empty(ev->msg->tool_call.arguments) : "";
}

GC_EXTERN const char *gc_event_tool_call_id(const gc_event *ev) {
        return ev && ev->type == GC_EVENT_TOOL_CALL ? or_empty(ev->msg->tool_call.call_id) : "";
}

GC_EXTERN uint32_t gc_event_tool_index(const gc_event *ev) {
        return ev && ev->type == GC_EVENT_TOOL_CALL ? ev->msg->tool_call.index : 0;
}

GC_EXTERN const gc_result *gc_event_result(const gc_event *ev) {
        return ev ? ev->result : NULL;
}

GC_EXTERN gc_result *gc_event_steal_result(const gc_event *ev) {
        gc_event *e = (gc_event *) ev;

        if (!e || e->type != GC_EVENT_FINISHED || e->stolen)
                return NULL;
        e->stolen = true;
        return e->result;
}
