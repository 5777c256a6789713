"""Missing-modality robustness: train-time drops, test-time drops, test sets and modality subsets.

Train time (`spec["drop"]`, run path `runs/{method}/drop-{modality|multi}-{rate}/seed{s}`):
  - one modality `m` removed from a fraction `rate` of the training samples (1.0: all of them),
    except from samples that have no other modality: those keep it and are counted
    (`kept_sole_input`), so no training sample is lost and a single-modality dataset still trains;
  - `multi`: each available modality of each training sample removed with probability `rate`,
    at least one kept.
  The mask is drawn on the dataset's modalities from the cohort (input not null), seeded by
  (mask seed, training seed) only, so every method of a seed loses the same inputs. A removed
  modality is absent for the student and the teacher alike (its embeddings are zeroed and its
  presence cleared). Training samples left with no modality are excluded from training and
  counted in metrics.json (`train_drop`).
Test time: the same kind of mask on the test split for every rate, shared by all methods (drawn
from the cohort's availability, not from a run's caches); paired (all modalities present) vs
partial (all samples) test sets; every non-empty subset of modalities.
Kept free of torch at import time: the Snakefile builds the run paths with `drop_slug`.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import polars as pl

from medmix.io import MedmixError, stable_hash

MULTI = "multi"


def dataset_modalities(spec: dict, cohort: pl.DataFrame) -> list[str]:
    """The dataset's modalities in canonical (sorted) order, as train_run orders them."""
    return sorted(m for m in spec["modalities"] if m in cohort.columns)


def cohort_availability(cohort: pl.DataFrame, mods: list[str]) -> np.ndarray:
    """(N, M) bool: the sample has an input for the modality (the cohort's own notion of missing)."""
    return np.stack([cohort[m].is_not_null().to_numpy() for m in mods], 1)


def parse_drop(text: str) -> dict:
    """'notes:1.0' or 'multi:0.3' → {"modality": ..., "rate": ...} (the CLI's --drop)."""
    mod, sep, rate = text.partition(":")
    try:
        r = float(rate)
    except ValueError:
        r = -1.0
    if not sep or not mod or not 0 <= r <= 1:
        raise MedmixError(f"--drop '{text}': expected MODALITY:RATE or {MULTI}:RATE with 0 <= RATE <= 1")
    return {"modality": mod, "rate": r}


def drop_slug(drop: dict) -> str:
    """The run-path component of a train-time drop: drop-notes-1.0, drop-multi-0.25."""
    return f"drop-{drop['modality']}-{float(drop['rate'])}"


def train_keep(drop: dict, avail: np.ndarray, mods: list[str], is_train: np.ndarray, seed: int) -> np.ndarray:
    """(N, M) keep mask of a train-time drop; only training rows lose inputs.

    Depends on (availability, modality list, split, drop, mask seed, training seed) only, never on
    the method, so all methods of a seed see the same training inputs.
    """
    import torch
    from medmix.model.medmix import keep_at_least_one
    gen = torch.Generator().manual_seed(int(drop.get("seed", 0)) * 1_000_003 + int(seed))
    rate = float(drop["rate"])
    n = len(avail)
    keep = np.ones_like(avail, dtype=bool)
    if drop["modality"] == MULTI:
        kept = keep_at_least_one(torch.from_numpy(avail), rate, gen).numpy()
        keep = np.where(is_train[:, None], kept | ~avail, True)
    else:
        if drop["modality"] not in mods:
            raise MedmixError(f"train-time drop: modality '{drop['modality']}' is not an input of this dataset "
                              f"({', '.join(mods)})")
        j = mods.index(drop["modality"])
        hit = (torch.rand(n, generator=gen) < rate).numpy()
        others = np.delete(avail, j, axis=1).any(1)  # a sample whose only input it is keeps it (counted)
        keep[:, j] = ~(hit & is_train & others)
    return keep


def _sole(drop: dict, avail: np.ndarray, mods: list[str], is_train: np.ndarray) -> int:
    """Training samples whose only input is the dropped modality (one-modality drops keep it)."""
    if drop["modality"] == MULTI:
        return 0
    j = mods.index(drop["modality"])
    return int((is_train & avail[:, j] & ~np.delete(avail, j, axis=1).any(1)).sum())


class TrainDrop:
    """A train-time drop applied to a run's inputs (experts and, with the same mask, teachers)."""

    def __init__(self, spec: dict, cohort: pl.DataFrame, seed: int):
        self.drop = spec["drop"]
        self.mods = dataset_modalities(spec, cohort)
        split = cohort["split"].to_numpy()
        avail = cohort_availability(cohort, self.mods)
        self.keep = train_keep(self.drop, avail, self.mods, split == "train", seed)
        removed = avail & ~self.keep
        self.summary = {**self.drop, "removed": {m: int(removed[:, j].sum()) for j, m in enumerate(self.mods)},
                        "kept_sole_input": _sole(self.drop, avail, self.mods, split == "train"),
                        "mask_hash": stable_hash(self.keep.tolist())}

    def apply(self, inp, split: np.ndarray, relabel: bool = True) -> np.ndarray:
        """Zero and mark absent the dropped inputs of `inp` (medmix.train.Inputs) in place; return the
        split with training rows left without any modality relabelled `train_excluded` (experts only:
        `relabel=False` for the teachers)."""
        import torch
        any_left = np.zeros(len(split), dtype=bool)
        for m in inp.X:
            k = torch.from_numpy(self.keep[:, self.mods.index(m)])
            inp.M[m] = inp.M[m] & k[:, None]
            inp.X[m] = [x * k[:, None].to(x.dtype) for x in inp.X[m]]
            any_left |= inp.M[m].any(1).numpy()
        if not relabel:
            return split
        out = split.copy()
        excluded = (split == "train") & ~any_left
        out[excluded] = "train_excluded"
        self.summary["excluded_no_modality"] = int(excluded.sum())
        if not (out == "train").any():
            raise MedmixError(f"train-time drop {self.drop}: no training sample keeps any input modality")
        return out


def test_masks(avail: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """(N, M) keep mask of a test-time drop at `rate` (at least one available modality kept)."""
    import torch
    from medmix.evaluate import drop_masks
    return drop_masks(torch.from_numpy(avail), rate, seed).numpy() | ~avail


_NOT_METRICS = ("n", "dropped", "mask_hash", "excluded", "excluded_no_modality")


def evaluate_run(run: str | Path, results: str | Path, rates: list[float], mask_seed: int = 0) -> dict:
    """Test metrics of one run under each drop rate, on the paired and partial test sets, and for
    every subset of the dataset's modalities. Masks and sample sets come from the cohort only."""
    import torch
    from medmix.evaluate import load_test
    ti = load_test(run, results)
    dmods = dataset_modalities(ti.spec, ti.cohort)
    avail = cohort_availability(ti.cohort, dmods)
    out = {"dataset": ti.spec["dataset"], "method": ti.spec["method"], "seed": ti.ckpt["seed"],
           "task_type": ti.task.kind, "rates": {}, "test_sets": {}, "subsets": {}}

    def predict(keep: np.ndarray, rows: np.ndarray) -> dict:
        M = {m: ti.M[m] & torch.from_numpy(keep[:, dmods.index(m)])[:, None] for m in ti.mods}
        p, _ = ti.predict(M)
        return {**ti.metrics(p, rows), "n": int(rows.sum())}

    everyone = np.ones(len(ti.y), dtype=bool)
    for rate in rates:
        keep = test_masks(avail, rate, mask_seed)
        out["rates"][str(float(rate))] = {**predict(keep, everyone), "dropped": int((avail & ~keep).sum()),
                                          "mask_hash": stable_hash(keep.tolist())}
    full = np.ones_like(avail)
    out["test_sets"]["partial"] = predict(full, everyone)
    out["test_sets"]["paired"] = predict(full, avail.all(1))
    for k in range(1, len(dmods) + 1):
        for sub in itertools.combinations(dmods, k):
            cols = np.array([m in sub for m in dmods])
            rows = (avail & cols).any(1)
            if not any(m in ti.mods for m in sub) or not rows.any():
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
    `base_runs`: the main runs of the swept methods (the rate-0 point of both train-time curves).
    """
    from medmix.metrics import METRICS, PRIMARY
    kind = evals[0].get("task_type", "binary") if evals else "binary"
    res: dict = {"dataset": dataset, "task_type": kind, "metrics": list(METRICS[kind]), "primary": PRIMARY[kind],
                 "test_drop": {}, "test_sets": {}, "subsets": {}, "train_one": {}, "train_multi": {}, "masks": {}}
    by: dict = {}
    for e in evals:
        by.setdefault(e["method"], []).append(e)
        for rate, r in e["rates"].items():
            res["masks"].setdefault(rate, set()).add(r["mask_hash"])
    res["masks"] = {k: sorted(v) for k, v in res["masks"].items()}
    for method, es in by.items():
        res["test_drop"][method] = {rate: {**_summ([e["rates"][rate] for e in es]),
                                           "dropped": es[0]["rates"][rate]["dropped"]} for rate in es[0]["rates"]}
        res["test_sets"][method] = {k: _summ([e["test_sets"][k] for e in es]) for k in es[0]["test_sets"]}
        res["subsets"][method] = {k: _summ([e["subsets"][k] for e in es]) for k in es[0]["subsets"]}
    runs: dict = {}
    for d in list(map(Path, base_runs)) + list(map(Path, drop_runs)):
        m = json.loads((d / "metrics.json").read_text())
        drop = m.get("train_drop") or {"modality": None, "rate": 0.0}
        runs.setdefault((drop["modality"], float(drop["rate"]), m["method"]), []).append(
            {**{k: m["test"][k]["value"] for k in METRICS[m.get("task_type", "binary")]}, "n": m["test"]["n"],
             "excluded": drop.get("excluded_no_modality", 0)})
    base = {k[2]: v for k, v in runs.items() if k[0] is None}
    for (mod, rate, method), es in sorted(runs.items(), key=lambda kv: (str(kv[0][0]), kv[0][1], kv[0][2])):
        if mod is None:
            continue
        target = res["train_multi"] if mod == MULTI else res["train_one"].setdefault(mod, {})
        curve = target.setdefault(method, {})
        if method in base:
            curve["0.0"] = _summ(base[method])
        curve[str(rate)] = {**_summ(es), "excluded_no_modality": max(e["excluded"] for e in es)}
    return res
