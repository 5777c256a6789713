"""A model's inputs: embedding caches read, standardised with train-split statistics, zero where absent.

One home for what train, a trained run (medmix.run), deploy bundles and the experiments all do:
 - `Caches`: the cache files a stage was given, indexed by (modality, encoder) from each file's
   own attributes (the rules pass exactly the files they declare; nothing rebuilds a path);
 - `standardise`: (emb - mean) / sd with the train-split statistics, 0 (= the train mean) where absent;
 - `load_role`: a role's (experts | teachers) caches of some modalities, with fresh train statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch

from medmix.config import TrainJob
from medmix.encoders.cache import cache_path, cohort_hash, read_attrs, read_cache
from medmix.io import MedmixError


class Caches:
    """(modality, encoder slug) → cache file: either the files a stage was given, indexed by their
    own `modality`/`encoder` attributes (what the rules pass), or a results folder laid out by the
    workflow's convention (library use: `Caches.under("results", "demo")`)."""

    def __init__(self, files: dict[tuple[str, str], Path] | None = None, results: str | Path | None = None,
                 dataset: str | None = None):
        self.files = dict(files or {})
        self.results, self.dataset = results, dataset

    @classmethod
    def of_files(cls, paths) -> "Caches":
        files: dict[tuple[str, str], Path] = {}
        for p in map(Path, paths):
            if not p.exists():
                raise MedmixError(f"{p}: embedding cache not found (run the embed step)")
            a = read_attrs(p)
            if a.get("modality") is None or a.get("encoder") is None:
                raise MedmixError(f"{p}: not a medmix embedding cache (no 'modality'/'encoder' attribute); re-embed")
            key = (str(a["modality"]), str(a["encoder"]))
            if key in files and files[key] != p:
                raise MedmixError(f"{p} and {files[key]}: two caches of {key[0]}/{key[1]} given")
            files[key] = p
        return cls(files)

    @classmethod
    def under(cls, results: str | Path, dataset: str) -> "Caches":
        return cls(results=results, dataset=dataset)

    def __getitem__(self, key: tuple[str, str]) -> Path:
        if key in self.files:
            return self.files[key]
        if self.results is not None:
            return cache_path(self.results, self.dataset, *key)
        raise MedmixError(f"no embedding cache of {key[0]}/{key[1]} among the given --embeddings files "
                          f"({', '.join(f'{m}/{s}' for m, s in sorted(self.files)) or 'none'}): pass its .h5 file")


def standardise(emb: np.ndarray, present: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """In place: (emb - mu) / sd, and 0 (= the train mean) on absent rows. The cache's own array
    becomes the model input, so loading holds each embedding matrix once."""
    emb -= mu
    emb /= sd
    emb[~present] = 0.0
    return emb


def check_finite(emb: np.ndarray, present: np.ndarray, path, ids: list[str]) -> None:
    """Refuse a cache with NaN or inf on a present row (naming the file, the row, its sample and
    the column): the model reads every present input, and the trainer's batches rely on finite
    inputs (`finite` in medmix.train.make_batch). Absent rows are not read (they become 0). A row's
    float64 sum is finite exactly when its float32 values are, so the check costs one pass and no copy."""
    bad = present & ~np.isfinite(emb.sum(1, dtype=np.float64))
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        c = int(np.flatnonzero(~np.isfinite(emb[r]))[0])
        raise MedmixError(f"{path}: row {r} (sample_id {ids[r]!r}), column {c} of the embedding is "
                          f"{emb[r, c]} ({int(bad.sum())} present row(s) with NaN or inf); re-run the "
                          f"embed step of this encoder and check what it read for that sample")


def train_statistics(emb: np.ndarray, fit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd of the rows `fit` (present, train split); sd 1 for a constant column."""
    mu = emb[fit].mean(0)
    sd = emb[fit].std(0)
    return mu, np.where(sd > 1e-6, sd, np.float32(1.0))


@dataclass
class Inputs:
    """One role's cached embeddings, standardised, per modality."""
    X: dict = field(default_factory=dict)      # m -> list of (N, d_mk) float32 tensors
    M: dict = field(default_factory=dict)      # m -> (N, K_m) bool presence
    dims: dict = field(default_factory=dict)   # m -> [d_mk]
    slugs: dict = field(default_factory=dict)  # m -> [encoder slug]
    norm: dict = field(default_factory=dict)   # m -> [(mean, sd)] train-split statistics
    dropped: list = field(default_factory=list)

    def copy(self) -> "Inputs":
        """A copy whose per-modality entries can be replaced (a seed's drop, its expert choice)
        while the tensors stay shared: seeds of one job never read a cache twice."""
        return Inputs(dict(self.X), dict(self.M), dict(self.dims), dict(self.slugs), dict(self.norm),
                      list(self.dropped))


def expected_attrs(job: TrainJob, slug: str, cohort: pl.DataFrame, modality: str) -> dict:
    """What a cache of this train job must record: its encoder, the encoder config's hash, the cohort's inputs."""
    return {"encoder": slug, "spec_hash": job.encoders[slug],
            "cohort_hash": cohort_hash(cohort["sample_id"].to_list(), cohort[modality].to_list())}


def load_role(caches: Caches, job: TrainJob, cohort: pl.DataFrame, role: str, mods: list[str],
              rows: np.ndarray | None = None) -> Inputs:
    """Read the caches of one role (experts|teachers) of the given modalities.

    Each embedding is standardised with its train-split statistics; absent rows are 0 (= the
    train mean). `rows`: keep presence only on these rows (teachers: train only).
    """
    ids = cohort["sample_id"].to_list()
    is_train = (cohort["split"] == "train").to_numpy()
    inp = Inputs()
    for m in mods:
        xs, ms, kept, stats = [], [], [], []
        for slug in job.modalities[m][role]:
            emb, present = read_cache(caches[m, slug], expect=expected_attrs(job, slug, cohort, m), ids=ids)
            check_finite(emb, present, caches[m, slug], ids)
            if rows is not None:
                present = present & rows
            fit = present & is_train
            if emb.shape[1] == 0 or not fit.any():
                inp.dropped.append(f"{m}/{slug}: no embedding on the train split")
                continue
            mu, sd = train_statistics(emb, fit)
            standardise(emb, present, mu, sd)
            xs.append(torch.from_numpy(emb))
            ms.append(torch.from_numpy(present))
            kept.append(slug)
            stats.append((torch.from_numpy(mu), torch.from_numpy(sd)))
        if xs:
            inp.X[m], inp.M[m], inp.dims[m] = xs, torch.stack(ms, 1), [x.shape[1] for x in xs]
            inp.slugs[m], inp.norm[m] = kept, stats
        elif role == "experts":
            inp.dropped.append(f"{m}: no expert has an embedding on the train split; modality left out")
    return inp
