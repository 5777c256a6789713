"""Baselines that share MedMIX's inputs: early concatenation and late fusion."""

from __future__ import annotations

import torch
import torch.nn as nn

from medmix.model.medmix import FusionConfig, _masked_bce, mlp


def _zero_fill(x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """The definition of these baselines: an absent expert's input is 0 (the train mean)."""
    return x.masked_fill(~present.unsqueeze(-1), 0.0)


class EarlyConcat(nn.Module):
    """All expert embeddings concatenated (missing zero-filled, i.e. the train mean) → MLP."""

    def __init__(self, dims: dict[str, list[int]], cfg: FusionConfig, n_out: int = 1):
        super().__init__()
        self.mods = list(dims)
        self.net = mlp(sum(sum(v) for v in dims.values()), cfg.hidden, n_out, cfg.dropout)

    def forward(self, batch: dict, train: bool = False, gen=None) -> dict:
        x = torch.cat([_zero_fill(e, batch["mask"][m][:, k]) for m in self.mods
                       for k, e in enumerate(batch["x"][m])], 1)  # (B, Σ d_mk)
        return {"logit": self.net(x).squeeze(-1)}

    def loss(self, out, y):
        lab = ~torch.isnan(y)
        task = _masked_bce(out["logit"], torch.nan_to_num(y), lab)
        return task, {"task": task.item()}


class LateFusion(nn.Module):
    """One head per modality on its experts; prediction = mean of the available modalities' probabilities."""

    def __init__(self, dims: dict[str, list[int]], cfg: FusionConfig, n_out: int = 1):
        super().__init__()
        self.mods = list(dims)
        self.heads = nn.ModuleDict({m: mlp(sum(dims[m]), cfg.hidden, n_out, cfg.dropout) for m in self.mods})

    def forward(self, batch: dict, train: bool = False, gen=None) -> dict:
        logits = torch.stack([self.heads[m](torch.cat([_zero_fill(e, batch["mask"][m][:, k])
                                                       for k, e in enumerate(batch["x"][m])], 1)).squeeze(-1)
                              for m in self.mods], 1)
        avail = torch.stack([batch["mask"][m].any(1) for m in self.mods], 1)  # (B, M)
        w = avail.float() / avail.float().sum(1, keepdim=True).clamp(min=1)
        p = (torch.sigmoid(logits).masked_fill(~avail, 0.0) * w).sum(1).clamp(1e-6, 1 - 1e-6)
        return {"logit": torch.logit(p), "m_logits": logits, "avail": avail, "beta": w}

    def loss(self, out, y):
        lab = ~torch.isnan(y)
        yl = torch.nan_to_num(y)
        terms = [_masked_bce(out["m_logits"][:, i], yl, lab & out["avail"][:, i]) for i in range(len(self.mods))]
        task = torch.stack(terms).sum()
        return task, {"task": task.item()}
