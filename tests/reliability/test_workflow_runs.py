"""The real Snakemake DAG on a tiny config with planted markers.

Row "logs and reports": note text planted in the raw inputs, and every patient/admission identifier,
never appear in a run's logs (results/**/logs, .snakemake/log) or its reports (cohort.json,
metrics.json/.md, tables); only sample_id may.
Soak (marked `soak`; part of `make test`, alone `make soak`): the DAG run three times with random
SIGKILLs of running jobs, then once to completion: the final metrics equal the clean run's."""

import csv
import gzip
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from conftest import REPO, TINY_BERT, TINY_VIT
from relhelp import env

pytestmark = pytest.mark.integration
MARK = "ZQXLEAKMARK"

CFG = {"targets": ["leak"], "datasets": {"leak": {"kind": "mimic4", "root": None, "task": "ihm", "modalities": {
    "ehr": {"experts": ["tab", "bert"]}, "notes": {"experts": ["bert"]}, "cxr": {"experts": ["vit"]}}}},
    "encoders": {"tab": {"kind": "ehr_tabular"},
                 "bert": {"kind": "hf_text", "arch": TINY_BERT, "max_length": 32, "seed": 1},
                 "vit": {"kind": "open_clip", "arch": TINY_VIT, "image_size": 16, "seed": 1}},
    "methods": ["medmix_noteacher", "early_concat", "logreg_concat"], "seeds": [0],
    "train": {"max_epochs": 6, "patience": 3, "bootstrap": 20, "d": 16, "hidden": 16},
    # every stage of `all` (train-time drops, robustness, efficiency, figures) on a small grid
    "robustness": {"methods": ["early_concat"], "seeds": [0], "train_one_rates": [1.0], "train_multi_rates": [0.5],
                   "test_rates": [0.0, 0.5]},
    "efficiency": {"samples": 2, "warmup": 1}, "weights_method": "medmix_noteacher"}


def _raw_with_markers(tiny_raw: Path, dest: Path) -> Path:
    """tiny_raw with a marker planted in every radiology note (the other tables linked, unchanged)."""
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


def _smk(wd: Path, *args, check=True, **kw):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(wd), *args]
    if not check:
        return subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env())
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-6000:]
    return p


def _workdir(base: Path, raw: Path) -> Path:
    base.mkdir()
    cfg = json.loads(json.dumps(CFG))
    cfg["datasets"]["leak"]["root"] = str(raw)
    (base / "config.yaml").write_text(yaml.safe_dump(cfg))
    return base


@pytest.fixture(scope="module")
def raw(tmp_path_factory, tiny_raw):
    return _raw_with_markers(tiny_raw, tmp_path_factory.mktemp("rawm") / "raw")


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, raw):
    wd = _workdir(tmp_path_factory.mktemp("clean") / "wd", raw)
    t0 = time.time()
    _smk(wd, "--cores", "2", "all")
    return wd, time.time() - t0


def _public(wd: Path) -> list[Path]:
    """The logs and reports of a run (not the data artefacts: cohort.parquet, caches, predictions)."""
    files = [*wd.glob("results/**/logs/**/*"), *wd.glob(".snakemake/log/*"), *wd.glob("results/**/benchmarks/**/*"),
             *wd.glob("results/*/cohort.json"), *wd.glob("results/*/metrics.*"), *wd.glob("results/tables/*"),
             *wd.glob("results/*/runs/*/*/metrics.json")]
    return [f for f in files if f.is_file()]


def test_logs_and_reports_hold_no_note_text_and_no_identifier_beyond_sample_id(clean_run, raw):
    wd, _ = clean_run
    co = pl.read_parquet(wd / "results/leak/cohort.parquet")
    assert co["notes"].drop_nulls().str.contains(MARK).all() and co["notes"].drop_nulls().len() > 10  # planted
    idents = {str(v) for c in ("patient_id", "hadm_id") for v in co[c].to_list()}
    files = _public(wd)
    assert any("logs" in str(f) for f in files) and any(".snakemake" in str(f) for f in files)
    for f in files:
        text = f.read_text(errors="replace")
        assert MARK not in text, f"note text leaked into {f}"
        leaked = idents & set(re.findall(r"\d+", text))
        assert not leaked, f"identifiers {sorted(leaked)[:5]} leaked into {f}"


def _medmix_jobs(wd: Path) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and b"-m\x00medmix\x00" in (p / "cmdline").read_bytes() \
                    and os.readlink(p / "cwd") == str(wd):
                pids.append(int(p.name))
        except OSError:
            continue
    return pids


def _metrics(wd: Path) -> dict:
    def strip(o):
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items() if not k.endswith("seconds")}
        return [strip(v) for v in o] if isinstance(o, list) else o
    return strip(json.loads((wd / "results/leak/metrics.json").read_text()))


@pytest.mark.soak
def test_soak_random_sigkills_then_completion_equal_a_clean_run(clean_run, raw, tmp_path):
    wd = _workdir(tmp_path / "wd", raw)
    rng = random.Random(8)
    kills = 0
    for round_ in range(3):
        smk = _smk(wd, "--cores", "2", "all", check=False, start_new_session=True)
        deadline = time.time() + rng.uniform(3, 20)                  # bounded: one kill per round, ≤ 50 s in
        jobs: list = []
        while (time.time() < deadline or not jobs) and time.time() < deadline + 30 and smk.poll() is None:
            time.sleep(0.2)
            jobs = _medmix_jobs(wd)
        if jobs and smk.poll() is None:
            os.kill(rng.choice(jobs), signal.SIGKILL)
            kills += 1
        try:
            smk.wait(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(smk.pid, signal.SIGKILL)
            smk.wait()
    assert kills >= 2, f"only {kills} job(s) killed"
    _smk(wd, "--cores", "2", "all", "--rerun-incomplete")
    assert _metrics(wd) == _metrics(clean_run[0])
    for f in (clean_run[0] / "results/leak/runs").glob("*/seed0/metrics.json"):
        a, b = json.loads(f.read_text()), json.loads((wd / f.relative_to(clean_run[0])).read_text())
        a.pop("seconds"), b.pop("seconds")
        assert a == b, f
