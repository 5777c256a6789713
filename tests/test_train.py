import json

import numpy as np
import polars as pl
import pytest
import torch

from medmix import config
from medmix.experiments.aggregate import aggregate
from medmix.methods import METHODS
from medmix.metrics import task_metrics
from medmix.train import train_run, train_seeds

from conftest import TINY_CONFIG


def _spec(method, **train):
    cfg = config.validate(TINY_CONFIG)
    cfg["train"].update(train)
    return config.train_job(cfg, "tiny", method)


@pytest.mark.parametrize("method", sorted(METHODS) + ["unimodal_ehr"])
def test_train_writes_outputs(tiny_results, tmp_path, method):
    m = train_run(_spec(method), 0, tmp_path / method, results=tiny_results, progress=False)
    assert m["test"]["n"] > 0 and 0 <= m["test"]["auroc"]["value"] <= 1
    assert {"ci_low", "ci_high"} <= set(m["test"]["auroc"])
    pred = pl.read_parquet(tmp_path / method / "predictions.parquet")
    assert pred["prob"].is_between(0, 1).all()
    if method == "medmix":
        assert {"beta_ehr", "beta_notes", "beta_cxr", "alpha_notes_bert_head"} <= set(pred.columns)
        no_cxr = pl.read_parquet(tiny_results / "tiny" / "cohort.parquet")["cxr"].is_null()
        assert (pred.filter(no_cxr)["beta_cxr"] == 0).all()
    ckpt = torch.load(tmp_path / method / "model.pt", weights_only=True)
    assert ckpt["spec"]["method"] == method
    assert not any(k.startswith("teacher") for k in ckpt["state_dict"])


def test_training_is_deterministic_under_a_seed(tiny_results, tmp_path):
    a = train_run(_spec("medmix"), 7, tmp_path / "a", results=tiny_results, progress=False)
    b = train_run(_spec("medmix"), 7, tmp_path / "b", results=tiny_results, progress=False)
    assert a["test"] == b["test"]
    pa = pl.read_parquet(tmp_path / "a" / "predictions.parquet")
    pb = pl.read_parquet(tmp_path / "b" / "predictions.parquet")
    assert pa.equals(pb)


@pytest.mark.parametrize("method,drop", [("medmix", None), ("medmix_single_expert", {"modality": "multi", "rate": 0.5}),
                                         ("logreg_concat", None)])
def test_a_seed_trained_with_others_equals_it_trained_alone(tiny_results, tmp_path, method, drop):
    """One job trains every seed (caches read once); seed 1's run is the same beside 0 and 2 as alone."""
    job = _spec(method, max_epochs=4)
    if drop:
        job["drop"] = {**drop, "seed": 5}
    together = train_seeds(job, [0, 1, 2], tmp_path / "together", results=tiny_results, progress=False)
    assert [m["seed"] for m in together] == [0, 1, 2]
    alone = train_seeds(job, [1], tmp_path / "alone", results=tiny_results, progress=False)
    strip = lambda m: {k: v for k, v in m.items() if k != "seconds"}   # noqa: E731
    assert strip(together[1]) == strip(alone[0])
    a, b = (pl.read_parquet(tmp_path / d / "seed1" / "predictions.parquet") for d in ("together", "alone"))
    assert a.equals(b)
    if method != "logreg_concat":   # the seeds are different runs (a linear fit has one optimum)
        assert not pl.read_parquet(tmp_path / "together" / "seed0" / "predictions.parquet").equals(a)
    sa, sb = (torch.load(tmp_path / d / "seed1" / "model.pt", weights_only=True)["state_dict"] for d in ("together", "alone"))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(Exception, match="distinct"):
        train_seeds(job, [1, 1], tmp_path / "twice", results=tiny_results, progress=False)


@pytest.mark.parametrize("method,train", [("medmix", {"lambda_kd": 1.0, "kd_weight": "confidence", "align_on": "both"}),
                                          ("medmix_reliability", {}), ("medmix_inter_concat", {"pos_weight": True})])
def test_seeds_train_as_one_ensemble_each_with_its_own_early_stop(tiny_results, tmp_path, monkeypatch, method, train):
    """MedMIX's seeds train as one seed ensemble (medmix.model.ensemble); seeds stop at different
    epochs and leave it; seed 2 is the same run, bit for bit, beside 0, 1, 3 as alone."""
    import medmix.train as train_mod
    stacked = []
    real = train_mod.stack_seeds
    monkeypatch.setattr(train_mod, "stack_seeds", lambda models: stacked.append(len(models)) or real(models))
    job = _spec(method, max_epochs=25, patience=2, **train)
    together = train_seeds(job, [0, 1, 2, 3], tmp_path / "together", results=tiny_results, progress=False)
    alone = train_seeds(job, [2], tmp_path / "alone", results=tiny_results, progress=False)
    assert stacked == [4, 1]
    assert len({m["epochs"] for m in together}) > 1, "every seed stopped at the same epoch: no seed left the ensemble"
    strip = lambda m: {k: v for k, v in m.items() if k != "seconds"}   # noqa: E731
    assert strip(together[2]) == strip(alone[0])
    a, b = (pl.read_parquet(tmp_path / d / "seed2" / "predictions.parquet") for d in ("together", "alone"))
    assert a.equals(b)
    ca, cb = (torch.load(tmp_path / d / "seed2" / "model.pt", weights_only=False) for d in ("together", "alone"))
    assert ca["history"] == cb["history"] and all(torch.equal(ca["state_dict"][k], cb["state_dict"][k]) for k in ca["state_dict"])


def test_a_network_that_cannot_be_stacked_trains_seed_by_seed(tiny_results, tmp_path):
    from medmix.model.ensemble import NotStackable, stack_seeds
    from medmix.model import create_model, fusion_config
    from medmix.methods import method_spec
    for name in ("medfuse", "sparse_moe", "impute_mean"):
        m = method_spec(name)
        with pytest.raises(NotStackable):
            stack_seeds([create_model(m, {"a": [4, 3]}, fusion_config(m, {})) for _ in range(2)])
    together = train_seeds(_spec("sparse_moe", max_epochs=3), [0, 1], tmp_path / "t", results=tiny_results, progress=False)
    alone = train_seeds(_spec("sparse_moe", max_epochs=3), [1], tmp_path / "a", results=tiny_results, progress=False)
    assert together[1]["test"] == alone[0]["test"]



    m = task_metrics("binary", np.array([0., 0., 0., np.nan]), np.array([0.1, 0.2, 0.3, 0.4]), n_boot=10)
    assert m["n"] == 3 and m["auroc"] == {"value": None, "reason": "only one class in this split (0: 3 samples)"}


def test_aggregate_mean_sd_and_ci(tiny_results, tmp_path):
    dirs = []
    for seed in (0, 1):
        train_run(_spec("late_fusion"), seed, tmp_path / f"s{seed}", results=tiny_results, progress=False)
        dirs.append(tmp_path / f"s{seed}")
    res = aggregate("tiny", dirs, tmp_path / "metrics.json", n_boot=100)
    e = res["methods"]["late_fusion"]["test"]["auroc"]
    per = [json.loads((d / "metrics.json").read_text())["test"]["auroc"]["value"] for d in dirs]
    assert e["mean"] == pytest.approx(np.mean(per)) and e["sd"] == pytest.approx(np.std(per, ddof=1))
    assert e["ci_low"] <= e["mean"] <= e["ci_high"]
    assert "late_fusion" in (tmp_path / "metrics.md").read_text()


def test_single_expert_and_teacher_deployed_inputs(tiny_results, tmp_path):
    m = train_run(_spec("medmix_single_expert"), 0, tmp_path / "s", results=tiny_results, progress=False)
    assert set(m["single_expert"]) == {"ehr", "notes", "cxr"}
    assert all(len(v) == 1 for v in m["inputs"].values())
    t = train_run(_spec("teacher_deployed"), 0, tmp_path / "t", results=tiny_results, progress=False)
    assert t["inputs"] == {"cxr": ["vit_big"], "ehr": ["minilm"], "notes": ["minilm"]}
    lr = train_run(_spec("logreg_concat"), 0, tmp_path / "l", results=tiny_results, progress=False)
    assert lr["C"] in (0.001, 0.01, 0.1, 1.0)


def test_main_tables_mark_the_best(tmp_path):
    from medmix.experiments.aggregate import main_tables
    def res(ds, vals):
        return {"dataset": ds, "methods": {m: {"seeds": [0, 1], "test": {
            k: {"mean": v if k.startswith("au") else v / 10, "sd": 0.01} for k in ("auroc", "auprc", "brier", "ece")}}
            for m, v in vals.items()}}
    (tmp_path / "a.json").write_text(json.dumps(res("demo", {"medmix": 0.9, "early_concat": 0.8})))
    (tmp_path / "b.json").write_text(json.dumps(res("mimic", {"medmix": 0.7, "early_concat": 0.75})))
    df = main_tables([tmp_path / "a.json", tmp_path / "b.json"], tmp_path / "tables")
    assert df.filter(pl.col("best"))["method"].to_list() == ["medmix", "medmix", "early_concat", "early_concat"] * 2
    md = (tmp_path / "tables" / "main.md").read_text()
    assert ("| medmix | **0.900 ± 0.010** | **0.900 ± 0.010** | 0.090 ± 0.010 | 0.090 ± 0.010 | 0.700 ± 0.010 | "
            "0.700 ± 0.010 | **0.070 ± 0.010** | **0.070 ± 0.010** |") in md      # Brier, ECE: lower is better
    assert "\\textbf{0.750 $\\pm$ 0.010}" in (tmp_path / "tables" / "main.tex").read_text()


def test_two_stage_fits_the_teacher_first_then_freezes_it(tiny_results, tmp_path):
    """The teacher branch stops on its own validation score, then is frozen while the student trains;
    the run is deterministic and its model file holds the student only."""
    job = _spec("medmix", teacher_schedule="two_stage", kd_warmup=3, kd_weight="confidence", max_epochs=8)
    a = train_run(job, 0, tmp_path / "a", results=tiny_results, progress=False)
    b = train_run(job, 0, tmp_path / "b", results=tiny_results, progress=False)
    assert a["test"] == b["test"] and 0 <= a["teacher_best_epoch"] < 8
    ck = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    hist, thist = ck["history"], ck["teacher_history"]
    assert thist and all("loss_teacher" in h for h in thist)
    assert hist and all("loss_teacher" not in h and "loss_kd" in h for h in hist)
    assert not any(k.startswith(("teacher", "align")) for k in ck["state_dict"])
    joint = train_run(_spec("medmix", max_epochs=8), 0, tmp_path / "j", results=tiny_results, progress=False)
    jh = torch.load(tmp_path / "j" / "model.pt", weights_only=True)["history"]
    assert all("teacher_val_score" in h and "loss_teacher" in h for h in jh) and joint["test"] != a["test"]


def test_fused_adamw_is_torch_adamw_bit_for_bit_without_dynamo():
    """The trainer's direct call of the fused AdamW kernel updates exactly as torch.optim.AdamW
    (fused) does, skipping parameters without a gradient (a frozen teacher) as it does, and never
    imports torch._dynamo (checked in a fresh interpreter)."""
    import subprocess
    import sys

    from medmix.train import FusedAdamW

    def fit(make):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(7, 16), torch.nn.LayerNorm(16), torch.nn.GELU(), torch.nn.Linear(16, 1))
        frozen = torch.nn.Linear(3, 3)
        opt = make(list(net.parameters()) + list(frozen.parameters()))
        for _ in range(30):
            loss = net(torch.randn(32, 7)).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return torch.cat([p.detach().flatten() for p in net.parameters()]), frozen.weight.detach().clone()

    mine, f1 = fit(lambda ps: FusedAdamW(ps, 1e-2, 0.01))
    ref, f2 = fit(lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.01, fused=True))
    assert torch.equal(mine, ref) and torch.equal(f1, f2)
    code = ("import sys, torch; from medmix.train import adamw; p = torch.nn.Parameter(torch.ones(2)); "
            "o = adamw([p], 0.1, 0.0); p.sum().backward(); o.step(); print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_non_finite_embedding_on_a_present_row_is_refused_by_file_row_sample_and_column():
    from medmix.inputs import check_finite
    from medmix.io import MedmixError
    emb = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    present = np.array([True, True, False, True, True])
    ids = ["a", "b", "c", "d", "e"]
    emb[2, 1] = np.nan                       # an absent row is never read: accepted
    check_finite(emb, present, "x/notes/enc.h5", ids)
    emb[3, 2] = np.inf
    emb[4, 0] = np.nan
    with pytest.raises(MedmixError, match=r"x/notes/enc.h5: row 3 \(sample_id 'd'\), column 2 .* inf \(2 present"):
        check_finite(emb, present, "x/notes/enc.h5", ids)
    big = np.full((2, 3), np.finfo(np.float32).max, dtype=np.float32)   # huge but finite: no overflow
    check_finite(big, np.array([True, True]), "big.h5", ["p", "q"])
