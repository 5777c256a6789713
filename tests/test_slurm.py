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
                 # small batches: the fault test cancels this job after its second batch of ~9
                 "bert_head": {**TINY_CONFIG["encoders"]["bert_head"], "batch_size": 16, "resources": {"gpu": 1}}},
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


def _wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > t0 + timeout:
            raise AssertionError(f"{path.name} never appeared (snakemake rc={proc.poll()}):\n{log.read_text()[-4000:]}")
        time.sleep(0.5)


def _running_job(rule: str, wildcard: str) -> str:
    """The SLURM id of the running job of `rule` whose wildcard values hold `wildcard` (the plugin's job
    comment: rule_<rule>_wildcards_<values joined by _>)."""
    for _ in range(60):
        out = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i|%k"], capture_output=True, text=True).stdout
        ids = [line.split("|")[0] for line in out.splitlines()
               if f"|rule_{rule}_wildcards_" in line and wildcard in line.split("_wildcards_", 1)[1]]
        if ids:
            return ids[0]
        time.sleep(0.5)
    raise AssertionError(f"no running SLURM job of rule {rule} with wildcard value {wildcard!r}:\n{out}")


def _job_state(slurm_id: str) -> str:
    info = subprocess.run(["scontrol", "show", "job", "-o", slurm_id], capture_output=True, text=True).stdout
    return re.search(r"JobState=(\w+)", info).group(1)


@pytest.mark.slurm
def test_workflow_through_slurm_survives_faults_and_matches_local_run(local_slurm, tmp_path):
    """The tiny workflow through the profile on a real scheduler, with two faults a cluster deals out:
    the running embed job of the GPU encoder is cancelled with scancel after it has checkpointed two
    batches, and a train job hangs until SLURM kills it at its (lowered) time limit. The profile's
    `retries` resubmits both, the embed job resumes from its checkpoint, and the metrics equal a clean
    local run's. The sbatch lines carry memory, time and GPUs as the plugin's own options."""
    cfg = yaml.safe_dump(SLURM_CONFIG)
    local, cluster, faults = tmp_path / "local", tmp_path / "slurm", tmp_path / "faults"
    for wd in (local, cluster, faults):
        wd.mkdir()
        (wd / "config.yaml").write_text(cfg)

    # the local reference run goes alongside the cluster run: its jobs fill the time the cluster
    # run spends waiting on the scheduler
    t0 = time.monotonic()
    local_run = subprocess.Popen([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(local),
                                  "--cores", "1", "results/tiny/metrics.json"], cwd=local, env=_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # the cluster run's jobs load tests/slurm_faults/sitecustomize.py (it acts only under MEDMIX_FAULTS)
    env = _env(MEDMIX_SLURM_PARTITION=local_slurm["partition"], MEDMIX_SLURM_ACCOUNT="ci",
               MEDMIX_FAULTS=str(faults), PYTHONPATH=f"{REPO / 'tests' / 'slurm_faults'}:{REPO}")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(cluster),
           "--profile", str(REPO / "workflow" / "profiles" / "slurm"),
           # CI override: no slurmdbd here, so poll with squeue (sacct would hang), and poll early
           "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
           "--verbose", "results/tiny/metrics.json"]
    log_file = tmp_path / "cluster.log"
    with open(log_file, "w") as out:
        cluster_run = subprocess.Popen(cmd, cwd=cluster, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(faults / "embed.held", cluster_run, log_file)
        cancelled = _running_job("embed", "bert_head")
        subprocess.run(["scancel", cancelled], check=True)
        _wait_for(faults / "train.held", cluster_run, log_file, timeout=600)
        timed_out = _running_job("train", "early_concat")
        subprocess.run(["scontrol", "update", f"JobId={timed_out}", "TimeLimit=1"], check=True)   # minutes
        cluster_run.wait(timeout=900)
        t_slurm = time.monotonic() - t0
        local_out, _ = local_run.communicate(timeout=900)
    finally:
        for p in (local_run, cluster_run):
            if p.poll() is None:
                p.kill()
    log = log_file.read_text()
    assert cluster_run.returncode == 0, log[-6000:]
    assert local_run.returncode == 0, f"local reference run failed:\n{local_out[-6000:]}"
    print(f"SLURM run with faults {t_slurm:.1f} s, local reference run alongside it: "
          f"{time.monotonic() - t0:.1f} s for both")

    # the faults happened as planned and each job was resubmitted once
    assert _job_state(cancelled) == "CANCELLED" and _job_state(timed_out) == "TIMEOUT"
    embed_log = (cluster / "results/tiny/logs/embed/notes/bert_head.log").read_text()
    summary = json.loads(embed_log.strip().splitlines()[-1])
    assert "resuming from" in embed_log, embed_log[-2000:]
    assert 2 <= summary["resumed_batches"] < summary["batches"], summary    # the retry skipped the checkpointed batches

    # memory, time and GPUs as the plugin's options of every sbatch line (never inside slurm_extra)
    profile = yaml.safe_load((REPO / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    assert "slurm_extra" not in json.dumps(profile)
    calls = re.findall(r"sbatch call: (.*)", log)
    assert len(calls) == sum(SBATCH_RULES.values()) + 2, calls
    for c in calls:
        assert re.search(r" -t \d+", c) and re.search(r" --mem \d+", c), c
        assert ("--gpus=1" in c) == ("rule_embed_wildcards_" in c and "bert_head" in c), c

    # every non-local job went through sbatch: a SLURM job id in the log and a log file per job
    submitted = SUBMITTED.findall(log)
    logs = [Path(p) for _, _, p in submitted]
    by_rule: dict[str, list[str]] = {}
    for (_, slurm_id, _), p in zip(submitted, logs):
        rule = p.relative_to(cluster / ".snakemake" / "slurm_logs").parts[0].removeprefix("rule_")
        by_rule.setdefault(rule, []).append(slurm_id)
        assert p.name == f"{slurm_id}.log" and p.is_file(), p
    retried = {"embed": 1, "train": 1}                     # the cancelled and the timed-out job, once each
    assert {r: len(ids) for r, ids in by_rule.items()} == {r: n + retried.get(r, 0) for r, n in SBATCH_RULES.items()}, \
        log[-4000:]
    assert len({i for _, i, _ in submitted}) == sum(SBATCH_RULES.values()) + 2
    assert not (cluster / ".snakemake" / "slurm_logs" / "rule_aggregate").exists()  # localrule: no sbatch

    # the scheduler knows these jobs: completed (but the two broken on purpose), and only the GPU
    # encoder's embed jobs (both attempts) held the (fake) GPU
    gpu_jobs = {i for (_, i, _), p in zip(submitted, logs) if "bert_head" in str(p) and "rule_embed" in str(p)}
    assert len(gpu_jobs) == 2 and cancelled in gpu_jobs, logs
    for rule, ids in by_rule.items():
        for i in ids:
            info = subprocess.run(["scontrol", "show", "job", "-o", i], capture_output=True, text=True).stdout
            assert f"JobState={ {cancelled: 'CANCELLED', timed_out: 'TIMEOUT'}.get(i, 'COMPLETED')}" in info, info
            assert "Partition=debug" in info and "Account=ci" in info, info
            assert ("TresPerJob=gres:gpu:1" in info) == (i in gpu_jobs), (rule, info)

    # the same numbers as the local run (CPU training is deterministic for a seed and thread count)
    assert _metric_values(cluster / "results/tiny/metrics.json") == _metric_values(local / "results/tiny/metrics.json")
