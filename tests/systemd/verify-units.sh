#!/usr/bin/env bash
# Lint every installed unit with `systemd-analyze verify`, as systemd would load it: templates are
# instantiated for GPU 0 and ExecStart points at the gemma4d built in this tree.
# Usage: verify-units.sh BUILD_SYSTEMD_DIR GEMMA4D_BINARY
set -euo pipefail
src=$1
bin=$2
if ! command -v systemd-analyze >/dev/null; then
        echo "systemd-analyze not installed" >&2
        exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for u in gemma4d@.service gemma4d@.socket gemma4d.target gemma4d.service; do
        [ -f "$src/$u" ] || { echo "missing unit $u" >&2; exit 1; }
done
sed "s|^ExecStart=[^ ]*|ExecStart=$bin|" "$src/gemma4d@.service" > "$tmp/gemma4d@0.service"
cp "$src/gemma4d@.socket" "$tmp/gemma4d@0.socket"
cp "$src/gemma4d.target" "$src/gemma4d.service" "$tmp/"
# Keep what the manual insists on: no RuntimeDirectory= (it would delete the socket directory on stop),
# no PrivateDevices= (it hides the GPU), Type=notify and a watchdog.
grep -q '^RuntimeDirectory=' "$src/gemma4d@.service" && { echo "RuntimeDirectory= must not be set" >&2; exit 1; }
grep -q '^PrivateDevices=' "$src/gemma4d@.service" && { echo "PrivateDevices= hides the GPU" >&2; exit 1; }
grep -q '^Type=notify$' "$src/gemma4d@.service" || { echo "Type=notify missing" >&2; exit 1; }
grep -q '^WatchdogSec=' "$src/gemma4d@.service" || { echo "WatchdogSec= missing" >&2; exit 1; }
cd "$tmp"
out=$(systemd-analyze verify --man=no ./gemma4d@0.service ./gemma4d@0.socket ./gemma4d.target \
        ./gemma4d.service 2>&1) || { echo "$out" >&2; exit 1; }
# verify exits 0 on some warnings; treat any message about our units as a failure.
if echo "$out" | grep -E 'gemma4d' >&2; then
        exit 1
fi
echo "units verified"
