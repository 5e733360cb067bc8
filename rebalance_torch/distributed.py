"""Training on several processes (one machine or many) with torchrun and PyTorch's DistributedDataParallel.

`from_environment()` reads what torchrun sets (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`)
and returns a `DistContext`: rank, world size, device, `is_main`. At world size 1 (plain `python -m`, `rebalance
train`, or torchrun with one process) no process group is created and every method is the identity, so the
single-process trainer computes exactly what it computed before.

What the trainer does with it (docs/design.md §2, "the gathered batch"; docs/distributed.md):

- every process draws the same global batch of B caption rows and keeps its slice (`shard`): B / W rows each;
- ITC, IIC, TTC and the structure terms are computed over the gathered global batch (`gather`, PyTorch's
  differentiable `torch.distributed.nn.functional.all_gather`, whose backward sums the gradient over processes);
  ITM pairs are this process's rows, their hard negatives drawn from the local batch (official) or the gathered
  one (`TrainConfig.itm_negatives`);
- DistributedDataParallel averages the parameter gradients (`data_parallel`).

Why that is exactly the full-batch gradient: every process computes the same global loss G (plus its own ITM
term); the gather's backward hands process r the gradient of G summed over the W processes, W · ∂G/∂x_r, for its
own rows x_r, and DDP divides the sum over processes by W, giving Σ_r ∂G/∂x_r · ∂x_r/∂θ = ∂G/∂θ. Parameters used
directly by every process (τ, λ, τ2) get ∂G/∂θ on each, and the average keeps it. The official AllGather instead
returns only the local slice of the gradient, which scales the gathered terms' gradient by 1/W.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

BACKENDS = ("auto", "gloo", "nccl")
# Variables torchrun sets for every process; MASTER_ADDR / MASTER_PORT are read by init_process_group itself.
ENV_INT = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
ENV_ADDRESS = ("MASTER_ADDR", "MASTER_PORT")
# How long a collective (e.g. the other processes waiting while process 0 validates) may wait.
DEFAULT_TIMEOUT_S = 1800


@dataclass
class DistContext:
    """Where this process stands in a run: `rank` of `world_size` processes, `local_rank` on its machine, the
    torch `device` it trains on, and the backend of the process group (None at world size 1: no group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str | None = None
    owns_group: bool = False

    @property
    def active(self) -> bool:
        """True when several processes train together (a process group exists)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Process 0: the one that writes checkpoints and logs and evaluates."""
        return self.rank == 0

    @property
    def seed_parts(self) -> tuple[int, ...]:
        """Extra seed parts of this process's random stream: () at world size 1 (the single-process stream is
        unchanged), (rank, world size) otherwise, so that processes draw independent augmentations and local ITM
        negatives."""
        return (self.rank, self.world_size) if self.active else ()

    # --- batch rows ------------------------------------------------------------------------------------------
    def check_batch(self, batch_size: int) -> None:
        """The global batch must split into equal shards (the gather and the ITM mean need equal sizes)."""
        if batch_size % self.world_size:
            raise ValueError(f"batch_size must be a multiple of the number of processes ({self.world_size}) so "
                             f"that every process gets the same number of rows; got {batch_size}")

    def rows(self, n: int) -> slice:
        """This process's slice of a global batch of n rows: rows [r n / W, (r + 1) n / W)."""
        self.check_batch(n)
        size = n // self.world_size
        return slice(self.rank * size, (self.rank + 1) * size)

    def shard(self, x):
        """This process's rows of a global batch (a tensor, array or sequence, rows first); the identity at world
        size 1."""
        return x[self.rows(len(x))] if self.active else x

    # --- collectives -----------------------------------------------------------------------------------------
    def gather(self, x: torch.Tensor, pad_dim: int | None = None) -> torch.Tensor:
        """The global batch of a per-process tensor: every process's rows concatenated in rank order, (B / W, ...)
        -> (B, ...). Differentiable when x requires grad (the gradient is summed over processes). `pad_dim`: a
        dimension whose size may differ between processes (padded token lengths); it is zero-padded at the end to
        the largest. The identity at world size 1."""
        if not self.active:
            return x
        if pad_dim is not None:
            longest = torch.tensor([x.shape[pad_dim]], device=x.device)
            dist.all_reduce(longest, op=dist.ReduceOp.MAX)
            missing = int(longest) - x.shape[pad_dim]
            if missing:
                pad = [0, 0] * (x.dim() - 1 - pad_dim % x.dim()) + [0, missing]
                x = F.pad(x, pad)
        x = x.contiguous()
        if x.requires_grad:
            from torch.distributed.nn.functional import all_gather

            with warnings.catch_warnings():
                # Deprecated in favour of a private module (_functional_collectives); the public one still works.
                warnings.filterwarnings("ignore", message=".*all_gather is deprecated.*", category=FutureWarning)
                parts = all_gather(x)
        else:
            parts = [torch.empty_like(x) for _ in range(self.world_size)]
            dist.all_gather(parts, x)
        return torch.cat(parts, dim=0)

    def mean(self, values: Mapping[str, float]) -> dict[str, float]:
        """Each value averaged over the processes (float64), e.g. the logged loss terms; identity at world size 1."""
        if not self.active:
            return dict(values)
        keys = list(values)
        vector = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(vector)
        return {k: float(x) / self.world_size for k, x in zip(keys, vector.tolist(), strict=True)}

    def barrier(self) -> None:
        """Wait for every process (no-op at world size 1)."""
        if self.active:
            dist.barrier()

    # --- the model -------------------------------------------------------------------------------------------
    def data_parallel(self, modules: list[nn.Module | None], step: Callable) -> Callable:
        """`step` (a function computing the loss with `modules`' parameters) run through DistributedDataParallel
        over `modules`, so that their gradients are averaged over processes in backward. At world size 1 `step`
        itself. The graph is static (every step of a stage uses the same terms, hence the same parameters), so DDP
        learns the used parameters at the first step instead of searching the graph every step; parameters a
        step does not use (weights set to 0) keep no gradient, as in one process."""
        if not self.active:
            return step
        joint = _Joint([m for m in modules if m is not None], step)
        device_ids = [self.local_rank] if self.device.startswith("cuda") else None
        return nn.parallel.DistributedDataParallel(joint, device_ids=device_ids, static_graph=True)

    def close(self) -> None:
        """Destroy the process group this context created (no-op otherwise)."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


class _Joint(nn.Module):
    """Several modules as one for DDP, whose forward is a given step function (the trainer's compute_losses)."""

    def __init__(self, modules: list[nn.Module], step: Callable):
        super().__init__()
        self.parts = nn.ModuleList(modules)
        self.step = step

    def forward(self, *args, **kwargs):
        return self.step(*args, **kwargs)


def _env_int(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    text = environ.get(name)
    if text is None:
        if default is None:
            raise ValueError(f"{name}: not set; launch with torchrun (it sets {', '.join(ENV_INT + ENV_ADDRESS)})")
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {text!r}") from None
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def choose_backend(backend: str, device: str) -> str:
    """"auto" -> nccl on CUDA, gloo on CPU; an explicit choice is checked against the device."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda; got {device!r}")
    if backend == "auto":
        return "nccl" if device == "cuda" else "gloo"
    if backend == "nccl" and device != "cuda":
        raise ValueError("backend nccl needs device cuda (use gloo, or auto, to train on CPUs)")
    return backend


def from_environment(device: str = "cpu", backend: str = "auto", environ: Mapping[str, str] | None = None,
                     timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
    """The context of this process from torchrun's environment variables, creating the process group (env://)
    when WORLD_SIZE > 1. Without WORLD_SIZE, or with WORLD_SIZE = 1: a single-process context, no group.

    device: "cpu" or "cuda" (each process then uses GPU LOCAL_RANK, made torch's current device, so that "cuda"
    everywhere in the trainer means this process's GPU). backend: "auto", "gloo" or "nccl"."""
    environ = os.environ if environ is None else environ
    nccl_or_gloo = choose_backend(backend, device)
    world_size = _env_int(environ, "WORLD_SIZE", default=1)
    if world_size < 1:
        raise ValueError(f"WORLD_SIZE must be >= 1, got {world_size}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for but torch sees no GPU")
    if world_size == 1:
        return DistContext(device=device)
    rank, local_rank = _env_int(environ, "RANK"), _env_int(environ, "LOCAL_RANK")
    if rank >= world_size:
        raise ValueError(f"RANK must be < WORLD_SIZE ({world_size}), got {rank}")
    for name in ENV_ADDRESS:
        if not environ.get(name):
            raise ValueError(f"{name}: not set; launch with torchrun (it sets {', '.join(ENV_INT + ENV_ADDRESS)})")
    if device == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                             f"start at most that many processes per node (--nproc_per_node)")
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    owns = False
    if not dist.is_initialized():
        if environ is not os.environ:  # init_process_group reads the address from os.environ
            os.environ.update({k: str(environ[k]) for k in ENV_ADDRESS})
        dist.init_process_group(nccl_or_gloo, init_method="env://", rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s))
        owns = True
    elif dist.get_world_size() != world_size or dist.get_rank() != rank:
        raise ValueError(f"a process group already exists with rank {dist.get_rank()} of {dist.get_world_size()}, "
                         f"but the environment says rank {rank} of {world_size}")
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device,
                       backend=dist.get_backend(), owns_group=owns)
