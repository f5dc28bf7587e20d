// Mirrors pocketdiff/runtime/tokenizer.py: CLIP byte-level BPE on vocab.json + merges.txt, the exact steps of its
// docstring (0: split out literal specials; 1: clean; 2: pre-tokenise with CLIP's pattern as a scanner; 3: UTF-8
// bytes through bytes_to_unicode, `</w>` on the last symbol; 4: BPE by merge rank; 5: BOS + ids + EOS, padded).
// Strings are walked by code point (Array.from), as Python indexes them.

import { PocketdiffError, repr } from './errors.js';

export const BOS = '<|startoftext|>';
export const EOS = '<|endoftext|>';
export const MAX_LENGTH = 77;
const CONTRACTIONS = ['s', 't', 're', 've', 'm', 'll', 'd'];
const CJK_RANGES = [
  [0x4e00, 0x9fff], [0x3400, 0x4dbf], [0x20000, 0x2a6df], [0x2a700, 0x2b73f],
  [0x2b740, 0x2b81f], [0x2b820, 0x2ceaf], [0xf900, 0xfaff], [0x2f800, 0x2fa1f],
];
const LETTER = /^\p{L}$/u;
const NUMBER = /^\p{N}$/u;
const CONTROL = /^\p{C}$/u;
const ZS = /^\p{Zs}$/u;
const SPACE = /^\s$/u; // str.isspace on cleaned text (the C* characters \s adds beyond Python are gone by then)

let byteTable = null;

/** GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters (index = byte). */
export function bytesToUnicode() {
  if (byteTable) return byteTable;
  const bs = [];
  const range = (a, b) => { for (let c = a; c <= b; c++) bs.push(c); };
  range('!'.codePointAt(0), '~'.codePointAt(0));
  range('¡'.codePointAt(0), '¬'.codePointAt(0));
  range('®'.codePointAt(0), 'ÿ'.codePointAt(0));
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n);
      n += 1;
    }
  }
  byteTable = new Array(256);
  bs.forEach((b, i) => { byteTable[b] = String.fromCodePoint(cs[i]); });
  return byteTable;
}

const isWhitespace = (ch) => ' \t\n\r'.includes(ch) || ZS.test(ch);
const isControl = (ch) => !'\t\n\r'.includes(ch) && CONTROL.test(ch);
const isCjk = (ch) => {
  const cp = ch.codePointAt(0);
  return CJK_RANGES.some(([lo, hi]) => lo <= cp && cp <= hi);
};
const isLetter = (ch) => LETTER.test(ch);
const isNumber = (ch) => NUMBER.test(ch);

/** Step 1: BasicTokenizer normalisation; lowercased words joined by single spaces. */
export function cleanText(text) {
  const out = [];
  for (const ch of text) {
    if (ch === '\u0000' || ch === '\ufffd' || isControl(ch)) continue;
    if (isWhitespace(ch)) out.push(' ');
    else if (isCjk(ch)) out.push(` ${ch} `);
    else out.push(ch);
  }
  const words = out.join('').normalize('NFC').split(/\s+/u).filter((w) => w);
  return words.map((w) => w.toLowerCase()).join(' ');
}

/** Step 2: CLIP's regex as a scanner over code points. `text` is the output of cleanText. */
export function preTokenize(text) {
  const cps = Array.from(text);
  const pieces = [];
  const n = cps.length;
  const at = (i, s) => cps.slice(i, i + s.length).join('') === s;
  let i = 0;
  while (i < n) {
    const ch = cps[i];
    const special = [BOS, EOS].find((s) => at(i, s));
    if (special) {
      pieces.push(special);
      i += special.length;
      continue;
    }
    if (ch === "'") {
      const c = CONTRACTIONS.find((c) => cps.slice(i + 1, i + 1 + c.length).join('').toLowerCase() === c);
      if (c !== undefined) {
        pieces.push(cps.slice(i, i + 1 + c.length).join(''));
        i += 1 + c.length;
        continue;
      }
    }
    let j;
    if (isLetter(ch)) {
      j = i + 1;
      while (j < n && isLetter(cps[j])) j += 1;
    } else if (isNumber(ch)) {
      j = i + 1;
    } else if (SPACE.test(ch)) {
      i += 1;
      continue;
    } else {
      j = i + 1;
      while (j < n && !(SPACE.test(cps[j]) || isLetter(cps[j]) || isNumber(cps[j]))) j += 1;
    }
    pieces.push(cps.slice(i, j).join(''));
    i = j;
  }
  return pieces;
}

const utf8 = new TextEncoder();

export class CLIPBPETokenizer {
  /** vocab: {token: id}; merges: [[a, b], ...] in rank order. */
  constructor(vocab, merges, padToken = EOS) {
    for (const tok of [BOS, EOS, padToken]) {
      if (!Object.hasOwn(vocab, tok)) throw new PocketdiffError(`tokenizer vocab has no ${repr(tok)} token`);
    }
    this.encoder = new Map(Object.entries(vocab));
    this.bpeRanks = new Map(merges.map(([a, b], i) => [`${a} ${b}`, i]));
    this.byteEncoder = bytesToUnicode();
    this.bosId = vocab[BOS];
    this.eosId = vocab[EOS];
    this.padId = vocab[padToken];
    this.cache = new Map([[BOS, BOS], [EOS, EOS]]);
  }

  /**
   * The tokenizer from its files' text (vocabText, mergesText, specialText or null), each checked as Python's
   * `from_files`; `names` = {vocab, merges, special, folder}: the paths the messages name.
   */
  static fromTexts(vocabText, mergesText, specialText, names) {
    let vocab, lines, entry;
    try {
      vocab = JSON.parse(vocabText);
      lines = mergesText.trim().split('\n');
      entry = EOS;
      if (specialText !== null) {
        const special = JSON.parse(specialText);
        entry = special !== null && typeof special === 'object' && 'pad_token' in special ? special.pad_token : EOS;
      }
    } catch (exc) {
      throw new PocketdiffError(`cannot read the tokenizer (${names.folder}): ${exc.message}`);
    }
    const isObj = vocab !== null && typeof vocab === 'object' && !Array.isArray(vocab);
    if (!isObj || !Object.values(vocab).every((v) => Number.isInteger(v) && v >= 0)) {
      throw new PocketdiffError(`tokenizer vocab ${names.vocab} must be an object of token -> id (an integer >= 0)`);
    }
    // Same slice as transformers: skip the '#version' line, at most 49152 - 256 - 2 merges.
    const merges = lines.slice(1, 49152 - 256 - 2 + 1).map((line) => line.split(/\s+/u).filter((p) => p));
    if (merges.some((m) => m.length !== 2)) {
      throw new PocketdiffError(`tokenizer merges ${names.merges}: every line after the first must be two symbols`);
    }
    const pad = entry !== null && typeof entry === 'object' && !Array.isArray(entry) ? entry.content : entry;
    if (typeof pad !== 'string') {
      throw new PocketdiffError(`tokenizer ${names.special}: pad_token must be a string, got ${repr(pad)}`);
    }
    return new CLIPBPETokenizer(vocab, merges, pad);
  }

  /** Steps 3-4 for one pre-tokenised piece (already byte-encoded). */
  bpe(piece) {
    if (this.cache.has(piece)) return this.cache.get(piece).split(' ');
    const cps = Array.from(piece);
    let word = [...cps.slice(0, -1), cps[cps.length - 1] + '</w>'];
    while (word.length > 1) {
      let best = null;
      let bestRank = Infinity;
      for (let k = 0; k < word.length - 1; k++) {
        const rank = this.bpeRanks.get(`${word[k]} ${word[k + 1]}`);
        if (rank !== undefined && rank < bestRank) {
          bestRank = rank;
          best = [word[k], word[k + 1]];
        }
      }
      if (best === null) break;
      const merged = [];
      let k = 0;
      while (k < word.length) {
        if (k < word.length - 1 && word[k] === best[0] && word[k + 1] === best[1]) {
          merged.push(word[k] + word[k + 1]);
          k += 2;
        } else {
          merged.push(word[k]);
          k += 1;
        }
      }
      word = merged;
    }
    this.cache.set(piece, word.join(' '));
    return word;
  }

  /** Token ids of `text` without BOS/EOS/padding; literal specials are split out first. */
  tokenize(text) {
    const ids = [];
    while (text) {
      const hits = [BOS, EOS].filter((s) => text.includes(s)).map((s) => [text.indexOf(s), s]);
      if (!hits.length) {
        ids.push(...this.tokenizeChunk(text));
        break;
      }
      hits.sort((a, b) => a[0] - b[0]);
      const [pos, special] = hits[0];
      ids.push(...this.tokenizeChunk(text.slice(0, pos)));
      ids.push(this.encoder.get(special));
      text = text.slice(pos + special.length);
    }
    return ids;
  }

  tokenizeChunk(text) {
    const ids = [];
    for (const piece of preTokenize(cleanText(text))) {
      if (piece === BOS || piece === EOS) {
        ids.push(this.encoder.get(piece));
        continue;
      }
      const encoded = Array.from(utf8.encode(piece), (b) => this.byteEncoder[b]).join('');
      for (const tok of this.bpe(encoded)) ids.push(this.encoder.has(tok) ? this.encoder.get(tok) : this.eosId);
    }
    return ids;
  }

  /** BOS + ids + EOS padded to maxLength: {inputIds, nTokens, truncated}. Throws on overflow unless truncate. */
  encode(text, { maxLength = MAX_LENGTH, truncate = false } = {}) {
    let body = this.tokenize(text);
    const n = body.length + 2;
    if (n > maxLength && !truncate) {
      throw new PocketdiffError(`prompt is ${n} tokens (with start/end tokens), over the limit of ${maxLength}; ` +
        'shorten it or pass --truncate to cut it');
    }
    body = body.slice(0, maxLength - 2);
    const ids = [this.bosId, ...body, this.eosId];
    while (ids.length < maxLength) ids.push(this.padId);
    return { inputIds: ids, nTokens: Math.min(n, maxLength), truncated: n > maxLength };
  }
}
