"""Efficiency of the deployed stack: the encoders a method needs at inference plus its fusion network.

For one run per method: parameters, FLOPs (torch.utils.flop_counter.FlopCounterMode, per sample,
averaged over real test samples that have every modality) and measured end-to-end latency per
sample (batch 1: tokenisation / image decoding, every encoder of the stack, standardisation,
fusion). The stack is read from the run's checkpoint (`experts`: the encoder slugs the student
was trained on) and each encoder is built from the config; which encoders were constructed and
called is recorded with forward hooks, so "medmix uses no teacher at inference" is a
measurement, not a claim: `teacher_encoders_called` must be empty and the fusion network loaded
from the checkpoint has no teacher parameter.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch.utils.flop_counter import FlopCounterMode

from medmix.config import encoder_identity
from medmix.data import cohort as cohort_mod
from medmix.embed import apply_fit, fan_out, stored_fit, unique_inputs
from medmix.encoders import create_encoder
from medmix.encoders.base import BatchRunner, assemble
from medmix.inputs import Caches
from medmix.io import MedmixError
from medmix.metrics import PRIMARY
from medmix.run import Run


def _modules(obj):
    """The torch modules an encoder loaded (a module, a bound method of one, or tuples of those)."""
    if isinstance(obj, torch.nn.Module):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _modules(o)
    elif isinstance(getattr(obj, "__self__", None), torch.nn.Module):
        owner = obj.__self__  # a CLIP model's encode_image deploys its image tower only
        yield owner.visual if getattr(obj, "__name__", "") == "encode_image" and hasattr(owner, "visual") else owner


class _Stage:
    """One deployed encoder run per sample through its public API (the same code path as the embed
    stage), with call counting: `value -> (1, D) tensor`. Fitted encoders apply their stored fit."""

    def __init__(self, slug: str, spec: dict, cache):
        """`cache()`: the encoder's cache file, read only for a fitted encoder (its stored fit)."""
        self.slug, self.calls = slug, 0
        enc = create_encoder(encoder_identity(spec), "cpu")
        if enc.fitted:
            _, state, fit = stored_fit(cache())
            mods: list = []

            def fn(value):
                emb, present = apply_fit(enc, [value], state, fit)
                if not present[0]:
                    raise MedmixError(f"{slug}: an efficiency sample has no usable input")
                return torch.from_numpy(emb[:1])
        else:
            mods = list(dict.fromkeys(_modules(enc.load())))
            runner = BatchRunner(enc, progress=False)

            def fn(value):
                uniq, per_sample = unique_inputs([value], enc)  # a sample's image list: every image, pooled
                plan = enc.prepare(uniq)
                emb_u, present_u, reasons = assemble(len(uniq), plan, runner.run(uniq, plan, list(range(len(plan.batches)))))
                emb, present = fan_out(per_sample, emb_u, present_u)
                if not present[0]:
                    raise MedmixError(f"{slug}: {reasons} (efficiency samples must have readable inputs)")
                return torch.from_numpy(emb[:1])
        self._fn = fn
        self.module = mods
        self.weights = f"{enc.model_name()}@{enc.weights_hash()}"  # experts sharing weights deploy one model
        self.params = sum(p.numel() for p in {id(p): p for m in mods for p in m.parameters()}.values())
        for m in mods:
            m.register_forward_hook(self._hook)
        self.forwards = 0

    def _hook(self, *_):
        self.forwards += 1

    def __call__(self, value) -> torch.Tensor:
        self.calls += 1
        return self._fn(value).float()


def measure(runs: list[str | Path], cohort: str | Path, caches: Caches, encoders: dict, samples: int = 16,
            warmup: int = 2, threads: int = 1) -> dict:
    """Efficiency of each run's deployed stack on `samples` test samples with every modality present.
    `cohort`, `caches`: the runs' dataset and the caches of their (fitted) experts."""
    torch.set_num_threads(threads)
    stages: dict[str, _Stage] = {}
    out: dict = {"samples": samples, "threads": threads, "methods": {}}
    co = cohort_mod.read(cohort)
    for run in map(Path, runs):
        r = Run.load(run)
        ckpt = r.ckpt
        out["dataset"] = r.dataset
        mods = list(r.experts)
        rows = co.filter((pl.col("split") == "test") & pl.all_horizontal(pl.col(m).is_not_null() for m in mods))
        if rows.height == 0:
            raise MedmixError(f"{cohort}: no test sample has every modality of {run}")
        rows = rows.head(samples + warmup)
        teachers = {s for m in r.job.modalities.values() for s in m["teachers"]}
        experts = {s for m in r.job.modalities.values() for s in m["experts"]}
        before = {s: (st.calls, st.forwards) for s, st in stages.items()}
        stack = r.caches()
        for m, s in stack:
            if s not in stages:
                if s not in encoders:
                    raise MedmixError(f"{run}/model.pt: encoder '{s}' is not in the config's encoders")
                stages[s] = _Stage(s, encoders[s], lambda m=m, s=s: caches[m, s])
        fusion = r.model()
        fusion_params = sum(p.numel() for p in fusion.parameters())
        fusion_teacher = sum(p.numel() for n, p in fusion.named_parameters() if n.startswith(("teacher", "align")))

        def encode(row: dict, flops: dict | None = None) -> tuple[dict, dict]:
            X, M = {}, {}
            for m in mods:
                xs = []
                for k, s in enumerate(ckpt["experts"][m]):
                    if flops is None:
                        e = stages[s](row[m])                                       # (1, d_mk)
                    else:
                        with FlopCounterMode(display=False) as fc:
                            e = stages[s](row[m])
                        flops[(m, s)] = flops.get((m, s), 0) + fc.get_total_flops()
                    mu, sd = ckpt["norm"][m][k]
                    xs.append((e - mu) / sd)
                X[m], M[m] = xs, torch.ones(1, len(xs), dtype=torch.bool)
            return X, M

        def fuse(X: dict, M: dict):
            return fusion({"x": X, "mask": M}, train=False)

        lat, flops = [], {}
        with torch.inference_mode():
            for i, row in enumerate(rows.iter_rows(named=True)):
                t0 = time.perf_counter()
                fuse(*encode(row))
                dt = time.perf_counter() - t0
                if i < warmup:
                    continue
                lat.append(dt * 1000)
                X, M = encode(row, flops)
                with FlopCounterMode(display=False) as fc:
                    fuse(X, M)
                flops["__fusion__"] = flops.get("__fusion__", 0) + fc.get_total_flops()
        n = len(lat)
        called = sorted(s for s, st in stages.items() if (st.calls, st.forwards) != before.get(s, (0, 0)))
        enc_rows = [{"modality": m, "encoder": s, "role": "teacher" if s in teachers and s not in experts else "expert", "weights": stages[s].weights,
                     "params": stages[s].params, "flops": flops[(m, s)] / n} for m, s in stack]
        f_flops = flops["__fusion__"] / n
        metrics = json.loads((run / "metrics.json").read_text())
        out["methods"][r.name] = {
            "run": str(run), "encoders": enc_rows, "stack": sorted({s for _, s in stack}), "encoders_called": called,
            "teacher_encoders_called": [s for s in called if s in teachers],
            "fusion": {"params": fusion_params, "flops": f_flops, "teacher_params": fusion_teacher},
            # one deployed model per distinct weights (a slug serving two modalities, or two slugs with the
            # same weights and different preprocessing): its parameters count once
            "params_total": sum({e["weights"]: e["params"] for e in enc_rows}.values()) + fusion_params,
            "flops_total": sum(e["flops"] for e in enc_rows) + f_flops,
            "latency_ms": {"median": statistics.median(lat), "p90": float(np.percentile(lat, 90)),
                           "mean": float(np.mean(lat)), "n": len(lat)},
            "test_primary": metrics["test"][PRIMARY[metrics.get("task_type", "binary")]]["value"],
            "primary_metric": PRIMARY[metrics.get("task_type", "binary")],
        }
    out["encoders_constructed"] = sorted(stages)
    return out
