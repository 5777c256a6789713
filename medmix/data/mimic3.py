"""MIMIC-III v1.4 loader (cross-cohort target): the MIMIC-IV cohort definition and features.

Unit, prediction time and tasks as in medmix/data/mimic4.py: the first ICU stay of an adult
admission lasting at least `prediction_hours`; deaths before the prediction time excluded;
`y_ihm`, `y_los7`. CareVue and MetaVision chartevents itemids (and the MIMIC-III lab itemids) are
mapped to the MIMIC-IV variables of medmix/data/variables.py by a table shipped as data
(`mimic3_itemids.csv`: itemid, table, variable, source, scale, offset; value = raw × scale +
offset, e.g. °C → °F), so the serialised `ehr` reads exactly as a MIMIC-IV one. `notes`: the
radiology notes (NOTEEVENTS, CATEGORY Radiology, not ISERROR) of the admission charted before
the prediction time and signed (STORETIME) before it; a note with only a CHARTDATE counts at the
end of that day. CHARTEVENTS are cut by STORETIME where present, LABEVENTS (no STORETIME in
MIMIC-III) by CHARTTIME. `cxr` is always missing (MIMIC-III has no images). Tables may be .csv or
.csv.gz, file names and headers in upper case (the full release) or lower case (the public demo). Ages above 89 are shifted in MIMIC-III (DOB 300 years back) and are capped at 91.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl

from medmix.data.cohort import age_band, race_group
from medmix.data.common import (available_before, count, find_table, log, new_report, read_events, read_table,
                                serialise_ehr, source, summarise_events, typed)
from medmix.data.variables import LAB_STATS, LABS, VITAL_STATS, VITALS
from medmix.io import MedmixError

DEFAULT_MAP = Path(__file__).with_name("mimic3_itemids.csv")
_TS = "%Y-%m-%d %H:%M:%S"


def _read(path: Path, columns: list[str], report: dict | None = None, optional: tuple[str, ...] = ()) -> pl.DataFrame:
    """The columns (any header case) as lower-case names."""
    return read_table(path, columns, report, optional).rename(str.lower)


def _times(df: pl.DataFrame, cols: list[str], path: Path, required: bool = False) -> pl.DataFrame:
    df = df.with_columns([pl.col(c).str.strptime(pl.Datetime("us"), _TS, strict=False) for c in cols])
    if required:
        for c in cols:
            bad = df[c].is_null()
            if bad.any():
                i = int(bad.arg_true()[0])
                raise MedmixError(f"{path}: row {i + 1} (line {i + 2}): field '{c.upper()}' is not a '{_TS}' timestamp")
    return df


def read_itemid_map(path: str | Path | None = None) -> pl.DataFrame:
    """The itemid → MIMIC-IV variable table; every variable must be one medmix knows."""
    path = Path(path) if path else DEFAULT_MAP
    if not path.exists():
        raise MedmixError(f"{path}: itemid map not found (set datasets/<name>/itemid_map)")
    df = read_table(path, ["itemid", "table", "variable", "scale", "offset"])
    names = {v[0] for v in VITALS.values()} | {v[0] for v in LABS.values()}
    for i, r in enumerate(df.iter_rows(named=True)):
        if r["variable"] not in names:
            raise MedmixError(f"{path}: row {i + 1} (line {i + 2}): field 'variable' is {r['variable']!r}, not a "
                              f"MIMIC-IV variable of medmix/data/variables.py")
        if r["table"] not in ("chartevents", "labevents"):
            raise MedmixError(f"{path}: row {i + 1} (line {i + 2}): field 'table' is {r['table']!r}")
    return df.with_columns(pl.col("itemid").cast(pl.Int64), pl.col("scale").cast(pl.Float64),
                           pl.col("offset").cast(pl.Float64))


def _mapped(ev: pl.DataFrame, m: pl.DataFrame, target: dict[int, tuple[str, str]]) -> pl.DataFrame:
    """Raw MIMIC-III events → MIMIC-IV itemids and units (the summariser's vocabulary)."""
    to_iv = {name: iid for iid, (name, _) in target.items()}
    m = m.with_columns(pl.col("variable").replace_strict(to_iv, return_dtype=pl.Int64).alias("iv"))
    ev = ev.join(m.select("itemid", "iv", "scale", "offset"), on="itemid")
    return ev.with_columns(pl.col("iv").alias("itemid"),
                           (pl.col("valuenum").cast(pl.Float64, strict=False) * pl.col("scale") + pl.col("offset"))
                           .alias("valuenum")).drop("iv", "scale", "offset")


def build_cohort(root: str | Path, prediction_hours: float = 48, min_age: int = 18, lab_lookback_hours: float = 24,
                 itemid_map: str | Path | None = None, optional_tables=("noteevents",)) -> tuple[pl.DataFrame, dict]:
    """Return (cohort without split, report) for a MIMIC-III v1.4 folder."""
    root = Path(root)
    optional = set(optional_tables or ())
    report = new_report({"ihm": {"type": "binary", "columns": ["y_ihm"]},
                         "los7": {"type": "binary", "columns": ["y_los7"]}})
    imap = read_itemid_map(itemid_map)
    report["itemid_map"] = str(itemid_map or DEFAULT_MAP)
    pat_p = source(find_table(root, "PATIENTS"), "patients", "MIMIC-III PATIENTS", set(), report)
    adm_p = source(find_table(root, "ADMISSIONS"), "admissions", "MIMIC-III ADMISSIONS", set(), report)
    icu_p = source(find_table(root, "ICUSTAYS"), "icustays", "MIMIC-III ICUSTAYS", set(), report)
    pat = _times(_read(pat_p, ["SUBJECT_ID", "GENDER", "DOB"]), ["dob"], pat_p, required=True)
    adm = _times(_read(adm_p, ["SUBJECT_ID", "HADM_ID", "ADMITTIME", "DEATHTIME", "HOSPITAL_EXPIRE_FLAG"],
                       optional=("ETHNICITY",)),
                 ["admittime", "deathtime"], adm_p)
    icu = _times(_read(icu_p, ["SUBJECT_ID", "HADM_ID", "ICUSTAY_ID", "INTIME", "OUTTIME", "LOS"]),
                 ["intime", "outtime"], icu_p, required=True)
    icu = typed(icu, icu_p, {"subject_id": pl.Int64, "hadm_id": pl.Int64, "icustay_id": pl.Int64, "los": pl.Float64},
                required=("subject_id", "hadm_id", "icustay_id"), unique=("icustay_id",))
    adm = typed(adm, adm_p, {"subject_id": pl.Int64, "hadm_id": pl.Int64, "hospital_expire_flag": pl.Int8},
                required=("subject_id", "hadm_id"), unique=("hadm_id",))
    pat = typed(pat, pat_p, {"subject_id": pl.Int64}, required=("subject_id",), unique=("subject_id",))
    count(report, "counts", "icu_stays_raw", icu.height)

    icu = icu.sort("intime", "icustay_id").with_columns(pl.col("intime").rank("ordinal").over("hadm_id").alias("_k"))
    count(report, "exclusions", "not_first_icu_stay_of_admission", int((icu["_k"] > 1).sum()))
    df = icu.filter(pl.col("_k") == 1).drop("_k")
    df = df.join(adm, on=["subject_id", "hadm_id"], how="left").join(pat, on="subject_id", how="left")
    n = df.height
    df = df.filter(pl.col("admittime").is_not_null() & pl.col("dob").is_not_null())
    count(report, "exclusions", "no_admission_or_patient_row", n - df.height)
    df = df.with_columns(((pl.col("admittime") - pl.col("dob")).dt.total_days() / 365.25).clip(upper_bound=91)
                         .floor().cast(pl.Int64).alias("age"))
    n = df.height
    df = df.filter(pl.col("age") >= min_age)
    count(report, "exclusions", "age_below_min", n - df.height)
    df = df.with_columns((pl.col("intime") + timedelta(hours=prediction_hours)).alias("pred_time"))
    n = df.height
    df = df.filter(pl.col("outtime") >= pl.col("pred_time"))
    count(report, "exclusions", "icu_stay_shorter_than_window", n - df.height)
    n = df.height
    df = df.filter(pl.col("deathtime").is_null() | (pl.col("deathtime") >= pl.col("pred_time")))
    count(report, "exclusions", "died_before_prediction_time", n - df.height)
    df = df.with_columns(pl.col("icustay_id").cast(pl.String).alias("sample_id"),
                         pl.col("subject_id").cast(pl.String).alias("patient_id"),
                         pl.col("hospital_expire_flag").cast(pl.Int8).alias("y_ihm"),
                         (pl.col("los") > 7).cast(pl.Int8).alias("y_los7"))
    stays = df.select("sample_id", "subject_id", "icustay_id", "hadm_id", "admittime", "intime", "pred_time")

    # ---- EHR: mapped chartevents (of the stay) and labevents (of the subject) inside the window ----
    counts: dict = {}
    summaries = []
    ce_p = source(find_table(root, "CHARTEVENTS"), "chartevents", "MIMIC-III CHARTEVENTS", optional, report)
    if ce_p:
        cm = imap.filter(pl.col("table") == "chartevents")
        def ce_window(ce: pl.DataFrame) -> pl.DataFrame:   # each chunk cut to its stay's window
            ce = _times(ce, [c for c in ("charttime", "storetime") if c in ce.columns], ce_p).join(
                stays.select("icustay_id", "sample_id", "intime", "pred_time"), on="icustay_id").rename({"charttime": "t"})
            return available_before(ce, pl.col("intime"), report, "chartevents")
        ce = read_events(ce_p, ["ICUSTAY_ID", "ITEMID", "CHARTTIME", "VALUENUM"], set(cm["itemid"].to_list()),
                         "ICUSTAY_ID", set(stays["icustay_id"].to_list()), optional=("STORETIME",), per_chunk=ce_window, report=report)
        summaries.append(summarise_events(_mapped(ce, cm, VITALS), VITALS, VITAL_STATS, counts))
    le_p = source(find_table(root, "LABEVENTS"), "labevents", "MIMIC-III LABEVENTS", optional, report)
    if le_p:
        lm = imap.filter(pl.col("table") == "labevents")
        def le_window(le: pl.DataFrame) -> pl.DataFrame:
            le = _times(le, ["charttime"], le_p).join(stays.select("subject_id", "sample_id", "intime", "pred_time"),
                                                      on="subject_id").rename({"charttime": "t"})
            # MIMIC-III LABEVENTS has no STORETIME: the cut is on CHARTTIME (the specimen time; cuts/labevents says so)
            return available_before(le, pl.col("intime") - timedelta(hours=lab_lookback_hours), report, "labevents")
        le = read_events(le_p, ["SUBJECT_ID", "ITEMID", "CHARTTIME", "VALUENUM"], set(lm["itemid"].to_list()),
                         "SUBJECT_ID", set(stays["subject_id"].to_list()), per_chunk=le_window, report=report)
        summaries.append(summarise_events(_mapped(le, lm, LABS), LABS, LAB_STATS, counts))
    report["counts"].update(counts)
    order = {name: i for i, (name, _) in enumerate(list(VITALS.values()) + list(LABS.values()))}
    items: dict[str, list] = {}
    for s in summaries:
        stats = [c for c in s.columns if c not in ("sample_id", "name")]
        for row in s.iter_rows(named=True):
            items.setdefault(row["sample_id"], []).extend((row["name"], st, row[st]) for st in stats
                                                          if row[st] is not None)
    demo = {r["sample_id"]: (r["age"], r["gender"]) for r in df.select("sample_id", "age", "gender").iter_rows(named=True)}
    # MIMIC-III codes gender M/F as MIMIC-IV does
    ehr = []
    for sid in stays["sample_id"].to_list():
        it = items.get(sid)
        if not it:
            ehr.append(None)
            continue
        age, gender = demo[sid]
        ehr.append(f"age: {age}; gender: {gender or 'unknown'}; "
                   + serialise_ehr(sorted(it, key=lambda x: order.get(x[0], 99))))  # as mimic4: stable by variable

    # ---- notes: radiology NOTEEVENTS of the admission before the prediction time ----
    ne_p = source(find_table(root, "NOTEEVENTS"), "noteevents", "MIMIC-III NOTEEVENTS", optional, report)
    if ne_p:
        ne = _read(ne_p, ["SUBJECT_ID", "CHARTDATE", "CHARTTIME", "CATEGORY", "ISERROR", "TEXT"], report,
                   optional=("STORETIME",))
        count(report, "counts", "noteevents_rows", ne.height)
        ne = ne.filter(pl.col("category").str.strip_chars() == "Radiology")
        n = ne.height
        ne = ne.filter(pl.col("iserror").is_null() | (pl.col("iserror").str.strip_chars() != "1"))
        count(report, "counts", "radiology_notes_marked_error", n - ne.height)
        ne = typed(ne, ne_p, {"subject_id": pl.Int64}).with_columns(
            pl.coalesce(pl.col("charttime").str.strptime(pl.Datetime("us"), _TS, strict=False),
                        pl.col("chartdate").str.strptime(pl.Date, "%Y-%m-%d", strict=False).cast(pl.Datetime("us"))
                        + timedelta(hours=23, minutes=59, seconds=59)).alias("t"),
            *([pl.col("storetime").str.strptime(pl.Datetime("us"), _TS, strict=False)] if "storetime" in ne.columns else []))
        ne = ne.join(stays.select("subject_id", "sample_id", "admittime", "pred_time"), on="subject_id")
        ne = available_before(ne, pl.col("admittime"), report, "noteevents",  # signed (STORETIME) before
                              when_name="charttime (else the end of chartdate)")
        ne = ne.filter(pl.col("text").str.strip_chars().str.len_chars() > 0)
        by = dict(ne.sort("t").group_by("sample_id", maintain_order=True).agg(pl.col("text").str.join("\n\n")).iter_rows())
        notes = [by.get(s) for s in stays["sample_id"].to_list()]
        report["missing"]["notes"] = {"no_note_before_prediction_time": sum(x is None for x in notes)}
    else:
        notes = [None] * stays.height
        report["missing"]["notes"] = {"note_source_absent": stays.height}
    report["missing"]["ehr"] = {"no_vital_or_lab_in_window": sum(x is None for x in ehr)}
    report["missing"]["cxr"] = {"no_cxr_in_mimic_iii": stays.height}
    log.info("mimic3: %d stays, missing %s", stays.height, report["missing"])
    cohort = df.select(
        "sample_id", "patient_id", pl.col("hadm_id").cast(pl.String), pl.col("icustay_id").cast(pl.String).alias("stay_id"),
        pl.col("intime").dt.strftime(_TS), pl.col("pred_time").dt.strftime(_TS), "y_ihm", "y_los7",
        pl.col("gender").fill_null("unknown").alias("group_sex"), age_band(pl.col("age")).alias("group_age"),
        *([race_group(pl.col("ethnicity")).alias("group_race")] if "ethnicity" in df.columns else []),
    ).with_columns(pl.Series("ehr", ehr, dtype=pl.String), pl.Series("notes", notes, dtype=pl.String),
                   pl.Series("cxr", [None] * stays.height, dtype=pl.List(pl.String)))
    return cohort, report
