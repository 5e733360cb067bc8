"""Check a bundle against the torch student it was exported from: outputs, rankings and recall.

1. Outputs: every graph at batch sizes 1, 3, 5 (the export traced batch 2) and, for text inputs, several token
   lengths (2, a middle one and the model's max_len), with padded rows; the max |ONNX - torch| of each output
   against its named tolerance below.
2. Rankings on a split (the run's test split): top-k image->text and text->image lists from the bundle's
   embeddings against torch's, equal up to ties: at every rank the item the bundle puts there has, under torch's
   scores, the score torch has at that rank, within `RANK_TIE`. Identical lists are counted too.
3. Recall: R@1/5/10 (rebalance_ref.metrics.retrieval_recall) from the bundle's embeddings equal to torch's. When
   they differ, the check still passes if every query's rank under the bundle lies within the ranks torch gives
   it when scores closer than `RANK_TIE` to the positive's count as ties (a near-tie that float32 rounding may
   order either way); the table says which of the two held.

`verify_bundle` returns a `VerifyReport` whose `ok` is False if any check fails; `rebalance export --verify`
prints `report.table()` and exits non-zero then.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Export tolerances, in one place. Embeddings are unit vectors (entries <= 1): float32 graphs that run the same
# arithmetic in another order differ by ~1e-7; 1e-5 leaves room for fused kernels and other CPUs. ITM logits are
# O(1-10) after a LayerNorm/GELU head: 1e-4 in absolute terms.
TOLERANCES = {"v": 1e-5, "t": 1e-5, "itm_logits": 1e-4}
# Two cosine scores closer than this count as tied when rankings are compared (2 x the embedding tolerance,
# since a cosine of two unit vectors each off by TOL is off by at most ~2 TOL).
RANK_TIE = 2 * TOLERANCES["v"]
BATCH_SIZES = (1, 3, 5)
TOP_K = 10
SEED = 0


@dataclass
class OutputCheck:
    graph: str
    output: str
    batch: int
    length: int | None
    shape: tuple[int, ...]
    max_abs_diff: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.max_abs_diff) and self.max_abs_diff <= self.tolerance)


@dataclass
class VerifyReport:
    outputs: list[OutputCheck] = field(default_factory=list)
    rankings: dict = field(default_factory=dict)   # direction -> {"queries", "identical", "equal_up_to_ties"}
    recall: dict = field(default_factory=dict)     # "bundle" / "torch" -> R@K dict, "ranks_within_ties" -> bool

    @property
    def ok(self) -> bool:
        ranks_ok = all(r["equal_up_to_ties"] == r["queries"] for r in self.rankings.values())
        recall = self.recall
        recall_ok = not recall or recall["bundle"] == recall["torch"] or recall["ranks_within_ties"]
        return all(c.ok for c in self.outputs) and ranks_ok and recall_ok

    def to_dict(self) -> dict:
        return {"ok": self.ok, "tolerances": dict(TOLERANCES), "rank_tie": RANK_TIE,
                "outputs": [{**c.__dict__, "shape": list(c.shape), "ok": c.ok} for c in self.outputs],
                "rankings": self.rankings, "recall": self.recall}

    def table(self) -> str:
        """The checks as a plain-text table, one line per output, then rankings and recall."""
        lines = [f"{'graph':<14}{'output':<11}{'batch':>6}{'length':>7}  {'shape':<14}{'max |diff|':>12}"
                 f"{'tolerance':>11}  ok"]
        for c in self.outputs:
            lines.append(f"{c.graph:<14}{c.output:<11}{c.batch:>6}{'' if c.length is None else c.length:>7}  "
                         f"{str(c.shape):<14}{c.max_abs_diff:>12.2e}{c.tolerance:>11.0e}  {'yes' if c.ok else 'NO'}")
        for direction, r in self.rankings.items():
            lines.append(f"top-{r['k']} {direction}: {r['identical']}/{r['queries']} lists identical, "
                         f"{r['equal_up_to_ties']}/{r['queries']} equal up to ties (|score gap| <= {RANK_TIE:.0e})")
        if self.recall:
            keys = [k for k in self.recall["torch"] if "_r" in k]
            lines.append("R@K      " + " ".join(f"{k:>8}" for k in keys))
            for side in ("bundle", "torch"):
                lines.append(f"{side:<9}" + " ".join(f"{self.recall[side][k]:>8.2f}" for k in keys))
            equal = self.recall["bundle"] == self.recall["torch"]
            within = "yes" if self.recall["ranks_within_ties"] else "NO"
            lines.append(f"R@K equal: {'yes' if equal else 'no'}"
                         + ("" if equal else f"; every rank within torch's near-ties: {within}"))
        lines.append("verification " + ("passed" if self.ok else "FAILED"))
        return "\n".join(lines)


def text_lengths(max_len: int) -> tuple[int, ...]:
    """Token lengths checked: 2 ([CLS] + a word), a middle length, and max_len."""
    return tuple(sorted({min(2, max_len), max(1, (max_len + 1) // 2), max_len}))


def _inputs(config, batch: int, length: int, rng: np.random.Generator):
    """Random images (B, 3, S, S) in [0, 1] and ids/mask (B, L) in which every row after the first is padded."""
    images = rng.random((batch, 3, config.image_size, config.image_size), dtype=np.float32)
    ids = rng.integers(3, config.vocab_size, (batch, length)).astype(np.int64)
    ids[:, 0] = 1
    lengths = rng.integers(1, length + 1, batch)
    lengths[0] = length
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    return images, ids * mask, mask


def verify_outputs(retriever, student, batch_sizes=BATCH_SIZES, lengths: tuple[int, ...] | None = None,
                   seed: int = SEED) -> list[OutputCheck]:
    """Max |ONNX - torch| of every output of every graph, per batch size (and text length)."""
    import torch

    from rebalance_torch.models import ImageEmbedder, PairScorer, TextEmbedder

    config = student.config
    lengths = text_lengths(config.max_len) if lengths is None else lengths
    rng = np.random.default_rng(seed)
    modules = {"image_encoder": ImageEmbedder(student), "text_encoder": TextEmbedder(student),
               "fusion_itm": PairScorer(student)}
    checks = []
    was_training = student.training
    student.eval()
    with torch.no_grad():
        for name in (n for n in modules if n in retriever.sessions):
            session = retriever.sessions[name]
            output = session.get_outputs()[0].name
            for batch in batch_sizes:
                for length in ((None,) if name == "image_encoder" else lengths):
                    images, ids, mask = _inputs(config, batch, length or 2, rng)
                    feeds = {"images": images, "ids": ids, "mask": mask}
                    feeds = {i.name: feeds[i.name] for i in session.get_inputs()}
                    (got,) = session.run(None, feeds)
                    want = modules[name](*(torch.from_numpy(v) for v in feeds.values())).numpy()
                    diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
                    checks.append(OutputCheck(name, output, batch, length, tuple(got.shape), diff,
                                              TOLERANCES[output]))
    student.train(was_training)
    return checks


def _agreement(bundle_sims: np.ndarray, torch_sims: np.ndarray, k: int) -> dict:
    """Top-k lists from the bundle's scores vs torch's, identical and equal up to ties (see module doc)."""
    k = min(k, bundle_sims.shape[1])
    # Stable sort of each row by descending score: ties keep the lower index first, as the runtime's search does.
    got = np.argsort(-bundle_sims, axis=1, kind="stable")[:, :k]
    want = np.argsort(-torch_sims, axis=1, kind="stable")[:, :k]
    want_scores = np.take_along_axis(torch_sims, want, axis=1)
    under_torch = np.take_along_axis(torch_sims, got, axis=1)
    ties = np.all(np.abs(under_torch - want_scores) <= RANK_TIE, axis=1)
    return {"k": k, "queries": int(len(got)), "identical": int(np.all(got == want, axis=1).sum()),
            "equal_up_to_ties": int(ties.sum())}


def verify_rankings(retriever, student, tokenizer, split, k: int = TOP_K) -> tuple[dict, dict]:
    """(rankings, recall) of the bundle's embeddings vs torch's on a `CaptionedImages` split."""
    from rebalance_ref.metrics import retrieval_recall
    from rebalance_torch.evaluate import encode_split

    emb = encode_split(student, split, tokenizer, keep_tokens=False)
    txt2img, captions = split.pairs()
    v, t = retriever.encode_images(split.images), retriever.encode_texts(captions)
    bundle, torch_ = v @ t.T, emb.v @ emb.t.T  # (N, C) cosine
    rankings = {"image->text": _agreement(bundle, torch_, k), "text->image": _agreement(bundle.T, torch_.T, k)}
    recall = {"bundle": retrieval_recall(bundle, txt2img), "torch": retrieval_recall(torch_, txt2img),
              "ranks_within_ties": ranks_within_ties(bundle, torch_, txt2img)}
    return rankings, recall


def ranks_within_ties(bundle_sims: np.ndarray, torch_sims: np.ndarray, txt2img: np.ndarray,
                      tie: float = RANK_TIE) -> bool:
    """True if each query's rank (both directions) under the bundle's scores lies between the ranks torch's scores
    give when the positives are moved up, then down, by `tie` (rebalance_ref.metrics.retrieval_ranks)."""
    from rebalance_ref.metrics import retrieval_ranks

    positives = np.zeros(torch_sims.shape, dtype=torch_sims.dtype)
    positives[txt2img, np.arange(len(txt2img))] = tie  # (N, C): the image-caption pairs
    got = retrieval_ranks(bundle_sims, txt2img)
    low = retrieval_ranks(torch_sims + positives, txt2img, ties="optimistic")
    high = retrieval_ranks(torch_sims - positives, txt2img, ties="pessimistic")
    return all(bool(np.all((lo <= g) & (g <= hi))) for g, lo, hi in zip(got, low, high, strict=True))


def verify_bundle(bundle_dir: str | Path, student, tokenizer, split=None, *, threads: int = 1,
                  batch_sizes=BATCH_SIZES, lengths: tuple[int, ...] | None = None, k: int = TOP_K) -> VerifyReport:
    """All checks of a bundle against `student` (and, given a split, its rankings and recall)."""
    from exports.serving.runtime import Retriever

    retriever = Retriever.load(bundle_dir, threads=threads, load_gallery=False)
    report = VerifyReport(outputs=verify_outputs(retriever, student, batch_sizes, lengths))
    if split is not None:
        report.rankings, report.recall = verify_rankings(retriever, student, tokenizer, split, k)
    return report


def verify_run_bundle(bundle_dir: str | Path, run_dir: str | Path, which: str = "best", threads: int = 1,
                      split: str = "test") -> VerifyReport:
    """`verify_bundle` for the student of a run folder, on the run's own `split` (rebuilt from its config)."""
    from rebalance_torch.checkpoint import load_student
    from rebalance_torch.data import load_splits

    student, config, tokenizer = load_student(run_dir, which=which)
    return verify_bundle(bundle_dir, student, tokenizer, load_splits(config)[split], threads=threads)
