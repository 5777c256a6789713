"""Row: two runs of the same embed target at once → the second waits on the output's lock
(`.{name}.lock`, fcntl.flock) until the first is done; the file is never half of each."""

import json
import time

from medmix import cli

from conftest import slow_embed
from relhelp import BERT, assert_same_cache, full_spec, write_cohort


def test_two_runs_of_the_same_target_serialise_on_the_lock(tmp_path, capsys):
    cohort = write_cohort(tmp_path / "cohort.parquet", "notes", [f"note {i} " + "word " * (i % 11) for i in range(48)])
    spec = json.dumps({"spec": full_spec({**BERT, "batch_size": 4})})
    args = ["embed", "--cohort", cohort, "--modality", "notes", "--encoder", "bert", "--job", spec, "--quiet",
            "--checkpoint-every", "1"]
    assert cli.main([str(a) for a in args] + ["--out", str(tmp_path / "ref.h5")]) == 0
    capsys.readouterr()
    out = tmp_path / "out.h5"
    gate = tmp_path / "gate"
    first = slow_embed(args + ["--out", out], sleep=0.05, gate=gate)
    deadline = time.time() + 90
    while time.time() < deadline and not list(tmp_path.glob(".out.h5.ckpt-*/chunk-*.npz")):
        time.sleep(0.05)                                         # the first holds the lock, one batch done
    second = slow_embed(args + ["--out", out], sleep=0.05, gate=gate)
    said = []
    for line in second.stdout:                                   # the first is held at the gate: the second
        said.append(line)                                        # must report the lock and wait on it
        if "is being written by another process" in line:
            break
    gate.touch()                                                 # let the first finish
    out1, _ = first.communicate(timeout=180)
    out2, _ = second.communicate(timeout=180)
    out2 = "".join(said) + out2
    assert first.returncode == 0 and second.returncode == 0, out1[-2000:] + out2[-2000:]
    assert "is being written by another process" in out2 and "waiting" in out2   # it waited, and said so
    assert "is being written by another process" not in out1
    assert_same_cache(tmp_path / "ref.h5", out)                  # one run's complete file, equal to a lone run
    assert not list(tmp_path.glob(".out.h5.ckpt-*")) and not list(tmp_path.glob("*.tmp"))
