"""Seeds trained together: E copies of a network as one network whose every parameter has a
leading seed axis (a hand-batched ensemble), so one forward and one backward step all E seeds.

Layout: a batch holds the E seeds' rows one after another (seed-major, the same number per seed),
so every row-wise operation of a model works unchanged; only the layers that hold parameters
know E: a linear layer is one batched matmul (`torch.baddbmm`) over (E, rows per seed, features),
a layer norm normalises all rows at once and applies each seed's affine, dropout draws each
seed's noise from that seed's generator, and a module's own parameters (e.g. a modality embedding)
are read through `seed_param`. Nothing mixes rows of different seeds, so a seed's numbers do not
depend on which seeds share its ensemble (tested). Losses mix a batch's rows (means, in-batch
alignment): the trainer computes them per seed, inside `member(e)`, where every layer uses seed
e's parameters alone.

A module opts in with `seed_stackable = True` (its forward is row-wise and its own parameters are
read through `seed_param`); `stack_seeds` raises NotStackable for any other (attention, LSTM, a
fusion whose auxiliary loss mixes rows), and the trainer fits those seeds one after another.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

_member: int | None = None   # inside member(e): seed e's parameters alone
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.GELU, nn.Tanh, nn.ReLU, nn.Identity)


class NotStackable(TypeError):
    """A network that cannot be trained as a seed ensemble (it is fitted one seed at a time)."""


@contextmanager
def member(e: int):
    """Every seed-stacked layer uses seed e's parameters (and dropout generator) alone."""
    global _member
    prev, _member = _member, e
    try:
        yield
    finally:
        _member = prev


def seed_param(p: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A module's own parameter as its forward uses it. Not stacked: `p`. Stacked (E, *shape): inside
    member(e) p[e]; otherwise each seed's copy repeated over that seed's rows of `like` (seed-major)."""
    stacked = getattr(p, "_seed_stacked", False)
    if not stacked:
        return p
    if _member is not None:
        return p[_member]
    e = p.shape[0]
    n = like.shape[0] // e
    return p.unsqueeze(1).expand(e, n, *p.shape[1:]).reshape(e * n, *p.shape[1:])


def _wb(m: nn.Module):
    w, b = m.weight, m.bias
    if _member is not None:
        w = w[_member:_member + 1]
        b = None if b is None else b[_member:_member + 1]
    return w, b


class SeedLinear(nn.Module):
    """E linear layers: weight (E, out, in), bias (E, out); input rows seed-major."""

    def __init__(self, layers: list[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in layers]))
        self.bias = None if layers[0].bias is None else nn.Parameter(torch.stack([m.bias.detach() for m in layers]))

    def forward(self, x):
        w, b = _wb(self)
        xs = x.reshape(w.shape[0], -1, x.shape[-1])
        out = w.shape[1]
        if out == 1:   # one output (a gate's score): CPU bmm of one column takes a path that depends on E
            w = torch.cat([w, torch.zeros_like(w)], 1)
            b = None if b is None else torch.cat([b, torch.zeros_like(b)], 1)
        y = torch.bmm(xs, w.transpose(1, 2)) if b is None else torch.baddbmm(b.unsqueeze(1), xs, w.transpose(1, 2))
        return y[..., :out].reshape(*x.shape[:-1], out)


class SeedLayerNorm(nn.Module):
    """E layer norms over the last dimension: weight, bias (E, d)."""

    def __init__(self, layers: list[nn.LayerNorm]):
        super().__init__()
        if len(layers[0].normalized_shape) != 1 or not layers[0].elementwise_affine:
            raise NotStackable("LayerNorm over more than the last dimension, or without affine")
        self.eps = layers[0].eps
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in layers]))
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in layers]))

    def forward(self, x):
        w, b = _wb(self)
        h = F.layer_norm(x, x.shape[-1:], None, None, self.eps).reshape(w.shape[0], -1, x.shape[-1])
        return torch.addcmul(b.unsqueeze(1), h, w.unsqueeze(1)).reshape(x.shape)


class SeedDropout(nn.Module):
    """Dropout drawing each seed's noise from that seed's generator (`gens`, shared by the ensemble's
    dropout layers and set by the trainer): keep where U(0, 1) < 1 − p, scaled by 1 / (1 − p). Uniform
    draws and a compare cost half of CPU `bernoulli_` for the same distribution (136 vs 265 µs on a
    128 × 3 × 32 tensor, one thread, 2,000 calls each: `torch.rand(...) < 0.8` vs `bernoulli_(0.8)`)."""

    def __init__(self, p: float, gens: list):
        super().__init__()
        self.p, self.gens = p, gens

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        gens = self.gens if _member is None else [self.gens[_member]]
        if not gens:
            raise RuntimeError("a seed ensemble trains with one dropout generator per seed (none set)")
        n, q = x.shape[0] // len(gens), 1 - self.p
        keep = torch.cat([torch.rand((n, *x.shape[1:]), generator=g, device=x.device) < q for g in gens])
        return x * keep * (1 / q)


def stack_seeds(models: list[nn.Module]) -> nn.Module:
    """One network training the E `models` (same architecture, each initialised under its own seed)
    together; its `state_dict`'s tensors are the E models' stacked (`seed_state` takes one back out).
    Non-parameter attributes (settings, pos_weight) are the first model's. Raises NotStackable."""
    gens: list = []

    def convert(mods: list[nn.Module]) -> nn.Module:
        m0 = mods[0]
        if isinstance(m0, nn.Linear):
            return SeedLinear(mods)
        if isinstance(m0, nn.LayerNorm):
            return SeedLayerNorm(mods)
        if isinstance(m0, nn.Dropout):
            return SeedDropout(m0.p, gens)
        if not (isinstance(m0, _CONTAINERS) or getattr(type(m0), "seed_stackable", False)):
            raise NotStackable(f"{type(m0).__name__} is not row-wise with seed-stacked parameters")
        if any(True for _ in m0.buffers(recurse=False)):
            raise NotStackable(f"{type(m0).__name__} has buffers")
        new = copy.copy(m0)   # the settings shared; parameters and children replaced below
        new._parameters, new._modules, new._buffers = {}, {}, {}
        for name, p in m0.named_parameters(recurse=False):
            q = nn.Parameter(torch.stack([getattr(m, name).detach() for m in mods]))
            q._seed_stacked = True
            new._parameters[name] = q
        for name, child in m0.named_children():
            new._modules[name] = convert([getattr(m, name) for m in mods])
        return new

    ens = convert(models)
    ens._seed_gens = gens
    return ens


def seed_state(ens: nn.Module, e: int) -> dict:
    """Seed e's state dict (the keys and shapes of one of the stacked models), copied."""
    return {k: v[e].detach().clone() for k, v in ens.state_dict().items()}


def keep_seeds(ens: nn.Module, keep: list[int], opt=None) -> None:
    """Drop every seed not in `keep` (positions) from the ensemble, its dropout generators and an
    optimizer's state (medmix.train.FusedAdamW), in place: the seeds left train on unchanged."""
    idx = torch.tensor(keep, dtype=torch.long)
    for p in ens.parameters():
        old = p.data
        p.data = old[idx.to(old.device)].contiguous()
        if opt is not None and p in opt.state:
            st = opt.state[p]
            opt.state[p] = (st[0], st[1][idx.to(old.device)].contiguous(), st[2][idx.to(old.device)].contiguous())
    ens._seed_gens[:] = [ens._seed_gens[i] for i in keep]


def seed_chunk(x, e: int, n_seeds: int):
    """Seed e's rows of a model output (tensors with seed-major rows, in nested dicts and lists)."""
    if isinstance(x, torch.Tensor):
        n = x.shape[0] // n_seeds
        return x[e * n:(e + 1) * n]
    if isinstance(x, dict):
        return {k: seed_chunk(v, e, n_seeds) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(seed_chunk(v, e, n_seeds) for v in x)
    return x
