"""The embedding cache (docs/design.md "Embedding cache"): one HDF5 file per dataset × modality × encoder.

Datasets: `ids` (utf-8 sample ids, cohort order), `emb` [N, D] (row-chunked, uncompressed),
`present` [N] bool. Attributes record what produced it; `read_cache` refuses a stale file and
names the attribute that differs.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import h5py
import numpy as np

from medmix import __version__
from medmix.io import MedmixError, atomic_path, hash_strings

log = logging.getLogger("medmix.cache")

# The documented override: MEDMIX_ACCEPT_STALE=weights_hash,preprocessing_hash (comma-separated attribute
# names) turns a refusal for exactly those attributes into a logged warning. The sample ids are never
# overridable (the rows would not line up).
ACCEPT_STALE_ENV = "MEDMIX_ACCEPT_STALE"


def _accepted_stale() -> set[str]:
    return {a.strip() for a in os.environ.get(ACCEPT_STALE_ENV, "").split(",") if a.strip()}


def cache_path(results: str | Path, dataset: str, modality: str, encoder: str) -> Path:
    """Where the workflow keeps a cache: `{results}/{dataset}/embeddings/{modality}/{encoder}.h5`.
    The only place medmix spells it (workflow/rules/common.smk spells it once for the rules); the
    stages themselves read the files they are given, indexed by their own attributes."""
    return Path(results) / dataset / "embeddings" / modality / f"{encoder}.h5"


def cohort_hash(ids: list[str], values: list) -> str:
    """Hash of the sample ids and of one modality's inputs, in cohort order."""
    flat = [None if v is None else ("\x1f".join(v) if isinstance(v, list) else str(v)) for v in values]
    return hash_strings(list(ids) + ["\x1e"] + flat)


def write_cache(path: str | Path, ids: list[str], emb: np.ndarray, present: np.ndarray, attrs: dict,
                dtype: str = "float32") -> None:
    """Write the cache atomically: a temporary file renamed into place when complete."""
    n, d = emb.shape
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
            f.create_dataset("emb", data=emb.astype(dtype), chunks=(max(1, min(n, 1024)), d) if n and d else None)
            f.create_dataset("present", data=present.astype(bool))
            for k, v in attrs.items():
                f.attrs[k] = json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v
            f.attrs["dim"] = d
            f.attrs["dtype"] = dtype
            f.attrs["medmix_version"] = __version__


def read_attrs(path: str | Path) -> dict:
    with h5py.File(path, "r") as f:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}


def read_ids(path: str | Path) -> list[str]:
    with h5py.File(path, "r") as f:
        return [x.decode() if isinstance(x, bytes) else x for x in f["ids"][:]]


def read_cache(path: str | Path, expect: dict | None = None, ids: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (emb float32 [N, D], present [N]); refuse a stale cache.

    `expect`: attribute -> value it must have; `ids`: the cohort's sample ids, in order.
    """
    path = Path(path)
    if not path.exists():
        raise MedmixError(f"{path}: embedding cache not found (run the embed step)")
    with h5py.File(path, "r") as f:
        for k, v in (expect or {}).items():
            got = f.attrs.get(k)
            got = got.decode() if isinstance(got, bytes) else got
            if got != v:
                if k in _accepted_stale():
                    log.warning("%s: attribute '%s' is %r, expected %r: used anyway (%s)", path, k, got, v,
                                ACCEPT_STALE_ENV)
                    continue
                raise MedmixError(f"{path}: stale embedding cache: attribute '{k}' is {got!r}, expected {v!r}; "
                                  "rerun its embed job (snakemake --forcerun embed; it does so by itself when the "
                                  f"config changes) or delete the file; to use it anyway set {ACCEPT_STALE_ENV}={k}")
        if ids is not None:
            have = [x.decode() if isinstance(x, bytes) else x for x in f["ids"][:]]
            if have != list(ids):
                raise MedmixError(f"{path}: stale embedding cache: attribute 'ids' does not match the cohort's "
                                  "sample ids; rerun its embed job or delete the file")
        return f["emb"][:].astype(np.float32, copy=False), f["present"][:].astype(bool)
