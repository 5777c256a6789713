"""Task losses and teacher→student distillation for every task type (docs/design.md "The method", items 5-6).

Logits are (B, n_out). Targets follow medmix.tasks: binary (B,), multilabel (B, L),
multiclass (B,) class index, survival (B, 2) = (time, event); NaN marks an unknown label, which
contributes nothing. `rows` (B,) bool restricts the loss further (e.g. samples with a teacher).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _zero(logit: torch.Tensor) -> torch.Tensor:
    return logit.sum() * 0.0  # keeps the graph (and the device/dtype) when nothing contributes


def cox_loss(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood (Breslow ties), averaged over events."""
    if not bool((event > 0).any()):
        return _zero(risk)
    order = torch.argsort(time, descending=True, stable=True)
    r, t, e = risk[order].float(), time[order], event[order]
    lse = torch.logcumsumexp(r, 0)                       # log Σ exp(r_j) over t_j >= t_i (sorted so far)
    # tied times: every sample of a tie group shares the risk set of its last member
    last = torch.searchsorted(-t.contiguous(), -t.contiguous(), right=True) - 1
    return -((r - lse[last]) * e).sum() / e.sum()


def task_loss(kind: str, logit: torch.Tensor, y: torch.Tensor, rows: torch.Tensor | None = None,
              pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    if rows is not None:
        logit, y = logit[rows], y[rows]
    if kind == "multilabel":
        known = ~torch.isnan(y)
        if not bool(known.any()):
            return _zero(logit)
        per = F.binary_cross_entropy_with_logits(logit.float(), torch.nan_to_num(y), reduction="none",
                                                 pos_weight=pos_weight)
        return (per * known).sum() / known.sum()
    if kind == "survival":
        ok = ~torch.isnan(y).any(1)
        return cox_loss(logit[ok, 0], y[ok, 0], y[ok, 1])
    ok = ~torch.isnan(y)
    if not bool(ok.any()):
        return _zero(logit)
    if kind == "multiclass":
        return F.cross_entropy(logit[ok].float(), y[ok].long())
    return F.binary_cross_entropy_with_logits(logit[ok, 0].float(), y[ok], pos_weight=pos_weight)


def kd_loss(kind: str, student: torch.Tensor, teacher: torch.Tensor, tau: float, rows: torch.Tensor,
            weight: torch.Tensor | None = None) -> torch.Tensor:
    """Logit distillation with temperature τ (Hinton et al. 2015), scaled by τ², on `rows`.
    Survival has no class probabilities: the student's risk score regresses on the teacher's.
    `weight`: per sample (B,) or, for multilabel, per sample and label (B, L), multiplying each
    term before the mean (medmix.model.losses.confidence)."""
    if not bool(rows.any()):
        return _zero(student)
    s, t = student[rows].float(), teacher[rows].detach().float()
    if kind == "survival":
        return F.mse_loss(s, t)
    if weight is None:  # the plain means
        if kind == "multiclass":
            return F.kl_div(F.log_softmax(s / tau, -1), F.softmax(t / tau, -1), reduction="batchmean") * tau ** 2
        return F.binary_cross_entropy_with_logits(s / tau, torch.sigmoid(t / tau)) * tau ** 2
    if kind == "multiclass":
        per = F.kl_div(F.log_softmax(s / tau, -1), F.softmax(t / tau, -1), reduction="none").sum(-1)
    else:
        per = F.binary_cross_entropy_with_logits(s / tau, torch.sigmoid(t / tau), reduction="none")
    w = weight[rows].float()
    w = w if w.dim() == per.dim() else w.reshape(len(w), *([1] * (per.dim() - 1)))
    return (per * w).mean() * tau ** 2


def confidence(kind: str, teacher: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The teacher's probability of the true label (detached): per sample (binary, multiclass) or per
    sample and label (multilabel), 1 where the label is unknown; survival 1. Distillation weighted
    by it trusts the teacher where it is right (confidence-weighted KD)."""
    t = teacher.detach().float()
    if kind == "survival":
        return t.new_ones(len(t))
    if kind == "multiclass":
        ok = ~torch.isnan(y)
        p = torch.softmax(t, -1).gather(1, torch.nan_to_num(y).long().clamp(0, t.shape[1] - 1).unsqueeze(1))[:, 0]
        return torch.where(ok, p, torch.ones_like(p))
    p = torch.sigmoid(t if kind == "multilabel" else t[:, 0])
    yy = y.float()
    c = torch.where(yy > 0.5, p, 1 - p)
    return torch.where(torch.isnan(yy), torch.ones_like(c), c)


def combine_late(kind: str, logits: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """Late fusion: (B, M, n_out) per-modality outputs → (B, n_out), averaging the available
    modalities' probabilities (risk scores for survival) and returning logits of the mean."""
    w = avail.float() / avail.float().sum(1, keepdim=True).clamp(min=1)          # (B, M)
    w = w.unsqueeze(-1)
    if kind == "survival":
        return (logits * w).sum(1)
    if kind == "multiclass":
        p = (torch.softmax(logits, -1) * w).sum(1).clamp_min(1e-8)
        return torch.log(p)
    p = (torch.sigmoid(logits) * w).sum(1).clamp(1e-6, 1 - 1e-6)
    return torch.logit(p)
