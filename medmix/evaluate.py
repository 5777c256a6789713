"""Evaluation of trained runs: test-time modality drop.

Each available modality of each test sample is dropped with probability `rate` (at least one
kept), with seeded masks that every method shares, and the run's student re-predicts. The
teachers are never read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medmix.data import cohort as cohort_mod
from medmix.bundle import student_predict, task_of_run
from medmix.metrics import METRICS, task_metrics
from medmix.model import fusion_config
from medmix.model.medmix import keep_at_least_one
from medmix.train import load_role, load_run_checkpoint


def drop_masks(avail: torch.Tensor, rate: float, seed: int) -> torch.Tensor:
    """(N, M) availability → availability after a seeded test-time drop (same for every method)."""
    return keep_at_least_one(avail, rate, torch.Generator().manual_seed(seed))


def modality_drop(run: str | Path, results: str | Path, rates: list[float], seed: int = 0) -> dict:
    """Test metrics of one run under each test-time drop rate."""
    run, results = Path(run), Path(results)
    ckpt = load_run_checkpoint(run / "model.pt")
    spec, method = ckpt["spec"], ckpt["method"]
    cohort = cohort_mod.read(results / spec["dataset"] / "cohort.parquet")
    task = task_of_run(ckpt)
    y = task.targets(cohort)
    test = (cohort["split"] == "test").to_numpy()
    mods = list(ckpt["dims"])
    inp = load_role(results, spec, cohort, method.get("inputs", "experts"), mods)
    for m in mods:  # the run's experts (medmix_single_expert kept one per modality)
        keep = [inp.slugs[m].index(s) for s in ckpt["experts"][m]]
        inp.X[m] = [inp.X[m][k] for k in keep]
        inp.M[m] = inp.M[m][:, keep]
    avail = torch.stack([inp.M[m].any(1) for m in mods], 1)[torch.from_numpy(test)]
    X = {m: [x[torch.from_numpy(test)] for x in inp.X[m]] for m in mods}
    fcfg = fusion_config(method, spec["train"])
    out = {"dataset": spec["dataset"], "method": spec["method"], "seed": ckpt["seed"], "rates": {}}
    for rate in rates:
        keep = drop_masks(avail, rate, seed)
        M = {m: inp.M[m][torch.from_numpy(test)] & keep[:, i:i + 1] for i, m in enumerate(mods)}
        p, _ = student_predict(method, ckpt["dims"], fcfg, ckpt["state_dict"], X, M, task)
        m = task_metrics(task.kind, y[test], p.astype(np.float64), thr=ckpt.get("thresholds"))
        out["rates"][str(rate)] = {**{k: m[k]["value"] for k in METRICS[task.kind]},
                                   "dropped": int((~keep & avail).sum())}
    return out
