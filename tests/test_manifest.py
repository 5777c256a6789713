"""Generic manifest loader and the ccRCC adapter on synthetic fixtures."""

import json

import numpy as np
import polars as pl
import pytest

from medmix.data import cohort as C
from medmix.data.ccrcc import DAYS_PER_MONTH, INPUTS, TASKS, synth, write_manifest
from medmix.data.manifest import build_cohort
from medmix.io import MedmixError

TASKS_ALL = {"dx": {"type": "binary", "columns": ["dx"]},
             "findings": {"type": "multilabel", "columns": ["edema", "effusion"]},
             "grade": {"type": "multiclass", "columns": ["grade"], "classes": ["low", "mid", "high"]},
             "os": {"type": "survival", "columns": ["t", "e"]}}
INPUTS_ALL = {"note": "text", "vars": "json", "img": "image", "feat": "features"}


def _manifest(tmp_path, rows=None):
    np.save(tmp_path / "f1.npy", np.ones((4, 8), np.float32))
    (tmp_path / "a.png").write_bytes(b"png")
    head = "sample_id,patient_id,split,dx,edema,effusion,grade,t,e,note,vars,img,feat"
    rows = rows or [
        's1,p1,train,1,1,0,high,3.5,1,chest pain,"{""hr"": 90, ""sbp"": 120.5}",a.png,f1.npy',
        's2,p1,train,0,0,1,low,10,0,old films,"{}",,',
        's9,p8,val,0,0,0,mid,1,0,,,,',
        's3,p2,test,,0,0,1,,,cough,,a.png,f1.npy',
    ]
    p = tmp_path / "manifest.csv"
    p.write_text("\n".join([head, *rows]) + "\n")
    return p


def test_manifest_every_task_type_and_input_type(tmp_path):
    co, rep = build_cohort(_manifest(tmp_path), tasks=TASKS_ALL, inputs=INPUTS_ALL)
    co, rep = C.finalize(co, rep)
    C.write(co, rep, tmp_path / "out" / "cohort.parquet")
    saved = json.loads((tmp_path / "out" / "cohort.json").read_text())["tasks"]
    assert saved["findings"] == {"type": "multilabel", "columns": ["y_findings__edema", "y_findings__effusion"]}
    assert saved["os"]["columns"] == ["y_os_time", "y_os_event"] and saved["grade"]["classes"] == ["low", "mid", "high"]
    r = {x["sample_id"]: x for x in co.iter_rows(named=True)}
    assert r["s1"]["vars"] == "hr: 90; sbp: 120.5" and r["s2"]["vars"] is None   # {} = no variables = missing
    assert r["s1"]["img"] == [str((tmp_path / "a.png").resolve())] and r["s2"]["img"] is None
    assert r["s1"]["feat"].endswith("f1.npy") and r["s2"]["feat"] is None
    assert "s9" not in r and rep["exclusions"]["no_modality_available"] == 1
    assert (r["s1"]["y_grade"], r["s3"]["y_grade"]) == (2, 1) and r["s3"]["y_dx"] is None
    assert (r["s1"]["y_os_time"], r["s1"]["y_os_event"]) == (3.5, 1)
    assert rep["counts"]["positives"]["y_grade"]["train"] == [1, 0, 1]
    assert rep["missing"]["img"] == {"empty_cell": 2} and rep["inputs"] == INPUTS_ALL


@pytest.mark.parametrize("row, msg", [
    ('s1,p9,train,1,1,0,high,3,1,x,,,', r"row 3 \(line 4\): field 'sample_id' duplicates 's1' \(first at row 1 \(line 2\)\)"),
    ('s4,p3,train,2,1,0,high,3,1,x,,,', r"row 3 \(line 4\): field 'dx' is '2', expected 0 or 1"),
    ('s4,p3,train,1,1,0,huge,3,1,x,,,', r"row 3 \(line 4\): field 'grade' is 'huge'"),
    ('s4,p3,train,1,1,0,high,-1,1,x,,,', r"row 3 \(line 4\): field 't' is '-1', expected a time ≥ 0"),
    ('s4,p3,train,1,1,0,high,3,,x,,,', r"row 3 \(line 4\): fields 't' and 'e'"),
    ('s4,p3,train,1,1,0,high,3,1,x,"[1,2]",,', r"row 3 \(line 4\): field 'vars' is JSON list"),
    ('s4,p3,train,1,1,0,high,3,1,x,{bad,,', r"row 3 \(line 4\): field 'vars' is not valid JSON"),
    ('s4,p3,train,1,1,0,high,3,1,x,,gone.png,', r"row 3 \(line 4\): field 'img': file .*gone.png does not exist"),
    ('s4,p3,train,1,1,0,high,3,1,x,,,a.png', r"row 3 \(line 4\): field 'feat': a.png is not a feature file"),
    ('s4,p3,dev,1,1,0,high,3,1,x,,,', r"row 3 \(line 4\): field 'split' is 'dev'"),
    ('s4,p1,val,1,1,0,high,3,1,x,,,', r"rows \[1, 2, 3\]: field 'split': patient p1 is in splits \['train', 'val'\]"),
    (',p3,val,1,1,0,high,3,1,x,,,', r"row 3 \(line 4\): field 'sample_id' is empty"),
])
def test_manifest_errors_name_file_row_and_field(tmp_path, row, msg):
    good = _manifest(tmp_path).read_text().splitlines()
    p = _manifest(tmp_path, good[1:3] + [row.replace(",x,", ",x,", 1)])
    with pytest.raises(MedmixError, match="manifest.csv: " + msg):
        build_cohort(p, tasks=TASKS_ALL, inputs=INPUTS_ALL)


def test_manifest_without_split_column_is_split_by_patient(tmp_path):
    rows = [f"s{i},p{i // 3},{i % 2},text {i}" for i in range(30)]
    p = tmp_path / "m.csv"
    p.write_text("sample_id,patient_id,y,note\n" + "\n".join(rows) + "\n")
    co, rep = build_cohort(p, tasks={"y": {"type": "binary", "columns": ["y"]}})
    assert rep["inputs"] == {"note": "text"} and set(co["split"]) == {"train", "val", "test"}
    assert co.group_by("patient_id").agg(pl.col("split").n_unique())["split"].max() == 1
    with pytest.raises(MedmixError, match="no task declared"):
        build_cohort(p, tasks={})


def test_manifest_subgroup_columns_are_carried_never_inputs(tmp_path):
    rows = [f"s{i},p{i // 3},{i % 2},text {i},{'F' if i % 3 else 'M'}" for i in range(30)]
    p = tmp_path / "m.csv"
    p.write_text("sample_id,patient_id,y,note,group_sex\n" + "\n".join(rows) + "\n")
    co, rep = build_cohort(p, tasks={"y": {"type": "binary", "columns": ["y"]}})
    assert rep["inputs"] == {"note": "text"} and co["group_sex"].to_list()[:3] == ["M", "F", "F"]
    assert C.modalities_of(co) == ["note"]


@pytest.fixture(scope="module")
def ccrcc_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ccrcc")
    synth(root, n=30, seed=2)
    return root


def test_ccrcc_adapter_survival_labels_and_no_outcome_in_inputs(ccrcc_root, tmp_path):
    man, adapter = write_manifest(ccrcc_root, tmp_path / "manifest.csv")
    co, rep = C.finalize(*build_cohort(man, tasks=TASKS, inputs=INPUTS))
    C.write(co, rep, tmp_path / "cohort.parquet")
    assert co.height == 30 and rep["tasks"]["os"]["columns"] == ["y_os_time", "y_os_event"]
    # planted outcome columns never reach an input
    assert set(adapter["clinical_columns_removed_as_outcome"]) >= {"vital_status", "days_to_death",
                                                                  "days_to_last_follow_up", "cause_of_death"}
    clinical = " ".join(co["clinical"].to_list())
    assert "Cancer Related" not in clinical and "Dead" not in clinical and "vital" not in clinical
    # labels against the raw clinical table, computed here
    raw = {r["case_id"]: r for r in pl.read_csv(ccrcc_root / "clinical.csv", infer_schema_length=0).iter_rows(named=True)}
    for r in co.iter_rows(named=True):
        c = raw[r["sample_id"]]
        dead = c["vital_status"] == "Dead"
        months = float(c["days_to_death"] if dead else c["days_to_last_follow_up"]) / DAYS_PER_MONTH
        assert r["y_os_event"] == int(dead) and abs(r["y_os_time"] - months) < 1e-3
        want = 1 if dead and months <= 12 else (0 if months >= 12 else None)
        assert r["y_os12"] == want
    # modality availability follows the files (every 5th no genomics, 3rd no CT, 4th no MRI, 6th no WSI)
    avail = rep["counts"]["modality_available"]
    assert avail == {"clinical": 30, "genomics": 24, "ct": 20, "mri": 22, "wsi": 25}
    mri = co["mri"].drop_nulls()[0]
    assert mri.endswith("series1")                         # a DICOM series directory
    assert co["ct"].drop_nulls()[0].endswith("ct.nii") and co["wsi"].drop_nulls()[0].endswith(".npy")


def test_ccrcc_errors_and_optional_tables(tmp_path):
    root = tmp_path / "r"
    synth(root, n=8, seed=0)
    clin = root / "clinical.csv"
    lines = clin.read_text().splitlines()
    clin.write_text("\n".join(lines + [lines[2]]) + "\n")
    with pytest.raises(MedmixError, match=r"clinical.csv: row 9 \(line 10\): field 'case_id' duplicates"):
        write_manifest(root, tmp_path / "m.csv")
    clin.write_text("\n".join(lines[:1] + [lines[1].replace("Alive", "Unknown").replace("Dead", "Unknown")] + lines[2:]) + "\n")
    with pytest.raises(MedmixError, match=r"clinical.csv: row 1 \(line 2\): field 'vital_status' is 'Unknown'"):
        write_manifest(root, tmp_path / "m.csv")
    clin.write_text("\n".join(lines) + "\n")
    (root / "genomics.csv").unlink()
    _, adapter = write_manifest(root, tmp_path / "m.csv")          # genomics is optional by default
    assert adapter["counts"]["genomics_available"] == 0 and adapter["warnings"]
    with pytest.raises(MedmixError, match=r"genomics.csv: ccRCC genomics table not found"):
        write_manifest(root, tmp_path / "m.csv", optional_tables=[])
    clin.unlink()
    with pytest.raises(MedmixError, match=r"clinical.csv: ccRCC clinical table not found"):
        write_manifest(root, tmp_path / "m.csv", optional_tables=["clinical"])
