"""A small word-level tokenizer shared by the trainer and the torch-free ONNX runtime.

Words come from `rebalance_ref.text.words` (any script, NFKC and case folded, punctuation stripped). Ids:
`[PAD]` = 0, `[CLS]` = 1, `[UNK]` = 2, then the vocabulary by descending count (ties alphabetical). `encode` puts
`[CLS]` at position 0, truncates to `max_len` tokens in all, and pads to the longest sequence in the batch. Saved
as JSON with a format version. Pure Python + NumPy: no torch here.

A word outside the vocabulary silently becomes `[UNK]` in `encode`; `unknown_words` names such words so that a
caller can say so, and `check_query` refuses a text with no word at all or none the vocabulary knows (its
embedding would be that of `[CLS]` alone, the same for every such text). Sizes are bounded by
`limits.MAX_VOCAB_SIZE` and `limits.MAX_TOKENS`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from rebalance_ref.files import DataError, read_json, write_json_atomic
from rebalance_ref.limits import MAX_TOKENS, MAX_VOCAB_SIZE
from rebalance_ref.text import words

PAD, CLS, UNK = "[PAD]", "[CLS]", "[UNK]"
SPECIALS = (PAD, CLS, UNK)
FORMAT = "rebalance-tokenizer"
FORMAT_VERSION = 1


class Tokenizer:
    """Word-level tokenizer: `build` from captions, `encode` to (ids, mask), `decode`, `save` / `load` JSON."""

    def __init__(self, vocab: Sequence[str], max_len: int = 32):
        vocab = list(vocab)
        if vocab[: len(SPECIALS)] != list(SPECIALS):
            raise ValueError(f"vocab must start with {list(SPECIALS)}, got {vocab[:3]}")
        if len(vocab) > MAX_VOCAB_SIZE:
            raise DataError(f"vocabulary of {len(vocab)} tokens is larger than the limit of {MAX_VOCAB_SIZE}")
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocab must not repeat a token")
        self.max_len = _check_max_len(max_len, "max_len")
        self.vocab = vocab
        self.index = {token: i for i, token in enumerate(vocab)}

    @classmethod
    def build(cls, texts: Iterable[str], max_len: int = 32, min_count: int = 1) -> Tokenizer:
        """Vocabulary of the words occurring at least `min_count` times in `texts` (e.g. the training captions)."""
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"min_count must be an int >= 1, got {min_count!r}")
        if isinstance(texts, str):
            raise ValueError("texts must be a sequence of str, not a single str")
        counts = Counter(w for text in texts for w in words(text))
        kept = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
                      key=lambda w: (-counts[w], w))
        if len(kept) + len(SPECIALS) > MAX_VOCAB_SIZE:
            raise DataError(f"the texts hold {len(kept)} distinct words seen at least {min_count} time(s), more "
                            f"than the vocabulary limit of {MAX_VOCAB_SIZE}; raise the minimum word count")
        return cls(list(SPECIALS) + kept, max_len=max_len)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def cls_id(self) -> int:
        return 1

    @property
    def unk_id(self) -> int:
        return 2

    def encode(self, texts: Sequence[str], max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and mask, both int64 (B, L): [CLS] + words, L = the longest in the batch, capped at max_len."""
        if isinstance(texts, str):
            raise ValueError("texts must be a sequence of str, not a single str (wrap it in a list)")
        texts = list(texts)
        if not texts:
            raise ValueError("texts must hold at least one text")
        cap = self.max_len if max_len is None else _check_max_len(max_len, "max_len")
        rows = [[self.cls_id] + [self.index.get(w, self.unk_id) for w in words(t)] for t in texts]
        rows = [r[:cap] for r in rows]
        length = max(len(r) for r in rows)
        ids = np.zeros((len(rows), length), dtype=np.int64)
        mask = np.zeros((len(rows), length), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        return ids, mask

    def unknown_words(self, text: str) -> list[str]:
        """The words of `text` that the vocabulary does not know (each once, in order of appearance): what
        `encode` turns into [UNK]."""
        return list(dict.fromkeys(w for w in words(text) if w not in self.index))

    def check_query(self, text: str, what: str = "query") -> list[str]:
        """Raise DataError if `text` holds no word, or no word the vocabulary knows (it would be encoded as
        [CLS] alone); else return its unknown words (possibly none), for a warning. `what` names the text in
        the message (e.g. "query", "caption 3")."""
        found = words(text)
        if not found:
            raise DataError(f"{what} {text!r:.80} holds no word (letters or digits)")
        unknown = self.unknown_words(text)
        if len(unknown) == len(set(found)):
            listed = ", ".join(map(repr, unknown[:5])) + (", ..." if len(unknown) > 5 else "")
            raise DataError(f"{what} {text!r:.80}: the vocabulary knows none of its words ({listed})")
        return unknown

    def decode(self, ids) -> str | list[str]:
        """Words of a (L,) id row, or a list for a (B, L) batch; [PAD] and [CLS] are skipped, [UNK] kept."""
        arr = np.asarray(ids)
        if arr.ndim == 2:
            return [self.decode(row) for row in arr]
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"ids must be integer (L,) or (B, L), got {arr.dtype} {arr.shape}")
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ValueError(f"ids must lie in [0, {self.vocab_size}), got range [{arr.min()}, {arr.max()}]")
        return " ".join(self.vocab[i] for i in arr.tolist() if i not in (self.pad_id, self.cls_id))

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, "max_len": self.max_len, "vocab": self.vocab}

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as JSON (written to a temporary file, then moved into place)."""
        write_json_atomic(path, self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: dict, source: str = "tokenizer data") -> Tokenizer:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DataError(f"{source} is not a rebalance tokenizer (expected format {FORMAT!r})")
        if data.get("version") != FORMAT_VERSION:
            raise DataError(f"{source} has tokenizer format version {data.get('version')!r}; "
                             f"this rebalance reads version {FORMAT_VERSION}")
        vocab = data.get("vocab")
        if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab):
            raise DataError(f"{source}: 'vocab' must be a list of str")
        for i, token in enumerate(vocab[len(SPECIALS):], start=len(SPECIALS)):
            if words(token) != [token]:  # a token `encode` could never produce: a hand-edited or foreign file
                raise DataError(f"{source}: 'vocab' entry {i} {token!r:.40} is not one normalised word")
        try:
            return cls(vocab, max_len=data.get("max_len"))
        except ValueError as exc:
            raise DataError(f"{source}: {exc}") from exc

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a tokenizer written by `save`; a clear ValueError names the file if it is not one."""
        return cls.from_dict(read_json(path), source=str(path))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.vocab == other.vocab and self.max_len == other.max_len

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, max_len={self.max_len})"


def _check_max_len(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 1 <= value <= MAX_TOKENS:
        raise ValueError(f"{name} must be an int from 1 to {MAX_TOKENS} (it counts [CLS]), got {value!r}")
    return int(value)
