"""The SLURM profile against a real scheduler: a single-node SLURM started on localhost
(ci/slurm/start-local-slurm.sh), the tiny workflow submitted through
`--profile workflow/profiles/slurm`, and its metrics compared with a local run of the same config.

Needs root and apt (or SLURM already installed); skipped otherwise. Stops only the daemons it
started (their pids are recorded in a state directory of its own).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, TINY_CONFIG

pytestmark = pytest.mark.integration

CI_SLURM = REPO / "ci" / "slurm"
# two cheap methods without a teacher branch, two experts: 6 sbatch jobs (synth, prepare, 2 embed, 2 train)
SLURM_CONFIG = {
    "targets": ["tiny"],
    "datasets": {"tiny": {**TINY_CONFIG["datasets"]["tiny"],
                          "modalities": {"ehr": {"experts": ["tab"]}, "notes": {"experts": ["bert_head"]}}}},
    # GPU requests come from each encoder's `resources`: the BERT asks for one, the tabular one not
    "encoders": {"tab": TINY_CONFIG["encoders"]["tab"],
                 "bert_head": {**TINY_CONFIG["encoders"]["bert_head"], "resources": {"gpu": 1}}},
    "methods": ["early_concat", "logreg_concat"],
    "seeds": [0],
    "train": TINY_CONFIG["train"],
}
SBATCH_RULES = {"synth": 1, "prepare": 1, "embed": 2, "train": 2}  # aggregate is a localrule
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO),
            "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", **extra}


def _smk(workdir: Path, *args, env: dict, timeout: int) -> str:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise AssertionError(f"snakemake {' '.join(args)} still running after {timeout} s:\n{out[-3000:]}\n{err[-6000:]}")
    if p.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return p.stdout + p.stderr


def _metric_values(path: Path) -> dict:
    """Every metric value of metrics.json (mean, sd, per seed, CI, n), without timings."""
    res = json.loads(path.read_text())
    return {m: {split: e[split] for split in ("val", "test")} | {"n_params": e["n_params"]}
            for m, e in res["methods"].items()} | {"counts": res["cohort"]["counts"]}


def _skip_or_fail(reason: str):
    # .ci/run sets MEDMIX_REQUIRE_SLURM=1: there a skipped cluster test would prove nothing
    if os.environ.get("MEDMIX_REQUIRE_SLURM") == "1":
        pytest.fail(f"MEDMIX_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def local_slurm(tmp_path_factory):
    """A running single-node SLURM; the daemons this fixture started are stopped afterwards."""
    if os.geteuid() != 0:
        _skip_or_fail("starting a local SLURM needs root (slurmctld, slurmd and munged run as their own users)")
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        _skip_or_fail("SLURM is not installed and apt-get is not available to install it")
    state = tmp_path_factory.mktemp("slurm-state")
    env = {**os.environ, "LOCAL_SLURM_STATE": str(state), "LOCAL_SLURM_GPUS": "1", "LOCAL_SLURM_PARTITION": "debug"}
    t0 = time.monotonic()
    p = subprocess.run(["bash", str(CI_SLURM / "start-local-slurm.sh")], capture_output=True, text=True, env=env,
                       timeout=300)
    started = sorted(f.stem for f in state.glob("*.pid"))
    try:
        assert p.returncode == 0, f"start-local-slurm.sh failed:\n{p.stdout}\n{p.stderr}"
        print(f"local SLURM up in {time.monotonic() - t0:.1f} s; started here: {started or 'none (already running)'}")
        yield {"partition": "debug", "started": started}
    finally:
        # only the pids recorded in our own state dir: a cluster that was already up stays up
        subprocess.run(["bash", str(CI_SLURM / "stop-local-slurm.sh")], env=env, timeout=120)


def test_profile_dry_run_requests_a_gpu_for_gpu_encoders_only(tmp_path):
    """No cluster needed: the profile's resources as Snakemake resolves them for each job."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(SLURM_CONFIG))
    out = _smk(tmp_path, "--profile", str(REPO / "workflow" / "profiles" / "slurm"), "-n", "results/tiny/metrics.json",
               env=_env(MEDMIX_SLURM_PARTITION="gpu", MEDMIX_SLURM_ACCOUNT="lab"), timeout=300)
    jobs = re.findall(r"^rule (\w+):\n((?:.*\n)*?)\s+resources: (.*)$", out, flags=re.M)
    assert sorted({r for r, _, _ in jobs}) == ["aggregate", "embed", "prepare", "synth", "train"], out[-3000:]
    assert sum(r == "embed" for r, _, _ in jobs) == 2
    for rule, body, res in jobs:
        res = dict(kv.split("=", 1) for kv in res.split(", "))
        gpu = rule == "embed" and "encoder=bert_head" in body
        assert res.get("gpu", "0") == ("1" if gpu else "0"), (rule, body, res)
        assert res["slurm_partition"] == "gpu" and res["slurm_account"] == "lab"   # placeholders from the env


@pytest.mark.slurm
def test_workflow_through_slurm_profile_matches_local_run(local_slurm, tmp_path):
    cfg = yaml.safe_dump(SLURM_CONFIG)
    local, cluster = tmp_path / "local", tmp_path / "slurm"
    for wd in (local, cluster):
        wd.mkdir()
        (wd / "config.yaml").write_text(cfg)

    # the local reference run goes alongside the cluster run: its jobs fill the time the cluster
    # run spends waiting on the scheduler
    t0 = time.monotonic()
    local_run = subprocess.Popen([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(local),
                                  "--cores", "1", "results/tiny/metrics.json"], cwd=local, env=_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log = _smk(cluster, "--profile", str(REPO / "workflow" / "profiles" / "slurm"),
                   # CI override: no slurmdbd here, so poll with squeue (sacct would hang), and poll early
                   "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
                   "results/tiny/metrics.json",
                   env=_env(MEDMIX_SLURM_PARTITION=local_slurm["partition"], MEDMIX_SLURM_ACCOUNT="ci"), timeout=900)
        t_slurm = time.monotonic() - t0
        local_out, _ = local_run.communicate(timeout=900)
    finally:
        if local_run.poll() is None:
            local_run.kill()
    assert local_run.returncode == 0, f"local reference run failed:\n{local_out[-6000:]}"
    print(f"SLURM run {t_slurm:.1f} s, local reference run alongside it: {time.monotonic() - t0:.1f} s for both")

    # every non-local job went through sbatch: a SLURM job id in the log and a log file per job
    submitted = SUBMITTED.findall(log)
    logs = [Path(p) for _, _, p in submitted]
    by_rule: dict[str, list[str]] = {}
    for (_, slurm_id, _), p in zip(submitted, logs):
        rule = p.relative_to(cluster / ".snakemake" / "slurm_logs").parts[0].removeprefix("rule_")
        by_rule.setdefault(rule, []).append(slurm_id)
        assert p.name == f"{slurm_id}.log" and p.is_file(), p
    assert {r: len(ids) for r, ids in by_rule.items()} == SBATCH_RULES, log[-4000:]
    assert len({i for _, i, _ in submitted}) == sum(SBATCH_RULES.values())
    assert not (cluster / ".snakemake" / "slurm_logs" / "rule_aggregate").exists()  # localrule: no sbatch

    # the scheduler knows these jobs: completed, and only the GPU encoder's embed job held the (fake) GPU
    gpu_jobs = {i for (_, i, _), p in zip(submitted, logs) if "bert_head" in str(p) and "rule_embed" in str(p)}
    assert len(gpu_jobs) == 1, logs
    for rule, ids in by_rule.items():
        for i in ids:
            info = subprocess.run(["scontrol", "show", "job", "-o", i], capture_output=True, text=True).stdout
            assert "JobState=COMPLETED" in info, info
            assert "Partition=debug" in info and "Account=ci" in info, info
            assert ("TresPerJob=gres:gpu:1" in info) == (i in gpu_jobs), (rule, info)

    # the same numbers as the local run (CPU training is deterministic for a seed and thread count)
    assert _metric_values(cluster / "results/tiny/metrics.json") == _metric_values(local / "results/tiny/metrics.json")
