"""The geometry of the shared space around the modality gap (docs/gap.md): the gap vector, the shift experiment,
the cone effect of random networks, and two diagnostics of m²-Mix (docs/mixup.md).

Analysis tools, not training losses: nothing here is differentiated, so these functions return plain values (no
`(value, grads)`) and have no torch mirror. Embeddings are normalised inside by the one n(x) of the package.
"""

from __future__ import annotations

import numpy as np

from rebalance_ref import checks, metrics
from rebalance_ref.losses import itc
from rebalance_ref.relations import normalize

__all__ = ["gap_vector", "shift", "shift_curve", "chunked_contrastive_loss", "mean_cosine", "random_mlp_cone",
           "relative_alignment", "joint_uniformity"]


def _unit(name: str, x, layout: str = "(N, D)") -> np.ndarray:
    x = checks.as_float_array(name, x)
    checks.array(name, x, 2, layout)
    return normalize(x)[0]


def _same_width(v: np.ndarray, t: np.ndarray) -> None:
    if v.shape[1] != t.shape[1]:
        raise ValueError(f"v and t: expected the same width D, got {v.shape[1]} and {t.shape[1]}")


def gap_vector(v, t) -> np.ndarray:
    """The modality gap as a vector: Δ = mean_i n(v_i) - mean_j n(t_j), pointing from the text centroid to the image
    centroid; its length is `rebalance_ref.metrics.modality_gap`.  v: (N, D), t: (M, D) -> (D,)."""
    vn, tn = _unit("v", v), _unit("t", t, "(M, D)")
    _same_width(vn, tn)
    return vn.mean(0) - tn.mean(0)


def shift(v, t, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Move both modalities along the gap and back onto the sphere: v' = n(n(v) - (lam/2) Δ), t' = n(n(t) + (lam/2) Δ).
    lam = 0 changes nothing, lam = 1 moves the centroids onto each other before the renormalisation (closing the
    gap up to its effect), lam < 0 widens it.  v: (N, D), t: (M, D) -> (v', t') of the same shapes."""
    lam = checks.scalar("lam", lam)
    delta = gap_vector(v, t)
    vn, tn = _unit("v", v), _unit("t", t, "(M, D)")
    return normalize(vn - 0.5 * lam * delta)[0], normalize(tn + 0.5 * lam * delta)[0]


def chunked_contrastive_loss(v, t, tau: float, chunk: int = 50) -> float:
    """The symmetric contrastive (CLIP) loss of matching pairs, averaged over consecutive chunks of `chunk` pairs
    (row i of v matches row i of t; a last chunk shorter than 2 is dropped). Each chunk is `rebalance_ref.losses.itc`
    with one image per row.  v, t: (N, D) -> float."""
    vn, tn = _unit("v", v), _unit("t", t)
    checks.same_shape("v", vn, "t", tn)
    tau = checks.scalar("tau", tau, positive=True)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 2:
        raise ValueError(f"chunk: expected an integer >= 2, got {chunk!r}")
    values = [itc(vn[a:a + chunk], tn[a:a + chunk], tau)[0] for a in range(0, len(vn), chunk)
              if len(vn[a:a + chunk]) >= 2]
    if not values:
        raise ValueError(f"v: expected at least 2 pairs, got {len(vn)}")
    return float(np.mean(values))


def shift_curve(v, t, taus, lams, chunk: int = 50) -> dict:
    """The shift experiment: for every lam, the signed gap after `shift` (its length, negative once the shifted
    image centroid has passed the text centroid) and the chunked contrastive loss at every tau.

    v, t: (N, D) matching pairs. Returns {"lam": (L,), "gap": (L,) signed gap, "loss": (T, L), "tau": (T,),
    "original_gap": float}."""
    lams = np.asarray(lams, dtype=np.float64)
    taus = np.asarray(taus, dtype=np.float64)
    delta = gap_vector(v, t)
    gaps, losses = [], np.zeros((len(taus), len(lams)))
    for j, lam in enumerate(lams):
        vs, ts = shift(v, t, float(lam))
        moved = vs.mean(0) - ts.mean(0)
        gaps.append(float(np.sign(moved @ delta) * np.linalg.norm(moved)))
        for i, tau in enumerate(taus):
            losses[i, j] = chunked_contrastive_loss(vs, ts, float(tau), chunk)
    return {"lam": lams, "gap": np.asarray(gaps), "loss": losses, "tau": taus,
            "original_gap": float(np.linalg.norm(delta))}


def mean_cosine(x) -> float:
    """The mean cosine over all pairs of distinct rows: (||sum_i n(x_i)||² - N) / (N (N - 1)); 0 for directions
    spread evenly, near 1 inside a narrow cone.  x: (N, D), N >= 2 -> float."""
    xn = _unit("x", x)
    n = xn.shape[0]
    if n < 2:
        raise ValueError(f"x: expected at least 2 rows, got {n}")
    total = xn.sum(0)
    return float((total @ total - np.sum(xn * xn)) / (n * (n - 1)))


def random_mlp_cone(n_points: int = 200, width: int = 512, depth: int = 25, activation: str = "relu",
                    seed: int = 0) -> np.ndarray:
    """The cone effect: mean pairwise cosine of random inputs after each layer of a randomly initialised MLP,
    x_{l+1} = act(W_l x_l + b_l) with W_l, b_l ~ N(0, 1/width) entry-wise, inputs ~ N(0, I).
    activation "relu" or "linear". Returns (depth + 1,) mean cosines, entry 0 for the inputs."""
    if activation not in ("relu", "linear"):
        raise ValueError(f"activation: expected 'relu' or 'linear', got {activation!r}")
    for name, value in (("n_points", n_points), ("width", width), ("depth", depth)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (2 if name == "n_points" else 1):
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_points, width))
    out = [mean_cosine(x)]
    scale = 1.0 / np.sqrt(width)
    for _ in range(depth):
        x = x @ (scale * rng.standard_normal((width, width))) + scale * rng.standard_normal(width)
        if activation == "relu":
            x = np.maximum(x, 0.0)
        out.append(mean_cosine(x))
    return np.asarray(out)


def relative_alignment(v, t, txt2img) -> float:
    """Alignment as m²-Mix measures it: mean over captions c of ||n(t_c) - n(v_p)||² - min_{j != p} ||n(t_c) -
    n(v_j)||², p = txt2img[c] the caption's own image; negative when every caption is nearer its image than any
    other image.  v: (N, D) images, t: (C, D) captions, txt2img: (C,) -> float."""
    vn, tn = _unit("v", v), _unit("t", t, "(C, D)")
    _same_width(vn, tn)
    own = np.asarray(txt2img, dtype=np.int64)
    if own.shape != (len(tn),) or own.min() < 0 or own.max() >= len(vn):
        raise ValueError(f"txt2img: expected {len(tn)} image indices in [0, {len(vn)}), got shape {own.shape}")
    if len(vn) < 2:
        raise ValueError("v: expected at least 2 images (a caption needs another image to compare with)")
    d2 = np.maximum(2.0 - 2.0 * tn @ vn.T, 0.0)  # (C, N) squared distances of unit vectors
    rows = np.arange(len(tn))
    positive = d2[rows, own]
    d2[rows, own] = np.inf
    return float(np.mean(positive - d2.min(axis=1)))


def joint_uniformity(v, t) -> float:
    """Uniformity (`rebalance_ref.metrics.uniformity`, t = 2) of both modalities together, cat(n(v), n(t)): lower
    when images and captions spread over one sphere, higher when each modality sits in its own cone."""
    vn, tn = _unit("v", v), _unit("t", t, "(M, D)")
    _same_width(vn, tn)
    return metrics.uniformity(np.concatenate([vn, tn]))
