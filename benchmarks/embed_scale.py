"""The embed stage at scale: per-item cost at ≥ 20k items, shard overhead and merge cost.

Each measurement is one `medmix embed` (or `medmix merge`) process, as a workflow job runs it:
interpreter start, model load, plan, encode, cache write. The cohorts are the demo's tiled to N rows
(`--n`, e.g. 2,000 and 20,000) with every input distinct, so no item is deduplicated away:

- text: each note gets its own accession line; encoder `minilm_head` (real MiniLM weights,
  max_length 48) by default;
- images: every row points at its own path, a symlink to one of `--distinct-images` synthetic
  radiograph-sized JPEGs (2544 × 3056, as MIMIC-CXR-JPG; made by bench_image_encode.synth_cxr) so the
  disk holds few of them; every path is decoded and resized afresh (the page cache keeps the files
  hot: on a cluster's network file system reading costs more). Encoder `clip_teacher` by default.

Per-item cost = job wall time / N; the ratio of the per-item costs at the largest and the smallest N
says whether cost grows linearly (1.0, or below it as the job's fixed cost is spread) or faster. The
line through the two sizes splits a job into a marginal cost per item and a fixed cost per job. Shards: the same work as 4 shard jobs one after the
other plus the merge job; overhead = (sum of the shard jobs − the unsharded job) / 3 per extra job.

    PYTHONPATH=. python benchmarks/embed_scale.py --n 2000 20000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_image_encode import synth_cxr  # noqa: E402


def tiled_cohort(src: Path, n: int, folder: Path, images: list[str]) -> Path:
    """The demo cohort repeated to n rows: new sample/patient ids per copy (so splits stay patient-
    disjoint), a distinct note per row, and a distinct image path per row (a symlink)."""
    out = folder / f"cohort_{n}.parquet"
    if out.exists():
        return out
    co = pl.read_parquet(src)
    reps = -(-n // len(co))
    parts = []
    for r in range(reps):
        parts.append(co.with_columns(
            *(pl.col(c).cast(pl.Utf8) + f"_{r}" for c in ("sample_id", "patient_id")),
        ))
    big = pl.concat(parts).head(n).with_row_index("_i")
    big = big.with_columns(
        pl.when(pl.col("notes").is_not_null())
        .then(pl.col("notes") + pl.format("\nACCESSION: {}", pl.col("_i")))
        .otherwise(None).alias("notes"))
    links = folder / "cxr"
    links.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = links / f"img{i:06d}.jpg"
        if not p.exists():
            p.symlink_to(images[i % len(images)])
        paths.append([str(p)])
    big = big.with_columns(pl.Series("cxr", paths, dtype=pl.List(pl.Utf8))).drop("_i")
    big.write_parquet(out)
    shutil.copy(src.with_suffix(".json"), out.with_suffix(".json"))
    return out


def job(args_list: list[str], threads: int) -> float:
    """Wall time of one medmix process (the way a workflow job runs it)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "medmix", *args_list], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--cohort", default="results/demo/cohort.parquet")
    ap.add_argument("--n", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--text-encoder", default="minilm_head")
    ap.add_argument("--image-encoder", default="clip_teacher")
    ap.add_argument("--distinct-images", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each job (OMP_NUM_THREADS)")
    ap.add_argument("--workers", type=int, default=2, help="image-decoding workers of each image job")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--shard-text-n", type=int, default=None, help="N at which the text shards run (default: largest)")
    ap.add_argument("--shard-image-n", type=int, default=None, help="N at which the image shards run (default: "
                    "smallest; an extra job's overhead does not depend on N, and decoding 20k radiographs twice "
                    "costs 20 min on 2 cores)")
    ap.add_argument("--dir", default="/tmp/medmix-embed-scale")
    ap.add_argument("--skip", nargs="*", default=[], choices=["text", "image"])
    args = ap.parse_args()
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    images = sorted(str(p) for p in Path(synth_cxr(d / "distinct", args.distinct_images)).parent.glob("cxr*.jpg"))
    results = []
    shard_at = {"text": args.shard_text_n or max(args.n), "image": args.shard_image_n or min(args.n)}
    for kind, mod, enc in (("text", "notes", args.text_encoder), ("image", "cxr", args.image_encoder)):
        if kind in args.skip:
            continue
        extra = ["--workers", str(args.workers)] if kind == "image" else []
        for n in args.n:
            co = tiled_cohort(Path(args.cohort), n, d, images)
            n_items = pl.read_parquet(co)[mod].drop_nulls().len()
            base = ["embed", "--config", args.config, "--cohort", str(co), "--modality", mod,
                    "--encoder", enc, "--quiet", *extra]
            out = d / f"{kind}_{n}.h5"
            out.unlink(missing_ok=True)
            t_one = job([*base, "--out", str(out)], args.threads)
            r = {"kind": kind, "encoder": enc, "n_items": n_items, "unsharded_s": round(t_one, 1),
                 "per_item_ms": round(1e3 * t_one / n_items, 3)}
            shard_files = [d / f"{kind}_{n}.s{i}.h5" for i in range(args.shards)]
            merged = d / f"{kind}_{n}.merged.h5"
            if n == shard_at[kind]:
                t_shards = [job([*base, "--out", str(p), "--shard", f"{i}/{args.shards}"], args.threads)
                            for i, p in enumerate(shard_files)]
                merged.unlink(missing_ok=True)
                t_merge = job(["merge", "--config", args.config, "--cohort", str(co), "--modality", mod,
                               "--encoder", enc, "--shards", *map(str, shard_files), "--out", str(merged)], 1)
                with h5py.File(out) as a, h5py.File(merged) as b:
                    same = bool(np.array_equal(a["emb"][:], b["emb"][:]))
                r.update(shards_s=[round(t, 1) for t in t_shards], merge_s=round(t_merge, 1),
                         shard_overhead_s=round((sum(t_shards) - t_one) / (args.shards - 1), 1),
                         merged_equals_unsharded=same)
            results.append(r)
            print(json.dumps(r), flush=True)
            for p in [out, merged, *shard_files]:
                p.unlink(missing_ok=True)
    print(f"\n{'kind':6} {'items':>7} {'one job s':>10} {'ms/item':>8} {'4 shards s':>11} {'overhead/job s':>15} {'merge s':>8}")
    for r in results:
        sh = (f"{sum(r['shards_s']):11.1f} {r['shard_overhead_s']:15.1f} {r['merge_s']:8.1f}  merged == unsharded: "
              f"{r['merged_equals_unsharded']}" if "merge_s" in r else "")
        print(f"{r['kind']:6} {r['n_items']:7d} {r['unsharded_s']:10.1f} {r['per_item_ms']:8.2f} {sh}")
    for kind in ("text", "image"):
        rs = [r for r in results if r["kind"] == kind]
        if len(rs) > 1:
            a, b = rs[0], rs[-1]
            marginal = 1e3 * (b["unsharded_s"] - a["unsharded_s"]) / (b["n_items"] - a["n_items"])
            fixed = a["unsharded_s"] - marginal * a["n_items"] / 1e3
            print(f"{kind}: per-item cost at {b['n_items']} items / at {a['n_items']}: "
                  f"{b['per_item_ms'] / a['per_item_ms']:.2f}x; marginal {marginal:.2f} ms per item, "
                  f"fixed {fixed:.1f} s per job (start, model load, write)")


if __name__ == "__main__":
    main()
