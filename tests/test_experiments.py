"""Robustness sweeps, efficiency and figures on the tiny dataset (medmix.masks, medmix.experiments)."""

import json

import numpy as np
import polars as pl
import pytest

from medmix import config
from medmix.experiments.robustness import evaluate_run as _evaluate_run, summarize
from medmix.inputs import Caches
from medmix.masks import MULTI, cohort_availability, drop_slug, parse_drop, train_keep
from medmix.train import train_run

from conftest import TINY_CONFIG

MODS = ["cxr", "ehr", "notes"]


def _spec(method, drop=None):
    cfg = config.validate(TINY_CONFIG)
    spec = config.train_job(cfg, "tiny", method)
    if drop:
        spec["drop"] = {**parse_drop(drop), "seed": 0}
    return spec


@pytest.fixture(scope="module")
def runs(tiny_results, tmp_path_factory):
    """Main runs of three methods and a train-time drop run, seed 0."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for method in ("medmix", "early_concat", "teacher_deployed"):
        train_run(_spec(method), 0, root / method, results=tiny_results, progress=False)
        out[method] = root / method
    for method, drop in (("medmix", "notes:1.0"), ("early_concat", "notes:1.0"), ("medmix", "multi:0.5")):
        d = root / method / drop_slug(parse_drop(drop))
        train_run(_spec(method, drop), 0, d, results=tiny_results, progress=False)
        out[(method, drop)] = d
    return out


def evaluate_run(run, results, rates, mask_seed=0):
    return _evaluate_run(run, results / "tiny" / "cohort.parquet", Caches.under(results, "tiny"), rates, mask_seed)


def test_train_keep_masks_are_seeded_train_only_and_keep_one():
    rng = np.random.default_rng(0)
    avail = rng.random((400, 3)) < 0.7
    avail[~avail.any(1), 0] = True
    is_train = rng.random(400) < 0.6
    one = train_keep({"modality": "notes", "rate": 1.0}, avail, MODS, is_train, seed=3)
    others = avail[:, :2].any(1)
    assert not one[is_train & others, 2].any() and one[is_train & ~others, 2].all()  # a sole input is kept
    assert one[~is_train].all() and one[:, :2].all()
    multi = train_keep({"modality": MULTI, "rate": 0.5}, avail, MODS, is_train, seed=3)
    assert np.array_equal(multi, train_keep({"modality": MULTI, "rate": 0.5}, avail, MODS, is_train, seed=3))
    assert not np.array_equal(multi, train_keep({"modality": MULTI, "rate": 0.5}, avail, MODS, is_train, seed=4))
    left = avail & multi
    assert (left.any(1) == avail.any(1)).all()                      # never a sample left without input
    assert multi[~is_train].all()                                   # val/test untouched
    frac = (avail & ~multi)[is_train].sum() / avail[is_train].sum()
    assert 0.3 < frac < 0.5                                         # ~rate, less the kept-one rescues
    with pytest.raises(Exception, match="not an input"):
        train_keep({"modality": "ecg", "rate": 1.0}, avail, MODS, is_train, seed=0)


def test_train_time_drop_removes_the_modality_from_training_samples(runs, tiny_results):
    cohort = pl.read_parquet(tiny_results / "tiny" / "cohort.parquet")
    d = runs[("medmix", "notes:1.0")]
    m = json.loads((d / "metrics.json").read_text())
    train = cohort["split"] == "train"
    assert m["train_drop"]["modality"] == "notes" and m["train_drop"]["rate"] == 1.0
    others = cohort["ehr"].is_not_null() | cohort["cxr"].is_not_null()
    assert m["train_drop"]["removed"]["notes"] == int((train & others & cohort["notes"].is_not_null()).sum()) > 0
    assert m["train_drop"]["kept_sole_input"] == int((train & ~others & cohort["notes"].is_not_null()).sum())
    assert m["train_drop"]["removed"]["ehr"] == 0
    pred = pl.read_parquet(d / "predictions.parquet")
    # the trained student saw no notes on training rows, and still reads them at test time
    assert (pred.filter(train & others)["beta_notes"] == 0).all()
    test_notes = (cohort["split"] == "test") & cohort["notes"].is_not_null()
    assert (pred.filter(test_notes)["beta_notes"] > 0).all()
    # the same samples lose notes for another method of the same seed
    other = json.loads((runs[("early_concat", "notes:1.0")] / "metrics.json").read_text())
    assert other["train_drop"]["mask_hash"] == m["train_drop"]["mask_hash"]
    base = json.loads((runs["medmix"] / "metrics.json").read_text())
    assert "train_drop" not in base


def test_test_time_masks_are_shared_and_rate_zero_matches_training(runs, tiny_results):
    rates = [0.0, 0.3, 0.7]
    a = evaluate_run(runs["medmix"], tiny_results, rates, mask_seed=1)
    b = evaluate_run(runs["early_concat"], tiny_results, rates, mask_seed=1)
    for r in map(str, rates):
        assert a["rates"][r]["mask_hash"] == b["rates"][r]["mask_hash"]
        assert a["rates"][r]["dropped"] == b["rates"][r]["dropped"]
    assert a["rates"]["0.0"]["dropped"] == 0 < a["rates"]["0.3"]["dropped"] < a["rates"]["0.7"]["dropped"]
    trained = json.loads((runs["medmix"] / "metrics.json").read_text())["test"]["auroc"]["value"]
    assert a["rates"]["0.0"]["auroc"] == pytest.approx(trained, abs=1e-6)
    assert a["test_sets"]["partial"]["auroc"] == pytest.approx(trained, abs=1e-6)
    assert a["subsets"]["cxr+ehr+notes"]["auroc"] == pytest.approx(trained, abs=1e-6)
    cohort = pl.read_parquet(tiny_results / "tiny" / "cohort.parquet").filter(pl.col("split") == "test")
    avail = cohort_availability(cohort, MODS)
    assert a["test_sets"]["paired"]["n"] == int(avail.all(1).sum())
    assert a["subsets"]["cxr"]["n"] == int(avail[:, 0].sum())
    assert len(a["subsets"]) == 7


def test_summary_and_figures(runs, tiny_results, tmp_path):
    from medmix.experiments import figures
    evals = [evaluate_run(runs[m], tiny_results, [0.0, 0.5]) for m in ("medmix", "early_concat")]
    drop = [runs[("medmix", "notes:1.0")], runs[("early_concat", "notes:1.0")], runs[("medmix", "multi:0.5")]]
    s = summarize("tiny", evals, drop, [runs["medmix"], runs["early_concat"]])
    assert len(s["masks"]["0.5"]) == 1                               # one mask for every method
    assert set(s["train_one"]["notes"]) == {"medmix", "early_concat"}
    assert set(s["train_one"]["notes"]["medmix"]) == {"0.0", "1.0"}
    assert set(s["train_multi"]["medmix"]) == {"0.0", "0.5"}
    (tmp_path / "r.json").write_text(json.dumps(s))
    figures.robustness([tmp_path / "r.json"], tmp_path / "fig", tmp_path / "tab")
    for name in ("robustness_test", "robustness_train_one", "robustness_train_multi"):
        assert (tmp_path / "fig" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "tab" / "missing_subsets.md").read_text()
    assert "| paired |" in md and "| ehr+notes |" in md and "early_concat" in md
    figures.weights("tiny", [runs["medmix"]], tmp_path / "w.png")
    assert (tmp_path / "w.png").stat().st_size > 1000
    figures.calibration("tiny", [runs["medmix"], runs["early_concat"]], tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_subgroup_metrics_recompute_from_the_predictions(runs, tiny_results, tmp_path):
    from medmix.experiments.subgroups import subgroups
    from medmix.metrics import task_metrics
    cohort = tiny_results / "tiny" / "cohort.parquet"
    res = subgroups("tiny", cohort, [runs["medmix"], runs["early_concat"]], tmp_path / "s.json", tmp_path / "s.md",
                    n_boot=20, min_n=5)
    assert {"sex", "age", "race", "modalities"} <= set(res["variables"])
    co = pl.read_parquet(cohort).filter(pl.col("split") == "test")
    pred = co.select("sample_id", "group_sex").join(pl.read_parquet(runs["medmix"] / "predictions.parquet"),
                                                   on="sample_id")
    for sex in ("F", "M"):
        part = pred.filter(pl.col("group_sex") == sex)
        want = task_metrics("binary", part["y"].to_numpy().astype(float), part["prob"].to_numpy())["auroc"]["value"]
        got = res["variables"]["sex"]["medmix"][sex]
        assert got["n"] == part.height and got["mean"] == pytest.approx(want)
    full = res["variables"]["modalities"]["medmix"]["cxr+ehr+notes"]
    assert full["n"] == int(co.select(pl.all_horizontal(pl.col(m).is_not_null() for m in MODS)).to_series().sum())
    assert res["largest_gap"]["medmix"]["gap"] >= 0
    md = (tmp_path / "s.md").read_text()
    assert "| medmix |" in md and "#### sex" in md and "Largest gap" in md


def test_efficiency_counts_the_deployed_stack_only(runs, tiny_results, tmp_path):
    from medmix.experiments import figures
    from medmix.experiments.efficiency import measure
    cfg = config.validate(TINY_CONFIG)
    res = measure([runs["medmix"], runs["teacher_deployed"], runs["early_concat"]],
                  tiny_results / "tiny" / "cohort.parquet", Caches.under(tiny_results, "tiny"),
                  cfg["encoders"], samples=2, warmup=1)
    mm, td = res["methods"]["medmix"], res["methods"]["teacher_deployed"]
    assert mm["teacher_encoders_called"] == [] and set(mm["encoders_called"]) == set(mm["stack"])
    assert set(mm["stack"]) == {"tab", "bert_head", "bert_tail", "vit_low", "vit_crop"}
    assert set(td["teacher_encoders_called"]) == {"minilm", "vit_big"}
    assert mm["fusion"]["teacher_params"] == 0
    n_params = json.loads((runs["medmix"] / "metrics.json").read_text())["n_params"]
    assert mm["fusion"]["params"] == n_params                        # student only: no teacher branch
    enc = {e["encoder"]: e for e in mm["encoders"]}
    assert enc["tab"]["params"] == 0 and enc["bert_head"]["params"] > 0 and enc["vit_low"]["flops"] > 0
    unique = {e["weights"]: e["params"] for e in mm["encoders"]}     # bert_head serves ehr and notes: once
    assert len(unique) < len(mm["encoders"]) and mm["params_total"] == sum(unique.values()) + n_params
    assert mm["latency_ms"]["n"] == 2 and mm["latency_ms"]["median"] > 0
    assert td["params_total"] > mm["params_total"] - n_params      # the teachers are the larger encoders
    (tmp_path / "e.json").write_text(json.dumps(res))
    df = figures.efficiency([tmp_path / "e.json"], tmp_path / "e.png", tmp_path / "e.csv")
    assert df.filter(pl.col("method") == "medmix")["teacher_encoders_called"].to_list() == [""]
    assert (tmp_path / "e.png").stat().st_size > 1000


def test_drop_parsing_paths_and_config_checks():
    from medmix.io import MedmixError
    assert parse_drop("notes:1") == {"modality": "notes", "rate": 1.0}
    assert drop_slug(parse_drop("multi:0.25")) == "drop-multi-0.25"
    for bad in ("notes", "notes:1.5", "notes:x", ":0.5"):
        with pytest.raises(MedmixError, match="--drop"):
            parse_drop(bad)
    cfg = json.loads(json.dumps(TINY_CONFIG))
    cfg["robustness"] = {"methods": ["medmix", "nope"]}
    with pytest.raises(MedmixError, match="robustness/methods/1"):
        config.validate(cfg)
    cfg["robustness"] = {"test_rates": [1.5]}
    with pytest.raises(MedmixError, match="robustness/test_rates/0"):
        config.validate(cfg)
    assert config.validate(TINY_CONFIG)["robustness"]["test_rates"][-1] == 0.9


def test_a_shared_mask_memo_draws_each_mask_once_and_changes_no_result(runs, tiny_results):
    """The robustness job passes one memo to every run's evaluation: the second method re-uses the
    first's masks (no new draw) and gets exactly what a fresh evaluation gives."""
    mechs = [{"name": "mar", "kind": "mar"}, {"name": "mnar", "kind": "mnar", "driver": "outcome", "direction": "down"}]
    cohort, caches = tiny_results / "tiny" / "cohort.parquet", Caches.under(tiny_results, "tiny")
    memo: dict = {}
    first = _evaluate_run(runs["medmix"], cohort, caches, [0.0, 0.5], 0, mechs, memo)
    drawn = len(memo)
    second = _evaluate_run(runs["early_concat"], cohort, caches, [0.0, 0.5], 0, mechs, memo)
    assert drawn == 4 * 2 and len(memo) == drawn  # (the MCAR drop curve, the mechanisms' MCAR, MAR, MNAR) x 2 rates
    assert second == _evaluate_run(runs["early_concat"], cohort, caches, [0.0, 0.5], 0, mechs)
    assert first["mechanisms"]["mnar"]["all"]["0.5"]["mask_hash"] == second["mechanisms"]["mnar"]["all"]["0.5"]["mask_hash"]
