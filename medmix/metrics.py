"""Metrics per task type with explicit undefined cases, and bootstrap confidence intervals.

| type       | metrics                                                        | primary (early stopping) |
| ---------- | -------------------------------------------------------------- | ------------------------ |
| binary     | auroc, auprc, brier, ece                                       | auroc                    |
| multilabel | macro/micro AUROC, macro/micro AUPRC, macro F1 (val thresholds), macro Brier, macro ECE | macro_auroc |
| multiclass | accuracy, macro AUROC (one-vs-rest), macro F1                  | macro_auroc              |
| survival   | Harrell's C-index                                              | c_index                  |

Every metric is computed by one batched function over (B, n, ...) arrays, so the point estimate
(B = 1) and the bootstrap (B resamples at once) share the code. A metric that is undefined on a
split (one class only, no comparable pair) is null with the reason, never a crash; macro
averages skip labels/classes that are undefined on the split and say how many were used.

Calibration: the Brier score, mean((p - y)²), and the expected calibration error over 10
equal-mass bins (the predictions sorted, cut into 10 bins of as equal a count as the split
allows): Σ_b n_b/n · |mean(y_b) − mean(p_b)|. Both are lower-is-better (LOWER_IS_BETTER).
"""

from __future__ import annotations

import numpy as np

METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("auroc", "auprc", "brier", "ece"),
    "multilabel": ("macro_auroc", "micro_auroc", "macro_auprc", "micro_auprc", "macro_f1", "macro_brier", "macro_ece"),
    "multiclass": ("accuracy", "macro_auroc", "macro_f1"),
    "survival": ("c_index",),
}
PRIMARY = {"binary": "auroc", "multilabel": "macro_auroc", "multiclass": "macro_auroc", "survival": "c_index"}
LOWER_IS_BETTER = frozenset({"brier", "ece", "macro_brier", "macro_ece"})
ECE_BINS = 10


def brier_rows(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Brier score of every row of (B, n) 0/1 labels and probabilities; NaN for an empty row."""
    return ((p - y) ** 2).mean(-1) if y.shape[-1] else np.full(y.shape[:-1], np.nan)


def equal_mass_bins(n: int, bins: int = ECE_BINS) -> list[tuple[int, int]]:
    """[lo, hi) positions of `bins` bins of as equal a count as n sorted items allow (empty ones left out)."""
    edges = np.linspace(0, n, bins + 1).astype(int)
    return [(int(lo), int(hi)) for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo]


def ece_rows(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Expected calibration error of every row over `bins` equal-mass bins of the sorted
    predictions; NaN for an empty row."""
    n = y.shape[-1]
    if n == 0:
        return np.full(y.shape[:-1], np.nan)
    order = np.argsort(p, axis=-1, kind="stable")
    ps, ys = np.take_along_axis(p, order, -1), np.take_along_axis(y, order, -1)
    out = np.zeros(y.shape[:-1])
    for lo, hi in equal_mass_bins(n, bins):
        if hi > lo:
            out += (hi - lo) / n * np.abs(ys[..., lo:hi].mean(-1) - ps[..., lo:hi].mean(-1))
    return out


def average_ranks(p: np.ndarray) -> np.ndarray:
    """1-based ranks along the last axis, ties given their average rank, NaN rows NaN: the values of
    scipy.stats.rankdata(p, axis=-1) (exactly: every rank is a whole or half number), without
    importing scipy.stats (2–3 s in each train process)."""
    p = np.asarray(p, dtype=np.float64)
    n = p.shape[-1]
    order = np.argsort(p, axis=-1, kind="stable")
    s = np.take_along_axis(p, order, -1)
    pos = np.broadcast_to(np.arange(n), s.shape)
    first = np.ones(s.shape, dtype=bool)
    first[..., 1:] = s[..., 1:] != s[..., :-1]
    last = np.ones(s.shape, dtype=bool)
    last[..., :-1] = first[..., 1:]
    start = np.maximum.accumulate(np.where(first, pos, 0), axis=-1)                        # tie group's first index
    end = np.flip(np.minimum.accumulate(np.flip(np.where(last, pos, n), -1), axis=-1), -1)  # ... and last
    r = np.empty_like(s)
    np.put_along_axis(r, order, (start + end) / 2 + 1, -1)
    return np.where(np.isnan(p).any(-1, keepdims=True), np.nan, r)


def auroc_rows(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """AUROC of every row of (B, n) labels/scores at once (rank formula, ties averaged, as sklearn);
    NaN where a row has a single class."""
    r = average_ranks(p)
    npos = y.sum(-1)
    nneg = y.shape[-1] - npos
    with np.errstate(divide="ignore", invalid="ignore"):
        v = ((r * y).sum(-1) - npos * (npos + 1) / 2) / (npos * nneg)
    return np.where((npos > 0) & (nneg > 0), v, np.nan)


def average_precision_rows(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Average precision of every row, as sklearn's (precision taken at the end of each tie group);
    NaN where a row has no positive or no negative."""
    order = np.argsort(-p, axis=-1, kind="stable")
    s = np.take_along_axis(p, order, -1)
    ys = np.take_along_axis(y, order, -1)
    n = y.shape[-1]
    tp = np.cumsum(ys, -1)
    last = np.ones_like(s, dtype=bool)
    last[..., :-1] = s[..., :-1] != s[..., 1:]
    idx = np.where(last, np.arange(n), n)
    end = np.flip(np.minimum.accumulate(np.flip(idx, -1), axis=-1), -1)  # last index of each tie group
    prec = np.take_along_axis(tp, end, -1) / (end + 1)
    npos = ys.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = (ys * prec).sum(-1) / npos
    return np.where((npos > 0) & (npos < n), v, np.nan)


def f1_rows(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """F1 of every row of (B, n) 0/1 labels and 0/1 predictions; NaN for a row without a positive
    label (recall undefined), so macro averages skip labels/classes absent from the split."""
    tp = (y * pred).sum(-1)
    npos = y.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(npos > 0, 2 * tp / (npos + pred.sum(-1)), np.nan)


def c_index_rows(t: np.ndarray, e: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Harrell's C of every row of (B, n) times, events and risk scores: over pairs with
    t_i < t_j and an event at t_i, the share with r_i > r_j (ties in risk count one half).
    NaN without a comparable pair. Pairwise per row: O(n²) memory per row."""
    out = np.full(t.shape[0], np.nan)
    for b in range(t.shape[0]):
        tb, eb, rb = t[b], e[b].astype(bool), r[b]
        ti, ri = tb[eb], rb[eb]
        comp = ti[:, None] < tb[None, :]
        n = comp.sum()
        if n:
            conc = (comp & (ri[:, None] > rb[None, :])).sum() + 0.5 * (comp & (ri[:, None] == rb[None, :])).sum()
            out[b] = conc / n
    return out


def f1_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """Decision threshold maximising F1 on (validation) labels y and scores p (0.5 when undefined)."""
    ok = ~np.isnan(y)
    y, p = y[ok], p[ok]
    if len(np.unique(y)) < 2:
        return 0.5
    order = np.argsort(-p, kind="stable")
    ps, tp = p[order], np.cumsum(y[order] == 1)
    last = np.r_[ps[:-1] != ps[1:], True]          # predicting positive for p >= ps[i]
    k = np.flatnonzero(last)
    f1 = 2 * tp[k] / ((k + 1) + (y == 1).sum())
    return float(ps[k[np.argmax(f1)]])


def thresholds(kind: str, y: np.ndarray, p: np.ndarray) -> list[float] | None:
    """Per-label F1-maximising thresholds (multilabel: chosen on the split given, i.e. validation)."""
    if kind == "multilabel":
        return [f1_threshold(y[:, i], p[:, i]) for i in range(y.shape[1])]
    if kind == "binary":
        return [f1_threshold(y, p)]
    return None


def _nanmean(v: np.ndarray, axis: int) -> np.ndarray:
    ok = ~np.isnan(v)
    with np.errstate(invalid="ignore"):
        return np.where(ok.any(axis), np.nansum(v, axis) / np.maximum(ok.sum(axis), 1), np.nan)


def _values(kind: str, name: str, Y: np.ndarray, P: np.ndarray, thr: list[float] | None) -> np.ndarray:
    """Metric `name` of B (resampled) copies: Y, P of shape (B, n, ...) → (B,)."""
    if kind == "binary":
        return {"auroc": auroc_rows, "auprc": average_precision_rows, "brier": brier_rows, "ece": ece_rows}[name](Y, P)
    if kind == "multilabel":                          # (B, n, L) → labels on the last axis of the rows
        Yl, Pl = np.moveaxis(Y, -1, 1), np.moveaxis(P, -1, 1)  # (B, L, n)
        B = Y.shape[0]
        if name == "macro_auroc":
            return _nanmean(auroc_rows(Yl, Pl), 1)
        if name == "macro_auprc":
            return _nanmean(average_precision_rows(Yl, Pl), 1)
        if name == "micro_auroc":
            return auroc_rows(Y.reshape(B, -1), P.reshape(B, -1))
        if name == "micro_auprc":
            return average_precision_rows(Y.reshape(B, -1), P.reshape(B, -1))
        if name in ("macro_brier", "macro_ece"):
            return _nanmean((brier_rows if name == "macro_brier" else ece_rows)(Yl, Pl), 1)
        t = np.asarray(thr if thr is not None else [0.5] * Y.shape[-1])[None, :, None]
        return _nanmean(f1_rows(Yl, (Pl >= t).astype(float)), 1)
    if kind == "multiclass":                          # Y (B, n) codes, P (B, n, K)
        K = P.shape[-1]
        if name == "accuracy":
            return (P.argmax(-1) == Y).mean(-1)
        onehot = (Y[:, None, :] == np.arange(K)[None, :, None]).astype(float)  # (B, K, n)
        if name == "macro_auroc":
            return _nanmean(auroc_rows(onehot, np.moveaxis(P, -1, 1)), 1)
        pred = (P.argmax(-1)[:, None, :] == np.arange(K)[None, :, None]).astype(float)
        return _nanmean(f1_rows(onehot, pred), 1)
    return c_index_rows(Y[..., 0], Y[..., 1], P)      # survival: Y (B, n, 2), P (B, n)


def labelled_rows(kind: str, y: np.ndarray) -> np.ndarray:
    if kind == "multilabel" or kind == "survival":
        return ~np.isnan(y).any(1)
    return ~np.isnan(y)


def _reason(kind: str, name: str, y: np.ndarray) -> str:
    if len(y) == 0:
        return "no labelled samples in this split"
    if kind == "binary":
        return f"only one class in this split ({int(y[0])}: {len(y)} samples)"
    if kind == "survival":
        return "no comparable pair (no event before another sample's time) in this split"
    return "no label/class with both outcomes in this split"


def task_metrics(kind: str, y: np.ndarray, p: np.ndarray, n_boot: int = 0, seed: int = 0,
                 thr: list[float] | None = None) -> dict:
    """{metric: {value, ci_low, ci_high} | {value: None, reason}} plus n and positives.

    Rows with an unknown label are ignored (multilabel: rows with any unknown label). `thr`:
    per-label decision thresholds for the F1 metrics (chosen on validation).
    """
    ok = labelled_rows(kind, y)
    y, p = y[ok], p[ok]
    out: dict = {"n": int(len(y))}
    if kind == "multiclass":
        out["per_class"] = np.bincount(y.astype(int), minlength=p.shape[1] if p.ndim == 2 else 0).tolist()
        out["positives"] = out["per_class"]
    elif kind == "survival":
        out["positives"] = int(y[:, 1].sum()) if len(y) else 0   # events
    else:
        out["positives"] = int(y.sum())
    if kind == "multilabel" and len(y):
        used = int(((y.sum(0) > 0) & (y.sum(0) < len(y))).sum())
        out["labels_defined"] = f"{used} of {y.shape[1]}"
    for name in METRICS[kind]:
        v = float(_values(kind, name, y[None], p[None], thr)[0]) if len(y) else float("nan")
        if np.isnan(v):
            out[name] = {"value": None, "reason": _reason(kind, name, y)}
            continue
        entry = {"value": v}
        if n_boot:
            lo, hi = bootstrap_ci(kind, name, [y], [p], n_boot, seed, [thr])
            entry.update(ci_low=lo, ci_high=hi)
        out[name] = entry
    if thr is not None:
        out["thresholds"] = thr
    return out


def bootstrap_ci(kind: str, name: str, ys: list[np.ndarray], ps: list[np.ndarray], n_boot: int = 1000,
                 seed: int = 0, thrs: list | None = None, alpha: float = 0.05, chunk: int = 100
                 ) -> tuple[float | None, float | None]:
    """Percentile bootstrap CI of the mean over runs (seeds) of a metric on one test set.

    All runs share the same resampled sample indices, so the interval reflects test-set
    sampling. Resamples where the metric is undefined are skipped. Vectorised over resamples
    (in chunks); `ys`/`ps`/`thrs`: per run, rows already restricted to labelled samples.
    """
    n = len(ys[0])
    if n == 0:
        return None, None
    thrs = thrs or [None] * len(ys)
    rng = np.random.default_rng(seed)
    vals = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, (min(chunk, n_boot - start), n))
        per_run = [_values(kind, name, y[idx].astype(float), p[idx], t) for y, p, t in zip(ys, ps, thrs)]
        v = np.mean(per_run, axis=0)
        vals.append(v[~np.isnan(v)])
    vals = np.concatenate(vals)
    if not len(vals):
        return None, None
    return float(np.quantile(vals, alpha / 2)), float(np.quantile(vals, 1 - alpha / 2))


def primary_score(kind: str, y: np.ndarray, p: np.ndarray) -> float:
    """The task's primary metric (PRIMARY) on labelled rows; NaN when undefined."""
    ok = labelled_rows(kind, y)
    if not ok.any():
        return float("nan")
    return float(_values(kind, PRIMARY[kind], y[ok][None], p[ok][None], None)[0])
