/* SPDX-License-Identifier: Apache-2.0 */
#pragma once
/*
 * The running daemon: the libuv I/O thread (listening sockets, connections, framing, request handling,
 * events back to clients) plus its lifecycle (boot thread, sd_notify, signals, watchdog, drain, reload).
 * The engine thread (daemon/server/engine.h) does the computing; the two meet only in the engine's
 * queues and a uv_async_t. See docs/ARCHITECTURE.md.
 */
#include "config.h"

/* Re-read the configuration for SIGHUP exactly as at start (file, instance overlay, flags). Returns 0 and
 * fills *ret, or a negative errno after logging why. */
typedef int (*daemon_reload_fn)(void *userdata, struct gemma4d_config *ret);

/* Runs until SIGTERM/SIGINT (after draining) or a fatal error. Returns the process exit status. */
int daemon_run(const struct gemma4d_config *cfg, daemon_reload_fn reload, void *reload_userdata);
