"""Checkpoints: plain tensors and primitives, written atomically, read with `torch.load(weights_only=True)`.

A checkpoint is a dict holding `format`, the run's `config` (`TrainConfig.to_dict()`), the student's
`model_config`, `stage`, `step`, the `student` and `objective` state dicts, the `optimizer` state, RNG states
and the validation record. Nothing in it needs pickle's arbitrary-code path, so loading never runs code.

Writing goes to a temporary file in the same folder, is flushed to disk, and then `os.replace`s the target:
a run killed mid-save leaves the previous checkpoint intact (and at worst a stray `.tmp` file).

Run-folder layout (see docs/training.md): `checkpoints/stage{1,2}-{last,best}.pt`, `config.json`,
`tokenizer.json`. `load_student(run_dir, which)` is the one way other packages (the export) get a student.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rebalance_ref.files import atomic_path
from rebalance_ref.tokenizer import Tokenizer
from rebalance_torch.config import RUNTIME_FIELDS, TrainConfig
from rebalance_torch.models import ModelConfig, Student

FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
# The types of the fields a reader may require (`require_fields`): a checkpoint missing one is refused by name.
FIELD_TYPES = {"config": dict, "model_config": dict, "student": dict, "objective": dict, "optimizer": dict,
               "stage": int, "step": int, "best": dict, "rng": dict}
WHICH = ("best", "last", "stage1-best", "stage1-last", "stage2-best", "stage2-last")


def checkpoint_path(run_dir: str | Path, stage: int, kind: str) -> Path:
    """`run_dir/checkpoints/stage{stage}-{kind}.pt` for kind "last" or "best"."""
    if stage not in (1, 2) or kind not in ("last", "best"):
        raise ValueError(f"checkpoint: stage must be 1 or 2 and kind 'last' or 'best', got {stage!r}, {kind!r}")
    return Path(run_dir) / CHECKPOINT_DIR / f"stage{stage}-{kind}.pt"


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write `state` to `path` atomically (temporary file in the same folder, fsync, `os.replace`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)
    return path


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> dict:
    """Read a checkpoint with `weights_only=True`; clear errors for a missing, foreign or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint: no such file {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds; all mean "not a checkpoint we can read"
        raise ValueError(f"checkpoint {path}: cannot be read with weights_only=True ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"checkpoint {path}: expected a rebalance checkpoint of format {FORMAT_VERSION}, "
                         f"found format {found!r}")
    return state


def require_fields(state: dict, path: str | Path, *keys: str) -> dict:
    """`state` itself, after checking that it holds `keys` with the types of `FIELD_TYPES` (a ValueError names
    the file and the first missing or mistyped field)."""
    for key in keys:
        kind = FIELD_TYPES[key]
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            found = type(state[key]).__name__ if key in state else "nothing"
            raise ValueError(f"checkpoint {path}: field {key!r} must be a {kind.__name__}, found {found}")
    return state


def training_state(config: TrainConfig, student: Student, objective, optimizer, stage: int, step: int, best: dict,
                   val: dict) -> dict:
    """Everything a checkpoint holds to resume a stage exactly (see the module's docstring)."""
    return {"format": FORMAT_VERSION, "config": config.to_dict(), "model_config": student.config.to_dict(),
            "stage": stage, "step": step, "student": student.state_dict(),
            "objective": objective.state_dict() if objective is not None else {},
            "optimizer": optimizer.state_dict(), "rng": {"torch": torch.get_rng_state()},
            "best": dict(best), "val": dict(val)}


def check_same_config(state: dict, config, path: str | Path, ignore: tuple[str, ...] = ()) -> None:
    """Raise a `ValueError` listing every field where the checkpoint's config differs from `config`."""
    saved = TrainConfig.from_dict(state["config"])
    diff = saved.differences(config, ignore=RUNTIME_FIELDS + tuple(ignore))
    if diff:
        lines = "; ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ValueError(f"checkpoint {path} was written by a run with another config ({lines})")


def resolve(run_dir: str | Path, which: str = "best") -> Path:
    """The checkpoint file `which` names in `run_dir`: "best"/"last" take the latest stage present."""
    run_dir = Path(run_dir)
    if which not in WHICH:
        raise ValueError(f"which must be one of {', '.join(WHICH)}; got {which!r}")
    if not run_dir.is_dir():
        raise ValueError(f"run folder {run_dir} does not exist")
    if which.startswith("stage"):
        candidates = [run_dir / CHECKPOINT_DIR / f"{which}.pt"]
    else:
        candidates = [checkpoint_path(run_dir, stage, which) for stage in (2, 1)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ValueError(f"run folder {run_dir} has no {which!r} checkpoint (looked for "
                     f"{', '.join(str(c.relative_to(run_dir)) for c in candidates)})")


def load_weights(student, state: dict, path: str | Path, what: str = "this run's model") -> None:
    """Load the checkpoint's student weights into `student`; a `ValueError` names the file when they do not fit."""
    try:
        student.load_state_dict(state["student"])
    except RuntimeError as err:
        raise ValueError(f"checkpoint {path}: weights do not fit {what} ({str(err).splitlines()[0]})") from None


def build_student(model_config: dict):
    """A `Student` from a checkpoint's `model_config` dict."""
    return Student(ModelConfig.from_dict(model_config))


def load_student(run_dir: str | Path, which: str = "best", map_location: str = "cpu"):
    """`(student, config, tokenizer)` from a run folder: the student in eval mode on `map_location`, the run's
    `TrainConfig`, and its `Tokenizer`. `which`: "best" (validation-selected, latest stage), "last", or
    "stage1-best" / "stage2-last" etc."""
    path = resolve(run_dir, which)
    state = require_fields(load_checkpoint(path, map_location=map_location), path, "config", "model_config",
                           "student")
    student = build_student(state["model_config"])
    load_weights(student, state, path, "its model config")
    tokenizer_file = Path(run_dir) / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ValueError(f"run folder {run_dir} has no tokenizer.json")
    tokenizer = Tokenizer.load(tokenizer_file)
    if tokenizer.vocab_size != student.config.vocab_size:
        raise ValueError(f"{tokenizer_file}: vocabulary of {tokenizer.vocab_size} words, but the checkpoint's "
                         f"model expects {student.config.vocab_size}")
    student.to(map_location).eval()
    return student, TrainConfig.from_dict(state["config"]), tokenizer
