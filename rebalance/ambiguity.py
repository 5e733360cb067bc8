"""How ambiguous a shapes world's captions are, and what that does to ITM's labels (docs/data.md, "Ambiguity").

- `oracle_report(preset, ...)`: per split, the literal and the Bayes oracles' expected cross-modal recall
  and the ambiguity statistics (`rebalance_ref.ambiguity`), from the captions' mentions alone (no images rendered);
- `itm_label_noise(run_dir, ...)`: on a trained run, training batches drawn as the trainer draws them, the run's
  student (eval mode) picking ITM hard negatives with `sample_itm_negatives`, and the share of those negative
  pairs whose caption is in fact true of the negative image — beside the same share for uniformly random
  negatives (what a weak student's sampler sees);
- `recall_of_oracle(test_metrics, oracle)`: a run's test R-mean as a percentage of each oracle's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rebalance_ref.ambiguity import (
    ambiguity_stats,
    bayes_oracle_recall,
    caption_match_counts,
    itm_noise_floor,
    oracle_recall,
)
from rebalance_ref.shapes import SPLITS, get_knobs, split_mentions


@dataclass(frozen=True)
class SplitMatches:
    """A split's captions against its images: `counts` int (C, N) (`caption_match_counts`), `txt2img` (C,) each
    caption's own image, `n_mentions` (C,) objects each caption names, `n_objects` (N,) objects in each image."""

    counts: np.ndarray
    txt2img: np.ndarray
    n_mentions: np.ndarray
    n_objects: np.ndarray

    @property
    def matches(self) -> np.ndarray:
        """bool (C, N): caption c is true of image n."""
        return self.counts > 0


def split_matches(preset, n_train: int, n_val: int, n_test: int, seed: int = 0,
                  splits=SPLITS) -> dict[str, SplitMatches]:
    """`SplitMatches` of each split in `splits` of the world `make_splits` makes from the same arguments."""
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"splits must be among {', '.join(SPLITS)}, got {unknown[0]!r}")
    made = split_mentions(preset, n_train, n_val, n_test, seed=seed)
    out = {}
    for split in splits:
        mentions = made[split].mentions
        flat = [m for per_image in mentions for m in per_image]    # image-major, the order of `pairs()`
        txt2img = np.repeat(np.arange(len(mentions)), [len(per_image) for per_image in mentions])
        out[split] = SplitMatches(counts=caption_match_counts(flat, made[split].attributes), txt2img=txt2img,
                                  n_mentions=np.array([len(m) for m in flat]),
                                  n_objects=np.array([len(a) for a in made[split].attributes]))
    return out


def oracle_report(preset, n_train: int, n_val: int, n_test: int, seed: int = 0,
                  splits=("val", "test")) -> dict[str, dict]:
    """Per split: {"literal": the literal oracle's R@1/5/10 and R-mean (percent), "bayes": the Bayes
    oracle's, "ambiguity": `ambiguity_stats`, "n_images", "n_captions"}."""
    drop_object = get_knobs(preset).drop_object
    out = {}
    for split, m in split_matches(preset, n_train, n_val, n_test, seed, splits).items():
        out[split] = {"literal": oracle_recall(m.matches, m.txt2img),
                      "bayes": bayes_oracle_recall(m.counts, m.n_mentions, m.n_objects, drop_object,
                                                              m.txt2img),
                      "ambiguity": ambiguity_stats(m.matches, m.txt2img),
                      "n_images": int(m.counts.shape[1]), "n_captions": int(m.counts.shape[0])}
    return out


def itm_label_noise(run_dir, which: str = "stage1-best", batches: int = 200, device: str = "cpu") -> dict:
    """The share (percent) of ITM negative pairs whose caption is true of the negative image, on `batches` training
    batches of the run (evenly spaced over its stage-1 steps, rows and augmentation as the trainer draws them).

    Keys: "hard_text_to_image" (for each caption, the image `sample_itm_negatives` draws), "hard_image_to_text"
    (for each image, the caption drawn), "hard" (both), "train_ambiguity" (`ambiguity_stats` of the training
    captions), "itm_noise_floor" (`rebalance_ref.ambiguity.itm_noise_floor` of the hard share: the ITM loss
    that label noise alone forces), "stage1_itm_loss" (the run's last logged stage-1 ITM loss), and "random_*" the
    expected shares for a negative drawn
    uniformly among the batch's rows the sampler allows (other images; not an exact-duplicate caption when the run
    treats those as positives). The student is the run's `which` checkpoint in eval mode, throughout: the trainer's
    student changed along the way, so the hard shares are those of the trained student's sampler."""
    import torch

    from rebalance_torch.checkpoint import load_student
    from rebalance_torch.objective import itm_positive_pairs, sample_itm_negatives
    from rebalance_torch.prepare import prepare
    from rebalance_torch.schedule import batch_rows, step_seed

    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ValueError(f"batches must be an int >= 1, got {batches!r}")
    student, config, tokenizer = load_student(run_dir, which=which, map_location=device)
    if config.data_dir is not None:
        raise ValueError(f"run {run_dir} trained on a data folder; the label noise needs the shapes world's "
                         "caption mentions (a run made with --preset)")
    train = split_matches(config.preset, config.n_train, config.n_val, config.n_test, config.seed, ("train",))
    matches, txt2img = train["train"].matches, train["train"].txt2img        # (C, N) train captions vs images
    prepared = prepare(config, teachers=False, tokenizer=tokenizer, log=lambda _: None)
    rows_total = len(prepared.dataset)
    if rows_total != len(txt2img):
        raise ValueError(f"run {run_dir}: {rows_total} training captions, but the world makes {len(txt2img)}")
    steps = np.unique(np.linspace(0, max(config.stage1_steps - 1, 0), batches).round().astype(int))
    hard, rand = {"t2i": [], "i2t": []}, {"t2i": [], "i2t": []}
    with torch.no_grad():
        for step in steps:
            torch.manual_seed(step_seed(config.seed, 1, int(step)))
            rows = batch_rows(config.seed, 1, int(step), rows_total, config.batch_size)
            batch = prepared.collate([prepared.dataset[int(r)] for r in rows])
            _, h_v = student.encode_image(batch.images.to(device))
            _, h_t = student.encode_text(batch.ids.to(device), batch.mask.to(device))
            v, t = student.project_image(h_v), student.project_text(h_t)
            idx = batch.image_idx.to(device)
            same = itm_positive_pairs(idx, batch.ids.to(device) if config.itm_duplicates == "positive" else None)
            neg_image, neg_text = sample_itm_negatives(v, t, idx, student.temp, None, same)
            r, i = batch.row_idx.numpy(), idx.cpu().numpy()                  # (B,) caption rows, their images
            true_pair = matches[r[:, None], i[None, :]]                      # (B, B) caption of row a true of image b
            allowed = ~same.cpu().numpy()                                    # (B, B) pairs the sampler may draw
            hard["t2i"].append(true_pair[np.arange(len(r)), neg_image.cpu().numpy()])
            hard["i2t"].append(true_pair[neg_text.cpu().numpy(), np.arange(len(r))])
            for key, pairs in (("t2i", true_pair), ("i2t", true_pair.T)):   # rows: the anchor, columns: candidates
                ok = allowed.sum(1) > 0
                rand[key].append((pairs & allowed).sum(1)[ok] / allowed.sum(1)[ok])
    from rebalance.report import last_itm_loss
    from rebalance_torch.runlog import read_metrics

    pct = {k: 100.0 * float(np.mean(np.concatenate(v))) for k, v in hard.items()}
    rnd = {k: 100.0 * float(np.mean(np.concatenate(v))) for k, v in rand.items()}
    return {"run": str(run_dir), "which": which, "preset": config.preset, "batches": int(len(steps)),
            "train_ambiguity": ambiguity_stats(matches, txt2img),
            "batch_size": int(config.batch_size), "itm_duplicates": config.itm_duplicates,
            "hard_text_to_image": pct["t2i"], "hard_image_to_text": pct["i2t"],
            "hard": (pct["t2i"] + pct["i2t"]) / 2.0,
            "random_text_to_image": rnd["t2i"], "random_image_to_text": rnd["i2t"],
            "random": (rnd["t2i"] + rnd["i2t"]) / 2.0,
            "itm_noise_floor": itm_noise_floor((pct["t2i"] + pct["i2t"]) / 200.0),
            "stage1_itm_loss": last_itm_loss(read_metrics(run_dir), 1)}


def recall_of_oracle(test_metrics: dict, oracle: dict) -> dict[str, float]:
    """A run's test cross-modal R-mean (`cos_r_mean`, and `itm_r_mean` when present, from its `eval.json`) and
    each as a percentage of the literal and the Bayes oracle's R-mean (`oracle_report(...)["test"]`)."""
    out = {}
    for key in ("cos_r_mean", "itm_r_mean"):
        if key in test_metrics:
            out[key] = float(test_metrics[key])
            for name in ("literal", "bayes"):
                out[f"{key}_of_{name}"] = 100.0 * out[key] / oracle[name]["r_mean"]
    return out
