"""Project-written CLIP-format BPE vocabulary (``vocab.json`` + ``merges.txt``).

No CLIP vocabulary can be downloaded here, so pocketdiff learns a small byte-level BPE on a fixed
word list: the toy world's words (shapes, colours, sizes, positions, relations) weighted up, plus
common English so that arbitrary prompts still tokenize. Every byte is in the vocabulary, so any
text encodes. The files are committed under ``architectures/tokenizer/``; :func:`build_vocab`
regenerates them byte for byte (a test checks this).

Layout is CLIP's: 256 byte symbols, the same with ``</w>``, one entry per merge, then
``<|startoftext|>`` and ``<|endoftext|>`` (the highest id, as the text encoder's pooling expects).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from pocketdiff.runtime.tokenizer import BOS, EOS, bytes_to_unicode

TOKENIZER_DIR = Path(__file__).parent / "tokenizer"
NUM_MERGES = 700

# Toy-world words (weighted x20) then general English (x1).
_TOY_WORDS = """
a an the of on in at to with and is are there one two image picture photo render drawing
circle square triangle star heart cross hexagon diamond ring pentagon moon shape shapes object
red orange yellow green blue purple pink cyan white black grey gray brown magenta teal
small large big tiny little huge
top bottom left right center centre middle upper lower corner side edge
above below under over beside next near between left of right of background plain
"""
_ENGLISH = """
the be to of and a in that have it for not on with he as you do at this but his by from they we say
her she or an will my all would there their what so up out if about who get which go me when make can
like time no just him know take people into year your good some could them see other than then now look
only come its over think also back after use two how our work first well way even new want because any
these give day most us is was were been has had did does made said went seen done city street house tree
car dog cat bird river mountain sky sun cloud rain snow night morning light dark bright colourful colorful
portrait painting photograph photorealistic detailed high quality art artist style studio lighting camera
beautiful old young man woman child girl boy face eyes hair smile standing sitting walking running table
chair window door room kitchen garden forest beach ocean sea lake field flower flowers grass stone wood
glass metal water fire ice gold silver cinematic sharp focus wide angle close shot view scene landscape
"""


def _corpus() -> Counter:
    counts: Counter = Counter()
    for word in _TOY_WORDS.split():
        counts[word] += 20
    for word in _ENGLISH.split():
        counts[word] += 1
    return counts


def learn_merges(word_counts: Counter, num_merges: int) -> list[tuple[str, str]]:
    """Greedy byte-level BPE: merge the most frequent adjacent pair (ties: smallest pair) each round.

    A merge whose product already exists as a token is skipped, so every vocab entry is unique.
    """
    byte_enc = bytes_to_unicode()
    words = {}
    for w, c in word_counts.items():
        symbols = [byte_enc[b] for b in w.encode("utf-8")]
        symbols[-1] += "</w>"
        words[tuple(symbols)] = words.get(tuple(symbols), 0) + c
    known = set(byte_enc.values()) | {v + "</w>" for v in byte_enc.values()}
    merges: list[tuple[str, str]] = []
    while len(merges) < num_merges:
        pairs: Counter = Counter()
        for sym, c in words.items():
            for k in range(len(sym) - 1):
                pairs[(sym[k], sym[k + 1])] += c
        candidates = sorted((p for p in pairs if p[0] + p[1] not in known), key=lambda p: (-pairs[p], p))
        if not candidates:
            break
        best = candidates[0]
        merges.append(best)
        known.add(best[0] + best[1])
        new_words = {}
        for sym, c in words.items():
            out, k = [], 0
            while k < len(sym):
                if k < len(sym) - 1 and (sym[k], sym[k + 1]) == best:
                    out.append(sym[k] + sym[k + 1])
                    k += 2
                else:
                    out.append(sym[k])
                    k += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + c
        words = new_words
    return merges


def build_vocab(out_dir: str | Path, num_merges: int = NUM_MERGES) -> Path:
    """Write ``vocab.json``, ``merges.txt``, ``special_tokens_map.json`` and ``tokenizer_config.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    merges = learn_merges(_corpus(), num_merges)
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    assert len(vocab) == len(tokens), "duplicate vocab entries"
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (out_dir / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        **special,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out_dir


def vocab_size(tokenizer_dir: str | Path = TOKENIZER_DIR) -> int:
    return len(json.loads((Path(tokenizer_dir) / "vocab.json").read_text(encoding="utf-8")))
