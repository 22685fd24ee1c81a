/* SPDX-License-Identifier: Apache-2.0 */
/* Page accounting for the two KV page spaces and the prefix cache (see kv_pool.h). */
#include "server/kv_pool.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NONE KV_PAGE_NONE

struct kv_page {
        uint32_t ref;
        uint32_t prev, next;    /* free list (next only) or LRU list of cached idle pages */
        uint32_t hnext;         /* hash bucket chain */
        uint64_t hash, parent;
        bool cached;            /* in the hash table */
};

struct kv_space_state {
        uint32_t n;
        struct kv_page *pages;
        int32_t *tokens;        /* [n * B]: the tokens of each cached page, to verify lookups */
        uint32_t *buckets;
        uint32_t bucket_mask;
        uint32_t free_head;
        uint32_t lru_head, lru_tail;
        uint32_t n_free, n_lru;
};

struct kv_pool {
        struct kv_pool_params p;
        struct kv_space_state sp[_KV_SPACE_MAX];
        uint64_t lookups, lookup_tokens, hit_tokens, evictions;
        uint32_t *scratch;      /* match_prefix: sliding page ids */
        uint32_t scratch_cap;
};

static inline uint64_t mix64(uint64_t z) {
        z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
        return z ^ (z >> 31);
}

uint32_t kv_pool_sliding_pages_for(uint32_t window, uint32_t page_size, uint32_t max_num_seqs) {
        if (page_size == 0)
                return 0;
        uint64_t ring = ((uint64_t) window + page_size - 1) / page_size + 1;
        uint64_t n = 2 * ring * max_num_seqs;
        return n > UINT32_MAX - 1 ? UINT32_MAX - 1 : (uint32_t) n;
}

uint64_t kv_hash_page(uint64_t parent, const int32_t *tokens, uint32_t n) {
        uint64_t h = mix64(parent ^ ((uint64_t) n << 32));
        for (uint32_t i = 0; i < n; i++)
                h = mix64(h + (uint32_t) tokens[i] + UINT64_C(0x9E3779B97F4A7C15));
        return h;
}

static int space_init(struct kv_space_state *s, uint32_t n, uint32_t page_size) {
        s->n = n;
        s->pages = calloc(n ? n : 1, sizeof(*s->pages));
        s->tokens = malloc(sizeof(int32_t) * page_size * (n ? n : 1));
        uint32_t nb = 16;
        while (nb < n && nb < (UINT32_C(1) << 31))
                nb <<= 1;
        s->buckets = malloc(sizeof(uint32_t) * nb);
        if (!s->pages || !s->tokens || !s->buckets)
                return -ENOMEM;
        s->bucket_mask = nb - 1;
        for (uint32_t i = 0; i < nb; i++)
                s->buckets[i] = NONE;
        /* free list in ascending id order */
        s->free_head = n ? 0 : NONE;
        for (uint32_t i = 0; i < n; i++) {
                s->pages[i] = (struct kv_page) { .prev = NONE, .next = i + 1 < n ? i + 1 : NONE,
                                                 .hnext = NONE };
        }
        s->n_free = n;
        s->lru_head = s->lru_tail = NONE;
        s->n_lru = 0;
        return 0;
}

static void space_done(struct kv_space_state *s) {
        free(s->pages);
        free(s->tokens);
        free(s->buckets);
}

int kv_pool_new(const struct kv_pool_params *p, struct kv_pool **ret) {
        if (!p || p->page_size == 0 || p->page_size > 65536 || p->n_sliding_ring < 2 ||
            p->n_full_pages == 0 || p->n_sliding_pages == 0 ||
            p->n_full_pages >= NONE || p->n_sliding_pages >= NONE)
                return -EINVAL;
        struct kv_pool *pool = calloc(1, sizeof(*pool));
        if (!pool)
                return -ENOMEM;
        pool->p = *p;
        int r = space_init(&pool->sp[KV_SPACE_FULL], p->n_full_pages, p->page_size);
        if (r == 0)
                r = space_init(&pool->sp[KV_SPACE_SLIDING], p->n_sliding_pages, p->page_size);
        if (r < 0) {
                kv_pool_free(pool);
                return r;
        }
        *ret = pool;
        return 0;
}

struct kv_pool *kv_pool_free(struct kv_pool *pool) {
        if (!pool)
                return NULL;
        for (int i = 0; i < _KV_SPACE_MAX; i++)
                space_done(&pool->sp[i]);
        free(pool->scratch);
        free(pool);
        return NULL;
}

void kv_pool_get_params(const struct kv_pool *pool, struct kv_pool_params *ret) {
        *ret = pool->p;
}

/* ---- lists and hash table of one space ---- */

static void lru_remove(struct kv_space_state *s, uint32_t id) {
        struct kv_page *pg = &s->pages[id];
        if (pg->prev != NONE)
                s->pages[pg->prev].next = pg->next;
        else
                s->lru_head = pg->next;
        if (pg->next != NONE)
                s->pages[pg->next].prev = pg->prev;
        else
                s->lru_tail = pg->prev;
        pg->prev = pg->next = NONE;
        s->n_lru--;
}

static void lru_append(struct kv_space_state *s, uint32_t id) {
        struct kv_page *pg = &s->pages[id];
        pg->next = NONE;
        pg->prev = s->lru_tail;
        if (s->lru_tail != NONE)
                s->pages[s->lru_tail].next = id;
        else
                s->lru_head = id;
        s->lru_tail = id;
        s->n_lru++;
}

static void free_push(struct kv_space_state *s, uint32_t id) {
        struct kv_page *pg = &s->pages[id];
        pg->prev = NONE;
        pg->next = s->free_head;
        s->free_head = id;
        s->n_free++;
}

static void hash_remove(struct kv_space_state *s, uint32_t id) {
        struct kv_page *pg = &s->pages[id];
        uint32_t *link = &s->buckets[pg->hash & s->bucket_mask];
        while (*link != id)
                link = &s->pages[*link].hnext;
        *link = pg->hnext;
        pg->hnext = NONE;
        pg->cached = false;
}

/* A cached page for this prefix (only an unreferenced one when idle_only). */
static uint32_t hash_lookup(const struct kv_space_state *s, uint32_t page_size, uint64_t hash,
                            uint64_t parent, const int32_t *tokens, bool idle_only) {
        for (uint32_t id = s->buckets[hash & s->bucket_mask]; id != NONE; id = s->pages[id].hnext) {
                const struct kv_page *pg = &s->pages[id];
                if (idle_only && pg->ref > 0)
                        continue;
                if (pg->hash == hash && pg->parent == parent &&
                    memcmp(&s->tokens[(uint64_t) id * page_size], tokens, sizeof(int32_t) * page_size) == 0)
                        return id;
        }
        return NONE;
}

/* Register page id under hash. Full pages are shared, so a prefix is cached once (false when another
 * page has it); sliding pages are moved to one consumer each, so copies are all kept (unique false). */
static bool hash_insert(struct kv_space_state *s, uint32_t page_size, uint32_t id, uint64_t hash,
                        uint64_t parent, const int32_t *tokens, bool unique) {
        if (unique && hash_lookup(s, page_size, hash, parent, tokens, false) != NONE)
                return false;
        struct kv_page *pg = &s->pages[id];
        pg->hash = hash;
        pg->parent = parent;
        pg->cached = true;
        memcpy(&s->tokens[(uint64_t) id * page_size], tokens, sizeof(int32_t) * page_size);
        uint32_t b = hash & s->bucket_mask;
        pg->hnext = s->buckets[b];
        s->buckets[b] = id;
        return true;
}

/* One page with ref 1: a free one, else the least recently used cached one. NONE when exhausted. */
static uint32_t page_alloc(struct kv_pool *pool, struct kv_space_state *s) {
        uint32_t id = s->free_head;
        if (id != NONE) {
                s->free_head = s->pages[id].next;
                s->n_free--;
        } else if (s->lru_head != NONE) {
                id = s->lru_head;
                lru_remove(s, id);
                hash_remove(s, id);
                pool->evictions++;
        } else {
                return NONE;
        }
        struct kv_page *pg = &s->pages[id];
        pg->prev = pg->next = NONE;
        pg->ref = 1;
        return id;
}

static void page_ref(struct kv_space_state *s, uint32_t id) {
        if (s->pages[id].ref++ == 0)
                lru_remove(s, id);      /* only cached pages are found with ref 0 */
}

static void page_unref(struct kv_space_state *s, uint32_t id) {
        struct kv_page *pg = &s->pages[id];
        if (--pg->ref > 0)
                return;
        if (pg->cached)
                lru_append(s, id);
        else
                free_push(s, id);
}

/* ---- sequences ---- */

void kv_seq_init(struct kv_seq *seq) {
        *seq = (struct kv_seq) { 0 };
}

void kv_seq_done(struct kv_seq *seq) {
        free(seq->full_pages);
        free(seq->ring);
        free(seq->hashes);
        kv_seq_init(seq);
}

static int seq_ensure(const struct kv_pool *pool, struct kv_seq *seq, uint32_t n_pages) {
        if (!seq->ring) {
                seq->ring = malloc(sizeof(uint32_t) * pool->p.n_sliding_ring);
                if (!seq->ring)
                        return -ENOMEM;
                for (uint32_t i = 0; i < pool->p.n_sliding_ring; i++)
                        seq->ring[i] = NONE;
        }
        if (n_pages <= seq->cap_full)
                return 0;
        uint32_t cap = seq->cap_full ? seq->cap_full : 8;
        while (cap < n_pages)
                cap *= 2;
        uint32_t *fp = realloc(seq->full_pages, sizeof(uint32_t) * cap);
        if (!fp)
                return -ENOMEM;
        seq->full_pages = fp;
        uint64_t *h = realloc(seq->hashes, sizeof(uint64_t) * cap);
        if (!h)
                return -ENOMEM;
        seq->hashes = h;
        seq->cap_full = cap;
        return 0;
}

static inline uint32_t pages_for(const struct kv_pool *pool, uint64_t n_tokens) {
        return (uint32_t) ((n_tokens + pool->p.page_size - 1) / pool->p.page_size);
}

static inline uint32_t min_u32(uint32_t a, uint32_t b) {
        return a < b ? a : b;
}

int kv_pool_match_prefix(struct kv_pool *pool, struct kv_seq *seq, const int32_t *tokens, uint32_t n) {
        const uint32_t B = pool->p.page_size, R = pool->p.n_sliding_ring;
        if (seq->n_tokens != 0 || seq->n_full != 0 || seq->n_ring_used != 0 || (n > 0 && !tokens))
                return -EINVAL;
        pool->lookups++;
        pool->lookup_tokens += n;
        if (!pool->p.prefix_cache || n < 2)
                return 0;
        uint32_t max_pages = (n - 1) / B;
        if (max_pages == 0)
                return 0;
        int r = seq_ensure(pool, seq, max_pages);
        if (r < 0)
                return r;
        if (pool->scratch_cap < max_pages) {
                uint32_t *s = realloc(pool->scratch, sizeof(uint32_t) * max_pages);
                if (!s)
                        return -ENOMEM;
                pool->scratch = s;
                pool->scratch_cap = max_pages;
        }
        struct kv_space_state *fs = &pool->sp[KV_SPACE_FULL], *ss = &pool->sp[KV_SPACE_SLIDING];

        /* Full pages: the longest chain of cached prefixes. Sliding pages alongside, and the largest
         * m whose last min(m, R-1) sliding pages are all cached. */
        uint64_t parent = KV_HASH_SEED;
        uint32_t run = 0, best_m = 0;
        for (uint32_t i = 0; i < max_pages; i++) {
                const int32_t *pt = tokens + (uint64_t) i * B;
                uint64_t h = kv_hash_page(parent, pt, B);
                uint32_t id = hash_lookup(fs, B, h, parent, pt, false);
                if (id == NONE)
                        break;
                seq->full_pages[i] = id;
                seq->hashes[i] = h;
                /* a snapshot still in its owner's ring (ref > 0) cannot be moved */
                pool->scratch[i] = hash_lookup(ss, B, h, parent, pt, true);
                run = pool->scratch[i] != NONE ? run + 1 : 0;
                if (run >= min_u32(i + 1, R - 1))
                        best_m = i + 1;
                parent = h;
        }
        if (best_m == 0)
                return 0;

        for (uint32_t i = 0; i < best_m; i++)
                page_ref(fs, seq->full_pages[i]);
        uint32_t first = best_m > R - 1 ? best_m - (R - 1) : 0;
        for (uint32_t i = first; i < best_m; i++) {
                uint32_t id = pool->scratch[i];
                /* moved, not shared: out of the cache and into this ring */
                hash_remove(ss, id);
                page_ref(ss, id);
                seq->ring[i % R] = id;
                seq->n_ring_used++;
        }
        seq->n_full = best_m;
        seq->n_hashed = best_m;
        seq->n_tokens = best_m * B;
        pool->hit_tokens += seq->n_tokens;
        return (int) seq->n_tokens;
}

void kv_pool_pages_needed(const struct kv_pool *pool, const struct kv_seq *seq, uint32_t n_new,
                          uint32_t *ret_full, uint32_t *ret_sliding) {
        const uint32_t B = pool->p.page_size, R = pool->p.n_sliding_ring;
        uint32_t pages = pages_for(pool, (uint64_t) seq->n_tokens + n_new);
        uint32_t ring = min_u32(pages, R);
        uint32_t replace = 0;
        if (n_new > 0 && seq->ring && seq->n_tokens % B == 0) {
                /* a snapshot page in the slot of the new page is replaced, not overwritten */
                uint32_t id = seq->ring[(seq->n_tokens / B) % R];
                replace = id != NONE && pool->sp[KV_SPACE_SLIDING].pages[id].cached;
        }
        *ret_full = pages > seq->n_full ? pages - seq->n_full : 0;
        *ret_sliding = (ring > seq->n_ring_used ? ring - seq->n_ring_used : 0) + replace;
}

uint32_t kv_pool_available(const struct kv_pool *pool, enum kv_space space) {
        const struct kv_space_state *s = &pool->sp[space];
        return s->n_free + s->n_lru;
}

int kv_pool_reserve(struct kv_pool *pool, struct kv_seq *seq, uint32_t n_new) {
        const uint32_t B = pool->p.page_size, R = pool->p.n_sliding_ring;
        uint64_t total = (uint64_t) seq->n_tokens + n_new;
        if (total > (uint64_t) UINT32_MAX - B)
                return -E2BIG;
        uint32_t need_full, need_sliding;
        kv_pool_pages_needed(pool, seq, n_new, &need_full, &need_sliding);
        if (need_full > kv_pool_available(pool, KV_SPACE_FULL) ||
            need_sliding > kv_pool_available(pool, KV_SPACE_SLIDING))
                return -ENOSPC;
        uint32_t pages = pages_for(pool, total);
        int r = seq_ensure(pool, seq, pages);
        if (r < 0)
                return r;
        while (seq->n_full < pages)
                seq->full_pages[seq->n_full++] = page_alloc(pool, &pool->sp[KV_SPACE_FULL]);
        if (n_new > 0) {
                /* Every page index touched by the new positions needs its slot. A slot already held
                 * is overwritten in place (this sequence owns it alone), unless its page is also a
                 * cached snapshot: then it is replaced by a fresh page when no position of this step
                 * needs the history it holds (the step starts exactly at that page index, as a decode
                 * step at a page boundary does), else it leaves the cache. */
                struct kv_space_state *ss = &pool->sp[KV_SPACE_SLIDING];
                uint32_t start = seq->n_tokens / B, first = start, last = pages - 1;
                bool aligned = seq->n_tokens % B == 0;
                if (last - first + 1 > R)
                        first = last + 1 - R;
                for (uint32_t j = first; j <= last; j++) {
                        uint32_t slot = j % R, id = seq->ring[slot];
                        if (id == NONE) {
                                seq->ring[slot] = page_alloc(pool, ss);
                                seq->n_ring_used++;
                        } else if (ss->pages[id].cached) {
                                if (j == start && aligned) {
                                        page_unref(ss, id);
                                        seq->ring[slot] = page_alloc(pool, ss);
                                } else {
                                        hash_remove(ss, id);
                                }
                        }
                }
        }
        return 0;
}

int kv_pool_commit(struct kv_pool *pool, struct kv_seq *seq, const int32_t *tokens, uint32_t n_new) {
        const uint32_t B = pool->p.page_size;
        uint64_t total = (uint64_t) seq->n_tokens + n_new;
        if (total > (uint64_t) seq->n_full * B || (n_new > 0 && !tokens))
                return -EINVAL;
        seq->n_tokens = (uint32_t) total;
        struct kv_space_state *fs = &pool->sp[KV_SPACE_FULL];
        while ((uint64_t) (seq->n_hashed + 1) * B <= total) {
                uint32_t i = seq->n_hashed;
                uint64_t parent = i ? seq->hashes[i - 1] : KV_HASH_SEED;
                const int32_t *pt = tokens + (uint64_t) i * B;
                uint64_t h = kv_hash_page(parent, pt, B);
                seq->hashes[i] = h;
                seq->n_hashed++;
                uint32_t id = seq->full_pages[i];
                if (pool->p.prefix_cache && !fs->pages[id].cached)
                        hash_insert(fs, B, id, h, parent, pt, true);
        }
        return 0;
}

void kv_pool_snapshot_sliding(struct kv_pool *pool, struct kv_seq *seq, const int32_t *tokens) {
        const uint32_t B = pool->p.page_size, R = pool->p.n_sliding_ring;
        struct kv_space_state *ss = &pool->sp[KV_SPACE_SLIDING];
        if (!pool->p.prefix_cache || !tokens || seq->n_tokens == 0 || !seq->ring)
                return;
        /* the complete page indexes still intact in the ring: the last R of them */
        uint32_t last = (seq->n_tokens - 1) / B;
        uint32_t first = last + 1 > R ? last + 1 - R : 0;
        for (uint32_t j = first; j <= last && j < seq->n_hashed; j++) {
                uint32_t id = seq->ring[j % R];
                if (id == NONE || ss->pages[id].cached)
                        continue;
                uint64_t parent = j ? seq->hashes[j - 1] : KV_HASH_SEED;
                hash_insert(ss, B, id, seq->hashes[j], parent, tokens + (uint64_t) j * B, false);
        }
}

void kv_pool_release(struct kv_pool *pool, struct kv_seq *seq, const int32_t *tokens) {
        const uint32_t B = pool->p.page_size, R = pool->p.n_sliding_ring;
        struct kv_space_state *fs = &pool->sp[KV_SPACE_FULL], *ss = &pool->sp[KV_SPACE_SLIDING];

        kv_pool_snapshot_sliding(pool, seq, tokens);
        if (seq->ring) {
                uint32_t start = seq->n_tokens > 0 ? ((seq->n_tokens - 1) / B + 1) % R : 0;
                for (uint32_t k = 0; k < R; k++) {
                        uint32_t slot = (start + k) % R;
                        if (seq->ring[slot] != NONE) {
                                page_unref(ss, seq->ring[slot]);
                                seq->ring[slot] = NONE;
                        }
                }
        }
        seq->n_ring_used = 0;
        /* Full pages: the tail first, so the shared head of a prefix is evicted last. */
        for (uint32_t i = seq->n_full; i-- > 0;)
                page_unref(fs, seq->full_pages[i]);
        seq->n_full = 0;
        seq->n_tokens = 0;
        seq->n_hashed = 0;
}

uint32_t kv_pool_evict(struct kv_pool *pool, enum kv_space space, uint32_t n) {
        struct kv_space_state *s = &pool->sp[space];
        uint32_t done = 0;
        while (done < n && s->lru_head != NONE) {
                uint32_t id = s->lru_head;
                lru_remove(s, id);
                hash_remove(s, id);
                free_push(s, id);
                pool->evictions++;
                done++;
        }
        return done;
}

void kv_pool_get_stats(const struct kv_pool *pool, struct kv_pool_stats *ret) {
        struct kv_pool_stats st = {
                .lookups = pool->lookups,
                .lookup_tokens = pool->lookup_tokens,
                .hit_tokens = pool->hit_tokens,
                .evictions = pool->evictions,
        };
        for (int i = 0; i < _KV_SPACE_MAX; i++) {
                const struct kv_space_state *s = &pool->sp[i];
                st.space[i] = (struct kv_space_stats) {
                        .total = s->n,
                        .free = s->n_free,
                        .cached = s->n_lru,
                        .used = s->n - s->n_free - s->n_lru,
                };
        }
        *ret = st;
}

int kv_pool_page_info(const struct kv_pool *pool, enum kv_space space, uint32_t page, uint32_t *ret_ref,
                      bool *ret_cached) {
        if ((unsigned) space >= _KV_SPACE_MAX || page >= pool->sp[space].n)
                return -EINVAL;
        *ret_ref = pool->sp[space].pages[page].ref;
        *ret_cached = pool->sp[space].pages[page].cached;
        return 0;
}

#define CHECK(cond, ...) do {                                   \
                if (!(cond)) {                                  \
                        if (err && errsize)                     \
                                snprintf(err, errsize, __VA_ARGS__); \
                        r = -EUCLEAN;                           \
                        goto out;                               \
                }                                               \
        } while (0)

int kv_pool_check(const struct kv_pool *pool, char *err, size_t errsize) {
        int r = 0;
        uint8_t *seen = NULL;
        for (int sp = 0; sp < _KV_SPACE_MAX; sp++) {
                const struct kv_space_state *s = &pool->sp[sp];
                free(seen);
                seen = calloc(s->n ? s->n : 1, 1);
                CHECK(seen, "out of memory");
                uint32_t count = 0;
                for (uint32_t id = s->free_head; id != NONE; id = s->pages[id].next) {
                        CHECK(id < s->n && !seen[id], "space %d: free list broken at page %u", sp, id);
                        seen[id] = 1;
                        CHECK(s->pages[id].ref == 0 && !s->pages[id].cached,
                              "space %d: free page %u has ref %u cached %d", sp, id, s->pages[id].ref,
                              s->pages[id].cached);
                        count++;
                }
                CHECK(count == s->n_free, "space %d: free count %u, list holds %u", sp, s->n_free, count);
                count = 0;
                uint32_t prev = NONE;
                for (uint32_t id = s->lru_head; id != NONE; id = s->pages[id].next) {
                        CHECK(id < s->n && !seen[id], "space %d: LRU list broken at page %u", sp, id);
                        seen[id] = 2;
                        CHECK(s->pages[id].prev == prev, "space %d: LRU back link of page %u", sp, id);
                        CHECK(s->pages[id].ref == 0 && s->pages[id].cached,
                              "space %d: LRU page %u has ref %u cached %d", sp, id, s->pages[id].ref,
                              s->pages[id].cached);
                        prev = id;
                        count++;
                }
                CHECK(prev == s->lru_tail, "space %d: LRU tail", sp);
                CHECK(count == s->n_lru, "space %d: LRU count %u, list holds %u", sp, s->n_lru, count);
                uint32_t n_cached = 0;
                for (uint32_t id = 0; id < s->n; id++) {
                        if (!seen[id])
                                CHECK(s->pages[id].ref > 0, "space %d: page %u is in no list and has no "
                                      "reference (leaked)", sp, id);
                        n_cached += s->pages[id].cached;
                }
                uint32_t in_table = 0;
                for (uint32_t b = 0; b <= s->bucket_mask; b++)
                        for (uint32_t id = s->buckets[b]; id != NONE; id = s->pages[id].hnext) {
                                CHECK(id < s->n && s->pages[id].cached &&
                                      (s->pages[id].hash & s->bucket_mask) == b,
                                      "space %d: hash bucket %u holds page %u wrongly", sp, b, id);
                                CHECK(++in_table <= s->n, "space %d: hash chain loops", sp);
                        }
                CHECK(in_table == n_cached, "space %d: %u cached pages, %u in the table", sp, n_cached,
                      in_table);
        }
out:
        free(seen);
        return r;
}
