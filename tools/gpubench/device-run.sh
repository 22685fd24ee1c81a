#!/bin/bash
# Device script (docs/performance.md): every GPU test, then the full-size synthetic benchmark through backend.h.
# Expects bin/ (test-kernel-*, test-cuda-*, gemma4-gpubench, gemma4-mkmodel, gemma4-eval), lib/ (their non-CUDA .so
# files) beside it, the golden fixtures in fixtures/ (or $FIXTURES), and $OUT for logs. `scripts/gpu-e2e.sh pack DIR`
# builds such a folder.
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=$PWD/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
FIXTURES=${FIXTURES:-$PWD/fixtures}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
MODE=${1:-all}
if [ "$MODE" = all ] || [ "$MODE" = tests ]; then
  : > "$OUT/tests.log"
  for t in bin/test-*; do
    name=${t#bin/test-}
    t0=$(date +%s.%N)
    # the model tests take the fixture folder; kernel tests ignore their arguments
    GEMMA4D_SOURCE_ROOT=${FIXTURES%/tests/golden/fixtures} timeout ${TEST_TIMEOUT:-120} "$t" "$FIXTURES" > "$OUT/t.log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    { echo "=== $name rc=$rc"; cat "$OUT/t.log"; } >> "$OUT/tests.log"
    printf 'TEST %-24s rc=%-3s ok=%-4s not_ok=%-3s %5.1f s\n' "$name" $rc "$(grep -c '^ok' "$OUT/t.log")" \
           "$(grep -c '^not ok' "$OUT/t.log")" "$(awk "BEGIN{print $t1 - $t0}")"
    grep '^not ok' "$OUT/t.log" | head -5
  done
  rm -f "$OUT/t.log"
  for kv in fp8 bf16; do
    echo "gemma4-eval --backend cuda --kv-dtype $kv (tiny-c fp8, greedy 12 after the 48-token prompt):"
    ids=$(python3 -c "import json;print(','.join(map(str,json.load(open('$FIXTURES/tiny-c/meta.json'))['prompt'])))")
    bin/gemma4-eval --model "$FIXTURES/tiny-c/fp8" --ids $ids --backend cuda --kv-dtype $kv --greedy 12 2>&1 | tail -2
  done
  python3 -c "import json;print('HF greedy_fp8:', json.load(open('$FIXTURES/tiny-c/meta.json'))['greedy_fp8'])"
fi
if [ "$MODE" = all ] || [ "$MODE" = bench ]; then
  if [ -z "${MODEL:-}" ]; then
    t0=$(date +%s.%N)
    bin/gemma4-mkmodel --preset 26b-a4b-fp8 --out /tmp/m --threads 16 > $OUT/mkmodel.log 2>&1 || { echo mkmodel failed; tail -5 $OUT/mkmodel.log; exit 1; }
    t1=$(date +%s.%N); python3 -c "print(\"mkmodel: %.1f s\" % ($t1 - $t0))"; MODEL=/tmp/m
  fi
  timeout ${BENCH_TIMEOUT:-300} bin/gemma4-gpubench --model $MODEL ${BENCH_ARGS:---profile --repeats 2} 2>&1 | tee $OUT/bench.log
fi
