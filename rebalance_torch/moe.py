"""LIMoE's mixture of experts in the student's towers: the option, the routed MLP layer, its auxiliary losses
(the classic importance and load terms here; the routing-entropy terms from `rebalance_torch.experts`) and the
count of expert use per modality.

The option (`ModelConfig.moe`, a dict; empty = off; see docs/experts.md):
    layers    block indices, in each tower, whose MLP becomes a mixture of experts (default [last block])
    experts   E, the number of experts (default 8)
    top_k     k, the experts each token is sent to (default 1)
    capacity  c, the capacity factor: each expert takes at most C = ceil(k S c / E) tokens of a batch of S tokens,
              rounded up to a multiple of 4 (default 1.0)
    shared    True (default): the image and text towers' MoE layers at the same depth are ONE layer (one router,
              one set of experts), so each expert sees tokens of both modalities, as in LIMoE's one shared tower;
              False: each tower has its own. `shared` needs vision_width == text_width.

Routing (training): z = W_g x (no bias), plus noise ε ~ N(0, (1/E)²); p = softmax(z + ε); each token's top-k
experts with combine weight p (not renormalised). Batch-priority routing: tokens are placed in order of their
largest p, all first choices before any second choice, while an expert has room; a token an expert cannot take
is dropped there, and its block output is the residual alone. At evaluation (and in an ONNX graph) there is no
noise and no capacity: every token reaches its top-k experts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rebalance_torch.experts import global_entropy, local_entropy

MOE_DEFAULTS = {"experts": 8, "top_k": 1, "capacity": 1.0, "shared": True}
MOE_KEYS = ("layers", "experts", "top_k", "capacity", "shared")
MAX_EXPERTS = 256


# --- the option -------------------------------------------------------------------------------------------------


def moe_options(cfg) -> dict:
    """`cfg.moe` (a ModelConfig's) checked and completed with the defaults; {} when the option is off. A
    ValueError names the key and what was expected."""
    moe = cfg.moe
    if not isinstance(moe, dict):
        raise ValueError(f"ModelConfig.moe must be a dict (empty = no experts), got {type(moe).__name__}")
    if not moe:
        return {}
    unknown = sorted(set(moe) - set(MOE_KEYS))
    if unknown:
        raise ValueError(f"ModelConfig.moe: unknown key(s) {unknown}; expected some of {list(MOE_KEYS)}")
    depth = min(cfg.vision_depth, cfg.text_depth)
    out = {**MOE_DEFAULTS, "layers": [depth - 1], **moe}
    layers = out["layers"]
    if (not isinstance(layers, (list, tuple)) or not layers
            or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < depth for i in layers)
            or len(set(layers)) != len(layers)):
        raise ValueError(f"ModelConfig.moe['layers'] must be distinct block indices in [0, {depth}) (both towers' "
                         f"depths), got {layers!r}")
    out["layers"] = sorted(layers)
    for key, low, high in (("experts", 2, MAX_EXPERTS), ("top_k", 1, out.get("experts", 2))):
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"ModelConfig.moe[{key!r}] must be an integer in [{low}, {high}], got {value!r}")
    capacity = out["capacity"]
    if isinstance(capacity, bool) or not isinstance(capacity, (int, float)) or not 0 < capacity <= 64:
        raise ValueError(f"ModelConfig.moe['capacity'] must be a number in (0, 64], got {capacity!r}")
    out["capacity"] = float(capacity)
    if not isinstance(out["shared"], bool):
        raise ValueError(f"ModelConfig.moe['shared'] must be true or false, got {out['shared']!r}")
    if out["shared"] and cfg.vision_width != cfg.text_width:
        raise ValueError(f"ModelConfig.moe['shared'] needs vision_width == text_width, got {cfg.vision_width} and "
                         f"{cfg.text_width}; set shared to false")
    return out


def capacity(tokens: int, experts: int, top_k: int, factor: float) -> int:
    """C = ceil(k S c / E) rounded up to a multiple of 4: the tokens one expert takes from a batch of S."""
    return 4 * math.ceil(math.ceil(top_k * tokens * factor / experts) / 4)


class BatchedLinear(nn.Module):
    """E independent linear maps applied at once: x (E, C, I) -> x W_e + b_e (E, C, O)."""

    def __init__(self, experts: int, width_in: int, width_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(experts, width_in, width_out))
        self.bias = nn.Parameter(torch.zeros(experts, width_out))
        nn.init.trunc_normal_(self.weight, std=0.02, a=-0.04, b=0.04)   # the student's linear initialisation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias[:, None], x, self.weight)


class MoE(nn.Module):
    """A router and E expert MLPs (W -> hidden -> W, GELU) in place of a transformer block's MLP.

    In training (with gradients on), each call appends a record to `records`: the modality, the noisy router
    logits (N, E) and the importance and load losses of that call; `auxiliary_terms` turns them into the
    objective's terms and empties the list. `recording` (a flag) also keeps every token's first choice."""

    def __init__(self, width: int, hidden: int, experts: int, top_k: int, capacity_factor: float):
        super().__init__()
        self.experts, self.top_k, self.capacity_factor = experts, top_k, capacity_factor
        self.router = nn.Linear(width, experts, bias=False)
        nn.init.trunc_normal_(self.router.weight, std=0.02, a=-0.04, b=0.04)
        self.fc_in = BatchedLinear(experts, width, hidden)
        self.fc_out = BatchedLinear(experts, hidden, width)
        self.records: list[dict] = []
        self.recording = False

    def _experts(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.gelu(self.fc_in(x)))  # (E, C, W) -> (E, C, W)

    def forward(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        shape = x.shape
        h = x.reshape(-1, shape[-1])  # (N, W), N = every token of the batch
        clean = self.router(h)  # (N, E)
        noise_std = 1.0 / self.experts
        logits = clean + noise_std * torch.randn_like(clean) if self.training else clean
        p = torch.softmax(logits, dim=1)  # (N, E)
        gate, choice = p.topk(self.top_k, dim=1)  # (N, k), largest first
        if self.training:
            out = self._routed(h, gate, choice)
        else:  # no capacity: every expert on every token, each token keeps its top-k outputs
            weights = torch.zeros_like(p).scatter(1, choice, gate)  # (N, E)
            out = torch.einsum("ne,enw->nw", weights, self._experts(h.expand(self.experts, -1, -1)))
        if self.training and torch.is_grad_enabled():
            self.records.append({"modality": modality, "logits": logits,
                                 "importance": _balance(p.sum(dim=0)),
                                 "load": _balance(_load(clean, logits, self.top_k, noise_std).sum(dim=0))})
        if self.recording:
            self.records.append({"modality": modality, "choice": choice[:, 0].detach().reshape(shape[:-1])})
        return out.reshape(shape)

    def _routed(self, h: torch.Tensor, gate: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
        """Capacity and batch-priority routing with static shapes (no read from the device): every (token,
        choice) gets a slot in its expert's buffer of C rows, or the one spare row that nothing reads."""
        n, width = h.shape
        e, k = self.experts, self.top_k
        cap = capacity(n, e, k, self.capacity_factor)
        order = torch.argsort(gate[:, 0], descending=True, stable=True)  # priority: largest gate first
        chosen = choice[order].T.reshape(-1)  # (kN,): every first choice in priority order, then second ...
        onehot = F.one_hot(chosen, e)  # (kN, E)
        position = (onehot.cumsum(dim=0) * onehot).sum(dim=1) - 1  # (kN,) place in the chosen expert's queue
        keep = position < cap
        slot = torch.where(keep, chosen * cap + position, torch.full_like(position, e * cap))
        token = order.repeat(k)  # (kN,) the token of each (choice, priority) pair
        buffer = h.new_zeros(e * cap + 1, width).index_add(0, slot, h[token])
        y = self._experts(buffer[:-1].reshape(e, cap, width)).reshape(e * cap, width)
        y = torch.cat([y, h.new_zeros(1, width)])  # the spare row gives 0: a dropped token adds nothing
        weight = gate[order].T.reshape(-1) * keep.to(h.dtype)  # (kN,)
        return h.new_zeros(n, width).index_add(0, token, y[slot] * weight[:, None])


def _balance(x: torch.Tensor) -> torch.Tensor:
    """(std(x) / mean(x))², the squared coefficient of variation of per-expert totals (population std)."""
    return (x.std(unbiased=False) / x.mean()) ** 2


def _load(clean: torch.Tensor, noisy: torch.Tensor, top_k: int, noise_std: float) -> torch.Tensor:
    """P_e(x) = 1 - Φ((thr_x - z_e(x)) / σ): the chance that expert e is among x's top k if its noise were
    drawn again; thr_x = the k-th largest noisy logit of x.  (N, E) -> (N, E)."""
    threshold = noisy.detach().topk(top_k, dim=1).values[:, -1:]  # (N, 1)
    return torch.special.ndtr((clean - threshold) / noise_std)


class TowerExperts(nn.Module):
    """What stands in a tower block's `mlp` slot: the (possibly shared) MoE layer, told which tower calls it."""

    def __init__(self, moe: MoE, modality: str):
        super().__init__()
        self.moe, self.modality = moe, modality

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.moe(x, self.modality)


def install_experts(student: nn.Module) -> None:
    """Swap the MLP of the chosen blocks of both towers for MoE layers (nothing when `student.config.moe` is
    empty). Called at the end of the student's seeded initialisation, so every other weight is the dense
    student's."""
    cfg = student.config
    opts = moe_options(cfg)
    for layer in opts.get("layers", []):
        image = MoE(cfg.vision_width, cfg.mlp_ratio * cfg.vision_width, opts["experts"], opts["top_k"],
                    opts["capacity"])
        text = image if opts["shared"] else MoE(cfg.text_width, cfg.mlp_ratio * cfg.text_width, opts["experts"],
                                                opts["top_k"], opts["capacity"])
        student.image_encoder.blocks[layer].mlp = TowerExperts(image, "image")
        student.text_encoder.blocks[layer].mlp = TowerExperts(text, "text")


def moe_layers(student: nn.Module) -> list[MoE]:
    """The student's distinct MoE layers, in module order."""
    seen: list[MoE] = []
    for module in student.modules():
        if isinstance(module, MoE) and all(module is not m for m in seen):
            seen.append(module)
    return seen


def auxiliary_terms(student: nn.Module, weights: dict, min_experts: float) -> dict[str, torch.Tensor]:
    """The MoE terms with a non-zero weight, each the mean over the records of this forward pass (one per MoE
    layer and modality): "moe_importance", "moe_load" (the classic auxiliaries), "moe_local" (local entropy) and
    "moe_global" (global entropy thresholded at log `min_experts`). Empties every layer's records."""
    records = [r for layer in moe_layers(student) for r in layer.records if "logits" in r]
    for layer in moe_layers(student):
        layer.records.clear()
    if not records:
        return {}
    threshold = math.log(min_experts)
    forms = {"moe_importance": lambda r: r["importance"], "moe_load": lambda r: r["load"],
             "moe_local": lambda r: local_entropy(r["logits"]),
             "moe_global": lambda r: global_entropy(r["logits"], threshold)}
    return {name: torch.stack([form(r) for r in records]).mean() for name, form in forms.items()
            if weights.get(name, 0.0)}


@torch.no_grad()
def routing_counts(student: nn.Module, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> list[dict]:
    """How many tokens of each modality pick each expert first, per MoE layer, at evaluation (padding excluded):
    [{"image": (E,) counts, "text": (E,) counts}, ...] as int64 tensors, one dict per distinct MoE layer (a shared
    layer counts both towers' tokens; an unshared one is listed once per tower with the other modality at 0)."""
    layers = moe_layers(student)
    was_training = student.training
    student.eval()
    for layer in layers:
        layer.records.clear()
        layer.recording = True
    try:
        student.encode_image(images)
        student.encode_text(ids, mask)
    finally:
        for layer in layers:
            layer.recording = False
        student.train(was_training)
    out = []
    for layer in layers:
        counts = {m: torch.zeros(layer.experts, dtype=torch.int64) for m in ("image", "text")}
        for r in layer.records:
            choice = r["choice"]
            if r["modality"] == "text":
                choice = choice[mask.to(torch.bool)]
            counts[r["modality"]] += torch.bincount(choice.reshape(-1).cpu(), minlength=layer.experts)
        layer.records.clear()
        out.append(counts)
    return out
