#!/usr/bin/env bash
# Install, build and run every test: the normal build (CUDA backend compiled when nvcc exists; GPU tests
# skip without a device), then AddressSanitizer+UBSan, then valgrind on the host-code suites (tests in
# suite "script" are shell scripts: valgrind would check the shell, not our code).
# Ends with one line "N passed, N failed, N skipped".
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/cuda/bin:$PATH"

scripts/setup.sh || { echo "0 passed, 1 failed"; exit 1; }

jobs=$(nproc)
status=0
logs=()

run_suite() {           # name builddir meson-setup-args... -- meson-test-args...
        local name=$1 dir=$2; shift 2
        local setup_args=() test_args=()
        while [ $# -gt 0 ] && [ "$1" != "--" ]; do setup_args+=("$1"); shift; done
        [ $# -gt 0 ] && shift
        test_args=("$@")
        echo "== $name: configure"
        if [ ! -f "$dir/build.ninja" ]; then
                meson setup "$dir" "${setup_args[@]}" || { status=1; return; }
        else
                meson configure "$dir" "${setup_args[@]}" >/dev/null || { status=1; return; }
        fi
        echo "== $name: build"
        ninja -C "$dir" -j "$jobs" || { status=1; echo "BUILD FAILED: $name"; return; }
        echo "== $name: test"
        # meson writes no JSON log when the selected suites have no tests yet; remove the old one so a
        # stale log from an earlier run is never counted.
        local log="$dir/meson-logs/testlog${TESTLOG_SUFFIX:-}.json"
        rm -f "$log"
        if meson test -C "$dir" --print-errorlogs --num-processes "$jobs" "${test_args[@]}"; then
                [ -f "$log" ] && logs+=("$log")
        else
                status=1
                logs+=("$log")  # counted as a failure by count-tests.py when it is missing
        fi
}

run_suite "default" build -Dcuda=auto -Dbuildtype=debugoptimized --
run_suite "asan+ubsan" build-asan -Dcuda=disabled -Db_sanitize=address,undefined -Db_lundef=false \
        -Dbuildtype=debug -- --no-suite daemon-slow
TESTLOG_SUFFIX=-valgrind run_suite "valgrind" build -- --setup=valgrind --suite unit --suite proto \
        --suite fuzz --suite tokenizer --suite chat --suite model --no-suite script

python3 scripts/count-tests.py "${logs[@]}"
rc=$?
[ $status -ne 0 ] && rc=1
exit $rc
