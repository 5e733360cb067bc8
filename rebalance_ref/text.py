"""The one text normaliser: lowercase, punctuation stripped, split on whitespace.

Shared by the tokenizer (training and the ONNX runtime) and by ROUGE-L relevance, so that "a word" means the
same thing everywhere.
"""

from __future__ import annotations

import re

_NON_WORD = re.compile(r"[^0-9a-z]+")


def words(text: str) -> list[str]:
    """Split `text` into lowercase alphanumeric words; every other character separates words."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    return _NON_WORD.sub(" ", text.lower()).split()
