"""Fusion modules as a registry: `register_fusion` / `list_fusions` / `create_fusion`.

Two levels (docs/design.md "The method"):
- intra: expert tokens of one modality (B, K, d) + expert mask (B, K) → z (B, d), α (B, K)
- inter: modality tokens (B, M, d) + availability (B, M) → u (B, d), β (B, M)
Missing tokens are masked, never imputed (except `concat`, the zero-filling ablation).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

_FUSIONS: dict[tuple[str, str], type[nn.Module]] = {}


def register_fusion(level: str, name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    if level not in ("intra", "inter"):
        raise ValueError(f"fusion level '{level}': expected intra or inter")

    def deco(cls):
        if (level, name) in _FUSIONS:
            raise ValueError(f"{level} fusion '{name}' is registered already ({_FUSIONS[(level, name)].__qualname__})")
        _FUSIONS[(level, name)] = cls
        return cls
    return deco


def list_fusions(level: str | None = None) -> list[tuple[str, str]]:
    return sorted(k for k in _FUSIONS if level is None or k[0] == level)


def create_fusion(level: str, name: str, d: int, n_tokens: int) -> nn.Module:
    try:
        return _FUSIONS[(level, name)](d, n_tokens)
    except KeyError:
        raise ValueError(f"unknown {level} fusion '{name}' (known: {[n for lv, n in list_fusions(level)]})") from None


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the True entries of `mask`; rows with no True entry give all zeros."""
    w = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return torch.nan_to_num(w, nan=0.0) * mask


def _uniform(mask: torch.Tensor) -> torch.Tensor:
    m = mask.float()
    return m / m.sum(-1, keepdim=True).clamp(min=1)


class _Gate(nn.Module):
    """score_i = wᵀ tanh(U t_i)."""

    def __init__(self, d: int):
        super().__init__()
        self.U = nn.Linear(d, d)
        self.w = nn.Linear(d, 1, bias=False)

    def forward(self, t):  # (B, T, d) -> (B, T)
        return self.w(torch.tanh(self.U(t))).squeeze(-1)


@register_fusion("intra", "gated")
class IntraGated(nn.Module):
    def __init__(self, d, k):
        super().__init__()
        self.gate = _Gate(d)

    def forward(self, h, mask):  # h (B, K, d), mask (B, K)
        alpha = masked_softmax(self.gate(h), mask)
        return (alpha.unsqueeze(-1) * h).sum(1), alpha


@register_fusion("intra", "mean")
class IntraMean(nn.Module):
    def __init__(self, d, k):
        super().__init__()

    def forward(self, h, mask):
        alpha = _uniform(mask)
        return (alpha.unsqueeze(-1) * h).sum(1), alpha


@register_fusion("intra", "attention")
class IntraAttention(nn.Module):
    """Self-attention across the expert tokens, then a masked mean."""

    def __init__(self, d, k):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, num_heads=1, batch_first=True)
        self.norm = nn.LayerNorm(d)

    def forward(self, h, mask):
        safe = mask.clone()
        safe[~mask.any(1), 0] = True  # rows without experts: attend to a dummy, output is masked anyway
        a, _ = self.attn(h, h, h, key_padding_mask=~safe, need_weights=False)
        h = self.norm(h + a)
        alpha = _uniform(mask)
        return (alpha.unsqueeze(-1) * h).sum(1), alpha


@register_fusion("intra", "concat")
class IntraConcat(nn.Module):
    def __init__(self, d, k):
        super().__init__()
        self.proj = nn.Linear(k * d, d)

    def forward(self, h, mask):
        z = self.proj((h * mask.unsqueeze(-1)).flatten(1))
        return z * mask.any(1, keepdim=True), _uniform(mask)


@register_fusion("inter", "gated")
class InterGated(nn.Module):
    """β = softmax over available modalities of vᵀ tanh(Q (z_m + e_m)); u = Σ β_m z_m."""

    def __init__(self, d, m):
        super().__init__()
        self.emb = nn.Parameter(torch.zeros(m, d))
        self.gate = _Gate(d)

    def forward(self, z, avail):  # z (B, M, d), avail (B, M)
        beta = masked_softmax(self.gate(z + self.emb), avail)  # scores of the modality tokens z_m + e_m
        return (beta.unsqueeze(-1) * z).sum(1), beta


@register_fusion("inter", "reliability")
class InterReliability(nn.Module):
    """Gated fusion weighted by each modality's predicted reliability: β = softmax over available
    modalities of (vᵀ tanh(Q (z_m + e_m)) + log c_m), u = Σ β_m z_m, where c_m = σ(MLP(z_m)) ∈ (0, 1)
    estimates how likely the model's head is right from modality m alone (its true-class probability,
    Corbière et al. 2019; as in Han et al. 2022's confidence-aware multimodal fusion). MedMIX trains
    c_m toward that probability and the head on each modality alone (medmix.model.medmix.reliability_loss)."""

    def __init__(self, d, m):
        super().__init__()
        self.emb = nn.Parameter(torch.zeros(m, d))
        self.gate = _Gate(d)
        self.conf = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))

    def confidence(self, z):  # (B, M, d) -> (B, M) in (0, 1)
        return torch.sigmoid(self.conf(z).squeeze(-1))

    def forward(self, z, avail):
        score = self.gate(z + self.emb) + torch.log(self.confidence(z).clamp_min(1e-6))
        beta = masked_softmax(score, avail)
        return (beta.unsqueeze(-1) * z).sum(1), beta


@register_fusion("inter", "mean")
class InterMean(nn.Module):
    def __init__(self, d, m):
        super().__init__()

    def forward(self, z, avail):
        beta = _uniform(avail)
        return (beta.unsqueeze(-1) * z).sum(1), beta


@register_fusion("inter", "concat")
class InterConcat(nn.Module):
    """Zero-filled missing modalities, concatenated and projected (the ablation)."""

    def __init__(self, d, m):
        super().__init__()
        self.proj = nn.Linear(m * d, d)

    def forward(self, z, avail):
        return self.proj((z * avail.unsqueeze(-1)).flatten(1)), _uniform(avail)


@register_fusion("inter", "transformer")
class InterTransformer(nn.Module):
    """CLS token + available modality tokens (key-padding mask for missing ones)."""

    def __init__(self, d, m):
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.emb = nn.Parameter(torch.zeros(m, d))
        heads = 4 if d % 4 == 0 else 1
        self.layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=2 * d, dropout=0.0, batch_first=True)

    def forward(self, z, avail):
        b = z.shape[0]
        tokens = torch.cat([self.cls.expand(b, -1, -1), z + self.emb], 1)
        pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=z.device), ~avail], 1)
        return self.layer(tokens, src_key_padding_mask=pad)[:, 0], _uniform(avail)
