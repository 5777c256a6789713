"""Generic manifest loader: any dataset described by one CSV.

Columns: `sample_id`, `patient_id`, optional `split` (train/val/test; absent or all empty: a seeded
split by patient), the label columns named by the config's task declaration, and one column per
modality whose input type the config's `inputs` gives:

- `text`: free text;
- `json`: a JSON object of variables, stored serialised as `name: value; ...` (the EHR format);
- `image`: an image path (stored as a one-element path list, like the CXR columns);
- `volume`: a NIfTI/NRRD/MHA file or a DICOM series directory;
- `features`: a precomputed feature file (.npy/.npz/.pt/.h5/.hdf5, e.g. per-slide tile features),
  to be pooled to one vector by its encoder.

Columns named `group_<name>` (e.g. `group_sex`, `group_site`) are subgroups for the subgroup
metrics (medmix.experiments.subgroups), never model inputs. An empty cell is a missing modality. Relative paths are resolved against `root`; the loader checks
that each file exists and records its path, and leaves decoding to the encoders. Label columns
become `y_<task>` (binary, multiclass), `y_<task>__<column>` (multilabel) and `y_<task>_time`,
`y_<task>_event` (survival). Time-stamped raw sources must be cut at the prediction time by
whatever writes the manifest (the ccRCC adapter takes only baseline data).
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from medmix.data import cohort as cohort_mod
from medmix.data.common import check_unique, count, log, new_report, read_table, slug
from medmix.io import MedmixError

INPUT_TYPES = ("text", "json", "image", "volume", "features")
FEATURE_SUFFIXES = (".npy", ".npz", ".pt", ".pth", ".h5", ".hdf5")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")


def _where(path, i: int) -> str:
    return f"{path}: row {i + 1} (line {i + 2})"


def _serialise(obj: dict) -> str:
    def fmt(v):
        return f"{v:.6g}" if isinstance(v, float) else str(v)
    return "; ".join(f"{k}: {fmt(v)}" for k, v in obj.items() if v is not None and v != "")


def _label_columns(name: str, t: dict) -> list[str]:
    kind = t["type"]
    if kind in ("binary", "multiclass"):
        return [f"y_{name}"]
    if kind == "survival":
        return [f"y_{name}_time", f"y_{name}_event"]
    return [f"y_{name}__{slug(c)}" for c in t["columns"]]


def _labels(df: pl.DataFrame, path, name: str, t: dict) -> dict[str, list]:
    kind, src = t["type"], t["columns"]
    out_cols = _label_columns(name, t)
    want = {"binary": 1, "multiclass": 1, "survival": 2}.get(kind)
    if want and len(src) != want:
        raise MedmixError(f"task '{name}' ({kind}) needs {want} label column(s), the config gives {src}")
    for c in src:
        if c not in df.columns:
            raise MedmixError(f"{path}: label column '{c}' of task '{name}' is not in the manifest "
                              f"(columns: {', '.join(df.columns)})")
    out = {}
    classes = list(t.get("classes") or [])
    for j, (c, oc) in enumerate(zip(src, out_cols)):
        vals = []
        for i, v in enumerate(df[c].to_list()):
            v = (v or "").strip()
            if v == "":
                vals.append(None)
                continue
            if kind == "multiclass":
                if v in classes:
                    vals.append(classes.index(v))
                elif v.isdigit() and int(v) < len(classes):
                    vals.append(int(v))
                else:
                    raise MedmixError(f"{_where(path, i)}: field '{c}' is {v!r}, expected one of {classes} or a code "
                                      f"0..{len(classes) - 1}")
                continue
            try:
                x = float(v)
            except ValueError:
                raise MedmixError(f"{_where(path, i)}: field '{c}' is {v!r}, expected a number") from None
            is_time = kind == "survival" and j == 0
            if is_time and not x >= 0:
                raise MedmixError(f"{_where(path, i)}: field '{c}' is {v!r}, expected a time ≥ 0")
            if not is_time and x not in (0.0, 1.0):
                raise MedmixError(f"{_where(path, i)}: field '{c}' is {v!r}, expected 0 or 1")
            vals.append(x if is_time else int(x))
        out[oc] = vals
    if kind == "survival":
        t_, e_ = out[out_cols[0]], out[out_cols[1]]
        for i, (a, b) in enumerate(zip(t_, e_)):
            if (a is None) != (b is None):
                raise MedmixError(f"{_where(path, i)}: fields '{src[0]}' and '{src[1]}': a survival time needs its "
                                  "event and vice versa")
    return out


def _input(v: str | None, kind: str, root: Path, path, i: int, col: str):
    v = (v or "").strip()
    if v == "":
        return None
    if kind == "text":
        return v
    if kind == "json":
        try:
            obj = json.loads(v)
        except json.JSONDecodeError as e:
            raise MedmixError(f"{_where(path, i)}: field '{col}' is not valid JSON: {e}") from None
        if not isinstance(obj, dict):
            raise MedmixError(f"{_where(path, i)}: field '{col}' is JSON {type(obj).__name__}, expected an object "
                              "of variables")
        return _serialise(obj) or None
    p = Path(v) if Path(v).is_absolute() else root / v
    if not p.exists():
        raise MedmixError(f"{_where(path, i)}: field '{col}': file {p} does not exist")
    name = p.name.lower()
    if kind == "features" and not name.endswith(FEATURE_SUFFIXES):
        raise MedmixError(f"{_where(path, i)}: field '{col}': {p.name} is not a feature file "
                          f"({', '.join(FEATURE_SUFFIXES)})")
    if kind == "volume" and not (p.is_dir() or name.endswith(VOLUME_SUFFIXES)):
        raise MedmixError(f"{_where(path, i)}: field '{col}': {p.name} is neither a volume file "
                          f"({', '.join(VOLUME_SUFFIXES)}) nor a DICOM series directory")
    p = str(p.resolve())
    return [p] if kind == "image" else p


def build_cohort(manifest: str | Path, root: str | Path | None = None, tasks: dict | None = None,
                 inputs: dict | None = None, split: dict | None = None) -> tuple[pl.DataFrame, dict]:
    """Return (cohort with splits, report) for a manifest CSV."""
    path = Path(manifest)
    if not path.exists():
        raise MedmixError(f"{path}: manifest not found (set datasets/<name>/manifest or root)")
    root = Path(root) if root else path.parent
    tasks = tasks or {}
    if not tasks:
        raise MedmixError(f"{path}: no task declared (set datasets/<name>/tasks in the config)")
    split = split or {"train": 0.7, "val": 0.15, "seed": 0}
    report = new_report()
    df = read_table(path, report=report)
    for c in ("sample_id", "patient_id"):
        if c not in df.columns:
            raise MedmixError(f"{path}: missing column '{c}'")
        empty = df[c].is_null() | (df[c].str.strip_chars() == "")
        if empty.any():
            raise MedmixError(f"{_where(path, int(empty.arg_true()[0]))}: field '{c}' is empty")
    check_unique(df["sample_id"].to_list(), str(path), "sample_id", rows=list(range(1, df.height + 1)))
    count(report, "counts", "manifest_rows", df.height)
    label_src = {c for t in tasks.values() for c in t["columns"]}
    if not inputs:
        inputs = {c: "text" for c in df.columns if c not in ("sample_id", "patient_id", "split") and c not in label_src
                  and not c.startswith(cohort_mod.GROUP_PREFIX)}
    for m, kind in inputs.items():
        if kind not in INPUT_TYPES:
            raise MedmixError(f"input '{m}': type {kind!r} is not one of {', '.join(INPUT_TYPES)}")
        if m not in df.columns:
            raise MedmixError(f"{path}: modality column '{m}' is not in the manifest (columns: {', '.join(df.columns)})")
    if not inputs:
        raise MedmixError(f"{path}: no modality column (every column is an id, a split or a label)")

    cols: dict[str, pl.Series] = {"sample_id": df["sample_id"].str.strip_chars(),
                                  "patient_id": df["patient_id"].str.strip_chars()}
    declared = {}
    for name, t in tasks.items():
        lab = _labels(df, path, name, t)
        declared[name] = {"type": t["type"], "columns": list(lab)}
        if t["type"] == "multiclass":
            declared[name]["classes"] = list(t["classes"])
        for c, v in lab.items():
            dtype = pl.Float64 if c.endswith("_time") and t["type"] == "survival" else pl.Int8
            cols[c] = pl.Series(c, v, dtype=dtype)
    groups = [c for c in df.columns if c.startswith(cohort_mod.GROUP_PREFIX) and c not in inputs]
    for g in groups:  # subgroup columns (sex, age band, site, ...): carried for subgroup metrics, never an input
        cols[g] = df[g].str.strip_chars()
    for m, kind in inputs.items():
        vals = [_input(v, kind, root, path, i, m) for i, v in enumerate(df[m].to_list())]
        cols[m] = pl.Series(m, vals, dtype=pl.List(pl.String) if kind == "image" else pl.String)
    out = pl.DataFrame(cols)

    given = df["split"].str.strip_chars().fill_null("") if "split" in df.columns else None
    if given is None or (given == "").all():
        report["split_source"] = f"seeded by patient: {split}"
        out = cohort_mod.assign_splits(out, split["train"], split["val"], split["seed"])
    else:
        bad = ~given.is_in(list(cohort_mod.SPLITS))
        if bad.any():
            i = int(bad.arg_true()[0])
            raise MedmixError(f"{_where(path, i)}: field 'split' is {given[i]!r}, expected one of train, val, test")
        report["split_source"] = f"{path}: split column"
        out = out.with_columns(given.alias("split"))
        two = out.group_by("patient_id").agg(pl.col("split").unique().sort()).filter(pl.col("split").list.len() > 1)
        if two.height:
            pid = two["patient_id"][0]
            rows = [i + 1 for i in (out["patient_id"] == pid).arg_true().to_list()]
            raise MedmixError(f"{path}: rows {rows}: field 'split': patient {pid} is in splits "
                              f"{two['split'][0].to_list()}; a patient's samples must share one split")
    out = out.select("sample_id", "patient_id", "split", *[c for c in out.columns if c.startswith("y_")], *groups,
                     *inputs)
    report["tasks"] = declared
    report["inputs"] = dict(inputs)
    for m in inputs:
        report["missing"][m] = {"empty_cell": int(out[m].is_null().sum())}
    log.info("manifest %s: %d samples, inputs %s, tasks %s", path, out.height, inputs, list(declared))
    return out, report
