"""Subgroup metrics: the task's primary metric on the test split per subgroup, for every method.

Subgroups are the cohort's `group_*` columns (sex, age band, race/ethnicity where the release has
them; carried in the cohort, never a model input) and the modality-availability pattern (which of
the dataset's modalities a sample has). Per method: mean ± sd over seeds, a bootstrap 95% CI of
the seed mean (resamples shared by the seeds), n and positives per subgroup, and the largest gap
between the subgroups of each variable that have at least `min_n` samples and a defined metric.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from medmix.data import cohort as cohort_mod
from medmix.experiments.aggregate import LABELS, _task
from medmix.io import atomic_path, write_json
from medmix.masks import cohort_availability
from medmix.metrics import PRIMARY, bootstrap_ci, labelled_rows, task_metrics


def _groups(test: pl.DataFrame, modalities: list[str]) -> dict[str, np.ndarray]:
    """Subgroup variable -> (n,) level per test sample."""
    out = {c[len(cohort_mod.GROUP_PREFIX):]: test[c].cast(pl.String).fill_null("unknown").to_numpy()
           for c in test.columns if c.startswith(cohort_mod.GROUP_PREFIX)}
    if modalities:
        avail = cohort_availability(test, modalities)
        out["modalities"] = np.array(["+".join(m for m, a in zip(modalities, row) if a) or "none" for row in avail])
    return out


def subgroups(dataset: str, cohort: str | Path, runs: list[str | Path], out: str | Path, table: str | Path,
              n_boot: int = 200, min_n: int = 10) -> dict:
    """results/{dataset}/subgroups.json and results/tables/subgroups_{dataset}.md from the runs'
    test predictions."""
    co = cohort_mod.read(cohort)
    test = co.filter(pl.col("split") == "test")
    by: dict[str, list] = {}
    kind = "binary"
    modalities: set[str] = set()
    for r in map(Path, runs):
        m = json.loads((r / "metrics.json").read_text())
        task = _task(m)
        kind = task.kind
        modalities |= set(m.get("modalities") or [])
        pred = pl.read_parquet(r / "predictions.parquet").filter(pl.col("split") == "test")
        pred = test.select("sample_id").join(pred, on="sample_id", how="left")  # cohort order
        y, p = task.read_predictions(pred)
        by.setdefault(m["method"], []).append((np.asarray(y, float), np.asarray(p, float)))
    metric = PRIMARY[kind]
    dmods = sorted(m for m in modalities if m in test.columns)
    groups = _groups(test, dmods)
    res: dict = {"dataset": dataset, "task_type": kind, "metric": metric, "min_n": min_n, "variables": {},
                 "largest_gap": {}}
    for var, levels in groups.items():
        res["variables"][var] = {}
        for method, parts in sorted(by.items()):
            entry = {}
            for level in sorted(set(levels.tolist())):
                rows = levels == level
                ys = [y[rows] for y, _ in parts]
                ps = [p[rows] for _, p in parts]
                vals = [task_metrics(kind, yy, pp)[metric]["value"] for yy, pp in zip(ys, ps)]
                ok = [v for v in vals if v is not None]
                keep = [labelled_rows(kind, yy) for yy in ys]
                lo, hi = bootstrap_ci(kind, metric, [yy[k] for yy, k in zip(ys, keep)],
                                      [pp[k] for pp, k in zip(ps, keep)], n_boot, 0) if ok and n_boot else (None, None)
                n = int(keep[0].sum())
                pos = int(np.nansum(ys[0][keep[0]])) if kind in ("binary", "multilabel") else None
                entry[level] = {"n": n, "positives": pos, "mean": float(np.mean(ok)) if ok else None,
                                "sd": float(np.std(ok, ddof=1)) if len(ok) > 1 else (0.0 if ok else None),
                                "ci_low": lo, "ci_high": hi}
            res["variables"][var][method] = entry
            big = {k: v for k, v in entry.items() if v["n"] >= min_n and v["mean"] is not None}
            if len(big) >= 2:
                hi_k = max(big, key=lambda k: big[k]["mean"])
                lo_k = min(big, key=lambda k: big[k]["mean"])
                gap = {"variable": var, "gap": big[hi_k]["mean"] - big[lo_k]["mean"], "best": hi_k, "worst": lo_k}
                if gap["gap"] > res["largest_gap"].get(method, {}).get("gap", -1):
                    res["largest_gap"][method] = gap
    write_json(out, res)
    with atomic_path(table) as tmp:
        tmp.write_text(markdown(res))
    return res


def markdown(res: dict) -> str:
    def cell(e):
        if e["mean"] is None:
            return f"n/a (n={e['n']})"
        ci = f" [{e['ci_low']:.3f}, {e['ci_high']:.3f}]" if e.get("ci_low") is not None else ""
        return f"{e['mean']:.3f} ± {e['sd']:.3f}{ci} (n={e['n']})"

    name = LABELS.get(res["metric"], res["metric"])
    lines = [f"### {res['dataset']}: test {name} per subgroup (mean ± sd over seeds [bootstrap 95% CI], n samples)",
             "", f"Largest gap per method between subgroups of one variable with at least {res['min_n']} samples:", "",
             "| method | variable | best | worst | gap |", "| --- | --- | --- | --- | --- |"]
    for method, g in sorted(res["largest_gap"].items(), key=lambda kv: -kv[1]["gap"]):
        lines.append(f"| {method} | {g['variable']} | {g['best']} | {g['worst']} | {g['gap']:.3f} |")
    for var, methods in res["variables"].items():
        levels = sorted({k for e in methods.values() for k in e})
        lines += ["", f"#### {var}", "", "| method | " + " | ".join(levels) + " |", "| --- |" + " --- |" * len(levels)]
        for method, e in methods.items():
            lines.append(f"| {method} | " + " | ".join(cell(e[k]) if k in e else "–" for k in levels) + " |")
    return "\n".join(lines) + "\n"
