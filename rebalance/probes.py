"""Look inside a trained student: a sparse-autoencoder concept probe and a word-patch interaction probe.

`sae_probe(run_dir)` (VL-SAE style): encode the run's test split with its best student, fit the sparse autoencoder
of `rebalance_ref.sae` on the paired image and caption embeddings of half the test images, and on the other half
score every neuron against every true scene attribute by AUROC, on the image side and on the text side apart.

`interaction_probe(run_dir)` (LOUPE style): for a few test pairs, sampled Shapley interactions
(`rebalance_ref.interactions`) between each caption word and each image patch of the student's score
(`rebalance_torch.coalitions`), heatmaps over the image per word, and the grounding check: does the word for a
colour or a shape interact most with a patch of its own object?

docs/probes.md explains both, their choices and what they measured.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rebalance.plots import pyplot, save_figure
from rebalance_ref.files import write_json_atomic

# --- loading a run ------------------------------------------------------------------------------------------------


def load_run(run_dir: str | Path, which: str = "best"):
    """(student in eval mode, config, tokenizer, test split) of a run folder; the test split must keep the shapes
    world's true attributes (a run on the synthetic world)."""
    from rebalance_torch.checkpoint import load_student
    from rebalance_torch.data import load_splits

    student, config, tokenizer = load_student(run_dir, which=which)
    student.eval()
    test = load_splits(config)["test"]
    if test.attributes is None:
        raise ValueError(f"run {run_dir}: the probes need the true scene attributes of the shapes world; this run's "
                         "test split has none (a data folder without attributes)")
    return student, config, tokenizer, test


# --- the concept attributes -----------------------------------------------------------------------------------------

# The attribute values a neuron is scored against: which shapes, colours and sizes occur, which cells are
# occupied (the first four groups of rebalance_ref.shapes.attribute_targets).
CONCEPT_GROUPS = ("shape", "colour", "size", "cell")


def concept_targets(attributes) -> tuple[np.ndarray, list[str]]:
    """Per image, 0/1 presence of each attribute value of CONCEPT_GROUPS: (N, 24) float, and the names."""
    from rebalance_ref.shapes import attribute_targets

    y, names = attribute_targets(attributes)
    keep = [i for i, name in enumerate(names) if name.split(":")[0] in CONCEPT_GROUPS and name.count(":") == 1]
    return y[:, keep].astype(np.float64), [names[i] for i in keep]


# --- the sparse autoencoder ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SaeSettings:
    """The autoencoder's size and training. h = width_factor * d neurons, k active per row (None: d / 2, the
    method's defaults); Adam at `lr` with a linear warm-up over the first `warmup` of the steps and a cosine decay
    after (the method's schedule), minibatches of `batch` pairs, `steps` updates, seeded."""

    width_factor: int = 8
    k: int | None = None
    steps: int = 300
    batch: int = 512
    lr: float = 1e-3
    warmup: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("width_factor", "steps", "batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SaeSettings.{name}: expected an int >= 1, got {value!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"SaeSettings.lr: expected a positive number, got {self.lr!r}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"SaeSettings.warmup: expected a fraction in [0, 1), got {self.warmup!r}")


def fit_sae(v: np.ndarray, t: np.ndarray, settings: SaeSettings = SaeSettings()) -> dict:
    """Fit the VL-SAE on paired rows v, t (N, d) with `rebalance_torch.sae.sae_loss` (float32, one process's
    threads). Encoder rows start at randomly chosen training rows (images and captions alike), so that every
    neuron starts where data is; decoders start at zero weights and the mean of each modality as bias.

    Returns {"w_enc", "w_dec_v", "b_dec_v", "w_dec_t", "b_dec_t"} as float32 arrays, "k", and "loss" (the loss
    of every step)."""
    import torch

    from rebalance_torch.sae import sae_loss

    n, d = v.shape
    h = settings.width_factor * d
    k = settings.k if settings.k is not None else max(1, d // 2)
    gen = torch.Generator().manual_seed(settings.seed)
    vt = torch.as_tensor(np.asarray(v, dtype=np.float32))
    tt = torch.as_tensor(np.asarray(t, dtype=np.float32))
    pool = torch.cat([vt, tt])
    start = pool[torch.randint(len(pool), (h,), generator=gen)]
    params = {"w_enc": start + 0.01 * torch.randn(h, d, generator=gen), "w_dec_v": torch.zeros(h, d),
              "b_dec_v": vt.mean(0), "w_dec_t": torch.zeros(h, d), "b_dec_t": tt.mean(0)}
    params = {key: p.clone().requires_grad_(True) for key, p in params.items()}
    opt = torch.optim.Adam(params.values(), lr=settings.lr)
    warm = max(1, int(settings.warmup * settings.steps))

    def rate(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, settings.steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, rate)
    losses = []
    for _ in range(settings.steps):
        rows = torch.randint(n, (min(settings.batch, n),), generator=gen)
        loss = sae_loss(vt[rows], tt[rows], params["w_enc"], params["w_dec_v"], params["b_dec_v"],
                        params["w_dec_t"], params["b_dec_t"], k)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    out = {key: p.detach().numpy().copy() for key, p in params.items()}
    return {**out, "k": k, "loss": losses}


def sae_codes(x: np.ndarray, sae: dict) -> np.ndarray:
    """The trained autoencoder's sparse activations of rows x (N, d) -> (N, h) float64."""
    import torch

    from rebalance_torch.sae import sae_activations

    with torch.no_grad():
        a = sae_activations(torch.as_tensor(np.asarray(x, dtype=np.float32)), torch.as_tensor(sae["w_enc"]),
                            sae["k"])
    return a.double().numpy()


def auroc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Area under the ROC curve of every score column against every 0/1 label column: scores (N, h), labels
    (N, K) -> (h, K). Mann-Whitney: AUROC = P(score of a random positive > score of a random negative), ties
    counting one half (mid-ranks), so an inactive neuron (all zeros) scores exactly 0.5. A label column with no
    positive or no negative gives NaN."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if scores.ndim != 2 or labels.ndim != 2 or len(scores) != len(labels):
        raise ValueError(f"scores (N, h) and labels (N, K): expected 2-D arrays with the same N, got "
                         f"{scores.shape} and {labels.shape}")
    ranks = rankdata(scores, axis=0)  # (N, h) mid-ranks
    pos = labels.sum(axis=0)  # (K,)
    neg = len(labels) - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ranks.T @ labels - pos * (pos + 1) / 2) / (pos * neg)  # (h, K)


@dataclass
class SaeProbe:
    """The concept probe of one run (held-out half of the test split). Arrays are per neuron (h,) unless noted."""

    run: str
    names: list[str]  # the K attribute values
    auroc_image: np.ndarray  # (h, K) image activations against the image's attributes
    auroc_text: np.ndarray  # (h, K) caption activations against its image's attributes
    fire_image: np.ndarray  # fraction of held-out images on which the neuron is active
    fire_text: np.ndarray  # fraction of held-out captions on which the neuron is active
    loss: list[float]
    settings: dict
    seconds: dict


def sae_probe(run_dir: str | Path, settings: SaeSettings = SaeSettings(), which: str = "best") -> SaeProbe:
    """Fit the VL-SAE on the even-numbered test images' pairs of a run and score it on the odd-numbered ones."""
    from rebalance_torch.evaluate import encode_split

    tic = time.perf_counter()
    student, config, tokenizer, test = load_run(run_dir, which)
    emb = encode_split(student, test, tokenizer, keep_tokens=False)
    y, names = concept_targets(test.attributes)
    seconds = {"encode": time.perf_counter() - tic}
    fit_rows = emb.txt2img % 2 == 0  # captions of the even images: the pairs the autoencoder is fitted on
    tic = time.perf_counter()
    sae = fit_sae(emb.v[emb.txt2img[fit_rows]], emb.t[fit_rows], settings)
    seconds["fit"] = time.perf_counter() - tic
    tic = time.perf_counter()
    held_images = np.arange(1, len(emb.v), 2)
    a_img = sae_codes(emb.v[held_images], sae)  # (N/2, h)
    a_txt = sae_codes(emb.t[~fit_rows], sae)  # (C/2, h)
    probe = SaeProbe(run=str(run_dir), names=names, auroc_image=auroc(a_img, y[held_images]),
                     auroc_text=auroc(a_txt, y[emb.txt2img[~fit_rows]]), fire_image=(a_img > 0).mean(axis=0),
                     fire_text=(a_txt > 0).mean(axis=0), loss=sae["loss"],
                     settings={**asdict(settings), "k": sae["k"], "h": int(sae["w_enc"].shape[0])}, seconds=seconds)
    seconds["score"] = time.perf_counter() - tic
    return probe


# Thresholds of the summary: a neuron "fires" for a modality when it is active on at least FIRE_MIN of its
# held-out rows, and "never" when on at most NEVER_MAX; a neuron "tracks" an attribute value at AUROC >= TRACKS.
FIRE_MIN = 0.02
NEVER_MAX = 0.0
TRACKS = 0.65


def sae_summary(probe: SaeProbe) -> dict:
    """Headline numbers: live and shared neurons; per attribute value the best neuron's AUROC on each side; the
    image-only neurons (fire for images, never for captions) and the attribute groups they track; the same
    count for the caption-firing neurons on the text side."""
    img, txt = np.nan_to_num(probe.auroc_image, nan=0.5), np.nan_to_num(probe.auroc_text, nan=0.5)
    fires_img, fires_txt = probe.fire_image >= FIRE_MIN, probe.fire_text >= FIRE_MIN
    image_only = fires_img & (probe.fire_text <= NEVER_MAX)
    best = img.argmax(axis=1)  # (h,) each neuron's best attribute on the image side
    groups = {g: [j for j, name in enumerate(probe.names) if name.startswith(g + ":")] for g in CONCEPT_GROUPS}
    per_attr = {name: {"image": float(img[:, j].max()), "text": float(txt[:, j].max())}
                for j, name in enumerate(probe.names)}
    per_group = {g: {"image": float(np.mean([per_attr[probe.names[j]]["image"] for j in cols])),
                     "text": float(np.mean([per_attr[probe.names[j]]["text"] for j in cols])),
                     "tracked_image": int(sum(per_attr[probe.names[j]]["image"] >= TRACKS for j in cols)),
                     "tracked_text": int(sum(per_attr[probe.names[j]]["text"] >= TRACKS for j in cols)),
                     "values": len(cols)}
                 for g, cols in groups.items()}
    best_txt = txt.argmax(axis=1)
    only = {g: int(np.sum(image_only & np.isin(best, cols) & (img.max(axis=1) >= TRACKS)))
            for g, cols in groups.items()}
    text_side = {g: int(np.sum(fires_txt & np.isin(best_txt, cols) & (txt.max(axis=1) >= TRACKS)))
                 for g, cols in groups.items()}
    return {"neurons": int(len(img)), "k": probe.settings["k"], "fire_image": int(fires_img.sum()),
            "fire_text": int(fires_txt.sum()), "fire_both": int((fires_img & fires_txt).sum()),
            "image_only": int(image_only.sum()), "image_only_concepts": only,
            "caption_neuron_concepts": text_side, "per_group": per_group,
            "per_attribute": per_attr, "final_loss": float(np.mean(probe.loss[-20:])), "seconds": probe.seconds}


def plot_sae(probe: SaeProbe, path: str | Path, top: int = 16, title: str = "") -> Path:
    """Three panels: the top neurons (by image AUROC) with their best attribute, image vs text AUROC for it; per
    attribute value the best neuron's AUROC on each side; the image-only neurons' best attributes by group."""
    plt = pyplot()
    img, txt = np.nan_to_num(probe.auroc_image, nan=0.5), np.nan_to_num(probe.auroc_text, nan=0.5)
    summary = sae_summary(probe)
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2), gridspec_kw={"width_ratios": [1.1, 1.6, 0.7]})
    best = img.argmax(axis=1)
    order = np.argsort(-img.max(axis=1))[:top]
    y = np.arange(len(order))
    axes[0].barh(y - 0.2, img[order, best[order]], 0.4, label="image AUROC", color="tab:blue")
    axes[0].barh(y + 0.2, txt[order, best[order]], 0.4, label="text AUROC (same attribute)", color="tab:orange")
    axes[0].set_yticks(y, [f"#{n} {probe.names[best[n]]} ({probe.fire_image[n]:.0%} img, "
                           f"{probe.fire_text[n]:.0%} txt)" for n in order], fontsize=7)
    axes[0].invert_yaxis()
    axes[0].axvline(0.5, color="grey", ls=":", lw=0.8)
    axes[0].set_xlim(0.3, 1.0)
    axes[0].set_title(f"top {top} neurons by image AUROC: best attribute\n(firing rate on held-out images, captions)",
                      fontsize=9)
    axes[0].legend(fontsize=7, loc="lower right")
    x = np.arange(len(probe.names))
    axes[1].bar(x - 0.2, [summary["per_attribute"][n]["image"] for n in probe.names], 0.4, label="image side")
    axes[1].bar(x + 0.2, [summary["per_attribute"][n]["text"] for n in probe.names], 0.4, label="text side")
    axes[1].set_xticks(x, probe.names, rotation=70, fontsize=7)
    axes[1].axhline(0.5, color="grey", ls=":", lw=0.8)
    axes[1].axhline(TRACKS, color="grey", ls="--", lw=0.8)
    axes[1].set_ylim(0.4, 1.0)
    axes[1].set_title("per attribute value: AUROC of the best neuron on each side\n(dashed: 'tracks' threshold)",
                      fontsize=9)
    axes[1].legend(fontsize=7)
    only, text_side = summary["image_only_concepts"], summary["caption_neuron_concepts"]
    gx = np.arange(len(only))
    axes[2].bar(gx - 0.2, list(only.values()), 0.4, color="tab:purple",
                label=f"image-only neurons ({summary['image_only']})")
    axes[2].bar(gx + 0.2, list(text_side.values()), 0.4, color="tab:orange",
                label=f"caption-firing neurons ({summary['fire_text']})")
    axes[2].set_xticks(gx, list(only))
    axes[2].legend(fontsize=7, loc="upper left")
    axes[2].set_title(f"neurons that track a concept (AUROC >= {TRACKS}),\nby the group of their best attribute; "
                      f"{summary['fire_both']} fire for both", fontsize=9)
    axes[2].set_ylabel("neurons")
    fig.suptitle(title or f"VL-SAE concepts of {probe.run}: h={summary['neurons']}, k={summary['k']}, held-out half "
                 "of the test split", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110, bbox_inches="tight")


def plot_sae_compare(probes: dict[str, SaeProbe], path: str | Path) -> Path:
    """Per attribute value, the best neuron's image and text AUROC of several runs side by side."""
    plt = pyplot()
    names = next(iter(probes.values())).names
    fig, axes = plt.subplots(2, 1, figsize=(13, 6.5), sharex=True)
    x = np.arange(len(names))
    width = 0.8 / len(probes)
    for r, (label, probe) in enumerate(probes.items()):
        per = sae_summary(probe)["per_attribute"]
        for ax, side in zip(axes, ("image", "text"), strict=True):
            ax.bar(x - 0.4 + width * (r + 0.5), [per[n][side] for n in names], width, label=label)
    for ax, side in zip(axes, ("image", "text"), strict=True):
        ax.set_ylim(0.4, 1.0)
        ax.axhline(0.5, color="grey", ls=":", lw=0.8)
        ax.axhline(TRACKS, color="grey", ls="--", lw=0.8)
        ax.set_ylabel(f"{side} side: best AUROC")
        ax.legend(fontsize=7, ncol=len(probes))
    axes[1].set_xticks(x, names, rotation=70, fontsize=7)
    axes[0].set_title("Which concepts the space holds: per attribute value, the best SAE neuron's AUROC", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110, bbox_inches="tight")


def sae_to_json(probe: SaeProbe) -> dict:
    return {"run": probe.run, "settings": probe.settings, "summary": sae_summary(probe)}


# --- the interaction probe ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InteractionSettings:
    """Which pairs and how many samples: the first `pairs` test images with their first caption; `samples`
    random orders per (word, patch) pair (4 evaluations each); `reward` "cosine" or "itm"
    (rebalance_torch.coalitions); seeded."""

    pairs: int = 8
    samples: int = 16
    reward: str = "cosine"
    seed: int = 0

    def __post_init__(self) -> None:
        from rebalance_torch.coalitions import REWARDS

        if isinstance(self.pairs, bool) or not isinstance(self.pairs, int) or self.pairs < 1:
            raise ValueError(f"InteractionSettings.pairs: expected an int >= 1, got {self.pairs!r}")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 2:
            raise ValueError(f"InteractionSettings.samples: expected an int >= 2, got {self.samples!r}")
        if self.reward not in REWARDS:
            raise ValueError(f"InteractionSettings.reward: expected one of {REWARDS}, got {self.reward!r}")


def object_patches(obj: dict, image_size: int, patch_size: int) -> np.ndarray:
    """The patches (row-major indices) that overlap an object's grid cell: a shapes-world object stays inside its
    cell (radius + jitter < half a cell), so these patches hold all of it."""
    from rebalance_ref.shapes import GRID

    cell = image_size / GRID
    side = image_size // patch_size

    def span(index: int) -> range:
        lo, hi = index * cell, (index + 1) * cell  # the cell's pixel interval [lo, hi)
        return range(int(lo // patch_size), int(math.ceil(hi / patch_size)))

    return np.array([r * side + c for r in span(obj["row"]) for c in span(obj["col"])], dtype=np.int64)


def _word_objects(word: str, objects: list[dict]) -> tuple[str, list[int]] | None:
    """("colour" or "shape", the objects it names) when `word` is a colour or shape word, else None."""
    from rebalance_ref.shapes import COLOURS, SHAPE_WORDS

    if word in COLOURS:
        return "colour", [k for k, ob in enumerate(objects) if ob["colour"] == word]
    for shape, words in SHAPE_WORDS.items():
        if word in words:
            return "shape", [k for k, ob in enumerate(objects) if ob["shape"] == shape]
    return None


@dataclass
class PairResult:
    image: int  # test image index
    caption: str
    words: list[str]
    interactions: np.ndarray  # (n_words, P)
    stderr: np.ndarray  # (n_words, P)


def interaction_probe(run_dir: str | Path, settings: InteractionSettings = InteractionSettings(),
                      which: str = "best") -> dict:
    """Sampled word-patch Shapley interactions for the first `settings.pairs` test pairs, and the grounding check.

    Grounding check: for each colour or shape word that names exactly one object of its scene, is the patch it
    interacts with most (largest interaction) one of that object's patches (`object_patches`)? The rate over all
    such words is compared with the rate for a region of the same size at a random cell (the average over all
    cells of the grid, so exact rather than drawn); likewise the mean interaction inside the object's patches vs
    inside a random cell's."""
    import torch

    from rebalance_ref.interactions import interaction_samples
    from rebalance_ref.shapes import GRID
    from rebalance_torch.coalitions import PairGame, stem_tokens
    from rebalance_torch.data import image_batches

    tic = time.perf_counter()
    student, config, tokenizer, test = load_run(run_dir, which)
    n_pairs = min(settings.pairs, len(test))
    images = torch.cat([b for b in image_batches(test, 256)])[:n_pairs]
    with torch.no_grad():
        fill = stem_tokens(student, images).mean(dim=(0, 1))  # the mean stem token of the probed images
    mc = student.config
    cells = [object_patches({"row": r, "col": c}, mc.image_size, mc.patch_size) for r in range(GRID)
             for c in range(GRID)]
    results, hits, chance, inside, random_inside = [], [], [], [], []
    evaluations = 0
    for i in range(n_pairs):
        caption = test.captions[i][0]
        ids, mask = tokenizer.encode([caption], max_len=mc.max_len)
        ids_t, mask_t = torch.as_tensor(ids[0]), torch.as_tensor(mask[0])
        game = PairGame(student, images[i], ids_t, mask_t, fill, reward=settings.reward)
        words = [tokenizer.vocab[int(j)] for j in ids[0][1:game.n_words + 1]]  # one per word player
        pairs = [(w, game.n_words + p) for w in range(game.n_words) for p in range(game.n_patches)]
        est = interaction_samples(game, game.n_players, pairs, settings.samples, seed=settings.seed + i, batch=2048)
        evaluations += est.evaluations
        inter = est.mean.reshape(game.n_words, game.n_patches)
        results.append(PairResult(i, caption, words, inter, est.stderr.reshape(game.n_words, game.n_patches)))
        for w, word in enumerate(words):
            named = _word_objects(word, test.attributes[i])
            if named is None or len(named[1]) != 1:
                continue
            region = object_patches(test.attributes[i][named[1][0]], mc.image_size, mc.patch_size)
            top = int(np.argmax(inter[w]))
            hits.append(top in region)
            chance.append(np.mean([top in c for c in cells]))
            inside.append(float(inter[w, region].mean()))
            random_inside.append(float(np.mean([inter[w, c].mean() for c in cells])))
    seconds = time.perf_counter() - tic
    check = {"words": len(hits), "hit_rate": float(np.mean(hits)) if hits else float("nan"),
             "random_region_rate": float(np.mean(chance)) if chance else float("nan"),
             "mean_inside_object": float(np.mean(inside)) if inside else float("nan"),
             "mean_inside_random_region": float(np.mean(random_inside)) if random_inside else float("nan")}
    stderr = np.concatenate([r.stderr.ravel() for r in results])
    return {"run": str(run_dir), "settings": asdict(settings), "pairs": results, "check": check,
            "evaluations": evaluations, "median_stderr": float(np.median(stderr)),
            "median_abs_interaction": float(np.median(np.concatenate([np.abs(r.interactions).ravel()
                                                                     for r in results]))),
            "seconds": seconds, "images": images.numpy(), "patch_grid": mc.image_size // mc.patch_size}


def plot_interactions(probe: dict, path: str | Path, max_pairs: int = 4, max_words: int = 8) -> Path:
    """Per pair a row: the image, then one heatmap over the image per word (interaction of the word with each
    patch, red = positive, blue = negative, one symmetric scale per row), the word and its largest interaction."""
    plt = pyplot()
    pairs = probe["pairs"][:max_pairs]
    cols = 1 + min(max_words, max(len(p.words) for p in pairs))
    fig, axes = plt.subplots(len(pairs), cols, figsize=(1.9 * cols, 2.1 * len(pairs)), squeeze=False)
    side = probe["patch_grid"]
    for row, pair in zip(axes, pairs, strict=True):
        image = np.transpose(probe["images"][pair.image], (1, 2, 0))
        row[0].imshow(image)
        row[0].set_title(pair.caption if len(pair.caption) < 34 else pair.caption[:32] + "…", fontsize=6)
        scale = float(np.abs(pair.interactions).max()) or 1.0
        size = image.shape[0]
        for ax, w in zip(row[1:], range(len(pair.words)), strict=False):
            ax.imshow(image, alpha=0.55)
            ax.imshow(pair.interactions[w].reshape(side, side), cmap="RdBu_r", vmin=-scale, vmax=scale, alpha=0.6,
                      extent=(0, size, size, 0), interpolation="nearest")
            ax.set_title(f'"{pair.words[w]}" max {pair.interactions[w].max():+.3f}', fontsize=7)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in row[1 + len(pair.words):]:
            ax.axis("off")
    check = probe["check"]
    fig.suptitle(f"word-patch Shapley interactions ({probe['settings']['reward']} reward, "
                 f"{probe['settings']['samples']} orders per pair, median s.e. {probe['median_stderr']:.4f}); "
                 f"grounding: {check['hit_rate']:.0%} of {check['words']} colour/shape words peak on their object "
                 f"vs {check['random_region_rate']:.0%} for a random cell", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110, bbox_inches="tight")


def interactions_to_json(probe: dict) -> dict:
    return {"run": probe["run"], "settings": probe["settings"], "check": probe["check"],
            "evaluations": probe["evaluations"], "median_stderr": probe["median_stderr"],
            "median_abs_interaction": probe["median_abs_interaction"], "seconds": probe["seconds"],
            "pairs": [{"image": p.image, "caption": p.caption, "words": p.words,
                       "interactions": np.round(p.interactions, 6).tolist(), "stderr": np.round(p.stderr, 6).tolist()}
                      for p in probe["pairs"]]}


def write_json(path: str | Path, data: dict) -> Path:
    write_json_atomic(path, data, indent=1)
    return Path(path)
