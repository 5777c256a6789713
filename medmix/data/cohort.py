"""The cohort contract (docs/design.md "Cohort table"): split by patient, validate, write atomically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from medmix.io import MedmixError, atomic_path, write_json

SPLITS = ("train", "val", "test")
META_COLUMNS = ("sample_id", "patient_id", "split")
TASK_TYPES = ("binary", "multilabel", "multiclass", "survival")


def infer_tasks(cohort: pl.DataFrame) -> dict:
    """Without a declaration, every label column `y_<t>` is a binary task `t`."""
    return {c[2:]: {"type": "binary", "columns": [c]} for c in cohort.columns if c.startswith("y_")}


def _check_labels(cohort: pl.DataFrame, tasks: dict, source: str) -> None:
    """Label domains per task type (the `tasks` entry of cohort.json):
    binary/multilabel: columns in {0, 1, null}; multiclass: one integer column in [0, len(classes));
    survival: columns [time, event], time ≥ 0 and event in {0, 1} (both null = unknown)."""
    declared = {c for t in tasks.values() for c in t["columns"]}
    for c in cohort.columns:
        if c.startswith("y_") and c not in declared:
            raise MedmixError(f"{source}: label column '{c}' belongs to no task in cohort.json 'tasks'")

    def fail(mask, col, expected):
        row = int(mask.arg_true()[0])
        raise MedmixError(f"{source}: row {row} (sample {cohort['sample_id'][row]}): field '{col}' is "
                          f"{cohort[col][row]!r}, expected {expected}")

    for name, t in tasks.items():
        kind, cols = t.get("type"), t.get("columns") or []
        if kind not in TASK_TYPES:
            raise MedmixError(f"{source}: task '{name}': type {kind!r} is not one of {', '.join(TASK_TYPES)}")
        for c in cols:
            if c not in cohort.columns:
                raise MedmixError(f"{source}: task '{name}': label column '{c}' is missing")
        want = {"binary": 1, "multiclass": 1, "survival": 2}.get(kind)
        if (want and len(cols) != want) or not cols:
            raise MedmixError(f"{source}: task '{name}' ({kind}) has {len(cols)} label column(s)")
        vals = [cohort[c].cast(pl.Float64, strict=False) for c in cols]
        if kind in ("binary", "multilabel"):
            for c, v in zip(cols, vals):
                bad = v.is_not_null() & ~v.is_in([0.0, 1.0])
                if bad.any():
                    fail(bad, c, "0, 1 or null")
        elif kind == "multiclass":
            k = len(t.get("classes") or [])
            v = vals[0]
            bad = v.is_not_null() & ~v.is_in([float(i) for i in range(k)])
            if bad.any():
                fail(bad, cols[0], f"a class index in 0..{k - 1} or null ({k} classes)")
        else:
            time, event = vals
            bad = (time.is_not_null() & ~(time >= 0)) | (time.is_null() != event.is_null())
            if bad.any():
                fail(bad, cols[0], "a time ≥ 0 (null together with its event)")
            bad = event.is_not_null() & ~event.is_in([0.0, 1.0])
            if bad.any():
                fail(bad, cols[1], "0, 1 or null")


def modalities_of(cohort: pl.DataFrame) -> list[str]:
    """Input columns: everything that is not an id, a split, a label (`y_`), a subgroup (`group_`)
    or a time stamp."""
    skip = set(META_COLUMNS) | {"hadm_id", "stay_id", "intime", "pred_time"}
    return [c for c in cohort.columns if c not in skip and not c.startswith((GROUP_PREFIX, "y_"))]


# subgroup columns (`group_sex`, `group_age`, `group_race`, ...): carried for subgroup metrics
# (medmix.experiments.subgroups), never a model input
GROUP_PREFIX = "group_"
AGE_BANDS = ((18, "18-39"), (40, "40-59"), (60, "60-79"), (80, "80+"))


def age_band(age: pl.Expr) -> pl.Expr:
    """Age in years → its band (AGE_BANDS; below the first: '<18'; no age: 'unknown')."""
    out = pl.lit("<18")
    for lo, name in AGE_BANDS:
        out = pl.when(age >= lo).then(pl.lit(name)).otherwise(out)
    return pl.when(age.is_null()).then(pl.lit("unknown")).otherwise(out)


RACE_GROUPS = (("white", ("white", "portuguese")), ("black", ("black",)),
               ("hispanic", ("hispanic", "latino", "south american")), ("asian", ("asian",)),
               ("unknown", ("unknown", "unable to obtain", "patient declined", "declined to answer")))


def race_group(race: pl.Expr) -> pl.Expr:
    """A release's race/ethnicity text (MIMIC-III ETHNICITY, MIMIC-IV race) → white, black,
    hispanic, asian, other or unknown ('WHITE - RUSSIAN' → white, 'HISPANIC OR LATINO' and
    'HISPANIC/LATINO - PUERTO RICAN' → hispanic, 'UNABLE TO OBTAIN' or empty → unknown)."""
    low = race.str.to_lowercase().str.strip_chars()
    out = pl.lit("other")
    for name, words in reversed(RACE_GROUPS):
        out = pl.when(pl.any_horizontal([low.str.starts_with(w) for w in words])).then(pl.lit(name)).otherwise(out)
    return pl.when(race.is_null() | (low == "")).then(pl.lit("unknown")).otherwise(out)


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


def validate(cohort: pl.DataFrame, source: str = "cohort", tasks: dict | None = None) -> None:
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
    _check_labels(cohort, infer_tasks(cohort) if tasks is None else tasks, source)
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
    tasks = report.setdefault("tasks", infer_tasks(cohort))
    # binary/multilabel: positives; survival: events; multiclass: samples per class — per split
    c["positives"] = {}
    for t in tasks.values():
        cols = t["columns"][1:] if t["type"] == "survival" else t["columns"]
        for y in cols:
            by = {}
            for s in SPLITS:
                v = cohort.filter(pl.col("split") == s)[y]
                if t["type"] == "multiclass":
                    by[s] = [int((v == i).sum()) for i in range(len(t["classes"]))]
                else:
                    by[s] = int(v.sum() or 0)
            c["positives"][y] = by
    return cohort, report


def write(cohort: pl.DataFrame, report: dict, out: str | Path) -> None:
    """Write cohort.parquet and cohort.json (beside it) atomically, after validation."""
    out = Path(out)
    validate(cohort, str(out), report.setdefault("tasks", infer_tasks(cohort)))
    with atomic_path(out) as tmp:
        cohort.write_parquet(tmp)
    write_json(out.with_suffix(".json"), report)


def read(path: str | Path) -> pl.DataFrame:
    path = Path(path)
    if not path.exists():
        raise MedmixError(f"{path}: cohort not found (run `medmix prepare` first)")
    cohort = pl.read_parquet(path)
    validate(cohort, str(path), tasks(path, cohort))
    return cohort


def tasks(path: str | Path, cohort: pl.DataFrame | None = None) -> dict:
    """The tasks a cohort declares in its cohort.json (inferred as binary when it declares none)."""
    meta = Path(path).with_suffix(".json")
    if meta.exists():
        declared = json.loads(meta.read_text()).get("tasks")
        if declared:
            return declared
    return infer_tasks(cohort if cohort is not None else pl.read_parquet(path))

