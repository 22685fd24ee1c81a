/* SPDX-License-Identifier: Apache-2.0 */
/* The engine thread: inbox -> schedule -> backend step -> sample -> events (see engine.h). */
#include "server/engine.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "server/sample_pool.h"
#include "server/sched.h"

#define RATE_BUCKETS 10         /* one-second buckets for tokens/s over the last 10 s */
/* Logits buffers up to this many rows come from the backend's host_alloc (page-locked on CUDA: the copy
 * runs at full PCIe speed); larger ones (score steps) are ordinary memory rather than pinning GiBs. */
#define PINNED_ROWS_MAX 256

struct ereq {
        struct sched_req s;     /* first: sched hands back sched_req pointers */
        uint64_t conn_id, req_id;
        struct sampling_params params;
        uint64_t seed;
        uint32_t cap_tokens;
        uint32_t output_tokens;
        uint64_t submit_ns, admitted_ns, first_token_ns;
        bool snapshot_taken;            /* sliding ring registered since the last (re)admission */
        /* score results */
        int32_t *score_tokens;
        float *score_lp;
        struct sampler_logprob *score_top;
        uint32_t n_score;
        struct ereq *prev, *next;       /* live requests */
};

enum msg_type {
        MSG_SUBMIT,
        MSG_CANCEL,
        MSG_CANCEL_CONNECTION,
        MSG_STOP,
};

struct msg {
        struct msg *next;
        enum msg_type type;
        uint64_t conn_id, req_id;
        struct ereq *req;
};

/* One row sampled on the host, maybe on a pool thread: reads only its request's tokens and parameters. */
struct sample_job {
        struct ereq *r;
        float *row;
        struct sampler_result res;
        int ret;
};

struct rate_bucket {
        uint64_t second;
        uint64_t generated, prefilled;
};

struct engine {
        struct engine_params p;
        struct backend_capacity cap;
        uint32_t max_len;               /* min(max_model_len, full pages * B) */
        struct kv_pool *pool;
        struct sched *sched;
        struct sample_pool *samplers;   /* worker 0's sampler also scores */
        struct sample_job *jobs;        /* [cap_seqs] */
        float *logits;
        uint64_t logits_rows;
        bool logits_pinned;             /* from ops->host_alloc */
        int32_t *greedy;                /* [cap_seqs]: tokens of a forward_greedy step */
        bool greedy_off;                /* the backend has no forward_greedy, or switched it off */
        struct backend_sample *samples; /* [cap_seqs]: the inputs of a forward_sample step */
        struct sampler_result *sampled; /* [cap_seqs]: its results */
        bool sample_off;                /* the backend has no forward_sample, or switched it off */
        struct backend_seq *seqs;
        uint32_t cap_seqs;
        struct ereq *live;              /* every accepted request not yet finished */
        uint64_t start_ns;
        uint64_t steps, finished;
        struct rate_bucket rates[RATE_BUCKETS];
        int fatal;

        /* inbox (any thread -> engine) */
        pthread_mutex_t in_lock;
        pthread_cond_t in_cond;
        struct msg *in_head, *in_tail;
        uint32_t in_new;                /* submissions in the inbox */
        uint32_t waiting_published;     /* scheduler's waiting count after the last step */
        bool stopping;
        bool admission_pending;         /* engine_set_admission values to apply at the next step */
        uint32_t pending_max_queue, pending_aging_ms;

        /* outbox (engine -> I/O thread) */
        pthread_mutex_t out_lock;
        struct engine_event *out_head, *out_tail;
        bool out_pushed;                /* events queued since the last wake */

        pthread_mutex_t status_lock;
        struct engine_status status;

        _Atomic uint64_t last_progress_ns;
        _Atomic uint32_t stall_ms;
        _Atomic uint64_t rejected;
        pthread_t thread;
        bool thread_started;
};

uint64_t engine_now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

const char *engine_finish_reason_to_string(enum engine_finish_reason r) {
        switch (r) {
        case ENGINE_FINISH_STOP: return "stop";
        case ENGINE_FINISH_LENGTH: return "length";
        case ENGINE_FINISH_CANCELLED: return "cancelled";
        case ENGINE_FINISH_DEADLINE: return "deadline";
        case ENGINE_FINISH_ERROR: return "error";
        }
        return "unknown";
}

const char *engine_error_to_string(enum engine_error e) {
        switch (e) {
        case ENGINE_ERROR_BAD_REQUEST: return "bad_request";
        case ENGINE_ERROR_TOO_LONG: return "too_long";
        case ENGINE_ERROR_OVERLOADED: return "overloaded";
        case ENGINE_ERROR_INTERNAL: return "internal";
        }
        return "unknown";
}

void engine_event_free(struct engine_event *ev) {
        if (!ev)
                return;
        if (ev->type == ENGINE_EVENT_TOKENS || ev->type == ENGINE_EVENT_SCORE) {
                free(ev->tokens.tokens);
                free(ev->tokens.logprobs);
                free(ev->tokens.top);
        }
        free(ev);
}

static void ereq_free(struct ereq *r) {
        if (!r)
                return;
        kv_seq_done(&r->s.kv);
        free(r->s.tokens);
        free(r->score_tokens);
        free(r->score_lp);
        free(r->score_top);
        free(r);
}

/* ---- outbox ---- */

static struct engine_event *event_new(enum engine_event_type type, const struct ereq *r) {
        struct engine_event *ev = calloc(1, sizeof(*ev));
        if (!ev)
                return NULL;
        ev->type = type;
        ev->conn_id = r->conn_id;
        ev->req_id = r->req_id;
        ev->priority = r->s.priority;
        return ev;
}

static void event_push(struct engine *e, struct engine_event *ev) {
        if (!ev) {
                log_error("engine: out of memory, an event was lost");
                return;
        }
        pthread_mutex_lock(&e->out_lock);
        if (e->out_tail)
                e->out_tail->next = ev;
        else
                e->out_head = ev;
        e->out_tail = ev;
        e->out_pushed = true;
        pthread_mutex_unlock(&e->out_lock);
}

static void wake_io(struct engine *e) {
        pthread_mutex_lock(&e->out_lock);
        bool pushed = e->out_pushed;
        e->out_pushed = false;
        pthread_mutex_unlock(&e->out_lock);
        if (pushed && e->p.wake)
                e->p.wake(e->p.wake_userdata);
}

struct engine_event *engine_pop_events(struct engine *e) {
        pthread_mutex_lock(&e->out_lock);
        struct engine_event *head = e->out_head;
        e->out_head = e->out_tail = NULL;
        pthread_mutex_unlock(&e->out_lock);
        return head;
}

static void push_error(struct engine *e, const struct ereq *r, enum engine_error code, const char *msg) {
        struct engine_event *ev = event_new(ENGINE_EVENT_ERROR, r);
        if (ev) {
                ev->error.code = code;
                snprintf(ev->error.message, sizeof(ev->error.message), "%s", msg);
        }
        event_push(e, ev);
}

/* ---- live requests ---- */

static void live_add(struct engine *e, struct ereq *r) {
        r->prev = NULL;
        r->next = e->live;
        if (e->live)
                e->live->prev = r;
        e->live = r;
}

static void live_remove(struct engine *e, struct ereq *r) {
        if (r->prev)
                r->prev->next = r->next;
        else
                e->live = r->next;
        if (r->next)
                r->next->prev = r->prev;
        r->prev = r->next = NULL;
}

static struct ereq *live_find(struct engine *e, uint64_t conn_id, uint64_t req_id) {
        for (struct ereq *r = e->live; r; r = r->next)
                if (r->conn_id == conn_id && r->req_id == req_id)
                        return r;
        return NULL;
}

static double ms_between(uint64_t a, uint64_t b) {
        return b > a ? (double) (b - a) / 1e6 : 0.0;
}

/* End a request: pages back to the pool (within this step), FINISHED event, freed. */
static void finish(struct engine *e, struct ereq *r, enum engine_finish_reason reason, uint64_t now) {
        sched_remove(e->sched, &r->s);
        live_remove(e, r);
        struct engine_event *ev = event_new(ENGINE_EVENT_FINISHED, r);
        if (ev) {
                ev->finished.reason = reason;
                ev->finished.usage = (struct engine_usage) {
                        .prompt_tokens = r->s.n_prompt,
                        .cached_tokens = r->s.cached_tokens,
                        .output_tokens = r->output_tokens,
                };
                double decode_s = r->first_token_ns ? (double) (now - r->first_token_ns) / 1e9 : 0;
                ev->finished.timings = (struct engine_timings) {
                        .queue_ms = r->admitted_ns ? ms_between(r->submit_ns, r->admitted_ns) :
                                                     ms_between(r->submit_ns, now),
                        .ttft_ms = r->first_token_ns ? ms_between(r->submit_ns, r->first_token_ns) : 0,
                        .total_ms = ms_between(r->submit_ns, now),
                        .decode_tokens_per_s = decode_s > 0 && r->output_tokens > 1 ?
                                (r->output_tokens - 1) / decode_s : 0,
                };
                ev->finished.preempted = r->s.preempted;
        }
        event_push(e, ev);
        log_request(LOG_LEVEL_DEBUG, r->req_id, "conn %llu finished: %s, prompt %u, cached %u, output %u, "
                    "preempted %u", (unsigned long long) r->conn_id, engine_finish_reason_to_string(reason),
                    r->s.n_prompt, r->s.cached_tokens, r->output_tokens, r->s.preempted);
        e->finished++;
        ereq_free(r);
}

static void fail(struct engine *e, struct ereq *r, enum engine_error code, const char *msg) {
        sched_remove(e->sched, &r->s);
        live_remove(e, r);
        push_error(e, r, code, msg);
        e->finished++;
        ereq_free(r);
}

/* ---- inbox ---- */

static int inbox_push(struct engine *e, struct msg *m) {
        pthread_mutex_lock(&e->in_lock);
        if (e->stopping || e->fatal) {
                pthread_mutex_unlock(&e->in_lock);
                return -ESHUTDOWN;
        }
        m->next = NULL;
        if (e->in_tail)
                e->in_tail->next = m;
        else
                e->in_head = m;
        e->in_tail = m;
        pthread_cond_signal(&e->in_cond);
        pthread_mutex_unlock(&e->in_lock);
        return 0;
}

static int push_control(struct engine *e, enum msg_type type, uint64_t conn_id, uint64_t req_id) {
        struct msg *m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->type = type;
        m->conn_id = conn_id;
        m->req_id = req_id;
        int r = inbox_push(e, m);
        if (r < 0)
                free(m);
        return r;
}

int engine_cancel(struct engine *e, uint64_t conn_id, uint64_t req_id) {
        return push_control(e, MSG_CANCEL, conn_id, req_id);
}

int engine_cancel_connection(struct engine *e, uint64_t conn_id) {
        return push_control(e, MSG_CANCEL_CONNECTION, conn_id, 0);
}

int engine_request_stop(struct engine *e, uint64_t conn_id, uint64_t req_id) {
        return push_control(e, MSG_STOP, conn_id, req_id);
}

static int reject(struct engine *e, int code, char *err, size_t errsize, const char *fmt, ...)
        __attribute__((format(printf, 5, 6)));
static int reject(struct engine *e, int code, char *err, size_t errsize, const char *fmt, ...) {
        if (err && errsize) {
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(err, errsize, fmt, ap);
                va_end(ap);
        }
        atomic_fetch_add(&e->rejected, 1);
        return code;
}

static uint64_t mix_seed(uint64_t a, uint64_t b) {
        uint64_t z = a ^ (b * UINT64_C(0x9E3779B97F4A7C15));
        z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
        return z ^ (z >> 31);
}

int engine_submit(struct engine *e, const struct engine_request *req, char *err, size_t errsize) {
        if (!req)
                return -EINVAL;
        if (req->kind != ENGINE_KIND_GENERATE && req->kind != ENGINE_KIND_SCORE)
                return reject(e, -EINVAL, err, errsize, "unknown request kind %d", (int) req->kind);
        if (req->n_tokens == 0 || !req->tokens)
                return reject(e, -EINVAL, err, errsize, "the prompt is empty");
        for (uint32_t i = 0; i < req->n_tokens; i++)
                if (req->tokens[i] < 0 || (uint32_t) req->tokens[i] >= e->p.vocab_size)
                        return reject(e, -EINVAL, err, errsize, "prompt token %u is %d, outside the "
                                      "vocabulary [0, %u)", i, req->tokens[i], e->p.vocab_size);
        char perr[128];
        if (sampling_params_validate(&req->params, perr, sizeof(perr)) < 0)
                return reject(e, -EINVAL, err, errsize, "%s", perr);
        if (req->kind == ENGINE_KIND_GENERATE ? req->n_tokens >= e->max_len : req->n_tokens > e->max_len)
                return reject(e, -E2BIG, err, errsize, "the prompt has %u tokens; the limit is %u "
                              "(max_model_len %u, KV pool %llu tokens)%s", req->n_tokens, e->max_len,
                              e->p.max_model_len,
                              (unsigned long long) e->cap.n_full_pages * e->cap.page_size,
                              req->kind == ENGINE_KIND_GENERATE ? " including one generated token" : "");

        struct ereq *r = calloc(1, sizeof(*r));
        struct msg *m = calloc(1, sizeof(*m));
        uint32_t cap = req->kind == ENGINE_KIND_GENERATE ? req->n_tokens + 16 : req->n_tokens;
        if (r)
                r->s.tokens = malloc(sizeof(int32_t) * cap);
        if (!r || !m || !r->s.tokens) {
                ereq_free(r);
                free(m);
                return reject(e, -ENOMEM, err, errsize, "out of memory");
        }
        memcpy(r->s.tokens, req->tokens, sizeof(int32_t) * req->n_tokens);
        r->cap_tokens = cap;
        r->s.n_prompt = r->s.n_tokens = req->n_tokens;
        r->s.kind = req->kind == ENGINE_KIND_SCORE ? SCHED_KIND_SCORE : SCHED_KIND_GENERATE;
        r->s.priority = req->params.priority;
        kv_seq_init(&r->s.kv);
        r->conn_id = req->conn_id;
        r->req_id = req->req_id;
        r->params = req->params;
        r->submit_ns = engine_now_ns();
        r->seed = req->params.has_seed ? req->params.seed :
                  mix_seed(req->req_id ^ (req->conn_id << 32), r->submit_ns);
        m->type = MSG_SUBMIT;
        m->conn_id = req->conn_id;
        m->req_id = req->req_id;
        m->req = r;

        pthread_mutex_lock(&e->in_lock);
        int ret = 0;
        if (e->stopping || e->fatal)
                ret = -ESHUTDOWN;
        else if (e->in_new + e->waiting_published >= e->p.max_queue)
                ret = -EAGAIN;
        if (ret == 0) {
                m->next = NULL;
                if (e->in_tail)
                        e->in_tail->next = m;
                else
                        e->in_head = m;
                e->in_tail = m;
                e->in_new++;
                pthread_cond_signal(&e->in_cond);
        }
        pthread_mutex_unlock(&e->in_lock);
        if (ret < 0) {
                ereq_free(r);
                free(m);
                if (ret == -EAGAIN)
                        return reject(e, ret, err, errsize, "overloaded: %u requests are waiting "
                                      "(limits.max_queue)", e->p.max_queue);
                return reject(e, ret, err, errsize, "the engine has stopped");
        }
        return 0;
}

static void apply_submit(struct engine *e, struct ereq *r, uint64_t now) {
        if (live_find(e, r->conn_id, r->req_id)) {
                push_error(e, r, ENGINE_ERROR_BAD_REQUEST, "a request with this id is already in flight");
                ereq_free(r);
                return;
        }
        int ret = sched_add(e->sched, &r->s, r->submit_ns);
        if (ret < 0) {
                push_error(e, r, ENGINE_ERROR_INTERNAL, "could not queue the request");
                ereq_free(r);
                return;
        }
        live_add(e, r);
        struct engine_event *ev = event_new(ENGINE_EVENT_STARTED, r);
        if (ev) {
                ev->started.prompt_tokens = r->s.n_prompt;
                ev->started.queue_position = sched_queue_position(e->sched, &r->s, now);
        }
        event_push(e, ev);
}

static void apply_inbox(struct engine *e, uint64_t now) {
        bool admission = false;
        uint32_t aging_ms = 0;
        pthread_mutex_lock(&e->in_lock);
        struct msg *m = e->in_head;
        e->in_head = e->in_tail = NULL;
        e->in_new = 0;
        if (e->admission_pending) {
                /* engine_submit reads max_queue under in_lock; the scheduler is ours alone */
                e->p.max_queue = e->pending_max_queue;
                e->p.aging_ms = aging_ms = e->pending_aging_ms;
                e->admission_pending = false;
                admission = true;
        }
        pthread_mutex_unlock(&e->in_lock);
        if (admission)
                sched_set_aging(e->sched, aging_ms);
        while (m) {
                struct msg *next = m->next;
                struct ereq *r;
                switch (m->type) {
                case MSG_SUBMIT:
                        apply_submit(e, m->req, now);
                        break;
                case MSG_CANCEL:
                case MSG_STOP:
                        r = live_find(e, m->conn_id, m->req_id);
                        if (r)
                                finish(e, r, m->type == MSG_CANCEL ? ENGINE_FINISH_CANCELLED :
                                       ENGINE_FINISH_STOP, now);
                        break;
                case MSG_CANCEL_CONNECTION:
                        for (r = e->live; r;) {
                                struct ereq *rn = r->next;
                                if (r->conn_id == m->conn_id)
                                        finish(e, r, ENGINE_FINISH_CANCELLED, now);
                                r = rn;
                        }
                        break;
                }
                free(m);
                m = next;
        }
        pthread_mutex_lock(&e->in_lock);
        e->waiting_published = sched_n_waiting(e->sched);
        pthread_mutex_unlock(&e->in_lock);
}

/* ---- status ---- */

static void rate_add(struct engine *e, uint64_t now, uint64_t generated, uint64_t prefilled) {
        uint64_t sec = now / 1000000000u;
        struct rate_bucket *b = &e->rates[sec % RATE_BUCKETS];
        if (b->second != sec)
                *b = (struct rate_bucket) { .second = sec };
        b->generated += generated;
        b->prefilled += prefilled;
}

static void publish_status(struct engine *e, uint64_t now) {
        struct engine_status st = { 0 };
        for (uint32_t i = 0; i < sched_n_waiting(e->sched); i++) {
                int32_t prio = sched_waiting_at(e->sched, i)->priority;
                st.queued_by_priority[prio - SAMPLER_PRIORITY_MIN]++;
        }
        st.queued = sched_n_waiting(e->sched);
        st.running = sched_n_running(e->sched);
        struct kv_pool_stats ps;
        kv_pool_get_stats(e->pool, &ps);
        memcpy(st.kv, ps.space, sizeof(st.kv));
        st.page_size = e->cap.page_size;
        st.capacity_tokens = (uint64_t) e->cap.n_full_pages * e->cap.page_size;
        st.max_len = e->max_len;
        uint32_t per_seq = (32768 + e->cap.page_size - 1) / e->cap.page_size;
        uint32_t by_full = e->cap.n_full_pages / per_seq;
        uint32_t by_sliding = e->cap.n_sliding_pages / e->cap.n_sliding_ring;
        st.seqs_32k = by_full < by_sliding ? by_full : by_sliding;
        st.prefix_hit_rate = ps.lookup_tokens ? (double) ps.hit_tokens / (double) ps.lookup_tokens : 0;
        uint64_t sec = now / 1000000000u, gen = 0, pre = 0;
        for (int i = 0; i < RATE_BUCKETS; i++)
                if (e->rates[i].second + RATE_BUCKETS > sec) {
                        gen += e->rates[i].generated;
                        pre += e->rates[i].prefilled;
                }
        double window = (double) (now - e->start_ns) / 1e9;
        if (window > RATE_BUCKETS)
                window = RATE_BUCKETS;
        if (window < 1)
                window = 1;
        st.tokens_per_s = (double) gen / window;
        st.prefill_tokens_per_s = (double) pre / window;
        st.preemptions = sched_preemptions(e->sched);
        st.rejected = atomic_load(&e->rejected);
        st.finished = e->finished;
        st.steps = e->steps;
        st.uptime_s = (double) (now - e->start_ns) / 1e9;
        st.fatal = e->fatal;
        pthread_mutex_lock(&e->in_lock);
        e->waiting_published = st.queued;
        pthread_mutex_unlock(&e->in_lock);
        pthread_mutex_lock(&e->status_lock);
        e->status = st;
        pthread_mutex_unlock(&e->status_lock);
}

void engine_get_status(struct engine *e, struct engine_status *ret) {
        pthread_mutex_lock(&e->status_lock);
        *ret = e->status;
        pthread_mutex_unlock(&e->status_lock);
        ret->rejected = atomic_load(&e->rejected);
        ret->uptime_s = (double) (engine_now_ns() - e->start_ns) / 1e9;
}

uint64_t engine_last_progress_ns(struct engine *e) {
        return atomic_load(&e->last_progress_ns);
}

int engine_set_admission(struct engine *e, uint32_t max_queue, uint32_t aging_ms) {
        if (!e || max_queue == 0)
                return -EINVAL;
        pthread_mutex_lock(&e->in_lock);
        e->pending_max_queue = max_queue;
        e->pending_aging_ms = aging_ms;
        e->admission_pending = true;
        pthread_cond_signal(&e->in_cond);
        pthread_mutex_unlock(&e->in_lock);
        return 0;
}

void engine_test_stall(struct engine *e, uint32_t ms) {
        atomic_store(&e->stall_ms, ms);
        pthread_mutex_lock(&e->in_lock);
        pthread_cond_signal(&e->in_cond);
        pthread_mutex_unlock(&e->in_lock);
}

void engine_get_pool_params(struct engine *e, struct kv_pool_params *ret) {
        kv_pool_get_params(e->pool, ret);
}

int engine_check(struct engine *e, char *err, size_t errsize) {
        if (e->thread_started)
                return -EBUSY;
        return kv_pool_check(e->pool, err, errsize);
}

/* ---- one step ---- */

static bool is_stop_id(const struct engine *e, int32_t t) {
        for (uint32_t i = 0; i < e->p.n_stop_ids; i++)
                if (e->p.stop_ids[i] == t)
                        return true;
        return false;
}

static int append_token(struct ereq *r, int32_t t) {
        if (r->s.n_tokens == r->cap_tokens) {
                uint32_t cap = r->cap_tokens * 2;
                int32_t *v = realloc(r->s.tokens, sizeof(int32_t) * cap);
                if (!v)
                        return -ENOMEM;
                r->s.tokens = v;
                r->cap_tokens = cap;
        }
        r->s.tokens[r->s.n_tokens++] = t;
        return 0;
}

static void free_logits(struct engine *e) {
        if (e->logits_pinned)
                e->p.ops->host_free(e->p.backend, e->logits);
        else
                free(e->logits);
        e->logits = NULL;
        e->logits_rows = 0;
        e->logits_pinned = false;
}

static int ensure_buffers(struct engine *e, uint32_t n_seqs, uint64_t rows) {
        if (n_seqs > e->cap_seqs) {
                struct backend_seq *v = realloc(e->seqs, sizeof(*v) * n_seqs);
                if (!v)
                        return -ENOMEM;
                e->seqs = v;
                int32_t *g = realloc(e->greedy, sizeof(*g) * n_seqs);
                if (!g)
                        return -ENOMEM;
                e->greedy = g;
                struct backend_sample *bs = realloc(e->samples, sizeof(*bs) * n_seqs);
                if (!bs)
                        return -ENOMEM;
                e->samples = bs;
                struct sampler_result *sr = realloc(e->sampled, sizeof(*sr) * n_seqs);
                if (!sr)
                        return -ENOMEM;
                e->sampled = sr;
                struct sample_job *j = realloc(e->jobs, sizeof(*j) * n_seqs);
                if (!j)
                        return -ENOMEM;
                e->jobs = j;
                e->cap_seqs = n_seqs;
        }
        if (rows > e->logits_rows) {
                /* grow by powers of two: each growth of a pinned buffer costs milliseconds */
                uint64_t want = 1;
                while (want < rows)
                        want *= 2;
                float *l = NULL;
                bool pinned = false;
                if (e->p.ops->host_alloc && e->p.ops->host_free && want <= PINNED_ROWS_MAX) {
                        l = e->p.ops->host_alloc(e->p.backend, sizeof(float) * want * e->p.vocab_size);
                        pinned = l != NULL;
                }
                if (!l) {
                        want = rows;
                        l = malloc(sizeof(float) * want * e->p.vocab_size);
                }
                if (!l)
                        return -ENOMEM;
                free_logits(e);
                e->logits = l;
                e->logits_pinned = pinned;
                e->logits_rows = want;
        }
        return 0;
}

static void emit_tokens(struct engine *e, struct ereq *r, const struct sampler_result *res) {
        struct engine_event *ev = event_new(ENGINE_EVENT_TOKENS, r);
        if (ev) {
                ev->tokens.n = 1;
                ev->tokens.tokens = malloc(sizeof(int32_t));
                ev->tokens.logprobs = malloc(sizeof(float));
                ev->tokens.n_top = res->n_top;
                if (res->n_top)
                        ev->tokens.top = malloc(sizeof(struct sampler_logprob) * res->n_top);
                if (!ev->tokens.tokens || !ev->tokens.logprobs || (res->n_top && !ev->tokens.top)) {
                        engine_event_free(ev);
                        ev = NULL;
                } else {
                        ev->tokens.tokens[0] = res->token;
                        ev->tokens.logprobs[0] = res->logprob;
                        if (res->n_top)
                                memcpy(ev->tokens.top, res->top, sizeof(*res->top) * res->n_top);
                }
        }
        event_push(e, ev);
}

/* Score rows of one chunk: row t predicts the token at position pos + t + 1. */
static int score_rows(struct engine *e, struct ereq *r, uint32_t pos, uint32_t n, const float *rows) {
        uint32_t need = r->s.n_prompt - 1, n_top = r->params.logprobs;
        if (!r->score_lp && need > 0) {
                r->score_tokens = malloc(sizeof(int32_t) * need);
                r->score_lp = malloc(sizeof(float) * need);
                if (n_top)
                        r->score_top = malloc(sizeof(struct sampler_logprob) * need * n_top);
                if (!r->score_tokens || !r->score_lp || (n_top && !r->score_top))
                        return -ENOMEM;
        }
        for (uint32_t t = 0; t < n; t++) {
                uint32_t p = pos + t;
                if (p + 1 >= r->s.n_prompt)
                        break;
                struct sampler_result res;
                int ret = sampler_score(sample_pool_sampler(e->samplers), rows + (uint64_t) t * e->p.vocab_size,
                                        r->s.tokens[p + 1], n_top, &res);
                if (ret < 0)
                        return ret;
                r->score_tokens[p] = res.token;
                r->score_lp[p] = res.logprob;
                if (n_top)
                        memcpy(&r->score_top[(uint64_t) p * n_top], res.top, sizeof(*res.top) * n_top);
                r->n_score = p + 1;
        }
        return 0;
}

static void emit_score(struct engine *e, struct ereq *r) {
        struct engine_event *ev = event_new(ENGINE_EVENT_SCORE, r);
        if (ev) {
                ev->tokens.n = r->n_score;
                ev->tokens.n_top = r->n_score ? r->params.logprobs : 0;
                ev->tokens.tokens = r->score_tokens;
                ev->tokens.logprobs = r->score_lp;
                ev->tokens.top = r->score_top;
                r->score_tokens = NULL;
                r->score_lp = NULL;
                r->score_top = NULL;
        }
        event_push(e, ev);
}

/* Whether the entry's step ends its prefill (or decodes): only then is a token sampled. */
static bool entry_samples(const struct sched_entry *en) {
        const struct ereq *r = (const struct ereq *) en->req;
        return r->s.kind != SCHED_KIND_SCORE && (uint64_t) r->s.kv.n_tokens + en->n_tokens >= r->s.n_tokens;
}

/* Whether this entry's step needs its logits row(s) on the host. A row that is plain greedy (temperature 0,
 * no penalty, no logprobs) is the backend's argmax, and a mid-prefill chunk's row is not read at all. */
static bool entry_needs_logits(const struct sched_entry *en) {
        const struct ereq *r = (const struct ereq *) en->req;
        const struct sampling_params *p = &r->params;
        if (r->s.kind == SCHED_KIND_SCORE)
                return true;
        if (!entry_samples(en))
                return false;   /* mid-prefill: process_entry returns before sampling */
        return !(p->temperature == 0.0f && p->repetition_penalty == 1.0f && p->presence_penalty == 0.0f &&
                 p->frequency_penalty == 0.0f && p->logprobs == 0 && !p->logprob);
}

static void sample_job_run(void *arg, uint32_t i, struct sampler *s) {
        struct sample_job *j = &((struct sample_job *) arg)[i];
        struct ereq *r = j->r;
        if (!r)
                return;
        struct sampling_params sp = r->params;
        sp.seed = r->seed;
        /* the sampler modifies the row in place, which is fine: the next forward rewrites it */
        j->ret = sampler_sample(s, j->row, r->s.tokens, r->s.n_prompt, r->s.n_tokens - r->s.n_prompt, &sp,
                                &j->res);
}

/* Sample every row of the step that needs it, on the pool (before process_entry commits anything). */
static void sample_step(struct engine *e, const struct sched_plan *plan) {
        uint64_t row = 0;
        for (uint32_t i = 0; i < plan->n_entries; i++) {
                const struct sched_entry *en = &plan->entries[i];
                e->jobs[i] = (struct sample_job) {
                        .r = entry_samples(en) ? (struct ereq *) en->req : NULL,
                        .row = e->logits + row * e->p.vocab_size,
                };
                row += en->req->kind == SCHED_KIND_SCORE ? en->n_tokens : 1;
        }
        sample_pool_run(e->samplers, plan->n_entries, sample_job_run, e->jobs);
}

/* The inputs of a forward_sample step: each sampling row gets exactly what sample_job_run would hand the
 * host sampler. A mid-prefill row is not read, so it asks for the cheapest thing, a greedy token. */
static void fill_device_samples(struct engine *e, const struct sched_plan *plan) {
        for (uint32_t i = 0; i < plan->n_entries; i++) {
                const struct sched_entry *en = &plan->entries[i];
                const struct ereq *r = (const struct ereq *) en->req;
                struct backend_sample *bs = &e->samples[i];
                if (!entry_samples(en)) {
                        *bs = (struct backend_sample) { .tokens = NULL };
                        sampling_params_init(&bs->params);
                        bs->params.temperature = 0.0f;
                        continue;
                }
                *bs = (struct backend_sample) {
                        .params = r->params,
                        .tokens = r->s.tokens,
                        .n_prompt = r->s.n_prompt,
                        .n_generated = r->s.n_tokens - r->s.n_prompt,
                };
                bs->params.seed = r->seed;
        }
}

/* After the backend step: commit KV, emit. For generation, `job` holds the sampled token (from the pool,
 * or a forward_greedy step's argmax: the sampler's answer for such a row, logprob 0); score rows are
 * scored here from `rows`. */
static void process_entry(struct engine *e, const struct sched_entry *en, const float *rows,
                          const struct sample_job *job, uint64_t now, uint64_t *generated) {
        struct ereq *r = (struct ereq *) en->req;
        uint32_t pos = r->s.kv.n_tokens;
        int ret = kv_pool_commit(e->pool, &r->s.kv, r->s.tokens, en->n_tokens);
        if (ret < 0) {
                fail(e, r, ENGINE_ERROR_INTERNAL, "KV bookkeeping failed");
                return;
        }
        if (r->s.kind == SCHED_KIND_SCORE) {
                ret = score_rows(e, r, pos, en->n_tokens, rows);
                if (ret < 0) {
                        fail(e, r, ENGINE_ERROR_INTERNAL, "scoring failed");
                        return;
                }
                if (r->s.kv.n_tokens == r->s.n_prompt) {
                        emit_score(e, r);
                        finish(e, r, ENGINE_FINISH_STOP, now);
                }
                return;
        }
        if (r->s.kv.n_tokens < r->s.n_tokens)
                return;         /* mid-prefill: the row is not needed */
        if (!r->snapshot_taken) {
                /* prefill done: a later prompt that extends this one (the next turn of a chat) can
                 * take the sliding window from here */
                kv_pool_snapshot_sliding(e->pool, &r->s.kv, r->s.tokens);
                r->snapshot_taken = true;
        }

        const struct sampler_result res = job->res;
        ret = job->ret;
        if (ret == 0)
                ret = append_token(r, res.token);
        if (ret < 0) {
                fail(e, r, ENGINE_ERROR_INTERNAL, "sampling failed");
                return;
        }
        r->output_tokens++;
        (*generated)++;
        if (!r->first_token_ns)
                r->first_token_ns = now;
        if (is_stop_id(e, res.token)) {
                finish(e, r, ENGINE_FINISH_STOP, now);
                return;
        }
        emit_tokens(e, r, &res);
        if (r->output_tokens >= r->params.max_tokens || r->s.n_tokens >= e->max_len)
                finish(e, r, ENGINE_FINISH_LENGTH, now);
}

static void fail_plan(struct engine *e, const struct sched_plan *plan, const char *msg) {
        for (uint32_t i = 0; i < plan->n_entries; i++) {
                struct ereq *r = (struct ereq *) plan->entries[i].req;
                /* the written rows are not trustworthy: drop them without caching */
                kv_pool_release(e->pool, &r->s.kv, NULL);
                fail(e, r, ENGINE_ERROR_INTERNAL, msg);
        }
}

/* The stall test hook: sleep without progress. Checked again right after the inbox is applied, so that
 * a request submitted after engine_test_stall() returned is never served before the stall. */
static void maybe_stall(struct engine *e) {
        uint32_t stall = atomic_exchange(&e->stall_ms, 0);
        if (!stall)
                return;
        struct timespec ts = { stall / 1000, (long) (stall % 1000) * 1000000L };
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

static int engine_step(struct engine *e, bool threaded) {
        uint64_t now = engine_now_ns();
        apply_inbox(e, now);
        if (threaded && atomic_load(&e->stall_ms)) {
                maybe_stall(e);
                now = engine_now_ns();
        }
        for (struct ereq *r = e->live; r;) {
                struct ereq *rn = r->next;
                if (r->params.deadline_ms &&
                    now >= r->submit_ns + (uint64_t) r->params.deadline_ms * 1000000u)
                        finish(e, r, ENGINE_FINISH_DEADLINE, now);
                r = rn;
        }
        if (!e->live) {
                publish_status(e, now);
                wake_io(e);
                return 0;
        }

        struct sched_plan *plan;
        int ret = sched_plan(e->sched, now, &plan);
        if (ret < 0) {
                log_error_errno(ret, "engine: scheduling failed");
                publish_status(e, now);
                wake_io(e);
                return 0;
        }
        if (plan->n_entries == 0) {
                publish_status(e, now);
                wake_io(e);
                return 0;
        }

        uint64_t rows = 0;
        bool greedy = !e->greedy_off, device_sample = !e->sample_off;
        for (uint32_t i = 0; i < plan->n_entries; i++) {
                rows += plan->entries[i].req->kind == SCHED_KIND_SCORE ? plan->entries[i].n_tokens : 1;
                greedy = greedy && !entry_needs_logits(&plan->entries[i]);
                /* score rows need every logit on the host */
                device_sample = device_sample && plan->entries[i].req->kind != SCHED_KIND_SCORE;
        }
        device_sample = device_sample && !greedy;
        ret = ensure_buffers(e, plan->n_entries, greedy || device_sample ? 0 : rows);
        if (ret < 0) {
                fail_plan(e, plan, "out of memory for the step's logits");
                publish_status(e, now);
                wake_io(e);
                return 1;
        }
        uint64_t prefilled = 0;
        for (uint32_t i = 0; i < plan->n_entries; i++) {
                const struct sched_entry *en = &plan->entries[i];
                struct ereq *r = (struct ereq *) en->req;
                if (en->admitted && !r->admitted_ns)
                        r->admitted_ns = now;
                if (en->admitted)
                        r->snapshot_taken = false;
                if (r->s.kv.n_tokens < r->s.n_prompt)
                        prefilled += en->n_tokens;
                e->seqs[i] = (struct backend_seq) {
                        .tokens = r->s.tokens + r->s.kv.n_tokens,
                        .n_tokens = en->n_tokens,
                        .pos = r->s.kv.n_tokens,
                        .full_pages = r->s.kv.full_pages,
                        .n_full_pages = r->s.kv.n_full,
                        .sliding_pages = r->s.kv.ring,
                        .n_sliding_pages = e->cap.n_sliding_ring,
                        .all_logits = r->s.kind == SCHED_KIND_SCORE,
                };
        }
        struct backend_batch batch = { .seqs = e->seqs, .n_seqs = plan->n_entries };
        if (greedy) {
                ret = e->p.ops->forward_greedy(e->p.backend, &batch, e->greedy);
                if (ret == -EOPNOTSUPP) {
                        e->greedy_off = true;
                        greedy = false;
                }
        } else if (device_sample) {
                fill_device_samples(e, plan);
                ret = e->p.ops->forward_sample(e->p.backend, &batch, e->samples, e->sampled);
                if (ret == -EOPNOTSUPP) {
                        e->sample_off = true;
                        device_sample = false;
                }
        }
        /* a plain step, or one whose fast path the backend has just switched off (nothing ran) */
        if (!greedy && !device_sample) {
                ret = ensure_buffers(e, plan->n_entries, rows);
                if (ret == 0)
                        ret = e->p.ops->forward(e->p.backend, &batch, e->logits);
        }
        e->steps++;
        if (ret < 0) {
                log_error_errno(ret, "engine: backend step failed");
                fail_plan(e, plan, "the backend failed");
                if (ret == -EIO) {
                        /* submitters read it under the inbox lock */
                        pthread_mutex_lock(&e->in_lock);
                        e->fatal = ret;
                        pthread_mutex_unlock(&e->in_lock);
                        /* nothing will run again: answer everyone before the daemon exits */
                        while (e->live)
                                fail(e, e->live, ENGINE_ERROR_INTERNAL, "the device was lost");
                        publish_status(e, now);
                        wake_io(e);
                        return ret;
                }
                publish_status(e, now);
                wake_io(e);
                return 1;
        }

        if (greedy) {
                for (uint32_t i = 0; i < plan->n_entries; i++)
                        e->jobs[i] = (struct sample_job) { .res = { .token = e->greedy[i] } };
        } else if (device_sample) {
                for (uint32_t i = 0; i < plan->n_entries; i++)
                        e->jobs[i] = (struct sample_job) { .res = e->sampled[i] };
        } else {
                sample_step(e, plan);
        }
        now = engine_now_ns();
        uint64_t generated = 0, row = 0;
        for (uint32_t i = 0; i < plan->n_entries; i++) {
                const struct sched_entry *en = &plan->entries[i];
                uint32_t n_rows = en->req->kind == SCHED_KIND_SCORE ? en->n_tokens : 1;
                const float *logits = greedy || device_sample ? NULL : e->logits + row * e->p.vocab_size;
                process_entry(e, en, logits, &e->jobs[i], now, &generated);
                row += n_rows;
        }
        rate_add(e, now, generated, prefilled);
        publish_status(e, now);
        wake_io(e);
        return 1;
}

int engine_run_step(struct engine *e) {
        if (e->thread_started)
                return -EBUSY;
        if (e->fatal)
                return e->fatal;
        return engine_step(e, false);
}

/* ---- thread ---- */

static void *engine_thread(void *arg) {
        struct engine *e = arg;
        for (;;) {
                maybe_stall(e);
                atomic_store(&e->last_progress_ns, engine_now_ns());
                pthread_mutex_lock(&e->in_lock);
                bool stopping = e->stopping;
                pthread_mutex_unlock(&e->in_lock);
                if (stopping)
                        break;
                int r = engine_step(e, true);
                if (r < 0) {
                        log_error_errno(r, "engine: fatal backend error, stopping");
                        pthread_mutex_lock(&e->in_lock);
                        e->stopping = true;
                        pthread_mutex_unlock(&e->in_lock);
                        break;
                }
                if (r > 0)
                        continue;
                /* idle (or nothing schedulable): wait for the inbox; wake up regularly to stay
                 * visibly alive for the watchdog and to check deadlines */
                pthread_mutex_lock(&e->in_lock);
                if (!e->in_head && !e->stopping && !atomic_load(&e->stall_ms)) {
                        struct timespec ts;
                        clock_gettime(CLOCK_MONOTONIC, &ts);
                        long wait_ns = e->live ? 2000000L : 250000000L;
                        ts.tv_nsec += wait_ns;
                        if (ts.tv_nsec >= 1000000000L) {
                                ts.tv_sec++;
                                ts.tv_nsec -= 1000000000L;
                        }
                        pthread_cond_timedwait(&e->in_cond, &e->in_lock, &ts);
                }
                pthread_mutex_unlock(&e->in_lock);
        }
        return NULL;
}

int engine_start(struct engine *e) {
        if (e->thread_started)
                return -EALREADY;
        atomic_store(&e->last_progress_ns, engine_now_ns());
        int r = pthread_create(&e->thread, NULL, engine_thread, e);
        if (r != 0)
                return -r;
        e->thread_started = true;
        return 0;
}

void engine_stop(struct engine *e) {
        if (!e->thread_started)
                return;
        pthread_mutex_lock(&e->in_lock);
        e->stopping = true;
        pthread_cond_signal(&e->in_cond);
        pthread_mutex_unlock(&e->in_lock);
        pthread_join(e->thread, NULL);
        e->thread_started = false;
}

/* ---- life cycle ---- */

static uint32_t sample_threads(const struct engine_params *p) {
        if (p->sample_threads)
                return p->sample_threads;
        const char *env = getenv("GEMMA4D_SAMPLE_THREADS");
        if (env && *env) {
                char *end;
                unsigned long v = strtoul(env, &end, 10);
                if (*end == '\0' && v >= 1 && v <= 256)
                        return (uint32_t) v;
                log_warning("engine: GEMMA4D_SAMPLE_THREADS=%s is not a number 1..256; ignored", env);
        }
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        return n < 1 ? 1 : n > 8 ? 8 : (uint32_t) n;
}

int engine_new(const struct engine_params *p, struct engine **ret, char **reterr) {
        char *msg = NULL;
        int r = -EINVAL;
        if (!p || !p->ops || !p->backend || !p->ops->forward || !p->ops->get_capacity) {
                msg = strdup("engine: no backend");
                goto fail_early;
        }
        if (p->vocab_size == 0 || p->max_num_seqs == 0 || p->max_batched_tokens == 0 ||
            p->max_model_len == 0 || p->max_queue == 0 || p->n_stop_ids > ENGINE_MAX_STOP_IDS) {
                msg = strdup("engine: vocab_size, limits.max_num_seqs, limits.max_batched_tokens, "
                             "limits.max_model_len and limits.max_queue must be positive");
                goto fail_early;
        }
        struct engine *e = calloc(1, sizeof(*e));
        if (!e) {
                r = -ENOMEM;
                goto fail_early;
        }
        e->p = *p;
        e->greedy_off = !p->ops->forward_greedy;
        e->sample_off = !p->ops->forward_sample;
        if (e->p.score_chunk == 0)
                e->p.score_chunk = 64;
        pthread_mutex_init(&e->in_lock, NULL);
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&e->in_cond, &ca);
        pthread_condattr_destroy(&ca);
        pthread_mutex_init(&e->out_lock, NULL);
        pthread_mutex_init(&e->status_lock, NULL);
        e->start_ns = engine_now_ns();
        atomic_store(&e->last_progress_ns, e->start_ns);

        p->ops->get_capacity(p->backend, &e->cap);
        if (e->cap.page_size == 0 || e->cap.n_full_pages == 0 || e->cap.n_sliding_pages == 0 ||
            e->cap.n_sliding_ring < 2) {
                if (asprintf(&msg, "engine: backend %s reports no KV capacity (page_size %u, %u full "
                             "pages, %u sliding pages, ring %u)", p->ops->name ? p->ops->name : "?",
                             e->cap.page_size, e->cap.n_full_pages, e->cap.n_sliding_pages,
                             e->cap.n_sliding_ring) < 0)
                        msg = NULL;
                goto fail;
        }
        struct kv_pool_params pp = {
                .page_size = e->cap.page_size,
                .n_full_pages = e->cap.n_full_pages,
                .n_sliding_pages = e->cap.n_sliding_pages,
                .n_sliding_ring = e->cap.n_sliding_ring,
                .prefix_cache = p->prefix_cache,
        };
        uint64_t pool_tokens = (uint64_t) e->cap.n_full_pages * e->cap.page_size;
        e->max_len = p->max_model_len < pool_tokens ? p->max_model_len : (uint32_t) pool_tokens;
        struct sched_params sp = {
                .max_num_seqs = p->max_num_seqs,
                .max_batched_tokens = p->max_batched_tokens,
                .aging_ms = p->aging_ms,
                .score_chunk = e->p.score_chunk,
        };
        if ((r = kv_pool_new(&pp, &e->pool)) < 0 || (r = sched_new(&sp, e->pool, &e->sched)) < 0 ||
            (r = sample_pool_new(sample_threads(p), p->vocab_size, &e->samplers)) < 0) {
                msg = strdup("engine: out of memory");
                goto fail;
        }
        publish_status(e, e->start_ns);
        *ret = e;
        return 0;
fail:
        engine_free(e);
fail_early:
        if (reterr)
                *reterr = msg;
        else
                free(msg);
        return r < 0 ? r : -EINVAL;
}

struct engine *engine_free(struct engine *e) {
        if (!e)
                return NULL;
        engine_stop(e);
        uint64_t now = engine_now_ns();
        /* in-flight requests end as cancelled; submissions never applied are dropped */
        struct msg *m = e->in_head;
        while (m) {
                struct msg *next = m->next;
                if (m->type == MSG_SUBMIT)
                        ereq_free(m->req);
                free(m);
                m = next;
        }
        while (e->live)
                finish(e, e->live, ENGINE_FINISH_CANCELLED, now);
        for (struct engine_event *ev = e->out_head; ev;) {
                struct engine_event *next = ev->next;
                engine_event_free(ev);
                ev = next;
        }
        sched_free(e->sched);
        kv_pool_free(e->pool);
        sample_pool_free(e->samplers);
        free(e->jobs);
        free_logits(e);
        free(e->greedy);
        free(e->samples);
        free(e->sampled);
        free(e->seqs);
        pthread_mutex_destroy(&e->in_lock);
        pthread_cond_destroy(&e->in_cond);
        pthread_mutex_destroy(&e->out_lock);
        pthread_mutex_destroy(&e->status_lock);
        free(e);
        return NULL;
}
