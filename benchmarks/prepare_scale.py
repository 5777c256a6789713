"""How `prepare` grows toward full MIMIC-IV: time and peak memory at three sizes, against one
`polars.read_csv` of the same chartevents table, in the same run.

For each size, `medmix synth --kind mimic4` writes `--stays` patients with `--density` × the default
chartevents rows per stay (rows of items the loader does not read, as in the real table; MIMIC-IV
v2.2 has 313,645,063 chartevents rows over 73,181 ICU stays, ~4,300 per stay). Then, each in a
fresh process (peak RSS = that process's ru_maxrss):

  - prepare: `medmix.data.mimic4.build_cohort` on the folder (every table, the streamed chunked
    reader with each chunk cut to its window);
  - read_csv: `polars.read_csv` of icu/chartevents.csv.gz alone (the one-call alternative).

Prints one row per size, the fitted growth exponents (log-log slope of time and of peak RSS over
chartevents rows) and the extrapolation to full MIMIC-IV.

    PYTHONPATH=. python benchmarks/prepare_scale.py --stays 730 2430 7300 --density 8.6 --work /tmp/prep_scale
    PYTHONPATH=. python benchmarks/prepare_scale.py --repeat results/demo/raw 8 --work /tmp/prep_scale
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

FULL_ROWS, FULL_STAYS = 313_645_063, 73_181   # MIMIC-IV v2.2 icu/chartevents, icu/icustays

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
root, what = sys.argv[1], sys.argv[2]
if what == "prepare":
    from medmix.data.mimic4 import build_cohort
    co, rep = build_cohort(root)
    out = {"medmix": __import__("medmix").__file__, "stays": co.height, "ehr": int(co["ehr"].is_not_null().sum())}
else:
    import polars as pl
    df = pl.read_csv(root + "/icu/chartevents.csv.gz")
    out = {"rows": df.height}
out["seconds"] = time.perf_counter() - t0
out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def measure(root: Path, what: str) -> dict:
    # run outside the checkout, so that PYTHONPATH (made absolute) picks the medmix measured: `-c`
    # would put the current folder first on sys.path
    env = dict(os.environ)
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in env["PYTHONPATH"].split(os.pathsep) if p)
    r = subprocess.run([sys.executable, "-c", CHILD, str(root), what], capture_output=True, text=True,
                       cwd=root, env=env)
    if r.returncode:
        raise SystemExit(f"{what} on {root} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def repeated(src: Path, k: int, dest: Path) -> Path:
    """A copy of the raw folder `src` with every chartevents and labevents row repeated k times
    (rows of wanted items, inside and outside the windows: the probe of issue 16)."""
    import gzip
    import io
    import shutil

    import polars as pl
    if not (dest / "icu" / "chartevents.csv.gz").exists():
        shutil.copytree(src, dest, dirs_exist_ok=True)
        for t in ("icu/chartevents.csv.gz", "hosp/labevents.csv.gz"):
            df = pl.concat([pl.read_csv(src / t, infer_schema_length=0)] * k)
            buf = io.BytesIO()
            df.write_csv(buf)
            with gzip.open(dest / t, "wb", compresslevel=3) as f:
                f.write(buf.getvalue())
    return dest


def slope(x, y) -> float:
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stays", type=int, nargs="+", default=[730, 2430, 7300], help="patients per size")
    ap.add_argument("--density", type=float, default=8.6)
    ap.add_argument("--work", default=None, help="folder for the synthetic data (default: a temporary one)")
    ap.add_argument("--repeat", nargs=2, metavar=("RAW", "K"), default=None,
                    help="instead: prepare on RAW (e.g. results/demo/raw) with every event row repeated K times")
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="prepare_scale_"))
    if a.repeat:   # compare two readers by running this with each one's PYTHONPATH
        root = repeated(Path(a.repeat[0]), int(a.repeat[1]), work / f"repeat{a.repeat[1]}")
        print(json.dumps({"root": str(root), "prepare": measure(root, "prepare")}))
        return
    rows = []
    for n in a.stays:
        root = work / f"n{n}"
        if not (root / "icu" / "chartevents.csv.gz").exists():
            counts = json.loads(subprocess.run(
                [sys.executable, "-m", "medmix", "synth", "--kind", "mimic4", "--out", str(root), "--n", str(n),
                 "--density", str(a.density)], capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
            (root / "counts.json").write_text(json.dumps(counts))
        counts = json.loads((root / "counts.json").read_text())
        p, r = measure(root, "prepare"), measure(root, "read_csv")
        size_mb = (root / "icu" / "chartevents.csv.gz").stat().st_size / 2**20
        rows.append({"patients": n, "stays": counts["icustays"], "chartevents": counts["chartevents"],
                     "labevents": counts["labevents"], "gz_mb": size_mb, "prepare": p, "read_csv": r})
        print(f"| {n:,} | {counts['chartevents']:,} | {size_mb:,.0f} MB | {p['seconds']:.1f} s | {p['peak_mb']:,.0f} MB | "
              f"{r['seconds']:.1f} s | {r['peak_mb']:,.0f} MB | {p['peak_mb'] / r['peak_mb']:.2f}× |", flush=True)
    ce = [r["chartevents"] for r in rows]
    ts, ms = [r["prepare"]["seconds"] for r in rows], [r["prepare"]["peak_mb"] for r in rows]
    st, sm = slope(ce, ts), slope(ce, ms)
    rm = [r["read_csv"]["peak_mb"] for r in rows]
    sr = slope(ce, rm)
    scale = FULL_ROWS / ce[-1]
    print(f"growth over chartevents rows: time ∝ rows^{st:.2f}, peak RSS ∝ rows^{sm:.2f} (log-log fit, {len(rows)} sizes)")
    print(f"full MIMIC-IV ({FULL_ROWS:,} chartevents rows, {scale:.0f}× the largest size): prepare ≈ "
          f"{ts[-1] * scale ** st / 60:.1f} min, peak ≈ {ms[-1] * scale ** sm / 1024:.2f} GB; one read_csv of the "
          f"table ≈ {rm[-1] * scale ** sr / 1024:.0f} GB (peak ∝ rows^{sr:.2f})")
    (work / "prepare_scale.json").write_text(json.dumps({"density": a.density, "sizes": rows, "time_exponent": st,
                                                         "rss_exponent": sm, "read_csv_rss_exponent": sr}, indent=1))


if __name__ == "__main__":
    main()
