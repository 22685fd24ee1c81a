/* SPDX-License-Identifier: Apache-2.0 */
/* Scheduler policy: priority order, FCFS, aging, chunked prefill, preemption under slots and pages. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "server/sched.h"

#define B 4
#define RING 3
#define MS 1000000ull

struct world {
        struct kv_pool *pool;
        struct sched *sched;
};

struct req {
        struct sched_req s;
        int32_t toks[512];
};

static void world_init(struct world *w, uint32_t n_full, uint32_t n_sliding, uint32_t max_seqs, uint32_t budget,
                       uint32_t aging_ms) {
        struct kv_pool_params pp = { .page_size = B, .n_full_pages = n_full, .n_sliding_pages = n_sliding,
                                     .n_sliding_ring = RING, .prefix_cache = true };
        assert_int_equal(kv_pool_new(&pp, &w->pool), 0);
        struct sched_params sp = { .max_num_seqs = max_seqs, .max_batched_tokens = budget,
                                   .aging_ms = aging_ms, .score_chunk = 8 };
        assert_int_equal(sched_new(&sp, w->pool, &w->sched), 0);
}

static void world_done(struct world *w) {
        w->sched = sched_free(w->sched);
        char err[256];
        assert_int_equal(kv_pool_check(w->pool, err, sizeof(err)), 0);
        struct kv_pool_stats st;
        kv_pool_get_stats(w->pool, &st);
        assert_int_equal(st.space[KV_SPACE_FULL].used, 0);
        assert_int_equal(st.space[KV_SPACE_SLIDING].used, 0);
        w->pool = kv_pool_free(w->pool);
}

static void req_init(struct req *r, int32_t prio, uint32_t n_prompt, int32_t salt) {
        memset(r, 0, sizeof(*r));
        for (uint32_t i = 0; i < n_prompt; i++)
                r->toks[i] = (int32_t) ((i * 13 + (uint32_t) salt * 101) % 50);
        r->s.tokens = r->toks;
        r->s.n_prompt = r->s.n_tokens = n_prompt;
        r->s.priority = prio;
        kv_seq_init(&r->s.kv);
}

static void req_done(struct world *w, struct req *r) {
        if (r->s.state == SCHED_WAITING || r->s.state == SCHED_RUNNING)
                sched_remove(w->sched, &r->s);
        kv_seq_done(&r->s.kv);
}

/* Run one step as the engine would: commit, and append a token to every sequence that caught up. */
static struct sched_plan *step(struct world *w, uint64_t now) {
        struct sched_plan *plan;
        assert_int_equal(sched_plan(w->sched, now, &plan), 0);
        uint32_t total = 0;
        for (uint32_t i = 0; i < plan->n_entries; i++) {
                struct sched_req *r = plan->entries[i].req;
                assert_true(plan->entries[i].n_tokens > 0);
                assert_int_equal(kv_pool_commit(w->pool, &r->kv, r->tokens, plan->entries[i].n_tokens), 0);
                if (r->kv.n_tokens == r->n_tokens) {
                        assert_true(r->n_tokens < 512);
                        r->tokens[r->n_tokens] = (int32_t) (r->n_tokens % 50);
                        r->n_tokens++;
                }
                total += plan->entries[i].n_tokens;
        }
        assert_int_equal(total, plan->n_batched_tokens);
        assert_true(sched_n_running(w->sched) <= 64);
        return plan;
}

static bool in_plan(const struct sched_plan *plan, const struct req *r) {
        for (uint32_t i = 0; i < plan->n_entries; i++)
                if (plan->entries[i].req == &r->s)
                        return true;
        return false;
}

static void test_priority_order(void **state) {
        struct world w;
        world_init(&w, 64, 64, 1, 256, 0);
        struct req a, b, c;
        req_init(&a, 5, 10, 1);
        req_init(&b, -3, 10, 2);
        req_init(&c, 0, 10, 3);
        assert_int_equal(sched_add(w.sched, &a.s, 0), 0);
        assert_int_equal(sched_add(w.sched, &b.s, 0), 0);
        assert_int_equal(sched_add(w.sched, &c.s, 0), 0);
        assert_int_equal(sched_queue_position(w.sched, &a.s, 0), 2);
        assert_int_equal(sched_queue_position(w.sched, &b.s, 0), 0);
        struct sched_plan *p = step(&w, 1);
        assert_int_equal(p->n_entries, 1);
        assert_ptr_equal(p->entries[0].req, &b.s);
        assert_true(p->entries[0].admitted);
        /* equal or lower urgency never preempts by slots: b keeps running */
        p = step(&w, 2);
        assert_ptr_equal(p->entries[0].req, &b.s);
        assert_int_equal(p->n_preempted, 0);
        sched_remove(w.sched, &b.s);
        p = step(&w, 3);
        assert_ptr_equal(p->entries[0].req, &c.s);
        sched_remove(w.sched, &c.s);
        p = step(&w, 4);
        assert_ptr_equal(p->entries[0].req, &a.s);
        req_done(&w, &a);
        req_done(&w, &b);
        req_done(&w, &c);
        world_done(&w);
}

static void test_fcfs(void **state) {
        struct world w;
        world_init(&w, 64, 64, 1, 256, 1000);
        struct req r[4];
        for (int i = 0; i < 4; i++) {
                req_init(&r[i], 2, 6, i);
                assert_int_equal(sched_add(w.sched, &r[i].s, (uint64_t) i), 0);
        }
        for (int i = 0; i < 4; i++) {
                struct sched_plan *p = step(&w, 10);
                assert_int_equal(p->n_entries, 1);
                assert_ptr_equal(p->entries[0].req, &r[i].s);
                sched_remove(w.sched, &r[i].s);
        }
        for (int i = 0; i < 4; i++)
                req_done(&w, &r[i]);
        world_done(&w);
}

static void test_aging(void **state) {
        for (int aging = 0; aging < 2; aging++) {
                struct world w;
                world_init(&w, 64, 64, 1, 256, aging ? 100 : 0);
                struct req low, high;
                req_init(&low, 10, 6, 1);
                req_init(&high, 0, 6, 2);
                assert_int_equal(sched_add(w.sched, &low.s, 0), 0);
                assert_int_equal(sched_add(w.sched, &high.s, 1400 * MS), 0);
                /* after 1.4 s with aging 100 ms, the low request's effective priority is 10 - 14 = -4 */
                assert_int_equal(sched_effective_priority(w.sched, &low.s, 1400 * MS), aging ? -4 : 10);
                assert_int_equal(sched_effective_priority(w.sched, &high.s, 1400 * MS), 0);
                struct sched_plan *p = step(&w, 1400 * MS);
                assert_ptr_equal(p->entries[0].req, aging ? &low.s : &high.s);
                /* clamp at -20 */
                assert_int_equal(sched_effective_priority(w.sched, &low.s, 100000 * MS), aging ? -20 : 10);
                req_done(&w, &low);
                req_done(&w, &high);
                world_done(&w);
        }
}

static void test_chunked_prefill(void **state) {
        struct world w;
        world_init(&w, 64, 64, 4, 16, 0);
        struct req a, b;
        req_init(&a, 0, 40, 1);
        req_init(&b, 1, 5, 2);
        assert_int_equal(sched_add(w.sched, &a.s, 0), 0);
        assert_int_equal(sched_add(w.sched, &b.s, 0), 0);
        struct sched_plan *p = step(&w, 1);
        /* a (more urgent) takes the whole budget; b waits for budget, not for a slot */
        assert_int_equal(p->n_entries, 1);
        assert_int_equal(p->entries[0].n_tokens, 16);
        p = step(&w, 2);
        assert_int_equal(p->entries[0].n_tokens, 16);
        p = step(&w, 3);
        assert_int_equal(p->n_entries, 2);
        assert_int_equal(p->entries[0].n_tokens, 8);    /* a's last chunk */
        assert_int_equal(p->entries[1].n_tokens, 5);    /* b's whole prompt in the rest */
        assert_int_equal(p->n_batched_tokens, 13);
        p = step(&w, 4);
        assert_int_equal(p->n_entries, 2);
        assert_int_equal(p->entries[0].n_tokens, 1);    /* decoding */
        assert_int_equal(p->entries[1].n_tokens, 1);
        req_done(&w, &a);
        req_done(&w, &b);
        world_done(&w);
}

static void test_preempt_slots(void **state) {
        struct world w;
        world_init(&w, 64, 64, 2, 256, 0);
        struct req a, b, c, d;
        req_init(&a, 5, 6, 1);
        req_init(&b, 5, 6, 2);
        req_init(&c, -5, 6, 3);
        req_init(&d, 5, 6, 4);
        assert_int_equal(sched_add(w.sched, &a.s, 0), 0);
        assert_int_equal(sched_add(w.sched, &b.s, 1), 0);
        struct sched_plan *p = step(&w, 2);
        assert_int_equal(p->n_entries, 2);
        step(&w, 3);
        assert_int_equal(sched_add(w.sched, &c.s, 4), 0);
        assert_int_equal(sched_add(w.sched, &d.s, 4), 0);
        p = step(&w, 5);
        /* c preempts the least urgent running request: b (same priority as a, later) */
        assert_int_equal(p->n_preempted, 1);
        assert_ptr_equal(p->preempted[0], &b.s);
        assert_int_equal(b.s.state, SCHED_WAITING);
        assert_int_equal(b.s.preempted, 1);
        assert_int_equal(b.s.kv.n_full, 0);
        assert_true(in_plan(p, &a) && in_plan(p, &c) && !in_plan(p, &d));
        assert_int_equal(sched_preemptions(w.sched), 1);
        /* d (priority 5) does not preempt a (priority 5) */
        p = step(&w, 6);
        assert_int_equal(p->n_preempted, 0);
        /* when c finishes, b (earlier than d) resumes and keeps its generated token */
        uint32_t b_tokens = b.s.n_tokens;
        assert_int_equal(b_tokens, 8);
        sched_remove(w.sched, &c.s);
        p = step(&w, 7);
        assert_true(in_plan(p, &b));
        assert_false(in_plan(p, &d));
        assert_true(b.s.n_tokens >= b_tokens);
        req_done(&w, &a);
        req_done(&w, &b);
        req_done(&w, &c);
        req_done(&w, &d);
        world_done(&w);
}

static void test_preempt_pages(void **state) {
        struct world w;
        /* 14 full pages = 56 tokens; plenty of slots */
        world_init(&w, 14, 16, 8, 64, 0);
        struct req a, c;
        req_init(&a, 5, 36, 1);
        req_init(&c, -5, 20, 2);
        assert_int_equal(sched_add(w.sched, &a.s, 0), 0);
        step(&w, 1);
        for (int i = 0; i < 3; i++)
                step(&w, 2 + (uint64_t) i);
        assert_int_equal(a.s.kv.n_tokens, 39);  /* 10 pages held */
        assert_int_equal(sched_add(w.sched, &c.s, 10), 0);
        struct sched_plan *p = step(&w, 11);
        assert_int_equal(p->n_preempted, 1);
        assert_ptr_equal(p->preempted[0], &a.s);
        assert_true(in_plan(p, &c));
        assert_int_equal(a.s.preempted, 1);
        uint32_t a_known = a.s.n_tokens;
        /* c finishes; a resumes through the prefix cache (its pages were cached on preemption) */
        sched_remove(w.sched, &c.s);
        p = step(&w, 12);
        assert_true(in_plan(p, &a));
        assert_true(p->entries[0].admitted);
        assert_int_equal(p->entries[0].n_tokens, a_known - 36);  /* only the tail is recomputed */
        assert_int_equal(a.s.cached_tokens, 0);                   /* first admission had no hit */
        req_done(&w, &a);
        req_done(&w, &c);
        world_done(&w);
}

/* Two running requests of one priority outgrow the pool: the later one steps aside, not the earlier. */
static void test_running_out_of_pages(void **state) {
        struct world w;
        world_init(&w, 6, 16, 8, 64, 0);
        struct req a, b;
        req_init(&a, 0, 9, 1);
        req_init(&b, 0, 9, 2);
        assert_int_equal(sched_add(w.sched, &a.s, 0), 0);
        assert_int_equal(sched_add(w.sched, &b.s, 1), 0);
        uint32_t preempted_b = 0;
        for (int i = 0; i < 12; i++) {
                struct sched_plan *p = step(&w, 2 + (uint64_t) i);
                for (uint32_t k = 0; k < p->n_preempted; k++) {
                        assert_ptr_equal(p->preempted[k], &b.s);
                        preempted_b++;
                }
                assert_true(in_plan(p, &a));
        }
        assert_true(preempted_b >= 1);
        assert_int_equal(a.s.preempted, 0);
        req_done(&w, &a);
        req_done(&w, &b);
        world_done(&w);
}

/* Waiting requests are admitted in order: one that cannot get pages blocks later ones in that step. */
static void test_head_of_line(void **state) {
        struct world w;
        world_init(&w, 8, 16, 8, 256, 0);
        struct req big, run, small;
        req_init(&run, -1, 20, 1);
        req_init(&big, 0, 20, 2);
        req_init(&small, 1, 3, 3);
        assert_int_equal(sched_add(w.sched, &run.s, 0), 0);
        step(&w, 1);
        assert_int_equal(sched_add(w.sched, &big.s, 2), 0);
        assert_int_equal(sched_add(w.sched, &small.s, 2), 0);
        struct sched_plan *p = step(&w, 3);
        /* big needs 5 pages, 2 are free; run is more urgent so is not preempted; small is not
         * admitted ahead of big */
        assert_int_equal(p->n_entries, 1);
        assert_true(in_plan(p, &run));
        assert_int_equal(big.s.kv.n_full, 0);   /* the failed admission released its prefix match */
        sched_remove(w.sched, &run.s);
        p = step(&w, 4);
        assert_true(in_plan(p, &big) && in_plan(p, &small));
        req_done(&w, &run);
        req_done(&w, &big);
        req_done(&w, &small);
        world_done(&w);
}

static void test_score_budget(void **state) {
        struct world w;
        world_init(&w, 64, 64, 8, 256, 0);
        struct req a, b;
        req_init(&a, 0, 20, 1);
        req_init(&b, 0, 20, 2);
        a.s.kind = SCHED_KIND_SCORE;
        b.s.kind = SCHED_KIND_SCORE;
        assert_int_equal(sched_add(w.sched, &a.s, 0), 0);
        assert_int_equal(sched_add(w.sched, &b.s, 0), 0);
        struct sched_plan *p;
        assert_int_equal(sched_plan(w.sched, 1, &p), 0);
        /* score_chunk 8 all-logits tokens per step in total */
        assert_int_equal(p->n_entries, 1);
        assert_int_equal(p->entries[0].n_tokens, 8);
        assert_int_equal(kv_pool_commit(w.pool, &a.s.kv, a.s.tokens, 8), 0);
        req_done(&w, &a);
        req_done(&w, &b);
        world_done(&w);
}

/* Regression: a running request short of pages never preempts a more urgent one that merely got no
 * tokens in this step (a score request behind an even more urgent one's all-logits budget). */
static void test_victim_ranks_after(void **state) {
        struct world w;
        world_init(&w, 6, 16, 8, 256, 0);
        struct req a, b, s1;
        req_init(&a, 0, 40, 1);
        req_init(&b, 5, 8, 2);
        req_init(&s1, -10, 20, 3);
        a.s.kind = SCHED_KIND_SCORE;
        s1.s.kind = SCHED_KIND_SCORE;
        assert_int_equal(sched_add(w.sched, &a.s, 0), 0);
        assert_int_equal(sched_add(w.sched, &b.s, 0), 0);
        struct sched_plan *p = step(&w, 1);
        assert_true(in_plan(p, &a) && in_plan(p, &b));
        assert_int_equal(sched_add(w.sched, &s1.s, 2), 0);
        p = step(&w, 3);
        assert_true(in_plan(p, &s1));
        assert_false(in_plan(p, &a));           /* no all-logits budget left, still running */
        assert_int_equal(a.s.state, SCHED_RUNNING);
        assert_int_equal(p->n_preempted, 1);
        assert_ptr_equal(p->preempted[0], &b.s);        /* b steps aside; a is more urgent */
        req_done(&w, &a);
        req_done(&w, &b);
        req_done(&w, &s1);
        world_done(&w);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_priority_order),
                cmocka_unit_test(test_fcfs),
                cmocka_unit_test(test_aging),
                cmocka_unit_test(test_chunked_prefill),
                cmocka_unit_test(test_preempt_slots),
                cmocka_unit_test(test_preempt_pages),
                cmocka_unit_test(test_running_out_of_pages),
                cmocka_unit_test(test_head_of_line),
                cmocka_unit_test(test_score_budget),
                cmocka_unit_test(test_victim_ranks_after),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
