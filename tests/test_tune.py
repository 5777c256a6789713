"""The tune stage: a seeded search on validation, the same budget for every method, never reading test labels."""

import json
import shutil

import polars as pl
import pytest

from conftest import TINY_CONFIG
from medmix import config
from medmix.inputs import Caches
from medmix.tune import method_space, tune
from medmix.methods import method_spec


def _tuning(trials=3):
    return config.validate({**TINY_CONFIG, "tuning": {"trials": trials}})["tuning"]


def test_each_method_searches_the_groups_that_apply_to_it():
    spaces = _tuning()["spaces"]
    assert set(method_space(method_spec("logreg_concat"), spaces)) == {"C"}
    assert set(method_space(method_spec("early_concat"), spaces)) == {"hidden", "dropout", "lr", "weight_decay"}
    assert {"modality_dropout", "lambda_kd", "tau"} <= set(method_space(method_spec("medmix"), spaces))
    assert "lambda_kd" not in method_space(method_spec("medmix_noteacher"), spaces)
    # an ablation variant's fixed settings are not searched: the variant stays what it says
    assert "teacher_schedule" in method_space(method_spec("medmix"), spaces)
    assert "teacher_schedule" not in method_space(method_spec("medmix_joint"), spaces)
    job = config.train_job(config.validate(TINY_CONFIG), "tiny", "medmix_two_stage")
    assert job["train"]["teacher_schedule"] == "two_stage" and job["train"]["kd_weight"] == "none"
    with pytest.raises(config.MedmixError, match="tuning/spaces/neural/widht"):
        config.validate({**TINY_CONFIG, "tuning": {"spaces": {"neural": {"widht": {"low": 1, "high": 2}}}}})


@pytest.mark.parametrize("method", ["medmix", "logreg_concat"])
def test_tuning_is_seeded_and_blind_to_the_test_labels(method, tiny_results, tmp_path):
    cfg = config.validate(TINY_CONFIG)
    job = config.train_job(cfg, "tiny", method)
    caches = Caches.under(tiny_results, "tiny")
    cohort = tiny_results / "tiny" / "cohort.parquet"
    a = tune(job, cohort, caches, _tuning(), tmp_path / "a.json", progress=False)
    assert a["budget"]["trials"] == 3 and len(a["trials"]) == 3
    assert [t["number"] for t in a["trials"]] == [0, 1, 2] and [t["source"] for t in a["trials"]] == ["defaults", "tpe", "tpe"]
    assert all(set(t["params"]) == set(a["space"]) for t in a["trials"][1:])
    assert a["best"]["value"] == max(t["value"] for t in a["trials"])
    assert a["best"]["params"] == a["trials"][a["best"]["trial"]]["params"]
    assert json.loads((tmp_path / "a.json").read_text())["best"] == a["best"]
    # the test split's labels turned upside down: the same search, trial by trial
    garbage = tmp_path / "g"
    garbage.mkdir()
    co = pl.read_parquet(cohort)
    co = co.with_columns(pl.when(pl.col("split") == "test").then(1 - pl.col("y_ihm")).otherwise(pl.col("y_ihm"))
                         .cast(pl.Int8).alias("y_ihm"))
    co.write_parquet(garbage / "cohort.parquet")
    shutil.copy(cohort.with_suffix(".json"), garbage / "cohort.json")
    b = tune(job, garbage / "cohort.parquet", caches, _tuning(), tmp_path / "b.json", progress=False)
    assert [t["params"] for t in b["trials"]] == [t["params"] for t in a["trials"]]
    assert [t["value"] for t in b["trials"]] == [t["value"] for t in a["trials"]]


def test_a_train_job_reads_its_tuned_parameters(tiny_results, tmp_path):
    from medmix.run import Run
    from medmix.train import train_run
    cfg = config.validate(TINY_CONFIG)
    job = config.train_job(cfg, "tiny", "early_concat")
    m = train_run(job, 0, tmp_path / "run", results=tiny_results, progress=False,
                  tuned={"hidden": 64, "dropout": 0.1, "lr": 0.002, "weight_decay": 0.001})
    assert m["tuned"]["lr"] == 0.002
    r = Run.load(tmp_path / "run")
    assert r.job.train.lr == 0.002 and r.fusion.dropout == 0.1
    lr = train_run(config.train_job(cfg, "tiny", "logreg_concat"), 0, tmp_path / "lr", results=tiny_results,
                   progress=False, tuned={"C": 0.05})
    assert lr["C"] == 0.05
    with pytest.raises(config.MedmixError, match="not train settings"):
        train_run(job, 0, tmp_path / "x", results=tiny_results, progress=False, tuned={"gates": 3})


def test_temperature_scaling_is_fitted_on_validation_and_deployed(tiny_results, tmp_path):
    """`train.calibrate: temperature`: one T fitted by NLL on validation; ranks (AUROC) unchanged, the
    validation NLL no worse than at T = 1, and the run and its bundle predict with it."""
    import numpy as np
    from medmix.bundle import export, predict
    from medmix.train import train_run
    cfg = config.validate(TINY_CONFIG)
    job = config.train_job(cfg, "tiny", "early_concat")
    plain = train_run(job, 0, tmp_path / "a", results=tiny_results, progress=False)
    job["train"]["calibrate"] = "temperature"
    cal = train_run(job, 0, tmp_path / "b", results=tiny_results, progress=False)
    assert cal["temperature"] > 0 and cal["temperature"] != 1.0
    assert cal["test"]["auroc"]["value"] == pytest.approx(plain["test"]["auroc"]["value"], abs=1e-12)
    pa = pl.read_parquet(tmp_path / "a" / "predictions.parquet").filter(pl.col("split") == "val")
    pb = pl.read_parquet(tmp_path / "b" / "predictions.parquet").filter(pl.col("split") == "val")

    def nll(df):
        y, p = df["y"].to_numpy().astype(float), np.clip(df["prob"].to_numpy(), 1e-12, 1 - 1e-12)
        ok = ~np.isnan(y)
        return -np.mean(y[ok] * np.log(p[ok]) + (1 - y[ok]) * np.log(1 - p[ok]))
    assert nll(pb) <= nll(pa) + 1e-9
    export(tmp_path / "b", tmp_path / "bundle", results=tiny_results)
    shutil.copytree(tiny_results / "tiny" / "embeddings", tmp_path / "emb")
    out = predict(tmp_path / "bundle", tmp_path / "emb")
    full = pl.read_parquet(tmp_path / "b" / "predictions.parquet")
    np.testing.assert_allclose(out["prob"].to_numpy(), full["prob"].to_numpy(), rtol=1e-5, atol=1e-6)


def test_search_spaces_are_checked_against_the_train_settings():
    bad = [({"neural": {"hidden": {"low": 8, "high": 64}}}, "integer setting"),
           ({"neural": {"lr": {"low": 0.0, "high": 0.1, "log": True}}}, "log range needs low > 0"),
           ({"neural": {"C": {"low": 0.1, "high": 1}}}, "not a train setting of this group"),
           ({"neural": {"align": {"low": 0, "high": 1}}}, "takes choices")]
    for spaces, msg in bad:
        with pytest.raises(config.MedmixError, match=msg):
            config.validate({**TINY_CONFIG, "tuning": {"spaces": spaces}})


@pytest.mark.parametrize("method", ["medmix", "logreg_concat"])
def test_trial_zero_is_the_untuned_run(method, tiny_results, tmp_path):
    """Trial 0 trains with the shared defaults: its score on each seed is the validation metric of the
    untuned train job of that seed, so the best trial is never worse than not tuning on those seeds."""
    from medmix.train import train_seeds
    cfg = config.validate(TINY_CONFIG)
    job = config.train_job(cfg, "tiny", method)
    caches = Caches.under(tiny_results, "tiny")
    tuning = {**_tuning(2), "seeds": [0, 1]}
    rec = tune(job, tiny_results / "tiny" / "cohort.parquet", caches, tuning, tmp_path / "t.json", progress=False)
    t0 = rec["trials"][0]
    assert t0["source"] == "defaults"
    assert t0["params"] == ({} if method == "logreg_concat" else {k: job["train"][k] for k in rec["space"]})
    runs = train_seeds(job, [0, 1], tmp_path / "runs", results=tiny_results, progress=False)
    assert t0["per_seed"] == [r["val"]["auroc"]["value"] for r in runs]
    assert rec["best"]["value"] >= t0["value"]
