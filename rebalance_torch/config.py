"""`TrainConfig`: the one config object of a training run (data, model, both stages, objective, runtime).

A run is fully described by its config: `config.json` in the run folder is `TrainConfig.to_json()`, every
checkpoint carries `to_dict()`, and `--resume` refuses a checkpoint whose config differs. Validation happens in
`__post_init__`, so a bad value fails when the config is made, with a `ValueError` naming the field.

Loss weights are by name (docs/design.md §2): `itc, itm, iic, ttc, kd, kdi, kdt`, and the other methods' `gcl`
(docs/gcl.md) and `m2mix` (docs/mixup.md). Stage 1 uses `stage1_weights`
(the official ITC + 2·ITM), stage 2 uses `weights` (the official 1, 2, 1, 2, 2, 1, 1). A compute-matched
baseline is stage 2 with `weights={"itc": 1, "itm": 2}`; any ablation is a choice of weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from rebalance_ref.checks import DISTANCES
from rebalance_ref.files import write_text_atomic
from rebalance_ref.shapes import PRESETS

# The paper's terms, then other methods' (docs/gcl.md, docs/mixup.md, docs/experts.md): "gcl" all-modality
# contrast over the fused embedding, "m2mix" geodesic-mixup hard negatives, the LIMoE auxiliaries.
LOSS_NAMES = ("itc", "itm", "iic", "ttc", "kd", "kdi", "kdt", "gcl", "m2mix", "moe_importance", "moe_load",
              "moe_local", "moe_global")
# The mixture-of-experts auxiliaries (LIMoE, docs/experts.md): they need a student with `model_overrides["moe"]`.
MOE_TERMS = ("moe_importance", "moe_load", "moe_local", "moe_global")
TEACHER_TERMS = ("iic", "ttc", "kd", "kdi", "kdt")   # the terms that read teacher features (stage 2 only)
STRUCTURE_TERMS = ("kd", "kdi", "kdt")               # the structure-distillation terms
OFFICIAL_WEIGHTS = {"itc": 1.0, "itm": 2.0, "iic": 1.0, "ttc": 2.0, "kd": 2.0, "kdi": 1.0, "kdt": 1.0}
STAGE1_WEIGHTS = {"itc": 1.0, "itm": 2.0}
BASELINE_WEIGHTS = {"itc": 1.0, "itm": 2.0}
# Stage 2's objective as the official code has it: its weights, IIC/TTC on the ITC τ, the teacher terms at full
# weight from the first step, KD on the fused z. The `official` recipe is exactly this (and TrainConfig's default).
OFFICIAL_OBJECTIVE = {"weights": OFFICIAL_WEIGHTS, "teacher_tau": "shared", "teacher_warmup": 0.0,
                      "teacher_ramp": 0.0, "teacher_scale": 1.0, "student_relation": "fused"}
# Named recipes (docs/training.md, "Recipes"): stage 2's objective, set on top of any config by `with_recipe`.
# `rebalanced` is ours: the official objective plus what passes the selection rule (docs/training.md, "Recipes") on
# validation in the text-poor remedies ablation of the current student (docs/results.md). Two remedies pass alone:
# a ramp of the teacher weights over 40 % of stage 2 (validation R-mean +1.06 ± 0.40 over the official objective,
# 3 seeds; I2I −0.14, T2T −0.20) and the teacher weights × 0.5 (+0.89 ± 0.35; I2I −0.39, T2T +0.41). Together they
# fail the I2I guard (+0.94 ± 0.92, I2I −0.62), so the recipe keeps the one with the larger gain: the ramp.
RECIPES = {"official": OFFICIAL_OBJECTIVE,
           "rebalanced": {**OFFICIAL_OBJECTIVE, "teacher_ramp": 0.4}}
IMAGE_TEACHERS = ("supervised", "ssl")
# How the student's image tower starts stage 1 (rebalance_torch.pretrain): pre-trained on images alone as one of the
# image teachers is, or from its random initialisation ("none").
IMAGE_PRETRAINS = ("none", *IMAGE_TEACHERS)
TAU2_MODES = ("learnable", "fixed")
LAMBDA_MODES = ("unconstrained", "sigmoid")
STUDENT_RELATIONS = ("fused", "projected")
# Where ITM draws its hard negatives when training on several processes: this process's rows (official) or the
# batch gathered from all processes (see docs/distributed.md).
ITM_NEGATIVES = ("local", "global")
# ITM sampler: a caption identical (same token ids) to one of the image's own is never drawn as its negative
# ("positive", a deviation from the official code) or may be ("negative", official: only the same image is excluded)
ITM_DUPLICATES = ("positive", "negative")
# The temperature of IIC and TTC: the ITC τ (official: both terms pull on τ itself) or a learnable τ of their own,
# initialised from stage 1's τ at the start of stage 2 and clamped to `tau_clamp` like it.
TEACHER_TAUS = ("shared", "own")
DEVICES = ("cpu", "cuda")
AUGMENTS = ("none", "mild")
SELECT_ON = ("r_mean", "last")
# The fields that take one of a few names, and those names (the CLI's choices come from here).
CHOICES = {"preset": tuple(PRESETS), "distance": DISTANCES, "image_teacher": IMAGE_TEACHERS,
           "image_pretrain": IMAGE_PRETRAINS, "tau2": TAU2_MODES,
           "lam": LAMBDA_MODES, "student_relation": STUDENT_RELATIONS, "itm_negatives": ITM_NEGATIVES,
           "itm_duplicates": ITM_DUPLICATES, "device": DEVICES, "select_on": SELECT_ON, "augment": AUGMENTS,
           "teacher_tau": TEACHER_TAUS}


def _check_weights(name: str, weights: dict) -> dict[str, float]:
    if not isinstance(weights, dict):
        raise ValueError(f"{name} must be a dict from loss name to weight, got {type(weights).__name__}")
    out: dict[str, float] = {}
    for key, value in weights.items():
        if key not in LOSS_NAMES:
            raise ValueError(f"{name}: unknown loss name {key!r}; expected some of {', '.join(LOSS_NAMES)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name}[{key!r}] must be a finite number >= 0, got {value!r}")
        out[key] = float(value)
    if not any(out.values()):
        raise ValueError(f"{name} must give at least one loss a positive weight, got {weights!r}")
    return out


def parse_weights(text: str) -> dict[str, float]:
    """`"itc=1,itm=2,kd=0.5"` -> `{"itc": 1.0, "itm": 2.0, "kd": 0.5}`; loss names not given get weight 0."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"weights: expected NAME=VALUE pairs separated by commas, got {part!r}")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise ValueError(f"weights: {key.strip()!r} needs a number, got {value!r}") from None
    return _check_weights("weights", out)


@dataclass
class TrainConfig:
    """Everything a run needs. Defaults are the `rebalance demo` run (text-poor shapes world, tiny student)."""

    # --- data: the synthetic shapes world (preset) or a folder written by `rebalance data make` / Karpathy-style
    preset: str = "text-poor"
    data_dir: str | None = None
    n_train: int = 4000           # 4000, not 1000: +10 validation R-mean at 500 steps (docs/models.md)
    n_val: int = 200
    n_test: int = 500
    image_size: int = 32
    max_len: int = 32
    augment: str = "none"
    # --- teachers: trained on the fly ("supervised" needs synthetic attributes) or user-supplied .npy features
    image_teacher: str = "supervised"
    teacher_epochs: int | None = None
    teacher_dir: str | None = None
    # --- student
    model: str = "tiny"
    model_overrides: dict = field(default_factory=dict)
    # the image tower is pre-trained on images alone before stage 1, as the official Swin-B comes from ImageNet:
    # "supervised" (attribute labels, synthetic data only), "ssl" or "none" (docs/models.md)
    image_pretrain: str = "supervised"
    image_pretrain_epochs: int = 24  # 24 passes over 4000 scenes (1500 steps of 64): chosen on validation
    # --- optimisation (AdamW; linear warm-up for `warmup` of the stage's steps, then linear decay to 0)
    stage1_steps: int = 1000      # stage 1 until validation recall levels off (docs/models.md)
    stage2_steps: int = 250
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.1
    grad_clip: float | None = None
    # --- objective
    stage1_weights: dict = field(default_factory=lambda: dict(STAGE1_WEIGHTS))
    weights: dict = field(default_factory=lambda: dict(OFFICIAL_WEIGHTS))
    distance: str = "mae"
    tau2: str = "learnable"
    tau2_init: float = 0.07
    lam: str = "unconstrained"
    lam_init: float = 0.5
    tau_clamp: list | None = field(default_factory=lambda: [0.01, 0.5])
    student_relation: str = "fused"
    itm_negatives: str = "local"
    itm_duplicates: str = "positive"
    # --- remedies for stage 2's start (docs/training.md, "Remedies"); the defaults are the official code's
    teacher_tau: str = "shared"      # IIC/TTC on the ITC τ (official) or on a τ of their own ("own")
    teacher_warmup: float = 0.0      # fraction of stage 2 in which the teacher terms train only their own
    #                                  parameters (W_sv, W_st, λ, τ2, τ'): the student is detached in those terms
    teacher_ramp: float = 0.0        # fraction of stage 2 (after the warm-up) over which the teacher terms'
    #                                  weights rise linearly (from 1/R of their value at its first step) to all of it
    teacher_scale: float = 1.0       # multiplies the weights of every teacher term (IIC, TTC, KD, KDI, KDT)
    # --- ALBEF momentum distillation, an option of stage 2's ITC (docs/momentum.md): the EMA coefficient m
    # (None = plain ITC), the queue of momentum features (rows), α and its linear warm-up (a fraction of stage 2)
    itc_momentum: float | None = None
    itc_queue: int = 512
    itc_alpha: float = 0.4
    itc_alpha_warmup: float = 0.1
    # LIMoE's thresholded global entropy: zero once each modality's mean routing is as spread as this many experts
    moe_min_experts: float = 2.0
    mix_beta: float = 0.5     # m²-Mix: λ ~ Beta(mix_beta, mix_beta), drawn once per step (docs/mixup.md)
    mix_tau: float = 0.07     # m²-Mix: the fixed temperature of the mixed hard-negative loss
    # --- selection and evaluation
    eval_every: int = 125
    select_on: str = "r_mean"
    k_test: int = 16
    # --- runtime
    seed: int = 0
    device: str = "cpu"
    threads: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.model, str):
            raise ValueError(f"model must be a preset name (a string), got {self.model!r}")
        for name in ("data_dir", "teacher_dir"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value.strip()):
                raise ValueError(f"{name} must be a folder path (a string) or null, got {value!r}")
        for name in ("n_train", "n_val", "n_test", "image_size", "max_len", "batch_size", "eval_every", "k_test",
                     "threads", "image_pretrain_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (relations and ITM negatives need a batch), "
                             f"got {self.batch_size}")
        for name in ("stage1_steps", "stage2_steps", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.stage1_steps + self.stage2_steps == 0:
            raise ValueError("stage1_steps and stage2_steps are both 0: nothing to train")
        if self.teacher_epochs is not None and (not isinstance(self.teacher_epochs, int) or self.teacher_epochs < 1):
            raise ValueError(f"teacher_epochs must be None or an integer >= 1, got {self.teacher_epochs!r}")
        for name, low, high in (("lr", 0.0, 1.0), ("weight_decay", 0.0, 10.0), ("warmup", 0.0, 1.0),
                                ("tau2_init", 0.0, 100.0), ("mix_beta", 0.0, 100.0), ("mix_tau", 0.0, 100.0),
                                ("teacher_warmup", 0.0, 1.0), ("teacher_ramp", 0.0, 1.0),
                                ("teacher_scale", 0.0, 100.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            open_low = name in ("lr", "tau2_init", "mix_beta", "mix_tau", "teacher_scale")
            if not (low <= value <= high) or (open_low and value == 0):
                raise ValueError(f"{name} must lie in {'(' if open_low else '['}{low}, {high}], got {value!r}")
            setattr(self, name, float(value))
        if self.grad_clip is not None and (not isinstance(self.grad_clip, (int, float)) or not self.grad_clip > 0):
            raise ValueError(f"grad_clip must be None or a number > 0, got {self.grad_clip!r}")
        if not isinstance(self.lam_init, (int, float)) or not math.isfinite(self.lam_init):
            raise ValueError(f"lam_init must be a finite number, got {self.lam_init!r}")
        if self.lam == "sigmoid" and not 0 < self.lam_init < 1:
            raise ValueError(f"lam_init must lie in (0, 1) when lam='sigmoid', got {self.lam_init!r}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if self.tau_clamp is not None:
            clamp = list(self.tau_clamp)
            if (len(clamp) != 2 or not all(isinstance(c, (int, float)) for c in clamp)
                    or not 0 < clamp[0] < clamp[1]):
                raise ValueError(f"tau_clamp must be None or [low, high] with 0 < low < high, got {self.tau_clamp!r}")
            self.tau_clamp = [float(c) for c in clamp]
        self.stage1_weights = _check_weights("stage1_weights", self.stage1_weights)
        self.weights = _check_weights("weights", self.weights)
        for key in TEACHER_TERMS:
            if self.stage1_weights.get(key, 0.0):
                raise ValueError(f"stage1_weights[{key!r}]: stage 1 has no teachers' terms; use only itc and itm")
        if not isinstance(self.model_overrides, dict):
            raise ValueError(f"model_overrides must be a dict, got {type(self.model_overrides).__name__}")
        if self.teacher_warmup + self.teacher_ramp > 1:
            raise ValueError(f"teacher_warmup + teacher_ramp must be <= 1 (fractions of stage 2, one after the "
                             f"other), got {self.teacher_warmup} + {self.teacher_ramp}")
        self._check_methods()

    def _check_methods(self) -> None:
        """Momentum distillation's and the mixture of experts' fields."""
        m = self.itc_momentum
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < m < 1):
            raise ValueError(f"itc_momentum must be None or a number in (0, 1) (ALBEF: 0.995), got {m!r}")
        if m is not None and not self.weights.get("itc", 0.0):
            raise ValueError("itc_momentum is an option of ITC: give weights['itc'] a positive weight")
        if isinstance(self.itc_queue, bool) or not isinstance(self.itc_queue, int) or self.itc_queue < 0:
            raise ValueError(f"itc_queue must be an integer >= 0 (rows of the feature queue), got {self.itc_queue!r}")
        for name in ("itc_alpha", "itc_alpha_warmup"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        value = self.moe_min_experts
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1:
            raise ValueError(f"moe_min_experts must be a number >= 1, got {value!r}")
        for weights_name in ("stage1_weights", "weights"):
            used = [k for k in MOE_TERMS if getattr(self, weights_name).get(k, 0.0)]
            if used and not self.model_overrides.get("moe"):
                raise ValueError(f"{weights_name}: {', '.join(used)} need a mixture-of-experts student "
                                 f"(model_overrides['moe'], see docs/experts.md)")

    # --- derived ---------------------------------------------------------------------------------------------
    def weight(self, name: str, stage: int) -> float:
        """The weight of loss `name` in `stage` (1 or 2); names not given weigh 0. In stage 2 a teacher term's
        weight is `weights[name] · teacher_scale` (the ramp, which changes per step, is the trainer's)."""
        if stage == 1:
            return self.stage1_weights.get(name, 0.0)
        return self.weights.get(name, 0.0) * (self.teacher_scale if name in TEACHER_TERMS else 1.0)

    def uses_teachers(self) -> bool:
        """True when stage 2 has any term that reads teacher features."""
        return self.stage2_steps > 0 and any(self.weights.get(k, 0.0) for k in TEACHER_TERMS)

    def with_recipe(self, name: str) -> TrainConfig:
        """A copy whose stage-2 objective is the named recipe's (`RECIPES`); every other field is kept."""
        if name not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(RECIPES)}; got {name!r}")
        return self.replace(**{k: (dict(v) if isinstance(v, dict) else v) for k, v in RECIPES[name].items()})

    def recipe(self) -> str | None:
        """The name of the recipe this config's stage-2 objective equals, or None (a custom objective)."""
        return next((name for name in RECIPES if self.with_recipe(name).to_dict() == self.to_dict()), None)

    def replace(self, **changes) -> TrainConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    # --- JSON round trip -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        if not isinstance(data, dict):
            raise ValueError(f"config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config: unknown field(s) {', '.join(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"config: not valid JSON ({err})") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config: no such file {path}")
        try:
            return cls.from_json(path.read_text())
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    def differences(self, other: TrainConfig, ignore: tuple[str, ...] = ()) -> dict[str, tuple]:
        """Fields whose values differ, as `{name: (self_value, other_value)}`, skipping `ignore`."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {k: (mine[k], theirs[k]) for k in mine if k not in ignore and mine[k] != theirs[k]}


# Fields that may change between a run and its resumption without changing what is computed.
RUNTIME_FIELDS = ("device", "threads")
