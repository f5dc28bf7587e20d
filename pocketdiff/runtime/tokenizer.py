"""CLIP byte-level BPE tokenizer reading ``vocab.json`` + ``merges.txt``; no torch, no ``regex``.

It mirrors transformers' slow ``CLIPTokenizer`` on its ftfy-free path (the one a phone can
reproduce), step by step, so the Swift and Kotlin ports can follow this file:

0. **Split out** literal ``<|startoftext|>``/``<|endoftext|>``; steps 1-4 run on each chunk between them.
1. **Clean** (BERT ``BasicTokenizer``, ``strip_accents=False``, no punctuation split): drop NUL,
   U+FFFD and control characters (category C*, except tab/newline/CR which become spaces), map
   whitespace (tab/newline/CR/space or category Zs) to a space, put spaces around CJK ideographs,
   NFC-normalise, split on whitespace, lowercase each word, join with single spaces.
2. **Pre-tokenise** with CLIP's pattern
   ``<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+``
   (first alternative that matches at each position wins), written out as a scanner over Unicode
   categories (L* letters, N* numbers).
3. **Bytes to symbols:** UTF-8 bytes through GPT-2's ``bytes_to_unicode`` table; the last symbol of
   each piece gets ``</w>``.
4. **BPE:** repeatedly merge the adjacent pair with the lowest rank in ``merges.txt``.
5. **Ids:** ``<|startoftext|>`` + ids + ``<|endoftext|>``, padded with the pad token to
   ``max_length`` (77). Longer prompts are an error unless ``truncate=True``.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pocketdiff.errors import PocketdiffError

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MAX_LENGTH = 77
_CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")
_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def clean_text(text: str) -> str:
    """Step 1: BasicTokenizer normalisation; returns lowercased words joined by single spaces."""
    out = []
    for ch in text:
        if ch == "\x00" or ch == "\ufffd" or _is_control(ch):
            continue
        if _is_whitespace(ch):
            out.append(" ")
        elif _is_cjk(ch):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    words = unicodedata.normalize("NFC", "".join(out)).split()
    return " ".join(w.lower() for w in words)


def _is_letter(ch: str) -> bool:
    return unicodedata.category(ch).startswith("L")


def _is_number(ch: str) -> bool:
    return unicodedata.category(ch).startswith("N")


def pre_tokenize(text: str) -> list[str]:
    """Step 2: CLIP's regex as a scanner. ``text`` is the output of :func:`clean_text`."""
    pieces: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        special = next((s for s in (BOS, EOS) if text.startswith(s, i)), None)
        if special:
            pieces.append(special)
            i += len(special)
            continue
        if ch == "'":
            c = next((c for c in _CONTRACTIONS if text[i + 1 : i + 1 + len(c)].lower() == c), None)
            if c is not None:
                pieces.append(text[i : i + 1 + len(c)])
                i += 1 + len(c)
                continue
        if _is_letter(ch):
            j = i + 1
            while j < n and _is_letter(text[j]):
                j += 1
        elif _is_number(ch):
            j = i + 1
        elif ch.isspace():
            i += 1
            continue
        else:
            j = i + 1
            while j < n and not (text[j].isspace() or _is_letter(text[j]) or _is_number(text[j])):
                j += 1
        pieces.append(text[i:j])
        i = j
    return pieces


@dataclass(frozen=True)
class TokenizerOutput:
    input_ids: list[int]  # exactly max_length ids
    n_tokens: int  # tokens before padding, including BOS and EOS
    truncated: bool


class CLIPBPETokenizer:
    """Loads ``vocab.json`` + ``merges.txt`` (CLIP format) and encodes prompts to 77 ids."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], pad_token: str = EOS):
        for tok in (BOS, EOS, pad_token):
            if tok not in vocab:
                raise PocketdiffError(f"tokenizer vocab has no {tok!r} token")
        self.encoder = vocab
        self.bpe_ranks = {pair: i for i, pair in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.bos_id, self.eos_id, self.pad_id = vocab[BOS], vocab[EOS], vocab[pad_token]
        self._cache = {BOS: BOS, EOS: EOS}

    @classmethod
    def from_dir(cls, path: str | Path) -> "CLIPBPETokenizer":
        """Read ``vocab.json``, ``merges.txt`` and, if present, the pad token from ``special_tokens_map.json``."""
        path = Path(path)
        for name in ("vocab.json", "merges.txt"):
            if not (path / name).is_file():
                raise PocketdiffError(f"tokenizer folder {path} has no {name}")
        special = path / "special_tokens_map.json"
        return cls.from_files(path / "vocab.json", path / "merges.txt", special if special.is_file() else None)

    @classmethod
    def from_files(cls, vocab_file: Path, merges_file: Path, special_file: Path | None = None) -> "CLIPBPETokenizer":
        """The tokenizer from its files, each checked: a vocab object of token -> non-negative int id, merge lines
        of two symbols, a pad token that is a string; anything else is one error naming the file."""
        try:
            vocab = json.loads(Path(vocab_file).read_text(encoding="utf-8"))
            lines = Path(merges_file).read_text(encoding="utf-8").strip().split("\n")
            entry = json.loads(Path(special_file).read_text(encoding="utf-8")).get("pad_token", EOS) \
                if special_file is not None else EOS
        except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
            raise PocketdiffError(f"cannot read the tokenizer ({vocab_file.parent}): {exc}") from None
        if not isinstance(vocab, dict) or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                                  and v >= 0 for k, v in vocab.items()):
            raise PocketdiffError(f"tokenizer vocab {vocab_file} must be an object of token -> id (an integer >= 0)")
        # Same slice as transformers: skip the '#version' line, at most 49152 - 256 - 2 merges.
        merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
        if any(len(m) != 2 for m in merges):
            raise PocketdiffError(f"tokenizer merges {merges_file}: every line after the first must be two symbols")
        pad = entry.get("content") if isinstance(entry, dict) else entry
        if not isinstance(pad, str):
            raise PocketdiffError(f"tokenizer {special_file}: pad_token must be a string, got {pad!r}")
        return cls(vocab, merges, pad_token=pad)

    def bpe(self, piece: str) -> list[str]:
        """Steps 3-4 for one pre-tokenised piece (already byte-encoded)."""
        if piece in self._cache:
            return self._cache[piece].split(" ")
        word = tuple(piece[:-1]) + (piece[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(word[k], word[k + 1]) for k in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            merged, k = [], 0
            while k < len(word):
                if k < len(word) - 1 and (word[k], word[k + 1]) == best:
                    merged.append(word[k] + word[k + 1])
                    k += 2
                else:
                    merged.append(word[k])
                    k += 1
            word = tuple(merged)
        self._cache[piece] = " ".join(word)
        return list(word)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` without BOS/EOS/padding.

        Literal special tokens are split out first (as transformers' added-token trie does), and each
        chunk between them is cleaned and pre-tokenised on its own.
        """
        ids: list[int] = []
        while text:
            hits = [(text.find(s), s) for s in (BOS, EOS) if s in text]
            if not hits:
                ids.extend(self._tokenize_chunk(text))
                break
            pos, special = min(hits)
            ids.extend(self._tokenize_chunk(text[:pos]))
            ids.append(self.encoder[special])
            text = text[pos + len(special):]
        return ids

    def _tokenize_chunk(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in pre_tokenize(clean_text(text)):
            if piece in (BOS, EOS):
                ids.append(self.encoder[piece])
                continue
            encoded = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder.get(tok, self.eos_id) for tok in self.bpe(encoded))
        return ids

    def __call__(self, text: str, max_length: int = MAX_LENGTH, truncate: bool = False) -> TokenizerOutput:
        """BOS + ids + EOS padded to ``max_length``. Raises on overflow unless ``truncate``."""
        body = self.tokenize(text)
        n = len(body) + 2
        if n > max_length and not truncate:
            raise PocketdiffError(
                f"prompt is {n} tokens (with start/end tokens), over the limit of {max_length}; "
                "shorten it or pass --truncate to cut it"
            )
        body = body[: max_length - 2]
        ids = [self.bos_id, *body, self.eos_id]
        return TokenizerOutput(ids + [self.pad_id] * (max_length - len(ids)), min(n, max_length), n > max_length)
