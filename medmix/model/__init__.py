"""Fusion networks trained on cached embeddings: MedMIX and the baselines."""

from __future__ import annotations

import dataclasses

import torch.nn as nn

from medmix.model.baselines import EarlyConcat, LateFusion
from medmix.model.fusion import create_fusion, list_fusions, register_fusion
from medmix.model.medmix import FusionConfig, MedMIX

__all__ = ["FusionConfig", "MedMIX", "EarlyConcat", "LateFusion", "create_model", "fusion_config",
           "create_fusion", "list_fusions", "register_fusion"]


def fusion_config(method: dict, train: dict) -> FusionConfig:
    """FusionConfig from a method spec (medmix.methods) and the config's `train` block."""
    names = {f.name for f in dataclasses.fields(FusionConfig)}
    kw = {k: v for k, v in train.items() if k in names}
    kw.update({k: v for k, v in method.items() if k in names})
    return FusionConfig(**kw)


def create_model(method: dict, dims: dict[str, list[int]], cfg: FusionConfig,
                 teacher_dims: dict[str, list[int]] | None = None, n_out: int = 1) -> nn.Module:
    arch = method["arch"]
    if arch == "medmix":
        return MedMIX(dims, cfg, n_out=n_out, teacher_dims=teacher_dims if method.get("teacher") else None)
    if arch == "early_concat":
        return EarlyConcat(dims, cfg, n_out=n_out)
    if arch == "late_fusion":
        return LateFusion(dims, cfg, n_out=n_out)
    raise ValueError(f"unknown architecture '{arch}'")
