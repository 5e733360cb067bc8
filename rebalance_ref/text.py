"""The one text normaliser: text read as written, in any script, case folded, split into words.

Shared by the tokenizer (training and the ONNX runtime) and by ROUGE-L relevance, so that "a word" means the
same thing everywhere.

A word is a run of letters and digits (with the combining marks that follow them, so Devanagari vowel signs and
decomposed accents stay inside their word). Text is first brought to Unicode NFKC form and case folded, so that
"Café", "café" and "cafe" + a combining acute accent are the same word "café"; accents are kept, not stripped
(stripping would merge distinct words in many languages, e.g. Cyrillic "й" and "и"). Each CJK ideograph is a
word of its own (Chinese and Japanese put no spaces between words; this is the rule BERT's tokenizers use), and
so is each pictographic symbol such as an emoji. Everything else (punctuation, spaces, joiners, skin-tone
modifiers) separates words. Scripts written without spaces and without ideographs (Thai, Lao, kana runs)
become one word per run.

ASCII text takes a fast path that gives exactly what the earlier ASCII-only rule gave (lowercase, every
character other than a-z and 0-9 separates words), so vocabularies built before stay valid.
"""

from __future__ import annotations

import re
import unicodedata

_NON_WORD = re.compile(r"[^0-9a-z]+")

# The CJK ideograph blocks (Unified, Extensions A to E, Compatibility, Compatibility Supplement).
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
               (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _alone(ch: str) -> bool:
    """Whether `ch` is a word by itself: a CJK ideograph or a pictographic symbol (Unicode category So)."""
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in _CJK_RANGES) or unicodedata.category(ch) == "So"


def normalize_text(text: str) -> str:
    """`text` in NFKC form, case folded (then NFKC again, since folding can undo the composed form)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def words(text: str) -> list[str]:
    """Split `text` into case-folded words (see the module's description of a word)."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    if text.isascii():
        return _NON_WORD.sub(" ", text.lower()).split()
    out: list[str] = []
    current: list[str] = []
    for ch in normalize_text(text):
        kind = unicodedata.category(ch)[0]
        if _alone(ch):
            if current:
                out.append("".join(current))
                current = []
            out.append(ch)
        elif kind in "LN" or (kind == "M" and current):
            current.append(ch)
        elif current:
            out.append("".join(current))
            current = []
    if current:
        out.append("".join(current))
    return out
