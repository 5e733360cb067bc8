"""The two frozen single-modality teachers (docs/design.md §4): train them, freeze them, cache their features.

The official code ships teacher features as precomputed arrays (image 1024-d, text 768-d: the sizes of a Swin-B and
a BERT-base) and publishes no teacher training. Here the teachers are small networks trained on one modality each:

- **Image teacher, "supervised"** (default): a small CNN (`ImageTeacher`) trained on images alone to predict the
  scenes' multi-hot attribute labels (`rebalance_ref.shapes.attribute_targets`: shapes, colours, sizes, occupied
  cells and which object sits where) with binary cross-entropy, each label group weighted equally. It stands in
  for an ImageNet-style pretrained backbone: a network that learned visual categories from labels. Those labels
  are *privileged information*: the teacher sees them once, before the student trains; the student never sees
  them, only the teacher's features. Real data has no attributes, so there only "ssl" applies.
- **Image teacher, "ssl"**: the same network trained self-supervised (SimCLR / InfoNCE between two augmented views
  of each image). The augmentations keep what is semantic in the shapes world: Gaussian pixel noise, brightness and
  contrast jitter, shifts of at most 1 pixel; no flips and no crops, which would move positions.
- **Text teacher**: a fastText-style network over words and word pairs (`TextTeacher`), trained on the captions
  alone with InfoNCE where two captions of the same image are a positive pair (other images' captions in the
  batch are negatives).

Features are the pooled penultimate representation (the layer under each training head, 128-d), taken in eval
mode after training. They follow the official format: one row per training caption in
`CaptionedImages.pairs()` order; the image teacher's row r is the feature of row r's image. For val/test, image
features are one row per image and text features one row per caption.

Each teacher's quality is reported on the test split against a trivial baseline (I2I NDCG@10 vs cosine on raw
pixels; T2T NDCG@10 vs cosine on bag-of-words counts), with ROUGE-L relevance and, on synthetic data, attribute
relevance (`rebalance_torch.evaluate.single_modal_ndcg`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rebalance_ref.dataset import CaptionedImages
from rebalance_ref.files import atomic_path, save_npy_atomic, write_json_atomic
from rebalance_ref.images import to_model_input
from rebalance_ref.text import words
from rebalance_ref.tokenizer import Tokenizer
from rebalance_torch.config import IMAGE_TEACHERS, TrainConfig
from rebalance_torch.data import Augment, augment_images, image_batches, text_batches
from rebalance_torch.models import CLIP_MEAN, CLIP_STD, count_parameters
from rebalance_torch.teacher_features import REPORT_FILE, TeacherFeatures

# Epochs that train each teacher at demo size (about a thousand 32x32 scenes) in seconds on one thread.
DEFAULT_EPOCHS = {"supervised": 20, "ssl": 10, "text": 10}

# The teachers' networks: a small CNN and a fastText-style text network, features of TEACHER_WIDTH dims.
TEACHER_WIDTH = 128
IMAGE_BATCH = 64  # images per step
TEXT_BATCH = 128  # images per step, two captions each
LR = 4e-3
WEIGHT_DECAY = 0.01
SSL_TEMPERATURE = 0.2
TEXT_TEMPERATURE = 0.1
PROJECTION_DIM = 64
BIGRAM_BUCKETS = 4096
# SimCLR views: semantics-preserving augmentations of the shapes world (see the module docstring).
SSL_AUGMENT = Augment(noise=0.1, brightness=0.4, shift=1)
SSL_CONTRAST = 0.4  # contrast factor drawn from [1 - c, 1 + c], applied around each image's mean


# --- the networks ----------------------------------------------------------------------------------------------

class ImageTeacher(nn.Module):
    """[0, 1] images (B, 3, H, W) -> features (B, F): a small CNN whose flattened 4x4 map keeps where things are.

    Three stride-2 3x3 convolutions with batch norm (16, 32, 64 channels; per-channel normalisation first, as in
    the student) take an S x S image to an (S/8) x (S/8) map; flatten, Linear to F = TEACHER_WIDTH, GELU: the
    feature. A head
    on top (attribute logits for "supervised", a projection MLP for "ssl") serves training only.
    """

    def __init__(self, image_size: int, out_dim: int, kind: str):
        super().__init__()
        if image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8 for the image teacher, got {image_size}")
        self.kind = kind
        self.register_buffer("pixel_mean", torch.tensor(CLIP_MEAN, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(CLIP_STD, dtype=torch.float32).view(1, 3, 1, 1))
        layers: list[nn.Module] = []
        channels = (3, 16, 32, 64)
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.GELU()]
        self.convs = nn.Sequential(*layers)
        side = image_size // 8
        self.fc = nn.Linear(channels[-1] * side * side, TEACHER_WIDTH)
        if kind == "supervised":
            self.head = nn.Linear(TEACHER_WIDTH, out_dim)
        else:
            self.head = nn.Sequential(nn.Linear(TEACHER_WIDTH, TEACHER_WIDTH), nn.GELU(),
                                      nn.Linear(TEACHER_WIDTH, out_dim))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.convs((images - self.pixel_mean) / self.pixel_std)  # (B, 64, S/8, S/8)
        return F.gelu(self.fc(x.flatten(1)))  # (B, F)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class TextTeacher(nn.Module):
    """ids, mask (B, L) -> features (B, F): a fastText-style network over the words and word pairs of a caption.

    The mean embedding of the words (after [CLS]) and the mean embedding of adjacent word pairs (hashed into
    `BIGRAM_BUCKETS` rows; they bind "red" to "circle" in "a red circle and a blue square") are concatenated, then
    Linear to F = TEACHER_WIDTH and GELU: the feature. A projection MLP on top serves the InfoNCE training only.
    Chosen over a small transformer (which the student uses): as good on T2T NDCG and several times faster.
    """

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.words = nn.Embedding(vocab_size, TEACHER_WIDTH)
        self.pairs = nn.Embedding(BIGRAM_BUCKETS, TEACHER_WIDTH)
        self.fc = nn.Linear(2 * TEACHER_WIDTH, TEACHER_WIDTH)
        self.head = nn.Sequential(nn.Linear(TEACHER_WIDTH, TEACHER_WIDTH), nn.GELU(),
                                  nn.Linear(TEACHER_WIDTH, PROJECTION_DIM))

    def features(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ids, m = ids[:, 1:], mask[:, 1:].to(torch.float32)  # drop [CLS]: (B, L-1)
        pair_ids = (ids[:, :-1] * self.vocab_size + ids[:, 1:]) % BIGRAM_BUCKETS  # (B, L-2)
        pm = m[:, :-1] * m[:, 1:]
        # masked means over real tokens / real pairs (a one-word caption has no pair: its pair mean is 0)
        w = (self.words(ids) * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1.0)  # (B, F)
        p = (self.pairs(pair_ids) * pm[..., None]).sum(1) / pm.sum(1, keepdim=True).clamp(min=1.0)  # (B, F)
        return F.gelu(self.fc(torch.cat([w, p], dim=1)))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(ids, mask))


def _build(seed: int, factory: Callable[[], nn.Module]) -> nn.Module:
    # Initialisation depends on `seed` alone; the global RNG is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


# --- the losses ------------------------------------------------------------------------------------------------

def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE (NT-Xent) between two views a, b (B, d): row i of a and row i of b are the positives;
    the other 2B - 2 rows of both views are negatives. Logits are cosines / temperature."""
    z = F.normalize(torch.cat([a, b]), dim=1)  # (2B, d)
    logits = z @ z.T / temperature  # (2B, 2B)
    n = a.shape[0]
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))  # no self-pairs
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)  # i <-> i + B
    return F.cross_entropy(logits, target)


def contrast_jitter(images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Scale each image's deviation from its own mean by a factor from [1 - strength, 1 + strength], clamp to [0, 1]."""
    b = images.shape[0]
    factor = 1.0 + (torch.rand((b, 1, 1, 1), generator=generator) * 2.0 - 1.0) * strength
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return (mean + (images - mean) * factor.to(images.device)).clamp(0.0, 1.0)


def ssl_view(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One SimCLR view: noise, brightness, +-1 px shift (`rebalance_torch.data.augment_images`) and contrast.

    Drawn on the CPU from `generator` (so a seed gives the same views on any device), returned on images' device.
    """
    view = contrast_jitter(augment_images(images.cpu(), SSL_AUGMENT, generator), SSL_CONTRAST, generator)
    return view.to(images.device)


# --- training --------------------------------------------------------------------------------------------------

def _check_kind(kind: str) -> None:
    if kind not in IMAGE_TEACHERS:
        raise ValueError(f"kind must be one of {IMAGE_TEACHERS}, got {kind!r}")


def _check_epochs(epochs, name: str) -> int:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"{name} must be an int >= 1, got {epochs!r}")
    return epochs


def _optimizer(model: nn.Module, total_steps: int,
               lr: float = LR) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY, foreach=True)
    warmup = max(1, total_steps // 10)
    # Linear warm-up over the first 10% of steps, then cosine decay to 0.
    schedule = lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup)  # noqa: E731
                                                                                  / max(1, total_steps - warmup)))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def _fit(model: nn.Module, n: int, batch: int, epochs: int, gen: torch.Generator,
         loss_fn: Callable[[torch.Tensor], torch.Tensor], label: str, log: Callable[[str], None] | None,
         lr: float = LR, freeze: bool = True) -> dict:
    """Train `model` for `epochs` passes over `n` items in shuffled batches (`loss_fn(rows)` gives each batch's
    loss; a last incomplete batch is dropped) at peak learning rate `lr`, then (`freeze`) freeze it in eval mode.
    Returns the training record."""
    batch = min(batch, n)
    steps_per_epoch = max(1, n // batch)
    opt, sched = _optimizer(model, epochs * steps_per_epoch, lr)
    start, losses = time.perf_counter(), []
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for step in range(steps_per_epoch):
            loss = loss_fn(order[step * batch:(step + 1) * batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        losses.append(total / steps_per_epoch)
        if log:
            log(f"{label} epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f}")
    if freeze:
        model.eval().requires_grad_(False)
    return {"steps": epochs * steps_per_epoch, "batch_size": batch, "loss_per_epoch": losses,
            "seconds": time.perf_counter() - start}


def label_group_weights(names: list[str]) -> torch.Tensor:
    """Per-column BCE weights (K,) giving each group of attribute labels (shapes, colours, sizes, cells, colour-shape
    pairs, and per cell: shape, colour, size) the same total weight; they average to 1 over the columns.

    Without them the 144 position-bound columns outweigh the 57 position-free ones, and the teacher's geometry
    follows where objects are more than what they are.
    """
    groups = [n.split(":")[0] + (":" + n.split(":")[2] if n.count(":") >= 2 else "") for n in names]
    sizes = {g: groups.count(g) for g in set(groups)}
    w = torch.tensor([1.0 / sizes[g] for g in groups])
    return w * len(names) / w.sum()


def train_image_teacher(train: CaptionedImages, kind: str = "supervised", seed: int = 0, epochs: int | None = None,
                        device: str = "cpu", log: Callable[[str], None] | None = None) -> tuple[ImageTeacher, dict]:
    """Train the image teacher on the images of `train` only; returns (frozen teacher in eval mode, training info).

    "supervised" needs `train.attributes` (synthetic data); "ssl" needs nothing but images.
    """
    _check_kind(kind)
    epochs = _check_epochs(DEFAULT_EPOCHS[kind] if epochs is None else epochs, "epochs")
    model, fit = fit_image_network(lambda out_dim: ImageTeacher(train.image_size[0], out_dim, kind), train, kind,
                                   seed, epochs, device, log, f"image teacher ({kind})",
                                   hint="--image-teacher ssl, or image_teacher='ssl' in a config")
    info = {"kind": kind, "epochs": epochs, **fit, "parameters": count_parameters(model), "feature_dim": TEACHER_WIDTH}
    return model, info


def fit_image_network(factory: Callable[[int], nn.Module], train: CaptionedImages, kind: str, seed: int,
                      epochs: int, device: str = "cpu", log: Callable[[str], None] | None = None,
                      label: str = "image network", lr: float = LR, freeze: bool = True,
                      hint: str = "kind='ssl'") -> tuple[nn.Module, dict]:
    """Train `factory(out_dim)` (built from `seed`; its forward maps (B, 3, S, S) images in [0, 1] to (B, out_dim))
    on the images of `train` alone, `epochs` passes of `IMAGE_BATCH` images: "supervised" fits the scenes' attribute
    labels (`attribute_targets`, out_dim = their count) with group-weighted binary cross-entropy and needs
    `train.attributes`; "ssl" fits SimCLR's InfoNCE between two augmented views (out_dim = `PROJECTION_DIM`).
    Returns (the network, the training record); frozen in eval mode when `freeze`. `hint`: how to ask for "ssl",
    named in the error for data without attributes."""
    _check_kind(kind)
    if train.image_size[0] != train.image_size[1]:
        raise ValueError(f"train images must be square, got {train.image_size}")
    images = torch.from_numpy(to_model_input(train.images)).to(device)  # (N, 3, H, W) in [0, 1]
    targets = None
    if kind == "supervised":
        if train.attributes is None:
            raise ValueError(f"the supervised {label} needs scene attributes (synthetic shapes-world data); this "
                             f"data has none (real image-caption data): use the self-supervised one ({hint})")
        from rebalance_ref.shapes import attribute_targets

        y, names = attribute_targets(train.attributes)
        targets = torch.from_numpy(y).to(device)  # (N, K) multi-hot
        column_weight = label_group_weights(names).to(device)  # (K,)
    out_dim = targets.shape[1] if targets is not None else PROJECTION_DIM
    model = _build(seed, lambda: factory(out_dim)).to(device)
    gen = torch.Generator().manual_seed(seed + 1)

    def loss_fn(rows: torch.Tensor) -> torch.Tensor:
        x = images[rows.to(device)]
        if kind == "supervised":
            return F.binary_cross_entropy_with_logits(model(x), targets[rows.to(device)], weight=column_weight)
        return info_nce(model(ssl_view(x, gen)), model(ssl_view(x, gen)), SSL_TEMPERATURE)

    fit = _fit(model, len(images), IMAGE_BATCH, epochs, gen, loss_fn, label, log, lr=lr, freeze=freeze)
    return model, fit


def _pair_captions(captions: list[list[str]], gen: torch.Generator) -> tuple[list[str], list[str]]:
    """Two different captions of each image (the same one twice when an image has only one)."""
    first, second = [], []
    for caps in captions:
        if len(caps) == 1:
            first.append(caps[0])
            second.append(caps[0])
            continue
        i, j = torch.randperm(len(caps), generator=gen)[:2].tolist()
        first.append(caps[i])
        second.append(caps[j])
    return first, second


def train_text_teacher(train: CaptionedImages, seed: int = 0, epochs: int | None = None, device: str = "cpu",
                       max_len: int = 32, log: Callable[[str], None] | None = None
                       ) -> tuple[TextTeacher, Tokenizer, dict]:
    """Train the text teacher on the captions of `train` only (positives: two captions of one image).

    An epoch visits every image once with two of its captions. Returns (frozen teacher, its tokenizer, info).
    """
    epochs = _check_epochs(DEFAULT_EPOCHS["text"] if epochs is None else epochs, "epochs")
    _, flat = train.pairs()
    tokenizer = Tokenizer.build(flat, max_len=max_len)
    model = _build(seed + 2, lambda: TextTeacher(tokenizer.vocab_size)).to(device)
    gen = torch.Generator().manual_seed(seed + 3)

    def loss_fn(rows: torch.Tensor) -> torch.Tensor:
        a, b = _pair_captions([train.captions[r] for r in rows.tolist()], gen)
        ids, mask = (torch.from_numpy(x).to(device) for x in tokenizer.encode(a + b))
        z = model(ids, mask)
        return info_nce(z[:len(a)], z[len(a):], TEXT_TEMPERATURE)

    fit = _fit(model, len(train), TEXT_BATCH, epochs, gen, loss_fn, "text teacher", log)
    info = {"epochs": epochs, **fit, "parameters": count_parameters(model), "feature_dim": TEACHER_WIDTH,
            "vocab_size": tokenizer.vocab_size}
    return model, tokenizer, info


# --- features --------------------------------------------------------------------------------------------------

@torch.no_grad()
def image_features(teacher: ImageTeacher, data: CaptionedImages, device: str = "cpu",
                   batch_size: int = 512) -> np.ndarray:
    """Frozen image-teacher features, float32 (N, W), one row per image of `data`."""
    teacher.eval()
    out = [teacher.features(images.to(device)).cpu() for images in image_batches(data, batch_size)]
    return torch.cat(out).numpy().astype(np.float32)


@torch.no_grad()
def text_features(teacher: TextTeacher, tokenizer: Tokenizer, texts: list[str], device: str = "cpu",
                  batch_size: int = 512) -> np.ndarray:
    """Frozen text-teacher features, float32 (len(texts), W), one row per text."""
    teacher.eval()
    out = [teacher.features(ids.to(device), mask.to(device)).cpu()
           for ids, mask in text_batches(texts, tokenizer, batch_size)]
    return torch.cat(out).numpy().astype(np.float32)


# --- quality against trivial baselines -------------------------------------------------------------------------

def pixel_baseline(data: CaptionedImages) -> np.ndarray:
    """The trivial image features: flattened pixels, float32 (N, H*W*3) (cosine on them is the I2I baseline)."""
    return data.images.reshape(len(data), -1).astype(np.float32)


def bag_of_words(texts: list[str]) -> np.ndarray:
    """The trivial text features: word counts, float32 (len(texts), V) over the words of `texts`."""
    tokens = [words(t) for t in texts]
    vocab = {w: i for i, w in enumerate(sorted({w for ws in tokens for w in ws}))}
    counts = np.zeros((len(texts), max(1, len(vocab))), dtype=np.float32)
    for row, ws in enumerate(tokens):
        np.add.at(counts[row], [vocab[w] for w in ws], 1.0)
    return counts


def quality_report(split: CaptionedImages, image_feats: np.ndarray, text_feats: np.ndarray) -> dict:
    """I2I and T2T NDCG@10/20/50 (x100) of the teachers' features vs the trivial baselines on `split`, with ROUGE-L
    relevance and (synthetic data) attribute relevance; `beats_baseline` compares NDCG@10 per relevance kind."""
    from rebalance_torch.evaluate import single_modal_ndcg, split_relevance

    rel = split_relevance(split)
    _, flat = split.pairs()
    teacher = single_modal_ndcg(image_feats, text_feats, rel)
    baseline = single_modal_ndcg(pixel_baseline(split), bag_of_words(flat), rel)
    report = {}
    for modality, task, name in (("image", "i2i", "raw pixels (cosine)"), ("text", "t2t", "bag of words (cosine)")):
        keys = sorted(k for k in teacher if f"_{task}@" in k)
        kinds = sorted({k.split("_")[0] for k in keys})
        report[modality] = {
            "teacher": {k: teacher[k] for k in keys},
            "baseline_name": name,
            "baseline": {k: baseline[k] for k in keys},
            "beats_baseline": {kind: teacher[f"{kind}_{task}@10"] > baseline[f"{kind}_{task}@10"] for kind in kinds},
        }
    return report


# --- the one call the CLI, trainer and demo use ------------------------------------------------------------------

@dataclass
class TeacherResult:
    """Frozen teachers, their features and their quality report.

    features: `train_image` / `train_text` (M_train, d) one row per training caption (pairs() order);
    `val_image`, `test_image` (N, d) one row per image; `val_text`, `test_text` (C, d) one row per caption
    (only the splits that were given).
    """

    features: dict[str, np.ndarray]
    report: dict
    image_teacher: ImageTeacher
    text_teacher: TextTeacher
    tokenizer: Tokenizer
    info: dict = field(default_factory=dict)

    def save(self, out_dir: str | Path) -> Path:
        """Write `<key>.npy` for every feature array, `report.json`, the teachers' weights and tokenizer."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for key, array in self.features.items():
            save_npy_atomic(out / f"{key}.npy", array)
        for name, teacher in (("image_teacher.pt", self.image_teacher), ("text_teacher.pt", self.text_teacher)):
            with atomic_path(out / name) as tmp, open(tmp, "wb") as handle:
                torch.save({k: v.cpu() for k, v in teacher.state_dict().items()}, handle)
        self.tokenizer.save(out / "text_teacher_tokenizer.json")
        write_json_atomic(out / REPORT_FILE, self.report, indent=2)
        return out


def train_teachers(splits: dict[str, CaptionedImages], kind: str = "supervised", seed: int = 0,
                   epochs: int | None = None, device: str = "cpu", report_split: str = "test",
                   log: Callable[[str], None] | None = None) -> TeacherResult:
    """Train both teachers on `splits["train"]`, freeze them, and compute every feature array and the report.

    epochs: None uses `DEFAULT_EPOCHS` per teacher; an int sets both. The report is computed on `report_split`
    (skipped when that split is absent). Same seed and thread count -> identical features.
    """
    if not isinstance(splits, dict) or "train" not in splits:
        raise ValueError(f"splits must be a dict with a 'train' CaptionedImages, got keys "
                         f"{sorted(splits) if isinstance(splits, dict) else type(splits).__name__}")
    for name, split in splits.items():
        if not isinstance(split, CaptionedImages):
            raise ValueError(f"splits[{name!r}] must be a CaptionedImages, got {type(split).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    train = splits["train"]
    image_teacher, image_info = train_image_teacher(train, kind, seed=seed, epochs=epochs, device=device, log=log)
    text_teacher, tokenizer, text_info = train_text_teacher(train, seed=seed, epochs=epochs, device=device, log=log)
    idx, flat = train.pairs()
    features = {"train_image": image_features(image_teacher, train, device)[idx],
                "train_text": text_features(text_teacher, tokenizer, flat, device)}
    for name in ("val", "test"):
        if name in splits:
            features[f"{name}_image"] = image_features(image_teacher, splits[name], device)
            features[f"{name}_text"] = text_features(text_teacher, tokenizer, splits[name].pairs()[1], device)
    report = {"image_teacher": image_info, "text_teacher": text_info, "seed": seed}
    if report_split in splits:
        report["split"] = report_split
        report.update(quality_report(splits[report_split], features[f"{report_split}_image"],
                                     features[f"{report_split}_text"]))
        if log:
            for modality in ("image", "text"):
                r = report[modality]
                for k, beats in r["beats_baseline"].items():
                    key = next(x for x in r["teacher"] if x.startswith(k) and x.endswith("@10"))
                    verdict = "beats" if beats else "DOES NOT beat"
                    log(f"{modality} teacher {key} {r['teacher'][key]:.1f} {verdict} {r['baseline_name']} "
                        f"{r['baseline'][key]:.1f}")
    return TeacherResult(features=features, report=report, image_teacher=image_teacher, text_teacher=text_teacher,
                         tokenizer=tokenizer, info={"kind": kind})


def train_teacher_features(config: TrainConfig, splits: dict[str, CaptionedImages], cache: Path | None = None,
                           log: Callable[[str], None] | None = None) -> TeacherFeatures:
    """A run's teachers: both trained on the training split as the config says (`train_teachers`), frozen, their
    features for the training rows and the validation split collected, everything saved to `cache` if given."""
    result = train_teachers(splits, kind=config.image_teacher, seed=config.seed, epochs=config.teacher_epochs,
                            device=config.device, log=log)
    if cache is not None:
        result.save(cache)
    features = result.features

    def maybe(key: str) -> np.ndarray | None:
        return None if features.get(key) is None else np.asarray(features[key], dtype=np.float32)

    return TeacherFeatures(train_image=maybe("train_image"), train_text=maybe("train_text"),
                           val_image=maybe("val_image"), val_text=maybe("val_text"), report=dict(result.report))
