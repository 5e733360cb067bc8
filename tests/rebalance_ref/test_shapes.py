import dataclasses

import numpy as np
import pytest

from rebalance_ref import shapes
from rebalance_ref.shapes import PRESETS, WorldKnobs, attribute_relevance, attribute_targets, make_splits, make_world
from rebalance_ref.text import words

N = 40
KNOB_NAMES = [f.name for f in dataclasses.fields(WorldKnobs)]
POSITION_WORDS = {"top", "bottom", "left", "right", "center", "middle", "above", "below", "corner"}
SIZE_WORDS = {w for ws in shapes.SIZE_WORDS.values() for w in ws}
COLOUR_WORDS = set(shapes.COLOURS)


@pytest.fixture(scope="module")
def balanced():
    return make_world(N, "balanced", seed=5)


def _caption_words(world):
    return [set(words(c)) for caps in world.captions for c in caps]


def test_world_contents(balanced):
    w = balanced
    assert w.images.shape == (N, 32, 32, 3) and w.images.dtype == np.uint8
    assert all(len(caps) == 5 for caps in w.captions)
    assert len(w.canonical) == N and len(set(w.names)) == N
    counts = [len(objs) for objs in w.attributes]
    assert min(counts) >= 1 and max(counts) <= 3
    for objs in w.attributes:
        cells = {(o["row"], o["col"]) for o in objs}
        assert len(cells) == len(objs)  # one object per cell
    # the canonical description names every attribute of every object
    for objs, canon in zip(w.attributes, w.canonical, strict=True):
        for o in objs:
            assert o["shape"] in canon and o["colour"] in canon and o["size"] in canon
    assert make_world(3, "balanced", seed=5, size=64).images.shape == (3, 64, 64, 3)


@pytest.mark.parametrize("size", [32, 64])
def test_each_object_is_drawn_inside_its_cell_in_its_colour(size):
    world = make_world(30, "balanced", seed=8, size=size)
    cell = size / 3
    ys, xs = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    cell_of = (np.floor((ys + 0.5) / cell) * 3 + np.floor((xs + 0.5) / cell)).astype(int)
    for img, objs in zip(world.images, world.attributes, strict=True):
        drawn = ~np.all(img == np.array(shapes.BACKGROUND, np.uint8), axis=-1)
        occupied = {o["row"] * 3 + o["col"]: o for o in objs}
        assert set(np.unique(cell_of[drawn])) == set(occupied)
        for c, o in occupied.items():
            pixels = img[drawn & (cell_of == c)]
            assert np.all(pixels == np.array(shapes.COLOUR_RGB[o["colour"]], np.uint8))


def test_balanced_captions_mention_colours_of_the_scene(balanced):
    for objs, caps in zip(balanced.attributes, balanced.captions, strict=True):
        for cap in caps:
            mentioned = set(words(cap)) & COLOUR_WORDS
            assert mentioned <= {o["colour"] for o in objs}  # no caption noise at 0
            assert mentioned  # every caption names at least one object's colour


def test_captions_use_relations_and_synonyms(balanced):
    all_words = set().union(*_caption_words(balanced))
    assert {"left", "right", "above", "below"} & all_words
    assert {"little", "big", "tiny"} & all_words and {"disk", "box", "rhombus", "plus", "hoop"} & all_words


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_same_seed_identical_bytes(preset):
    a, b = make_world(12, preset, seed=3), make_world(12, preset, seed=3)
    assert a.images.tobytes() == b.images.tobytes()
    assert a.captions == b.captions and a.attributes == b.attributes and a.canonical == b.canonical
    c = make_world(12, preset, seed=4)
    assert c.images.tobytes() != a.images.tobytes()


def test_presets_share_scenes_for_a_seed():
    a, b = make_world(10, "balanced", seed=1), make_world(10, "text-poor", seed=1)
    assert a.attributes == b.attributes and a.canonical == b.canonical


@pytest.mark.parametrize("knob", KNOB_NAMES)
def test_every_knob_at_zero_changes_nothing(knob):
    # with every other knob at 0.5, this knob at 0 and at a vanishing value give the same bytes: a knob acts only
    # through its value, never by shifting another knob's random stream
    others = {name: 0.5 for name in KNOB_NAMES if name != knob}
    at_zero = make_world(N, WorldKnobs(**others, **{knob: 0.0}), seed=5)
    tiny = make_world(N, WorldKnobs(**others, **{knob: 1e-9}), seed=5)
    assert at_zero.images.tobytes() == tiny.images.tobytes()
    assert at_zero.captions == tiny.captions


TEXT_KNOBS = ["drop_shape", "drop_colour", "drop_size", "drop_position", "drop_object", "word_noise"]


def test_text_and_image_knobs_touch_only_their_modality(balanced):
    text = make_world(N, WorldKnobs(**{k: 0.7 for k in TEXT_KNOBS}), seed=5)
    image = make_world(N, WorldKnobs(**{k: 0.7 for k in KNOB_NAMES if k not in TEXT_KNOBS}), seed=5)
    assert text.images.tobytes() == balanced.images.tobytes() and text.captions != balanced.captions
    assert image.captions == balanced.captions and image.images.tobytes() != balanced.images.tobytes()
    assert make_world(N, WorldKnobs(), seed=5).images.tobytes() == balanced.images.tobytes()


def test_drop_knobs_at_one_remove_their_words(balanced):
    no_pos = make_world(N, WorldKnobs(drop_position=1.0), seed=5)
    assert not set().union(*_caption_words(no_pos)) & POSITION_WORDS
    no_size = make_world(N, WorldKnobs(drop_size=1.0), seed=5)
    assert not set().union(*_caption_words(no_size)) & SIZE_WORDS
    no_colour = make_world(N, WorldKnobs(drop_colour=1.0), seed=5)
    assert not set().union(*_caption_words(no_colour)) & COLOUR_WORDS
    no_shape = make_world(N, WorldKnobs(drop_shape=1.0), seed=5)
    shape_words = {w for ws in shapes.SHAPE_WORDS.values() for w in ws}
    assert not set().union(*_caption_words(no_shape)) & shape_words
    # dropping objects keeps exactly one object per caption at 1
    one = make_world(N, WorldKnobs(drop_object=1.0, drop_position=1.0), seed=5)
    for caps in one.captions:
        for cap in caps:
            assert sum(w in COLOUR_WORDS for w in words(cap)) == 1
    # images are untouched by text knobs
    assert no_pos.images.tobytes() == balanced.images.tobytes()


def test_text_poor_drops_positions_and_sizes_mostly():
    world = make_world(200, "text-poor", seed=0)
    caps = _caption_words(world)
    with_pos = np.mean([bool(c & POSITION_WORDS) for c in caps])
    with_size = np.mean([bool(c & SIZE_WORDS) for c in caps])
    assert with_pos < 0.3 and with_size < 0.5
    full = _caption_words(make_world(200, "balanced", seed=0))
    assert np.mean([bool(c & POSITION_WORDS) for c in full]) == 1.0


def test_word_noise_at_one_gets_every_colour_wrong(balanced):
    noisy = make_world(N, WorldKnobs(word_noise=1.0), seed=5)
    for objs, caps in zip(noisy.attributes, noisy.captions, strict=True):
        true_colours = {o["colour"] for o in objs}
        if len(objs) == 1:  # with one object, every mentioned colour must be the wrong one
            for cap in caps:
                assert not set(words(cap)) & true_colours
    assert noisy.images.tobytes() == balanced.images.tobytes()


def test_pixel_noise_sigma_is_as_documented(balanced):
    noisy = make_world(N, WorldKnobs(pixel_noise=0.1), seed=5)
    diff = noisy.images.astype(np.float64) - balanced.images.astype(np.float64)
    # sigma = 0.1 * 255; clipping at the dark background shrinks the spread a little, never grows it
    assert 0.8 * 25.5 < diff.std() < 1.05 * 25.5
    assert noisy.captions == balanced.captions


def test_washout_at_one_removes_colour(balanced):
    washed = make_world(N, WorldKnobs(washout=1.0), seed=5)
    background = np.all(washed.images == np.array(shapes.BACKGROUND, np.uint8), axis=-1)
    objects = washed.images[~background]
    assert len(objects) > 0
    assert np.all(objects == np.array(shapes.WASHOUT_GREY, np.uint8))
    # shapes and positions stay: the object masks are those of the clean images
    clean_background = np.all(balanced.images == np.array(shapes.BACKGROUND, np.uint8), axis=-1)
    np.testing.assert_array_equal(background, clean_background)


def test_occlusion_at_one_covers_every_object_centre(balanced):
    occluded = make_world(N, WorldKnobs(occlusion=1.0, occlusion_size=1.0), seed=5)
    cell = 32 / 3
    for img, objs in zip(occluded.images, occluded.attributes, strict=True):
        for o in objs:
            y, x = int((o["row"] + 0.5) * cell), int((o["col"] + 0.5) * cell)
            assert tuple(img[y, x]) == shapes.OCCLUDER
    assert occluded.images.tobytes() != balanced.images.tobytes()


def test_splits_are_independent_and_named():
    splits = make_splits("text-poor", 6, 4, 5, seed=2)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [6, 4, 5]
    assert splits["test"].names[0] == "test/scene_000000.png"
    assert splits["train"].images[:4].tobytes() != splits["val"].images.tobytes()
    again = make_splits("text-poor", 6, 4, 5, seed=2)
    assert again["test"].captions == splits["test"].captions


def test_attribute_targets_encode_the_scene(balanced):
    y, names = attribute_targets(balanced.attributes)
    assert y.dtype == np.float32 and y.shape == (N, len(names)) and len(set(names)) == len(names)
    for i, objs in enumerate(balanced.attributes):
        on = {names[k] for k in np.flatnonzero(y[i])}
        for o in objs:
            cell = f"cell:{o['row']},{o['col']}"
            assert {f"shape:{o['shape']}", f"colour:{o['colour']}", cell, f"{cell}:size:{o['size']}",
                    f"pair:{o['colour']} {o['shape']}", f"{cell}:shape:{o['shape']}"} <= on
        assert sum(n.startswith("cell:") and n.count(":") == 1 for n in on) == len(objs)


def test_attribute_relevance_symmetric_bounded_and_exact_on_equal_scenes(balanced):
    rel = attribute_relevance(balanced.attributes, balanced.attributes, chunk=7)
    assert rel.shape == (N, N) and rel.dtype == np.float32
    np.testing.assert_allclose(rel, rel.T, atol=1e-6)
    assert rel.min() >= 0.0 and rel.max() <= 1.0 + 1e-6
    np.testing.assert_allclose(np.diag(rel), 1.0, atol=1e-6)
    a = [[{"shape": "circle", "colour": "red", "size": "small", "row": 0, "col": 0}]]
    b = [[{"shape": "circle", "colour": "red", "size": "small", "row": 2, "col": 2},
          {"shape": "ring", "colour": "blue", "size": "large", "row": 1, "col": 1}]]
    # one object matches in shape, colour, size (3) and lies 4 cells away (position term 0): 3/4 over 2 objects
    assert attribute_relevance(a, b)[0, 0] == pytest.approx(3 / 4 / 2)
    b[0][0]["row"] = 1  # now 3 cells away: still 0; at 1 cell away: 1/2
    assert attribute_relevance(a, b)[0, 0] == pytest.approx(3 / 4 / 2)
    b[0][0].update(row=0, col=1)
    assert attribute_relevance(a, b)[0, 0] == pytest.approx(3.5 / 4 / 2)
    with pytest.raises(ValueError, match=r"attributes\[0\]\[0\]"):
        attribute_relevance([[{"shape": "blob"}]], a)


def test_canonical_relevance_uses_shared_rouge(balanced):
    rel = shapes.canonical_relevance(balanced.canonical[:6])
    assert rel.shape == (6, 6)
    np.testing.assert_allclose(np.diag(rel), 1.0, atol=1e-6)
    assert rel.min() >= 0.0 and rel.max() <= 1.0 + 1e-6


@pytest.mark.parametrize(("kwargs", "message"), [({"n": 0}, "n must"), ({"preset": "nope"}, "preset"),
                                                  ({"size": 4}, "size"), ({"seed": -1}, "seed")])
def test_bad_arguments(kwargs, message):
    args = {"n": 2, "preset": "balanced", "seed": 0, "size": 32} | kwargs
    with pytest.raises(ValueError, match=message):
        make_world(**args)
    with pytest.raises(ValueError, match="drop_size"):
        WorldKnobs(drop_size=1.5)


def _relevance_by_hand(a, b):
    """Direct transcription of the documented formula, one pair at a time (the test oracle)."""
    import itertools

    def sim(o, p):
        dist = abs(o["row"] - p["row"]) + abs(o["col"] - p["col"])
        return (sum(o[k] == p[k] for k in ("shape", "colour", "size")) + max(0.0, 1 - dist / 2)) / 4

    small, large = (a, b) if len(a) <= len(b) else (b, a)
    best = max(sum(sim(o, large[j]) for o, j in zip(small, perm, strict=False))
               for perm in itertools.permutations(range(len(large)), len(small)))
    return best / max(len(a), len(b))


def test_attribute_relevance_matches_the_formula_pair_by_pair():
    a = make_world(9, "balanced", seed=11).attributes
    b = make_world(7, "balanced", seed=12).attributes
    rel = attribute_relevance(a, b, chunk=4)
    expected = np.array([[_relevance_by_hand(x, y) for y in b] for x in a])
    np.testing.assert_allclose(rel, expected, atol=1e-6)
