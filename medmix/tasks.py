"""Prediction tasks: what a cohort's label columns mean, and how predictions are stored.

A cohort declares its tasks in cohort.json (medmix.data.cohort): binary, multilabel,
multiclass or survival. A `Task` turns the label columns into a target array, tells the heads
how many outputs they need, turns head outputs into predictions, and names the prediction
columns of predictions.parquet:

| type       | target y            | outputs | prediction p          | columns                       |
| ---------- | ------------------- | ------- | --------------------- | ----------------------------- |
| binary     | (N,) 0/1/NaN        | 1       | (N,) probability      | y, prob                       |
| multilabel | (N, L) 0/1/NaN      | L       | (N, L) probabilities  | y__<label>, prob__<label>     |
| multiclass | (N,) class/NaN      | K       | (N, K) probabilities  | y, prob__<class>              |
| survival   | (N, 2) time, event  | 1       | (N,) risk (log hazard)| time, event, risk             |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from medmix.data import cohort as cohort_mod
from medmix.io import MedmixError


@dataclass(frozen=True)
class Task:
    name: str
    kind: str                      # binary | multilabel | multiclass | survival
    columns: tuple[str, ...]
    classes: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_spec(cls, name: str, spec: dict) -> "Task":
        return cls(name, spec["type"], tuple(spec["columns"]), tuple(spec.get("classes") or ()))

    def to_spec(self) -> dict:
        """The plain form runs and bundles store (`from_spec` reads it back)."""
        return {"name": self.name, "type": self.kind, "columns": list(self.columns), "classes": list(self.classes)}

    @classmethod
    def of_cohort(cls, path: str | Path, name: str, cohort: pl.DataFrame | None = None) -> "Task":
        declared = cohort_mod.tasks(path, cohort)
        if name not in declared:
            raise MedmixError(f"{path}: the cohort has no task '{name}' (its tasks: {', '.join(declared) or 'none'}; "
                              f"set the dataset's `task` in the config)")
        return cls.from_spec(name, declared[name])

    @property
    def labels(self) -> list[str]:
        """Names of the outputs: label names (multilabel), class names (multiclass), else the task."""
        if self.kind == "multilabel":
            return [c.split("__", 1)[1] if "__" in c else c[2:] for c in self.columns]
        if self.kind == "multiclass":
            return list(self.classes)
        return [self.name]

    @property
    def n_out(self) -> int:
        return len(self.labels) if self.kind in ("multilabel", "multiclass") else 1

    def targets(self, cohort: pl.DataFrame) -> np.ndarray:
        """Label columns as float with NaN for unknown (shapes in the module docstring)."""
        cols = [cohort[c].cast(pl.Float64).fill_null(float("nan")).to_numpy() for c in self.columns]
        if self.kind in ("multilabel", "survival"):
            return np.stack(cols, 1)
        return cols[0]

    def labelled(self, y: np.ndarray) -> np.ndarray:
        """Rows that can be used for training (any known label entry)."""
        return ~np.isnan(y) if y.ndim == 1 else ~np.isnan(y).all(1) if self.kind == "multilabel" \
            else ~np.isnan(y).any(1)

    def predictions(self, logits: np.ndarray) -> np.ndarray:
        """Head outputs (N, n_out) → probabilities, or the risk score for survival."""
        logits = np.asarray(logits, dtype=np.float64).reshape(len(logits), -1)
        if self.kind == "multiclass":
            z = logits - logits.max(1, keepdims=True)
            e = np.exp(z)
            return e / e.sum(1, keepdims=True)
        if self.kind == "survival":
            return logits[:, 0]
        p = 1.0 / (1.0 + np.exp(-logits))
        return p[:, 0] if self.kind == "binary" else p

    def prediction_columns(self, y: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
        if self.kind == "binary":
            return {"y": y, "prob": p}
        if self.kind == "multilabel":
            return {**{f"y__{lab}": y[:, i] for i, lab in enumerate(self.labels)},
                    **{f"prob__{lab}": p[:, i] for i, lab in enumerate(self.labels)}}
        if self.kind == "multiclass":
            return {"y": y, **{f"prob__{c}": p[:, i] for i, c in enumerate(self.labels)}}
        return {"time": y[:, 0], "event": y[:, 1], "risk": p}

    def read_predictions(self, df: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(y, p) back from predictions.parquet columns."""
        f = lambda c: df[c].cast(pl.Float64).fill_null(float("nan")).to_numpy()  # noqa: E731
        if self.kind == "binary":
            return f("y"), f("prob")
        if self.kind == "multilabel":
            return (np.stack([f(f"y__{lab}") for lab in self.labels], 1),
                    np.stack([f(f"prob__{lab}") for lab in self.labels], 1))
        if self.kind == "multiclass":
            return f("y"), np.stack([f(f"prob__{c}") for c in self.labels], 1)
        return np.stack([f("time"), f("event")], 1), f("risk")
