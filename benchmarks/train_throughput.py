"""Training throughput: medmix's trainer vs a plain DataLoader(TensorDataset) loop.

Same model (MedMIX without teacher), same batch size, same learning rate, same cached tensors of a
dataset (default: the demo), in one run, with one torch thread by default (a train job of the
workflow declares `threads: 1`; `--threads 2` for both cores). The plain loop is what a typical
PyTorch training script does: `DataLoader(TensorDataset(...), shuffle=True)` (one __getitem__ per sample, then
default_collate) and `torch.optim.AdamW(model.parameters())`. medmix's side is the trainer's own
epoch function (`medmix.train.train_epoch`: index-gathered batches from tensors held in memory)
with its optimiser (`medmix.train.adamw`: the fused AdamW kernel). To say where the gain comes
from, it also prints the DataLoader loop with the fused optimiser, and the data path alone
(building every batch of an epoch, no model).

    PYTHONPATH=. python benchmarks/train_throughput.py --dataset demo --epochs 5
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from medmix import config
from medmix.data import cohort as cohort_mod
from medmix.encoders.cache import read_attrs
from medmix.inputs import Caches, load_role
from medmix.methods import method_spec
from medmix.model import create_model, fusion_config
from medmix.train import adamw, make_batch, train_epoch


def _rss_mb() -> float:
    """Peak resident memory of this process in MiB. VmHWM where Linux has it: unlike ru_maxrss,
    it starts afresh at exec, so a child does not report its parent's peak."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--dataset", default="demo")
    ap.add_argument("--results", default="results")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each loop (alternating; best kept)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds trained together (the seeds-together lines)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for both loops (1: as the workflow runs a train job, `threads: 1`)")
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        return memory_child(args)
    rss0 = _rss_mb()
    spec, results, cohort, mods, y = _setup(args)
    inp = load_role(Caches.under(results, args.dataset), spec, cohort, "experts", mods)
    tr = np.flatnonzero((cohort["split"] == "train").to_numpy() & ~np.isnan(y))
    yt = torch.from_numpy(y.astype(np.float32))
    cache_mb = sum(x.numel() * 4 for xs in inp.X.values() for x in xs) / 2**20
    method = method_spec("medmix_noteacher")
    fcfg = fusion_config(method, spec.train)
    rss_loaded = _rss_mb()

    def run(loop, fused: bool) -> float:
        torch.manual_seed(0)
        model = create_model(method, inp.dims, fcfg)
        opt = adamw(model.parameters(), 1e-3, 0.01) if fused else torch.optim.AdamW(model.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(0)
        t = time.perf_counter()
        n = loop(model, opt, gen)
        return n / (time.perf_counter() - t)

    tr_t = torch.from_numpy(tr)

    def medmix_loop(model, opt, gen):
        for _ in range(args.epochs):
            train_epoch(model, opt, (inp.X, inp.M, None, None), yt, tr_t, args.batch_size, gen)
        return args.epochs * len(tr)

    flat = [x[tr] for m in mods for x in inp.X[m]] + [inp.M[m][tr] for m in mods] + [yt[tr]]
    ds = torch.utils.data.TensorDataset(*flat)

    def dataloader_loop(model, opt, gen):
        dl = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True, generator=gen)
        n = 0
        for _ in range(args.epochs):
            model.train()
            for b in dl:
                it = iter(b)
                x = {m: [next(it) for _ in inp.X[m]] for m in mods}
                mask = {m: next(it) for m in mods}
                yb = next(it)
                out = model({"x": x, "mask": mask}, train=True, gen=gen)
                loss, _ = model.loss(out, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                n += len(yb)
        return n

    def batches_only(kind: str) -> float:
        gen = torch.Generator().manual_seed(0)
        t = time.perf_counter()
        n = 0
        for _ in range(args.epochs):
            if kind == "dataloader":
                for b in torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True, generator=gen):
                    n += len(b[-1])
            else:
                perm = tr_t[torch.randperm(len(tr_t), generator=gen)]
                for s in range(0, len(perm), args.batch_size):
                    idx = perm[s:s + args.batch_size]
                    make_batch(inp.X, inp.M, idx)
                    n += len(yt[idx])
        return n / (time.perf_counter() - t)

    dl_sps = dlf_sps = mm_sps = dl_data = mm_data = 0.0
    for _ in range(args.repeats):   # alternate the loops, keep each one's best (the machine is noisy)
        dl_sps = max(dl_sps, run(dataloader_loop, fused=False))
        dlf_sps = max(dlf_sps, run(dataloader_loop, fused=True))
        mm_sps = max(mm_sps, run(medmix_loop, fused=True))
        dl_data, mm_data = max(dl_data, batches_only("dataloader")), max(mm_data, batches_only("medmix"))
    print(f"{args.dataset}: {len(tr)} training samples, {sum(len(v) for v in inp.X.values())} experts, "
          f"cached tensors {cache_mb:.1f} MiB, batch {args.batch_size}, {args.epochs} epochs, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"plain loop: DataLoader(TensorDataset) + torch.optim.AdamW: {dl_sps:8.0f} samples/s")
    print(f"  the same with the fused AdamW:                          {dlf_sps:8.0f} samples/s   x{dlf_sps / dl_sps:.2f}")
    print(f"medmix trainer (train_epoch + adamw):                     {mm_sps:8.0f} samples/s   "
          f"speed-up x{mm_sps / dl_sps:.2f}")
    print(f"data path only (no model): DataLoader {dl_data:,.0f} vs index gather {mm_data:,.0f} samples/s, "
          f"speed-up x{mm_data / dl_data:.1f}")
    # where a medmix step goes: operator calls per training step (one epoch under torch.profiler)
    from torch.profiler import profile
    torch.manual_seed(0)
    model = create_model(method, inp.dims, fcfg)
    opt = adamw(model.parameters(), 1e-3, 0.01)
    with profile() as prof:
        train_epoch(model, opt, (inp.X, inp.M, None, None), yt, tr_t, args.batch_size, torch.Generator().manual_seed(0))
    steps = -(-len(tr) // args.batch_size)
    ops = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    print(f"per medmix step: {sum(e.count for e in ops) / steps:.0f} aten operator calls (nested ones included), "
          f"{sum(e.self_cpu_time_total for e in ops) / steps / 1e3:.2f} ms of operator CPU time under the profiler")
    print(f"this process: peak RSS {_rss_mb():.0f} MiB (interpreter + libraries {rss0:.0f} MiB before loading; "
          f"{rss_loaded - rss0:.0f} MiB after loading the caches)")
    seeds_together(args, inp, method, fcfg, yt, tr_t, dl_sps)
    memory(args)


def seeds_together(args, inp, method, fcfg, yt, tr_t, dl_sps: float) -> None:
    """Throughput of S seeds trained together against the plain loop (one seed), in seed-samples per
    second (training samples × seeds / wall time): what a train job of S seeds gets done per second.

    - one after another in one process: each seed's epochs are train_epoch's on its own network
      (what a job does for a network that cannot be stacked);
    - as one seed ensemble (medmix.model.ensemble, what a train job does for MedMIX): the S networks
      stacked, `train_epoch_seeds` (each seed its own batch order, masks and dropout), one fused
      AdamW over the stacked tensors; also with S = 1 (a one-seed job)."""
    from medmix.model.ensemble import stack_seeds
    from medmix.train import SeedTables, train_epoch_seeds
    S, n = args.seeds, len(tr_t)

    def one_by_one() -> float:
        t = time.perf_counter()
        for s in range(S):
            torch.manual_seed(s)
            model = create_model(method, inp.dims, fcfg)
            opt = adamw(model.parameters(), 1e-3, 0.01)
            gen = torch.Generator().manual_seed(s)
            for _ in range(args.epochs):
                train_epoch(model, opt, (inp.X, inp.M, None, None), yt, tr_t, args.batch_size, gen)
        return S * args.epochs * n / (time.perf_counter() - t)

    def ensemble(k: int) -> float:
        t = time.perf_counter()
        models = []
        for s in range(k):
            torch.manual_seed(s)
            models.append(create_model(method, inp.dims, fcfg))
        ens = stack_seeds(models)
        ens._seed_gens[:] = [torch.Generator().manual_seed(100 + s) for s in range(k)]
        opt = adamw(ens.parameters(), 1e-3, 0.01)
        gens = [torch.Generator().manual_seed(s) for s in range(k)]
        tables = SeedTables([(inp.X, inp.M, None, None)] * k, len(yt))
        for _ in range(args.epochs):
            train_epoch_seeds(ens, opt, tables, list(range(k)), yt, [tr_t] * k, args.batch_size, gens, [None] * k)
        return k * args.epochs * n / (time.perf_counter() - t)

    seq = ens1 = ens = 0.0
    for _ in range(args.repeats):
        seq, ens1, ens = max(seq, one_by_one()), max(ens1, ensemble(1)), max(ens, ensemble(S))
    print(f"{S} seeds one after another (train_epoch):    {seq:8.0f} seed-samples/s   x{seq / dl_sps:.2f} the plain loop")
    print(f"1 seed as a one-seed ensemble (a 1-seed job): {ens1:8.0f} seed-samples/s   x{ens1 / dl_sps:.2f} the plain loop")
    print(f"{S} seeds as one seed ensemble (a {S}-seed job): {ens:8.0f} seed-samples/s   x{ens / dl_sps:.2f} the plain loop, "
          f"x{ens / seq:.2f} one after another")
    step_breakdown(args, inp, method, fcfg, yt, tr_t)


def step_breakdown(args, inp, method, fcfg, yt, tr_t) -> None:
    """Where an S-seed ensemble step goes: the body of `train_epoch_seeds` with a clock between its
    phases (batch gather, forward, per-seed losses, backward, optimiser), mean ms per step over
    `--epochs` epochs. One thread runs torch's operators in order, so the clock needs no sync."""
    from medmix.model.ensemble import stack_seeds
    from medmix.train import SeedTables, seed_losses
    S = args.seeds
    models = []
    for s in range(S):
        torch.manual_seed(s)
        models.append(create_model(method, inp.dims, fcfg))
    ens = stack_seeds(models).train()
    ens._seed_gens[:] = [torch.Generator().manual_seed(100 + s) for s in range(S)]
    opt = adamw(ens.parameters(), 1e-3, 0.01)
    gens = [torch.Generator().manual_seed(s) for s in range(S)]
    tables = SeedTables([(inp.X, inp.M, None, None)] * S, len(yt))
    names = ("gather", "forward", "loss", "backward", "optimiser")
    tot, steps = dict.fromkeys(names, 0.0), 0
    for _ in range(args.epochs):
        perms = [tr_t[torch.randperm(len(tr_t), generator=g)] for g in gens]
        for s in range(0, len(tr_t), args.batch_size):
            idx = [p[s:s + args.batch_size] for p in perms]
            t0 = time.perf_counter()
            batch = tables.batch(idx, list(range(S)))
            t1 = time.perf_counter()
            o = ens(batch, train=True, gen=gens)
            t2 = time.perf_counter()
            losses, _ = seed_losses(ens, o, [yt[i] for i in idx], [None] * S)
            t3 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            sum(losses).backward()
            t4 = time.perf_counter()
            opt.step()
            t5 = time.perf_counter()
            for k, a, b in zip(names, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5)):
                tot[k] += b - a
            steps += 1
    ms = {k: 1e3 * v / steps for k, v in tot.items()}
    print(f"a {S}-seed step, {S} x {args.batch_size} rows: {sum(ms.values()):.2f} ms = "
          + ", ".join(f"{k} {v:.2f}" for k, v in ms.items()))


def memory(args) -> None:
    """Peak memory of the trainer against the bytes of the cached tensors it trains on.

    Each figure is a fresh process (`--memory-child`) that reads the config and the cohort, loads
    the expert caches with `load_role` and trains one epoch with `train_epoch`. Tile 0 loads no
    cache (it trains one epoch on 256 random rows of the same widths, so that torch's kernels and
    thread pools are initialised alike): that is the fixed cost of the interpreter and libraries.
    Tile k repeats the loaded rows k times (the loading transients stay at one copy of the
    files), so the growth of the peak with k is the memory per byte of cached tensors."""
    import json
    import subprocess
    import sys
    rows = {}
    for tile in (0, 1, 8):
        out = subprocess.run([sys.executable, __file__, "--config", args.config, "--dataset", args.dataset,
                              "--results", args.results, "--batch-size", str(args.batch_size),
                              "--threads", str(args.threads),
                              "--memory-child", str(tile)], capture_output=True, text=True, check=True)
        rows[tile] = json.loads(out.stdout.strip().splitlines()[-1])
    base = rows[0]["rss_mb"]
    print(f"peak memory, one process each: no cache {base:.0f} MiB (interpreter, libraries, cohort, model)")
    for tile in (1, 8):
        r = rows[tile]
        extra = r["rss_mb"] - base
        print(f"  cached tensors x{tile}: {r['cache_mb']:7.1f} MiB -> peak {r['rss_mb']:.0f} MiB, "
              f"{extra:.0f} MiB above no cache = {extra / r['cache_mb']:.2f}x the cached bytes")
    d_rss = rows[8]["rss_mb"] - rows[1]["rss_mb"]
    d_cache = rows[8]["cache_mb"] - rows[1]["cache_mb"]
    print(f"  growth from x1 to x8: {d_rss:.0f} MiB for {d_cache:.1f} MiB more tensors = {d_rss / d_cache:.2f}x")


def _setup(args):
    """The training spec, the cohort, its modalities and labels (both the benchmark and its children)."""
    spec = config.TrainJob.from_dict(config.train_job(config.load(args.config), args.dataset, "medmix_noteacher"))
    results = Path(args.results)
    cohort = cohort_mod.read(results / args.dataset / "cohort.parquet")
    mods = sorted(m for m in spec.modalities if m in cohort.columns)
    y = cohort[f"y_{spec.task}"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
    return spec, results, cohort, mods, y


def memory_child(args) -> None:
    import json
    spec, results, cohort, mods, y = _setup(args)
    tile = args.memory_child
    if tile == 0:   # the experts' widths from the cache attributes, without reading the embeddings
        dims = {m: [int(read_attrs(Caches.under(results, args.dataset)[m, slug])["dim"])
                    for slug in spec.modalities[m]["experts"]] for m in mods}
        g = torch.Generator().manual_seed(0)
        X = {m: [torch.randn(256, d, generator=g) for d in ds] for m, ds in dims.items()}
        M = {m: torch.ones(256, len(ds), dtype=torch.bool) for m, ds in dims.items()}
        yt, tr, cache_mb = (torch.rand(256, generator=g) < 0.3).float(), torch.arange(256), 0.0
    else:
        inp = load_role(Caches.under(results, args.dataset), spec, cohort, "experts", mods)
        dims = inp.dims
        X = {m: [torch.cat([x] * tile) for x in xs] for m, xs in inp.X.items()}
        M = {m: torch.cat([v] * tile) for m, v in inp.M.items()}
        del inp
        yt = torch.from_numpy(np.tile(y.astype(np.float32), tile))
        tr = torch.from_numpy(np.flatnonzero((np.tile((cohort["split"] == "train").to_numpy(), tile))
                                             & ~np.isnan(yt.numpy())))
        cache_mb = sum(x.numel() * x.element_size() for xs in X.values() for x in xs) / 2**20
    method = method_spec("medmix_noteacher")
    torch.manual_seed(0)
    model = create_model(method, dims, fusion_config(method, spec.train))
    opt = adamw(model.parameters(), 1e-3, 0.01)
    train_epoch(model, opt, (X, M, None, None), yt, tr, args.batch_size, torch.Generator().manual_seed(0))
    print(json.dumps({"rss_mb": _rss_mb(), "cache_mb": cache_mb}))


if __name__ == "__main__":
    main()
