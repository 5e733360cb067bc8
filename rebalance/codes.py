"""Binary codes for a trained run: train hash heads on its frozen embeddings, select them on validation, and
measure what the codes keep on the test split.

`train_codes(run_dir, bits=(32, 64, 128))` encodes the run's train and validation splits with its student
(checkpoint `which`), trains for each width a separate-heads and a shared-head candidate
(`rebalance_torch.hash_heads.fit_code_heads`), keeps for each the epoch with the best validation score and then
the better of the two, and writes `run_dir/codes/heads-{bits}.pt` and `run_dir/codes/train.json`.

`evaluate_codes(run_dir, split="test")` measures, on one split, cross-modal R@1/5/10 (and the search probe's
precision@5) of the float embeddings, of Hamming top-k over the codes, and of Hamming top-M re-ranked exactly
by the float embeddings (`exports.serving.codes`: the same search the bundle serves).

The validation score is the Hamming-only cross-modal R-mean (mean of i2t and t2i R@1/5/10): the codes' own
quality, not that of the float re-ranking. docs/codes.md gives the measured tables.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from exports.serving.codes import HammingIndex, hamming_distances, pack_codes, rerank_exact
from exports.serving.search import ExactIndex
from rebalance_ref.files import read_json, write_json_atomic

DEFAULT_BITS = (32, 64, 128)
DEFAULT_SHORTLISTS = (50, 100, 200)
RECALL_KS = (1, 5, 10)
HEAD_KINDS = ("separate", "shared")
TRAIN_SUMMARY = "train.json"


# --- recall from top-k lists --------------------------------------------------------------------------------------


def recall_from_rows(i2t_rows: np.ndarray, t2i_rows: np.ndarray, txt2img: np.ndarray, ks=RECALL_KS) -> dict:
    """Cross-modal R@K in percent from ranked lists: i2t_rows (N, >= max k) caption rows per image query,
    t2i_rows (C, >= max k) image rows per caption query; txt2img (C,) the image of each caption.

    Keys as `rebalance_torch.evaluate.RECALL_KEYS`: i2t_r1, ..., t2i_r10, i2t_mean, t2i_mean, r_mean."""
    txt2img = np.asarray(txt2img)
    i2t_hit = txt2img[i2t_rows] == np.arange(len(i2t_rows))[:, None]  # (N, K)
    t2i_hit = t2i_rows == txt2img[:, None]  # (C, K)
    out = {}
    for name, hit in (("i2t", i2t_hit), ("t2i", t2i_hit)):
        for k in ks:
            out[f"{name}_r{k}"] = 100.0 * float(hit[:, :k].any(axis=1).mean())
        out[f"{name}_mean"] = float(np.mean([out[f"{name}_r{k}"] for k in ks]))
    out["r_mean"] = 0.5 * (out["i2t_mean"] + out["t2i_mean"])
    return out


def float_recall(v: np.ndarray, t: np.ndarray, txt2img: np.ndarray, ks=RECALL_KS) -> dict:
    """R@K of the exact float search (`ExactIndex`, the bundle's search) of unit embeddings v (N, D), t (C, D)."""
    k = max(ks)
    _, i2t = ExactIndex(t).search(v, k)
    _, t2i = ExactIndex(v).search(t, k)
    return recall_from_rows(i2t, t2i, txt2img, ks)


def code_search(q_codes: np.ndarray, g_codes: np.ndarray, k: int, queries: np.ndarray | None = None,
                gallery: np.ndarray | None = None, shortlist: int | None = None) -> np.ndarray:
    """Top-k gallery rows per query: Hamming top-k (ties by lower index), or with `shortlist` M the Hamming top M
    re-ranked exactly by the float embeddings `queries` (Q, D) and `gallery` (N, D). Returns (Q, k') rows."""
    index = HammingIndex(g_codes)
    if shortlist is None:
        return index.search(q_codes, k)[1]
    _, rows = index.search(q_codes, max(int(shortlist), k))
    return rerank_exact(queries, gallery, rows, k)[1]


def code_recall(v, t, txt2img, codes_v, codes_t, shortlist: int | None = None, ks=RECALL_KS) -> dict:
    """R@K of code search (Hamming-only, or Hamming top-`shortlist` re-ranked by v, t) in both directions."""
    k = max(ks)
    i2t = code_search(codes_v, codes_t, k, v, t, shortlist)
    t2i = code_search(codes_t, codes_v, k, t, v, shortlist)
    return recall_from_rows(i2t, t2i, txt2img, ks)


def encode_codes(heads, v: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Packed codes uint8 (N, bits / 8) of image rows v through the image head and caption rows t through the
    text head."""
    return pack_codes(heads.relaxed(v, "image")), pack_codes(heads.relaxed(t, "text"))


# --- the search probe on codes --------------------------------------------------------------------------------------


def probe_scores_codes(t_query: np.ndarray, v: np.ndarray, q_codes: np.ndarray, codes_v: np.ndarray,
                       shortlist: int | None) -> np.ndarray:
    """(Q, N) scores whose stable descending order is the code search's order: bits - Hamming distance, or the
    cosine inside the Hamming top-`shortlist` and -inf outside it."""
    bits = 8 * codes_v.shape[1]
    if shortlist is None:
        return (bits - hamming_distances(q_codes, codes_v)).astype(np.float64)
    rows = HammingIndex(codes_v).search(q_codes, min(int(shortlist), len(codes_v)))[1]  # (Q, M)
    scores = np.full((len(t_query), len(v)), -np.inf)
    np.put_along_axis(scores, rows, np.einsum("qd,qmd->qm", t_query, v[rows]), axis=1)
    return scores


# --- loading and encoding a run ------------------------------------------------------------------------------------


def encode_run(run_dir: str | Path, splits=("train", "val"), which: str = "best") -> tuple[dict, object, object]:
    """({split: SplitEmbeddings}, student, the split objects) of a run folder (frozen student, eval mode)."""
    from rebalance_torch.checkpoint import load_student
    from rebalance_torch.data import load_splits
    from rebalance_torch.evaluate import encode_split

    student, config, tokenizer = load_student(run_dir, which=which)
    student.eval()
    data = load_splits(config)
    missing = [s for s in splits if s not in data]
    if missing:
        raise ValueError(f"run {run_dir}: its data has no {', '.join(missing)} split")
    emb = {s: encode_split(student, data[s], tokenizer, keep_tokens=False) for s in splits}
    return emb, (student, tokenizer), data


def _parse_kinds(kinds) -> tuple[str, ...]:
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in HEAD_KINDS]
    if bad or not kinds:
        raise ValueError(f"head kinds: expected some of {', '.join(HEAD_KINDS)}, got {', '.join(kinds) or 'none'}")
    return kinds


def train_codes(run_dir: str | Path, bits=DEFAULT_BITS, kinds=HEAD_KINDS, which: str = "best", epochs: int = 20,
                seed: int = 0, log=None) -> dict:
    """Train, select on validation and save the run's hash heads for each width in `bits` (module doc).

    Returns the summary written to `run_dir/codes/train.json`: per width, each candidate's best validation
    R-mean (Hamming-only) and epoch, the chosen kind, and seconds."""
    from rebalance_torch.hash_heads import CODES_DIR, HashSettings, fit_code_heads, heads_path, save_code_heads

    kinds = _parse_kinds(kinds)
    tic = time.perf_counter()
    emb, _, _ = encode_run(run_dir, ("train", "val"), which)
    train, val = emb["train"], emb["val"]
    encode_seconds = time.perf_counter() - tic
    v_pairs, t_pairs, ids = train.v[train.txt2img], train.t, train.txt2img

    def val_score(heads) -> float:
        codes_v, codes_t = encode_codes(heads, val.v, val.t)
        return code_recall(val.v, val.t, val.txt2img, codes_v, codes_t)["r_mean"]

    summary = {"run": str(run_dir), "which": which, "selection": "validation Hamming-only cross-modal R-mean",
               "encode_seconds": encode_seconds, "val_float": float_recall(val.v, val.t, val.txt2img), "bits": {}}
    for width in bits:
        candidates, best = {}, None
        for kind in kinds:
            settings = HashSettings(bits=int(width), shared=kind == "shared", epochs=epochs, seed=seed)
            start = time.perf_counter()
            heads, history = fit_code_heads(v_pairs, t_pairs, ids, settings, score=val_score)
            seconds = time.perf_counter() - start
            score = max(history["score"])
            candidates[kind] = {"val_r_mean": score, "best_epoch": history["best_epoch"], "seconds": seconds,
                                "val_r_mean_per_epoch": history["score"], "loss_per_epoch": history["loss"]}
            if log:
                log(f"{width} bits, {kind} heads: validation R-mean {score:.2f} (Hamming only, epoch "
                    f"{history['best_epoch'] + 1} of {epochs}), {seconds:.1f} s")
            if best is None or score > best[0]:
                best = (score, kind, heads, settings)
        score, kind, heads, settings = best
        info = {"run": str(Path(run_dir).resolve()), "which": which, "kind": kind, "val_r_mean": score,
                "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__}}
        save_code_heads(heads, heads_path(run_dir, width), info)
        summary["bits"][str(width)] = {"chosen": kind, "candidates": candidates}
    summary["seconds"] = time.perf_counter() - tic
    path = Path(run_dir) / CODES_DIR / TRAIN_SUMMARY
    if path.is_file():  # keep the record of widths trained by an earlier call (their heads are still there)
        earlier = read_json(path)
        if isinstance(earlier, dict) and isinstance(earlier.get("bits"), dict):
            summary["bits"] = {**{k: v for k, v in earlier["bits"].items() if k not in summary["bits"]},
                               **summary["bits"]}
    write_json_atomic(path, summary, indent=1)
    return summary


def evaluate_codes(run_dir: str | Path, split: str = "test", shortlists=DEFAULT_SHORTLISTS, which: str = "best",
                   bits=None, untrained: bool = False) -> dict:
    """Float vs codes on one split of a run (module doc): {"float": {...}, "codes": {bits: {"hamming": {...},
    "shortlist": {M: {...}}, "kind", "bytes_per_item"}}, "float_bytes_per_item"}; every entry holds R@K (percent)
    and the search probe's precision@5 (fractions) when the split has true attributes.

    `untrained` adds, per width, the same rows for an untrained head (`CodeHeads` as initialised: Gaussian random
    hyperplanes through the origin, every channel half open, i.e. random-hyperplane LSH, SimHash) under
    "untrained": the baseline that tells what training the head adds."""
    from rebalance_torch.hash_heads import CodeHeads, heads_path, load_code_heads, trained_bits

    available = trained_bits(run_dir)
    if not available:
        raise ValueError(f"run {run_dir} has no trained hash heads: run `rebalance codes train --run {run_dir}` "
                         f"first")
    bits = available if bits is None else [int(b) for b in bits]
    missing = [b for b in bits if b not in available]
    if missing:
        raise ValueError(f"run {run_dir} has no heads of {', '.join(map(str, missing))} bits (trained: "
                         f"{', '.join(map(str, available))})")
    loaded = {}
    for width in bits:
        loaded[width], info = load_code_heads(heads_path(run_dir, width))
        if info.get("which", which) != which:
            raise ValueError(f"the run's {width}-bit heads were trained on checkpoint {info['which']!r}, not "
                             f"{which!r}: measure with --which {info['which']} or train them again")
    emb, (student, tokenizer), data = encode_run(run_dir, (split,), which)
    e = emb[split]
    probe = _probe_setup(student, tokenizer, data[split])
    out = {"run": str(run_dir), "split": split, "images": int(len(e.v)), "captions": int(len(e.t)),
           "float_bytes_per_item": int(4 * e.v.shape[1]), "float": float_recall(e.v, e.t, e.txt2img), "codes": {}}
    if probe is not None:
        out["float"]["probe_p5"] = _probe_p5(probe, probe["t"] @ e.v.T)
    if untrained:
        out["untrained"] = {}
    for width, heads in loaded.items():
        out["codes"][str(width)] = _measure(heads, e, probe, shortlists)
        if untrained:
            out["untrained"][str(width)] = _measure(CodeHeads(heads.dim, heads.bits, shared=True).eval(), e, probe,
                                                    shortlists)
    return out


def _measure(heads, e, probe: dict | None, shortlists) -> dict:
    """One width's row of `evaluate_codes`: Hamming-only and each shortlist, R@K (and probe P@5)."""
    codes_v, codes_t = encode_codes(heads, e.v, e.t)
    row = {"kind": "shared" if heads.shared else "separate", "bytes_per_item": heads.bits // 8,
           "hamming": code_recall(e.v, e.t, e.txt2img, codes_v, codes_t), "shortlist": {}}
    q_codes = pack_codes(heads.relaxed(probe["t"], "text")) if probe is not None else None
    if probe is not None:
        row["hamming"]["probe_p5"] = _probe_p5(probe, probe_scores_codes(probe["t"], e.v, q_codes, codes_v, None))
    for m in shortlists:
        row["shortlist"][str(m)] = code_recall(e.v, e.t, e.txt2img, codes_v, codes_t, shortlist=int(m))
        if probe is not None:
            row["shortlist"][str(m)]["probe_p5"] = _probe_p5(
                probe, probe_scores_codes(probe["t"], e.v, q_codes, codes_v, int(m)))
    return row


def _probe_setup(student, tokenizer, split) -> dict | None:
    """The search probe's queries and their text embeddings (None when the split has no true attributes)."""
    from rebalance_torch.evaluate import probe_query_embeddings

    if split.attributes is None:
        return None
    queries, t = probe_query_embeddings(student, tokenizer)
    return {"queries": queries, "t": t, "attributes": split.attributes}


def _probe_p5(probe: dict, scores: np.ndarray) -> float:
    """The search probe's colour+shape precision@5 of a (Q, N) score matrix."""
    from rebalance_ref.probe import probe_precision

    return probe_precision(scores, probe["queries"], probe["attributes"], k=5)["colour_shape"]


def results_table(result: dict) -> str:
    """The evaluation as a Markdown table: one row for the float embeddings, then per width Hamming-only and each
    shortlist; R@K in percent, R@10 kept as a share of the float R@10 (mean of both directions)."""
    float_r10 = 0.5 * (result["float"]["i2t_r10"] + result["float"]["t2i_r10"])
    probe = "probe_p5" in result["float"]
    head = ("| search | bytes/item | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 | R-mean | R@10 kept |"
            + (" colour+shape P@5 |" if probe else ""))
    lines = [head, "|---|---:|" + "---:|" * 8 + ("---:|" if probe else "")]

    def line(name, nbytes, r):
        kept = 100.0 * 0.5 * (r["i2t_r10"] + r["t2i_r10"]) / float_r10 if float_r10 else float("nan")
        cells = [name, str(nbytes)] + [f"{r[k]:.2f}" for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5",
                                                                  "t2i_r10", "r_mean")] + [f"{kept:.1f} %"]
        if probe:
            cells.append(f"{r['probe_p5']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")

    line("float (exact cosine)", result["float_bytes_per_item"], result["float"])
    for width, row in result["codes"].items():
        base = result.get("untrained", {}).get(width)
        if base is not None:
            line(f"{width} bits, Hamming only (untrained: random hyperplanes)", base["bytes_per_item"], base["hamming"])
        line(f"{width} bits, Hamming only ({row['kind']} heads)", row["bytes_per_item"], row["hamming"])
        for m, r in row["shortlist"].items():
            if base is not None:
                line(f"{width} bits, top {m} → re-rank (untrained)", base["bytes_per_item"], base["shortlist"][m])
            line(f"{width} bits, Hamming top {m} → exact re-rank", row["bytes_per_item"], r)
    return "\n".join(lines)


def read_train_summary(run_dir: str | Path) -> dict:
    from rebalance_torch.hash_heads import CODES_DIR

    return read_json(Path(run_dir) / CODES_DIR / TRAIN_SUMMARY)
