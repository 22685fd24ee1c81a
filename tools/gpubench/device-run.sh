#!/bin/bash
# Device script (docs/performance.md): kernel + model tests, then the full-size synthetic benchmark.
# Expects bin/ (test binaries, gemma4-gpubench, gemma4-mkmodel, gemma4-eval), lib/ (their non-CUDA .so files) and
# fixtures/ (tests/golden/fixtures) beside it, and $OUT for logs.
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=$PWD/lib
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
MODE=${1:-all}
if [ "$MODE" = all ] || [ "$MODE" = tests ]; then
  for t in norm gemm attention argmax; do
    timeout 200 bin/test-kernel-$t > $OUT/$t.log 2>&1; echo "kernel-$t rc=$? ok=$(grep -c '^ok' $OUT/$t.log) notok=$(grep -c '^not ok' $OUT/$t.log)"
    grep '^not ok' $OUT/$t.log | head -5
  done
  timeout 300 bin/test-cuda-model fixtures > $OUT/model.log 2>&1; echo "cuda-model rc=$? ok=$(grep -c '^ok' $OUT/model.log) notok=$(grep -c '^not ok' $OUT/model.log)"
  grep '^not ok' $OUT/model.log | head -20
  for kv in fp8 bf16; do
    echo "gemma4-eval --backend cuda --kv-dtype $kv (tiny-c fp8, greedy 12 after the 48-token prompt):"
    ids=$(python3 -c "import json;print(','.join(map(str,json.load(open('fixtures/tiny-c/meta.json'))['prompt'])))")
    bin/gemma4-eval --model fixtures/tiny-c/fp8 --ids $ids --backend cuda --kv-dtype $kv --greedy 12 2>&1 | tail -2
  done
  python3 -c "import json;print('HF greedy_fp8:', json.load(open('fixtures/tiny-c/meta.json'))['greedy_fp8'])"
fi
if [ "$MODE" = all ] || [ "$MODE" = bench ]; then
  t0=$(date +%s.%N)
  bin/gemma4-mkmodel --preset 26b-a4b-fp8 --out /tmp/m --threads 16 > $OUT/mkmodel.log 2>&1 || { echo mkmodel failed; tail -5 $OUT/mkmodel.log; exit 1; }
  t1=$(date +%s.%N); python3 -c "print(\"mkmodel: %.1f s\" % ($t1 - $t0))"; du -sh /tmp/m
  timeout ${BENCH_TIMEOUT:-300} bin/gemma4-gpubench --model /tmp/m ${BENCH_ARGS:---profile --repeats 2} 2>&1 | tee $OUT/bench.log
fi
