"""What a run checks about itself beyond the loss: whether the teachers beat the stage-1 student where it counts,
and the relation matrices (teachers, blend, student) that structure distillation compares."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rebalance_torch import evaluate as ev
from rebalance_torch.config import TrainConfig
from rebalance_torch.data import Collate
from rebalance_torch.losses import structure_terms
from rebalance_torch.models import Student
from rebalance_torch.prepare import Prepared
from rebalance_torch.relations import cosine_relation, fuse_teachers


def teacher_check(student: Student, prepared: Prepared, device: str) -> dict:
    """Single-modal NDCG@10 on the validation split: each teacher vs the stage-1 student (a teacher can only help
    where its structure beats the student's; docs/training.md)."""
    feats = prepared.teachers
    if feats is None or feats.val_image is None or feats.val_text is None:
        return {}
    rel = prepared.relevance("val")
    emb = ev.encode_split(student, prepared.splits["val"], prepared.tokenizer, device=device, keep_tokens=False)
    teacher = ev.single_modal_ndcg(feats.val_image, feats.val_text, rel, ks=(10,))
    mine = ev.single_modal_ndcg(emb.v, emb.t, rel, ks=(10,))
    return {key: {"teacher": teacher[key], "student": mine[key], "teacher_stronger": teacher[key] > mine[key]}
            for key in teacher}


# Scene attributes a relation figure can sort its items by (of each scene's first object; shapes world only).
SORT_ATTRIBUTES = ("shape", "colour", "size", "count")


@dataclass
class Relations:
    """The relation matrices structure distillation compares, on `n` training items (one caption per image):
    image teacher `s_i`, text teacher `s_t`, their blend `e` at `lam`, the student's `s_f` — each (n, n), cosine
    / τ2 — with the KD term between `s_f` and `e` (`kd`, by `distance`), and per item the scene attribute the
    items are sorted by (`labels`, e.g. "circle"; empty when the data has no attributes)."""

    s_i: np.ndarray
    s_t: np.ndarray
    e: np.ndarray
    s_f: np.ndarray
    lam: float
    tau2: float
    kd: float
    distance: str
    student_relation: str
    labels: list[str]
    sort_by: str


def _attribute_order(prepared: Prepared, images: np.ndarray, sort_by: str) -> tuple[np.ndarray, list[str]]:
    """A stable order of `images` (training image indices) by `sort_by` of each scene, and each one's label."""
    if sort_by not in SORT_ATTRIBUTES:
        raise ValueError(f"sort_by must be one of {', '.join(SORT_ATTRIBUTES)}, got {sort_by!r}")
    attributes = prepared.splits["train"].attributes
    if attributes is None:  # a data folder: no true attributes, keep the data order
        return np.arange(len(images)), []
    labels = [str(len(attributes[i])) + " obj" if sort_by == "count" else str(attributes[i][0][sort_by])
              for i in images]
    order = np.array(sorted(range(len(images)), key=lambda k: (labels[k], k)), dtype=np.int64)
    return order, [labels[k] for k in order]


def relation_matrices(student: Student, prepared: Prepared, config: TrainConfig, lam: float, tau2: float,
                      n: int = 32, sort_by: str = "shape") -> Relations | None:
    """Relation matrices (cosine / τ2, as in training) on the first `n` training images (one caption each), sorted
    by a scene attribute (`SORT_ATTRIBUTES`, of each scene's first object) so that scenes alike sit in blocks.
    None without teacher features. KD uses the run's distance (mae for "wasserstein", whose teacher MLPs live in
    the objective, not here)."""
    feats = prepared.teachers
    if feats is None:
        return None
    idx = prepared.dataset.image_idx
    rows = torch.nonzero(torch.cat([torch.tensor([True]), idx[1:] != idx[:-1]])).squeeze(1)[:n]  # first captions
    order, labels = _attribute_order(prepared, idx[rows].numpy(), sort_by)
    rows = rows[torch.from_numpy(order)]
    tau2_t, lam_t = torch.tensor(float(tau2)), torch.tensor(float(lam))
    distance = "mae" if config.distance == "wasserstein" else config.distance
    images, ids, mask, _, _ = Collate()([prepared.dataset[int(r)] for r in rows])
    device = config.device
    was_training = student.training
    with torch.no_grad():
        student.eval()
        image_tokens, h_v = student.encode_image(images.to(device))
        text_tokens, h_t = student.encode_text(ids.to(device), mask.to(device))
        if config.student_relation == "fused":
            rel = student.fuse(text_tokens, mask.to(device), image_tokens)[:, 0]
        else:
            rel = torch.cat([student.project_image(h_v), student.project_text(h_t)], dim=1)
        rel = rel.float().cpu()
        a = torch.from_numpy(feats.train_image[rows.numpy()])
        b = torch.from_numpy(feats.train_text[rows.numpy()])
        s_i, s_t = cosine_relation(a, tau2_t), cosine_relation(b, tau2_t)
        blend = fuse_teachers(s_t, s_i, lam_t)
        s_f = cosine_relation(rel, tau2_t)
        kd = structure_terms(rel, a, b, lam_t, tau2_t, distance=distance)["kd"]
    student.train(was_training)
    return Relations(s_i=s_i.numpy(), s_t=s_t.numpy(), e=blend.numpy(), s_f=s_f.numpy(), lam=float(lam),
                     tau2=float(tau2), kd=float(kd), distance=distance, student_relation=config.student_relation,
                     labels=labels, sort_by=sort_by)
