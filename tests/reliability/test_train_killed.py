"""Row: training killed halfway → no half-written model.pt / metrics.json / predictions.parquet under
their final names; the rerun starts cleanly and gives the metrics of an uninterrupted run (same seed:
equal metrics.json on CPU except the wall-clock `seconds`)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from medmix import config
from medmix.data import cohort as C
from medmix.data.mimic4 import build_cohort
from medmix.embed import run_embed
from medmix.train import train_run

from conftest import REPO
from relhelp import BERT, env, leftovers

CFG = {"targets": ["tiny"], "datasets": {"tiny": {"kind": "mimic4", "task": "ihm", "modalities": {
    "ehr": {"experts": ["tab"]}, "notes": {"experts": ["bert"]}}}},
    "encoders": {"tab": {"kind": "ehr_tabular"}, "bert": BERT}, "methods": ["medmix_noteacher"], "seeds": [0],
    "train": {"max_epochs": 12, "patience": 12, "bootstrap": 20, "d": 16, "hidden": 16}}

SLOW_TRAIN = """
import pathlib, sys, time
sys.path.insert(0, {repo!r})
import medmix.train as T
real, n = T._val_score, [0]
def slow(*a):
    n[0] += 1
    pathlib.Path({flag!r} + str(n[0])).touch()
    time.sleep(0.3)
    return real(*a)
T._val_score = slow
from medmix import cli
sys.exit(cli.main({argv!r}))
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_raw):
    cfg = config.validate(CFG)
    res = tmp_path_factory.mktemp("results")
    co, rep = build_cohort(tiny_raw)
    co, rep = C.finalize(C.assign_splits(co), rep)
    C.write(co, rep, res / "tiny" / "cohort.parquet")
    for m, slug in (("ehr", "tab"), ("notes", "bert")):
        run_embed(res / "tiny" / "cohort.parquet", m, slug, cfg["encoders"][slug],
                  res / "tiny" / "embeddings" / m / f"{slug}.h5", device="cpu", progress=False)
    return res, config.train_job(cfg, "tiny", "medmix_noteacher")


def test_killed_training_leaves_no_output_and_the_rerun_equals_a_clean_run(results, tmp_path):
    res, spec = results
    train_run(spec, 0, tmp_path / "clean", results=res, device="cpu", progress=False)
    run = tmp_path / "run"
    argv = ["train", "--dataset", "tiny", "--method", "medmix_noteacher", "--seed", "0", "--out", str(run),
            "--results", str(res), "--job", json.dumps(spec), "--device", "cpu", "--quiet"]
    flag = str(tmp_path / "epoch")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_TRAIN.format(repo=str(REPO), flag=flag, argv=argv)],
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 90
    while time.time() < deadline and not os.path.exists(flag + "3") and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert os.path.exists(flag + "3"), "training ended before it could be killed: " + proc.stdout.read()[-2000:]
    for name in ("model.pt", "metrics.json", "predictions.parquet"):
        assert not (run / name).exists()                             # nothing half-written under a final name
    assert leftovers(tmp_path) == []
    train_run(spec, 0, run, results=res, device="cpu", progress=False)   # the rerun starts cleanly
    a = json.loads((tmp_path / "clean" / "metrics.json").read_text())
    b = json.loads((run / "metrics.json").read_text())
    a.pop("seconds"), b.pop("seconds")
    assert a == b
    assert (tmp_path / "clean" / "predictions.parquet").read_bytes() == (run / "predictions.parquet").read_bytes()
