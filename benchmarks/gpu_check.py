"""GPU check of the embed stage (< 5 minutes on one GPU): bf16 vs fp32 throughput and the OOM-halving path.

    PYTHONPATH=. python benchmarks/gpu_check.py            # on a GPU machine (ViT-B/16-sized tower)
    PYTHONPATH=. python benchmarks/gpu_check.py --cpu      # smoke run on CPU (tiny tower, few items)

1. Writes N synthetic 256x256 PNGs and embeds them end to end (DataLoader decoding in workers,
   the batched runner) with a randomly initialised open_clip ViT-B/16 (width 768, 12 layers,
   224 px: the BiomedCLIP image tower's shape), in fp32 and in bf16 autocast: images/s for each.
2. Model-only throughput on pre-decoded tensors, and the fraction of the GPU's dense bf16 peak it
   reaches (ViT-B/16 forward ≈ 17.6 GFLOP per 224 px image; --peak-tflops, default H200 989).
3. The OOM path for real: caps the process's GPU memory (set_per_process_memory_fraction) so a
   large batch cannot fit, and checks that the runner halves the batch and still returns the
   embeddings of an uncapped run. On CPU the out-of-memory error is injected instead.
Prints one JSON line per step and a summary.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medmix.encoders import create_encoder

VIT_B16 = {"width": 768, "layers": 12, "heads": 12, "patch_size": 16, "embed_dim": 512}
TINY = {"width": 64, "layers": 2, "heads": 2, "patch_size": 16, "embed_dim": 64}
GFLOP_PER_IMAGE = 17.6  # ViT-B/16 at 224 px, forward (2 × multiply-adds)


def _write_images(d: Path, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (64, 256, 256), dtype=np.uint8)
    paths = []
    for i in range(n):
        p = d / f"{i:05d}.png"
        Image.fromarray(np.roll(base[i % 64], i, axis=0)).save(p, compress_level=1)
        paths.append(str(p))
    return paths


def _spec(arch, bs, precision):
    return {"kind": "open_clip", "arch": arch, "image_size": 224, "crop": 1.0, "seed": 0, "batch_size": bs,
            "precision": precision, "volume_slices": 16}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="tiny model, few items, injected OOM (no GPU needed)")
    ap.add_argument("--n", type=int, default=None, help="images (default 3000 on GPU, 64 on CPU)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H200/H100 SXM: 989)")
    args = ap.parse_args()
    gpu = torch.cuda.is_available() and not args.cpu
    device = "cuda" if gpu else "cpu"
    arch = VIT_B16 if gpu else TINY
    n = args.n or (3000 if gpu else 64)
    bs = args.batch_size if gpu else 16
    workers = args.workers if gpu else 0
    summary: dict = {"device": torch.cuda.get_device_name() if gpu else "cpu", "n": n, "batch_size": bs}
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        paths = _write_images(Path(d), n)
        print(json.dumps({"step": "write_images", "seconds": round(time.perf_counter() - t, 1)}), flush=True)
        embs = {}
        for precision in ("fp32", "bf16"):
            enc = create_encoder(_spec(arch, bs, precision), device)
            enc.encode(paths[:bs], workers=workers)  # warm-up: model load, cuDNN/kernel selection
            if gpu:
                torch.cuda.synchronize()
            t = time.perf_counter()
            res = enc.encode(paths, workers=workers)
            if gpu:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t
            embs[precision] = res.emb
            summary[f"end_to_end_{precision}_items_per_s"] = round(n / dt, 1)
            print(json.dumps({"step": f"end_to_end_{precision}", "items_per_s": round(n / dt, 1),
                              "present": int(res.present.sum())}), flush=True)
        a, b = embs["fp32"], embs["bf16"]
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        summary["bf16_vs_fp32_min_cosine"] = round(float(cos.min()), 5)

        # model only: pre-decoded tensors, bf16 autocast
        enc = create_encoder(_spec(arch, bs, "bf16"), device)
        model = enc.load()[0]
        x = torch.randn(bs, 3, 224, 224, device=device)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=gpu):
            for _ in range(2):
                model(x)
            if gpu:
                torch.cuda.synchronize()
            reps = 10 if gpu else 2
            t = time.perf_counter()
            for _ in range(reps):
                model(x)
            if gpu:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t
        ips = reps * bs / dt
        summary["model_only_bf16_items_per_s"] = round(ips, 1)
        if gpu:
            summary["fraction_of_bf16_peak"] = round(ips * GFLOP_PER_IMAGE / 1e3 / args.peak_tflops, 3)
        print(json.dumps({"step": "model_only_bf16", "items_per_s": round(ips, 1)}), flush=True)

        # OOM halving: a real out-of-memory on GPU (capped memory), an injected one on CPU
        sub = paths[: min(n, 4 * bs)]
        big = 4 * bs if gpu else 16
        ref = create_encoder(_spec(arch, big, "bf16"), device).encode(sub, workers=workers).emb
        enc = create_encoder(_spec(arch, big, "bf16"), device)
        if gpu:
            torch.cuda.empty_cache()
            free, total = torch.cuda.mem_get_info()
            # room for the weights and about a quarter of the big batch's activations
            torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_allocated() + 6e9) / total))
        else:
            real = enc.forward

            def faulty(rows):
                if rows["pixel_values"].shape[0] > 4:
                    raise torch.OutOfMemoryError("injected: CUDA out of memory")
                return real(rows)
            enc.forward = faulty
        t = time.perf_counter()
        res = enc.encode(sub, workers=workers)
        if gpu:
            torch.cuda.set_per_process_memory_fraction(1.0)
        err = float(np.abs(res.emb - ref).max())
        summary["oom_batch_cap"] = res.batch_cap
        summary["oom_max_abs_diff"] = round(err, 5)
        print(json.dumps({"step": "oom_halving", "start_batch": big, "final_cap": res.batch_cap, "max_abs_diff": err,
                          "seconds": round(time.perf_counter() - t, 1)}), flush=True)
    ok = summary["oom_batch_cap"] is not None and summary["bf16_vs_fp32_min_cosine"] > 0.99
    summary["ok"] = bool(ok)
    print(json.dumps(summary))
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
