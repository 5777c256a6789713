"""Per-kind dataset keys, modality names and task names in the config schema."""

import polars as pl
import pytest

from medmix import config
from medmix.data import cohort as C
from medmix.io import MedmixError

ENC = {"t": {"kind": "hf_text", "model": "x"}}


def _cfg(ds):
    return {"datasets": {"d": ds}, "encoders": ENC, "targets": []}


@pytest.mark.parametrize("ds, msg", [
    ({"kind": "openi", "root": "x", "note_root": "y", "modalities": {"findings": {"experts": ["t"]}}},
     r"datasets/d.*note_root"),
    ({"kind": "openi", "root": "x", "modalities": {"ehr": {"experts": ["t"]}}}, r"datasets/d/modalities.*ehr"),
    ({"kind": "mimic4", "root": "x", "top_k": 3, "modalities": {"ehr": {"experts": ["t"]}}}, r"top_k"),
    ({"kind": "openi", "root": "x", "task": "ihm", "modalities": {"findings": {"experts": ["t"]}}},
     r"datasets/d/task': 'ihm' is not a task of kind openi \(known: normal, problems\)"),
    ({"kind": "manifest", "root": "x", "modalities": {"note": {"experts": ["t"]}}}, r"declares at least one task"),
    ({"kind": "mimic3", "root": "x", "modalities": {"ehr": {"experts": ["t"]}}}, r"datasets/d/source': unknown dataset 'mimic'"),
])
def test_dataset_keys_modalities_and_tasks_are_checked_per_kind(ds, msg):
    with pytest.raises(MedmixError, match=msg):
        config.validate(_cfg(ds))


def test_kind_defaults_and_manifest_tasks():
    cfg = config.validate(_cfg({"kind": "openi", "root": "x", "modalities": {"findings": {"experts": ["t"]}}}))
    ds = cfg["datasets"]["d"]
    assert ds["task"] == "normal" and ds["optional_tables"] == ["images"] and ds["top_k"] == 14
    assert "prediction_hours" not in ds and "note_root" not in ds
    cfg = config.validate(_cfg({"kind": "manifest", "root": "x", "tasks": {"grade": {"type": "multiclass",
                          "columns": ["g"], "classes": ["a", "b"]}}, "modalities": {"note": {"experts": ["t"]}}}))
    assert cfg["datasets"]["d"]["task"] == "grade"
    assert config.prepare_job(cfg, "d")["tasks"]["grade"]["classes"] == ["a", "b"]


def test_train_time_task_is_checked_against_the_cohort(tmp_path):
    co = pl.DataFrame({"sample_id": ["a", "b"], "patient_id": ["1", "2"], "split": ["train", "test"],
                       "y_os_time": [1.0, 2.0], "y_os_event": [1, 0], "x": ["u", "v"]})
    rep = {"counts": {}, "tasks": {"os": {"type": "survival", "columns": ["y_os_time", "y_os_event"]}}}
    C.write(co, rep, tmp_path / "cohort.parquet")
    from medmix.tasks import Task
    assert Task.of_cohort(tmp_path / "cohort.parquet", "os").kind == "survival"
    with pytest.raises(MedmixError, match=r"cohort.parquet: the cohort has no task 'ihm' \(its tasks: os;"):
        Task.of_cohort(tmp_path / "cohort.parquet", "ihm")
