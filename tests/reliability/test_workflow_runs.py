"""The real Snakemake DAG with planted markers (the session DAG of conftest, whose raw notes carry MARK).

Row "logs and reports": note text planted in the raw inputs, and every patient/admission identifier,
never appear in a run's logs (results/**/logs, .snakemake/log) or its reports (cohort.json,
metrics.json/.md, tables); only sample_id may.
Soak (marked `soak`; part of `make test`, alone `make soak`): the DAG of one run per stage (every
embed job, sharded ones included, tuning, training) run three times with random SIGKILLs of running
jobs, then once to completion: the final runs equal the session DAG's."""

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

from conftest import MARK, REPO, dag_config
from relhelp import env

pytestmark = pytest.mark.integration
# the soak's targets: medmix reads every expert and teacher cache (and is tuned), logreg_concat is fitted
SOAK_RUNS = ["results/tiny/runs/medmix/seed0/metrics.json", "results/tiny/runs/logreg_concat/seed0/metrics.json"]


def _smk(wd: Path, *args, check=True, **kw):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(wd), *args]
    if not check:
        return subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env())
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-6000:]
    return p


def _public(wd: Path) -> list[Path]:
    """The logs and reports of a run (not the data artefacts: cohort.parquet, caches, predictions)."""
    files = [*wd.glob("results/**/logs/**/*"), *wd.glob(".snakemake/log/*"), *wd.glob("results/**/benchmarks/**/*"),
             *wd.glob("results/*/cohort.json"), *wd.glob("results/*/metrics.*"), *wd.glob("results/tables/*"),
             *wd.glob("results/*/runs/**/metrics.json"), *wd.glob("results/*/tuning/*.json")]
    return [f for f in files if f.is_file()]


def test_logs_and_reports_hold_no_note_text_and_no_identifier_beyond_sample_id(dag):
    wd = dag["wd"]
    co = pl.read_parquet(wd / "results/tiny/cohort.parquet")
    assert co["notes"].drop_nulls().str.contains(MARK).all() and co["notes"].drop_nulls().len() > 10  # planted
    idents = set()
    for f in wd.glob("results/*/cohort.parquet"):   # every dataset of the DAG (tiny, m3, the real demo)
        c = pl.read_parquet(f)
        idents |= {str(v) for col in ("patient_id", "hadm_id") if col in c.columns for v in c[col].to_list()}
    # MIMIC identifiers have 8 digits; a short synthetic one (m3's 1034) is indistinguishable from a count
    idents = {i for i in idents if len(i) >= 6}
    assert len(idents) > 100
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


def _run(path: Path) -> dict:
    m = json.loads(path.read_text())
    m.pop("seconds")
    return m


@pytest.mark.soak
def test_soak_random_sigkills_then_completion_equal_a_clean_run(dag, marked_raw, tmp_path):
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "config.yaml").write_text(yaml.safe_dump(dag_config(marked_raw)))
    rng = random.Random(8)
    kills = 0
    for round_ in range(3):
        smk = _smk(wd, "--cores", "2", *SOAK_RUNS, check=False, start_new_session=True)
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
    _smk(wd, "--cores", "2", *SOAK_RUNS, "--rerun-incomplete")
    for f in SOAK_RUNS:
        assert _run(wd / f) == _run(dag["wd"] / f), f
    tuned = "results/tiny/tuning/medmix.json"
    assert json.loads((wd / tuned).read_text())["best"] == json.loads((dag["wd"] / tuned).read_text())["best"]
