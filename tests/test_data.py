import gzip
import shutil

import polars as pl
import pytest

from medmix.data import cohort as C
from medmix.data.mimic4 import build_cohort
from medmix.io import MedmixError

from conftest import MIMIC_DEMO


def _header(path):
    with gzip.open(path, "rt") as f:
        return f.readline().strip().split(",")


def test_synth_writes_the_real_mimic_iv_layout(tiny_raw):
    expect = {
        "hosp/patients.csv.gz": ["subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod"],
        "icu/icustays.csv.gz": ["subject_id", "hadm_id", "stay_id", "first_careunit", "last_careunit", "intime",
                                "outtime", "los"],
        "icu/chartevents.csv.gz": ["subject_id", "hadm_id", "stay_id", "caregiver_id", "charttime", "storetime",
                                   "itemid", "value", "valuenum", "valueuom", "warning"],
        "note/radiology.csv.gz": ["note_id", "subject_id", "hadm_id", "note_type", "note_seq", "charttime",
                                  "storetime", "text"],
    }
    for rel, cols in expect.items():
        assert _header(tiny_raw / rel) == cols, rel
    if MIMIC_DEMO.exists():  # same columns as the real release
        for rel in ["hosp/patients.csv.gz", "hosp/admissions.csv.gz", "hosp/labevents.csv.gz",
                    "hosp/d_labitems.csv.gz", "icu/icustays.csv.gz", "icu/chartevents.csv.gz", "icu/d_items.csv.gz"]:
            assert _header(tiny_raw / rel) == _header(MIMIC_DEMO / rel), rel
    meta = pl.read_csv(tiny_raw / "mimic-cxr-2.0.0-metadata.csv.gz")
    r = meta.row(0, named=True)
    s = str(r["subject_id"])
    assert (tiny_raw / "files" / f"p{s[:2]}" / f"p{s}" / f"s{r['study_id']}" / f"{r['dicom_id']}.jpg").exists()


def test_cohort_counts_splits_and_no_leakage(tiny_raw):
    co, rep = build_cohort(tiny_raw)
    co, rep = C.finalize(C.assign_splits(co, seed=1), rep)
    C.validate(co)
    assert rep["counts"]["samples"] == co.height > 50
    assert sum(rep["counts"]["by_split"].values()) == co.height
    assert rep["exclusions"]["icu_stay_shorter_than_window"] > 0
    assert rep["exclusions"]["not_first_icu_stay_of_admission"] > 0
    # each patient in one split
    assert co.group_by("patient_id").agg(pl.col("split").n_unique()).get_column("split").max() == 1
    # notes after the prediction time carry the outcome: they must never be read
    notes = " ".join(co["notes"].drop_nulls().to_list())
    assert "expired" not in notes and "cleared for transfer" not in notes
    # missing modalities happen naturally and are counted
    avail = rep["counts"]["modality_available"]
    assert 0 < avail["cxr"] < co.height and 0 < avail["notes"] < co.height
    assert rep["missing"]["cxr"]["no_frontal_study_before_prediction_time"] == co.height - avail["cxr"]


def test_cxr_is_the_last_frontal_study_before_prediction_time(tiny_raw):
    co, _ = build_cohort(tiny_raw)
    meta = pl.read_csv(tiny_raw / "mimic-cxr-2.0.0-metadata.csv.gz", infer_schema_length=0)
    when = {r["dicom_id"]: (r["ViewPosition"], r["StudyDate"], r["StudyTime"]) for r in meta.iter_rows(named=True)}
    for row in co.filter(pl.col("cxr").is_not_null()).iter_rows(named=True):
        dicom = row["cxr"][0].rsplit("/", 1)[-1][:-4]
        view, d, t = when[dicom]
        assert view in ("AP", "PA")
        stamp = f"{d[:4]}-{d[4:6]}-{d[6:]} {t.split('.')[0].zfill(6)[:2]}:{t.split('.')[0].zfill(6)[2:4]}"
        assert stamp < row["pred_time"][:16]


@pytest.mark.skipif(not MIMIC_DEMO.exists(), reason="real MIMIC-IV demo not available")
def test_real_mimic_iv_demo_builds_an_ehr_only_cohort():
    co, rep = build_cohort(MIMIC_DEMO)
    co, rep = C.finalize(C.assign_splits(co), rep)
    assert co.height == rep["counts"]["samples"] > 30
    assert co["ehr"].is_not_null().all()
    assert co["notes"].is_null().all() and co["cxr"].is_null().all()
    assert rep["missing"]["notes"] == {"note_source_absent": co.height}
    assert "heart rate mean:" in co["ehr"][0]


def _good():
    return pl.DataFrame({"sample_id": ["a", "b", "c"], "patient_id": ["1", "2", "3"],
                         "split": ["train", "val", "test"], "y_ihm": [0, 1, None], "ehr": ["x: 1", None, "x: 2"]})


@pytest.mark.parametrize("bad, msg", [
    (lambda d: d.with_columns(sample_id=pl.Series(["a", "a", "c"])), "row 1: field 'sample_id' duplicates 'a'"),
    (lambda d: d.with_columns(split=pl.Series(["train", "dev", "test"])), "row 1: field 'split' is 'dev'"),
    (lambda d: d.with_columns(y_ihm=pl.Series([0, 2, None])), "row 1 (sample b): field 'y_ihm' is 2"),
    (lambda d: d.with_columns(patient_id=pl.Series(["1", "1", "3"])), "patient 1 appears in more than one split"),
])
def test_cohort_validation_names_row_and_field(tmp_path, bad, msg):
    C.validate(_good())
    with pytest.raises(MedmixError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        C.write(bad(_good()), {"counts": {}}, tmp_path / "cohort.parquet")
    assert not (tmp_path / "cohort.parquet").exists()


def test_records_stored_after_the_prediction_time_never_enter(tiny_raw, tmp_path):
    """The generator plants notes, labs and vitals charted before the prediction time but signed or
    stored after it, each revealing the outcome; the cut is on storetime, and it is counted."""
    co, rep = build_cohort(tiny_raw)
    notes = " ".join(co["notes"].drop_nulls().to_list())
    ehr = " ".join(co["ehr"].drop_nulls().to_list())
    assert "expired" not in notes and "cleared for transfer" not in notes
    assert "lactate max: 39" not in ehr and "heart rate max: 250" not in ehr
    cuts = rep["cuts"]
    for src in ("radiology", "labevents", "chartevents"):
        assert cuts[src]["cut_on"] == "storetime (else charttime)"
        assert cuts[src]["charted_before_but_stored_after_prediction_time"] > 0, src
    # the same release without storetime (older extracts): cut on charttime, counted, and the trap gets in
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    f = raw / "note" / "radiology.csv.gz"
    pl.read_csv(f, infer_schema_length=0).drop("storetime").write_csv(raw / "note" / "radiology.csv")
    f.unlink()
    co2, rep2 = build_cohort(raw)
    assert rep2["cuts"]["radiology"]["cut_on"] == "charttime"
    assert rep2["cuts"]["radiology"]["rows_without_storetime_cut_on_charttime"] > 0
    assert "expired" in " ".join(co2["notes"].drop_nulls().to_list()) or \
        "cleared for transfer" in " ".join(co2["notes"].drop_nulls().to_list())


def test_headers_in_any_case_and_plain_csv(tiny_raw, tmp_path):
    """Releases differ in header case and compression: upper-case headers in .csv files give the same cohort."""
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    for f in list(raw.rglob("*.csv.gz")):
        df = pl.read_csv(f, infer_schema_length=0)
        df.rename({c: c.upper() for c in df.columns}).write_csv(f.with_suffix(""))
        f.unlink()
    a, _ = build_cohort(tiny_raw)
    b, _ = build_cohort(raw)
    assert a.drop("cxr").equals(b.drop("cxr"))
    assert [len(x or []) for x in a["cxr"].to_list()] == [len(x or []) for x in b["cxr"].to_list()]
    bad = raw / "hosp" / "patients.csv"
    pl.read_csv(bad, infer_schema_length=0).drop("ANCHOR_AGE").write_csv(bad)
    with pytest.raises(MedmixError, match=r"patients.csv: missing column\(s\) \['anchor_age'\]"):
        build_cohort(raw)


def test_the_availability_cut_keeps_only_records_charted_and_stored_before_the_prediction_time():
    from datetime import datetime
    from medmix.data.common import available_before
    t = lambda h: datetime(2150, 1, 1) + __import__("datetime").timedelta(hours=h)   # noqa: E731
    df = pl.DataFrame({"t": [t(1), t(1), t(1), t(50), t(-30)], "storetime": [t(2), t(49), None, t(3), t(-29)],
                       "pred_time": [t(48)] * 5, "start": [t(0)] * 5, "k": list("abcde")})
    rep: dict = {}
    kept = available_before(df, pl.col("start"), rep, "src")
    # a: charted and stored before; b: stored after (out, counted); c: no storetime, cut on charttime;
    # d: charted after the prediction time although "stored" before it (out); e: before the window (out)
    assert kept["k"].to_list() == ["a", "c"]
    assert rep["cuts"]["src"] == {"cut_on": "storetime (else charttime)",
                                  "charted_before_but_stored_after_prediction_time": 1,
                                  "rows_without_storetime_cut_on_charttime": 1}


def test_event_tables_read_in_small_chunks_give_the_same_cohort(tiny_raw, monkeypatch):
    """Each chunk is cut to its time window as it is read (memory bounded by the rows kept): with
    chunks of a few kB (hundreds of them) the cohort and every count of cohort.json are unchanged."""
    from medmix.data import common
    whole, rep_whole = build_cohort(tiny_raw)
    monkeypatch.setattr(common, "_CHUNK_BYTES", 4096)
    chunked, rep_chunked = build_cohort(tiny_raw)
    assert chunked.equals(whole)
    assert rep_chunked == rep_whole and rep_whole["cuts"]["chartevents"]["charted_before_but_stored_after_prediction_time"] > 0


def test_synth_density_adds_rows_the_loader_does_not_read(tmp_path):
    from medmix.synth import synth_mimic4
    a = synth_mimic4(tmp_path / "a", n=40, seed=5, image_size=32)
    b = synth_mimic4(tmp_path / "b", n=40, seed=5, image_size=32, density=3.0)
    assert b["chartevents"] == round(3 * a["chartevents"]) and b["labevents"] == a["labevents"]
    (ca, ra), (cb, rb) = build_cohort(tmp_path / "a"), build_cohort(tmp_path / "b")
    assert ca.drop("cxr").equals(cb.drop("cxr")) and ra == rb    # image paths differ by folder only


def test_carry_forward_fills_a_missing_note_or_cxr_from_before_the_admission_and_counts_it(tiny_raw, tmp_path):
    """`carry_forward`: a stay without a note (CXR) in its admission gets the patient's last one from
    before the admission; nothing else changes, and cohort.json counts what was carried."""
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    base, rep0 = build_cohort(tiny_raw)
    stays = pl.read_csv(raw / "hosp" / "admissions.csv.gz", infer_schema_length=0)
    no_note = base.filter(pl.col("notes").is_null())["patient_id"].to_list()[:5]
    rad_f = raw / "note" / "radiology.csv.gz"
    rad = pl.read_csv(rad_f, infer_schema_length=0)
    admit = dict(stays.select("subject_id", "admittime").iter_rows())
    from datetime import datetime, timedelta
    rows = []
    for i, sid in enumerate(no_note):
        t = datetime.fromisoformat(admit[sid]) - timedelta(days=30)
        for k, (text, dt, signed) in enumerate([(f"OLDER PRIOR {i}", 60, 1), (f"LATEST PRIOR {i}", 0, 1),
                                                (f"SIGNED TOO LATE {i}", -1, 10_000)]):
            when = t - timedelta(days=dt) if dt >= 0 else t + timedelta(days=1)
            rows.append({c: None for c in rad.columns} | {
                "note_id": f"{sid}-RR-old{k}", "subject_id": sid, "hadm_id": "1", "note_type": "RR",
                "note_seq": str(90 + k), "charttime": str(when), "storetime": str(when + timedelta(hours=signed)),
                "text": text})
    pl.concat([rad, pl.DataFrame(rows, schema={c: pl.String for c in rad.columns})]).write_csv(rad_f.with_suffix(""))
    rad_f.unlink()
    plain, _ = build_cohort(raw)
    assert plain["notes"].equals(base["notes"])                       # off by default: the old notes stay out
    carried, rep = build_cohort(raw, carry_forward=("notes", "cxr"))
    got = dict(carried.select("patient_id", "notes").iter_rows())
    for i, sid in enumerate(no_note):
        assert got[sid] == f"LATEST PRIOR {i}"                      # the last one, not all, not a late-signed one
    assert rep["carried_forward"]["notes"] == len(no_note)
    assert rep["missing"]["notes"]["no_note_before_prediction_time"] == \
        rep0["missing"]["notes"]["no_note_before_prediction_time"] - len(no_note)
    same = carried.filter(~pl.col("patient_id").is_in(no_note))
    assert same["notes"].equals(base.filter(~pl.col("patient_id").is_in(no_note))["notes"])
    # a CXR study from before the admission, for a stay without one in its window
    meta_f = raw / "mimic-cxr-2.0.0-metadata.csv.gz"
    meta = pl.read_csv(meta_f, infer_schema_length=0)
    sid = base.filter(pl.col("cxr").is_null())["patient_id"].to_list()[0]
    t = datetime.fromisoformat(admit[sid]) - timedelta(days=3)
    src = next(raw.joinpath("files").rglob("*.jpg"))
    dest = raw / "files" / f"p{sid[:2]}" / f"p{sid}" / "s99" / "olddicom.jpg"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dest)
    row = {c: None for c in meta.columns} | {"dicom_id": "olddicom", "subject_id": sid, "study_id": "99",
                                            "ViewPosition": "PA", "StudyDate": t.strftime("%Y%m%d"),
                                            "StudyTime": t.strftime("%H%M%S")}
    pl.concat([meta, pl.DataFrame([row], schema={c: pl.String for c in meta.columns})]).write_csv(meta_f.with_suffix(""))
    meta_f.unlink()
    carried, rep = build_cohort(raw, carry_forward=("cxr",))
    assert rep["carried_forward"] == {"cxr": 1}
    assert dict(carried.select("patient_id", "cxr").iter_rows())[sid] == [str(dest.resolve())]
    assert build_cohort(raw)[0].filter(pl.col("patient_id") == sid)["cxr"].to_list() == [None]
