"""The model architectures a method can name (`MethodSpec.arch`): `register_model` / `list_models`."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

_MODELS: dict[str, type[nn.Module]] = {}


def register_model(arch: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator. The class takes (dims, cfg: FusionConfig, n_out=1, teacher_dims=None), its
    forward(batch, train=False, gen=None) returns at least {"logit"}, and (unless `fitted`) it has
    loss(out, y) -> (loss, parts)."""
    def deco(cls):
        if arch in _MODELS:
            raise ValueError(f"model architecture '{arch}' is registered already ({_MODELS[arch].__qualname__})")
        _MODELS[arch] = cls
        return cls
    return deco


def list_models() -> list[str]:
    return sorted(_MODELS)


def model_class(arch: str) -> type[nn.Module]:
    try:
        return _MODELS[arch]
    except KeyError:
        raise ValueError(f"unknown model architecture '{arch}' (known: {', '.join(list_models())})") from None
