"""The search probe: does a text query find the images that hold what it asks for?

Templated queries ("a red circle", "a small red circle", "a red circle in the top left", ...) are scored against
a gallery of shapes-world images whose true attributes are known. An image is *relevant* to a query when one of
its objects has every attribute the query names; precision@k is the fraction of a query's top k images that are
relevant, averaged over the queries of a template that have at least one relevant image in the gallery. The
score matrix may come from anything (a student's cosines, a bundle's search); `oracle_scores` scores from the
true attributes, so the oracle's precision is the ceiling a gallery allows (a query with 3 relevant images can
reach 3/5 at k = 5).

Besides the full match, each template also reports the precision on each of its attribute kinds alone (for "a red
circle": how many of the top k hold a red object, how many a circle), which tells which word a model listens to.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from rebalance_ref.shapes import COLOURS, GRID, SHAPES, SIZES, _encode, _object_phrase

# Template name -> the attribute kinds its queries name ("position" is the object's grid cell: row and col).
PROBE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "colour": ("colour",),
    "shape": ("shape",),
    "colour_shape": ("colour", "shape"),
    "size_colour_shape": ("size", "colour", "shape"),
    "colour_shape_position": ("colour", "shape", "position"),
}
_VALUES = {"shape": SHAPES, "colour": COLOURS, "size": SIZES, "position": tuple(range(GRID * GRID))}


@dataclass(frozen=True)
class ProbeQuery:
    """One query: its template name, its text, and the attributes it names (kind -> value; position = cell)."""

    template: str
    text: str
    attributes: dict


def probe_queries(templates=tuple(PROBE_TEMPLATES)) -> list[ProbeQuery]:
    """Every combination of values of each template's kinds, worded with the world's canonical words
    (`shapes._object_phrase` with the first synonym): "a red circle", "a small red circle",
    "a red circle in the top left", "a red shape", "a circle"."""
    out = []
    for name in templates:
        kinds = PROBE_TEMPLATES[name]
        for values in itertools.product(*(_VALUES[k] for k in kinds)):
            attrs = dict(zip(kinds, values, strict=True))
            text = _object_phrase(attrs.get("shape"), attrs.get("colour"), attrs.get("size"), attrs.get("position"),
                                  0, np.zeros(3))
            out.append(ProbeQuery(name, text, attrs))
    return out


_KIND_ORDER = ("shape", "colour", "size", "position")


def _gallery_codes(gallery_attributes: list) -> tuple[np.ndarray, np.ndarray]:
    """Objects as value indices (N, MAX_OBJECTS, 4) in `_KIND_ORDER` (position = row * GRID + col), and a mask
    (N, MAX_OBJECTS) of real objects."""
    codes, mask = _encode(gallery_attributes)  # (N, M, 5): shape, colour, size, row, col
    return np.concatenate([codes[..., :3], codes[..., 3:4] * GRID + codes[..., 4:5]], axis=-1), mask


def match_matrix(queries: list[ProbeQuery], gallery_attributes: list, kinds=None) -> np.ndarray:
    """Graded match, float32 (Q, N): for query q and image n, the largest fraction of the query's attributes
    (restricted to `kinds` when given; queries without any of them score 0) that one object of image n has.
    1.0 means relevant: one object has all of them."""
    objects, real = _gallery_codes(gallery_attributes)         # (N, M, 4), (N, M)
    wanted = np.full((len(queries), len(_KIND_ORDER)), -1)      # (Q, 4): value index asked for, -1 = not asked
    for q, query in enumerate(queries):
        for kind, value in query.attributes.items():
            if kinds is None or kind in kinds:
                wanted[q, _KIND_ORDER.index(kind)] = _VALUES[kind].index(value)
    asked = wanted >= 0                                          # (Q, 4)
    hits = (objects[None] == wanted[:, None, None, :]) & asked[:, None, None, :]  # (Q, N, M, 4)
    frac = hits.sum(-1) / np.maximum(asked.sum(1), 1)[:, None, None]              # (Q, N, M)
    return np.where(real[None], frac, 0.0).max(axis=2).astype(np.float32)


def oracle_scores(queries: list[ProbeQuery], gallery_attributes: list) -> np.ndarray:
    """Scores from the true attributes, (Q, N): the graded match. Its precision@k is the gallery's ceiling and does
    not depend on how ties break (every relevant image scores 1, every other one less)."""
    return match_matrix(queries, gallery_attributes)


def precision_at_k(scores: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    """Per query, the fraction of its k highest-scoring gallery items that are relevant: (Q, N), (Q, N) bool -> (Q,).

    Ties break by gallery index (a stable sort), so exactly tied scores make the result depend on gallery order."""
    scores = np.asarray(scores)
    if scores.shape != relevant.shape:
        raise ValueError(f"scores {scores.shape} and relevant {relevant.shape} must have the same shape")
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k must be in [1, {scores.shape[1]}] (the gallery size), got {k}")
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (Q, k)
    return np.take_along_axis(relevant, top, axis=1).mean(axis=1)


def probe_precision(scores: np.ndarray, queries: list[ProbeQuery], gallery_attributes: list,
                    k: int = 5) -> dict[str, float]:
    """Precision@k per template from a score matrix (Q, N) over `queries` × gallery: key `{template}` for the
    full match and `{template}:{kind}` for each kind alone (templates with two or more kinds), each averaged over
    the template's queries with at least one relevant image; `{template}:queries` counts those queries."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(queries), len(gallery_attributes)):
        raise ValueError(f"scores must be (queries, gallery) = ({len(queries)}, {len(gallery_attributes)}), "
                         f"got {scores.shape}")
    relevant = match_matrix(queries, gallery_attributes) == 1.0
    out: dict[str, float] = {}
    names = list(dict.fromkeys(q.template for q in queries))
    for name in names:
        rows = np.array([i for i, q in enumerate(queries) if q.template == name])
        rows = rows[relevant[rows].any(axis=1)]
        out[f"{name}:queries"] = float(len(rows))
        if len(rows) == 0:
            continue
        out[name] = float(precision_at_k(scores[rows], relevant[rows], k).mean())
        kinds = PROBE_TEMPLATES[name]
        if len(kinds) > 1:
            sub = [queries[i] for i in rows]
            for kind in kinds:
                hit = match_matrix(sub, gallery_attributes, kinds=(kind,)) == 1.0
                out[f"{name}:{kind}"] = float(precision_at_k(scores[rows], hit, k).mean())
    return out
