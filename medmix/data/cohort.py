"""The cohort contract (DESIGN.md "Cohort table"): split by patient, validate, write atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from medmix.io import MedmixError, atomic_path, write_json

SPLITS = ("train", "val", "test")
META_COLUMNS = ("sample_id", "patient_id", "split")


def modalities_of(cohort: pl.DataFrame) -> list[str]:
    """Input columns: everything that is not an id, a split, a label or a time stamp."""
    skip = set(META_COLUMNS) | {"hadm_id", "stay_id", "intime", "pred_time"}
    return [c for c in cohort.columns if c not in skip and not c.startswith("y_")]


def assign_splits(cohort: pl.DataFrame, train: float = 0.7, val: float = 0.15, seed: int = 0) -> pl.DataFrame:
    """Seeded split by patient: every sample of a patient lands in the same split."""
    patients = np.array(sorted(cohort["patient_id"].unique().to_list()))
    perm = np.random.default_rng(seed).permutation(len(patients))
    n_tr = int(round(train * len(patients)))
    n_va = int(round(val * len(patients)))
    split = np.empty(len(patients), dtype=object)
    split[perm[:n_tr]] = "train"
    split[perm[n_tr:n_tr + n_va]] = "val"
    split[perm[n_tr + n_va:]] = "test"
    mapping = dict(zip(patients.tolist(), split.tolist()))
    return cohort.with_columns(pl.col("patient_id").replace_strict(mapping, return_dtype=pl.String).alias("split"))


def validate(cohort: pl.DataFrame, source: str = "cohort") -> None:
    """Check the cohort contract; raise MedmixError naming the row and the field."""
    for col in META_COLUMNS:
        if col not in cohort.columns:
            raise MedmixError(f"{source}: missing column '{col}'")
        nulls = cohort[col].is_null()
        if nulls.any():
            row = int(nulls.arg_true()[0])
            raise MedmixError(f"{source}: row {row}: field '{col}' is null")
    dup = cohort["sample_id"].is_duplicated()
    if dup.any():
        row = int(dup.arg_true()[1] if dup.sum() > 1 else dup.arg_true()[0])
        raise MedmixError(f"{source}: row {row}: field 'sample_id' duplicates '{cohort['sample_id'][row]}'")
    bad = ~cohort["split"].is_in(list(SPLITS))
    if bad.any():
        row = int(bad.arg_true()[0])
        raise MedmixError(f"{source}: row {row}: field 'split' is '{cohort['split'][row]}', "
                          f"expected one of {', '.join(SPLITS)}")
    for col in [c for c in cohort.columns if c.startswith("y_")]:
        vals = cohort[col].cast(pl.Float64, strict=False)
        bad = vals.is_not_null() & ~vals.is_in([0.0, 1.0])
        if bad.any():
            row = int(bad.arg_true()[0])
            raise MedmixError(f"{source}: row {row} (sample {cohort['sample_id'][row]}): field '{col}' is "
                              f"{cohort[col][row]!r}, expected 0, 1 or null")
    leaked = cohort.group_by("patient_id").agg(pl.col("split").n_unique().alias("k")).filter(pl.col("k") > 1)
    if leaked.height:
        raise MedmixError(f"{source}: patient {leaked['patient_id'][0]} appears in more than one split")


def finalize(cohort: pl.DataFrame, report: dict) -> tuple[pl.DataFrame, dict]:
    """Drop (and count) samples without any available modality; add counts to the report."""
    mods = modalities_of(cohort)
    none = pl.all_horizontal([pl.col(m).is_null() for m in mods])
    report["exclusions"]["no_modality_available"] = int(cohort.select(none.sum()).item())
    cohort = cohort.filter(~none)
    c = report["counts"]
    c["samples"] = cohort.height
    c["patients"] = cohort["patient_id"].n_unique()
    c["by_split"] = {s: int((cohort["split"] == s).sum()) for s in SPLITS}
    c["modality_available"] = {m: int(cohort[m].is_not_null().sum()) for m in mods}
    c["positives"] = {
        y: {s: int(cohort.filter(pl.col("split") == s)[y].sum() or 0) for s in SPLITS}
        for y in cohort.columns if y.startswith("y_")
    }
    return cohort, report


def write(cohort: pl.DataFrame, report: dict, out: str | Path) -> None:
    """Write cohort.parquet and cohort.json (beside it) atomically, after validation."""
    out = Path(out)
    validate(cohort, str(out))
    with atomic_path(out) as tmp:
        cohort.write_parquet(tmp)
    write_json(out.with_suffix(".json"), report)


def read(path: str | Path) -> pl.DataFrame:
    path = Path(path)
    if not path.exists():
        raise MedmixError(f"{path}: cohort not found (run `medmix prepare` first)")
    cohort = pl.read_parquet(path)
    validate(cohort, str(path))
    return cohort
