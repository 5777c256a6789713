"""MIMIC-III loader on the MIMIC-III-shaped fixture, the real MIMIC-IV demo's counts recomputed from
the raw files, and the cross-cohort target end to end through the real Snakemake DAG."""

import csv
import gzip
import json
from datetime import datetime, timedelta

import polars as pl
import pytest

from medmix.data import cohort as C
from medmix.data.mimic3 import build_cohort
from medmix.data.mimic4 import build_cohort as build_mimic4
from medmix.io import MedmixError
from medmix.synth_layouts import synth_mimic3

from conftest import MIMIC_DEMO, TINY_CONFIG


@pytest.fixture(scope="module")
def m3_raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("mimic3")
    synth_mimic3(root, n=60, seed=4)
    return root


def _rows(path):
    with gzip.open(path, "rt", newline="") as f:
        return list(csv.DictReader(f))


def _ts(s):
    return datetime.strptime(s, "%Y-%m-%d %H:%M:%S")


def test_mimic3_cohort_matches_the_raw_tables_and_ignores_the_future(m3_raw, tmp_path):
    co, rep = build_cohort(m3_raw)
    co, rep = C.finalize(C.assign_splits(co, seed=2), rep)
    C.write(co, rep, tmp_path / "cohort.parquet")
    # the cohort definition recomputed from the raw CSVs
    adm = {r["HADM_ID"]: r for r in _rows(m3_raw / "ADMISSIONS.csv.gz")}
    dob = {r["SUBJECT_ID"]: _ts(r["DOB"]) for r in _rows(m3_raw / "PATIENTS.csv.gz")}
    stays = sorted(_rows(m3_raw / "ICUSTAYS.csv.gz"), key=lambda r: (r["INTIME"], int(r["ICUSTAY_ID"])))
    first, kept = set(), []
    for s in stays:
        if s["HADM_ID"] in first:
            continue
        first.add(s["HADM_ID"])
        pred = _ts(s["INTIME"]) + timedelta(hours=48)
        death = adm[s["HADM_ID"]]["DEATHTIME"]
        age = min((_ts(adm[s["HADM_ID"]]["ADMITTIME"]) - dob[s["SUBJECT_ID"]]).days / 365.25, 91)
        if age >= 18 and _ts(s["OUTTIME"]) >= pred and (not death or _ts(death) >= pred):
            kept.append(s)
    assert rep["counts"]["icu_stays_raw"] == len(stays)
    assert rep["exclusions"]["not_first_icu_stay_of_admission"] == len(stays) - len(first) > 0
    assert rep["exclusions"]["died_before_prediction_time"] > 0 and rep["exclusions"]["age_below_min"] > 0
    assert set(co["sample_id"]) == {s["ICUSTAY_ID"] for s in kept}
    assert int(co["y_ihm"].sum()) == sum(adm[s["HADM_ID"]]["HOSPITAL_EXPIRE_FLAG"] == "1" for s in kept) > 0
    # nothing after the prediction time, no discharge summary, no ISERROR note
    notes = " ".join(co["notes"].drop_nulls().to_list())
    for planted in ("FUTURE NOTE", "DATE-ONLY", "DISCHARGE SECRET", "ERRONEOUS", "expired"):
        assert planted not in notes
    assert rep["counts"]["radiology_notes_marked_error"] == 60
    for text in co["ehr"].to_list():
        d = dict(kv.rsplit(": ", 1) for kv in text.split("; "))
        assert float(d["heart rate max"]) < 300 and float(d["lactate max"]) < 39     # planted after pred time
        assert 95 < float(d["temperature mean"]) < 103                                  # °C (676/223762) → °F
    assert co["cxr"].is_null().all() and rep["missing"]["cxr"] == {"no_cxr_in_mimic_iii": co.height}
    assert set(co.columns) >= {"ehr", "notes", "cxr"} and rep["tasks"]["ihm"]["columns"] == ["y_ihm"]
    assert co.group_by("patient_id").agg(pl.col("split").n_unique())["split"].max() == 1
    # CareVue and MetaVision stays serialise the same variables
    assert all(t.count(";") == co["ehr"][0].count(";") for t in co["ehr"].to_list())


def test_mimic3_missing_tables_and_bad_map(m3_raw, tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    for p in m3_raw.iterdir():
        if p.name != "NOTEEVENTS.csv.gz":
            (root / p.name).symlink_to(p)
    co, rep = build_cohort(root)                                   # NOTEEVENTS optional by default
    assert co["notes"].is_null().all() and "NOTEEVENTS" in rep["warnings"][0]
    with pytest.raises(MedmixError, match=r"NOTEEVENTS.csv.gz: MIMIC-III NOTEEVENTS not found.*optional_tables"):
        build_cohort(root, optional_tables=[])
    (root / "ICUSTAYS.csv.gz").unlink()
    with pytest.raises(MedmixError, match=r"ICUSTAYS.csv.gz: MIMIC-III ICUSTAYS not found"):
        build_cohort(root)
    bad = tmp_path / "map.csv"
    bad.write_text("itemid,table,variable,source,scale,offset\n211,chartevents,heart rate,carevue,1,0\n"
                   "618,chartevents,breath count,carevue,1,0\n")
    with pytest.raises(MedmixError, match=r"map.csv: row 2 \(line 3\): field 'variable' is 'breath count'"):
        build_cohort(m3_raw, itemid_map=bad)


def test_mimic3_lower_case_release_and_notes_signed_after_the_prediction_time(m3_raw, tmp_path):
    """The public MIMIC-III demo v1.4 ships lower-case headers and file names: the same cohort. A
    radiology note of an exam before the prediction time, signed (STORETIME) after it, never enters."""
    root = tmp_path / "lower"
    root.mkdir()
    for p in m3_raw.iterdir():
        df = pl.read_csv(p, infer_schema_length=0)
        if p.name.startswith("NOTEEVENTS"):
            stay = pl.read_csv(m3_raw / "ICUSTAYS.csv.gz", infer_schema_length=0).row(0, named=True)
            t = _ts(stay["INTIME"]) + timedelta(hours=47)
            late = {c: None for c in df.columns} | {
                "ROW_ID": "999999", "SUBJECT_ID": stay["SUBJECT_ID"], "HADM_ID": stay["HADM_ID"],
                "CHARTDATE": t.strftime("%Y-%m-%d"), "CHARTTIME": t.strftime("%Y-%m-%d %H:%M:%S"),
                "STORETIME": (t + timedelta(hours=3)).strftime("%Y-%m-%d %H:%M:%S"), "CATEGORY": "Radiology",
                "TEXT": "SIGNED LATE: patient expired"}
            df = pl.concat([df, pl.DataFrame([late], schema={c: pl.String for c in df.columns})])
        df.rename(str.lower).write_csv(root / p.name.lower().removesuffix(".gz"))
    a, _ = build_cohort(m3_raw)
    b, rep = build_cohort(root)
    assert a.drop("notes").equals(b.drop("notes")) and a["notes"].null_count() == b["notes"].null_count()
    assert "SIGNED LATE" not in " ".join(b["notes"].drop_nulls().to_list())
    assert rep["cuts"]["noteevents"]["charted_before_but_stored_after_prediction_time"] >= 1
    assert rep["cuts"]["labevents"]["cut_on"] == "charttime"  # MIMIC-III LABEVENTS has no STORETIME


@pytest.mark.skipif(not MIMIC_DEMO.exists(), reason="real MIMIC-IV demo not available")
def test_real_mimic_iv_demo_counts_match_the_raw_files():
    co, rep = build_mimic4(MIMIC_DEMO)
    co, rep = C.finalize(C.assign_splits(co), rep)
    pats = {r["subject_id"]: r for r in _rows(MIMIC_DEMO / "hosp" / "patients.csv.gz")}
    adm = {r["hadm_id"]: r for r in _rows(MIMIC_DEMO / "hosp" / "admissions.csv.gz")}
    stays = sorted(_rows(MIMIC_DEMO / "icu" / "icustays.csv.gz"), key=lambda r: r["intime"])
    first, kept, short = set(), [], 0
    for s in stays:
        if s["hadm_id"] in first:
            continue
        first.add(s["hadm_id"])
        a, p = adm[s["hadm_id"]], pats[s["subject_id"]]
        if int(p["anchor_age"]) + _ts(a["admittime"]).year - int(p["anchor_year"]) < 18:
            continue
        pred = _ts(s["intime"]) + timedelta(hours=48)
        if _ts(s["outtime"]) < pred:
            short += 1
            continue
        if a["deathtime"] and _ts(a["deathtime"]) < pred:
            continue
        kept.append(s)
    assert rep["counts"]["icu_stays_raw"] == len(stays) == 140
    assert rep["exclusions"]["not_first_icu_stay_of_admission"] == len(stays) - len(first) == 12
    assert rep["exclusions"]["icu_stay_shorter_than_window"] == short == 62
    assert co.height == len(kept) == 66
    assert int(co["y_ihm"].sum()) == sum(adm[s["hadm_id"]]["hospital_expire_flag"] == "1" for s in kept)
    assert int(co["y_los7"].sum()) == sum(float(s["los"]) > 7 for s in kept)



@pytest.mark.integration
def test_crosscohort_target_runs_end_to_end(dag):
    """The session DAG's `m3` (MIMIC-III layout, no CXR) evaluates the runs trained on `tiny`."""
    wd = dag["wd"]
    res = json.loads((wd / "results/m3/metrics.json").read_text())
    assert res["evaluation"] == "cross-cohort" and res["source"] == "tiny"
    n = json.loads((wd / "results/m3/cohort.json").read_text())["counts"]["samples"]
    for m in TINY_CONFIG["methods"]:
        e = res["methods"][m]
        assert e["target_n"] == n                                   # every mimic3 sample, not its test split
        assert 0 <= e["target"]["auroc"]["mean"] <= 1 and e["source_test"]["auroc"]["mean"] is not None
    assert not (wd / "results/m3/runs").exists()                  # nothing trained on the target
    table = (wd / "results/tables/cross_cohort.md").read_text()
    assert "### tiny → m3 (task ihm)" in table
    assert all(f"| {m} | 1 |" in table for m in TINY_CONFIG["methods"])
    assert not (wd / "results/m3/embeddings/ehr/tab.h5").exists()   # the fitted encoder keeps its source state


def test_mimic3_event_tables_in_small_chunks_give_the_same_cohort(m3_raw, monkeypatch):
    from medmix.data import common
    whole = build_cohort(m3_raw)
    monkeypatch.setattr(common, "_CHUNK_BYTES", 2048)
    chunked = build_cohort(m3_raw)
    assert chunked[0].equals(whole[0]) and chunked[1] == whole[1]
