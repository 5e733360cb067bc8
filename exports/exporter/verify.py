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

4. Codes (a bundle with code graphs, checked against the hash heads it was exported from): each code graph's
   output h at the batch sizes above, max |ONNX - torch| against `TOLERANCES["h"]`; on the split, the packed codes
   the bundle makes (its code graphs on its own embeddings) against torch's (the heads on torch's embeddings):
   equal, or differing only in bits whose torch value lies within `CODE_TIE` of 0 (a sign that float32 rounding
   may flip). The table says how many bits differ.

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
TOLERANCES = {"v": 1e-5, "t": 1e-5, "itm_logits": 1e-4, "h": 1e-5}
# Two cosine scores closer than this count as tied when rankings are compared (2 x the embedding tolerance,
# since a cosine of two unit vectors each off by TOL is off by at most ~2 TOL).
RANK_TIE = 2 * TOLERANCES["v"]
# A code bit whose relaxed value h (torch) lies within this of 0 may flip between the bundle and torch: h =
# tanh(alpha W (m * z)) moves by up to alpha ||W row|| times the embeddings' 1e-5 (alpha <= ~5, ||W row|| ~ 10).
CODE_TIE = 1e-3
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
    codes: dict = field(default_factory=dict)      # "bits", "rows", "bits_differing", "differing_outside_ties"

    @property
    def ok(self) -> bool:
        ranks_ok = all(r["equal_up_to_ties"] == r["queries"] for r in self.rankings.values())
        recall = self.recall
        recall_ok = not recall or recall["bundle"] == recall["torch"] or recall["ranks_within_ties"]
        codes_ok = not self.codes or self.codes["differing_outside_ties"] == 0
        return all(c.ok for c in self.outputs) and ranks_ok and recall_ok and codes_ok

    def to_dict(self) -> dict:
        return {"ok": self.ok, "tolerances": dict(TOLERANCES), "rank_tie": RANK_TIE, "code_tie": CODE_TIE,
                "outputs": [{**c.__dict__, "shape": list(c.shape), "ok": c.ok} for c in self.outputs],
                "rankings": self.rankings, "recall": self.recall, "codes": self.codes}

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
        if self.codes:
            c = self.codes
            lines.append(f"codes ({c['bits']} bits, {c['rows']} rows): packed codes "
                         f"{'equal' if c['bits_differing'] == 0 else 'differ in ' + str(c['bits_differing']) + ' bits'}"
                         f"; bits differing where |h| > {CODE_TIE:.0e}: {c['differing_outside_ties']}")
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
                   seed: int = SEED, heads=None) -> list[OutputCheck]:
    """Max |ONNX - torch| of every output of every graph, per batch size (and text length); with `heads` (the
    `CodeHeads` the bundle's code graphs came from), of the code graphs too, on random unit embeddings."""
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
        if heads is not None and retriever.has_codes:
            for side, name in retriever.manifest["codes"]["graphs"].items():
                for batch in batch_sizes:
                    z = rng.standard_normal((batch, config.embed_dim)).astype(np.float32)
                    z /= np.linalg.norm(z, axis=1, keepdims=True)
                    got = retriever.code_values(z, side)
                    want = heads.relaxed(z, side)
                    diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
                    checks.append(OutputCheck(name, "h", batch, None, tuple(got.shape), diff, TOLERANCES["h"]))
    student.train(was_training)
    return checks


def verify_codes(retriever, heads, v_bundle: np.ndarray, t_bundle: np.ndarray, v_torch: np.ndarray,
                 t_torch: np.ndarray) -> dict:
    """The bundle's packed codes of its own embeddings vs torch's of torch's: bits that differ, and how many of
    them lie outside the near-ties (|h_torch| > CODE_TIE)."""
    differing = outside = rows = 0
    for side, x_bundle, x_torch in (("image", v_bundle, v_torch), ("text", t_bundle, t_torch)):
        got = retriever.code_values(x_bundle, side) > 0
        h = heads.relaxed(x_torch, side)
        flips = got != (h > 0)
        differing += int(flips.sum())
        outside += int((flips & (np.abs(h) > CODE_TIE)).sum())
        rows += len(h)
    return {"bits": retriever.code_bits, "rows": rows, "bits_differing": differing, "differing_outside_ties": outside}


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


def verify_rankings(retriever, student, tokenizer, split, k: int = TOP_K, heads=None) -> tuple[dict, dict, dict]:
    """(rankings, recall, codes) of the bundle's embeddings (and codes, given the `heads` of its code graphs) vs
    torch's on a `CaptionedImages` split; codes is {} without heads."""
    from rebalance_ref.metrics import retrieval_recall
    from rebalance_torch.evaluate import encode_split

    emb = encode_split(student, split, tokenizer, keep_tokens=False)
    txt2img, captions = split.pairs()
    v, t = retriever.encode_images(split.images), retriever.encode_texts(captions)
    bundle, torch_ = v @ t.T, emb.v @ emb.t.T  # (N, C) cosine
    rankings = {"image->text": _agreement(bundle, torch_, k), "text->image": _agreement(bundle.T, torch_.T, k)}
    recall = {"bundle": retrieval_recall(bundle, txt2img), "torch": retrieval_recall(torch_, txt2img),
              "ranks_within_ties": ranks_within_ties(bundle, torch_, txt2img)}
    codes = verify_codes(retriever, heads, v, t, emb.v, emb.t) if heads is not None and retriever.has_codes else {}
    return rankings, recall, codes


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
                  batch_sizes=BATCH_SIZES, lengths: tuple[int, ...] | None = None, k: int = TOP_K,
                  heads=None) -> VerifyReport:
    """All checks of a bundle against `student` (and, given a split, its rankings and recall); with `heads` (the
    `CodeHeads` exported into it), its code graphs and codes too. A bundle with code graphs and no heads to check
    them against fails (its codes would go unchecked)."""
    from exports.serving.runtime import Retriever

    retriever = Retriever.load(bundle_dir, threads=threads, load_gallery=False)
    if retriever.has_codes and heads is None:
        raise ValueError(f"bundle {bundle_dir} has code graphs: pass the hash heads they were exported from "
                         f"(heads=...) to verify them")
    report = VerifyReport(outputs=verify_outputs(retriever, student, batch_sizes, lengths, heads=heads))
    if split is not None:
        report.rankings, report.recall, report.codes = verify_rankings(retriever, student, tokenizer, split, k,
                                                                       heads=heads)
    return report


def verify_run_bundle(bundle_dir: str | Path, run_dir: str | Path, which: str = "best", threads: int = 1,
                      split: str = "test") -> VerifyReport:
    """`verify_bundle` for the student of a run folder, on the run's own `split` (rebuilt from its config)."""
    from exports.serving.manifest import read_manifest
    from rebalance_torch.checkpoint import load_student
    from rebalance_torch.data import load_splits
    from rebalance_torch.hash_heads import heads_path, load_code_heads

    student, config, tokenizer = load_student(run_dir, which=which)
    codes = read_manifest(bundle_dir, verify_files=False).get("codes")
    heads = load_code_heads(heads_path(run_dir, codes["bits"]))[0] if codes else None
    return verify_bundle(bundle_dir, student, tokenizer, load_splits(config)[split], threads=threads, heads=heads)
