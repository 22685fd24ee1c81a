#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""gemma4-eval end to end on the golden fixtures: logits dump and greedy ids against HF, and bad input.
Prints TAP. Usage: test-eval.py GEMMA4_EVAL FIXTURES_DIR"""
import json
import math
import os
import struct
import subprocess
import sys
import tempfile

n_test = 0
failed = 0


def check(cond, what):
    global n_test, failed
    n_test += 1
    print("%s %d - %s" % ("ok" if cond else "not ok", n_test, what), flush=True)
    if not cond:
        failed += 1


def read_f32(path):
    with open(path, "rb") as f:
        data = f.read()
    return struct.unpack("<%df" % (len(data) // 4), data)


def main():
    exe, fixtures = sys.argv[1], sys.argv[2]
    tmp = tempfile.mkdtemp()
    for name in sorted(os.listdir(fixtures)):
        meta_path = os.path.join(fixtures, name, "meta.json")
        if not os.path.exists(meta_path):
            continue
        meta = json.load(open(meta_path))
        ids = ",".join(str(i) for i in meta["prompt"])
        for layout in ("bf16-nested", "bf16-flat"):
            out = os.path.join(tmp, "%s-%s.f32" % (name, layout))
            p = subprocess.run([exe, "--model", os.path.join(fixtures, name, layout), "--backend", "cpu",
                                "--ids", ids, "--greedy", str(meta["n_greedy"]), "--dump-logits", out,
                                "--page-size", "3", "--chunk", "7"],
                               capture_output=True, text=True)
            check(p.returncode == 0, "%s/%s exits 0 (%s)" % (name, layout, p.stderr.strip()[:200]))
            got_ids = [int(x) for x in p.stdout.split()] if p.returncode == 0 else []
            check(got_ids == meta["greedy_bf16"], "%s/%s greedy ids %s" % (name, layout, got_ids))
            if p.returncode == 0:
                got = read_f32(out)
                want = read_f32(os.path.join(fixtures, name, "ref-bf16.f32"))
                num = sum((a - b) ** 2 for a, b in zip(got, want))
                den = sum(b * b for b in want)
                rel = math.sqrt(num / den)
                check(len(got) == len(want) == meta["seq_len"] * meta["vocab_size"] and rel <= 1e-3,
                      "%s/%s dumped logits rel %.2e" % (name, layout, rel))
    model = os.path.join(fixtures, "tiny-a", "bf16-flat")
    for args, what in ((["--model", model, "--ids", "1,x", "--greedy", "1"], "bad id list"),
                       (["--model", model, "--ids", "1,99999", "--greedy", "1"], "id outside vocab"),
                       (["--model", model, "--ids", "1"], "nothing to do"),
                       (["--model", model, "--ids", "1", "--greedy", "1", "--backend", "nope"], "unknown backend"),
                       (["--model", model, "--ids", "1", "--greedy", "1", "--weights", "fp16"], "bad --weights"),
                       (["--model", model, "--ids", "1", "--greedy", "1", "--lm-head", "int8"], "bad --lm-head"),
                       (["--model", os.path.join(tmp, "missing"), "--ids", "1", "--greedy", "1"], "missing model")):
        p = subprocess.run([exe] + args, capture_output=True, text=True)
        check(p.returncode != 0 and "gemma4-eval" in p.stderr, "rejects %s: %s" % (what, p.stderr.strip()[:120]))
    print("1..%d" % n_test)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
