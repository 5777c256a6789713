"""Evaluation of trained runs: test-time modality drop.

Each available modality of each test sample is dropped with probability `rate` (at least one
kept), with seeded masks that every method shares, and the run's student re-predicts. The
teachers are never read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from medmix.data import cohort as cohort_mod
from medmix.bundle import student_predict, task_of_run
from medmix.metrics import METRICS, task_metrics
from medmix.model import FusionConfig, fusion_config
from medmix.tasks import Task
from medmix.model.medmix import keep_at_least_one
from medmix.train import load_role, load_run_checkpoint


def drop_masks(avail: torch.Tensor, rate: float, seed: int) -> torch.Tensor:
    """(N, M) availability → availability after a seeded test-time drop (same for every method)."""
    return keep_at_least_one(avail, rate, torch.Generator().manual_seed(seed))


@dataclass
class TestInputs:
    """The test split of one run: the student's inputs as it was trained on them (no teacher)."""
    spec: dict
    method: dict
    ckpt: dict
    fcfg: FusionConfig
    task: Task
    cohort: pl.DataFrame      # the test rows of the cohort, cohort order
    y: np.ndarray             # labels of the test rows (shape by task type, medmix.tasks)
    mods: list[str]           # the run's modalities
    X: dict                   # m -> [(N, d_mk)] standardised expert embeddings
    M: dict                   # m -> (N, K_m) bool presence

    def predict(self, M: dict | None = None) -> tuple[np.ndarray, dict]:
        return student_predict(self.method, self.ckpt["dims"], self.fcfg, self.ckpt["state_dict"], self.X,
                               self.M if M is None else M, self.task)

    def metrics(self, p: np.ndarray, rows: np.ndarray | None = None) -> dict[str, float | None]:
        """The task's test metrics (decision thresholds from validation) of predictions p, on `rows`."""
        y, p = (self.y, p) if rows is None else (self.y[rows], p[rows])
        m = task_metrics(self.task.kind, y, np.asarray(p, dtype=np.float64), thr=self.ckpt.get("thresholds"))
        return {k: m[k]["value"] for k in METRICS[self.task.kind]}


def load_test(run: str | Path, results: str | Path) -> TestInputs:
    """Read a run's checkpoint and its experts' caches restricted to the test split."""
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
    t = torch.from_numpy(test)
    return TestInputs(spec=spec, method=method, ckpt=ckpt, fcfg=fusion_config(method, spec["train"]), task=task,
                      cohort=cohort.filter(pl.Series(test)), y=y[test], mods=mods,
                      X={m: [x[t] for x in inp.X[m]] for m in mods}, M={m: inp.M[m][t] for m in mods})


def modality_drop(run: str | Path, results: str | Path, rates: list[float], seed: int = 0) -> dict:
    """Test metrics of one run under each test-time drop rate."""
    ti = load_test(run, results)
    mods = ti.mods
    avail = torch.stack([ti.M[m].any(1) for m in mods], 1)
    out = {"dataset": ti.spec["dataset"], "method": ti.spec["method"], "seed": ti.ckpt["seed"], "rates": {}}
    for rate in rates:
        keep = drop_masks(avail, rate, seed)
        M = {m: ti.M[m] & keep[:, i:i + 1] for i, m in enumerate(mods)}
        p, _ = ti.predict(M)
        out["rates"][str(rate)] = {**ti.metrics(p),
                                   "dropped": int((~keep & avail).sum())}
    return out
