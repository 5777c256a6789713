"""What each teacher term does to the deployed student, on the validation split only (docs/teacher.md).

For one dataset's caches (results/{dataset}/), fits MedMIX without a teacher and with the teacher
terms under each variant (train overrides: the λ's alone, the two-stage schedule, warm-up,
confidence-weighted distillation, fused or relational alignment), each for `--seeds`, and writes

  - `{out}/teacher_{dataset}.json`: per variant the validation macro AUROC/AUPRC per seed, and the
    per-epoch history of the first seed (loss terms, the student's and the teacher's validation score);
  - `{out}/teacher_{dataset}_curves.png`: the joint schedule's epochs (student vs teacher validation
    score; the magnitude of each loss term);
  - `{out}/teacher_{dataset}_variants.png`: validation AUROC and AUPRC per variant (mean ± sd).

Prints the markdown table. No test-split metric is computed.

    PYTHONPATH=. python benchmarks/teacher_diagnosis.py openi_problems --out docs/figures
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from medmix import config
from medmix.experiments.figures import _plt, _save   # the workflow's figure setup (Agg, atomic write)
from medmix.io import write_json

from sweep_train import validation_scores

# name -> (method, train overrides); the joint schedule with λ_align = λ_kd = 1 is the original MedMIX.
VARIANTS = {
    "no teacher": ("medmix_noteacher", {}),
    "teacher_deployed (ceiling)": ("teacher_deployed", {}),
    "joint": ("medmix", {"teacher_schedule": "joint"}),
    "joint, align only": ("medmix", {"teacher_schedule": "joint", "lambda_kd": 0.0}),
    "joint, kd only": ("medmix", {"teacher_schedule": "joint", "lambda_align": 0.0}),
    "joint, warm-up 10": ("medmix", {"teacher_schedule": "joint", "kd_warmup": 10}),
    "joint, confidence": ("medmix", {"teacher_schedule": "joint", "kd_weight": "confidence"}),
    "two-stage": ("medmix", {"teacher_schedule": "two_stage"}),
    "two-stage, kd only": ("medmix", {"teacher_schedule": "two_stage", "lambda_align": 0.0}),
    "two-stage, λ_kd 0.1": ("medmix", {"teacher_schedule": "two_stage", "lambda_kd": 0.1}),
    "two-stage, confidence": ("medmix", {"teacher_schedule": "two_stage", "kd_weight": "confidence"}),
    "two-stage, align only": ("medmix", {"teacher_schedule": "two_stage", "lambda_kd": 0.0}),
    "two-stage, align only, fused + modality": ("medmix", {"teacher_schedule": "two_stage", "lambda_kd": 0.0,
                                                             "align_on": "both"}),
    "two-stage, align only, relational": ("medmix", {"teacher_schedule": "two_stage", "lambda_kd": 0.0,
                                                       "align": "relational"}),
    "two-stage, align only, reliability fusion": ("medmix_reliability", {"teacher_schedule": "two_stage",
                                                                         "lambda_kd": 0.0}),
}


def curves(path: Path, title: str, history: list[dict]) -> None:
    plt = _plt()
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(ep, [h["val_score"] for h in history], label="student (deployed)")
    if "teacher_val_score" in history[0]:
        a.plot(ep, [h["teacher_val_score"] for h in history], label="teacher branch")
    a.set(xlabel="epoch", ylabel="validation primary metric", title=f"{title}: joint schedule, seed 0")
    a.legend()
    for k in ("loss_task", "loss_teacher", "loss_align", "loss_kd"):
        if k in history[0]:
            b.plot(ep, [h[k] for h in history], label=k[5:])
    b.set(xlabel="epoch", ylabel="train loss term (mean per sample, unweighted)", yscale="log",
          title="loss terms (λ = 1 each)")
    b.legend()
    _save(fig, path)


def bars(path: Path, title: str, rows: dict) -> None:
    plt = _plt()
    names = list(rows)
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.35 * len(names) + 1.5), sharey=True)
    for ax, metric in zip(axes, ("auroc", "auprc")):
        mu = [np.mean(rows[n][metric]) for n in names]
        sd = [np.std(rows[n][metric], ddof=1) for n in names]
        ax.barh(range(len(names)), mu, xerr=sd, color="tab:blue")
        ax.axvline(np.mean(rows["no teacher"][metric]), color="k", ls="--", lw=1, label="no teacher")
        lo = min(m - s for m, s in zip(mu, sd))
        ax.set_xlim(lo - 0.01, max(m + s for m, s in zip(mu, sd)) + 0.005)
        ax.set(xlabel=f"validation {metric.upper()} (mean ± sd over seeds)", title=title)
        ax.legend(loc="lower right")
    axes[0].set_yticks(range(len(names)), names)
    axes[0].invert_yaxis()
    _save(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dataset")
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), help="names from VARIANTS")
    ap.add_argument("--out", default="results/diagnosis")
    ap.add_argument("--resume", action="store_true", help="keep the variants of an existing output file")
    ap.add_argument("--set", default="{}", help="JSON train overrides for every variant (e.g. max_epochs)")
    a = ap.parse_args()
    cfg = config.load(a.config)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"teacher_{a.dataset}.json"
    rows = {}
    if a.resume and path.exists():   # the variants of an interrupted run (same seeds and settings)
        old = json.loads(path.read_text())
        if old["seeds"] == a.seeds and old.get("set") == json.loads(a.set):
            rows = old["variants"]
    for name in a.variants:
        if name in rows:
            continue
        method, over = VARIANTS[name]
        r = validation_scores(cfg, a.dataset, method, {**json.loads(a.set), **over}, a.seeds)
        rows[name] = {"method": method, "overrides": over, "auroc": r["auroc"], "auprc": r["auprc"],
                      "best_epoch": [i["best_epoch"] for i in r["info"]],
                      "teacher_best_epoch": [i.get("teacher_best_epoch") for i in r["info"]],
                      "history_seed0": r["info"][0]["history"]}
        print(f"| {name} | {np.mean(r['auroc']):.4f} ± {np.std(r['auroc'], ddof=1):.4f} | "
              f"{np.mean(r['auprc']):.4f} ± {np.std(r['auprc'], ddof=1):.4f} |", flush=True)
        write_json(path, {"dataset": a.dataset, "seeds": a.seeds, "split": "val", "set": json.loads(a.set),
                          "variants": rows})
    if "joint" in rows:
        curves(out / f"teacher_{a.dataset}_curves.png", a.dataset, rows["joint"]["history_seed0"])
    if "no teacher" in rows:
        bars(out / f"teacher_{a.dataset}_variants.png", a.dataset, rows)


if __name__ == "__main__":
    main()
