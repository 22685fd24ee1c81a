/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * The paged KV pool: which page ids each sequence uses, in the two page spaces of backend.h.
 *
 *  - Full pages: page i of a sequence holds positions [i*B, (i+1)*B). They grow with the sequence.
 *  - Sliding pages: a ring of n_ring = ceil(window/B)+1 slots; page index i lives in slot i % n_ring and
 *    is overwritten in place when the sequence reaches page index i + n_ring. A sequence holds at most
 *    n_ring sliding pages.
 *
 * Prefix cache. Every completed page index i of a sequence gets the chained hash
 *     h_i = H(h_{i-1}, tokens[i*B .. (i+1)*B))        (h_{-1} = a fixed seed)
 * which names the whole token prefix up to the page's end.
 *  - A full page is registered under h_i as soon as it is complete; it is shared (reference-counted) by
 *    every sequence whose prefix matches, and when its last reference goes it stays cached,
 *    reclaimable, in LRU order.
 *  - A sliding page is registered (a "snapshot") when its sequence finishes its prefill
 *    (kv_pool_snapshot_sliding) and when it releases it (finish, cancel, preemption), while it still
 *    holds a complete page index. A hit MOVES an unreferenced snapshot into the new sequence's ring: ring
 *    pages are overwritten in place, and the backend reads a slot's history before writing its new rows
 *    in the same step, so a ring page is never shared between sequences. A sequence that still holds
 *    a snapshot page replaces it with a fresh page when it reaches that slot at a page boundary (a
 *    decode step), so the snapshot survives in the cache; a longer chunk takes it back out of the cache.
 *  A prefix of P = m*B tokens is usable only when full pages 0..m-1 AND the sliding pages of the last
 *  n_ring-1 page indexes before m (all of them when m < n_ring) are cached: the sliding layers' KV of the
 *  last window depends on the whole prefix through the stack of sliding layers, so it cannot be
 *  recomputed from the window alone (docs/scheduler.md, "Prefix cache and sliding layers").
 *
 * Free pages: a page with no reference is either free or cached; allocation takes a free page first,
 * else evicts the least recently released cached page. "Available" = free + cached.
 *
 * Not thread-safe: the engine thread owns the pool.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KV_PAGE_NONE UINT32_MAX

enum kv_space {
        KV_SPACE_FULL = 0,
        KV_SPACE_SLIDING = 1,
        _KV_SPACE_MAX,
};

struct kv_pool_params {
        uint32_t page_size;             /* B */
        uint32_t n_full_pages;
        uint32_t n_sliding_pages;
        uint32_t n_sliding_ring;        /* ceil(window / B) + 1, >= 2 */
        bool prefix_cache;
};

/* A sequence's page tables. Owned by the caller (embedded in a request), changed only through the pool.
 * The arrays are in the form backend_seq wants. */
struct kv_seq {
        uint32_t *full_pages;           /* [n_full] */
        uint32_t n_full, cap_full;
        uint32_t *ring;                 /* [n_ring] slots, KV_PAGE_NONE when empty */
        uint32_t n_ring_used;           /* occupied slots */
        uint32_t n_tokens;              /* positions whose KV is written (committed) */
        uint64_t *hashes;               /* [n_hashed] chained hashes h_i (capacity cap_full) */
        uint32_t n_hashed;              /* complete pages hashed so far */
};

struct kv_space_stats {
        uint32_t total, used, cached, free;     /* used: referenced; cached: unreferenced but cached */
};

struct kv_pool_stats {
        struct kv_space_stats space[_KV_SPACE_MAX];
        uint64_t lookups;               /* kv_pool_match_prefix calls */
        uint64_t lookup_tokens;         /* prompt tokens offered to them */
        uint64_t hit_tokens;            /* tokens they skipped */
        uint64_t evictions;
};

struct kv_pool;

int kv_pool_new(const struct kv_pool_params *p, struct kv_pool **ret);
struct kv_pool *kv_pool_free(struct kv_pool *pool);
void kv_pool_get_params(const struct kv_pool *pool, struct kv_pool_params *ret);

void kv_seq_init(struct kv_seq *seq);
/* Frees the arrays; the sequence must have been released (n_full == 0 and n_ring_used == 0). */
void kv_seq_done(struct kv_seq *seq);

/* For an empty sequence about to compute tokens[0, n): take the longest usable cached prefix, at most
 * n - 1 tokens (the last token must be computed to get logits). Sets seq->n_tokens and returns the
 * number of tokens skipped (a multiple of B, possibly 0), or a negative errno. */
int kv_pool_match_prefix(struct kv_pool *pool, struct kv_seq *seq, const int32_t *tokens, uint32_t n);

/* Pages needed in each space to grow seq by n_new positions. */
void kv_pool_pages_needed(const struct kv_pool *pool, const struct kv_seq *seq, uint32_t n_new,
                          uint32_t *ret_full, uint32_t *ret_sliding);
/* Make the page tables cover positions [0, seq->n_tokens + n_new). All or nothing: -ENOSPC (and no
 * change) when either space lacks free + cached pages. */
int kv_pool_reserve(struct kv_pool *pool, struct kv_seq *seq, uint32_t n_new);
/* After the backend wrote positions [seq->n_tokens, seq->n_tokens + n_new): advance, and register the
 * full pages completed (tokens = the sequence's whole token array, at least n_tokens + n_new long). */
int kv_pool_commit(struct kv_pool *pool, struct kv_seq *seq, const int32_t *tokens, uint32_t n_new);
/* Register the sequence's intact, complete ring pages in the prefix cache while it keeps them (called
 * when its prefill is done, so that a later prompt extending this one can skip it). */
void kv_pool_snapshot_sliding(struct kv_pool *pool, struct kv_seq *seq, const int32_t *tokens);
/* Drop every page of seq (complete pages stay cached when the prefix cache is on); seq becomes empty.
 * tokens: the sequence's token array (at least seq->n_tokens long), to register its sliding pages. */
void kv_pool_release(struct kv_pool *pool, struct kv_seq *seq, const int32_t *tokens);

/* Evict up to n cached, unreferenced pages of a space (LRU first); returns how many. */
uint32_t kv_pool_evict(struct kv_pool *pool, enum kv_space space, uint32_t n);
/* Available pages (free + cached) of a space. */
uint32_t kv_pool_available(const struct kv_pool *pool, enum kv_space space);

void kv_pool_get_stats(const struct kv_pool *pool, struct kv_pool_stats *ret);
/* Reference count and cached flag of one page (tests). */
int kv_pool_page_info(const struct kv_pool *pool, enum kv_space space, uint32_t page, uint32_t *ret_ref,
                      bool *ret_cached);
/* Check every internal invariant (lists, counts, hash table); 0 or -EUCLEAN with a message in err. */
int kv_pool_check(const struct kv_pool *pool, char *err, size_t errsize);

/* A sliding space that leaves room for prefix-cache snapshots next to max_num_seqs running rings: twice
 * max_num_seqs * (ceil(window / B) + 1) pages. For backend_params.n_sliding_pages. */
uint32_t kv_pool_sliding_pages_for(uint32_t window, uint32_t page_size, uint32_t max_num_seqs);

/* Chained page hash, exposed for tests: h = H(parent, tokens[0, n)). */
uint64_t kv_hash_page(uint64_t parent, const int32_t *tokens, uint32_t n);
#define KV_HASH_SEED UINT64_C(0x6a09e667f3bcc908)
