"""What every stage of a run shares, made once: the splits, the tokenizer, the teacher features, the training
tensors and (lazily) the relevance matrices of val and test; and a fresh student sized for them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rebalance_ref.dataset import CaptionedImages
from rebalance_ref.tokenizer import Tokenizer
from rebalance_torch import evaluate as ev
from rebalance_torch.config import TrainConfig
from rebalance_torch.data import MILD, Augment, Collate, PairDataset, load_splits
from rebalance_torch.models import ModelConfig, Student
from rebalance_torch.teacher_features import TeacherFeatures, find_feature_file, load_teacher_dir
from rebalance_torch.teachers import train_teacher_features


@dataclass
class Prepared:
    """What every stage of a run shares: the splits, the tokenizer, the teacher features, the training tensors
    and (lazily) the relevance matrices of val and test."""

    splits: dict[str, CaptionedImages]
    tokenizer: Tokenizer
    teachers: TeacherFeatures | None
    dataset: PairDataset         # one item per training caption row, pairs() order
    collate: Collate             # pads a batch's tokens, applies the config's augmentation
    timings: dict = field(default_factory=dict)
    _relevance: dict = field(default_factory=dict)

    def relevance(self, split: str) -> ev.Relevance:
        if split not in self._relevance:
            self._relevance[split] = ev.split_relevance(self.splits[split])
        return self._relevance[split]


def prepare(config: TrainConfig, teachers: bool | None = None, log: Callable[[str], None] = print,
            tokenizer: Tokenizer | None = None, teacher_cache: str | Path | None = None,
            stage1: bool = False) -> Prepared:
    """Data, tokenizer (built from the training captions unless given) and, when the objective needs them (or
    `teachers=True`), teacher features: read from `config.teacher_dir`, else from `teacher_cache` if it holds
    them, else trained (and then written to `teacher_cache` when given). `stage1`: the run trains stage 1 (and so
    pre-trains the image tower), which data without attributes must be able to do."""
    timings = {}
    start = time.perf_counter()
    splits = load_splits(config)
    train = splits["train"]
    need_teachers = config.uses_teachers() if teachers is None else teachers
    if train.attributes is None:
        _check_unsupervised(config, need_teachers and config.teacher_dir is None, stage1)
    _, flat = train.pairs()
    tokenizer = tokenizer or Tokenizer.build(flat, max_len=config.max_len)
    dataset = PairDataset(train, tokenizer)
    timings["data"] = time.perf_counter() - start
    log(f"data: {len(train)} train images / {len(flat)} captions, {len(splits['val'])} val, "
        f"{len(splits['test'])} test; vocabulary {tokenizer.vocab_size} words ({timings['data']:.1f} s)")
    feats = None
    if need_teachers:
        start = time.perf_counter()
        feats = _teacher_features(config, splits, len(flat), teacher_cache, log)
        timings["teachers"] = time.perf_counter() - start
    # The augmentation draws from torch's global RNG, which every step reseeds (exact resume).
    collate = Collate(MILD if config.augment == "mild" else Augment(), generator=None)
    return Prepared(splits=splits, tokenizer=tokenizer, teachers=feats, dataset=dataset, collate=collate,
                    timings=timings)


def _check_unsupervised(config: TrainConfig, trains_teachers: bool, stage1: bool) -> None:
    """Data without scene attributes (real image-caption data): name at once every option that would need them."""
    needs = [flag for flag, used in (("--image-teacher ssl", trains_teachers and config.image_teacher == "supervised"),
                                     ("--image-pretrain none", stage1 and config.image_pretrain == "supervised"))
             if used]
    if needs:
        raise ValueError("this data has no scene attributes (real image-caption data), which the supervised image "
                         f"teacher and the supervised pre-training of the image tower need: use {' and '.join(needs)} "
                         "(in a config: image_teacher = 'ssl', image_pretrain = 'none'; image_pretrain 'ssl' also "
                         "runs, and measured worse than 'none' on the shapes world: docs/models.md)")


def _teacher_features(config: TrainConfig, splits: dict[str, CaptionedImages], n_rows: int,
                      teacher_cache: str | Path | None, log: Callable[[str], None]) -> TeacherFeatures:
    """The config's teacher folder, else the run's cache, else teachers trained now (and cached)."""
    start = time.perf_counter()
    n_val_rows = len(splits["val"].pairs()[1])
    folder = config.teacher_dir
    if folder is None and teacher_cache is not None and find_feature_file(teacher_cache, "train_image"):
        folder = teacher_cache
    if folder is not None:
        log(f"teachers: features read from {folder}")
        return load_teacher_dir(folder, n_rows, len(splits["val"]), n_val_rows)
    feats = train_teacher_features(config, splits, None if teacher_cache is None else Path(teacher_cache), log=log)
    log(f"teachers: {config.image_teacher} image teacher and text teacher trained "
        f"({time.perf_counter() - start:.1f} s)")
    return feats


def build_student(config: TrainConfig, tokenizer: Tokenizer) -> Student:
    """A fresh student sized by the config's model preset, the tokenizer's vocabulary and the data's images."""
    model_config = ModelConfig.preset(config.model, **{"vocab_size": tokenizer.vocab_size,
                                                      "image_size": config.image_size, "max_len": config.max_len,
                                                      **config.model_overrides})
    return Student(model_config, seed=config.seed)
