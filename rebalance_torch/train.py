"""The two-stage trainer (DESIGN §2), built on `rebalance_torch.losses` only.

Stage 1 trains the student from scratch with `stage1_weights` (ITC + 2·ITM). Stage 2 starts from stage 1's
validation-best checkpoint and trains with `weights` (the full objective by default; ITC + ITM alone is the
compute-matched baseline; any ablation is a choice of weights). New in stage 2, as in the official code: the
trainable teacher projections `W_sv`, `W_st`, the blend weight λ (init 0.5), the relation temperature τ2 (init
0.07), and for `distance="wasserstein"` the official teacher MLPs. τ carries over from stage 1.

One training step on a batch of B caption rows (image index `idx`, teacher features `a`, `b`):

    v, t      = student's unit embeddings                                  (B, D)
    ITC       = itc(v, t, τ, idx)
    ITM       = itm(head(fuse(3B pairs)), labels): B positives, and per text one negative image and per image one
                negative text drawn (no grad) from softmax(sim/τ) + 1e-5 with same-image entries set to 0
    IIC, TTC  = single_contrast(v, W_sv a, τ, idx), single_contrast(t, W_st b, τ, idx)
    KD/KDI/KDT= structure terms of the student relation (fused z, or the projected [v, t]) vs λ·S(b) + (1−λ)·S(a)
    L         = Σ weight[name] · term[name]

AdamW (β = (0.9, 0.98), eps 1e-8, weight decay except biases and LayerNorms, as the official optimiser), learning
rate warmed up linearly over `warmup` of the stage's steps then decayed linearly to 0, τ clamped to
`tau_clamp` after each step when set. Every step reseeds torch's RNG from (seed, stage, step) and each epoch's
batch order is a seeded permutation, so a run resumed from a checkpoint replays exactly what an uninterrupted
run would have done.

Run folder: `config.json`, `tokenizer.json`, `metrics.jsonl` (one JSON line per logged step — every loss term,
λ, τ, τ2, lr — and per validation), `checkpoints/stage{1,2}-{last,best}.pt`, `teacher_check.json`, `eval.json`
(the test split, best checkpoint), `plots/*.png`, `report.md`, `log.txt`. See docs/training.md.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rebalance_ref.dataset import CaptionedImages
from rebalance_ref.tokenizer import Tokenizer
from rebalance_torch import checkpoint as ckpt
from rebalance_torch import evaluate as ev
from rebalance_torch import losses
from rebalance_torch.config import TrainConfig
from rebalance_torch.data import MILD, Augment, Collate, PairDataset
from rebalance_torch.distributed import DistContext
from rebalance_torch.models import ModelConfig, Student

TEACHER_TERMS = ("iic", "ttc", "kd", "kdi", "kdt")
STRUCTURE_TERMS = ("kd", "kdi", "kdt")
# Fields an `init` checkpoint must share with the run it starts: they fix the data, vocabulary and model.
MODEL_FIELDS = ("preset", "data_dir", "n_train", "n_val", "n_test", "image_size", "max_len", "model",
                "model_overrides", "seed")
LOG_EVERY = 10
# Teacher feature files: ours (written by `prepare`) and the official names for user-supplied features.
TEACHER_FILES = {"train_image": ("train_image.npy", "train_image_embed_regu.npy"),
                 "train_text": ("train_text.npy", "train_text_embed_regu.npy"),
                 "val_image": ("val_image.npy",), "val_text": ("val_text.npy",)}


# --- data, tokenizer, teachers ---------------------------------------------------------------------------------

def load_splits(config: TrainConfig) -> dict[str, CaptionedImages]:
    """The run's train/val/test splits: the shapes world from the preset and seed, or a data folder."""
    if config.data_dir is not None:
        from rebalance_ref.karpathy import read_dataset

        splits = read_dataset(config.data_dir, config.image_size)
    else:
        from rebalance_ref.shapes import make_splits

        splits = make_splits(config.preset, config.n_train, config.n_val, config.n_test, seed=config.seed,
                             size=config.image_size)
    missing = [s for s in ("train", "val", "test") if s not in splits]
    if missing:
        raise ValueError(f"data: the run needs train, val and test splits; missing {', '.join(missing)}")
    return splits


@dataclass
class TeacherFeatures:
    """Frozen teacher features: one row per training caption row (`pairs()` order), plus validation features
    (val images / val captions) for the teacher-vs-student check when available."""

    train_image: np.ndarray
    train_text: np.ndarray
    val_image: np.ndarray | None = None
    val_text: np.ndarray | None = None
    report: dict = field(default_factory=dict)


def _find_teacher_file(folder: Path, key: str) -> Path | None:
    for name in TEACHER_FILES[key]:
        if (folder / name).is_file():
            return folder / name
    return None


def load_teacher_dir(folder: str | Path, n_rows: int, n_val_images: int, n_val_rows: int) -> TeacherFeatures:
    """Teacher features from a folder: `train_image.npy`/`train_text.npy` (or the official
    `train_{image,text}_embed_regu.npy`), one row per training caption; optional `val_image.npy`, `val_text.npy`."""
    from rebalance_torch.teachers import load_teacher_features

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"teacher_dir: no such folder {folder}")
    arrays = {}
    for key, rows in (("train_image", n_rows), ("train_text", n_rows), ("val_image", n_val_images),
                      ("val_text", n_val_rows)):
        path = _find_teacher_file(folder, key)
        if path is None:
            if key.startswith("train"):
                raise ValueError(f"teacher_dir {folder}: missing {' or '.join(TEACHER_FILES[key])}")
            arrays[key] = None
            continue
        arrays[key] = np.asarray(load_teacher_features(path, rows), dtype=np.float32)
    report = {}
    if (folder / "report.json").is_file():
        report = json.loads((folder / "report.json").read_text())
    return TeacherFeatures(**arrays, report=report)


def train_teacher_features(config: TrainConfig, splits: dict[str, CaptionedImages], cache: Path | None = None,
                           log: Callable[[str], None] | None = None) -> TeacherFeatures:
    """Train both teachers on the training split (`rebalance_torch.teachers.train_teachers`), collect their
    frozen features for the training rows and the validation split, and save everything to `cache` if given."""
    from rebalance_torch.teachers import train_teachers

    result = train_teachers(splits, kind=config.image_teacher, seed=config.seed, epochs=config.teacher_epochs,
                            device=config.device, log=log)
    if cache is not None:
        result.save(cache)
    features = result.features
    return TeacherFeatures(train_image=np.asarray(features["train_image"], dtype=np.float32),
                           train_text=np.asarray(features["train_text"], dtype=np.float32),
                           val_image=_maybe(features.get("val_image")), val_text=_maybe(features.get("val_text")),
                           report=dict(result.report))


def _maybe(x):
    return None if x is None else np.asarray(x, dtype=np.float32)


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
            tokenizer: Tokenizer | None = None, teacher_cache: str | Path | None = None) -> Prepared:
    """Data, tokenizer (built from the training captions unless given) and, when the objective needs them (or
    `teachers=True`), teacher features: read from `config.teacher_dir`, else from `teacher_cache` if it holds
    them, else trained (and then written to `teacher_cache` when given)."""
    timings = {}
    start = time.perf_counter()
    splits = load_splits(config)
    train = splits["train"]
    _, flat = train.pairs()
    tokenizer = tokenizer or Tokenizer.build(flat, max_len=config.max_len)
    dataset = PairDataset(train, tokenizer)
    timings["data"] = time.perf_counter() - start
    log(f"data: {len(train)} train images / {len(flat)} captions, {len(splits['val'])} val, "
        f"{len(splits['test'])} test; vocabulary {tokenizer.vocab_size} words ({timings['data']:.1f} s)")
    need = config.uses_teachers() if teachers is None else teachers
    feats = None
    if need:
        start = time.perf_counter()
        val_idx, val_flat = splits["val"].pairs()
        if config.teacher_dir is not None:
            feats = load_teacher_dir(config.teacher_dir, len(flat), len(splits["val"]), len(val_flat))
            log(f"teachers: features read from {config.teacher_dir}")
        elif teacher_cache is not None and _find_teacher_file(Path(teacher_cache), "train_image") is not None:
            feats = load_teacher_dir(teacher_cache, len(flat), len(splits["val"]), len(val_flat))
            log(f"teachers: features read from {teacher_cache}")
        else:
            feats = train_teacher_features(config, splits, None if teacher_cache is None else Path(teacher_cache),
                                           log=log)
            log(f"teachers: {config.image_teacher} image teacher and text teacher trained "
                f"({time.perf_counter() - start:.1f} s)")
        timings["teachers"] = time.perf_counter() - start
    # The augmentation draws from torch's global RNG, which every step reseeds (exact resume).
    collate = Collate(MILD if config.augment == "mild" else Augment(), generator=None)
    return Prepared(splits=splits, tokenizer=tokenizer, teachers=feats, dataset=dataset, collate=collate,
                    timings=timings)


def build_student(config: TrainConfig, tokenizer: Tokenizer) -> Student:
    """A fresh student sized by the config's model preset, the tokenizer's vocabulary and the data's images."""
    model_config = ModelConfig.preset(config.model, **{"vocab_size": tokenizer.vocab_size,
                                                      "image_size": config.image_size, "max_len": config.max_len,
                                                      **config.model_overrides})
    return Student(model_config, seed=config.seed)


# --- the stage-2 objective's own parameters --------------------------------------------------------------------

class Objective(nn.Module):
    """Stage-2 parameters that are not the student's: teacher projections W_sv, W_st (IIC/TTC), the blend λ,
    the relation temperature τ2, and for "wasserstein" the official teacher MLPs (feature → 2W → GELU → W)."""

    def __init__(self, config: TrainConfig, embed_dim: int, relation_width: int, image_dim: int, text_dim: int):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed + 1)
            self.image_teacher_proj = nn.Linear(image_dim, embed_dim)
            self.text_teacher_proj = nn.Linear(text_dim, embed_dim)
            self.wasserstein = config.distance == "wasserstein"
            if self.wasserstein:
                self.image_wd_mlp = nn.Sequential(nn.Linear(image_dim, 2 * relation_width), nn.GELU(),
                                                  nn.Linear(2 * relation_width, relation_width))
                self.text_wd_mlp = nn.Sequential(nn.Linear(text_dim, 2 * relation_width), nn.GELU(),
                                                 nn.Linear(2 * relation_width, relation_width))
        self.sigmoid = config.lam == "sigmoid"
        lam0 = math.log(config.lam_init / (1 - config.lam_init)) if self.sigmoid else config.lam_init
        self.lam_raw = nn.Parameter(torch.tensor(float(lam0)))
        if config.tau2 == "learnable":
            self.tau2_value = nn.Parameter(torch.tensor(float(config.tau2_init)))
        else:
            self.register_buffer("tau2_value", torch.tensor(float(config.tau2_init)))

    def lam(self) -> torch.Tensor:
        """λ, the weight of the text teacher's relations in the blend (sigmoid-bounded or unconstrained)."""
        return torch.sigmoid(self.lam_raw) if self.sigmoid else self.lam_raw

    def tau2(self) -> torch.Tensor:
        return self.tau2_value


# --- one step ---------------------------------------------------------------------------------------------------

def itm_positive_pairs(idx: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
    """(B, B) bool: rows i, j that the ITM sampler must not pair as a negative — the same image, and (`ids` (B, L)
    given) the same caption token ids: a caption written for image j that is word for word a caption of image i
    describes image i too (37 % of text-poor caption rows share their text with another image's caption)."""
    same = idx[:, None] == idx[None, :]
    if ids is not None:
        same = same | (ids[:, None, :] == ids[None, :, :]).all(dim=-1)
    return same


def sample_itm_negatives(v: torch.Tensor, t: torch.Tensor, idx: torch.Tensor, tau: torch.Tensor,
                         generator: torch.Generator | None = None, same: torch.Tensor | None = None):
    """Hard negatives (no grad): for each text j an image drawn from softmax_k(t_j·v_k/τ) + 1e-5, for each image i
    a text drawn from softmax_k(v_i·t_k/τ) + 1e-5, entries of the same image set to 0 (or, given, the entries of the
    (B, B) bool `same`, e.g. `itm_positive_pairs`). Returns (negative image row per text (B,), negative text row
    per image (B,)). A row with no other image (a batch of one image) falls back to uniform over the batch. Draws
    from `generator`, or torch's global RNG when None."""
    with torch.no_grad():
        sim = v @ t.T / tau                                  # (B, B) image i vs text j
        same = idx[:, None] == idx[None, :] if same is None else same  # (B, B)
        w_i2t = F.softmax(sim.float(), dim=1) + 1e-5
        w_t2i = F.softmax(sim.T.float(), dim=1) + 1e-5
        w_i2t = w_i2t.masked_fill(same, 0.0)
        w_t2i = w_t2i.masked_fill(same, 0.0)
        for w in (w_i2t, w_t2i):
            empty = w.sum(1) == 0
            if empty.any():
                w[empty] = 1.0
        neg_image = torch.multinomial(w_t2i, 1, generator=generator).squeeze(1)
        neg_text = torch.multinomial(w_i2t, 1, generator=generator).squeeze(1)
    return neg_image, neg_text


def _same(x, *_):
    return x


def compute_losses(student: Student, objective: Objective | None, config: TrainConfig, stage: int,
                   images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, idx: torch.Tensor,
                   image_feats: torch.Tensor | None = None, text_feats: torch.Tensor | None = None,
                   dist_ctx: DistContext | None = None, itm_generator: torch.Generator | None = None):
    """The weighted objective of `stage` on one batch: `(total, terms)`, terms a dict of detached floats (every
    term with a non-zero weight, plus λ, τ, τ2 in stage 2). Terms with weight 0 are not computed.

    Several processes (`dist_ctx`, see rebalance_torch.distributed; None = one process): the inputs are this
    process's rows of the global batch; ITC, IIC, TTC and the structure terms see the batch gathered from every
    process (differentiably); ITM scores this process's pairs, with negatives from its own rows
    (`config.itm_negatives="local"`, official) or from the gathered batch ("global"); the logged terms are
    averaged over processes. `itm_generator`: the ITM negatives' random stream (torch's global RNG when None)."""
    gather = dist_ctx.gather if dist_ctx is not None else _same
    shard = dist_ctx.shard if dist_ctx is not None else _same
    w = {name: config.weight(name, stage) for name in ("itc", "itm") + TEACHER_TERMS}
    tau = student.temp
    image_tokens, h_v = student.encode_image(images)
    text_tokens, h_t = student.encode_text(ids, mask)
    v, t = student.project_image(h_v), student.project_text(h_t)
    v_all, t_all, idx_all = gather(v), gather(t), gather(idx)   # the global batch: (B, D), (B, D), (B,)
    terms: dict[str, torch.Tensor] = {}
    z = None
    if w["itc"]:
        terms["itc"] = losses.itc(v_all, t_all, tau, idx_all)
    need_z = stage == 2 and config.student_relation == "fused" and any(w[k] for k in STRUCTURE_TERMS)
    if w["itm"] or need_z:
        b = images.shape[0]
        if w["itm"] and config.itm_negatives == "global":
            # negatives drawn over the global batch (the same draws on every process); each keeps its rows' draws
            # and takes the negatives' tokens from the gathered batch (token lengths padded to the longest)
            same = itm_positive_pairs(idx_all, gather(ids, 1) if config.itm_duplicates == "positive" else None)
            neg_image, neg_text = (shard(n) for n in sample_itm_negatives(v_all, t_all, idx_all, tau,
                                                                           itm_generator, same))
            image_pool, text_pool, mask_pool = gather(image_tokens), gather(text_tokens, 1), gather(mask, 1)
            text_tokens, mask = shard(text_pool), shard(mask_pool)
        elif w["itm"]:
            same = itm_positive_pairs(idx, ids if config.itm_duplicates == "positive" else None)
            neg_image, neg_text = sample_itm_negatives(v, t, idx, tau, itm_generator, same)
            image_pool, text_pool, mask_pool = image_tokens, text_tokens, mask
        if w["itm"]:
            text_all = torch.cat([text_tokens, text_tokens, text_pool[neg_text]])
            mask_all = torch.cat([mask, mask, mask_pool[neg_text]])
            image_all = torch.cat([image_tokens, image_pool[neg_image], image_tokens])
        else:
            text_all, mask_all, image_all = text_tokens, mask, image_tokens
        fused_cls = student.fuse(text_all, mask_all, image_all)[:, 0]   # (3B or B, W_t)
        z = fused_cls[:b]                                               # the positive pairs' z
        if w["itm"]:
            labels = torch.cat([torch.ones(b, dtype=torch.int64), torch.zeros(2 * b, dtype=torch.int64)])
            terms["itm"] = losses.itm(student.itm_head(fused_cls), labels.to(images.device))
    if stage == 2 and objective is not None:
        if w["iic"]:
            terms["iic"] = losses.single_contrast(v_all, gather(objective.image_teacher_proj(image_feats)), tau,
                                                  idx_all)
        if w["ttc"]:
            terms["ttc"] = losses.single_contrast(t_all, gather(objective.text_teacher_proj(text_feats)), tau,
                                                  idx_all)
        if any(w[k] for k in STRUCTURE_TERMS):
            student_rel = gather(z) if config.student_relation == "fused" else torch.cat([v_all, t_all], dim=1)
            if config.distance == "wasserstein":
                a, bt = gather(objective.image_wd_mlp(image_feats)), gather(objective.text_wd_mlp(text_feats))
                # official D = 1 − t tᵀ (not detached); clamped at 0 against rounding for identical captions
                row_weights = (1.0 - t_all @ t_all.T).clamp_min(0.0)
            else:
                a, bt, row_weights = gather(image_feats), gather(text_feats), None
            structure = losses.structure_terms(student_rel, a, bt, objective.lam(), objective.tau2(),
                                               distance=config.distance, row_weights=row_weights)
            for k in STRUCTURE_TERMS:
                if w[k]:
                    terms[k] = structure[k]
    total = sum(w[k] * value for k, value in terms.items())
    logged = {k: float(value.detach()) for k, value in terms.items()}
    logged["loss"] = float(total.detach())
    if dist_ctx is not None:
        logged = dist_ctx.mean(logged)  # the global terms agree already; ITM becomes the mean over processes
    logged["tau"] = float(tau.detach())
    if stage == 2 and objective is not None:
        logged["lam"] = float(objective.lam().detach())
        logged["tau2"] = float(objective.tau2().detach())
    return total, logged


# --- schedule, seeding, optimiser -------------------------------------------------------------------------------

def lr_at(step: int, total: int, warmup: float, peak: float) -> float:
    """Linear warm-up over the first `warmup`·total steps, then linear decay to 0 at `total`."""
    warm = max(1, int(round(warmup * total))) if warmup > 0 else 0
    if step < warm:
        return peak * (step + 1) / warm
    return peak * max(0.0, (total - step) / max(1, total - warm))


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


def batch_rows(seed: int, stage: int, step: int, n_rows: int, batch_size: int) -> torch.Tensor:
    """The caption rows of `step`: epoch e = step // (n_rows // B) walks a permutation seeded by (seed, stage, e)."""
    per_epoch = max(1, n_rows // batch_size)
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(_seed(seed, stage, epoch, 7)))
    return order[position * batch_size:(position + 1) * batch_size]


def make_optimizer(modules: list[nn.Module], config: TrainConfig) -> torch.optim.AdamW:
    """AdamW as the official `create_optimizer`: weight decay on everything but biases and LayerNorm weights."""
    decay, no_decay = [], []
    for module in modules:
        for sub in module.modules():
            for name, param in sub.named_parameters(recurse=False):
                if not param.requires_grad:
                    continue
                (no_decay if isinstance(sub, nn.LayerNorm) or name == "bias" else decay).append(param)
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.98),
                             eps=1e-8)


# --- the run folder ---------------------------------------------------------------------------------------------

class RunLog:
    """`metrics.jsonl` and `log.txt` of a run folder; `echo` also goes to the caller's `log`."""

    def __init__(self, run_dir: Path, log: Callable[[str], None]):
        self.run_dir, self._log = run_dir, log
        self.metrics_path = run_dir / "metrics.jsonl"

    def echo(self, message: str) -> None:
        self._log(message)
        with open(self.run_dir / "log.txt", "a") as handle:
            handle.write(message + "\n")

    def write(self, row: dict) -> None:
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(row) + "\n")

    def truncate(self, stage: int, step: int) -> None:
        """Drop rows logged after (stage, step): a resumed run rewrites them."""
        if not self.metrics_path.is_file():
            return
        kept = [line for line in self.metrics_path.read_text().splitlines()
                if line and (json.loads(line)["stage"], json.loads(line)["step"]) <= (stage, step)]
        self.metrics_path.write_text("".join(line + "\n" for line in kept))


class _SilentLog(RunLog):
    """The run log of processes other than 0: they write and say nothing (process 0 logs once for all)."""

    def echo(self, message: str) -> None:
        pass

    def write(self, row: dict) -> None:
        pass

    def truncate(self, stage: int, step: int) -> None:
        pass


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


def _state(config, student, objective, optimizer, stage, step, best, val) -> dict:
    return {"format": ckpt.FORMAT_VERSION, "config": config.to_dict(), "model_config": student.config.to_dict(),
            "stage": stage, "step": step, "student": student.state_dict(),
            "objective": objective.state_dict() if objective is not None else {},
            "objective_dims": list(objective.dims) if objective is not None else [],
            "optimizer": optimizer.state_dict(), "rng": {"torch": torch.get_rng_state()},
            "best": dict(best), "val": dict(val)}


class _Progress:
    """A progress bar with ETA on a terminal (click.progressbar); silent elsewhere."""

    def __init__(self, length: int, label: str, enabled: bool):
        self.bar = None
        if enabled and sys.stderr.isatty() and length > 0:
            import click

            self.bar = click.progressbar(length=length, label=label, show_eta=True, file=sys.stderr)
            self.bar.__enter__()

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


# --- a stage ----------------------------------------------------------------------------------------------------

def teacher_check(student: Student, prepared: Prepared, device: str) -> dict:
    """Single-modal NDCG@10 on the validation split: each teacher vs the stage-1 student (DESIGN §4: a teacher
    helps only where its structure beats the student's)."""
    feats = prepared.teachers
    if feats is None or feats.val_image is None or feats.val_text is None:
        return {}
    rel = prepared.relevance("val")
    emb = ev.encode_split(student, prepared.splits["val"], prepared.tokenizer, device=device, keep_tokens=False)
    teacher = ev.single_modal_ndcg(feats.val_image, feats.val_text, rel, ks=(10,))
    mine = ev.single_modal_ndcg(emb.v, emb.t, rel, ks=(10,))
    return {key: {"teacher": teacher[key], "student": mine[key], "teacher_stronger": teacher[key] > mine[key]}
            for key in teacher}


def train_stage(stage: int, config: TrainConfig, prepared: Prepared, run_dir: Path, runlog: RunLog,
                student: Student, resume_state: dict | None = None, progress: bool = True,
                stop_after: int | None = None, dist_ctx: DistContext | None = None) -> dict:
    """Train one stage in `run_dir`; returns the stage's best validation record. `resume_state` continues a
    checkpointed stage; `stop_after` stops after that many steps of this stage (for tests and time budgets).
    `dist_ctx`: several processes (each trains on its shard of every global batch; process 0 validates and
    writes the checkpoints); None = one process."""
    ctx = dist_ctx or DistContext()
    device = torch.device(config.device)
    total = config.stage1_steps if stage == 1 else config.stage2_steps
    objective = None
    if stage == 2:
        feats = prepared.teachers
        image_dim = feats.train_image.shape[1] if feats is not None else 1
        text_dim = feats.train_text.shape[1] if feats is not None else 1
        relation_width = student.config.text_width if config.student_relation == "fused" else \
            2 * student.config.embed_dim
        objective = Objective(config, student.config.embed_dim, relation_width, image_dim, text_dim)
        objective.dims = (image_dim, text_dim)
        objective.to(device)
    student.to(device)
    optimizer = make_optimizer([student] + ([objective] if objective is not None else []), config)
    # one step's losses; with several processes through DDP, which averages the gradients in backward
    step_losses = ctx.data_parallel([student, objective], functools.partial(
        compute_losses, student, objective, config, stage, dist_ctx=dist_ctx))
    best = {"score": -math.inf, "step": -1}
    start = 0
    if resume_state is not None:
        if objective is not None:
            objective.load_state_dict(resume_state["objective"])
        optimizer.load_state_dict(resume_state["optimizer"])
        start, best = int(resume_state["step"]), dict(resume_state["best"])
        torch.set_rng_state(resume_state["rng"]["torch"])
        runlog.echo(f"stage {stage}: resumed at step {start}/{total}")
    feats = prepared.teachers
    image_feats_all = torch.from_numpy(feats.train_image) if feats is not None else None
    text_feats_all = torch.from_numpy(feats.train_text) if feats is not None else None
    n_rows = len(prepared.dataset)
    end = total if stop_after is None else min(total, start + stop_after)
    bar = _Progress(end - start, f"stage {stage}", progress)
    student.train()
    val: dict = {}
    tic = time.perf_counter()
    for step in range(start, end):
        torch.manual_seed(_seed(config.seed, stage, step, *ctx.seed_parts))
        lr = lr_at(step, total, config.warmup, config.lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        rows = ctx.shard(batch_rows(config.seed, stage, step, n_rows, config.batch_size))  # this process's rows
        images, ids, mask, idx, _ = prepared.collate([prepared.dataset[int(r)] for r in rows])
        a = image_feats_all[rows].to(device) if image_feats_all is not None and stage == 2 else None
        b = text_feats_all[rows].to(device) if text_feats_all is not None and stage == 2 else None
        itm_generator = None
        if config.itm_negatives == "global":  # one stream shared by every process (and any world size)
            itm_generator = torch.Generator(device=device).manual_seed(_seed(config.seed, stage, step, 3))
        loss, terms = step_losses(images.to(device), ids.to(device), mask.to(device), idx.to(device), a, b,
                                  itm_generator=itm_generator)
        if not math.isfinite(terms["loss"]):
            raise FloatingPointError(f"stage {stage} step {step}: the loss is {terms['loss']} ({terms}); lower "
                                     f"the learning rate or clamp τ (tau_clamp)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        if config.tau_clamp is not None:
            with torch.no_grad():
                student.temp.clamp_(*config.tau_clamp)
        bar.update()
        done = step + 1
        if done % LOG_EVERY == 0 or done == total or done == end:
            runlog.write({"stage": stage, "step": done, "lr": lr, **terms})
        if ctx.is_main and (done % config.eval_every == 0 or done == total):
            emb = ev.encode_split(student, prepared.splits["val"], prepared.tokenizer, device=config.device,
                                  keep_tokens=False)
            val = ev.cosine_recall(emb)
            score = val["cos_r_mean"] if config.select_on == "r_mean" else float(done)
            runlog.write({"stage": stage, "step": done, "val": val})
            if score > best["score"]:
                best = {"score": score, "step": done}
                ckpt.save_checkpoint(_state(config, student, objective, optimizer, stage, done, best, val),
                                     ckpt.checkpoint_path(run_dir, stage, "best"))
            ckpt.save_checkpoint(_state(config, student, objective, optimizer, stage, done, best, val),
                                 ckpt.checkpoint_path(run_dir, stage, "last"))
    bar.close()
    ctx.barrier()  # the checkpoints process 0 wrote are on disk before any process reads them
    elapsed = time.perf_counter() - tic
    if end > start:
        runlog.echo(f"stage {stage}: steps {start}->{end} of {total} in {elapsed:.1f} s "
                    f"({1000 * elapsed / (end - start):.1f} ms/step); best val R-mean {best['score']:.2f} "
                    f"at step {best['step']}")
    return {"best": best, "seconds": elapsed, "finished": end == total}


def _load_into(student: Student, path: Path, config: TrainConfig, fields=None) -> dict:
    state = ckpt.load_checkpoint(path)
    if fields is None:
        ckpt.check_same_config(state, config, path)
    else:
        saved = TrainConfig.from_dict(state["config"])
        diff = {k: v for k, v in saved.differences(config).items() if k in fields}
        if diff:
            lines = "; ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ValueError(f"checkpoint {path} cannot start this run: its data/model differ ({lines})")
    ckpt.load_weights(student, state, path)
    return state


# --- a run ------------------------------------------------------------------------------------------------------

def train(config: TrainConfig, run_dir: str | Path, *, prepared: Prepared | None = None, init: str | Path | None
          = None, stages: tuple[int, ...] = (1, 2), resume: bool = False, progress: bool = True,
          log: Callable[[str], None] = print, stop_after: int | None = None, evaluate_test: bool = True,
          dist_ctx: DistContext | None = None) -> dict:
    """Train a run into `run_dir` and return its summary.

    `stages`: which stages to run (a stage with 0 steps is skipped). Stage 2 starts from `init` (a stage-1
    checkpoint, e.g. of a sibling run: the demo's baseline and the ablation's conditions) or else this run's own
    `stage1-best.pt`. `resume=True` continues from the `last` checkpoints present; the config must match the
    checkpoint's (device and threads aside). After training, the best checkpoint is evaluated on the test split
    (`eval.json`), plots and `report.md` are written.

    `dist_ctx` (from `rebalance_torch.distributed.from_environment`, under torchrun): train on several processes;
    each takes its shard of every global batch of `config.batch_size` rows; process 0 alone writes the run
    folder, logs, validates and evaluates (the others return a summary without "test"). Resuming works on any
    number of processes: the data order depends on the global batch and the step only.
    """
    ctx = dist_ctx or DistContext()
    ctx.check_batch(config.batch_size)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    runlog = RunLog(run_dir, log) if ctx.is_main else _SilentLog(run_dir, log)
    torch.manual_seed(config.seed)
    stages = tuple(s for s in stages if (config.stage1_steps if s == 1 else config.stage2_steps) > 0)
    if not stages:
        raise ValueError("stages: nothing to train (the selected stages have 0 steps)")
    if not resume and (run_dir / ckpt.CHECKPOINT_DIR).is_dir() and any(
            ckpt.checkpoint_path(run_dir, s, "last").is_file() for s in stages):
        raise ValueError(f"run folder {run_dir} already holds checkpoints of these stages; use resume=True "
                         f"(--resume) to continue it, or another folder")
    config_file = run_dir / "config.json"
    if resume and config_file.is_file():
        saved = TrainConfig.load(config_file)
        from rebalance_torch.config import RUNTIME_FIELDS

        diff = saved.differences(config, ignore=RUNTIME_FIELDS)
        if diff:
            lines = "; ".join(f"{k}: run {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ValueError(f"--resume: {config_file} differs from this config ({lines})")
    ctx.barrier()  # every process has read the folder before process 0 writes to it
    if ctx.is_main:
        config.save(config_file)
    tokenizer = None
    if init is not None and (Path(init).parent.parent / "tokenizer.json").is_file():
        tokenizer = Tokenizer.load(Path(init).parent.parent / "tokenizer.json")
    elif resume and (run_dir / "tokenizer.json").is_file():
        tokenizer = Tokenizer.load(run_dir / "tokenizer.json")
    if prepared is None:
        # process 0 first: it trains the teachers (if needed) and caches them; the others then read the cache
        for turn in (True, False):
            if ctx.is_main == turn:
                prepared = prepare(config, teachers=config.uses_teachers() and 2 in stages, log=runlog.echo,
                                   tokenizer=tokenizer, teacher_cache=run_dir / "teachers")
            ctx.barrier()
    if ctx.is_main:
        prepared.tokenizer.save(run_dir / "tokenizer.json")
    if 2 in stages and config.uses_teachers() and prepared.teachers is None:
        raise ValueError("stage 2 weights use teacher terms but no teacher features were prepared")
    student = build_student(config, prepared.tokenizer)
    summary: dict = {"run_dir": str(run_dir), "stages": {}, "timings": dict(prepared.timings)}
    for stage in stages:
        last = ckpt.checkpoint_path(run_dir, stage, "last")
        resume_state = None
        if resume and last.is_file():
            resume_state = _load_into(student, last, config)
            if int(resume_state["step"]) >= (config.stage1_steps if stage == 1 else config.stage2_steps):
                runlog.echo(f"stage {stage}: already complete")
                summary["stages"][stage] = {"best": resume_state["best"], "seconds": 0.0, "finished": True}
                continue
            runlog.truncate(stage, int(resume_state["step"]))
        elif stage == 2:
            source = Path(init) if init is not None else ckpt.checkpoint_path(run_dir, 1, "best")
            if not source.is_file():
                raise ValueError(f"stage 2 needs a stage-1 checkpoint: {source} does not exist (train stage 1 "
                                 f"first, or pass init=)")
            _load_into(student, source, config, fields=MODEL_FIELDS)
            runlog.truncate(1, 10 ** 12)
            runlog.echo(f"stage 2: starting from {source}")
            check = teacher_check(student, prepared, config.device) if ctx.is_main else {}
            if check:
                (run_dir / "teacher_check.json").write_text(json.dumps(check, indent=2))
                for key, r in check.items():
                    runlog.echo(f"teacher check ({key}, val): teacher {r['teacher']:.2f} vs stage-1 student "
                                f"{r['student']:.2f} -> teacher {'stronger' if r['teacher_stronger'] else 'WEAKER'}")
        elif stage == 1:
            runlog.truncate(0, 0)
        tic = time.perf_counter()
        result = train_stage(stage, config, prepared, run_dir, runlog, student, resume_state,
                             progress and ctx.is_main, stop_after, dist_ctx=dist_ctx)
        summary["timings"][f"stage{stage}"] = time.perf_counter() - tic
        summary["stages"][stage] = result
        if not result["finished"]:
            return summary
    if evaluate_test and ctx.is_main:
        tic = time.perf_counter()
        best_student, _, _ = ckpt.load_student(run_dir, "best", map_location=config.device)
        results = ev.evaluate_student(best_student, prepared.splits["test"], prepared.tokenizer,
                                      relevance=prepared.relevance("test"), k_test=config.k_test,
                                      device=config.device)
        (run_dir / "eval.json").write_text(json.dumps(results, indent=2))
        summary["test"] = results
        summary["timings"]["eval"] = time.perf_counter() - tic
        write_run_outputs(run_dir, config, prepared, best_student, results)
    return summary


def write_run_outputs(run_dir: Path, config: TrainConfig, prepared: Prepared, student: Student,
                      results: dict) -> None:
    """Plots and `report.md` of a run folder."""
    from rebalance_torch import plots

    rows = read_metrics(run_dir)
    written = plots.plot_traces(rows, run_dir / "plots" / "traces.png")
    learned = [r for r in rows if "lam" in r]
    relations = relation_matrices(student, prepared, config, lam=learned[-1]["lam"] if learned else config.lam_init,
                                  tau2=learned[-1]["tau2"] if learned else config.tau2_init)
    if relations:
        plots.plot_relations(relations, run_dir / "plots" / "relations.png")
    check = json.loads((run_dir / "teacher_check.json").read_text()) if (run_dir / "teacher_check.json").is_file() \
        else {}
    lines = [f"# Run `{run_dir.name}`", "", "## Test split (best validation checkpoint)", "",
             ev.markdown_table({run_dir.name: results}), ""]
    lines += ev.itm_plateau_lines(rows) + ["", "Search probe (precision@5, test split; `rebalance_ref.probe`):", "",
                                           ev.probe_table({run_dir.name: results}), ""]
    lines += ["## Teacher check (validation, NDCG@10)", ""]
    if check:
        lines += ["| relevance / task | teacher | stage-1 student | teacher stronger |", "|---|---:|---:|---|"]
        lines += [f"| {k} | {r['teacher']:.2f} | {r['student']:.2f} | {'yes' if r['teacher_stronger'] else 'NO'} |"
                  for k, r in check.items()]
    else:
        lines.append("No teacher check (no stage 2 with teachers in this run, or no validation teacher features).")
    lines += ["", "## Config", "", "```json", config.to_json(), "```", ""]
    if written:
        lines += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in (run_dir / "plots").glob("*.png")]
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")


def relation_matrices(student: Student, prepared: Prepared, config: TrainConfig, lam: float, tau2: float,
                      n: int = 32) -> dict:
    """Relation matrices (cosine / τ2, as in training) on `n` training images (one caption each): image teacher
    S_I, text teacher S_T, their blend at `lam`, and the student's S_F."""
    from rebalance_torch.relations import cosine_relation, fuse_teachers

    feats = prepared.teachers
    if feats is None:
        return {}
    idx = prepared.dataset.image_idx
    rows = torch.nonzero(torch.cat([torch.tensor([True]), idx[1:] != idx[:-1]])).squeeze(1)[:n]  # first captions
    tau2 = torch.tensor(float(tau2))
    images, ids, mask, _, _ = Collate()([prepared.dataset[int(r)] for r in rows])
    device = config.device
    with torch.no_grad():
        student.eval()
        image_tokens, h_v = student.encode_image(images.to(device))
        text_tokens, h_t = student.encode_text(ids.to(device), mask.to(device))
        if config.student_relation == "fused":
            rel = student.fuse(text_tokens, mask.to(device), image_tokens)[:, 0]
        else:
            rel = torch.cat([student.project_image(h_v), student.project_text(h_t)], dim=1)
        s_i = cosine_relation(torch.from_numpy(feats.train_image[rows.numpy()]), tau2)
        s_t = cosine_relation(torch.from_numpy(feats.train_text[rows.numpy()]), tau2)
        blend = fuse_teachers(s_t, s_i, torch.tensor(float(lam)))
        s_f = cosine_relation(rel.float().cpu(), tau2)
    return {"image teacher S_I": s_i.numpy(), "text teacher S_T": s_t.numpy(),
            f"blend E (λ = {lam:.2f})": blend.numpy(), f"student S_F ({config.student_relation})": s_f.numpy()}


def main(argv: list[str] | None = None) -> None:
    """`python -m rebalance_torch.train ...` is `rebalance train ...`."""
    from rebalance_cli.cmd_train import train_command

    train_command.main(args=argv, prog_name="python -m rebalance_torch.train")


if __name__ == "__main__":  # pragma: no cover
    main()
