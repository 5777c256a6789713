"""Hyperparameter sweep on the cached embeddings, scored on the validation split only.

Each variant (a JSON object of `train:` overrides) is fitted for each seed in-process on the
dataset's caches (results/{dataset}/); prints the mean ± sd of the validation AUROC and AUPRC
(macro for multilabel; binary and multilabel tasks). The test split's predictions are never scored: choose on validation.

    PYTHONPATH=. python benchmarks/sweep_train.py medmix '[{}, {"lambda_align": 2.0}]' openi_problems
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from medmix import config
from medmix.config import TrainJob
from medmix.inputs import Caches
from medmix.metrics import task_metrics
from medmix.train import fit, prepare, read_shared


def validation_scores(cfg: dict, dataset: str, method: str, variant: dict, seeds=(0, 1, 2),
                      results: str = "results") -> dict:
    """Fit `method` with the train overrides `variant` for each seed; validation metrics only.
    Returns {"auroc": [per seed], "auprc": [...], "info": [per-seed fit info (histories)]}."""
    job = TrainJob.from_dict(config.train_job(cfg, dataset, method))
    job = dataclasses.replace(job, train=dataclasses.replace(job.train, **variant))
    cohort, caches = Path(results) / dataset / "cohort.parquet", Caches.under(results, dataset)
    shared = read_shared(job, cohort, caches)
    out: dict = {"auroc": [], "auprc": [], "info": []}
    for seed in seeds:
        p = prepare(job, seed, cohort, caches, shared)
        p_all, _, _, info = fit(p, seed, progress=False)
        va = p.split == "val"
        m = task_metrics(p.task.kind, p.y[va], p_all[va])
        pre = "macro_" if p.task.kind == "multilabel" else ""
        out["auroc"].append(m[pre + "auroc"]["value"])
        out["auprc"].append(m[pre + "auprc"]["value"])
        out["info"].append(info)
    return out


def main() -> None:
    method, variants = sys.argv[1], json.loads(sys.argv[2])
    dataset = sys.argv[3] if len(sys.argv) > 3 else "demo"
    cfg = config.load("config.yaml")
    for v in variants:
        r = validation_scores(cfg, dataset, method, v)
        print(f"{dataset} {method} {v}: val AUROC {np.mean(r['auroc']):.4f} ± {np.std(r['auroc'], ddof=1):.4f}  "
              f"val AUPRC {np.mean(r['auprc']):.4f} ± {np.std(r['auprc'], ddof=1):.4f}", flush=True)


if __name__ == "__main__":
    main()
