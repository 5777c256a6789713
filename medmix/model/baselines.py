"""Baselines that share MedMIX's inputs: early concatenation, late fusion, and a linear model
(`logreg_concat`, fitted by scikit-learn in medmix.train, predicting like every other model)."""

from __future__ import annotations

import torch
import torch.nn as nn

from medmix.model.imputation import ImputeMean
from medmix.model.losses import combine_late, task_loss
from medmix.model.medmix import FusionConfig, mlp
from medmix.model.registry import register_model


def _zero_fill(x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """The definition of these baselines: an absent expert's input is 0 (the train mean)."""
    return x.masked_fill(~present.unsqueeze(-1), 0.0)


@register_model("early_concat")
class EarlyConcat(ImputeMean):
    """All expert embeddings concatenated (missing zero-filled, i.e. the train mean) → MLP: mean
    imputation without the imputers' train-time dropout (medmix.model.imputation)."""
    train_dropout = False
    reads = frozenset({"hidden", "dropout"})


@register_model("late_fusion")
class LateFusion(nn.Module):
    """One head per modality on its experts; prediction = mean of the available modalities'
    probabilities (risk scores for survival)."""

    def __init__(self, dims: dict[str, list[int]], cfg: FusionConfig, n_out: int = 1, teacher_dims=None):
        super().__init__()
        self.mods = list(dims)
        self.kind = cfg.task
        self.pos_weight = None
        self.heads = nn.ModuleDict({m: mlp(sum(dims[m]), cfg.hidden, n_out, cfg.dropout) for m in self.mods})

    def forward(self, batch: dict, train: bool = False, gen=None) -> dict:
        logits = torch.stack([self.heads[m](torch.cat([_zero_fill(e, batch["mask"][m][:, k])
                                                       for k, e in enumerate(batch["x"][m])], 1))
                              for m in self.mods], 1)                       # (B, M, n_out)
        avail = torch.stack([batch["mask"][m].any(1) for m in self.mods], 1)  # (B, M)
        w = avail.float() / avail.float().sum(1, keepdim=True).clamp(min=1)
        return {"logit": combine_late(self.kind, logits, avail), "m_logits": logits, "avail": avail, "beta": w}

    def loss(self, out, y):
        terms = [task_loss(self.kind, out["m_logits"][:, i], y, rows=out["avail"][:, i], pos_weight=self.pos_weight)
                 for i in range(len(self.mods))]
        task = torch.stack(terms).sum()
        return task, {"task": task.item()}


@register_model("logreg")
class Linear(nn.Module):
    """Logits = (every expert embedding concatenated, zero-filled) @ coefᵀ + intercept. Not trained by
    gradient: medmix.train fits it (logistic regression; a linear Cox model for survival) and loads
    the fit into `coef` (n_out, Σ d_mk) and `intercept` (n_out,)."""
    fitted = True

    def __init__(self, dims: dict[str, list[int]], cfg: FusionConfig, n_out: int = 1, teacher_dims=None):
        super().__init__()
        self.mods = list(dims)
        d = sum(sum(v) for v in dims.values())
        self.coef = nn.Parameter(torch.zeros(n_out, d), requires_grad=False)
        self.intercept = nn.Parameter(torch.zeros(n_out), requires_grad=False)

    def forward(self, batch: dict, train: bool = False, gen=None) -> dict:
        x = torch.cat([_zero_fill(e, batch["mask"][m][:, k]) for m in self.mods
                       for k, e in enumerate(batch["x"][m])], 1)  # (B, Σ d_mk)
        return {"logit": x @ self.coef.T + self.intercept}
