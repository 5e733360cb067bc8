"""What a run checks about itself beyond the loss: whether the teachers beat the stage-1 student where it counts,
and the relation matrices (teachers, blend, student) that structure distillation compares."""

from __future__ import annotations

import torch

from rebalance_torch import evaluate as ev
from rebalance_torch.config import TrainConfig
from rebalance_torch.data import Collate
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


def relation_matrices(student: Student, prepared: Prepared, config: TrainConfig, lam: float, tau2: float,
                      n: int = 32) -> dict:
    """Relation matrices (cosine / τ2, as in training) on `n` training images (one caption each): image teacher
    S_I, text teacher S_T, their blend at `lam`, and the student's S_F."""
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
