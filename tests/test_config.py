import pytest

from medmix import config
from medmix.io import MedmixError


def test_repo_config_is_valid_and_defaults_are_filled():
    cfg = config.load(config.SCHEMA_PATH.parents[2] / "config.yaml")
    assert cfg["datasets"]["demo"]["prediction_hours"] == 48
    assert cfg["datasets"]["demo"]["split"] == {"train": 0.7, "val": 0.15, "seed": 0}
    assert cfg["encoders"]["ehr_tabular"]["dtype"] == "float32"


def test_every_schema_key_has_description_and_default():
    def walk(node, path):
        for key, sub in node.get("properties", {}).items():
            assert "description" in sub or "$ref" in sub, f"{path}/{key} lacks a description"
            assert "default" in sub, f"{path}/{key} lacks a default"
            walk(sub, f"{path}/{key}")
    s = config.schema()
    walk(s, "")
    for name, d in s["$defs"].items():
        walk(d, f"$defs/{name}")


@pytest.mark.parametrize("mutate, where, what", [
    (lambda c: c.update(tarets=["tiny"]), "<top level>", "tarets"),
    (lambda c: c["train"].update(lr="fast"), "train/lr", "not of type"),
    (lambda c: c["datasets"]["tiny"].update(predicton_hours=24), "datasets/tiny", "predicton_hours"),
    (lambda c: c["encoders"]["tab"].update(kind="magic"), "encoders/tab/kind", "magic"),
    (lambda c: c["datasets"]["tiny"]["modalities"]["ehr"]["experts"].append("nope"),
     "datasets/tiny/modalities/ehr/experts", "unknown encoder 'nope'"),
    (lambda c: c["methods"].append("medmax"), "methods/5", "unknown method 'medmax'"),
    (lambda c: c["datasets"]["tiny"].update(train={"lambda_kd": -1}), "datasets/tiny/train/lambda_kd", "minimum"),
    (lambda c: c["datasets"]["tiny"].update(train={"lambda_kdd": 0.0}), "datasets/tiny/train", "lambda_kdd"),
])
def test_config_errors_name_the_key_path(tiny_config, mutate, where, what):
    mutate(tiny_config)
    with pytest.raises(MedmixError) as e:
        config.validate(tiny_config)
    assert where in str(e.value) and what in str(e.value)


def test_train_spec_changes_with_hyperparameters_but_embed_spec_does_not(tiny_config):
    a = config.validate(tiny_config)
    tiny_config["train"]["lr"] = 0.01
    b = config.validate(tiny_config)
    assert config.train_job(a, "tiny", "medmix") != config.train_job(b, "tiny", "medmix")
    assert config.embed_job(a, "tiny", "notes", "bert_head") == config.embed_job(b, "tiny", "notes", "bert_head")


def test_a_datasets_train_settings_override_the_shared_block_and_a_variant_fixes_its_own(tiny_config):
    tiny_config["datasets"]["tiny"]["train"] = {"lambda_kd": 0.0, "teacher_schedule": "two_stage"}
    cfg = config.validate(tiny_config)
    job = config.train_job(cfg, "tiny", "medmix")["train"]
    assert job["lambda_kd"] == 0.0 and job["teacher_schedule"] == "two_stage" and job["lr"] == cfg["train"]["lr"]
    assert config.train_job(cfg, "tiny", "medmix_joint")["train"]["teacher_schedule"] == "joint"
    # a method without a teacher branch does not depend on the teacher settings (no rerun)
    assert config.train_job(cfg, "tiny", "early_concat") == config.train_job(config.validate(tiny_config | {
        "datasets": {**tiny_config["datasets"], "tiny": {**tiny_config["datasets"]["tiny"], "train": {}}}}),
        "tiny", "early_concat")
    plain = config.validate({**tiny_config, "datasets": {**tiny_config["datasets"], "tiny": {
        k: v for k, v in tiny_config["datasets"]["tiny"].items() if k != "train"}}})
    assert config.prepare_job(cfg, "tiny") == config.prepare_job(plain, "tiny")   # no new cohort


def test_real_datasets_are_not_synthesised():
    cfg = config.load(config.SCHEMA_PATH.parents[2] / "config.yaml")
    assert cfg["datasets"]["demo"]["synth"]["n"] > 0
    assert cfg["datasets"]["mimiciv_demo"]["synth"] is None and cfg["datasets"]["mimic"]["synth"] is None


def test_default_dataset_is_complete():
    ds = config.default_dataset()
    assert ds["prediction_hours"] == 48 and ds["split"]["train"] == 0.7 and ds["synth"] is None
