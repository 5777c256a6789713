"""Hyperparameter sweep on the cached embeddings, scored on the validation split.

Each variant (a JSON object of `train:` overrides) is trained for 3 seeds in-process; prints the
mean validation and test AUROC. Choose on validation only.

    PYTHONPATH=. python benchmarks/sweep_train.py medmix '[{}, {"lambda_align": 2.0}]'
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile

import numpy as np

from medmix import config
from medmix.train import train_run


def main() -> None:
    method, variants = sys.argv[1], json.loads(sys.argv[2])
    dataset = sys.argv[3] if len(sys.argv) > 3 else "demo"
    cfg = config.load("config.yaml")
    for v in variants:
        c = copy.deepcopy(cfg)
        c["train"].update(v)
        c["train"]["bootstrap"] = 0
        spec = config.train_job(c, dataset, method)
        va, te = [], []
        for seed in (0, 1, 2):
            with tempfile.TemporaryDirectory() as tmp:
                m = train_run(spec, seed, tmp, progress=False)
            va.append(m["val"]["auroc"]["value"])
            te.append(m["test"]["auroc"]["value"])
        print(f"{method} {v}: val AUROC {np.mean(va):.3f}  test AUROC {np.mean(te):.3f}", flush=True)


if __name__ == "__main__":
    main()
