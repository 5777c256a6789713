"""Fusion networks trained on cached embeddings: MedMIX and the baselines, as a registry of architectures."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch.nn as nn

from medmix.io import MedmixError
from medmix.methods import MethodSpec
from medmix.model.baselines import EarlyConcat, LateFusion, Linear
from medmix.model.imputation import ImputeKNN, ImputeMean, ImputeToken, ImputeZero
from medmix.model.fusion import create_fusion, list_fusions, register_fusion
from medmix.model.medmix import FusionConfig, MedMIX
from medmix.model.registry import list_models, model_class, register_model

__all__ = ["FusionConfig", "MedMIX", "EarlyConcat", "LateFusion", "Linear", "ImputeZero", "ImputeMean",
           "ImputeToken", "ImputeKNN", "create_model", "fusion_config",
           "create_fusion", "list_fusions", "register_fusion", "register_model", "list_models", "TRAINER_KEYS", "weight_columns"]

# keys of the config's `train` block that the trainer reads; every other key is a FusionConfig field
TRAINER_KEYS = frozenset({"lr", "weight_decay", "batch_size", "max_epochs", "patience", "pos_weight", "bootstrap",
                          "calibrate", "teacher_schedule", "kd_warmup"})
_FUSION_KEYS = frozenset(f.name for f in dataclasses.fields(FusionConfig))


def fusion_config(method: MethodSpec, train, task: str = "binary") -> FusionConfig:
    """The FusionConfig of a method (medmix.methods) under the config's `train` block (a dict or
    medmix.config.TrainParams). A key that is neither a fusion nor a trainer setting is an error."""
    train = train.to_dict() if hasattr(train, "to_dict") else train
    unknown = sorted(set(train) - _FUSION_KEYS - TRAINER_KEYS)
    if unknown:
        raise MedmixError(f"train settings {unknown} are neither fusion ({sorted(_FUSION_KEYS)}) nor trainer "
                         f"({sorted(TRAINER_KEYS)}) settings")
    kw = {k: v for k, v in train.items() if k in _FUSION_KEYS}
    return FusionConfig(**kw, intra=method.intra, inter=method.inter, task=task)


def create_model(method: MethodSpec, dims: dict[str, list[int]], cfg: FusionConfig,
                 teacher_dims: dict[str, list[int]] | None = None, n_out: int = 1) -> nn.Module:
    """The network of a method: its registered architecture, with the teacher branch only if the
    method trains with one and `teacher_dims` is given (a deployed student never has one)."""
    return model_class(method.arch)(dims, cfg, n_out=n_out, teacher_dims=teacher_dims if method.teacher else None)


def weight_columns(out: dict, slugs: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Per-sample expert weights α (`alpha_<modality>_<encoder>`) and modality weights β (`beta_<modality>`)
    of a model's outputs, as prediction columns (models without weights give none)."""
    cols = {}
    for m, a in (out.get("alpha") or {}).items():
        for k, slug in enumerate(slugs[m]):
            cols[f"alpha_{m}_{slug}"] = a[:, k].float().cpu().numpy().astype(np.float64)
    if out.get("beta") is not None:
        for i, m in enumerate(slugs):
            cols[f"beta_{m}"] = out["beta"][:, i].float().cpu().numpy().astype(np.float64)
    return cols
