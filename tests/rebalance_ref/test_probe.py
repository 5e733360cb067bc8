import numpy as np
import pytest

from rebalance_ref import probe
from rebalance_ref.shapes import COLOURS, SHAPES, SIZES


def _ob(shape, colour, size="small", row=0, col=0):
    return {"shape": shape, "colour": colour, "size": size, "row": row, "col": col}


# four images: 0 and 2 hold a red circle, 1 holds a red square and a blue circle (red and circle, not bound),
# 3 holds a green triangle
GALLERY = [[_ob("circle", "red", "large", 0, 0)],
           [_ob("square", "red", "small", 1, 1), _ob("circle", "blue", "small", 2, 2)],
           [_ob("circle", "red", "small", 2, 0), _ob("cross", "cyan", "large", 0, 2)],
           [_ob("triangle", "green", "small", 1, 0)]]


def _query(template, **attrs):
    return next(q for q in probe.probe_queries((template,)) if q.attributes == attrs)


def test_queries_enumerate_every_combination_in_the_worlds_words():
    queries = probe.probe_queries()
    counts = {name: sum(q.template == name for q in queries) for name in probe.PROBE_TEMPLATES}
    assert counts["colour_shape"] == len(COLOURS) * len(SHAPES)
    assert counts["size_colour_shape"] == len(SIZES) * len(COLOURS) * len(SHAPES)
    assert counts["colour_shape_position"] == len(COLOURS) * len(SHAPES) * 9
    assert _query("colour_shape", colour="red", shape="circle").text == "a red circle"
    assert _query("size_colour_shape", size="small", colour="orange", shape="ring").text == "a small orange ring"
    assert _query("colour_shape_position", colour="red", shape="circle", position=0).text == \
        "a red circle in the top left"
    assert _query("colour", colour="red").text == "a red shape"


def test_match_binds_attributes_to_one_object():
    q = _query("colour_shape", colour="red", shape="circle")
    m = probe.match_matrix([q], GALLERY)
    assert np.allclose(m, [[1.0, 0.5, 1.0, 0.0]])  # image 1 has red and a circle, but no red circle
    assert np.allclose(probe.match_matrix([q], GALLERY, kinds=("shape",)), [[1.0, 1.0, 1.0, 0.0]])
    qp = _query("colour_shape_position", colour="red", shape="circle", position=6)  # bottom left
    assert np.allclose(probe.match_matrix([qp], GALLERY), [[2 / 3, 1 / 3, 1.0, 0.0]])


def test_precision_at_k_and_per_kind_precision():
    q = _query("colour_shape", colour="red", shape="circle")
    # distinct scores: the ranking is 1, 0, 3, 2
    scores = np.array([[0.8, 0.9, 0.1, 0.3]])
    out = probe.probe_precision(scores, [q], GALLERY, k=2)
    assert out["colour_shape"] == pytest.approx(0.5)        # top 2 = images 1, 0: one red circle
    assert out["colour_shape:colour"] == pytest.approx(1.0)  # both hold something red
    assert out["colour_shape:shape"] == pytest.approx(1.0)   # both hold a circle
    assert out["colour_shape:queries"] == 1.0
    assert probe.precision_at_k(scores, np.array([[True, False, False, True]]), 3)[0] == pytest.approx(2 / 3)


def test_oracle_reaches_the_ceiling_the_gallery_allows():
    queries = [_query("colour_shape", colour="red", shape="circle"), _query("shape", shape="triangle"),
               _query("shape", shape="diamond")]  # no diamond anywhere: not counted
    out = probe.probe_precision(probe.oracle_scores(queries, GALLERY), queries, GALLERY, k=2)
    assert out["colour_shape"] == pytest.approx(1.0)
    assert out["shape"] == pytest.approx(0.5)  # one triangle in the gallery: at most 1 of 2
    assert out["shape:queries"] == 1.0


def test_bad_shapes_are_refused():
    q = _query("shape", shape="circle")
    with pytest.raises(ValueError, match="scores must be"):
        probe.probe_precision(np.zeros((2, 4)), [q], GALLERY)
    with pytest.raises(ValueError, match="k must be"):
        probe.precision_at_k(np.zeros((1, 4)), np.zeros((1, 4), bool), 5)
