"""Shared set-up of the tutorials: fast mode, the output folder, figure saving (never a window).

Every tutorial starts with `from _common import FAST, out_dir, plt, save_figure` (pyplot comes from here so
that the Agg backend is chosen before it loads), which works when the script runs
from any folder (`python tutorials/01_relation_matrices.py`) and in a notebook opened inside `tutorials/`.

- `REBALANCE_FAST=1` turns on fast mode: smaller data, fewer steps, the same code path (what CI runs).
- `REBALANCE_TUTORIAL_OUT=DIR` writes the figures of tutorial `NAME` to `DIR/NAME/` instead of
  `tutorials/out/NAME/` (ignored by git).
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: a tutorial never opens a window, on a desktop, a server or in CI

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

__all__ = ["FAST", "out_dir", "save_figure", "banner", "plt"]

# Fast mode: any value but "", "0", "false", "no" turns it on.
FAST = os.environ.get("REBALANCE_FAST", "").strip().lower() not in ("", "0", "false", "no")


def out_dir(name: str) -> Path:
    """The folder for the figures of tutorial `name` (created): $REBALANCE_TUTORIAL_OUT/name, else
    tutorials/out/name."""
    base = os.environ.get("REBALANCE_TUTORIAL_OUT")
    folder = (Path(base) if base else Path(__file__).resolve().parent / "out") / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_figure(fig, folder: Path, filename: str) -> Path:
    """Write `fig` to folder/filename, close it, and say where it went."""
    path = Path(folder) / filename
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}")
    return path


def banner(title: str) -> None:
    """A visible heading in the printed output, one per cell."""
    print(f"\n=== {title} ===")
