/* SPDX-License-Identifier: Apache-2.0 */
/* KV page pool: unit cases and a randomized property test over >= 10,000 operations. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "server/kv_pool.h"

#define B 4
#define WINDOW 8
#define RING 3                  /* ceil(8/4) + 1 */
#define N_FULL 96
#define N_SLIDING 48
#define MAX_SEQS 20
#define MAX_LEN 160

static struct kv_pool *new_pool(bool prefix_cache, uint32_t n_full, uint32_t n_sliding) {
        struct kv_pool_params p = {
                .page_size = B, .n_full_pages = n_full, .n_sliding_pages = n_sliding,
                .n_sliding_ring = RING, .prefix_cache = prefix_cache,
        };
        struct kv_pool *pool = NULL;
        assert_int_equal(kv_pool_new(&p, &pool), 0);
        return pool;
}

static void assert_pool_ok(struct kv_pool *pool) {
        char err[256] = "";
        int r = kv_pool_check(pool, err, sizeof(err));
        if (r < 0)
                fail_msg("pool invariant: %s", err);
}

static void test_sliding_sizing(void **state) {
        /* Gemma 4: W = 1024, B = 16 -> ring 65; 64 sequences -> 8,320 pages */
        assert_int_equal(kv_pool_sliding_pages_for(1024, 16, 64), 2 * 65 * 64);
        assert_int_equal(kv_pool_sliding_pages_for(8, 4, 3), 2 * 3 * 3);
        assert_int_equal(kv_pool_sliding_pages_for(10, 4, 1), 2 * 4);
        assert_int_equal(kv_pool_sliding_pages_for(10, 0, 1), 0);
}

static void test_bad_params(void **state) {
        struct kv_pool_params p = { .page_size = 0, .n_full_pages = 4, .n_sliding_pages = 4, .n_sliding_ring = 3 };
        struct kv_pool *pool = NULL;
        assert_int_equal(kv_pool_new(&p, &pool), -EINVAL);
        p.page_size = 16;
        p.n_sliding_ring = 1;
        assert_int_equal(kv_pool_new(&p, &pool), -EINVAL);
        p.n_sliding_ring = 3;
        p.n_full_pages = 0;
        assert_int_equal(kv_pool_new(&p, &pool), -EINVAL);
        assert_null(pool);
}

/* Growth: full pages grow with length, sliding pages stop at the ring size and recycle in place. */
static void test_grow_and_ring(void **state) {
        struct kv_pool *pool = new_pool(false, N_FULL, N_SLIDING);
        struct kv_seq seq;
        kv_seq_init(&seq);
        int32_t toks[64];
        for (int i = 0; i < 64; i++)
                toks[i] = i % 7;
        uint32_t nf, ns;
        kv_pool_pages_needed(pool, &seq, 5, &nf, &ns);
        assert_int_equal(nf, 2);
        assert_int_equal(ns, 2);
        assert_int_equal(kv_pool_reserve(pool, &seq, 5), 0);
        assert_int_equal(kv_pool_commit(pool, &seq, toks, 5), 0);
        assert_int_equal(seq.n_full, 2);
        assert_int_equal(seq.n_ring_used, 2);
        uint32_t slot0 = seq.ring[0];
        /* 40 tokens: 10 full pages, ring stays at 3 and slot 0 keeps its page (overwritten in place) */
        for (uint32_t n = 5; n < 40; n += 5) {
                assert_int_equal(kv_pool_reserve(pool, &seq, 5), 0);
                assert_int_equal(kv_pool_commit(pool, &seq, toks, 5), 0);
        }
        assert_int_equal(seq.n_full, 10);
        assert_int_equal(seq.n_ring_used, RING);
        assert_int_equal(seq.ring[0], slot0);
        struct kv_pool_stats st;
        kv_pool_get_stats(pool, &st);
        assert_int_equal(st.space[KV_SPACE_FULL].used, 10);
        assert_int_equal(st.space[KV_SPACE_SLIDING].used, RING);
        /* commit past the reservation is refused */
        assert_int_equal(kv_pool_commit(pool, &seq, toks, 1), -EINVAL);
        assert_pool_ok(pool);
        kv_pool_release(pool, &seq, toks);
        kv_pool_get_stats(pool, &st);
        assert_int_equal(st.space[KV_SPACE_FULL].free, N_FULL);
        assert_int_equal(st.space[KV_SPACE_SLIDING].free, N_SLIDING);
        assert_pool_ok(pool);
        kv_seq_done(&seq);
        kv_pool_free(pool);
}

/* All or nothing: a reservation that does not fit changes nothing. */
static void test_reserve_enospc(void **state) {
        struct kv_pool *pool = new_pool(false, 4, N_SLIDING);
        struct kv_seq a, b;
        kv_seq_init(&a);
        kv_seq_init(&b);
        assert_int_equal(kv_pool_reserve(pool, &a, 12), 0);
        assert_int_equal(kv_pool_reserve(pool, &b, 8), -ENOSPC);
        assert_int_equal(b.n_full, 0);
        assert_int_equal(b.n_ring_used, 0);
        assert_int_equal(kv_pool_reserve(pool, &b, 4), 0);
        assert_int_equal(kv_pool_available(pool, KV_SPACE_FULL), 0);
        assert_pool_ok(pool);
        kv_pool_release(pool, &a, NULL);
        kv_pool_release(pool, &b, NULL);
        assert_int_equal(kv_pool_available(pool, KV_SPACE_FULL), 4);
        kv_seq_done(&a);
        kv_seq_done(&b);
        kv_pool_free(pool);
}

static void run_seq(struct kv_pool *pool, struct kv_seq *s, const int32_t *toks, uint32_t from, uint32_t to) {
        assert_int_equal(s->n_tokens, from);
        assert_int_equal(kv_pool_reserve(pool, s, to - from), 0);
        assert_int_equal(kv_pool_commit(pool, s, toks, to - from), 0);
}

/* Prefix cache: shared full pages, moved sliding pages, the hit rules, LRU eviction. */
static void test_prefix_hit(void **state) {
        struct kv_pool *pool = new_pool(true, N_FULL, N_SLIDING);
        int32_t toks[40];
        for (int i = 0; i < 40; i++)
                toks[i] = (i * 5 + 3) % 11;
        struct kv_seq a, b, c;
        kv_seq_init(&a);
        kv_seq_init(&b);
        kv_seq_init(&c);

        assert_int_equal(kv_pool_match_prefix(pool, &a, toks, 30), 0);
        run_seq(pool, &a, toks, 0, 30);
        /* while a is live, its sliding pages are not cached: no usable hit (full pages alone are not
         * enough) */
        assert_int_equal(kv_pool_match_prefix(pool, &b, toks, 30), 0);
        kv_pool_release(pool, &a, toks);
        assert_pool_ok(pool);

        /* after a's release: hit of the longest page multiple <= n - 1 covered by the cached ring */
        assert_int_equal(kv_pool_match_prefix(pool, &b, toks, 30), 28);
        assert_int_equal(b.n_tokens, 28);
        assert_int_equal(b.n_full, 7);
        assert_int_equal(b.n_ring_used, RING - 1);
        /* the moved sliding pages left the cache: a second identical request gets nothing now */
        assert_int_equal(kv_pool_match_prefix(pool, &c, toks, 30), 0);
        /* b shares full pages (ref 1 + cached), owns its ring pages */
        uint32_t ref;
        bool cached;
        assert_int_equal(kv_pool_page_info(pool, KV_SPACE_FULL, b.full_pages[0], &ref, &cached), 0);
        assert_int_equal(ref, 1);
        assert_true(cached);
        assert_int_equal(kv_pool_page_info(pool, KV_SPACE_SLIDING, b.ring[6 % RING], &ref, &cached), 0);
        assert_int_equal(ref, 1);
        assert_false(cached);
        run_seq(pool, &b, toks, 28, 30);
        assert_pool_ok(pool);

        /* a different continuation after page 3 matches only what the chain allows */
        int32_t other[40];
        memcpy(other, toks, sizeof(other));
        other[13] = 99;
        kv_pool_release(pool, &b, toks);
        assert_int_equal(kv_pool_match_prefix(pool, &c, other, 30), 0);    /* ring of page 2 not cached */

        /* short prompt: everything before m must be in the ring, so m <= RING - 1 pages */
        struct kv_seq d;
        kv_seq_init(&d);
        int32_t shortp[12] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 };
        run_seq(pool, &d, shortp, 0, 9);
        kv_pool_release(pool, &d, shortp);
        assert_int_equal(kv_pool_match_prefix(pool, &d, shortp, 12), 8);
        kv_pool_release(pool, &d, shortp);
        /* n - 1 limit: a prompt of exactly 8 tokens may reuse only 4 */
        assert_int_equal(kv_pool_match_prefix(pool, &d, shortp, 8), 4);
        kv_pool_release(pool, &d, shortp);
        assert_pool_ok(pool);

        /* eviction: everything cached can be evicted, and then nothing hits */
        kv_pool_evict(pool, KV_SPACE_FULL, UINT32_MAX);
        kv_pool_evict(pool, KV_SPACE_SLIDING, UINT32_MAX);
        assert_int_equal(kv_pool_match_prefix(pool, &d, shortp, 12), 0);
        struct kv_pool_stats st;
        kv_pool_get_stats(pool, &st);
        assert_int_equal(st.space[KV_SPACE_FULL].free, N_FULL);
        assert_int_equal(st.space[KV_SPACE_SLIDING].free, N_SLIDING);
        assert_true(st.hit_tokens == 28 + 8 + 4);
        assert_pool_ok(pool);
        kv_seq_done(&a);
        kv_seq_done(&b);
        kv_seq_done(&c);
        kv_seq_done(&d);
        kv_pool_free(pool);
}

/* Allocation reuses cached pages LRU-first when the free list is empty. */
static void test_lru_reuse(void **state) {
        struct kv_pool *pool = new_pool(true, 8, 8);
        int32_t t1[16], t2[16];
        for (int i = 0; i < 16; i++) {
                t1[i] = i;
                t2[i] = 100 + i;
        }
        struct kv_seq a;
        kv_seq_init(&a);
        run_seq(pool, &a, t1, 0, 16);
        kv_pool_release(pool, &a, t1);
        struct kv_pool_stats st;
        kv_pool_get_stats(pool, &st);
        assert_int_equal(st.space[KV_SPACE_FULL].cached, 4);
        assert_int_equal(st.space[KV_SPACE_FULL].free, 4);
        /* 8 pages needed: 4 free + 4 evicted */
        int32_t t3[32];
        for (int i = 0; i < 32; i++)
                t3[i] = 200 + i;
        run_seq(pool, &a, t3, 0, 32);
        kv_pool_get_stats(pool, &st);
        assert_int_equal(st.space[KV_SPACE_FULL].used, 8);
        assert_true(st.evictions >= 4);
        assert_pool_ok(pool);
        kv_pool_release(pool, &a, t3);
        (void) t2;
        kv_seq_done(&a);
        kv_pool_free(pool);
}

/* ---- property test ---- */

struct shadow_row {
        int64_t pos;
        uint64_t prefix;        /* hash of tokens[0..pos] */
};

struct pseq {
        bool live;
        struct kv_seq kv;
        int32_t toks[MAX_LEN];
        uint32_t n_toks;        /* tokens known (>= kv.n_tokens) */
};

struct world {
        struct kv_pool *pool;
        struct pseq seqs[MAX_SEQS];
        struct shadow_row full[N_FULL][B], sliding[N_SLIDING][B];
        int32_t bases[4][MAX_LEN];
        uint64_t rng;
        uint32_t hits, hit_tokens, enospc, evicted;
};

static uint32_t rnd(struct world *w, uint32_t n) {
        w->rng = w->rng * UINT64_C(6364136223846793005) + UINT64_C(1442695040888963407);
        return (uint32_t) ((w->rng >> 33) % n);
}

static uint64_t prefix_hash(const int32_t *t, uint32_t upto) {
        uint64_t h = 1469598103934665603u;
        for (uint32_t i = 0; i <= upto; i++)
                h = (h ^ (uint32_t) t[i]) * 1099511628211u;
        return h;
}

/* What a backend would do: write rows [from, to) into the seq's pages. */
static void shadow_write(struct world *w, struct pseq *s, uint32_t from, uint32_t to) {
        for (uint32_t q = from; q < to; q++) {
                struct shadow_row row = { .pos = q, .prefix = prefix_hash(s->toks, q) };
                w->full[s->kv.full_pages[q / B]][q % B] = row;
                w->sliding[s->kv.ring[(q / B) % RING]][q % B] = row;
        }
}

static void check_contents(struct world *w, struct pseq *s) {
        uint64_t h = 1469598103934665603u;
        for (uint32_t q = 0; q < s->kv.n_tokens; q++) {
                h = (h ^ (uint32_t) s->toks[q]) * 1099511628211u;
                const struct shadow_row *r = &w->full[s->kv.full_pages[q / B]][q % B];
                if (r->pos != q || r->prefix != h)
                        fail_msg("full page %u row %u: position %lld, expected %u of this prefix",
                                 s->kv.full_pages[q / B], q % B, (long long) r->pos, q);
                if (q + WINDOW >= s->kv.n_tokens + 1) {  /* inside the next query's window */
                        const struct shadow_row *sr = &w->sliding[s->kv.ring[(q / B) % RING]][q % B];
                        if (sr->pos != q || sr->prefix != h)
                                fail_msg("sliding ring row for position %u holds %lld", q, (long long) sr->pos);
                }
        }
}

static void check_refs(struct world *w) {
        static uint32_t want_full[N_FULL], want_sliding[N_SLIDING];
        memset(want_full, 0, sizeof(want_full));
        memset(want_sliding, 0, sizeof(want_sliding));
        for (int i = 0; i < MAX_SEQS; i++) {
                struct pseq *s = &w->seqs[i];
                if (!s->live)
                        continue;
                for (uint32_t k = 0; k < s->kv.n_full; k++)
                        want_full[s->kv.full_pages[k]]++;
                uint32_t used = 0;
                for (uint32_t k = 0; s->kv.ring && k < RING; k++)
                        if (s->kv.ring[k] != KV_PAGE_NONE) {
                                want_sliding[s->kv.ring[k]]++;
                                used++;
                        }
                assert_int_equal(used, s->kv.n_ring_used);
                assert_true(s->kv.n_ring_used <= RING);
        }
        struct kv_pool_stats st;
        kv_pool_get_stats(w->pool, &st);
        uint32_t used_full = 0, used_sliding = 0;
        for (uint32_t p = 0; p < N_FULL; p++) {
                uint32_t ref;
                bool cached;
                assert_int_equal(kv_pool_page_info(w->pool, KV_SPACE_FULL, p, &ref, &cached), 0);
                if (ref != want_full[p])
                        fail_msg("full page %u: ref %u, held by %u sequences", p, ref, want_full[p]);
                used_full += ref > 0;
        }
        for (uint32_t p = 0; p < N_SLIDING; p++) {
                uint32_t ref;
                bool cached;
                assert_int_equal(kv_pool_page_info(w->pool, KV_SPACE_SLIDING, p, &ref, &cached), 0);
                if (ref != want_sliding[p])
                        fail_msg("sliding page %u: ref %u, held by %u rings", p, ref, want_sliding[p]);
                if (ref > 1)
                        fail_msg("sliding page %u is in two rings", p);
                used_sliding += ref > 0;
        }
        assert_int_equal(st.space[KV_SPACE_FULL].used, used_full);
        assert_int_equal(st.space[KV_SPACE_SLIDING].used, used_sliding);
        for (int sp = 0; sp < _KV_SPACE_MAX; sp++)
                assert_int_equal(st.space[sp].used + st.space[sp].cached + st.space[sp].free, st.space[sp].total);
        assert_pool_ok(w->pool);
}

/* Grow a sequence by up to n tokens (its known tokens first, then random ones). */
static void grow(struct world *w, struct pseq *s, uint32_t n) {
        uint32_t from = s->kv.n_tokens;
        if (from + n > MAX_LEN)
                n = MAX_LEN - from;
        if (n == 0)
                return;
        while (s->n_toks < from + n)
                s->toks[s->n_toks++] = (int32_t) rnd(w, 3);
        struct kv_seq before = s->kv;
        int r = kv_pool_reserve(w->pool, &s->kv, n);
        if (r == -ENOSPC) {
                w->enospc++;
                assert_int_equal(s->kv.n_full, before.n_full);
                assert_int_equal(s->kv.n_ring_used, before.n_ring_used);
                return;
        }
        assert_int_equal(r, 0);
        shadow_write(w, s, from, from + n);
        assert_int_equal(kv_pool_commit(w->pool, &s->kv, s->toks, n), 0);
}

static void start(struct world *w, struct pseq *s) {
        s->live = true;
        int r = kv_pool_match_prefix(w->pool, &s->kv, s->toks, s->n_toks);
        assert_true(r >= 0);
        assert_true(r % B == 0 && (r == 0 || (uint32_t) r < s->n_toks));
        if (r > 0) {
                w->hits++;
                w->hit_tokens += r;
        }
        check_contents(w, s);
        uint32_t pending = s->n_toks - s->kv.n_tokens;
        grow(w, s, pending < 24 ? pending : 24);
}

static void stop(struct world *w, struct pseq *s, bool with_tokens) {
        kv_pool_release(w->pool, &s->kv, with_tokens ? s->toks : NULL);
        assert_int_equal(s->kv.n_full, 0);
        assert_int_equal(s->kv.n_ring_used, 0);
        s->live = false;
}

static void test_property(void **state) {
        struct world *w = calloc(1, sizeof(*w));
        assert_non_null(w);
        w->pool = new_pool(true, N_FULL, N_SLIDING);
        w->rng = 12345;
        for (int i = 0; i < MAX_SEQS; i++)
                kv_seq_init(&w->seqs[i].kv);
        for (int b = 0; b < 4; b++)
                for (int i = 0; i < MAX_LEN; i++)
                        w->bases[b][i] = (int32_t) rnd(w, 3);
        uint32_t counts[7] = { 0 }, done = 0;
        while (done < 10500) {
                done = counts[0] + counts[1] + counts[2] + counts[3] + counts[4] + counts[5] + counts[6];
                struct pseq *s = &w->seqs[rnd(w, MAX_SEQS)];
                uint32_t kind = rnd(w, 100);
                if (kind < 22) {                /* alloc: a new request from a shared base */
                        if (s->live)
                                continue;
                        const int32_t *base = w->bases[rnd(w, 4)];
                        uint32_t n = 1 + rnd(w, 60);
                        uint32_t keep = rnd(w, n + 1);
                        memcpy(s->toks, base, sizeof(int32_t) * keep);
                        for (uint32_t i = keep; i < n; i++)
                                s->toks[i] = (int32_t) rnd(w, 3);
                        s->n_toks = n;
                        start(w, s);
                        counts[0]++;
                } else if (kind < 55) {         /* extend */
                        if (!s->live)
                                continue;
                        grow(w, s, 1 + rnd(w, 12));
                        check_contents(w, s);
                        counts[1]++;
                } else if (kind < 67) {         /* share: a new request continuing another's prefix */
                        struct pseq *o = &w->seqs[rnd(w, MAX_SEQS)];
                        if (s->live || !o->live || o == s || o->kv.n_tokens == 0)
                                continue;
                        uint32_t k = 1 + rnd(w, o->kv.n_tokens);
                        memcpy(s->toks, o->toks, sizeof(int32_t) * k);
                        s->n_toks = k + rnd(w, 8);
                        for (uint32_t i = k; i < s->n_toks; i++)
                                s->toks[i] = (int32_t) rnd(w, 3);
                        if (s->n_toks == 0)
                                s->n_toks = 1;
                        start(w, s);
                        counts[2]++;
                } else if (kind < 82) {         /* free (finish or cancel; sometimes without caching) */
                        if (!s->live)
                                continue;
                        stop(w, s, rnd(w, 8) != 0);
                        counts[3]++;
                } else if (kind < 88) {         /* snapshot the ring (prefill done), then decode a bit */
                        if (!s->live || s->kv.n_tokens == 0)
                                continue;
                        kv_pool_snapshot_sliding(w->pool, &s->kv, s->toks);
                        for (uint32_t k = rnd(w, 8); k > 0; k--)
                                grow(w, s, 1);
                        check_contents(w, s);
                        counts[6]++;
                } else if (kind < 94) {         /* preempt and resume */
                        if (!s->live)
                                continue;
                        uint32_t had = s->kv.n_tokens;
                        stop(w, s, true);
                        s->n_toks = had > 0 ? had : s->n_toks;
                        start(w, s);
                        counts[4]++;
                } else {                        /* evict */
                        uint32_t n = rnd(w, 6);
                        w->evicted += kv_pool_evict(w->pool, rnd(w, 2) ? KV_SPACE_FULL : KV_SPACE_SLIDING, n);
                        counts[5]++;
                }
                check_refs(w);
        }
        for (int i = 0; i < MAX_SEQS; i++)
                if (w->seqs[i].live)
                        check_contents(w, &w->seqs[i]);
        for (int i = 0; i < MAX_SEQS; i++) {
                if (w->seqs[i].live)
                        stop(w, &w->seqs[i], true);
                kv_seq_done(&w->seqs[i].kv);
        }
        check_refs(w);
        struct kv_pool_stats st;
        kv_pool_get_stats(w->pool, &st);
        assert_int_equal(st.space[KV_SPACE_FULL].used, 0);
        assert_int_equal(st.space[KV_SPACE_SLIDING].used, 0);
        assert_int_equal(kv_pool_available(w->pool, KV_SPACE_FULL), N_FULL);
        assert_int_equal(kv_pool_available(w->pool, KV_SPACE_SLIDING), N_SLIDING);
        kv_pool_evict(w->pool, KV_SPACE_FULL, UINT32_MAX);
        kv_pool_evict(w->pool, KV_SPACE_SLIDING, UINT32_MAX);
        kv_pool_get_stats(w->pool, &st);
        assert_int_equal(st.space[KV_SPACE_FULL].free, N_FULL);
        assert_int_equal(st.space[KV_SPACE_SLIDING].free, N_SLIDING);
        print_message("# ops: alloc %u extend %u share %u free %u preempt %u evict %u snapshot %u; prefix hits "
                      "%u (%u tokens), ENOSPC %u, evicted %u\n", counts[0], counts[1], counts[2], counts[3],
                      counts[4], counts[5], counts[6], w->hits, w->hit_tokens, w->enospc, w->evicted);
        assert_true(done >= 10000);
        /* the test must actually exercise hits, exhaustion and eviction */
        assert_true(w->hits > 100);
        assert_true(w->enospc > 10);
        assert_true(st.evictions > 100);
        kv_pool_free(w->pool);
        free(w);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_bad_params),
                cmocka_unit_test(test_sliding_sizing),
                cmocka_unit_test(test_grow_and_ring),
                cmocka_unit_test(test_reserve_enospc),
                cmocka_unit_test(test_prefix_hit),
                cmocka_unit_test(test_lru_reuse),
                cmocka_unit_test(test_property),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
