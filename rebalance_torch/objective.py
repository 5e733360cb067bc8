"""The training objective: the stage-2 parameters that are not the student's, ITM's hard negatives, and the
weighted sum of the loss terms on one batch.

One step on a batch of B caption rows (image index `idx`, teacher features `a`, `b`):

    v, t      = student's unit embeddings                                  (B, D)
    ITC       = itc(v, t, τ, idx), or with `itc_momentum` (stage 2) ALBEF's momentum distillation:
                momentum_itc against the EMA model's features [batch; queue] and targets α q + (1−α) g
    ITM       = itm(head(fuse(3B pairs)), labels): B positives, and per text one negative image and per image one
                negative text drawn (no grad) from softmax(sim/τ) + 1e-5 with same-image entries set to 0
    IIC, TTC  = single_contrast(v, W_sv a, τ', idx), single_contrast(t, W_st b, τ', idx), τ' = τ (official,
                `teacher_tau="shared"`) or the objective's own learnable τ' ("own", initialised from stage 1's τ)
    KD/KDI/KDT= structure terms of the student relation (fused z, or the projected [v, t]) vs λ·S(b) + (1−λ)·S(a)
    MoE aux   = with a mixture-of-experts student: importance, load, local and global routing entropy
                (rebalance_torch.moe.auxiliary_terms), by name like every other term
    GCL       = gcl(W_v h_v, W_t h_t, τ, idx): the raw projections, fused inside (docs/gcl.md)
    M2MIX     = m2_mix(v, t, λ_mix, mix_tau, idx), λ_mix ~ Beta(mix_beta, mix_beta) drawn once per step from
                torch's RNG, which the trainer reseeds every step (docs/mixup.md)
    L         = Σ weight[name] · term[name], a teacher term's weight times `teacher_scale` and, early in stage 2,
                times the ramp factor; during the teacher warm-up the student (v, t, z and the ITC τ) enters the
                teacher terms detached (their gradients reach W_sv, W_st, λ, τ2 and τ' only). Both come from
                `schedule.teacher_phase`.

The terms come back as detached 0-d tensors: turning them into Python numbers waits for the device, so the
trainer does that only on the steps it logs (`as_numbers`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rebalance_torch import gcl, losses, mixup, moe
from rebalance_torch.config import LOSS_NAMES, STRUCTURE_TERMS, TEACHER_TERMS, TrainConfig
from rebalance_torch.distributed import DistContext
from rebalance_torch.models import Student
from rebalance_torch.momentum import MomentumDistill


class Objective(nn.Module):
    """Stage-2 parameters that are not the student's: teacher projections W_sv, W_st (IIC/TTC), the blend λ,
    the relation temperature τ2, with `teacher_tau="own"` IIC/TTC's own temperature τ', and for "wasserstein" the
    official teacher MLPs (feature → 2W → GELU → W). Build it with `build_objective`, which reads every size from
    the student, the config and the teachers (and τ' from the student's τ)."""

    def __init__(self, config: TrainConfig, embed_dim: int, relation_width: int, image_dim: int, text_dim: int):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed + 1)
            self.image_teacher_proj = nn.Linear(image_dim, embed_dim)
            self.text_teacher_proj = nn.Linear(text_dim, embed_dim)
            self.wasserstein = config.distance == "wasserstein"
            if self.wasserstein:
                self.image_wd_mlp = nn.Sequential(nn.Linear(image_dim, 2 * relation_width), nn.GELU(),
                                                  nn.Linear(2 * relation_width, relation_width))
                self.text_wd_mlp = nn.Sequential(nn.Linear(text_dim, 2 * relation_width), nn.GELU(),
                                                 nn.Linear(2 * relation_width, relation_width))
        self.sigmoid = config.lam == "sigmoid"
        lam0 = math.log(config.lam_init / (1 - config.lam_init)) if self.sigmoid else config.lam_init
        self.lam_raw = nn.Parameter(torch.tensor(float(lam0)))
        if config.tau2 == "learnable":
            self.tau2_value = nn.Parameter(torch.tensor(float(config.tau2_init)))
        else:
            self.register_buffer("tau2_value", torch.tensor(float(config.tau2_init)))
        # τ' of IIC/TTC when they do not share the ITC τ; `build_objective` sets it to the student's τ
        self.teacher_temp = nn.Parameter(torch.tensor(0.07)) if config.teacher_tau == "own" else None
        self.momentum: MomentumDistill | None = None   # set by `build_objective` when itc_momentum is on

    def lam(self) -> torch.Tensor:
        """λ, the weight of the text teacher's relations in the blend (sigmoid-bounded or unconstrained)."""
        return torch.sigmoid(self.lam_raw) if self.sigmoid else self.lam_raw

    def tau2(self) -> torch.Tensor:
        return self.tau2_value

    def teacher_tau(self, tau: torch.Tensor) -> torch.Tensor:
        """The temperature of IIC and TTC: the objective's own τ' if it has one, else the ITC τ given."""
        return self.teacher_temp if self.teacher_temp is not None else tau

    def clamp_(self, tau_clamp: list | None) -> None:
        """Clamp τ' into `tau_clamp` (after each update, as the trainer clamps τ); nothing without τ'."""
        if tau_clamp is not None and self.teacher_temp is not None:
            with torch.no_grad():
                self.teacher_temp.clamp_(*tau_clamp)


def relation_width(student: Student, config: TrainConfig) -> int:
    """The width of the student's relation features: the fused [CLS] z (text width) or the projected [v, t]."""
    return student.config.text_width if config.student_relation == "fused" else 2 * student.config.embed_dim


def build_objective(student: Student, config: TrainConfig, image_dim: int, text_dim: int) -> Objective:
    """The stage-2 objective of `student` under `config`, for teacher features of widths `image_dim`, `text_dim`.
    With `itc_momentum`, it holds the momentum-distillation state, its EMA copy taken from `student` as it is now
    (stage 1's weights, when the trainer builds it)."""
    objective = Objective(config, student.config.embed_dim, relation_width(student, config), image_dim, text_dim)
    if objective.teacher_temp is not None:   # τ' starts where stage 1 left τ
        with torch.no_grad():
            objective.teacher_temp.copy_(student.temp.detach())
    if config.itc_momentum is not None:
        objective.momentum = MomentumDistill(student, config.itc_momentum, config.itc_queue, config.itc_alpha,
                                             round(config.itc_alpha_warmup * config.stage2_steps), config.seed + 2)
    return objective


def itm_positive_pairs(idx: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
    """(B, B) bool: rows i, j that the ITM sampler must not pair as a negative — the same image, and (`ids` (B, L)
    given) the same caption token ids: a caption written for image j that is word for word a caption of image i
    describes image i too (37 % of text-poor caption rows share their text with another image's caption). A
    deviation from the official code, which samples such pairs as negatives (`TrainConfig.itm_duplicates`)."""
    same = idx[:, None] == idx[None, :]
    if ids is not None:
        same = same | (ids[:, None, :] == ids[None, :, :]).all(dim=-1)
    return same


def sample_itm_negatives(v: torch.Tensor, t: torch.Tensor, idx: torch.Tensor, tau: torch.Tensor,
                         generator: torch.Generator | None = None, same: torch.Tensor | None = None):
    """Hard negatives (no grad): for each text j an image drawn from softmax_k(t_j·v_k/τ) + 1e-5, for each image i
    a text drawn from softmax_k(v_i·t_k/τ) + 1e-5, entries of the same image set to 0 (or, given, the entries of the
    (B, B) bool `same`, e.g. `itm_positive_pairs`). Returns (negative image row per text (B,), negative text row
    per image (B,)). A row with no other image (a batch of one image) falls back to uniform over the batch. Draws
    from `generator`, or torch's global RNG when None."""
    with torch.no_grad():
        sim = v @ t.T / tau                                  # (B, B) image i vs text j
        same = idx[:, None] == idx[None, :] if same is None else same  # (B, B)
        draws = []
        for w in (F.softmax(sim.T.float(), dim=1), F.softmax(sim.float(), dim=1)):   # text→image, image→text
            w = (w + 1e-5).masked_fill(same, 0.0)
            empty = w.sum(1, keepdim=True) == 0                                       # (B, 1), no host read
            draws.append(torch.multinomial(torch.where(empty, torch.ones_like(w), w), 1,
                                           generator=generator).squeeze(1))
    return draws[0], draws[1]


def compute_losses(student: Student, objective: Objective | None, config: TrainConfig, stage: int,
                   images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, idx: torch.Tensor,
                   image_feats: torch.Tensor | None = None, text_feats: torch.Tensor | None = None,
                   dist_ctx: DistContext | None = None, itm_generator: torch.Generator | None = None,
                   teacher_phase: tuple[bool, float] = (False, 1.0)):
    """The weighted objective of `stage` on one batch: `(total, terms)`, terms a dict of detached 0-d tensors
    (every term with a non-zero weight, "loss", τ, and λ, τ2 in stage 2, and "teacher_tau" with an own τ'). Terms
    with weight 0 are not computed.

    Several processes (`dist_ctx`, see rebalance_torch.distributed; None = one process): the inputs are this
    process's rows of the global batch; ITC, IIC, TTC and the structure terms see the batch gathered from every
    process (differentiably); ITM scores this process's pairs, with negatives from its own rows
    (`config.itm_negatives="local"`, official) or from the gathered batch ("global"). `itm_generator`: the ITM
    negatives' random stream (torch's global RNG when None)."""
    ctx = dist_ctx or DistContext()   # at world size 1 its gather and shard are the identity
    gather = ctx.gather
    w = {name: config.weight(name, stage) for name in LOSS_NAMES}
    detached, factor = teacher_phase
    if stage == 2 and factor != 1.0:   # a Python number: no read from the device
        w.update({name: w[name] * factor for name in TEACHER_TERMS})
    tau = student.temp
    image_tokens, h_v = student.encode_image(images)
    text_tokens, h_t = student.encode_text(ids, mask)
    v, t = student.project_image(h_v), student.project_text(h_t)
    v_all, t_all, idx_all = gather(v), gather(t), gather(idx)   # the global batch: (B, D), (B, D), (B,)
    terms: dict[str, torch.Tensor] = {}
    mod = objective.momentum if stage == 2 and objective is not None else None
    alpha = mod.alpha().detach() if w["itc"] and mod is not None else None   # this step's α, before it moves
    if w["itc"] and mod is not None:
        terms["itc"] = mod.itc(student, images, ids, mask, v_all, t_all, idx_all, tau, gather)
    elif w["itc"]:
        terms["itc"] = losses.itc(v_all, t_all, tau, idx_all)
    if student.config.moe:   # always collected, so that the routers' records never pile up
        terms.update(moe.auxiliary_terms(student, w, config.moe_min_experts))
    need_z = stage == 2 and config.student_relation == "fused" and any(w[k] for k in STRUCTURE_TERMS)
    z = None
    if w["itm"] or need_z:
        z = _matching(student, config, terms, w["itm"] > 0, images.shape[0], v, t, idx, ids, v_all, t_all, idx_all,
                      image_tokens, text_tokens, mask, tau, ctx, itm_generator)
    other, extra = _other_methods(student, config, w, h_v, h_t, v_all, t_all, idx_all, tau, gather)
    terms.update(other)
    if stage == 2 and objective is not None:
        teacher_tau = objective.teacher_tau(tau)
        if detached:   # the teacher warm-up: these terms train the objective's parameters, not the student (nor τ)
            v_all, t_all, z = v_all.detach(), t_all.detach(), z.detach() if z is not None else None
            teacher_tau = teacher_tau.detach() if teacher_tau is tau else teacher_tau
        terms.update(_teacher_terms(objective, config, w, v_all, t_all, idx_all, teacher_tau, z, image_feats,
                                    text_feats, gather))
    total = sum(w[k] * value for k, value in terms.items())
    logged = {k: value.detach() for k, value in terms.items()}
    logged["loss"] = total.detach()
    # the parameters as they were for this step's loss (clones: the optimiser updates the parameters in place)
    logged["tau"] = tau.detach().clone()
    logged.update(extra)
    if stage == 2 and objective is not None:
        logged["lam"] = objective.lam().detach().clone()
        logged["tau2"] = objective.tau2().detach().clone()
        if objective.teacher_temp is not None:
            logged["teacher_tau"] = objective.teacher_temp.detach().clone()
    if alpha is not None:
        logged["itc_alpha"] = alpha
    return total, logged


def _matching(student, config, terms, with_itm, b, v, t, idx, ids, v_all, t_all, idx_all, image_tokens,
              text_tokens, mask, tau, ctx, itm_generator) -> torch.Tensor:
    """Fuse the positive pairs (and, for ITM, the 2B negatives), add "itm" to `terms`, return the positives' z."""
    if with_itm and config.itm_negatives == "global":
        # negatives drawn over the global batch (the same draws on every process); each keeps its rows' draws
        # and takes the negatives' tokens from the gathered batch (token lengths padded to the longest)
        same = itm_positive_pairs(idx_all, ctx.gather(ids, 1) if config.itm_duplicates == "positive" else None)
        neg_image, neg_text = (ctx.shard(n) for n in sample_itm_negatives(v_all, t_all, idx_all, tau,
                                                                                itm_generator, same))
        image_pool = ctx.gather(image_tokens)
        text_pool, mask_pool = ctx.gather(text_tokens, 1), ctx.gather(mask, 1)
        text_tokens, mask = ctx.shard(text_pool), ctx.shard(mask_pool)
    elif with_itm:
        same = itm_positive_pairs(idx, ids if config.itm_duplicates == "positive" else None)
        neg_image, neg_text = sample_itm_negatives(v, t, idx, tau, itm_generator, same)
        image_pool, text_pool, mask_pool = image_tokens, text_tokens, mask
    if with_itm:
        text_all = torch.cat([text_tokens, text_tokens, text_pool[neg_text]])
        mask_all = torch.cat([mask, mask, mask_pool[neg_text]])
        image_all = torch.cat([image_tokens, image_pool[neg_image], image_tokens])
    else:
        text_all, mask_all, image_all = text_tokens, mask, image_tokens
    fused_cls = student.fuse(text_all, mask_all, image_all)[:, 0]   # (3B or B, W_t)
    if with_itm:
        labels = torch.cat([torch.ones(b, dtype=torch.int64, device=v.device),
                            torch.zeros(2 * b, dtype=torch.int64, device=v.device)])
        terms["itm"] = losses.itm(student.itm_head(fused_cls), labels)
    return fused_cls[:b]                                            # the positive pairs' z


def _other_methods(student, config, w, h_v, h_t, v_all, t_all, idx_all, tau, gather):
    """GCL and m²-Mix when weighted: `(terms, extra logged values)`. GCL reads the raw projections W_v h_v, W_t h_t
    (the student's `v`, `t` before n(.)); m²-Mix draws its λ here, after ITM's negatives, so that adding it changes
    no other random draw; the drawn λ is logged as "mix_lam"."""
    terms: dict[str, torch.Tensor] = {}
    extra: dict[str, torch.Tensor] = {}
    if w["gcl"]:
        terms["gcl"] = gcl.gcl(gather(student.vision_proj(h_v)), gather(student.text_proj(h_t)), tau, idx_all)
    if w["m2mix"]:
        beta = torch.tensor(config.mix_beta, dtype=torch.float64)
        # on the host (no device read): the config already checked beta, so the distribution need not
        lam = torch.distributions.Beta(beta, beta, validate_args=False).sample().to(device=v_all.device,
                                                                              dtype=v_all.dtype)
        terms["m2mix"] = mixup.m2_mix(v_all, t_all, lam, config.mix_tau, idx_all)
        extra["mix_lam"] = lam.detach()
    return terms, extra


def _teacher_terms(objective, config, w, v_all, t_all, idx_all, tau, z, image_feats, text_feats,
                   gather) -> dict[str, torch.Tensor]:
    """IIC, TTC (at temperature `tau`: the ITC τ or the objective's own) and the structure terms with a non-zero
    weight, over the global batch."""
    terms: dict[str, torch.Tensor] = {}
    if w["iic"]:
        terms["iic"] = losses.single_contrast(v_all, gather(objective.image_teacher_proj(image_feats)), tau, idx_all)
    if w["ttc"]:
        terms["ttc"] = losses.single_contrast(t_all, gather(objective.text_teacher_proj(text_feats)), tau, idx_all)
    if any(w[k] for k in STRUCTURE_TERMS):
        student_rel = gather(z) if config.student_relation == "fused" else torch.cat([v_all, t_all], dim=1)
        if config.distance == "wasserstein":
            a, bt = gather(objective.image_wd_mlp(image_feats)), gather(objective.text_wd_mlp(text_feats))
            # official D = 1 − t tᵀ (not detached); clamped at 0 against rounding for identical captions
            row_weights = (1.0 - t_all @ t_all.T).clamp_min(0.0)
        else:
            a, bt, row_weights = gather(image_feats), gather(text_feats), None
        structure = losses.structure_terms(student_rel, a, bt, objective.lam(), objective.tau2(),
                                           distance=config.distance, row_weights=row_weights)
        terms.update({k: structure[k] for k in STRUCTURE_TERMS if w[k]})
    return terms


def term_gradients(student: Student, objective: Objective | None, config: TrainConfig, stage: int,
                   images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, idx: torch.Tensor,
                   image_feats: torch.Tensor | None = None, text_feats: torch.Tensor | None = None,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Each weighted term's gradient on the student's parameters (τ aside), flattened: a (P,) vector per term with
    a non-zero weight in `stage`. How hard, and in which direction, each term pulls the student (a diagnostic:
    one backward pass per term; torch's RNG reseeded with `seed` before each, so every term sees the same ITM
    negatives). A term that does not reach the student (KDI, KDT) gives zeros."""
    params = [p for name, p in student.named_parameters() if name != "temp"]
    field = "stage1_weights" if stage == 1 else "weights"
    out: dict[str, torch.Tensor] = {}
    for name in LOSS_NAMES:
        if not config.weight(name, stage):
            continue
        alone = config.replace(**{field: {name: getattr(config, field)[name]}})
        torch.manual_seed(seed)
        loss, _ = compute_losses(student, objective, alone, stage, images, ids, mask, idx, image_feats, text_feats)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        out[name] = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                               for g, p in zip(grads, params, strict=True)])
    return out


def as_numbers(terms: dict[str, torch.Tensor], dist_ctx: DistContext | None = None) -> dict[str, float]:
    """The logged terms as Python floats (one read from the device for all of them); with several processes the
    loss terms are averaged over processes (the global terms agree already; ITM becomes the mean), while τ, λ, τ2
    are the same everywhere."""
    keys = list(terms)
    values = torch.stack([terms[k].double() for k in keys]).tolist() if keys else []  # exact for float32 too
    numbers = dict(zip(keys, values, strict=True))
    if dist_ctx is not None and dist_ctx.active:
        shared = ("tau", "lam", "tau2", "teacher_tau", "itc_alpha")
        numbers = {**dist_ctx.mean({k: v for k, v in numbers.items() if k not in shared}),
                   **{k: v for k, v in numbers.items() if k in shared}}
    return numbers

