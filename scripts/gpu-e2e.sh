#!/usr/bin/env bash
# End-to-end run of the CUDA backend through the socket, for the GPU machine (docs/performance.md).
#   scripts/gpu-e2e.sh pack DIR   here: copy gemma4d, gemma4ctl, gemma4-mkmodel, the tokenizer fixture and
#                                 the shared libraries the GPU machine lacks into DIR (carried by the device tool)
#   DIR/gpu-e2e.sh run            there: write the synthetic 26b-a4b-fp8 checkpoint, start gemma4d on CUDA,
#                                 time READY, chat once, and run `gemma4ctl bench` for the issue-9 figures
#   DIR/device-run.sh tests       there: every GPU test (kernel references, whole model vs HF and the CPU engine,
#                                 layer by layer), with FIXTURES=<repo>/tests/golden/fixtures
# The whole GPU check, as run for docs/performance.md (carry DIR; the fixtures travel with the repository):
#   cd DIR && FIXTURES=$PWD/../../tests/golden/fixtures bash device-run.sh tests && bash gpu-e2e.sh run
set -uo pipefail
mode=${1:-}
if [ "$mode" = pack ]; then
        out=$2
        build=${BUILD:-build}
        rm -rf "$out" && mkdir -p "$out/bin" "$out/lib"
        cp "$build/daemon/gemma4d" "$build/client/gemma4ctl" "$build/tools/mkmodel/gemma4-mkmodel" "$out/bin/"
        # the GPU tests and tools too (TESTS=0 leaves them out): `device-run.sh tests` runs them there
        if [ "${TESTS:-1}" = 1 ]; then
                cp "$build"/tests/kernels/test-* "$build/tools/eval/gemma4-eval" "$build/tools/gpubench/gemma4-gpubench" \
                   "$out/bin/" 2>/dev/null
                rm -rf "$out"/bin/*.p
                cp tools/gpubench/device-run.sh "$out/"
        fi
        cp -L "$build/client/libgemmaclient.so.0" "$out/lib/"
        for l in libuv.so.1 libmsgpackc.so.2 libyaml-0.so.2 libjansson.so.4 libedit.so.2 libbsd.so.0 libmd.so.0; do
                cp -L "/lib/x86_64-linux-gnu/$l" "$out/lib/"
        done
        gzip -9 -c .deps/fixtures/tokenizer.json > "$out/tokenizer.json.gz"     # the device tool carries 64 MiB
        strip "$out"/bin/* 2>/dev/null || true
        cp "$0" "$out/gpu-e2e.sh"
        du -sh "$out"
        exit 0
fi
[ "$mode" = run ] || { echo "usage: $0 pack DIR | run" >&2; exit 2; }

cd "$(dirname "$0")"
export LD_LIBRARY_PATH=$PWD/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
# QUICK=1: small sizes, for checking this script on the CPU backend
if [ "${QUICK:-0}" = 1 ]; then S1="-p 8 -o 8"; S64="-c 4 -p 16 -o 8"; S8K="-p 256"; else S1="-p 38 -o 256"; S64="-c 64 -p 256 -o 256"; S8K="-p 8192"; fi
# MODEL=DIR: use a checkpoint already written (with the tokenizer) instead of writing one
model=${MODEL:-/tmp/g4-26b-fp8}
if [ -z "${MODEL:-}" ]; then
        t0=$(date +%s.%N)
        [ -f tokenizer.json ] || gunzip -k tokenizer.json.gz
        bin/gemma4-mkmodel --preset ${PRESET:-26b-a4b-fp8} --out $model --threads 16 --tokenizer tokenizer.json \
                > "$OUT/mkmodel.log" 2>&1 || { echo "mkmodel failed"; tail -5 "$OUT/mkmodel.log"; exit 1; }
        t1=$(date +%s.%N)
        echo "mkmodel: $(python3 -c "print(round($t1 - $t0, 1))") s"
fi
cat $model/*.safetensors > /dev/null         # the page cache, as the issue-9 READY figure assumes

sock=/tmp/g4.sock
export GEMMA4D_SOCKET=$sock
start=$(date +%s.%N)
bin/gemma4d --backend ${BACKEND:-cuda} --model $model --socket $sock --log-level info ${GEMMA4D_ARGS:-} > "$OUT/gemma4d.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do
        bin/gemma4ctl status 2>/dev/null | grep -q ": ready" && break
        kill -0 $pid 2>/dev/null || { echo "gemma4d died"; tail -20 "$OUT/gemma4d.log"; exit 1; }
        sleep 0.05
done
ready=$(date +%s.%N)
echo "time to READY (process start to ready, as seen by a polling client): $(python3 -c "print(round($ready - $start, 2))") s"
grep -E "boot:|ready:" "$OUT/gemma4d.log"
bin/gemma4ctl --json status > "$OUT/status.json"
python3 - "$OUT/status.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
st = s[0] if isinstance(s, list) else s
def find(o, k):
    if isinstance(o, dict):
        if k in o: return o[k]
        for v in o.values():
            r = find(v, k)
            if r is not None: return r
    if isinstance(o, list):
        for v in o:
            r = find(v, k)
            if r is not None: return r
    return None
print("device:", find(st, "device"), "| weights GiB: %.2f" % (find(st, "weight_bytes") / 2**30),
      "| KV GiB: %.2f" % (find(st, "kv_bytes") / 2**30), "| KV tokens:", find(st, "capacity_tokens"),
      "| 32K seqs:", find(st, "seqs_32k"), "| boot:", find(st, "boot"))
PY
echo "--- chat through the socket (CUDA backend, random weights):"
echo "Write one sentence about the sea." | timeout 60 bin/gemma4ctl chat --max-tokens 24 --temperature 0
echo
echo "--- single stream: 38-token prompt, 256 output tokens, greedy"
timeout 240 bin/gemma4ctl --json bench -c 1 $S1 -n 1 -r 3 -w 1 --temperature 0 > "$OUT/bench1.json"; tail -c 1500 "$OUT/bench1.json"; echo
echo "--- 64 streams: 256-token prompts, 256 output tokens"
timeout 300 bin/gemma4ctl --json bench $S64 -n 1 -r 2 -w 1 --temperature 0 > "$OUT/bench64.json"; tail -c 1500 "$OUT/bench64.json"; echo
echo "--- single stream, sampled on the device: 38-token prompt, 256 tokens, T 0.8, top_k 50, top_p 0.95, seed 7"
timeout 120 bin/gemma4ctl --json bench -c 1 $S1 -n 1 -r 2 -w 1 --temperature 0.8 --top-k 50 --top-p 0.95 --seed 7 \
        > "$OUT/bench1s.json"; tail -c 1500 "$OUT/bench1s.json"; echo
echo "--- prefill: one 8192-token prompt (TTFT)"
timeout 120 bin/gemma4ctl --json bench -c 1 $S8K -o 1 -n 1 -r 3 -w 1 --temperature 0 > "$OUT/bench8k.json"; tail -c 1500 "$OUT/bench8k.json"; echo
kill -TERM $pid; wait $pid; echo "gemma4d exit status $?"
tail -3 "$OUT/gemma4d.log"
