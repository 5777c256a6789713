"""Two studies of one dataset side by side on the validation split only (e.g. untuned A, tuned B).

Reads the aggregated `metrics.json` of each (results/{dataset}/metrics.json of two runs) and prints,
per method present in both, the validation primary metric (AUROC; macro AUROC for multilabel) as
mean ± sd over seeds and the difference; where a study was tuned, also the mean over the seeds no
search scored (the unbiased read: the search picked its settings on the others). With B's tuning
records (`--tuning results/demo/tuning`), also what a keep-the-defaults rule would have given on
those seeds: the best trial replaces trial 0 (the defaults, A) only if it beats it by more than
the paired standard error over the tuning seeds. Test entries are never read: this is the script
a default is decided with.

    python benchmarks/compare_val.py /tmp/untuned/demo/metrics.json results/demo/metrics.json \
        --tuning results/demo/tuning
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from medmix.metrics import PRIMARY


def validation(path: str) -> tuple[str, dict[str, dict], set[int]]:
    """(primary metric, {method: its validation summary and seeds}, the seeds any tuning search scored)."""
    r = json.loads(Path(path).read_text())
    name = PRIMARY[r.get("task_type", "binary")]
    scored = {s for e in r["methods"].values() for s in ((e.get("tuning") or {}).get("seeds") or [])}
    return name, {m: {**e["val"][name], "seeds": e["seeds"]} for m, e in r["methods"].items()}, scored


def held_out(e: dict, scored: set[int]) -> float | None:
    vals = [v for s, v in zip(e["seeds"], e["per_seed"]) if s not in scored and v is not None]
    return float(np.mean(vals)) if vals else None


def beats_defaults(record: dict) -> bool:
    """Whether the search's best trial beats trial 0 (the defaults) by more than the paired standard
    error of their per-seed difference."""
    best, first = record["trials"][record["best"]["trial"]], record["trials"][0]
    if best is first:
        return False
    d = np.subtract(best["per_seed"], first["per_seed"])
    se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0
    return best["value"] - first["value"] > se


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a"), ap.add_argument("b")
    ap.add_argument("--tuning", help="B's tuning records (results/{dataset}/tuning/): the keep-defaults rule")
    args = ap.parse_args()
    name, a, scored_a = validation(args.a)
    _, b, scored_b = validation(args.b)
    scored = scored_a | scored_b
    both = [m for m in a if m in b and a[m]["mean"] is not None and b[m]["mean"] is not None]
    held = {m: (held_out(a[m], scored), held_out(b[m], scored)) for m in both} if scored else {}
    held = {m: p for m, p in held.items() if None not in p}
    print(f"validation {name}: A = {args.a}, B = {args.b}")
    print(f"| method | A mean ± sd | B mean ± sd | B − A | A, seeds not scored | B, seeds not scored |\n"
          f"| --- | --- | --- | --- | --- | --- |")
    for m in sorted(both, key=lambda m: -(b[m]["mean"] - a[m]["mean"])):
        ha, hb = (f"{v:.4f}" for v in held[m]) if m in held else ("", "")
        print(f"| {m} | {a[m]['mean']:.4f} ± {a[m]['sd']:.4f} | {b[m]['mean']:.4f} ± {b[m]['sd']:.4f} | "
              f"{b[m]['mean'] - a[m]['mean']:+.4f} | {ha} | {hb} |")
    print(f"\nall seeds: B above A for {sum(b[m]['mean'] > a[m]['mean'] for m in both)} of {len(both)} methods; "
          f"mean difference {np.mean([b[m]['mean'] - a[m]['mean'] for m in both]):+.4f}")
    if held:
        print(f"seeds no search scored (not {sorted(scored)}): B above A for "
              f"{sum(pb > pa for pa, pb in held.values())} of {len(held)}; mean "
              f"{np.mean([pa for pa, _ in held.values()]):.4f} (A) vs {np.mean([pb for _, pb in held.values()]):.4f} (B)")
    if args.tuning and held:
        keep = {m: not beats_defaults(json.loads((Path(args.tuning) / f"{m}.json").read_text())) for m in held}
        rule = [held[m][0] if keep[m] else held[m][1] for m in held]
        print(f"keep-defaults rule (best trial must beat trial 0 by more than the paired SE): defaults kept for "
              f"{sum(keep.values())} of {len(held)}; mean on the seeds not scored {np.mean(rule):.4f}")


if __name__ == "__main__":
    main()
