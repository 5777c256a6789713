"""Imputation baselines: an absent expert input is filled in, then early fusion (every expert
embedding concatenated → MLP). What MedMIX's masked fusion is compared against: it never imputes.

| method         | an absent expert input becomes                                                  |
| -------------- | ------------------------------------------------------------------------------- |
| `impute_zero`  | the raw embedding 0 (in the standardised inputs: −mean/sd of the train split)  |
| `impute_mean`  | the train-split mean (0 in the standardised inputs)                             |
| `impute_token` | a learned vector per expert (a missing-modality embedding), started at the mean |
| `impute_knn`   | that expert's mean embedding over the `impute_k` training patients nearest in   |
|                | the experts both have (M3Care's patient-similarity imputation, on the cache)    |

Every imputer trains under MedMIX's expert and modality dropout (`expert_dropout`,
`modality_dropout`, medmix.model.medmix.train_mask), so a dropped input is imputed in training as a
missing one is at test time; `early_concat` is mean imputation without that dropout.

Fitted on the train split only: the trainer calls `fit_inputs(X, M, rows, norm)` with `rows` the
train split's row indices, and what is fitted is a buffer of the model (saved in model.pt and in
its bundle; the knn bank holds up to `impute_bank` training patients' embeddings, so an
`impute_knn` bundle carries training data: share it only where the training data may go).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from medmix.model.losses import task_loss
from medmix.model.medmix import FusionConfig, mlp, train_mask
from medmix.model.registry import register_model


class _Imputer(nn.Module):
    """Early fusion on imputed inputs. Subclasses define `fill` (the values an absent input takes)
    and, if they fit anything, `fit_inputs`."""
    # the fusion settings an imputer reads (medmix.tune searches only these; the trainer's always)
    reads = frozenset({"hidden", "dropout", "modality_dropout", "expert_dropout"})
    train_dropout = True    # MedMIX's expert and modality dropout in training (early_concat: none)

    def __init__(self, dims: dict[str, list[int]], cfg: FusionConfig, n_out: int = 1, teacher_dims=None):
        super().__init__()
        self.mods = list(dims)
        self.flat = [(m, k, d) for m in self.mods for k, d in enumerate(dims[m])]  # every expert, in input order
        self.cfg, self.kind = cfg, cfg.task
        self.pos_weight = None
        self.net = mlp(sum(d for _, _, d in self.flat), cfg.hidden, n_out, cfg.dropout)

    def fit_inputs(self, X: dict, M: dict, rows: torch.Tensor, norm: dict) -> None:
        """Fit the imputation on the training rows `rows` of the standardised inputs X, M
        (`norm`: m -> [(mean, sd)] of the train split). Nothing to fit by default."""

    def fill(self, x: list[torch.Tensor], present: torch.Tensor, batch: dict, train: bool) -> list[torch.Tensor]:
        """Per expert (the `flat` order), (B, d) values for the absent rows; `x` is zero where absent,
        `present` (B, J) says which inputs each row has."""
        raise NotImplementedError

    def forward(self, batch: dict, train: bool = False, gen=None) -> dict:
        mask = train_mask(batch["mask"], self.mods, self.cfg, gen) if train and self.train_dropout else batch["mask"]
        present = torch.cat([mask[m] for m in self.mods], 1)                      # (B, J)
        # an absent input's (garbage) value never takes part: neither in the fill nor in the MLP
        x = [batch["x"][m][k].masked_fill(~present[:, j:j + 1], 0.0) for j, (m, k, _) in enumerate(self.flat)]
        fills = self.fill(x, present, batch, train)
        cols = [torch.where(present[:, j:j + 1], x[j], f) for j, f in enumerate(fills)]
        return {"logit": self.net(torch.cat(cols, 1))}

    def loss(self, out, y):
        task = task_loss(self.kind, out["logit"], y, pos_weight=self.pos_weight)
        return task, {"task": task.item()}


@register_model("impute_zero")
class ImputeZero(_Imputer):
    """An absent input is the raw zero vector: −mean/sd of the train split in standardised units."""

    def __init__(self, dims, cfg, n_out=1, teacher_dims=None):
        super().__init__(dims, cfg, n_out, teacher_dims)
        for j, (_, _, d) in enumerate(self.flat):
            self.register_buffer(f"zero{j}", torch.zeros(d))

    def fit_inputs(self, X, M, rows, norm):
        for j, (m, k, _) in enumerate(self.flat):
            mu, sd = norm[m][k]
            getattr(self, f"zero{j}").copy_(-mu / sd)

    def fill(self, x, present, batch, train):
        return [getattr(self, f"zero{j}").expand(len(present), -1) for j in range(len(self.flat))]


@register_model("impute_mean")
class ImputeMean(_Imputer):
    """An absent input is the train-split mean (0 in the standardised inputs)."""

    def fill(self, x, present, batch, train):
        return [torch.zeros_like(e) for e in x]


@register_model("impute_token")
class ImputeToken(_Imputer):
    """An absent input is a learned vector of its expert (trained with the MLP; started at the mean)."""

    def __init__(self, dims, cfg, n_out=1, teacher_dims=None):
        super().__init__(dims, cfg, n_out, teacher_dims)
        self.token = nn.ParameterList(nn.Parameter(torch.zeros(d)) for _, _, d in self.flat)

    def fill(self, x, present, batch, train):
        return [t.expand(len(present), -1) for t in self.token]


@register_model("impute_knn")
class ImputeKNN(_Imputer):
    """An absent input is the mean of that expert's embedding over the `impute_k` training patients
    nearest to the sample, among those who have it.

    The idea of M3Care (Zhang et al., KDD 2022): impute a missing modality from similar patients in
    a latent space. Kept: patient-similarity imputation with the similarity measured on the
    modalities the sample has. Adapted to frozen embeddings: the space is the cached, standardised
    expert embeddings (not a learned one), the distance is the mean squared difference over the
    embedding dimensions both patients have, the neighbours are a bank of up to `impute_bank`
    training patients (a seeded random subset, fixed at fit), and the imputed value is their plain
    mean (M3Care learns similarity-weighted aggregation). A training sample is never its own
    neighbour; with no usable neighbour the fill is the train mean (0)."""
    reads = _Imputer.reads | {"impute_k", "impute_bank"}
    _BANK = ("bank_mask", "bank_rows")
    _CHUNK = 1024  # query rows per distance block (bounds memory at inference on a whole cohort)

    def __init__(self, dims, cfg, n_out=1, teacher_dims=None):
        super().__init__(dims, cfg, n_out, teacher_dims)
        for j, (_, _, d) in enumerate(self.flat):
            self.register_buffer(f"bank{j}", torch.zeros(0, d))
        self.register_buffer("bank_mask", torch.zeros(0, len(self.flat), dtype=torch.bool))
        self.register_buffer("bank_rows", torch.zeros(0, dtype=torch.long))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the bank's size is the fit's: take the stored shapes before the (strict) copy
        for name in [f"bank{j}" for j in range(len(self.flat))] + list(self._BANK):
            if prefix + name in state_dict:
                stored = state_dict[prefix + name]
                setattr(self, name, torch.empty(stored.shape, dtype=stored.dtype, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def fit_inputs(self, X, M, rows, norm):
        present = torch.cat([M[m] for m in self.mods], 1)[rows]
        rows = rows[present.any(1)]
        if len(rows) > self.cfg.impute_bank:  # seeded by the trainer's torch.manual_seed(seed)
            rows = rows[torch.randperm(len(rows), device=rows.device)[:self.cfg.impute_bank]].sort().values
        for j, (m, k, _) in enumerate(self.flat):
            setattr(self, f"bank{j}", X[m][k][rows].detach().clone())
        self.bank_mask = torch.cat([M[m] for m in self.mods], 1)[rows].clone()
        self.bank_rows = rows.clone()

    @torch.no_grad()
    def fill(self, x, present, batch, train):
        own = batch.get("row") if train else None   # training rows: leave the sample itself out
        parts = [self._fill([e[s:s + self._CHUNK] for e in x], present[s:s + self._CHUNK],
                            None if own is None else own[s:s + self._CHUNK])
                 for s in range(0, len(present), self._CHUNK)]
        return [torch.cat([p[j] for p in parts]) for j in range(len(self.flat))]

    def _fill(self, x, present, own):
        banks = [getattr(self, f"bank{j}") for j in range(len(self.flat))]
        bmask = self.bank_mask
        if len(bmask) == 0:
            return [torch.zeros_like(e) for e in x]
        with torch.autocast(x[0].device.type, enabled=False):  # distances in fp32 (bf16 cancels badly)
            return self._nearest_fill([q.float() for q in x], present, own, [b.float() for b in banks], bmask)

    def _nearest_fill(self, x, present, own, banks, bmask):
        a, ab = present.float(), bmask.float()                                 # (B, J), (N, J)
        dims = torch.tensor([q.shape[1] for q in x], dtype=a.dtype, device=a.device)
        qq = torch.stack([(q * q).sum(1) for q in x], 1)                        # (B, J)
        bb = torch.stack([(b * b).sum(1) for b in banks], 1)                    # (N, J)
        # Σ_j over the experts both have of ‖q_j − b_j‖² (q, b are 0 where absent, so the cross
        # terms need no mask) and of the dimensions compared: a few matmuls, not J passes over (B, N)
        num = (a * qq) @ ab.T + a @ (ab * bb).T
        for q, b in zip(x, banks):
            num.addmm_(q, b.T, alpha=-2.0)
        den = (a * dims) @ ab.T
        dist = torch.where(den > 0, num.clamp_min(0) / den.clamp_min(1), torch.full_like(num, float("inf")))
        if own is not None:
            dist = dist.masked_fill(own[:, None] == self.bank_rows[None, :], float("inf"))
        out, nearest = [], {}
        for j, b in enumerate(banks):
            cand = bmask[:, j]
            k = min(self.cfg.impute_k, int(cand.sum()))
            if k == 0:
                out.append(torch.zeros_like(x[j]))
                continue
            key = next((c for c in nearest if torch.equal(nearest[c][0], cand)), j)  # experts of a modality
            if key not in nearest:                                                  # share one search
                nearest[key] = (cand, dist.masked_fill(~cand[None, :], float("inf")).topk(k, dim=1, largest=False))
            near, idx = nearest[key][1]
            w = torch.isfinite(near).to(b.dtype)                                # (B, k)
            out.append((w.unsqueeze(-1) * b[idx]).sum(1) / w.sum(1, keepdim=True).clamp_min(1))
        return out
