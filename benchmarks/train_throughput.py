"""Training throughput: medmix's index-batched loop vs a plain DataLoader(TensorDataset) loop.

Same model (MedMIX without teacher), same batch size, same optimiser, same cached tensors of a
dataset (default: the demo), in one run. The DataLoader loop is what a typical PyTorch training
script does: one __getitem__ per sample, then default_collate. Two figures: whole training
steps (data + model), and the data path alone (building every batch of an epoch, no model), which
is the part the trainer's design changes.

    PYTHONPATH=. python benchmarks/train_throughput.py --dataset demo --epochs 5
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import polars as pl
import torch

from medmix import config
from medmix.data import cohort as cohort_mod
from medmix.methods import method_spec
from medmix.model import create_model, fusion_config
from medmix.train import load_role, make_batch


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--dataset", default="demo")
    ap.add_argument("--results", default="results")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    rss0 = _rss_mb()
    cfg = config.load(args.config)
    spec = config.train_spec(cfg, args.dataset, "medmix_noteacher")
    from pathlib import Path
    results = Path(args.results)
    cohort = cohort_mod.read(results / args.dataset / "cohort.parquet")
    mods = sorted(m for m in spec["modalities"] if m in cohort.columns)
    inp = load_role(results, spec, cohort, "experts", mods)
    y = cohort[f"y_{spec['task']}"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
    tr = np.flatnonzero((cohort["split"] == "train").to_numpy() & ~np.isnan(y))
    yt = torch.from_numpy(y.astype(np.float32))
    cache_mb = sum(x.numel() * 4 for xs in inp.X.values() for x in xs) / 2**20
    method = method_spec("medmix_noteacher")
    fcfg = fusion_config(method, spec["train"])
    rss_loaded = _rss_mb()

    def run(loop) -> float:
        torch.manual_seed(0)
        model = create_model(method, inp.dims, fcfg)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(0)
        model.train()
        t = time.perf_counter()
        n = loop(model, opt, gen)
        return n / (time.perf_counter() - t)

    def step(model, opt, gen, batch, yb):
        out = model(batch, train=True, gen=gen)
        loss, _ = model.loss(out, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def medmix_loop(model, opt, gen):
        idx_all = torch.from_numpy(tr)
        n = 0
        for _ in range(args.epochs):
            perm = idx_all[torch.randperm(len(idx_all), generator=gen)]
            for s in range(0, len(perm), args.batch_size):
                idx = perm[s:s + args.batch_size]
                step(model, opt, gen, make_batch(inp.X, inp.M, idx), yt[idx])
                n += len(idx)
        return n

    flat = [x[tr] for m in mods for x in inp.X[m]] + [inp.M[m][tr] for m in mods] + [yt[tr]]
    ds = torch.utils.data.TensorDataset(*flat)

    def dataloader_loop(model, opt, gen):
        dl = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True, generator=gen)
        n = 0
        for _ in range(args.epochs):
            for b in dl:
                it = iter(b)
                x = {m: [next(it) for _ in inp.X[m]] for m in mods}
                mask = {m: next(it) for m in mods}
                yb = next(it)
                step(model, opt, gen, {"x": x, "mask": mask}, yb)
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
                idx_all = torch.from_numpy(tr)
                perm = idx_all[torch.randperm(len(idx_all), generator=gen)]
                for s in range(0, len(perm), args.batch_size):
                    idx = perm[s:s + args.batch_size]
                    make_batch(inp.X, inp.M, idx)
                    n += len(yt[idx])
        return n / (time.perf_counter() - t)

    torch.set_num_threads(torch.get_num_threads())
    dl_sps = run(dataloader_loop)
    mm_sps = run(medmix_loop)
    dl_data, mm_data = batches_only("dataloader"), batches_only("medmix")
    print(f"{args.dataset}: {len(tr)} training samples, {sum(len(v) for v in inp.X.values())} experts, "
          f"cached tensors {cache_mb:.1f} MiB, batch {args.batch_size}, {args.epochs} epochs, "
          f"{torch.get_num_threads()} threads")
    print(f"DataLoader(TensorDataset) loop: {dl_sps:8.0f} samples/s")
    print(f"medmix index-batched loop:      {mm_sps:8.0f} samples/s   speed-up x{mm_sps / dl_sps:.2f}")
    print(f"data path only (no model): DataLoader {dl_data:,.0f} vs index gather {mm_data:,.0f} samples/s, "
          f"speed-up x{mm_data / dl_data:.1f}")
    print(f"peak RSS {_rss_mb():.0f} MiB (interpreter + libraries {rss0:.0f} MiB before loading; "
          f"{rss_loaded - rss0:.0f} MiB after loading the caches)")


if __name__ == "__main__":
    main()
