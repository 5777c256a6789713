"""MIMIC-IV loader core: ICU stays → one cohort row per stay with EHR, notes and CXR inputs.

Unit: the first ICU stay of an adult admission that lasts at least the prediction window.
Prediction time = ICU intime + `prediction_hours`. Every input is cut at the prediction time:
vitals, labs, radiology notes and CXR studies charted later never enter the cohort.
Roots: `root` holds hosp/ and icu/ (MIMIC-IV v2.x); `note_root` holds note/radiology.csv.gz
(MIMIC-IV-Note); `cxr_root` holds mimic-cxr-2.0.0-metadata.csv.gz and files/ (MIMIC-CXR-JPG).
A missing note or CXR source makes that modality missing for every stay (counted), not an error.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl

from medmix.data.cohort import age_band, race_group
from medmix.data.common import (available_before, find_table, read_events, read_table as _read_table, serialise_ehr,
                                source, summarise_events, typed)
from medmix.data.variables import LAB_STATS, LABS, VITAL_STATS, VITALS
from medmix.io import MedmixError

_TS = "%Y-%m-%d %H:%M:%S"


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise MedmixError(f"{path}: {what} not found (set the dataset's root in the config)")
    return path


def _parse_times(df: pl.DataFrame, cols: list[str]) -> pl.DataFrame:
    return df.with_columns([pl.col(c).str.strptime(pl.Datetime("us"), _TS, strict=False) for c in cols])


def _stays(root: Path, prediction_hours: float, min_age: int, report: dict) -> pl.DataFrame:
    """The cohort's unit: the first ICU stay of an adult admission lasting the prediction window,
    alive at the prediction time; one row per stay with its labels (exclusions counted)."""
    ex = report["exclusions"]
    pat_p = _need(find_table(root / "hosp", "patients"), "MIMIC-IV hosp/patients")
    adm_p = _need(find_table(root / "hosp", "admissions"), "MIMIC-IV hosp/admissions")
    icu_p = _need(find_table(root / "icu", "icustays"), "MIMIC-IV icu/icustays")
    patients = _read_table(pat_p, ["subject_id", "gender", "anchor_age", "anchor_year"], report)
    adm = _read_table(adm_p, ["subject_id", "hadm_id", "admittime", "dischtime", "deathtime", "hospital_expire_flag"],
                      report, optional=("race", "ethnicity"))  # MIMIC-IV v2 `race`, v1 `ethnicity`
    icu = _read_table(icu_p, ["subject_id", "hadm_id", "stay_id", "intime", "outtime", "los"], report)

    ids = ("subject_id", "hadm_id")
    icu = typed(_parse_times(icu, ["intime", "outtime"]), icu_p,
                {"subject_id": pl.Int64, "hadm_id": pl.Int64, "stay_id": pl.Int64, "los": pl.Float64},
                required=(*ids, "stay_id"), unique=("stay_id",))
    adm = typed(_parse_times(adm, ["admittime", "dischtime", "deathtime"]), adm_p,
                {"subject_id": pl.Int64, "hadm_id": pl.Int64, "hospital_expire_flag": pl.Int8},
                required=ids, unique=("hadm_id",))
    patients = typed(patients, pat_p, {"subject_id": pl.Int64, "anchor_age": pl.Int64, "anchor_year": pl.Int64},
                     required=("subject_id",), unique=("subject_id",))
    bad = icu.filter(pl.col("intime").is_null() | pl.col("outtime").is_null())
    if bad.height:
        raise MedmixError(f"{icu_p}: row of stay_id {bad['stay_id'][0]}: field intime/outtime is not a "
                          f"'{_TS}' timestamp")
    report["counts"]["icu_stays_raw"] = icu.height

    icu = icu.sort("intime").with_columns(pl.col("intime").rank("ordinal").over("hadm_id").alias("_k"))
    ex["not_first_icu_stay_of_admission"] = int((icu["_k"] > 1).sum())
    df = icu.filter(pl.col("_k") == 1).drop("_k")
    df = df.join(adm, on=["subject_id", "hadm_id"], how="left").join(patients, on="subject_id", how="left")
    n = df.height
    df = df.filter(pl.col("admittime").is_not_null() & pl.col("anchor_age").is_not_null())
    ex["no_admission_or_patient_row"] = n - df.height
    df = df.with_columns((pl.col("anchor_age") + pl.col("admittime").dt.year() - pl.col("anchor_year")).alias("age"))
    n = df.height
    df = df.filter(pl.col("age") >= min_age)
    ex["age_below_min"] = n - df.height
    window = timedelta(hours=prediction_hours)
    df = df.with_columns((pl.col("intime") + window).alias("pred_time"))
    n = df.height
    df = df.filter(pl.col("outtime") >= pl.col("pred_time"))
    ex["icu_stay_shorter_than_window"] = n - df.height
    n = df.height
    df = df.filter(pl.col("deathtime").is_null() | (pl.col("deathtime") >= pl.col("pred_time")))
    ex["died_before_prediction_time"] = n - df.height
    df = df.with_columns(
        pl.col("stay_id").cast(pl.String).alias("sample_id"),
        pl.col("subject_id").cast(pl.String).alias("patient_id"),
        pl.col("hospital_expire_flag").cast(pl.Int8).alias("y_ihm"),
        (pl.col("los") > 7).cast(pl.Int8).alias("y_los7"),
    )
    return df


def _ehr(root: Path, df: pl.DataFrame, stays: pl.DataFrame, lab_lookback_hours: float, optional: set,
         report: dict) -> list[str | None]:
    """EHR text per stay: vitals (chartevents of the stay) and labs (labevents of the subject) in the window."""
    counts: dict = {}
    ce_p = source(find_table(root / "icu", "chartevents"), "chartevents", "MIMIC-IV icu/chartevents", optional, report)
    le_p = source(find_table(root / "hosp", "labevents"), "labevents", "MIMIC-IV hosp/labevents", optional, report)
    summaries = []
    if ce_p:
        def ce_window(ce: pl.DataFrame) -> pl.DataFrame:   # each chunk cut to its stay's window
            ce = _parse_times(ce, [c for c in ("charttime", "storetime") if c in ce.columns]).join(
                stays.select("stay_id", "sample_id", "intime", "pred_time"), on="stay_id").rename({"charttime": "t"})
            return available_before(ce, pl.col("intime"), report, "chartevents")
        ce = read_events(ce_p, ["stay_id", "itemid", "charttime", "valuenum"], set(VITALS), "stay_id",
                         set(stays["stay_id"].to_list()), optional=("storetime",), per_chunk=ce_window, report=report)
        summaries.append(summarise_events(ce, VITALS, VITAL_STATS, counts))
    if le_p:
        def le_window(le: pl.DataFrame) -> pl.DataFrame:
            le = _parse_times(le, [c for c in ("charttime", "storetime") if c in le.columns]).join(
                stays.select("subject_id", "sample_id", "intime", "pred_time"), on="subject_id").rename({"charttime": "t"})
            return available_before(le, pl.col("intime") - timedelta(hours=lab_lookback_hours), report, "labevents")
        le = read_events(le_p, ["subject_id", "itemid", "charttime", "valuenum"], set(LABS), "subject_id",
                         set(stays["subject_id"].to_list()), optional=("storetime",), per_chunk=le_window, report=report)
        summaries.append(summarise_events(le, LABS, LAB_STATS, counts))
    report["counts"].update(counts)
    order = {name: i for i, (name, _) in enumerate(list(VITALS.values()) + list(LABS.values()))}
    ehr_items: dict[str, list] = {}
    for s in summaries:
        stats = [c for c in s.columns if c not in ("sample_id", "name")]
        for row in s.sort("sample_id", pl.col("name").replace_strict(order, default=99)).iter_rows(named=True):
            ehr_items.setdefault(row["sample_id"], []).extend(
                (row["name"], st, row[st]) for st in stats if row[st] is not None)
    demo = {r["sample_id"]: (r["age"], r["gender"]) for r in df.select("sample_id", "age", "gender").iter_rows(named=True)}

    def ehr_text(sid: str) -> str | None:
        items = ehr_items.get(sid)
        if not items:
            return None
        age, gender = demo[sid]
        head = f"age: {age}; gender: {gender or 'unknown'}; "
        return head + serialise_ehr(sorted(items, key=lambda x: order.get(x[0], 99)))

    return [ehr_text(s) for s in stays["sample_id"].to_list()]


def _notes(note_root: Path, stays: pl.DataFrame, optional: set, report: dict,
           carry: bool = False) -> list[str | None]:
    """Radiology notes of the admission charted before the prediction time, per stay; `carry`: a
    stay without one gets the patient's last note from before the admission (signed by then)."""
    rad_p = source(find_table(note_root / "note", "radiology"), "radiology", "MIMIC-IV-Note note/radiology", optional,
                   report, hint="set the dataset's note_root in the config")
    if rad_p:
        rad = _read_table(rad_p, ["subject_id", "charttime", "text"], report, optional=("storetime",))
        rad = _parse_times(typed(rad, rad_p, {"subject_id": pl.Int64}),
                           [c for c in ("charttime", "storetime") if c in rad.columns])
        joined = rad.join(stays.select("subject_id", "sample_id", "admittime", "pred_time"), on="subject_id")
        joined = joined.filter(pl.col("text").str.strip_chars().str.len_chars() > 0)
        rad = available_before(joined, pl.col("admittime"), report, "radiology", when="charttime")  # signed before
        notes_by = dict(rad.sort("charttime").group_by("sample_id", maintain_order=True)
                        .agg(pl.col("text").str.join("\n\n")).iter_rows())
        if carry:
            signed = (pl.coalesce("storetime", "charttime") if "storetime" in joined.columns else pl.col("charttime"))
            prior = joined.filter((pl.col("charttime") < pl.col("admittime")) & (signed < pl.col("pred_time")))
            last = prior.sort("charttime").group_by("sample_id").agg(pl.col("text").last())
            extra = {sid: text for sid, text in last.iter_rows() if sid not in notes_by}
            report.setdefault("carried_forward", {})["notes"] = len(extra)
            notes_by.update(extra)
        notes = [notes_by.get(s) for s in stays["sample_id"].to_list()]
        report["missing"]["notes"] = {"no_note_before_prediction_time": sum(x is None for x in notes)}
    else:
        notes = [None] * stays.height
        report["missing"]["notes"] = {"note_source_absent": stays.height}
    return notes


def _cxr(cxr_root: Path, stays: pl.DataFrame, optional: set, report: dict,
         carry: bool = False) -> list[list[str] | None]:
    """The last frontal image of the last CXR study of the admission before the prediction time, per
    stay; `carry`: a stay without one gets the patient's last frontal image from before the admission."""
    meta_p = source(find_table(cxr_root, "mimic-cxr-2.0.0-metadata"), "cxr_metadata", "MIMIC-CXR-JPG metadata", optional,
                    report, hint="set the dataset's cxr_root in the config")
    if meta_p:
        meta = _read_table(meta_p, ["dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime"])
        meta = typed(meta, meta_p, {"subject_id": pl.Int64}).with_columns(
            (pl.col("StudyDate") + pl.col("StudyTime").str.split(".").list.first().str.zfill(6))
            .str.strptime(pl.Datetime("us"), "%Y%m%d%H%M%S", strict=False).alias("t"))
        meta = meta.filter(pl.col("ViewPosition").is_in(["PA", "AP"]))
        joined = meta.join(stays.select("subject_id", "sample_id", "admittime", "pred_time"), on="subject_id")
        # a study exists from its acquisition (StudyDate/StudyTime): MIMIC-CXR has no later "stored" time
        meta = joined.filter((pl.col("t") >= pl.col("admittime")) & (pl.col("t") < pl.col("pred_time")))
        last = meta.sort("t", "dicom_id").group_by("sample_id").agg(pl.all().last())
        in_window = last.height
        if carry:
            prior = joined.filter(pl.col("t") < pl.col("admittime")).sort("t", "dicom_id")
            prior = prior.group_by("sample_id").agg(pl.all().last())
            prior = prior.filter(~pl.col("sample_id").is_in(last["sample_id"].implode()))
            last = pl.concat([last, prior.select(last.columns)])
        paths = {}
        absent = 0
        for r in last.iter_rows(named=True):
            s = str(r["subject_id"])
            p = cxr_root / "files" / f"p{s[:2]}" / f"p{s}" / f"s{r['study_id']}" / f"{r['dicom_id']}.jpg"
            if p.exists():
                paths[r["sample_id"]] = [str(p.resolve())]
            else:
                absent += 1
        if carry:
            report.setdefault("carried_forward", {})["cxr"] = sum(s in paths for s in last["sample_id"][in_window:])
        cxr = [paths.get(s) for s in stays["sample_id"].to_list()]
        report["missing"]["cxr"] = {"no_frontal_study_before_prediction_time": stays.height - last.height,
                                    "image_file_absent": absent}
    else:
        cxr = [None] * stays.height
        report["missing"]["cxr"] = {"cxr_source_absent": stays.height}
    return cxr


def build_cohort(root: str | Path, note_root: str | Path | None = None, cxr_root: str | Path | None = None,
                 prediction_hours: float = 48, min_age: int = 18, lab_lookback_hours: float = 24,
                 optional_tables=("radiology", "cxr_metadata"), carry_forward=()) -> tuple[pl.DataFrame, dict]:
    """Return (cohort without split, report) for a MIMIC-IV-layout root.

    The cohort has sample_id, patient_id, hadm_id, stay_id, intime, pred_time, y_ihm, y_los7 and the
    inputs ehr (serialised text), notes (text) and cxr (list of image paths); null = missing.
    `optional_tables` (chartevents, labevents, radiology, cxr_metadata): sources whose absence is a
    warning (the inputs they feed are missing) rather than an error. `carry_forward` (notes, cxr):
    a stay without that input in its admission gets the patient's last one from before the
    admission (last observation carried forward), counted in the report's `carried_forward`.
    """
    optional = set(optional_tables or ())
    root = Path(root)
    note_root = Path(note_root) if note_root else root
    cxr_root = Path(cxr_root) if cxr_root else root
    report: dict = {"exclusions": {}, "missing": {}, "counts": {}, "warnings": [],
                    "tasks": {"ihm": {"type": "binary", "columns": ["y_ihm"]},
                              "los7": {"type": "binary", "columns": ["y_los7"]}}}

    df = _stays(root, prediction_hours, min_age, report)
    stays = df.select("sample_id", "subject_id", "stay_id", "hadm_id", "admittime", "intime", "pred_time")
    ehr = _ehr(root, df, stays, lab_lookback_hours, optional, report)
    carry = set(carry_forward or ())
    notes = _notes(note_root, stays, optional, report, carry="notes" in carry)
    cxr = _cxr(cxr_root, stays, optional, report, carry="cxr" in carry)
    report["missing"]["ehr"] = {"no_vital_or_lab_in_window": sum(x is None for x in ehr)}

    race = "race" if "race" in df.columns else "ethnicity" if "ethnicity" in df.columns else None
    cohort = df.select(
        "sample_id", "patient_id", pl.col("hadm_id").cast(pl.String), pl.col("stay_id").cast(pl.String),
        pl.col("intime").dt.strftime(_TS), pl.col("pred_time").dt.strftime(_TS), "y_ihm", "y_los7",
        pl.col("gender").fill_null("unknown").alias("group_sex"), age_band(pl.col("age")).alias("group_age"),
        *([race_group(pl.col(race)).alias("group_race")] if race else []),
    ).with_columns(pl.Series("ehr", ehr, dtype=pl.String), pl.Series("notes", notes, dtype=pl.String),
                   pl.Series("cxr", cxr, dtype=pl.List(pl.String)))
    return cohort, report
