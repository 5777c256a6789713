"""Two studies of one dataset side by side on the validation split only (e.g. tuned against untuned).

Reads the aggregated `metrics.json` of each (results/{dataset}/metrics.json of two runs) and prints,
per method present in both, the validation primary metric (AUROC; macro AUROC for multilabel) as
mean ± sd over seeds, the difference and how many methods moved up. Test entries are never read:
this is the script a default is decided with.

    python benchmarks/compare_val.py /tmp/untuned/demo/metrics.json results/demo/metrics.json
"""

from __future__ import annotations

import json
import sys

from medmix.metrics import PRIMARY


def validation(path: str) -> tuple[str, dict[str, dict]]:
    r = json.loads(open(path).read())
    name = PRIMARY[r.get("task_type", "binary")]
    return name, {m: e["val"][name] for m, e in r["methods"].items()}


def main() -> None:
    a_path, b_path = sys.argv[1], sys.argv[2]
    name, a = validation(a_path)
    _, b = validation(b_path)
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


if __name__ == "__main__":
    main()
