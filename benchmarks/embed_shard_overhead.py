"""Sharding and checkpoint overhead of the embed stage, and merged == unsharded.

    PYTHONPATH=. python benchmarks/embed_shard_overhead.py COHORT.parquet MODALITY ENCODER_SLUG
(encoder settings from config.yaml; outputs under /tmp/bench_shard). Times: a warm-up run, an
unsharded run, the same with a checkpoint after every batch, 4 shards one after the other, the merge.
"""

from __future__ import annotations

import os
import sys
import time

import h5py
import numpy as np

from medmix import config
from medmix.embed import merge_shards, run_embed


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def main() -> None:
    co, mod, slug = sys.argv[1], sys.argv[2], sys.argv[3]
    spec = config.embed_job(config.load("config.yaml"), "demo", mod, slug)["spec"]
    d = "/tmp/bench_shard"
    os.makedirs(d, exist_ok=True)
    kw = {"device": "cpu", "progress": False}
    run_embed(co, mod, slug, spec, f"{d}/warm.h5", **kw)
    s, unsharded = timed(run_embed, co, mod, slug, spec, f"{d}/full.h5", checkpoint_every=10**6,
                         checkpoint_seconds=1e9, **kw)
    _, every_batch = timed(run_embed, co, mod, slug, spec, f"{d}/ck.h5", checkpoint_every=1, **kw)
    shards = [timed(run_embed, co, mod, slug, spec, f"{d}/s{i}.h5", shard=(i, 4), **kw)[1] for i in range(4)]
    _, merge = timed(merge_shards, co, mod, slug, spec, [f"{d}/s{i}.h5" for i in range(4)], f"{d}/m.h5")
    with h5py.File(f"{d}/full.h5") as a, h5py.File(f"{d}/m.h5") as b:
        same = np.array_equal(a["emb"][:], b["emb"][:])
    print(dict(samples=s["samples"], inputs=s["inputs"], unique=s["unique_inputs"], batches=s["batches"],
               unsharded_s=round(unsharded, 1), checkpoint_every_batch_s=round(every_batch, 1),
               shards_s=[round(x, 1) for x in shards], merge_s=round(merge, 2), identical=same))


if __name__ == "__main__":
    main()
