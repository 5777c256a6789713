"""Shared helpers of the reliability tests (tests/reliability/, docs/reliability.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import polars as pl

from conftest import REPO, TINY_BERT, TINY_VIT, env

BERT = {"kind": "hf_text", "arch": TINY_BERT, "max_length": 32, "seed": 1}
VIT = {"kind": "open_clip", "arch": TINY_VIT, "image_size": 16, "seed": 1}


def full_spec(spec: dict) -> dict:
    from medmix import config
    return config.validate({"targets": [], "datasets": {}, "encoders": {"x": spec}})["encoders"]["x"]


def write_cohort(path: Path, column: str, values: list) -> Path:
    """A minimal valid cohort with one input column (samples s0.., one patient each, splits cycling)."""
    from medmix.data import cohort as C
    n = len(values)
    co = pl.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)],
                       "split": [("train", "train", "val", "test")[i % 4] for i in range(n)],
                       "y_ihm": [i % 2 for i in range(n)], column: values})
    C.write(co, {"counts": {}}, path)
    return path


def h5(path: Path) -> tuple[dict, dict]:
    with h5py.File(path, "r") as f:
        return {k: f[k][:] for k in f}, {k: f.attrs[k] for k in f.attrs}


def assert_same_cache(a: Path, b: Path) -> None:
    (da, aa), (db, ab) = h5(a), h5(b)
    assert da["ids"].tolist() == db["ids"].tolist()
    np.testing.assert_array_equal(da["emb"], db["emb"])
    np.testing.assert_array_equal(da["present"], db["present"])
    assert aa == ab


def medmix(*args, check: bool = False, cwd=None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m medmix ...` as a rule runs it (its own process)."""
    return subprocess.run([sys.executable, "-m", "medmix", *map(str, args)], capture_output=True, text=True,
                          env=env(), cwd=cwd or REPO, timeout=timeout, check=check)


def leftovers(folder: Path) -> list[str]:
    """Temporary files of atomic writes left in a folder (there must be none)."""
    return sorted(p.name for p in Path(folder).rglob("*.tmp"))
