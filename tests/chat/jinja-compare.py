#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Compare the C chat template with a Jinja chat template, case by case.

Usage: jinja-compare.py CHAT_TEMPLATE.jinja CHAT_RENDER [--update] [CASE.json ...]

Renders every case (default: tests/chat/golden/*.json) with Python jinja2 the way Hugging Face does
(ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, bos_token "<bos>") and with the C renderer
(build/tests/chat/chat-render), and reports differences. Point it at the chat_template.jinja shipped with the
served checkpoint to check that the C renderer matches that revision. --update rewrites the .txt goldens
from Jinja. A case may carry "jinja_messages" for input the template itself can not take as-is (OpenAI
arguments as a JSON string: the C renderer parses them, the template would paste them raw).
"""
import glob
import json
import os
import subprocess
import sys

from jinja2.sandbox import ImmutableSandboxedEnvironment


def main():
    args = [a for a in sys.argv[1:] if a != '--update']
    update = '--update' in sys.argv
    if len(args) < 2:
        sys.exit(__doc__)
    template, render = args[0], args[1]
    cases = args[2:] or sorted(glob.glob(os.path.join(os.path.dirname(__file__), 'golden', '*.json')))
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    tpl = env.from_string(open(template).read())
    failed = 0
    for case in cases:
        req = json.load(open(case))
        kw = dict(messages=req.get('jinja_messages', req['messages']), bos_token='<bos>',
                  add_generation_prompt=req.get('add_generation_prompt', True))
        if req.get('tools'):
            kw['tools'] = req['tools']
        if 'enable_thinking' in req:
            kw['enable_thinking'] = req['enable_thinking']
        want = tpl.render(**kw)
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
