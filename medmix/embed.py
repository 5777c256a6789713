"""The embed stage: one (cohort, modality, encoder) → one HDF5 cache.

Identical inputs are encoded once (texts by content, images by path) and fanned out; a sample
with several images gets the mean of its readable images' embeddings.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from medmix.data import cohort as cohort_mod
from medmix.encoders import create_encoder
from medmix.encoders.cache import cohort_hash, write_cache
from medmix.io import MedmixError, stable_hash

log = logging.getLogger("medmix.embed")


def _fan_out(values: list, enc, workers: int = 0):
    """Encode unique inputs once, then map back to samples."""
    if enc.input == "image":
        lists = [None if v is None else ([v] if isinstance(v, str) else list(v)) for v in values]
        uniq = sorted({p for v in lists if v for p in v})
        res = enc.encode(uniq, workers=workers)
        where = {p: i for i, p in enumerate(uniq)}
        d = res.emb.shape[1]
        emb = np.zeros((len(values), d), np.float32)
        present = np.zeros(len(values), bool)
        for i, v in enumerate(lists):
            if not v:
                continue
            rows = [where[p] for p in v if res.present[where[p]]]
            if rows:
                emb[i] = res.emb[rows].mean(0)
                present[i] = True
        res.emb, res.present = emb, present
        return res, len(uniq)
    texts = [None if v is None else str(v) for v in values]
    uniq = sorted({t for t in texts if t is not None})
    res = enc.encode(uniq, None)
    where = {t: i for i, t in enumerate(uniq)}
    idx = np.array([where.get(t, -1) for t in texts])
    d = res.emb.shape[1]
    emb = np.zeros((len(values), d), np.float32)
    present = np.zeros(len(values), bool)
    ok = idx >= 0
    emb[ok] = res.emb[idx[ok]]
    present[ok] = res.present[idx[ok]]
    res.emb, res.present = emb, present
    return res, len(uniq)


def run_embed(cohort_path: str | Path, modality: str, slug: str, spec: dict, out: str | Path,
              device: str | None = None, workers: int = 0) -> dict:
    """Encode one modality of a cohort with one encoder and write the cache; return a summary."""
    import torch
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cohort = cohort_mod.read(cohort_path)
    if modality not in cohort.columns:
        raise MedmixError(f"{cohort_path}: no column '{modality}' (modalities: "
                          f"{', '.join(cohort_mod.modalities_of(cohort))})")
    ids = cohort["sample_id"].to_list()
    split = cohort["split"].to_list()
    values = cohort[modality].to_list()
    enc = create_encoder(spec, device)
    t0 = time.perf_counter()
    if enc.fitted:
        res, n_unique = enc.encode(values, split), None
    else:
        res, n_unique = _fan_out(values, enc, workers)
    dt = time.perf_counter() - t0
    attrs = {
        "encoder": slug, "kind": spec["kind"], "modality": modality, "model_name": enc.model_name(),
        "weights_hash": enc.weights_hash(), "preprocessing_hash": enc.preprocessing_hash(),
        "spec_hash": stable_hash(spec), "cohort_hash": cohort_hash(ids, values),
        "n": len(ids), "n_present": int(res.present.sum()), "missing": res.missing,
        "fit_state": res.fit_state or {},
    }
    write_cache(out, ids, res.emb, res.present, attrs, dtype=spec.get("dtype", "float32"))
    summary = {"samples": len(ids), "inputs": sum(v is not None for v in values), "unique_inputs": n_unique,
               "present": int(res.present.sum()), "missing_by_reason": res.missing, "dim": int(res.emb.shape[1]),
               "seconds": round(dt, 2), "device": device}
    log.info("embed %s/%s: %s", modality, slug, summary)
    return summary
