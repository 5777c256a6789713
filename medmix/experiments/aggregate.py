"""The aggregate stage: runs of one dataset → results/{dataset}/metrics.json and a Markdown table.

Per method and metric: mean ± sd over seeds, and a bootstrap 95% CI on the test split of the
seed-mean metric (all seeds resampled with the same indices).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from medmix.io import atomic_path, write_json
from medmix.metrics import ECE_BINS, LOWER_IS_BETTER, METRICS, bootstrap_ci, labelled_rows
from medmix.tasks import Task

LABELS = {"auroc": "AUROC", "auprc": "AUPRC", "macro_auroc": "macro AUROC", "micro_auroc": "micro AUROC",
          "macro_auprc": "macro AUPRC", "micro_auprc": "micro AUPRC", "macro_f1": "macro F1",
          "accuracy": "accuracy", "c_index": "C-index", "brier": "Brier ↓", "ece": "ECE ↓",
          "macro_brier": "macro Brier ↓", "macro_ece": "macro ECE ↓"}


def _task(m: dict) -> Task:
    """The task of a run's metrics.json (runs written before task_spec: binary `y_<task>`)."""
    t = m.get("task_spec") or {"name": m["task"], "type": "binary", "columns": [f"y_{m['task']}"]}
    return Task.from_spec(t["name"], t)


def _summary(values: list[float | None], reasons: list[str]) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "sd": None, "per_seed": values, "reason": reasons[0] if reasons else "undefined"}
    return {"mean": float(np.mean(vals)), "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
            "per_seed": values}


def aggregate(dataset: str, runs: list[str | Path], out: str | Path, cohort_json: str | Path | None = None,
              n_boot: int = 1000) -> dict:
    """`runs`: run directories (each with metrics.json and predictions.parquet)."""
    by_method: dict[str, list[tuple[Path, dict]]] = {}
    for r in sorted(map(Path, runs)):
        m = json.loads((r / "metrics.json").read_text())
        by_method.setdefault(m["method"], []).append((r, m))
    result: dict = {"dataset": dataset, "methods": {}}
    for method, pairs in by_method.items():
        dirs = [d for d, _ in pairs]
        ms = [m for _, m in pairs]
        task = _task(ms[0])
        result["task"] = ms[0]["task"]
        result["task_type"] = task.kind
        names = METRICS[task.kind]
        entry: dict = {"seeds": [m["seed"] for m in ms]}
        for split in ("val", "test"):
            entry[split] = {}
            for name in names:
                vals = [m[split][name]["value"] for m in ms]
                reasons = [m[split][name].get("reason") for m in ms if m[split][name].get("reason")]
                entry[split][name] = _summary(vals, reasons)
            entry[split]["n"] = ms[0][split]["n"]
            entry[split]["positives"] = ms[0][split]["positives"]
        preds = [task.read_predictions(pl.read_parquet(d / "predictions.parquet").filter(pl.col("split") == "test"))
                 for d in dirs]
        ok = labelled_rows(task.kind, preds[0][0])
        thrs = [m["test"].get("thresholds") for m in ms]
        for name in names:
            e = entry["test"][name]
            if e["mean"] is not None and n_boot:
                e["ci_low"], e["ci_high"] = bootstrap_ci(task.kind, name, [y[ok] for y, _ in preds],
                                                         [p[ok] for _, p in preds], n_boot, 0, thrs)
        entry["n_params"] = ms[0]["n_params"]
        entry["tuning"] = ms[0].get("tuning_budget")  # None: the shared `train` block, no search
        entry["tuned"] = ms[0].get("tuned")           # the settings its search chose (the same for every seed)
        entry["train_seconds"] = float(np.mean([m["seconds"] for m in ms]))
        result["methods"][method] = entry
    if cohort_json and Path(cohort_json).exists():
        result["cohort"] = json.loads(Path(cohort_json).read_text())
    write_json(out, result)
    with atomic_path(Path(out).with_suffix(".md")) as tmp:
        tmp.write_text(markdown_table(result))
    return result


def _fmt(e: dict) -> str:
    if e["mean"] is None:
        return f"n/a ({e.get('reason', 'undefined')})"
    s = f"{e['mean']:.3f} ± {e['sd']:.3f}"
    if e.get("ci_low") is not None:
        s += f" [{e['ci_low']:.3f}, {e['ci_high']:.3f}]"
    return s


def markdown_table(result: dict) -> str:
    """Methods × test metrics: mean ± sd over seeds [bootstrap 95% CI]."""
    kind = result.get("task_type", "binary")
    names = METRICS[kind]
    rows = [f"### {result['dataset']} — task {result.get('task')} ({kind}; test split; mean ± sd over seeds [95% CI])",
            "", "| method | seeds | " + " | ".join(LABELS[n] for n in names) + " | params |",
            "| --- | --- |" + " --- |" * len(names) + " --- |"]
    order = sorted(result["methods"], key=lambda k: -(result["methods"][k]["test"][names[0]]["mean"] or -1))
    for m in order:
        e = result["methods"][m]
        rows.append(f"| {m} | {len(e['seeds'])} | " + " | ".join(_fmt(e["test"][n]) for n in names)
                    + f" | {e['n_params']:,} |")
    t = next(iter(result["methods"].values()))["test"] if result["methods"] else {"n": 0, "positives": 0}
    what = {"survival": "events", "multiclass": "per class", "multilabel": "positive labels"}.get(kind, "positive")
    rows += ["", f"Test split: {t['n']} samples, {t['positives']} {what}. {tuning_note(result)}", ""]
    return "\n".join(rows + tuned_settings(result, order))


def tuned_settings(result: dict, order: list[str]) -> list[str]:
    """The settings each method's search chose (results/{dataset}/tuning/{method}.json has every trial),
    as Markdown lines; none without tuning. logreg_concat without C: it kept its own pick on validation."""
    tuned = {m: result["methods"][m].get("tuned") for m in order if result["methods"][m].get("tuning")}
    if not tuned:
        return []

    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    rows = ["Settings chosen by each method's search on validation:", "", "| method | settings |", "| --- | --- |"]
    rows += [f"| {m} | " + (", ".join(f"{k}={fmt(v)}" for k, v in sorted((p or {}).items())) or "the defaults")
             + " |" for m, p in tuned.items()]
    return rows + [""]


def tuning_note(result: dict) -> str:
    """What the methods of a metrics.json were tuned with: the same budget for all, or not."""
    budgets = {m: e.get("tuning") for m, e in result["methods"].items()}
    if not budgets or all(b is None for b in budgets.values()):
        return "No per-method tuning: every method trained with the shared `train` settings."
    same = {json.dumps(b, sort_keys=True) for b in budgets.values()}
    if len(same) == 1:
        b = next(iter(budgets.values()))
        first = f"trial 0 {b['first']}, then " if b.get("first") else ""
        return (f"Every method tuned with the same budget: {b['trials']} trials on the validation split "
                f"({first}{b['sampler']}; each scored on seeds {b['seeds']}).")
    return "Tuning budgets differ: " + "; ".join(f"{m}: {b['trials'] if b else 'none'}" for m, b in budgets.items()) + "."


def main_tables(metrics_files: list[str | Path], out_dir: str | Path) -> pl.DataFrame:
    """results/tables/main.{md,csv,tex}: methods × datasets × test metrics, mean ± sd over seeds;
    the best mean per (dataset, metric) column is marked (bold in Markdown and LaTeX)."""
    rows = []
    results = [json.loads(Path(f).read_text()) for f in metrics_files]
    for r in results:
        for method, e in r["methods"].items():
            for name in METRICS[r.get("task_type", "binary")]:
                s = e["test"][name]
                rows.append({"dataset": r["dataset"], "method": method, "metric": name, "mean": s["mean"],
                             "sd": s["sd"], "ci_low": s.get("ci_low"), "ci_high": s.get("ci_high"),
                             "seeds": len(e["seeds"])})
    df = pl.DataFrame(rows, schema={"dataset": pl.String, "method": pl.String, "metric": pl.String,
                                    "mean": pl.Float64, "sd": pl.Float64, "ci_low": pl.Float64,
                                    "ci_high": pl.Float64, "seeds": pl.Int64})
    lower = pl.col("metric").is_in(list(LOWER_IS_BETTER))
    best = pl.when(lower).then(pl.col("mean").min().over("dataset", "metric")) \
        .otherwise(pl.col("mean").max().over("dataset", "metric"))
    df = df.with_columns((pl.col("mean") == best).alias("best"))
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "main.csv") as tmp:
        df.write_csv(tmp)
    cols = df.select("dataset", "metric").unique(maintain_order=True).rows()
    methods = df["method"].unique(maintain_order=True).to_list()

    def cell(method, d, m, bold):
        r = df.filter((pl.col("method") == method) & (pl.col("dataset") == d) & (pl.col("metric") == m))
        if r.height == 0:
            return "–"
        r = r.row(0, named=True)
        if r["mean"] is None:
            return "n/a"
        txt = f"{r['mean']:.3f} ± {r['sd']:.3f}"
        return bold(txt) if r["best"] else txt

    md = ["| method | " + " | ".join(f"{d} {LABELS[m]}" for d, m in cols) + " |",
          "| --- |" + " --- |" * len(cols)]
    md += [f"| {me} | " + " | ".join(cell(me, d, m, lambda t: f"**{t}**") for d, m in cols) + " |" for me in methods]
    notes = " ".join(f"{r['dataset']}: {tuning_note(r)}" for r in results)
    with atomic_path(out_dir / "main.md") as tmp:
        tmp.write_text("Test split, mean ± sd over seeds; best per column in bold (↓: lower is better; ECE over "
                       f"{ECE_BINS} equal-mass bins). {notes}\n\n" + "\n".join(md) + "\n")
    tex = ["\\begin{tabular}{l" + "c" * len(cols) + "}", "\\toprule",
           "method & " + " & ".join(f"{d} {LABELS[m]}".replace("↓", "$\\downarrow$") for d, m in cols) + " \\\\",
           "\\midrule"]
    tex += [me.replace("_", "\\_") + " & " + " & ".join(
        cell(me, d, m, lambda t: f"\\textbf{{{t}}}").replace("±", "$\\pm$") for d, m in cols) + " \\\\"
        for me in methods]
    tex += ["\\bottomrule", "\\end{tabular}"]
    with atomic_path(out_dir / "main.tex") as tmp:
        tmp.write_text("\n".join(tex) + "\n")
    return df
