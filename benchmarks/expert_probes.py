"""What each cached expert sees: a logistic-regression probe per embedding cache.

Fit on the train rows where the input is present, scored (AUROC) on the val+test rows where it is
present, the best of three L2 strengths.

    PYTHONPATH=. python benchmarks/expert_probes.py --dataset demo
"""

from __future__ import annotations

import argparse
import glob

import numpy as np
import polars as pl
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from medmix.encoders.cache import read_cache


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="demo")
    ap.add_argument("--results", default="results")
    ap.add_argument("--task", default="ihm")
    args = ap.parse_args()
    co = pl.read_parquet(f"{args.results}/{args.dataset}/cohort.parquet")
    y = co[f"y_{args.task}"].to_numpy()
    sp = co["split"].to_numpy()
    for f in sorted(glob.glob(f"{args.results}/{args.dataset}/embeddings/*/*.h5")):
        x, present = read_cache(f)
        tr, te = (sp == "train") & present, (sp != "train") & present
        if x.shape[1] == 0 or len(np.unique(y[tr])) < 2:
            print(f"{f}: no embedding")
            continue
        xs = (x - x[tr].mean(0)) / (x[tr].std(0) + 1e-6)
        best = max((roc_auc_score(y[te], LogisticRegression(C=c, max_iter=3000).fit(xs[tr], y[tr])
                                  .predict_proba(xs[te])[:, 1]), c) for c in (0.003, 0.01, 0.1))
        print(f"{f}: probe AUROC {best[0]:.3f} (C={best[1]}) on {te.sum()} val+test rows")


if __name__ == "__main__":
    main()
