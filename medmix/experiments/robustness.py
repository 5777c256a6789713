"""Missing-modality robustness of trained runs: test-time drops, paired vs partial test sets,
every modality subset, and the train-time drop curves (runs retrained under medmix.masks drops).

Test time: for each rate, the same seeded keep mask for every method (medmix.masks.test_masks,
drawn from the cohort's availability, not from a run's caches); the run's student re-predicts.
The teachers are never read (a run's deployed inputs only).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import polars as pl
import torch

from medmix.data import cohort as cohort_mod
from medmix.inputs import Caches
from medmix.io import stable_hash
from medmix.masks import MULTI, ampute, block_subsets, cohort_availability, dataset_modalities, test_masks
from medmix.metrics import METRICS, PRIMARY, task_metrics
from medmix.run import Run

_NOT_METRICS = ("n", "dropped", "mask_hash", "excluded", "excluded_no_modality", "realised_rate")


def mechanism_curves(mechanisms: list[dict], mods: list[str]) -> list[tuple[str, str, dict]]:
    """(mechanism name, curve key, ampute spec) of every curve: MCAR first (the reference every other
    mechanism is calibrated to), then each mechanism; a block without `modalities` gives one curve
    per non-empty proper subset (key `notes+cxr`), the others one curve (key `all`)."""
    out = [("mcar", "all", {"kind": "mcar"})] if mechanisms else []
    for mech in mechanisms:
        if mech["kind"] == "block":
            out += [(mech["name"], "+".join(sub), {**mech, "modalities": list(sub)}) for sub in block_subsets(mech, mods)]
        else:
            out.append((mech["name"], "all", mech))
    return out


def evaluate_run(run: str | Path, cohort: str | Path, caches: Caches, rates: list[float], mask_seed: int = 0,
                 mechanisms: list[dict] | None = None, memo: dict | None = None) -> dict:
    """Test metrics of one run under each drop rate, on the paired and partial test sets, and for
    every subset of the dataset's modalities; with `mechanisms`, under each missingness mechanism
    (medmix.masks.ampute) at each rate too. Masks and sample sets come from the cohort (and, for an
    MNAR driver `outcome`, its labels) only, so every method sees the same masks: pass one `memo`
    dict to the calls of a job on one cohort and each mask is drawn once, not once per run (its key
    holds the availability and labels, not the MAR driver columns: never share it across cohorts)."""
    r = Run.load(run)
    co = cohort_mod.read(cohort)
    test = (co["split"] == "test").to_numpy()
    X, M = r.inputs(co, caches)
    t = torch.from_numpy(test)
    X = {m: [x[t] for x in xs] for m, xs in X.items()}
    M = {m: v[t] for m, v in M.items()}
    test_cohort = co.filter(pl.Series(test))
    y = r.task.targets(co)[test]
    dmods = dataset_modalities(r.job.modalities, test_cohort)
    avail = cohort_availability(test_cohort, dmods)
    out = {"dataset": r.dataset, "method": r.name, "seed": r.seed, "task_type": r.task.kind,
           "rates": {}, "test_sets": {}, "subsets": {}}

    def predict(keep: np.ndarray, rows: np.ndarray) -> dict:
        kept = {m: M[m] & torch.from_numpy(keep[:, dmods.index(m)].copy())[:, None] for m in M}
        p, _ = r.predict(X, kept)
        res = task_metrics(r.task.kind, y[rows], np.asarray(p, dtype=np.float64)[rows], thr=r.thresholds)
        return {**{k: res[k]["value"] for k in METRICS[r.task.kind]}, "n": int(rows.sum())}

    memo = {} if memo is None else memo

    def mask(spec: dict | None, rate: float) -> np.ndarray:
        key = (tuple(dmods), avail.tobytes(), json.dumps(spec, sort_keys=True), float(rate), mask_seed, y.dtype.str,
               y.tobytes())
        if key not in memo:
            memo[key] = (test_masks(avail, rate, mask_seed) if spec is None
                         else ampute(test_cohort, dmods, spec, rate, mask_seed, outcome=y))
            memo[key].flags.writeable = False  # shared by every run of the job
        return memo[key]

    everyone = np.ones(len(y), dtype=bool)
    for rate in rates:
        keep = mask(None, rate)
        out["rates"][str(float(rate))] = {**predict(keep, everyone), "dropped": int((avail & ~keep).sum()),
                                          "mask_hash": stable_hash(keep.tolist())}
    out["mechanisms"] = {}
    for name, key, spec in mechanism_curves(mechanisms or [], dmods):
        curve = out["mechanisms"].setdefault(name, {}).setdefault(key, {})
        for rate in rates:
            keep = mask(spec, rate)
            curve[str(float(rate))] = {**predict(keep, everyone), "dropped": int((avail & ~keep).sum()),
                                       "realised_rate": float((avail & ~keep).sum() / max(int(avail.sum()), 1)),
                                       "mask_hash": stable_hash(keep.tolist())}
    full = np.ones_like(avail)
    out["test_sets"]["partial"] = predict(full, everyone)
    out["test_sets"]["paired"] = predict(full, avail.all(1))
    for k in range(1, len(dmods) + 1):
        for sub in itertools.combinations(dmods, k):
            cols = np.array([m in sub for m in dmods])
            rows = (avail & cols).any(1)
            if not any(m in M for m in sub) or not rows.any():
                continue
            out["subsets"]["+".join(sub)] = predict(np.broadcast_to(cols, avail.shape).copy(), rows)
    return out


def _msd(values: list) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "sd": None, "seeds": 0}
    return {"mean": float(np.mean(vals)), "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
            "seeds": len(vals)}


def _summ(entries: list[dict]) -> dict:
    """Mean ± sd over seeds of every metric of the entries (the task's metrics, medmix.metrics)."""
    names = [k for k in entries[0] if k not in _NOT_METRICS]
    return {**{k: _msd([e[k] for e in entries]) for k in names}, "n": entries[0].get("n")}


def summarize(dataset: str, evals: list[dict], drop_runs: list[str | Path], base_runs: list[str | Path]) -> dict:
    """robustness.json of a dataset: mean ± sd over seeds, per method, of every curve and table.

    `evals`: evaluate_run outputs of the main runs; `drop_runs`: train-time drop run directories;
    `base_runs`: the main runs of the swept methods (the rate-0 point of every train-time curve);
    `train_mechanisms`: name -> method -> rate -> the runs retrained under that mechanism.
    """
    kind = evals[0].get("task_type", "binary") if evals else "binary"
    res: dict = {"dataset": dataset, "task_type": kind, "metrics": list(METRICS[kind]), "primary": PRIMARY[kind],
                 "test_drop": {}, "test_sets": {}, "subsets": {}, "train_one": {}, "train_multi": {},
                 "train_mechanisms": {}, "masks": {}}
    by: dict = {}
    for e in evals:
        by.setdefault(e["method"], []).append(e)
        for rate, r in e["rates"].items():
            res["masks"].setdefault(rate, set()).add(r["mask_hash"])
    res["masks"] = {k: sorted(v) for k, v in res["masks"].items()}
    res["mechanisms"], res["mechanism_masks"] = {}, {}
    for e in evals:
        for name, curves in e.get("mechanisms", {}).items():
            for key, curve in curves.items():
                for rate, r in curve.items():
                    res["mechanism_masks"].setdefault(f"{name}/{key}/{rate}", set()).add(r["mask_hash"])
    res["mechanism_masks"] = {k: sorted(v) for k, v in res["mechanism_masks"].items()}
    for method, es in by.items():
        res["test_drop"][method] = {rate: {**_summ([e["rates"][rate] for e in es]),
                                           "dropped": es[0]["rates"][rate]["dropped"]} for rate in es[0]["rates"]}
        res["test_sets"][method] = {k: _summ([e["test_sets"][k] for e in es]) for k in es[0]["test_sets"]}
        res["subsets"][method] = {k: _summ([e["subsets"][k] for e in es]) for k in es[0]["subsets"]}
        for name, curves in es[0].get("mechanisms", {}).items():
            for key, curve in curves.items():
                res["mechanisms"].setdefault(name, {}).setdefault(key, {})[method] = {
                    rate: {**_summ([e["mechanisms"][name][key][rate] for e in es]),
                           "realised_rate": curve[rate]["realised_rate"]} for rate in curve}
    runs: dict = {}
    for d in list(map(Path, base_runs)) + list(map(Path, drop_runs)):
        m = json.loads((d / "metrics.json").read_text())
        drop = m.get("train_drop") or {"modality": None, "rate": 0.0}
        mech = "mechanism" in drop      # a train-time mechanism: `modality` is its name
        runs.setdefault((drop["modality"], float(drop["rate"]), m["method"], mech), []).append(
            {**{k: m["test"][k]["value"] for k in METRICS[m.get("task_type", "binary")]}, "n": m["test"]["n"],
             "excluded": drop.get("excluded_no_modality", 0)})
    base = {k[2]: v for k, v in runs.items() if k[0] is None}
    for (mod, rate, method, mech), es in sorted(runs.items(), key=lambda kv: (str(kv[0][0]), kv[0][1], kv[0][2])):
        if mod is None:
            continue
        target = (res["train_mechanisms"].setdefault(mod, {}) if mech else res["train_multi"] if mod == MULTI
                  else res["train_one"].setdefault(mod, {}))
        curve = target.setdefault(method, {})
        if method in base:
            curve["0.0"] = _summ(base[method])
        curve[str(rate)] = {**_summ(es), "excluded_no_modality": max(e["excluded"] for e in es)}
    return res
