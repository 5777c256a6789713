"""Binary metrics with explicit undefined cases, and bootstrap confidence intervals."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

METRICS = ("auroc", "auprc")


def _undefined(y: np.ndarray) -> str | None:
    if len(y) == 0:
        return "no labelled samples in this split"
    if y.min() == y.max():
        return f"only one class in this split ({int(y[0])}: {len(y)} samples)"
    return None


def metric(name: str, y: np.ndarray, p: np.ndarray) -> float:
    return float(roc_auc_score(y, p) if name == "auroc" else average_precision_score(y, p))


def binary_metrics(y: np.ndarray, p: np.ndarray, n_boot: int = 0, seed: int = 0) -> dict:
    """{metric: {value, ci_low, ci_high} | {value: None, reason}} plus n and positives.

    Rows with an unknown label (NaN) are ignored. A metric that is undefined on this split (one
    class only) is null with the reason, never a crash.
    """
    ok = ~np.isnan(y)
    y, p = y[ok].astype(int), p[ok]
    out: dict = {"n": int(len(y)), "positives": int(y.sum())}
    why = _undefined(y)
    for name in METRICS:
        if why:
            out[name] = {"value": None, "reason": why}
            continue
        entry = {"value": metric(name, y, p)}
        if n_boot:
            lo, hi = bootstrap_ci([y], [p], name, n_boot, seed)
            entry.update(ci_low=lo, ci_high=hi)
        out[name] = entry
    return out


def bootstrap_ci(ys: list[np.ndarray], ps: list[np.ndarray], name: str, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float | None, float | None]:
    """Percentile bootstrap CI of the mean over runs (seeds) of a metric on one test set.

    All runs share the same resampled sample indices, so the interval reflects test-set sampling.
    Resamples with a single class are skipped.
    """
    y0 = ys[0]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y0), len(y0))
        if y0[idx].min() == y0[idx].max():
            continue
        vals.append(np.mean([metric(name, y[idx], p[idx]) for y, p in zip(ys, ps)]))
    if not vals:
        return None, None
    return float(np.quantile(vals, alpha / 2)), float(np.quantile(vals, 1 - alpha / 2))
