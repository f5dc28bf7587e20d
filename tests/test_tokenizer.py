import itertools

import pytest

from pocketdiff.architectures.factory import load_tokenizer
from pocketdiff.architectures.vocab import TOKENIZER_DIR, build_vocab
from pocketdiff.errors import PocketdiffError
from pocketdiff.runtime.tokenizer import CLIPBPETokenizer

BASE = [
    "a small red circle in the top left on a grey background",
    "a blue square left of a yellow star",
    "A LARGE GREEN TRIANGLE in the Bottom Right",
    "two purple hexagons, one above the other.",
    "It's a cat's toy; they'd've liked it!",
    "don't STOP... e=mc^2 (really?)",
    "price: $19.99 -- 50% off!!!",
    "call 555-0123 at 10:30am, ok?",
    "café naïve résumé coöperate",
    "Ünïcödé ÀÉÎÕÜ ßẞ ﬁ ligature",
    "東京 タワー at night",
    "中文字符和English混合",
    "한국어 텍스트 and emoji 😀🎨🚀",
    "Ελληνικά γράμματα αβγ",
    "русский текст, привет!",
    "עברית וערבית العربية",
    "tabs\tand\nnewlines\r\nhere",
    "   leading and trailing spaces   ",
    "multiple     internal      spaces",
    "quotes \"double\" and 'single' and `back`",
    "brackets [square] {curly} <angle>",
    "slashes / back\\slash | pipe",
    "hash #tag @mention &amp; ~tilde",
    "numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14159",
    "½ ¾ ² ³ ① Ⅻ ٣ ߁",
    "zero\u200bwidth space and nbsp\u00a0here",
    "control\x07chars\x1bremoved",
    "<|startoftext|> literal special <|endoftext|>",
    "UPPER lower MiXeD cAsE",
    "hyphen-ated words and under_scores",
    "a photo of an astronaut riding a horse on mars",
    "portrait of a woman, oil painting, highly detailed, 8k",
    "''s ''t odd 's contractions 'RE 'Ve 'm 'LL 'D",
    "ends with apostrophe'",
    "x'sy x'tz don'ts",
    "emoji👍🏽with skin tone and ZWJ 👨‍👩‍👧",
    "ａｂｃ fullwidth ＡＢＣ １２３",
    "math ∑ ∫ √ ∞ ≠ ≤ ≥ ±",
    "arrows → ← ↑ ↓ ⇒",
    "currency € £ ¥ ₹ ₿",
    "",
    ".",
    "a",
    "!!!???",
    "superlongwordwithoutanyspacesatallthatkeepsgoingandgoing",
]
VARIANTS = [
    lambda s: s,
    str.upper,
    str.title,
    lambda s: s + " 42",
    lambda s: f"({s})!",
    lambda s: s.replace(" ", "  \t"),
]


def sentences():
    out = list(dict.fromkeys(v(s) for s, v in itertools.product(BASE, VARIANTS)))
    return out


def test_sentence_count():
    assert len(sentences()) >= 200


@pytest.fixture(scope="module")
def tokenizers():
    hf = load_tokenizer()
    hf.fix_text = None  # the ftfy-free path (ftfy is not a dependency; pin it even if installed)
    return hf, CLIPBPETokenizer.from_dir(TOKENIZER_DIR)


def test_parity_with_transformers(tokenizers):
    hf, ours = tokenizers
    mismatches = []
    for s in sentences():
        want = hf(s, padding="max_length", max_length=77, truncation=True).input_ids
        got = ours(s, truncate=True).input_ids
        if want != got:
            mismatches.append(s)
    assert not mismatches, f"{len(mismatches)} mismatches, e.g. {mismatches[:3]!r}"


def test_literal_ids():
    ours = CLIPBPETokenizer.from_dir(TOKENIZER_DIR)
    out = ours("a small red circle in the top left on a grey background")
    assert out.input_ids[:15] == [1059, 320, 709, 707, 647, 538, 604, 717, 558, 519, 320, 667, 623, 1060, 1060]
    assert out.n_tokens == 14 and len(out.input_ids) == 77
    assert ours("Hello, World! 123").input_ids[:14] == [1059, 521, 75, 75, 334, 267, 86, 533, 723, 256, 272, 273,
                                                         274, 1060]


def test_overflow_error_and_truncate():
    ours = CLIPBPETokenizer.from_dir(TOKENIZER_DIR)
    long = " ".join(["circle"] * 80)
    with pytest.raises(PocketdiffError, match="82 tokens.*limit of 77"):
        ours(long)
    out = ours(long, truncate=True)
    assert out.truncated and len(out.input_ids) == 77 and out.input_ids[-1] == ours.eos_id


def test_vocab_is_reproducible(tmp_path):
    build_vocab(tmp_path)
    for name in ("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == (TOKENIZER_DIR / name).read_bytes(), name
