"""Hash heads on a frozen student: the modules, their training on paired embeddings, and their files.

`CodeHeads` holds an image head and a text head (`HashHead`, the formula `rebalance_torch.hashing.hash_head`
with its parameters); a shared head is one module used for both modalities. `fit_code_heads` trains them with
`rebalance_torch.hashing.hash_loss` on paired (image, caption) embeddings, alpha growing as sqrt(epoch + 1)
(DJSRH's schedule), and keeps the epoch a caller-supplied score (a validation metric) likes best.
`save_code_heads` / `load_code_heads` write and read them (plain tensors, `torch.load(weights_only=True)`).

docs/codes.md explains the head, the losses and the measured codes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rebalance_ref.files import atomic_path
from rebalance_ref.hashing import HASH_WEIGHTS
from rebalance_torch import input_checks
from rebalance_torch.hashing import code_target, hash_head, hash_loss

HEADS_FORMAT = "rebalance-code-heads"
HEADS_VERSION = 1
SIDES = ("image", "text")
CODES_DIR = "codes"  # beside the run's checkpoints: run_dir/codes/heads-{bits}.pt


class HashHead(nn.Module):
    """h = tanh(alpha (m * z) W^T), m = sigmoid(z W_g^T + b_g): unit embeddings (B, D) -> relaxed codes (B, bits).

    alpha is a buffer (set by the training schedule, saved with the head); the code sign(h) does not depend on it.
    W starts as Gaussian random hyperplanes (before training the codes are random-hyperplane LSH of the
    half-masked embedding), the gate at W_g = 0, b_g = 0 (every channel half open)."""

    def __init__(self, dim: int, bits: int, generator: torch.Generator | None = None):
        super().__init__()
        self.w = nn.Parameter(torch.randn(bits, dim, generator=generator))
        self.w_gate = nn.Parameter(torch.zeros(dim, dim))
        self.b_gate = nn.Parameter(torch.zeros(dim))
        self.register_buffer("alpha", torch.ones(()))

    @property
    def bits(self) -> int:
        return int(self.w.shape[0])

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Relaxed codes h (B, bits) of unit embeddings (B, D) (the argument is named as the ONNX graph's input)."""
        return hash_head(embeddings, self.w, self.w_gate, self.b_gate, self.alpha)

    def mask(self, z: torch.Tensor) -> torch.Tensor:
        """The per-input channel mask m (B, D) in (0, 1) (for inspection)."""
        return torch.sigmoid(z @ self.w_gate.T + self.b_gate)


class CodeHeads(nn.Module):
    """An image head and a text head of the same bits (one module for both when `shared`)."""

    def __init__(self, dim: int, bits: int, shared: bool, seed: int = 0):
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or bits < 8 or bits % 8:
            raise ValueError(f"bits: expected a multiple of 8 (codes are packed 8 to a byte), got {bits!r}")
        generator = torch.Generator().manual_seed(seed)
        self.shared = bool(shared)
        self.image = HashHead(dim, bits, generator)
        self.text = self.image if shared else HashHead(dim, bits, generator)

    @property
    def bits(self) -> int:
        return self.image.bits

    @property
    def dim(self) -> int:
        return int(self.image.w.shape[1])

    def head(self, side: str) -> HashHead:
        if side not in SIDES:
            raise ValueError(f"side: expected one of {SIDES}, got {side!r}")
        return self.image if side == "image" else self.text

    def set_alpha(self, alpha: float) -> None:
        for side in SIDES:
            self.head(side).alpha.fill_(float(alpha))

    @torch.no_grad()
    def relaxed(self, x: np.ndarray, side: str, batch: int = 4096) -> np.ndarray:
        """h of rows x (N, D) float32 through the `side` head -> float32 (N, bits) (eval, no grad)."""
        out = [self.head(side)(torch.as_tensor(np.asarray(x[lo:lo + batch], dtype=np.float32))).numpy()
               for lo in range(0, len(x), batch)]
        return np.concatenate(out) if out else np.zeros((0, self.bits), np.float32)


@dataclass(frozen=True)
class HashSettings:
    """How a pair of heads is trained: `epochs` passes over the pairs in minibatches of `batch`, Adam at `lr`,
    alpha = sqrt(epoch + 1) (DJSRH), the contrast at temperature `tau`, the target's beta, eta, mu
    (`code_target`), the loss weights (missing terms: `rebalance_ref.hashing.HASH_WEIGHTS`), seeded. `gate=False`
    leaves the mask at its start (W_g = 0, b_g = 0: m = 1/2 for every input and channel, i.e. no masking; for the
    ablation that asks what the mask adds)."""

    bits: int = 64
    shared: bool = False
    epochs: int = 20
    batch: int = 256
    lr: float = 3e-3
    tau: float = 0.1
    beta: float = 0.5
    eta: float = 0.4
    mu: float = 1.0
    weights: dict = field(default_factory=dict)
    gate: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("bits", "epochs", "batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"HashSettings.{name}: expected an int >= 1, got {value!r}")
        for name in ("lr", "tau"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"HashSettings.{name}: expected a positive number, got {value!r}")
        unknown = sorted(set(self.weights) - set(HASH_WEIGHTS))
        if unknown:
            raise ValueError(f"HashSettings.weights: expected keys among {tuple(HASH_WEIGHTS)}, got {unknown}")


def alpha_at(epoch: int) -> float:
    """The tanh's sharpness during epoch `epoch` (0-based): sqrt(epoch + 1) (DJSRH)."""
    return math.sqrt(epoch + 1)


def fit_code_heads(v: np.ndarray, t: np.ndarray, ids: np.ndarray, settings: HashSettings = HashSettings(),
                   score: Callable[[CodeHeads], float] | None = None) -> tuple[CodeHeads, dict]:
    """Train image and text heads on paired rows v[i], t[i] (N, D) of image ids `ids` (N,) (a caption and its
    image; several captions of one image share an id and are soft positives of each other in the contrast).

    After each epoch `score(heads)` (higher is better, e.g. validation recall of the codes) is recorded, and the
    heads of the best epoch are returned (the last epoch when no score is given). Returns (heads in eval mode,
    history {"loss": per-epoch mean loss, "score": per-epoch score, "best_epoch", "alpha"})."""
    v = torch.as_tensor(np.asarray(v, dtype=np.float32))
    t = torch.as_tensor(np.asarray(t, dtype=np.float32))
    ids_t = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    if v.shape != t.shape or v.ndim != 2 or len(ids_t) != len(v):
        raise ValueError(f"fit_code_heads: expected paired v, t (N, D) and N ids, got {tuple(v.shape)}, "
                         f"{tuple(t.shape)}, {tuple(ids_t.shape)}")
    heads = CodeHeads(v.shape[1], settings.bits, settings.shared, settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    trained = [p for name, p in heads.named_parameters() if settings.gate or "gate" not in name]
    opt = torch.optim.Adam(trained, lr=settings.lr)
    history = {"loss": [], "score": [], "best_epoch": settings.epochs - 1, "alpha": []}
    best, best_state = -math.inf, None
    n = len(v)
    for epoch in range(settings.epochs):
        heads.train()
        heads.set_alpha(alpha_at(epoch))
        order = torch.randperm(n, generator=gen)
        total, steps = 0.0, 0
        for lo in range(0, n - 1, settings.batch):
            rows = order[lo:lo + settings.batch]
            if len(rows) < 2:
                continue
            vb, tb = v[rows], t[rows]
            with input_checks.skipped(epoch > 0 or lo > 0):
                s = code_target(vb, tb, settings.beta, settings.eta, settings.mu)
                loss = hash_loss(vb, tb, s, heads.image.w, heads.image.w_gate, heads.image.b_gate, heads.text.w,
                                 heads.text.w_gate, heads.text.b_gate, heads.image.alpha, settings.tau,
                                 ids_t[rows], settings.weights)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, steps = total + float(loss.detach()), steps + 1
        heads.eval()
        history["loss"].append(total / max(steps, 1))
        history["alpha"].append(alpha_at(epoch))
        if score is not None:
            value = float(score(heads))
            history["score"].append(value)
            if value > best:
                best, history["best_epoch"] = value, epoch
                best_state = {k: p.detach().clone() for k, p in heads.state_dict().items()}
    if best_state is not None:
        heads.load_state_dict(best_state)
    heads.eval()
    return heads, history


def save_code_heads(heads: CodeHeads, path: str | Path, info: dict | None = None) -> Path:
    """Write the heads (plain tensors and primitives) atomically to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": HEADS_FORMAT, "version": HEADS_VERSION, "bits": heads.bits, "dim": heads.dim,
             "shared": heads.shared, "image": heads.image.state_dict(), "text": heads.text.state_dict(),
             "info": info or {}}
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)
    return path


def load_code_heads(path: str | Path) -> tuple[CodeHeads, dict]:
    """(heads in eval mode, info) from a file written by `save_code_heads`; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"code heads: no such file {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds; all mean "not a file we can read"
        raise ValueError(f"code heads {path}: cannot be read with weights_only=True ({type(err).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != HEADS_FORMAT or state.get("version") != HEADS_VERSION:
        raise ValueError(f"code heads {path}: expected a {HEADS_FORMAT} file of version {HEADS_VERSION}")
    heads = CodeHeads(int(state["dim"]), int(state["bits"]), bool(state["shared"]))
    heads.image.load_state_dict(state["image"])
    if not heads.shared:
        heads.text.load_state_dict(state["text"])
    heads.eval()
    return heads, dict(state.get("info") or {})


def heads_path(run_dir: str | Path, bits: int) -> Path:
    """Where a run keeps its trained heads of `bits` bits: `run_dir/codes/heads-{bits}.pt`."""
    return Path(run_dir) / CODES_DIR / f"heads-{int(bits)}.pt"


def trained_bits(run_dir: str | Path) -> list[int]:
    """The code widths a run has trained heads for, ascending."""
    folder = Path(run_dir) / CODES_DIR
    found = []
    for path in folder.glob("heads-*.pt") if folder.is_dir() else ():
        stem = path.stem.removeprefix("heads-")
        if stem.isdigit():
            found.append(int(stem))
    return sorted(found)
