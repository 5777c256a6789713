"""Two studies of one dataset side by side on the validation split only (e.g. tuned against untuned).

Reads the aggregated `metrics.json` of each (results/{dataset}/metrics.json of two runs) and prints,
per method present in both, the validation primary metric (AUROC; macro AUROC for multilabel) as
mean ± sd over seeds, the difference and how many methods moved up; where B was tuned, the same
on the seeds its search never scored (the unbiased read: the search picked its settings on the
others). Test entries are never read: this is the script a default is decided with.

    python benchmarks/compare_val.py /tmp/untuned/demo/metrics.json results/demo/metrics.json
"""

from __future__ import annotations

import json
import sys

from medmix.metrics import PRIMARY


def validation(path: str) -> tuple[str, dict[str, dict], set[int]]:
    """(primary metric, {method: its validation summary}, the seeds any tuning search scored)."""
    r = json.loads(open(path).read())
    name = PRIMARY[r.get("task_type", "binary")]
    scored = {s for e in r["methods"].values() for s in ((e.get("tuning") or {}).get("seeds") or [])}
    return name, {m: {**e["val"][name], "seeds": e["seeds"]} for m, e in r["methods"].items()}, scored


def held_out(e: dict, scored: set[int]) -> float | None:
    vals = [v for s, v in zip(e["seeds"], e["per_seed"]) if s not in scored and v is not None]
    return sum(vals) / len(vals) if vals else None


def main() -> None:
    a_path, b_path = sys.argv[1], sys.argv[2]
    name, a, scored_a = validation(a_path)
    _, b, scored_b = validation(b_path)
    scored = scored_a | scored_b
    print(f"validation {name}, mean ± sd over seeds: A = {a_path}, B = {b_path}")
    print(f"| method | A | B | B − A |\n| --- | --- | --- | --- |")
    up = 0
    both = [m for m in a if m in b and a[m]["mean"] is not None and b[m]["mean"] is not None]
    for m in sorted(both, key=lambda m: -(b[m]["mean"] - a[m]["mean"])):
        d = b[m]["mean"] - a[m]["mean"]
        up += d > 0
        print(f"| {m} | {a[m]['mean']:.4f} ± {a[m]['sd']:.4f} | {b[m]['mean']:.4f} ± {b[m]['sd']:.4f} | {d:+.4f} |")
    print(f"\nB above A for {up} of {len(both)} methods; mean difference "
          f"{sum(b[m]['mean'] - a[m]['mean'] for m in both) / max(len(both), 1):+.4f}")
    if scored:
        pairs = {m: (held_out(a[m], scored), held_out(b[m], scored)) for m in both}
        pairs = {m: p for m, p in pairs.items() if None not in p}
        if pairs:
            print(f"on the seeds no tuning search scored (not {sorted(scored)}): B above A for "
                  f"{sum(pb > pa for pa, pb in pairs.values())} of {len(pairs)} methods; mean "
                  f"{sum(pa for pa, _ in pairs.values()) / len(pairs):.4f} (A) vs "
                  f"{sum(pb for _, pb in pairs.values()) / len(pairs):.4f} (B)")


if __name__ == "__main__":
    main()
