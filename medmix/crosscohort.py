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
import polars as pl
import torch

from medmix.bundle import student_predict, task_of_run
from medmix.data import cohort as cohort_mod
from medmix.encoders.cache import read_attrs, read_cache
from medmix.config import FITTED_KINDS
from medmix.embed import fit_path
from medmix.encoders import create_encoder
from medmix.io import MedmixError, atomic_path, write_json
from medmix.metrics import METRICS, task_metrics
from medmix.model import fusion_config
from medmix.train import load_run_checkpoint


def _inputs(ckpt: dict, results: Path, target: str, cohort: pl.DataFrame) -> tuple[dict, dict]:
    spec = ckpt["spec"]
    ids = cohort["sample_id"].to_list()
    X, M = {}, {}
    for m, slugs in ckpt["experts"].items():
        xs, ms = [], []
        for k, slug in enumerate(slugs):
            src = results / spec["dataset"] / "embeddings" / m / f"{slug}.h5"
            a = read_attrs(src)
            state = json.loads(a["fit_state"]) if isinstance(a.get("fit_state"), str) else a.get("fit_state") or {}
            dim = ckpt["dims"][m][k]
            if m not in cohort.columns:
                emb, present = np.zeros((len(ids), dim), np.float32), np.zeros(len(ids), bool)
            elif a.get("kind") in FITTED_KINDS:  # applied with the source fit, never refitted on the target
                enc_spec = json.loads(a["spec"]) if isinstance(a.get("spec"), str) else {"kind": a["kind"]}
                emb, present = create_encoder(enc_spec).apply(cohort[m].to_list(), state, fit_path(src))
            else:
                path = results / target / "embeddings" / m / f"{slug}.h5"
                emb, present = read_cache(path, expect={"weights_hash": a["weights_hash"],
                                                        "preprocessing_hash": a["preprocessing_hash"]}, ids=ids)
                if emb.shape[1] == 0:  # the modality is absent from every target sample
                    emb = np.zeros((len(ids), dim), np.float32)
            if emb.shape[1] != dim:
                raise MedmixError(f"{target}/{m}/{slug}: embedding dim {emb.shape[1]} differs from the run's {dim}")
            mu, sd = (t.numpy() for t in ckpt["norm"][m][k])
            xs.append(torch.from_numpy(np.where(present[:, None], (emb - mu) / sd, 0.0).astype(np.float32)))
            ms.append(torch.from_numpy(present))
        X[m], M[m] = xs, torch.stack(ms, 1)
    return X, M


def evaluate_run(run: str | Path, results: str | Path, target: str, n_boot: int = 0) -> dict:
    """Metrics of one source run on every sample of the target cohort (and its source test metrics)."""
    run, results = Path(run), Path(results)
    ckpt = load_run_checkpoint(run / "model.pt")
    spec, method = ckpt["spec"], ckpt["method"]
    cohort = cohort_mod.read(results / target / "cohort.parquet")
    task = task_of_run(ckpt)
    missing = [c for c in task.columns if c not in cohort.columns]
    if missing:
        raise MedmixError(f"{results / target / 'cohort.parquet'}: no label column(s) {missing} for the source task "
                          f"'{spec['task']}'")
    X, M = _inputs(ckpt, results, target, cohort)
    avail = torch.stack([M[m].any(1) for m in M], 1).any(1).numpy()
    p, _ = student_predict(method, ckpt["dims"], fusion_config(method, spec["train"]), ckpt["state_dict"], X, M, task)
    y = task.targets(cohort).astype(np.float64)
    y[~avail] = np.nan
    src = json.loads((run / "metrics.json").read_text())
    return {"method": spec["method"], "seed": int(ckpt["seed"]), "source": spec["dataset"], "task": spec["task"],
            "task_type": task.kind,
            "target": task_metrics(task.kind, y, np.asarray(p, dtype=np.float64), n_boot=n_boot,
                                   thr=ckpt.get("thresholds")),
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


def crosscohort(runs: list[str | Path], results: str | Path, target: str, out: str | Path, n_boot: int = 0) -> dict:
    """Evaluate every run on the target; write {target}/metrics.json with per-method means over seeds."""
    per_run = [evaluate_run(r, results, target, n_boot) for r in sorted(map(str, runs))]
    if not per_run:
        raise MedmixError("crosscohort: no runs given")
    methods: dict = {}
    for r in per_run:
        methods.setdefault(r["method"], []).append(r)
    res = {"dataset": target, "evaluation": "cross-cohort", "source": per_run[0]["source"], "task": per_run[0]["task"],
           "methods": {}, "runs": per_run}
    meta = Path(results) / target / "cohort.json"
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
