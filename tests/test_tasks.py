"""Multilabel, multiclass and survival tasks: metrics against independent references, the Cox
loss against its definition, and training end to end on every task type."""

import json
import shutil

import numpy as np
import polars as pl
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from medmix import config
from medmix.data import cohort as C
from medmix.io import MedmixError
from medmix.metrics import c_index_rows, task_metrics, thresholds
from medmix.model.losses import cox_loss

from conftest import TINY_CONFIG


def test_multilabel_metrics_equal_sklearn():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 4)) < [0.1, 0.3, 0.5, 0.0]).astype(float)   # label 3: never positive
    p = np.clip(0.4 * y + rng.random((200, 4)) * 0.6, 0, 1)
    thr = thresholds("multilabel", y, p)
    m = task_metrics("multilabel", y, p, thr=thr)
    ok = [0, 1, 2]  # a label with one class is undefined and left out of the macro average
    assert m["macro_auroc"]["value"] == pytest.approx(np.mean([roc_auc_score(y[:, i], p[:, i]) for i in ok]))
    assert m["micro_auroc"]["value"] == pytest.approx(roc_auc_score(y.ravel(), p.ravel()))
    assert m["macro_auprc"]["value"] == pytest.approx(np.mean([average_precision_score(y[:, i], p[:, i]) for i in ok]))
    assert m["micro_auprc"]["value"] == pytest.approx(average_precision_score(y.ravel(), p.ravel()))
    pred = p >= np.array(thr)
    assert m["macro_f1"]["value"] == pytest.approx(np.mean([f1_score(y[:, i], pred[:, i]) for i in ok]))
    assert m["labels_defined"] == "3 of 4"


def test_multiclass_metrics_equal_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 150).astype(float)
    logits = rng.normal(size=(150, 3)) + 1.5 * np.eye(3)[y.astype(int)]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y[:5] = np.nan  # unknown labels are ignored
    m = task_metrics("multiclass", y, p, n_boot=50)
    ok = ~np.isnan(y)
    assert m["n"] == 145
    assert m["accuracy"]["value"] == pytest.approx((p[ok].argmax(1) == y[ok]).mean())
    assert m["macro_auroc"]["value"] == pytest.approx(roc_auc_score(y[ok], p[ok], multi_class="ovr", average="macro"))
    assert m["macro_f1"]["value"] == pytest.approx(f1_score(y[ok], p[ok].argmax(1), average="macro"))
    assert m["accuracy"]["ci_low"] < m["accuracy"]["value"] < m["accuracy"]["ci_high"]


def _c_index_brute(t, e, r):
    num = den = 0.0
    for i in range(len(t)):
        for j in range(len(t)):
            if e[i] and t[i] < t[j]:
                den += 1
                num += 1.0 if r[i] > r[j] else 0.5 if r[i] == r[j] else 0.0
    return num / den


def test_c_index_and_cox_loss_against_their_definitions():
    rng = np.random.default_rng(2)
    t = rng.integers(1, 30, 60).astype(float)   # integer times: many ties
    e = (rng.random(60) < 0.6).astype(float)
    r = np.round(rng.normal(size=60), 1)
    assert c_index_rows(t[None], e[None], r[None])[0] == pytest.approx(_c_index_brute(t, e, r))
    m = task_metrics("survival", np.stack([t, e], 1), r)
    assert m["c_index"]["value"] == pytest.approx(_c_index_brute(t, e, r)) and m["positives"] == int(e.sum())
    # Breslow partial likelihood, written out: risk set of i = {j: t_j >= t_i}
    nll = -sum(r[i] - np.log(np.exp(r[t >= t[i]]).sum()) for i in range(60) if e[i]) / e.sum()
    got = cox_loss(torch.tensor(r), torch.tensor(t), torch.tensor(e))
    assert float(got) == pytest.approx(nll, rel=1e-6)
    assert float(cox_loss(torch.tensor(r), torch.tensor(t), torch.zeros(60))) == 0.0


def test_cohort_rejects_labels_outside_their_domain(tmp_path):
    co = pl.DataFrame({"sample_id": ["a", "b"], "patient_id": ["1", "2"], "split": ["train", "test"],
                       "y_cls": [0, 3], "x": ["u", "v"]})
    rep = {"tasks": {"cls": {"type": "multiclass", "columns": ["y_cls"], "classes": ["a", "b", "c"]}}}
    with pytest.raises(MedmixError, match=r"row 1 .*'y_cls' is 3, expected a class index in 0..2"):
        C.write(co, rep, tmp_path / "c.parquet")
    co = co.with_columns(pl.Series("y_cls", [0, 2]), pl.Series("y_os_time", [-1.0, 3.0]), pl.Series("y_os_event", [1, 0]))
    rep["tasks"]["os"] = {"type": "survival", "columns": ["y_os_time", "y_os_event"]}
    with pytest.raises(MedmixError, match=r"row 0 .*'y_os_time'"):
        C.write(co, rep, tmp_path / "c.parquet")
    assert not (tmp_path / "c.parquet").exists()


ENCODERS = {"e1": 8, "e2": 6, "t": 12}


@pytest.fixture(scope="module")
def task_results(tmp_path_factory):
    """A cohort with a task of every type and hand-made embedding caches (real HDF5 files, the
    real contract): a latent z drives every label; experts see z through noise, the teacher
    better; modality b is missing for a fifth of the samples."""
    from medmix.encoders.cache import cohort_hash, write_cache
    from medmix.io import stable_hash
    res = tmp_path_factory.mktemp("tasks")
    rng = np.random.default_rng(0)
    n = 600
    z = rng.normal(size=n)
    ids = [f"s{i}" for i in range(n)]
    split = np.array(["train"] * 360 + ["val"] * 120 + ["test"] * 120)
    has_b = rng.random(n) > 0.2
    co = pl.DataFrame({
        "sample_id": ids, "patient_id": [f"p{i}" for i in range(n)], "split": split,
        "a": [f"a{i}" for i in range(n)], "b": [f"b{i}" if h else None for i, h in enumerate(has_b)],
        "y_ml__pos": (z > 0).astype(float), "y_ml__high": (z > 0.7).astype(float), "y_ml__low": (z < -0.7).astype(float),
        "y_cls": np.digitize(z, [-0.5, 0.5]),
        "y_os_time": np.exp(-z + 0.3 * rng.normal(size=n)) * 10, "y_os_event": (rng.random(n) < 0.7).astype(int)})
    rep = {"tasks": {
        "ml": {"type": "multilabel", "columns": ["y_ml__pos", "y_ml__high", "y_ml__low"]},
        "cls": {"type": "multiclass", "columns": ["y_cls"], "classes": ["low", "mid", "high"]},
        "os": {"type": "survival", "columns": ["y_os_time", "y_os_event"]}}}
    C.write(co, rep, res / "syn" / "cohort.parquet")
    for m in ("a", "b"):
        present = np.ones(n, bool) if m == "a" else has_b
        for slug, d in ENCODERS.items():
            noise = 0.5 if slug == "t" else 1.5
            emb = z[:, None] * rng.normal(size=d)[None] + noise * rng.normal(size=(n, d))
            write_cache(res / "syn" / "embeddings" / m / f"{slug}.h5", ids, np.where(present[:, None], emb, 0.0),
                        present, {"encoder": slug, "spec_hash": stable_hash({"slug": slug}),
                                  "cohort_hash": cohort_hash(ids, co[m].to_list())})
    return res


def _spec(method: str, task: str) -> dict:
    from medmix.io import stable_hash
    cfg = config.validate(TINY_CONFIG)
    return {"dataset": "syn", "method": method, "task": task,
            "modalities": {m: {"experts": ["e1", "e2"], "teachers": ["t"]} for m in ("a", "b")},
            "encoders": {s: stable_hash({"slug": s}) for s in ENCODERS},
            "train": cfg["train"] | {"max_epochs": 30, "patience": 8, "lr": 0.003, "bootstrap": 100}}


@pytest.mark.parametrize("task,primary", [("ml", "macro_auroc"), ("cls", "macro_auroc"), ("os", "c_index")])
@pytest.mark.parametrize("method", ["medmix", "late_fusion", "logreg_concat", "medmix_single_expert"])
def test_every_task_trains_exports_and_predicts(task_results, tmp_path, task, primary, method):
    from medmix.experiments.aggregate import aggregate
    from medmix.bundle import export, predict
    from medmix.train import train_run
    m = train_run(_spec(method, task), 0, tmp_path / "run", results=task_results, progress=False)
    assert m["task_type"] in ("multilabel", "multiclass", "survival")
    assert m["test"][primary]["value"] > 0.75, m["test"]          # the planted signal is found
    assert m["test"][primary]["ci_low"] <= m["test"][primary]["value"] <= m["test"][primary]["ci_high"]
    agg = aggregate("syn", [tmp_path / "run"], tmp_path / "metrics.json", n_boot=50)
    assert agg["methods"][method]["test"][primary]["mean"] == pytest.approx(m["test"][primary]["value"])
    export(tmp_path / "run", tmp_path / "bundle", results=task_results)
    pred = predict(tmp_path / "bundle", task_results / "syn" / "embeddings")
    run = pl.read_parquet(tmp_path / "run" / "predictions.parquet")
    col = {"ml": "prob__high", "cls": "prob__high", "os": "risk"}[task]
    np.testing.assert_allclose(pred[col].to_numpy(), run[col].to_numpy(), rtol=1e-4, atol=1e-5)
    if task == "cls":
        np.testing.assert_allclose(run.select(pl.col("^prob__.*$")).sum_horizontal().to_numpy(), 1.0, rtol=1e-6)


def test_a_class_absent_from_train_is_never_predicted(task_results, tmp_path):
    from medmix.train import train_run
    co = pl.read_parquet(task_results / "syn" / "cohort.parquet")
    rep = json.loads((task_results / "syn" / "cohort.json").read_text())
    res = tmp_path / "res"
    shutil.copytree(task_results / "syn", res / "syn")
    co = co.with_columns(pl.when(pl.col("y_cls") == 1).then(0).otherwise(pl.col("y_cls")).alias("y_cls"))
    C.write(co, rep, res / "syn" / "cohort.parquet")
    for method in ("logreg_concat", "early_concat"):
        train_run(_spec(method, "cls"), 0, tmp_path / method, results=res, progress=False)
        p = pl.read_parquet(tmp_path / method / "predictions.parquet")
        top = p.select(pl.col("^prob__.*$")).to_numpy().argmax(1)
        assert (top != 1).all() and (top == 2).any()


def test_unknown_task_names_the_cohorts_tasks(task_results, tmp_path):
    from medmix.train import train_run
    with pytest.raises(MedmixError, match="no task 'nope' .*its tasks: cls, ml, os"):
        train_run(_spec("medmix", "nope"), 0, tmp_path / "run", results=task_results, progress=False)
