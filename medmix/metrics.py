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


def auroc_rows(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """AUROC of every row of (B, n) labels/scores at once (rank formula, ties averaged, as sklearn)."""
    from scipy.stats import rankdata
    r = rankdata(p, axis=1)
    npos = y.sum(1)
    nneg = y.shape[1] - npos
    with np.errstate(divide="ignore", invalid="ignore"):
        return ((r * y).sum(1) - npos * (npos + 1) / 2) / (npos * nneg)


def average_precision_rows(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Average precision of every row, as sklearn's (precision taken at the end of each tie group)."""
    order = np.argsort(-p, axis=1, kind="stable")
    s = np.take_along_axis(p, order, 1)
    ys = np.take_along_axis(y, order, 1)
    n = y.shape[1]
    tp = np.cumsum(ys, 1)
    last = np.ones_like(s, dtype=bool)
    last[:, :-1] = s[:, :-1] != s[:, 1:]
    idx = np.where(last, np.arange(n), n)
    end = np.minimum.accumulate(idx[:, ::-1], axis=1)[:, ::-1]  # last index of each position's tie group
    prec = np.take_along_axis(tp, end, 1) / (end + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (ys * prec).sum(1) / ys.sum(1)


_ROWS = {"auroc": auroc_rows, "auprc": average_precision_rows}


def bootstrap_ci(ys: list[np.ndarray], ps: list[np.ndarray], name: str, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05, chunk: int = 200) -> tuple[float | None, float | None]:
    """Percentile bootstrap CI of the mean over runs (seeds) of a metric on one test set.

    All runs share the same resampled sample indices, so the interval reflects test-set sampling.
    Resamples with a single class are skipped. Vectorised over resamples (in chunks).
    """
    y0 = ys[0]
    rng = np.random.default_rng(seed)
    vals = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, len(y0), (min(chunk, n_boot - start), len(y0)))
        yb = y0[idx].astype(float)
        ok = (yb.min(1) != yb.max(1))
        if not ok.any():
            continue
        per_run = [_ROWS[name](y[idx][ok].astype(float), p[idx][ok]) for y, p in zip(ys, ps)]
        vals.append(np.mean(per_run, axis=0))
    if not vals:
        return None, None
    vals = np.concatenate(vals)
    return float(np.quantile(vals, alpha / 2)), float(np.quantile(vals, 1 - alpha / 2))
