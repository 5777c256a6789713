"""Sharding and checkpoint overhead of the embed stage, and merged == unsharded.

    PYTHONPATH=. python benchmarks/embed_shard_overhead.py COHORT.parquet MODALITY ENCODER_SLUG
(encoder settings from config.yaml; outputs under /tmp/bench_shard). Times: a warm-up run, an
unsharded run, the same with a checkpoint after every batch, 4 shards one after the other, the merge.
"""
import time, sys, numpy as np, h5py
sys.path.insert(0, '.')
from medmix.embed import run_embed, merge_shards
from medmix import config
cfg = config.load('config.yaml')
co = sys.argv[1]; mod, slug = sys.argv[2], sys.argv[3]
spec = config.embed_job(cfg, 'demo', mod, slug)['spec']
d = '/tmp/bench_shard'
import os; os.makedirs(d, exist_ok=True)
run_embed(co, mod, slug, spec, f'{d}/warm.h5', device='cpu', progress=False)
t = time.perf_counter(); s = run_embed(co, mod, slug, spec, f'{d}/full.h5', device='cpu', progress=False, checkpoint_every=10**6, checkpoint_seconds=1e9); a = time.perf_counter() - t
t = time.perf_counter(); run_embed(co, mod, slug, spec, f'{d}/ck.h5', device='cpu', progress=False, checkpoint_every=1); c = time.perf_counter() - t
ts = []
for i in range(4):
    t = time.perf_counter(); run_embed(co, mod, slug, spec, f'{d}/s{i}.h5', device='cpu', progress=False, shard=(i, 4)); ts.append(time.perf_counter() - t)
t = time.perf_counter(); merge_shards(co, mod, slug, spec, [f'{d}/s{i}.h5' for i in range(4)], f'{d}/m.h5'); m = time.perf_counter() - t
eq = np.array_equal(h5py.File(f'{d}/full.h5')['emb'][:], h5py.File(f'{d}/m.h5')['emb'][:])
print(dict(samples=s['samples'], inputs=s['inputs'], unique=s['unique_inputs'], batches=s['batches'], unsharded_s=round(a,1), checkpoint_every_batch_s=round(c,1), shards_s=[round(x,1) for x in ts], merge_s=round(m,2), identical=eq))
