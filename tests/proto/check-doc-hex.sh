#!/bin/sh
# Checks that the hex dumps in docs/protocol.md are exactly what the codec produces today.
# usage: check-doc-hex.sh GEN_CORPUS PROTOCOL_MD
set -eu
gen=$1
doc=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$gen" --hex > "$tmp/want"
sed -n '/^<!-- hex:begin/,/^<!-- hex:end -->/p' "$doc" | sed '1,2d;$d' > "$tmp/have"
if ! diff -u "$tmp/have" "$tmp/want"; then
        echo "docs/protocol.md examples are stale: regenerate them with gen-corpus --hex" >&2
        exit 1
fi
echo "docs/protocol.md examples match the codec"
