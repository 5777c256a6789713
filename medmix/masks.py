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
    """Drop each True entry of the bool tensor `mask` (B, T) with prob p; a row that had any True keeps one.
    `gen`: a generator, or one per seed of a seed ensemble (medmix.model.ensemble: rows seed-major),
    each seed's draws then made from its own generator exactly as they would be for that seed alone."""
    import torch
    import torch.nn.functional as F
    if p <= 0:
        return mask
    gens = gen if isinstance(gen, (list, tuple)) else None
    drop = _rand(mask, gens, gen) < p
    kept = mask & ~drop
    lost = mask.any(1) & ~kept.any(1)
    if lost.any():
        score = _rand(mask, gens, gen, lost).masked_fill(~mask, -1)
        pick = F.one_hot(score.argmax(1), mask.shape[1]).bool()
        kept = torch.where(lost.unsqueeze(1), pick, kept)
    return kept


def _rand(mask, gens, gen, need=None):
    """Uniform draws shaped like `mask`: from `gen`, or seed by seed from `gens` (a seed whose rows of
    `need` are all False draws nothing, as it would not alone)."""
    import torch
    if gens is None:
        return torch.rand(mask.shape, generator=gen, device=mask.device)
    n = mask.shape[0] // len(gens)
    wants = [True] * len(gens) if need is None else need.reshape(len(gens), n).any(1).tolist()
    return torch.cat([torch.rand((n, *mask.shape[1:]), generator=g, device=mask.device) if w else
                      torch.zeros((n, *mask.shape[1:]), device=mask.device) for g, w in zip(gens, wants)])


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
    if drop["modality"] == MULTI or "mechanism" in drop:
        return 0
    j = mods.index(drop["modality"])
    return int((is_train & avail[:, j] & ~np.delete(avail, j, axis=1).any(1)).sum())


def train_mechanism_keep(drop: dict, cohort: pl.DataFrame, mods: list[str], is_train: np.ndarray, seed: int,
                         outcome: np.ndarray | None = None) -> np.ndarray:
    """(N, M) keep mask of a train-time missingness mechanism (`drop["mechanism"]`, an `ampute`
    spec) at `drop["rate"]`: the mechanism's masks on the training rows, calibrated to MCAR's
    missingness among them, nothing dropped elsewhere. Seeded like train_keep."""
    keep = np.ones((len(cohort), len(mods)), dtype=bool)
    rows = np.flatnonzero(is_train)
    if len(rows):
        keep[rows] = ampute(cohort.filter(pl.Series(is_train)), mods, drop["mechanism"], float(drop["rate"]),
                            seed=int(drop.get("seed", 0)) * 1_000_003 + int(seed),
                            outcome=None if outcome is None else outcome[rows])
    return keep


class TrainDrop:
    """A train-time drop applied to a run's inputs (experts and, with the same mask, teachers): a
    modality removed, each modality at random (MULTI), or a missingness mechanism (`mechanism`).
    `outcome`: the cohort's labels, for a mechanism driven by the outcome."""

    def __init__(self, drop: dict, modalities, cohort: pl.DataFrame, seed: int, outcome: np.ndarray | None = None):
        self.drop = drop
        self.mods = dataset_modalities(modalities, cohort)
        split = cohort["split"].to_numpy()
        avail = cohort_availability(cohort, self.mods)
        if "mechanism" in drop:
            self.keep = train_mechanism_keep(drop, cohort, self.mods, split == "train", seed, outcome)
        else:
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


# ------------------------------------------------------------------ missingness mechanisms (amputation)

MECHANISMS = ("mcar", "mar", "mnar", "block")


def block_subsets(spec: dict, mods: list[str]) -> list[tuple[str, ...]]:
    """The modality subsets a block mechanism removes together: its `modalities`, or every non-empty
    proper subset of the dataset's modalities (canonical order)."""
    import itertools
    if spec.get("modalities"):
        return [tuple(m for m in mods if m in spec["modalities"])]
    return [sub for k in range(1, len(mods)) for sub in itertools.combinations(mods, k)]


def _calibrated(score: np.ndarray, eligible: np.ndarray, rate: float, strength: float) -> np.ndarray:
    """Per-entry drop probabilities sigmoid(a + strength * z) with z the standardised `score`, the
    offset `a` found by bisection so that their mean over the eligible entries is `rate`."""
    z = np.zeros_like(score, dtype=np.float64)
    s = score[eligible].astype(np.float64)
    if s.size and s.std() > 0:
        z = (score - s.mean()) / s.std()
    if rate <= 0:
        return np.zeros_like(z)
    if rate >= 1:
        return np.ones_like(z)
    lo, hi = -50.0, 50.0
    for _ in range(60):
        a = (lo + hi) / 2
        p = 1 / (1 + np.exp(-(a + strength * z)))
        if p[eligible].mean() > rate:
            hi = a
        else:
            lo = a
    return 1 / (1 + np.exp(-(((lo + hi) / 2) + strength * z)))


def _driver(cohort: pl.DataFrame, spec: dict, avail: np.ndarray, mods: list[str], j: int,
            outcome: np.ndarray | None = None) -> np.ndarray:
    """The per-sample score a MAR/MNAR drop probability follows (before the direction's sign)."""
    col = spec.get("driver")
    if col == "outcome":
        if outcome is None:
            raise MedmixError(f"missingness mechanism '{spec.get('name', spec['kind'])}': driver `outcome` needs the "
                              "task's labels (ampute(..., outcome=y))")
        y = np.asarray(outcome, dtype=np.float64)
        y = y.mean(1) if y.ndim == 2 else y                # multilabel: how many labels are positive
        return np.where(np.isfinite(y), y, np.nanmean(y) if np.isfinite(y).any() else 0.0)
    if spec["kind"] == "mar" and not col:            # observed data: how many other modalities the sample has
        return np.delete(avail, j, axis=1).sum(1).astype(np.float64)
    if not col:
        raise MedmixError(f"missingness mechanism '{spec.get('name', spec['kind'])}': mnar needs a `driver` "
                          "(the outcome column, e.g. y_ihm, or a severity score of the cohort)")
    if col not in cohort.columns:
        raise MedmixError(f"missingness mechanism '{spec.get('name', spec['kind'])}': driver column '{col}' is not in "
                          f"the cohort (columns: {', '.join(c for c in cohort.columns if not c.startswith('_'))})")
    v = cohort[col]
    if v.dtype == pl.String:
        v = v.cast(pl.Float64, strict=False)
    x = v.cast(pl.Float64, strict=False).to_numpy()
    return np.where(np.isfinite(x), x, np.nanmean(x) if np.isfinite(x).any() else 0.0)


def ampute(cohort: pl.DataFrame, modalities, spec: dict, rate: float, seed: int = 0,
           outcome: np.ndarray | None = None) -> np.ndarray:
    """(N, M) keep mask of one missingness mechanism at average rate `rate`, for the cohort's
    available inputs of `modalities` (canonical order, `dataset_modalities`); False = dropped.

    Like scikit-learn-style amputers, it takes data and returns masks, so the same perturbation can
    be applied outside the workflow. `spec`:

    - `{"kind": "mcar"}`: each available input dropped with probability `rate`;
    - `{"kind": "mar", "driver": <cohort column>?, "direction": "up"|"down", "strength": 2.0}`:
      the drop probability of every modality rises (`up`) or falls with an *observed* quantity: a
      cohort column (e.g. `group_age`, a lab) or, by default, how many other modalities the sample
      has (the better documented patients lose more);
    - `{"kind": "mnar", "driver": <column> | "outcome", ...}`: the same on an *unobserved* one: the
      outcome (`driver: outcome` with the labels passed as `outcome`, or a label column such as
      y_ihm) or a severity score (`direction: down` on the outcome: survivors lose more inputs);
    - `{"kind": "block", "modalities": [...]}`: that subset of modalities missing together, for a
      fraction `rate` of the samples.

    `modalities` restricts which modalities lose inputs (default: all). In every mechanism a sample
    keeps at least one available input (one is drawn back at random when all would go), so the
    realised rate (`realised_rate`) is below `rate` where samples have few modalities. MCAR is
    today's test-time drop (probability `rate` per input); MAR and MNAR probabilities are logistic
    in the standardised driver with an offset calibrated so that they drop exactly as many inputs
    as MCAR does at the same `rate`: the mechanisms compare at equal missingness. Seeded by `seed`
    only: identical for every method."""
    kind = spec.get("kind")
    if kind not in MECHANISMS:
        raise MedmixError(f"missingness mechanism '{spec.get('name', kind)}': kind must be one of {', '.join(MECHANISMS)}")
    mods = dataset_modalities(modalities, cohort)
    avail = cohort_availability(cohort, mods)
    rng = np.random.default_rng([int(seed), int(round(float(rate) * 1e6))])   # common to the mechanisms
    target = list(spec.get("modalities") or mods)
    unknown = [m for m in target if m not in mods]
    if unknown:
        raise MedmixError(f"missingness mechanism '{spec.get('name', kind)}': modalities {unknown} are not inputs "
                          f"of this dataset ({', '.join(mods)})")
    cols = np.array([m in target for m in mods])
    if kind in ("mar", "mnar") and spec.get("driver") in (None, "") and kind == "mnar":
        raise MedmixError(f"missingness mechanism '{spec.get('name', kind)}': mnar needs a `driver` "
                          "(`outcome`, a label column such as y_ihm, or a severity score of the cohort)")
    if kind == "block":
        if cols.all():
            raise MedmixError(f"missingness mechanism '{spec.get('name', kind)}': a block must leave at least one "
                              "modality (a proper subset)")
        hit = rng.random(len(avail)) < rate
        # a sample whose only inputs are in the block keeps them: nobody is left with nothing
        hit &= (avail & ~cols).any(1)
        return ~(hit[:, None] & cols[None, :] & avail) | ~avail
    u = rng.random(avail.shape)                      # one draw per entry, shared by every calibration step
    back = np.where(avail, rng.random(avail.shape), -1.0).argmax(1)   # the input drawn back when all would go

    def draw(p: np.ndarray) -> np.ndarray:
        keep = avail & ~((u < p) & avail)
        lost = avail.any(1) & ~keep.any(1)
        keep[lost, back[lost]] = True
        return keep | ~avail

    mcar = draw(np.where(cols[None, :], float(rate), 0.0) * np.ones(avail.shape))
    if kind == "mcar":
        return mcar
    # MAR/MNAR drop as many inputs as MCAR does at the same rate (keep-one rule included), so curves of
    # different mechanisms compare at equal missingness: the nominal rate of the logistic
    # probabilities is found by bisection (the realised rate grows with it, the draws being fixed)
    sign = -1.0 if spec.get("direction", "up") == "down" else 1.0
    strength = float(spec.get("strength", 2.0))
    scores = {j: sign * _driver(cohort, spec, avail, mods, j, outcome) for j in np.flatnonzero(cols)}

    def at(nominal: float) -> np.ndarray:
        p = np.zeros(avail.shape)
        for j, score in scores.items():
            p[:, j] = _calibrated(score, avail[:, j], nominal, strength)
        return draw(p)

    target = int((avail & ~mcar).sum())
    lo, hi = 0.0, 1.0
    best = at(float(rate))
    for _ in range(25):
        mid = (lo + hi) / 2
        keep = at(mid)
        n = int((avail & ~keep).sum())
        if abs(n - target) < abs(int((avail & ~best).sum()) - target):
            best = keep
        if n == target:
            break
        lo, hi = (mid, hi) if n < target else (lo, mid)
    return best


def realised_rate(cohort: pl.DataFrame, modalities, keep: np.ndarray) -> float:
    """The fraction of the cohort's available inputs that a keep mask drops."""
    avail = cohort_availability(cohort, dataset_modalities(modalities, cohort))
    return float((avail & ~keep).sum() / max(int(avail.sum()), 1))
