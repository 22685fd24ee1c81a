#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Compare the C chat template with a Jinja chat template, case by case.

Usage: jinja-compare.py CHAT_TEMPLATE.jinja CHAT_RENDER [--update] [CASE.json ...]
       jinja-compare.py CHAT_TEMPLATE.jinja CHAT_RENDER --random N [--seed S]

Renders every case (default: tests/chat/golden/*.json) with Python jinja2 the way Hugging Face does
(ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, bos_token "<bos>") and with the C renderer
(build/tests/chat/chat-render), and reports differences. Point it at the chat_template.jinja shipped with the
served checkpoint to check that the C renderer matches that revision. --update rewrites the .txt goldens
from Jinja. A case may carry "jinja_messages" for input the template itself can not take as-is (OpenAI
arguments as a JSON string: the C renderer parses them, the template would paste them raw).
--random N renders N random requests (messages, tool calls, OpenAI and native tool results, schemas)
and compares them; requests the template raises on or the C renderer refuses are counted, not compared.
"""
import glob
import random
import tempfile
import json
import os
import subprocess
import sys

from jinja2.sandbox import ImmutableSandboxedEnvironment


R = random.Random(1)


def rstr():
    parts = ["a", " ", "\n", "<|channel>", "<channel|>", "x y", "é", "\u00a0", "B", "{", "}", ":", "\t", "Z9"]
    return "".join(R.choice(parts) for _ in range(R.randint(0, 5)))
def rval(d=0):
    c = R.randint(0, 7 if d < 3 else 4)
    if c == 0: return rstr()
    if c == 1: return R.randint(-100, 10**6)
    if c == 2: return R.choice([0.1, 1.5, -0.0, 1e16, 1e-7, 3.0, 123.456, 2.5e-5])
    if c == 3: return R.choice([True, False])
    if c == 4: return None
    if c in (5, 6): return {R.choice(["a", "B", "c", "A", "zz", "Key"]): rval(d+1) for _ in range(R.randint(0, 3))}
    return [rval(d+1) for _ in range(R.randint(0, 3))]
def rschema(d=0):
    s = {"type": R.choice(["string", "integer", "number", "boolean", "array", "object", "STRING", "Object"])}
    if R.random() < .5: s["description"] = rstr() or "d"
    if R.random() < .3: s["enum"] = [rstr() for _ in range(R.randint(0, 3))]
    if R.random() < .2: s["nullable"] = R.choice([True, False])
    if d < 3 and R.random() < .4:
        it = rschema(d+1)
        if R.random() < .3: it["required"] = ["a"]
        if R.random() < .2: it["title"] = "T"
        s["items"] = it
    if d < 3 and R.random() < .4: s["properties"] = {R.choice(["a", "B", "c", "d1"]): rschema(d+1) for _ in range(R.randint(0, 3))}
    if R.random() < .25: s["required"] = ["a", "c"][:R.randint(1, 2)]
    if R.random() < .15: s["additionalProperties"] = R.choice([False, {"type": "string"}])
    return s
def rreq():
    msgs = []
    if R.random() < .4: msgs.append({"role": R.choice(["system", "developer"]), "content": R.choice([rstr(), [{"type": "text", "text": rstr()} for _ in range(R.randint(1, 3))]])})
    for _ in range(R.randint(1, 6)):
        role = R.choice(["user", "assistant", "assistant", "system"])
        m = {"role": role}
        if R.random() < .85: m["content"] = R.choice([rstr(), rstr(), None, [{"type": "text", "text": rstr()} for _ in range(R.randint(1, 2))]])
        if role == "assistant" and R.random() < .5:
            calls = [{"id": "c%d" % i, "type": "function", "function": {"name": R.choice(["f", "get_x", "g.h"]), "arguments": {k: rval() for k in R.sample(["a", "B", "c", "loc", "Z"], R.randint(0, 3))}}} for i in range(R.randint(1, 2))]
            m["tool_calls"] = calls
            if R.random() < .4: m["reasoning" if R.random() < .5 else "reasoning_content"] = rstr()
            if R.random() < .25:
                m["tool_responses"] = [{"name": R.choice(["f", ""]), "response": rval()} for _ in range(R.randint(1, 2))]
                msgs.append(m); continue
            msgs.append(m)
            for c in calls:
                if R.random() < .8:
                    t = {"role": "tool", "tool_call_id": R.choice([c["id"], "zz"]), "content": R.choice([rstr(), [{"type": "text", "text": rstr()}], 5, None, True, [1, "x"]])}
                    if R.random() < .3: t["name"] = "nm"
                    msgs.append(t)
            continue
        msgs.append(m)
    req = {"messages": msgs}
    if R.random() < .4:
        tools = []
        for _ in range(R.randint(1, 2)):
            fn = {"name": R.choice(["t", "get_w"]), "description": rstr()}
            if R.random() < .8:
                p = {"type": "object"}
                if R.random() < .8: p["properties"] = {k: rschema() for k in R.sample(["a", "B", "c", "loc", "Zed"], R.randint(0, 3))}
                if R.random() < .4: p["required"] = ["a"]
                fn["parameters"] = p
            if R.random() < .1: fn["response"] = {"type": "object", "description": rstr()}
            tools.append({"type": "function", "function": fn})
        req["tools"] = tools
    if R.random() < .5: req["enable_thinking"] = R.choice([True, False])
    if R.random() < .2: req["add_generation_prompt"] = False
    return req


def jinja_render(tpl, req):
    kw = dict(messages=req.get('jinja_messages', req['messages']), bos_token='<bos>',
              add_generation_prompt=req.get('add_generation_prompt', True))
    if req.get('tools'):
        kw['tools'] = req['tools']
    if 'enable_thinking' in req:
        kw['enable_thinking'] = req['enable_thinking']
    return tpl.render(**kw)


def random_compare(tpl, render, n):
    same = skipped = failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'req.json')
        for _ in range(n):
            req = rreq()
            try:
                want = jinja_render(tpl, req)
            except Exception:
                skipped += 1
                continue
            with open(path, 'w') as f:
                json.dump(req, f)
            got = subprocess.run([render, path], capture_output=True, text=True)
            if got.returncode != 0:
                skipped += 1
            elif got.stdout != want:
                failed += 1
                print(f'DIFF {json.dumps(req)}\n  jinja: {want!r}\n  C:     {got.stdout!r}')
            else:
                same += 1
    print(f'{same} equal, {failed} different, {skipped} refused by one side')
    sys.exit(1 if failed else 0)


def main():
    argv = sys.argv[1:]
    update = '--update' in argv
    n_random = seed = None
    args = []
    i = 0
    while i < len(argv):
        if argv[i] == '--random':
            n_random = int(argv[i + 1])
            i += 2
        elif argv[i] == '--seed':
            seed = int(argv[i + 1])
            i += 2
        elif argv[i] == '--update':
            i += 1
        else:
            args.append(argv[i])
            i += 1
    if len(args) < 2:
        sys.exit(__doc__)
    template, render = args[0], args[1]
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    tpl = env.from_string(open(template).read())
    if n_random:
        if seed is not None:
            R.seed(seed)
        random_compare(tpl, render, n_random)
    cases = args[2:] or sorted(glob.glob(os.path.join(os.path.dirname(__file__), 'golden', '*.json')))
    failed = 0
    for case in cases:
        req = json.load(open(case))
        want = jinja_render(tpl, req)
        got = subprocess.run([render, case], capture_output=True, text=True)
        if update:
            open(case[:-5] + '.txt', 'w').write(want)
        if got.returncode != 0 or got.stdout != want:
            failed += 1
            print(f'DIFF {case}\n  jinja: {want!r}\n  C:     {got.stdout!r} {got.stderr.strip()}')
        else:
            print(f'ok   {case}')
    print(f'{len(cases) - failed} equal, {failed} different')
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main()
