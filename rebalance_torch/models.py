"""The student: an image tower, a text tower, projections, a fusion encoder and an ITM head (docs/design.md §2).

A small, CPU-sized stand-in for the official X-VLM student (Swin-B image encoder, BERT-base text encoder whose
upper six layers cross-attend to the image). The pieces keep the official roles and names:

- `image_encoder`: images float32 (B, 3, H, W) in [0, 1] -> tokens `H_v` (B, 1+P, W_v); token 0 is the average
  of the patch tokens, prepended as the official Swin does, and `h_v = H_v[:, 0]`. Per-channel normalisation
  happens inside, so an exported graph takes [0, 1] pixels.
- `text_encoder`: ids int64 (B, L) with `[CLS]` at 0 and mask int64 (B, L) -> tokens `H_t` (B, L, W_t);
  `h_t = H_t[:, 0]`.
- `vision_proj`, `text_proj`: Linear to the retrieval space (D); `v = n(W_v h_v)`, `t = n(W_t h_t)`.
- `fusion`: text tokens self-attend (respecting the mask) and cross-attend to the image tokens; `z = fused[:, 0]`.
- `itm_head`: Linear - LayerNorm - GELU - Linear(2), as the official `build_mlp`.
- `temp`: the learnable ITC temperature τ, initialised to 0.07 (clamping, if any, is the trainer's option).

`ImageEmbedder`, `TextEmbedder` and `PairScorer` wrap a student for ONNX export: tensors in, tensors out, no
Python control flow on tensor values, dynamic batch and text length.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from rebalance_ref.limits import MAX_IMAGE_SIZE, MAX_TOKENS, MAX_VOCAB_SIZE
from rebalance_torch.moe import install_experts, moe_options

# CLIP's per-channel statistics, the official code's normalisation; a user may set their data's own.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Ceilings of a student's widths and depths (image side, vocabulary and tokens: rebalance_ref.limits). BERT-large
# is 1024 wide and 24 deep; a CPU-first student is far below both.
MAX_WIDTH = 4096
MAX_DEPTH = 48
# Initialisations of Linear weights (`ModelConfig.init`).
INITS = ("trunc_normal", "fan_in")
# Normalisation inside the conv stem (`ModelConfig.stem_norm`).
STEM_NORMS = ("none", "group")

# Added to attention scores of padding keys: exp(-1e4) is exactly 0 in float32 and representable in float16.
MASK_BIAS = -1.0e4


@dataclass
class ModelConfig:
    """Sizes of a student. JSON round trip: `ModelConfig.from_dict(dataclasses.asdict(cfg)) == cfg`."""

    image_size: int = 32          # input images are (3, image_size, image_size)
    patch_size: int = 8           # the conv stem's total stride (a power of 2): P = (image_size / patch_size)^2
    vocab_size: int = 512         # token ids in [0, vocab_size); the trainer sets it from the tokenizer
    max_len: int = 32             # longest token sequence (learned positions), [CLS] included
    vision_width: int = 64
    vision_depth: int = 2
    text_width: int = 64
    text_depth: int = 2
    fusion_depth: int = 1         # fusion layers (self-attention + cross-attention + MLP), width = text_width
    heads: int = 2                # attention heads in every layer
    mlp_ratio: int = 2            # hidden width of each transformer MLP = mlp_ratio * width
    embed_dim: int = 128          # D, the retrieval space (256 in the paper)
    dropout: float = 0.0
    temp_init: float = 0.07       # τ at initialisation
    stem_width: int = 0           # > 0: the conv stem starts with a stride-1 3x3 conv of this width (sees small
                                  # shapes at full resolution); 0: stride-2 convs only
    stem_norm: str = "none"       # "group": GroupNorm(1 group) after each stem conv but the last (conv - GN - GELU)
    init: str = "trunc_normal"    # Linear weights: "trunc_normal" (BERT/ViT, std 0.02) or "fan_in" (std 1/sqrt(fan_in))
    pixel_mean: tuple[float, float, float] = field(default=CLIP_MEAN)
    pixel_std: tuple[float, float, float] = field(default=CLIP_STD)
    moe: dict = field(default_factory=dict)  # LIMoE experts in the towers (rebalance_torch.experts); {} = off

    def __post_init__(self) -> None:
        # JSON turns tuples into lists; keep one canonical form so configs compare equal after a round trip.
        self.pixel_mean = tuple(float(x) for x in self.pixel_mean)
        self.pixel_std = tuple(float(x) for x in self.pixel_std)
        self.validate()
        self.moe = moe_options(self)

    def validate(self) -> None:
        """Raise ValueError naming the first field whose value cannot build a model."""
        for name in ("image_size", "patch_size", "vocab_size", "max_len", "vision_width", "vision_depth",
                     "text_width", "text_depth", "fusion_depth", "heads", "mlp_ratio", "embed_dim", "stem_width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"ModelConfig.{name} must be an int, got {value!r}")
        for name in ("image_size", "patch_size", "vision_width", "text_width", "heads", "mlp_ratio", "embed_dim",
                     "fusion_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.init not in INITS:
            raise ValueError(f"ModelConfig.init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.stem_norm not in STEM_NORMS:
            raise ValueError(f"ModelConfig.stem_norm must be one of {', '.join(STEM_NORMS)}, got {self.stem_norm!r}")
        for name in ("vision_depth", "text_depth", "stem_width"):
            if getattr(self, name) < 0:
                raise ValueError(f"ModelConfig.{name} must be >= 0, got {getattr(self, name)}")
        # ceilings checked before anything is allocated (a config read from a file may ask for terabytes)
        for name, high in (("image_size", MAX_IMAGE_SIZE), ("vocab_size", MAX_VOCAB_SIZE), ("max_len", MAX_TOKENS),
                           ("vision_width", MAX_WIDTH), ("text_width", MAX_WIDTH), ("embed_dim", MAX_WIDTH),
                           ("vision_depth", MAX_DEPTH), ("text_depth", MAX_DEPTH), ("fusion_depth", MAX_DEPTH),
                           ("mlp_ratio", 16), ("heads", MAX_WIDTH)):
            if getattr(self, name) > high:
                raise ValueError(f"ModelConfig.{name} must be at most {high:,}, got {getattr(self, name):,}")
        if self.patch_size < 2 or self.patch_size & (self.patch_size - 1):
            raise ValueError(f"ModelConfig.patch_size must be a power of 2 and >= 2, got {self.patch_size}")
        if self.image_size % self.patch_size:
            raise ValueError(f"ModelConfig.image_size ({self.image_size}) must be divisible by patch_size "
                             f"({self.patch_size})")
        if self.vocab_size < 4:
            raise ValueError(f"ModelConfig.vocab_size must be >= 4 ([PAD], [CLS], [UNK] and a word), "
                             f"got {self.vocab_size}")
        if self.max_len < 2:
            raise ValueError(f"ModelConfig.max_len must be >= 2 ([CLS] and a word), got {self.max_len}")
        for name in ("vision_width", "text_width"):
            if getattr(self, name) % self.heads:
                raise ValueError(f"ModelConfig.{name} ({getattr(self, name)}) must be divisible by heads "
                                 f"({self.heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout}")
        if not (math.isfinite(self.temp_init) and self.temp_init > 0):
            raise ValueError(f"ModelConfig.temp_init must be a finite number > 0, got {self.temp_init}")
        for name in ("pixel_mean", "pixel_std"):
            value = getattr(self, name)
            if len(value) != 3 or not all(math.isfinite(x) for x in value):
                raise ValueError(f"ModelConfig.{name} must be 3 finite numbers (R, G, B), got {value!r}")
        if min(self.pixel_std) <= 0:
            raise ValueError(f"ModelConfig.pixel_std must be > 0 per channel, got {self.pixel_std!r}")
        moe_options(self)

    @property
    def num_patches(self) -> int:
        """P, the number of patch tokens; the image tower yields 1 + P tokens."""
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict (same as `dataclasses.asdict`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """Inverse of `to_dict`; unknown keys raise ValueError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {unknown}; expected a subset of {sorted(known)}")
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides) -> ModelConfig:
        """A named preset (`MODEL_PRESETS`) with some fields overridden, e.g. `preset("tiny", vocab_size=90)`."""
        if name not in MODEL_PRESETS:
            raise ValueError(f"unknown model preset {name!r}; expected one of {sorted(MODEL_PRESETS)}")
        return cls.from_dict({**MODEL_PRESETS[name], **overrides})


# `tiny`: the CPU demo (32x32 scenes, 4x4 patch grid, ~0.24 M parameters). `small`: 64x64 images, 8x8 patch
# grid, ~1.4 M parameters. `tiny` uses fan-in init (chosen on the validation split, docs/models.md); the
# full-resolution stem (`stem_width`, `stem_norm`) is an option that costs 1.6-2.3x per step. The dataclass
# defaults keep the earlier student, so older checkpoints still load.
MODEL_PRESETS: dict[str, dict] = {
    "tiny": dict(patch_size=8, init="fan_in"),
    "small": dict(image_size=64, patch_size=8, max_len=40, vision_width=128, vision_depth=3, text_width=128,
                  text_depth=3, fusion_depth=2, heads=4, embed_dim=256),
}


class Attention(nn.Module):
    """Multi-head attention of queries (B, Lq, W) over keys/values (B, Lk, W_kv), with an additive key bias.

    scores = q kᵀ / sqrt(d_head) + bias, where bias (B, 1, 1, Lk) is 0 for real keys and MASK_BIAS for padding.
    Written out (no fused kernels) so it reads like the formula and exports to any ONNX opset.
    """

    def __init__(self, width: int, heads: int, kv_width: int | None = None, dropout: float = 0.0):
        super().__init__()
        kv_width = width if kv_width is None else kv_width
        self.heads = heads
        self.head_dim = width // heads
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(kv_width, width)
        self.v = nn.Linear(kv_width, width)
        self.out = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        # (B, L, W) -> (B, heads, L, d_head); -1 keeps batch and length dynamic for export.
        return x.reshape(x.shape[0], -1, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self._split(self.q(x)), self._split(self.k(kv)), self._split(self.v(kv))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, heads, Lq, Lk)
        if bias is not None:
            scores = scores + bias
        weights = self.drop(scores.softmax(dim=-1))
        y = (weights @ v).transpose(1, 2)  # (B, Lq, heads, d_head)
        return self.out(y.reshape(y.shape[0], -1, self.heads * self.head_dim))


class MLP(nn.Sequential):
    def __init__(self, width: int, ratio: int, dropout: float):
        super().__init__(nn.Linear(width, ratio * width), nn.GELU(), nn.Linear(ratio * width, width),
                         nn.Dropout(dropout))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + SelfAttn(LN x) [+ CrossAttn(LN x, image)] + MLP(LN x)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, dropout: float, cross_width: int | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, dropout=dropout)
        self.cross = cross_width is not None
        if self.cross:
            self.norm_cross = nn.LayerNorm(width)
            self.cross_attn = Attention(width, heads, kv_width=cross_width, dropout=dropout)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h, bias))
        if self.cross:
            # Every image token is real, so cross-attention needs no mask.
            x = x + self.drop(self.cross_attn(self.norm_cross(x), context))
        return x + self.mlp(self.norm2(x))


def key_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention bias (B, 1, 1, L) from a mask (B, L) of 1 = real token, 0 = padding."""
    return (1.0 - mask.to(dtype))[:, None, None, :] * MASK_BIAS


class ImageEncoder(nn.Module):
    """[0, 1] images (B, 3, H, W) -> tokens (B, 1+P, W_v): average-pooled token, then P patch tokens.

    Normalise per channel; a stem of stride-2 3x3 convolutions (log2 patch_size of them) makes a
    (H/patch) x (W/patch) grid of W_v-wide patch tokens; learned positions; transformer blocks; LayerNorm;
    the mean of the patch tokens is prepended (the official Swin's avgpool token, `h_v`).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std, dtype=torch.float32).view(1, 3, 1, 1))
        n_convs = int(math.log2(cfg.patch_size))
        channels = [3] + [max(cfg.vision_width // 2 ** (n_convs - 1 - i), 16) for i in range(n_convs)]
        channels[-1] = cfg.vision_width
        layers: list[nn.Module] = []

        def act(width: int) -> list[nn.Module]:  # what follows every conv but the last
            # GroupNorm, not BatchNorm: a row's embedding must not depend on the rest of its batch (exact equality
            # of one process and several, export, evaluation in any batch size)
            return ([nn.GroupNorm(1, width)] if cfg.stem_norm == "group" else []) + [nn.GELU()]

        if cfg.stem_width:  # a full-resolution 3x3 conv first (a 3-pixel shape is still a shape at stride 1),
            # then every strided conv at the full width W_v (no 16-channel bottleneck at half resolution)
            layers += [nn.Conv2d(3, cfg.stem_width, kernel_size=3, stride=1, padding=1), *act(cfg.stem_width)]
            channels = [cfg.stem_width] + [cfg.vision_width] * n_convs
        for i in range(n_convs):
            layers.append(nn.Conv2d(channels[i], channels[i + 1], kernel_size=3, stride=2, padding=1))
            if i < n_convs - 1:
                layers += act(channels[i + 1])
        self.stem = nn.Sequential(*layers)
        self.pos = nn.Parameter(torch.zeros(1, cfg.num_patches, cfg.vision_width))
        self.blocks = nn.ModuleList(Block(cfg.vision_width, cfg.heads, cfg.mlp_ratio, cfg.dropout)
                                    for _ in range(cfg.vision_depth))
        self.norm = nn.LayerNorm(cfg.vision_width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.pixel_mean) / self.pixel_std
        x = self.stem(x)  # (B, W_v, H/p, W/p)
        x = x.flatten(2).transpose(1, 2) + self.pos  # (B, P, W_v), row-major patches
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # (B, 1+P, W_v)


class TextEncoder(nn.Module):
    """Token ids (B, L) and mask (B, L) -> tokens (B, L, W_t); token 0 is [CLS] and `h_t` is its output."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.tokens = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.pos = nn.Parameter(torch.zeros(1, cfg.max_len, cfg.text_width))
        self.norm_in = nn.LayerNorm(cfg.text_width)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg.text_width, cfg.heads, cfg.mlp_ratio, cfg.dropout)
                                    for _ in range(cfg.text_depth))
        self.norm = nn.LayerNorm(cfg.text_width)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        x = self.drop(self.norm_in(self.tokens(ids) + self.pos[:, :length]))  # (B, L, W_t)
        bias = key_bias(mask, x.dtype)
        for block in self.blocks:
            x = block(x, bias)
        return self.norm(x)


class FusionEncoder(nn.Module):
    """Text tokens (B, L, W_t) attend to themselves (masked) and to image tokens (B, 1+P, W_v) -> (B, L, W_t)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg.text_width, cfg.heads, cfg.mlp_ratio, cfg.dropout,
                                          cross_width=cfg.vision_width) for _ in range(cfg.fusion_depth))
        self.norm = nn.LayerNorm(cfg.text_width)

    def forward(self, text_tokens: torch.Tensor, mask: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        bias = key_bias(mask, text_tokens.dtype)
        x = text_tokens
        for block in self.blocks:
            x = block(x, bias, image_tokens)
        return self.norm(x)


def itm_head(width: int) -> nn.Sequential:
    """The official `build_mlp(width, 2)`: Linear(W, 2W) - LayerNorm - GELU - Linear(2W, 2)."""
    return nn.Sequential(nn.Linear(width, 2 * width), nn.LayerNorm(2 * width), nn.GELU(), nn.Linear(2 * width, 2))


def _init_weights(module: nn.Module, init: str = "trunc_normal") -> None:
    # BERT/ViT-style: truncated normal(0.02) for linear and embedding weights, zero biases, unit LayerNorms.
    # "fan_in": Linear weights normal with std 1/sqrt(fan_in) instead (LeCun), so each layer keeps the scale of
    # its input at any width (0.02 is 1/sqrt(2500): 3.6x too small at width 64 and the fused [CLS] then barely
    # depends on the image); embeddings keep 0.02 (a LayerNorm follows them).
    if isinstance(module, nn.Linear) and init == "fan_in":
        nn.init.normal_(module.weight, std=module.in_features ** -0.5)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.trunc_normal_(module.weight, std=0.02, a=-0.04, b=0.04)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        nn.init.zeros_(module.bias)


def _exporting() -> bool:
    """True while torch.jit tracing, ONNX export or torch.compile/export is capturing a graph."""
    compiling = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or bool(compiling and compiling())


class Student(nn.Module):
    """The X-VLM-style student of docs/design.md §2, built deterministically from `seed`.

    The trainer composes the methods: `encode_image`/`encode_text` give tokens and pooled vectors,
    `embed_image`/`embed_text` the L2-normalised retrieval embeddings v, t, `fuse` the fused tokens whose
    [CLS] is z, and `itm_logits` the ITM head on z.
    """

    def __init__(self, config: ModelConfig, seed: int = 0):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise ValueError(f"config must be a ModelConfig, got {type(config).__name__}")
        config.validate()
        self.config = config
        self.seed = int(seed)
        # The global RNG is left as it was: initialisation depends on `seed` alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.image_encoder = ImageEncoder(config)
            self.text_encoder = TextEncoder(config)
            self.vision_proj = nn.Linear(config.vision_width, config.embed_dim)
            self.text_proj = nn.Linear(config.text_width, config.embed_dim)
            self.fusion = FusionEncoder(config)
            self.itm_head = itm_head(config.text_width)
            self.apply(functools.partial(_init_weights, init=config.init))
            nn.init.trunc_normal_(self.image_encoder.pos, std=0.02, a=-0.04, b=0.04)
            nn.init.trunc_normal_(self.text_encoder.pos, std=0.02, a=-0.04, b=0.04)
            install_experts(self)  # the MoE option swaps the MLP of chosen tower blocks (last: keeps the rest)
        self.temp = nn.Parameter(torch.tensor(float(config.temp_init)))

    # --- input checks: eager calls only; while exporting they are skipped so the graph holds no branches ---
    def _check_images(self, images: torch.Tensor) -> None:
        if _exporting():
            return
        size = self.config.image_size
        if not torch.is_tensor(images) or images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"images must be a float tensor (B, 3, {size}, {size}) in [0, 1], got {shape}")
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point in [0, 1] (see rebalance_ref.images."
                             f"to_model_input), got dtype {images.dtype}")

    def _check_text(self, ids: torch.Tensor, mask: torch.Tensor) -> None:
        if _exporting():
            return
        if not torch.is_tensor(ids) or ids.dim() != 2:
            raise ValueError(f"ids must be an int64 tensor (B, L), got "
                             f"{tuple(ids.shape) if torch.is_tensor(ids) else type(ids).__name__}")
        if not torch.is_tensor(mask) or tuple(mask.shape) != tuple(ids.shape):
            raise ValueError(f"mask must be a tensor shaped like ids {tuple(ids.shape)}, got "
                             f"{tuple(mask.shape) if torch.is_tensor(mask) else type(mask).__name__}")
        if ids.is_floating_point():
            raise ValueError(f"ids must be integer token ids, got dtype {ids.dtype}")
        if ids.shape[1] > self.config.max_len:
            raise ValueError(f"ids has length {ids.shape[1]} > max_len {self.config.max_len} of this model")

    # --- towers ---
    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) in [0, 1] -> (tokens H_v (B, 1+P, W_v), pooled h_v (B, W_v))."""
        self._check_images(images)
        tokens = self.image_encoder(images)
        return tokens, tokens[:, 0]

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids, mask (B, L) -> (tokens H_t (B, L, W_t), pooled h_t = H_t[:, 0] (B, W_t))."""
        self._check_text(ids, mask)
        tokens = self.text_encoder(ids, mask)
        return tokens, tokens[:, 0]

    # --- the retrieval space ---
    def project_image(self, pooled: torch.Tensor) -> torch.Tensor:
        """v = n(W_v h_v): (B, W_v) -> (B, D), unit rows."""
        return F.normalize(self.vision_proj(pooled), dim=-1)

    def project_text(self, pooled: torch.Tensor) -> torch.Tensor:
        """t = n(W_t h_t): (B, W_t) -> (B, D), unit rows."""
        return F.normalize(self.text_proj(pooled), dim=-1)

    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> v (B, D), L2-normalised."""
        return self.project_image(self.encode_image(images)[1])

    def embed_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask (B, L) -> t (B, D), L2-normalised."""
        return self.project_text(self.encode_text(ids, mask)[1])

    # --- fusion and matching ---
    def fuse(self, text_tokens: torch.Tensor, mask: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """Text tokens H_t (B, L, W_t) + mask (B, L) + image tokens H_v (B, 1+P, W_v) -> fused (B, L, W_t).

        Row i of the text is fused with row i of the image; z = fused[:, 0].
        """
        if not _exporting() and (text_tokens.dim() != 3 or image_tokens.dim() != 3
                                 or text_tokens.shape[0] != image_tokens.shape[0]):
            raise ValueError(f"fuse expects text_tokens (B, L, W_t) and image_tokens (B, 1+P, W_v) with the same "
                             f"B, got {tuple(text_tokens.shape)} and {tuple(image_tokens.shape)}")
        return self.fusion(text_tokens, mask, image_tokens)

    def itm_logits(self, text_tokens: torch.Tensor, mask: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """ITM logits (B, 2) of pairs (text row i, image row i); column 1 is "matched"."""
        return self.itm_head(self.fuse(text_tokens, mask, image_tokens)[:, 0])

    def forward(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything for a batch of positive pairs: v, t (B, D), z (B, W_t), itm (B, 2), and the tokens."""
        image_tokens, h_v = self.encode_image(images)
        text_tokens, h_t = self.encode_text(ids, mask)
        fused = self.fuse(text_tokens, mask, image_tokens)
        return {"v": self.project_image(h_v), "t": self.project_text(h_t), "z": fused[:, 0],
                "itm": self.itm_head(fused[:, 0]), "image_tokens": image_tokens, "text_tokens": text_tokens}


class ImageEmbedder(nn.Module):
    """Export wrapper: images float32 (B, 3, H, W) in [0, 1] -> v float32 (B, D), unit rows."""

    def __init__(self, student: Student):
        super().__init__()
        self.student = student

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.student.embed_image(images)


class TextEmbedder(nn.Module):
    """Export wrapper: ids int64 (B, L), mask int64 (B, L) -> t float32 (B, D), unit rows."""

    def __init__(self, student: Student):
        super().__init__()
        self.student = student

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.student.embed_text(ids, mask)


class PairScorer(nn.Module):
    """Export wrapper for re-ranking: (images (B, 3, H, W), ids (B, L), mask (B, L)) -> ITM logits (B, 2).

    Pair i is image row i with text row i; the paper's re-ranking score is logits[:, 1].
    """

    def __init__(self, student: Student):
        super().__init__()
        self.student = student

    def forward(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        image_tokens, _ = self.student.encode_image(images)
        text_tokens, _ = self.student.encode_text(ids, mask)
        return self.student.itm_logits(text_tokens, mask, image_tokens)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of `module` (buffers excluded)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def parameter_report(student: Student) -> dict[str, int]:
    """Parameters per part of a student, and the total."""
    parts = ("image_encoder", "text_encoder", "vision_proj", "text_proj", "fusion", "itm_head")
    report = {name: count_parameters(getattr(student, name)) for name in parts}
    report["temp"] = student.temp.numel()
    report["total"] = count_parameters(student)
    return report
