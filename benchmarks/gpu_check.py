"""GPU check of the embed and train stages (< 5 minutes on one GPU): bf16 vs fp32 throughput, the
OOM-halving path, texts/s and the seed ensemble's train samples/s.

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
4. Texts: a randomly initialised BERT-base-sized `hf_text` encoder (768 wide, 12 layers: the size of
   Bio_ClinicalBERT and MedCPT) on `--texts` synthetic notes of 20-500 tokens, length-sorted batches
   of `batch_size` rows, bf16 autocast: texts/s and the fraction of bf16 peak (2 x 85 M weights x
   tokens + attention, counted from the real token lengths).
5. Training: MedMIX without teacher as a 5-seed ensemble (medmix.model.ensemble, the trainer's
   `train_epoch_seeds`, bf16 autocast as a GPU train job runs) on random tensors of the demo's expert
   widths, 20,000 training rows: seed-samples/s at batch 128 and at 1024.
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
    ap.add_argument("--texts", type=int, default=None, help="texts (default 20000 on GPU, 64 on CPU)")
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
    summary.update(text_step(device, gpu, args))
    summary.update(train_step(device, gpu))
    ok = summary["oom_batch_cap"] is not None and summary["bf16_vs_fp32_min_cosine"] > 0.99
    summary["ok"] = bool(ok)
    print(json.dumps(summary))
    raise SystemExit(0 if ok else 1)


def _sync(gpu: bool) -> None:
    if gpu:
        torch.cuda.synchronize()


def text_step(device: str, gpu: bool, args) -> dict:
    arch = ({"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
             "max_position_embeddings": 512} if gpu else
            {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 512})
    n = args.texts or (20000 if gpu else 64)
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(500)]
    texts = [" ".join(rng.choice(words, int(rng.integers(20, 500)))) for _ in range(n)]
    spec = {"kind": "hf_text", "arch": arch, "max_length": 512, "batch_size": 128 if gpu else 16, "precision": "bf16"}
    enc = create_encoder(spec, device)
    enc.encode(texts[:256])                                   # warm-up: model load, kernels
    _sync(gpu)
    t = time.perf_counter()
    plan = enc.prepare(texts)
    res = enc.encode(texts)
    _sync(gpu)
    dt = time.perf_counter() - t
    L, H = arch["num_hidden_layers"], arch["hidden_size"]
    w = L * (4 * H * H + 2 * H * arch["intermediate_size"])   # weights of the layers (the embeddings are lookups)
    lens = np.array([len(t) for t in plan.state if t is not None], dtype=np.float64)
    flops = float((2 * w * lens + 4 * L * H * lens ** 2).sum())
    out = {"texts_bf16_items_per_s": round(n / dt, 1), "texts_mean_tokens": round(float(lens.mean()), 1)}
    if gpu:
        out["texts_fraction_of_bf16_peak"] = round(flops / dt / 1e12 / args.peak_tflops, 3)
    print(json.dumps({"step": "texts_bf16", **out, "present": int(res.present.sum())}), flush=True)
    return out


def train_step(device: str, gpu: bool) -> dict:
    from medmix.config import TrainParams
    from medmix.methods import method_spec
    from medmix.model import create_model, fusion_config
    from medmix.model.ensemble import stack_seeds
    from medmix.train import SeedTables, adamw, train_epoch_seeds
    dims = {"ehr": [32, 384], "notes": [384, 384], "cxr": [64, 64]}   # the demo's expert widths
    n, E = (20000, 5) if gpu else (2000, 5)
    g = torch.Generator().manual_seed(0)
    X = {m: [torch.randn(n, d, generator=g).to(device) for d in ds] for m, ds in dims.items()}
    M = {m: (torch.rand(n, len(ds), generator=g) < 0.8).to(device) for m, ds in dims.items()}
    yt = (torch.rand(n, generator=g) < 0.2).float().to(device)
    tr = torch.arange(n, device=device)
    method = method_spec("medmix_noteacher")
    cfg = fusion_config(method, TrainParams())
    out = {}
    for bs in (128, 1024):
        models = []
        for s in range(E):
            torch.manual_seed(s)
            models.append(create_model(method, dims, cfg).to(device))
        ens = stack_seeds(models)
        ens._seed_gens[:] = [torch.Generator(device=device).manual_seed(100 + s) for s in range(E)]
        gens = [torch.Generator(device=device).manual_seed(s) for s in range(E)]
        opt = adamw(ens.parameters(), 1e-3, 0.01, device)
        tables = SeedTables([(X, M, None, None)] * E, n)
        args = (ens, opt, tables, list(range(E)), yt, [tr] * E, bs, gens, [None] * E)
        train_epoch_seeds(*args, amp=gpu)                     # warm-up
        _sync(gpu)
        t = time.perf_counter()
        epochs = 3 if gpu else 1
        for _ in range(epochs):
            train_epoch_seeds(*args, amp=gpu)
        _sync(gpu)
        out[f"train_{E}seeds_bs{bs}_seed_samples_per_s"] = round(E * epochs * n / (time.perf_counter() - t))
    print(json.dumps({"step": "train_seed_ensemble", **out}), flush=True)
    return out


if __name__ == "__main__":
    main()
