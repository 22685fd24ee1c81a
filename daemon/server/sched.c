/* SPDX-License-Identifier: Apache-2.0 */
/* The priority scheduler (policy in sched.h). */
#include "server/sched.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct req_array {
        struct sched_req **v;
        uint32_t n, cap;
};

struct sched {
        struct sched_params p;
        struct kv_pool *pool;
        struct req_array waiting, running;
        uint64_t next_arrival_no;
        uint64_t preemptions;
        /* plan storage */
        struct sched_plan plan;
        uint32_t cap_entries, cap_preempted;
        struct req_array run_sorted, wait_sorted;
        uint32_t score_budget;          /* all-logits tokens left in the step being planned */
};

static int array_push(struct req_array *a, struct sched_req *r) {
        if (a->n == a->cap) {
                uint32_t cap = a->cap ? a->cap * 2 : 16;
                struct sched_req **v = realloc(a->v, sizeof(*v) * cap);
                if (!v)
                        return -ENOMEM;
                a->v = v;
                a->cap = cap;
        }
        a->v[a->n++] = r;
        return 0;
}

static bool array_remove(struct req_array *a, struct sched_req *r) {
        for (uint32_t i = 0; i < a->n; i++)
                if (a->v[i] == r) {
                        memmove(&a->v[i], &a->v[i + 1], sizeof(*a->v) * (a->n - i - 1));
                        a->n--;
                        return true;
                }
        return false;
}

static int array_copy(struct req_array *dst, const struct req_array *src) {
        if (dst->cap < src->n) {
                struct sched_req **v = realloc(dst->v, sizeof(*v) * (src->n ? src->n : 1));
                if (!v)
                        return -ENOMEM;
                dst->v = v;
                dst->cap = src->n;
        }
        if (src->n)
                memcpy(dst->v, src->v, sizeof(*dst->v) * src->n);
        dst->n = src->n;
        return 0;
}

int sched_new(const struct sched_params *p, struct kv_pool *pool, struct sched **ret) {
        if (!p || !pool || p->max_num_seqs == 0 || p->max_batched_tokens == 0 || p->score_chunk == 0)
                return -EINVAL;
        struct sched *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->p = *p;
        s->pool = pool;
        *ret = s;
        return 0;
}

struct sched *sched_free(struct sched *s) {
        if (!s)
                return NULL;
        while (s->running.n)
                sched_remove(s, s->running.v[0]);
        while (s->waiting.n)
                sched_remove(s, s->waiting.v[0]);
        free(s->waiting.v);
        free(s->running.v);
        free(s->run_sorted.v);
        free(s->wait_sorted.v);
        free(s->plan.entries);
        free(s->plan.preempted);
        free(s);
        return NULL;
}

int32_t sched_effective_priority(const struct sched *s, const struct sched_req *r, uint64_t now_ns) {
        int64_t eff = r->priority;
        if (s->p.aging_ms > 0 && now_ns > r->arrival_ns)
                eff -= (int64_t) ((now_ns - r->arrival_ns) / ((uint64_t) s->p.aging_ms * 1000000));
        return eff < SAMPLER_PRIORITY_MIN ? SAMPLER_PRIORITY_MIN : (int32_t) eff;
}

static inline bool key_before(const struct sched_req *a, const struct sched_req *b) {
        return a->key_eff < b->key_eff || (a->key_eff == b->key_eff && a->arrival_no < b->arrival_no);
}

static int cmp_key(const void *pa, const void *pb) {
        const struct sched_req *a = *(struct sched_req *const *) pa, *b = *(struct sched_req *const *) pb;
        return key_before(a, b) ? -1 : key_before(b, a) ? 1 : 0;
}

int sched_add(struct sched *s, struct sched_req *r, uint64_t now_ns) {
        if (r->state != SCHED_NEW || r->n_tokens == 0 || r->n_prompt == 0 || r->kv.n_tokens != 0)
                return -EINVAL;
        int ret = array_push(&s->waiting, r);
        if (ret < 0)
                return ret;
        r->state = SCHED_WAITING;
        r->arrival_ns = now_ns;
        r->arrival_no = s->next_arrival_no++;
        r->preempted = 0;
        r->scheduled = false;
        return 0;
}

void sched_remove(struct sched *s, struct sched_req *r) {
        if (r->state == SCHED_WAITING)
                array_remove(&s->waiting, r);
        else if (r->state == SCHED_RUNNING)
                array_remove(&s->running, r);
        kv_pool_release(s->pool, &r->kv, r->tokens);
        r->state = SCHED_REMOVED;
        r->scheduled = false;
}

uint32_t sched_n_waiting(const struct sched *s) {
        return s->waiting.n;
}

void sched_set_aging(struct sched *s, uint32_t aging_ms) {
        s->p.aging_ms = aging_ms;
}

uint32_t sched_n_running(const struct sched *s) {
        return s->running.n;
}

struct sched_req *sched_waiting_at(const struct sched *s, uint32_t i) {
        return i < s->waiting.n ? s->waiting.v[i] : NULL;
}

struct sched_req *sched_running_at(const struct sched *s, uint32_t i) {
        return i < s->running.n ? s->running.v[i] : NULL;
}

uint64_t sched_preemptions(const struct sched *s) {
        return s->preemptions;
}

uint32_t sched_queue_position(const struct sched *s, const struct sched_req *r, uint64_t now_ns) {
        int32_t eff = sched_effective_priority(s, r, now_ns);
        uint32_t pos = 0;
        for (uint32_t i = 0; i < s->waiting.n; i++) {
                const struct sched_req *o = s->waiting.v[i];
                if (o == r)
                        continue;
                int32_t oe = sched_effective_priority(s, o, now_ns);
                if (oe < eff || (oe == eff && o->arrival_no < r->arrival_no))
                        pos++;
        }
        return pos;
}

static int plan_push_preempted(struct sched *s, struct sched_req *r) {
        if (s->plan.n_preempted == s->cap_preempted) {
                uint32_t cap = s->cap_preempted ? s->cap_preempted * 2 : 16;
                struct sched_req **v = realloc(s->plan.preempted, sizeof(*v) * cap);
                if (!v)
                        return -ENOMEM;
                s->plan.preempted = v;
                s->cap_preempted = cap;
        }
        s->plan.preempted[s->plan.n_preempted++] = r;
        return 0;
}

static int preempt(struct sched *s, struct sched_req *r) {
        int ret = plan_push_preempted(s, r);
        if (ret < 0)
                return ret;
        ret = array_push(&s->waiting, r);
        if (ret < 0)
                return ret;
        array_remove(&s->running, r);
        kv_pool_release(s->pool, &r->kv, r->tokens);
        r->state = SCHED_WAITING;
        r->preempted++;
        s->preemptions++;
        return 0;
}

/* The least urgent request of the step's running set that is still running and not scheduled, and
 * ranks after `c`; with `strict`, only one whose effective priority is larger than c's. */
static struct sched_req *pick_victim(struct sched *s, const struct sched_req *c, bool strict) {
        for (uint32_t i = s->run_sorted.n; i-- > 0;) {
                struct sched_req *v = s->run_sorted.v[i];
                if (v == c || v->state != SCHED_RUNNING || v->scheduled)
                        continue;
                /* sorted: every earlier one ranks before this one */
                if (strict ? v->key_eff <= c->key_eff : !key_before(c, v))
                        return NULL;
                return v;
        }
        return NULL;
}

static uint32_t chunk_for(const struct sched *s, const struct sched_req *r, uint32_t budget) {
        uint32_t pending = r->n_tokens - r->kv.n_tokens;
        uint32_t n = pending < budget ? pending : budget;
        if (r->kind == SCHED_KIND_SCORE && n > s->score_budget)
                n = s->score_budget;
        return n;
}

static int plan_add(struct sched *s, struct sched_req *r, uint32_t n, bool admitted) {
        if (s->plan.n_entries == s->cap_entries) {
                uint32_t cap = s->cap_entries ? s->cap_entries * 2 : 16;
                struct sched_entry *v = realloc(s->plan.entries, sizeof(*v) * cap);
                if (!v)
                        return -ENOMEM;
                s->plan.entries = v;
                s->cap_entries = cap;
        }
        s->plan.entries[s->plan.n_entries++] = (struct sched_entry) {
                .req = r, .n_tokens = n, .admitted = admitted,
        };
        s->plan.n_batched_tokens += n;
        if (r->kind == SCHED_KIND_SCORE)
                s->score_budget -= n;
        r->scheduled = true;
        return 0;
}

/* Reserve pages for n tokens of r, preempting victims as needed. Returns 0, -ENOSPC when r must wait
 * (no victim left), or another negative errno. */
static int reserve_with_preemption(struct sched *s, struct sched_req *r, uint32_t n, bool waiting) {
        for (;;) {
                int ret = kv_pool_reserve(s->pool, &r->kv, n);
                if (ret != -ENOSPC)
                        return ret;
                struct sched_req *v = pick_victim(s, r, waiting);
                if (!v)
                        return -ENOSPC;
                ret = preempt(s, v);
                if (ret < 0)
                        return ret;
        }
}

int sched_plan(struct sched *s, uint64_t now_ns, struct sched_plan **ret) {
        int r;
        s->plan.n_entries = 0;
        s->plan.n_preempted = 0;
        s->plan.n_batched_tokens = 0;
        for (uint32_t i = 0; i < s->running.n; i++) {
                s->running.v[i]->key_eff = sched_effective_priority(s, s->running.v[i], now_ns);
                s->running.v[i]->scheduled = false;
        }
        for (uint32_t i = 0; i < s->waiting.n; i++) {
                s->waiting.v[i]->key_eff = sched_effective_priority(s, s->waiting.v[i], now_ns);
                s->waiting.v[i]->scheduled = false;
        }
        if ((r = array_copy(&s->run_sorted, &s->running)) < 0 ||
            (r = array_copy(&s->wait_sorted, &s->waiting)) < 0)
                return r;
        if (s->run_sorted.n > 1)
                qsort(s->run_sorted.v, s->run_sorted.n, sizeof(*s->run_sorted.v), cmp_key);
        if (s->wait_sorted.n > 1)
                qsort(s->wait_sorted.v, s->wait_sorted.n, sizeof(*s->wait_sorted.v), cmp_key);

        uint32_t budget = s->p.max_batched_tokens;
        uint32_t i = 0, j = 0;
        s->score_budget = s->p.score_chunk;
        bool admit = true;
        while (budget > 0 && (i < s->run_sorted.n || (admit && j < s->wait_sorted.n))) {
                bool take_waiting = admit && j < s->wait_sorted.n &&
                        (i >= s->run_sorted.n || key_before(s->wait_sorted.v[j], s->run_sorted.v[i]));
                if (!take_waiting) {
                        struct sched_req *c = s->run_sorted.v[i++];
                        if (c->state != SCHED_RUNNING)
                                continue;       /* preempted earlier in this step */
                        uint32_t n = chunk_for(s, c, budget);
                        if (n == 0)
                                continue;
                        r = reserve_with_preemption(s, c, n, false);
                        if (r == -ENOSPC) {
                                /* the least urgent of all and still short: step aside */
                                if ((r = preempt(s, c)) < 0)
                                        return r;
                                continue;
                        }
                        if (r < 0)
                                return r;
                        if ((r = plan_add(s, c, n, false)) < 0)
                                return r;
                        budget -= n;
                        continue;
                }

                struct sched_req *c = s->wait_sorted.v[j++];
                if (c->state != SCHED_WAITING || chunk_for(s, c, budget) == 0)
                        continue;       /* a score request over this step's all-logits budget */
                if (s->running.n >= s->p.max_num_seqs) {
                        struct sched_req *v = pick_victim(s, c, true);
                        if (!v) {
                                admit = false;
                                continue;
                        }
                        if ((r = preempt(s, v)) < 0)
                                return r;
                }
                if (c->kv.n_tokens == 0 && c->kind == SCHED_KIND_GENERATE) {
                        r = kv_pool_match_prefix(s->pool, &c->kv, c->tokens, c->n_tokens);
                        if (r < 0)
                                return r;
                        if (!c->admitted_once)
                                c->cached_tokens = (uint32_t) r;
                }
                uint32_t n = chunk_for(s, c, budget);
                r = reserve_with_preemption(s, c, n, true);
                if (r == -ENOSPC) {
                        /* give back what the prefix match took; the cache keeps it */
                        kv_pool_release(s->pool, &c->kv, c->tokens);
                        admit = false;
                        continue;
                }
                if (r < 0)
                        return r;
                array_remove(&s->waiting, c);
                if ((r = array_push(&s->running, c)) < 0)
                        return r;
                c->state = SCHED_RUNNING;
                c->admitted_once = true;
                if ((r = plan_add(s, c, n, true)) < 0)
                        return r;
                budget -= n;
        }
        *ret = &s->plan;
        return 0;
}
