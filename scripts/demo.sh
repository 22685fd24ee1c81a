#!/usr/bin/env bash
# The main job: install, build, write the embedded demo model (a tiny Gemma 4 architecture model with
# RANDOM weights and the real 262,144-token vocabulary), start gemma4d on the CPU backend and open
# `gemma4ctl chat`. When standard input is not a terminal, one prompt is read from it, answered, and the
# script exits. The daemon stops when the chat ends.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/cuda/bin:$PATH"

scripts/setup.sh
[ -f build/build.ninja ] || meson setup build -Dcuda=auto
ninja -C build

model=.deps/demo-model
if [ ! -f "$model/config.json" ] || [ ! -f "$model/tokenizer.json" ]; then
        echo "demo: writing the demo model (random weights) to $model"
        build/tools/mkmodel/gemma4-mkmodel --preset demo --out "$model" \
                --tokenizer .deps/fixtures/tokenizer.json
fi

rundir=$(mktemp -d /tmp/gemma4d-demo.XXXXXX)
sock="$rundir/gemma4d.sock"
# A demo-sized KV pool: 8 sequences of up to 4096 tokens.
build/daemon/gemma4d --backend cpu --model "$model" --socket "$sock" \
        --set limits.max_model_len=4096 --set limits.max_num_seqs=8 --set limits.max_batched_tokens=1024 \
        >"$rundir/gemma4d.log" 2>&1 &
daemon=$!
cleanup() {
        kill -TERM "$daemon" 2>/dev/null || true
        wait "$daemon" 2>/dev/null || true
        rm -rf "$rundir"
}
trap cleanup EXIT

export GEMMA4D_SOCKET="$sock"
echo "demo: starting gemma4d (log: $rundir/gemma4d.log)"
for _ in $(seq 1 600); do
        if build/client/gemma4ctl status 2>/dev/null | grep -q ": ready"; then
                break
        fi
        if ! kill -0 "$daemon" 2>/dev/null; then
                cat "$rundir/gemma4d.log" >&2
                echo "demo: gemma4d exited" >&2
                exit 1
        fi
        sleep 0.2
done
echo "demo: ready. The model's weights are random, so its answers are noise."
if [ -t 0 ]; then
        build/client/gemma4ctl chat --max-tokens 128
else
        build/client/gemma4ctl chat --max-tokens 64 --temperature 0
fi
