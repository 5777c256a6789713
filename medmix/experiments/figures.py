"""Figures and tables of the paper's experiments, computed from the runs' outputs (never typed).

robustness_{train_one,train_multi,test}.png and missing_subsets.md from results/{dataset}/robustness.json,
ablation.{png,md} from results/{dataset}/metrics.json, efficiency.{png,csv} from
results/{dataset}/efficiency.json, weights_{dataset}.png from a method's predictions.parquet.
Every curve or bar is a mean over seeds with ± sd; one line (or bar) per method; one panel per dataset.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import polars as pl

from medmix.io import atomic_path

ABLATIONS = ["medmix", "medmix_noteacher", "medmix_single_expert", "medmix_intra_mean", "medmix_inter_concat"]
# the teacher's contribution (docs/teacher.md): the variants of how it teaches, between no teacher and
# the teacher deployed at inference (the ceiling)
TEACHER_ABLATIONS = ["medmix_noteacher", "medmix", "medmix_joint", "medmix_two_stage", "medmix_warmup",
                     "medmix_confidence", "medmix_align_fused", "medmix_relational", "medmix_reliability",
                     "teacher_deployed"]


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from cycler import cycler
    # up to 30 methods distinct in one panel: ten colours, then the same colours with other markers
    plt.rcParams["axes.prop_cycle"] = cycler(marker=["o", "s", "^"]) * cycler(color=plt.get_cmap("tab10").colors)
    return plt


def _save(fig, out: str | Path) -> None:
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    _plt().close(fig)


def _read(files) -> list[dict]:
    return [json.loads(Path(f).read_text()) for f in files]


def _curve(ax, curve: dict, label: str, metric: str = "auroc") -> None:
    pts = sorted((float(r), e[metric]["mean"], e[metric]["sd"]) for r, e in curve.items() if e[metric]["mean"] is not None)
    if not pts:
        return
    x, y, sd = map(np.array, zip(*pts))
    ax.errorbar(x, y, yerr=sd, capsize=3, label=label)


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9)


def _label(metric: str) -> str:
    from medmix.experiments.aggregate import LABELS
    return LABELS.get(metric, metric)


def _finish(ax, xlabel: str, title: str, metric: str = "auroc") -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"test {_label(metric)} (mean ± sd over seeds)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # beside the axes: many methods would hide the curves
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def robustness(summaries: list[str | Path], fig_dir: str | Path, table_dir: str | Path) -> None:
    """The three robustness figures and missing_subsets.md."""
    plt = _plt()
    res = _read(summaries)
    fig_dir, table_dir = Path(fig_dir), Path(table_dir)

    fig, axes = plt.subplots(1, len(res), figsize=(5.5 * len(res), 4), squeeze=False)
    for ax, r in zip(axes[0], res):
        k = r.get("primary", "auroc")
        for method, curve in r["test_drop"].items():
            _curve(ax, curve, method, k)
        _finish(ax, "test-time drop rate per available modality (seeded masks shared by all methods)",
                f"{r['dataset']}: test-time modality drop", k)
    _save(fig, fig_dir / "robustness_test.png")

    fig, axes = plt.subplots(1, len(res), figsize=(5.5 * len(res), 4), squeeze=False)
    for ax, r in zip(axes[0], res):
        k = r.get("primary", "auroc")
        for method, curve in r["train_multi"].items():
            _curve(ax, curve, method, k)
        if not r["train_multi"]:
            _empty(ax, "no train-time multi-random drop in the config")
        _finish(ax, "train-time drop rate per modality of each training sample",
                f"{r['dataset']}: train-time random drop, full test set", k)
    _save(fig, fig_dir / "robustness_train_multi.png")

    ncol = max([len(r["train_one"]) for r in res] + [1])
    fig, axes = plt.subplots(len(res), ncol, figsize=(4.5 * ncol, 3.8 * len(res)), squeeze=False)
    for row, r in zip(axes, res):
        mods = sorted(r["train_one"])
        k = r.get("primary", "auroc")
        for ax, mod in zip(row, mods):
            for method, curve in r["train_one"][mod].items():
                _curve(ax, curve, method, k)
            _finish(ax, f"fraction of training samples without {mod}", f"{r['dataset']}: {mod} removed in training", k)
        for ax in row[len(mods):]:
            _empty(ax, "no train-time one-modality drop in the config" if not mods else "")
            ax.set_axis_off() if mods else None
    _save(fig, fig_dir / "robustness_train_one.png")

    lines = ["Test metric (the task's primary one: AUROC for binary tasks), mean ± sd over seeds, of the trained "
             "models given only some modalities at test time.",
             "*paired*: test samples with every modality; *partial*: all test samples; a subset row: the samples "
             "that have at least one of its modalities, with the others withheld.", ""]
    for r in res:
        methods = list(r["test_sets"])
        rows = ["partial", "paired"] + sorted({s for m in methods for s in r["subsets"][m]},
                                             key=lambda s: (s.count("+"), s))
        k = r.get("primary", "auroc")
        lines += [f"### {r['dataset']} ({_label(k)})", "", "| test set | n | " + " | ".join(methods) + " |",
                  "| --- | --- |" + " --- |" * len(methods)]
        for name in rows:
            cells, n = [], None
            for m in methods:
                e = r["test_sets"][m].get(name) if name in ("partial", "paired") else r["subsets"][m].get(name)
                if e is None or e[k]["mean"] is None:
                    cells.append("–")
                    continue
                n = n or e["n"]
                cells.append(f"{e[k]['mean']:.3f} ± {e[k]['sd']:.3f}")
            lines.append(f"| {name} | {n if n is not None else '–'} | " + " | ".join(cells) + " |")
        lines.append("")
    with atomic_path(table_dir / "missing_subsets.md") as tmp:
        tmp.write_text("\n".join(lines))
    mechanisms(res, fig_dir, table_dir)


def mechanisms(res: list[dict], fig_dir: Path, table_dir: Path) -> None:
    """One figure per missingness mechanism (robustness_<name>.png: a panel per dataset and curve, a
    line per method; for MAR/MNAR medmix (else the first method) under MCAR at the same missingness dashed; a
    train-time panel where the mechanism was also applied in training) and missing_mechanisms.md
    (each method's metric and its loss from rate 0, per dataset, mechanism and rate)."""
    plt = _plt()
    names = list(dict.fromkeys([n for r in res for n in r.get("mechanisms", {}) if n != "mcar"]
                               + [n for r in res for n in r.get("train_mechanisms", {})]))
    for name in names:
        panels = ([(r, key, "test") for r in res for key in r.get("mechanisms", {}).get(name, {})]
                  + [(r, "all", "train") for r in res if r.get("train_mechanisms", {}).get(name)])
        ncol = min(len(panels), 3) or 1
        nrow = max(1, -(-len(panels) // ncol))
        fig, axes = plt.subplots(nrow, ncol, figsize=(5.0 * ncol, 3.8 * nrow), squeeze=False)
        for ax, (r, key, when) in zip(axes.flat, panels):
            k = r.get("primary", "auroc")
            curves = r["mechanisms"][name][key] if when == "test" else r["train_mechanisms"][name]
            mcar = r["mechanisms"].get("mcar", {}).get("all", {}) if when == "test" else r.get("train_multi", {})
            first = "medmix" if "medmix" in curves else next(iter(curves), None)
            for method, curve in curves.items():
                _curve(ax, curve, method, k)
                ref = mcar.get(method) if key == "all" else None
                if ref and method == first:   # MCAR at the same missingness, medmix (else the first): the reference
                    pts = sorted((float(q), e[k]["mean"]) for q, e in ref.items() if e[k]["mean"] is not None)
                    if pts:
                        ax.plot(*zip(*pts), ls="--", color="grey", marker="none", label=f"{method}, MCAR")
            if when == "train":
                xlabel, what = "train-time rate (as many training inputs dropped as MCAR)", f"{name} in training"
            elif key == "all":
                xlabel, what = "rate (as many inputs dropped as MCAR at this rate)", name
            else:   # a block: the fraction of samples that lose the whole subset
                xlabel, what = f"fraction of samples without {key} (together)", f"{name}: {key}"
            _finish(ax, xlabel, f"{r['dataset']}: {what}", k)
        for ax in list(axes.flat)[len(panels):]:
            ax.set_axis_off()
        if not panels:
            _empty(axes[0][0], f"no {name} curve (no robustness target)")
        _save(fig, fig_dir / f"robustness_{name}.png")
    lines = ["Test metric (the task's primary one), mean over seeds, of the trained models under each test-time "
             "missingness mechanism (masks shared by every method), and in brackets its change from rate 0. "
             "MAR and MNAR drop as many inputs as MCAR at the same rate; *realised* is the fraction of available "
             "inputs dropped (each sample keeps at least one). *At train time*: the methods retrained with the "
             "mechanism's masks on their training samples (rate 0: the main runs), tested on the full test set.", ""]
    for r in res:
        k = r.get("primary", "auroc")
        for name, curves in r.get("mechanisms", {}).items():
            for key, by_method in curves.items():
                methods = list(by_method)
                rates = sorted(by_method[methods[0]], key=float)
                title = f"{name}" + (f" ({key})" if key != "all" else "")
                lines += [f"### {r['dataset']}: {title} ({_label(k)})", "",
                          "| rate | realised | " + " | ".join(methods) + " |", "| --- | --- |" + " --- |" * len(methods)]
                for q in rates:
                    cells = []
                    for m in methods:
                        e, e0 = by_method[m][q][k]["mean"], by_method[m][rates[0]][k]["mean"]
                        cells.append("–" if e is None else f"{e:.3f} ({e - e0:+.3f})" if e0 is not None else f"{e:.3f}")
                    lines.append(f"| {float(q):.1f} | {by_method[methods[0]][q]['realised_rate']:.2f} | "
                                 + " | ".join(cells) + " |")
                lines.append("")
        for name, by_method in r.get("train_mechanisms", {}).items():
            methods = list(by_method)
            rates = sorted({q for m in methods for q in by_method[m]}, key=float)
            lines += [f"### {r['dataset']}: {name} at train time, full test set ({_label(k)})", "",
                      "| train rate | " + " | ".join(methods) + " |", "| --- |" + " --- |" * len(methods)]
            for q in rates:
                cells = []
                for m in methods:
                    e, e0 = (by_method[m].get(x, {}).get(k, {}).get("mean") for x in (q, rates[0]))
                    cells.append("–" if e is None else f"{e:.3f} ({e - e0:+.3f})" if e0 is not None else f"{e:.3f}")
                lines.append(f"| {float(q):.2f} | " + " | ".join(cells) + " |")
            lines.append("")
    with atomic_path(table_dir / "missing_mechanisms.md") as tmp:
        tmp.write_text("\n".join(lines))


# the teacher ablation's two metrics per task type (ranking and precision at the top)
TEACHER_METRICS = {"binary": ("auroc", "auprc"), "multilabel": ("macro_auroc", "macro_auprc")}


def ablation(metrics_files: list[str | Path], fig: str | Path, table: str | Path, methods: list[str] = ABLATIONS,
             ref: str = "medmix", title: str = "Structural ablation", splits: tuple[str, ...] = ("test",),
             metrics: dict | None = None) -> None:
    """An ablation: `methods` (those of each metrics.json, in this order) on the task's first two
    metrics (AUROC/AUPRC for binary tasks; `metrics`: task type -> names, instead) of each split in
    `splits`, with Δ to `ref`; the figure shows the last split."""
    from medmix.metrics import METRICS
    plt = _plt()
    res = _read(metrics_files)
    f, axes = plt.subplots(1, len(res), figsize=(6 * len(res), 4), squeeze=False)
    where = " and ".join(f"{s} split" for s in splits)
    lines = [f"{title} on the {where}: mean ± sd over seeds (Δ: difference of means to {ref}).", ""]
    shown = splits[-1]
    for ax, r in zip(axes[0], res):
        present = [m for m in methods if m in r["methods"]]
        kind = r.get("task_type", "binary")
        names = (metrics or {}).get(kind) or METRICS[kind][:2]
        cols = [(sp, k) for sp in splits for k in names]
        lines += [f"### {r['dataset']} (task {r.get('task')})", "",
                  "| method | seeds | " + " | ".join(f"{sp} {_label(k)} | Δ" for sp, k in cols) + " |",
                  "| --- | --- |" + " --- | --- |" * len(cols)]
        for metric, off in zip(names, (-0.2, 0.2) if len(names) == 2 else (0.0,)):
            mean = [r["methods"][m][shown][metric]["mean"] or np.nan for m in present]
            sd = [r["methods"][m][shown][metric]["sd"] or 0.0 for m in present]
            ax.bar(np.arange(len(present)) + off, mean, 0.4, yerr=sd, capsize=3, label=_label(metric))
        for m in present:
            cells = []
            for sp, metric in cols:
                e = r["methods"][m][sp][metric]
                if e["mean"] is None:
                    cells += ["n/a", ""]
                    continue
                base = r["methods"].get(ref, {}).get(sp, {}).get(metric, {}).get("mean")
                d = e["mean"] - base if base is not None and m != ref else None
                cells += [f"{e['mean']:.3f} ± {e['sd']:.3f}", "" if d is None else f"{d:+.3f}"]
            lines.append(f"| {m} | {len(r['methods'][m]['seeds'])} | " + " | ".join(cells) + " |")
        lines.append("")
        ax.set_xticks(np.arange(len(present)), present, rotation=25, ha="right")
        ax.set_ylabel(f"{shown} metric (mean ± sd over seeds)")
        lo = np.nanmin([r["methods"][m][shown][k]["mean"] or np.nan for m in present for k in names] + [1])
        ax.set_ylim(max(0.0, lo - 0.1), 1.0)
        ax.set_title(f"{r['dataset']}: {title.lower()}", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    _save(f, fig)
    with atomic_path(table) as tmp:
        tmp.write_text("\n".join(lines))


def efficiency(eff_files: list[str | Path], fig: str | Path, csv: str | Path) -> pl.DataFrame:
    """Parameters, FLOPs and latency of each method's deployed stack (encoders + fusion)."""
    plt = _plt()
    rows = []
    for r in _read(eff_files):
        for method, e in r["methods"].items():
            enc = e["encoders"]
            rows.append({
                "dataset": r["dataset"], "method": method,
                "encoders": " ".join(f"{x['modality']}/{x['encoder']}" for x in enc),
                "teacher_encoders_called": " ".join(e["teacher_encoders_called"]),
                "params_encoders": sum({x["weights"]: x["params"] for x in enc}.values()),  # one model per weights
                "params_fusion": e["fusion"]["params"],
                "params_total": e["params_total"], "fusion_teacher_params": e["fusion"]["teacher_params"],
                "gflops_encoders": sum(x["flops"] for x in enc) / 1e9, "gflops_fusion": e["fusion"]["flops"] / 1e9,
                "gflops_total": e["flops_total"] / 1e9, "latency_ms_median": e["latency_ms"]["median"],
                "latency_ms_p90": e["latency_ms"]["p90"], "latency_samples": e["latency_ms"]["n"],
                "threads": r["threads"], "test_primary_seed": e["test_primary"]})
    df = pl.DataFrame(rows)
    with atomic_path(csv) as tmp:
        df.write_csv(tmp)
    dsets = df["dataset"].unique(maintain_order=True).to_list()
    f, axes = plt.subplots(len(dsets), 3, figsize=(15, 0.45 * df.height / max(len(dsets), 1) * len(dsets) + 2.5),
                           squeeze=False)
    for row, ds in zip(axes, dsets):
        d = df.filter(pl.col("dataset") == ds).sort("latency_ms_median")
        y = np.arange(d.height)
        names = [m + (" (teacher encoders)" if t else "") for m, t in zip(d["method"], d["teacher_encoders_called"])]
        for ax, (a, b, unit) in zip(row, [("params_encoders", "params_fusion", "parameters (millions)"),
                                          ("gflops_encoders", "gflops_fusion", "GFLOPs per sample"),
                                          (None, None, "latency per sample, ms (median, batch 1)")]):
            if a is None:
                ax.barh(y, d["latency_ms_median"], xerr=[np.zeros(d.height), d["latency_ms_p90"] - d["latency_ms_median"]],
                        color="tab:green", capsize=3, label="end to end (error bar: p90)")
            else:
                scale = 1e6 if a.startswith("params") else 1.0
                ax.barh(y, d[a] / scale, color="tab:blue", label="encoders")
                ax.barh(y, d[b] / scale, left=d[a] / scale, color="tab:orange", label="fusion")
                for yi, ea, eb in zip(y, d[a] / scale, d[b] / scale):  # the fusion share is too thin to see
                    ax.text(ea + eb, yi, f" {ea + eb:.3g} (fusion {eb:.2g})", va="center", fontsize=7)
                ax.set_xlim(0, float((d[a] + d[b]).max()) / scale * 1.45)
            ax.set_yticks(y, names if ax is row[0] else [""] * d.height)
            ax.set_xlabel(unit)
            ax.set_title(f"{ds}: {unit.split(',')[0]}", fontsize=10)
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3, axis="x")
    f.tight_layout()
    _save(f, fig)
    return df


def weights(dataset: str, runs: list[str | Path], fig: str | Path) -> None:
    """Distributions over test samples (all seeds pooled) of the modality weights β and expert weights α.

    β of a modality is shown over the samples that have it (β > 0); α over the samples whose modality
    is present (the experts' weights are defined there)."""
    plt = _plt()
    preds = pl.concat([pl.read_parquet(Path(r) / "predictions.parquet").filter(pl.col("split") == "test")
                       for r in runs], how="diagonal")
    method = json.loads((Path(runs[0]) / "metrics.json").read_text())["method"]
    betas = [c for c in preds.columns if c.startswith("beta_")]
    alphas = [c for c in preds.columns if c.startswith("alpha_")]
    f, axes = plt.subplots(1, 2, figsize=(5 + 0.9 * len(alphas), 4), gridspec_kw={"width_ratios": [max(len(betas), 1), max(len(alphas), 1)]})
    for ax, cols, title in ((axes[0], betas, "modality weight β"), (axes[1], alphas, "expert weight α")):
        data, labels = [], []
        for c in cols:
            if c.startswith("alpha_"):
                mod = next((m for m in (b[5:] for b in betas) if c.startswith(f"alpha_{m}_")), None)
                keep = (preds[f"beta_{mod}"] > 0) if mod else pl.Series([True] * preds.height)
                v = preds.filter(keep & preds[c].is_not_nan())[c].to_numpy()
                label = re.sub(r"^alpha_", "", c).replace("_", "/\n", 1)
            else:
                v = preds.filter(preds[c] > 0)[c].to_numpy()
                label = c[5:]
            data.append(v)
            labels.append(f"{label}\n(n={len(v)})")
        if data and any(len(v) for v in data):
            ax.boxplot([v if len(v) else [np.nan] for v in data], tick_labels=labels, showmeans=True)
        else:
            _empty(ax, f"{method} has no {title}")
        ax.set_ylabel(f"{title} (0–1)")
        ax.set_title(f"{dataset}: {title} of {method}, test samples, seeds: {len(runs)}", fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(alpha=0.3, axis="y")
    f.tight_layout()
    _save(f, fig)


def calibration(dataset: str, runs: list[str | Path], fig: str | Path) -> None:
    """Reliability diagram of every method on the test split (its seeds pooled; multilabel: every
    label pooled): observed frequency against mean predicted probability over 10 equal-mass bins
    (medmix.metrics.ECE_BINS), with each method's ECE and Brier score (mean over seeds) in the legend."""
    from medmix.experiments.aggregate import _task
    from medmix.metrics import ECE_BINS, equal_mass_bins, labelled_rows
    plt = _plt()
    by: dict[str, list] = {}
    for r in map(Path, runs):
        m = json.loads((r / "metrics.json").read_text())
        task = _task(m)
        if task.kind not in ("binary", "multilabel"):
            continue
        y, p = task.read_predictions(pl.read_parquet(r / "predictions.parquet").filter(pl.col("split") == "test"))
        ok = labelled_rows(task.kind, y)              # the rows the metrics use
        by.setdefault(m["method"], []).append((np.ravel(y[ok]), np.ravel(p[ok]), m["test"]))
    f, ax = plt.subplots(figsize=(6, 5.5))
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1, label="perfect calibration")
    for method, parts in sorted(by.items()):
        y = np.concatenate([a for a, _, _ in parts])
        p = np.concatenate([b for _, b, _ in parts])
        order = np.argsort(p, kind="stable")
        bins = [order[lo:hi] for lo, hi in equal_mass_bins(len(order))]
        xs, ys = [p[b].mean() for b in bins], [y[b].mean() for b in bins]
        t = parts[0][2]
        ece, brier = ("ece", "brier") if "ece" in t else ("macro_ece", "macro_brier")
        e = np.mean([x[2][ece]["value"] for x in parts if x[2][ece]["value"] is not None] or [np.nan])
        b = np.mean([x[2][brier]["value"] for x in parts if x[2][brier]["value"] is not None] or [np.nan])
        ax.plot(xs, ys, marker="o", ms=3, lw=1.2, label=f"{method} (ECE {e:.3f}, Brier {b:.3f})")
    if not by:
        _empty(ax, "no binary or multilabel task: calibration is not defined here")
    ax.set_xlabel(f"mean predicted probability ({ECE_BINS} equal-mass bins)")
    ax.set_ylabel("observed frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"{dataset}: calibration on the test split (seeds pooled)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    _save(f, fig)
