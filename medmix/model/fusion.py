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

from medmix.model.ensemble import seed_param

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
    seed_stackable = True   # row-wise (medmix.model.ensemble)

    def __init__(self, d: int):
        super().__init__()
        self.U = nn.Linear(d, d)
        self.w = nn.Linear(d, 1, bias=False)

    def forward(self, t):  # (B, T, d) -> (B, T)
        return self.w(torch.tanh(self.U(t))).squeeze(-1)


@register_fusion("intra", "gated")
class IntraGated(nn.Module):
    seed_stackable = True   # row-wise (medmix.model.ensemble)
    def __init__(self, d, k):
        super().__init__()
        self.gate = _Gate(d)

    def forward(self, h, mask):  # h (B, K, d), mask (B, K)
        alpha = masked_softmax(self.gate(h), mask)
        return (alpha.unsqueeze(-1) * h).sum(1), alpha


@register_fusion("intra", "mean")
class IntraMean(nn.Module):
    seed_stackable = True   # row-wise (medmix.model.ensemble)
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
    seed_stackable = True   # row-wise (medmix.model.ensemble)
    def __init__(self, d, k):
        super().__init__()
        self.proj = nn.Linear(k * d, d)

    def forward(self, h, mask):
        z = self.proj((h * mask.unsqueeze(-1)).flatten(1))
        return z * mask.any(1, keepdim=True), _uniform(mask)


@register_fusion("inter", "gated")
class InterGated(nn.Module):
    """β = softmax over available modalities of vᵀ tanh(Q (z_m + e_m)); u = Σ β_m z_m."""
    seed_stackable = True

    def __init__(self, d, m):
        super().__init__()
        self.emb = nn.Parameter(torch.zeros(m, d))
        self.gate = _Gate(d)

    def forward(self, z, avail):  # z (B, M, d), avail (B, M)
        beta = masked_softmax(self.gate(z + seed_param(self.emb, z)), avail)  # scores of the modality tokens z_m + e_m
        return (beta.unsqueeze(-1) * z).sum(1), beta


@register_fusion("inter", "reliability")
class InterReliability(nn.Module):
    """Gated fusion weighted by each modality's predicted reliability: β = softmax over available
    modalities of (vᵀ tanh(Q (z_m + e_m)) + log c_m), u = Σ β_m z_m, where c_m = σ(MLP(z_m)) ∈ (0, 1)
    estimates how likely the model's head is right from modality m alone (its true-class probability,
    Corbière et al. 2019; as in Han et al. 2022's confidence-aware multimodal fusion). MedMIX trains
    c_m toward that probability and the head on each modality alone (medmix.model.medmix.reliability_loss)."""
    seed_stackable = True

    def __init__(self, d, m):
        super().__init__()
        self.emb = nn.Parameter(torch.zeros(m, d))
        self.gate = _Gate(d)
        self.conf = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))

    def confidence(self, z):  # (B, M, d) -> (B, M) in (0, 1)
        return torch.sigmoid(self.conf(z).squeeze(-1))

    def forward(self, z, avail):
        score = self.gate(z + seed_param(self.emb, z)) + torch.log(self.confidence(z).clamp_min(1e-6))
        beta = masked_softmax(score, avail)
        return (beta.unsqueeze(-1) * z).sum(1), beta


@register_fusion("inter", "mean")
class InterMean(nn.Module):
    seed_stackable = True   # row-wise (medmix.model.ensemble)
    def __init__(self, d, m):
        super().__init__()

    def forward(self, z, avail):
        beta = _uniform(avail)
        return (beta.unsqueeze(-1) * z).sum(1), beta


@register_fusion("inter", "concat")
class InterConcat(nn.Module):
    """Zero-filled missing modalities, concatenated and projected (the ablation)."""
    seed_stackable = True

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


@register_fusion("inter", "lstm")
class InterLSTM(nn.Module):
    """An LSTM over the available modality tokens, in the dataset's modality order; u = its last
    hidden state. A missing modality is skipped: the sequence is shorter.

    MedFuse (Hayat et al., MLHC 2022) fuses EHR and CXR features with an LSTM and, for a sample
    without a CXR, feeds the EHR token alone. Kept: the LSTM over per-modality tokens with missing
    ones left out of the sequence. Adapted: the tokens are each modality's fused frozen-expert
    embedding plus a learned modality embedding (MedFuse fine-tunes one encoder per modality), over
    every modality of the dataset, not only EHR and CXR. β is uniform over the available modalities
    (an LSTM has no per-modality weight)."""

    def __init__(self, d, m):
        super().__init__()
        self.emb = nn.Parameter(torch.zeros(m, d))
        self.lstm = nn.LSTM(d, d, batch_first=True)

    def forward(self, z, avail):
        b, m, d = z.shape
        pos = torch.arange(m, device=z.device)
        order = torch.argsort((~avail).long() * m + pos, dim=1)             # available first, in order
        tok = (z.masked_fill(~avail.unsqueeze(-1), 0.0) + self.emb).gather(1, order.unsqueeze(-1).expand(-1, -1, d))
        n = avail.sum(1)
        packed = nn.utils.rnn.pack_padded_sequence(tok, n.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        return h[-1] * (n > 0).unsqueeze(-1).to(h.dtype), _uniform(avail)


@register_fusion("inter", "moe")
class InterMoE(nn.Module):
    """A sparse mixture of experts over the available modality tokens: a router scores E = 4
    feed-forward experts per token, the top 2 process it (their router probabilities renormalised),
    a residual adds the token back, and u is the mean over the available modalities. Missing
    modalities are never routed. `aux` (after each forward) is the Switch-Transformer
    load-balancing loss E·Σ_e f_e P_e over the available tokens (≥ 1, 1 when balanced), added by
    MedMIX's loss with weight `lambda_aux`.

    Flex-MoE (Yun et al., NeurIPS 2024) and FuseMoE (Han et al., NeurIPS 2024) route modality
    tokens through sparse experts and handle missing modalities by what they route. Kept: per-token
    top-k routing over FFN experts, missing modalities excluded, a load-balancing loss. Adapted:
    the tokens are each modality's fused frozen-expert embedding; Flex-MoE's missing-modality bank
    and its generalised/specialised expert training, and FuseMoE's per-modality routers and Laplace
    gating are not kept. Every expert is computed densely and weighted by the sparse gate (E is
    small): the same output as sparse dispatch."""
    n_experts, top_k = 4, 2

    def __init__(self, d, m):
        super().__init__()
        self.emb = nn.Parameter(torch.zeros(m, d))
        self.router = nn.Linear(d, self.n_experts)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
                                     for _ in range(self.n_experts))
        self.aux = None

    def route(self, t):
        """(gate (B, M, E): the top-k experts' renormalised weights, 0 elsewhere; router
        probabilities (B, M, E); the chosen experts (B, M, k))."""
        probs = torch.softmax(self.router(t), -1)
        top, idx = probs.topk(self.top_k, -1)
        return torch.zeros_like(probs).scatter(-1, idx, top / top.sum(-1, keepdim=True)), probs, idx

    def forward(self, z, avail):
        t = z.masked_fill(~avail.unsqueeze(-1), 0.0) + self.emb                  # (B, M, d)
        gate, probs, idx = self.route(t)
        out = t + sum(gate[..., e:e + 1] * f(t) for e, f in enumerate(self.experts))
        beta = _uniform(avail)
        a = avail.unsqueeze(-1).to(probs.dtype)
        n = a.sum().clamp(min=1)
        frac = (nn.functional.one_hot(idx[..., 0], self.n_experts).to(probs.dtype) * a).sum((0, 1)) / n
        self.aux = self.n_experts * (frac * (probs * a).sum((0, 1)) / n).sum()
        return (beta.unsqueeze(-1) * out).sum(1), beta


def _ffn(d: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))


@register_fusion("inter", "shaspec")
class InterShaSpec(nn.Module):
    """Shared and specific features per modality; a missing modality's feature is the mean of the
    available modalities' shared features; u = a projection of every modality's feature.

    ShaSpec (Wang et al., CVPR 2023): one shared encoder for all modalities and one specific encoder
    per modality; an available modality's feature is its shared feature plus a residual composed
    from [shared; specific] (one composition layer for all modalities); a missing modality's
    feature is generated from the available ones' shared features; a modality classifier on the
    specific features (the domain classification objective) keeps them modality-specific. Kept:
    all of that, with the averaging variant for the missing feature; `aux` is the classifier's
    cross-entropy over the available tokens. Adapted: the encoders are MLPs on each modality's
    fused frozen-expert embedding; the shared features' distribution alignment is not kept."""

    def __init__(self, d, m):
        super().__init__()
        self.shared = _ffn(d)
        self.specific = nn.ModuleList(_ffn(d) for _ in range(m))
        self.compose = nn.Linear(2 * d, d)
        self.domain = nn.Linear(d, m)
        self.out = nn.Linear(m * d, d)
        self.aux = None

    def features(self, z, avail):
        """(feature (B, M, d), shared (B, M, d), specific (B, M, d)) of masked tokens z."""
        z = z.masked_fill(~avail.unsqueeze(-1), 0.0)
        s = self.shared(z)
        p = torch.stack([f(z[:, i]) for i, f in enumerate(self.specific)], 1)
        a = avail.unsqueeze(-1).to(s.dtype)
        s_mean = (s * a).sum(1, keepdim=True) / a.sum(1, keepdim=True).clamp(min=1)
        f = torch.where(avail.unsqueeze(-1), s + self.compose(torch.cat([s, p], -1)), s_mean.expand_as(s))
        return f, s, p

    def forward(self, z, avail):
        f, _, p = self.features(z, avail)
        b, m, _ = p.shape
        if avail.any():
            target = torch.arange(m, device=z.device).expand(b, m)[avail]
            self.aux = nn.functional.cross_entropy(self.domain(p[avail]), target)
        else:
            self.aux = p.sum() * 0.0
        return self.out(f.flatten(1)) * avail.any(1, keepdim=True).to(f.dtype), _uniform(avail)


@register_fusion("inter", "drfuse")
class InterDrFuse(nn.Module):
    """A shared and a distinct representation per modality; the shared ones of the available
    modalities are averaged into one token; an attention over [shared, distinct of each available
    modality] gives u. β: the attention's weight on each modality's distinct token plus its share
    of the shared token, over the available modalities.

    DrFuse (Yao et al., AAAI 2024) disentangles shared and modality-distinct representations of EHR
    and CXR: the shared ones of the two modalities are aligned, the distinct ones kept apart from
    the shared, a missing modality's shared representation comes from the other, and a
    disease-aware attention fuses them. Kept: shared/distinct encoders per modality, the shared
    token from the available modalities only, an alignment term (1 − cosine between every pair of
    available modalities' shared representations; DrFuse uses a Jensen-Shannon divergence) and an
    orthogonality term (squared cosine of each modality's shared and distinct representation),
    their sum as `aux`, and a masked attention over the tokens. Adapted: every modality, not only
    EHR and CXR; one attention query for the task (DrFuse has one per disease label) and no
    disease-wise rank loss."""

    def __init__(self, d, m):
        super().__init__()
        self.shared = nn.ModuleList(_ffn(d) for _ in range(m))
        self.distinct = nn.ModuleList(_ffn(d) for _ in range(m))
        self.key = nn.Linear(d, d)
        self.query = nn.Parameter(torch.zeros(d))
        self.aux = None

    def forward(self, z, avail):
        z = z.masked_fill(~avail.unsqueeze(-1), 0.0)
        s = torch.stack([f(z[:, i]) for i, f in enumerate(self.shared)], 1)      # (B, M, d)
        p = torch.stack([f(z[:, i]) for i, f in enumerate(self.distinct)], 1)
        a = avail.unsqueeze(-1).to(s.dtype)
        s_common = (s * a).sum(1) / a.sum(1).clamp(min=1)                           # (B, d)
        tokens = torch.cat([s_common.unsqueeze(1), p], 1)                           # (B, 1 + M, d)
        mask = torch.cat([avail.any(1, keepdim=True), avail], 1)
        w = masked_softmax(torch.tanh(self.key(tokens)) @ self.query, mask)         # (B, 1 + M)
        u = (w.unsqueeze(-1) * tokens).sum(1)
        beta = w[:, 1:] + w[:, :1] * _uniform(avail)
        self.aux = self._aux(s, p, avail)
        return u, beta

    @staticmethod
    def _aux(s, p, avail):
        sn, pn = nn.functional.normalize(s, dim=-1), nn.functional.normalize(p, dim=-1)
        ortho = ((sn * pn).sum(-1) ** 2)[avail]
        pair = avail.unsqueeze(2) & avail.unsqueeze(1) & ~torch.eye(avail.shape[1], dtype=torch.bool,
                                                                   device=avail.device)  # (B, M, M)
        align = (1 - sn @ sn.transpose(1, 2))[pair]
        zero = s.sum() * 0.0
        return (ortho.mean() if ortho.numel() else zero) + (align.mean() if align.numel() else zero)
