/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * A deterministic stand-in for a compute backend, for the engine tests. It keeps "KV" rows in the page
 * ids the engine hands it, like a real backend, and its logits depend only on what it reads back:
 *
 *   state(p) = H(state(p-1), token(p))        stored in the full row of position p (and the sliding row)
 *   logits(p)[v] = F(H(state(p) ^ window(p), v)),   window(p) = sum of G(token(q), q) over the sliding
 *                                                    window, read from the ring pages
 *
 * so greedy output is a pure function of the token sequence, whatever the batching, chunking,
 * preemption or prefix caching, provided the engine passes the right pages. Every step it CHECKS the
 * engine's tables: full pages cover [0, pos + n), every history row read holds the expected position
 * and state, ring slots hold the right positions and agree with the full rows, no page is written by two
 * sequences of one step, and ring pages are not shared. A violated check fails the step with -EPROTO
 * and records a message.
 */
#include <stdbool.h>
#include <stdint.h>

#include "backend.h"

struct fake_params {
        uint32_t page_size;
        uint32_t n_full_pages, n_sliding_pages;
        uint32_t window;                /* sliding window in tokens; ring = ceil(window/B)+1 */
        uint32_t vocab;
        /* step of forward() that fails with fail_error (0 = never), for error-path tests */
        uint64_t fail_at_step;
        int fail_error;
        uint32_t step_delay_us;         /* sleep per step */
        /* Benchmark mode: no checks, logits = a fixed random row plus a bump at a token derived from the
         * prefix state (still a pure function of the tokens); forward time is accumulated. */
        bool fast;
        /* forward_greedy answers -EOPNOTSUPP (a backend that switched it off) */
        bool no_greedy;
        /* host_alloc declines (returns NULL), as a backend without page-locked memory to give */
        bool no_host_alloc;
};

extern const struct backend_ops fake_backend_ops;

int fake_backend_new(const struct fake_params *p, struct backend **ret);
/* First check failure ("" when none). */
const char *fake_backend_error(struct backend *b);
uint64_t fake_backend_steps(struct backend *b);
uint64_t fake_backend_tokens(struct backend *b);       /* tokens computed (prefill + decode) */
uint32_t fake_backend_max_seqs(struct backend *b);     /* most sequences seen in one step */
void fake_backend_set_fail(struct backend *b, uint64_t at_step, int error);
uint64_t fake_backend_forward_ns(struct backend *b);   /* time spent inside forward() */
uint64_t fake_backend_greedy_steps(struct backend *b); /* steps run through forward_greedy */
/* host_alloc blocks handed out and not yet given back; total handed out */
uint64_t fake_backend_host_live(struct backend *b);
uint64_t fake_backend_host_allocs(struct backend *b);

/* The greedy continuation the fake model gives a prompt, computed directly (no engine): the oracle for
 * "same output as run alone". Stops at a stop id (included in out) or after max_tokens. */
uint32_t fake_reference_greedy(const struct fake_params *p, const int32_t *prompt, uint32_t n_prompt,
                               const int32_t *stop_ids, uint32_t n_stop, uint32_t max_tokens, int32_t *out);
