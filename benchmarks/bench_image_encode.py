"""Image-encoding wall time: medmix's embed stage vs a naive loop, same open_clip tower, same images.

The naive loop is what a first script does: open each file in the main process, preprocess
(centre crop, resize, normalise: the same transform), stack a batch, encode, next batch.
medmix's stage plans the batches once, decodes images in DataLoader worker processes while the
model runs, keeps grayscale images one band until the model's input (exactly the same numbers),
and runs the model under `inference_mode`. Both use the same weights; the embeddings
must agree (cosine ≥ 0.999 per row).

    PYTHONPATH=. python benchmarks/bench_image_encode.py --images 'results/demo/raw/files/**/*.jpg'

The demo's JPEGs are 128 px, so there the model's compute dominates. Real chest X-rays are not:
MIMIC-CXR-JPG images are about 2544 × 3056 grayscale JPEGs, where decoding and resizing cost
more than a small tower's forward pass (and far more than any tower on a GPU). `--synth-cxr N`
writes N distinct synthetic radiograph-sized grayscale JPEGs (quality 95) and benchmarks on them:

    PYTHONPATH=. python benchmarks/bench_image_encode.py --synth-cxr 200
"""

from __future__ import annotations

import argparse
import glob
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medmix.embed import fan_out, unique_inputs
from medmix.encoders import create_encoder
from medmix.encoders.base import BatchRunner, assemble

SPEC = {"kind": "open_clip", "arch": {"width": 128, "layers": 4, "heads": 4, "patch_size": 8, "embed_dim": 128},
        "image_size": 96, "crop": 1.0, "seed": 13}   # the demo's clip_teacher tower


def naive(paths: list[str], model, size: int, crop: float, mean, std, bs: int) -> np.ndarray:
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    out = []
    for i in range(0, len(paths), bs):
        xs = []
        for p in paths[i:i + bs]:
            img = Image.open(p).convert("RGB")
            w, h = img.size
            c = min(w, h) * crop
            img = img.crop(((w - c) / 2, (h - c) / 2, (w + c) / 2, (h + c) / 2)).resize((size, size), Image.BICUBIC)
            xs.append((torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1) - m) / s)
        with torch.no_grad():
            out.append(model(torch.stack(xs)).float().numpy())
    return np.concatenate(out)


def synth_cxr(folder: Path, n: int, seed: int = 0) -> str:
    """N distinct 2544 × 3056 8-bit grayscale JPEGs: a smooth random field plus noise (made once)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        p = folder / f"cxr{i:05d}.jpg"
        if p.exists():
            continue
        small = rng.normal(size=(48, 40)).astype(np.float32)
        field = Image.fromarray(((small - small.min()) / np.ptp(small) * 255).astype(np.uint8)).resize(
            (2544, 3056), Image.BICUBIC)
        a = np.asarray(field, dtype=np.float32) + rng.normal(0, 6, size=(3056, 2544)).astype(np.float32)
        tmp = p.with_suffix(".tmp")
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L").save(tmp, format="JPEG", quality=95)
        tmp.replace(p)
    return str(folder / "cxr*.jpg")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default="results/demo/raw/files/**/*.jpg", help="glob of image files")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2, help="medmix's image-decoding worker processes")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each side (alternating; best time kept)")
    ap.add_argument("--synth-cxr", type=int, default=0, metavar="N",
                    help="benchmark on N synthetic radiograph-sized JPEGs (2544 × 3056) instead of --images")
    ap.add_argument("--synth-dir", default="/tmp/medmix-bench-cxr", help="where --synth-cxr writes its images")
    args = ap.parse_args()
    if args.synth_cxr:
        args.images = synth_cxr(Path(args.synth_dir), args.synth_cxr)
        args.n = args.synth_cxr
    paths = sorted(glob.glob(args.images, recursive=True))[: args.n]
    if not paths:
        raise SystemExit(f"no images match {args.images} (run `make demo` first)")
    spec = {**SPEC, "batch_size": args.batch_size}
    enc = create_encoder(spec, "cpu")
    model, (mean, std) = enc.load()
    print(f"{len(paths)} images ({args.images}), open_clip ViT width {SPEC['arch']['width']} × "
          f"{SPEC['arch']['layers']} layers at {SPEC['image_size']} px, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads")
    for p in paths:                    # both sides read from the page cache, not the disk
        with open(p, "rb") as f:
            f.read()
    naive(paths[:args.batch_size], model, SPEC["image_size"], SPEC["crop"], mean, std, args.batch_size)  # warm-up

    def ours():
        uniq, per_sample = unique_inputs(paths, enc)
        plan = enc.prepare(uniq)
        done = BatchRunner(enc, progress=False).run(uniq, plan, list(range(len(plan.batches))), workers=args.workers)
        emb_u, present_u, _ = assemble(len(uniq), plan, done)
        return fan_out(per_sample, emb_u, present_u)

    t_naive = t_mm = float("inf")
    for _ in range(args.repeats):      # alternate the two, keep each one's best time
        t = time.perf_counter()
        ref = naive(paths, model, SPEC["image_size"], SPEC["crop"], mean, std, args.batch_size)
        t_naive = min(t_naive, time.perf_counter() - t)
        t = time.perf_counter()
        emb, present = ours()
        t_mm = min(t_mm, time.perf_counter() - t)

    a = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    b = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    cos = float((a * b).sum(1).min())
    print(f"naive loop {t_naive:6.1f} s ({len(paths) / t_naive:5.1f} img/s) | medmix embed ({args.workers} workers) "
          f"{t_mm:6.1f} s ({len(paths) / t_mm:5.1f} img/s) | medmix / naive = {t_mm / t_naive:.2f} | "
          f"min cosine {cos:.5f} | all present: {bool(present.all())} | best of {args.repeats}")


if __name__ == "__main__":
    main()
