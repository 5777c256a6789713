"""Cross-cohort evaluation: runs trained on a source dataset, unchanged, on every target sample.

The target's inputs go through the same experts: frozen encoders are read from the target's
embedding caches (which must have the source caches' weights and preprocessing hashes), and a
fitted encoder (`ehr_tabular`, `tfidf_svd`) is applied with its fit on the *source* train split.
Each embedding is standardised with the run's source train statistics (stored in model.pt). All
target samples are evaluated (the target's split is ignored), beside the run's source test
metrics. The teachers are never read.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from medmix.data import cohort as cohort_mod
from medmix.inputs import Caches
from medmix.io import MedmixError, atomic_path, write_json
from medmix.metrics import METRICS, task_metrics
from medmix.run import Run


def evaluate_run(run: str | Path, cohort: str | Path, caches: Caches, source: Caches, n_boot: int = 0) -> dict:
    """Metrics of one source run on every sample of the target cohort (and its source test metrics).
    `caches`: the target's caches of the run's frozen encoders; `source`: the run's own caches."""
    r = Run.load(run)
    target = cohort_mod.read(cohort)
    task = r.task
    missing = [c for c in task.columns if c not in target.columns]
    if missing:
        raise MedmixError(f"{cohort}: no label column(s) {missing} for the source task '{r.job.task}'")
    X, M = r.inputs(target, caches, source=source)
    avail = torch.stack([M[m].any(1) for m in M], 1).any(1).numpy()
    p, _ = r.predict(X, M)
    y = task.targets(target).astype(np.float64)
    y[~avail] = np.nan
    src = json.loads((r.path / "metrics.json").read_text())
    return {"method": r.name, "seed": r.seed, "source": r.dataset, "task": r.job.task,
            "task_type": task.kind,
            "target": task_metrics(task.kind, y, np.asarray(p, dtype=np.float64), n_boot=n_boot, thr=r.thresholds),
            "samples_without_any_input_of_the_run": int((~avail).sum()),
            "source_test": src.get("test")}


def _summary(values: list) -> dict:
    v = [x for x in values if x is not None]
    if not v:
        return {"mean": None, "sd": None, "values": values, "reason": "undefined on every seed"}
    return {"mean": float(np.mean(v)), "sd": float(np.std(v)), "values": values}


def _value(entry) -> float | None:
    if isinstance(entry, dict):
        return entry.get("value", entry.get("mean"))
    return entry


def crosscohort(runs: list[str | Path], cohort: str | Path, caches: Caches, source: Caches, target: str,
                out: str | Path, n_boot: int = 0) -> dict:
    """Evaluate every run on the target; write {target}/metrics.json with per-method means over seeds."""
    per_run = [evaluate_run(r, cohort, caches, source, n_boot) for r in sorted(map(str, runs))]
    if not per_run:
        raise MedmixError("crosscohort: no runs given")
    methods: dict = {}
    for r in per_run:
        methods.setdefault(r["method"], []).append(r)
    res = {"dataset": target, "evaluation": "cross-cohort", "source": per_run[0]["source"], "task": per_run[0]["task"],
           "methods": {}, "runs": per_run}
    meta = Path(cohort).with_suffix(".json")  # cohort.json beside cohort.parquet (medmix.data.cohort.write)
    if meta.exists():
        res["cohort"] = {k: v for k, v in json.loads(meta.read_text()).items() if k in ("counts", "exclusions", "missing")}
    for name, rs in sorted(methods.items()):
        entry = {"seeds": [r["seed"] for r in rs], "target": {}, "source_test": {}}
        for metric in METRICS[rs[0]["task_type"]]:
            entry["target"][metric] = _summary([r["target"][metric]["value"] for r in rs])
            entry["source_test"][metric] = _summary([_value((r["source_test"] or {}).get(metric)) for r in rs])
        entry["target_n"] = rs[0]["target"]["n"]
        entry["target_positives"] = rs[0]["target"]["positives"]
        res["methods"][name] = entry
    write_json(out, res)
    return res


def cross_cohort_table(metrics_files: list[str | Path], out: str | Path) -> str:
    """results/tables/cross_cohort.md: per target and method, the source-trained runs on the target
    beside their own source test split (mean ± sd over seeds), for every metric of the task."""
    def fmt(e: dict) -> str:
        return "–" if e.get("mean") is None else f"{e['mean']:.3f} ± {e['sd']:.3f}"

    lines = ["Models trained on the source dataset, applied unchanged to every sample of the target cohort, "
             "beside their test split on the source (mean ± sd over seeds).", ""]
    for f in metrics_files:
        r = json.loads(Path(f).read_text())
        names = list(next(iter(r["methods"].values()))["target"]) if r["methods"] else []
        lines += [f"### {r['source']} → {r['dataset']} (task {r['task']})", "",
                  "| method | seeds | " + " | ".join(f"{k} source test | {k} target" for k in names) + " | target n |",
                  "| --- | --- |" + " --- | --- |" * len(names) + " --- |"]
        for m, e in r["methods"].items():
            cells = " | ".join(f"{fmt(e['source_test'][k])} | {fmt(e['target'][k])}" for k in names)
            lines.append(f"| {m} | {len(e['seeds'])} | {cells} | {e['target_n']} |")
        lines.append("")
    text = "\n".join(lines)
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    return text
