#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Write the tokenizer test corpus (tests/tokenizer/corpus.jsonl) deterministically.

One JSON object per line:
  {"kind": "<family>", "text": "<string>"}   valid Unicode text
  {"kind": "<family>", "hex": "<bytes>"}      raw bytes that need not be valid UTF-8 (JSON strings cannot
                                              carry invalid UTF-8, so such inputs are hex-encoded)
scripts/make-tokenizer-fixtures.sh feeds every line to Hugging Face tokenizers@0.23.2 and writes the golden
ids; tests/tokenizer/test-tokenizer.c compares the C tokenizer with them.

Usage: make-corpus.py [OUTPUT]   (default: corpus.jsonl next to this script)
"""
import json
import os
import random
import sys

SEED = 20261127
R = random.Random(SEED)

SPECIALS = [
    "<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<|tool>", "<tool|>", "<|tool_call>", "<tool_call|>",
    "<|tool_response>", "<tool_response|>", '<|"|>', "<|think|>", "<|channel>", "<channel|>", "<|turn>",
    "<turn|>", "<|image>", "<|audio>", "<|image|>", "<|audio|>", "<image|>", "<audio|>", "<|video|>",
]
# Strings that look like special tokens but are not Gemma 4 added tokens (Gemma 3 names, HTML tags, prefixes).
NEAR_SPECIALS = [
    "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<unused40>", "<unused0>", "<table>", "</td>",
    "<|tur", "<|turn", "turn|>", "<turn", "<|tool_cal", "<|tool_call", "<tool_call", "<|\"", "<|\"|", "|>",
    "<|", "<<|turn>", "<|turn>>", "<|image|", "<|im", "<0x41>", "<0xFF>", "<0x0D>", "[multimodal]", "<b>",
    "</s>", "<s>", "<|endoftext|>", "<|im_start|>", "▁<bos>",
]

WORDS = """the of and to in is was for that on as with by he at from his an were are which this be or had
not but they have one their all has been also more first new who after its two can other when into time
only may there would some these than most over years where made between such used then city during
people many under about while world three part both state known later system century being well number
school government through company since including name war work same often any several each could found
until very best around high against early along should before university national however second small
group life called family series because area music united public second season large began without
although another several team major within played American around million house different what water
language result water light market power general model data network reason answer question simple
quick brown fox jumps lazy dog hello world token server request response stream daemon kernel memory
weather London Paris Tokyo temperature sunny rain cloud degree Celsius Fahrenheit tomorrow yesterday
don't can't won't it's I'm you're we'll they've isn't wasn't O'Brien e-mail state-of-the-art
""".split()

CODE_SNIPPETS = [
    "int main(int argc, char **argv)\n{\n        printf(\"hello, world\\n\");\n        return 0;\n}\n",
    "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "for (size_t i = 0; i < n; i++) {\n\tif (p[i] == '\\0')\n\t\tbreak;\n\tsum += p[i] * 31u;\n}\n",
    "const xs = [1, 2, 3].map((x) => x * 2).filter(Boolean);\nconsole.log(`sum=${xs.reduce((a, b) => a + b)}`);\n",
    "{\"name\": \"get_current_temperature\", \"arguments\": {\"location\": \"London\", \"unit\": \"celsius\"}}",
    "#!/bin/sh\nset -eu\nfor f in *.c; do\n  gcc -O2 -Wall -c \"$f\" || exit 1\ndone\n",
    "SELECT id, name FROM users WHERE created_at > NOW() - INTERVAL '7 days' ORDER BY id DESC;",
    "<html>\n  <body>\n    <table><tr><td>1</td><td>2</td></tr></table>\n  </body>\n</html>\n",
    "fn main() {\n    let v: Vec<u32> = (0..10).collect();\n    println!(\"{:?}\", v);\n}\n",
    "#include <stdio.h>\n#define MAX(a, b) ((a) > (b) ? (a) : (b))\n",
    "    if x is None:\n        raise ValueError(f\"bad value: {x!r}\")\n",
    "x = {'a': [1, 2.5, -3e10], 'b': None, 'c': True}  # comment\r\n",
    "diff --git a/f.c b/f.c\n@@ -1,3 +1,4 @@\n-old line\n+new line\n+another\n",
    "\t\treturn -EINVAL;\n\t}\n\n\treturn 0;\n}\n",
    "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hi\")\n}\n",
    "   1 | let x = 0x1F600;\n   2 | let y = 0b1010 >> 2;\n",
    "$ ls -la /usr/local/cuda/bin | grep nvcc\n-rwxr-xr-x 1 root root 123456 Jan  1 00:00 nvcc\n",
    "λx. λy. x y ≡ (λx. (λy. (x y)))  -- α-conversion, β-reduction",
    "a := b &^ c; d <<= 3; e ||= f ?? g; h?.i!.j",
    "/* ---------------------------------------------------------------------- */",
    "############################################################################",
    "=====================================================\n-----------------------------------------------------",
]

CJK_PHRASES = [
    "你好，世界！", "今天天气很好。", "我们在东京见面吧。", "机器学习模型的推理速度很快。", "北京大学", "中华人民共和国",
    "こんにちは、世界！", "東京は日本の首都です。", "ひらがなとカタカナ", "トークナイザーのテスト",
    "안녕하세요, 세계!", "한국어 문장을 토큰화합니다.", "서울특별시", "繁體中文測試", "粵語：佢哋食咗飯未？",
]
ARABIC_PHRASES = [
    "مرحبا بالعالم", "اللغة العربية جميلة", "كيف حالك اليوم؟", "بِسْمِ اللَّهِ الرَّحْمَٰنِ الرَّحِيمِ",
    "درجة الحرارة في لندن ١٥ درجة", "هذا اختبار للمقطع اللفظي",
]
DEVANAGARI_PHRASES = [
    "नमस्ते दुनिया", "हिन्दी भाषा", "आज मौसम अच्छा है।", "संस्कृतम् भाषा", "क्षत्रिय ज्ञान श्री", "मैं ठीक हूँ, धन्यवाद।",
]
OTHER_PHRASES = [
    "Привет, мир! Как дела?", "Γειά σου Κόσμε", "שלום עולם", "สวัสดีชาวโลก", "Xin chào thế giới",
    "Ελληνικά: αβγδεζηθ", "Ünïcödé façade naïve café Ærøskøbing", "Zażółć gęślą jaźń", "ⓐⓑⓒ ①②③ ㈠㈡",
    "ﬁﬂ ﬀ Ⅻ ㎏ ㍻", "𝐀𝐁𝐂 𝕏𝕐𝕫 𝒜ℬ", "ᚠᚢᚦᚨᚱᚲ", "ⴰⵣⵓⵍ", "𓀀𓀁𓂀", "ꙮ", "Ꭰ ᏣᎳᎩ",
]
EMOJI = [
    "😀", "😂", "🥲", "🤖", "🧬", "🦀", "🐍", "🚀", "🌍", "🔥", "✨", "❤️", "❤", "👍", "👍🏽", "👍🏿", "🇬🇧", "🇯🇵",
    "🏳️‍🌈", "👨‍👩‍👧‍👦", "👩🏾‍💻", "🧑‍🚀", "👁️‍🗨️", "1️⃣", "#️⃣", "©️", "™", "☕", "⌚", "🫠", "🫶🏻", "🪿", "🛜",
    "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "😶‍🌫️", "❤️‍🔥", "🐻‍❄️", "👩‍❤️‍💋‍👨",
]
SPACES = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\n\n\n", "\r\n", "\r", "\u00a0", "\u3000", "\u2009",
          "\u200b", "\u2028", "\f", "\v", " \n", "\n ", " \t ", "\t \n"]
ODD_CHARS = ["\u0000", "\u0001", "\u001f", "\u007f", "\u0080", "\u009f", "\ufeff", "\ufffd", "\ufffe",
             "\uffff", "\u0378", "\U0010fffd", "\U0010ffff", "\U000e0001", "\u0301", "\u200d", "\u200e",
             "\u202e", "\ue000", "\U000f0000", "\u2581", "▁▁", "\u00ad", "\u034f"]

# Representative code points of each family for random strings.
RANGES = {
    "cjk": [(0x4E00, 0x9FFF), (0x3040, 0x309F), (0x30A0, 0x30FF), (0xAC00, 0xD7A3), (0x20000, 0x2A6DF),
            (0x3400, 0x4DBF), (0xFF01, 0xFF5E)],
    "arabic": [(0x0600, 0x06FF), (0x0750, 0x077F), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF)],
    "devanagari": [(0x0900, 0x097F), (0xA8E0, 0xA8FF)],
    "emoji": [(0x1F300, 0x1F5FF), (0x1F600, 0x1F64F), (0x1F680, 0x1F6FF), (0x1F900, 0x1F9FF),
              (0x1FA70, 0x1FAFF), (0x2600, 0x26FF), (0x1F1E6, 0x1F1FF)],
    "any": [(0x20, 0x7E), (0xA0, 0x2FF), (0x370, 0x1FFF), (0x2000, 0x2BFF), (0x3000, 0xD7FF),
            (0xE000, 0xFFFD), (0x10000, 0x10FFFF)],
}


def rand_cp(family):
    lo, hi = R.choice(RANGES[family])
    return chr(R.randint(lo, hi))


def rand_from(family, n):
    return "".join(rand_cp(family) for _ in range(n))


def sentence():
    n = R.randint(3, 18)
    ws = [R.choice(WORDS) for _ in range(n)]
    ws[0] = ws[0][:1].upper() + ws[0][1:]
    for i in range(1, n):
        r = R.random()
        if r < 0.08:
            ws[i] += ","
        elif r < 0.11:
            ws[i] = str(R.randint(0, 100000))
        elif r < 0.13:
            ws[i] = '"' + ws[i] + '"'
        elif r < 0.15:
            ws[i] = "(" + ws[i] + ")"
        elif r < 0.17:
            ws[i] = ws[i].upper()
    return " ".join(ws) + R.choice([".", ".", ".", "?", "!", ":", ";", "...", ""])


def paragraph(k):
    return " ".join(sentence() for _ in range(k))


def mix(parts, n):
    return "".join(R.choice(parts) for _ in range(n))


def utf8_hex(s):
    return s.encode("utf-8").hex()


def main():
    out_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus.jsonl")
    items = []

    def add(kind, text):
        items.append({"kind": kind, "text": text})

    def add_bytes(kind, data):
        items.append({"kind": kind, "hex": bytes(data).hex()})

    # -- fixed cases: spec golden vectors and edge cases
    for s in ["", " ", "  ", "Hi", " Hi", "two  spaces   three", " 15", "a\r\nb", "Hello, world!",
              "<bos><|turn>user\nSay hello in one short sentence.<turn|>\n<|turn>model\n",
              '<|tool_call>call:get_current_temperature{location:<|"|>London<|"|>}<tool_call|><|tool_response>',
              "<bos><|turn>system\nYou are a helpful assistant.<turn|>\n<|turn>user\nHello.<turn|>\n"
              "<|turn>model\n<|channel>thought\n<channel|>",
              "<table>x</table>", "\n", "\n\n", "\t", "\r", "\r\n", " \n ", "▁", "▁▁ ▁", "a▁b", " ▁ ",
              "<|image|><|image>", "<|image><|image|><image|>", "<<|turn>>", "<|turn><|turn>", "<bos><bos>",
              "<|\"|><|\"|>", "<|\"|", "<turn|", "x<eos>y", "<pad><mask><unk>", "<|tool_response|>",
              "<b> </b>", "a> </b", "x >  </y", "<td> </td> <td>  </td>", ">", "> ", " >", "> <", ">\u2581</"]:
        add("fixed", s)
    for s in SPECIALS + NEAR_SPECIALS:
        add("special-literal", s)
        add("special-literal", "text " + s + " text")
    for c in ODD_CHARS:
        add("odd-char", c)
        add("odd-char", "a" + c + "b " + c + c)

    # -- English
    for _ in range(450):
        add("english", paragraph(R.randint(1, 4)))
    for _ in range(60):
        add("english-lines", "\n".join(sentence() for _ in range(R.randint(2, 8))))

    # -- scripts
    for phrases, fam, kind in [(CJK_PHRASES, "cjk", "cjk"), (ARABIC_PHRASES, "arabic", "arabic"),
                               (DEVANAGARI_PHRASES, "devanagari", "devanagari")]:
        for p in phrases:
            add(kind, p)
        for _ in range(150 if kind == "cjk" else 110):
            r = R.random()
            if r < 0.4:
                add(kind, " ".join(R.choice(phrases) for _ in range(R.randint(1, 5))))
            elif r < 0.7:
                add(kind, rand_from(fam, R.randint(1, 40)))
            else:
                add(kind, R.choice(phrases) + " " + sentence() + " " + rand_from(fam, R.randint(1, 10)))
    for p in OTHER_PHRASES:
        add("other-script", p)
        add("other-script", p + " " + p.upper() + "\n" + p.lower())

    # -- emoji and ZWJ sequences
    for e in EMOJI:
        add("emoji", e)
    for _ in range(200):
        r = R.random()
        if r < 0.4:
            add("emoji", mix(EMOJI, R.randint(1, 12)))
        elif r < 0.6:
            add("emoji", "\u200d".join(rand_cp("emoji") for _ in range(R.randint(2, 5))))
        elif r < 0.8:
            add("emoji", sentence() + " " + mix(EMOJI, R.randint(1, 4)) + " " + sentence())
        else:
            add("emoji", "".join(rand_cp("emoji") + R.choice(["", "\ufe0f", "\U0001f3fb", "\u200d", " "])
                                 for _ in range(R.randint(1, 8))))

    # -- code
    for c in CODE_SNIPPETS:
        add("code", c)
    for _ in range(180):
        parts = R.sample(CODE_SNIPPETS, R.randint(1, 3))
        s = "\n".join(parts)
        if R.random() < 0.3:
            s = s.replace("        ", "\t")
        if R.random() < 0.3:
            s = s.replace("\n", "\r\n")
        add("code", s)

    # -- whitespace runs
    for n in [1, 2, 3, 4, 7, 8, 15, 16, 17, 30, 31, 32, 33, 64, 100]:
        add("whitespace", " " * n)
        add("whitespace", "\n" * n)
        add("whitespace", "\t" * n)
        add("whitespace", "x" + " " * n + "y" + "\n" * n + "z" + "\t" * n)
    for _ in range(200):
        add("whitespace", mix(SPACES + ["a", "word", "B", ".", "\u2581", "1"], R.randint(1, 40)))

    # -- literal special tokens mixed with text
    for _ in range(220):
        parts = SPECIALS + NEAR_SPECIALS + ["user", "model", "\n", " ", "hello", "<", ">", "|", "\"", "call:",
                                            "{", "}", "thought", "system", "<|", "|>"]
        add("special-mix", mix(parts, R.randint(1, 20)))

    # -- odd but valid characters
    for _ in range(120):
        add("odd-mix", mix(ODD_CHARS + ["a", " ", "\n", "é", "ß"], R.randint(1, 16)))

    # -- random code points from every plane
    for _ in range(160):
        add("random-unicode", rand_from("any", R.randint(1, 60)))

    # -- raw bytes: invalid and truncated UTF-8
    bad_units = [b"\x80", b"\xbf", b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xed\xa0\x80", b"\xed\xbf\xbf",
                 b"\xf4\x90\x80\x80", b"\xf5", b"\xff", b"\xfe", b"\xe2\x82", b"\xf0\x9f\xa7", b"\xf0\x9f",
                 b"\xc3", b"\xf8\x88\x80\x80\x80", b"\xf4\x8f\xbf\xbd\xf0", b"\xe2\x82\xac\xff"]
    good_units = [b"a", b" ", b"\n", "é".encode(), "€".encode(), "🧬".encode(), "你".encode(), b"<bos>",
                  b"<|turn>", "\U0010fffd".encode(), b"hello world", "\u2581".encode()]
    for u in bad_units:
        add_bytes("invalid-bytes", u)
        add_bytes("invalid-bytes", b"x" + u + b"y")
    for _ in range(170):
        seq = b"".join(R.choice(bad_units if R.random() < 0.5 else good_units) for _ in range(R.randint(1, 12)))
        add_bytes("invalid-bytes", seq)
    for _ in range(40):
        add_bytes("random-bytes", bytes(R.randrange(256) for _ in range(R.randint(1, 64))))

    # -- long strings (one BPE "word" of 100k+ characters must not be quadratic)
    add("long", paragraph(400))
    add("long", "\n\n".join(paragraph(8) for _ in range(60)))
    add("long", " " * 5000 + "x" + "\n" * 3000 + "\t" * 2000)
    add("long", rand_from("cjk", 20000))
    add("long", mix(EMOJI, 3000))
    add("long", rand_from("any", 20000))
    add("long", "a" * 20000 + "ab" * 5000)
    add("long", mix(SPECIALS + [" ", "text", "\n"], 5000))
    add("long", "\n".join(CODE_SNIPPETS) * 20)
    add_bytes("long-bytes", b"".join(R.choice(bad_units + good_units) for _ in range(4000)))

    with open(out_path, "w", encoding="utf-8", newline="\n") as f:
        for it in items:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")
    print(f"make-corpus: wrote {len(items)} entries to {out_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
