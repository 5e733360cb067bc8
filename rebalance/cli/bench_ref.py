"""`rebalance bench ref`: the NumPy reference against the baselines it replaces, side by side in one run.

(a) Metrics on N images x 5 captions of random embeddings (default N = 1 000): `retrieval_recall` and
    `ndcg_at_k` (I2I and T2T at k = 10, 20, 50, ROUGE-L relevance) against per-query Python loops in the style
    of the official metric code (argsort per query, one pass per cut-off, a Python loop over ranks). Both sides
    get the same precomputed score matrices, and the run checks that they give the same numbers.
(b) `structure_distill` forward + backward, `rebalance_ref` (NumPy, analytic gradients) against
    `rebalance_torch` (autograd), per batch size, dtype and distance.
(c) ROUGE-L relevance: `rouge_relevance` (bit-parallel, deduplicated) against a loop of plain `rouge_l` calls on
    the same subset, and the time of the full (5N x N) matrix.

Every time is the median over repeats, the two sides of each comparison sampled in alternation after one warm-up
call each (`rebalance_ref.timing`); calls shorter than 20 ms are repeated inside a sample and averaged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import click
import numpy as np

from rebalance.cli.options import json_option, seed_option, set_threads, threads_option
from rebalance_ref.checks import DISTANCES
from rebalance_ref.timing import median, side_by_side

_KS = (10, 20, 50)
_WORDS = ("a the red blue green yellow purple small big large tiny circle square triangle star cross left right "
          "top bottom middle above below next to of on in near with and two three one corner centre scene "
          "picture shows there is are").split()


def paired_medians(ours: Callable[[], object], baseline: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median seconds per call of `ours` and of `baseline`, sampled side by side (rebalance_ref.timing)."""
    samples = side_by_side({"ours": ours, "baseline": baseline}, repeats)
    return median(samples["ours"]), median(samples["baseline"])


# ---------------------------------------------------------------------------------------------------------------
# Baselines in the style of the official metric code (metric.py: itm_eval, uni_ndcg_i2i / uni_ndcg_t2t).
# Unlike it they copy the row before masking (it writes into its inputs), mask with -inf / relevance 0 (which
# equals removal, as our ndcg_at_k does), and skip its per-query `np.all(relmatrix == 0)` scan of the whole
# matrix, which would make the loop far slower still.
# ---------------------------------------------------------------------------------------------------------------


def loop_recall(scores_i2t, scores_t2i, txt2img, img2txt) -> dict[str, float]:
    """Recall@1/5/10 by argsorting every query, as the official itm_eval."""
    ranks = np.zeros(scores_i2t.shape[0])
    for index, score in enumerate(scores_i2t):
        inds = np.argsort(score)[::-1]
        rank = 1e20
        for i in img2txt[index]:
            tmp = np.where(inds == i)[0][0]
            if tmp < rank:
                rank = tmp
        ranks[index] = rank
    out = {f"i2t_r{k}": 100.0 * len(np.where(ranks < k)[0]) / len(ranks) for k in (1, 5, 10)}
    ranks = np.zeros(scores_t2i.shape[0])
    for index, score in enumerate(scores_t2i):
        inds = np.argsort(score)[::-1]
        ranks[index] = np.where(inds == txt2img[index])[0][0]
    out.update({f"t2i_r{k}": 100.0 * len(np.where(ranks < k)[0]) / len(ranks) for k in (1, 5, 10)})
    return out


def loop_ndcg(sims, relmatrix, exclude, threshold) -> float:
    """Mean NDCG@threshold over queries, one argsort and a Python loop over ranks per query."""
    ndcgs = np.zeros(sims.shape[0])
    for index in range(sims.shape[0]):
        d, rel = sims[index].copy(), relmatrix[index].copy()
        d[exclude[index]] = -np.inf
        rel[exclude[index]] = 0
        inds = np.argsort(d)[::-1]
        rel_threshold = rel[inds[0:threshold]]
        rel_order_threshold = np.sort(rel)[::-1][0:threshold]
        dcg = idcg = 0.0
        for ind_t in range(threshold):
            dcg += rel_threshold[ind_t] / np.log2(ind_t + 2)
            idcg += rel_order_threshold[ind_t] / np.log2(ind_t + 2)
        if idcg > 0:
            ndcgs[index] = dcg / idcg
    return float(ndcgs.mean())


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


def synthetic_split(n_images: int, seed: int, dim: int = 256, per_image: int = 5):
    """Random unit embeddings with some signal, and captions drawn from per-image topic words."""
    rng = np.random.default_rng(seed)
    txt2img = np.repeat(np.arange(n_images), per_image)  # (5N,)
    v = rng.normal(size=(n_images, dim))
    t = v[txt2img] + 2.0 * rng.normal(size=(txt2img.size, dim))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    captions = []
    for _ in range(n_images):
        topic = rng.choice(_WORDS, size=8, replace=False)
        for _ in range(per_image):
            pool = np.concatenate([topic, rng.choice(_WORDS, size=4)])
            captions.append(" ".join(rng.choice(pool, size=int(rng.integers(6, 14)))))
    image_captions = [captions[i * per_image:(i + 1) * per_image] for i in range(n_images)]
    return v, t, txt2img, captions, image_captions


# ---------------------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------------------


def _ratio_row(ours: float, baseline: float) -> dict[str, float]:
    return {"ours_s": ours, "baseline_s": baseline, "ratio": baseline / ours}


def bench_rouge(captions, image_captions, repeats: int, subset: tuple[int, int]) -> tuple[np.ndarray, dict]:
    """Full relevance matrix once; vectorised vs plain `rouge_l` loop on a subset, side by side."""
    from rebalance_ref.metrics import rouge_l, rouge_relevance

    start = time.perf_counter()
    relevance = rouge_relevance(captions, image_captions)
    full_s = time.perf_counter() - start
    caps, imgs = captions[:subset[0]], image_captions[:subset[1]]
    plain = np.array([[rouge_l(c, refs) for refs in imgs] for c in caps])
    diff = float(np.abs(rouge_relevance(caps, imgs) - plain).max())
    ours, baseline = paired_medians(lambda: rouge_relevance(caps, imgs),
                                    lambda: [[rouge_l(c, refs) for refs in imgs] for c in caps], repeats)
    return relevance, {"full_shape": list(relevance.shape), "full_s": full_s,
                       "subset_shape": [len(caps), len(imgs)], **_ratio_row(ours, baseline), "max_abs_diff": diff}


def bench_metrics(v, t, txt2img, relevance, repeats: int) -> dict:
    """Recall and single-modal NDCG: rebalance_ref.metrics vs the official-style loops, on the same inputs."""
    from rebalance_ref.metrics import ndcg_at_k, retrieval_recall

    n = v.shape[0]
    per_image = txt2img.size // n
    img2txt = [np.flatnonzero(txt2img == i) for i in range(n)]
    sim_i2t = v @ t.T  # (N, 5N)
    sim_t2i = np.ascontiguousarray(sim_i2t.T)  # (5N, N), a separate matrix as in the official code
    first = np.arange(n) * per_image  # the first caption of each image stands for it
    # I2I: query image i, gallery images, relevance M[first caption of i, j], the query removed.
    i2i = (v @ v.T, np.ascontiguousarray(relevance[first]), np.arange(n))
    # T2T: query = first caption of image q, gallery all captions, relevance M[c, q], the query caption removed.
    t2t = (t[first] @ t.T, np.ascontiguousarray(relevance.T), first)

    rows, diffs = {}, []
    ours = retrieval_recall(sim_i2t, txt2img, sim_t2i=sim_t2i)
    base = loop_recall(sim_i2t, sim_t2i, txt2img, img2txt)
    diffs += [abs(ours[k] - base[k]) / 100.0 for k in base]
    rows["recall"] = _ratio_row(*paired_medians(lambda: retrieval_recall(sim_i2t, txt2img, sim_t2i=sim_t2i),
                                                lambda: loop_recall(sim_i2t, sim_t2i, txt2img, img2txt), repeats))
    for name, (sims, rel, exclude) in (("ndcg_i2i", i2i), ("ndcg_t2t", t2t)):
        ours = ndcg_at_k(sims, rel, _KS, exclude=exclude)
        diffs += [abs(float(ours[k].mean()) - loop_ndcg(sims, rel, exclude, k)) for k in _KS]
        rows[name] = _ratio_row(*paired_medians(
            lambda s=sims, r=rel, e=exclude: ndcg_at_k(s, r, _KS, exclude=e),
            lambda s=sims, r=rel, e=exclude: [loop_ndcg(s, r, e, k) for k in _KS], repeats))
    total = {key: sum(row[key] for row in rows.values()) for key in ("ours_s", "baseline_s")}
    rows["total"] = _ratio_row(total["ours_s"], total["baseline_s"])
    return {"shape": {"images": n, "captions": int(txt2img.size)}, "ks": list(_KS), "rows": rows,
            "max_abs_diff": float(max(diffs))}


def distill_case(batch: int, dtype, distance: str, repeats: int, seed: int) -> dict:
    """One structure_distill timing: NumPy analytic gradients vs torch autograd, on the same inputs."""
    import torch

    from rebalance_ref.losses import structure_distill as ref_distill
    from rebalance_torch.losses import structure_distill as torch_distill

    rng = np.random.default_rng(seed)
    z = rng.normal(size=(batch, 768)).astype(dtype)  # fused [CLS] and teacher features, official sizes
    img = rng.normal(size=(batch, 1024)).astype(dtype)
    txt = rng.normal(size=(batch, 768)).astype(dtype)
    row_weights = None
    if distance == "wasserstein":  # the official weights: cosine distances of (here random) text embeddings
        emb = rng.normal(size=(batch, 256))
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        row_weights = (1.0 - emb @ emb.T).astype(dtype)
    tz = torch.tensor(z, requires_grad=True)
    timg, ttxt = torch.tensor(img), torch.tensor(txt)
    t_weights = None if row_weights is None else torch.tensor(row_weights)
    lam = torch.tensor(0.5, dtype=tz.dtype, requires_grad=True)
    tau2 = torch.tensor(0.07, dtype=tz.dtype, requires_grad=True)

    def ref_call():
        return ref_distill(z, img, txt, 0.5, 0.07, distance, row_weights=row_weights)

    def torch_call():
        for p in (tz, lam, tau2):
            p.grad = None
        value = torch_distill(tz, timg, ttxt, lam, tau2, distance, row_weights=t_weights)
        value.backward()
        return value

    value, grads = ref_call()
    t_value = float(torch_call().detach())
    scale = max(float(np.abs(grads["z"]).max()), 1e-30)
    ours, theirs = paired_medians(ref_call, torch_call, repeats)
    return {"B": batch, "dtype": np.dtype(dtype).name, "distance": distance, "numpy_s": ours, "torch_s": theirs,
            "torch_over_numpy": theirs / ours,
            "value_rel_diff": abs(float(value) - t_value) / max(abs(float(value)), 1e-30),
            "grad_z_rel_diff": float(np.abs(grads["z"] - tz.grad.numpy()).max()) / scale}


# ---------------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------------


def _print_report(report: dict) -> None:
    env = report["environment"]
    click.echo(f"rebalance bench ref   threads={report['threads']}  numpy {env['versions']['numpy']}  "
               f"torch {env['versions']['torch']}  cpus {env['threads']['cpu_count']}")
    m = report["metrics"]
    click.echo(f"\n(a) metrics, {m['shape']['images']} images x {m['shape']['captions']} captions, "
               f"k = {m['ks']}; median s   (agree: max |diff| = {m['max_abs_diff']:.1e})")
    click.echo(f"  {'':<10}{'ours':>10}{'loop':>10}{'loop/ours':>11}")
    for name, row in m["rows"].items():
        click.echo(f"  {name:<10}{row['ours_s']:>10.4f}{row['baseline_s']:>10.4f}{row['ratio']:>10.1f}x")
    click.echo("\n(b) structure_distill forward + backward; median s")
    click.echo(f"  {'B':>5} {'dtype':<8}{'distance':<12}{'numpy':>10}{'torch':>10}{'torch/numpy':>13}{'grad diff':>11}")
    for row in report["distill"]:
        click.echo(f"  {row['B']:>5} {row['dtype']:<8}{row['distance']:<12}{row['numpy_s']:>10.5f}"
                   f"{row['torch_s']:>10.5f}{row['torch_over_numpy']:>12.2f}x{row['grad_z_rel_diff']:>11.1e}")
    r = report["rouge"]
    click.echo(f"\n(c) ROUGE-L relevance {tuple(r['full_shape'])}: {r['full_s']:.2f} s;   subset "
               f"{tuple(r['subset_shape'])}: vectorised {r['ours_s']:.4f} s, rouge_l loop {r['baseline_s']:.4f} s, "
               f"{r['ratio']:.1f}x   (max |diff| = {r['max_abs_diff']:.1e})")


@click.command("ref", short_help="Metrics, ROUGE-L and KD vs baselines.")
@threads_option
@json_option
@seed_option
@click.option("--images", type=click.IntRange(min=max(_KS) + 1), default=1000, show_default=True,
              help="Images in the metric benchmark (5 captions each).")
@click.option("--batch-sizes", default="64,256", show_default=True, help="Comma-separated B for structure_distill.")
@click.option("--distance", "distances", multiple=True, default=("mae",), show_default=True,
              type=click.Choice(DISTANCES), help="Distances to time (repeatable).")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True, help="Samples per median.")
@click.option("--quick", is_flag=True, help="Tiny sizes (a smoke test of the command, not a measurement).")
def bench_ref(threads: int, as_json: bool, seed: int, images: int, batch_sizes: str, distances: tuple[str, ...],
              repeats: int, quick: bool) -> None:
    """Metrics vs official-style loops, ROUGE-L, and structure_distill NumPy vs torch, side by side."""
    try:
        sizes = tuple(int(b) for b in batch_sizes.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {batch_sizes!r}",
                                 param_hint="--batch-sizes") from None
    if not sizes or min(sizes) < 2:
        raise click.BadParameter(f"every batch size must be >= 2, got {batch_sizes!r}", param_hint="--batch-sizes")
    import torch  # noqa: F401  (imported first, so that set_threads below reaches it)

    from rebalance.cli.cmd_env import environment_report

    set_threads(threads)
    if quick:
        images, sizes = min(images, 60), tuple(dict.fromkeys(min(b, 8) for b in sizes))
    subset = (10, 10) if quick else (40, 50)

    v, t, txt2img, captions, image_captions = synthetic_split(images, seed)
    relevance, rouge = bench_rouge(captions, image_captions, repeats, subset)
    report = {"command": "rebalance bench ref", "threads": threads, "seed": seed, "repeats": repeats,
              "environment": environment_report(),
              "metrics": bench_metrics(v, t, txt2img, relevance, repeats),
              "rouge": rouge,
              "distill": [distill_case(b, dtype, d, repeats, seed)
                          for b in sizes for dtype in (np.float32, np.float64) for d in distances]}
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print_report(report)


COMMAND = bench_ref
