import shutil

import numpy as np
import polars as pl
import pytest

from medmix import config
from medmix.bundle import load, predict
from medmix.cli import main
from medmix.train import train_run

from conftest import TINY_CONFIG


@pytest.mark.parametrize("method", ["medmix", "logreg_concat"])
def test_bundle_predicts_the_same_without_any_teacher_file(tiny_results, tmp_path, method):
    cfg = config.validate(TINY_CONFIG)
    train_run(config.train_job(cfg, "tiny", method), 0, tmp_path / "run", results=tiny_results, progress=False)
    assert main(["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "bundle"),
                 "--results", str(tiny_results)]) == 0
    emb = tmp_path / "emb"
    shutil.copytree(tiny_results / "tiny" / "embeddings", emb)
    before = predict(tmp_path / "bundle", emb)
    teachers = {(m, s) for m, spec in cfg["datasets"]["tiny"]["modalities"].items() for s in spec["teachers"]}
    experts = {(m, s) for m, spec in cfg["datasets"]["tiny"]["modalities"].items() for s in spec["experts"]}
    for m, s in teachers - experts:
        (emb / m / f"{s}.h5").unlink()
    after = predict(tmp_path / "bundle", emb, tmp_path / "pred.parquet")
    assert before.equals(after)
    run = pl.read_parquet(tmp_path / "run" / "predictions.parquet")
    np.testing.assert_allclose(after["prob"].to_numpy(), run["prob"].to_numpy(), rtol=1e-5, atol=1e-6)
    meta, tensors = load(tmp_path / "bundle")
    assert not any("teacher" in k or "align" in k for k in tensors)
    assert 0 < meta["threshold"] < 1 and meta["label"] == "y_ihm"
    assert pl.read_parquet(tmp_path / "pred.parquet").height == run.height


@pytest.mark.parametrize("method", ["medmix", "early_concat", "logreg_concat", "medmix_single_expert"])
def test_test_time_modality_drop(tiny_results, tmp_path, method):
    import json
    from medmix.experiments.robustness import evaluate_run
    from medmix.inputs import Caches
    cfg = config.validate(TINY_CONFIG)
    m = train_run(config.train_job(cfg, "tiny", method), 0, tmp_path / "run", results=tiny_results, progress=False)
    res = evaluate_run(tmp_path / "run", tiny_results / "tiny" / "cohort.parquet", Caches.under(tiny_results, "tiny"),
                       [0.0, 0.5])
    assert res["rates"]["0.0"]["auroc"] == pytest.approx(m["test"]["auroc"]["value"], abs=1e-6)
    assert res["rates"]["0.0"]["dropped"] == 0 and res["rates"]["0.5"]["dropped"] > 0
    files = sorted(str(p) for p in (tiny_results / "tiny" / "embeddings").rglob("*.h5") if "shards" not in p.parts)
    assert main(["robustness", "--dataset", "tiny", "--runs", str(tmp_path / "run"), "--rates", "0.0", "0.5",
                 "--cohort", str(tiny_results / "tiny" / "cohort.parquet"), "--embeddings", *files,
                 "--out", str(tmp_path / "drop.json")]) == 0
    drop = json.loads((tmp_path / "drop.json").read_text())["test_drop"][method]["0.5"]
    assert drop["auroc"]["mean"] == pytest.approx(res["rates"]["0.5"]["auroc"], abs=1e-12)


def test_threshold_maximises_f1():
    from medmix.metrics import f1_threshold as _threshold
    y = np.array([0, 0, 1, 1, 0, 1, np.nan])
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.8, 0.9])
    best = max(np.unique(p[:6]), key=lambda t: 2 * ((p[:6] >= t) & (y[:6] == 1)).sum() / ((p[:6] >= t).sum() + 3))
    assert _threshold(y, p) == best == 0.35


@pytest.mark.parametrize("method", ["medmix", "logreg_concat"])
def test_predict_from_raw_inputs_runs_only_the_experts(tiny_results, tmp_path, method):
    """`predict --cohort`: the bundle's experts run on the raw inputs (the fitted EHR encoder
    applies its stored fit) and give the run's own predictions; no teacher is built."""
    cfg = config.validate(TINY_CONFIG)
    train_run(config.train_job(cfg, "tiny", method), 0, tmp_path / "run", results=tiny_results, progress=False)
    assert main(["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "bundle"),
                 "--results", str(tiny_results)]) == 0
    from medmix.bundle import predict_raw
    cohort = tiny_results / "tiny" / "cohort.parquet"
    got = predict_raw(tmp_path / "bundle", cohort, tmp_path / "pred.parquet", device="cpu", work=tmp_path / "work")
    run = pl.read_parquet(tmp_path / "run" / "predictions.parquet")
    np.testing.assert_allclose(got["prob"].to_numpy(), run["prob"].to_numpy(), rtol=1e-4, atol=1e-5)
    built = {(p.parent.name, p.stem) for p in (tmp_path / "work").rglob("*.h5")}
    meta, _ = load(tmp_path / "bundle")
    assert built == {(m, e["encoder"]) for m, es in meta["experts"].items() for e in es}
    teachers = {s for spec in cfg["datasets"]["tiny"]["modalities"].values() for s in spec["teachers"]}
    assert not {s for _, s in built} & teachers
    assert main(["predict", "--bundle", str(tmp_path / "bundle"), "--cohort", str(cohort),
                 "--out", str(tmp_path / "p2.parquet"), "--device", "cpu"]) == 0
    assert pl.read_parquet(tmp_path / "p2.parquet").equals(got)
