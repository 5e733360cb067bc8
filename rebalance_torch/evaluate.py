"""The paper's evaluation (docs/design.md §3), computed with `rebalance_ref.metrics` only.

For a split of N images with their captions (C = 5N on val/test):

- cross-modal R@1/5/10 (i2t, t2i, means, r_mean) scored two ways: the embedding cosine `v tᵀ` (what a
  dual-encoder retriever serves: keys `cos_*`), and the paper's re-ranking (keys `itm_*`): each query's top
  `k_test` by cosine re-scored by the ITM "matched" logit; items outside the top-k score below every candidate.
- single-modal NDCG@10/20/50: I2I (query image i, gallery the other images) and T2T (query the first caption of
  each image, gallery the other captions) — keys `rouge_i2i@10`, `rouge_t2t@10`, ...;
- mixed NDCG@10/20/50: I2IT (query image i, gallery all images and all captions) and T2IT (query the first caption
  of each image, gallery all captions and all images), the query itself always removed — `rouge_i2it@10`, ...;
- the same four with relevance from the true scene attributes on synthetic data — `attr_i2i@10`, ...;
- geometry: `modality_gap`, `alignment` (over matching pairs), `uniformity_image`, `uniformity_text`, and as
  m²-Mix measures them (docs/mixup.md) `alignment_relative` and `uniformity_joint` (both modalities together);
- universal retrieval (docs/gcl.md), every query modality (i, t, it) against every key modality: `uni_*` keys.
- on synthetic data, the search probe (`rebalance_ref.probe`): templated text queries ("a red circle", "a small
  red circle", "a red circle in the top left", ...) ranking the split's images by cosine, precision@5 per
  template against the true attributes, as fractions in [0, 1] — `probe_p5_colour_shape`, ...; `probe_oracle`
  gives the ceiling the split allows.

Relevance, as the official code / TERAN: M = rouge_relevance(captions, captions per image) (C × N),
M[c, j] = ROUGE-L of caption c against the captions of image j; an image stands for its first caption.

Mixed retrieval uses one scale for both blocks: cosine in the shared space for image–image, image–text and
text–text alike. The official code mixes cosines with unbounded ITM logits (−100 outside the top-k), which
ranks any caption with a logit above 1 over every image; cosine on both blocks instead measures what the
retrieval space itself does, including the cost of a modality gap. Single-modal and mixed NDCG use the
projected D-dimensional embeddings (the official final evaluation's choice).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rebalance_ref import metrics
from rebalance_ref.dataset import CaptionedImages
from rebalance_ref.relations import normalize
from rebalance_torch.checkpoint import load_student
from rebalance_torch.data import image_batches, load_splits

NDCG_KS = (10, 20, 50)
RECALL_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "i2t_mean", "t2i_mean", "r_mean")


@dataclass
class Relevance:
    """Graded relevance of a split: `rouge` (C, N) = M, `attr` (N, N) from scene attributes (or None),
    `txt2img` (C,) image of each caption, `first` (N,) the row of each image's first caption."""

    rouge: np.ndarray
    attr: np.ndarray | None
    txt2img: np.ndarray
    first: np.ndarray


def split_relevance(split: CaptionedImages) -> Relevance:
    """ROUGE-L relevance (and attribute relevance when the split has attributes) of a split, computed once."""
    txt2img, flat = split.pairs()
    counts = np.bincount(txt2img, minlength=len(split))
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    rouge = np.asarray(metrics.rouge_relevance(flat, split.captions), dtype=np.float32)
    attr = None
    if split.attributes is not None:
        from rebalance_ref.shapes import attribute_relevance

        attr = np.asarray(attribute_relevance(split.attributes, split.attributes), dtype=np.float32)
    return Relevance(rouge=rouge, attr=attr, txt2img=txt2img, first=first)


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length by the reference's n(x) (float32; its gradient is not needed here)."""
    return normalize(np.asarray(x, dtype=np.float32))[0]


def _ndcg(scores: np.ndarray, relevance: np.ndarray, exclude: np.ndarray, ks, prefix: str, out: dict) -> None:
    per_k = metrics.ndcg_at_k(scores, relevance, tuple(ks), exclude=exclude)  # one ranking for every k
    for k in ks:
        out[f"{prefix}@{k}"] = 100.0 * float(np.mean(per_k[k]))


def _relevance_blocks(rel: Relevance, kind: str) -> dict[str, np.ndarray] | None:
    """Per-query relevance rows for I2I (N×N), T2T (N×C), I2IT (N×(N+C)), T2IT (N×(C+N)) of one kind."""
    if kind == "rouge":
        m = rel.rouge
        i2i = m[rel.first]               # image i stands for its first caption: M[first_i, j]
        t2t = m.T                        # query q (first caption of image q) vs caption c: M[c, q]
        i2t = m.T                        # image i vs caption c: M[c, i]
        t2i = m[rel.first]               # query caption first_q vs image j: M[first_q, j]
    elif kind == "attr":
        if rel.attr is None:
            return None
        a = rel.attr
        i2i, t2t, i2t, t2i = a, a[:, rel.txt2img], a[:, rel.txt2img], a
    else:
        raise ValueError(f"kind must be 'rouge' or 'attr', got {kind!r}")
    return {"i2i": i2i, "t2t": t2t, "i2it": np.concatenate([i2i, i2t], axis=1),
            "t2it": np.concatenate([t2t, t2i], axis=1)}


def single_modal_ndcg(image_features: np.ndarray | None, text_features: np.ndarray | None, rel: Relevance,
                      ks=NDCG_KS) -> dict[str, float]:
    """I2I NDCG@k from `image_features` (N, d) and T2T from `text_features` (C, d'), by cosine, for every
    relevance kind the split has. Features of any width: the student's v/t or a teacher's."""
    out: dict[str, float] = {}
    n = len(rel.first)
    for kind in ("rouge", "attr"):
        blocks = _relevance_blocks(rel, kind)
        if blocks is None:
            continue
        if image_features is not None:
            v = _unit(image_features)
            _ndcg(v @ v.T, blocks["i2i"], np.arange(n), ks, f"{kind}_i2i", out)
        if text_features is not None:
            t = _unit(text_features)
            _ndcg(t[rel.first] @ t.T, blocks["t2t"], rel.first, ks, f"{kind}_t2t", out)
    return out


def mixed_ndcg(v: np.ndarray, t: np.ndarray, rel: Relevance, ks=NDCG_KS) -> dict[str, float]:
    """I2IT and T2IT NDCG@k: galleries of all images and all captions, cosine on both blocks, query removed."""
    out: dict[str, float] = {}
    v, t = _unit(v), _unit(t)
    n = len(v)
    i2it = np.concatenate([v @ v.T, v @ t.T], axis=1)                       # (N, N + C)
    t2it = np.concatenate([t[rel.first] @ t.T, t[rel.first] @ v.T], axis=1)  # (N, C + N)
    for kind in ("rouge", "attr"):
        blocks = _relevance_blocks(rel, kind)
        if blocks is None:
            continue
        _ndcg(i2it, blocks["i2it"], np.arange(n), ks, f"{kind}_i2it", out)
        _ndcg(t2it, blocks["t2it"], rel.first, ks, f"{kind}_t2it", out)
    return out


# --- the student's side ----------------------------------------------------------------------------------------

@dataclass
class SplitEmbeddings:
    """A student's view of a split: tokens for ITM re-ranking and unit embeddings v (N, D), t (C, D)."""

    image_tokens: object  # torch.Tensor (N, 1+P, W_v)
    text_tokens: object   # torch.Tensor (C, L, W_t)
    mask: object          # torch.Tensor (C, L)
    v: np.ndarray
    t: np.ndarray
    txt2img: np.ndarray
    v_raw: np.ndarray | None = None   # (N, D) the projections before n(.), for the fused embedding (docs/gcl.md)
    t_raw: np.ndarray | None = None   # (C, D)


def _encode_texts(student, ids, mask, device: str, batch_size: int, keep_tokens: bool):
    """The text tower over int64 tensors ids, mask (C, L) in batches (no grad; the caller sets eval mode):
    (unit t (C, D), the projections before n(.) (C, D), both CPU tensors; text tokens (C, L, W_t) or None)."""
    import torch

    tokens_out, ts, ts_raw = [], [], []
    with torch.no_grad():
        for start in range(0, len(ids), batch_size):
            i, m = ids[start:start + batch_size].to(device), mask[start:start + batch_size].to(device)
            tokens, pooled = student.encode_text(i, m)
            ts.append(student.project_text(pooled).float().cpu())
            ts_raw.append(student.text_proj(pooled).float().cpu())
            if keep_tokens:
                tokens_out.append(tokens.cpu())
    return torch.cat(ts), torch.cat(ts_raw), (torch.cat(tokens_out) if keep_tokens else None)


def encode_split(student, split: CaptionedImages, tokenizer, device: str = "cpu", batch_size: int = 256,
                 keep_tokens: bool = True) -> SplitEmbeddings:
    """Run both towers over a split (eval mode, no grad), image-major caption order of `split.pairs()`."""
    import torch

    txt2img, flat = split.pairs()
    ids, mask = tokenizer.encode(flat, max_len=student.config.max_len)
    ids_t, mask_t = torch.as_tensor(ids, dtype=torch.int64), torch.as_tensor(mask, dtype=torch.int64)
    was_training = student.training
    student.eval()
    image_tokens, vs, vs_raw = [], [], []
    with torch.no_grad():
        for images in image_batches(split, batch_size):
            tokens, pooled = student.encode_image(images.to(device))
            vs.append(student.project_image(pooled).float().cpu())
            vs_raw.append(student.vision_proj(pooled).float().cpu())
            if keep_tokens:
                image_tokens.append(tokens.cpu())
    t, t_raw, text_tokens = _encode_texts(student, ids_t, mask_t, device, batch_size, keep_tokens)
    student.train(was_training)
    return SplitEmbeddings(image_tokens=torch.cat(image_tokens) if keep_tokens else None,
                           text_tokens=text_tokens, mask=mask_t,
                           v=torch.cat(vs).numpy(), t=t.numpy(), txt2img=txt2img,
                           v_raw=torch.cat(vs_raw).numpy(), t_raw=t_raw.numpy())


def itm_rerank(student, emb: SplitEmbeddings, k: int, device: str = "cpu", batch_size: int = 1024):
    """The paper's scoring: top-`k` by cosine per query, re-scored by the ITM matched logit (column 1).

    Returns `(score_i2t (N, C), score_t2i (C, N))`; entries outside a query's top-k get a floor one below the
    smallest candidate logit, so every candidate outranks every non-candidate (finite, unlike the official −100
    which a logit could undercut).
    """
    import torch

    sims = emb.v @ emb.t.T  # (N, C)

    def score(queries_are_images: bool) -> np.ndarray:
        s = sims if queries_are_images else sims.T
        kk = min(k, s.shape[1])
        cand = np.argpartition(-s, kk - 1, axis=1)[:, :kk]  # (Q, kk), any order
        q_idx = np.repeat(np.arange(s.shape[0]), kk)
        g_idx = cand.reshape(-1)
        img_idx, txt_idx = (q_idx, g_idx) if queries_are_images else (g_idx, q_idx)
        logits = np.empty(len(q_idx), dtype=np.float32)
        was_training = student.training
        student.eval()
        with torch.no_grad():
            for start in range(0, len(q_idx), batch_size):
                ti = torch.from_numpy(txt_idx[start:start + batch_size])
                ii = torch.from_numpy(img_idx[start:start + batch_size])
                mask = emb.mask[ti]
                length = int(mask.sum(1).max())  # trim the split-wide padding to this chunk's longest caption
                out = student.itm_logits(emb.text_tokens[ti, :length].to(device), mask[:, :length].to(device),
                                         emb.image_tokens[ii].to(device))
                logits[start:start + len(ti)] = out[:, 1].float().cpu().numpy()
        student.train(was_training)
        full = np.full(s.shape, logits.min() - 1.0, dtype=np.float32)
        full[q_idx, g_idx] = logits
        return full

    return score(True), score(False)


def recall_pair(score_i2t: np.ndarray, score_t2i: np.ndarray, txt2img: np.ndarray, prefix: str) -> dict:
    """R@K when the two directions have their own score matrices (ITM re-ranking), keys `{prefix}_*`."""
    rec = metrics.retrieval_recall(score_i2t, txt2img, sim_t2i=score_t2i)
    return {f"{prefix}_{k}": float(rec[k]) for k in RECALL_KEYS}


def cosine_recall(emb: SplitEmbeddings) -> dict[str, float]:
    """R@K by embedding cosine (`cos_*` keys); the validation criterion for model selection."""
    rec = metrics.retrieval_recall(emb.v @ emb.t.T, emb.txt2img)
    return {f"cos_{k}": float(rec[k]) for k in RECALL_KEYS}


def geometry(emb: SplitEmbeddings) -> dict[str, float]:
    """Modality gap, alignment of matching pairs, uniformity of each modality (Wang & Isola), and m²-Mix's
    relative alignment and the uniformity of both modalities together (rebalance_ref.gap)."""
    from rebalance_ref import gap

    return {"modality_gap": float(metrics.modality_gap(emb.v, emb.t)),
            "alignment": float(metrics.alignment(emb.v[emb.txt2img], emb.t)),
            "uniformity_image": float(metrics.uniformity(emb.v)),
            "uniformity_text": float(metrics.uniformity(emb.t)),
            "alignment_relative": gap.relative_alignment(emb.v, emb.t, emb.txt2img),
            "uniformity_joint": gap.joint_uniformity(emb.v, emb.t)}


UNIVERSAL_MODALITIES = ("i", "t", "it")


def universal_retrieval(emb: SplitEmbeddings, rel: Relevance) -> dict[str, float]:
    """Every query modality against every key modality over the split's N images (docs/gcl.md).

    Queries: image j (i), its first caption (t), their fused embedding n(W_v h_v + W_t h_t) (it). Keys: image k
    (i), its *second* caption (t), the fused embedding of image k with its second caption (it). The positive of
    query j is key j in every cell, so a query never meets its own caption: `uni_{q}2{k}_r1/_r5/_r10`
    (percent) for the 8 cells where key j differs from query j (i→i would find itself: no recall there), and
    their mean `uni_r_mean`. With scene attributes, `uni_attr_{q}2{k}@10` for all 9 cells: NDCG@10 of the other
    N - 1 keys (key j left out) by attribute relevance, and their mean `uni_attr_mean@10`. Needs 2 captions per
    image and the raw projections (empty dict otherwise)."""
    from rebalance_ref.gcl import fuse

    counts = np.bincount(rel.txt2img, minlength=len(rel.first))
    if emb.v_raw is None or emb.t_raw is None or counts.min() < 2:
        return {}
    first, second = rel.first, rel.first + 1
    queries = {"i": emb.v, "t": emb.t[first], "it": fuse(emb.v_raw, emb.t_raw[first])[0]}
    keys = {"i": emb.v, "t": emb.t[second], "it": fuse(emb.v_raw, emb.t_raw[second])[0]}
    n = len(first)
    out: dict[str, float] = {}
    recalls, ndcgs = [], []
    for q in UNIVERSAL_MODALITIES:
        for k in UNIVERSAL_MODALITIES:
            sim = _unit(queries[q]) @ _unit(keys[k]).T  # (N, N)
            if (q, k) != ("i", "i"):
                rec = metrics.retrieval_recall(sim, np.arange(n))
                for r in ("r1", "r5", "r10"):
                    out[f"uni_{q}2{k}_{r}"] = float(rec[f"i2t_{r}"])
                recalls.append(float(rec["i2t_mean"]))
            if rel.attr is not None:
                _ndcg(sim, rel.attr, np.arange(n), (10,), f"uni_attr_{q}2{k}", out)
                ndcgs.append(out[f"uni_attr_{q}2{k}@10"])
    out["uni_r_mean"] = float(np.mean(recalls))
    if ndcgs:
        out["uni_attr_mean@10"] = float(np.mean(ndcgs))
    return out


PROBE_K = 5  # the search probe's precision@k


def _probe_keys(precision: dict[str, float], k: int) -> dict[str, float]:
    """`rebalance_ref.probe.probe_precision`'s keys as metric names: `probe_p5_colour_shape`,
    `probe_p5_colour_shape:shape`, ... (query counts dropped)."""
    return {f"probe_p{k}_{name}": value for name, value in precision.items() if not name.endswith(":queries")}


def probe_student(student, split: CaptionedImages, tokenizer, v: np.ndarray | None = None, device: str = "cpu",
                  k: int = PROBE_K) -> dict[str, float]:
    """The search probe (`rebalance_ref.probe`) on a split with true attributes: every templated query ("a red
    circle", ...) through the student's text tower, the split's images ranked by cosine to it (`v` (N, D), the
    images' embeddings when already computed), precision@k per template as fractions in [0, 1] (not percent)."""

    from rebalance_ref import probe

    if split.attributes is None:
        return {}
    queries, t = probe_query_embeddings(student, tokenizer, device)
    if v is None:
        was_training = student.training
        student.eval()
        v = encode_split(student, split, tokenizer, device=device, keep_tokens=False).v
        student.train(was_training)
    scores = t @ _unit(v).T  # (Q, N) cosines: both sides unit rows
    return _probe_keys(probe.probe_precision(scores, queries, split.attributes, k=k), k)


def probe_query_embeddings(student, tokenizer, device: str = "cpu") -> tuple[list, np.ndarray]:
    """The search probe's templated queries (`rebalance_ref.probe.probe_queries`) and their unit text embeddings,
    float32 (Q, D), through the student's text tower in eval mode (its mode is restored)."""
    import torch

    from rebalance_ref import probe

    queries = probe.probe_queries()
    ids, mask = tokenizer.encode([q.text for q in queries], max_len=student.config.max_len)
    was_training = student.training
    student.eval()
    t, _, _ = _encode_texts(student, torch.as_tensor(ids, dtype=torch.int64), torch.as_tensor(mask, dtype=torch.int64),
                            device, 256, keep_tokens=False)
    student.train(was_training)
    return queries, t.numpy()


def probe_oracle(split: CaptionedImages, k: int = PROBE_K) -> dict[str, float]:
    """The probe's ceiling on this split: precision@k when the images are ranked by their true attributes (same
    keys as `probe_student`; empty without attributes)."""
    from rebalance_ref import probe

    if split.attributes is None:
        return {}
    queries = probe.probe_queries()
    return _probe_keys(probe.probe_precision(probe.oracle_scores(queries, split.attributes), queries,
                                             split.attributes, k=k), k)


def evaluate_student(student, split: CaptionedImages, tokenizer, relevance: Relevance | None = None,
                     k_test: int = 16, device: str = "cpu", itm: bool = True) -> dict[str, float]:
    """Every metric of docs/design.md §3 for one student on one split, as a flat dict of floats (percent for
    R@K/NDCG)."""
    relevance = relevance if relevance is not None else split_relevance(split)
    emb = encode_split(student, split, tokenizer, device=device, keep_tokens=itm)
    out = cosine_recall(emb)
    if itm:
        score_i2t, score_t2i = itm_rerank(student, emb, k_test, device=device)
        sims = emb.v @ emb.t.T  # ties of the ITM logit are broken by the cosine that chose the candidates
        out.update(recall_pair(metrics.lexicographic_scores(score_i2t, sims),
                               metrics.lexicographic_scores(score_t2i, sims.T), emb.txt2img, "itm"))
    out.update(single_modal_ndcg(emb.v, emb.t, relevance))
    out.update(mixed_ndcg(emb.v, emb.t, relevance))
    out.update(geometry(emb))
    out.update(universal_retrieval(emb, relevance))
    out.update(probe_student(student, split, tokenizer, v=emb.v, device=device))
    return out


def evaluate_run(run_dir, which: str = "best", split: str = "test", device: str = "cpu") -> dict:
    """Load a run's student (`checkpoint.load_student`), rebuild its data from the config, evaluate a split."""
    student, config, tokenizer = load_student(run_dir, which=which, map_location=device)
    splits = load_splits(config)
    if split not in splits:
        raise ValueError(f"split must be one of {', '.join(splits)}, got {split!r}")
    return evaluate_student(student, splits[split], tokenizer, k_test=config.k_test, device=device)


# --- presentation ----------------------------------------------------------------------------------------------

HEADLINE = (("cos_r_mean", "R-mean (cos)"), ("itm_r_mean", "R-mean (ITM)"), ("rouge_i2i@10", "I2I@10"),
            ("rouge_t2t@10", "T2T@10"), ("rouge_i2it@10", "I2IT@10"), ("rouge_t2it@10", "T2IT@10"),
            ("attr_i2i@10", "I2I@10 attr"), ("attr_t2t@10", "T2T@10 attr"), ("attr_i2it@10", "I2IT@10 attr"),
            ("attr_t2it@10", "T2IT@10 attr"), ("modality_gap", "gap"))


def markdown_table(rows: dict[str, dict[str, float]], columns=HEADLINE, digits: int = 2) -> str:
    """A markdown table: one row per named result, the headline columns that any row has."""
    cols = [(k, label) for k, label in columns if any(k in r for r in rows.values())]
    lines = ["| run | " + " | ".join(label for _, label in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for name, r in rows.items():
        cells = [f"{r[k]:.{digits}f}" if k in r else "" for k, _ in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


PROBE_COLUMNS = (("probe_p5_colour", "colour"), ("probe_p5_shape", "shape"), ("probe_p5_colour_shape", "colour+shape"),
                 ("probe_p5_colour_shape:colour", "c+s: colour ok"), ("probe_p5_colour_shape:shape", "c+s: shape ok"),
                 ("probe_p5_size_colour_shape", "size+colour+shape"),
                 ("probe_p5_colour_shape_position", "colour+shape+position"))


def probe_table(rows: dict[str, dict[str, float]], oracle: dict[str, float] | None = None) -> str:
    """The search probe's precision@5 as a markdown table, one row per named result, then the oracle's row."""
    rows = dict(rows)
    if oracle:
        rows["oracle (true attributes)"] = oracle
    return markdown_table(rows, columns=PROBE_COLUMNS)


# --- training diagnostics ---------------------------------------------------------------------------------------

# The ITM loss of a head that has learned only the label prior (1 positive in 3 pairs): the entropy H(1/3) in nats.
