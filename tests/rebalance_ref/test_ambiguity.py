"""Caption ambiguity: which images a caption is true of, the caption-content oracle's expected recall, and the
caption mentions (`shapes.split_mentions`) checked against the caption texts they come with."""

import itertools
import re

import numpy as np
import pytest

from rebalance_ref.ambiguity import (
    ambiguity_stats,
    bayes_oracle_recall,
    caption_match_counts,
    caption_matches,
    encode_mentions,
    expected_recall,
    hit_probability,
    itm_noise_floor,
    likelihood_scores,
    oracle_recall,
)
from rebalance_ref.metrics import retrieval_recall
from rebalance_ref.shapes import (
    COLOURS,
    GRID,
    SHAPE_WORDS,
    SIZE_WORDS,
    WorldKnobs,
    make_splits,
    position_phrases,
    split_mentions,
)


def _ob(shape, colour, size, row, col):
    return {"shape": shape, "colour": colour, "size": size, "row": row, "col": col}


def _m(shape=None, colour=None, size=None, position=None, relation=None):
    return {"shape": shape, "colour": colour, "size": size, "position": position, "relation": relation}


# image 0: a small red circle top left, a large blue square in the center
# image 1: a large red circle bottom right
# image 2: a small green triangle top right, a small red circle middle right, a large red circle bottom left
SCENES = [
    [_ob("circle", "red", "small", 0, 0), _ob("square", "blue", "large", 1, 1)],
    [_ob("circle", "red", "large", 2, 2)],
    [_ob("triangle", "green", "small", 0, 2), _ob("circle", "red", "small", 1, 2), _ob("circle", "red", "large", 2, 0)],
]
CASES = [
    ([_m("circle", "red")], [True, True, True]),                                  # "a red circle": every image
    ([_m("circle", "red", "small", 0)], [True, False, False]),                    # all four stated: one image
    ([_m("circle", "red"), _m("circle", "red")], [False, False, True]),           # two distinct red circles
    ([_m(None, "blue")], [True, False, False]),                                   # "a blue shape"
    ([_m("circle", "green")], [False, False, False]),                             # a noisy colour: true of none
    ([_m("circle", "red", "large"), _m("triangle")], [False, False, True]),
    ([_m("square", "blue"), _m("circle", "red", None, 0)], [True, False, False]),  # order of mention is free
    ([_m(position=8)], [False, True, False]),                                     # "a shape in the bottom right"
    ([_m("circle"), _m("circle"), _m("circle")], [False, False, False]),          # more mentions than circles
    # relations: "a red circle left of a blue square" holds in image 0; "right of" holds nowhere
    ([_m("circle", "red", relation=["left of", 1]), _m("square", "blue", relation=["right of", 0])],
     [True, False, False]),
    ([_m("circle", "red", relation=["right of", 1]), _m("square", "blue", relation=["left of", 0])],
     [False, False, False]),
    ([_m("circle", "red", relation=["above", 1]), _m("circle", relation=["below", 0])], [False, False, True]),
    ([_m("triangle", relation=["below", 1]), _m("circle", relation=["above", 0])], [False, False, False]),
    ([_m("circle", relation=["right of", 1]), _m(relation=["left of", 0]), _m("circle", "red")],
     [False, False, False]),
    ([_m("circle", relation=["below", 1]), _m("triangle", relation=["above", 0]), _m(None, "red")],
     [False, False, True]),
]


def test_caption_matches_hand_made_scenes():
    got = caption_matches([c for c, _ in CASES], SCENES, chunk=4)                 # chunk smaller than C
    assert got.shape == (len(CASES), len(SCENES))
    assert got.tolist() == [row for _, row in CASES]


def test_encode_mentions_rejects_bad_input():
    with pytest.raises(ValueError, match="colour"):
        encode_mentions([[_m("circle", "mauve")]])
    with pytest.raises(ValueError, match="1..3"):
        encode_mentions([[]])
    with pytest.raises(ValueError, match="dict"):
        encode_mentions([["a red circle"]])
    with pytest.raises(ValueError, match="relation"):
        caption_matches([[_m("circle", relation=["near", 1]), _m("square")]], SCENES)
    with pytest.raises(ValueError, match="relation"):
        caption_matches([[_m("circle", relation=["above", 0])]], SCENES)


def _enumerated_hit(n, p, k):
    """P(a positive in the first k) by enumerating every order of n tied items holding p positives."""
    items = [1] * p + [0] * (n - p)
    return float(np.mean([any(order[:k]) for order in itertools.permutations(items)]))


@pytest.mark.parametrize("n,p", [(1, 1), (4, 1), (5, 2), (6, 0), (6, 6), (7, 3)])
def test_hit_probability_matches_enumeration(n, p):
    for k in range(-1, 9):
        assert hit_probability(n, p, k) == pytest.approx(_enumerated_hit(n, p, max(k, 0)))


def test_oracle_recall_known_answers():
    # 4 images, 1 caption each; caption 0 true of images 0-3 (m = 4), the others true of their own image only
    matches = np.eye(4, dtype=bool)
    matches[0] = True
    out = oracle_recall(matches, np.arange(4), ks=(1, 5))
    assert out["t2i_r1"] == pytest.approx(100 * (1 / 4 + 3) / 4)                 # min(1, 1/4) for caption 0
    assert out["t2i_r5"] == pytest.approx(100.0)
    # image 0: its caption is the only one true of it; images 1-3: two captions true of each (their own and 0)
    assert out["i2t_r1"] == pytest.approx(100 * (1 + 3 * 0.5) / 4)
    assert out["r_mean"] == pytest.approx((out["i2t_mean"] + out["t2i_mean"]) / 2)
    assert oracle_recall(np.eye(5, dtype=bool), np.arange(5))["r_mean"] == pytest.approx(100.0)
    # a caption false of its own image (noise) ranks it among the rest: 2 true images first, then 3 tied
    noisy = np.zeros((1, 5), dtype=bool)
    noisy[0, 1:3] = True
    out = oracle_recall(noisy[:, [0, 1, 2, 3, 4]], np.array([0]), ks=(1, 3, 5))
    assert (out["t2i_r1"], out["t2i_r3"], out["t2i_r5"]) == pytest.approx((0.0, 100 / 3, 100.0))


@pytest.mark.parametrize("graded", [False, True])
def test_expected_recall_is_the_mean_over_random_tie_breaks(graded):
    rng = np.random.default_rng(0 + graded)
    txt2img = np.repeat(np.arange(4), 3)
    levels = 3 if graded else 2
    sim_i2t = rng.integers(0, levels, (4, 12)).astype(float)                     # many ties
    sim_t2i = rng.integers(0, levels, (12, 4)).astype(float) if graded else None
    expected = expected_recall(sim_i2t, txt2img, ks=(1, 2, 5), sim_t2i=sim_t2i)
    draws = []
    for _ in range(3000):
        jitter_t2i = None if sim_t2i is None else sim_t2i + 1e-3 * rng.random(sim_t2i.shape)
        draws.append(retrieval_recall(sim_i2t + 1e-3 * rng.random(sim_i2t.shape), txt2img, ks=(1, 2, 5),
                                      sim_t2i=jitter_t2i))
    for key in ("i2t_r1", "i2t_r2", "t2i_r1", "t2i_r2", "t2i_r5", "r_mean"):
        assert np.mean([d[key] for d in draws]) == pytest.approx(expected[key], abs=2.0)


def test_likelihood_oracle_prefers_images_without_unmentioned_objects():
    caption = [[_m("circle", "red")]]                                              # true of all three scenes
    counts = caption_match_counts(caption, SCENES)
    assert counts.tolist() == [[2, 2, 4]]                                          # 1 way, 1 way, 2 ways (x 2!)
    n_objects = np.array([len(s) for s in SCENES])
    like = likelihood_scores(counts, np.array([1]), n_objects, 0.3)
    assert like[0].tolist() == pytest.approx([2 * 0.3, 2.0, 4 * 0.09])
    assert likelihood_scores(counts, np.array([1]), n_objects, 0.0)[0].tolist() == [0.0, 2.0, 0.0]
    # the caption belongs to scene 1: the literal oracle finds it 1 time in 3 at R@1, the Bayes one always
    literal = oracle_recall(counts > 0, np.array([1]), ks=(1,))
    aware = bayes_oracle_recall(counts, np.array([1]), n_objects, 0.3, np.array([1]), ks=(1,))
    assert literal["t2i_r1"] == pytest.approx(100 / 3) and aware["t2i_r1"] == pytest.approx(100.0)


def test_ambiguity_stats_counts_other_images():
    stats = ambiguity_stats(caption_matches([c for c, _ in CASES[:9]], SCENES), np.array([0, 0, 2, 0, 1, 2, 0, 1, 2]))
    # other images per caption: 2, 0, 0, 0, 0(false of own), 0, 0, 0, 0(false of own)
    assert stats["median_other_images"] == 0.0 and stats["share_ambiguous"] == pytest.approx(100 / 9)
    assert stats["share_false_of_own"] == pytest.approx(200 / 9)


# ---------------------------------------------------------------------------------------------------------------
# Mentions against the text they come with

KNOBS = [WorldKnobs(), WorldKnobs(drop_position=0.9, drop_size=0.8, drop_object=0.3), WorldKnobs(word_noise=0.3),
         WorldKnobs(drop_shape=0.5, drop_colour=0.5)]


def _words(text):
    return set(re.findall(r"[a-z]+", text))


@pytest.mark.parametrize("knobs", KNOBS)
def test_mentions_come_with_the_very_captions_of_make_splits(knobs):
    made = split_mentions(knobs, 30, 6, 8, seed=2)
    world = make_splits(knobs, 30, 6, 8, seed=2, size=12)
    for split, data in world.items():
        assert made[split].captions == data.captions and made[split].attributes == data.attributes
        assert [len(m) for m in made[split].mentions] == [5] * len(data)


@pytest.mark.parametrize("knobs", KNOBS)
def test_every_stated_attribute_is_in_the_text(knobs):
    made = split_mentions(knobs, 60, 1, 1, seed=3)["train"]
    for texts, mentions in zip(made.captions, made.mentions, strict=True):
        for text, objects in zip(texts, mentions, strict=True):
            words = _words(text)
            assert 1 <= len(objects) <= 3
            related = [ob for ob in objects if ob["relation"]]
            assert ("left of" in text or "right of" in text or "above" in words or "below" in words) == bool(related)
            if related:                                                           # the pair comes first
                assert [ob["relation"][1] for ob in objects[:2]] == [1, 0] and len(related) == 2
                assert f" {related[0]['relation'][0]} " in text
            for ob in objects:
                if ob["colour"] is not None:
                    assert ob["colour"] in words
                if ob["shape"] is not None:
                    assert words & set(SHAPE_WORDS[ob["shape"]])
                if ob["size"] is not None:
                    assert words & set(SIZE_WORDS[ob["size"]])
                if ob["position"] is not None:
                    assert not ob["relation"]
                    assert any(p in text for p in position_phrases(ob["position"] // GRID, ob["position"] % GRID))
            stated_colours = {ob["colour"] for ob in objects if ob["colour"] is not None}
            assert words & set(COLOURS) == stated_colours                         # no colour word unaccounted for
            assert text.count(" shape") == sum(ob["shape"] is None for ob in objects)


def test_captions_without_noise_are_true_of_their_image_and_noise_makes_some_false():
    for knobs, false_of_own in ((WorldKnobs(drop_size=0.5, drop_object=0.5), 0.0), (WorldKnobs(word_noise=0.3), None)):
        made = split_mentions(knobs, 40, 1, 1, seed=1)["train"]
        flat = [m for per in made.mentions for m in per]
        stats = ambiguity_stats(caption_matches(flat, made.attributes), np.repeat(np.arange(40), 5))
        if false_of_own is None:
            assert stats["share_false_of_own"] > 10.0
        else:
            assert stats["share_false_of_own"] == false_of_own


def test_itm_noise_floor_spans_zero_to_the_label_prior():
    assert itm_noise_floor(0.0) == 0.0
    assert itm_noise_floor(1.0) == pytest.approx(-(1 / 3) * np.log(1 / 3) - (2 / 3) * np.log(2 / 3))
    floors = [itm_noise_floor(q) for q in (0.01, 0.1, 0.3, 0.6)]
    assert floors == sorted(floors) and floors[0] > 0.0
    # by hand: share 0.5 -> 2 of 3 pairs look matched, p = 1/2, floor = 2/3 · ln 2
    assert itm_noise_floor(0.5) == pytest.approx(2 / 3 * np.log(2))
    with pytest.raises(ValueError, match="share"):
        itm_noise_floor(1.5)
