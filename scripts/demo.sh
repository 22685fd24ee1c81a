#!/usr/bin/env bash
# The main job: install, build, write the demo model, start gemma4d on the CPU backend, open a chat.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/cuda/bin:$PATH"
scripts/setup.sh
[ -f build/build.ninja ] || meson setup build -Dcuda=auto
ninja -C build
echo "demo: the daemon and chat client are not built yet; build finished."
