"""The lock-file GPU slot allocator (medmix/gpu.py): concurrent processes, waiting, SIGKILL, the CLI."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import REPO, TINY_CONFIG
from medmix import gpu
from medmix.io import MedmixError

HOLD = ("import sys, time\n"
        "from medmix.gpu import acquire\n"
        "s = acquire(int(sys.argv[1]), sys.argv[2], devices=sys.argv[3], wait_s=float(sys.argv[4]))\n"
        "print(s.index, s.device, flush=True)\n"
        "time.sleep(300)\n")


def _holder(n, lock_dir, devices="3,5", wait_s=0.0):
    return subprocess.Popen([sys.executable, "-c", HOLD, str(n), str(lock_dir), devices, str(wait_s)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture
def procs():
    started = []
    yield started
    for p in started:  # only the processes this test started
        if p.poll() is None:
            p.kill()
        p.wait()


def test_concurrent_processes_get_distinct_slots_and_a_killed_holder_frees_its_slot(tmp_path, procs):
    a, b = _holder(2, tmp_path), _holder(2, tmp_path)
    procs += [a, b]
    got = {a.pid: a.stdout.readline().split(), b.pid: b.stdout.readline().split()}
    assert sorted(got.values()) == [["0", "3"], ["1", "5"]]      # two slots, their devices

    # a third process: every slot taken, no waiting allowed -> a clear error naming the holders
    c = _holder(2, tmp_path)
    procs.append(c)
    assert c.wait(timeout=60) != 0
    err = c.stderr.read()
    assert "all 2 slots" in err and str(tmp_path) in err and f"pid {a.pid}" in err and f"pid {b.pid}" in err

    # a waiting process gets the slot of a SIGKILLed holder (the kernel drops the flock)
    w = _holder(2, tmp_path, wait_s=60)
    procs.append(w)
    time.sleep(1.5)
    assert w.poll() is None                                       # still waiting
    a.send_signal(signal.SIGKILL)
    a.wait()
    assert w.stdout.readline().split() == got[a.pid]


def test_slot_is_released_after_release_and_failure(tmp_path):
    s = gpu.acquire(1, tmp_path, wait_s=0)
    with pytest.raises(MedmixError, match="all 1 slots"):
        gpu.acquire(1, tmp_path, wait_s=0)                        # flock conflicts across open files
    s.release()
    gpu.acquire(1, tmp_path, wait_s=0).release()
    with pytest.raises(MedmixError, match="lists 1 devices but 2"):
        gpu.acquire(2, tmp_path, devices="0")


def test_claim_sets_cuda_visible_devices_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDMIX_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "untouched")
    monkeypatch.delenv("MEDMIX_GPU_SLOTS", raising=False)
    assert gpu.claim_for_process(None, None) is None              # off by default (e.g. under SLURM)
    assert gpu.claim_for_process(2, "cpu") is None                # a CPU job takes no GPU
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "untouched"
    monkeypatch.setenv("MEDMIX_GPU_SLOTS", "two")
    with pytest.raises(MedmixError, match="MEDMIX_GPU_SLOTS='two'"):
        gpu.claim_for_process(None, None)
    with pytest.raises(MedmixError, match="cuda:0"):
        gpu.claim_for_process(2, "cuda:1")


def test_cli_embed_takes_a_free_slot_and_releases_it_on_failure(tmp_path, tiny_raw):
    from medmix.data import cohort as C
    from medmix.data.mimic4 import build_cohort
    co, rep = build_cohort(tiny_raw)
    co, rep = C.finalize(C.assign_splits(co), rep)
    C.write(co, rep, tmp_path / "cohort.parquet")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    locks = tmp_path / "locks"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MEDMIX_GPU_SLOTS": "2", "MEDMIX_GPU_DEVICES": "5,7",
           "MEDMIX_GPU_LOCK_DIR": str(locks), "MEDMIX_GPU_WAIT": "0"}
    embed = [sys.executable, "-m", "medmix", "embed", "--cohort", str(tmp_path / "cohort.parquet"),
             "--modality", "ehr", "--encoder", "tab", "--out", str(tmp_path / "tab.h5"),
             "--config", str(tmp_path / "config.yaml")]

    held = gpu.acquire(2, locks, devices="5,7", wait_s=0)         # slot 0 busy: the job must take slot 1
    try:
        p = subprocess.run(embed, capture_output=True, text=True, env=env)
        assert p.returncode == 0, p.stderr
        assert "GPU slot 1/2" in p.stderr and "CUDA_VISIBLE_DEVICES=7" in p.stderr
        assert (tmp_path / "tab.h5").exists()

        # a job that fails (missing cohort) exits 1 and leaves its slot free
        bad = [a if a != str(tmp_path / "cohort.parquet") else str(tmp_path / "missing.parquet") for a in embed]
        p = subprocess.run(bad, capture_output=True, text=True, env=env)
        assert p.returncode != 0 and "GPU slot 1/2" in p.stderr
        gpu.acquire(2, locks, devices="5,7", wait_s=0).release()   # slot 1 is free again
    finally:
        held.release()
