"""The shapes world: small synthetic scenes with captions, where modal imbalance can be dialled up and down.

A scene holds 1-3 objects, each with a shape (6 kinds), a colour (7), a size (2) and a cell of a 3x3 grid (no two
objects share a cell). Scenes are rendered to RGB uint8 (vectorised NumPy, any side >= 12, typically 32 or 64)
and described by 5 captions drawn from varied templates (synonyms, word order, relations such as "left of",
partial mentions) plus one canonical full description. The true attributes stay with the data as metadata, so
relevance between scenes can be computed exactly (`attribute_relevance`) or through ROUGE-L of the canonical
descriptions (`canonical_relevance`). What each caption states (`split_mentions`: per caption the objects it names
and the attributes it gives them) comes out of the very loop that writes the text.

Imbalance knobs (`WorldKnobs`, all probabilities or fractions in [0, 1]; every knob at 0 changes nothing):

- text insufficiency: `drop_shape`, `drop_colour`, `drop_size`, `drop_position` -- per caption and object, the
  probability that the caption omits that attribute; `drop_object` -- the probability that a caption omits a
  whole object (at least one object is always mentioned). Models terse captions that leave out what only the
  image shows.
- caption noise: `word_noise` -- per mentioned attribute word, the probability it is replaced by a wrong value
  of the same kind (a relation word is flipped). Models annotation errors.
- image insufficiency: `pixel_noise` -- sigma of additive Gaussian pixel noise as a fraction of the full range
  (models sensor noise / low light); `occlusion` -- per object, the probability a grey square covers it, of
  side `occlusion_size` x the grid cell, centred within a quarter cell of the object centre (models clutter
  and blocked views); `washout` -- object colours are blended toward one grey by this fraction (models
  over-exposure / faded colour: at 1 colour is gone from the pixels, shape and position remain).

Determinism: each source of randomness (scene layout, caption templates, drops, word noise, pixel noise,
occlusion) has its own stream spawned from the seed, and every stream draws arrays of a fixed shape whatever
the knob values. Hence the same seed gives identical bytes, and two presets with the same seed share the very
same scenes and caption templates -- they differ only in what their knobs change.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, fields

import numpy as np

from rebalance_ref.dataset import CaptionedImages

# ---------------------------------------------------------------------------------------------------------------
# The vocabulary of the world. The first synonym of each value is the canonical word.

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
COLOURS = ("red", "green", "blue", "yellow", "purple", "cyan", "orange")
SIZES = ("small", "large")
GRID = 3  # positions are the cells of a GRID x GRID grid
MAX_OBJECTS = 3
CAPTIONS_PER_IMAGE = 5

SHAPE_WORDS = {
    "circle": ("circle", "disk"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus"),
    "cross": ("cross", "plus"),
    "ring": ("ring", "hoop"),
}
COLOUR_RGB = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 220, 50),
    "purple": (150, 60, 200),
    "cyan": (50, 215, 215),
    "orange": (245, 140, 30),
}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
SIZE_RADIUS = {"small": 0.28, "large": 0.42}  # object radius as a fraction of the grid cell side
_ROW_WORDS = ("top", "middle", "bottom")
_COL_WORDS = ("left", "center", "right")
BACKGROUND = (24, 24, 28)
OCCLUDER = (110, 110, 110)
WASHOUT_GREY = (170, 170, 170)
POSITION_SCALE = 2.0  # relevance: same cell counts 1, a neighbouring cell 1/2, two or more cells away 0
_JITTER = 0.06  # centres move by up to this fraction of a cell (radius + jitter < 0.5: objects stay in their cell)


def position_phrases(row: int, col: int) -> tuple[str, ...]:
    """Ways to say where a cell is; the first is the canonical one ("in the top left", "at the top", ...)."""
    name = cell_name(row, col)
    if row == 1 and col == 1:
        return ("in the center", "in the middle")
    if row == 1:
        return (f"on the {name}", f"at the {name}")
    if col == 1:
        return (f"at the {name}", f"near the {name}")
    return (f"in the {name}", f"at the {name}", f"in the {name} corner")


def cell_name(row: int, col: int) -> str:
    """Words for a grid cell: "top left", "top", "left", "center", ... (3x3 grid)."""
    if row == 1 and col == 1:
        return "center"
    if row == 1:
        return _COL_WORDS[col]
    if col == 1:
        return _ROW_WORDS[row]
    return f"{_ROW_WORDS[row]} {_COL_WORDS[col]}"


# ---------------------------------------------------------------------------------------------------------------
# Knobs and presets


@dataclass(frozen=True)
class WorldKnobs:
    """Imbalance knobs of the shapes world; each in [0, 1] and a no-op at 0 (see the module docstring)."""

    drop_shape: float = 0.0
    drop_colour: float = 0.0
    drop_size: float = 0.0
    drop_position: float = 0.0
    drop_object: float = 0.0
    word_noise: float = 0.0
    pixel_noise: float = 0.0
    occlusion: float = 0.0
    occlusion_size: float = 0.0
    washout: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"knob {f.name} must be a number in [0, 1], got {value!r}")

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


PRESETS: dict[str, WorldKnobs] = {
    # Captions mention every attribute of every object; images are clean. The control condition.
    "balanced": WorldKnobs(),
    # The demo default: captions mostly omit what only the image shows (where objects are, how big they are)
    # and sometimes a whole object; images are clean. The image holds strictly more than its captions.
    "text-poor": WorldKnobs(drop_position=0.9, drop_size=0.8, drop_object=0.3),
    # Images lose information (noise, occluders, faded colour); captions stay complete.
    "image-poor": WorldKnobs(pixel_noise=0.2, occlusion=0.3, occlusion_size=0.7, washout=0.6),
    # Captions are complete but one mentioned attribute word in five is wrong.
    "noisy-captions": WorldKnobs(word_noise=0.2),
}


def get_knobs(preset: str | WorldKnobs) -> WorldKnobs:
    """The knobs of a preset name, or `preset` itself when it already is a `WorldKnobs`."""
    if isinstance(preset, WorldKnobs):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)} or a WorldKnobs, got {preset!r}")
    return PRESETS[preset]


# ---------------------------------------------------------------------------------------------------------------
# Random streams: one per source of randomness, each drawing fixed-shape arrays.

_STREAMS = ("scene", "template", "drop", "noise", "pixels", "occlusion")


def _streams(seed_seq: np.random.SeedSequence) -> dict[str, np.random.Generator]:
    return {name: np.random.default_rng(child) for name, child in zip(_STREAMS, seed_seq.spawn(len(_STREAMS)),
                                                                        strict=True)}


@dataclass
class _Scenes:
    """Scene layout as arrays: object slots beyond `count` are unused. All (N, MAX_OBJECTS) unless noted."""

    count: np.ndarray  # (N,) int, 1..MAX_OBJECTS
    shape: np.ndarray
    colour: np.ndarray
    size: np.ndarray
    row: np.ndarray
    col: np.ndarray
    jitter: np.ndarray  # (N, MAX_OBJECTS, 2) float, fraction of a cell (dx, dy)


def _sample_scenes(n: int, rng: np.random.Generator) -> _Scenes:
    count = rng.integers(1, MAX_OBJECTS + 1, size=n)
    shape = rng.integers(0, len(SHAPES), size=(n, MAX_OBJECTS))
    colour = rng.integers(0, len(COLOURS), size=(n, MAX_OBJECTS))
    size = rng.integers(0, len(SIZES), size=(n, MAX_OBJECTS))
    # distinct cells: the first MAX_OBJECTS entries of a random permutation of the GRID*GRID cells
    cells = np.argsort(rng.random((n, GRID * GRID)), axis=1)[:, :MAX_OBJECTS]
    jitter = rng.uniform(-_JITTER, _JITTER, size=(n, MAX_OBJECTS, 2))
    return _Scenes(count, shape, colour, size, cells // GRID, cells % GRID, jitter)


def _attributes(scenes: _Scenes) -> list[list[dict]]:
    """Per image, a list of JSON-friendly object dicts in slot order."""
    out = []
    for i in range(len(scenes.count)):
        objects = []
        for k in range(int(scenes.count[i])):
            objects.append({"shape": SHAPES[scenes.shape[i, k]], "colour": COLOURS[scenes.colour[i, k]],
                            "size": SIZES[scenes.size[i, k]], "row": int(scenes.row[i, k]),
                            "col": int(scenes.col[i, k])})
        out.append(objects)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Rendering (vectorised over images; one pass per object slot)

# Each shape is a predicate on (u, v): pixel offsets from the object centre in units of its radius.
_SHAPE_MASKS = {
    "circle": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.82,
    # apex up at v = -1, base at v = 0.85; half-width grows linearly from the apex
    "triangle": lambda u, v: (v <= 0.85) & (np.abs(u) <= (v + 1.0) * 0.56),
    "diamond": lambda u, v: np.abs(u) + np.abs(v) <= 1.0,
    "cross": lambda u, v: ((np.abs(u) <= 0.32) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.32) & (np.abs(u) <= 1.0)),
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.5**2),
}


def _object_colours(knobs: WorldKnobs) -> np.ndarray:
    """Palette after wash-out, float (n_colours, 3): c' = (1 - w) c + w grey."""
    palette = np.array([COLOUR_RGB[c] for c in COLOURS], dtype=np.float64)
    return (1.0 - knobs.washout) * palette + knobs.washout * np.array(WASHOUT_GREY, dtype=np.float64)


def _render(scenes: _Scenes, size: int, knobs: WorldKnobs, occ_rng: np.random.Generator,
            pix_rng: np.random.Generator, chunk: int = 1024) -> np.ndarray:
    n = len(scenes.count)
    cell = size / GRID
    palette = np.rint(_object_colours(knobs)).astype(np.uint8)
    radius = np.array([SIZE_RADIUS[s] for s in SIZES]) * cell
    # occlusion draws: (hit uniform, dx, dy) per object slot, always drawn so the stream does not depend on knobs
    occ_draw = occ_rng.random((n, MAX_OBJECTS, 3))
    half_side = 0.5 * knobs.occlusion_size * cell
    centres = (np.arange(size, dtype=np.float64) + 0.5)  # pixel centres, (size,)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        img = np.empty((hi - lo, size, size, 3), dtype=np.uint8)
        img[...] = np.array(BACKGROUND, dtype=np.uint8)
        active = np.arange(MAX_OBJECTS)[None, :] < scenes.count[lo:hi, None]  # (b, K)
        cx = (scenes.col[lo:hi] + 0.5 + scenes.jitter[lo:hi, :, 0]) * cell  # (b, K) object centres in pixels
        cy = (scenes.row[lo:hi] + 0.5 + scenes.jitter[lo:hi, :, 1]) * cell
        for k in range(MAX_OBJECTS):
            r = radius[scenes.size[lo:hi, k]]  # (b,)
            u = (centres[None, None, :] - cx[:, k, None, None]) / r[:, None, None]  # (b, 1, S)
            v = (centres[None, :, None] - cy[:, k, None, None]) / r[:, None, None]  # (b, S, 1)
            u, v = np.broadcast_arrays(u, v)  # (b, S, S)
            mask = np.zeros(u.shape, dtype=bool)
            for s, name in enumerate(SHAPES):
                sel = active[:, k] & (scenes.shape[lo:hi, k] == s)
                if sel.any():
                    mask[sel] = _SHAPE_MASKS[name](u[sel], v[sel])
            img[mask] = palette[np.broadcast_to(scenes.colour[lo:hi, k, None, None], mask.shape)[mask]]
        if knobs.occlusion > 0 and knobs.occlusion_size > 0:
            for k in range(MAX_OBJECTS):
                hit = active[:, k] & (occ_draw[lo:hi, k, 0] < knobs.occlusion)
                ox = cx[:, k] + (occ_draw[lo:hi, k, 1] - 0.5) * 0.5 * cell  # within a quarter cell of the centre
                oy = cy[:, k] + (occ_draw[lo:hi, k, 2] - 0.5) * 0.5 * cell
                inside = ((np.abs(centres[None, None, :] - ox[:, None, None]) <= half_side)
                          & (np.abs(centres[None, :, None] - oy[:, None, None]) <= half_side))  # (b, S, S)
                img[inside & hit[:, None, None]] = np.array(OCCLUDER, dtype=np.uint8)
        out[lo:hi] = img
    if knobs.pixel_noise > 0:
        # additive Gaussian noise with sigma = pixel_noise * 255, rounded and clipped to [0, 255]
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            noisy = out[lo:hi].astype(np.float32) + pix_rng.normal(
                0.0, knobs.pixel_noise * 255.0, size=out[lo:hi].shape).astype(np.float32)
            out[lo:hi] = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Captions

_KINDS = ("shape", "colour", "size", "position")  # attribute kinds a caption may drop or get wrong
_WRAPPERS = ("{}", "there is {}", "a picture of {}", "an image showing {}", "{} on a dark background",
             "this scene has {}")
_RELATION_RATE = 0.4  # fraction of captions (with >= 2 mentioned, positioned objects) phrased with a relation
_RELATIONS = {"h": ("left of", "right of"), "v": ("above", "below")}
_N_TEMPLATE_DRAWS = 8  # per caption and object: order key, form, shape/size synonym, preposition, 3 spare
_N_CAPTION_DRAWS = 4  # per caption: wrapper, joiner, relation use, relation axis


def _article(next_word: str) -> str:
    return "an" if next_word[:1] in "aeiou" else "a"


def _object_phrase(shape: str | None, colour: str | None, size: str | None, position: int | None,
                   form: int, draws: np.ndarray) -> str:
    """One object's words. `None` attributes are omitted; `position` is a cell index;
    `draws` are uniforms picking synonyms."""
    shape_word = "shape" if shape is None else SHAPE_WORDS[shape][int(draws[0] * len(SHAPE_WORDS[shape]))]
    size_word = None if size is None else SIZE_WORDS[size][int(draws[1] * len(SIZE_WORDS[size]))]
    if position is None:
        position_words = None
    else:
        options = position_phrases(position // GRID, position % GRID)
        position_words = options[int(draws[2] * len(options))]
    if form == 2 and colour is not None:  # "a large circle in red"
        head = " ".join(w for w in (size_word, shape_word) if w) + f" in {colour}"
    else:
        head = " ".join(w for w in (size_word, colour, shape_word) if w)
    noun = f"{_article(head)} {head}"
    if position_words is None:
        return noun
    if form == 1:  # "a red circle that is in the top left"
        return f"{noun} that is {position_words}"
    return f"{noun} {position_words}"


def _join(items: list[str], how: int) -> str:
    if len(items) == 1:
        return items[0]
    if how == 1 and len(items) == 2:
        return f"{items[0]} with {items[1]}"
    return ", ".join(items[:-1]) + f" and {items[-1]}"


def _wrong(value: int, n_values: int, draw: float) -> int:
    """A value of the same kind different from `value`, chosen by the uniform `draw`."""
    return (value + 1 + int(draw * (n_values - 1))) % n_values


def _mention(words: list, relation: list | None) -> dict:
    """What a caption states about one object (keys `_KINDS` and "relation"): shape/colour/size names and the
    position as a cell index, None when dropped; inside a relation phrase the position is always None (the phrase
    places the objects only relative to each other) and "relation" is [the relation word from this object to the
    other one ("left of", ...), the other one's index in the caption's mentions], else None."""
    s, col, sz, pos = words
    return {"shape": None if s is None else SHAPES[s], "colour": None if col is None else COLOURS[col],
            "size": None if sz is None else SIZES[sz], "position": None if relation else pos,
            "relation": relation}


def _captions(scenes: _Scenes, knobs: WorldKnobs, template_rng: np.random.Generator,
              drop_rng: np.random.Generator, noise_rng: np.random.Generator) -> tuple[list[list[str]], list]:
    """Per image, its captions' texts, and beside them per caption the mentions (`_mention` dicts, in the order the
    text names the objects; a stated value is the noisy one where word noise replaced it)."""
    n, c, k = len(scenes.count), CAPTIONS_PER_IMAGE, MAX_OBJECTS
    per_object = template_rng.random((n, c, k, _N_TEMPLATE_DRAWS))
    per_caption = template_rng.random((n, c, _N_CAPTION_DRAWS))
    drop = drop_rng.random((n, c, k, len(_KINDS) + 1))  # last column: drop the whole object
    noise = noise_rng.random((n, c, k, len(_KINDS), 2))  # (hit uniform, replacement uniform)
    drop_p = np.array([knobs.drop_shape, knobs.drop_colour, knobs.drop_size, knobs.drop_position, knobs.drop_object])
    dropped = drop < drop_p  # (n, c, k, 5)
    noisy = noise[..., 0] < knobs.word_noise  # (n, c, k, 4)
    out: list[list[str]] = []
    mentions: list[list[list[dict]]] = []
    for i in range(n):
        count = int(scenes.count[i])
        caps = []
        image_mentions = []
        for j in range(c):
            order = sorted(range(count), key=lambda o: per_object[i, j, o, 0])  # word order of objects
            kept = [o for o in order if not dropped[i, j, o, 4]] or order[:1]  # at least one object
            words = {}
            for o in kept:
                values = [int(scenes.shape[i, o]), int(scenes.colour[i, o]), int(scenes.size[i, o]),
                          int(scenes.row[i, o] * GRID + scenes.col[i, o])]
                n_values = (len(SHAPES), len(COLOURS), len(SIZES), GRID * GRID)
                for a in range(len(_KINDS)):
                    if noisy[i, j, o, a]:
                        values[a] = _wrong(values[a], n_values[a], noise[i, j, o, a, 1])
                words[o] = [None if dropped[i, j, o, a] else values[a] for a in range(len(_KINDS))]
            wrapper, joiner, use_rel, axis_draw = per_caption[i, j]
            positioned = [o for o in kept if words[o][3] is not None]
            phrase = None
            if use_rel < _RELATION_RATE and len(positioned) >= 2:
                a_obj, b_obj = positioned[0], positioned[1]
                phrase, relation = _relation_phrase(scenes, i, a_obj, b_obj, words, per_object[i, j], axis_draw,
                                                    flip=bool(noisy[i, j, a_obj, 3]))
            items = []
            if phrase is not None:
                items.append(phrase)
                rest = [o for o in kept if o not in (a_obj, b_obj)]
            else:
                rest = kept
            related = [] if phrase is None else [_mention(words[a_obj], [relation[0], 1]),
                                                 _mention(words[b_obj], [relation[1], 0])]
            image_mentions.append(related + [_mention(words[o], None) for o in rest])
            for o in rest:
                s, col, sz, pos = words[o]
                items.append(_object_phrase(None if s is None else SHAPES[s], None if col is None else COLOURS[col],
                                            None if sz is None else SIZES[sz],
                                            pos,
                                            int(per_object[i, j, o, 1] * 3), per_object[i, j, o, 2:5]))
            text = _WRAPPERS[int(wrapper * len(_WRAPPERS))].format(_join(items, int(joiner * 2)))
            caps.append(text)
        out.append(caps)
        mentions.append(image_mentions)
    return out, mentions


def _relation_phrase(scenes: _Scenes, i: int, a: int, b: int, words: dict, draws: np.ndarray, axis_draw: float,
                     flip: bool) -> tuple[str, tuple[str, str]]:
    """ "a red circle left of a blue square": the true relation between objects a and b (flipped if noisy), and
    the relation words stated from a to b and from b to a ("left of", "right of")."""
    axes = []
    if scenes.col[i, a] != scenes.col[i, b]:
        axes.append(("h", int(scenes.col[i, a] > scenes.col[i, b])))
    if scenes.row[i, a] != scenes.row[i, b]:
        axes.append(("v", int(scenes.row[i, a] > scenes.row[i, b])))
    axis, which = axes[int(axis_draw * len(axes))]
    if flip:
        which = 1 - which
    parts = []
    for o in (a, b):
        s, col, sz, _ = words[o]
        parts.append(_object_phrase(None if s is None else SHAPES[s], None if col is None else COLOURS[col],
                                    None if sz is None else SIZES[sz], None, 0, draws[o, 2:5]))
    return f"{parts[0]} {_RELATIONS[axis][which]} {parts[1]}", (_RELATIONS[axis][which], _RELATIONS[axis][1 - which])


def canonical_description(objects: list[dict]) -> str:
    """The full description of a scene: every object with all attributes, in grid (reading) order."""
    ordered = sorted(objects, key=lambda ob: (ob["row"], ob["col"]))
    items = [f"{_article(ob['size'])} {ob['size']} {ob['colour']} {ob['shape']} "
             f"{position_phrases(ob['row'], ob['col'])[0]}" for ob in ordered]
    return _join(items, 0)


# ---------------------------------------------------------------------------------------------------------------
# Public entry points


def _check_n(n: int, name: str, minimum: int = 1) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {n!r}")
    return int(n)


def _described(n: int, knobs: WorldKnobs, seed_seq: np.random.SeedSequence):
    """The streams, scene layout, caption texts and caption mentions of `n` scenes (no pixels yet)."""
    rngs = _streams(seed_seq)
    scenes = _sample_scenes(n, rngs["scene"])
    captions, mentions = _captions(scenes, knobs, rngs["template"], rngs["drop"], rngs["noise"])
    return rngs, scenes, captions, mentions


def _world(n: int, knobs: WorldKnobs, seed_seq: np.random.SeedSequence, size: int,
           name_prefix: str = "") -> CaptionedImages:
    size = _check_n(size, "size", minimum=12)
    rngs, scenes, captions, _ = _described(n, knobs, seed_seq)
    images = _render(scenes, size, knobs, rngs["occlusion"], rngs["pixels"])
    attributes = _attributes(scenes)
    canonical = [canonical_description(objs) for objs in attributes]
    names = [f"{name_prefix}scene_{i:06d}.png" for i in range(n)]
    return CaptionedImages(images=images, captions=captions, names=names, attributes=attributes,
                           canonical=canonical)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def make_world(n: int, preset: str | WorldKnobs = "text-poor", seed: int = 0, size: int = 32) -> CaptionedImages:
    """`n` scenes of the shapes world under a preset (a name in PRESETS or a WorldKnobs), 5 captions each.

    Same (n, preset, seed, size) -> identical bytes; presets with the same seed share scenes and templates.
    """
    n = _check_n(n, "n")
    return _world(n, get_knobs(preset), np.random.SeedSequence(_check_seed(seed)), size)


SPLITS = ("train", "val", "test")


def _split_plan(preset: str | WorldKnobs, n_train: int, n_val: int, n_test: int, seed: int):
    """(knobs, [(split, size, seed sequence)]): split k of `SPLITS` draws from SeedSequence([seed, k + 1])."""
    knobs = get_knobs(preset)
    seed = _check_seed(seed)
    sizes = {"train": _check_n(n_train, "n_train"), "val": _check_n(n_val, "n_val"), "test": _check_n(n_test, "n_test")}
    return knobs, [(split, sizes[split], np.random.SeedSequence([seed, k + 1])) for k, split in enumerate(SPLITS)]


def make_splits(preset: str | WorldKnobs, n_train: int, n_val: int, n_test: int, seed: int = 0,
                size: int = 32) -> dict[str, CaptionedImages]:
    """Independent, seeded train/val/test worlds; names are "<split>/scene_NNNNNN.png"."""
    knobs, plan = _split_plan(preset, n_train, n_val, n_test, seed)
    return {split: _world(n, knobs, seq, size, f"{split}/") for split, n, seq in plan}


@dataclass(frozen=True)
class CaptionMentions:
    """What the captions of a split say, without pixels: `captions` and `attributes` exactly as `make_splits`
    makes them, and `mentions[i][j]` the objects caption j of image i names, in text order, each a dict
    {"shape", "colour", "size": name or None, "position": the cell row * GRID + col or None, "relation"}.
    None where the caption dropped the attribute; the noisy value where word noise replaced it (a noisy relation
    is flipped). The two objects of a relation phrase ("a red circle left of a blue square") come first, have no
    position, and carry "relation": [word, index of the other object] ("left of", 1 and "right of", 0); other
    objects carry "relation": None."""

    captions: list[list[str]]
    mentions: list[list[list[dict]]]
    attributes: list[list[dict]]


def split_mentions(preset: str | WorldKnobs, n_train: int, n_val: int, n_test: int,
                   seed: int = 0) -> dict[str, CaptionMentions]:
    """The caption mentions of each split, from the same seed streams and caption code as `make_splits` (no images
    are rendered)."""
    knobs, plan = _split_plan(preset, n_train, n_val, n_test, seed)
    out = {}
    for split, n, seq in plan:
        _, scenes, captions, mentions = _described(n, knobs, seq)
        out[split] = CaptionMentions(captions=captions, mentions=mentions, attributes=_attributes(scenes))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Labels and relevance from the true attributes


def _encode(attributes: list) -> tuple[np.ndarray, np.ndarray]:
    """Objects as int arrays (N, MAX_OBJECTS, 5) [shape, colour, size, row, col] and a mask (N, MAX_OBJECTS)."""
    if not isinstance(attributes, list | tuple):
        raise ValueError(f"attributes must be a list (per image, a list of object dicts), got {type(attributes)}")
    codes = np.zeros((len(attributes), MAX_OBJECTS, 5), dtype=np.int64)
    mask = np.zeros((len(attributes), MAX_OBJECTS), dtype=bool)
    for i, objects in enumerate(attributes):
        if not 1 <= len(objects) <= MAX_OBJECTS:
            raise ValueError(f"attributes[{i}] must hold 1..{MAX_OBJECTS} objects, got {len(objects)}")
        for k, ob in enumerate(objects):
            try:
                codes[i, k] = (SHAPES.index(ob["shape"]), COLOURS.index(ob["colour"]), SIZES.index(ob["size"]),
                               int(ob["row"]), int(ob["col"]))
            except (KeyError, ValueError, TypeError) as exc:
                raise ValueError(f"attributes[{i}][{k}] is not a valid object dict: {ob!r}") from exc
            mask[i, k] = True
    return codes, mask


def attribute_target_names() -> list[str]:
    """Names of the columns of `attribute_targets`, in order."""
    cells = [(r, c) for r in range(GRID) for c in range(GRID)]
    names = [f"shape:{s}" for s in SHAPES] + [f"colour:{c}" for c in COLOURS] + [f"size:{z}" for z in SIZES]
    names += [f"cell:{r},{c}" for r, c in cells]
    names += [f"pair:{c} {s}" for s in SHAPES for c in COLOURS]
    names += [f"cell:{r},{c}:shape:{s}" for r, c in cells for s in SHAPES]
    names += [f"cell:{r},{c}:colour:{col}" for r, c in cells for col in COLOURS]
    names += [f"cell:{r},{c}:size:{z}" for r, c in cells for z in SIZES]
    return names


def attribute_targets(attributes: list) -> tuple[np.ndarray, list[str]]:
    """Multi-hot labels per image, float32 (N, K), for supervised pretraining of the image teacher.

    Columns (K = 6 + 7 + 2 + 9 + 42 + 54 + 63 + 18 = 201): which shapes, colours and sizes occur; which cells are
    occupied; which colour-shape pairs occur; and per cell its object's shape, colour and size. The per-cell
    groups bind attributes to positions, so the labels determine the scene exactly (up to jitter); the presence
    groups give easier, position-free signals.
    """
    codes, mask = _encode(attributes)
    n = len(codes)
    ns, nc, nz, ncell = len(SHAPES), len(COLOURS), len(SIZES), GRID * GRID
    widths = (ns, nc, nz, ncell, ns * nc, ncell * ns, ncell * nc, ncell * nz)
    offsets = np.concatenate([[0], np.cumsum(widths)])
    y = np.zeros((n, int(offsets[-1])), dtype=np.float32)
    shape, colour, size = codes[..., 0], codes[..., 1], codes[..., 2]
    cell = codes[..., 3] * GRID + codes[..., 4]
    columns = (shape, colour, size, cell, shape * nc + colour, cell * ns + shape, cell * nc + colour,
               cell * nz + size)
    rows = np.broadcast_to(np.arange(n)[:, None], mask.shape)[mask]
    for offset, col in zip(offsets[:-1], columns, strict=True):
        y[rows, offset + col[mask]] = 1.0
    return y, attribute_target_names()


def _object_types(codes: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """One id per object slot (N, K): shape, colour, size and cell combined; empty slots get the last id."""
    ns, nc, nz = len(SHAPES), len(COLOURS), len(SIZES)
    cell = codes[..., 3] * GRID + codes[..., 4]
    ids = ((cell * nz + codes[..., 2]) * nc + codes[..., 1]) * ns + codes[..., 0]
    return np.where(mask, ids, ns * nc * nz * GRID * GRID)


def _object_similarity_table() -> np.ndarray:
    """sim(o, p) for every pair of object types, float32 (T + 1, T + 1); the extra type (empty) matches nothing."""
    ns, nc, nz, ncell = len(SHAPES), len(COLOURS), len(SIZES), GRID * GRID
    t = np.arange(ns * nc * nz * ncell)
    shape, colour, size, cell = t % ns, (t // ns) % nc, (t // (ns * nc)) % nz, t // (ns * nc * nz)
    row, col = cell // GRID, cell % GRID
    same = ((shape[:, None] == shape[None]).astype(np.float32) + (colour[:, None] == colour[None])
            + (size[:, None] == size[None]))
    dist = np.abs(row[:, None] - row[None]) + np.abs(col[:, None] - col[None])
    table = np.zeros((len(t) + 1, len(t) + 1), dtype=np.float32)
    table[:-1, :-1] = (same + np.maximum(0.0, 1.0 - dist / POSITION_SCALE)) / 4.0
    return table


def attribute_relevance(attrs_a: list, attrs_b: list, chunk: int = 256) -> np.ndarray:
    """Graded relevance between scenes from their true attributes, float32 (Na, Nb) in [0, 1].

    Two objects agree by sim(o, p) = (1[shape] + 1[colour] + 1[size] + max(0, 1 - manhattan(cell_o, cell_p) / 2)) / 4:
    the position term is 1 in the same cell, 1/2 in a neighbouring cell, 0 further away. Two scenes are related
    by the best one-to-one matching of their objects, normalised by the larger object count:
    rel(A, B) = max over matchings of sum sim / max(|A|, |B|). It is symmetric, and 1 exactly for equal scenes.
    """
    ca, ma = _encode(attrs_a)
    cb, mb = _encode(attrs_b)
    table = _object_similarity_table()  # (T + 1, T + 1) float32, last row/column: an empty slot
    ta, tb = _object_types(ca, ma), _object_types(cb, mb)  # (N, K) type ids
    max_count = np.maximum(ma.sum(1)[:, None], mb.sum(1)[None, :]).astype(np.float32)  # (Na, Nb)
    out = np.empty((len(ca), len(cb)), dtype=np.float32)
    perms = list(itertools.permutations(range(MAX_OBJECTS)))
    for lo in range(0, len(ca), chunk):
        rows = table[ta[lo:lo + chunk]]  # (a, K, T + 1): similarity of each of a's objects to every type
        sim = [[rows[:, r][:, tb[:, c]] for c in range(MAX_OBJECTS)] for r in range(MAX_OBJECTS)]  # K x K (a, Nb)
        best = sim[0][perms[0][0]] + sim[1][perms[0][1]] + sim[2][perms[0][2]]
        for p in perms[1:]:
            np.maximum(best, sim[0][p[0]] + sim[1][p[1]] + sim[2][p[2]], out=best)
        out[lo:lo + chunk] = best / max_count[lo:lo + chunk]
    return out


def canonical_relevance(canonical_a: list[str], canonical_b: list[str] | None = None) -> np.ndarray:
    """ROUGE-L (beta = 1.2) relevance between scenes' canonical descriptions, float32 (Na, Nb) in [0, 1], via
    `rebalance_ref.metrics.rouge_relevance`: scene i's description as candidate, scene j's as the one reference.
    Like the paper's caption relevance it is not symmetric (beta weighs recall over precision)."""
    from rebalance_ref.metrics import rouge_relevance

    canonical_b = canonical_a if canonical_b is None else canonical_b
    return np.asarray(rouge_relevance(list(canonical_a), [[c] for c in canonical_b]))
