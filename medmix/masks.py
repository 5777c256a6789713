"""Which inputs a sample loses: the train-time and test-time modality drops of the robustness study.

Train time (a run's `spec["drop"]`, run path `runs/{method}/drop-{modality|multi}-{rate}/seed{s}`):
  - one modality `m` removed from a fraction `rate` of the training samples (1.0: all of them),
    except from samples that have no other modality: those keep it and are counted
    (`kept_sole_input`), so no training sample is lost and a single-modality dataset still trains;
  - `multi`: each available modality of each training sample removed with probability `rate`,
    at least one kept.
  The mask is drawn on the dataset's modalities from the cohort (input not null), seeded by
  (mask seed, training seed) only, so every method of a seed loses the same inputs. A removed
  modality is absent for the student and the teacher alike. Training samples left with no
  modality are excluded from training and counted in metrics.json (`train_drop`).
Test time: each available modality of each test sample dropped with probability `rate`, at least
one kept, drawn from the cohort's availability (never from a run's caches) so that every method
sees the same masks.

Free of torch at import time: the Snakefile builds run paths with `drop_slug`.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from medmix.io import MedmixError, stable_hash

MULTI = "multi"


def dataset_modalities(modalities, cohort: pl.DataFrame) -> list[str]:
    """The dataset's modalities (config names) that the cohort has, in canonical (sorted) order:
    the order every run, mask and table uses."""
    return sorted(m for m in modalities if m in cohort.columns)


def cohort_availability(cohort: pl.DataFrame, mods: list[str]) -> np.ndarray:
    """(N, M) bool: the sample has an input for the modality (the cohort's own notion of missing)."""
    return np.stack([cohort[m].is_not_null().to_numpy() for m in mods], 1)


def keep_at_least_one(mask, p: float, gen=None):
    """Drop each True entry of the bool tensor `mask` (B, T) with prob p; a row that had any True keeps one."""
    import torch
    import torch.nn.functional as F
    if p <= 0:
        return mask
    drop = torch.rand(mask.shape, generator=gen, device=mask.device) < p
    kept = mask & ~drop
    lost = mask.any(1) & ~kept.any(1)
    if lost.any():
        score = torch.rand(mask.shape, generator=gen, device=mask.device).masked_fill(~mask, -1)
        pick = F.one_hot(score.argmax(1), mask.shape[1]).bool()
        kept = torch.where(lost.unsqueeze(1), pick, kept)
    return kept


def parse_drop(text: str) -> dict:
    """'notes:1.0' or 'multi:0.3' → {"modality": ..., "rate": ...} (the CLI's --drop)."""
    mod, sep, rate = text.partition(":")
    try:
        r = float(rate)
    except ValueError:
        r = -1.0
    if not sep or not mod or not 0 <= r <= 1:
        raise MedmixError(f"--drop '{text}': expected MODALITY:RATE or {MULTI}:RATE with 0 <= RATE <= 1")
    return {"modality": mod, "rate": r}


def drop_slug(drop: dict) -> str:
    """The run-path component of a train-time drop: drop-notes-1.0, drop-multi-0.25."""
    return f"drop-{drop['modality']}-{float(drop['rate'])}"


def train_keep(drop: dict, avail: np.ndarray, mods: list[str], is_train: np.ndarray, seed: int) -> np.ndarray:
    """(N, M) keep mask of a train-time drop; only training rows lose inputs.

    Depends on (availability, modality list, split, drop, mask seed, training seed) only, never on
    the method, so all methods of a seed see the same training inputs.
    """
    import torch
    gen = torch.Generator().manual_seed(int(drop.get("seed", 0)) * 1_000_003 + int(seed))
    rate = float(drop["rate"])
    n = len(avail)
    keep = np.ones_like(avail, dtype=bool)
    if drop["modality"] == MULTI:
        kept = keep_at_least_one(torch.from_numpy(avail), rate, gen).numpy()
        keep = np.where(is_train[:, None], kept | ~avail, True)
    else:
        if drop["modality"] not in mods:
            raise MedmixError(f"train-time drop: modality '{drop['modality']}' is not an input of this dataset "
                              f"({', '.join(mods)})")
        j = mods.index(drop["modality"])
        hit = (torch.rand(n, generator=gen) < rate).numpy()
        others = np.delete(avail, j, axis=1).any(1)  # a sample whose only input it is keeps it (counted)
        keep[:, j] = ~(hit & is_train & others)
    return keep


def _sole(drop: dict, avail: np.ndarray, mods: list[str], is_train: np.ndarray) -> int:
    """Training samples whose only input is the dropped modality (one-modality drops keep it)."""
    if drop["modality"] == MULTI:
        return 0
    j = mods.index(drop["modality"])
    return int((is_train & avail[:, j] & ~np.delete(avail, j, axis=1).any(1)).sum())


class TrainDrop:
    """A train-time drop applied to a run's inputs (experts and, with the same mask, teachers)."""

    def __init__(self, drop: dict, modalities, cohort: pl.DataFrame, seed: int):
        self.drop = drop
        self.mods = dataset_modalities(modalities, cohort)
        split = cohort["split"].to_numpy()
        avail = cohort_availability(cohort, self.mods)
        self.keep = train_keep(self.drop, avail, self.mods, split == "train", seed)
        removed = avail & ~self.keep
        self.summary = {**self.drop, "removed": {m: int(removed[:, j].sum()) for j, m in enumerate(self.mods)},
                        "kept_sole_input": _sole(self.drop, avail, self.mods, split == "train"),
                        "mask_hash": stable_hash(self.keep.tolist())}

    def apply(self, inp, split: np.ndarray, relabel: bool = True) -> np.ndarray:
        """Zero and mark absent the dropped inputs of `inp` (medmix.inputs.Inputs) in place; return the
        split with training rows left without any modality relabelled `train_excluded` (experts only:
        `relabel=False` for the teachers)."""
        import torch
        any_left = np.zeros(len(split), dtype=bool)
        for m in inp.X:
            k = torch.from_numpy(self.keep[:, self.mods.index(m)])
            inp.M[m] = inp.M[m] & k[:, None]
            inp.X[m] = [x * k[:, None].to(x.dtype) for x in inp.X[m]]
            any_left |= inp.M[m].any(1).numpy()
        if not relabel:
            return split
        out = split.copy()
        excluded = (split == "train") & ~any_left
        out[excluded] = "train_excluded"
        self.summary["excluded_no_modality"] = int(excluded.sum())
        if not (out == "train").any():
            raise MedmixError(f"train-time drop {self.drop}: no training sample keeps any input modality")
        return out


def test_masks(avail: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """(N, M) keep mask of a test-time drop at `rate` (at least one available modality kept); the
    same for every method, since it depends on the cohort's availability and the seed only."""
    import torch
    return keep_at_least_one(torch.from_numpy(avail), rate, torch.Generator().manual_seed(seed)).numpy() | ~avail
