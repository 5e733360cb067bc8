"""A contact sheet of search hits: the query, then each hit's image (or caption) with its rank and score.

Pillow and NumPy only (no matplotlib, no torch), so `rebalance search --grid` stays as light as the search. The
pictures come from the bundle itself (`Retriever.hit_pixels`): a sheet never needs the data folder the gallery was
indexed from.

    from rebalance.contact_sheet import write_contact_sheet
    write_contact_sheet("hits.png", retriever, hits, query_text="a red circle")
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from rebalance_ref.files import atomic_path

TILE = 128          # side of a shown image, pixels (small model inputs are enlarged, nearest neighbour)
PAD = 8             # space around and between tiles
LABEL_LINES = 5     # lines of text under each tile: rank and score, then the caption or name
COLUMNS = 6         # tiles per row, the query's included
FONT_SIZE = 11
_BG, _INK, _QUERY, _BLANK = (255, 255, 255), (20, 20, 20), (30, 90, 200), (235, 235, 235)


def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _tile(pixels: np.ndarray | None):
    """The image enlarged to TILE x TILE (nearest neighbour keeps small scenes crisp), or a grey blank."""
    from PIL import Image

    if pixels is None:
        return Image.new("RGB", (TILE, TILE), _BLANK)
    return Image.fromarray(np.asarray(pixels, np.uint8)).resize((TILE, TILE), Image.NEAREST)


def _lines(text: str, width: int = 24) -> list[str]:
    return textwrap.wrap(text, width) or [""]


def hit_label(hit) -> list[str]:
    """The text under a hit's tile: rank, cosine (and ITM logit), then its caption or its name."""
    head = f"#{hit.rank}  cos {hit.score:+.3f}" + ("" if hit.itm is None else f"  itm {hit.itm:+.2f}")
    body = _lines(f'"{hit.caption}"') if hit.kind == "text" else _lines(hit.name or f"image {hit.index}")
    return [head, *body]


def contact_sheet(retriever, hits, *, query_text: str | None = None, query_image: np.ndarray | None = None,
                  title: str | None = None):
    """A PIL image: the query first (its image, or its text on a blank tile), then one tile per hit.

    An image hit shows its pixels; a caption hit shows the image it describes when the gallery holds it (a blank
    tile otherwise), with the caption below. `retriever` is an `exports.serving.runtime.Retriever` whose gallery
    produced `hits`."""
    from PIL import Image, ImageDraw

    font = _font()
    line = FONT_SIZE + 3
    cell_w, cell_h = TILE + 2 * PAD, TILE + PAD + LABEL_LINES * line + PAD
    query_lines = ["query"] + (_lines(f'"{query_text}"') if query_text is not None else [])
    tiles = [(_tile(query_image), query_lines, True)]
    tiles += [(_tile(retriever.hit_pixels(hit)), hit_label(hit), False) for hit in hits]
    columns = min(COLUMNS, len(tiles))
    rows = -(-len(tiles) // columns)
    top = (line + PAD) if title else 0
    sheet = Image.new("RGB", (columns * cell_w, top + rows * cell_h), _BG)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((PAD, PAD // 2), title, fill=_INK, font=font)
    for i, (tile, label, is_query) in enumerate(tiles):
        x, y = (i % columns) * cell_w + PAD, top + (i // columns) * cell_h + PAD
        if is_query and query_image is None and query_text is not None:
            # a text query: its words on the tile itself
            for j, text in enumerate(_lines(query_text, 20)[: TILE // line]):
                draw.text((x + 4, y + 4 + j * line), text, fill=_QUERY, font=font)
            draw.rectangle((x, y, x + TILE - 1, y + TILE - 1), outline=_QUERY, width=2)
            label = ["query (text)"]
        else:
            sheet.paste(tile, (x, y))
            if is_query:
                draw.rectangle((x, y, x + TILE - 1, y + TILE - 1), outline=_QUERY, width=2)
                label = ["query (image)"]
        if len(label) > LABEL_LINES:  # a long caption: cut, and say so
            label = [*label[: LABEL_LINES - 1], label[LABEL_LINES - 1] + " …"]
        for j, text in enumerate(label):
            draw.text((x, y + TILE + 4 + j * line), text, fill=_QUERY if is_query else _INK, font=font)
    return sheet


def write_contact_sheet(path: str | Path, retriever, hits, **options) -> Path:
    """Write `contact_sheet(retriever, hits, **options)` as a PNG, atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet = contact_sheet(retriever, hits, **options)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path
